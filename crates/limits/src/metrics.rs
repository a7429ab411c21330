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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bulkhead_core::TenantId;
use bulkhead_core::tier::{Quota, TierLimits, Usage};
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
    /// The `tenant` label's value.
    label: String,
    /// Stored records, bytes and collections (in [`QUOTAS`] order) and the limits on them;
    /// registered at the first figure, so a tenant whose usage is not known shows none (not 0).
    quota_gauges: OnceLock<QuotaGauges>,
    /// Set when a scrape found no recent usage figure for this tenant: its next request reads
    /// one (at most one read per labelled tenant per scrape).
    usage_wanted: AtomicBool,
}

/// The storage quotas, in the order of [`Series`]' arrays, by their names in the API.
pub const QUOTAS: [Quota; 3] = [Quota::Records, Quota::Bytes, Quota::Collections];

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
    pub fn quota_exceeded(&self, quota: Quota) {
        if let Some(c) = self.quota.get(quota_index(quota)) {
            c.increment(1);
        }
    }

    /// Asks for a fresh usage figure on this tenant's next request.
    pub fn want_usage(&self) {
        self.usage_wanted.store(true, Ordering::Relaxed);
    }

    /// Whether a usage figure was asked for (and no longer is): one relaxed load on the request
    /// path, a swap only when it was.
    pub fn take_usage_wanted(&self) -> bool {
        self.usage_wanted.load(Ordering::Relaxed)
            && self.usage_wanted.swap(false, Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct QuotaGauges {
    used: [Gauge; 3],
    limit: [Gauge; 3],
}

impl QuotaGauges {
    fn set(&self, used: &Usage, limits: &QuotaLimits) {
        let used = [used.records, used.bytes, used.collections];
        let max = [limits.records, limits.bytes, limits.collections];
        for ((g, v), (gl, l)) in self.used.iter().zip(used).zip(self.limit.iter().zip(max)) {
            #[allow(clippy::cast_precision_loss, reason = "gauges are f64")]
            {
                g.set(v as f64);
                gl.set(l as f64);
            }
        }
    }
}

/// The storage limits a quota gauge compares usage with (for `other`: sums over its tenants).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaLimits {
    pub records: u64,
    pub bytes: u64,
    pub collections: u64,
}

impl QuotaLimits {
    pub fn of(l: &TierLimits) -> Self {
        Self {
            records: l.max_records,
            bytes: l.max_bytes,
            collections: l.max_collections,
        }
    }

    /// Both added up, saturating.
    #[must_use]
    pub fn plus(self, o: Self) -> Self {
        Self {
            records: self.records.saturating_add(o.records),
            bytes: self.bytes.saturating_add(o.bytes),
            collections: self.collections.saturating_add(o.collections),
        }
    }
}

fn quota_index(q: Quota) -> usize {
    match q {
        Quota::Records => 0,
        Quota::Bytes => 1,
        Quota::Collections => 2,
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

    /// The series of `other` (every tenant without a label of its own).
    pub fn other(&self) -> &Arc<Series> {
        &self.other
    }

    /// The tenants with a label of their own now, and their series (at most `k`).
    pub fn labelled(&self) -> Arc<HashMap<TenantId, Arc<Series>>> {
        self.labels.read().clone()
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

    /// Sets `series`' storage-quota gauges (`bulkhead_tenant_quota_used` and `_limit`, one
    /// per quota): what its tenant (or, for `other`, its tenants) stores against the limits.
    pub fn set_quota(&self, series: &Series, used: &Usage, limits: &QuotaLimits) {
        let gauges = series.quota_gauges.get_or_init(|| {
            let gauge = |name: &'static str, quota: Quota| {
                self.recorder.register_gauge(
                    &Key::from_parts(
                        name,
                        vec![
                            Label::new("tenant", series.label.clone()),
                            Label::new("quota", quota.as_str()),
                        ],
                    ),
                    &METADATA,
                )
            };
            QuotaGauges {
                used: QUOTAS.map(|q| gauge("bulkhead_tenant_quota_used", q)),
                limit: QUOTAS.map(|q| gauge("bulkhead_tenant_quota_limit", q)),
            }
        });
        gauges.set(used, limits);
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
        quota: QUOTAS
            .map(|q| counter("bulkhead_quota_exceeded_total", Some(("quota", q.as_str())))),
        label: tenant.clone(),
        quota_gauges: OnceLock::new(),
        usage_wanted: AtomicBool::new(false),
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

    #[test]
    fn quota_gauges_appear_once_a_figure_is_known_and_only_for_labelled_tenants() {
        let m = TenantMetrics::new(1, Duration::from_secs(600));
        let (a, b) = (TenantId::generate(), TenantId::generate());
        m.rerank(&[(a, 10), (b, 5)]);
        let sa = m.series(a);
        assert!(
            !m.render().contains("bulkhead_tenant_quota_used"),
            "unknown is not 0"
        );
        let used = Usage {
            records: 3,
            bytes: 300,
            collections: 1,
        };
        let lim = QuotaLimits {
            records: 10,
            bytes: 1000,
            collections: 2,
        };
        m.set_quota(&sa, &used, &lim);
        m.set_quota(m.other(), &used, &lim.plus(lim));
        let text = m.render();
        for line in [
            format!("bulkhead_tenant_quota_used{{tenant=\"{a}\",quota=\"max_records\"}} 3"),
            format!("bulkhead_tenant_quota_limit{{tenant=\"{a}\",quota=\"max_bytes\"}} 1000"),
            "bulkhead_tenant_quota_limit{tenant=\"other\",quota=\"max_collections\"} 4".into(),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
        assert!(!text.contains(&b.to_string()), "b is not in the top 1");
        // The usage request flag is taken once.
        assert!(!sa.take_usage_wanted());
        sa.want_usage();
        assert!(sa.take_usage_wanted());
        assert!(!sa.take_usage_wanted());
    }
}
