//! The storage contract, run against the SQLite adapter.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::sync::Arc;

use async_trait::async_trait;
use bulkhead_audit::LogId;
use bulkhead_core::{CollectionName, RecordId, TenantId};
use bulkhead_store::contract::{AuditTamper, Harness};
use bulkhead_store::port::{RecordBackend, Registry};
use bulkhead_store_sqlite::SqliteStore;
use rusqlite::{Connection, params};

struct Sqlite {
    _dir: tempfile::TempDir,
    store: SqliteStore,
}

impl Sqlite {
    fn raw(&self) -> Connection {
        let c = Connection::open(self.store.path()).unwrap();
        c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
        c
    }

    /// The audit logs' database.
    fn raw_audit(&self) -> Connection {
        let c =
            Connection::open(bulkhead_store_sqlite::audit_database_path(self._dir.path())).unwrap();
        c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
        c
    }
}

#[async_trait]
impl Harness for Sqlite {
    async fn fresh() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), 4).unwrap();
        Self { _dir: dir, store }
    }

    fn registry(&self) -> Arc<dyn Registry> {
        Arc::new(self.store.clone())
    }

    fn backend(&self) -> Arc<dyn RecordBackend> {
        Arc::new(self.store.clone())
    }

    async fn raw_copy_data(
        &self,
        from: (TenantId, &CollectionName, RecordId),
        to: (TenantId, &CollectionName, RecordId),
    ) {
        let c = self.raw();
        let data: Vec<u8> = c
            .query_row(
                "SELECT data FROM records WHERE tenant_id = ?1 AND collection = ?2 AND id = ?3",
                params![from.0.as_bytes(), from.1.as_str(), from.2.as_bytes()],
                |r| r.get(0),
            )
            .unwrap();
        let n = c
            .execute(
                "UPDATE records SET data = ?4 WHERE tenant_id = ?1 AND collection = ?2 AND id = ?3",
                params![to.0.as_bytes(), to.1.as_str(), to.2.as_bytes(), data],
            )
            .unwrap();
        assert_eq!(n, 1);
    }

    async fn raw_move_record(&self, rec: (TenantId, &CollectionName, RecordId), to: TenantId) {
        let n = self
            .raw()
            .execute(
                "UPDATE records SET tenant_id = ?4 WHERE tenant_id = ?1 AND collection = ?2 AND id = ?3",
                params![rec.0.as_bytes(), rec.1.as_str(), rec.2.as_bytes(), to.as_bytes()],
            )
            .unwrap();
        assert_eq!(n, 1);
    }

    async fn raw_dump(&self) -> Vec<u8> {
        // Every file of the data directory (both databases, their write-ahead logs, the audit
        // journal): everything the store keeps on disk.
        fn walk(dir: &std::path::Path, out: &mut Vec<u8>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, out);
                } else if let Ok(b) = std::fs::read(&p) {
                    out.extend(b);
                }
            }
        }
        let mut bytes = Vec::new();
        walk(self._dir.path(), &mut bytes);
        bytes
    }

    async fn raw_audit_tamper(&self, log: LogId, tamper: AuditTamper) {
        let c = self.raw_audit();
        // Someone with the file can drop the append-only guards first.
        c.execute_batch(
            "DROP TRIGGER IF EXISTS audit_blocks_append_only;
             DROP TRIGGER IF EXISTS audit_checkpoints_append_only;",
        )
        .unwrap();
        let id = log.to_bytes();
        if let Some((size, column, byte)) = tamper.checkpoint_change() {
            let mut value: Vec<u8> = c
                .query_row(
                    &format!("SELECT {column} FROM audit_checkpoints WHERE log = ?1 AND size = ?2"),
                    params![id.as_slice(), size as i64],
                    |r| r.get(0),
                )
                .unwrap();
            value[byte] ^= 1;
            let n = c
                .execute(
                    &format!(
                        "UPDATE audit_checkpoints SET {column} = ?3 WHERE log = ?1 AND size = ?2"
                    ),
                    params![id.as_slice(), size as i64, value],
                )
                .unwrap();
            assert_eq!(n, 1);
            return;
        }
        // The log's stored entries, edited as a list, then stored back as blocks from where
        // the log's entries started (`write_log`: an entry's position is its block's first
        // plus its place in the block).
        let (first, mut entries) = read_log(&c, &id);
        match tamper {
            AuditTamper::FlipBodyByte { seq } => entries[(seq - first) as usize].0[0] ^= 1,
            AuditTamper::Delete { seq } => {
                entries.remove((seq - first) as usize);
            }
            AuditTamper::Hole { seq } => {
                // The entries after it stay at their positions, in blocks of their own.
                let after = entries.split_off((seq - first) as usize + 1);
                entries.pop();
                write_log(&c, &id, first, &entries);
                write_blocks(&c, &id, seq + 1, &after);
                return;
            }
            AuditTamper::RewriteBackwards => {
                c.execute("DELETE FROM audit_blocks WHERE log = ?1", [&id[..]])
                    .unwrap();
                for (at, part) in blocks(first, &entries).into_iter().rev() {
                    insert_block(&c, &id, at, part);
                }
                return;
            }
            AuditTamper::Swap { a, b } => entries.swap((a - first) as usize, (b - first) as usize),
            AuditTamper::TruncateFrom { seq } => entries.truncate((seq - first) as usize),
            AuditTamper::FlipSignature { .. }
            | AuditTamper::FlipBatchPath { .. }
            | AuditTamper::Rewrite => {}
        }
        write_log(&c, &id, first, &entries);
    }
}

/// A stored entry's body and leaf hash.
pub type StoredEntry = (Vec<u8>, Vec<u8>);
/// Each stored entry's body and leaf hash.
pub type StoredEntries = Vec<StoredEntry>;

/// A log's entries as stored in `audit.db`'s blocks: its first position, and each entry's
/// body and leaf hash (the block format of `crates/store-sqlite/src/audit.rs`).
pub fn read_log(c: &Connection, log: &[u8]) -> (u64, StoredEntries) {
    let mut st = c
        .prepare("SELECT first, entries FROM audit_blocks WHERE log = ?1 ORDER BY first")
        .unwrap();
    let mut rows = st.query([log]).unwrap();
    let mut first = None;
    let mut out = Vec::new();
    while let Some(r) = rows.next().unwrap() {
        first.get_or_insert(r.get::<_, i64>(0).unwrap() as u64);
        let bytes: Vec<u8> = r.get(1).unwrap();
        let mut rest = bytes.as_slice();
        while !rest.is_empty() {
            let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            out.push((
                rest[4..4 + len].to_vec(),
                rest[4 + len..4 + len + 32].to_vec(),
            ));
            rest = &rest[4 + len + 32..];
        }
    }
    (first.unwrap(), out)
}

/// Replaces a log's blocks with blocks of `entries` from position `first`, of 1, 2, 1, 3, 1,
/// 2, … entries in turn: a log placed a few entries per round is stored so, and the verifier
/// checks entries from several blocks together.
pub fn write_log(c: &Connection, log: &[u8], first: u64, entries: &[StoredEntry]) {
    c.execute("DELETE FROM audit_blocks WHERE log = ?1", [log])
        .unwrap();
    write_blocks(c, log, first, entries);
}

/// Adds blocks of `entries` from position `first` to a log, sized as [`write_log`] sizes them.
fn write_blocks(c: &Connection, log: &[u8], first: u64, entries: &[StoredEntry]) {
    for (at, part) in blocks(first, entries) {
        insert_block(c, log, at, part);
    }
}

/// `entries` from position `first` cut into blocks of 1, 2, 1, 3, … entries in turn (the last
/// may be shorter), each with the position it starts at.
fn blocks(first: u64, entries: &[StoredEntry]) -> Vec<(u64, &[StoredEntry])> {
    let mut out = Vec::new();
    let (mut at, mut rest) = (first, entries);
    for size in [1, 2, 1, 3].iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (part, tail) = rest.split_at((*size).min(rest.len()));
        out.push((at, part));
        at += part.len() as u64;
        rest = tail;
    }
    out
}

/// Stores `part` as one block of `log` from position `at`, after every row.
fn insert_block(c: &Connection, log: &[u8], at: u64, part: &[StoredEntry]) {
    let mut bytes = Vec::new();
    for (body, leaf) in part {
        bytes.extend_from_slice(&(body.len() as u32).to_be_bytes());
        bytes.extend_from_slice(body);
        bytes.extend_from_slice(leaf);
    }
    c.execute(
        "INSERT INTO audit_blocks (log, first, count, entries) VALUES (?1, ?2, ?3, ?4)",
        params![log, at as i64, part.len() as i64, bytes],
    )
    .unwrap();
}

bulkhead_store::contract_suite!(Sqlite);
