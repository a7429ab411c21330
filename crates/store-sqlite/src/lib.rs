//! Bulkhead's embedded storage adapter: SQLite in WAL mode, in two database files, and the
//! audit journal.
//!
//! - **`bulkhead.db`** holds the registry and the tenants' data. Writes go to one writer
//!   thread that owns the only write connection. It takes every write queued while the
//!   previous commit was running and commits them together (group commit): one fsync
//!   acknowledges many writes, and no write is acknowledged before its commit is durable
//!   (`synchronous = FULL`). Each write runs inside its own savepoint, so one failing write
//!   does not undo the others in its group. A data change's audit entry commits with it, into
//!   `audit_pending`.
//! - **The [`journal`]** takes every other audit entry (reads, lists, denials, operator
//!   actions) without a database commit. With the default [`ReadAuditSync::Window`] an entry is
//!   acknowledged once it is written to the file (durable against a killed process) and a
//!   syncer thread fsyncs the file at least every window; [`ReadAuditSync::Strict`] fsyncs
//!   before acknowledging.
//! - **`audit.db`** holds the audit logs (entries, checkpoints). Its own writer thread
//!   *places* entries from `audit_pending` and the journal into their logs (sequence numbers,
//!   leaf hashes) every few seconds (`PLACE_EVERY`) and whenever the checkpointer asks
//!   ([`AuditBackend::audit_sequence`]), and stores checkpoints. A separate file has its own
//!   write lock and its own write-ahead log: placing entries never holds up a data change, and
//!   commits to the audit logs never make the readers of tenant data drop their page caches.
//! - **Reads** run on small pools of read-only connections (one pool per file) on the blocking
//!   thread pool; WAL lets them proceed while the writers commit.
//!
//! Every statement on tenant-owned tables filters on the scope's tenant id, which leads every
//! primary key and index.

mod audit;
#[cfg(test)]
mod audit_tests;
mod journal;
mod limits;
mod schema;
mod sql;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bulkhead_audit::LogId;
use bulkhead_core::tier::{LimitOverrides, Usage};
use bulkhead_core::{CollectionName, RecordId, Tenant, TenantId};
use bulkhead_store::BackendError;
use bulkhead_store::port::{
    AuditBackend, AuditRow, AuditScope, AuditVisitor, CheckpointRow, CollectionRow, IndexToken,
    InsertOutcome, InsertRow, PolicyRow, RecordBackend, RecordRow, Registry, Scope, SigningKeyRow,
    TenantPatch, TenantRow, TierRow, UpdateRow, WriteOutcome,
};
use parking_lot::Mutex;
use rusqlite::Connection;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::journal::Journal;

/// Most writes committed by one transaction.
const MAX_GROUP: usize = 512;
/// Most writes waiting for a writer; beyond it, writers wait (back-pressure) instead of
/// growing memory without bound.
const MAX_QUEUED: usize = 8192;
/// How often appended audit entries are placed into their logs, at the least (the
/// checkpointer places them at each of its rounds too). Placing many at a time is what makes it
/// cheap: a log's page is written once per placement, however many entries it gains.
const PLACE_EVERY: Duration = Duration::from_secs(5);

/// A write's result, delivered once its group's commit is known.
type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;
/// A write: runs inside the group's transaction (or, given `None`, reports that none could be
/// begun without running); returns whether its changes should be kept.
type WriteJob = Box<dyn FnOnce(Option<&mut Group<'_>>) -> (bool, Completion) + Send>;

/// What a write sees of its group: the connection, and the audit entries of the group's data
/// changes, which commit with them (one `audit_pending` row per group).
struct Group<'a> {
    conn: &'a Connection,
    /// Encoded journal records.
    entries: Vec<u8>,
}

impl std::ops::Deref for Group<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Group<'_> {
    /// Appends the audit entry of this write's data change: it commits with the change (and
    /// is dropped with it if the write is undone).
    fn audit(&mut self, log: LogId, body: &[u8]) -> rusqlite::Result<()> {
        journal::encode(&mut self.entries, log, body)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
    }
}

/// What the audit writer thread is sent.
enum AuditJob {
    /// A change to the audit logs (checkpoints, retention), committed with its group.
    Write(WriteJob),
    /// Place every audit entry appended so far, then answer the placed sizes of `logs`.
    Place {
        logs: Vec<LogId>,
        done: Option<oneshot::Sender<Result<Vec<u64>, BackendError>>>,
    },
}

/// When an audit entry appended to the journal (a read's, a denial's, an operator action's…)
/// is fsync'd (`audit.read_sync` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAuditSync {
    /// Before the request is answered.
    Strict,
    /// The request is answered once its entry is written to the journal file (durable against
    /// a killed process); the file is fsync'd within this window.
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
    /// Read connections in the pool of each database file.
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

/// The SQLite adapter. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: mpsc::Sender<WriteJob>,
    audit_writer: mpsc::Sender<AuditJob>,
    /// `None` when opened read-only ([`SqliteStore::open_read_only`]).
    journal: Option<Arc<Journal>>,
    /// Readers of `bulkhead.db`.
    data: Arc<Pool>,
    /// Readers of `audit.db`.
    audit: Arc<Pool>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// The database file of the registry and the tenants' data inside a data directory.
pub fn database_path(data_dir: &Path) -> PathBuf {
    data_dir.join("bulkhead.db")
}

/// The database file of the audit logs inside a data directory.
pub fn audit_database_path(data_dir: &Path) -> PathBuf {
    data_dir.join("audit.db")
}

/// The audit journal's directory inside a data directory.
fn journal_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("audit-journal")
}

/// Creates `path` owner-only if it does not exist (SQLite gives its -wal and -shm files the
/// same mode).
fn create_owner_only(path: &Path) -> Result<(), BackendError> {
    if path.exists() {
        return Ok(());
    }
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map(drop)
        .map_err(|e| BackendError::Unavailable(format!("cannot create `{}`: {e}", path.display())))
}

fn read_only() -> BackendError {
    BackendError::Unavailable("the storage is open read-only".into())
}

fn stopped() -> BackendError {
    BackendError::Unavailable("the storage writer has stopped".into())
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

    /// Opens (creating if needed) the databases in `data_dir` and applies migrations.
    pub fn open_with(data_dir: &Path, opts: SqliteOptions) -> Result<Self, BackendError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(|e| {
                BackendError::Unavailable(format!("cannot create `{}`: {e}", data_dir.display()))
            })?;
        let path = database_path(data_dir);
        let audit_path = audit_database_path(data_dir);
        create_owner_only(&path)?;
        create_owner_only(&audit_path)?;
        let mut conn = Connection::open(&path).map_err(sql::map)?;
        schema::configure_writer(&conn).map_err(sql::map)?;
        schema::migrate(&mut conn).map_err(sql::map)?;
        let mut audit_conn = Connection::open(&audit_path).map_err(sql::map)?;
        schema::configure_writer(&audit_conn).map_err(sql::map)?;
        schema::migrate_audit(&mut audit_conn).map_err(sql::map)?;
        // Audit logs kept in `bulkhead.db` by earlier versions move to `audit.db`.
        schema::move_audit_logs(&mut audit_conn, &mut conn, &path).map_err(sql::map)?;

        let readers = opts.readers.max(1);
        let data = Arc::new(Pool::new(path.clone(), readers, false));
        // The audit logs are read in large sequential runs (a log's blocks, or every log by
        // `audit verify`): through a memory map, not a copy per page.
        let audit = Arc::new(Pool::new(audit_path, readers.min(4), true));
        // The journal, recovered from where placement stopped; whatever it holds beyond that
        // (a previous process stopped before placing it) is placed now.
        let placed = audit::journal_placed(&audit_conn).map_err(sql::map)?;
        let strict = opts.read_audit_sync == ReadAuditSync::Strict;
        let journal = Arc::new(Journal::open(&journal_dir(data_dir), placed, strict)?);
        if let Some(upto) = place(&audit_conn, &journal, &data)? {
            audit::clear_pending(&conn, upto).map_err(sql::map)?;
        }

        let (writer, rx) = mpsc::channel::<WriteJob>(MAX_QUEUED);
        let (audit_writer, audit_rx) = mpsc::channel::<AuditJob>(MAX_QUEUED);
        // Set by a commit of data changes (which may hold audit entries); cleared by placement.
        let pending = Arc::new(AtomicBool::new(false));
        let window = match opts.read_audit_sync {
            ReadAuditSync::Window(every) => Some(every),
            ReadAuditSync::Strict => None,
        };
        spawn("bulkhead-sqlite-syncer", {
            let (journal, pending, audit_writer) =
                (journal.clone(), pending.clone(), audit_writer.downgrade());
            move || syncer_loop(&journal, window, &pending, &audit_writer)
        })?;
        spawn("bulkhead-sqlite-writer", {
            let pending = pending.clone();
            move || writer_loop(&conn, rx, &pending)
        })?;
        spawn("bulkhead-audit-writer", {
            let (journal, data, main) = (journal.clone(), data.clone(), writer.downgrade());
            move || audit_writer_loop(&audit_conn, audit_rx, &journal, &data, &pending, &main)
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                writer,
                audit_writer,
                journal: Some(journal),
                data,
                audit,
            }),
        })
    }

    /// Opens the databases in `data_dir` for reading only, as `bulkhead audit verify` does
    /// while a server may be running on them: no migration, no journal recovery, no placement,
    /// no writer thread (every write fails). What it reads is what the server has placed; the
    /// databases must be at this version's schema.
    pub fn open_read_only(data_dir: &Path, readers: usize) -> Result<Self, BackendError> {
        let path = database_path(data_dir);
        let audit_path = audit_database_path(data_dir);
        for p in [&path, &audit_path] {
            if !p.exists() {
                return Err(BackendError::Unavailable(format!(
                    "no database at `{}` (start the server once on this data directory to create \
                     or upgrade it)",
                    p.display()
                )));
            }
        }
        for (p, current) in [
            (&path, schema::MIGRATIONS.len()),
            (&audit_path, schema::AUDIT_MIGRATIONS.len()),
        ] {
            let c = schema::open_reader(p, false).map_err(sql::map)?;
            let version: i64 = c
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .map_err(sql::map)?;
            if usize::try_from(version).ok() != Some(current) {
                return Err(BackendError::Unavailable(format!(
                    "`{}` is at schema version {version}, this binary reads version {current} \
                     (start this version's server once on the data directory to upgrade it, or \
                     use the binary that wrote it)",
                    p.display()
                )));
            }
        }
        let readers = readers.max(1);
        // Writers that are never served: every write reports the store read-only.
        let (writer, _) = mpsc::channel::<WriteJob>(1);
        let (audit_writer, _) = mpsc::channel::<AuditJob>(1);
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.clone(),
                writer,
                audit_writer,
                journal: None,
                data: Arc::new(Pool::new(path, readers, false)),
                audit: Arc::new(Pool::new(audit_path, readers.min(4), true)),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Records audit entries that commit with no data change (a read's, a denial's…) in the
    /// journal: resolves once they are written (and, with [`ReadAuditSync::Strict`], fsync'd).
    async fn journal_entries(&self, log: LogId, bodies: &[&[u8]]) -> Result<(), BackendError> {
        match &self.inner.journal {
            Some(j) => j.append(log, bodies).await,
            None => Err(read_only()),
        }
    }

    /// Runs `f` inside the next group commit of `bulkhead.db`; resolves once it is durable.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Group<'_>) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, BackendError> {
        let (job, rx) = write_job(f);
        self.inner.writer.send(job).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Runs `f` inside the next group commit of `audit.db`; resolves once it is durable.
    async fn audit_write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Group<'_>) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, BackendError> {
        let (job, rx) = write_job(f);
        self.inner
            .audit_writer
            .send(AuditJob::Write(job))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Runs a point read of `bulkhead.db` (a primary-key lookup: microseconds, bounded) on a
    /// pooled read connection right here, without a hop to the blocking pool. Anything that
    /// can scan goes through [`SqliteStore::read`] instead.
    fn point_read<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, BackendError> {
        self.inner.data.with(f)
    }

    /// Runs `f` on a pooled read connection of `bulkhead.db`, on the blocking thread pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, BackendError> {
        self.inner.data.read(f).await
    }

    /// Runs `f` on a pooled read connection of `audit.db`, on the blocking thread pool.
    async fn audit_read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, BackendError> {
        self.inner.audit.read(f).await
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<(), BackendError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map(drop)
        .map_err(|e| BackendError::Other(format!("cannot start the `{name}` thread: {e}")))
}

/// A write job running `f`, and the receiver of its result (once its group's commit is known).
fn write_job<T: Send + 'static>(
    f: impl FnOnce(&mut Group<'_>) -> rusqlite::Result<T> + Send + 'static,
) -> (WriteJob, oneshot::Receiver<Result<T, BackendError>>) {
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
                (Ok(_), Err(m)) => Err(BackendError::Unavailable(format!("commit failed: {m}"))),
            };
            // The receiver may be gone if the request was cancelled; the write stands.
            let _ = tx.send(out);
        });
        (keep, done)
    });
    (job, rx)
}

/// Read-only connections to one database file.
struct Pool {
    path: PathBuf,
    /// Read through a memory map (see `schema::open_reader`).
    mmap: bool,
    /// Idle connections.
    idle: Mutex<Vec<Connection>>,
    /// Bounds concurrent readers to the pool size.
    slots: Semaphore,
}

impl Pool {
    fn new(path: PathBuf, size: usize, mmap: bool) -> Self {
        Self {
            path,
            mmap,
            idle: Mutex::new(Vec::with_capacity(size)),
            slots: Semaphore::new(size),
        }
    }

    /// Runs `f` on an idle connection (opening one if none is idle), then returns it.
    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, BackendError> {
        let pooled = self.idle.lock().pop();
        let conn = match pooled {
            Some(c) => c,
            None => schema::open_reader(&self.path, self.mmap).map_err(sql::map)?,
        };
        let out = f(&conn).map_err(sql::map);
        self.idle.lock().push(conn);
        out
    }

    /// Runs `f` on an idle connection on the blocking thread pool.
    async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, BackendError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| BackendError::Unavailable("storage is shutting down".into()))?;
        let pool = self.clone();
        tokio::task::spawn_blocking(move || pool.with(f))
            .await
            .map_err(|e| BackendError::Other(format!("read task failed: {e}")))?
    }
}

/// The syncer: every `window` (when set), fsyncs the journal if records were written since the
/// last sync; every [`PLACE_EVERY`], asks the audit writer to place what was appended, if
/// anything was. Stops when the audit writer is gone.
fn syncer_loop(
    journal: &Journal,
    window: Option<Duration>,
    pending: &AtomicBool,
    audit_writer: &mpsc::WeakSender<AuditJob>,
) {
    let tick = window.unwrap_or(PLACE_EVERY).min(PLACE_EVERY);
    let mut last_place = std::time::Instant::now();
    let mut placed_seen = journal.written();
    loop {
        std::thread::sleep(tick);
        if window.is_some()
            && let Err(e) = journal.sync()
        {
            tracing::error!(error = %e, "audit journal: cannot fsync");
        }
        let Some(writer) = audit_writer.upgrade() else {
            return;
        };
        if last_place.elapsed() >= PLACE_EVERY {
            last_place = std::time::Instant::now();
            let written = journal.written();
            if written != placed_seen || pending.load(Ordering::Acquire) {
                placed_seen = written;
                // A full queue means the writer is busy; the next round asks again.
                let _ = writer.try_send(AuditJob::Place {
                    logs: Vec::new(),
                    done: None,
                });
            }
        }
    }
}

/// Runs a transaction-control statement (`BEGIN`, `SAVEPOINT`…) from the statement cache: the
/// writers run several per group, and parsing them each time costs more than running them.
fn control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.raw_execute().map(drop)
}

/// Commits `jobs` as one group: one transaction, each job in its own savepoint (a job that
/// fails undoes only its own changes, and drops its audit entries), the audit entries of the
/// kept changes in one `audit_pending` row (`pending`: only `bulkhead.db` has the table), every
/// completion told the commit's outcome. Returns whether the commit succeeded.
///
/// INVARIANT: every commit is fsync'd (`synchronous = FULL`) before anything it holds is
/// acknowledged, and a data change's audit entry commits in the same transaction as the change.
fn commit_group(conn: &Connection, jobs: Vec<WriteJob>, pending: bool) -> bool {
    if jobs.is_empty() {
        return true;
    }
    if let Err(e) = control(conn, "BEGIN IMMEDIATE") {
        let msg = e.to_string();
        tracing::error!(error = %msg, "sqlite: cannot begin a write transaction");
        for job in jobs {
            // The job does not run; it reports the failure through its completion.
            job(None).1(Err(msg.clone()));
        }
        return false;
    }
    let mut group = Group {
        conn,
        entries: Vec::new(),
    };
    let mut done: Vec<Completion> = Vec::with_capacity(jobs.len());
    for job in jobs {
        let mark = group.entries.len();
        let sp = control(conn, "SAVEPOINT w");
        let (keep, completion) = job(Some(&mut group));
        if sp.is_ok() {
            if !keep {
                let _ = control(conn, "ROLLBACK TO w");
            }
            let _ = control(conn, "RELEASE w");
        }
        if !keep {
            group.entries.truncate(mark);
        }
        done.push(completion);
    }
    let entries = (!group.entries.is_empty()).then_some(group.entries);
    let commit = match entries {
        Some(_) if !pending => Err("audit entries for a database without a pending table".into()),
        Some(e) => audit::append_pending(conn, &e).map_err(|e| e.to_string()),
        None => Ok(()),
    }
    .and_then(|()| control(conn, "COMMIT").map_err(|e| e.to_string()));
    if let Err(m) = &commit {
        tracing::error!(error = %m, "sqlite: group commit failed");
        let _ = control(conn, "ROLLBACK");
    }
    for c in done {
        c(commit.clone());
    }
    commit.is_ok()
}

/// Takes the first job and every job queued behind it (up to [`MAX_GROUP`]).
fn take_group<J>(rx: &mut mpsc::Receiver<J>, first: J) -> Vec<J> {
    let mut batch = Vec::with_capacity(16);
    batch.push(first);
    while batch.len() < MAX_GROUP {
        match rx.try_recv() {
            Ok(j) => batch.push(j),
            Err(_) => break,
        }
    }
    batch
}

/// The writer of `bulkhead.db`.
fn writer_loop(conn: &Connection, mut rx: mpsc::Receiver<WriteJob>, pending: &AtomicBool) {
    while let Some(first) = rx.blocking_recv() {
        let batch = take_group(&mut rx, first);
        if commit_group(conn, batch, true) {
            // The group may have appended audit entries of data changes: the syncer's next
            // round has them placed.
            pending.store(true, Ordering::Release);
        }
    }
}

/// The writer of `audit.db`: groups of checkpoint and retention writes, and placement.
fn audit_writer_loop(
    conn: &Connection,
    mut rx: mpsc::Receiver<AuditJob>,
    journal: &Journal,
    data: &Pool,
    pending: &AtomicBool,
    main: &mpsc::WeakSender<WriteJob>,
) {
    let place_now = |conn: &Connection| -> Result<(), BackendError> {
        let was_pending = pending.swap(false, Ordering::AcqRel);
        match place(conn, journal, data) {
            Ok(Some(upto)) => {
                // The placed rows of `audit_pending` can go (a later placement skips them
                // meanwhile): a write of its own, waited for by nobody.
                if let Some(main) = main.upgrade() {
                    let (job, _) = write_job(move |c| audit::clear_pending(c, upto));
                    let _ = main.try_send(job);
                }
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                if was_pending {
                    pending.store(true, Ordering::Release);
                }
                tracing::error!(error = %e, "audit: cannot place entries");
                Err(e)
            }
        }
    };
    while let Some(first) = rx.blocking_recv() {
        let mut writes = Vec::new();
        let mut places = Vec::new();
        for job in take_group(&mut rx, first) {
            match job {
                AuditJob::Write(w) => writes.push(w),
                AuditJob::Place { logs, done } => places.push((logs, done)),
            }
        }
        commit_group(conn, writes, false);
        if places.is_empty() {
            continue;
        }
        let placed = place_now(conn).map_err(|e| e.to_string());
        for (logs, done) in places {
            let answer = match &placed {
                Ok(()) => logs
                    .iter()
                    .map(|l| audit::size(conn, *l).map_err(sql::map))
                    .collect(),
                Err(m) => Err(BackendError::Unavailable(m.clone())),
            };
            if let Some(done) = done {
                let _ = done.send(answer);
            }
        }
    }
    // Stopping: place what was appended, so that a cleanly stopped store has it all in its
    // logs.
    let _ = place_now(conn);
}

/// Places every appended audit entry (see [`audit::place`]) in one transaction of `audit.db`,
/// fsync'd before the journal segments it covers are deleted. Returns the last `audit_pending`
/// row placed, if any was.
fn place(conn: &Connection, journal: &Journal, data: &Pool) -> Result<Option<i64>, BackendError> {
    control(conn, "BEGIN IMMEDIATE").map_err(sql::map)?;
    let run = || -> Result<audit::Placed, BackendError> {
        let placed = audit::place(conn, journal, data)?;
        control(conn, "COMMIT").map_err(sql::map)?;
        Ok(placed)
    };
    match run() {
        Ok(placed) => {
            if let Some(offset) = placed.journal {
                journal.release(offset);
            }
            Ok(placed.pending)
        }
        Err(e) => {
            let _ = control(conn, "ROLLBACK");
            Err(e)
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
                c.audit(LogId::Tenant(t), &body)?;
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
            // The read is acknowledged only once its entry is in the journal.
            self.journal_entries(LogId::Tenant(t), &[body]).await?;
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
                c.audit(LogId::Tenant(t), &body)?;
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
                c.audit(LogId::Tenant(t), &body)?;
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
            self.journal_entries(LogId::Tenant(t), &[body]).await?;
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
        if let Some(f) = self.inner.journal.as_ref().and_then(|j| j.failed()) {
            return Err(BackendError::Unavailable(f));
        }
        self.point_read(|c| c.query_row("SELECT 1", [], |_| Ok(())))
    }
}

#[async_trait]
impl AuditBackend for SqliteStore {
    async fn audit_append(&self, log: &AuditScope, bodies: &[Vec<u8>]) -> Result<(), BackendError> {
        let bodies: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        self.journal_entries(log.log(), &bodies).await
    }

    async fn audit_sequence(&self, logs: &[AuditScope]) -> Result<Vec<u64>, BackendError> {
        let (done, rx) = oneshot::channel();
        let logs = logs.iter().map(AuditScope::log).collect();
        self.inner
            .audit_writer
            .send(AuditJob::Place {
                logs,
                done: Some(done),
            })
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    async fn audit_entries(
        &self,
        log: &AuditScope,
        from: u64,
        limit: usize,
    ) -> Result<Vec<AuditRow>, BackendError> {
        let log = log.log();
        self.audit_read(move |c| audit::entries(c, log, from, limit))
            .await
    }

    async fn audit_leaves(
        &self,
        log: &AuditScope,
        from: u64,
        to: u64,
    ) -> Result<Vec<[u8; 32]>, BackendError> {
        let log = log.log();
        self.audit_read(move |c| audit::leaves(c, log, from, to))
            .await
    }

    async fn audit_put_checkpoints(
        &self,
        rows: &[(AuditScope, CheckpointRow)],
    ) -> Result<(), BackendError> {
        // One group commit for all, fsync'd like any write.
        let rows: Vec<(LogId, CheckpointRow)> =
            rows.iter().map(|(l, r)| (l.log(), r.clone())).collect();
        self.audit_write(move |c| {
            rows.iter()
                .try_for_each(|(log, row)| audit::put_checkpoint(c, *log, row))
        })
        .await
    }

    async fn audit_checkpoint(
        &self,
        log: &AuditScope,
        size: Option<u64>,
    ) -> Result<Option<CheckpointRow>, BackendError> {
        let log = log.log();
        self.inner.audit.with(|c| audit::checkpoint(c, log, size))
    }

    async fn audit_checkpoints(
        &self,
        log: &AuditScope,
        after: u64,
        limit: usize,
    ) -> Result<Vec<CheckpointRow>, BackendError> {
        let log = log.log();
        self.audit_read(move |c| audit::checkpoints(c, log, after, limit))
            .await
    }

    async fn audit_prune(&self, log: &AuditScope, below: u64) -> Result<u64, BackendError> {
        let log = log.log();
        self.audit_write(move |c| audit::prune(c, log, below)).await
    }

    async fn unscoped_audit_logs(&self) -> Result<Option<Vec<(LogId, u64)>>, BackendError> {
        self.audit_read(audit::logs).await.map(Some)
    }

    async fn unscoped_audit_visit(
        &self,
        from: Option<LogId>,
        until: Option<LogId>,
        mut visit: AuditVisitor,
    ) -> Result<Option<()>, BackendError> {
        self.audit_read(move |c| {
            audit::in_snapshot(c, |c| audit::visit(c, from, until, &mut visit))
        })
        .await
        .map(Some)
    }
}
