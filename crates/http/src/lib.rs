//! Bulkhead's HTTP edge. The only crate that knows axum.
//!
//! [`app`] builds the router without binding a socket, so tests drive it in-process or on
//! `127.0.0.1:0`; [`serve`] runs it on a listener until a shutdown future resolves.

pub mod auth;
pub mod extract;
pub mod isolation;
pub mod policy;
pub mod problem;
pub mod routes;
pub mod state;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;

pub use state::{AppState, HttpConfig};

use crate::problem::ApiError;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Bulkhead",
        description = "Strict tenant isolation and per-tenant governance for SaaS backends.\n\n\
            Operator routes take the admin token; tenant routes take a tenant token, and the \
            tenant of a request is always the tenant of its token. Errors are RFC 9457 \
            `application/problem+json`."
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "tenants", description = "Operator plane: the tenant registry, tokens and keys"),
        (name = "collections", description = "Tenant plane: collection definitions"),
        (name = "records", description = "Tenant plane: encrypted, schema-validated records"),
        (name = "audit", description = "Tamper-evident audit logs: entries, signed checkpoints, proofs"),
        (name = "limits", description = "Tiers, limits, usage and metrics: performance isolation between tenants"),
        (name = "policies", description = "Tenant plane: Cedar policies (versions, rollback, dry runs)"),
        (name = "platform", description = "Operator plane: platform policies"),
        (name = "health", description = "Liveness and readiness")
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |desc: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(desc))
                    .build(),
            )
        };
        components
            .add_security_scheme("operator_token", bearer("The admin token (operator plane)"));
        components.add_security_scheme(
            "tenant_token",
            bearer("A tenant token minted by `POST /v1/tenants/{id}/tokens`"),
        );
    }
}

/// The routes and their OpenAPI description, built together so every route is documented.
pub fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(routes::public::router())
        .merge(routes::operator::router())
        .merge(routes::tenant::router())
        .merge(routes::audit::router())
        .merge(routes::policies::router())
        .split_for_parts()
}

/// The OpenAPI document (3.1) of every route.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().1
}

/// The whole application: routes, `/openapi.json`, and the middleware stack.
pub fn app(state: AppState) -> Router {
    let (router, spec) = routes();
    let spec = Arc::new(spec.to_json().unwrap_or_else(|_| "{}".into()));
    let body_limit = state.store.config().limits.max_body_bytes;
    let timeout = state.config.request_timeout;
    let request_id = HeaderName::from_static("x-request-id");
    isolation::spawn_background(&state);
    let isolate = axum::middleware::from_fn_with_state(state.clone(), isolation::isolate);
    router
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let spec = spec.clone();
                async move { ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], spec.as_str().to_owned()) }
            }),
        )
        .fallback(|| async { ApiError::NotFound("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
        // Right after routing: tenant requests are admitted (or refused) before any handler
        // or storage work, inside the request timeout.
        .layer(isolate)
        .layer(axum::middleware::from_fn(move |req: Request, next: axum::middleware::Next| async move {
            match tokio::time::timeout(timeout, next.run(req)).await {
                Ok(resp) => resp,
                Err(_) => {
                    tracing::warn!("request timed out");
                    ApiError::Timeout(timeout.as_secs()).into_response()
                }
            }
        }))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("a handler panicked");
            ApiError::Internal.into_response()
        }))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let route = req.extensions().get::<MatchedPath>().map(MatchedPath::as_str).unwrap_or("unmatched");
                    let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
                    tracing::info_span!("request", method = %req.method(), route, request_id = id, tenant_id = tracing::field::Empty)
                })
                .on_request(())
                .on_response(|resp: &Response, latency: Duration, _span: &tracing::Span| {
                    // The access log: one line per request, off at the default `info` level
                    // (it costs more than the request itself on a fast path); enable with
                    // `log_level = "info,bulkhead::access=debug"`.
                    tracing::debug!(target: "bulkhead::access", status = resp.status().as_u16(), latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX), "response");
                })
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .layer(SetSensitiveRequestHeadersLayer::new([AUTHORIZATION]))
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // With the peer address, for audit entries' source.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
