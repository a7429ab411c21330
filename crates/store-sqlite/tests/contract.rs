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
        // The database file and its write-ahead log: everything SQLite keeps on disk.
        let mut bytes = std::fs::read(self.store.path()).unwrap();
        let wal = self.store.path().with_extension("db-wal");
        if let Ok(w) = std::fs::read(wal) {
            bytes.extend(w);
        }
        bytes
    }

    async fn raw_audit_tamper(&self, log: LogId, tamper: AuditTamper) {
        let c = self.raw();
        // Someone with the file can drop the append-only guards first.
        c.execute_batch(
            "DROP TRIGGER IF EXISTS audit_entries_append_only;
             DROP TRIGGER IF EXISTS audit_checkpoints_append_only;",
        )
        .unwrap();
        let id = log.to_bytes();
        let set = |seq: u64, body: &[u8], leaf: &[u8]| {
            let n = c
                .execute(
                    "UPDATE audit_entries SET body = ?3, leaf = ?4 WHERE log = ?1 AND seq = ?2",
                    params![id.as_slice(), seq as i64, body, leaf],
                )
                .unwrap();
            assert_eq!(n, 1);
        };
        match tamper {
            AuditTamper::FlipBodyByte { seq } => {
                let (mut body, leaf) = self.audit_row(&c, &id, seq);
                body[0] ^= 1;
                set(seq, &body, &leaf);
            }
            AuditTamper::Delete { seq } => {
                let n = c
                    .execute(
                        "DELETE FROM audit_entries WHERE log = ?1 AND seq = ?2",
                        params![id.as_slice(), seq as i64],
                    )
                    .unwrap();
                assert_eq!(n, 1);
            }
            AuditTamper::Swap { a, b } => {
                let (ba, la) = self.audit_row(&c, &id, a);
                let (bb, lb) = self.audit_row(&c, &id, b);
                set(a, &bb, &lb);
                set(b, &ba, &la);
            }
            AuditTamper::TruncateFrom { seq } => {
                let n = c
                    .execute(
                        "DELETE FROM audit_entries WHERE log = ?1 AND seq >= ?2",
                        params![id.as_slice(), seq as i64],
                    )
                    .unwrap();
                assert!(n > 0);
            }
            AuditTamper::FlipSignature { size } => {
                let mut sig: Vec<u8> = c
                    .query_row(
                        "SELECT signature FROM audit_checkpoints WHERE log = ?1 AND size = ?2",
                        params![id.as_slice(), size as i64],
                        |r| r.get(0),
                    )
                    .unwrap();
                sig[0] ^= 1;
                let n = c
                    .execute(
                        "UPDATE audit_checkpoints SET signature = ?3 WHERE log = ?1 AND size = ?2",
                        params![id.as_slice(), size as i64, sig],
                    )
                    .unwrap();
                assert_eq!(n, 1);
            }
        }
    }
}

impl Sqlite {
    fn audit_row(&self, c: &Connection, log: &[u8], seq: u64) -> (Vec<u8>, Vec<u8>) {
        c.query_row(
            "SELECT body, leaf FROM audit_entries WHERE log = ?1 AND seq = ?2",
            params![log, seq as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    }
}

bulkhead_store::contract_suite!(Sqlite);
