//! Policies: a tenant admin's Cedar policies (versions, rollback, dry runs) on the tenant
//! plane, and the platform layer on the operator plane.
//!
//! Tenant policies can only narrow what the platform allows: they may hold `forbid` policies
//! only, and a `permit` is refused with 422 (see `bulkhead_policy`). Every submitted text is
//! validated against Bulkhead's Cedar schema before it is stored.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use bulkhead_core::schema::Classification;
use bulkhead_core::{Action, Role, Roles};
use bulkhead_policy::{Explanation, Principal, Resource};
use bulkhead_store::service::PolicyVersion;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::Problem;
use crate::auth::{Caller, Operator};
use crate::extract::JsonBody;
use crate::policy::{authorize, tenant_policies};
use crate::problem::ApiError;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_policies, put_policies))
        .routes(routes!(list_versions))
        .routes(routes!(rollback))
        .routes(routes!(check))
        .routes(routes!(get_platform))
        .routes(routes!(reload))
}

/// Most bytes of one tenant's policy text.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;

/// The policies in force for the caller's tenant.
#[derive(Debug, Serialize, ToSchema)]
pub struct PoliciesInForce {
    /// The tenant's version in force, if it ever stored policies.
    pub version: Option<u64>,
    /// The tenant's Cedar text in force (empty if none).
    pub text: String,
    /// Ids of every policy deciding this tenant's requests: `default/…` (built in),
    /// `platform/<file>/…` (the operator's) and `tenant/v<n>/…` (the tenant's).
    pub policy_ids: Vec<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutPolicies {
    /// Cedar policies (`forbid` only), validated against the schema in `docs/policies.md`.
    /// An empty text removes every tenant policy (as a new version).
    pub policies: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyVersions {
    /// Oldest first; the last is in force.
    pub items: Vec<PolicyVersion>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    /// The version whose text to put back in force (stored as a new version).
    pub version: u64,
}

/// A principal to ask about: defaults to the caller.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckPrincipal {
    pub subject: String,
    #[schema(value_type = Vec<String>)]
    pub roles: Vec<Role>,
}

/// A resource to ask about.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, tag = "type", rename_all = "lowercase")]
pub enum CheckResource {
    /// The tenant (`collection:list`, `policy:*`).
    Tenant,
    Collection {
        collection: String,
    },
    Record {
        collection: String,
        #[serde(default)]
        id: Option<String>,
        #[serde(default)]
        owner: Option<String>,
    },
    Field {
        collection: String,
        /// `public`, `internal`, `confidential` or `restricted`.
        classification: String,
    },
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    #[serde(default)]
    pub principal: Option<CheckPrincipal>,
    /// An action name, e.g. `record:update`.
    pub action: String,
    pub resource: CheckResource,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CheckResponse {
    /// `allow` or `deny`.
    pub decision: String,
    /// Ids of the policies that decided (permits that allowed, or forbids that denied);
    /// empty when nothing permitted (deny by default).
    pub decided_by: Vec<String>,
    /// Policies that failed to evaluate (an error denies).
    pub errors: Vec<String>,
    /// The tenant's policy version the answer was computed with.
    pub version: Option<u64>,
}

fn engine(st: &AppState) -> Result<&bulkhead_policy::Engine, ApiError> {
    st.policy
        .engine()
        .map(|e| e.as_ref())
        .ok_or(ApiError::Conflict(
            "policies are switched off on this server (`policies = false`)".into(),
        ))
}

/// The tenant's policies in force.
#[utoipa::path(get, path = "/v1/policies", tag = "policies",
    responses((status = 200, body = PoliciesInForce), (status = 403, body = Problem)),
    security(("tenant_token" = [])))]
async fn get_policies(
    caller: Caller,
    State(st): State<AppState>,
) -> Result<Json<PoliciesInForce>, ApiError> {
    let ctx = caller.ctx();
    let h = st.store.tenant(ctx).await?;
    authorize(&st.policy, ctx, &h, Action::ReadPolicies, Resource::Tenant).await?;
    let engine = engine(&st)?;
    let active = h.active_policy().await?;
    let set = tenant_policies(engine, &h).await?;
    Ok(Json(PoliciesInForce {
        version: active.as_ref().map(|p| p.version),
        text: active.map(|p| p.text).unwrap_or_default(),
        policy_ids: set.policy_ids(),
    }))
}

async fn store_version(
    st: &AppState,
    caller: &Caller,
    text: String,
    restored_from: Option<u64>,
) -> Result<PolicyVersion, ApiError> {
    let ctx = caller.ctx();
    let h = st.store.tenant(ctx).await?;
    authorize(
        &st.policy,
        ctx,
        &h,
        Action::ManagePolicies,
        Resource::Tenant,
    )
    .await?;
    let engine = engine(st)?;
    if text.len() > MAX_POLICY_BYTES {
        return Err(ApiError::Unprocessable(format!(
            "policies are larger than {MAX_POLICY_BYTES} bytes"
        )));
    }
    // Validated before it is stored; ids are re-derived when the version is loaded.
    engine
        .check_tenant(&text, 0)
        .map_err(ApiError::InvalidPolicy)?;
    let stored = h.put_policy(text, ctx.subject(), restored_from).await?;
    // INVARIANT: only this tenant's cached set is dropped; other instances re-read within
    // the engine's TTL.
    engine.invalidate(h.tenant());
    tracing::info!(
        version = stored.version,
        restored_from,
        "tenant policies stored"
    );
    Ok(stored)
}

/// Replaces the tenant's policies (tenant role `admin` by default): stored as a new version,
/// in force at once. Invalid policies are refused with 422 listing each problem with its line
/// and column; a `permit` is refused (tenant policies can only narrow).
#[utoipa::path(put, path = "/v1/policies", tag = "policies",
    request_body = PutPolicies,
    responses((status = 201, body = PolicyVersion), (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("tenant_token" = [])))]
async fn put_policies(
    caller: Caller,
    State(st): State<AppState>,
    body: JsonBody<PutPolicies>,
) -> Result<(StatusCode, Json<PolicyVersion>), ApiError> {
    let v = store_version(&st, &caller, body.value.policies, None).await?;
    Ok((StatusCode::CREATED, Json(v)))
}

/// Every stored version of the tenant's policies, oldest first.
#[utoipa::path(get, path = "/v1/policies/versions", tag = "policies",
    responses((status = 200, body = PolicyVersions), (status = 403, body = Problem)),
    security(("tenant_token" = [])))]
async fn list_versions(
    caller: Caller,
    State(st): State<AppState>,
) -> Result<Json<PolicyVersions>, ApiError> {
    let ctx = caller.ctx();
    let h = st.store.tenant(ctx).await?;
    authorize(&st.policy, ctx, &h, Action::ReadPolicies, Resource::Tenant).await?;
    Ok(Json(PolicyVersions {
        items: h.policy_versions().await?,
    }))
}

/// Puts an earlier version's text back in force, as a new version (history is append-only).
#[utoipa::path(post, path = "/v1/policies/rollback", tag = "policies",
    request_body = Rollback,
    responses((status = 201, body = PolicyVersion), (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("tenant_token" = [])))]
async fn rollback(
    caller: Caller,
    State(st): State<AppState>,
    body: JsonBody<Rollback>,
) -> Result<(StatusCode, Json<PolicyVersion>), ApiError> {
    let ctx = caller.ctx();
    let h = st.store.tenant(ctx).await?;
    authorize(
        &st.policy,
        ctx,
        &h,
        Action::ManagePolicies,
        Resource::Tenant,
    )
    .await?;
    let old = h.policy_version(body.value.version).await?;
    let v = store_version(&st, &caller, old.text, Some(old.version)).await?;
    Ok((StatusCode::CREATED, Json(v)))
}

/// Dry run: would this principal (default: the caller) be allowed this action on this
/// resource under the tenant's policies in force, and which policies decided?
#[utoipa::path(post, path = "/v1/policies/check", tag = "policies",
    request_body = CheckRequest,
    responses((status = 200, body = CheckResponse), (status = 400, body = Problem), (status = 403, body = Problem)),
    security(("tenant_token" = [])))]
async fn check(
    caller: Caller,
    State(st): State<AppState>,
    body: JsonBody<CheckRequest>,
) -> Result<Json<CheckResponse>, ApiError> {
    let ctx = caller.ctx();
    let h = st.store.tenant(ctx).await?;
    authorize(&st.policy, ctx, &h, Action::ReadPolicies, Resource::Tenant).await?;
    let engine = engine(&st)?;
    let req = body.value;
    let action = Action::parse(&req.action).ok_or_else(|| {
        let a: String = req.action.chars().take(64).collect();
        ApiError::BadRequest(format!("`{a}` is not an action; see `docs/policies.md`"))
    })?;
    let principal = match &req.principal {
        Some(p) => Principal {
            subject: p.subject.as_str(),
            roles: Roles::from_slice(&p.roles)
                .ok_or_else(|| ApiError::BadRequest("`principal.roles` is empty".into()))?,
        },
        None => crate::policy::principal(ctx),
    };
    let resource = match &req.resource {
        CheckResource::Tenant => Resource::Tenant,
        CheckResource::Collection { collection } => Resource::Collection(collection),
        CheckResource::Record {
            collection,
            id,
            owner,
        } => Resource::Record {
            collection,
            id: id.as_deref(),
            owner: owner.as_deref(),
        },
        CheckResource::Field {
            collection,
            classification,
        } => Resource::Field {
            collection,
            classification: Classification::parse(classification).ok_or_else(|| {
                ApiError::BadRequest(
                    "`classification` must be `public`, `internal`, `confidential` or `restricted`"
                        .into(),
                )
            })?,
        },
    };
    let set = tenant_policies(engine, &h).await?;
    let Explanation {
        decision,
        decided_by,
        errors,
    } = engine.explain(&set, &principal, action, &resource);
    Ok(Json(CheckResponse {
        decision: decision.to_owned(),
        decided_by,
        errors,
        version: set.version(),
    }))
}

/// One platform policy file in force.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlatformFile {
    pub name: String,
    pub text: String,
}

/// The platform layer: the built-in defaults plus the operator's files.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlatformPolicies {
    /// Increases on every change of the layer.
    pub generation: u64,
    /// The built-in default policies (always in force).
    pub defaults: String,
    pub files: Vec<PlatformFile>,
}

fn platform(engine: &bulkhead_policy::Engine) -> PlatformPolicies {
    let (generation, files) = engine.platform_sources();
    PlatformPolicies {
        generation,
        defaults: bulkhead_policy::DEFAULT_POLICIES.to_owned(),
        files: files
            .into_iter()
            .map(|(name, text)| PlatformFile { name, text })
            .collect(),
    }
}

/// The platform policies in force (operator).
#[utoipa::path(get, path = "/v1/platform/policies", tag = "platform",
    responses((status = 200, body = PlatformPolicies), (status = 401, body = Problem)),
    security(("operator_token" = [])))]
async fn get_platform(
    _op: Operator,
    State(st): State<AppState>,
) -> Result<Json<PlatformPolicies>, ApiError> {
    Ok(Json(platform(engine(&st)?)))
}

/// Reloads the platform policies from the policy directory now (operator). Invalid files are
/// refused with 422 listing each problem; the policies in force then stay as they were.
#[utoipa::path(post, path = "/v1/platform/policies/reload", tag = "platform",
    responses((status = 200, body = PlatformPolicies), (status = 401, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("operator_token" = [])))]
async fn reload(
    op: Operator,
    State(st): State<AppState>,
) -> Result<Json<PlatformPolicies>, ApiError> {
    let engine = st.policy.engine().cloned().ok_or(ApiError::Conflict(
        "policies are switched off on this server".into(),
    ))?;
    let dir = st.config.policy_dir.clone().ok_or(ApiError::Conflict(
        "no policy directory is configured (`policy_dir`)".into(),
    ))?;
    let files = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || crate::policy::read_policy_dir(&dir))
            .await
            .map_err(|_| ApiError::Internal)?
            .map_err(|e| {
                tracing::error!(error = %e, "cannot read the policy directory");
                ApiError::Internal
            })?
    };
    engine
        .set_platform(files)
        .map_err(ApiError::InvalidPolicy)?;
    tracing::info!(dir = %dir.display(), "platform policies reloaded by the operator");
    st.store
        .audit()
        .record_operator(
            "policy.platform.reload",
            "platform/policies",
            bulkhead_audit::Outcome::Success,
            &op.0,
            "",
        )
        .await?;
    Ok(Json(platform(&engine)))
}
