//! The storage contract, run against the SQLite adapter.
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::sync::Arc;

use async_trait::async_trait;
use bulkhead_core::{CollectionName, RecordId, TenantId};
use bulkhead_store::contract::Harness;
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
}

bulkhead_store::contract_suite!(Sqlite);
