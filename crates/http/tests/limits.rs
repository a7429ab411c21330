//! Performance isolation through the real HTTP server: tiers, rate and concurrency limits,
//! storage quotas, `/v1/usage` and `/metrics`. Every refusal of one tenant is next to its
//! positive twin (another tenant, or the same one within its limits, is served).
//!
//! Rates are set so low (one request per 100 s after the burst) that no test depends on how
//! fast it runs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

mod common;

use bulkhead_core::TenantId;
use bulkhead_http::isolation::IsolationConfig;
use bulkhead_http::state::HttpConfig;
use common::{ADMIN, Backend, TestApp, both_backends};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

both_backends!(
    over_the_rate_is_429_with_headers_and_other_tenants_are_served,
    a_changed_tier_or_override_applies_without_restart,
    concurrency_cap_refuses_the_extra_request_only,
    storage_quota_is_403_and_writes_nothing,
    usage_shows_the_callers_own_figures_only,
    metrics_are_for_the_operator_only,
    metrics_show_quota_use_for_the_top_tenants_and_other,
    a_read_only_top_tenant_gets_its_quota_use_after_a_scrape,
    tier_weight_is_set_through_the_api,
    tier_api_validates_and_lists,
    tier_body_limit_is_enforced,
);

/// Defines (or redefines) a tier through the operator API.
async fn put_tier(app: &TestApp, name: &str, body: Value) -> common::Resp {
    app.call(
        "PUT",
        &format!("/v1/tiers/{name}"),
        Some(ADMIN),
        Some(body),
        &[],
    )
    .await
}

/// A tenant on `tier` with an admin token.
async fn tenant_on(app: &TestApp, name: &str, tier: &str) -> (TenantId, String) {
    let r = app
        .post("/v1/tenants", ADMIN, json!({"name": name, "tier": tier}))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["tier"], tier);
    let id = TenantId::parse(r.body["id"].as_str().unwrap()).unwrap();
    let tok = app.token(id, &["admin"]).await;
    (id, tok)
}

fn header<'r>(r: &'r common::Resp, name: &str) -> &'r str {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

async fn over_the_rate_is_429_with_headers_and_other_tenants_are_served(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let r = put_tier(&app, "tiny", json!({"rate_per_second": 0.01, "burst": 3})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let (_, ta) = tenant_on(&app, "a", "tiny").await;
    let (_, tb) = tenant_on(&app, "b", "tiny").await;
    for i in 0..3 {
        let ok = app.get("/v1/collections", &ta).await;
        assert_eq!(ok.status, 200, "request {i}: {:?}", ok.body);
        assert_eq!(header(&ok, "ratelimit-policy"), "\"tiny\";q=3;w=300");
        assert_eq!(
            header(&ok, "ratelimit"),
            format!("\"tiny\";r={};t={}", 2 - i, 100 * (i + 1))
        );
    }
    let refused = app.get("/v1/collections", &ta).await;
    assert_eq!(refused.status, 429, "{:?}", refused.body);
    assert_eq!(refused.problem_type(), "urn:bulkhead:problem:rate-limited");
    assert_eq!(header(&refused, "retry-after"), "100");
    assert_eq!(header(&refused, "ratelimit-policy"), "\"tiny\";q=3;w=300");
    assert!(header(&refused, "ratelimit").starts_with("\"tiny\";r=0;"));
    // Twin: B, on the same tier, is not touched by A's flood.
    let b = app.get("/v1/collections", &tb).await;
    assert_eq!(b.status, 200);
    // Operator requests are not tenant traffic.
    assert_eq!(app.get("/v1/tiers", ADMIN).await.status, 200);
    // A token that does not verify is refused as before (401), not throttled.
    assert_eq!(app.get("/v1/collections", "nonsense").await.status, 401);
}

async fn a_changed_tier_or_override_applies_without_restart(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    put_tier(&app, "one", json!({"rate_per_second": 0.01, "burst": 1})).await;
    let (a, ta) = tenant_on(&app, "a", "one").await;
    assert_eq!(app.get("/v1/collections", &ta).await.status, 200);
    assert_eq!(app.get("/v1/collections", &ta).await.status, 429);
    // Raising the tier's burst applies to its tenants' next request.
    let r = put_tier(&app, "one", json!({"rate_per_second": 0.01, "burst": 3})).await;
    assert_eq!(r.body["limits"]["burst"], 3);
    assert_eq!(app.get("/v1/collections", &ta).await.status, 200);
    assert_eq!(app.get("/v1/collections", &ta).await.status, 200);
    assert_eq!(app.get("/v1/collections", &ta).await.status, 429);
    // Moving the tenant to another tier applies at once too.
    let r = app
        .call(
            "PATCH",
            &format!("/v1/tenants/{a}"),
            Some(ADMIN),
            Some(json!({"tier": "standard"})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(app.get("/v1/collections", &ta).await.status, 200);
    // The debt a tenant carries over a change of rate is what it owes at the old rate: let the
    // fast tier's few requests (2 ms apart at 500/s) be paid off before slowing it down, so the
    // override below starts from a clean slate however fast this machine ran the lines above.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // A tenant's own override beats its tier; the operator can read it back.
    let r = app
        .call(
            "PATCH",
            &format!("/v1/tenants/{a}"),
            Some(ADMIN),
            Some(json!({"limits": {"burst": 2, "rate_per_second": 0.01}})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let l = app.get(&format!("/v1/tenants/{a}/limits"), ADMIN).await;
    assert_eq!(l.body["tier"], "standard");
    assert_eq!(
        l.body["overrides"],
        json!({"burst": 2, "rate_per_second": 0.01})
    );
    assert_eq!(l.body["effective"]["burst"], 2);
    // Less than one request is owed from the fast tier: the first fits, the third cannot.
    assert_eq!(app.get("/v1/collections", &ta).await.status, 200);
    app.get("/v1/collections", &ta).await;
    assert_eq!(app.get("/v1/collections", &ta).await.status, 429);
    // Removing the override gives the tier's limits back.
    let r = app
        .call(
            "PATCH",
            &format!("/v1/tenants/{a}"),
            Some(ADMIN),
            Some(json!({"limits": null})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(app.get("/v1/collections", &ta).await.status, 200);
    let l = app.get(&format!("/v1/tenants/{a}/limits"), ADMIN).await;
    assert_eq!(l.body["overrides"], json!({}));
}

/// Starts a record creation whose body is not finished: the request holds one of the tenant's
/// concurrency slots until `finish` is called.
async fn hold_a_slot(app: &TestApp, token: &str) -> tokio::net::TcpStream {
    let body = br#"{"data": {"title": "slow"}}"#;
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /v1/collections/notes/records HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body[..5]).await.unwrap();
    s
}

async fn finish(mut s: tokio::net::TcpStream) -> String {
    let body = br#"{"data": {"title": "slow"}}"#;
    s.write_all(&body[5..]).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

async fn concurrency_cap_refuses_the_extra_request_only(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (a, ta) = app.tenant_with_notes("a").await;
    let (_, tb) = app.tenant_with_notes("b").await;
    let r = app
        .call(
            "PATCH",
            &format!("/v1/tenants/{a}"),
            Some(ADMIN),
            Some(json!({"limits": {"max_concurrency": 1}})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let held = hold_a_slot(&app, &ta).await;
    // Wait (bounded) until the server has admitted the slow request.
    for _ in 0..500 {
        if app.state.isolation.limiter.inflight(a) == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(app.state.isolation.limiter.inflight(a), 1);
    let refused = app.get("/v1/collections", &ta).await;
    assert_eq!(refused.status, 429, "{:?}", refused.body);
    assert_eq!(
        refused.problem_type(),
        "urn:bulkhead:problem:concurrency-limited"
    );
    assert_eq!(header(&refused, "retry-after"), "1");
    // Twin: B is served while A's slot is taken.
    assert_eq!(app.get("/v1/collections", &tb).await.status, 200);
    // The slow request completes normally and gives its slot back.
    let answer = finish(held).await;
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    for _ in 0..500 {
        if app.state.isolation.limiter.inflight(a) == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(app.get("/v1/collections", &ta).await.status, 200);
}

async fn storage_quota_is_403_and_writes_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (a, ta) = app.tenant_with_notes("a").await;
    let (_, tb) = app.tenant_with_notes("b").await;
    let r = app
        .call(
            "PATCH",
            &format!("/v1/tenants/{a}"),
            Some(ADMIN),
            Some(json!({"limits": {"max_records": 2, "max_collections": 1}})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    app.note(&ta, "one").await;
    app.note(&ta, "two").await;
    let refused = app
        .post(
            "/v1/collections/notes/records",
            &ta,
            json!({"data": {"title": "three"}}),
        )
        .await;
    assert_eq!(refused.status, 403, "{:?}", refused.body);
    assert_eq!(
        refused.problem_type(),
        "urn:bulkhead:problem:quota-exceeded"
    );
    assert_eq!(refused.body["quota"], "max_records");
    let listed = app.get("/v1/collections/notes/records", &ta).await;
    assert_eq!(
        listed.body["items"].as_array().unwrap().len(),
        2,
        "nothing written"
    );
    let coll = app
        .call(
            "PUT",
            "/v1/collections/more",
            Some(&ta),
            Some(json!({"schema": {"type": "object"}})),
            &[],
        )
        .await;
    assert_eq!(coll.status, 403);
    assert_eq!(coll.body["quota"], "max_collections");
    assert_eq!(
        app.get("/v1/collections", &ta).await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Twin: B, without the override, writes on.
    for t in ["one", "two", "three"] {
        app.note(&tb, t).await;
    }
}

async fn usage_shows_the_callers_own_figures_only(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, ta) = app.tenant_with_notes("a").await;
    let (_, tb) = tenant_on(&app, "b", "free").await;
    app.note(&ta, "one").await;
    app.note(&ta, "two").await;
    let ua = app.get("/v1/usage", &ta).await;
    assert_eq!(ua.status, 200, "{:?}", ua.body);
    assert_eq!(ua.body["tier"], "standard");
    assert_eq!(ua.body["usage"]["records"], 2);
    assert_eq!(ua.body["usage"]["collections"], 1);
    assert!(ua.body["usage"]["bytes"].as_u64().unwrap() > 0);
    assert_eq!(ua.body["in_flight"], 1, "the usage request itself");
    assert!(ua.body["limits"]["max_records"].as_u64().unwrap() > 2);
    // B sees its own (empty) figures and its own tier, never A's.
    let ub = app.get("/v1/usage", &tb).await;
    assert_eq!(ub.status, 200);
    assert_eq!(ub.body["tier"], "free");
    assert_eq!(
        ub.body["usage"],
        json!({"records": 0, "bytes": 0, "collections": 0})
    );
    // No token, or the operator's, gets nothing.
    assert_eq!(
        app.call("GET", "/v1/usage", None, None, &[]).await.status,
        401
    );
    assert_eq!(app.get("/v1/usage", ADMIN).await.status, 401);
}

async fn metrics_are_for_the_operator_only(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (a, ta) = app.tenant_with_notes("a").await;
    app.note(&ta, "one").await;
    app.state.isolation.housekeeping();
    app.note(&ta, "two").await;
    let m = app.call("GET", "/metrics", Some(ADMIN), None, &[]).await;
    assert_eq!(m.status, 200);
    assert!(
        header(&m, "content-type").starts_with("text/plain"),
        "{:?}",
        m.headers
    );
    let text = String::from_utf8_lossy(&m.raw);
    assert!(
        text.contains(&format!(
            "bulkhead_requests_total{{tenant=\"{a}\",outcome=\"ok\"}}"
        )),
        "{text}"
    );
    assert!(text.contains("bulkhead_request_duration_seconds_bucket"));
    assert!(text.contains("bulkhead_limiter_tenants"));
    // A tenant token — even an admin one of a tenant — cannot read them; nor can anyone else.
    let t = app.call("GET", "/metrics", Some(&ta), None, &[]).await;
    assert_eq!(t.status, 401);
    assert!(!String::from_utf8_lossy(&t.raw).contains("bulkhead_requests_total"));
    assert_eq!(
        app.call("GET", "/metrics", None, None, &[]).await.status,
        401
    );
}

async fn tier_api_validates_and_lists(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let r = put_tier(
        &app,
        "gold",
        json!({"rate_per_second": 50, "max_records": 10}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["name"], "gold");
    assert_eq!(r.body["limits"]["max_records"], 10);
    // Omitted fields keep the defaults.
    assert!(r.body["limits"]["burst"].as_u64().unwrap() > 0);
    let list = app.get("/v1/tiers", ADMIN).await;
    let names: Vec<&str> = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["enterprise", "free", "gold", "standard"]);
    for bad in [
        json!({"burst": 0}),
        json!({"rate_per_second": -1}),
        json!({"max_concurrency": 0}),
        json!({"bursts": 5}),
    ] {
        assert_eq!(
            put_tier(&app, "gold", bad.clone()).await.status,
            400,
            "{bad}"
        );
    }
    assert_eq!(put_tier(&app, "Not_A_Name", json!({})).await.status, 400);
    // Only the operator defines tiers.
    let (_, ta) = app.tenant_with_notes("a").await;
    assert_eq!(
        app.call(
            "PUT",
            "/v1/tiers/gold",
            Some(&ta),
            Some(json!({"burst": 1})),
            &[]
        )
        .await
        .status,
        401
    );
    assert_eq!(app.get("/v1/tiers", &ta).await.status, 401);
    // Tenants can be put on the new tier, not on an unknown one.
    tenant_on(&app, "g", "gold").await;
    let r = app
        .post(
            "/v1/tenants",
            ADMIN,
            json!({"name": "x", "tier": "platinum"}),
        )
        .await;
    assert_eq!(r.status, 400);
}

async fn tier_body_limit_is_enforced(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    put_tier(&app, "small", json!({"max_body_bytes": 1024})).await;
    let (a, _) = tenant_on(&app, "a", "small").await;
    let ta = app.token(a, &["admin"]).await;
    let (_, tb) = app.tenant_with_notes("b").await;
    let r = app
        .call(
            "PUT",
            "/v1/collections/notes",
            Some(&ta),
            Some(json!({"schema": {"type": "object"}})),
            &[],
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let big = json!({"data": {"title": "x".repeat(2000)}});
    let refused = app
        .post("/v1/collections/notes/records", &ta, big.clone())
        .await;
    assert_eq!(refused.status, 413, "{:?}", refused.body);
    // Twin: the same body from a tenant whose tier allows it.
    let ok = app.post("/v1/collections/notes/records", &tb, big).await;
    assert_eq!(ok.status, 201, "{:?}", ok.body);
}

/// The value of the gauge `name{tenant="…",quota="…"}` in a scrape, if it is there.
fn gauge(text: &str, name: &str, tenant: &str, quota: &str) -> Option<f64> {
    let prefix = format!("{name}{{tenant=\"{tenant}\",quota=\"{quota}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().unwrap())
}

async fn scrape(app: &TestApp) -> String {
    let m = app.call("GET", "/metrics", Some(ADMIN), None, &[]).await;
    assert_eq!(m.status, 200);
    String::from_utf8_lossy(&m.raw).into_owned()
}

fn top_k(k: usize) -> HttpConfig {
    HttpConfig {
        isolation: IsolationConfig {
            metrics_top_k: k,
            ..Default::default()
        },
        ..Default::default()
    }
}

async fn metrics_show_quota_use_for_the_top_tenants_and_other(backend: Backend) {
    // One tenant label: the busiest tenant gets its own quota gauges, the other is `other`.
    let app = TestApp::spawn_with(backend, top_k(1)).await;
    put_tier(
        &app,
        "small",
        json!({"max_records": 50, "max_collections": 5}),
    )
    .await;
    let (a, ta) = tenant_on(&app, "a", "small").await;
    let r = app
        .call(
            "PUT",
            "/v1/collections/notes",
            Some(&ta),
            Some(json!({"schema": {"type": "object"}})),
            &[],
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    for i in 0..3 {
        app.note(&ta, &format!("a{i}")).await;
    }
    let (b, tb) = app.tenant_with_notes("b").await;
    app.note(&tb, "b0").await;
    app.state.isolation.housekeeping();
    let text = scrape(&app).await;
    let (a_s, b_s) = (a.to_string(), b.to_string());
    let g = |name, t: &str, q| gauge(&text, name, t, q);
    assert_eq!(
        g("bulkhead_tenant_quota_used", &a_s, "max_records"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        g("bulkhead_tenant_quota_limit", &a_s, "max_records"),
        Some(50.0)
    );
    assert_eq!(
        g("bulkhead_tenant_quota_used", &a_s, "max_collections"),
        Some(1.0)
    );
    assert_eq!(
        g("bulkhead_tenant_quota_limit", &a_s, "max_collections"),
        Some(5.0)
    );
    assert!(g("bulkhead_tenant_quota_used", &a_s, "max_bytes").unwrap() > 0.0);
    // The other tenant has no label of its own: it is in `other`'s sums.
    assert!(!text.contains(&b_s), "{text}");
    let standard = bulkhead_core::tier::TierLimits::builtin("standard");
    assert_eq!(
        g("bulkhead_tenant_quota_used", "other", "max_records"),
        Some(1.0)
    );
    #[allow(clippy::cast_precision_loss, reason = "test figures")]
    let limit = standard.max_records as f64;
    assert_eq!(
        g("bulkhead_tenant_quota_limit", "other", "max_records"),
        Some(limit)
    );
    // A tenant token — even an admin one of a tenant — cannot read them.
    let t = app.call("GET", "/metrics", Some(&ta), None, &[]).await;
    assert_eq!(t.status, 401);
    assert!(!String::from_utf8_lossy(&t.raw).contains("bulkhead_tenant_quota"));
    // Writes show at the next scrape.
    app.note(&ta, "a3").await;
    let text = scrape(&app).await;
    assert_eq!(
        gauge(&text, "bulkhead_tenant_quota_used", &a_s, "max_records"),
        Some(4.0)
    );
}

async fn a_read_only_top_tenant_gets_its_quota_use_after_a_scrape(backend: Backend) {
    let app = TestApp::spawn_with(backend, top_k(5)).await;
    let (a, ta) = app.tenant_with_notes("a").await;
    app.note(&ta, "one").await;
    // A tenant that only reads: nothing has read its usage yet.
    let c = app.tenant("c").await;
    let tc = app.token(c, &["reader"]).await;
    assert_eq!(app.get("/v1/collections", &tc).await.status, 200);
    app.state.isolation.housekeeping();
    let c_s = c.to_string();
    let text = scrape(&app).await;
    assert_eq!(
        gauge(&text, "bulkhead_tenant_quota_used", &c_s, "max_records"),
        None,
        "unknown, not 0"
    );
    // Twin: the writing tenant's figure is there.
    assert_eq!(
        gauge(
            &text,
            "bulkhead_tenant_quota_used",
            &a.to_string(),
            "max_records"
        ),
        Some(1.0)
    );
    // The scrape asked for it; the tenant's next request reads it (in the background).
    assert_eq!(app.get("/v1/collections", &tc).await.status, 200);
    let mut found = None;
    for _ in 0..200 {
        let text = scrape(&app).await;
        found = gauge(&text, "bulkhead_tenant_quota_used", &c_s, "max_records");
        if found.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(found, Some(0.0));
}

async fn tier_weight_is_set_through_the_api(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let list = app.get("/v1/tiers", ADMIN).await;
    let weight = |body: &Value, name: &str| {
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .map(|t| t["limits"]["weight"].as_u64().unwrap())
    };
    assert_eq!(weight(&list.body, "free"), Some(1));
    assert_eq!(weight(&list.body, "standard"), Some(2));
    assert_eq!(weight(&list.body, "enterprise"), Some(4));
    let r = put_tier(&app, "gold", json!({"weight": 7})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["limits"]["weight"], 7);
    assert_eq!(
        weight(&app.get("/v1/tiers", ADMIN).await.body, "gold"),
        Some(7)
    );
    for bad in [
        json!({"weight": 0}),
        json!({"weight": 1001}),
        json!({"weight": -1}),
    ] {
        assert_eq!(
            put_tier(&app, "gold", bad.clone()).await.status,
            400,
            "{bad}"
        );
    }
    // A tenant on the tier is held to it: its limits say so.
    let (g, _) = tenant_on(&app, "g", "gold").await;
    let l = app.get(&format!("/v1/tenants/{g}/limits"), ADMIN).await;
    assert_eq!(l.body["effective"]["weight"], 7, "{:?}", l.body);
}
