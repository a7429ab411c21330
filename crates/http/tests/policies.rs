//! Policies through the real server, on both backends: the default role rules, denial
//! problems, tenant policies (validation, versions, rollback, dry runs) and their isolation,
//! owners, field classification (masking and filters) and the platform layer.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

mod common;

use bulkhead_http::HttpConfig;
use common::{ADMIN, Backend, TestApp, both_backends};
use serde_json::{Value, json};

both_backends!(
    denials_name_the_action_and_nothing_else,
    tenant_policies_never_reach_another_tenant,
    policy_changes_are_validated_versioned_and_rolled_back,
    dry_run_says_which_policies_decided,
    owners_can_be_required_by_policy,
    classified_fields_are_masked_and_cannot_be_filtered,
    platform_policies_need_the_operator_and_apply_to_every_tenant,
);

const MEMBERS_NO_DELETE: &str = "@id(\"no-member-deletes\")\nforbid (principal in Bulkhead::Role::\"member\", action == Bulkhead::Action::\"record:delete\", resource);\n";

const OWNER_ONLY: &str = r#"@id("edit-own")
forbid (
    principal in Bulkhead::Role::"member",
    action in [Bulkhead::Action::"record:update", Bulkhead::Action::"record:delete"],
    resource
) unless { resource has owner && resource.owner == principal.subject };
"#;

async fn put_policies(app: &TestApp, token: &str, text: &str) -> common::Resp {
    app.call(
        "PUT",
        "/v1/policies",
        Some(token),
        Some(json!({ "policies": text })),
        &[],
    )
    .await
}

fn note_path(id: &str) -> String {
    format!("/v1/collections/notes/records/{id}")
}

async fn denials_name_the_action_and_nothing_else(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (a, _admin) = app.tenant_with_notes("a").await;
    let reader = app.token(a, &["reader"]).await;
    let member = app.token(a, &["member"]).await;
    let r = app
        .post(
            "/v1/collections/notes/records",
            &reader,
            json!({"data": {"title": "x"}}),
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.problem_type(), "urn:bulkhead:problem:forbidden");
    assert_eq!(
        r.body["detail"],
        "the policy in force does not allow `record:create`"
    );
    let raw = String::from_utf8_lossy(&r.raw);
    assert!(
        !raw.contains("permit") && !raw.contains("default-"),
        "{raw}"
    );
    // Members do not manage policies or collections; admins do.
    assert_eq!(put_policies(&app, &member, "").await.status, 403);
    assert_eq!(app.get("/v1/policies", &member).await.status, 403);
    let c = app
        .call(
            "PUT",
            "/v1/collections/x",
            Some(&member),
            Some(json!({"schema": {"type": "object"}})),
            &[],
        )
        .await;
    assert_eq!(
        (c.status, c.body["detail"].as_str()),
        (
            403,
            Some("the policy in force does not allow `collection:manage`")
        )
    );
    // Positive twin: the member writes records, the reader reads them.
    let rec = app.note(&member, "ok").await;
    let id = rec["id"].as_str().unwrap();
    assert_eq!(app.get(&note_path(id), &reader).await.status, 200);
}

async fn tenant_policies_never_reach_another_tenant(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (a, admin_a) = app.tenant_with_notes("a").await;
    let (b, _admin_b) = app.tenant_with_notes("b").await;
    let member_a = app.token(a, &["member"]).await;
    let member_b = app.token(b, &["member"]).await;
    let r = put_policies(&app, &admin_a, MEMBERS_NO_DELETE).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    // A's member cannot delete in A.
    let ra = app.note(&member_a, "a1").await;
    let d = app
        .call(
            "DELETE",
            &note_path(ra["id"].as_str().unwrap()),
            Some(&member_a),
            None,
            &[],
        )
        .await;
    assert_eq!(
        (d.status, d.body["detail"].as_str()),
        (
            403,
            Some("the policy in force does not allow `record:delete`")
        )
    );
    // Positive twin: B's member, same request in B, is not touched by A's policy.
    let rb = app.note(&member_b, "b1").await;
    let d = app
        .call(
            "DELETE",
            &note_path(rb["id"].as_str().unwrap()),
            Some(&member_b),
            None,
            &[],
        )
        .await;
    assert_eq!(d.status, 204, "{:?}", d.body);
    // B's view of policies knows nothing of A's.
    let admin_b = app.token(b, &["admin"]).await;
    let pb = app.get("/v1/policies", &admin_b).await;
    assert_eq!(pb.status, 200);
    assert_eq!(pb.body["version"], Value::Null);
    assert!(!pb.raw.windows(17).any(|w| w == b"no-member-deletes"));
    let vb = app.get("/v1/policies/versions", &admin_b).await;
    assert_eq!(vb.body["items"], json!([]));
    // And A's does.
    let pa = app.get("/v1/policies", &admin_a).await;
    assert_eq!(pa.body["version"], 1);
    assert!(
        pa.body["policy_ids"]
            .as_array()
            .unwrap()
            .contains(&json!("tenant/v1/no-member-deletes"))
    );
    // A tenant cannot roll back to a version that only exists in another tenant.
    let rb = app
        .post("/v1/policies/rollback", &admin_b, json!({"version": 1}))
        .await;
    assert_eq!(rb.status, 404);
}

async fn policy_changes_are_validated_versioned_and_rolled_back(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (a, admin) = app.tenant_with_notes("a").await;
    let member = app.token(a, &["member"]).await;
    // Every error is listed with its location.
    let bad = "forbid (principal, action, resource)\nwhen { principal.nope == 1 };\nforbid (principal, action == Bulkhead::Action::\"record:fly\", resource);\n";
    let r = put_policies(&app, &admin, bad).await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    assert_eq!(r.problem_type(), "urn:bulkhead:problem:invalid-policy");
    let errors = r.body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(
        (errors[0]["line"].as_u64(), errors[1]["line"].as_u64()),
        (Some(2), Some(3))
    );
    assert!(errors.iter().all(|e| e["column"].as_u64().unwrap() >= 1));
    // A permit could only loosen: refused.
    let r = put_policies(&app, &admin, "permit (principal, action, resource);").await;
    assert_eq!(r.status, 422);
    assert!(
        r.body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("forbid")
    );
    // Nothing was stored by the refusals.
    assert_eq!(
        app.get("/v1/policies/versions", &admin).await.body["items"],
        json!([])
    );
    // v1 forbids member deletes; v2 clears it; rollback to v1 makes v3.
    assert_eq!(
        put_policies(&app, &admin, MEMBERS_NO_DELETE).await.status,
        201
    );
    let rec = app.note(&member, "n").await;
    let path = note_path(rec["id"].as_str().unwrap());
    assert_eq!(
        app.call("DELETE", &path, Some(&member), None, &[])
            .await
            .status,
        403
    );
    let v2 = put_policies(&app, &admin, "").await;
    assert_eq!((v2.status, v2.body["version"].as_u64()), (201, Some(2)));
    let rec2 = app.note(&member, "m").await;
    let path2 = note_path(rec2["id"].as_str().unwrap());
    assert_eq!(
        app.call("DELETE", &path2, Some(&member), None, &[])
            .await
            .status,
        204
    );
    let v3 = app
        .post("/v1/policies/rollback", &admin, json!({"version": 1}))
        .await;
    assert_eq!(v3.status, 201, "{:?}", v3.body);
    assert_eq!(
        (
            v3.body["version"].as_u64(),
            v3.body["restored_from"].as_u64()
        ),
        (Some(3), Some(1))
    );
    assert_eq!(
        app.call("DELETE", &path, Some(&member), None, &[])
            .await
            .status,
        403
    );
    let versions = app.get("/v1/policies/versions", &admin).await;
    let items = versions.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["created_by"], "user-1");
    assert_eq!(items[2]["text"], MEMBERS_NO_DELETE);
    // Members cannot change policies, nor roll them back.
    assert_eq!(
        app.post("/v1/policies/rollback", &member, json!({"version": 2}))
            .await
            .status,
        403
    );
}

async fn dry_run_says_which_policies_decided(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_a, admin) = app.tenant_with_notes("a").await;
    assert_eq!(put_policies(&app, &admin, OWNER_ONLY).await.status, 201);
    let ask = |subject: &str, roles: Value, owner: &str| {
        json!({
            "principal": {"subject": subject, "roles": roles},
            "action": "record:update",
            "resource": {"type": "record", "collection": "notes", "owner": owner}
        })
    };
    let r = app
        .post(
            "/v1/policies/check",
            &admin,
            ask("bob", json!(["member"]), "alice"),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["decision"], "deny");
    assert_eq!(r.body["decided_by"], json!(["tenant/v1/edit-own"]));
    assert_eq!(r.body["version"], 1);
    let r = app
        .post(
            "/v1/policies/check",
            &admin,
            ask("alice", json!(["member"]), "alice"),
        )
        .await;
    assert_eq!(
        (r.body["decision"].as_str(), &r.body["decided_by"]),
        (Some("allow"), &json!(["default/default-member"]))
    );
    let r = app
        .post(
            "/v1/policies/check",
            &admin,
            ask("x", json!(["reader"]), "x"),
        )
        .await;
    assert_eq!(
        (r.body["decision"].as_str(), &r.body["decided_by"]),
        (Some("deny"), &json!([]))
    );
    // Without a principal: the caller.
    let r = app
        .post(
            "/v1/policies/check",
            &admin,
            json!({"action": "policy:manage", "resource": {"type": "tenant"}}),
        )
        .await;
    assert_eq!(r.body["decision"], "allow");
    let r = app
        .post(
            "/v1/policies/check",
            &admin,
            json!({"action": "record:fly", "resource": {"type": "tenant"}}),
        )
        .await;
    assert_eq!(r.status, 400);
}

async fn owners_can_be_required_by_policy(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let a = app.tenant("a").await;
    let admin = app.token_for(a, "root", &["admin"]).await;
    let alice = app.token_for(a, "alice", &["member"]).await;
    let bob = app.token_for(a, "bob", &["member"]).await;
    let r = app
        .call(
            "PUT",
            "/v1/collections/tasks",
            Some(&admin),
            Some(json!({
                "schema": {"type": "object", "properties": {"title": {"type": "string"}, "owner": {"type": "string"}}},
                "owner_field": "owner"
            })),
            &[],
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["owner_field"], "owner");
    assert_eq!(put_policies(&app, &admin, OWNER_ONLY).await.status, 201);
    // The owner defaults to the creator.
    let t = app
        .post(
            "/v1/collections/tasks/records",
            &alice,
            json!({"data": {"title": "t"}}),
        )
        .await;
    assert_eq!(t.status, 201);
    assert_eq!(t.body["data"]["owner"], "alice");
    let path = format!(
        "/v1/collections/tasks/records/{}",
        t.body["id"].as_str().unwrap()
    );
    let put = |tok: String| {
        let (app, path) = (&app, path.clone());
        async move {
            app.call(
                "PUT",
                &path,
                Some(&tok),
                Some(json!({"data": {"title": "changed"}})),
                &[("if-match", "1")],
            )
            .await
        }
    };
    // Bob may read it but not edit or delete it.
    assert_eq!(app.get(&path, &bob).await.status, 200);
    let r = put(bob.clone()).await;
    assert_eq!(
        (r.status, r.body["detail"].as_str()),
        (
            403,
            Some("the policy in force does not allow `record:update`")
        )
    );
    assert_eq!(
        app.call("DELETE", &path, Some(&bob), None, &[])
            .await
            .status,
        403
    );
    // Positive twin: Alice may; the owner is kept when the new data leaves it out.
    let r = put(alice.clone()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["data"]["owner"], "alice");
    assert_eq!(
        app.call("DELETE", &path, Some(&alice), None, &[])
            .await
            .status,
        204
    );
    // An owner field must be a declared string.
    let r = app
        .call(
            "PUT",
            "/v1/collections/bad",
            Some(&admin),
            Some(json!({"schema": {"type": "object"}, "owner_field": "owner"})),
            &[],
        )
        .await;
    assert_eq!(r.status, 422);
}

async fn classified_fields_are_masked_and_cannot_be_filtered(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let a = app.tenant("a").await;
    let admin = app.token(a, &["admin"]).await;
    let member = app.token(a, &["member"]).await;
    let reader = app.token(a, &["reader"]).await;
    let r = app
        .call(
            "PUT",
            "/v1/collections/people",
            Some(&admin),
            Some(json!({
                "schema": {"type": "object", "properties": {
                    "name": {"type": "string", "x-classification": "public"},
                    "team": {"type": "string", "x-classification": "internal"},
                    "salary": {"type": "integer", "x-classification": "confidential"},
                    "ssn": {"type": "string", "pattern": "^[0-9]{3}-[0-9]{2}-[0-9]{4}$", "x-classification": "restricted"}
                }},
                "indexes": ["name", "ssn", "salary"]
            })),
            &[],
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let full = json!({"name": "Ann", "team": "ops", "salary": 100, "ssn": "123-45-6789"});
    let c = app
        .post(
            "/v1/collections/people/records",
            &admin,
            json!({"data": full}),
        )
        .await;
    assert_eq!(c.status, 201);
    assert_eq!(c.body["data"], full);
    let id = c.body["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/collections/people/records/{id}");
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    // Reader: public and internal only, on reads and lists.
    let r = app.get(&path, &reader).await;
    assert_eq!(keys(&r.body["data"]), vec!["name", "team"]);
    let l = app.get("/v1/collections/people/records", &reader).await;
    assert_eq!(keys(&l.body["items"][0]["data"]), vec!["name", "team"]);
    assert!(!l.raw.windows(11).any(|w| w == b"123-45-6789"));
    // Member: also confidential.
    let r = app.get(&path, &member).await;
    assert_eq!(keys(&r.body["data"]), vec!["name", "salary", "team"]);
    // Admin: everything (positive twin).
    assert_eq!(app.get(&path, &admin).await.body["data"], full);
    // Filters on hidden fields are refused, not answered empty.
    let f = app
        .get(
            "/v1/collections/people/records?where.ssn=123-45-6789",
            &reader,
        )
        .await;
    assert_eq!(
        (f.status, f.problem_type()),
        (403, "urn:bulkhead:problem:hidden-field-filter")
    );
    let f = app
        .get("/v1/collections/people/records?where.salary=100", &reader)
        .await;
    assert_eq!(f.status, 403);
    let f = app
        .get("/v1/collections/people/records?where.salary=100", &member)
        .await;
    assert_eq!(
        (f.status, f.body["items"].as_array().map(Vec::len)),
        (200, Some(1))
    );
    let f = app
        .get(
            "/v1/collections/people/records?where.ssn=123-45-6789",
            &admin,
        )
        .await;
    assert_eq!(
        (f.status, f.body["items"].as_array().map(Vec::len)),
        (200, Some(1))
    );
    // A member's update keeps the restricted field it cannot see.
    let u = app
        .call(
            "PUT",
            &path,
            Some(&member),
            Some(json!({"data": {"name": "Ann B", "team": "ops", "salary": 120}})),
            &[("if-match", "1")],
        )
        .await;
    assert_eq!(u.status, 200, "{:?}", u.body);
    assert!(u.body["data"].get("ssn").is_none());
    assert_eq!(
        app.get(&path, &admin).await.body["data"]["ssn"],
        "123-45-6789"
    );
    // A restricted value never appears in a validation error.
    let bad = app
        .post(
            "/v1/collections/people/records",
            &admin,
            json!({"data": {"name": "B", "ssn": "secret-not-an-ssn"}}),
        )
        .await;
    assert_eq!(bad.status, 422);
    assert!(
        !String::from_utf8_lossy(&bad.raw).contains("secret-not-an-ssn"),
        "{:?}",
        bad.body
    );
    // A tenant policy can narrow masking further: readers lose `internal` too.
    let narrow = "forbid (principal in Bulkhead::Role::\"reader\", action == Bulkhead::Action::\"field:read\", resource) when { resource.classification == \"internal\" };";
    assert_eq!(put_policies(&app, &admin, narrow).await.status, 201);
    assert_eq!(
        keys(&app.get(&path, &reader).await.body["data"]),
        vec!["name"]
    );
}

async fn platform_policies_need_the_operator_and_apply_to_every_tenant(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = HttpConfig {
        policy_dir: Some(dir.path().to_path_buf()),
        ..HttpConfig::default()
    };
    let app = TestApp::spawn_with(backend, cfg).await;
    let (a, admin_a) = app.tenant_with_notes("a").await;
    let (_b, admin_b) = app.tenant_with_notes("b").await;
    // Before: admins delete.
    let ra = app.note(&admin_a, "x").await;
    let pa = note_path(ra["id"].as_str().unwrap());
    std::fs::write(
        dir.path().join("freeze.cedar"),
        "@id(\"no-deletes\") forbid (principal, action == Bulkhead::Action::\"record:delete\", resource);",
    )
    .unwrap();
    // The operator API needs the operator credential.
    assert_eq!(
        app.post("/v1/platform/policies/reload", &admin_a, json!({}))
            .await
            .status,
        401
    );
    assert_eq!(app.get("/v1/platform/policies", &admin_a).await.status, 401);
    let r = app
        .call(
            "POST",
            "/v1/platform/policies/reload",
            Some(ADMIN),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["files"][0]["name"], "freeze.cedar");
    // Every tenant inherits it; a tenant cannot loosen it (a permit is refused).
    assert_eq!(
        app.call("DELETE", &pa, Some(&admin_a), None, &[])
            .await
            .status,
        403
    );
    let rb = app.note(&admin_b, "y").await;
    let pb = note_path(rb["id"].as_str().unwrap());
    assert_eq!(
        app.call("DELETE", &pb, Some(&admin_b), None, &[])
            .await
            .status,
        403
    );
    assert_eq!(
        put_policies(
            &app,
            &admin_a,
            "permit (principal, action == Bulkhead::Action::\"record:delete\", resource);"
        )
        .await
        .status,
        422
    );
    // An invalid file is refused with its problems and changes nothing.
    std::fs::write(
        dir.path().join("broken.cedar"),
        "forbid (principal, action, resource) when { 1 };",
    )
    .unwrap();
    let r = app
        .call(
            "POST",
            "/v1/platform/policies/reload",
            Some(ADMIN),
            None,
            &[],
        )
        .await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body["errors"][0]["source"], "broken.cedar");
    assert_eq!(
        app.call("DELETE", &pa, Some(&admin_a), None, &[])
            .await
            .status,
        403
    );
    // Hot reload: the watcher applies a fixed directory by itself.
    let engine = app.state.policy.engine().unwrap().clone();
    let before = engine.platform_sources().0;
    let watcher = bulkhead_http::policy::watch_policy_dir(
        engine.clone(),
        dir.path().to_path_buf(),
        std::time::Duration::from_millis(20),
    );
    std::fs::remove_file(dir.path().join("broken.cedar")).unwrap();
    std::fs::remove_file(dir.path().join("freeze.cedar")).unwrap();
    let mut applied = false;
    for _ in 0..500 {
        if engine.platform_sources().0 > before {
            applied = true;
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    watcher.abort();
    assert!(applied, "the watcher did not reload the directory");
    // Positive twin of the freeze: deletes are allowed again.
    assert_eq!(
        app.call("DELETE", &pa, Some(&admin_a), None, &[])
            .await
            .status,
        204
    );
    let _ = a;
}
