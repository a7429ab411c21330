//! Tiers, tenants' limit overrides and storage usage in the PostgreSQL adapter (migration
//! `0005_limits.sql`).
//!
//! `tiers` and `tenant_limits` are operator data read outside any tenant transaction;
//! `tenant_usage` is tenant-owned (row-level security) and read in a transaction set to the
//! scope's tenant, like every tenant-owned table.

use bulkhead_core::tier::{LimitOverrides, TierLimits, Usage};
use bulkhead_core::{TenantId, TierName};
use bulkhead_store::BackendError;
use bulkhead_store::port::TierRow;

use crate::PostgresStore;
use crate::sql::{col, from_micros, micros};

const TIERS: &str = "SELECT name, limits, updated_at FROM tiers ORDER BY name";
const PUT_TIER: &str = "INSERT INTO tiers (name, limits, updated_at) VALUES ($1, $2, $3)
     ON CONFLICT (name) DO UPDATE SET limits = excluded.limits, updated_at = excluded.updated_at";
const TENANT_OVERRIDES: &str = "SELECT overrides FROM tenant_limits WHERE tenant_id = $1";
const SET_TENANT_OVERRIDES: &str =
    "INSERT INTO tenant_limits (tenant_id, overrides) VALUES ($1, $2)
     ON CONFLICT (tenant_id) DO UPDATE SET overrides = excluded.overrides";
const CLEAR_TENANT_OVERRIDES: &str = "DELETE FROM tenant_limits WHERE tenant_id = $1";
/// INVARIANT: both tenant-owned tables are filtered on `$1`, the scope's tenant.
/// One statement: the function sets the tenant for row-level security itself (0007).
const USAGE: &str = "SELECT records, bytes, collections FROM bulkhead_usage($1)";

fn decode<T: serde::de::DeserializeOwned>(what: &str, raw: &str) -> Result<T, BackendError> {
    serde_json::from_str(raw).map_err(|e| BackendError::Other(format!("stored {what}: {e}")))
}

fn encode<T: serde::Serialize>(v: &T) -> Result<String, BackendError> {
    serde_json::to_string(v).map_err(|e| BackendError::Other(e.to_string()))
}

impl PostgresStore {
    pub(crate) async fn tiers_impl(&self) -> Result<Vec<TierRow>, BackendError> {
        let conn = self.conn().await?;
        let [st] = conn.prepare([TIERS]).await?;
        let rows = conn.run(conn.client()?.query(&st, &[])).await?;
        rows.iter()
            .map(|r| {
                let name: String = col(r, 0)?;
                let limits: String = col(r, 1)?;
                Ok(TierRow {
                    name: TierName::parse(&name)
                        .map_err(|_| BackendError::Other("stored tier name is invalid".into()))?,
                    limits: decode::<TierLimits>("tier limits", &limits)?,
                    updated_at: from_micros(col(r, 2)?)?,
                })
            })
            .collect()
    }

    pub(crate) async fn put_tier_impl(&self, row: &TierRow) -> Result<(), BackendError> {
        let conn = self.conn().await?;
        let [st] = conn.prepare([PUT_TIER]).await?;
        let limits = encode(&row.limits)?;
        conn.run(
            conn.client()?
                .execute(&st, &[&row.name.as_str(), &limits, &micros(row.updated_at)]),
        )
        .await
        .map(drop)
    }

    pub(crate) async fn tenant_overrides_impl(
        &self,
        id: TenantId,
    ) -> Result<Option<LimitOverrides>, BackendError> {
        let conn = self.conn().await?;
        let [st] = conn.prepare([TENANT_OVERRIDES]).await?;
        let row = conn
            .run(conn.client()?.query_opt(&st, &[&id.as_uuid()]))
            .await?;
        row.map(|r| {
            let raw: String = col(&r, 0)?;
            decode("limit overrides", &raw)
        })
        .transpose()
    }

    pub(crate) async fn set_tenant_overrides_impl(
        &self,
        id: TenantId,
        overrides: Option<&LimitOverrides>,
    ) -> Result<(), BackendError> {
        let conn = self.conn().await?;
        match overrides {
            Some(o) => {
                let [st] = conn.prepare([SET_TENANT_OVERRIDES]).await?;
                let raw = encode(o)?;
                conn.run(conn.client()?.execute(&st, &[&id.as_uuid(), &raw]))
                    .await
                    .map(drop)
            }
            None => {
                let [st] = conn.prepare([CLEAR_TENANT_OVERRIDES]).await?;
                conn.run(conn.client()?.execute(&st, &[&id.as_uuid()]))
                    .await
                    .map(drop)
            }
        }
    }

    /// INVARIANT: `t` is the scope's tenant: bound as `$1` and set for row-level security.
    pub(crate) async fn usage_impl(&self, t: TenantId) -> Result<Usage, BackendError> {
        let conn = self.conn().await?;
        let [st] = conn.prepare([USAGE]).await?;
        let row = conn
            .tenant_statement(conn.client()?.query_one(&st, &[&t.as_uuid()]))
            .await?;
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(Usage {
            records: n(col(&row, 0)?),
            bytes: n(col(&row, 1)?),
            collections: n(col(&row, 2)?),
        })
    }
}
