//! The tenant plane: collections and records, for callers with a tenant token.
//!
//! Every handler starts from [`Caller`] (the verified context), reaches data only through
//! `store.tenant(ctx)`, and has every action decided by the policy engine
//! ([`crate::policy::authorize`]) with that tenant's policies. Fields the caller may not see
//! are omitted from every record it gets back.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bulkhead_core::role::Action;
use bulkhead_core::schema::{ClassSet, FieldPolicy};
use bulkhead_core::tier::{TierLimits, Usage};
use bulkhead_policy::Resource;
use bulkhead_store::TenantHandle;
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
use crate::policy::{authorize, mask, visible_classes};
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
    /// A top-level string field that holds each record's owner (a subject). A record created
    /// without it gets the caller's subject; policies see it as `resource.owner`.
    #[serde(default)]
    pub owner_field: Option<String>,
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
    let ctx = caller.ctx();
    let h = caller.tenant().await?;
    authorize(
        caller.policy(),
        ctx,
        &h,
        Action::ListCollections,
        Resource::Tenant,
    )
    .await?;
    let items = h.list_collections().await?;
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
    let ctx = caller.ctx();
    let name = collection_name(&name)?;
    let h = caller.tenant().await?;
    authorize(
        caller.policy(),
        ctx,
        &h,
        Action::ManageCollection,
        Resource::Collection(name.as_str()),
    )
    .await?;
    let PutCollection {
        schema,
        indexes,
        owner_field,
    } = body.value;
    let (info, created) = h
        .put_collection_with_owner(&name, schema, indexes, owner_field)
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
    let ctx = caller.ctx();
    let name = collection_name(&name)?;
    let h = caller.tenant().await?;
    authorize(
        caller.policy(),
        ctx,
        &h,
        Action::ReadCollection,
        Resource::Collection(name.as_str()),
    )
    .await?;
    Ok(Json(h.get_collection(&name).await?))
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

/// The record as this caller may see it: fields of classes it may not see are omitted.
fn record_response(
    status: StatusCode,
    record: &Record,
    fields: &FieldPolicy,
    visible: ClassSet,
) -> Response {
    let mut shown;
    let record = if fields.hidden(visible).is_empty() {
        record
    } else {
        shown = record.clone();
        mask(&mut shown.data, fields, visible);
        &shown
    };
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
    let ctx = caller.ctx();
    let name = collection_name(&name)?;
    let key = idempotency_key(&headers)?;
    let idem = key.map(|key| Idempotency {
        key,
        body_digest: Sha256::digest(&body.raw).into(),
    });
    let h = caller.tenant().await?;
    let fields = h.fields(&name).await?;
    let mut data = body.value.data;
    // A record created without its owner is owned by its creator.
    if let (Some(owner), Value::Object(m)) = (&fields.owner_field, &mut data)
        && !m.contains_key(owner.as_str())
    {
        m.insert(
            owner.as_str().to_owned(),
            Value::String(ctx.subject().as_str().to_owned()),
        );
    }
    let resource = Resource::Record {
        collection: name.as_str(),
        id: None,
        owner: fields.owner_of(&data),
    };
    authorize(caller.policy(), ctx, &h, Action::CreateRecord, resource).await?;
    let visible = visible_classes(caller.policy(), ctx, &h, name.as_str(), &fields).await?;
    let created = h.create_record(&name, data, idem).await?;
    let mut resp = record_response(StatusCode::CREATED, &created.record, &fields, visible);
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
    let ctx = caller.ctx();
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
    let h = caller.tenant().await?;
    authorize(
        caller.policy(),
        ctx,
        &h,
        Action::ListRecords,
        Resource::Collection(name.as_str()),
    )
    .await?;
    let fields = h.fields(&name).await?;
    let visible = visible_classes(caller.policy(), ctx, &h, name.as_str(), &fields).await?;
    // Filtering on a field the caller may not see would reveal its values: refused, not
    // answered with an empty page.
    if filters.iter().any(|(f, _)| !fields.is_visible(f, visible)) {
        return Err(ApiError::HiddenFilter);
    }
    let mut page = h.query(&name, &filters, cursor.as_deref(), limit).await?;
    if !fields.hidden(visible).is_empty() {
        for r in &mut page.items {
            mask(&mut r.data, &fields, visible);
        }
    }
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
    let ctx = caller.ctx();
    let (name, id) = (collection_name(&name)?, record_id(&id)?);
    let h = caller.tenant().await?;
    let fields = h.fields(&name).await?;
    let record = h.get_record(&name, id).await?;
    let id_text = record.id.to_string();
    let resource = Resource::Record {
        collection: name.as_str(),
        id: Some(&id_text),
        owner: fields.owner_of(&record.data),
    };
    authorize(caller.policy(), ctx, &h, Action::ReadRecord, resource).await?;
    let visible = visible_classes(caller.policy(), ctx, &h, name.as_str(), &fields).await?;
    Ok(record_response(StatusCode::OK, &record, &fields, visible))
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
    let ctx = caller.ctx();
    let (name, id) = (collection_name(&name)?, record_id(&id)?);
    let versions = if_match(&headers)?.ok_or(ApiError::PreconditionRequired)?;
    let h = caller.tenant().await?;
    let fields = h.fields(&name).await?;
    let visible = visible_classes(caller.policy(), ctx, &h, name.as_str(), &fields).await?;
    let hidden = fields.hidden(visible);
    let mut data = body.value.data;
    // The stored record is needed when policies may look at its owner, when fields the caller
    // cannot see must be carried over, or to pick among several `If-Match` versions.
    let current = if fields.owner_field.is_some() || !hidden.is_empty() || versions.len() != 1 {
        Some(h.get_record(&name, id).await?)
    } else {
        None
    };
    let id_text = id.to_string();
    let owner = current.as_ref().and_then(|r| fields.owner_of(&r.data));
    let resource = Resource::Record {
        collection: name.as_str(),
        id: Some(&id_text),
        owner,
    };
    authorize(caller.policy(), ctx, &h, Action::UpdateRecord, resource).await?;
    // Fields the caller cannot see (and the owner) are kept from the stored record unless the
    // new data sets them: a caller cannot erase what it is not shown.
    if let (Some(cur), Value::Object(m)) = (&current, &mut data) {
        let keep = hidden
            .iter()
            .map(|f| f.as_str())
            .chain(fields.owner_field.as_ref().map(|f| f.as_str()));
        for f in keep {
            if !m.contains_key(f)
                && let Some(v) = cur.data.get(f)
            {
                m.insert(f.to_owned(), v.clone());
            }
        }
    }
    // With several candidate versions, the one the record is at (if any) is the one to write.
    let expected = match (versions.as_slice(), &current) {
        ([one], _) => *one,
        (_, Some(cur)) => {
            if !versions.contains(&cur.version) {
                return Err(ApiError::PreconditionFailed(cur.version));
            }
            cur.version
        }
        (_, None) => return Err(ApiError::Internal),
    };
    let record = h.update_record(&name, id, data, expected).await?;
    Ok(record_response(StatusCode::OK, &record, &fields, visible))
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
    let ctx = caller.ctx();
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
    let h = caller.tenant().await?;
    let owner = owner_of_stored(&h, &name, id).await?;
    let id_text = id.to_string();
    let resource = Resource::Record {
        collection: name.as_str(),
        id: Some(&id_text),
        owner: owner.as_deref(),
    };
    authorize(caller.policy(), ctx, &h, Action::DeleteRecord, resource).await?;
    h.delete_record(&name, id, expected).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The stored record's owner, when its collection has an owner field.
async fn owner_of_stored(
    h: &TenantHandle<'_>,
    name: &bulkhead_core::CollectionName,
    id: bulkhead_core::RecordId,
) -> Result<Option<String>, ApiError> {
    let fields = h.fields(name).await?;
    if fields.owner_field.is_none() {
        return Ok(None);
    }
    let record = h.get_record(name, id).await?;
    Ok(fields.owner_of(&record.data).map(str::to_owned))
}
