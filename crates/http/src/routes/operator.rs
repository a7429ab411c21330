//! The operator plane: the tenant registry, token minting and key rotation, for the holder of
//! the admin token.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use bulkhead_core::tier::{LimitOverrides, TierLimits};
use bulkhead_core::token::{MintRequest, SigningAlg};
use bulkhead_core::{Role, Roles, Subject, Tenant, TenantName, TenantStatus, TierName};
use bulkhead_store::port::TenantPatch;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Problem, tenant_id};
use crate::auth::Operator;
use crate::extract::{JsonBody, P, QueryPairs, parse_limit};
use crate::problem::ApiError;
use crate::state::AppState;
use bulkhead_audit::Outcome;
use bulkhead_core::TenantId;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_tenant, list_tenants))
        .routes(routes!(get_tenant, patch_tenant, delete_tenant))
        .routes(routes!(mint_token))
        .routes(routes!(rotate_key))
        .routes(routes!(list_tiers))
        .routes(routes!(put_tier))
        .routes(routes!(tenant_limits))
        .routes(routes!(metrics))
}

/// Records an operator action in the operator log and, when it concerns a tenant, in that
/// tenant's log too; durably, before the response.
async fn record(
    st: &AppState,
    op: &Operator,
    action: &str,
    resource: &str,
    tenant: Option<TenantId>,
) -> Result<(), ApiError> {
    st.store
        .audit()
        .record_operator(action, resource, Outcome::Success, &op.0, "")
        .await?;
    if let Some(t) = tenant {
        st.store
            .operator_record_in_tenant_log(t, action, &op.0)
            .await?;
    }
    Ok(())
}

/// Most tenants one list page returns.
const MAX_TENANT_PAGE: usize = 1000;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// Unique among tenants that are not deleted.
    #[schema(example = "Acme Corp")]
    pub name: String,
    /// `free`, `standard` (default) or `enterprise`.
    #[serde(default)]
    pub tier: Option<String>,
    /// Algorithm of the tenant's first signing key: `EdDSA` (default) or `ES256`.
    #[serde(default)]
    pub signing_alg: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantList {
    pub items: Vec<Tenant>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchTenant {
    /// `active` or `suspended`. A suspended tenant's requests are refused with 403; its data is kept.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub tier: Option<String>,
    /// The tenant's own limit overrides, on top of its tier's (fields left out keep the
    /// tier's). `null` or `{}` removes them.
    #[serde(default, deserialize_with = "present")]
    pub limits: Option<Option<LimitOverrides>>,
}

/// Tells a field sent as `null` (`Some(None)`) from one left out (`None`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MintToken {
    /// Who the token is for, in the tenant's own terms (a user or service id).
    #[schema(example = "alice")]
    pub subject: String,
    /// `admin`, `member` or `reader`.
    pub roles: Vec<Role>,
    /// Lifetime in seconds (default 3600).
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MintedToken {
    pub token: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: bulkhead_core::Timestamp,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// `EdDSA` (default) or `ES256`.
    #[serde(default)]
    pub alg: Option<String>,
}

fn signing_alg(s: Option<&str>) -> Result<SigningAlg, ApiError> {
    match s {
        None => Ok(SigningAlg::EdDSA),
        Some(a) => SigningAlg::parse(a).ok_or_else(|| {
            ApiError::BadRequest("signing algorithm must be `EdDSA` or `ES256`".into())
        }),
    }
}

fn tier(st: &AppState, s: &str) -> Result<bulkhead_core::TierName, ApiError> {
    match st.store.tier(s) {
        Some((name, _)) => Ok(name),
        None => {
            let tiers = st.store.tiers();
            let known: Vec<&str> = tiers.keys().map(String::as_str).collect();
            Err(ApiError::BadRequest(format!(
                "unknown tier `{}`: use one of {}",
                s.chars().take(32).collect::<String>(),
                known.join(", ")
            )))
        }
    }
}

/// Onboards a tenant, with its own signing key and data key.
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", request_body = CreateTenant,
    responses((status = 201, body = Tenant), (status = 400, body = Problem), (status = 409, body = Problem)),
    security(("operator_token" = [])))]
async fn create_tenant(
    op: Operator,
    State(st): State<AppState>,
    body: JsonBody<CreateTenant>,
) -> Result<(StatusCode, Json<Tenant>), ApiError> {
    let b = body.value;
    let name = TenantName::parse(&b.name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let tier = tier(&st, b.tier.as_deref().unwrap_or("standard"))?;
    let alg = signing_alg(b.signing_alg.as_deref())?;
    let t = st.store.create_tenant(name, tier, alg).await?;
    tracing::info!(tenant = %t.id, tier = %t.tier, "tenant created");
    record(
        &st,
        &op,
        "tenant.create",
        &format!("tenants/{}", t.id),
        Some(t.id),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(t)))
}

/// Lists tenants in id order (deleted ones included, with status `deleted`).
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants",
    params(("limit" = Option<usize>, Query, description = "1-1000, default 100"), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = TenantList), (status = 400, body = Problem)),
    security(("operator_token" = [])))]
async fn list_tenants(
    op: Operator,
    State(st): State<AppState>,
    QueryPairs(q): QueryPairs,
) -> Result<Json<TenantList>, ApiError> {
    let (mut limit, mut after) = (100, None);
    for (k, v) in q {
        match k.as_str() {
            "limit" => limit = parse_limit(&v, MAX_TENANT_PAGE)?,
            "cursor" => {
                after = Some(tenant_id(&v).map_err(|_| {
                    ApiError::BadRequest("`cursor` is not a cursor this API returned".into())
                })?)
            }
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter `{}`",
                    k.chars().take(64).collect::<String>()
                )));
            }
        }
    }
    let mut items = st.store.list_tenants(after, limit + 1).await?;
    record(&st, &op, "tenant.list", "tenants", None).await?;
    let more = items.len() > limit;
    items.truncate(limit);
    let next_cursor = if more {
        items.last().map(|t| t.id.to_string())
    } else {
        None
    };
    Ok(Json(TenantList { items, next_cursor }))
}

/// Reads a tenant.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}", tag = "tenants", params(("tenant_id" = String, Path)),
    responses((status = 200, body = Tenant), (status = 404, body = Problem)),
    security(("operator_token" = [])))]
async fn get_tenant(
    op: Operator,
    State(st): State<AppState>,
    P(id): P<String>,
) -> Result<Json<Tenant>, ApiError> {
    let t = st.store.get_tenant(tenant_id(&id)?).await?;
    record(&st, &op, "tenant.read", &format!("tenants/{}", t.id), None).await?;
    Ok(Json(t))
}

/// Suspends or resumes a tenant, changes its tier, or sets its own limit overrides. A new
/// tier or new limits apply to the tenant's requests within seconds, on every instance.
#[utoipa::path(patch, path = "/v1/tenants/{tenant_id}", tag = "tenants", params(("tenant_id" = String, Path)),
    request_body = PatchTenant,
    responses((status = 200, body = Tenant), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("operator_token" = [])))]
async fn patch_tenant(
    op: Operator,
    State(st): State<AppState>,
    P(id): P<String>,
    body: JsonBody<PatchTenant>,
) -> Result<Json<Tenant>, ApiError> {
    let id = tenant_id(&id)?;
    let b = body.value;
    let status = match b.status.as_deref() {
        None => None,
        Some("active") => Some(TenantStatus::Active),
        Some("suspended") => Some(TenantStatus::Suspended),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "`status` must be `active` or `suspended` (offboard with DELETE)".into(),
            ));
        }
    };
    let tier = b.tier.as_deref().map(|t| tier(&st, t)).transpose()?;
    let b_limits_changed = b.limits.is_some();
    if let Some(overrides) = b.limits {
        st.store.set_limit_overrides(id, overrides).await?;
        tracing::info!(tenant = %id, "tenant limit overrides changed");
    }
    let t = st
        .store
        .update_tenant(id, TenantPatch { status, tier })
        .await?;
    tracing::info!(tenant = %t.id, status = t.status.as_str(), tier = %t.tier, "tenant updated");
    let action = match status {
        Some(TenantStatus::Suspended) => "tenant.suspend",
        Some(TenantStatus::Active) => "tenant.resume",
        _ if b_limits_changed => "tenant.limits",
        _ => "tenant.update",
    };
    record(&st, &op, action, &format!("tenants/{}", t.id), Some(t.id)).await?;
    Ok(Json(t))
}

/// Offboards a tenant by crypto-shredding: its keys are destroyed (every copy of its data,
/// backups included, becomes unreadable), then its rows are purged. The id is never reused.
#[utoipa::path(delete, path = "/v1/tenants/{tenant_id}", tag = "tenants", params(("tenant_id" = String, Path)),
    responses((status = 204, description = "Offboarded"), (status = 404, body = Problem)),
    security(("operator_token" = [])))]
async fn delete_tenant(
    op: Operator,
    State(st): State<AppState>,
    P(id): P<String>,
) -> Result<StatusCode, ApiError> {
    let id = tenant_id(&id)?;
    let purged = st.store.offboard(id).await?;
    tracing::info!(tenant = %id, purged_records = purged, "tenant offboarded");
    // The tenant's log keeps its entries and checkpoints; this entry is its tombstone.
    record(
        &st,
        &op,
        "tenant.offboard",
        &format!("tenants/{id}"),
        Some(id),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Mints a token for a tenant, signed with the tenant's own active key.
#[utoipa::path(post, path = "/v1/tenants/{tenant_id}/tokens", tag = "tenants", params(("tenant_id" = String, Path)),
    request_body = MintToken,
    responses((status = 201, body = MintedToken), (status = 400, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("operator_token" = [])))]
async fn mint_token(
    op: Operator,
    State(st): State<AppState>,
    P(id): P<String>,
    body: JsonBody<MintToken>,
) -> Result<(StatusCode, Json<MintedToken>), ApiError> {
    let id = tenant_id(&id)?;
    let b = body.value;
    let subject = Subject::parse(&b.subject).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let roles = Roles::from_slice(&b.roles).ok_or_else(|| {
        ApiError::BadRequest("`roles` must name at least one of admin, member, reader".into())
    })?;
    let max = st.auth.verifier().settings().max_ttl_secs;
    let ttl = b
        .ttl_seconds
        .unwrap_or(st.config.default_token_ttl_secs.min(max));
    if ttl == 0 || ttl > max {
        return Err(ApiError::BadRequest(format!(
            "`ttl_seconds` must be from 1 to {max}"
        )));
    }
    let tenant = st.store.get_tenant(id).await?;
    match tenant.status {
        TenantStatus::Active => {}
        TenantStatus::Deleted => return Err(ApiError::NotFound("no such tenant")),
        s => return Err(ApiError::TenantNotActive(s.as_str())),
    }
    let key = st.store.active_signing_key(id).await?;
    let (token, expires_at) = st
        .auth
        .verifier()
        .mint(
            &key,
            &MintRequest {
                subject,
                roles,
                ttl_secs: ttl,
            },
            st.auth.now(),
        )
        .map_err(|e| {
            tracing::error!(error = %e, "minting failed");
            ApiError::Internal
        })?;
    tracing::info!(tenant = %id, kid = %key.public().kid, ttl, "token minted");
    // The token itself is never recorded: its key id and the request are.
    record(
        &st,
        &op,
        "token.mint",
        &format!("tenants/{id}/keys/{}", key.public().kid),
        Some(id),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(MintedToken { token, expires_at })))
}

/// Adds a new signing key and makes it the one new tokens are signed with. Tokens signed with
/// older keys stay valid until they expire.
#[utoipa::path(post, path = "/v1/tenants/{tenant_id}/keys", tag = "tenants", params(("tenant_id" = String, Path)),
    request_body = RotateKey,
    responses((status = 201, description = "The new public key as a JWK", body = Object), (status = 404, body = Problem)),
    security(("operator_token" = [])))]
async fn rotate_key(
    op: Operator,
    State(st): State<AppState>,
    P(id): P<String>,
    body: JsonBody<RotateKey>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let id = tenant_id(&id)?;
    let alg = signing_alg(body.value.alg.as_deref())?;
    let key = st.store.rotate_signing_key(id, alg).await?;
    tracing::info!(tenant = %id, kid = %key.kid, "signing key rotated");
    record(
        &st,
        &op,
        "key.rotate",
        &format!("tenants/{id}/keys/{}", key.kid),
        Some(id),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(key.to_jwk())))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TierInfo {
    #[schema(example = "standard")]
    pub name: String,
    pub limits: TierLimits,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TierList {
    pub items: Vec<TierInfo>,
}

/// Lists every tier in force: those of the configuration, overlaid by those defined through
/// `PUT /v1/tiers/{name}`.
#[utoipa::path(get, path = "/v1/tiers", tag = "limits",
    responses((status = 200, body = TierList), (status = 401, body = Problem)),
    security(("operator_token" = [])))]
async fn list_tiers(_: Operator, State(st): State<AppState>) -> Json<TierList> {
    let items = st
        .store
        .tiers()
        .iter()
        .map(|(name, limits)| TierInfo {
            name: name.clone(),
            limits: *limits,
        })
        .collect();
    Json(TierList { items })
}

/// Creates or replaces a tier. Fields left out take the tier's configured limits (the built-in
/// `standard` limits for a tier the configuration does not define). Tenants on the tier are
/// held to the new limits within seconds, on every instance (tiers are stored in the database).
#[utoipa::path(put, path = "/v1/tiers/{name}", tag = "limits",
    params(("name" = String, Path, description = "Tier name: a-z first, then a-z, 0-9, `_`, `-`; at most 32")),
    request_body = LimitOverrides,
    responses((status = 200, body = TierInfo), (status = 400, body = Problem), (status = 401, body = Problem)),
    security(("operator_token" = [])))]
async fn put_tier(
    op: Operator,
    State(st): State<AppState>,
    P(name): P<String>,
    body: JsonBody<LimitOverrides>,
) -> Result<Json<TierInfo>, ApiError> {
    let name = TierName::parse(&name).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let limits = st.store.put_tier(name.clone(), &body.value).await?;
    tracing::info!(tier = %name, "tier defined");
    record(&st, &op, "tier.put", &format!("tiers/{name}"), None).await?;
    Ok(Json(TierInfo {
        name: name.as_str().to_owned(),
        limits,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantLimits {
    #[schema(example = "standard")]
    pub tier: String,
    /// The tenant's own overrides (empty when it has none).
    pub overrides: LimitOverrides,
    /// What the tenant is held to: its tier's limits with its overrides on top.
    pub effective: TierLimits,
}

/// A tenant's tier, overrides and the limits in force for it.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/limits", tag = "limits", params(("tenant_id" = String, Path)),
    responses((status = 200, body = TenantLimits), (status = 404, body = Problem)),
    security(("operator_token" = [])))]
async fn tenant_limits(
    _: Operator,
    State(st): State<AppState>,
    P(id): P<String>,
) -> Result<Json<TenantLimits>, ApiError> {
    let id = tenant_id(&id)?;
    let state = st
        .store
        .tenant_state(id)
        .await?
        .filter(|s| s.tenant.status != TenantStatus::Deleted)
        .ok_or(ApiError::NotFound("no such tenant"))?;
    Ok(Json(TenantLimits {
        tier: state.tenant.tier.as_str().to_owned(),
        overrides: state.overrides,
        effective: st.store.limits_of(&state),
    }))
}

/// Prometheus metrics (text format 0.0.4): per-tenant requests by outcome, latency, throttles,
/// sheds, quota refusals and storage-quota use (`bulkhead_tenant_quota_used` / `_limit`) for
/// the top tenants by traffic (the rest as `tenant="other"`), and the limiter's own figures. Operator only: tenant ids and traffic are operator data.
#[utoipa::path(get, path = "/metrics", tag = "limits",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain"), (status = 401, body = Problem)),
    security(("operator_token" = [])))]
async fn metrics(_: Operator, State(st): State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    st.isolation.update_quota_gauges(&st.store).await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        st.isolation.metrics.render(),
    )
        .into_response()
}
