//! Tenant policy versions on PostgreSQL (table `policies`, migration 0003, row-level security
//! like every tenant-owned table). Kept apart from the record pipeline in `lib.rs`/`sql.rs`.

use bulkhead_store::BackendError;
use bulkhead_store::port::{PolicyRow, Scope};
use tokio_postgres::Row;

use crate::PostgresStore;
use crate::conn::Mode;
use crate::sql::{col, from_micros, micros, sql_version, version};

const INSERT_POLICY: &str = "INSERT INTO policies (tenant_id, version, sealed, created_at)
     VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, version) DO NOTHING";
const POLICIES: &str =
    "SELECT version, sealed, created_at FROM policies WHERE tenant_id = $1 ORDER BY version";
/// One statement: the function sets the tenant for row-level security itself (0007).
const LATEST_POLICY: &str = "SELECT version, sealed, created_at FROM bulkhead_latest_policy($1)";

fn policy(r: &Row) -> Result<PolicyRow, BackendError> {
    Ok(PolicyRow {
        version: version(col(r, 0)?)?,
        sealed: col(r, 1)?,
        created_at: from_micros(col(r, 2)?)?,
    })
}

impl PostgresStore {
    pub(crate) async fn pg_insert_policy(
        &self,
        s: &Scope,
        row: &PolicyRow,
    ) -> Result<bool, BackendError> {
        // INVARIANT: the tenant is the scope's, bound as `$1` and set for RLS.
        let t = s.tenant();
        let conn = self.conn().await?;
        let (tx, [st]) = conn.prepare_tx(Mode::Write, [INSERT_POLICY]).await?;
        let version = sql_version(row.version)?;
        let created = micros(row.created_at);
        let n = conn
            .transaction(
                &tx,
                t,
                conn.client()?
                    .execute(&st, &[&t.as_uuid(), &version, &row.sealed, &created]),
            )
            .await?;
        Ok(n == 1)
    }

    pub(crate) async fn pg_policies(&self, s: &Scope) -> Result<Vec<PolicyRow>, BackendError> {
        // INVARIANT: the tenant is the scope's, bound as `$1` and set for RLS.
        let t = s.tenant();
        let conn = self.conn().await?;
        let (tx, [st]) = conn.prepare_tx(Mode::Read, [POLICIES]).await?;
        let rows = conn
            .transaction(&tx, t, conn.client()?.query(&st, &[&t.as_uuid()]))
            .await?;
        rows.iter().map(policy).collect()
    }

    pub(crate) async fn pg_latest_policy(
        &self,
        s: &Scope,
    ) -> Result<Option<PolicyRow>, BackendError> {
        // INVARIANT: the tenant is the scope's, bound as `$1` and set for RLS.
        let t = s.tenant();
        let conn = self.conn().await?;
        let [st] = conn.prepare([LATEST_POLICY]).await?;
        let row = conn
            .tenant_statement(conn.client()?.query_opt(&st, &[&t.as_uuid()]))
            .await?;
        row.map(|r| policy(&r)).transpose()
    }
}
