//! Per-tenant request metrics in Prometheus text, with bounded label cardinality.
//!
//! A `tenant` label per tenant would make a scrape of 100,000 tenants unusable, so only the
//! `k` tenants with the most traffic since the last ranking get their own label; the traffic of
//! every other tenant is counted under `tenant="other"`. Rankings are redone periodically
//! ([`TenantMetrics::rerank`]); a series that stops being updated is dropped from the output
//! after the idle timeout, so at most `k + 1` per-tenant series are live at any time plus those
//! demoted within the timeout. Because a tenant moves between its own label and `other`, sum
//! over `tenant` for totals (`sum without (tenant) (rate(...))`).
//!
//! Handles are registered once per ranking and shared: recording a request is an atomic add,
//! with no allocation or registry lookup on the request path.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bulkhead_core::TenantId;
use metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, Recorder};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use metrics_util::MetricKindMask;
use parking_lot::RwLock;

/// Latency buckets, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The label of every tenant outside the top K.
pub const OTHER: &str = "other";

/// How a request ended, as the metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 1xx-3xx.
    Ok,
    /// 4xx other than throttling.
    ClientError,
    /// 5xx other than shedding.
    ServerError,
    /// 429: over the tenant's rate.
    ThrottledRate,
    /// 429: over the tenant's concurrency cap.
    ThrottledConcurrency,
    /// 503: shed while the server was saturated.
    Shed,
}

/// One tenant label's series.
#[derive(Debug)]
pub struct Series {
    ok: Counter,
    client_error: Counter,
    server_error: Counter,
    throttled_rate: Counter,
    throttled_concurrency: Counter,
    shed: Counter,
    latency: Histogram,
    quota: [Counter; 3],
}

impl Series {
    /// Counts one finished request and its latency.
    pub fn record(&self, outcome: Outcome, latency: Duration) {
        match outcome {
            Outcome::Ok => self.ok.increment(1),
            Outcome::ClientError => self.client_error.increment(1),
            Outcome::ServerError => self.server_error.increment(1),
            Outcome::ThrottledRate => self.throttled_rate.increment(1),
            Outcome::ThrottledConcurrency => self.throttled_concurrency.increment(1),
            Outcome::Shed => self.shed.increment(1),
        }
        self.latency.record(latency.as_secs_f64());
    }

    /// Counts a write refused by a storage quota (`max_records`, `max_bytes`, `max_collections`).
    pub fn quota_exceeded(&self, quota: bulkhead_core::tier::Quota) {
        let i = match quota {
            bulkhead_core::tier::Quota::Records => 0,
            bulkhead_core::tier::Quota::Bytes => 1,
            bulkhead_core::tier::Quota::Collections => 2,
        };
        if let Some(c) = self.quota.get(i) {
            c.increment(1);
        }
    }
}

/// Instance-wide gauges and counters (no tenant label).
#[derive(Debug)]
pub struct Global {
    /// Tenants the limiter holds state for.
    pub limiter_tenants: Gauge,
    /// Heap bytes of the limiter's per-tenant state.
    pub limiter_memory_bytes: Gauge,
    /// 1 while the shared (Redis) limiter answers, 0 while this instance uses local limits.
    pub redis_up: Gauge,
    /// Limit checks answered locally because Redis could not be reached.
    pub redis_fallbacks: Counter,
    /// Requests waiting in the fair queue.
    pub queue_depth: Gauge,
}

/// The per-tenant metrics of this instance.
pub struct TenantMetrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    k: usize,
    labels: RwLock<Arc<HashMap<TenantId, Arc<Series>>>>,
    other: Arc<Series>,
    pub global: Global,
}

impl std::fmt::Debug for TenantMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantMetrics")
            .field("k", &self.k)
            .finish_non_exhaustive()
    }
}

static METADATA: Metadata<'static> = Metadata::new("bulkhead", Level::INFO, None);

impl TenantMetrics {
    /// Metrics with at most `k` tenants labelled by id; a series not updated for `idle` is
    /// dropped from the output.
    pub fn new(k: usize, idle: Duration) -> Self {
        let builder = PrometheusBuilder::new()
            .idle_timeout(MetricKindMask::ALL, Some(idle))
            .set_buckets_for_metric(
                Matcher::Full("bulkhead_request_duration_seconds".into()),
                LATENCY_BUCKETS,
            );
        // The buckets are constants known to be valid; fall back to the summary otherwise.
        let builder = match builder {
            Ok(b) => b,
            Err(_) => PrometheusBuilder::new().idle_timeout(MetricKindMask::ALL, Some(idle)),
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let other = Arc::new(series(&recorder, OTHER));
        let gauge =
            |name: &'static str| recorder.register_gauge(&Key::from_static_name(name), &METADATA);
        let global = Global {
            limiter_tenants: gauge("bulkhead_limiter_tenants"),
            limiter_memory_bytes: gauge("bulkhead_limiter_memory_bytes"),
            redis_up: gauge("bulkhead_limiter_redis_up"),
            redis_fallbacks: recorder.register_counter(
                &Key::from_static_name("bulkhead_limiter_redis_fallbacks_total"),
                &METADATA,
            ),
            queue_depth: gauge("bulkhead_fair_queue_depth"),
        };
        Self {
            recorder,
            handle,
            k,
            labels: RwLock::new(Arc::new(HashMap::new())),
            other,
            global,
        }
    }

    /// How many tenants get a label of their own.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The series a request of `tenant` is counted in.
    pub fn series(&self, tenant: TenantId) -> Arc<Series> {
        self.labels
            .read()
            .get(&tenant)
            .cloned()
            .unwrap_or_else(|| self.other.clone())
    }

    /// Gives the tenants in `top` (most traffic first) their own labels, the first `k` of them.
    pub fn rerank(&self, top: &[(TenantId, u32)]) {
        let current = self.labels.read().clone();
        let mut next = HashMap::with_capacity(self.k);
        for (t, _) in top.iter().take(self.k) {
            let s = match current.get(t) {
                Some(s) => s.clone(),
                None => Arc::new(series(&self.recorder, &t.to_string())),
            };
            next.insert(*t, s);
        }
        *self.labels.write() = Arc::new(next);
    }

    /// The Prometheus text exposition of every live series.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Housekeeping the exporter needs now and then (drains histogram samples).
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

fn series(r: &PrometheusRecorder, tenant: &str) -> Series {
    let tenant = tenant.to_owned();
    let counter = |name: &'static str, extra: Option<(&'static str, &'static str)>| {
        let mut labels = vec![Label::new("tenant", tenant.clone())];
        if let Some((k, v)) = extra {
            labels.push(Label::new(k, v));
        }
        r.register_counter(&Key::from_parts(name, labels), &METADATA)
    };
    let requests =
        |outcome: &'static str| counter("bulkhead_requests_total", Some(("outcome", outcome)));
    Series {
        ok: requests("ok"),
        client_error: requests("client_error"),
        server_error: requests("server_error"),
        throttled_rate: requests("throttled_rate"),
        throttled_concurrency: requests("throttled_concurrency"),
        shed: requests("shed"),
        latency: r.register_histogram(
            &Key::from_parts(
                "bulkhead_request_duration_seconds",
                vec![Label::new("tenant", tenant.clone())],
            ),
            &METADATA,
        ),
        quota: [
            counter(
                "bulkhead_quota_exceeded_total",
                Some(("quota", "max_records")),
            ),
            counter(
                "bulkhead_quota_exceeded_total",
                Some(("quota", "max_bytes")),
            ),
            counter(
                "bulkhead_quota_exceeded_total",
                Some(("quota", "max_collections")),
            ),
        ],
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn only_the_top_k_tenants_get_labels() {
        let m = TenantMetrics::new(2, Duration::from_secs(600));
        let ids: Vec<TenantId> = (0..1000).map(|_| TenantId::generate()).collect();
        for t in &ids {
            m.series(*t).record(Outcome::Ok, Duration::from_millis(1));
        }
        m.rerank(&[(ids[7], 50), (ids[3], 40), (ids[9], 30)]);
        for t in &ids {
            m.series(*t)
                .record(Outcome::ThrottledRate, Duration::from_millis(1));
        }
        let text = m.render();
        let tenants: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|l| l.starts_with("bulkhead_requests_total{"))
            .filter_map(|l| l.split("tenant=\"").nth(1)?.split('"').next())
            .collect();
        let expected: std::collections::BTreeSet<String> =
            [ids[7].to_string(), ids[3].to_string(), OTHER.to_string()].into();
        assert_eq!(
            tenants,
            expected.iter().map(String::as_str).collect(),
            "{text}"
        );
        assert!(text.contains("outcome=\"throttled_rate\""));
        assert!(text.contains("bulkhead_request_duration_seconds_bucket"));
        assert!(
            !text.contains(&ids[9].to_string()),
            "the third tenant is not in the top 2"
        );
    }
}
