//! Authentication: where a request's tenant comes from.
//!
//! INVARIANT: the tenant of a tenant-plane request is the tenant of its verified token, and
//! nothing else. Headers, paths and bodies never name it; an `X-Tenant-Id` header that
//! disagrees with the token is refused (403), and one that agrees changes nothing.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use bulkhead_core::token::{TokenError, Verifier};
use bulkhead_core::{TenantContext, TenantStatus, Timestamp};
use bulkhead_store::Store;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::problem::ApiError;
use crate::state::AppState;

/// The header some clients send to name a tenant. Bulkhead only checks it agrees with the token.
pub const TENANT_HEADER: &str = "x-tenant-id";

/// The source of "now" for token checks; injectable so tests can move time.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// Verifies tenant tokens, with a cache of tokens already verified.
pub struct Authenticator {
    store: Arc<Store>,
    verifier: Verifier,
    clock: Clock,
    /// SHA-256 of a token → the context it verified to. A hit skips the signature check only:
    /// expiry, tenant status and the signing key's presence are re-checked on every request.
    verified: quick_cache::sync::Cache<[u8; 32], Arc<TenantContext>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

/// Why a tenant-plane request was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Token(TokenError),
    TenantNotActive(TenantStatus),
}

impl Authenticator {
    pub fn new(store: Arc<Store>, verifier: Verifier, capacity: usize) -> Self {
        Self::with_clock(store, verifier, capacity, Arc::new(Timestamp::now_utc))
    }

    pub fn with_clock(
        store: Arc<Store>,
        verifier: Verifier,
        capacity: usize,
        clock: Clock,
    ) -> Self {
        Self {
            store,
            verifier,
            clock,
            verified: quick_cache::sync::Cache::new(capacity.max(16)),
        }
    }

    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    pub fn now(&self) -> Timestamp {
        (self.clock)()
    }

    /// Authenticates a bearer token into a tenant context.
    pub async fn authenticate(&self, token: &str) -> Result<Arc<TenantContext>, ApiError> {
        match self.check(token).await {
            Ok(ctx) => Ok(ctx),
            Err(Ok(AuthFailure::Token(e))) => {
                tracing::info!(reason = e.class(), "token refused");
                Err(ApiError::InvalidToken(e))
            }
            Err(Ok(AuthFailure::TenantNotActive(s))) => Err(ApiError::TenantNotActive(s.as_str())),
            Err(Err(e)) => Err(e.into()),
        }
    }

    async fn check(
        &self,
        token: &str,
    ) -> Result<Arc<TenantContext>, Result<AuthFailure, bulkhead_store::StoreError>> {
        let settings = self.verifier.settings();
        if token.len() > settings.max_token_bytes {
            return Err(Ok(AuthFailure::Token(TokenError::Oversized)));
        }
        let now = self.now();
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let cached = self.verified.get(&digest);
        // A token not verified before is inspected once: the claims say which tenant's keys
        // to look at, and are then verified with one of them.
        let claimed = match &cached {
            Some(_) => None,
            None => Some(
                self.verifier
                    .inspect(token)
                    .map_err(|e| Ok(AuthFailure::Token(e)))?,
            ),
        };
        let tenant = match (&cached, &claimed) {
            (Some(ctx), _) => ctx.tenant(),
            (None, Some(c)) => c.tenant,
            (None, None) => return Err(Ok(AuthFailure::Token(TokenError::Malformed))),
        };
        // Unknown and deleted tenants have no keys: the token's key is unknown.
        let state = self.store.tenant_state(tenant).await.map_err(Err)?;
        let Some(mut state) = state.filter(|s| s.tenant.status != TenantStatus::Deleted) else {
            return Err(Ok(AuthFailure::Token(TokenError::UnknownKey)));
        };
        let ctx = match (cached, claimed) {
            (Some(ctx), _) => {
                let leeway =
                    time::Duration::seconds(i64::try_from(settings.leeway_secs).unwrap_or(0));
                if now >= ctx.expires_at() + leeway {
                    self.verified.remove(&digest);
                    return Err(Ok(AuthFailure::Token(TokenError::Expired)));
                }
                // A key removed since the token was verified no longer vouches for it.
                if state.key(ctx.kid()).is_none() {
                    self.verified.remove(&digest);
                    return Err(Ok(AuthFailure::Token(TokenError::UnknownKey)));
                }
                ctx
            }
            (None, None) => return Err(Ok(AuthFailure::Token(TokenError::Malformed))),
            (None, Some(claimed)) => {
                // A key rotated on another instance may be newer than the cached state: look
                // again, at most once a second per tenant.
                if state.key(&claimed.kid).is_none() {
                    state = self
                        .store
                        .tenant_state_younger_than(tenant, std::time::Duration::from_secs(1))
                        .await
                        .map_err(Err)?
                        .filter(|s| s.tenant.status != TenantStatus::Deleted)
                        .ok_or(Ok(AuthFailure::Token(TokenError::UnknownKey)))?;
                }
                let key = state
                    .key(&claimed.kid)
                    .ok_or(Ok(AuthFailure::Token(TokenError::UnknownKey)))?;
                let ctx = Arc::new(
                    self.verifier
                        .verify(token, claimed, key, now)
                        .map_err(|e| Ok(AuthFailure::Token(e)))?,
                );
                self.verified.insert(digest, ctx.clone());
                ctx
            }
        };
        if state.tenant.status != TenantStatus::Active {
            return Err(Ok(AuthFailure::TenantNotActive(state.tenant.status)));
        }
        Ok(ctx)
    }
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(AUTHORIZATION)
        .ok_or(ApiError::Unauthenticated)?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::InvalidToken(TokenError::Malformed))?;
    let (scheme, token) = value.split_once(' ').ok_or(ApiError::Unauthenticated)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::Unauthenticated);
    }
    Ok(token)
}

/// The verified caller of a tenant-plane request.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<TenantContext>);

impl Caller {
    /// The verified context. What it may do is decided by `crate::policy::authorize`.
    pub fn ctx(&self) -> &TenantContext {
        &self.0
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts)?;
        let ctx = state.auth.authenticate(token).await?;
        let span = tracing::Span::current();
        span.record("tenant_id", tracing::field::display(ctx.tenant()));
        // Every X-Tenant-Id header present must name the token's tenant.
        let expected = ctx.tenant().to_string();
        for v in parts.headers.get_all(TENANT_HEADER) {
            let agrees = v
                .to_str()
                .is_ok_and(|s| s.trim().eq_ignore_ascii_case(&expected));
            if !agrees {
                tracing::warn!(
                    security = true,
                    "x-tenant-id disagrees with the token's tenant"
                );
                return Err(ApiError::TenantMismatch);
            }
        }
        Ok(Caller(ctx))
    }
}

/// The operator credential: only a hash of the admin token is kept.
pub struct OperatorCredential {
    hash: [u8; 32],
}

impl std::fmt::Debug for OperatorCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OperatorCredential(..)")
    }
}

impl OperatorCredential {
    /// The SHA-256 of an admin token. Admin tokens are long random strings, so a plain hash is
    /// the right tool (no password stretching needed).
    pub fn hash(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    pub fn from_hash(hash: [u8; 32]) -> Self {
        Self { hash }
    }

    /// Constant-time comparison of a presented token with the stored hash.
    pub fn matches(&self, presented: &str) -> bool {
        Self::hash(presented).ct_eq(&self.hash).into()
    }
}

/// Proof that the request carries the operator credential.
#[derive(Debug, Clone, Copy)]
pub struct Operator;

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts)?;
        if state.operator.matches(token) {
            tracing::Span::current().record("tenant_id", "operator");
            Ok(Operator)
        } else {
            tracing::warn!(security = true, "operator credential refused");
            Err(ApiError::BadOperatorToken)
        }
    }
}
