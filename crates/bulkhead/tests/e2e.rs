//! The `bulkhead` binary end to end: the README flow, JSON logs, graceful shutdown, and no
//! acknowledged write lost when the process is killed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

mod common;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{BIN, Http, Server};
use serde_json::{Value, json};

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
    // The access log is on, so request lines can be checked.
    let server = Server::start(dir.path(), &[("RUST_LOG", "info,bulkhead::access=debug")]);
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
        http.call(
            "PUT",
            "/v1/collections/notes",
            &ta,
            Some(schema.clone()),
            &[]
        )
        .await
        .status,
        201
    );
    assert_eq!(
        http.call("PUT", "/v1/collections/notes", &tb, Some(schema), &[])
            .await
            .status,
        201
    );
    let planted = "planted-record-content-91c2";
    let created = http
        .post(
            "/v1/collections/notes/records",
            &ta,
            json!({"data": {"title": planted}}),
        )
        .await;
    assert_eq!(created.status, 201);
    let rec = created.body;
    let path = format!(
        "/v1/collections/notes/records/{}",
        rec["id"].as_str().unwrap()
    );
    assert_eq!(http.get(&path, &ta).await.status, 200);
    assert_eq!(http.get(&path, &tb).await.status, 404);

    let (status, logs) = server.stop();
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
    let t = http
        .post("/v1/tenants", admin, json!({"name": "durable"}))
        .await
        .body;
    let tid = t["id"].as_str().unwrap().to_owned();
    let tok = http
        .post(
            &format!("/v1/tenants/{tid}/tokens"),
            admin,
            json!({"subject": "w", "roles": ["admin"]}),
        )
        .await
        .body;
    let tok = tok["token"].as_str().unwrap().to_owned();
    let r = http
        .call(
            "PUT",
            "/v1/collections/log",
            &tok,
            Some(json!({"schema": {"type": "object"}})),
            &[],
        )
        .await;
    assert_eq!(r.status, 201);
    // Concurrent writers; every id the server acknowledged is remembered.
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (acked, tok, base) = (acked.clone(), tok.clone(), server.addr.clone());
        tasks.push(tokio::spawn(async move {
            let http = Http::new(&base);
            for i in 0..40 {
                let r = http
                    .post(
                        "/v1/collections/log/records",
                        &tok,
                        json!({"data": {"w": w, "i": i}}),
                    )
                    .await;
                if r.status == 201 {
                    acked
                        .lock()
                        .unwrap()
                        .push(r.body["id"].as_str().unwrap().to_owned());
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
        let r = http
            .get(&format!("/v1/collections/log/records/{id}"), &tok)
            .await;
        assert_eq!(r.status, 200, "acknowledged write {id} lost");
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
        vec!["audit", "--help"],
        vec!["audit", "verify", "--help"],
        vec!["audit", "verify-proof", "--help"],
    ] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(!out.stdout.is_empty());
    }
}
