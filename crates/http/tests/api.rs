//! The API's behaviour on good and bad input, through the real HTTP server.
//!
//! Every test runs on both storage backends (`sqlite::…` and `postgres::…`, see
//! `common::both_backends!`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

mod common;

use std::collections::BTreeSet;

use common::{ADMIN, Backend, TestApp, both_backends};
use serde_json::{Value, json};

both_backends!(
    record_lifecycle_with_etags,
    bad_input_gets_clear_problems_and_writes_nothing,
    operator_api_validates_and_paginates,
    openapi_documents_every_route,
    pagination_over_http_is_stable,
);

async fn record_lifecycle_with_etags(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, t) = app.tenant_with_notes("a").await;
    let created = app
        .call(
            "POST",
            "/v1/collections/notes/records",
            Some(&t),
            Some(json!({"data": {"title": "v1"}})),
            &[],
        )
        .await;
    assert_eq!(created.status, 201);
    assert_eq!(created.headers["etag"], "\"1\"");
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        created.headers["location"].to_str().unwrap(),
        format!("/v1/collections/notes/records/{id}")
    );
    let path = format!("/v1/collections/notes/records/{id}");
    let body = json!({"data": {"title": "v2"}});
    let r = app
        .call("PUT", &path, Some(&t), Some(body.clone()), &[])
        .await;
    assert_eq!(
        (r.status, r.problem_type()),
        (428, "urn:bulkhead:problem:precondition-required")
    );
    let r = app
        .call(
            "PUT",
            &path,
            Some(&t),
            Some(body.clone()),
            &[("if-match", "\"7\"")],
        )
        .await;
    assert_eq!(
        (r.status, r.problem_type()),
        (412, "urn:bulkhead:problem:precondition-failed")
    );
    let r = app
        .call(
            "PUT",
            &path,
            Some(&t),
            Some(body.clone()),
            &[("if-match", "\"1\"")],
        )
        .await;
    assert_eq!((r.status, r.body["version"].as_u64()), (200, Some(2)));
    assert_eq!(r.headers["etag"], "\"2\"");
    assert_eq!(r.body["created_at"], created.body["created_at"]);
    let r = app
        .call(
            "PUT",
            &path,
            Some(&t),
            Some(json!({"data": {"title": "v3"}})),
            &[("if-match", "2")],
        )
        .await;
    assert_eq!(r.status, 200, "bare version accepted");
    let r = app
        .call(
            "PUT",
            &path,
            Some(&t),
            Some(body.clone()),
            &[("if-match", "nonsense")],
        )
        .await;
    assert_eq!(r.status, 400);
    let r = app
        .call("DELETE", &path, Some(&t), None, &[("if-match", "\"2\"")])
        .await;
    assert_eq!(r.status, 412);
    assert_eq!(
        app.call("DELETE", &path, Some(&t), None, &[("if-match", "\"3\"")])
            .await
            .status,
        204
    );
    assert_eq!(app.get(&path, &t).await.status, 404);
}

async fn bad_input_gets_clear_problems_and_writes_nothing(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, t) = app.tenant_with_notes("a").await;
    let recs = "/v1/collections/notes/records";
    let check = |r: &common::Resp, status: u16, slug: &str| {
        assert_eq!(r.status, status, "{:?}", r.body);
        assert_eq!(r.problem_type(), format!("urn:bulkhead:problem:{slug}"));
        assert_eq!(r.headers["content-type"], "application/problem+json");
        assert!(r.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    };
    // Schema violation: 422 with the failing path.
    let r = app
        .post(recs, &t, json!({"data": {"title": 5, "n": "x"}}))
        .await;
    check(&r, 422, "validation-failed");
    let paths: BTreeSet<&str> = r.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains("/title") && paths.contains("/n"),
        "{paths:?}"
    );
    // Not JSON, wrong media type, unknown fields, too big, too deep.
    check(
        &app.call_raw(
            "POST",
            recs,
            Some(&t),
            Some(b"{not json".to_vec()),
            "application/json",
            &[],
        )
        .await,
        400,
        "bad-request",
    );
    check(
        &app.call_raw(
            "POST",
            recs,
            Some(&t),
            Some(b"{}".to_vec()),
            "text/plain",
            &[],
        )
        .await,
        415,
        "unsupported-media-type",
    );
    check(
        &app.post(
            recs,
            &t,
            json!({"data": {"title": "x"}, "tenant_id": "other"}),
        )
        .await,
        400,
        "bad-request",
    );
    let big = "x".repeat(2 * 1024 * 1024);
    check(
        &app.post(recs, &t, json!({"data": {"title": big}})).await,
        413,
        "body-too-large",
    );
    let record_big = "x".repeat(300 * 1024);
    check(
        &app.post(recs, &t, json!({"data": {"title": record_big}}))
            .await,
        413,
        "record-too-large",
    );
    let mut deep = json!(1);
    for _ in 0..100 {
        deep = json!([deep]);
    }
    check(
        &app.post(recs, &t, json!({"data": {"title": "x", "deep": deep}}))
            .await,
        422,
        "json-too-deep",
    );
    let mut deeper = json!(1);
    for _ in 0..200 {
        deeper = json!([deeper]);
    }
    check(
        &app.post(recs, &t, json!({"data": {"title": "x", "deep": deeper}}))
            .await,
        422,
        "json-too-deep",
    );
    // Names, ids, query parameters.
    check(
        &app.post(
            "/v1/collections/Bad%20Name/records",
            &t,
            json!({"data": {}}),
        )
        .await,
        400,
        "bad-request",
    );
    check(
        &app.get("/v1/collections/notes/records/not-an-id", &t).await,
        400,
        "bad-request",
    );
    let r = app
        .get("/v1/collections/notes/records?where.body=x", &t)
        .await;
    check(&r, 400, "bad-request");
    assert!(
        r.body["detail"].as_str().unwrap().contains("`body`"),
        "names the field: {}",
        r.body["detail"]
    );
    check(
        &app.get("/v1/collections/notes/records?sort=title", &t)
            .await,
        400,
        "bad-request",
    );
    check(
        &app.get("/v1/collections/notes/records?limit=0", &t).await,
        400,
        "bad-request",
    );
    check(
        &app.get("/v1/collections/notes/records?where.n=abc", &t)
            .await,
        400,
        "bad-request",
    );
    check(
        &app.get("/v1/collections/notes/records?cursor=zzz", &t)
            .await,
        400,
        "bad-request",
    );
    check(
        &app.call(
            "POST",
            recs,
            Some(&t),
            Some(json!({"data": {"title": "x"}})),
            &[("idempotency-key", "")],
        )
        .await,
        400,
        "bad-request",
    );
    // Invalid collection definitions.
    let put = |s: Value| app.call("PUT", "/v1/collections/c2", Some(&t), Some(s), &[]);
    check(
        &put(json!({"schema": {"type": "array"}})).await,
        422,
        "invalid-definition",
    );
    check(
        &put(json!({"schema": {"type": "object"}, "indexes": ["missing"]})).await,
        422,
        "invalid-definition",
    );
    check(
        &put(json!({"schema": {"type": "object", "$ref": "http://127.0.0.1:9/s.json"}})).await,
        422,
        "invalid-definition",
    );
    // Unknown routes and methods.
    check(&app.get("/v1/nowhere", &t).await, 404, "not-found");
    check(
        &app.call("PATCH", recs, Some(&t), Some(json!({})), &[])
            .await,
        405,
        "method-not-allowed",
    );
    // Nothing above was written.
    assert_eq!(app.get(recs, &t).await.body["items"], json!([]));
    assert_eq!(
        app.get("/v1/collections", &t).await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

async fn operator_api_validates_and_paginates(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let r = app
        .post(
            "/v1/tenants",
            ADMIN,
            json!({"name": "acme", "tier": "platinum"}),
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body["detail"].as_str().unwrap().contains("platinum"));
    let r = app
        .post("/v1/tenants", ADMIN, json!({"name": " padded"}))
        .await;
    assert_eq!(r.status, 400);
    let a = app.tenant("acme").await;
    let r = app
        .post("/v1/tenants", ADMIN, json!({"name": "acme"}))
        .await;
    assert_eq!(r.status, 409, "names are unique among live tenants");
    // Unknown fields in a mint request are refused, never copied into a token.
    let r = app
        .post(
            &format!("/v1/tenants/{a}/tokens"),
            ADMIN,
            json!({"subject": "s", "roles": ["admin"], "tid": "other"}),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = app
        .post(
            &format!("/v1/tenants/{a}/tokens"),
            ADMIN,
            json!({"subject": "s", "roles": ["root"]}),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = app
        .post(
            &format!("/v1/tenants/{a}/tokens"),
            ADMIN,
            json!({"subject": "s", "roles": []}),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = app
        .post(
            &format!("/v1/tenants/{a}/tokens"),
            ADMIN,
            json!({"subject": "s", "roles": ["reader"], "ttl_seconds": 0}),
        )
        .await;
    assert_eq!(r.status, 400);
    for i in 0..5 {
        app.tenant(&format!("t{i}")).await;
    }
    let mut seen = Vec::new();
    let mut path = "/v1/tenants?limit=2".to_string();
    loop {
        let r = app.get(&path, ADMIN).await;
        assert_eq!(r.status, 200);
        seen.extend(
            r.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_str().unwrap().to_owned()),
        );
        match r.body["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/tenants?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 6);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(sorted, seen);
    assert_eq!(
        app.get(&format!("/v1/tenants/{a}"), ADMIN).await.body["name"],
        "acme"
    );
    assert_eq!(app.get("/v1/tenants/not-a-uuid", ADMIN).await.status, 400);
}

async fn openapi_documents_every_route(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let r = app.get("/openapi.json", "").await;
    assert_eq!(r.status, 200);
    assert!(r.body["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths: BTreeSet<&str> = r.body["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let want: BTreeSet<&str> = [
        "/healthz",
        "/readyz",
        "/v1/tenants",
        "/v1/tenants/{tenant_id}",
        "/v1/tenants/{tenant_id}/tokens",
        "/v1/tenants/{tenant_id}/keys",
        "/v1/tenants/{tenant_id}/jwks.json",
        "/v1/collections",
        "/v1/collections/{name}",
        "/v1/collections/{name}/records",
        "/v1/collections/{name}/records/{id}",
        "/v1/tiers",
        "/v1/tiers/{name}",
        "/v1/tenants/{tenant_id}/limits",
        "/v1/usage",
        "/metrics",
        "/v1/audit",
        "/v1/audit/keys",
        "/v1/audit/checkpoint",
        "/v1/audit/proof/inclusion",
        "/v1/audit/proof/consistency",
        "/v1/audit/logs/{log}",
        "/v1/audit/logs/{log}/checkpoint",
        "/v1/audit/logs/{log}/proof/inclusion",
        "/v1/audit/logs/{log}/proof/consistency",
        "/v1/policies",
        "/v1/policies/versions",
        "/v1/policies/rollback",
        "/v1/policies/check",
        "/v1/platform/policies",
        "/v1/platform/policies/reload",
    ]
    .into_iter()
    .collect();
    assert_eq!(paths, want);
    let methods = |p: &str| {
        r.body["paths"][p]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        methods("/v1/collections/{name}/records/{id}"),
        ["delete", "get", "put"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    assert!(r.body["components"]["securitySchemes"]["tenant_token"].is_object());
    assert_eq!(app.get("/healthz", "").await.status, 200);
    assert_eq!(app.get("/readyz", "").await.status, 200);
}

async fn pagination_over_http_is_stable(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, t) = app.tenant_with_notes("a").await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(
            app.note(&t, &format!("n{i}")).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let mut seen = Vec::new();
    let mut path = "/v1/collections/notes/records?limit=3".to_string();
    loop {
        let r = app.get(&path, &t).await;
        seen.extend(
            r.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["id"].as_str().unwrap().to_owned()),
        );
        match r.body["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/collections/notes/records?limit=3&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, ids);
}
