//! The registry change feed: a change made through one instance's store (suspension, key
//! rotation, offboarding) reaches another instance's cached tenant state within seconds, not
//! after the cache's safety-net expiry.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_core::crypto::MasterKey;
use bulkhead_core::token::{MintRequest, SigningAlg, TokenSettings, Verifier};
use bulkhead_core::{
    CollectionName, Role, Roles, Subject, TenantContext, TenantId, TenantName, TenantStatus,
    TierName,
};
use bulkhead_store::port::TenantPatch;
use bulkhead_store::{Store, StoreConfig};
use bulkhead_store_postgres::PostgresStore;
use common::{TestDb, test_url};
use serde_json::json;

/// An instance's store over `url`: cached tenant state would live 10 minutes if nothing
/// invalidated it, so only the feed can make a change visible within the test's deadline.
async fn instance(url: &str, master: &str) -> Store {
    let pg = Arc::new(PostgresStore::connect(url, 2).await.unwrap());
    Store::open(
        pg.clone(),
        pg,
        MasterKey::from_base64url(master).unwrap(),
        StoreConfig {
            cache_ttl: Duration::from_secs(600),
            feed_cache_ttl: Duration::from_secs(600),
            feed_interval: Duration::from_millis(200),
            ..StoreConfig::default()
        },
    )
    .await
    .unwrap()
}

/// Waits until `check` holds, up to 10 s; returns how long it took.
async fn eventually<F, Fut>(what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if check().await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not seen within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_instances_changes_reach_the_cache_within_seconds() {
    let Some(admin) = test_url() else { return };
    let db = TestDb::migrated(&admin).await;
    let master = MasterKey::generate().to_base64url();
    let a = instance(&db.url, &master).await;
    let b = instance(&db.url, &master).await;
    assert!(a.change_feed_live() && b.change_feed_live());

    let t = a
        .create_tenant(
            TenantName::parse("feed-a").unwrap(),
            TierName::standard(),
            SigningAlg::EdDSA,
        )
        .await
        .unwrap();
    // Positive twin: an untouched tenant stays cached and active on B.
    let other = a
        .create_tenant(
            TenantName::parse("feed-b").unwrap(),
            TierName::standard(),
            SigningAlg::EdDSA,
        )
        .await
        .unwrap();
    let state = b.tenant_state(t.id).await.unwrap().unwrap();
    assert_eq!(state.tenant.status, TenantStatus::Active);
    assert_eq!(state.public_keys.len(), 1);

    // Suspension on A: B's cached state follows.
    a.update_tenant(
        t.id,
        TenantPatch {
            status: Some(TenantStatus::Suspended),
            ..TenantPatch::default()
        },
    )
    .await
    .unwrap();
    let took = eventually("suspension on the other instance", || async {
        b.tenant_state(t.id).await.unwrap().unwrap().tenant.status == TenantStatus::Suspended
    })
    .await;
    eprintln!("suspension reached the other instance in {took:?}");
    // The poll that brought the suspension also brought the (earlier) creations; from here on
    // only new changes invalidate. Cache the untouched tenant now.
    let other_before = b.tenant_state(other.id).await.unwrap().unwrap();

    // Key rotation on A (only `signing_keys` changes): B sees the new key.
    a.rotate_signing_key(t.id, SigningAlg::ES256).await.unwrap();
    eventually("a rotated key on the other instance", || async {
        b.tenant_state(t.id)
            .await
            .unwrap()
            .unwrap()
            .public_keys
            .len()
            == 2
    })
    .await;

    // Offboarding on A: B forgets the keys.
    a.offboard(t.id).await.unwrap();
    eventually("offboarding on the other instance", || async {
        let s = b.tenant_state(t.id).await.unwrap().unwrap();
        s.tenant.status == TenantStatus::Deleted && s.public_keys.is_empty()
    })
    .await;

    // The untouched tenant was never invalidated: B still holds the very same cached state.
    let other_after = b.tenant_state(other.id).await.unwrap().unwrap();
    assert!(Arc::ptr_eq(&other_before, &other_after));
    assert_eq!(other_after.tenant.status, TenantStatus::Active);
}

/// A verified context for `id`, made the way the server makes one.
async fn context(store: &Store, id: TenantId) -> TenantContext {
    let verifier = Verifier::new(TokenSettings {
        issuer: "https://bulkhead.test".into(),
        audience: "bulkhead".into(),
        leeway_secs: 5,
        max_token_bytes: 8192,
        max_ttl_secs: 3600,
    });
    let key = store.active_signing_key(id).await.unwrap();
    let now = bulkhead_core::Timestamp::now_utc();
    let req = MintRequest {
        subject: Subject::parse("tester").unwrap(),
        roles: Roles::from_slice(&[Role::Admin]).unwrap(),
        ttl_secs: 600,
    };
    let (token, _) = verifier.mint(&key, &req, now).unwrap();
    let claimed = verifier.inspect(&token).unwrap();
    let public = store
        .tenant_state(id)
        .await
        .unwrap()
        .unwrap()
        .key(&claimed.kid)
        .unwrap()
        .clone();
    verifier.verify(&token, claimed, &public, now).unwrap()
}

/// Collection definitions and policy sets are cached for long while the feed works: a
/// collection change or a policy put on one instance must reach the other's caches through
/// the feed, within seconds. The untouched tenant's cached entries stay fresh (positive twin).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collection_and_policy_changes_reach_the_other_instance() {
    let Some(admin) = test_url() else { return };
    let db = TestDb::migrated(&admin).await;
    let master = MasterKey::generate().to_base64url();
    let a = instance(&db.url, &master).await;
    let b = instance(&db.url, &master).await;
    let make = |name: &'static str| {
        let a = &a;
        async move {
            a.create_tenant(
                TenantName::parse(name).unwrap(),
                TierName::standard(),
                SigningAlg::EdDSA,
            )
            .await
            .unwrap()
        }
    };
    let (t, other) = (make("cache-a").await, make("cache-b").await);
    let notes = CollectionName::parse("notes").unwrap();
    let schema = |class: &str| json!({"type": "object", "properties": {"secret": {"type": "string", "x-classification": class}}});
    for id in [t.id, other.id] {
        let ctx = context(&a, id).await;
        let h = a.tenant(&ctx).await.unwrap();
        h.put_collection(&notes, schema("internal"), vec![])
            .await
            .unwrap();
    }
    let (ctx_t, ctx_other) = (context(&b, t.id).await, context(&b, other.id).await);
    // Let the feed deliver the creations, then cache on B.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hb = b.tenant(&ctx_t).await.unwrap();
    let hb_other = b.tenant(&ctx_other).await.unwrap();
    let before = hb.fields(&notes).await.unwrap();
    let other_before = hb_other.fields(&notes).await.unwrap();
    let loaded = Instant::now();
    assert!(hb.cache_fresh(loaded, Duration::from_secs(600)));

    // A collection change on A: B's cached definition follows.
    let ha = a.tenant(&context(&a, t.id).await).await.unwrap();
    ha.put_collection(&notes, schema("restricted"), vec![])
        .await
        .unwrap();
    let took = eventually("a collection change on the other instance", || async {
        let f = hb.fields(&notes).await.unwrap();
        !Arc::ptr_eq(&f, &before) && f.classes() != before.classes()
    })
    .await;
    eprintln!("a collection change reached the other instance in {took:?}");

    // A policy put on A: what B loaded before it is stale.
    let loaded = Instant::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    ha.put_policy("// v1".into(), &Subject::parse("tester").unwrap(), None)
        .await
        .unwrap();
    eventually("a policy change on the other instance", || async {
        !hb.cache_fresh(loaded, Duration::from_secs(600))
    })
    .await;

    // The untouched tenant: its cached definition is the very same.
    let other_after = hb_other.fields(&notes).await.unwrap();
    assert!(Arc::ptr_eq(&other_before, &other_after));
    assert!(hb_other.cache_fresh(loaded, Duration::from_secs(600)));
}
