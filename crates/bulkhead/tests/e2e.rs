//! The `bulkhead` binary end to end: the README flow, JSON logs, graceful shutdown, and no
//! acknowledged write lost when the process is killed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");

struct Server {
    child: Child,
    addr: String,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `bulkhead serve` on a free port with JSON logs; waits until it listens.
    fn start(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--data-dir",
        ])
        .arg(data_dir)
        .env_remove("BULKHEAD_ADMIN_TOKEN")
        .env_remove("BULKHEAD_MASTER_KEY")
        .env("RUST_LOG", "info,bulkhead::access=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let l = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["message"] == "bulkhead is listening"
                {
                    let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_owned());
                }
                l.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => panic!("server did not start: {:?}", logs.lock().unwrap()),
        };
        Server { child, addr, logs }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    fn wait(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                let logs = self.logs.lock().unwrap().clone();
                return (s, logs);
            }
            assert!(Instant::now() < deadline, "server did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

impl Http {
    fn new(addr: &str) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: format!("http://{addr}"),
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {token}"));
        if body.is_some() {
            b = b.header("content-type", "application/json");
        }
        let raw = body
            .map(|v| serde_json::to_vec(&v).unwrap())
            .unwrap_or_default();
        let resp = self
            .client
            .request(b.body(Full::new(Bytes::from(raw))).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

/// Runs the CLI against a server; returns stdout.
fn cli(addr: &str, admin: &str, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .env("BULKHEAD_URL", format!("http://{addr}"))
        .env("BULKHEAD_ADMIN_TOKEN", admin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_flow_logs_and_graceful_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let admin = std::fs::read_to_string(dir.path().join("admin-token"))
        .unwrap()
        .trim()
        .to_owned();
    let http = Http::new(&server.addr);

    // The CLI creates two tenants and mints a token for each.
    let a: Value = serde_json::from_str(&cli(
        &server.addr,
        &admin,
        &["tenants", "create", "acme", "--json"],
    ))
    .unwrap();
    let b: Value = serde_json::from_str(&cli(
        &server.addr,
        &admin,
        &["tenants", "create", "globex", "--json"],
    ))
    .unwrap();
    let (a, b) = (
        a["id"].as_str().unwrap().to_owned(),
        b["id"].as_str().unwrap().to_owned(),
    );
    let ta = cli(
        &server.addr,
        &admin,
        &[
            "tokens",
            "mint",
            "--tenant",
            &a,
            "--subject",
            "alice",
            "--role",
            "admin",
        ],
    )
    .trim()
    .to_owned();
    let tb = cli(
        &server.addr,
        &admin,
        &[
            "tokens",
            "mint",
            "--tenant",
            &b,
            "--subject",
            "bob",
            "--role",
            "admin",
        ],
    )
    .trim()
    .to_owned();
    let listed = cli(&server.addr, &admin, &["tenants", "list"]);
    assert!(
        listed.contains("acme") && listed.contains("globex"),
        "{listed}"
    );

    let schema = json!({"schema": {"type": "object", "properties": {"title": {"type": "string"}}}, "indexes": ["title"]});
    assert_eq!(
        http.call("PUT", "/v1/collections/notes", &ta, Some(schema.clone()))
            .await
            .0,
        201
    );
    assert_eq!(
        http.call("PUT", "/v1/collections/notes", &tb, Some(schema))
            .await
            .0,
        201
    );
    let planted = "planted-record-content-91c2";
    let (s, rec) = http
        .call(
            "POST",
            "/v1/collections/notes/records",
            &ta,
            Some(json!({"data": {"title": planted}})),
        )
        .await;
    assert_eq!(s, 201);
    let path = format!(
        "/v1/collections/notes/records/{}",
        rec["id"].as_str().unwrap()
    );
    assert_eq!(http.call("GET", &path, &ta, None).await.0, 200);
    assert_eq!(http.call("GET", &path, &tb, None).await.0, 404);

    server.signal("-TERM");
    let (status, logs) = server.wait();
    assert!(status.success(), "graceful shutdown exits 0: {status:?}");
    let all = logs.join("\n");
    assert!(
        !all.contains(&ta) && !all.contains(&tb),
        "a token was logged"
    );
    assert!(!all.contains(&admin), "the admin token was logged");
    assert!(!all.contains(planted), "record content was logged");
    // Every line is JSON; request lines carry the request id and the tenant id.
    let lines: Vec<Value> = logs
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let tenant_lines: Vec<&Value> = lines
        .iter()
        .filter(|l| l["span"]["route"] == "/v1/collections/{name}/records/{id}")
        .collect();
    assert!(!tenant_lines.is_empty(), "{all}");
    for l in tenant_lines {
        assert!(
            l["span"]["request_id"]
                .as_str()
                .is_some_and(|s| s.len() == 36),
            "{l}"
        );
        let tid = l["span"]["tenant_id"].as_str().unwrap();
        assert!(tid == a || tid == b, "{l}");
    }
    assert!(lines.iter().any(|l| l["message"] == "stopped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_write_is_lost_when_killed() {
    let dir = tempfile::tempdir().unwrap();
    let admin = "e2e-admin-token-0123456789abcdef";
    let env = [("BULKHEAD_ADMIN_TOKEN", admin)];
    let server = Server::start(dir.path(), &env);
    let http = Http::new(&server.addr);
    let (_, t) = http
        .call(
            "POST",
            "/v1/tenants",
            admin,
            Some(json!({"name": "durable"})),
        )
        .await;
    let tid = t["id"].as_str().unwrap().to_owned();
    let (_, tok) = http
        .call(
            "POST",
            &format!("/v1/tenants/{tid}/tokens"),
            admin,
            Some(json!({"subject": "w", "roles": ["admin"]})),
        )
        .await;
    let tok = tok["token"].as_str().unwrap().to_owned();
    http.call(
        "PUT",
        "/v1/collections/log",
        &tok,
        Some(json!({"schema": {"type": "object"}})),
    )
    .await;
    // Concurrent writers; every id the server acknowledged is remembered.
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (acked, tok, base) = (acked.clone(), tok.clone(), server.addr.clone());
        tasks.push(tokio::spawn(async move {
            let http = Http::new(&base);
            for i in 0..40 {
                let (s, r) = http
                    .call(
                        "POST",
                        "/v1/collections/log/records",
                        &tok,
                        Some(json!({"data": {"w": w, "i": i}})),
                    )
                    .await;
                if s == 201 {
                    acked
                        .lock()
                        .unwrap()
                        .push(r["id"].as_str().unwrap().to_owned());
                }
            }
        }));
    }
    // Kill -9 while the writers are running.
    tokio::time::sleep(Duration::from_millis(150)).await;
    server.signal("-KILL");
    for t in tasks {
        let _ = t.await;
    }
    let _ = server.wait();
    let acked = acked.lock().unwrap().clone();
    assert!(
        !acked.is_empty(),
        "some writes were acknowledged before the kill"
    );
    let server = Server::start(dir.path(), &env);
    let http = Http::new(&server.addr);
    for id in &acked {
        let (s, _) = http
            .call(
                "GET",
                &format!("/v1/collections/log/records/{id}"),
                &tok,
                None,
            )
            .await;
        assert_eq!(s, 200, "acknowledged write {id} lost");
    }
    server.signal("-TERM");
    server.wait();
}

#[test]
fn wrong_master_key_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    server.signal("-TERM");
    server.wait();
    let other = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("BULKHEAD_MASTER_KEY", other)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("master key does not match"), "{err}");
    // Positive twin: the right key (from the data dir) starts fine.
    let server = Server::start(dir.path(), &[]);
    server.signal("-TERM");
    assert!(server.wait().0.success());
}

#[test]
fn help_is_available_everywhere() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["tenants", "--help"],
        vec!["tenants", "create", "--help"],
        vec!["tokens", "mint", "--help"],
        vec!["bench", "--help"],
    ] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(!out.stdout.is_empty());
    }
}
