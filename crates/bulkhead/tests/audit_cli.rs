//! `bulkhead audit` end to end, on both storage backends: a real server records and
//! checkpoints; `verify-proof` checks the API's saved responses offline; `verify` recomputes
//! the stored logs and, after the storage is changed behind Bulkhead's back, exits non-zero
//! naming the first bad entry.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bulkhead_core::crypto::MasterKey;
use bulkhead_store_postgres::testing::{TestDb, test_url};
use common::{BIN, Http, Server};
use serde_json::Value;

const ADMIN: &str = "bh_admin_audit_cli_0123456789abcdef";

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("BULKHEAD_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Activity on a tenant, then waits for the checkpointer; returns the tenant id and token.
async fn activity(http: &Http) -> (String, String) {
    let (tenant, token) = http.tenant_and_token(ADMIN, "acme").await;
    http.define_notes(&token).await;
    for i in 0..4 {
        let id = http.note(&token, &format!("n{i}")).await;
        assert_eq!(
            http.get(&format!("/v1/collections/notes/records/{id}"), &token)
                .await
                .status,
            200
        );
    }
    // tenant.create, token.mint, collection.put, 4 × (create, read) = 11 entries.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let cp = http.get("/v1/audit/checkpoint", &token).await;
        if cp.status == 200 && cp.body["size"].as_u64().unwrap() >= 11 {
            break;
        }
        assert!(Instant::now() < deadline, "no checkpoint: {:?}", cp.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (tenant, token)
}

/// Saves the keys, a checkpoint and an inclusion proof, and checks them with `verify-proof`;
/// a changed byte in the proof is refused.
async fn proofs_verify_offline(http: &Http, tenant: &str, token: &str, dir: &Path) {
    let save = |name: &str, v: &Value| {
        let p = dir.join(name);
        std::fs::write(&p, serde_json::to_vec(v).unwrap()).unwrap();
        p.to_string_lossy().into_owned()
    };
    let keys = http.get("/v1/audit/keys", "").await;
    let cp = http.get("/v1/audit/checkpoint", token).await;
    let size = cp.body["size"].as_u64().unwrap();
    let incl = http
        .get(
            &format!("/v1/audit/proof/inclusion?seq=3&size={size}"),
            token,
        )
        .await;
    assert_eq!(incl.status, 200, "{:?}", incl.body);
    let (k, c, i) = (
        save("keys.json", &keys.body),
        save("cp.json", &cp.body),
        save("incl.json", &incl.body),
    );
    let ok = run(
        &[
            "audit",
            "verify-proof",
            "--keys",
            &k,
            "--log",
            tenant,
            &c,
            &i,
        ],
        &[],
    );
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(text(&ok).contains("entry 3 in"), "{}", text(&ok));
    // One changed byte in the entry: refused.
    let mut bad = incl.body.clone();
    let entry = bad["entry"].as_str().unwrap().to_owned();
    let flipped = if entry.starts_with('Q') { "R" } else { "Q" };
    bad["entry"] = Value::String(format!("{flipped}{}", &entry[1..]));
    let b = save("bad.json", &bad);
    let refused = run(&["audit", "verify-proof", "--keys", &k, &b], &[]);
    assert!(!refused.status.success(), "{}", text(&refused));
    // Another log's id: refused.
    let other = bulkhead_core::TenantId::generate().to_string();
    let refused = run(
        &["audit", "verify-proof", "--keys", &k, "--log", &other, &i],
        &[],
    );
    assert!(!refused.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_verify_and_tamper() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(
        &data,
        &[
            ("BULKHEAD_ADMIN_TOKEN", ADMIN),
            ("BULKHEAD_AUDIT__CHECKPOINT_INTERVAL_SECONDS", "1"),
        ],
    );
    let http = Http::new(&server.addr);
    let (tenant, token) = activity(&http).await;
    proofs_verify_offline(&http, &tenant, &token, dir.path()).await;
    let d = data.to_string_lossy().into_owned();
    // With the server running (and placing and signing every second): what it has placed
    // verifies, and the verifier leaves the server's files alone.
    for i in 0..3 {
        assert_eq!(
            http.get("/v1/collections/notes/records", &token)
                .await
                .status,
            200
        );
        let live = run(&["audit", "verify", "--all", "--data-dir", &d], &[]);
        assert!(live.status.success(), "run {i}: {}", text(&live));
    }
    let (status, _) = server.stop();
    assert!(status.success());

    // A torn record at the journal's end (a write a crash cut short): the verifier, which
    // opens the storage read-only, leaves it; opening the storage to serve drops it.
    let journal = std::fs::read_dir(data.join("audit-journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let len = std::fs::metadata(&journal).unwrap().len();
    {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&journal)
            .unwrap();
        f.write_all(&[0, 0, 0, 40, 1, 2]).unwrap();
    }
    let ro = run(&["audit", "verify", "--all", "--data-dir", &d], &[]);
    assert!(ro.status.success(), "{}", text(&ro));
    assert_eq!(std::fs::metadata(&journal).unwrap().len(), len + 6);
    drop(bulkhead_store_sqlite::SqliteStore::open(&data, 1).unwrap());
    assert_eq!(std::fs::metadata(&journal).unwrap().len(), len);

    let ok = run(
        &[
            "audit",
            "verify",
            "--all",
            "--data-dir",
            &d,
            "--json",
            "--bench",
        ],
        &[],
    );
    assert!(ok.status.success(), "{}", text(&ok));
    let report: Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert!(report["entries"].as_u64().unwrap() >= 11);
    assert!(report["raw_sha256_mb_per_s"].as_f64().unwrap() > 0.0);
    let one = run(
        &["audit", "verify", "--tenant", &tenant, "--data-dir", &d],
        &[],
    );
    assert!(one.status.success(), "{}", text(&one));

    // Someone with the file changes entry 2 of the tenant's log.
    let db = rusqlite::Connection::open(bulkhead_store_sqlite::audit_database_path(&data)).unwrap();
    let id = bulkhead_core::TenantId::parse(&tenant).unwrap();
    // Entry 2's body, in the block that holds it (format: crates/store-sqlite/src/audit.rs).
    let (rowid, first, mut bytes): (i64, i64, Vec<u8>) = db
        .query_row(
            "SELECT id, first, entries FROM audit_blocks WHERE log = ?1 AND first <= 2
             AND first + count > 2",
            [id.as_bytes().as_slice()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    let mut at = 0;
    for _ in first..2 {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += 4 + len + 32;
    }
    let original = bytes.clone();
    bytes[at + 4 + 3] ^= 0x10;
    db.execute_batch("DROP TRIGGER audit_blocks_append_only")
        .unwrap();
    let n = db
        .execute(
            "UPDATE audit_blocks SET entries = ?2 WHERE id = ?1",
            rusqlite::params![rowid, bytes],
        )
        .unwrap();
    assert_eq!(n, 1);
    drop(db);
    let bad = run(&["audit", "verify", "--all", "--data-dir", &d], &[]);
    assert!(!bad.status.success());
    let out = text(&bad);
    assert!(
        out.contains(&format!("log `{tenant}`")) && out.contains("entry 2"),
        "{out}"
    );

    // ... then breaks the block itself: entry 2's length now runs past the block's end. Both
    // `--all` and `--tenant` name entry 2 (not a storage error), and report the damage.
    bytes[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    let db = rusqlite::Connection::open(bulkhead_store_sqlite::audit_database_path(&data)).unwrap();
    db.execute(
        "UPDATE audit_blocks SET entries = ?2 WHERE id = ?1",
        rusqlite::params![rowid, bytes],
    )
    .unwrap();
    drop(db);
    for args in [
        vec!["audit", "verify", "--all", "--data-dir", &d],
        vec!["audit", "verify", "--tenant", &tenant, "--data-dir", &d],
    ] {
        let bad = run(&args, &[]);
        assert!(!bad.status.success());
        let out = text(&bad);
        assert!(
            out.contains(&format!("log `{tenant}`"))
                && out.contains("entry 2")
                && out.contains("damaged"),
            "{args:?}: {out}"
        );
    }

    // ... then restores the bytes and makes the block's row claim one entry more than it
    // holds: the entry after its last is named, as a block that does not hold what it says.
    let db = rusqlite::Connection::open(bulkhead_store_sqlite::audit_database_path(&data)).unwrap();
    let count: i64 = db
        .query_row(
            "UPDATE audit_blocks SET entries = ?2, count = count + 1 WHERE id = ?1
             RETURNING count - 1",
            rusqlite::params![rowid, original],
            |r| r.get(0),
        )
        .unwrap();
    drop(db);
    let missing = format!("entry {}", first + count);
    for args in [
        vec!["audit", "verify", "--all", "--data-dir", &d],
        vec!["audit", "verify", "--tenant", &tenant, "--data-dir", &d],
    ] {
        let bad = run(&args, &[]);
        assert!(!bad.status.success());
        let out = text(&bad);
        assert!(
            out.contains(&format!("log `{tenant}`"))
                && out.contains(&missing)
                && out.contains(&format!(
                    "its block says {} entries but holds {count}",
                    count + 1
                )),
            "{args:?}: {out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_verify_and_tamper() {
    let Some(admin_url) = test_url() else {
        return;
    };
    let db = TestDb::create(&admin_url).await.unwrap();
    let master = MasterKey::generate().to_base64url();
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("BULKHEAD_DATABASE_URL", db.url()),
        ("BULKHEAD_MASTER_KEY", master.as_str()),
        ("BULKHEAD_ADMIN_TOKEN", ADMIN),
        ("BULKHEAD_AUDIT__CHECKPOINT_INTERVAL_SECONDS", "1"),
    ];
    let server = Server::start(dir.path(), &env);
    let http = Http::new(&server.addr);
    let (tenant, token) = activity(&http).await;
    proofs_verify_offline(&http, &tenant, &token, dir.path()).await;
    // Verified while the server runs, with the public key alone.
    let keys = http.get("/v1/audit/keys", "").await;
    let public = keys.body["keys"][0]["public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let ok = run(
        &[
            "audit",
            "verify",
            "--all",
            "--database-url",
            db.url(),
            "--public-key",
            &public,
        ],
        &[],
    );
    assert!(ok.status.success(), "{}", text(&ok));
    let (status, _) = server.stop();
    assert!(status.success());

    // As the superuser, entry 5 of the tenant's log is deleted.
    let (c, conn) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let id = uuid::Uuid::parse_str(&tenant).unwrap();
    let n = c
        .execute(
            "DELETE FROM audit_entries WHERE tenant_id = $1 AND seq = 5",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let bad = run(
        &[
            "audit",
            "verify",
            "--tenant",
            &tenant,
            "--database-url",
            db.url(),
        ],
        &[("BULKHEAD_MASTER_KEY", master.as_str())],
    );
    assert!(!bad.status.success());
    assert!(text(&bad).contains("entry 5"), "{}", text(&bad));
}
