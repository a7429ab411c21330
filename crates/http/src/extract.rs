//! Extractors that turn malformed input into problem responses instead of plain-text errors.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::problem::ApiError;
use crate::state::AppState;

/// A JSON body, parsed strictly, with the raw bytes kept (for idempotency digests).
#[derive(Debug)]
pub struct JsonBody<T> {
    pub value: T,
    pub raw: Bytes,
}

fn is_json(ct: &str) -> bool {
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let ct = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !is_json(ct) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let limit = state.store.config().limits.max_body_bytes;
        let raw = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::BodyTooLarge(limit)
            } else {
                ApiError::BadRequest("the request body could not be read".into())
            }
        })?;
        let value = parse_json(&raw, state.store.config().limits.max_json_depth)?;
        Ok(Self { value, raw })
    }
}

/// Parses JSON with messages a caller can act on.
pub fn parse_json<T: DeserializeOwned>(raw: &[u8], max_depth: usize) -> Result<T, ApiError> {
    serde_json::from_slice(raw).map_err(|e| {
        if e.to_string().starts_with("recursion limit exceeded") {
            return ApiError::TooDeep(format!(
                "the request body nests too deeply (records may nest at most {max_depth} levels)"
            ));
        }
        match e.classify() {
            serde_json::error::Category::Data => {
                ApiError::BadRequest(format!("invalid request body: {e}"))
            }
            _ => ApiError::BadRequest(format!("the request body is not valid JSON: {e}")),
        }
    })
}

/// Path parameters, with a problem response when they cannot be decoded.
#[derive(Debug)]
pub struct P<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for P<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| P(v))
            .map_err(|e| ApiError::BadRequest(format!("invalid path: {e}")))
    }
}

/// The query string as ordered pairs.
#[derive(Debug)]
pub struct QueryPairs(pub Vec<(String, String)>);

impl FromRequestParts<AppState> for QueryPairs {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| QueryPairs(v))
            .map_err(|e| ApiError::BadRequest(format!("invalid query string: {e}")))
    }
}

/// Parses `limit` within `1..=max`.
pub fn parse_limit(raw: &str, max: usize) -> Result<usize, ApiError> {
    match raw.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::BadRequest(format!(
            "`limit` must be a whole number from 1 to {max}"
        ))),
    }
}
