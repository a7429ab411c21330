//! The SQL of the PostgreSQL adapter, and the decoding of its rows.
//!
//! INVARIANT: every statement on a tenant-owned table filters `tenant_id = $1`, bound from the
//! caller's scope, and runs in a transaction whose `bulkhead.tenant_id` setting is that same
//! tenant, so row-level security filters it a second time. Multi-step writes are the plpgsql
//! functions of the migrations, which filter on their `p_tenant` argument the same way.

use bulkhead_core::crypto::WrappedKey;
use bulkhead_core::tenant::Placement;
use bulkhead_core::token::SigningAlg;
use bulkhead_core::{
    CollectionName, KeyId, RecordId, Tenant, TenantId, TenantName, TenantStatus, TierName,
    Timestamp,
};
use bulkhead_store::BackendError;
use bulkhead_store::port::{CollectionRow, RecordRow, SigningKeyRow, TenantRow};
use tokio_postgres::Row;
use tokio_postgres::types::FromSql;
use uuid::Uuid;

// ---- settings ---------------------------------------------------------------------------

pub(crate) const SETTING: &str = "SELECT value FROM settings WHERE name = $1";
/// Inserts unless present; either way returns the value in force. `DO UPDATE` (to the same
/// value) rather than `DO NOTHING` so that the row is returned, and locked, also when another
/// instance inserted it concurrently.
pub(crate) const INIT_SETTING: &str = "INSERT INTO settings (name, value) VALUES ($1, $2)
     ON CONFLICT (name) DO UPDATE SET value = settings.value
     RETURNING value";
pub(crate) const SET_SETTING: &str = "INSERT INTO settings (name, value) VALUES ($1, $2)
     ON CONFLICT (name) DO UPDATE SET value = excluded.value";

// ---- registry ---------------------------------------------------------------------------

/// A tenant and its first signing key, atomically (one statement).
pub(crate) const CREATE_TENANT: &str = "WITH t AS (
         INSERT INTO tenants (tenant_id, name, tier, status, placement, wrapped_root, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
     )
     INSERT INTO signing_keys (tenant_id, kid, alg, public_key, wrapped_private, created_at, active)
     VALUES ($1, $8, $9, $10, $11, $12, $13)";

/// The columns [`tenant_row`] and [`tenant`] decode, in order.
macro_rules! tenant_columns {
    () => {
        "tenant_id, name, tier, status, created_at, placement, wrapped_root"
    };
}

pub(crate) const TENANT: &str = concat!(
    "SELECT ",
    tenant_columns!(),
    " FROM tenants WHERE tenant_id = $1"
);

/// Tenants in id order after `$1` (the nil id to start).
pub(crate) const LIST_TENANTS: &str = concat!(
    "SELECT ",
    tenant_columns!(),
    " FROM tenants WHERE tenant_id > $1 ORDER BY tenant_id LIMIT $2"
);

/// Changes a tenant that is not deleted; returns the tenant as it is afterwards (also when it
/// was deleted and so left unchanged, as the SQLite adapter does).
pub(crate) const UPDATE_TENANT: &str = concat!(
    "WITH u AS (
         UPDATE tenants SET status = coalesce($2, status), tier = coalesce($3, tier)
          WHERE tenant_id = $1 AND status <> 'deleted'
         RETURNING ",
    tenant_columns!(),
    ")
     SELECT ",
    tenant_columns!(),
    " FROM u
     UNION ALL
     SELECT ",
    tenant_columns!(),
    " FROM tenants WHERE tenant_id = $1 AND NOT EXISTS (SELECT 1 FROM u)"
);

/// Marks the tenant deleted and destroys its key material, in one statement.
pub(crate) const SHRED_TENANT: &str = "WITH k AS (DELETE FROM signing_keys WHERE tenant_id = $1)
     UPDATE tenants SET status = 'deleted', wrapped_root = NULL
      WHERE tenant_id = $1 AND status <> 'deleted'";

pub(crate) const SIGNING_KEYS: &str =
    "SELECT kid, alg, public_key, wrapped_private, created_at, active FROM signing_keys
      WHERE tenant_id = $1 ORDER BY created_at, kid";

/// Adds a key and makes it the only active one, in one statement.
pub(crate) const ADD_SIGNING_KEY: &str = "WITH d AS (
         UPDATE signing_keys SET active = false WHERE tenant_id = $1 AND active
     )
     INSERT INTO signing_keys (tenant_id, kid, alg, public_key, wrapped_private, created_at, active)
     VALUES ($1, $2, $3, $4, $5, $6, $7)";

/// The highest revision of the registry change feed (`migrations/0006_registry_feed.sql`).
pub(crate) const REGISTRY_REVISION: &str = "SELECT coalesce(max(revision), 0) FROM tenants";

/// Tenants changed after revision `$1`, lowest revision first.
pub(crate) const REGISTRY_CHANGES: &str = "SELECT tenant_id, revision FROM tenants
      WHERE revision > $1 ORDER BY revision LIMIT 5000";

// ---- collections --------------------------------------------------------------------------

/// A new collection: only if none of that name exists (`expected = None`).
pub(crate) const CREATE_COLLECTION: &str = "INSERT INTO collections
         (tenant_id, name, version, definition, created_at, updated_at)
     VALUES ($1, $2, $3, $4, $5, $6)
     ON CONFLICT (tenant_id, name) DO NOTHING";

/// A changed collection: only if it is still at the version the caller read (`$7`); takes
/// the collection's advisory lock exclusively, so no record write interleaves. One statement
/// (sets the tenant itself: see `migrations/0002_single_statement.sql`).
pub(crate) const REPLACE_COLLECTION: &str =
    "SELECT bulkhead_replace_collection($1, $2, $3, $4, $5, $6, $7)";

/// One statement: the function sets the tenant for row-level security itself (0007).
pub(crate) const COLLECTION: &str =
    "SELECT name, version, definition, created_at, updated_at FROM bulkhead_get_collection($1, $2)";

pub(crate) const COLLECTIONS: &str =
    "SELECT name, version, definition, created_at, updated_at FROM collections
      WHERE tenant_id = $1 ORDER BY name";

// ---- records ------------------------------------------------------------------------------
//
// The record functions set the tenant (transaction-locally) themselves and run as one
// statement outside any explicit transaction: see `Conn::tenant_statement`.

pub(crate) const INSERT_RECORD: &str = "SELECT outcome, replay
       FROM bulkhead_insert_record($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)";

pub(crate) const UPDATE_RECORD: &str = "SELECT outcome, cur_version, cur_created_at
       FROM bulkhead_update_record($1, $2, $3, $4, $5, $6, $7, $8, $9)";

pub(crate) const DELETE_RECORD: &str =
    "SELECT outcome, cur_version, cur_created_at FROM bulkhead_delete_record($1, $2, $3, $4)";

pub(crate) const REINDEX: &str = "SELECT bulkhead_reindex($1, $2, $3, $4, $5, $6)";

/// One statement (sets the tenant itself: see `migrations/0002_single_statement.sql`).
pub(crate) const GET_RECORD: &str = "SELECT collection, id, version, data, created_at, updated_at
       FROM bulkhead_get_record($1, $2, $3)";

/// Records of a collection in id order, after `$3` (the nil id to start).
pub(crate) const LIST_RECORDS: &str =
    "SELECT collection, id, version, data, created_at, updated_at FROM records
      WHERE tenant_id = $1 AND collection = $2 AND id > $3
      ORDER BY id LIMIT $4";

/// Records whose index holds token `$3` and every token of `$5`, in id order after `$4`.
/// Driven by the first token's index range, which is already in record id order, so the
/// limit stops the scan early; one statement (and one cached plan) for any number of tokens.
pub(crate) const FILTER_RECORDS: &str =
    "SELECT r.collection, r.id, r.version, r.data, r.created_at, r.updated_at
       FROM record_index i
       JOIN records r
         ON r.tenant_id = i.tenant_id AND r.collection = i.collection AND r.id = i.record_id
      WHERE i.tenant_id = $1 AND i.collection = $2 AND i.token = $3 AND i.record_id > $4
        AND NOT EXISTS (
            SELECT 1 FROM unnest($5::bytea[]) AS t(token)
             WHERE NOT EXISTS (
                 SELECT 1 FROM record_index j
                  WHERE j.tenant_id = $1 AND j.collection = $2 AND j.token = t.token
                    AND j.record_id = i.record_id))
      ORDER BY i.record_id LIMIT $6";

/// Every row the tenant owns, in one statement; returns how many records there were.
pub(crate) const PURGE_TENANT: &str = "WITH
         i AS (DELETE FROM record_index WHERE tenant_id = $1),
         c AS (DELETE FROM collections WHERE tenant_id = $1),
         k AS (DELETE FROM idempotency WHERE tenant_id = $1),
         u AS (DELETE FROM tenant_usage WHERE tenant_id = $1),
         p AS (DELETE FROM policies WHERE tenant_id = $1),
         r AS (DELETE FROM records WHERE tenant_id = $1 RETURNING 1)
     SELECT count(*) FROM r";

/// What a connection reports about its tenant setting (for `ping`).
pub(crate) const TENANT_SETTING: &str =
    "SELECT coalesce(current_setting('bulkhead.tenant_id', true), '')";

// ---- conversions --------------------------------------------------------------------------

fn bad(what: &str) -> BackendError {
    BackendError::Other(format!("stored {what} is invalid"))
}

/// Reads column `i`, which must have the expected type.
pub(crate) fn col<'r, T: FromSql<'r>>(row: &'r Row, i: usize) -> Result<T, BackendError> {
    row.try_get(i)
        .map_err(|e| BackendError::Other(format!("cannot read column {i}: {e}")))
}

pub(crate) fn micros(t: Timestamp) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

pub(crate) fn from_micros(us: i64) -> Result<Timestamp, BackendError> {
    Timestamp::from_unix_timestamp_nanos(i128::from(us) * 1000).map_err(|_| bad("time"))
}

pub(crate) fn version(v: i64) -> Result<u64, BackendError> {
    u64::try_from(v).map_err(|_| bad("version"))
}

pub(crate) fn sql_version(v: u64) -> Result<i64, BackendError> {
    i64::try_from(v).map_err(|_| BackendError::Other(format!("version {v} is out of range")))
}

pub(crate) fn sql_limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The smallest id: "from the start" in keyset pagination. Never a real id (not a UUIDv7).
pub(crate) const START: Uuid = Uuid::nil();

pub(crate) fn tenant_id(u: Uuid) -> TenantId {
    TenantId::from_bytes(u.into_bytes())
}

fn tenant_of(r: &Row) -> Result<Tenant, BackendError> {
    let name: String = col(r, 1)?;
    let tier: String = col(r, 2)?;
    let status: String = col(r, 3)?;
    Ok(Tenant {
        id: tenant_id(col(r, 0)?),
        name: TenantName::parse(&name).map_err(|_| bad("tenant name"))?,
        tier: TierName::parse(&tier).map_err(|_| bad("tier"))?,
        status: TenantStatus::parse(&status).ok_or_else(|| bad("status"))?,
        created_at: from_micros(col(r, 4)?)?,
    })
}

/// A tenant row, from [`TENANT`]'s columns.
pub(crate) fn tenant_row(r: &Row) -> Result<TenantRow, BackendError> {
    let placement: String = col(r, 5)?;
    let wrapped: Option<Vec<u8>> = col(r, 6)?;
    Ok(TenantRow {
        tenant: tenant_of(r)?,
        placement: Placement::parse(&placement).ok_or_else(|| bad("placement"))?,
        wrapped_root: wrapped.map(WrappedKey::from_bytes),
    })
}

pub(crate) fn tenant(r: &Row) -> Result<Tenant, BackendError> {
    tenant_of(r)
}

pub(crate) fn signing_key(id: TenantId, r: &Row) -> Result<SigningKeyRow, BackendError> {
    let kid: String = col(r, 0)?;
    let alg: String = col(r, 1)?;
    let wrapped: Vec<u8> = col(r, 3)?;
    Ok(SigningKeyRow {
        tenant: id,
        kid: KeyId::parse(&kid).map_err(|_| bad("kid"))?,
        alg: SigningAlg::parse(&alg).ok_or_else(|| bad("alg"))?,
        public: col(r, 2)?,
        wrapped_private: WrappedKey::from_bytes(wrapped),
        created_at: from_micros(col(r, 4)?)?,
        active: col(r, 5)?,
    })
}

pub(crate) fn collection(r: &Row) -> Result<CollectionRow, BackendError> {
    let name: String = col(r, 0)?;
    Ok(CollectionRow {
        name: CollectionName::parse(&name).map_err(|_| bad("collection name"))?,
        version: version(col(r, 1)?)?,
        sealed_definition: col(r, 2)?,
        created_at: from_micros(col(r, 3)?)?,
        updated_at: from_micros(col(r, 4)?)?,
    })
}

pub(crate) fn record(r: &Row) -> Result<RecordRow, BackendError> {
    let coll: String = col(r, 0)?;
    let id: Uuid = col(r, 1)?;
    Ok(RecordRow {
        collection: CollectionName::parse(&coll).map_err(|_| bad("collection name"))?,
        id: RecordId::from_bytes(id.into_bytes()),
        version: version(col(r, 2)?)?,
        ciphertext: col(r, 3)?,
        created_at: from_micros(col(r, 4)?)?,
        updated_at: from_micros(col(r, 5)?)?,
    })
}
