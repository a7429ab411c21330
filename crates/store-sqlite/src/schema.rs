//! Connection settings and migrations for the SQLite adapter.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

/// Migrations, applied in order; `PRAGMA user_version` records how many ran.
///
/// INVARIANT: the tenant id leads every primary key and index of a tenant-owned table (for the
/// audit tables: the log id, which is the tenant id of a tenant's log). The one exception is
/// `audit_pending`, keyed by append order: only the audit writer thread reads it, to place its
/// rows into their logs in `audit.db`.
pub(crate) const MIGRATIONS: &[&str] = &[
    r"
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;

CREATE TABLE tenants (
    id           BLOB PRIMARY KEY,
    name         TEXT NOT NULL,
    tier         TEXT NOT NULL,
    status       TEXT NOT NULL,
    placement    TEXT NOT NULL,
    wrapped_root BLOB,
    created_at   INTEGER NOT NULL
) WITHOUT ROWID;
-- A name is unique among tenants that are not deleted; a deleted tenant's name can be reused.
CREATE UNIQUE INDEX tenants_live_name ON tenants (name) WHERE status <> 'deleted';

CREATE TABLE signing_keys (
    tenant_id       BLOB NOT NULL,
    kid             TEXT NOT NULL,
    alg             TEXT NOT NULL,
    public          BLOB NOT NULL,
    wrapped_private BLOB NOT NULL,
    created_at      INTEGER NOT NULL,
    active          INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, kid)
) WITHOUT ROWID;

CREATE TABLE collections (
    tenant_id  BLOB NOT NULL,
    name       TEXT NOT NULL,
    version    INTEGER NOT NULL,
    definition BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, name)
) WITHOUT ROWID;

CREATE TABLE records (
    tenant_id  BLOB NOT NULL,
    collection TEXT NOT NULL,
    id         BLOB NOT NULL,
    version    INTEGER NOT NULL,
    data       BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, collection, id)
) WITHOUT ROWID;

CREATE TABLE record_index (
    tenant_id  BLOB NOT NULL,
    collection TEXT NOT NULL,
    token      BLOB NOT NULL,
    record_id  BLOB NOT NULL,
    PRIMARY KEY (tenant_id, collection, token, record_id)
) WITHOUT ROWID;
CREATE INDEX record_index_by_record ON record_index (tenant_id, collection, record_id);

CREATE TABLE idempotency (
    tenant_id  BLOB NOT NULL,
    key        BLOB NOT NULL,
    request    BLOB NOT NULL,
    response   BLOB NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, key)
) WITHOUT ROWID;
",
    // 2: performance isolation (tiers, per-tenant limit overrides, storage usage).
    r"
-- Operator data: tiers defined through the API, and tenants' own limit overrides (JSON).
CREATE TABLE tiers (
    name       TEXT PRIMARY KEY,
    limits     TEXT NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE tenant_limits (
    tenant_id BLOB PRIMARY KEY,
    overrides TEXT NOT NULL
) WITHOUT ROWID;

-- Tenant-owned: what each tenant stores, kept by the triggers below in the transaction of the
-- write itself, so it never drifts from the records table.
CREATE TABLE tenant_usage (
    tenant_id BLOB PRIMARY KEY,
    records   INTEGER NOT NULL,
    bytes     INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO tenant_usage (tenant_id, records, bytes)
SELECT tenant_id, count(*), coalesce(sum(length(data)), 0) FROM records GROUP BY tenant_id;

CREATE TRIGGER records_usage_insert AFTER INSERT ON records BEGIN
    INSERT OR IGNORE INTO tenant_usage (tenant_id, records, bytes) VALUES (NEW.tenant_id, 0, 0);
    UPDATE tenant_usage SET records = records + 1, bytes = bytes + length(NEW.data)
     WHERE tenant_id = NEW.tenant_id;
END;

CREATE TRIGGER records_usage_update AFTER UPDATE OF data ON records BEGIN
    UPDATE tenant_usage SET bytes = bytes + length(NEW.data) - length(OLD.data)
     WHERE tenant_id = NEW.tenant_id;
END;

-- Only an existing row is changed: a purge deletes the tenant's usage row with its records.
CREATE TRIGGER records_usage_delete AFTER DELETE ON records BEGIN
    UPDATE tenant_usage SET records = records - 1, bytes = bytes - length(OLD.data)
     WHERE tenant_id = OLD.tenant_id;
END;
",
    // 3: audit logs.
    r"
-- Audit logs (docs/audit.md): `log` is the tenant id, or 16 zero bytes for the operator log.
-- Entries are append-only: nothing in Bulkhead updates them, and the database refuses to.
-- Offboarding a tenant keeps its log and checkpoints (the purge does not touch them).
CREATE TABLE audit_entries (
    log  BLOB NOT NULL,
    seq  INTEGER NOT NULL,
    body BLOB NOT NULL,
    leaf BLOB NOT NULL,
    PRIMARY KEY (log, seq)
) WITHOUT ROWID;
CREATE TRIGGER audit_entries_append_only BEFORE UPDATE ON audit_entries
BEGIN SELECT RAISE(ABORT, 'audit entries are append-only'); END;

CREATE TABLE audit_checkpoints (
    log       BLOB NOT NULL,
    size      INTEGER NOT NULL,
    root      BLOB NOT NULL,
    time_us   INTEGER NOT NULL,
    key_id    TEXT NOT NULL,
    signature BLOB NOT NULL,
    frontier  BLOB NOT NULL,
    PRIMARY KEY (log, size)
) WITHOUT ROWID;
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
CREATE TRIGGER audit_checkpoints_kept BEFORE DELETE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit checkpoints are kept'); END;
",
    // 4: tenant policy versions.
    r"
-- Tenant policy versions (issue 4): append-only; the highest version is in force.
CREATE TABLE policies (
    tenant_id  BLOB NOT NULL,
    version    INTEGER NOT NULL,
    sealed     BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, version)
) WITHOUT ROWID;
",
    // 5: audit entries of data changes, waiting to be placed; the audit logs move to
    // `audit.db` (see `move_audit_logs`).
    r"
-- The audit entries of data changes commit with the changes, here (docs/audit.md, Storage):
-- one row per group commit, holding the entries of the group's changes (journal records, see
-- `journal.rs`), at the end of this one B-tree. The audit writer later places the entries into
-- the logs in `audit.db` and records the last row placed there; placed rows are then deleted.
-- AUTOINCREMENT: a row number is never reused, so the last row placed tells exactly which rows
-- are not placed yet. Nothing updates a row.
CREATE TABLE audit_pending (
    n       INTEGER PRIMARY KEY AUTOINCREMENT,
    entries BLOB NOT NULL
);
CREATE TRIGGER audit_pending_append_only BEFORE UPDATE ON audit_pending
BEGIN SELECT RAISE(ABORT, 'audit entries are append-only'); END;
",
];

/// Migrations of `audit.db`, the audit logs (docs/audit.md): `log` is the tenant id, or 16 zero
/// bytes for the operator log. Entries are append-only: nothing in Bulkhead updates them, and
/// the database refuses to; checkpoints are never deleted. Offboarding a tenant keeps its log
/// and checkpoints.
///
/// INVARIANT: the log id (the tenant id of a tenant's log) leads every primary key and index
/// but `audit_blocks`' row id, which is placement order; every statement on a log's blocks
/// filters on the log (through `audit_blocks_at`), except the offline verifier's scans across
/// every log (`audit::scan`, `audit::logs`), reached only through the operator-only
/// `unscoped_audit_*` port methods.
pub(crate) const AUDIT_MIGRATIONS: &[&str] = &[
    r"
-- A log's entries in blocks (crates/store-sqlite/src/audit.rs): up to 1024 consecutive entries
-- of one log per row, each entry its body's length (u32, big-endian), its body and its leaf
-- hash. Rows are appended in placement order; the index finds a log's blocks in order.
CREATE TABLE audit_blocks (
    id      INTEGER PRIMARY KEY,
    log     BLOB NOT NULL,
    first   INTEGER NOT NULL,
    count   INTEGER NOT NULL,
    entries BLOB NOT NULL
);
CREATE UNIQUE INDEX audit_blocks_at ON audit_blocks (log, first);
CREATE TRIGGER audit_blocks_append_only BEFORE UPDATE ON audit_blocks
BEGIN SELECT RAISE(ABORT, 'audit entries are append-only'); END;

CREATE TABLE audit_checkpoints (
    log       BLOB NOT NULL,
    size      INTEGER NOT NULL,
    root      BLOB NOT NULL,
    time_us   INTEGER NOT NULL,
    key_id    TEXT NOT NULL,
    signature BLOB NOT NULL,
    frontier  BLOB NOT NULL,
    PRIMARY KEY (log, size)
) WITHOUT ROWID;
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
CREATE TRIGGER audit_checkpoints_kept BEFORE DELETE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit checkpoints are kept'); END;

-- How far placement went: `journal_placed` (an offset in the audit journal) and
-- `pending_placed` (the last row of `bulkhead.db`'s `audit_pending` placed).
CREATE TABLE audit_state (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
",
    r"
-- A checkpoint signed in a batch: its slot, the batch's width and its audit path to the signed
-- root (bulkhead_audit::checkpoint::BatchPath); empty for one signed alone.
ALTER TABLE audit_checkpoints ADD COLUMN batch BLOB NOT NULL DEFAULT x'';
",
];

/// The writer: WAL, and every commit fsync'd before it is acknowledged.
pub(crate) fn configure_writer(c: &Connection) -> rusqlite::Result<()> {
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "FULL")?;
    // Deleted content (a shredded tenant's wrapped key, purged rows) is overwritten, not left
    // in free pages.
    c.pragma_update(None, "secure_delete", "ON")?;
    c.pragma_update(None, "foreign_keys", "OFF")?;
    c.pragma_update(None, "busy_timeout", 5000)?;
    c.pragma_update(None, "cache_size", -16_000)?;
    // Savepoint journals and sorts (placing the audit queue orders it) stay in memory instead
    // of temporary files the kernel would copy every page to.
    c.pragma_update(None, "temp_store", "MEMORY")?;
    c.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// A read-only connection. `mmap`: pages are read through a memory map rather than copied by
/// `read` calls; worth it for `audit.db`, which is scanned whole (`audit verify`) and changes
/// only at placements (SQLite drops a reader's map when the file changed under it, so a
/// database with a commit every few milliseconds is better read without one).
pub(crate) fn open_reader(path: &Path, mmap: bool) -> rusqlite::Result<Connection> {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    c.pragma_update(None, "busy_timeout", 5000)?;
    c.pragma_update(None, "cache_size", -8_000)?;
    if mmap {
        c.pragma_update(None, "mmap_size", 1_i64 << 32)?;
    }
    c.set_prepared_statement_cache_capacity(64);
    Ok(c)
}

pub(crate) fn migrate(c: &mut Connection) -> rusqlite::Result<()> {
    apply(c, MIGRATIONS)
}

pub(crate) fn migrate_audit(c: &mut Connection) -> rusqlite::Result<()> {
    apply(c, AUDIT_MIGRATIONS)
}

/// Moves the audit logs that earlier versions kept in `bulkhead.db` (migration 3, one row per
/// entry) into `audit.db` (blocks), then drops them from `bulkhead.db`. Two transactions, copy
/// first: a crash in between copies again (a log already in `audit.db` is skipped, and a
/// checkpoint already there is kept), and nothing is dropped before the copy is durable.
pub(crate) fn move_audit_logs(
    audit: &mut Connection,
    main: &mut Connection,
    main_path: &Path,
) -> rusqlite::Result<()> {
    let has_logs: bool = main.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit_entries')",
        [],
        |r| r.get(0),
    )?;
    if !has_logs {
        return Ok(());
    }
    audit.execute("ATTACH DATABASE ?1 AS old", [main_path.to_string_lossy()])?;
    let copied = (|| {
        let tx = audit.transaction()?;
        {
            // The logs already moved (by a move a crash cut short), read before any block is
            // written: a filter evaluated during the scan would also see the blocks this move
            // writes, and skip the rest of each log.
            let moved: std::collections::HashSet<Vec<u8>> = tx
                .prepare("SELECT DISTINCT log FROM main.audit_blocks")?
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut read =
                tx.prepare("SELECT log, seq, body, leaf FROM old.audit_entries ORDER BY log, seq")?;
            let mut rows = read.query([])?;
            // The block being built: its log, first position, entry count and bytes.
            let mut open: Option<([u8; 16], u64, usize, Vec<u8>)> = None;
            while let Some(r) = rows.next()? {
                let log = <[u8; 16]>::try_from(r.get_ref(0)?.as_blob()?)
                    .map_err(|_| rusqlite::Error::InvalidQuery)?;
                if moved.contains(log.as_slice()) {
                    continue;
                }
                let seq = u64::try_from(r.get::<_, i64>(1)?)
                    .map_err(|_| rusqlite::Error::InvalidQuery)?;
                let leaf = <[u8; 32]>::try_from(r.get_ref(3)?.as_blob()?)
                    .map_err(|_| rusqlite::Error::InvalidQuery)?;
                // A new block at a new log, a gap (kept as stored: the verifier names it), or
                // a full block.
                let fits = open.as_ref().is_some_and(|(l, first, n, _)| {
                    *l == log && first + *n as u64 == seq && *n < bulkhead_audit::block::MAX_ENTRIES
                });
                if !fits && let Some((l, first, n, bytes)) = open.take() {
                    crate::audit::put_block(&tx, &l, first, n, &bytes)?;
                }
                let block = open.get_or_insert_with(|| (log, seq, 0, Vec::new()));
                crate::audit::push_entry(&mut block.3, r.get_ref(2)?.as_blob()?, &leaf)?;
                block.2 += 1;
            }
            if let Some((l, first, n, bytes)) = open.take() {
                crate::audit::put_block(&tx, &l, first, n, &bytes)?;
            }
        }
        tx.execute_batch(
            "INSERT OR IGNORE INTO main.audit_checkpoints
                 (log, size, root, time_us, key_id, signature, frontier)
                 SELECT log, size, root, time_us, key_id, signature, frontier
                 FROM old.audit_checkpoints;",
        )?;
        tx.commit()
    })();
    audit.execute("DETACH DATABASE old", [])?;
    copied?;
    let tx = main.transaction()?;
    tx.execute_batch("DROP TABLE audit_entries; DROP TABLE audit_checkpoints;")?;
    tx.commit()
}

fn apply(c: &mut Connection, migrations: &[&str]) -> rusqlite::Result<()> {
    let current: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, m) in migrations
        .iter()
        .enumerate()
        .skip(usize::try_from(current).unwrap_or(0))
    {
        let tx = c.transaction()?;
        tx.execute_batch(m)?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(i + 1).unwrap_or(i64::MAX),
        )?;
        tx.commit()?;
    }
    Ok(())
}
