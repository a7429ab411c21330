//! The tenant plane: collections and records, for callers with a tenant token.
//!
//! Every handler starts from [`Caller`] (the verified context), checks its roles, and reaches
//! data only through `store.tenant(ctx)`.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bulkhead_core::role::Action;
use bulkhead_core::tier::{TierLimits, Usage};
use bulkhead_store::service::{CollectionInfo, Idempotency, Page, Record};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{Problem, collection_name, record_id};
use crate::auth::Caller;
use crate::extract::{JsonBody, P, QueryPairs, parse_limit};
use crate::problem::ApiError;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_collections))
        .routes(routes!(put_collection, get_collection))
        .routes(routes!(create_record, list_records))
        .routes(routes!(get_record, put_record, delete_record))
        .routes(routes!(usage))
}

/// A tenant's own limits and consumption.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageReport {
    #[schema(example = "standard")]
    pub tier: String,
    /// The limits in force: the tier's, with the tenant's own overrides on top.
    pub limits: TierLimits,
    /// What the tenant stores now.
    pub usage: Usage,
    /// The tenant's requests in progress on this instance (this one included).
    pub in_flight: u32,
}

/// The caller's own tier, limits and consumption — never another tenant's: the tenant is the
/// token's.
#[utoipa::path(get, path = "/v1/usage", tag = "limits",
    responses((status = 200, body = UsageReport), (status = 401, body = Problem), (status = 429, body = Problem)),
    security(("tenant_token" = [])))]
async fn usage(caller: Caller, State(st): State<AppState>) -> Result<Json<UsageReport>, ApiError> {
    let ctx = &caller.ctx;
    let handle = caller.tenant().await?;
    let usage = handle.usage().await?;
    let tier = st
        .store
        .tenant_state(ctx.tenant())
        .await?
        .map(|s| s.tenant.tier.as_str().to_owned())
        .unwrap_or_default();
    Ok(Json(UsageReport {
        tier,
        limits: *handle.limits(),
        usage,
        in_flight: st.isolation.limiter.inflight(ctx.tenant()),
    }))
}

/// A collection definition.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutCollection {
    /// A JSON Schema 2020-12 document describing an object. `$ref`s must stay inside it.
    #[schema(value_type = Object)]
    pub schema: Value,
    /// Top-level fields to index for equality filters; each must have a scalar `type` in the schema.
    #[serde(default)]
    pub indexes: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CollectionList {
    pub items: Vec<CollectionInfo>,
}

/// A record's content.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordBody {
    #[schema(value_type = Object)]
    pub data: Value,
}

/// Lists the caller's collections.
#[utoipa::path(get, path = "/v1/collections", tag = "collections",
    responses((status = 200, body = CollectionList), (status = 401, body = Problem)),
    security(("tenant_token" = [])))]
async fn list_collections(caller: Caller) -> Result<Json<CollectionList>, ApiError> {
    caller.require(Action::ListCollections).await?;
    let items = caller.tenant().await?.list_collections().await?;
    Ok(Json(CollectionList { items }))
}

/// Creates or replaces a collection (tenant role `admin`).
///
/// Changing the indexes re-indexes existing records before the response. A schema change
/// applies to writes made after it; existing records are not re-validated.
#[utoipa::path(put, path = "/v1/collections/{name}", tag = "collections",
    params(("name" = String, Path, description = "Collection name: a-z first, then a-z, 0-9, `_`, `-`; at most 64")),
    request_body = PutCollection,
    responses((status = 201, description = "Created", body = CollectionInfo), (status = 200, description = "Replaced", body = CollectionInfo),
        (status = 400, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("tenant_token" = [])))]
async fn put_collection(
    caller: Caller,
    P(name): P<String>,
    body: JsonBody<PutCollection>,
) -> Result<(StatusCode, Json<CollectionInfo>), ApiError> {
    caller.require(Action::ManageCollection).await?;
    let name = collection_name(&name)?;
    let PutCollection { schema, indexes } = body.value;
    let (info, created) = caller
        .tenant()
        .await?
        .put_collection(&name, schema, indexes)
        .await?;
    tracing::info!(collection = %name, version = info.version, created, "collection defined");
    Ok((
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(info),
    ))
}

/// Reads a collection definition.
#[utoipa::path(get, path = "/v1/collections/{name}", tag = "collections",
    params(("name" = String, Path)),
    responses((status = 200, body = CollectionInfo), (status = 404, body = Problem)),
    security(("tenant_token" = [])))]
async fn get_collection(
    caller: Caller,
    P(name): P<String>,
) -> Result<Json<CollectionInfo>, ApiError> {
    caller.require(Action::ListCollections).await?;
    let name = collection_name(&name)?;
    Ok(Json(caller.tenant().await?.get_collection(&name).await?))
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

fn record_response(status: StatusCode, record: &Record) -> Response {
    let mut resp = (status, Json(record)).into_response();
    resp.headers_mut()
        .insert(header::ETAG, etag(record.version));
    resp
}

/// Parses `If-Match`: the `ETag` as sent (`"3"`) or the bare version (`3`); a list matches if
/// any member does. `None` when the header is absent.
fn if_match(headers: &HeaderMap) -> Result<Option<Vec<u64>>, ApiError> {
    let mut versions = Vec::new();
    let mut seen = false;
    for v in headers.get_all(header::IF_MATCH) {
        seen = true;
        let s = v.to_str().map_err(|_| bad_if_match())?;
        for part in s.split(',') {
            let p = part.trim();
            let p = p
                .strip_prefix('"')
                .and_then(|p| p.strip_suffix('"'))
                .unwrap_or(p);
            versions.push(p.parse::<u64>().map_err(|_| bad_if_match())?);
        }
    }
    Ok(seen.then_some(versions))
}

fn bad_if_match() -> ApiError {
    ApiError::BadRequest(
        "`If-Match` must be the record's ETag (e.g. `\"3\"`) or its version number".into(),
    )
}

const IDEMPOTENCY_KEY: &str = "idempotency-key";

fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(v) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(s) if !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(s))
        }
        _ => Err(ApiError::BadRequest(
            "`Idempotency-Key` must be 1-255 visible ASCII characters".into(),
        )),
    }
}

/// Creates a record (roles `admin`, `member`).
///
/// With an `Idempotency-Key` header, repeating the same request returns the first response
/// (with `Idempotency-Replayed: true`) and creates nothing; the same key with a different body
/// is refused with 409. Keys are remembered for 24 hours, per tenant.
#[utoipa::path(post, path = "/v1/collections/{name}/records", tag = "records",
    params(("name" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body = RecordBody,
    responses((status = 201, body = Record, headers(("ETag" = String))), (status = 400, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem), (status = 413, body = Problem), (status = 422, body = Problem)),
    security(("tenant_token" = [])))]
async fn create_record(
    caller: Caller,
    P(name): P<String>,
    headers: HeaderMap,
    body: JsonBody<RecordBody>,
) -> Result<Response, ApiError> {
    caller.require(Action::WriteRecord).await?;
    let name = collection_name(&name)?;
    let key = idempotency_key(&headers)?;
    let idem = key.map(|key| Idempotency {
        key,
        body_digest: Sha256::digest(&body.raw).into(),
    });
    let created = caller
        .tenant()
        .await?
        .create_record(&name, body.value.data, idem)
        .await?;
    let mut resp = record_response(StatusCode::CREATED, &created.record);
    let location = format!("/v1/collections/{name}/records/{}", created.record.id);
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    if created.replayed {
        resp.headers_mut()
            .insert("idempotency-replayed", HeaderValue::from_static("true"));
    }
    Ok(resp)
}

/// Lists records, optionally filtered by equality on indexed fields (`where.<field>=<value>`).
#[utoipa::path(get, path = "/v1/collections/{name}/records", tag = "records",
    params(("name" = String, Path),
        ("limit" = Option<usize>, Query, description = "1 to the server's page limit (default 100)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` from the previous page"),
        ("where.<field>" = Option<String>, Query, description = "Equality filter on an indexed field; repeat for several")),
    responses((status = 200, body = Page), (status = 400, body = Problem), (status = 404, body = Problem)),
    security(("tenant_token" = [])))]
async fn list_records(
    caller: Caller,
    State(st): State<AppState>,
    P(name): P<String>,
    QueryPairs(query): QueryPairs,
) -> Result<Json<Page>, ApiError> {
    caller.require(Action::ListRecords).await?;
    let name = collection_name(&name)?;
    let max = st.store.config().limits.max_page_size;
    let (mut limit, mut cursor, mut filters) = (100.min(max), None, Vec::new());
    for (k, v) in query {
        match k.as_str() {
            "limit" => limit = parse_limit(&v, max)?,
            "cursor" => cursor = Some(v),
            _ => match k.strip_prefix("where.") {
                Some(field) => filters.push((field.to_owned(), v)),
                None => {
                    let k: String = k.chars().take(64).collect();
                    return Err(ApiError::BadRequest(format!(
                        "unknown query parameter `{k}`: use `limit`, `cursor` or `where.<field>`"
                    )));
                }
            },
        }
    }
    let page = caller
        .tenant()
        .await?
        .query(&name, &filters, cursor.as_deref(), limit)
        .await?;
    Ok(Json(page))
}

/// Reads a record. Another tenant's record is a 404, exactly like one that never existed.
#[utoipa::path(get, path = "/v1/collections/{name}/records/{id}", tag = "records",
    params(("name" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = Record, headers(("ETag" = String))), (status = 404, body = Problem)),
    security(("tenant_token" = [])))]
async fn get_record(
    caller: Caller,
    P((name, id)): P<(String, String)>,
) -> Result<Response, ApiError> {
    caller.require(Action::ReadRecord).await?;
    let (name, id) = (collection_name(&name)?, record_id(&id)?);
    let record = caller.tenant().await?.get_record(&name, id).await?;
    Ok(record_response(StatusCode::OK, &record))
}

/// Replaces a record's data. Requires `If-Match` with the current `ETag` (428 without, 412 if stale).
#[utoipa::path(put, path = "/v1/collections/{name}/records/{id}", tag = "records",
    params(("name" = String, Path), ("id" = String, Path), ("If-Match" = String, Header, description = "The record's ETag, or its bare version number")),
    request_body = RecordBody,
    responses((status = 200, body = Record, headers(("ETag" = String))), (status = 404, body = Problem),
        (status = 412, body = Problem), (status = 422, body = Problem), (status = 428, body = Problem)),
    security(("tenant_token" = [])))]
async fn put_record(
    caller: Caller,
    P((name, id)): P<(String, String)>,
    headers: HeaderMap,
    body: JsonBody<RecordBody>,
) -> Result<Response, ApiError> {
    caller.require(Action::WriteRecord).await?;
    let (name, id) = (collection_name(&name)?, record_id(&id)?);
    let versions = if_match(&headers)?.ok_or(ApiError::PreconditionRequired)?;
    let h = caller.tenant().await?;
    // With several candidate versions, the one the record is at (if any) is the one to write.
    let expected = match versions.as_slice() {
        [one] => *one,
        _ => {
            let current = h.get_record(&name, id).await?.version;
            if !versions.contains(&current) {
                return Err(ApiError::PreconditionFailed(current));
            }
            current
        }
    };
    let record = h
        .update_record(&name, id, body.value.data, expected)
        .await?;
    Ok(record_response(StatusCode::OK, &record))
}

/// Deletes a record; with `If-Match`, only if it is still at that version.
#[utoipa::path(delete, path = "/v1/collections/{name}/records/{id}", tag = "records",
    params(("name" = String, Path), ("id" = String, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 204, description = "Deleted"), (status = 404, body = Problem), (status = 412, body = Problem)),
    security(("tenant_token" = [])))]
async fn delete_record(
    caller: Caller,
    P((name, id)): P<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    caller.require(Action::DeleteRecord).await?;
    let (name, id) = (collection_name(&name)?, record_id(&id)?);
    let expected = match if_match(&headers)? {
        None => None,
        Some(v) if v.len() == 1 => v.first().copied(),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "`If-Match` on delete takes one version".into(),
            ));
        }
    };
    caller
        .tenant()
        .await?
        .delete_record(&name, id, expected)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
