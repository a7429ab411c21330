//! Test support shared by the PostgreSQL test crates: whether tests run at all and a fresh
//! database per test (both from `bulkhead_store_postgres::testing`, shared with the other
//! crates' tests), throwaway roles, a delaying proxy, and the contract [`Harness`].
#![allow(dead_code, reason = "each test crate uses a part of this module")]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bulkhead_audit::LogId;
use bulkhead_core::{CollectionName, RecordId, TenantId};
use bulkhead_store::contract::{AuditTamper, Harness};
use bulkhead_store::port::{RecordBackend, Registry};
use bulkhead_store_postgres::PostgresStore;
use futures::StreamExt;
use tokio_postgres::NoTls;

pub use bulkhead_store_postgres::testing::{URL_VAR, rewrite_url, test_url};

/// The TCP address of the server `url` names, if it names one.
pub fn server_addr(url: &str) -> Option<String> {
    let cfg: tokio_postgres::Config = url.parse().ok()?;
    let host = match cfg.get_hosts().first()? {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        #[allow(unreachable_patterns, reason = "unix sockets exist on unix only")]
        _ => return None,
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    Some(format!("{host}:{port}"))
}

/// A TCP proxy to `upstream` that delays every chunk, each way, by `delay` (a delay line:
/// chunks are not serialized behind each other's delay). A round trip through it costs
/// `2 * delay`, which makes round trips countable with a clock.
pub async fn delay_proxy(upstream: String, delay: Duration) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                // No Nagle: it would hold back small writes for the peer's delayed ACK, which
                // is latency the proxy did not mean to add.
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::join!(delay_line(cr, sw, delay), delay_line(sr, cw, delay));
            });
        }
    });
    port
}

async fn delay_line(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0; 64 * 1024];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0
                || tx
                    .send((tokio::time::Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
            {
                break;
            }
        }
    };
    let writer = async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

/// A client on `url`, its connection driven on the current runtime.
pub async fn client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test database: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// Runs `sql` on the admin URL from a thread of its own: usable from `Drop`, inside or
/// outside a runtime.
fn admin_blocking(admin_url: &str, sql: String) {
    let admin_url = admin_url.to_owned();
    let statement = sql.clone();
    let done = std::thread::spawn(move || -> Result<(), String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let (c, connection) = tokio_postgres::connect(&admin_url, NoTls)
                .await
                .map_err(|e| e.to_string())?;
            let driver = tokio::spawn(connection);
            let out = c.batch_execute(&statement).await.map_err(|e| e.to_string());
            drop(c);
            let _ = driver.await;
            out
        })
    })
    .join();
    match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("test cleanup failed ({sql}): {e}"),
        Err(_) => eprintln!("test cleanup panicked ({sql})"),
    }
}

/// A database of its own for one test, dropped with it: [`testing::TestDb`] with its names
/// as fields, for brevity in the tests.
///
/// [`testing::TestDb`]: bulkhead_store_postgres::testing::TestDb
pub struct TestDb {
    pub admin_url: String,
    pub name: String,
    /// The test database, as the admin (a superuser).
    pub url: String,
    /// Drops the database.
    _db: bulkhead_store_postgres::testing::TestDb,
}

impl TestDb {
    fn wrap(db: bulkhead_store_postgres::testing::TestDb) -> Self {
        Self {
            admin_url: db.admin_url().to_owned(),
            name: db.name().to_owned(),
            url: db.url().to_owned(),
            _db: db,
        }
    }

    /// An empty database, not migrated.
    pub async fn empty(admin_url: &str) -> Self {
        Self::wrap(
            bulkhead_store_postgres::testing::TestDb::empty(admin_url)
                .await
                .unwrap(),
        )
    }

    /// A database with Bulkhead's schema.
    pub async fn migrated(admin_url: &str) -> Self {
        Self::wrap(
            bulkhead_store_postgres::testing::TestDb::create(admin_url)
                .await
                .unwrap(),
        )
    }

    /// The test database's URL as `user`.
    pub fn url_as(&self, user: &TestRole) -> String {
        rewrite_url(
            &self.admin_url,
            &self.name,
            Some((&user.name, &user.password)),
            None,
        )
    }
}

/// A throwaway LOGIN role (roles are cluster-wide), dropped with it. Drop it after every
/// database it has privileges in: declare it before them.
pub struct TestRole {
    admin_url: String,
    pub name: String,
    pub password: String,
}

impl TestRole {
    /// `CREATE ROLE <name> LOGIN PASSWORD … <attributes>`.
    pub async fn create(admin_url: &str, kind: &str, attributes: &str) -> Self {
        let name = format!("bulkhead_test_{kind}_{}", uuid::Uuid::new_v4().simple());
        let password = uuid::Uuid::new_v4().simple().to_string();
        client(admin_url)
            .await
            .batch_execute(&format!(
                "CREATE ROLE {name} LOGIN PASSWORD '{password}' {attributes}"
            ))
            .await
            .unwrap();
        Self {
            admin_url: admin_url.to_owned(),
            name,
            password,
        }
    }
}

impl Drop for TestRole {
    fn drop(&mut self) {
        admin_blocking(
            &self.admin_url,
            format!("DROP ROLE IF EXISTS {}", self.name),
        );
    }
}

/// A migrated database and a role made after it (so that `bulkhead_app` exists to be granted),
/// dropped database first (so that nothing in it still depends on the role).
pub struct RoleDb {
    pub db: TestDb,
    pub role: TestRole,
}

impl RoleDb {
    pub async fn create(admin_url: &str, kind: &str, attributes: &str) -> Self {
        let db = TestDb::migrated(admin_url).await;
        let role = TestRole::create(admin_url, kind, attributes).await;
        Self { db, role }
    }
}

/// The contract harness: a fresh, migrated database per test, and a store with `POOL`
/// connections running as `bulkhead_app`; with `DELAY_MS`, through a [`delay_proxy`] that
/// adds that much latency each way.
pub struct Pg<const POOL: usize, const DELAY_MS: u64 = 0> {
    pub store: PostgresStore,
    /// The test database as a superuser, for what must bypass Bulkhead (and RLS).
    pub admin: tokio_postgres::Client,
    /// Last, so it is dropped last.
    pub db: TestDb,
}

/// The harness the contract suite runs with.
pub type Postgres = Pg<4>;

#[async_trait]
impl<const POOL: usize, const DELAY_MS: u64> Harness for Pg<POOL, DELAY_MS> {
    async fn fresh() -> Self {
        let Some(admin_url) = test_url() else {
            panic!("{URL_VAR} was set when these tests were built, but is not set now");
        };
        let db = TestDb::migrated(&admin_url).await;
        let store_url = if DELAY_MS == 0 {
            db.url.clone()
        } else {
            let upstream = server_addr(&admin_url)
                .unwrap_or_else(|| panic!("{URL_VAR} must name a TCP server for this test"));
            let port = delay_proxy(upstream, Duration::from_millis(DELAY_MS)).await;
            rewrite_url(&admin_url, &db.name, None, Some(("127.0.0.1", port)))
        };
        let store = PostgresStore::connect(&store_url, POOL).await.unwrap();
        let admin = client(&db.url).await;
        Self { store, admin, db }
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
        let row = self
            .admin
            .query_one(
                "SELECT data FROM records WHERE tenant_id = $1 AND collection = $2 AND id = $3",
                &[&from.0.as_uuid(), &from.1.as_str(), &from.2.as_uuid()],
            )
            .await
            .unwrap();
        let data: Vec<u8> = row.get(0);
        let n = self
            .admin
            .execute(
                "UPDATE records SET data = $4 WHERE tenant_id = $1 AND collection = $2 AND id = $3",
                &[&to.0.as_uuid(), &to.1.as_str(), &to.2.as_uuid(), &data],
            )
            .await
            .unwrap();
        assert_eq!(n, 1);
    }

    async fn raw_move_record(&self, rec: (TenantId, &CollectionName, RecordId), to: TenantId) {
        let n = self
            .admin
            .execute(
                "UPDATE records SET tenant_id = $4
                  WHERE tenant_id = $1 AND collection = $2 AND id = $3",
                &[
                    &rec.0.as_uuid(),
                    &rec.1.as_str(),
                    &rec.2.as_uuid(),
                    &to.as_uuid(),
                ],
            )
            .await
            .unwrap();
        assert_eq!(n, 1);
    }

    async fn raw_dump(&self) -> Vec<u8> {
        // Every table, every column, as PostgreSQL's binary COPY format: the stored bytes.
        let tables: Vec<String> = self
            .admin
            .query(
                "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema()
                  ORDER BY tablename",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(tables.iter().any(|t| t == "records"), "{tables:?}");
        let mut bytes = Vec::new();
        for t in tables {
            let stream = self
                .admin
                .copy_out(&format!(
                    "COPY (SELECT * FROM {t}) TO STDOUT (FORMAT binary)"
                ))
                .await
                .unwrap();
            let mut stream = std::pin::pin!(stream);
            while let Some(chunk) = stream.next().await {
                bytes.extend_from_slice(&chunk.unwrap());
            }
        }
        bytes
    }

    async fn raw_audit_tamper(&self, log: LogId, tamper: AuditTamper) {
        // As the superuser: no RLS, no grants in the way.
        let (entries, checkpoints) = match log {
            LogId::Operator => ("audit_operator_entries", "audit_operator_checkpoints"),
            LogId::Tenant(_) => ("audit_entries", "audit_checkpoints"),
        };
        let id = uuid::Uuid::from_bytes(log.to_bytes());
        let row = |seq: u64| async move {
            let r = self
                .admin
                .query_one(
                    &format!("SELECT body, leaf FROM {entries} WHERE tenant_id = $1 AND seq = $2"),
                    &[&id, &(seq as i64)],
                )
                .await
                .unwrap();
            (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1))
        };
        let set = |seq: u64, body: Vec<u8>, leaf: Vec<u8>| async move {
            let n = self
                .admin
                .execute(
                    &format!(
                        "UPDATE {entries} SET body = $3, leaf = $4 WHERE tenant_id = $1 AND seq = $2"
                    ),
                    &[&id, &(seq as i64), &body, &leaf],
                )
                .await
                .unwrap();
            assert_eq!(n, 1);
        };
        match tamper {
            AuditTamper::FlipBodyByte { seq } => {
                let (mut body, leaf) = row(seq).await;
                body[0] ^= 1;
                set(seq, body, leaf).await;
            }
            // Entries are rows: a deleted one leaves a hole either way.
            AuditTamper::Delete { seq } | AuditTamper::Hole { seq } => {
                let n = self
                    .admin
                    .execute(
                        &format!("DELETE FROM {entries} WHERE tenant_id = $1 AND seq = $2"),
                        &[&id, &(seq as i64)],
                    )
                    .await
                    .unwrap();
                assert_eq!(n, 1);
            }
            AuditTamper::Swap { a, b } => {
                let (ba, la) = row(a).await;
                let (bb, lb) = row(b).await;
                set(a, bb, lb).await;
                set(b, ba, la).await;
            }
            AuditTamper::TruncateFrom { seq } => {
                let n = self
                    .admin
                    .execute(
                        &format!("DELETE FROM {entries} WHERE tenant_id = $1 AND seq >= $2"),
                        &[&id, &(seq as i64)],
                    )
                    .await
                    .unwrap();
                assert!(n > 0);
            }
            // Rows are stored one per entry, as they are: there is no order of blocks to
            // change either.
            AuditTamper::Rewrite | AuditTamper::RewriteBackwards => {}
            AuditTamper::FlipSignature { .. } | AuditTamper::FlipBatchPath { .. } => {
                let Some((size, column, byte)) = tamper.checkpoint_change() else {
                    return;
                };
                let r = self
                    .admin
                    .query_one(
                        &format!(
                            "SELECT {column} FROM {checkpoints} WHERE tenant_id = $1 AND size = $2"
                        ),
                        &[&id, &(size as i64)],
                    )
                    .await
                    .unwrap();
                let mut value: Vec<u8> = r.get(0);
                value[byte] ^= 1;
                let n = self
                    .admin
                    .execute(
                        &format!(
                            "UPDATE {checkpoints} SET {column} = $3 WHERE tenant_id = $1 AND size = $2"
                        ),
                        &[&id, &(size as i64), &value],
                    )
                    .await
                    .unwrap();
                assert_eq!(n, 1);
            }
        }
    }
}
