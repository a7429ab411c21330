//! The SQL of the SQLite adapter. Every function on tenant-owned tables takes the tenant id
//! from the caller's scope and filters on it in every statement.

use bulkhead_core::crypto::WrappedKey;
use bulkhead_core::tenant::Placement;
use bulkhead_core::token::SigningAlg;
use bulkhead_core::{
    CollectionName, KeyId, RecordId, Tenant, TenantId, TenantName, TenantStatus, TierName,
    Timestamp,
};
use bulkhead_store::BackendError;
use bulkhead_store::port::{
    CollectionRow, IndexToken, InsertOutcome, InsertRow, PolicyRow, RecordRow, SigningKeyRow,
    TenantPatch, TenantRow, UpdateRow, WriteOutcome,
};
use rusqlite::{Connection, OptionalExtension, Row, params};

/// Maps a driver error to the port's classes.
pub(crate) fn map(e: rusqlite::Error) -> BackendError {
    use rusqlite::ErrorCode;
    if let rusqlite::Error::FromSqlConversionFailure(_, _, inner) = &e
        && let Some(d) = inner.downcast_ref::<crate::audit::DamagedBlock>()
    {
        return BackendError::AuditDamaged {
            at: d.at,
            what: d.what.clone(),
        };
    }
    match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure => BackendError::Unavailable(e.to_string()),
            ErrorCode::CannotOpen => BackendError::Unavailable(e.to_string()),
            ErrorCode::ConstraintViolation => BackendError::Conflict(e.to_string()),
            _ => BackendError::Other(e.to_string()),
        },
        _ => BackendError::Other(e.to_string()),
    }
}

pub(crate) fn bad(what: &str) -> rusqlite::Error {
    rusqlite::Error::InvalidColumnType(
        0,
        format!("stored {what} is invalid"),
        rusqlite::types::Type::Blob,
    )
}

pub(crate) fn micros(t: Timestamp) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

pub(crate) fn from_micros(us: i64) -> rusqlite::Result<Timestamp> {
    Timestamp::from_unix_timestamp_nanos(i128::from(us) * 1000).map_err(|_| bad("time"))
}

fn version(v: i64) -> rusqlite::Result<u64> {
    u64::try_from(v).map_err(|_| bad("version"))
}

fn sql_version(v: u64) -> rusqlite::Result<i64> {
    i64::try_from(v).map_err(|_| bad("version"))
}

fn sql_limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

// ---- settings ---------------------------------------------------------------------------

pub(crate) fn setting(c: &Connection, name: &str) -> rusqlite::Result<Option<Vec<u8>>> {
    c.prepare_cached("SELECT value FROM settings WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()
}

pub(crate) fn init_setting(c: &Connection, name: &str, value: &[u8]) -> rusqlite::Result<Vec<u8>> {
    c.prepare_cached("INSERT OR IGNORE INTO settings (name, value) VALUES (?1, ?2)")?
        .execute(params![name, value])?;
    c.prepare_cached("SELECT value FROM settings WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
}

pub(crate) fn set_setting(c: &Connection, name: &str, value: &[u8]) -> rusqlite::Result<()> {
    c.prepare_cached("INSERT OR REPLACE INTO settings (name, value) VALUES (?1, ?2)")?
        .execute(params![name, value])?;
    Ok(())
}

// ---- registry ---------------------------------------------------------------------------

pub(crate) fn create_tenant(
    c: &Connection,
    row: &TenantRow,
    key: &SigningKeyRow,
) -> rusqlite::Result<()> {
    let t = &row.tenant;
    c.prepare_cached(
        "INSERT INTO tenants (id, name, tier, status, placement, wrapped_root, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        t.id.as_bytes(),
        t.name.as_str(),
        t.tier.as_str(),
        t.status.as_str(),
        row.placement.as_str(),
        row.wrapped_root.as_ref().map(WrappedKey::as_bytes),
        micros(t.created_at),
    ])?;
    insert_key(c, key)
}

fn insert_key(c: &Connection, key: &SigningKeyRow) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO signing_keys (tenant_id, kid, alg, public, wrapped_private, created_at, active)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        key.tenant.as_bytes(),
        key.kid.as_str(),
        key.alg.as_str(),
        key.public,
        key.wrapped_private.as_bytes(),
        micros(key.created_at),
        key.active,
    ])?;
    Ok(())
}

fn tenant_of(r: &Row<'_>) -> rusqlite::Result<Tenant> {
    let id: Vec<u8> = r.get(0)?;
    let name: String = r.get(1)?;
    let tier: String = r.get(2)?;
    let status: String = r.get(3)?;
    Ok(Tenant {
        id: TenantId::from_slice(&id).ok_or_else(|| bad("tenant id"))?,
        name: TenantName::parse(&name).map_err(|_| bad("tenant name"))?,
        tier: TierName::parse(&tier).map_err(|_| bad("tier"))?,
        status: TenantStatus::parse(&status).ok_or_else(|| bad("status"))?,
        created_at: from_micros(r.get(4)?)?,
    })
}

const TENANT_COLUMNS: &str = "id, name, tier, status, created_at, placement, wrapped_root";

pub(crate) fn tenant(c: &Connection, id: TenantId) -> rusqlite::Result<Option<TenantRow>> {
    c.prepare_cached(&format!(
        "SELECT {TENANT_COLUMNS} FROM tenants WHERE id = ?1"
    ))?
    .query_row([id.as_bytes()], |r| {
        let placement: String = r.get(5)?;
        let wrapped: Option<Vec<u8>> = r.get(6)?;
        Ok(TenantRow {
            tenant: tenant_of(r)?,
            placement: Placement::parse(&placement).ok_or_else(|| bad("placement"))?,
            wrapped_root: wrapped.map(WrappedKey::from_bytes),
        })
    })
    .optional()
}

pub(crate) fn list_tenants(
    c: &Connection,
    after: Option<TenantId>,
    limit: usize,
) -> rusqlite::Result<Vec<Tenant>> {
    let after = after.map(|a| a.as_bytes().to_vec()).unwrap_or_default();
    let mut st = c.prepare_cached(&format!(
        "SELECT {TENANT_COLUMNS} FROM tenants WHERE id > ?1 ORDER BY id LIMIT ?2"
    ))?;
    let rows = st.query_map(params![after, sql_limit(limit)], tenant_of)?;
    rows.collect()
}

pub(crate) fn update_tenant(
    c: &Connection,
    id: TenantId,
    patch: &TenantPatch,
) -> rusqlite::Result<Option<Tenant>> {
    c.prepare_cached(
        "UPDATE tenants SET status = coalesce(?2, status), tier = coalesce(?3, tier)
         WHERE id = ?1 AND status <> 'deleted'",
    )?
    .execute(params![
        id.as_bytes(),
        patch.status.map(TenantStatus::as_str),
        patch.tier.as_ref().map(TierName::as_str)
    ])?;
    Ok(tenant(c, id)?.map(|r| r.tenant))
}

pub(crate) fn shred_tenant(c: &Connection, id: TenantId) -> rusqlite::Result<bool> {
    let n = c
        .prepare_cached("UPDATE tenants SET status = 'deleted', wrapped_root = NULL WHERE id = ?1 AND status <> 'deleted'")?
        .execute([id.as_bytes()])?;
    c.prepare_cached("DELETE FROM signing_keys WHERE tenant_id = ?1")?
        .execute([id.as_bytes()])?;
    Ok(n == 1)
}

pub(crate) fn signing_keys(c: &Connection, id: TenantId) -> rusqlite::Result<Vec<SigningKeyRow>> {
    let mut st = c.prepare_cached(
        "SELECT kid, alg, public, wrapped_private, created_at, active FROM signing_keys
         WHERE tenant_id = ?1 ORDER BY created_at, kid",
    )?;
    let rows = st.query_map([id.as_bytes()], |r| {
        let kid: String = r.get(0)?;
        let alg: String = r.get(1)?;
        let wrapped: Vec<u8> = r.get(3)?;
        Ok(SigningKeyRow {
            tenant: id,
            kid: KeyId::parse(&kid).map_err(|_| bad("kid"))?,
            alg: SigningAlg::parse(&alg).ok_or_else(|| bad("alg"))?,
            public: r.get(2)?,
            wrapped_private: WrappedKey::from_bytes(wrapped),
            created_at: from_micros(r.get(4)?)?,
            active: r.get(5)?,
        })
    })?;
    rows.collect()
}

pub(crate) fn add_signing_key(c: &Connection, key: &SigningKeyRow) -> rusqlite::Result<()> {
    c.prepare_cached("UPDATE signing_keys SET active = 0 WHERE tenant_id = ?1")?
        .execute([key.tenant.as_bytes()])?;
    insert_key(c, key)
}

// ---- collections --------------------------------------------------------------------------

fn collection_of(r: &Row<'_>) -> rusqlite::Result<CollectionRow> {
    let name: String = r.get(0)?;
    Ok(CollectionRow {
        name: CollectionName::parse(&name).map_err(|_| bad("collection name"))?,
        version: version(r.get(1)?)?,
        sealed_definition: r.get(2)?,
        created_at: from_micros(r.get(3)?)?,
        updated_at: from_micros(r.get(4)?)?,
    })
}

fn collection_version(
    c: &Connection,
    t: TenantId,
    name: &CollectionName,
) -> rusqlite::Result<Option<u64>> {
    c.prepare_cached("SELECT version FROM collections WHERE tenant_id = ?1 AND name = ?2")?
        .query_row(params![t.as_bytes(), name.as_str()], |r| version(r.get(0)?))
        .optional()
}

pub(crate) fn put_collection(
    c: &Connection,
    t: TenantId,
    row: &CollectionRow,
    expected: Option<u64>,
) -> rusqlite::Result<bool> {
    if collection_version(c, t, &row.name)? != expected {
        return Ok(false);
    }
    c.prepare_cached(
        "INSERT OR REPLACE INTO collections (tenant_id, name, version, definition, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        t.as_bytes(),
        row.name.as_str(),
        sql_version(row.version)?,
        row.sealed_definition,
        micros(row.created_at),
        micros(row.updated_at),
    ])?;
    Ok(true)
}

pub(crate) fn collection(
    c: &Connection,
    t: TenantId,
    name: &CollectionName,
) -> rusqlite::Result<Option<CollectionRow>> {
    c.prepare_cached(
        "SELECT name, version, definition, created_at, updated_at FROM collections WHERE tenant_id = ?1 AND name = ?2",
    )?
    .query_row(params![t.as_bytes(), name.as_str()], collection_of)
    .optional()
}

pub(crate) fn collections(c: &Connection, t: TenantId) -> rusqlite::Result<Vec<CollectionRow>> {
    let mut st = c.prepare_cached(
        "SELECT name, version, definition, created_at, updated_at FROM collections WHERE tenant_id = ?1 ORDER BY name",
    )?;
    let rows = st.query_map([t.as_bytes()], collection_of)?;
    rows.collect()
}

// ---- records ------------------------------------------------------------------------------

fn record_of(r: &Row<'_>) -> rusqlite::Result<RecordRow> {
    let coll: String = r.get(0)?;
    let id: Vec<u8> = r.get(1)?;
    Ok(RecordRow {
        collection: CollectionName::parse(&coll).map_err(|_| bad("collection name"))?,
        id: RecordId::from_slice(&id).ok_or_else(|| bad("record id"))?,
        version: version(r.get(2)?)?,
        ciphertext: r.get(3)?,
        created_at: from_micros(r.get(4)?)?,
        updated_at: from_micros(r.get(5)?)?,
    })
}

fn write_index(
    c: &Connection,
    t: TenantId,
    name: &CollectionName,
    id: RecordId,
    tokens: &[IndexToken],
) -> rusqlite::Result<()> {
    c.prepare_cached(
        "DELETE FROM record_index WHERE tenant_id = ?1 AND collection = ?2 AND record_id = ?3",
    )?
    .execute(params![t.as_bytes(), name.as_str(), id.as_bytes()])?;
    let mut st = c.prepare_cached(
        "INSERT OR IGNORE INTO record_index (tenant_id, collection, token, record_id) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for tok in tokens {
        st.execute(params![
            t.as_bytes(),
            name.as_str(),
            tok.as_slice(),
            id.as_bytes()
        ])?;
    }
    Ok(())
}

pub(crate) fn insert(
    c: &Connection,
    t: TenantId,
    row: &InsertRow,
) -> rusqlite::Result<InsertOutcome> {
    let rec = &row.record;
    if collection_version(c, t, &rec.collection)? != Some(row.collection_version) {
        return Ok(InsertOutcome::StaleCollection);
    }
    if let Some(idem) = &row.idempotency {
        let existing: Option<(Vec<u8>, Vec<u8>, i64)> = c
            .prepare_cached("SELECT request, response, expires_at FROM idempotency WHERE tenant_id = ?1 AND key = ?2")?
            .query_row(params![t.as_bytes(), idem.key.as_slice()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        if let Some((request, response, expires)) = existing
            && expires > micros(rec.created_at)
        {
            {
                return Ok(if request == idem.request {
                    InsertOutcome::Replayed(response)
                } else {
                    InsertOutcome::KeyReused
                });
            }
        }
        c.prepare_cached(
            "INSERT OR REPLACE INTO idempotency (tenant_id, key, request, response, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            t.as_bytes(),
            idem.key.as_slice(),
            idem.request.as_slice(),
            idem.sealed_response,
            micros(idem.expires_at)
        ])?;
    }
    c.prepare_cached(
        "INSERT INTO records (tenant_id, collection, id, version, data, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        t.as_bytes(),
        rec.collection.as_str(),
        rec.id.as_bytes(),
        sql_version(rec.version)?,
        rec.ciphertext,
        micros(rec.created_at),
        micros(rec.updated_at),
    ])?;
    write_index(c, t, &rec.collection, rec.id, &row.index)?;
    Ok(InsertOutcome::Inserted)
}

const RECORD_COLUMNS: &str = "collection, id, version, data, created_at, updated_at";

pub(crate) fn get(
    c: &Connection,
    t: TenantId,
    name: &CollectionName,
    id: RecordId,
) -> rusqlite::Result<Option<RecordRow>> {
    c.prepare_cached(&format!(
        "SELECT {RECORD_COLUMNS} FROM records WHERE tenant_id = ?1 AND collection = ?2 AND id = ?3"
    ))?
    .query_row(
        params![t.as_bytes(), name.as_str(), id.as_bytes()],
        record_of,
    )
    .optional()
}

fn current(
    c: &Connection,
    t: TenantId,
    name: &CollectionName,
    id: RecordId,
) -> rusqlite::Result<Option<(u64, i64)>> {
    c.prepare_cached("SELECT version, created_at FROM records WHERE tenant_id = ?1 AND collection = ?2 AND id = ?3")?
        .query_row(params![t.as_bytes(), name.as_str(), id.as_bytes()], |r| Ok((version(r.get(0)?)?, r.get(1)?)))
        .optional()
}

pub(crate) fn update(
    c: &Connection,
    t: TenantId,
    row: &UpdateRow,
) -> rusqlite::Result<WriteOutcome> {
    let rec = &row.record;
    let Some((v, created)) = current(c, t, &rec.collection, rec.id)? else {
        return Ok(WriteOutcome::NotFound);
    };
    if v != row.expected_version {
        return Ok(WriteOutcome::VersionMismatch { current: v });
    }
    if collection_version(c, t, &rec.collection)? != Some(row.collection_version) {
        return Ok(WriteOutcome::StaleCollection);
    }
    c.prepare_cached(
        "UPDATE records SET version = ?4, data = ?5, updated_at = ?6
         WHERE tenant_id = ?1 AND collection = ?2 AND id = ?3",
    )?
    .execute(params![
        t.as_bytes(),
        rec.collection.as_str(),
        rec.id.as_bytes(),
        sql_version(rec.version)?,
        rec.ciphertext,
        micros(rec.updated_at),
    ])?;
    write_index(c, t, &rec.collection, rec.id, &row.index)?;
    Ok(WriteOutcome::Written {
        created_at: from_micros(created)?,
    })
}

pub(crate) fn delete(
    c: &Connection,
    t: TenantId,
    name: &CollectionName,
    id: RecordId,
    expected: Option<u64>,
) -> rusqlite::Result<WriteOutcome> {
    let Some((v, created)) = current(c, t, name, id)? else {
        return Ok(WriteOutcome::NotFound);
    };
    if expected.is_some_and(|e| e != v) {
        return Ok(WriteOutcome::VersionMismatch { current: v });
    }
    c.prepare_cached("DELETE FROM records WHERE tenant_id = ?1 AND collection = ?2 AND id = ?3")?
        .execute(params![t.as_bytes(), name.as_str(), id.as_bytes()])?;
    write_index(c, t, name, id, &[])?;
    Ok(WriteOutcome::Written {
        created_at: from_micros(created)?,
    })
}

pub(crate) fn reindex(
    c: &Connection,
    t: TenantId,
    name: &CollectionName,
    collection_version_now: u64,
    entries: &[(RecordId, Vec<IndexToken>)],
) -> rusqlite::Result<bool> {
    if collection_version(c, t, name)? != Some(collection_version_now) {
        return Ok(false);
    }
    for (id, tokens) in entries {
        // A record deleted since it was read gets no index entries.
        if current(c, t, name, *id)?.is_some() {
            write_index(c, t, name, *id, tokens)?;
        }
    }
    Ok(true)
}

pub(crate) fn query(
    c: &Connection,
    t: TenantId,
    name: &CollectionName,
    all_of: &[IndexToken],
    after: Option<RecordId>,
    limit: usize,
) -> rusqlite::Result<Vec<RecordRow>> {
    let after = after.map(|a| a.as_bytes().to_vec()).unwrap_or_default();
    let Some((first, rest)) = all_of.split_first() else {
        let mut st = c.prepare_cached(&format!(
            "SELECT {RECORD_COLUMNS} FROM records WHERE tenant_id = ?1 AND collection = ?2 AND id > ?3
             ORDER BY id LIMIT ?4"
        ))?;
        let rows = st.query_map(
            params![t.as_bytes(), name.as_str(), after, sql_limit(limit)],
            record_of,
        )?;
        return rows.collect();
    };
    // Drive from the first token's index range; every other token must also point at the row.
    let mut sql = String::from(
        "SELECT r.collection, r.id, r.version, r.data, r.created_at, r.updated_at
         FROM record_index i JOIN records r
           ON r.tenant_id = i.tenant_id AND r.collection = i.collection AND r.id = i.record_id
         WHERE i.tenant_id = ?1 AND i.collection = ?2 AND i.token = ?3 AND i.record_id > ?4",
    );
    for n in 0..rest.len() {
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM record_index j WHERE j.tenant_id = ?1 AND j.collection = ?2
                 AND j.token = ?{} AND j.record_id = i.record_id)",
            n + 6
        ));
    }
    sql.push_str(" ORDER BY i.record_id LIMIT ?5");
    let mut st = c.prepare_cached(&sql)?;
    let mut values: Vec<Box<dyn rusqlite::ToSql>> = vec![
        Box::new(t.as_bytes().to_vec()),
        Box::new(name.as_str().to_owned()),
        Box::new(first.to_vec()),
        Box::new(after),
        Box::new(sql_limit(limit)),
    ];
    values.extend(
        rest.iter()
            .map(|tok| Box::new(tok.to_vec()) as Box<dyn rusqlite::ToSql>),
    );
    let rows = st.query_map(rusqlite::params_from_iter(values.iter()), record_of)?;
    rows.collect()
}

pub(crate) fn purge_tenant(c: &Connection, t: TenantId) -> rusqlite::Result<u64> {
    let n = c
        .prepare_cached("DELETE FROM records WHERE tenant_id = ?1")?
        .execute([t.as_bytes()])?;
    for table in [
        "record_index",
        "collections",
        "idempotency",
        "tenant_usage",
        "policies",
    ] {
        c.execute(
            &format!("DELETE FROM {table} WHERE tenant_id = ?1"),
            [t.as_bytes()],
        )?;
    }
    Ok(u64::try_from(n).unwrap_or(u64::MAX))
}

// ---- policies -----------------------------------------------------------------------------

fn policy_of(r: &Row<'_>) -> rusqlite::Result<PolicyRow> {
    Ok(PolicyRow {
        version: version(r.get(0)?)?,
        sealed: r.get(1)?,
        created_at: from_micros(r.get(2)?)?,
    })
}

pub(crate) fn insert_policy(
    c: &Connection,
    t: TenantId,
    row: &PolicyRow,
) -> rusqlite::Result<bool> {
    let n = c
        .prepare_cached(
            "INSERT OR IGNORE INTO policies (tenant_id, version, sealed, created_at) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            t.as_bytes(),
            sql_version(row.version)?,
            row.sealed,
            micros(row.created_at)
        ])?;
    Ok(n == 1)
}

pub(crate) fn policies(c: &Connection, t: TenantId) -> rusqlite::Result<Vec<PolicyRow>> {
    let mut st = c.prepare_cached(
        "SELECT version, sealed, created_at FROM policies WHERE tenant_id = ?1 ORDER BY version",
    )?;
    let rows = st.query_map([t.as_bytes()], policy_of)?;
    rows.collect()
}

pub(crate) fn latest_policy(c: &Connection, t: TenantId) -> rusqlite::Result<Option<PolicyRow>> {
    c.prepare_cached(
        "SELECT version, sealed, created_at FROM policies WHERE tenant_id = ?1 ORDER BY version DESC LIMIT 1",
    )?
    .query_row([t.as_bytes()], policy_of)
    .optional()
}
