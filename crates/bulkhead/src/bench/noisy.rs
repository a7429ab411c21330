//! `bulkhead bench noisy-neighbour` and `bulkhead bench limiter-memory`: the figures of
//! performance isolation.
//!
//! noisy-neighbour sets up two tenants: a *flooder* on a tier limited to `--flood-limit`
//! req/s, and a *quiet* tenant on `--tier`. It first measures the quiet tenant alone, reading at
//! `--quiet-rate` (open loop, latency from the intended send time: coordinated omission
//! corrected), then again while the flooder offers `--flood-rate` req/s over
//! `--flood-connections` connections (open loop too), and prints both, the ratio of the p99s,
//! and what each tenant was answered.

use super::*;

/// The tier the flooder is put on.
const FLOOD_TIER: &str = "bench-flood";

/// The figures of one tenant in one phase.
#[derive(Debug, Clone, Serialize)]
struct Side {
    /// Answered with 2xx.
    ok: u64,
    /// Non-2xx answers by status (429s for the flooder are the limiter working).
    by_status: BTreeMap<String, u64>,
    transport_errors: u64,
    timeouts: u64,
    /// Due but never sent: the generator fell behind the target rate.
    missed: u64,
    /// Requests sent per second over the measured window.
    offered_rps: f64,
    latency_ms: Latency,
}

impl Side {
    fn of(stats: &Stats, duration: u64) -> Self {
        let sent = stats.ok() + stats.errors();
        Self {
            ok: stats.ok(),
            by_status: stats
                .by_status
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            transport_errors: stats.transport,
            timeouts: stats.timeouts,
            missed: stats.missed,
            offered_rps: sent as f64 / duration.max(1) as f64,
            latency_ms: Latency::of(&stats.hist),
        }
    }

    fn errors(&self) -> u64 {
        self.by_status.values().sum::<u64>() + self.transport_errors + self.timeouts
    }
}

#[derive(Debug, Serialize)]
struct NoisyReport {
    url: String,
    run_id: String,
    duration_s: u64,
    warmup_s: u64,
    quiet_rate: f64,
    flood_rate: f64,
    flood_limit: f64,
    flood_connections: u32,
    quiet_alone: Side,
    quiet_under_flood: Side,
    flood: Side,
    /// p99 under flood / p99 alone.
    p99_ratio: f64,
}

/// Runs the noisy-neighbour benchmark against a running server.
pub(super) async fn noisy_neighbour(remote: &Remote, args: &BenchArgs) -> anyhow::Result<()> {
    let admin = remote.operator_client()?;
    let probe = ApiClient::new(&remote.url, None)?;
    probe
        .get("/healthz")
        .await
        .with_context(|| format!("health check of {} failed", probe.base()))?;
    let base = probe.base().clone();
    let addr = tokio::net::lookup_host(base.authority())
        .await
        .with_context(|| format!("cannot resolve `{}`", base.authority()))?
        .next()
        .with_context(|| format!("`{}` resolves to no address", base.authority()))?;
    let seed = args.seed.unwrap_or_else(seed_from_clock);
    let run_id = run_id(seed);

    // The flooder's tier: well below what it offers.
    admin
        .put(
            &format!("/v1/tiers/{FLOOD_TIER}"),
            &json!({
                "rate_per_second": args.flood_limit,
                "burst": (args.flood_limit.ceil() as u64).max(1),
                "max_concurrency": 16,
            }),
        )
        .await
        .context("cannot define the flooder's tier")?;
    let ttl = 3600 + 3 * (args.warmup + args.duration);
    let quiet = setup_tenant(&admin, args, &format!("bench-{run_id}-quiet"), ttl)
        .await
        .context("cannot set up the quiet tenant")?
        .target(&base)?;
    let flood_name = format!("bench-{run_id}-flood");
    let flood = setup_tenant(&admin, args, &flood_name, ttl)
        .await
        .context("cannot set up the flooder")?
        .target(&base)?;
    let flooder_id = flooder_id(&admin, &flood_name).await?;
    admin
        .patch(
            &format!("/v1/tenants/{}", encode(&flooder_id)),
            &json!({ "tier": FLOOD_TIER }),
        )
        .await
        .context("cannot put the flooder on its tier")?;
    eprintln!("set up tenants bench-{run_id}-quiet and bench-{run_id}-flood");

    let quiet_args = BenchArgs {
        scenario: Scenario::Read,
        rate: Some(args.quiet_rate),
        connections: args.quiet_connections,
        ..args.clone()
    };
    let flood_args = BenchArgs {
        scenario: Scenario::Read,
        rate: Some(args.flood_rate),
        connections: args.flood_connections,
        ..args.clone()
    };
    let retarget = |t: &TenantTarget| TenantTarget {
        auth: t.auth.clone(),
        create: t.create.clone(),
        records: t.records.clone(),
    };

    eprintln!("phase 1: the quiet tenant alone");
    let alone = Arc::new(Plan::new(&quiet_args, &base, addr, vec![retarget(&quiet)])?);
    let alone = run(&alone, seed).await?;

    eprintln!("phase 2: the quiet tenant while the flooder floods");
    let quiet_plan = Arc::new(Plan::new(&quiet_args, &base, addr, vec![quiet])?);
    let flood_plan = Arc::new(Plan::new(&flood_args, &base, addr, vec![flood])?);
    let (under, flooded) = tokio::join!(run(&quiet_plan, seed), run(&flood_plan, seed ^ 1));
    let (under, flooded) = (under?, flooded?);

    let (quiet_alone, quiet_under_flood, flood) = (
        Side::of(&alone, args.duration),
        Side::of(&under, args.duration),
        Side::of(&flooded, args.duration),
    );
    let p99_ratio = if quiet_alone.latency_ms.p99 > 0.0 {
        quiet_under_flood.latency_ms.p99 / quiet_alone.latency_ms.p99
    } else {
        0.0
    };
    let report = NoisyReport {
        url: base.to_string(),
        run_id,
        duration_s: args.duration,
        warmup_s: args.warmup,
        quiet_rate: args.quiet_rate,
        flood_rate: args.flood_rate,
        flood_limit: args.flood_limit,
        flood_connections: args.flood_connections,
        quiet_alone,
        quiet_under_flood,
        flood,
        p99_ratio,
    };
    if remote.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    let quiet_errors = report.quiet_alone.errors() + report.quiet_under_flood.errors();
    if quiet_errors > 0 {
        bail!("the quiet tenant had {quiet_errors} failed requests");
    }
    Ok(())
}

/// The id of the tenant named `name` (setup returns targets, not ids).
async fn flooder_id(admin: &ApiClient, name: &str) -> anyhow::Result<String> {
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/tenants?limit=1000&cursor={}", encode(c)),
            None => "/v1/tenants?limit=1000".to_owned(),
        };
        let page = admin.get(&path).await?;
        if let Some(items) = page.get("items").and_then(Value::as_array) {
            for t in items {
                if t.get("name").and_then(Value::as_str) == Some(name) {
                    return Ok(str_field(t, "id")?.to_owned());
                }
            }
        }
        match page.get("next_cursor").and_then(Value::as_str) {
            Some(c) => cursor = Some(c.to_owned()),
            None => bail!("tenant `{name}` was not found after creating it"),
        }
    }
}

fn render(r: &NoisyReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "  noisy-neighbour on {} ({} s measured after {} s warmup per phase)",
        r.url, r.duration_s, r.warmup_s
    );
    let _ = writeln!(
        out,
        "  quiet tenant: {} req/s; flooder: offered {} req/s over {} connections, tier limit {} req/s\n",
        r.quiet_rate, r.flood_rate, r.flood_connections, r.flood_limit
    );
    let _ = writeln!(
        out,
        "  {:<22} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}",
        "", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "ok", "errors"
    );
    for (name, s) in [
        ("quiet, alone", &r.quiet_alone),
        ("quiet, under flood", &r.quiet_under_flood),
        ("flooder", &r.flood),
    ] {
        let _ = writeln!(
            out,
            "  {:<22} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>8} {:>8}",
            name,
            s.latency_ms.p50,
            s.latency_ms.p99,
            s.latency_ms.p999,
            s.latency_ms.max,
            s.ok,
            s.errors()
        );
    }
    let _ = writeln!(
        out,
        "\n  quiet p99 under flood / alone: {:.2}x",
        r.p99_ratio
    );
    let _ = writeln!(
        out,
        "  flooder: sent {:.0} req/s (missed {}), answered {:?}",
        r.flood.offered_rps, r.flood.missed, r.flood.by_status
    );
    let _ = writeln!(
        out,
        "  quiet: answered {:?} alone, {:?} under flood",
        r.quiet_alone.by_status, r.quiet_under_flood.by_status
    );
    out
}

#[derive(Debug, Serialize)]
struct MemoryReport {
    tenants: u32,
    /// Tenants held after every one was seen once.
    held: usize,
    memory_bytes: usize,
    bytes_per_tenant: f64,
    /// Mean cost of one admission (rate + concurrency), one thread.
    admit_ns: f64,
    /// Tenants held after they were idle for the eviction period.
    held_after_idle: usize,
    memory_bytes_after_idle: usize,
}

/// Measures the limiter alone: memory with `--tenants` tenants, the cost of an admission, and
/// what idle eviction gives back. No server is involved.
pub(super) fn limiter_memory(remote: &Remote, args: &BenchArgs) -> anyhow::Result<()> {
    use bulkhead_core::TenantId;
    use bulkhead_core::tier::TierLimits;
    use bulkhead_limits::LocalLimiter;

    let limiter = LocalLimiter::new();
    let limits = TierLimits::builtin("standard");
    let ids: Vec<TenantId> = (0..args.tenants).map(|_| TenantId::generate()).collect();
    let t0 = Duration::from_secs(1);
    for id in &ids {
        drop(limiter.admit(*id, &limits, t0));
    }
    let held = limiter.len();
    let memory = limiter.memory_bytes();
    // The cost of an admission: every tenant admitted again, over and over, at advancing times
    // (so that most are admitted, as in normal traffic).
    let rounds = (2_000_000 / ids.len().max(1)).max(1);
    let started = std::time::Instant::now();
    let mut n = 0u64;
    for r in 0..rounds {
        let now = t0 + Duration::from_millis(10 * (r as u64 + 1));
        for id in &ids {
            drop(limiter.admit(*id, &limits, now));
            n += 1;
        }
    }
    let admit_ns = started.elapsed().as_nanos() as f64 / n.max(1) as f64;
    let later = t0 + Duration::from_secs(3600);
    limiter.sweep(later, Duration::from_secs(60));
    let report = MemoryReport {
        tenants: args.tenants,
        held,
        memory_bytes: memory,
        bytes_per_tenant: memory as f64 / held.max(1) as f64,
        admit_ns,
        held_after_idle: limiter.len(),
        memory_bytes_after_idle: limiter.memory_bytes(),
    };
    if remote.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "  limiter with {} tenants: {} bytes ({:.1} bytes per tenant)\n  admission: {:.0} ns (one thread)\n  after {} s idle: {} tenants held, {} bytes",
            report.held,
            report.memory_bytes,
            report.bytes_per_tenant,
            report.admit_ns,
            3600,
            report.held_after_idle,
            report.memory_bytes_after_idle
        );
    }
    Ok(())
}
