//! The audit entry of an acknowledged read or write survives a killed server (embedded
//! storage), though it was not placed in its log yet.
//!
//! With `audit.read_sync = "window"` (the default), a read is answered once its entry is
//! written to the audit journal, before the journal is fsync'd; a write's entry commits with
//! the write (in `audit_pending`). Both are placed in their logs later. The fault model is a
//! killed process: `kill -9` right after the requests were answered, restart on the same data
//! directory, and every acknowledged request has its entry. The fsync window and the checkpoint
//! rounds are set long here (10 s, 1 h), so nothing but the append itself (the journal, or
//! `audit_pending`) is sure to have saved the entries: a placement round (every few seconds)
//! may or may not have run before the kill.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

mod common;

use std::collections::BTreeSet;

use common::{Http, Server};

const ADMIN: &str = "bh_admin_audit_durability_0123456789";

/// Every entry of the caller's log with `action`, as request ids.
async fn request_ids(http: &Http, token: &str, action: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/audit?action={action}&cursor={c}"),
            None => format!("/v1/audit?action={action}"),
        };
        let page = http.get(&path, token).await;
        assert_eq!(page.status, 200, "{:?}", page.body);
        for item in page.body["items"].as_array().unwrap() {
            out.insert(item["request_id"].as_str().unwrap().to_owned());
        }
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

async fn reads_survive_kill(read_sync: &str) {
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("BULKHEAD_ADMIN_TOKEN", ADMIN),
        ("BULKHEAD_AUDIT__READ_SYNC", read_sync),
        ("BULKHEAD_AUDIT__READ_SYNC_MS", "10000"),
        ("BULKHEAD_AUDIT__CHECKPOINT_INTERVAL_SECONDS", "3600"),
    ];
    let server = Server::start(dir.path(), &env);
    let http = Http::new(&server.addr);
    let (_tenant, token) = http.tenant_and_token(ADMIN, "acme").await;
    http.define_notes(&token).await;
    let id = http.note(&token, "durable").await;
    // Acknowledged reads, each with its own request id, concurrently (so they share groups).
    let mut acknowledged = BTreeSet::new();
    for round in 0..10 {
        let reads = (0..20).map(|i| {
            let (http, token, id) = (&http, &token, &id);
            async move {
                let rid = format!("read-{read_sync}-{round}-{i}");
                let r = http
                    .call(
                        "GET",
                        &format!("/v1/collections/notes/records/{id}"),
                        token,
                        None,
                        &[("x-request-id", &rid)],
                    )
                    .await;
                (r.status, rid)
            }
        });
        for (status, rid) in futures::future::join_all(reads).await {
            assert_eq!(status, 200);
            acknowledged.insert(rid);
        }
    }
    // Acknowledged writes, each with its own request id.
    let mut written = BTreeSet::new();
    for i in 0..20 {
        let rid = format!("write-{read_sync}-{i}");
        let r = http
            .call(
                "POST",
                "/v1/collections/notes/records",
                &token,
                Some(serde_json::json!({"data": {"title": format!("w{i}")}})),
                &[("x-request-id", &rid)],
            )
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        written.insert(rid);
    }
    server.signal("-KILL");
    let (status, _) = server.wait();
    assert!(!status.success(), "the server was killed");

    let server = Server::start(dir.path(), &env);
    let http = Http::new(&server.addr);
    let recorded = request_ids(&http, &token, "record.read").await;
    let missing: Vec<&String> = acknowledged.difference(&recorded).collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged reads lost their entry: {missing:?}",
        missing.len(),
        acknowledged.len()
    );
    // The positive twin of the check: reads that were never made have no entry.
    assert!(!recorded.contains("read-never-made"));
    assert_eq!(recorded.len(), acknowledged.len(), "{recorded:?}");
    let created = request_ids(&http, &token, "record.create").await;
    let missing: Vec<&String> = written.difference(&created).collect();
    assert!(missing.is_empty(), "writes lost their entry: {missing:?}");
    server.stop();
}

#[tokio::test]
async fn acknowledged_reads_keep_their_entries_after_kill_9() {
    reads_survive_kill("window").await;
}

#[tokio::test]
async fn acknowledged_reads_keep_their_entries_after_kill_9_strict() {
    reads_survive_kill("strict").await;
}
