//! Two `bulkhead serve` processes over one PostgreSQL database: what one instance writes the
//! other reads, optimistic concurrency holds across them, tenants stay apart across them, and a
//! suspension made on one reaches the other within the cache TTL. Also: a database that cannot
//! be reached at start stops the server with a clear message.
//!
//! The shared-database test needs `BULKHEAD_TEST_DATABASE_URL` (an admin URL, e.g.
//! `postgres://postgres@127.0.0.1:5432/postgres`); see
//! `bulkhead_store_postgres::testing::test_url` for what happens without it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::time::{Duration, Instant};

use bulkhead_core::crypto::MasterKey;
use bulkhead_store_postgres::testing::{TestDb, test_url};
use common::{Http, Resp, Server, serve_command, wait_with_deadline};
use serde_json::json;

fn note_path(id: &str) -> String {
    format!("/v1/collections/notes/records/{id}")
}

/// The ids of a list response's items.
fn ids(r: &Resp) -> BTreeSet<String> {
    r.body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {:?}", r.body))
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_database() {
    let Some(admin_url) = test_url() else {
        return;
    };
    let db = TestDb::create(&admin_url).await.unwrap();
    let master = MasterKey::generate().to_base64url();
    let admin = format!("bh_admin_two_instances_{}", uuid::Uuid::new_v4().simple());
    let env = [
        ("BULKHEAD_DATABASE_URL", db.url()),
        ("BULKHEAD_MASTER_KEY", master.as_str()),
        ("BULKHEAD_ADMIN_TOKEN", admin.as_str()),
        ("BULKHEAD_CACHE__TTL_SECONDS", "1"),
        ("BULKHEAD_STORAGE__POOL_SIZE", "4"),
    ];
    let (dir1, dir2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Started together: both run the (already applied) migrations at once.
    let (s1, s2) = std::thread::scope(|s| {
        let one = s.spawn(|| Server::start(dir1.path(), &env));
        let two = s.spawn(|| Server::start(dir2.path(), &env));
        (one.join().unwrap(), two.join().unwrap())
    });
    assert_ne!(s1.addr, s2.addr);
    let (one, two) = (Http::new(&s1.addr), Http::new(&s2.addr));

    // Tenant A, its token, its collection and its records: all through instance 1.
    let (a, ta) = one.tenant_and_token(&admin, "acme").await;
    one.define_notes(&ta).await;
    let alpha1 = one.note(&ta, "alpha").await;
    let beta = one.note(&ta, "beta").await;
    let alpha2 = one.note(&ta, "alpha").await;

    // Instance 2 reads them: each record, the whole list, and a filter on the indexed field.
    for (id, title) in [(&alpha1, "alpha"), (&beta, "beta"), (&alpha2, "alpha")] {
        let r = two.get(&note_path(id), &ta).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.body["data"]["title"], title);
        assert_eq!(r.body["version"], 1);
        assert_eq!(r.etag.as_deref(), Some("\"1\""));
    }
    let all = two.get("/v1/collections/notes/records", &ta).await;
    assert_eq!(all.status, 200, "{:?}", all.body);
    assert_eq!(
        ids(&all),
        [&alpha1, &beta, &alpha2].into_iter().cloned().collect()
    );
    let filtered = two
        .get("/v1/collections/notes/records?where.title=alpha", &ta)
        .await;
    assert_eq!(filtered.status, 200, "{:?}", filtered.body);
    assert_eq!(
        ids(&filtered),
        [&alpha1, &alpha2].into_iter().cloned().collect()
    );
    // The operator sees the tenant on instance 2 as well.
    let t = two.get(&format!("/v1/tenants/{a}"), &admin).await;
    assert_eq!((t.status, t.body["name"].as_str()), (200, Some("acme")));

    // An update through instance 2 (with If-Match) is the version instance 1 reads.
    let r = two
        .call(
            "PUT",
            &note_path(&alpha1),
            &ta,
            Some(json!({"data": {"title": "gamma"}})),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["version"], 2);
    let r = one.get(&note_path(&alpha1), &ta).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["data"]["title"], "gamma");
    assert_eq!(r.body["version"], 2);
    assert_eq!(r.etag.as_deref(), Some("\"2\""));
    // Optimistic concurrency holds across instances: the version 2 replaced is stale on 1.
    let stale = one
        .call(
            "PUT",
            &note_path(&alpha1),
            &ta,
            Some(json!({"data": {"title": "lost update"}})),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!(stale.status, 412, "{:?}", stale.body);
    // The index moved with the update, as seen from instance 1.
    let gamma = one
        .get("/v1/collections/notes/records?where.title=gamma", &ta)
        .await;
    assert_eq!(ids(&gamma), [alpha1.clone()].into_iter().collect());
    let alpha = one
        .get("/v1/collections/notes/records?where.title=alpha", &ta)
        .await;
    assert_eq!(ids(&alpha), [alpha2.clone()].into_iter().collect());

    // Tenant G, created (and its token minted) on instance 2.
    let (g, tg) = two.tenant_and_token(&admin, "globex").await;
    // Its token works on instance 1 (positive twin)...
    one.define_notes(&tg).await;
    let own = one.note(&tg, "alpha").await;
    let r = one.get(&note_path(&own), &tg).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // ...and sees nothing of A there: A's records are 404, exactly as a missing one, and
    // neither the list nor the filter shows them.
    for id in [&alpha1, &beta, &alpha2] {
        let foreign = one.get(&note_path(id), &tg).await;
        assert_eq!(foreign.status, 404, "{:?}", foreign.body);
        assert_eq!(
            foreign.body["type"], "urn:bulkhead:problem:not-found",
            "{:?}",
            foreign.body
        );
    }
    let r = one.get("/v1/collections/notes/records", &tg).await;
    assert_eq!(ids(&r), [own.clone()].into_iter().collect());
    let r = one
        .get("/v1/collections/notes/records?where.title=alpha", &tg)
        .await;
    assert_eq!(ids(&r), [own.clone()].into_iter().collect());
    // A cannot read G's record from either instance.
    assert_eq!(one.get(&note_path(&own), &ta).await.status, 404);
    assert_eq!(two.get(&note_path(&own), &ta).await.status, 404);
    // Both tenants are in the one registry.
    let listed = one.get("/v1/tenants", &admin).await;
    assert_eq!(
        ids(&listed),
        [a.clone(), g.clone()].into_iter().collect(),
        "{:?}",
        listed.body
    );

    // Suspension on instance 1 reaches instance 2 within the cache TTL. Instance 2 has A's
    // state cached (it has just served A).
    let path = "/v1/collections/notes/records";
    assert_eq!(two.get(path, &ta).await.status, 200);
    one.set_status(&admin, &a, "suspended").await;
    let r = one.get(path, &ta).await;
    assert_eq!(r.status, 403, "at once on the instance that suspended");
    let (took, r) = two.await_status(path, &ta, 403).await;
    assert_eq!(
        r.body["type"], "urn:bulkhead:problem:tenant-not-active",
        "{:?}",
        r.body
    );
    eprintln!("suspension reached instance 2 after {took:?}");
    assert_eq!(two.get(path, &tg).await.status, 200, "G is unaffected");
    // And resuming on instance 2 reaches instance 1 likewise.
    two.set_status(&admin, &a, "active").await;
    one.await_status(path, &ta, 200).await;

    // A key rotated on instance 1 verifies on instance 2 within the TTL, and the old key
    // keeps verifying on both.
    assert_eq!(two.get(path, &ta).await.status, 200);
    let r = one
        .post(&format!("/v1/tenants/{a}/keys"), &admin, json!({}))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = one
        .post(
            &format!("/v1/tenants/{a}/tokens"),
            &admin,
            json!({"subject": "bob", "roles": ["reader"], "ttl_seconds": 600}),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let ta_new = r.body["token"].as_str().unwrap().to_owned();
    assert_eq!(one.get(path, &ta_new).await.status, 200);
    let (took, _) = two.await_status(path, &ta_new, 200).await;
    eprintln!("a rotated key verified on instance 2 after {took:?}");
    assert_eq!(
        two.get(path, &ta).await.status,
        200,
        "the old key still verifies"
    );

    // Offboarding on instance 2 reaches instance 1 within the TTL; G stays.
    let r = two
        .call("DELETE", &format!("/v1/tenants/{a}"), &admin, None, &[])
        .await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    one.await_status(path, &ta, 401).await;
    assert_eq!(one.get(path, &tg).await.status, 200, "G is unaffected");

    for s in [s1, s2] {
        let (status, logs) = s.stop();
        assert!(status.success(), "{status}: {logs:?}");
        assert!(
            logs.iter().all(|l| !l.contains("\"level\":\"ERROR\"")),
            "{logs:?}"
        );
    }
    drop(db);
}

#[test]
fn unreachable_database_at_start_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let master = MasterKey::generate().to_base64url();
    // Nothing listens on port 1. The password must not show in any output.
    let url = "postgres://bulkhead:not-this-password@127.0.0.1:1/bulkhead";
    let mut child = serve_command(
        dir.path(),
        &[
            ("BULKHEAD_DATABASE_URL", url),
            ("BULKHEAD_MASTER_KEY", master.as_str()),
            ("BULKHEAD_ADMIN_TOKEN", "bh_admin_unreachable_0123456789"),
            ("BULKHEAD_STORAGE__CONNECT_TIMEOUT_SECONDS", "2"),
        ],
    )
    .spawn()
    .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = wait_with_deadline(&mut child, Duration::from_secs(30));
    let took = start.elapsed();
    let stderr = reader.join().unwrap();
    assert!(!status.success(), "{status}: {stderr}");
    assert!(
        took < Duration::from_secs(20),
        "gave up after {took:?} with a 2 s patience"
    );
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains("PostgreSQL") && last.contains("connect"),
        "the last line says what failed: {stderr}"
    );
    assert!(
        stderr.contains("PostgreSQL is not reachable yet; retrying"),
        "it retried first: {stderr}"
    );
    assert!(!stderr.contains("bulkhead is listening"), "{stderr}");
    assert!(!stderr.contains("not-this-password"), "{stderr}");
}

/// Two instances share one rate limit through Redis: a tenant on a tier of `RATE`/s, offered
/// far more through both instances for 10 s, is admitted `RATE` × 10 (+ its burst) in total,
/// within 5 % — not twice that. Needs PostgreSQL and `BULKHEAD_TEST_REDIS_URL`. (The burst is
/// above 1 so that the jitter of the test's own requests does not waste the tenant's capacity.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_a_rate_limit_through_redis() {
    const RATE: f64 = 40.0;
    const SECONDS: u64 = 10;
    const BURST: u32 = 10;
    let Some(admin_url) = test_url() else {
        return;
    };
    let Some(redis_url) = bulkhead_limits::testing::test_redis_url() else {
        return;
    };
    let db = TestDb::create(&admin_url).await.unwrap();
    let master = MasterKey::generate().to_base64url();
    let admin = format!("bh_admin_two_instances_{}", uuid::Uuid::new_v4().simple());
    let env = [
        ("BULKHEAD_DATABASE_URL", db.url()),
        ("BULKHEAD_MASTER_KEY", master.as_str()),
        ("BULKHEAD_ADMIN_TOKEN", admin.as_str()),
        ("BULKHEAD_REDIS_URL", redis_url.as_str()),
        ("BULKHEAD_STORAGE__POOL_SIZE", "4"),
    ];
    let (dir1, dir2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (s1, s2) = std::thread::scope(|s| {
        let one = s.spawn(|| Server::start(dir1.path(), &env));
        let two = s.spawn(|| Server::start(dir2.path(), &env));
        (one.join().unwrap(), two.join().unwrap())
    });
    let one = Http::new(&s1.addr);
    let r = one
        .call(
            "PUT",
            "/v1/tiers/metered",
            &admin,
            Some(json!({"rate_per_second": RATE, "burst": BURST, "max_concurrency": 1000})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let (a, ta) = one.tenant_and_token(&admin, "metered").await;
    let r = one
        .call(
            "PATCH",
            &format!("/v1/tenants/{a}"),
            &admin,
            Some(json!({"tier": "metered"})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // Instance 2 learns the new tier and the tenant's tier within its refresh periods.
    let two = Http::new(&s2.addr);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = two.get("/v1/collections", &ta).await;
        let policy_seen = r.status == 429 || r.status == 200;
        assert!(policy_seen, "{:?}", r.body);
        let l = two.get(&format!("/v1/tenants/{a}/limits"), &admin).await;
        if l.body["effective"]["rate_per_second"] == json!(RATE) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "instance 2 never saw the tier: {:?}",
            l.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let the bucket drain from the probes above, then flood both instances for 10 s.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let end = Instant::now() + Duration::from_secs(SECONDS);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let addr = if i % 2 == 0 {
            s1.addr.clone()
        } else {
            s2.addr.clone()
        };
        let ta = ta.clone();
        tasks.push(tokio::spawn(async move {
            let http = Http::new(&addr);
            let (mut ok, mut throttled) = (0u64, 0u64);
            while Instant::now() < end {
                match http.get("/v1/collections", &ta).await.status {
                    200 => ok += 1,
                    429 => throttled += 1,
                    other => panic!("unexpected status {other}"),
                }
            }
            (ok, throttled)
        }));
    }
    let (mut ok, mut throttled) = (0u64, 0u64);
    for t in tasks {
        let (o, th) = t.await.unwrap();
        ok += o;
        throttled += th;
    }
    #[allow(clippy::cast_precision_loss, reason = "small counts")]
    let (expected, got) = (RATE * SECONDS as f64 + f64::from(BURST), ok as f64);
    eprintln!("shared limit: admitted {ok}, throttled {throttled}, limit allows {expected}");
    assert!(
        throttled > ok,
        "the tenant was offered more than its limit ({ok} admitted, {throttled} throttled)"
    );
    assert!(
        (got - expected).abs() <= expected * 0.05,
        "admitted {ok} in {SECONDS} s across both instances; the shared limit allows {expected}"
    );
    drop((s1, s2));
}
