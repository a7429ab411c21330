//! Tiers, tenants' limit overrides and storage usage in the SQLite adapter.
//!
//! `tiers` and `tenant_limits` are operator data; `tenant_usage` is tenant-owned and kept by
//! triggers on `records` (see the second migration in `schema.rs`).

use bulkhead_core::tier::{LimitOverrides, TierLimits, Usage};
use bulkhead_core::{TenantId, TierName};
use bulkhead_store::port::TierRow;
use rusqlite::{Connection, OptionalExtension, params};

use crate::sql::{bad, from_micros, micros};

fn json<T: serde::Serialize>(v: &T) -> rusqlite::Result<String> {
    serde_json::to_string(v).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

pub(crate) fn tiers(c: &Connection) -> rusqlite::Result<Vec<TierRow>> {
    let mut st = c.prepare_cached("SELECT name, limits, updated_at FROM tiers ORDER BY name")?;
    let rows = st.query_map([], |r| {
        let name: String = r.get(0)?;
        let limits: String = r.get(1)?;
        Ok(TierRow {
            name: TierName::parse(&name).map_err(|_| bad("tier name"))?,
            limits: serde_json::from_str::<TierLimits>(&limits).map_err(|_| bad("tier limits"))?,
            updated_at: from_micros(r.get(2)?)?,
        })
    })?;
    rows.collect()
}

pub(crate) fn put_tier(c: &Connection, row: &TierRow) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO tiers (name, limits, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET limits = excluded.limits, updated_at = excluded.updated_at",
    )?
    .execute(params![
        row.name.as_str(),
        json(&row.limits)?,
        micros(row.updated_at)
    ])?;
    Ok(())
}

pub(crate) fn tenant_overrides(
    c: &Connection,
    id: TenantId,
) -> rusqlite::Result<Option<LimitOverrides>> {
    let raw: Option<String> = c
        .prepare_cached("SELECT overrides FROM tenant_limits WHERE tenant_id = ?1")?
        .query_row([id.as_bytes()], |r| r.get(0))
        .optional()?;
    raw.map(|s| serde_json::from_str(&s).map_err(|_| bad("limit overrides")))
        .transpose()
}

pub(crate) fn set_tenant_overrides(
    c: &Connection,
    id: TenantId,
    overrides: Option<&LimitOverrides>,
) -> rusqlite::Result<()> {
    match overrides {
        Some(o) => {
            c.prepare_cached(
                "INSERT INTO tenant_limits (tenant_id, overrides) VALUES (?1, ?2)
                 ON CONFLICT (tenant_id) DO UPDATE SET overrides = excluded.overrides",
            )?
            .execute(params![id.as_bytes(), json(o)?])?;
        }
        None => {
            c.prepare_cached("DELETE FROM tenant_limits WHERE tenant_id = ?1")?
                .execute([id.as_bytes()])?;
        }
    }
    Ok(())
}

/// INVARIANT: `t` is the scope's tenant; both tenant-owned tables are filtered on it.
pub(crate) fn usage(c: &Connection, t: TenantId) -> rusqlite::Result<Usage> {
    let (records, bytes): (i64, i64) = c
        .prepare_cached("SELECT records, bytes FROM tenant_usage WHERE tenant_id = ?1")?
        .query_row([t.as_bytes()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
        .unwrap_or((0, 0));
    let collections: i64 = c
        .prepare_cached("SELECT count(*) FROM collections WHERE tenant_id = ?1")?
        .query_row([t.as_bytes()], |r| r.get(0))?;
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(Usage {
        records: n(records),
        bytes: n(bytes),
        collections: n(collections),
    })
}
