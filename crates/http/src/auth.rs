//! Authentication: where a request's tenant comes from.
//!
//! INVARIANT: the tenant of a tenant-plane request is the tenant of its verified token, and
//! nothing else. Headers, paths and bodies never name it; an `X-Tenant-Id` header that
//! disagrees with the token is refused (403), and one that agrees changes nothing.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use bulkhead_core::role::Action;
use bulkhead_core::token::{TokenError, Verifier};
use bulkhead_core::{TenantContext, TenantStatus, Timestamp};
use bulkhead_policy::Resource;
use bulkhead_store::service::TenantState;
use bulkhead_store::{RequestMeta, Store, TenantHandle};
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
        self.authenticate_with_state(token)
            .await
            .map(|(ctx, _)| ctx)
    }

    /// Like [`Authenticator::authenticate`], also giving the tenant's (cached) registry state,
    /// which the limiter needs (tier and overrides) without another lookup.
    pub async fn authenticate_with_state(
        &self,
        token: &str,
    ) -> Result<(Arc<TenantContext>, Arc<TenantState>), ApiError> {
        match self.check(token).await {
            Ok(v) => Ok(v),
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
    ) -> Result<
        (Arc<TenantContext>, Arc<TenantState>),
        Result<AuthFailure, bulkhead_store::StoreError>,
    > {
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
        Ok((ctx, state))
    }
}

pub(crate) fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    bearer_in(&parts.headers)
}

/// The bearer token of a request's `Authorization` header.
pub(crate) fn bearer_in(headers: &axum::http::HeaderMap) -> Result<&str, ApiError> {
    let value = headers
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

/// Where a request came from, for audit entries: its request id and the client's address.
pub fn request_meta(parts: &Parts) -> RequestMeta {
    request_meta_of(&parts.headers, &parts.extensions)
}

/// [`request_meta`] from a request's headers and extensions.
pub fn request_meta_of(headers: &http::HeaderMap, extensions: &http::Extensions) -> RequestMeta {
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let source = extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    RequestMeta { request_id, source }
}

/// The reason class a refused credential is recorded with (never the credential).
fn rejection_class(e: &ApiError) -> Option<String> {
    match e {
        ApiError::Unauthenticated => Some("missing".into()),
        ApiError::InvalidToken(t) => Some(t.class().to_owned()),
        ApiError::TenantNotActive(s) => Some(format!("tenant-{s}")),
        ApiError::TenantMismatch => Some("tenant-header-mismatch".into()),
        _ => None,
    }
}

/// Records a refused credential in the operator log, durably, before the refusal is sent. If
/// that fails, the request fails with the storage error instead.
async fn record_rejection(
    st: &AppState,
    action: &str,
    e: ApiError,
    meta: &RequestMeta,
) -> ApiError {
    let Some(class) = rejection_class(&e) else {
        return e;
    };
    match st.store.audit().record_rejected(action, &class, meta).await {
        Ok(()) => e,
        Err(store) => {
            tracing::error!(error = %store, "audit: cannot record a refused credential");
            store.into()
        }
    }
}

/// The verified caller of a tenant-plane request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub ctx: Arc<TenantContext>,
    /// The request, for audit entries.
    pub meta: RequestMeta,
    store: Arc<Store>,
    policy: Arc<crate::policy::PolicyMode>,
}

impl Caller {
    /// The verified context. What it may do is decided by `crate::policy::authorize`.
    pub fn ctx(&self) -> &TenantContext {
        &self.ctx
    }

    /// The policy decision point this request is decided by.
    pub fn policy(&self) -> &crate::policy::PolicyMode {
        &self.policy
    }

    /// Allows the request to go on only if the policy allows `action` on the caller's tenant
    /// (actions on the tenant as a whole: audit reads, policy reads…). A denial is recorded in
    /// the caller's audit log before it is answered.
    pub async fn require(&self, action: Action) -> Result<&TenantContext, ApiError> {
        let h = self.tenant().await?;
        crate::policy::authorize(&self.policy, &self.ctx, &h, action, Resource::Tenant).await?;
        Ok(&self.ctx)
    }

    /// The caller's tenant data, with this request's details for the audit entries.
    pub async fn tenant(&self) -> Result<TenantHandle<'_>, ApiError> {
        Ok(self
            .store
            .tenant(&self.ctx)
            .await?
            .with_request(self.meta.clone()))
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let meta = request_meta(parts);
        match authenticate_caller(parts, state).await {
            Ok(ctx) => Ok(Caller {
                ctx,
                meta,
                store: state.store.clone(),
                policy: state.policy.clone(),
            }),
            Err(e) => Err(record_rejection(state, "auth.token", e, &meta).await),
        }
    }
}

async fn authenticate_caller(
    parts: &Parts,
    state: &AppState,
) -> Result<Arc<TenantContext>, ApiError> {
    // The isolation layer verified the token already (to find the tenant to limit);
    // otherwise verify it here.
    let ctx = match parts.extensions.get::<crate::isolation::Verified>() {
        Some(v) => v.0.clone(),
        None => {
            let token = bearer(parts)?;
            state.auth.authenticate(token).await?
        }
    };
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
    Ok(ctx)
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

/// Proof that the request carries the operator credential, with the request's details for
/// the operator log.
#[derive(Debug, Clone)]
pub struct Operator(pub RequestMeta);

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let meta = request_meta(parts);
        let token = match bearer(parts) {
            Ok(t) => t,
            Err(e) => return Err(record_rejection(state, "auth.operator", e, &meta).await),
        };
        if state.operator.matches(token) {
            tracing::Span::current().record("tenant_id", "operator");
            Ok(Operator(meta))
        } else {
            tracing::warn!(security = true, "operator credential refused");
            if let Err(e) = state
                .store
                .audit()
                .record_rejected("auth.operator", "bad-operator-token", &meta)
                .await
            {
                tracing::error!(error = %e, "audit: cannot record a refused credential");
                return Err(e.into());
            }
            Err(ApiError::BadOperatorToken)
        }
    }
}
