//! Public routes: health, readiness, a tenant's public keys.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Problem, tenant_id};
use crate::extract::P;
use crate::problem::ApiError;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(jwks))
}

/// Liveness: the process is serving HTTP.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Object)))]
async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: storage answers.
#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, body = Object), (status = 503, body = Problem)))]
async fn readyz(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    st.store.ping().await?;
    Ok(Json(json!({"status": "ready"})))
}

/// A tenant's public signing keys (RFC 7517), and no other tenant's.
#[utoipa::path(get, path = "/v1/tenants/{tenant_id}/jwks.json", tag = "tenants", params(("tenant_id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = Problem)))]
async fn jwks(
    State(st): State<AppState>,
    P(id): P<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let keys = st.store.public_keys(tenant_id(&id)?).await?;
    let keys: Vec<Value> = keys.iter().map(|k| k.to_jwk()).collect();
    Ok((StatusCode::OK, Json(json!({ "keys": keys }))))
}
