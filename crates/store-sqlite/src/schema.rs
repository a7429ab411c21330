//! Connection settings and migrations for the SQLite adapter.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

/// Migrations, applied in order; `PRAGMA user_version` records how many ran.
///
/// INVARIANT: the tenant id leads every primary key and index of a tenant-owned table (for the
/// audit tables: the log id, which is the tenant id of a tenant's log).
const MIGRATIONS: &[&str] = &[
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
    c.set_prepared_statement_cache_capacity(64);
    Ok(())
}

pub(crate) fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    c.pragma_update(None, "busy_timeout", 5000)?;
    c.pragma_update(None, "cache_size", -8_000)?;
    c.set_prepared_statement_cache_capacity(64);
    Ok(c)
}

pub(crate) fn migrate(c: &mut Connection) -> rusqlite::Result<()> {
    let current: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, m) in MIGRATIONS
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
