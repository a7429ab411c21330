//! `bulkhead policy bench`: decisions per second and their latency with many tenants, each
//! with its own policy set, in-process (no server, no network): the cost of the policy
//! decision point by itself. Also reports the memory the built sets take.
#![allow(clippy::print_stdout, reason = "this module is CLI output")]

use std::time::{Duration, Instant};

use anyhow::Context as _;
use bulkhead_core::{Action, Role, Roles, TenantId};
use bulkhead_policy::{Engine, EngineConfig, Principal, Resource};
use hdrhistogram::Histogram;

#[derive(clap::Args, Debug)]
pub struct PolicyBenchArgs {
    /// Tenants, each with its own policy set
    #[arg(long, default_value_t = 10_000)]
    pub tenants: u32,
    /// Decisions to time (spread over random tenants)
    #[arg(long, default_value_t = 500_000)]
    pub decisions: u32,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

/// A tenant's own policies: the same shape for every tenant, with tenant-specific values so
/// no two sets are alike.
fn tenant_text(i: u32) -> String {
    format!(
        r#"@id("edit-own")
forbid (principal in Bulkhead::Role::"member",
        action in [Bulkhead::Action::"record:update", Bulkhead::Action::"record:delete"],
        resource)
unless {{ resource has owner && resource.owner == principal.subject }};
@id("frozen-{i}")
forbid (principal, action == Bulkhead::Action::"record:delete", resource)
when {{ resource.collection == "archive-{i}" }};
"#
    )
}

/// Resident memory of this process, in bytes (Linux).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u32) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        u32::try_from(self.0 % u64::from(n.max(1))).unwrap_or(0)
    }
}

pub fn run(args: &PolicyBenchArgs) -> anyhow::Result<()> {
    let engine = Engine::new(EngineConfig {
        cache_capacity: usize::try_from(args.tenants).unwrap_or(usize::MAX),
        ttl: Duration::from_secs(3600),
        ..EngineConfig::default()
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let tenants: Vec<TenantId> = (0..args.tenants).map(|_| TenantId::generate()).collect();
    let rss_before = rss_bytes();
    let started = Instant::now();
    for (i, t) in (0u32..).zip(&tenants) {
        engine
            .load(*t, Some((1, &tenant_text(i))))
            .map_err(|p| anyhow::anyhow!("tenant policies did not validate: {p:?}"))?;
    }
    let load_time = started.elapsed();
    let rss_after = rss_bytes();
    let cached = engine.cached_tenants();
    let roles = [
        Roles::from_slice(&[Role::Member]),
        Roles::from_slice(&[Role::Reader]),
        Roles::from_slice(&[Role::Admin]),
    ];
    let actions = [
        Action::ReadRecord,
        Action::UpdateRecord,
        Action::DeleteRecord,
        Action::CreateRecord,
    ];
    let evaluated = time_decisions(&engine, &tenants, args, &roles, &actions, false)?;
    // The first remembered pass fills the memory; the second (same sequence) is timed.
    time_decisions(&engine, &tenants, args, &roles, &actions, true)?;
    let remembered = time_decisions(&engine, &tenants, args, &roles, &actions, true)?;
    let mem = match (rss_before, rss_after) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b)),
        _ => None,
    };
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let summary = |r: &Timed| {
        serde_json::json!({
            "decisions": args.decisions,
            "allowed": r.allowed,
            "decisions_per_second": f64::from(args.decisions) / r.total.as_secs_f64(),
            "p50_us": us(&r.hist, 0.5),
            "p99_us": us(&r.hist, 0.99),
            "max_us": r.hist.max() as f64 / 1000.0,
        })
    };
    if args.json {
        let v = serde_json::json!({
            "tenants": args.tenants,
            "cached_tenants": cached,
            "evaluated": summary(&evaluated),
            "remembered": summary(&remembered),
            "remembered_decisions": engine.remembered_decisions(),
            "build_ms_total": load_time.as_secs_f64() * 1000.0,
            "rss_delta_bytes": mem,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("policy decision point, in-process, one thread");
        println!(
            "  tenants (own set each)  {}  (cached: {cached})",
            args.tenants
        );
        println!(
            "  build all sets          {:.0} ms ({:.1} µs per tenant, the cost of a cache miss)",
            load_time.as_secs_f64() * 1000.0,
            load_time.as_secs_f64() * 1e6 / f64::from(args.tenants.max(1))
        );
        if let Some(m) = mem {
            println!(
                "  memory of the sets      {:.1} MiB RSS ({:.1} KiB per tenant)",
                m as f64 / 1_048_576.0,
                m as f64 / 1024.0 / f64::from(args.tenants.max(1))
            );
        }
        for (name, r) in [
            ("evaluated by Cedar", &evaluated),
            ("remembered (2nd pass)", &remembered),
        ] {
            println!(
                "  {name:<22} {} decisions ({} allowed) in {:.2} s: {:.0}/s; \
                 set lookup + decision p50 {:.2} µs  p99 {:.2} µs  max {:.1} µs",
                args.decisions,
                r.allowed,
                r.total.as_secs_f64(),
                f64::from(args.decisions) / r.total.as_secs_f64(),
                us(&r.hist, 0.5),
                us(&r.hist, 0.99),
                r.hist.max() as f64 / 1000.0
            );
        }
        println!(
            "  decisions remembered    {} (bounded by policy.decision_cache_capacity)",
            engine.remembered_decisions()
        );
    }
    Ok(())
}

/// One timed pass over the decisions.
struct Timed {
    hist: Histogram<u64>,
    total: Duration,
    allowed: u64,
}

/// Times `args.decisions` random decisions (the same sequence on every pass): each is what a
/// request does, the lookup of the tenant's set and then the decision, either evaluated by
/// Cedar every time or through the engine's memory of decisions.
fn time_decisions(
    engine: &Engine,
    tenants: &[TenantId],
    args: &PolicyBenchArgs,
    roles: &[Option<Roles>; 3],
    actions: &[Action; 4],
    remembered: bool,
) -> anyhow::Result<Timed> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .context("cannot make a histogram")?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut allowed = 0u64;
    let started = Instant::now();
    for _ in 0..args.decisions {
        let t = tenants
            .get(usize::try_from(rng.below(args.tenants)).unwrap_or(0))
            .copied()
            .unwrap_or_else(TenantId::generate);
        let role = roles
            .get(usize::try_from(rng.below(3)).unwrap_or(0))
            .copied()
            .flatten()
            .unwrap_or_default();
        let action = actions
            .get(usize::try_from(rng.below(4)).unwrap_or(0))
            .copied()
            .unwrap_or(Action::ReadRecord);
        let owner = if rng.below(2) == 0 { "alice" } else { "bob" };
        let who = Principal {
            subject: "alice",
            roles: role,
        };
        let resource = Resource::Record {
            collection: "notes",
            id: Some("0193a0b2-0000-7000-8000-000000000000"),
            owner: Some(owner),
        };
        let t0 = Instant::now();
        let set = match engine.cached(t) {
            Some(s) => s,
            None => engine.load(t, None).map_err(|p| anyhow::anyhow!("{p:?}"))?,
        };
        let d = if remembered {
            engine.decide(&set, &who, action, &resource)
        } else {
            engine.evaluate(&set, &who, action, &resource).0
        };
        let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        hist.record(ns.max(1)).context("latency out of range")?;
        if d == bulkhead_core::role::Decision::Allow {
            allowed += 1;
        }
    }
    Ok(Timed {
        hist,
        total: started.elapsed(),
        allowed,
    })
}
