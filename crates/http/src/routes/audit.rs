//! The audit API: a tenant reads its own log, checkpoints and proofs (role `admin`); the
//! operator reads any log; anyone reads the server's public audit key.
//!
//! A verifier needs only these responses and the key from `GET /v1/audit/keys`
//! (`bulkhead audit verify-proof` checks saved responses offline; docs/audit.md).

use axum::Json;
use axum::extract::State;
use bulkhead_audit::checkpoint::{
    CheckpointJson, ConsistencyProofJson, InclusionProofJson, KeyJson,
};
use bulkhead_audit::{LogId, Outcome};
use bulkhead_core::role::Action;
use bulkhead_store::AuditScope;
use bulkhead_store::audit::{AuditFilter, AuditPage};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::Problem;
use crate::auth::{Caller, Operator};
use crate::extract::{P, QueryPairs, parse_limit};
use crate::problem::ApiError;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(keys))
        .routes(routes!(entries))
        .routes(routes!(checkpoint))
        .routes(routes!(inclusion))
        .routes(routes!(consistency))
        .routes(routes!(operator_entries))
        .routes(routes!(operator_checkpoint))
        .routes(routes!(operator_inclusion))
        .routes(routes!(operator_consistency))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditKeys {
    #[schema(value_type = Vec<Object>)]
    pub keys: Vec<KeyJson>,
}

/// The server's public audit key(s): Ed25519, checkpoints are signed with it.
#[utoipa::path(get, path = "/v1/audit/keys", tag = "audit",
    responses((status = 200, body = AuditKeys)))]
async fn keys(State(st): State<AppState>) -> Json<AuditKeys> {
    Json(AuditKeys {
        keys: vec![st.store.audit().public_key().to_json()],
    })
}

fn number(name: &str, v: &str) -> Result<u64, ApiError> {
    v.parse()
        .map_err(|_| ApiError::BadRequest(format!("`{name}` must be a non-negative integer")))
}

fn time(name: &str, v: &str) -> Result<bulkhead_core::Timestamp, ApiError> {
    bulkhead_core::Timestamp::parse(v, &time::format_description::well_known::Rfc3339)
        .map_err(|_| ApiError::BadRequest(format!("`{name}` must be an RFC 3339 time")))
}

fn unknown(k: &str) -> ApiError {
    ApiError::BadRequest(format!(
        "unknown query parameter `{}`",
        k.chars().take(64).collect::<String>()
    ))
}

async fn list(
    st: &AppState,
    scope: &AuditScope,
    query: Vec<(String, String)>,
) -> Result<AuditPage, ApiError> {
    let (mut filter, mut cursor, mut limit) = (AuditFilter::default(), None, 100);
    for (k, v) in query {
        match k.as_str() {
            "since" => filter.since = Some(time("since", &v)?),
            "until" => filter.until = Some(time("until", &v)?),
            "action" => filter.action = Some(v),
            "cursor" => cursor = Some(v),
            "limit" => limit = parse_limit(&v, 1000)?,
            _ => return Err(unknown(&k)),
        }
    }
    Ok(st
        .store
        .audit()
        .entries(scope, &filter, cursor.as_deref(), limit)
        .await?)
}

fn two(query: Vec<(String, String)>, a: &str, b: &str) -> Result<(u64, u64), ApiError> {
    let (mut x, mut y) = (None, None);
    for (k, v) in query {
        if k == a {
            x = Some(number(a, &v)?);
        } else if k == b {
            y = Some(number(b, &v)?);
        } else {
            return Err(unknown(&k));
        }
    }
    match (x, y) {
        (Some(x), Some(y)) => Ok((x, y)),
        _ => Err(ApiError::BadRequest(format!(
            "`{a}` and `{b}` are required"
        ))),
    }
}

/// The caller's own audit log, oldest first (tenant role `admin`).
#[utoipa::path(get, path = "/v1/audit", tag = "audit",
    params(("since" = Option<String>, Query, description = "RFC 3339; entries at or after"),
        ("until" = Option<String>, Query, description = "RFC 3339; entries before"),
        ("action" = Option<String>, Query, description = "e.g. `record.read`"),
        ("cursor" = Option<String>, Query), ("limit" = Option<usize>, Query, description = "1-1000, default 100")),
    responses((status = 200, body = AuditPage), (status = 400, body = Problem), (status = 403, body = Problem)),
    security(("tenant_token" = [])))]
async fn entries(
    caller: Caller,
    State(st): State<AppState>,
    QueryPairs(q): QueryPairs,
) -> Result<Json<AuditPage>, ApiError> {
    let ctx = caller.require(Action::ReadAudit).await?;
    let scope = st.store.tenant_audit(ctx);
    let page = list(&st, &scope, q).await?;
    read_recorded(&st, &caller, "audit").await?;
    Ok(Json(page))
}

/// The latest signed checkpoint of the caller's log.
#[utoipa::path(get, path = "/v1/audit/checkpoint", tag = "audit",
    responses((status = 200, body = Object), (status = 404, body = Problem)),
    security(("tenant_token" = [])))]
async fn checkpoint(
    caller: Caller,
    State(st): State<AppState>,
) -> Result<Json<CheckpointJson>, ApiError> {
    let ctx = caller.require(Action::ReadAudit).await?;
    let scope = st.store.tenant_audit(ctx);
    let cp = st.store.audit().latest_checkpoint(&scope).await?.to_json();
    read_recorded(&st, &caller, "audit/checkpoint").await?;
    Ok(Json(cp))
}

/// The proof that entry `seq` is in the signed checkpoint of `size` entries.
#[utoipa::path(get, path = "/v1/audit/proof/inclusion", tag = "audit",
    params(("seq" = u64, Query), ("size" = u64, Query, description = "The size of a signed checkpoint")),
    responses((status = 200, body = Object), (status = 404, body = Problem)),
    security(("tenant_token" = [])))]
async fn inclusion(
    caller: Caller,
    State(st): State<AppState>,
    QueryPairs(q): QueryPairs,
) -> Result<Json<InclusionProofJson>, ApiError> {
    let ctx = caller.require(Action::ReadAudit).await?;
    let (seq, size) = two(q, "seq", "size")?;
    let scope = st.store.tenant_audit(ctx);
    let p = st.store.audit().inclusion(&scope, seq, size).await?;
    read_recorded(&st, &caller, "audit/proof").await?;
    Ok(Json(p))
}

/// The proof that the signed checkpoint of `from` entries is a prefix of the one of `to`.
#[utoipa::path(get, path = "/v1/audit/proof/consistency", tag = "audit",
    params(("from" = u64, Query), ("to" = u64, Query)),
    responses((status = 200, body = Object), (status = 404, body = Problem)),
    security(("tenant_token" = [])))]
async fn consistency(
    caller: Caller,
    State(st): State<AppState>,
    QueryPairs(q): QueryPairs,
) -> Result<Json<ConsistencyProofJson>, ApiError> {
    let ctx = caller.require(Action::ReadAudit).await?;
    let (from, to) = two(q, "from", "to")?;
    let scope = st.store.tenant_audit(ctx);
    let p = st.store.audit().consistency(&scope, from, to).await?;
    read_recorded(&st, &caller, "audit/proof").await?;
    Ok(Json(p))
}

/// Reading the audit log is an access like any other: it is on record before it is answered.
async fn read_recorded(st: &AppState, caller: &Caller, resource: &str) -> Result<(), ApiError> {
    Ok(st
        .store
        .audit()
        .record(
            &caller.ctx,
            "audit.read",
            resource,
            Outcome::Success,
            &caller.meta,
            "",
        )
        .await?)
}

fn log_id(s: &str) -> Result<LogId, ApiError> {
    LogId::parse(s).ok_or_else(|| ApiError::BadRequest("a log is a tenant id or `operator`".into()))
}

/// Any log, for the operator: a tenant's (by id) or the operator plane's (`operator`).
#[utoipa::path(get, path = "/v1/audit/logs/{log}", tag = "audit",
    params(("log" = String, Path, description = "A tenant id, or `operator`"),
        ("since" = Option<String>, Query), ("until" = Option<String>, Query),
        ("action" = Option<String>, Query), ("cursor" = Option<String>, Query), ("limit" = Option<usize>, Query)),
    responses((status = 200, body = AuditPage), (status = 400, body = Problem)),
    security(("operator_token" = [])))]
async fn operator_entries(
    op: Operator,
    State(st): State<AppState>,
    P(log): P<String>,
    QueryPairs(q): QueryPairs,
) -> Result<Json<AuditPage>, ApiError> {
    let scope = st.store.operator_audit(log_id(&log)?);
    record_operator_read(&st, &op, &log).await?;
    Ok(Json(list(&st, &scope, q).await?))
}

/// The latest signed checkpoint of any log.
#[utoipa::path(get, path = "/v1/audit/logs/{log}/checkpoint", tag = "audit",
    params(("log" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = Problem)),
    security(("operator_token" = [])))]
async fn operator_checkpoint(
    op: Operator,
    State(st): State<AppState>,
    P(log): P<String>,
) -> Result<Json<CheckpointJson>, ApiError> {
    let scope = st.store.operator_audit(log_id(&log)?);
    record_operator_read(&st, &op, &log).await?;
    Ok(Json(
        st.store.audit().latest_checkpoint(&scope).await?.to_json(),
    ))
}

/// An inclusion proof in any log.
#[utoipa::path(get, path = "/v1/audit/logs/{log}/proof/inclusion", tag = "audit",
    params(("log" = String, Path), ("seq" = u64, Query), ("size" = u64, Query)),
    responses((status = 200, body = Object), (status = 404, body = Problem)),
    security(("operator_token" = [])))]
async fn operator_inclusion(
    op: Operator,
    State(st): State<AppState>,
    P(log): P<String>,
    QueryPairs(q): QueryPairs,
) -> Result<Json<InclusionProofJson>, ApiError> {
    let (seq, size) = two(q, "seq", "size")?;
    let scope = st.store.operator_audit(log_id(&log)?);
    record_operator_read(&st, &op, &log).await?;
    Ok(Json(st.store.audit().inclusion(&scope, seq, size).await?))
}

/// A consistency proof in any log.
#[utoipa::path(get, path = "/v1/audit/logs/{log}/proof/consistency", tag = "audit",
    params(("log" = String, Path), ("from" = u64, Query), ("to" = u64, Query)),
    responses((status = 200, body = Object), (status = 404, body = Problem)),
    security(("operator_token" = [])))]
async fn operator_consistency(
    op: Operator,
    State(st): State<AppState>,
    P(log): P<String>,
    QueryPairs(q): QueryPairs,
) -> Result<Json<ConsistencyProofJson>, ApiError> {
    let (from, to) = two(q, "from", "to")?;
    let scope = st.store.operator_audit(log_id(&log)?);
    record_operator_read(&st, &op, &log).await?;
    Ok(Json(st.store.audit().consistency(&scope, from, to).await?))
}

/// Records an operator's read of `log` in the operator log, durably, before it is answered.
async fn record_operator_read(st: &AppState, op: &Operator, log: &str) -> Result<(), ApiError> {
    st.store
        .audit()
        .record_operator(
            "audit.read",
            &format!("audit/{log}"),
            Outcome::Success,
            &op.0,
            "",
        )
        .await?;
    Ok(())
}
