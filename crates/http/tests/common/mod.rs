//! A real Bulkhead server on `127.0.0.1:0` for HTTP-level tests, on either storage backend,
//! and a small client for it.
//!
//! Every test runs on both backends through [`both_backends!`]: the SQLite variant always, the
//! PostgreSQL one when `BULKHEAD_TEST_DATABASE_URL` names an admin URL (each test on a fresh
//! database of its own; see `bulkhead_store_postgres::testing::test_url` for the rule when it
//! is not set).
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test support"
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use bulkhead_core::crypto::MasterKey;
use bulkhead_core::token::{TokenSettings, Verifier};
use bulkhead_core::{TenantId, Timestamp};
use bulkhead_http::auth::OperatorCredential;
use bulkhead_http::{AppState, HttpConfig};
use bulkhead_store::port::{RecordBackend, Registry};
use bulkhead_store::{Store, StoreConfig};
use bulkhead_store_postgres::PostgresStore;
use bulkhead_store_postgres::testing::TestDb;
use bulkhead_store_sqlite::SqliteStore;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

pub const ADMIN: &str = "test-admin-token-0123456789";

/// Connections in the PostgreSQL pool of one test server.
const PG_POOL: usize = 8;

/// The storage a [`TestApp`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded database, in a temporary directory.
    Sqlite,
    /// A fresh PostgreSQL database (row-level security on, as `bulkhead_app`).
    Postgres,
}

/// Generates, for each named test function `async fn name(backend: Backend)`, the tests
/// `sqlite::name` and `postgres::name`. The PostgreSQL variant returns early, after printing
/// why, when no test database is configured (and fails under CI).
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::common::Backend::Sqlite).await;
                }
            )+
        }

        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    if bulkhead_store_postgres::testing::test_url().is_none() {
                        return;
                    }
                    super::$name($crate::common::Backend::Postgres).await;
                }
            )+
        }
    };
}
pub(crate) use both_backends;

/// Where a test server's data lives; dropped after the server's store.
enum Storage {
    Sqlite(tempfile::TempDir),
    Postgres(TestDb),
}

/// A running server with a clock the test controls.
pub struct TestApp {
    pub addr: SocketAddr,
    pub store: Arc<Store>,
    pub state: AppState,
    /// Seconds added to the real clock.
    pub clock_offset: Arc<AtomicI64>,
    pub backend: Backend,
    client: Client<HttpConnector, Full<Bytes>>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
    /// Last, so that the database outlives everything that uses it.
    _storage: Storage,
}

/// A response, decoded.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Value,
    pub raw: Bytes,
}

impl Resp {
    pub fn problem_type(&self) -> &str {
        self.body["type"].as_str().unwrap_or("")
    }
}

pub fn settings() -> TokenSettings {
    TokenSettings {
        issuer: "https://bulkhead.test".into(),
        audience: "bulkhead".into(),
        leeway_secs: 30,
        max_token_bytes: 8192,
        max_ttl_secs: 86_400,
    }
}

impl TestApp {
    /// Starts a server on `backend`. For [`Backend::Postgres`] the caller has checked that
    /// a test database is configured (as [`both_backends!`] does).
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, HttpConfig::default()).await
    }

    /// Starts a server on `backend` with the given HTTP settings.
    pub async fn spawn_with(backend: Backend, config: HttpConfig) -> Self {
        let (registry, records, storage): (Arc<dyn Registry>, Arc<dyn RecordBackend>, _) =
            match backend {
                Backend::Sqlite => {
                    let dir = tempfile::tempdir().unwrap();
                    let sqlite = SqliteStore::open(dir.path(), 4).unwrap();
                    (
                        Arc::new(sqlite.clone()),
                        Arc::new(sqlite),
                        Storage::Sqlite(dir),
                    )
                }
                Backend::Postgres => {
                    let admin_url = bulkhead_store_postgres::testing::test_url()
                        .expect("a PostgreSQL test database is configured");
                    let db = TestDb::create(&admin_url).await.unwrap();
                    let pg = PostgresStore::connect(db.url(), PG_POOL).await.unwrap();
                    (Arc::new(pg.clone()), Arc::new(pg), Storage::Postgres(db))
                }
            };
        let store = Arc::new(
            Store::open(
                registry,
                records,
                MasterKey::generate(),
                StoreConfig::default(),
            )
            .await
            .unwrap(),
        );
        let offset = Arc::new(AtomicI64::new(0));
        let o = offset.clone();
        let clock = Arc::new(move || {
            Timestamp::now_utc() + time::Duration::seconds(o.load(Ordering::SeqCst))
        });
        let state = AppState::with_clock(
            store.clone(),
            Verifier::new(settings()),
            OperatorCredential::from_hash(OperatorCredential::hash(ADMIN)),
            config,
            clock,
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = bulkhead_http::app(state.clone());
        tokio::spawn(async move {
            bulkhead_http::serve(listener, app, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        let client = Client::builder(TokioExecutor::new()).build_http();
        Self {
            addr,
            store,
            state,
            clock_offset: offset,
            backend,
            client,
            _shutdown: tx,
            _storage: storage,
        }
    }

    /// Sends a request; `body` as JSON when given. `headers` are extra headers.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let raw = body.map(|b| serde_json::to_vec(&b).unwrap());
        self.call_raw(method, path, token, raw, "application/json", headers)
            .await
    }

    pub async fn call_raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
        content_type: &str,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path));
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            b = b.header("content-type", content_type);
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .unwrap();
        let resp = self.client.request(req).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let raw = resp.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            body,
            raw,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Resp {
        self.call("GET", path, Some(token), None, &[]).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Resp {
        self.call("POST", path, Some(token), Some(body), &[]).await
    }

    /// Onboards a tenant through the operator API.
    pub async fn tenant(&self, name: &str) -> TenantId {
        let r = self
            .post("/v1/tenants", ADMIN, json!({ "name": name }))
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        TenantId::parse(r.body["id"].as_str().unwrap()).unwrap()
    }

    /// Mints a token through the operator API.
    pub async fn token(&self, tenant: TenantId, roles: &[&str]) -> String {
        self.token_for(tenant, "user-1", roles).await
    }

    /// Mints a token for `subject` through the operator API.
    pub async fn token_for(&self, tenant: TenantId, subject: &str, roles: &[&str]) -> String {
        let r = self
            .post(
                &format!("/v1/tenants/{tenant}/tokens"),
                ADMIN,
                json!({ "subject": subject, "roles": roles, "ttl_seconds": 600 }),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        r.body["token"].as_str().unwrap().to_owned()
    }

    /// A tenant with a `notes` collection (indexed on `title`) and an admin token.
    pub async fn tenant_with_notes(&self, name: &str) -> (TenantId, String) {
        let t = self.tenant(name).await;
        let tok = self.token(t, &["admin"]).await;
        let r = self
            .call(
                "PUT",
                "/v1/collections/notes",
                Some(&tok),
                Some(json!({
                    "schema": {"type": "object", "properties": {"title": {"type": "string"}, "body": {"type": "string"}, "n": {"type": "integer"}}, "required": ["title"]},
                    "indexes": ["title", "n"]
                })),
                &[],
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        (t, tok)
    }

    pub async fn note(&self, token: &str, title: &str) -> Value {
        let r = self
            .post(
                "/v1/collections/notes/records",
                token,
                json!({"data": {"title": title}}),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        r.body
    }
}
