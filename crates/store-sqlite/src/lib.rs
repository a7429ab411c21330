//! Bulkhead's embedded storage adapter: one SQLite file in WAL mode.
//!
//! - **Writes** go to one writer thread that owns the only write connection. It takes every
//!   write queued while the previous commit was running and commits them together (group
//!   commit): one fsync acknowledges many writes, and no write is acknowledged before its
//!   commit is durable (`synchronous = FULL`). Each write runs inside its own savepoint, so one
//!   failing write does not undo the others in its group.
//! - **Reads** run on a small pool of read-only connections on the blocking thread pool; WAL
//!   lets them proceed while the writer commits.
//!
//! Every statement on tenant-owned tables filters on the scope's tenant id, which leads every
//! primary key and index.

mod audit;
mod limits;
mod schema;
mod sql;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bulkhead_audit::LogId;
use bulkhead_core::tier::{LimitOverrides, Usage};
use bulkhead_core::{CollectionName, RecordId, Tenant, TenantId};
use bulkhead_store::BackendError;
use bulkhead_store::port::{
    AuditBackend, AuditRow, AuditScope, CheckpointRow, CollectionRow, IndexToken, InsertOutcome,
    InsertRow, PolicyRow, RecordBackend, RecordRow, Registry, Scope, SigningKeyRow, TenantPatch,
    TenantRow, TierRow, UpdateRow, WriteOutcome,
};
use parking_lot::Mutex;
use rusqlite::Connection;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Most writes committed by one transaction.
const MAX_GROUP: usize = 512;
/// Most writes waiting for the writer; beyond it, writers wait (back-pressure) instead of
/// growing memory without bound.
const MAX_QUEUED: usize = 8192;

/// A write's result, delivered once its group's commit is known.
type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;
/// A write: runs inside the group's transaction (or, given `None`, reports that none could be
/// begun without running); returns whether its changes should be kept.
type Job = Box<dyn FnOnce(Option<&Connection>) -> (bool, Completion) + Send>;

/// The SQLite adapter. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: mpsc::Sender<Job>,
    /// Idle read connections.
    readers: Mutex<Vec<Connection>>,
    /// Bounds concurrent readers to the pool size.
    read_slots: Semaphore,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// The database file inside a data directory.
pub fn database_path(data_dir: &Path) -> PathBuf {
    data_dir.join("bulkhead.db")
}

impl SqliteStore {
    /// Opens (creating if needed) the database in `data_dir` and applies migrations.
    pub fn open(data_dir: &Path, readers: usize) -> Result<Self, BackendError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            BackendError::Unavailable(format!("cannot create `{}`: {e}", data_dir.display()))
        })?;
        let path = database_path(data_dir);
        if !path.exists() {
            // Owner-only from the start; SQLite gives the -wal and -shm files the same mode.
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| {
                    BackendError::Unavailable(format!("cannot create `{}`: {e}", path.display()))
                })?;
        }
        let mut conn = Connection::open(&path).map_err(sql::map)?;
        schema::configure_writer(&conn).map_err(sql::map)?;
        schema::migrate(&mut conn).map_err(sql::map)?;
        let (tx, rx) = mpsc::channel::<Job>(MAX_QUEUED);
        std::thread::Builder::new()
            .name("bulkhead-sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|e| BackendError::Other(format!("cannot start the writer thread: {e}")))?;
        let readers = readers.max(1);
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                writer: tx,
                readers: Mutex::new(Vec::with_capacity(readers)),
                read_slots: Semaphore::new(readers),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` inside the next group commit; resolves once the commit is durable.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, BackendError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = match conn {
                Some(c) => f(c).map_err(sql::map),
                None => Err(BackendError::Unavailable(
                    "cannot begin a write transaction".into(),
                )),
            };
            let keep = result.is_ok();
            let done: Completion = Box::new(move |commit| {
                let out = match (result, commit) {
                    (Ok(v), Ok(())) => Ok(v),
                    (Err(e), _) => Err(e),
                    (Ok(_), Err(m)) => {
                        Err(BackendError::Unavailable(format!("commit failed: {m}")))
                    }
                };
                // The receiver may be gone if the request was cancelled; the write stands.
                let _ = tx.send(out);
            });
            (keep, done)
        });
        self.inner
            .writer
            .send(job)
            .await
            .map_err(|_| BackendError::Unavailable("the storage writer has stopped".into()))?;
        rx.await
            .map_err(|_| BackendError::Unavailable("the storage writer has stopped".into()))?
    }

    /// Runs a point read (a primary-key lookup: microseconds, bounded) on a pooled read
    /// connection right here, without a hop to the blocking pool. Anything that can scan goes
    /// through [`SqliteStore::read`] instead.
    fn point_read<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, BackendError> {
        self.inner.with_reader(f)
    }

    /// Runs `f` on a pooled read connection on the blocking thread pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, BackendError> {
        let _slot = self
            .inner
            .read_slots
            .acquire()
            .await
            .map_err(|_| BackendError::Unavailable("storage is shutting down".into()))?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.with_reader(f))
            .await
            .map_err(|e| BackendError::Other(format!("read task failed: {e}")))?
    }
}

impl Inner {
    /// Runs `f` on an idle read connection (opening one if none is idle), then returns it.
    fn with_reader<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, BackendError> {
        let pooled = self.readers.lock().pop();
        let conn = match pooled {
            Some(c) => c,
            None => schema::open_reader(&self.path).map_err(sql::map)?,
        };
        let out = f(&conn).map_err(sql::map);
        self.readers.lock().push(conn);
        out
    }
}

fn writer_loop(conn: Connection, mut rx: mpsc::Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_GROUP);
    let mut done: Vec<Completion> = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let msg = e.to_string();
            tracing::error!(error = %msg, "sqlite: cannot begin a write transaction");
            for job in batch.drain(..) {
                // The job does not run; it reports the failure through its completion.
                let (_, c) = job(None);
                c(Err(msg.clone()));
            }
            continue;
        }
        for job in batch.drain(..) {
            let sp = conn.execute_batch("SAVEPOINT w");
            let (keep, completion) = job(Some(&conn));
            if sp.is_ok() {
                if !keep {
                    let _ = conn.execute_batch("ROLLBACK TO w");
                }
                let _ = conn.execute_batch("RELEASE w");
            }
            done.push(completion);
        }
        let commit = conn.execute_batch("COMMIT").map_err(|e| e.to_string());
        if let Err(m) = &commit {
            tracing::error!(error = %m, "sqlite: group commit failed");
            let _ = conn.execute_batch("ROLLBACK");
        }
        for c in done.drain(..) {
            c(commit.clone());
        }
    }
}

#[async_trait]
impl Registry for SqliteStore {
    async fn setting(&self, name: &str) -> Result<Option<Vec<u8>>, BackendError> {
        self.point_read(|c| sql::setting(c, name))
    }

    async fn init_setting(&self, name: &str, value: &[u8]) -> Result<Vec<u8>, BackendError> {
        let (name, value) = (name.to_owned(), value.to_vec());
        self.write(move |c| sql::init_setting(c, &name, &value))
            .await
    }

    async fn set_setting(&self, name: &str, value: &[u8]) -> Result<(), BackendError> {
        let (name, value) = (name.to_owned(), value.to_vec());
        self.write(move |c| sql::set_setting(c, &name, &value))
            .await
    }

    async fn create_tenant(
        &self,
        row: &TenantRow,
        key: &SigningKeyRow,
    ) -> Result<(), BackendError> {
        let (row, key) = (row.clone(), key.clone());
        self.write(move |c| sql::create_tenant(c, &row, &key)).await
    }

    async fn tenant(&self, id: TenantId) -> Result<Option<TenantRow>, BackendError> {
        self.point_read(|c| sql::tenant(c, id))
    }

    async fn list_tenants(
        &self,
        after: Option<TenantId>,
        limit: usize,
    ) -> Result<Vec<Tenant>, BackendError> {
        self.read(move |c| sql::list_tenants(c, after, limit)).await
    }

    async fn update_tenant(
        &self,
        id: TenantId,
        patch: &TenantPatch,
    ) -> Result<Option<Tenant>, BackendError> {
        let patch = patch.clone();
        self.write(move |c| sql::update_tenant(c, id, &patch)).await
    }

    async fn shred_tenant(&self, id: TenantId) -> Result<bool, BackendError> {
        self.write(move |c| sql::shred_tenant(c, id)).await
    }

    async fn signing_keys(&self, id: TenantId) -> Result<Vec<SigningKeyRow>, BackendError> {
        self.point_read(|c| sql::signing_keys(c, id))
    }

    async fn add_signing_key(&self, key: &SigningKeyRow) -> Result<(), BackendError> {
        let key = key.clone();
        self.write(move |c| sql::add_signing_key(c, &key)).await
    }

    async fn tiers(&self) -> Result<Vec<TierRow>, BackendError> {
        self.point_read(limits::tiers)
    }

    async fn put_tier(&self, row: &TierRow) -> Result<(), BackendError> {
        let row = row.clone();
        self.write(move |c| limits::put_tier(c, &row)).await
    }

    async fn tenant_overrides(&self, id: TenantId) -> Result<Option<LimitOverrides>, BackendError> {
        self.point_read(|c| limits::tenant_overrides(c, id))
    }

    async fn set_tenant_overrides(
        &self,
        id: TenantId,
        overrides: Option<&LimitOverrides>,
    ) -> Result<(), BackendError> {
        let overrides = overrides.copied();
        self.write(move |c| limits::set_tenant_overrides(c, id, overrides.as_ref()))
            .await
    }
}

#[async_trait]
impl RecordBackend for SqliteStore {
    async fn put_collection(
        &self,
        s: &Scope,
        row: &CollectionRow,
        expected: Option<u64>,
    ) -> Result<bool, BackendError> {
        let (t, row) = (s.tenant(), row.clone());
        self.write(move |c| sql::put_collection(c, t, &row, expected))
            .await
    }

    async fn collection(
        &self,
        s: &Scope,
        name: &CollectionName,
    ) -> Result<Option<CollectionRow>, BackendError> {
        let (t, name) = (s.tenant(), name.clone());
        self.read(move |c| sql::collection(c, t, &name)).await
    }

    async fn collections(&self, s: &Scope) -> Result<Vec<CollectionRow>, BackendError> {
        let t = s.tenant();
        self.read(move |c| sql::collections(c, t)).await
    }

    async fn all_records(
        &self,
        s: &Scope,
        name: &CollectionName,
    ) -> Result<Vec<RecordRow>, BackendError> {
        let (t, name) = (s.tenant(), name.clone());
        self.read(move |c| sql::query(c, t, &name, &[], None, usize::MAX))
            .await
    }

    async fn reindex(
        &self,
        s: &Scope,
        name: &CollectionName,
        collection_version: u64,
        entries: &[(RecordId, Vec<IndexToken>)],
    ) -> Result<bool, BackendError> {
        let (t, name, entries) = (s.tenant(), name.clone(), entries.to_vec());
        self.write(move |c| sql::reindex(c, t, &name, collection_version, &entries))
            .await
    }

    async fn insert(
        &self,
        s: &Scope,
        row: &InsertRow,
        audit: Option<&[u8]>,
    ) -> Result<InsertOutcome, BackendError> {
        let (t, row, audit) = (s.tenant(), row.clone(), audit.map(<[u8]>::to_vec));
        self.write(move |c| {
            let out = sql::insert(c, t, &row)?;
            if let (InsertOutcome::Inserted, Some(body)) = (&out, audit) {
                audit::append(c, LogId::Tenant(t), &[body])?;
            }
            Ok(out)
        })
        .await
    }

    async fn get(
        &self,
        s: &Scope,
        name: &CollectionName,
        id: RecordId,
        audit: Option<&[u8]>,
    ) -> Result<Option<RecordRow>, BackendError> {
        let (t, name) = (s.tenant(), name.clone());
        let row = self.read(move |c| sql::get(c, t, &name, id)).await?;
        if let (Some(_), Some(body)) = (&row, audit) {
            // The read is acknowledged only once its entry rides a group commit.
            let body = body.to_vec();
            self.write(move |c| audit::append(c, LogId::Tenant(t), &[body]))
                .await?;
        }
        Ok(row)
    }

    async fn update(
        &self,
        s: &Scope,
        row: &UpdateRow,
        audit: Option<&[u8]>,
    ) -> Result<WriteOutcome, BackendError> {
        let (t, row, audit) = (s.tenant(), row.clone(), audit.map(<[u8]>::to_vec));
        self.write(move |c| {
            let out = sql::update(c, t, &row)?;
            if let (WriteOutcome::Written { .. }, Some(body)) = (&out, audit) {
                audit::append(c, LogId::Tenant(t), &[body])?;
            }
            Ok(out)
        })
        .await
    }

    async fn delete(
        &self,
        s: &Scope,
        name: &CollectionName,
        id: RecordId,
        expected: Option<u64>,
        audit: Option<&[u8]>,
    ) -> Result<WriteOutcome, BackendError> {
        let (t, name, audit) = (s.tenant(), name.clone(), audit.map(<[u8]>::to_vec));
        self.write(move |c| {
            let out = sql::delete(c, t, &name, id, expected)?;
            if let (WriteOutcome::Written { .. }, Some(body)) = (&out, audit) {
                audit::append(c, LogId::Tenant(t), &[body])?;
            }
            Ok(out)
        })
        .await
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
        let (t, name, all_of) = (s.tenant(), name.clone(), all_of.to_vec());
        let rows = self
            .read(move |c| sql::query(c, t, &name, &all_of, after, limit))
            .await?;
        if let Some(body) = audit {
            let body = body.to_vec();
            self.write(move |c| audit::append(c, LogId::Tenant(t), &[body]))
                .await?;
        }
        Ok(rows)
    }

    async fn usage(&self, s: &Scope) -> Result<Usage, BackendError> {
        let t = s.tenant();
        self.point_read(|c| limits::usage(c, t))
    }

    async fn insert_policy(&self, s: &Scope, row: &PolicyRow) -> Result<bool, BackendError> {
        let (t, row) = (s.tenant(), row.clone());
        self.write(move |c| sql::insert_policy(c, t, &row)).await
    }

    async fn policies(&self, s: &Scope) -> Result<Vec<PolicyRow>, BackendError> {
        let t = s.tenant();
        self.read(move |c| sql::policies(c, t)).await
    }

    async fn latest_policy(&self, s: &Scope) -> Result<Option<PolicyRow>, BackendError> {
        let t = s.tenant();
        // A primary-key range read of one row.
        self.point_read(move |c| sql::latest_policy(c, t))
    }

    async fn danger_purge_tenant(&self, tenant: TenantId) -> Result<u64, BackendError> {
        let purged = self.write(move |c| sql::purge_tenant(c, tenant)).await?;
        // Old page images of the tenant's rows and wrapped keys may still sit in the WAL:
        // checkpoint and truncate it (deleted cells are zeroed by `secure_delete`).
        let path = self.inner.path.clone();
        let done = tokio::task::spawn_blocking(move || {
            let c = Connection::open(&path)?;
            c.busy_timeout(std::time::Duration::from_secs(10))?;
            // The first column is 1 when readers kept the checkpoint from completing.
            c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|busy| busy == 0)
        })
        .await;
        if !matches!(done, Ok(Ok(true))) {
            tracing::warn!(
                "could not truncate the write-ahead log after offboarding; it will be on the next checkpoint"
            );
        }
        Ok(purged)
    }

    async fn ping(&self) -> Result<(), BackendError> {
        self.point_read(|c| c.query_row("SELECT 1", [], |_| Ok(())))
    }
}

#[async_trait]
impl AuditBackend for SqliteStore {
    async fn audit_append(&self, log: &AuditScope, bodies: &[Vec<u8>]) -> Result<(), BackendError> {
        // Rides the next group commit: durable when this returns.
        let (log, bodies) = (log.log(), bodies.to_vec());
        self.write(move |c| audit::append(c, log, &bodies)).await
    }

    async fn audit_sequence(&self, log: &AuditScope) -> Result<u64, BackendError> {
        // The writer places entries as it appends them: nothing is pending.
        let log = log.log();
        self.point_read(|c| audit::size(c, log))
    }

    async fn audit_entries(
        &self,
        log: &AuditScope,
        from: u64,
        limit: usize,
    ) -> Result<Vec<AuditRow>, BackendError> {
        let log = log.log();
        self.read(move |c| audit::entries(c, log, from, limit))
            .await
    }

    async fn audit_leaves(
        &self,
        log: &AuditScope,
        from: u64,
        to: u64,
    ) -> Result<Vec<[u8; 32]>, BackendError> {
        let log = log.log();
        self.read(move |c| audit::leaves(c, log, from, to)).await
    }

    async fn audit_put_checkpoint(
        &self,
        log: &AuditScope,
        row: &CheckpointRow,
    ) -> Result<(), BackendError> {
        let (log, row) = (log.log(), row.clone());
        self.write(move |c| audit::put_checkpoint(c, log, &row))
            .await
    }

    async fn audit_checkpoint(
        &self,
        log: &AuditScope,
        size: Option<u64>,
    ) -> Result<Option<CheckpointRow>, BackendError> {
        let log = log.log();
        self.point_read(|c| audit::checkpoint(c, log, size))
    }

    async fn audit_checkpoints(
        &self,
        log: &AuditScope,
        after: u64,
        limit: usize,
    ) -> Result<Vec<CheckpointRow>, BackendError> {
        let log = log.log();
        self.read(move |c| audit::checkpoints(c, log, after, limit))
            .await
    }

    async fn audit_prune(&self, log: &AuditScope, below: u64) -> Result<u64, BackendError> {
        let log = log.log();
        self.write(move |c| audit::prune(c, log, below)).await
    }
}
