//! The audit API through the real server, on both storage backends: what is recorded, that a
//! tenant sees only its own log (each refusal beside its positive twin), and that the proofs
//! the API serves verify with nothing but the published key.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

mod common;

use bulkhead_audit::AuditPublicKey;
use bulkhead_audit::LogId;
use bulkhead_audit::checkpoint::{
    ConsistencyProofJson, InclusionProofJson, KeyJson, verify_consistency_json,
    verify_inclusion_json,
};
use common::{ADMIN, Backend, TestApp, both_backends};
use serde_json::Value;

both_backends!(
    tenant_reads_its_own_log_and_proofs,
    tenant_audit_endpoints_are_isolated,
    denials_and_refused_tokens_are_recorded,
    limit_events_are_recorded_once_per_period,
    operator_reads_any_log,
);

async fn public_key(app: &TestApp) -> AuditPublicKey {
    let r = app.call("GET", "/v1/audit/keys", None, None, &[]).await;
    assert_eq!(r.status, 200);
    let k: KeyJson = serde_json::from_value(r.body["keys"][0].clone()).unwrap();
    AuditPublicKey::from_json(&k).unwrap()
}

async fn checkpoint_now(app: &TestApp) {
    app.store.audit().checkpoint_dirty().await;
}

fn actions(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

async fn tenant_reads_its_own_log_and_proofs(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (t, tok) = app.tenant_with_notes("a").await;
    let rec = app.note(&tok, "hidden title 7f3a").await;
    let id = rec["id"].as_str().unwrap();
    assert_eq!(
        app.get(&format!("/v1/collections/notes/records/{id}"), &tok)
            .await
            .status,
        200
    );
    checkpoint_now(&app).await;
    let page = app.get("/v1/audit", &tok).await;
    assert_eq!(page.status, 200, "{:?}", page.body);
    assert_eq!(
        actions(&page.body),
        [
            "tenant.create",
            "token.mint",
            "collection.put",
            "record.create",
            "record.read"
        ]
    );
    let read = &page.body["items"][4];
    assert_eq!(read["resource"], format!("collections/notes/records/{id}"));
    assert_eq!(read["actor"]["subject"], "user-1");
    assert_eq!(read["source"], "127.0.0.1");
    assert!(!read["request_id"].as_str().unwrap().is_empty());
    assert!(!String::from_utf8_lossy(&page.raw).contains("hidden title"));
    let filtered = app.get("/v1/audit?action=record.read", &tok).await;
    assert_eq!(actions(&filtered.body), ["record.read"]);
    assert_eq!(app.get("/v1/audit?since=yesterday", &tok).await.status, 400);

    let key = public_key(&app).await;
    let cp = app.get("/v1/audit/checkpoint", &tok).await;
    assert_eq!(cp.status, 200);
    assert_eq!(cp.body["log"], t.to_string());
    let size = cp.body["size"].as_u64().unwrap();
    // The listing itself was recorded too, but is not yet checkpointed.
    assert_eq!(size, 5);
    for seq in 0..size {
        let p = app
            .get(
                &format!("/v1/audit/proof/inclusion?seq={seq}&size={size}"),
                &tok,
            )
            .await;
        assert_eq!(p.status, 200, "{:?}", p.body);
        let p: InclusionProofJson = serde_json::from_value(p.body).unwrap();
        verify_inclusion_json(&p, &key, Some(LogId::Tenant(t))).unwrap();
    }
    checkpoint_now(&app).await;
    let cp2 = app.get("/v1/audit/checkpoint", &tok).await;
    let size2 = cp2.body["size"].as_u64().unwrap();
    assert!(size2 > size);
    let c = app
        .get(
            &format!("/v1/audit/proof/consistency?from={size}&to={size2}"),
            &tok,
        )
        .await;
    assert_eq!(c.status, 200, "{:?}", c.body);
    let c: ConsistencyProofJson = serde_json::from_value(c.body).unwrap();
    verify_consistency_json(&c, &key, Some(LogId::Tenant(t))).unwrap();
    // Sizes without a checkpoint have no proof.
    let none = app
        .get(
            &format!("/v1/audit/proof/inclusion?seq=0&size={}", size2 + 100),
            &tok,
        )
        .await;
    assert_eq!(none.status, 404);
    assert_eq!(
        app.get("/v1/audit/proof/inclusion?seq=0", &tok)
            .await
            .status,
        400
    );
}

async fn tenant_audit_endpoints_are_isolated(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (ta, tok_a) = app.tenant_with_notes("a").await;
    let (tb, tok_b) = app.tenant_with_notes("b").await;
    let rec = app.note(&tok_a, "a-only").await;
    let id = rec["id"].as_str().unwrap().to_owned();
    checkpoint_now(&app).await;
    // Positive twin: A's log holds A's record.
    let a = app.get("/v1/audit", &tok_a).await;
    assert!(String::from_utf8_lossy(&a.raw).contains(&id));
    // B's log never holds anything of A's, whatever B asks for.
    for path in [
        "/v1/audit".to_owned(),
        "/v1/audit?action=record.create&cursor=0".to_owned(),
        "/v1/audit/checkpoint".to_owned(),
    ] {
        let r = app
            .call(
                "GET",
                &path,
                Some(&tok_b),
                None,
                &[("x-tenant-id", &tb.to_string())],
            )
            .await;
        assert_eq!(r.status, 200, "{path}");
        let text = String::from_utf8_lossy(&r.raw);
        assert!(
            !text.contains(&id) && !text.contains(&ta.to_string()),
            "{path}: {text}"
        );
    }
    // Naming A in the header does not switch logs: it is refused.
    let r = app
        .call(
            "GET",
            "/v1/audit",
            Some(&tok_b),
            None,
            &[("x-tenant-id", &ta.to_string())],
        )
        .await;
    assert_eq!(r.status, 403);
    // B's proofs are about B's log only: B's checkpoint is B's, and a proof B gets never
    // verifies as A's.
    let key = public_key(&app).await;
    let cpb = app.get("/v1/audit/checkpoint", &tok_b).await;
    assert_eq!(cpb.body["log"], tb.to_string());
    let size = cpb.body["size"].as_u64().unwrap();
    let p = app
        .get(
            &format!("/v1/audit/proof/inclusion?seq=0&size={size}"),
            &tok_b,
        )
        .await;
    let p: InclusionProofJson = serde_json::from_value(p.body).unwrap();
    verify_inclusion_json(&p, &key, Some(LogId::Tenant(tb))).unwrap();
    assert!(verify_inclusion_json(&p, &key, Some(LogId::Tenant(ta))).is_err());
    // Readers and members of A cannot read A's log (admins can: above).
    for role in ["reader", "member"] {
        let tok = app.token(ta, &[role]).await;
        assert_eq!(app.get("/v1/audit", &tok).await.status, 403, "{role}");
    }
}

async fn denials_and_refused_tokens_are_recorded(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (t, admin) = app.tenant_with_notes("a").await;
    let reader = app.token(t, &["reader"]).await;
    let r = app
        .post(
            "/v1/collections/notes/records",
            &reader,
            serde_json::json!({"data": {"title": "x"}}),
        )
        .await;
    assert_eq!(r.status, 403);
    let bad = app.get("/v1/collections", "not-a-token").await;
    assert_eq!(bad.status, 401);
    checkpoint_now(&app).await;
    let page = app.get("/v1/audit?action=record:create", &admin).await;
    let items = page.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{:?}", page.body);
    assert_eq!(items[0]["outcome"], "denied");
    assert_eq!(items[0]["actor"]["roles"], "reader");
    // The refused token is in the operator log, with its reason class, never the token.
    let op = app
        .get("/v1/audit/logs/operator?action=auth.token", ADMIN)
        .await;
    assert_eq!(op.status, 200, "{:?}", op.body);
    let items = op.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["outcome"], "rejected");
    assert_eq!(items[0]["reason"], "malformed");
    assert!(!String::from_utf8_lossy(&op.raw).contains("not-a-token"));
}

async fn limit_events_are_recorded_once_per_period(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let r = app
        .call(
            "PUT",
            "/v1/tiers/trickle",
            Some(ADMIN),
            Some(serde_json::json!({"rate_per_second": 0.01, "burst": 1})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let (limited, limited_admin) = app.tenant_with_notes("limited").await;
    let (_, other_admin) = app.tenant_with_notes("other").await;
    let r = app
        .call(
            "PATCH",
            &format!("/v1/tenants/{limited}"),
            Some(ADMIN),
            Some(serde_json::json!({"tier": "trickle"})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // The first request fits the burst; the next five are refused within the period.
    let reader = app.token(limited, &["reader"]).await;
    let statuses: Vec<u16> = {
        let mut out = Vec::new();
        for _ in 0..6 {
            out.push(
                app.get("/v1/collections/notes/records", &reader)
                    .await
                    .status,
            );
        }
        out
    };
    assert_eq!(statuses[0], 200, "{statuses:?}");
    assert!(statuses[1..].iter().all(|s| *s == 429), "{statuses:?}");
    // Five refusals, one entry: a flood cannot make the audit log write at its rate.
    checkpoint_now(&app).await;
    let page = app
        .get(&format!("/v1/audit/logs/{limited}?action=limit"), ADMIN)
        .await;
    assert_eq!(page.status, 200, "{:?}", page.body);
    let limits = page.body["items"].as_array().unwrap();
    assert_eq!(limits.len(), 1, "{:?}", page.body);
    assert_eq!(limits[0]["outcome"], "limited");
    assert_eq!(limits[0]["reason"], "rate");
    assert!(
        limits[0]["resource"]
            .as_str()
            .unwrap()
            .contains("/v1/collections/notes/records")
    );
    // Twin: a tenant within its limits has no limit event in its log.
    let page = app.get("/v1/audit?action=limit", &other_admin).await;
    assert_eq!(page.status, 200, "{:?}", page.body);
    assert!(actions(&page.body).is_empty(), "{:?}", page.body);
    drop(limited_admin);
}

async fn operator_reads_any_log(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (t, tok) = app.tenant_with_notes("a").await;
    checkpoint_now(&app).await;
    let r = app.get(&format!("/v1/audit/logs/{t}"), ADMIN).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        actions(&r.body)[..3],
        ["tenant.create", "token.mint", "collection.put"]
    );
    let op = app.get("/v1/audit/logs/operator", ADMIN).await;
    assert!(actions(&op.body).contains(&"tenant.create".to_owned()));
    let cp = app
        .get(&format!("/v1/audit/logs/{t}/checkpoint"), ADMIN)
        .await;
    assert_eq!(cp.status, 200);
    // The operator routes are the operator's: a tenant token is refused there.
    assert_eq!(
        app.get(&format!("/v1/audit/logs/{t}"), &tok).await.status,
        401
    );
    assert_eq!(app.get("/v1/audit/logs/nope", ADMIN).await.status, 400);
}
