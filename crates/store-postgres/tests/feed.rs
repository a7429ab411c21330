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
use bulkhead_core::token::SigningAlg;
use bulkhead_core::{TenantName, TenantStatus, TierName};
use bulkhead_store::port::TenantPatch;
use bulkhead_store::{Store, StoreConfig};
use bulkhead_store_postgres::PostgresStore;
use common::{TestDb, test_url};

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
