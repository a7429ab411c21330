//! The API's routes, grouped by plane.

pub mod audit;
pub mod operator;
pub mod policies;
pub mod public;
pub mod tenant;

use bulkhead_core::{CollectionName, RecordId, TenantId};

use crate::problem::ApiError;

pub(crate) fn collection_name(s: &str) -> Result<CollectionName, ApiError> {
    CollectionName::parse(s).map_err(|e| ApiError::BadRequest(e.to_string()))
}

pub(crate) fn record_id(s: &str) -> Result<RecordId, ApiError> {
    RecordId::parse(s).map_err(|e| ApiError::BadRequest(e.to_string()))
}

pub(crate) fn tenant_id(s: &str) -> Result<TenantId, ApiError> {
    TenantId::parse(s).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// The problem document every error response carries (RFC 9457), for the OpenAPI description.
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code, reason = "documentation only")]
pub struct Problem {
    /// `urn:bulkhead:problem:<slug>`.
    #[schema(example = "urn:bulkhead:problem:not-found")]
    r#type: String,
    title: String,
    status: u16,
    /// What was wrong, written for the caller.
    detail: String,
    /// For `validation-failed`: each violation's JSON Pointer and message. For
    /// `invalid-policy`: each problem's `source`, `line`, `column`, `policy` and `message`.
    errors: Option<Vec<serde_json::Value>>,
    /// For `invalid-token`: the reason class (`expired`, `bad_signature`, …).
    reason: Option<String>,
    /// For `quota-exceeded`: the quota that would be exceeded (`max_records`, `max_bytes`,
    /// `max_collections`).
    quota: Option<String>,
}
