//! The shared (Redis) limiter against a real Redis, and its fallback when Redis is not there.
//!
//! Tests that need Redis run when `BULKHEAD_TEST_REDIS_URL` is set (e.g.
//! `redis://127.0.0.1:6379`); see `bulkhead_limits::testing::test_redis_url` for the rule
//! otherwise. Two `Limiter`s on one Redis stand for two instances.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

use std::time::Duration;

use bulkhead_core::TenantId;
use bulkhead_core::tier::TierLimits;
use bulkhead_limits::metrics::TenantMetrics;
use bulkhead_limits::testing::test_redis_url;
use bulkhead_limits::{Limiter, LocalLimiter, Refusal, Slot};

fn limits(rate: f64, burst: u32, conc: u32) -> TierLimits {
    TierLimits {
        rate_per_second: rate,
        burst,
        max_concurrency: conc,
        ..TierLimits::builtin("standard")
    }
}

fn instance(url: &str, m: &TenantMetrics) -> Limiter {
    Limiter::shared(
        LocalLimiter::new(),
        url,
        Duration::from_secs(30),
        m.global.redis_up.clone(),
        m.global.redis_fallbacks.clone(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_burst() {
    let Some(url) = test_redis_url() else { return };
    let m = TenantMetrics::new(5, Duration::from_secs(60));
    let (one, two) = (instance(&url, &m), instance(&url, &m));
    let (a, b) = (TenantId::generate(), TenantId::generate());
    let l = limits(0.01, 5, 100);
    let mut admitted = Vec::new();
    let mut refused = 0;
    for i in 0..20 {
        let which = if i % 2 == 0 { &one } else { &two };
        match which.admit(a, &l).await {
            Ok(adm) => {
                assert!(matches!(adm.slot, Slot::Shared(..)), "decided by redis");
                admitted.push(adm);
            }
            Err(Refusal::Rate(d)) => {
                assert!(d.retry_after > Duration::from_secs(90));
                refused += 1;
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(
        (admitted.len(), refused),
        (5, 15),
        "one burst for both instances"
    );
    // Twin: another tenant has its own burst.
    for _ in 0..5 {
        admitted.push(two.admit(b, &l).await.unwrap());
    }
    assert!(m.render().contains("bulkhead_limiter_redis_up 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_is_capped_across_instances() {
    let Some(url) = test_redis_url() else { return };
    let m = TenantMetrics::new(5, Duration::from_secs(60));
    let (one, two) = (instance(&url, &m), instance(&url, &m));
    let a = TenantId::generate();
    let l = limits(1000.0, 1000, 2);
    let first = one.admit(a, &l).await.unwrap();
    let _second = two.admit(a, &l).await.unwrap();
    assert_eq!(
        two.admit(a, &l).await.unwrap_err(),
        Refusal::Concurrency { max: 2 }
    );
    assert_eq!(one.local_limiter().inflight(a), 1, "counted where it runs");
    drop(first);
    // The lease is removed in the background: wait (bounded) for the slot to come back.
    let mut again = None;
    for _ in 0..200 {
        if let Ok(adm) = one.admit(a, &l).await {
            again = Some(adm);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(again.is_some(), "the released slot is free again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_falls_back_to_local_limits() {
    // Nothing listens on port 1: every attempt fails at once. Runs without Redis.
    let m = TenantMetrics::new(5, Duration::from_secs(60));
    let l1 = instance("redis://127.0.0.1:1", &m);
    let a = TenantId::generate();
    let lim = limits(0.01, 2, 10);
    let first = l1.admit(a, &lim).await.unwrap();
    assert!(matches!(first.slot, Slot::Local(_)), "decided locally");
    let _second = l1.admit(a, &lim).await.unwrap();
    // Local limits still hold while Redis is away.
    assert!(matches!(
        l1.admit(a, &lim).await.unwrap_err(),
        Refusal::Rate(_)
    ));
    let text = m.render();
    assert!(text.contains("bulkhead_limiter_redis_up 0"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("bulkhead_limiter_redis_fallbacks_total ") && !l.ends_with(" 0")),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_shared_again_when_redis_returns() {
    let Some(url) = test_redis_url() else { return };
    let m = TenantMetrics::new(5, Duration::from_secs(60));
    // A redis that goes away and comes back is simulated by a proxy port we open and close.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = proxy.local_addr().unwrap().port();
    drop(proxy);
    let via_proxy = format!("redis://127.0.0.1:{port}");
    let l = instance(&via_proxy, &m);
    let a = TenantId::generate();
    let lim = limits(1000.0, 1000, 10);
    let down = l.admit(a, &lim).await.unwrap();
    assert!(matches!(down.slot, Slot::Local(_)));
    // Redis "returns": forward the port to the real one.
    let target = url
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    let mut shared = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(adm) = l.admit(a, &lim).await
            && matches!(adm.slot, Slot::Shared(..))
        {
            shared = true;
            break;
        }
    }
    assert!(shared, "limits are shared again once redis answers");
    assert!(m.render().contains("bulkhead_limiter_redis_up 1"));
}
