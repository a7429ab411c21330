//! Bulkhead's PostgreSQL storage adapter.
//!
//! Two walls keep tenants apart here:
//!
//! 1. **The application's scoping** (the first wall, shared with every adapter): every
//!    statement on a tenant-owned table filters `tenant_id = $1`, bound from the caller's
//!    [`Scope`], and `tenant_id` leads every key and index.
//! 2. **Row-level security** (the second wall, PostgreSQL's own): the tenant-owned tables
//!    (`collections`, `records`, `record_index`, `idempotency`, `tenant_usage`) have RLS
//!    enabled and forced, with a policy that shows and accepts only rows of the tenant named
//!    by the transaction's `bulkhead.tenant_id` setting. Every tenant operation runs in a
//!    transaction that sets it (transaction-local) to the scope's tenant; without it the
//!    tables read as empty and refuse writes. So a statement that forgot its filter still
//!    cannot reach another tenant.
//!
//! The second wall only stands if the role the queries run as cannot bypass RLS. Tenant
//! traffic runs as `bulkhead_app` (created by the migrations: no login, no superuser, no
//! BYPASSRLS, owns nothing): either the URL's user narrowed with `SET ROLE` on every new
//! pooled connection ([`PostgresStore::connect`]), or an application login role that is a
//! member of `bulkhead_app` ([`PostgresStore::connect_app`]). Every new connection is checked
//! before use, and refused if its role is a superuser, has BYPASSRLS or owns a table. With
//! `SET ROLE`, the session user can still `RESET ROLE`; only this adapter's SQL runs on those
//! connections, but deployments that want no way back to the owner role should use
//! `connect_app`. Either way the wall is against mistakes in Bulkhead's own SQL, not against
//! arbitrary SQL run as `bulkhead_app`: such SQL could set `bulkhead.tenant_id` itself.
//!
//! The registry tables (`settings`, `tenants`, `signing_keys`, `tiers`, `tenant_limits`) are
//! platform tables: they are read before a tenant context exists (to authenticate a request),
//! so they have no RLS.
//!
//! Performance: a transaction's `BEGIN`, `set_config`, statement and `COMMIT` are pipelined
//! (see `Conn::transaction` in `conn.rs`): one round trip, like a bare statement (measured by
//! `tests/pipelining.rs`). Multi-step writes are one call each to a plpgsql function
//! (SECURITY INVOKER, so RLS applies inside).

mod audit;
mod conn;
mod limits;
mod migrate;
mod policy;
mod sql;
#[cfg(feature = "testing")]
pub mod testing;

use async_trait::async_trait;
use bulkhead_core::tier::{LimitOverrides, Usage};
use bulkhead_core::{CollectionName, RecordId, Tenant, TenantId, TenantStatus, TierName};
use bulkhead_store::BackendError;
use bulkhead_store::port::{
    AuditBackend, AuditRow, AuditScope, CheckpointRow, CollectionRow, IndexToken, InsertOutcome,
    InsertRow, PolicyRow, RecordBackend, RecordRow, Registry, RegistryChange, Scope, SigningKeyRow,
    TenantPatch, TenantRow, TierRow, UpdateRow, WriteOutcome,
};
use deadpool_postgres::Pool;
use uuid::Uuid;

use crate::conn::{AppendOrder, Conn, Identity, Mode};
use crate::sql::{col, micros, sql_limit, sql_version};

pub use crate::conn::APP_ROLE;

/// The PostgreSQL adapter: a pool of connections running as `bulkhead_app`. Cheap to clone.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("status", &self.pool.status())
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Applies the schema migrations, as the URL's user, who owns the tables (and so must
    /// not be the role tenant traffic runs as: see [`PostgresStore::connect`]). Safe to call
    /// from several instances at once. The user needs CREATEROLE (or a superuser) the first
    /// time, to create `bulkhead_app`.
    pub async fn migrate(url: &str) -> Result<(), BackendError> {
        migrate::migrate(url).await
    }

    /// Connects a pool of `pool_size` connections as the URL's user, each narrowed to
    /// `bulkhead_app` with `SET ROLE` as it is made, so tenant traffic is subject to
    /// row-level security even when the URL's user is the tables' owner or a superuser.
    /// Fails if the database is unreachable, not migrated, or the effective role could
    /// bypass row-level security.
    pub async fn connect(url: &str, pool_size: usize) -> Result<Self, BackendError> {
        Self::open(url, pool_size, Identity::SetRole).await
    }

    /// Connects a pool of `pool_size` connections as the URL's user, as it is: for
    /// deployments that give the application its own LOGIN role (a member of `bulkhead_app`,
    /// or with the same grants). Refused if that role is a superuser, has BYPASSRLS, or owns
    /// (or is a member of the owner of) any Bulkhead table.
    pub async fn connect_app(url: &str, pool_size: usize) -> Result<Self, BackendError> {
        Self::open(url, pool_size, Identity::AsIs).await
    }

    async fn open(url: &str, pool_size: usize, identity: Identity) -> Result<Self, BackendError> {
        let pool = conn::pool(url, pool_size, identity)?;
        // Make (and check) the first connection now, so a misconfiguration fails at start.
        drop(Conn::get(&pool).await?);
        Ok(Self { pool })
    }

    /// A pooled connection as the application role, with no tenant set: row-level security
    /// shows it no tenant rows. It escapes the scoping of [`RecordBackend`] (hence the name),
    /// so it is for diagnostics and for tests of the second wall, never for serving requests.
    /// It goes back to the pool when dropped: leave it as you found it (no open transaction,
    /// no session-level tenant setting; [`RecordBackend::ping`] reports the latter).
    pub async fn unscoped_client(&self) -> Result<deadpool_postgres::Object, BackendError> {
        self.pool.get().await.map_err(|e| {
            BackendError::Unavailable(format!("no database connection available: {e}"))
        })
    }

    async fn conn(&self) -> Result<Conn, BackendError> {
        Conn::get(&self.pool).await
    }
}

#[async_trait]
impl Registry for PostgresStore {
    async fn setting(&self, name: &str) -> Result<Option<Vec<u8>>, BackendError> {
        let conn = self.conn().await?;
        let [st] = conn.prepare([sql::SETTING]).await?;
        let row = conn.run(conn.client()?.query_opt(&st, &[&name])).await?;
        row.map(|r| col(&r, 0)).transpose()
    }

    async fn init_setting(&self, name: &str, value: &[u8]) -> Result<Vec<u8>, BackendError> {
        let conn = self.conn().await?;
        let [st] = conn.prepare([sql::INIT_SETTING]).await?;
        let row = conn
            .run(conn.client()?.query_one(&st, &[&name, &value]))
            .await?;
        col(&row, 0)
    }

    async fn set_setting(&self, name: &str, value: &[u8]) -> Result<(), BackendError> {
        let conn = self.conn().await?;
        let [st] = conn.prepare([sql::SET_SETTING]).await?;
        conn.run(conn.client()?.execute(&st, &[&name, &value]))
            .await
            .map(drop)
    }

    async fn create_tenant(
        &self,
        row: &TenantRow,
        key: &SigningKeyRow,
    ) -> Result<(), BackendError> {
        let t = &row.tenant;
        if key.tenant != t.id {
            return Err(BackendError::Other(
                "the signing key belongs to another tenant".into(),
            ));
        }
        let conn = self.conn().await?;
        let [st] = conn.prepare([sql::CREATE_TENANT]).await?;
        conn.run(conn.client()?.execute(
            &st,
            &[
                &t.id.as_uuid(),
                &t.name.as_str(),
                &t.tier.as_str(),
                &t.status.as_str(),
                &row.placement.as_str(),
                &row.wrapped_root.as_ref().map(|w| w.as_bytes()),
                &micros(t.created_at),
                &key.kid.as_str(),
                &key.alg.as_str(),
                &key.public.as_slice(),
                &key.wrapped_private.as_bytes(),
                &micros(key.created_at),
                &key.active,
            ],
        ))
        .await
        .map(drop)
    }

    async fn tenant(&self, id: TenantId) -> Result<Option<TenantRow>, BackendError> {
        let conn = self.conn().await?;
        let [st] = conn.prepare([sql::TENANT]).await?;
        let row = conn
            .run(conn.client()?.query_opt(&st, &[&id.as_uuid()]))
            .await?;
        row.map(|r| sql::tenant_row(&r)).transpose()
    }

    async fn list_tenants(
        &self,
        after: Option<TenantId>,
        limit: usize,
    ) -> Result<Vec<Tenant>, BackendError> {
        let after = after.map_or(sql::START, |a| a.as_uuid());
        let conn = self.conn().await?;
        let [st] = conn.prepare([sql::LIST_TENANTS]).await?;
        let rows = conn
            .run(conn.client()?.query(&st, &[&after, &sql_limit(limit)]))
            .await?;
        rows.iter().map(sql::tenant).collect()
    }

    async fn update_tenant(
        &self,
        id: TenantId,
        patch: &TenantPatch,
    ) -> Result<Option<Tenant>, BackendError> {
        let conn = self.conn().await?;
        let [st] = conn.prepare([sql::UPDATE_TENANT]).await?;
        let row = conn
            .run(conn.client()?.query_opt(
                &st,
                &[
                    &id.as_uuid(),
                    &patch.status.map(TenantStatus::as_str),
                    &patch.tier.as_ref().map(TierName::as_str),
                ],
            ))
            .await?;
        row.map(|r| sql::tenant(&r)).transpose()
    }

    async fn shred_tenant(&self, id: TenantId) -> Result<bool, BackendError> {
        let conn = self.conn().await?;
        let [st] = conn.prepare([sql::SHRED_TENANT]).await?;
        let n = conn
            .run(conn.client()?.execute(&st, &[&id.as_uuid()]))
            .await?;
        Ok(n == 1)
    }

    async fn signing_keys(&self, id: TenantId) -> Result<Vec<SigningKeyRow>, BackendError> {
        let conn = self.conn().await?;
        let [st] = conn.prepare([sql::SIGNING_KEYS]).await?;
        let rows = conn
            .run(conn.client()?.query(&st, &[&id.as_uuid()]))
            .await?;
        rows.iter().map(|r| sql::signing_key(id, r)).collect()
    }

    async fn registry_revision(&self) -> Result<Option<i64>, BackendError> {
        let conn = self.conn().await?;
        let [st] = conn.prepare([sql::REGISTRY_REVISION]).await?;
        let row = conn.run(conn.client()?.query_one(&st, &[])).await?;
        Ok(Some(col(&row, 0)?))
    }

    async fn registry_changes(
        &self,
        after: i64,
    ) -> Result<Option<Vec<RegistryChange>>, BackendError> {
        let conn = self.conn().await?;
        let [st] = conn.prepare([sql::REGISTRY_CHANGES]).await?;
        let rows = conn.run(conn.client()?.query(&st, &[&after])).await?;
        rows.iter()
            .map(|r| {
                Ok(RegistryChange {
                    tenant: sql::tenant_id(col(r, 0)?),
                    revision: col(r, 1)?,
                })
            })
            .collect::<Result<Vec<_>, BackendError>>()
            .map(Some)
    }

    async fn add_signing_key(&self, key: &SigningKeyRow) -> Result<(), BackendError> {
        let conn = self.conn().await?;
        let [st] = conn.prepare([sql::ADD_SIGNING_KEY]).await?;
        conn.run(conn.client()?.execute(
            &st,
            &[
                &key.tenant.as_uuid(),
                &key.kid.as_str(),
                &key.alg.as_str(),
                &key.public.as_slice(),
                &key.wrapped_private.as_bytes(),
                &micros(key.created_at),
                &key.active,
            ],
        ))
        .await
        .map(drop)
    }

    // Tiers and limit overrides: see `limits.rs`.
    async fn tiers(&self) -> Result<Vec<TierRow>, BackendError> {
        self.tiers_impl().await
    }

    async fn put_tier(&self, row: &TierRow) -> Result<(), BackendError> {
        self.put_tier_impl(row).await
    }

    async fn tenant_overrides(&self, id: TenantId) -> Result<Option<LimitOverrides>, BackendError> {
        self.tenant_overrides_impl(id).await
    }

    async fn set_tenant_overrides(
        &self,
        id: TenantId,
        overrides: Option<&LimitOverrides>,
    ) -> Result<(), BackendError> {
        self.set_tenant_overrides_impl(id, overrides).await
    }
}

/// The outcome column of the record functions.
fn outcome(row: &tokio_postgres::Row) -> Result<String, BackendError> {
    col(row, 0)
}

fn unknown_outcome(o: &str) -> BackendError {
    BackendError::Other(format!("unknown write outcome `{o}`"))
}

/// A record function's answer for update and delete.
fn write_outcome(row: &tokio_postgres::Row) -> Result<WriteOutcome, BackendError> {
    let o = outcome(row)?;
    let current = || -> Result<u64, BackendError> { sql::version(col(row, 1)?) };
    match o.as_str() {
        "written" => Ok(WriteOutcome::Written {
            created_at: sql::from_micros(col(row, 2)?)?,
        }),
        "not_found" => Ok(WriteOutcome::NotFound),
        "version_mismatch" => Ok(WriteOutcome::VersionMismatch {
            current: current()?,
        }),
        "stale_collection" => Ok(WriteOutcome::StaleCollection),
        other => Err(unknown_outcome(other)),
    }
}

#[async_trait]
impl RecordBackend for PostgresStore {
    async fn put_collection(
        &self,
        s: &Scope,
        row: &CollectionRow,
        expected: Option<u64>,
    ) -> Result<bool, BackendError> {
        // INVARIANT: the tenant is the scope's, bound as `$1` and set for RLS.
        let t = s.tenant();
        let conn = self.conn().await?;
        let version = sql_version(row.version)?;
        let created = micros(row.created_at);
        let updated = micros(row.updated_at);
        // Create when the caller expects no collection, else replace the expected version.
        let expected = expected.map(sql_version).transpose()?;
        let tenant = t.as_uuid();
        let name = row.name.as_str();
        let definition = row.sealed_definition.as_slice();
        match expected {
            None => {
                let (tx, [st]) = conn
                    .prepare_tx(Mode::Write, [sql::CREATE_COLLECTION])
                    .await?;
                let n = conn
                    .transaction(
                        &tx,
                        t,
                        conn.client()?.execute(
                            &st,
                            &[&tenant, &name, &version, &definition, &created, &updated],
                        ),
                    )
                    .await?;
                Ok(n == 1)
            }
            Some(expected) => {
                let [st] = conn.prepare([sql::REPLACE_COLLECTION]).await?;
                let row = conn
                    .tenant_statement(conn.client()?.query_one(
                        &st,
                        &[
                            &tenant,
                            &name,
                            &version,
                            &definition,
                            &created,
                            &updated,
                            &expected,
                        ],
                    ))
                    .await?;
                let n: i64 = col(&row, 0)?;
                Ok(n == 1)
            }
        }
    }

    async fn collection(
        &self,
        s: &Scope,
        name: &CollectionName,
    ) -> Result<Option<CollectionRow>, BackendError> {
        // INVARIANT: the tenant is the scope's, bound as `$1` and set for RLS.
        let t = s.tenant();
        let conn = self.conn().await?;
        let [st] = conn.prepare([sql::COLLECTION]).await?;
        let row = conn
            .tenant_statement(
                conn.client()?
                    .query_opt(&st, &[&t.as_uuid(), &name.as_str()]),
            )
            .await?;
        row.map(|r| sql::collection(&r)).transpose()
    }

    async fn collections(&self, s: &Scope) -> Result<Vec<CollectionRow>, BackendError> {
        // INVARIANT: the tenant is the scope's, bound as `$1` and set for RLS.
        let t = s.tenant();
        let conn = self.conn().await?;
        let (tx, [st]) = conn.prepare_tx(Mode::Read, [sql::COLLECTIONS]).await?;
        let rows = conn
            .transaction(&tx, t, conn.client()?.query(&st, &[&t.as_uuid()]))
            .await?;
        rows.iter().map(sql::collection).collect()
    }

    async fn all_records(
        &self,
        s: &Scope,
        name: &CollectionName,
    ) -> Result<Vec<RecordRow>, BackendError> {
        self.query(s, name, &[], None, usize::MAX, None).await
    }

    async fn reindex(
        &self,
        s: &Scope,
        name: &CollectionName,
        collection_version: u64,
        entries: &[(RecordId, Vec<IndexToken>)],
    ) -> Result<bool, BackendError> {
        // INVARIANT: the tenant is the scope's, passed as `p_tenant` and set for RLS.
        let t = s.tenant();
        let ids: Vec<Uuid> = entries.iter().map(|(id, _)| id.as_uuid()).collect();
        let mut token_ids = Vec::new();
        let mut tokens: Vec<&[u8]> = Vec::new();
        for (id, toks) in entries {
            for tok in toks {
                token_ids.push(id.as_uuid());
                tokens.push(tok.as_slice());
            }
        }
        let version = sql_version(collection_version)?;
        let conn = self.conn().await?;
        let [st] = conn.prepare([sql::REINDEX]).await?;
        let row = conn
            .tenant_statement(conn.client()?.query_one(
                &st,
                &[
                    &t.as_uuid(),
                    &name.as_str(),
                    &version,
                    &ids,
                    &token_ids,
                    &tokens,
                ],
            ))
            .await?;
        col(&row, 0)
    }

    async fn insert(
        &self,
        s: &Scope,
        row: &InsertRow,
        audit: Option<&[u8]>,
    ) -> Result<InsertOutcome, BackendError> {
        // INVARIANT: the tenant is the scope's, passed as `p_tenant` and set for RLS.
        let t = s.tenant();
        let rec = &row.record;
        let tokens: Vec<&[u8]> = row.index.iter().map(|t| t.as_slice()).collect();
        let idem = row.idempotency.as_ref();
        let conn = self.conn().await?;
        let [st] = conn.prepare([sql::INSERT_RECORD]).await?;
        let (tenant, collection, id) = (t.as_uuid(), rec.collection.as_str(), rec.id.as_uuid());
        let (version, cver) = (
            sql_version(rec.version)?,
            sql_version(row.collection_version)?,
        );
        let (created, updated) = (micros(rec.created_at), micros(rec.updated_at));
        let (key, request, response, expires) = (
            idem.map(|i| i.key.as_slice()),
            idem.map(|i| i.request.as_slice()),
            idem.map(|i| i.sealed_response.as_slice()),
            idem.map(|i| micros(i.expires_at)),
        );
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 13] = [
            &tenant,
            &collection,
            &id,
            &version,
            &rec.ciphertext.as_slice(),
            &created,
            &updated,
            &cver,
            &tokens,
            &key,
            &request,
            &response,
            &expires,
        ];
        let write = conn.client()?.query_one(&st, &params);
        // With its audit entry, both commit in one pipelined transaction (see `audit.rs`).
        let ast = match audit {
            Some(_) => Some(conn.prepare([audit::AFTER_INSERT]).await?),
            None => None,
        };
        let entry = audit.unwrap_or_default();
        let ap: &[&(dyn tokio_postgres::types::ToSql + Sync)] =
            &[&tenant, &collection, &id, &entry];
        let append = match &ast {
            Some([ast]) => Some(conn.client()?.execute(ast, ap)),
            None => None,
        };
        let out = conn
            .tenant_statement_audited(t, write, append, AppendOrder::After)
            .await?;
        match outcome(&out)?.as_str() {
            "inserted" => Ok(InsertOutcome::Inserted),
            "replayed" => Ok(InsertOutcome::Replayed(col(&out, 1)?)),
            "key_reused" => Ok(InsertOutcome::KeyReused),
            "stale_collection" => Ok(InsertOutcome::StaleCollection),
            other => Err(unknown_outcome(other)),
        }
    }

    async fn get(
        &self,
        s: &Scope,
        name: &CollectionName,
        id: RecordId,
        audit: Option<&[u8]>,
    ) -> Result<Option<RecordRow>, BackendError> {
        // INVARIANT: the tenant is the scope's, bound as `$1` and set for RLS.
        let t = s.tenant();
        let conn = self.conn().await?;
        let [st] = conn.prepare([sql::GET_RECORD]).await?;
        let (tenant, collection, id) = (t.as_uuid(), name.as_str(), id.as_uuid());
        let rp: &[&(dyn tokio_postgres::types::ToSql + Sync)] = &[&tenant, &collection, &id];
        let read = conn.client()?.query_opt(&st, rp);
        // With its audit entry, both commit in one pipelined transaction (see `audit.rs`).
        let ast = match audit {
            Some(_) => Some(conn.prepare([audit::AFTER_INSERT]).await?),
            None => None,
        };
        let entry = audit.unwrap_or_default();
        let ap: &[&(dyn tokio_postgres::types::ToSql + Sync)] =
            &[&tenant, &collection, &id, &entry];
        let append = match &ast {
            Some([ast]) => Some(conn.client()?.execute(ast, ap)),
            None => None,
        };
        let row = conn
            .tenant_statement_audited(t, read, append, AppendOrder::After)
            .await?;
        row.map(|r| sql::record(&r)).transpose()
    }

    async fn update(
        &self,
        s: &Scope,
        row: &UpdateRow,
        audit: Option<&[u8]>,
    ) -> Result<WriteOutcome, BackendError> {
        // INVARIANT: the tenant is the scope's, passed as `p_tenant` and set for RLS.
        let t = s.tenant();
        let rec = &row.record;
        let tokens: Vec<&[u8]> = row.index.iter().map(|t| t.as_slice()).collect();
        let conn = self.conn().await?;
        let [st] = conn.prepare([sql::UPDATE_RECORD]).await?;
        let (tenant, collection, id) = (t.as_uuid(), rec.collection.as_str(), rec.id.as_uuid());
        let (version, updated) = (sql_version(rec.version)?, micros(rec.updated_at));
        let (expected, cver) = (
            sql_version(row.expected_version)?,
            sql_version(row.collection_version)?,
        );
        let data = rec.ciphertext.as_slice();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 9] = [
            &tenant,
            &collection,
            &id,
            &version,
            &data,
            &updated,
            &expected,
            &cver,
            &tokens,
        ];
        let write = conn.client()?.query_one(&st, &params);
        // With its audit entry, both commit in one pipelined transaction (see `audit.rs`).
        let ast = match audit {
            Some(_) => Some(conn.prepare([audit::AFTER_UPDATE]).await?),
            None => None,
        };
        let entry = audit.unwrap_or_default();
        let ap: &[&(dyn tokio_postgres::types::ToSql + Sync)] =
            &[&tenant, &collection, &id, &version, &data, &entry];
        let append = match &ast {
            Some([ast]) => Some(conn.client()?.execute(ast, ap)),
            None => None,
        };
        let out = conn
            .tenant_statement_audited(t, write, append, AppendOrder::After)
            .await?;
        write_outcome(&out)
    }

    async fn delete(
        &self,
        s: &Scope,
        name: &CollectionName,
        id: RecordId,
        expected: Option<u64>,
        audit: Option<&[u8]>,
    ) -> Result<WriteOutcome, BackendError> {
        // INVARIANT: the tenant is the scope's, passed as `p_tenant` and set for RLS.
        let t = s.tenant();
        let expected = expected.map(sql_version).transpose()?;
        let conn = self.conn().await?;
        let [st] = conn.prepare([sql::DELETE_RECORD]).await?;
        let (tenant, collection, id) = (t.as_uuid(), name.as_str(), id.as_uuid());
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&tenant, &collection, &id, &expected];
        let write = conn.client()?.query_one(&st, &params);
        // With its audit entry, both commit in one pipelined transaction (see `audit.rs`).
        let ast = match audit {
            Some(_) => Some(conn.prepare([audit::BEFORE_DELETE]).await?),
            None => None,
        };
        let entry = audit.unwrap_or_default();
        let ap: &[&(dyn tokio_postgres::types::ToSql + Sync)] =
            &[&tenant, &collection, &id, &expected, &entry];
        let append = match &ast {
            Some([ast]) => Some(conn.client()?.execute(ast, ap)),
            None => None,
        };
        let out = conn
            .tenant_statement_audited(t, write, append, AppendOrder::Before)
            .await?;
        write_outcome(&out)
    }

    async fn query(
        &self,
        s: &Scope,
        name: &CollectionName,
        all_of: &[IndexToken],
        after: Option<RecordId>,
        limit: usize,
        audit: Option<&[u8]>,
    ) -> Result<Vec<RecordRow>, BackendError> {
        // INVARIANT: the tenant is the scope's, bound as `$1` and set for RLS.
        let t = s.tenant();
        let after = after.map_or(sql::START, |a| a.as_uuid());
        let limit = sql_limit(limit);
        let (tenant, collection) = (t.as_uuid(), name.as_str());
        let conn = self.conn().await?;
        let mode = if audit.is_some() {
            Mode::Write
        } else {
            Mode::Read
        };
        // The audit entry rides the same pipelined transaction (see `audit.rs`).
        let append = match audit {
            Some(entry) => Some((conn.prepare([audit::APPEND]).await?, entry)),
            None => None,
        };
        let rest: Vec<&[u8]> = all_of.iter().skip(1).map(|t| t.as_slice()).collect();
        let first = all_of.first().map(|t| t.as_slice());
        let (statement, rp): (_, Vec<&(dyn tokio_postgres::types::ToSql + Sync)>) = match &first {
            None => (
                sql::LIST_RECORDS,
                vec![&tenant, &collection, &after, &limit],
            ),
            Some(first) => (
                sql::FILTER_RECORDS,
                vec![&tenant, &collection, first, &after, &rest, &limit],
            ),
        };
        let (tx, [st]) = conn.prepare_tx(mode, [statement]).await?;
        let read = conn.client()?.query(&st, &rp);
        let rows = match &append {
            None => conn.transaction(&tx, t, read).await?,
            Some(([ast], entry)) => {
                let ap: &[&(dyn tokio_postgres::types::ToSql + Sync)] = &[&tenant, entry];
                let write = conn.client()?.execute(ast, ap);
                conn.transaction(&tx, t, audit::both(read, write)).await?.0
            }
        };
        rows.iter().map(sql::record).collect()
    }

    async fn usage(&self, s: &Scope) -> Result<Usage, BackendError> {
        // INVARIANT: the tenant is the scope's (see `limits.rs`).
        self.usage_impl(s.tenant()).await
    }

    // Tenant policies: see `policy.rs`.
    async fn insert_policy(&self, s: &Scope, row: &PolicyRow) -> Result<bool, BackendError> {
        self.pg_insert_policy(s, row).await
    }

    async fn policies(&self, s: &Scope) -> Result<Vec<PolicyRow>, BackendError> {
        self.pg_policies(s).await
    }

    async fn latest_policy(&self, s: &Scope) -> Result<Option<PolicyRow>, BackendError> {
        self.pg_latest_policy(s).await
    }

    async fn danger_purge_tenant(&self, tenant: TenantId) -> Result<u64, BackendError> {
        // The one unscoped door: the tenant comes from offboarding, not from a scope. It is
        // still set for RLS, so this deletes that tenant's rows and no others.
        let conn = self.conn().await?;
        let (tx, [st]) = conn.prepare_tx(Mode::Write, [sql::PURGE_TENANT]).await?;
        let row = conn
            .transaction(
                &tx,
                tenant,
                conn.client()?.query_one(&st, &[&tenant.as_uuid()]),
            )
            .await?;
        let n: i64 = col(&row, 0)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn ping(&self) -> Result<(), BackendError> {
        let conn = self.conn().await?;
        let [st] = conn.prepare([sql::TENANT_SETTING]).await?;
        let row = conn.run(conn.client()?.query_one(&st, &[])).await?;
        let setting: String = col(&row, 0)?;
        if setting.is_empty() {
            Ok(())
        } else {
            // Cannot happen while every tenant setting is transaction-local; if it ever does,
            // this connection is not reused.
            conn.discard();
            Err(BackendError::Other(
                "a pooled connection carries a tenant setting outside a transaction".into(),
            ))
        }
    }
}

#[async_trait]
impl AuditBackend for PostgresStore {
    // INVARIANT: a tenant log's statements set its tenant for RLS and filter on it (`audit.rs`).
    async fn audit_append(&self, log: &AuditScope, bodies: &[Vec<u8>]) -> Result<(), BackendError> {
        if bodies.is_empty() {
            return Ok(());
        }
        audit::append(&self.conn().await?, log.log(), bodies).await
    }

    async fn audit_sequence(&self, logs: &[AuditScope]) -> Result<Vec<u64>, BackendError> {
        // One log at a time: each is placed under its own tenant setting and advisory lock.
        let conn = self.conn().await?;
        let mut sizes = Vec::with_capacity(logs.len());
        for log in logs {
            sizes.push(audit::sequence(&conn, log.log()).await?);
        }
        Ok(sizes)
    }

    async fn audit_entries(
        &self,
        log: &AuditScope,
        from: u64,
        limit: usize,
    ) -> Result<Vec<AuditRow>, BackendError> {
        audit::entries(&self.conn().await?, log.log(), from, limit).await
    }

    async fn audit_leaves(
        &self,
        log: &AuditScope,
        from: u64,
        to: u64,
    ) -> Result<Vec<[u8; 32]>, BackendError> {
        audit::leaves(&self.conn().await?, log.log(), from, to).await
    }

    async fn audit_put_checkpoints(
        &self,
        rows: &[(AuditScope, CheckpointRow)],
    ) -> Result<(), BackendError> {
        let conn = self.conn().await?;
        for (log, row) in rows {
            audit::put_checkpoint(&conn, log.log(), row).await?;
        }
        Ok(())
    }

    async fn audit_checkpoint(
        &self,
        log: &AuditScope,
        size: Option<u64>,
    ) -> Result<Option<CheckpointRow>, BackendError> {
        audit::checkpoint(&self.conn().await?, log.log(), size).await
    }

    async fn audit_checkpoints(
        &self,
        log: &AuditScope,
        after: u64,
        limit: usize,
    ) -> Result<Vec<CheckpointRow>, BackendError> {
        audit::checkpoints(&self.conn().await?, log.log(), after, limit).await
    }

    async fn audit_prune(&self, log: &AuditScope, below: u64) -> Result<u64, BackendError> {
        audit::prune(&self.conn().await?, log.log(), below).await
    }
}
