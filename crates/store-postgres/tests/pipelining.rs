//! Round trips: every tenant operation costs one round trip, as a bare statement would. Point
//! reads and record writes are one statement (a function that sets the tenant itself); other
//! operations are a transaction (`BEGIN`, tenant setting, statement, `COMMIT`) pipelined into
//! one round trip, not four.
//!
//! Measured through a proxy that adds a fixed latency each way: with a round trip of
//! `2 * DELAY_MS`, one operation takes just over one round trip, while four sequential
//! statements would take four. The minimum of a few runs is compared to two round trips,
//! which leaves a full round trip of slack for a busy machine.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

mod common;

use std::time::{Duration, Instant};

use bulkhead_core::{CollectionName, Role};
use bulkhead_store::contract::Env;
use bulkhead_store::port::RecordBackend;
use common::{Pg, test_url};
use serde_json::json;

const DELAY_MS: u64 = 40;
const ROUND_TRIP: Duration = Duration::from_millis(2 * DELAY_MS);

/// The fastest of `runs` runs of `op`.
async fn fastest<F, Fut>(runs: usize, mut op: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut best = Duration::MAX;
    for _ in 0..runs {
        let start = Instant::now();
        op().await;
        best = best.min(start.elapsed());
    }
    best
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_transaction_costs_one_round_trip() {
    if test_url().is_none() {
        return;
    }
    // One connection, so every operation below finds its statements already prepared.
    let env = Env::<Pg<1, DELAY_MS>>::new().await;
    let ctx = env.tenant(&[Role::Admin]).await;
    let h = env.store.tenant(&ctx).await.unwrap();
    let users = CollectionName::parse("users").unwrap();
    h.put_collection(
        &users,
        json!({"type": "object", "properties": {"email": {"type": "string"}}}),
        vec!["email".into()],
    )
    .await
    .unwrap();
    // Warm up: prepare every statement used below, and cache the collection.
    let rec = h
        .create_record(&users, json!({"email": "a@x.example"}), None)
        .await
        .unwrap()
        .record;
    h.get_record(&users, rec.id).await.unwrap();
    h.query(&users, &[], None, 10).await.unwrap();
    env.harness.store.ping().await.unwrap();

    // The reference: one bare statement is one round trip.
    let ping = fastest(3, || async { env.harness.store.ping().await.unwrap() }).await;
    assert!(ping >= ROUND_TRIP, "the proxy adds latency: {ping:?}");

    let read = fastest(3, || async {
        h.get_record(&users, rec.id).await.unwrap();
    })
    .await;
    let write = fastest(3, || async {
        h.create_record(&users, json!({"email": "b@x.example"}), None)
            .await
            .unwrap();
    })
    .await;
    // A list: the pipelined transaction.
    let list = fastest(3, || async {
        h.query(&users, &[], None, 10).await.unwrap();
    })
    .await;
    eprintln!(
        "round trip {ROUND_TRIP:?}: bare statement {ping:?}, read {read:?}, write {write:?}, \
         list {list:?}"
    );
    for (what, took) in [("read", read), ("write", write), ("list", list)] {
        assert!(
            took < 2 * ROUND_TRIP,
            "a tenant {what} took {took:?}: more than one round trip of {ROUND_TRIP:?} \
             (bare statement: {ping:?})"
        );
    }
}
