//! Test support for the binary's integration tests: real `bulkhead serve` processes and a
//! small HTTP client for them.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test support"
)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_bulkhead");

/// How long a change may take to reach another instance: the cache TTL the instances run with
/// is 1 s; the rest is slack for a busy machine.
pub const PROPAGATION: Duration = Duration::from_secs(5);

/// A `bulkhead serve` process with its stderr (JSON logs) collected.
pub struct Server {
    child: Child,
    pub addr: String,
    logs: Arc<Mutex<Vec<String>>>,
}

/// `bulkhead serve` on a free port with JSON logs, `env` on top of an environment cleared of
/// every inherited `BULKHEAD_*` variable.
pub fn serve_command(data_dir: &Path, env: &[(&str, &str)]) -> Command {
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
    .env("RUST_LOG", "info")
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("BULKHEAD_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

impl Server {
    /// Starts `bulkhead serve`; waits until it listens.
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> Server {
        let mut child = serve_command(data_dir, env).spawn().unwrap();
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
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start: {:?}", logs.lock().unwrap());
            }
        };
        Server { child, addr, logs }
    }

    /// Sends a signal (`-TERM`, `-KILL`, …) to the process.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    /// Waits for the process to exit (after a signal); returns its status and its log lines.
    pub fn wait(mut self) -> (ExitStatus, Vec<String>) {
        let status = wait_with_deadline(&mut self.child, Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(100));
        let logs = self.logs.lock().unwrap().clone();
        (status, logs)
    }

    /// SIGTERM, then waits for the process to exit.
    pub fn stop(mut self) -> (ExitStatus, Vec<String>) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let status = wait_with_deadline(&mut self.child, Duration::from_secs(20));
        // Let the reader thread take the last lines.
        std::thread::sleep(Duration::from_millis(100));
        let logs = self.logs.lock().unwrap().clone();
        (status, logs)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Still running only if the test failed before `stop`: do not leave it behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `child` to exit; kills it and fails the test after `deadline`.
pub fn wait_with_deadline(child: &mut Child, deadline: Duration) -> ExitStatus {
    let until = Instant::now() + deadline;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() >= until {
            let _ = child.kill();
            panic!("the process did not exit within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A small HTTP client for one instance.
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

/// A response: status, `ETag`, body.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub etag: Option<String>,
    pub body: Value,
}

impl Http {
    pub fn new(addr: &str) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: format!("http://{addr}"),
        }
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut b = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {token}"));
        if body.is_some() {
            b = b.header("content-type", "application/json");
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
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
        let etag = resp
            .headers()
            .get("etag")
            .map(|v| v.to_str().unwrap().to_owned());
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Resp {
            status,
            etag,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Resp {
        self.call("GET", path, token, None, &[]).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Resp {
        self.call("POST", path, token, Some(body), &[]).await
    }

    /// Onboards a tenant and mints an admin token for it, on this instance.
    pub async fn tenant_and_token(&self, admin: &str, name: &str) -> (String, String) {
        let r = self.post("/v1/tenants", admin, json!({"name": name})).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        let id = r.body["id"].as_str().unwrap().to_owned();
        let r = self
            .post(
                &format!("/v1/tenants/{id}/tokens"),
                admin,
                json!({"subject": "alice", "roles": ["admin"], "ttl_seconds": 600}),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        (id, r.body["token"].as_str().unwrap().to_owned())
    }

    /// Defines the `notes` collection (indexed on `title`) for the token's tenant.
    pub async fn define_notes(&self, token: &str) {
        let r = self
            .call(
                "PUT",
                "/v1/collections/notes",
                token,
                Some(json!({
                    "schema": {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]},
                    "indexes": ["title"]
                })),
                &[],
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
    }

    /// Creates a note; returns its id.
    pub async fn note(&self, token: &str, title: &str) -> String {
        let r = self
            .post(
                "/v1/collections/notes/records",
                token,
                json!({"data": {"title": title}}),
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        r.body["id"].as_str().unwrap().to_owned()
    }

    /// Sets a tenant's status through the operator API.
    pub async fn set_status(&self, admin: &str, tenant: &str, status: &str) {
        let r = self
            .call(
                "PATCH",
                &format!("/v1/tenants/{tenant}"),
                admin,
                Some(json!({"status": status})),
                &[],
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.body["status"], status);
    }

    /// Polls `GET path` until it answers `want`; returns how long that took, or fails after
    /// [`PROPAGATION`] with the last answer.
    pub async fn await_status(&self, path: &str, token: &str, want: u16) -> (Duration, Resp) {
        let start = Instant::now();
        loop {
            let r = self.get(path, token).await;
            if r.status == want {
                return (start.elapsed(), r);
            }
            assert!(
                start.elapsed() < PROPAGATION,
                "still {} instead of {want} after {PROPAGATION:?}: {:?}",
                r.status,
                r.body
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
