//! Performance isolation at the edge: every tenant-plane request is admitted against its
//! tenant's rate and concurrency limits right after its token is verified, before any storage
//! work, and counted in the per-tenant metrics.
//!
//! INVARIANT: the tenant a request is limited as is the tenant of its verified token (the same
//! verification the handler's [`crate::auth::Caller`] then reuses), never a header or path.
//! A request whose token does not verify is passed on untouched: its handler refuses it (401)
//! without touching storage.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bulkhead_core::TenantContext;
use bulkhead_core::tier::{TierLimits, Usage};
use bulkhead_limits::fair::{FairConfig, FairQueue};
use bulkhead_limits::metrics::{Outcome, QuotaLimits, TenantMetrics};
use bulkhead_limits::{Limiter, LocalLimiter, RateDecision, Refusal};
use bulkhead_store::Store;

use crate::problem::ApiError;
use crate::state::AppState;

/// Settings of the isolation layer.
#[derive(Debug, Clone)]
pub struct IsolationConfig {
    /// Enforce rate and concurrency limits (storage quotas are always enforced).
    pub enabled: bool,
    /// Tenants with a `tenant` label of their own in `/metrics`; the rest are `other`.
    pub metrics_top_k: usize,
    /// A tenant idle this long (bucket full, nothing in flight) is evicted from the limiter.
    pub idle_eviction: Duration,
    /// How often tiers are re-read from the database (changes made on other instances).
    pub tier_refresh: Duration,
    /// Share rate and concurrency limits with other instances through this Redis.
    pub redis_url: Option<String>,
    /// How long a concurrency lease in Redis lasts if its instance never releases it.
    pub lease_ttl: Duration,
    /// The fair queue's sizes: requests served at once (all tenants), and requests that may
    /// wait per tenant and in all.
    pub fair: FairConfig,
}

impl Default for IsolationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            metrics_top_k: 20,
            idle_eviction: Duration::from_secs(60),
            tier_refresh: Duration::from_secs(2),
            redis_url: None,
            lease_ttl: Duration::from_secs(60),
            fair: FairConfig {
                capacity: 256,
                per_tenant: 128,
                total: 4096,
            },
        }
    }
}

/// The limiter and metrics of this instance.
#[derive(Debug)]
pub struct Isolation {
    pub config: IsolationConfig,
    /// Rate and concurrency limits: this instance's, or shared through Redis.
    pub shared: Limiter,
    /// This instance's per-tenant state (the fallback, in-flight counts, traffic ranking).
    pub limiter: LocalLimiter,
    /// Per-tenant queues in front of the handlers when the server is saturated.
    pub fair: FairQueue,
    pub metrics: TenantMetrics,
    /// When each tenant's last limit event of each kind went to its audit log.
    limit_events: LimitEventGate,
}

/// Which limit events reach the audit log: the first of each kind (rate, concurrency, shed) per
/// tenant per [`LIMIT_EVENT_PERIOD`]. Recording every refused request durably would make a
/// flood write to the audit log at the flood's rate — the audit log would become the noisy
/// neighbour. Every refusal is still counted in `/metrics`.
#[derive(Debug)]
struct LimitEventGate {
    last: quick_cache::sync::Cache<(bulkhead_core::TenantId, &'static str), Instant>,
}

/// At most one audit entry per tenant and kind of limit event in this period.
pub(crate) const LIMIT_EVENT_PERIOD: Duration = Duration::from_secs(1);

impl LimitEventGate {
    fn new() -> Self {
        Self {
            last: quick_cache::sync::Cache::new(100_000),
        }
    }

    /// Whether this event is the first of its kind for `tenant` in the period.
    fn admit(&self, tenant: bulkhead_core::TenantId, kind: &'static str) -> bool {
        let now = Instant::now();
        match self.last.get(&(tenant, kind)) {
            Some(at) if now.duration_since(at) < LIMIT_EVENT_PERIOD => false,
            _ => {
                self.last.insert((tenant, kind), now);
                true
            }
        }
    }
}

impl Isolation {
    /// The limiter and metrics for `config`. Must be called inside a tokio runtime when
    /// `redis_url` is set. A Redis URL that cannot be used is logged and limits stay local
    /// (configuration checks the URL at start, so this does not happen in `bulkhead serve`).
    pub fn new(config: IsolationConfig) -> Self {
        let metrics = TenantMetrics::new(config.metrics_top_k, Duration::from_secs(600));
        let limiter = LocalLimiter::new();
        let shared = match &config.redis_url {
            None => Limiter::local(limiter.clone()),
            Some(url) => match Limiter::shared(
                limiter.clone(),
                url,
                config.lease_ttl,
                metrics.global.redis_up.clone(),
                metrics.global.redis_fallbacks.clone(),
            ) {
                Ok(l) => {
                    tracing::info!("rate and concurrency limits are shared through redis");
                    l
                }
                Err(e) => {
                    tracing::error!(error = %e, "limits stay local to this instance");
                    Limiter::local(limiter.clone())
                }
            },
        };
        Self {
            fair: FairQueue::new(config.fair),
            config,
            shared,
            limiter,
            metrics,
            limit_events: LimitEventGate::new(),
        }
    }

    /// Evicts idle tenants, re-ranks the metrics' top tenants and refreshes the gauges.
    pub fn housekeeping(&self) {
        let now = self.limiter.now();
        self.limiter.sweep(now, self.config.idle_eviction);
        let top = self.limiter.take_top(self.metrics.k());
        self.metrics.rerank(&top);
        let g = &self.metrics.global;
        #[allow(clippy::cast_precision_loss, reason = "gauges: counts far below 2^52")]
        {
            g.limiter_tenants.set(self.limiter.len() as f64);
            g.limiter_memory_bytes
                .set(self.limiter.memory_bytes() as f64);
            g.queue_depth.set(self.fair.depth() as f64);
        }
        self.metrics.upkeep();
    }
}

/// A verified tenant context the isolation layer left for the handler's extractor.
#[derive(Debug, Clone)]
pub(crate) struct Verified(pub Arc<TenantContext>);

/// Starts the periodic work (tier refresh, eviction, metrics ranking) on the current tokio
/// runtime, if there is one. The tasks end when the application state is dropped.
pub(crate) fn spawn_background(state: &AppState) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let store: Weak<Store> = Arc::downgrade(&state.store);
    let refresh = state.isolation.config.tier_refresh;
    rt.spawn(async move {
        let mut tick = tokio::time::interval(refresh.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(store) = store.upgrade() else { break };
            if let Err(e) = store.refresh_tiers().await {
                tracing::warn!(error = %e, "cannot refresh tiers; keeping the ones in force");
            }
        }
    });
    let iso: Weak<Isolation> = Arc::downgrade(&state.isolation);
    rt.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(iso) = iso.upgrade() else { break };
            iso.housekeeping();
        }
    });
}

/// Appends a limit event to the tenant's audit log (durably, before the refusal is sent), if
/// it is the first of its kind for the tenant in [`LIMIT_EVENT_PERIOD`]. An audit failure is
/// logged: the request is refused either way.
fn record_limit_event<'a>(
    st: &'a AppState,
    ctx: &'a TenantContext,
    req: &Request,
    kind: &'static str,
) -> impl std::future::Future<Output = ()> + Send + 'a {
    // What the entry needs from the request is taken now: the request is not `Sync`, so it
    // cannot be held across the append.
    // Built only for the event that is recorded: a flood's other refusals allocate nothing.
    let wanted = (st.store.audit().enabled()
        && st.isolation.limit_events.admit(ctx.tenant(), kind))
    .then(|| {
        (
            crate::auth::request_meta_of(req.headers(), req.extensions()),
            format!("{} {}", req.method(), req.uri().path()),
        )
    });
    async move {
        if let Some((meta, action)) = wanted {
            limit_event(st, ctx, kind, meta, action).await;
        }
    }
}

async fn limit_event(
    st: &AppState,
    ctx: &TenantContext,
    kind: &'static str,
    meta: bulkhead_store::RequestMeta,
    action: String,
) {
    if let Err(e) = st
        .store
        .audit()
        .record(
            ctx,
            "limit",
            &action,
            bulkhead_audit::Outcome::Limited,
            &meta,
            kind,
        )
        .await
    {
        tracing::warn!(error = %e, "audit: cannot record a limit event");
    }
}

/// The middleware: verify, admit (or refuse with 429), run, count.
pub(crate) async fn isolate(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    // Anonymous and operator requests are not tenant traffic: a tenant token is a JWT (three
    // dot-separated parts); anything else is left to the route's own extractor.
    let token = match crate::auth::bearer_in(req.headers()) {
        Ok(t) if t.bytes().filter(|b| *b == b'.').count() == 2 => t,
        _ => return next.run(req).await,
    };
    let Ok((ctx, state)) = st.auth.authenticate_with_state(token).await else {
        return next.run(req).await;
    };
    let tenant = ctx.tenant();
    let limits = st.store.limits_of(&state);
    let series = st.isolation.metrics.series(tenant);
    let policy = Policy::new(state.tenant.tier.as_str(), &limits);

    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limits.max_body_bytes
    {
        series.record(Outcome::ClientError, started.elapsed());
        return ApiError::BodyTooLarge(
            usize::try_from(limits.max_body_bytes).unwrap_or(usize::MAX),
        )
        .into_response();
    }

    let iso = &st.isolation;
    let admission = if iso.config.enabled {
        match iso.shared.admit(tenant, &limits).await {
            Ok(a) => Some(a),
            Err(refusal) => {
                let (outcome, err, rate) = match refusal {
                    Refusal::Rate(d) => (
                        Outcome::ThrottledRate,
                        ApiError::RateLimited(ceil_secs(d.retry_after)),
                        Some(d),
                    ),
                    Refusal::Concurrency { max } => (
                        Outcome::ThrottledConcurrency,
                        ApiError::ConcurrencyLimited(max),
                        None,
                    ),
                };
                tracing::debug!(tenant = %tenant, reason = ?outcome, "throttled");
                let kind = match outcome {
                    Outcome::ThrottledRate => "rate",
                    _ => "concurrency",
                };
                record_limit_event(&st, &ctx, &req, kind).await;
                let mut resp = err.into_response();
                policy.apply(&mut resp, rate.as_ref());
                series.record(outcome, started.elapsed());
                return resp;
            }
        }
    } else {
        None
    };

    // A body without a length is cut at the tier's limit while it is read.
    let global = u64::try_from(st.store.config().limits.max_body_bytes).unwrap_or(u64::MAX);
    if limits.max_body_bytes < global {
        let max = usize::try_from(limits.max_body_bytes).unwrap_or(usize::MAX);
        req = req.map(|b| Body::new(http_body_util::Limited::new(b, max)));
    }
    // Within its limits, the request waits for its turn if the server is saturated.
    let turn = if iso.config.enabled {
        match iso.fair.enter(tenant, limits.weight).await {
            Ok(t) => Some(t),
            Err(_) => {
                tracing::debug!(tenant = %tenant, "shed");
                record_limit_event(&st, &ctx, &req, "shed").await;
                let mut resp = ApiError::Shed(1).into_response();
                policy.apply(&mut resp, admission.as_ref().map(|a| &a.rate));
                series.record(Outcome::Shed, started.elapsed());
                return resp;
            }
        }
    } else {
        None
    };
    // A scrape found no recent usage figure for this tenant (one of the top K): read one now,
    // off the request path (at most one read per labelled tenant per scrape).
    if series.take_usage_wanted() {
        refresh_usage(&st, ctx.clone());
    }
    req.extensions_mut().insert(Verified(ctx));
    let mut resp = next.run(req).await;
    drop(turn);
    let rate = admission.map(|a| {
        // The concurrency slot is held until the response is ready.
        drop(a.slot);
        a.rate
    });
    if iso.config.enabled {
        policy.apply(&mut resp, rate.as_ref());
    }
    let status = resp.status();
    let outcome = if status.is_server_error() {
        Outcome::ServerError
    } else if status.is_client_error() {
        Outcome::ClientError
    } else {
        Outcome::Ok
    };
    if let Some(ApiErrorKind::Quota(q)) = resp.extensions().get::<ApiErrorKind>().copied() {
        series.quota_exceeded(q);
    }
    series.record(outcome, started.elapsed());
    resp
}

/// Reads `ctx`'s tenant's storage usage into the store's usage cache, in the background, for
/// the quota gauges of `/metrics`.
fn refresh_usage(st: &AppState, ctx: Arc<TenantContext>) {
    let store = st.store.clone();
    tokio::spawn(async move {
        let read = match store.tenant(&ctx).await {
            Ok(h) => h.usage().await.map(drop),
            Err(e) => Err(e),
        };
        if let Err(e) = read {
            tracing::debug!(error = %e, "cannot read usage for the quota gauges");
        }
    });
}

/// A usage figure older than this is re-read on the tenant's next request after a scrape.
const USAGE_FIGURE_AGE: Duration = Duration::from_secs(30);

impl Isolation {
    /// Brings the storage-quota gauges up to date, from what the store already knows: for each
    /// of the (at most K) labelled tenants, its cached usage against its limits (its tier and
    /// overrides); for `other`, the sums over the other tenants whose usage and state are in
    /// the store's caches. No storage access except the cached tenant state of a labelled
    /// tenant (at most K reads, only on a cache miss); a labelled tenant whose usage is unknown
    /// or older than [`USAGE_FIGURE_AGE`] has it read on its next request.
    pub async fn update_quota_gauges(&self, store: &Store) {
        let labelled = self.metrics.labelled();
        for (tenant, series) in labelled.iter() {
            let known = store.known_usage(*tenant);
            if known.is_none_or(|(_, at)| at.elapsed() > USAGE_FIGURE_AGE) {
                series.want_usage();
            }
            let Some((used, _)) = known else { continue };
            let Ok(Some(state)) = store.tenant_state(*tenant).await else {
                continue;
            };
            let limits = QuotaLimits::of(&store.limits_of(&state));
            self.metrics.set_quota(series, &used, &limits);
        }
        let (mut used, mut limits, mut any) = (Usage::default(), QuotaLimits::default(), false);
        for (tenant, u) in store.known_usages() {
            if labelled.contains_key(&tenant) {
                continue;
            }
            let Some(state) = store.cached_tenant_state(tenant) else {
                continue;
            };
            any = true;
            used.records = used.records.saturating_add(u.records);
            used.bytes = used.bytes.saturating_add(u.bytes);
            used.collections = used.collections.saturating_add(u.collections);
            limits = limits.plus(QuotaLimits::of(&store.limits_of(&state)));
        }
        if any {
            self.metrics.set_quota(self.metrics.other(), &used, &limits);
        }
    }
}

/// Set on a response by [`ApiError`] for what the metrics count.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ApiErrorKind {
    Quota(bulkhead_core::tier::Quota),
}

fn ceil_secs(d: Duration) -> u64 {
    let s = d.as_secs();
    if d.subsec_nanos() > 0 || s == 0 {
        s + 1
    } else {
        s
    }
}

/// The `RateLimit-Policy` and `RateLimit` headers (IETF draft-ietf-httpapi-ratelimit-headers):
/// the policy is the tier's burst (`q`) over the time it takes to refill at the sustained rate
/// (`w`, seconds); the state is what remains (`r`) and when the burst is full again (`t`).
struct Policy<'a> {
    tier: &'a str,
    burst: u32,
    window: u64,
}

impl<'a> Policy<'a> {
    fn new(tier: &'a str, l: &TierLimits) -> Self {
        let window = (f64::from(l.burst) / l.rate_per_second).ceil();
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "clamped to 1..=86400 first"
        )]
        let window = if window.is_finite() {
            window.clamp(1.0, 86_400.0) as u64
        } else {
            1
        };
        Self {
            tier,
            burst: l.burst,
            window,
        }
    }

    fn apply(&self, resp: &mut Response, rate: Option<&RateDecision>) {
        use std::fmt::Write as _;
        let h = resp.headers_mut();
        // Written into a buffer on the stack: the header value is the only allocation.
        let mut buf = HeaderBuf::new();
        if write!(buf, "\"{}\";q={};w={}", self.tier, self.burst, self.window).is_ok()
            && let Ok(v) = HeaderValue::from_bytes(buf.as_bytes())
        {
            h.insert(RATELIMIT_POLICY, v);
        }
        if let Some(d) = rate {
            buf.clear();
            if write!(
                buf,
                "\"{}\";r={};t={}",
                self.tier,
                d.remaining,
                ceil_secs(d.reset)
            )
            .is_ok()
                && let Ok(v) = HeaderValue::from_bytes(buf.as_bytes())
            {
                h.insert(RATELIMIT, v);
            }
        }
    }
}

const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// A header value being written, on the stack: a tier name (at most 32 bytes) and three
/// numbers fit. Writing past the end fails (the header is then left out).
struct HeaderBuf {
    bytes: [u8; 96],
    len: usize,
}

impl HeaderBuf {
    fn new() -> Self {
        Self {
            bytes: [0; 96],
            len: 0,
        }
    }

    fn clear(&mut self) {
        self.len = 0;
    }

    fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }
}

impl std::fmt::Write for HeaderBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(std::fmt::Error)?;
        let dst = self.bytes.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}
