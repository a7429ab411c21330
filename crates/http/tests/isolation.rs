//! Cross-tenant attacks through the real HTTP server, each beside its positive twin.
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

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bulkhead_core::token::Claims;
use bulkhead_core::{RecordId, TenantId};
use common::{ADMIN, Backend, TestApp, both_backends, settings};
use serde_json::{Value, json};

both_backends!(
    tenant_b_cannot_see_tenant_a_records,
    collections_are_invisible_across_tenants,
    token_naming_a_but_signed_with_b_key_is_refused,
    hostile_token_headers_are_refused,
    wrong_audience_issuer_and_time_window_are_refused,
    malformed_and_oversized_tokens_are_refused,
    x_tenant_id_must_agree_with_the_token,
    suspended_deleted_and_unknown_tenants,
    roles_are_enforced_within_a_tenant,
    planes_do_not_accept_each_others_credentials,
    jwks_lists_only_that_tenants_keys,
    idempotency_keys_do_not_cross_tenants,
);

fn note_path(id: &str) -> String {
    format!("/v1/collections/notes/records/{id}")
}

async fn tenant_b_cannot_see_tenant_a_records(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, ta) = app.tenant_with_notes("a").await;
    let (_, tb) = app.tenant_with_notes("b").await;
    let rec = app.note(&ta, "secret plan").await;
    let id = rec["id"].as_str().unwrap();
    // Positive twin: A reads A.
    let own = app.get(&note_path(id), &ta).await;
    assert_eq!(own.status, 200);
    assert_eq!(own.body["data"]["title"], "secret plan");
    // B gets the very same answer for A's id as for an id that never existed.
    let foreign = app.get(&note_path(id), &tb).await;
    let missing = app
        .get(&note_path(&RecordId::generate().to_string()), &tb)
        .await;
    assert_eq!(foreign.status, 404);
    assert_eq!(foreign.raw, missing.raw, "no existence oracle");
    // B cannot overwrite or delete it either.
    let put = app
        .call(
            "PUT",
            &note_path(id),
            Some(&tb),
            Some(json!({"data": {"title": "pwned"}})),
            &[("if-match", "1")],
        )
        .await;
    assert_eq!(put.status, 404);
    let del = app
        .call("DELETE", &note_path(id), Some(&tb), None, &[])
        .await;
    assert_eq!(del.status, 404);
    // B's list and filters do not include it.
    let list = app.get("/v1/collections/notes/records", &tb).await;
    assert_eq!(list.body["items"], json!([]));
    let filtered = app
        .get(
            "/v1/collections/notes/records?where.title=secret%20plan",
            &tb,
        )
        .await;
    assert_eq!(filtered.body["items"], json!([]));
    let own_filtered = app
        .get(
            "/v1/collections/notes/records?where.title=secret%20plan",
            &ta,
        )
        .await;
    assert_eq!(own_filtered.body["items"].as_array().unwrap().len(), 1);
    // A's record is unchanged.
    assert_eq!(app.get(&note_path(id), &ta).await.body["version"], 1);
}

async fn collections_are_invisible_across_tenants(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, ta) = app.tenant_with_notes("a").await;
    let b = app.tenant("b").await;
    let tb = app.token(b, &["admin"]).await;
    assert_eq!(app.get("/v1/collections/notes", &ta).await.status, 200);
    let foreign = app.get("/v1/collections/notes", &tb).await;
    let missing = app.get("/v1/collections/nothing", &tb).await;
    assert_eq!(foreign.status, 404);
    assert_eq!(foreign.raw, missing.raw);
    assert_eq!(
        app.get("/v1/collections", &tb).await.body["items"],
        json!([])
    );
    assert_eq!(
        app.get("/v1/collections", &ta).await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Writing into "notes" as B fails: B has no such collection.
    let w = app
        .post(
            "/v1/collections/notes/records",
            &tb,
            json!({"data": {"title": "x"}}),
        )
        .await;
    assert_eq!(w.status, 404);
}

/// Re-signs `claims` with the header `header`, using tenant `signer`'s real private key.
async fn sign_with(app: &TestApp, signer: TenantId, header: Value, claims: &Value) -> String {
    let key = app.store.active_signing_key(signer).await.unwrap();
    let mut header = header;
    if header.get("kid").is_none() {
        header["kid"] = json!(key.public().kid.as_str());
    }
    let h = B64.encode(serde_json::to_vec(&header).unwrap());
    let p = B64.encode(serde_json::to_vec(claims).unwrap());
    let signing_input = format!("{h}.{p}");
    if header.as_object().unwrap().len() == 3 && header["typ"] == "JWT" && header["alg"] == "EdDSA"
    {
        // The header Bulkhead itself writes: sign through the library.
        let c: Claims = serde_json::from_value(claims.clone()).unwrap();
        return key.sign(&c).unwrap();
    }
    // Any other header: sign the exact bytes with the tenant's Ed25519 key.
    use ed25519_dalek::Signer;
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    let sk = ed25519_dalek::SigningKey::from_pkcs8_der(key.pkcs8_der()).unwrap();
    let sig = sk.sign(signing_input.as_bytes());
    format!("{signing_input}.{}", B64.encode(sig.to_bytes()))
}

fn claims_for(tenant: TenantId, now: i64) -> Value {
    json!({
        "iss": settings().issuer_for(tenant),
        "aud": "bulkhead",
        "sub": "mallory",
        "tid": tenant.to_string(),
        "roles": ["admin"],
        "iat": now, "nbf": now, "exp": now + 600,
        "jti": "j1"
    })
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

async fn token_naming_a_but_signed_with_b_key_is_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (a, _) = app.tenant_with_notes("a").await;
    let b = app.tenant("b").await;
    let std_header = json!({"typ": "JWT", "alg": "EdDSA"});
    let forged = sign_with(&app, b, std_header.clone(), &claims_for(a, now())).await;
    let r = app.get("/v1/collections/notes/records", &forged).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.problem_type(), "urn:bulkhead:problem:invalid-token");
    // Positive twin: the same claims signed with A's own key are accepted.
    let genuine = sign_with(&app, a, std_header, &claims_for(a, now())).await;
    assert_eq!(
        app.get("/v1/collections/notes/records", &genuine)
            .await
            .status,
        200
    );
}

async fn hostile_token_headers_are_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (a, ta) = app.tenant_with_notes("a").await;
    let kid = app
        .store
        .active_signing_key(a)
        .await
        .unwrap()
        .public()
        .kid
        .as_str()
        .to_owned();
    let jwk = app.store.public_keys(a).await.unwrap()[0].to_jwk();
    let claims = claims_for(a, now());
    let cases = [
        json!({"alg": "none", "kid": kid}),
        json!({"alg": "EdDSA", "kid": kid, "crit": ["exp"]}),
        json!({"alg": "EdDSA", "kid": kid, "jku": "http://127.0.0.1:9/jwks.json"}),
        json!({"alg": "EdDSA", "kid": kid, "x5u": "http://127.0.0.1:9/cert.pem"}),
        json!({"alg": "EdDSA", "kid": kid, "jwk": jwk}),
        json!({"alg": "EdDSA", "kid": "k-unknown"}),
    ];
    for h in cases {
        let t = sign_with(&app, a, h.clone(), &claims).await;
        let r = app.get("/v1/collections/notes/records", &t).await;
        assert_eq!(r.status, 401, "{h}");
    }
    // alg none with an empty signature.
    let none = format!(
        "{}.{}.",
        B64.encode(serde_json::to_vec(&json!({"alg": "none", "kid": kid})).unwrap()),
        B64.encode(serde_json::to_vec(&claims).unwrap())
    );
    assert_eq!(
        app.get("/v1/collections/notes/records", &none).await.status,
        401
    );
    // HS256 keyed with the tenant's public key bytes (algorithm confusion).
    let public = &app.store.public_keys(a).await.unwrap()[0].bytes;
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some(kid.clone()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
        },
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(public),
    )
    .unwrap();
    assert_eq!(
        app.get("/v1/collections/notes/records", &hs).await.status,
        401
    );
    // Positive twin.
    assert_eq!(
        app.get("/v1/collections/notes/records", &ta).await.status,
        200
    );
}

async fn wrong_audience_issuer_and_time_window_are_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (a, ta) = app.tenant_with_notes("a").await;
    let std_header = json!({"typ": "JWT", "alg": "EdDSA"});
    let mut c = claims_for(a, now());
    c["aud"] = json!("someone-else");
    assert_eq!(
        app.get(
            "/v1/collections/notes/records",
            &sign_with(&app, a, std_header.clone(), &c).await
        )
        .await
        .status,
        401
    );
    let mut c = claims_for(a, now());
    c["iss"] = json!("https://evil.test/tenants/x");
    assert_eq!(
        app.get(
            "/v1/collections/notes/records",
            &sign_with(&app, a, std_header.clone(), &c).await
        )
        .await
        .status,
        401
    );
    // Expired beyond the 30 s leeway, and not valid until beyond it.
    let c = claims_for(a, now() - 700);
    let r = app
        .get(
            "/v1/collections/notes/records",
            &sign_with(&app, a, std_header.clone(), &c).await,
        )
        .await;
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (401, Some("expired"))
    );
    let c = claims_for(a, now() + 120);
    let r = app
        .get(
            "/v1/collections/notes/records",
            &sign_with(&app, a, std_header.clone(), &c).await,
        )
        .await;
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (401, Some("not_yet_valid"))
    );
    // Within the leeway is fine (positive twin).
    let c = claims_for(a, now() + 10);
    assert_eq!(
        app.get(
            "/v1/collections/notes/records",
            &sign_with(&app, a, std_header, &c).await
        )
        .await
        .status,
        200
    );
    // A cached, verified token still expires: move the clock past its expiry.
    assert_eq!(
        app.get("/v1/collections/notes/records", &ta).await.status,
        200
    );
    app.clock_offset
        .store(700, std::sync::atomic::Ordering::SeqCst);
    let r = app.get("/v1/collections/notes/records", &ta).await;
    assert_eq!(
        (r.status, r.body["reason"].as_str()),
        (401, Some("expired"))
    );
}

async fn malformed_and_oversized_tokens_are_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, ta) = app.tenant_with_notes("a").await;
    let (hp, sig) = ta.rsplit_once('.').unwrap();
    let bad = [
        format!("{ta}="),
        format!("{hp}.{sig}=="),
        ta.replace('-', "+").replace('_', "/"),
        format!("{hp}.{}", "A".repeat(9000)),
        "not-a-token".to_string(),
        format!("{ta}.{sig}"),
    ];
    for t in bad {
        if t == ta {
            continue;
        }
        let r = app.get("/v1/collections/notes/records", &t).await;
        assert_eq!(r.status, 401, "{}", &t[..t.len().min(40)]);
    }
    let none = app
        .call("GET", "/v1/collections/notes/records", None, None, &[])
        .await;
    assert_eq!(none.status, 401);
    assert_eq!(none.headers["www-authenticate"], "Bearer");
    assert_eq!(
        app.get("/v1/collections/notes/records", &ta).await.status,
        200
    );
}

async fn x_tenant_id_must_agree_with_the_token(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (a, ta) = app.tenant_with_notes("a").await;
    let b = app.tenant("b").await;
    let (a_s, b_s) = (a.to_string(), b.to_string());
    let path = "/v1/collections/notes/records";
    let ok = app
        .call("GET", path, Some(&ta), None, &[("x-tenant-id", &a_s)])
        .await;
    assert_eq!(ok.status, 200, "agreeing header is fine");
    let r = app
        .call("GET", path, Some(&ta), None, &[("x-tenant-id", &b_s)])
        .await;
    assert_eq!(
        (r.status, r.problem_type()),
        (403, "urn:bulkhead:problem:tenant-mismatch")
    );
    let r = app
        .call(
            "GET",
            path,
            Some(&ta),
            None,
            &[("x-tenant-id", &a_s), ("x-tenant-id", &b_s)],
        )
        .await;
    assert_eq!(r.status, 403, "one disagreeing header among several");
    let r = app
        .call("GET", path, Some(&ta), None, &[("x-tenant-id", "garbage")])
        .await;
    assert_eq!(r.status, 403);
}

async fn suspended_deleted_and_unknown_tenants(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (a, ta) = app.tenant_with_notes("a").await;
    let (_, tb) = app.tenant_with_notes("b").await;
    let path = "/v1/collections/notes/records";
    let r = app
        .call(
            "PATCH",
            &format!("/v1/tenants/{a}"),
            Some(ADMIN),
            Some(json!({"status": "suspended"})),
            &[],
        )
        .await;
    assert_eq!(r.body["status"], "suspended");
    let r = app.get(path, &ta).await;
    assert_eq!(
        (r.status, r.problem_type()),
        (403, "urn:bulkhead:problem:tenant-not-active")
    );
    assert_eq!(app.get(path, &tb).await.status, 200, "B is unaffected");
    let r = app
        .post(
            &format!("/v1/tenants/{a}/tokens"),
            ADMIN,
            json!({"subject": "s", "roles": ["member"]}),
        )
        .await;
    assert_eq!(r.status, 403, "no tokens for a suspended tenant");
    app.call(
        "PATCH",
        &format!("/v1/tenants/{a}"),
        Some(ADMIN),
        Some(json!({"status": "active"})),
        &[],
    )
    .await;
    assert_eq!(app.get(path, &ta).await.status, 200, "resumed");
    assert_eq!(
        app.call(
            "DELETE",
            &format!("/v1/tenants/{a}"),
            Some(ADMIN),
            None,
            &[]
        )
        .await
        .status,
        204
    );
    assert_eq!(
        app.get(path, &ta).await.status,
        401,
        "deleted tenant's keys are gone"
    );
    assert_eq!(
        app.get(&format!("/v1/tenants/{a}/jwks.json"), "x")
            .await
            .status,
        404
    );
    // A token for a tenant that never existed.
    let ghost = TenantId::generate();
    let forged = sign_with(
        &app,
        app.tenant("c").await,
        json!({"typ": "JWT", "alg": "EdDSA"}),
        &claims_for(ghost, now()),
    )
    .await;
    assert_eq!(app.get(path, &forged).await.status, 401);
    // Name reuse after deletion.
    assert_eq!(
        app.post("/v1/tenants", ADMIN, json!({"name": "a"}))
            .await
            .status,
        201
    );
}

async fn roles_are_enforced_within_a_tenant(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (a, admin) = app.tenant_with_notes("a").await;
    let reader = app.token(a, &["reader"]).await;
    let member = app.token(a, &["member"]).await;
    let rec = app.note(&member, "by member").await;
    let id = rec["id"].as_str().unwrap();
    assert_eq!(app.get(&note_path(id), &reader).await.status, 200);
    let w = app
        .post(
            "/v1/collections/notes/records",
            &reader,
            json!({"data": {"title": "x"}}),
        )
        .await;
    assert_eq!(
        (w.status, w.body["detail"].as_str()),
        (
            403,
            Some("the policy in force does not allow `record:create`")
        )
    );
    let d = app
        .call("DELETE", &note_path(id), Some(&reader), None, &[])
        .await;
    assert_eq!(d.status, 403);
    let c = app
        .call(
            "PUT",
            "/v1/collections/other",
            Some(&member),
            Some(json!({"schema": {"type": "object"}})),
            &[],
        )
        .await;
    assert_eq!(c.status, 403);
    let c = app
        .call(
            "PUT",
            "/v1/collections/other",
            Some(&admin),
            Some(json!({"schema": {"type": "object"}})),
            &[],
        )
        .await;
    assert_eq!(c.status, 201);
}

async fn planes_do_not_accept_each_others_credentials(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (a, ta) = app.tenant_with_notes("a").await;
    assert_eq!(
        app.get("/v1/tenants", &ta).await.status,
        401,
        "tenant token on the operator plane"
    );
    assert_eq!(app.get(&format!("/v1/tenants/{a}"), &ta).await.status, 401);
    assert_eq!(
        app.post(
            &format!("/v1/tenants/{a}/tokens"),
            &ta,
            json!({"subject": "x", "roles": ["admin"]})
        )
        .await
        .status,
        401
    );
    assert_eq!(
        app.get("/v1/collections/notes/records", ADMIN).await.status,
        401,
        "admin token on the tenant plane"
    );
    assert_eq!(
        app.get("/v1/tenants", "wrong-admin-token-0123456789")
            .await
            .status,
        401
    );
    assert_eq!(app.get("/v1/tenants", ADMIN).await.status, 200);
}

async fn jwks_lists_only_that_tenants_keys(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let a = app.tenant("a").await;
    let b = app.tenant("b").await;
    let ja = app.get(&format!("/v1/tenants/{a}/jwks.json"), "").await;
    let jb = app.get(&format!("/v1/tenants/{b}/jwks.json"), "").await;
    assert_eq!(ja.status, 200);
    let kids = |v: &Value| {
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let (ka, kb) = (kids(&ja.body), kids(&jb.body));
    assert_eq!(ka.len(), 1);
    assert!(ka.iter().all(|k| !kb.contains(k)));
    assert_eq!(ja.body["keys"][0]["kty"], "OKP");
    assert!(ja.body["keys"][0].get("d").is_none(), "no private material");
    // Rotation adds a key to A only; tokens from the old key keep working.
    let old = app.token(a, &["reader"]).await;
    let r = app
        .post(
            &format!("/v1/tenants/{a}/keys"),
            ADMIN,
            json!({"alg": "ES256"}),
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.body["kty"], "EC");
    assert_eq!(
        kids(
            &app.get(&format!("/v1/tenants/{a}/jwks.json"), "")
                .await
                .body
        )
        .len(),
        2
    );
    assert_eq!(
        kids(
            &app.get(&format!("/v1/tenants/{b}/jwks.json"), "")
                .await
                .body
        ),
        kb
    );
    let new = app.token(a, &["reader"]).await;
    let header: Value =
        serde_json::from_slice(&B64.decode(new.split('.').next().unwrap()).unwrap()).unwrap();
    assert_eq!(header["alg"], "ES256");
    assert_eq!(app.get("/v1/collections", &new).await.status, 200);
    assert_eq!(app.get("/v1/collections", &old).await.status, 200);
    assert_eq!(
        app.get(
            &format!("/v1/tenants/{}/jwks.json", TenantId::generate()),
            ""
        )
        .await
        .status,
        404
    );
}

async fn idempotency_keys_do_not_cross_tenants(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, ta) = app.tenant_with_notes("a").await;
    let (_, tb) = app.tenant_with_notes("b").await;
    let body = json!({"data": {"title": "once"}});
    let h = [("idempotency-key", "order-42")];
    let first = app
        .call(
            "POST",
            "/v1/collections/notes/records",
            Some(&ta),
            Some(body.clone()),
            &h,
        )
        .await;
    let again = app
        .call(
            "POST",
            "/v1/collections/notes/records",
            Some(&ta),
            Some(body.clone()),
            &h,
        )
        .await;
    assert_eq!((first.status, again.status), (201, 201));
    assert_eq!(first.body, again.body);
    assert_eq!(again.headers["idempotency-replayed"], "true");
    let other = app
        .call(
            "POST",
            "/v1/collections/notes/records",
            Some(&ta),
            Some(json!({"data": {"title": "twice"}})),
            &h,
        )
        .await;
    assert_eq!(
        (other.status, other.problem_type()),
        (409, "urn:bulkhead:problem:idempotency-key-reused")
    );
    // B using A's key gets its own fresh record, never A's response.
    let in_b = app
        .call(
            "POST",
            "/v1/collections/notes/records",
            Some(&tb),
            Some(body),
            &h,
        )
        .await;
    assert_eq!(in_b.status, 201);
    assert_ne!(in_b.body["id"], first.body["id"]);
    assert!(in_b.headers.get("idempotency-replayed").is_none());
    assert_eq!(
        app.get("/v1/collections/notes/records", &ta).await.body["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
