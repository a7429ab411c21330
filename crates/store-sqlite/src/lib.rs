//! Bulkhead's embedded storage adapter: one SQLite file in WAL mode.
//!
//! - **Writes** go to one writer thread that owns the only write connection. It takes every
//!   write queued while the previous commit was running and commits them together (group
//!   commit): one fsync acknowledges many writes, and no write is acknowledged before its
//!   commit is durable (`synchronous = FULL`). Each write runs inside its own savepoint, so one
//!   failing write does not undo the others in its group.
//! - **Audit entries of reads** ride the same writer. With the default
//!   [`ReadAuditSync::Window`], a group made only of read entries (no data change) commits
//!   with `synchronous = NORMAL`: the commit is in the WAL file, durable against a killed
//!   process, before the read is answered; the next data-changing group's fsync covers it, and
//!   a syncer thread fsyncs the WAL file at least every window while unsynced read entries
//!   exist (so a power loss can lose at most the last window of read entries, never a data
//!   change). [`ReadAuditSync::Strict`] treats read entries like writes (fsync'd before the
//!   answer).
//! - **Reads** run on a small pool of read-only connections on the blocking thread pool; WAL
//!   lets them proceed while the writer commits.
//!
//! Every statement on tenant-owned tables filters on the scope's tenant id, which leads every
//! primary key and index.

mod audit;
mod limits;
mod schema;
mod sql;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bulkhead_audit::LogId;
use bulkhead_core::tier::{LimitOverrides, Usage};
use bulkhead_core::{CollectionName, RecordId, Tenant, TenantId};
use bulkhead_store::BackendError;
use bulkhead_store::port::{
    AuditBackend, AuditRow, AuditScanChunk, AuditScope, CheckpointRow, CollectionRow, IndexToken,
    InsertOutcome, InsertRow, PolicyRow, RecordBackend, RecordRow, Registry, Scope, SigningKeyRow,
    TenantPatch, TenantRow, TierRow, UpdateRow, WriteOutcome,
};
use parking_lot::Mutex;
use rusqlite::Connection;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Most writes committed by one transaction.
const MAX_GROUP: usize = 512;
/// Most writes waiting for the writer; beyond it, writers wait (back-pressure) instead of
/// growing memory without bound.
const MAX_QUEUED: usize = 8192;

/// Most logs whose size the writer remembers (beyond it, the memory is cleared and sizes are
/// read again from the table).
const MAX_SIZES: usize = 100_000;

/// A write's result, delivered once its group's commit is known.
type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;
/// A write: runs inside the group's transaction (or, given `None`, reports that none could be
/// begun without running); returns whether its changes should be kept.
type WriteJob = Box<dyn FnOnce(Option<&mut Tx<'_>>) -> (bool, Completion) + Send>;

/// What the writer thread is sent.
enum Job {
    /// A change (or anything that must be fsync'd before it is acknowledged).
    Write(WriteJob),
    /// The audit entry of a read: one insert, no data change; acknowledged after its group's
    /// commit, fsync'd per [`ReadAuditSync`].
    ReadEntry {
        log: LogId,
        body: Vec<u8>,
        done: oneshot::Sender<Result<(), BackendError>>,
    },
}

/// When the audit entry of a read is fsync'd (`audit.read_sync` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAuditSync {
    /// Like a write: the read is answered once its entry's commit is fsync'd.
    Strict,
    /// The read is answered once its entry is committed to the WAL file (durable against a
    /// killed process); the WAL file is fsync'd within this window (and by every later data
    /// change's commit).
    Window(Duration),
}

impl Default for ReadAuditSync {
    fn default() -> Self {
        Self::Window(Duration::from_millis(100))
    }
}

/// Settings of the SQLite adapter.
#[derive(Debug, Clone, Copy)]
pub struct SqliteOptions {
    /// Read connections in the pool.
    pub readers: usize,
    pub read_audit_sync: ReadAuditSync,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            readers: 8,
            read_audit_sync: ReadAuditSync::default(),
        }
    }
}

/// The writer's transaction, handed to each write: the connection, and the sizes of the audit
/// logs it appended to (so an append does not look the size up in the table every time).
pub(crate) struct Tx<'a> {
    conn: &'a Connection,
    sizes: &'a mut HashMap<LogId, u64>,
    /// Logs the current job appended to (forgotten from `sizes` if its savepoint is undone).
    touched: Vec<LogId>,
}

impl std::ops::Deref for Tx<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Tx<'_> {
    /// Appends `bodies` to `log` (see [`audit::append`]), knowing the log's size.
    pub(crate) fn append(&mut self, log: LogId, bodies: &[Vec<u8>]) -> rusqlite::Result<()> {
        let size = match self.sizes.get(&log) {
            Some(n) => *n,
            None => audit::size(self.conn, log)?,
        };
        self.touched.push(log);
        // Forgotten until the append succeeds: a failure leaves the size unknown.
        self.sizes.remove(&log);
        audit::append_at(self.conn, log, size, bodies)?;
        if self.sizes.len() >= MAX_SIZES {
            self.sizes.clear();
        }
        self.sizes.insert(log, size + bodies.len() as u64);
        Ok(())
    }

    /// Forgets the sizes of the logs the current job touched (its changes were undone).
    fn forget_touched(&mut self) {
        for l in self.touched.drain(..) {
            self.sizes.remove(&l);
        }
    }
}

/// The SQLite adapter. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: mpsc::Sender<Job>,
    read_audit_sync: ReadAuditSync,
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
    /// Opens (creating if needed) the database in `data_dir` and applies migrations, with the
    /// default settings and `readers` read connections.
    pub fn open(data_dir: &Path, readers: usize) -> Result<Self, BackendError> {
        Self::open_with(
            data_dir,
            SqliteOptions {
                readers,
                ..SqliteOptions::default()
            },
        )
    }

    /// Opens (creating if needed) the database in `data_dir` and applies migrations.
    pub fn open_with(data_dir: &Path, opts: SqliteOptions) -> Result<Self, BackendError> {
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
        // Commits of read-entry-only groups not yet covered by an fsync.
        let unsynced = Arc::new(AtomicU64::new(0));
        if let ReadAuditSync::Window(every) = opts.read_audit_sync {
            let (wal, unsynced, alive) = (wal_path(&path), unsynced.clone(), tx.downgrade());
            std::thread::Builder::new()
                .name("bulkhead-sqlite-syncer".into())
                .spawn(move || syncer_loop(&wal, every, &unsynced, &alive))
                .map_err(|e| BackendError::Other(format!("cannot start the syncer thread: {e}")))?;
        }
        std::thread::Builder::new()
            .name("bulkhead-sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, &unsynced))
            .map_err(|e| BackendError::Other(format!("cannot start the writer thread: {e}")))?;
        let readers = opts.readers.max(1);
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                writer: tx,
                read_audit_sync: opts.read_audit_sync,
                readers: Mutex::new(Vec::with_capacity(readers)),
                read_slots: Semaphore::new(readers),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Records the audit entry of a read in `log`: resolves once it is committed (and, with
    /// [`ReadAuditSync::Strict`], fsync'd).
    async fn read_entry(&self, log: LogId, body: &[u8]) -> Result<(), BackendError> {
        let body = body.to_vec();
        if self.inner.read_audit_sync == ReadAuditSync::Strict {
            return self.write(move |c| c.append(log, &[body])).await;
        }
        let (done, rx) = oneshot::channel();
        self.inner
            .writer
            .send(Job::ReadEntry { log, body, done })
            .await
            .map_err(|_| BackendError::Unavailable("the storage writer has stopped".into()))?;
        rx.await
            .map_err(|_| BackendError::Unavailable("the storage writer has stopped".into()))?
    }

    /// Runs `f` inside the next group commit; resolves once the commit is durable.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Tx<'_>) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, BackendError> {
        let (tx, rx) = oneshot::channel();
        let job: WriteJob = Box::new(move |conn| {
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
            .send(Job::Write(job))
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

/// The WAL file of the database at `db`.
fn wal_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    PathBuf::from(p)
}

/// Fsyncs the WAL file every `every` while read-entry-only groups committed without an fsync
/// (`unsynced` counts them). Stops when the writer is gone.
fn syncer_loop(wal: &Path, every: Duration, unsynced: &AtomicU64, alive: &mpsc::WeakSender<Job>) {
    let mut synced = 0;
    loop {
        std::thread::sleep(every);
        let seen = unsynced.load(Ordering::Acquire);
        if seen != synced {
            // Every commit counted in `seen` wrote its frames before it was counted: the fsync
            // (of the file, through any descriptor) covers them.
            match std::fs::File::open(wal).and_then(|f| f.sync_data()) {
                Ok(()) => synced = seen,
                // No WAL file: everything was checkpointed into the database (and synced).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => synced = seen,
                Err(e) => tracing::error!(error = %e, "sqlite: cannot fsync the write-ahead log"),
            }
        }
        if alive.strong_count() == 0 {
            return;
        }
    }
}

/// Runs a transaction-control statement (`BEGIN`, `SAVEPOINT`…) from the statement cache: the
/// writer runs several per group, and parsing them each time costs more than running them.
fn control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.raw_execute().map(drop)
}

/// Sets `synchronous` when it is not already `want` (outside a transaction).
fn set_sync(conn: &Connection, current: &mut &'static str, want: &'static str) {
    if *current != want {
        match conn.pragma_update(None, "synchronous", want) {
            Ok(()) => *current = want,
            Err(e) => tracing::error!(error = %e, "sqlite: cannot set synchronous"),
        }
    }
}

fn writer_loop(conn: Connection, mut rx: mpsc::Receiver<Job>, unsynced: &AtomicU64) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_GROUP);
    let mut done: Vec<Completion> = Vec::with_capacity(MAX_GROUP);
    let mut read_done: Vec<oneshot::Sender<Result<(), BackendError>>> =
        Vec::with_capacity(MAX_GROUP);
    let mut sizes: HashMap<LogId, u64> = HashMap::new();
    let mut sync: &'static str = "FULL";
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        // INVARIANT: a group with a data change (or anything sent through `write`) commits
        // with `synchronous = FULL`; only a group of read entries alone may commit without an
        // fsync. Set outside the transaction: it applies to the next commit.
        let reads_only = batch.iter().all(|j| matches!(j, Job::ReadEntry { .. }));
        set_sync(&conn, &mut sync, if reads_only { "NORMAL" } else { "FULL" });
        if let Err(e) = control(&conn, "BEGIN IMMEDIATE") {
            let msg = e.to_string();
            tracing::error!(error = %msg, "sqlite: cannot begin a write transaction");
            for job in batch.drain(..) {
                match job {
                    // The job does not run; it reports the failure through its completion.
                    Job::Write(job) => {
                        let (_, c) = job(None);
                        c(Err(msg.clone()));
                    }
                    Job::ReadEntry { done, .. } => {
                        let _ = done.send(Err(BackendError::Unavailable(msg.clone())));
                    }
                }
            }
            continue;
        }
        let mut tx = Tx {
            conn: &conn,
            sizes: &mut sizes,
            touched: Vec::new(),
        };
        for job in batch.drain(..) {
            match job {
                Job::Write(job) => {
                    let sp = control(&conn, "SAVEPOINT w");
                    let (keep, completion) = job(Some(&mut tx));
                    if sp.is_ok() {
                        if !keep {
                            let _ = control(&conn, "ROLLBACK TO w");
                            tx.forget_touched();
                        }
                        let _ = control(&conn, "RELEASE w");
                    }
                    tx.touched.clear();
                    done.push(completion);
                }
                Job::ReadEntry { log, body, done } => {
                    // One statement, atomic on its own: no savepoint needed.
                    match tx.append(log, std::slice::from_ref(&body)) {
                        Ok(()) => read_done.push(done),
                        Err(e) => {
                            let _ = done.send(Err(sql::map(e)));
                        }
                    }
                    tx.touched.clear();
                }
            }
        }
        let commit = control(&conn, "COMMIT").map_err(|e| e.to_string());
        if let Err(m) = &commit {
            tracing::error!(error = %m, "sqlite: group commit failed");
            let _ = control(&conn, "ROLLBACK");
            sizes.clear();
        } else if reads_only {
            unsynced.fetch_add(1, Ordering::Release);
        }
        for c in done.drain(..) {
            c(commit.clone());
        }
        for d in read_done.drain(..) {
            let _ = d.send(
                commit
                    .clone()
                    .map_err(|m| BackendError::Unavailable(format!("commit failed: {m}"))),
            );
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
                c.append(LogId::Tenant(t), &[body])?;
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
            self.read_entry(LogId::Tenant(t), body).await?;
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
                c.append(LogId::Tenant(t), &[body])?;
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
                c.append(LogId::Tenant(t), &[body])?;
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
            self.read_entry(LogId::Tenant(t), body).await?;
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
        self.write(move |c| c.append(log, &bodies)).await
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

    async fn unscoped_audit_scan(
        &self,
        after: Option<(LogId, u64)>,
        limit: usize,
    ) -> Result<Option<AuditScanChunk>, BackendError> {
        self.read(move |c| audit::scan(c, after, limit))
            .await
            .map(Some)
    }

    async fn unscoped_audit_checkpoints(
        &self,
        after: Option<(LogId, u64)>,
        limit: usize,
    ) -> Result<Option<Vec<(LogId, CheckpointRow)>>, BackendError> {
        self.read(move |c| audit::scan_checkpoints(c, after, limit))
            .await
            .map(Some)
    }
}
