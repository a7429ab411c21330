//! Every error the API returns, and the one place they become RFC 9457
//! `application/problem+json` responses.
//!
//! Internal details (storage messages, integrity failures) are logged here with the request's
//! span and never sent: the client gets the problem type and a message written for it.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bulkhead_core::schema::Violation;
use bulkhead_core::tier::Quota;
use bulkhead_core::token::TokenError;
use bulkhead_store::StoreError;
use serde::Serialize;

/// The media type of problem responses.
pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("this request needs a bearer token")]
    Unauthenticated,
    #[error("{0}")]
    InvalidToken(TokenError),
    #[error("operator credentials are invalid")]
    BadOperatorToken,
    #[error("the tenant is {0}")]
    TenantNotActive(&'static str),
    #[error("`X-Tenant-Id` does not match the tenant of the token")]
    TenantMismatch,
    #[error("the policy in force does not allow `{0}`")]
    Forbidden(&'static str),
    #[error("a filter uses a field you may not see")]
    HiddenFilter,
    #[error("the policies are invalid")]
    InvalidPolicy(Vec<bulkhead_policy::Problem>),
    #[error("{0}")]
    NotFound(&'static str),
    #[error("{0}")]
    BadRequest(String),
    #[error("the request body must be JSON (`Content-Type: application/json`)")]
    UnsupportedMediaType,
    #[error("the request body is larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("{0}")]
    RecordTooLarge(String),
    #[error("{0}")]
    TooDeep(String),
    #[error("the record does not match the collection schema")]
    Invalid(Vec<Violation>),
    #[error("{0}")]
    Unprocessable(String),
    #[error("this request needs `If-Match` with the record's current version (its `ETag`)")]
    PreconditionRequired,
    #[error("the record changed: its current version is {0}")]
    PreconditionFailed(u64),
    #[error("{0}")]
    Conflict(String),
    #[error("the `Idempotency-Key` was already used with a different request")]
    IdempotencyConflict,
    #[error("the service is temporarily unavailable; retry shortly")]
    Unavailable,
    #[error("too many requests for this tenant's tier; retry in {0} seconds")]
    RateLimited(u64),
    #[error("this tenant already has {0} requests in progress, its tier's limit; retry shortly")]
    ConcurrencyLimited(u32),
    #[error("the server is saturated and this tenant is over its fair share; retry in {0} seconds")]
    Shed(u64),
    #[error("the `{}` quota of this tenant's tier would be exceeded; nothing was written", .0.as_str())]
    QuotaExceeded(Quota),
    #[error("the request took longer than {0} seconds and was abandoned")]
    Timeout(u64),
    #[error("this method is not allowed on this route")]
    MethodNotAllowed,
    #[error("internal error")]
    Internal,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Errors<'a> {
    Violations(&'a [Violation]),
    Policies(&'a [bulkhead_policy::Problem]),
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'static str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<Errors<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    /// For `quota-exceeded`: the quota (`max_records`, `max_bytes`, `max_collections`).
    #[serde(skip_serializing_if = "Option::is_none")]
    quota: Option<&'static str>,
}

impl ApiError {
    /// Status, problem slug and title.
    fn meta(&self) -> (StatusCode, &'static str, &'static str) {
        use ApiError::*;
        match self {
            Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Authentication required",
            ),
            InvalidToken(_) => (StatusCode::UNAUTHORIZED, "invalid-token", "Invalid token"),
            BadOperatorToken => (
                StatusCode::UNAUTHORIZED,
                "invalid-operator-token",
                "Invalid operator token",
            ),
            TenantNotActive(_) => (
                StatusCode::FORBIDDEN,
                "tenant-not-active",
                "Tenant is not active",
            ),
            TenantMismatch => (StatusCode::FORBIDDEN, "tenant-mismatch", "Tenant mismatch"),
            Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            HiddenFilter => (
                StatusCode::FORBIDDEN,
                "hidden-field-filter",
                "Forbidden filter",
            ),
            InvalidPolicy(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-policy",
                "Invalid policy",
            ),
            NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", "Bad request"),
            UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            BodyTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Request body too large",
            ),
            RecordTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "record-too-large",
                "Record too large",
            ),
            TooDeep(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "json-too-deep",
                "JSON nested too deeply",
            ),
            Invalid(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation-failed",
                "Validation failed",
            ),
            Unprocessable(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-definition",
                "Invalid definition",
            ),
            PreconditionRequired => (
                StatusCode::PRECONDITION_REQUIRED,
                "precondition-required",
                "Precondition required",
            ),
            PreconditionFailed(_) => (
                StatusCode::PRECONDITION_FAILED,
                "precondition-failed",
                "Precondition failed",
            ),
            Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            IdempotencyConflict => (
                StatusCode::CONFLICT,
                "idempotency-key-reused",
                "Idempotency key reused",
            ),
            Timeout(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "Request timed out",
            ),
            MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            RateLimited(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Rate limit exceeded",
            ),
            ConcurrencyLimited(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "concurrency-limited",
                "Concurrency limit exceeded",
            ),
            Shed(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "Server saturated",
            ),
            QuotaExceeded(_) => (StatusCode::FORBIDDEN, "quota-exceeded", "Quota exceeded"),
            Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title) = self.meta();
        let (errors, reason) = match &self {
            ApiError::Invalid(v) => (Some(Errors::Violations(v.as_slice())), None),
            ApiError::InvalidPolicy(p) => (Some(Errors::Policies(p.as_slice())), None),
            ApiError::InvalidToken(e) => (None, Some(e.class())),
            _ => (None, None),
        };
        let body = Problem {
            kind: format!("urn:bulkhead:problem:{slug}"),
            title,
            status: status.as_u16(),
            detail: self.to_string(),
            errors,
            reason,
            quota: match &self {
                ApiError::QuotaExceeded(q) => Some(q.as_str()),
                _ => None,
            },
        };
        let json = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
        let mut resp = (status, json).into_response();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        match &self {
            ApiError::Unauthenticated | ApiError::BadOperatorToken => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::InvalidToken(_) => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            ApiError::Unavailable | ApiError::Timeout(_) | ApiError::ConcurrencyLimited(_) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::RateLimited(secs) | ApiError::Shed(secs) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(*secs));
            }
            _ => {}
        }
        if let ApiError::QuotaExceeded(q) = &self {
            resp.extensions_mut()
                .insert(crate::isolation::ApiErrorKind::Quota(*q));
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::NotFound("no such resource"),
            StoreError::VersionMismatch { current } => ApiError::PreconditionFailed(current),
            StoreError::IdempotencyConflict => ApiError::IdempotencyConflict,
            StoreError::Invalid(v) => ApiError::Invalid(v),
            StoreError::Schema(s) => ApiError::Unprocessable(s.to_string()),
            StoreError::Filter(f) => ApiError::BadRequest(f.to_string()),
            e @ StoreError::RecordTooLarge { .. } => ApiError::RecordTooLarge(e.to_string()),
            e @ StoreError::TooDeep { .. } => ApiError::TooDeep(e.to_string()),
            StoreError::BadCursor => {
                ApiError::BadRequest("`cursor` is not a cursor this API returned".into())
            }
            StoreError::NameTaken(n) => {
                ApiError::Conflict(format!("a tenant named `{n}` already exists"))
            }
            StoreError::TenantNotActive(s) => ApiError::TenantNotActive(s.as_str()),
            StoreError::QuotaExceeded(q) => ApiError::QuotaExceeded(q),
            StoreError::BadLimits(m) => ApiError::BadRequest(m),
            StoreError::Unavailable(m) => {
                tracing::warn!(error = %m, "storage unavailable");
                ApiError::Unavailable
            }
            StoreError::Integrity(m) => {
                // Tampering, a moved row, or a wrong master key: a security event.
                tracing::error!(security = true, error = %m, "stored data failed an integrity check");
                ApiError::Internal
            }
            StoreError::Internal(m) => {
                tracing::error!(error = %m, "internal storage error");
                ApiError::Internal
            }
        }
    }
}
