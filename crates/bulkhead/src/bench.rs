//! `bulkhead bench`: a built-in load generator for a running server, in the
//! spirit of pgbench and redis-benchmark.
//!
//! A run has two phases. Setup (shown with a progress bar) creates `--tenants`
//! tenants through the operator API, mints their tokens, declares a `bench`
//! collection in each and seeds it with records. The run then drives
//! `--connections` workers for `--warmup` + `--duration` seconds; each worker
//! owns one keep-alive HTTP/1.1 connection and, per request, picks a random
//! tenant (and record). Latencies of the requests sent after the warmup go to
//! one HdrHistogram per worker, merged at the end; failed requests are counted
//! by cause and never recorded as latencies.
//!
//! Without `--rate` the workers run closed-loop (each sends its next request
//! when the previous answer arrives). With `--rate` they follow a fixed
//! schedule (open loop) and latency is measured from the time a request was
//! *meant* to be sent, so a server that stalls cannot hide its stall by
//! slowing the generator down (coordinated omission).
//!
//! The generator shares the machine with the server, so the hot loop is kept
//! cheap: request targets and headers are built once per tenant, the
//! connection is driven by the worker's own task and answers are drained
//! without being buffered.
#![allow(clippy::print_stdout, reason = "this module is CLI output")]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail, ensure};
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use hdrhistogram::Histogram;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper_util::rt::TokioIo;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::time::Instant;

mod noisy;

use crate::client::{ApiClient, BaseUrl, encode};
use crate::ops::{Remote, Tier};

/// Highest latency the histograms can hold: one hour, in microseconds.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// How long after the end of the run in-flight requests may still finish
/// before they are counted as timeouts.
const GRACE: Duration = Duration::from_secs(10);

/// In open-loop mode a worker wakes up this much before a request is due,
/// because tokio's timer has a resolution of one millisecond.
const TIMER_SLACK: Duration = Duration::from_millis(1);

/// In open-loop mode a request due before the end may still be sent this late.
const LATE_CUTOFF: Duration = Duration::from_millis(100);

/// Pause between attempts to reconnect a worker's connection.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(50);

/// Above this share of failed requests the command fails.
const MAX_ERROR_RATE: f64 = 0.01;

/// Filler for the `s` field of written records, so that a `POST` body is
/// about 100 bytes.
const FILLER: &str = "the quick brown fox jumps over the lazy dog, then benchmarks bulkhead";

/// The collection used by the benchmark in every tenant.
const COLLECTION: &str = "bench";

/// What the workers send.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// GET a random record of a random tenant
    Read,
    /// POST a new record (about 100 bytes) to a random tenant
    Write,
    /// Reads and writes, --read-ratio of them reads
    Mixed,
    /// GET /healthz (no tenants, no setup): the server's floor
    Healthz,
    /// One tenant floods (far over its tier's limit) while a quiet tenant
    /// reads at a steady modest rate: the quiet tenant's latency alone and
    /// under the flood
    NoisyNeighbour,
    /// The limiter's memory and cost with --tenants tenants (no server)
    LimiterMemory,
}

impl Scenario {
    /// The scenario's name on the command line.
    fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Mixed => "mixed",
            Self::Healthz => "healthz",
            Self::NoisyNeighbour => "noisy-neighbour",
            Self::LimiterMemory => "limiter-memory",
        }
    }
}

/// Load-test a running server.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "\
Examples:
  bulkhead bench healthz --connections 32 --duration 5
  bulkhead bench read --tenants 1000 --records-per-tenant 10
  bulkhead bench mixed --read-ratio 0.8 --rate 5000 --json
  bulkhead bench noisy-neighbour --quiet-rate 200 --flood-rate 20000
  bulkhead bench limiter-memory --tenants 100000

The operator token is needed for every scenario but healthz: setup creates
tenants named bench-<run id>-<n> (left in place afterwards).
The command fails when more than 1 % of the requests fail, or when the server
cannot be reached for more than 1 % of the time.")]
pub struct BenchArgs {
    /// What to send
    #[arg(value_enum)]
    pub scenario: Scenario,

    /// How many tenants to create and spread the load over
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub tenants: u32,

    /// Records seeded in each tenant before the run (read targets)
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub records_per_tenant: u32,

    /// Concurrent workers, each with its own keep-alive connection
    #[arg(long, short = 'c', value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connections: u32,

    /// Measured time, in seconds
    #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub duration: u64,

    /// Time under load before measuring starts, in seconds
    #[arg(long, value_name = "SECONDS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=3_600))]
    pub warmup: u64,

    /// Share of reads in the mixed scenario, between 0 and 1
    #[arg(long, value_name = "RATIO", default_value_t = 0.9)]
    pub read_ratio: f64,

    /// Target total requests per second (open loop, latency measured from the
    /// intended send time); without it each worker sends as fast as answers come
    #[arg(long, value_name = "REQ_PER_S")]
    pub rate: Option<f64>,

    /// Seed for picking tenants and records, to repeat a run's choices
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,

    /// Tier of the tenants created for the run
    #[arg(long, value_enum, default_value_t = Tier::Enterprise)]
    pub tier: Tier,

    /// noisy-neighbour: the quiet tenant's steady rate, requests per second
    #[arg(long, value_name = "REQ_PER_S", default_value_t = 200.0)]
    pub quiet_rate: f64,

    /// noisy-neighbour: connections of the quiet tenant
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub quiet_connections: u32,

    /// noisy-neighbour: the rate the flooder offers, requests per second (open loop)
    #[arg(long, value_name = "REQ_PER_S", default_value_t = 20_000.0)]
    pub flood_rate: f64,

    /// noisy-neighbour: connections of the flooder
    #[arg(long, value_name = "N", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub flood_connections: u32,

    /// noisy-neighbour: the flooder's tier rate limit, requests per second
    #[arg(long, value_name = "REQ_PER_S", default_value_t = 500.0)]
    pub flood_limit: f64,

    /// Concurrent requests during setup
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub setup_concurrency: u32,

    /// After setup, save the tenants (their member tokens, valid 24 h, and seeded record
    /// ids) to FILE (mode 0600), so later runs can reuse them with --targets
    #[arg(long, value_name = "FILE", conflicts_with = "targets")]
    pub save_targets: Option<PathBuf>,

    /// Skip setup: run against the tenants an earlier run saved with --save-targets
    /// (--tenants and --records-per-tenant are then taken from the file)
    #[arg(long, value_name = "FILE")]
    pub targets: Option<PathBuf>,
}

/// Runs `bulkhead bench`; prints the results (JSON with `--json`) and fails
/// if more than 1 % of the requests failed.
pub async fn bench(remote: &Remote, mut args: BenchArgs) -> anyhow::Result<()> {
    validate(&args)?;
    match args.scenario {
        Scenario::LimiterMemory => return noisy::limiter_memory(remote, &args),
        Scenario::NoisyNeighbour => return noisy::noisy_neighbour(remote, &args).await,
        _ => {}
    }
    // Every scenario but healthz sets up tenants: ask for the token first.
    let admin = match (args.scenario, &args.targets) {
        (Scenario::Healthz, _) | (_, Some(_)) => None,
        _ => Some(remote.operator_client()?),
    };
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
    let tenants = match (&admin, &args.targets) {
        (_, Some(file)) if args.scenario != Scenario::Healthz => {
            let targets = load_targets(file, &base)?;
            // Report what the run used, not the (ignored) setup arguments.
            args.tenants = u32::try_from(targets.len()).unwrap_or(u32::MAX);
            args.records_per_tenant = targets
                .iter()
                .map(|t| u32::try_from(t.records.len()).unwrap_or(u32::MAX))
                .max()
                .unwrap_or(0);
            targets
        }
        (Some(admin), _) => {
            let (targets, saved) = setup(admin, &args, &base, &run_id).await?;
            if let Some(file) = &args.save_targets {
                save_targets(file, &saved)?;
                eprintln!(
                    "saved the tenants to {} (it holds tokens: keep it private)",
                    file.display()
                );
            }
            targets
        }
        (None, _) => Vec::new(),
    };

    let plan = Arc::new(Plan::new(&args, &base, addr, tenants)?);
    let totals = run(&plan, seed).await?;
    let report = Report::new(remote, &args, seed, &run_id, &totals);
    if remote.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    if report.requests == 0 {
        if let (Some(rate), Some(missed @ 1..)) = (args.rate, report.missed) {
            bail!(
                "no request due in the measured {} s was sent: the target of {rate} req/s was not reached \
                 ({missed} requests missed); lower --rate",
                args.duration
            );
        }
        bail!(
            "no request was sent during the measured {} s",
            args.duration
        );
    }
    if report.unreachable_share > MAX_ERROR_RATE {
        bail!(
            "the server could not be reached for {:.2} % of the workers' time, more than {:.0} %",
            report.unreachable_share * 100.0,
            MAX_ERROR_RATE * 100.0
        );
    }
    if report.error_rate > MAX_ERROR_RATE {
        bail!(
            "{} of {} requests failed ({:.2} %), more than {:.0} %",
            report.errors.total,
            report.requests,
            report.error_rate * 100.0,
            MAX_ERROR_RATE * 100.0
        );
    }
    Ok(())
}

/// Rejects argument combinations that cannot run.
fn validate(args: &BenchArgs) -> anyhow::Result<()> {
    ensure!(
        (0.0..=1.0).contains(&args.read_ratio),
        "--read-ratio must be between 0 and 1, not {}",
        args.read_ratio
    );
    if let Some(rate) = args.rate {
        ensure!(
            rate.is_finite() && rate > 0.0,
            "--rate must be a positive number of requests per second, not {rate}"
        );
    }
    let reads = match args.scenario {
        Scenario::Read | Scenario::NoisyNeighbour => true,
        Scenario::Mixed => args.read_ratio > 0.0,
        Scenario::Write | Scenario::Healthz | Scenario::LimiterMemory => false,
    };
    for (name, rate) in [
        ("--quiet-rate", args.quiet_rate),
        ("--flood-rate", args.flood_rate),
        ("--flood-limit", args.flood_limit),
    ] {
        ensure!(
            rate.is_finite() && rate > 0.0,
            "{name} must be a positive number of requests per second, not {rate}"
        );
    }
    ensure!(
        !reads || args.records_per_tenant > 0 || args.targets.is_some(),
        "the {} scenario reads records: --records-per-tenant must be at least 1",
        args.scenario.as_str()
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Setup

/// What a worker needs to send requests as one tenant, built once.
#[derive(Debug)]
struct TenantTarget {
    /// `Bearer <member token>`.
    auth: HeaderValue,
    /// `…/v1/collections/bench/records`, the target of writes.
    create: Uri,
    /// `…/v1/collections/bench/records/{id}` for every seeded record.
    records: Vec<Uri>,
}

/// A tenant as `--save-targets` writes it: paths relative to the server's base URL, so the
/// file also serves another instance of the same deployment.
#[derive(Debug, Serialize, Deserialize)]
struct SavedTarget {
    /// The member token (secret).
    token: String,
    /// The path writes go to.
    create: String,
    /// The paths of the seeded records.
    records: Vec<String>,
}

/// The file `--save-targets` writes and `--targets` reads.
#[derive(Debug, Serialize, Deserialize)]
struct SavedTargets {
    /// Format version (1).
    version: u32,
    tenants: Vec<SavedTarget>,
}

impl SavedTarget {
    fn target(&self, base: &BaseUrl) -> anyhow::Result<TenantTarget> {
        let mut auth = HeaderValue::try_from(format!("Bearer {}", self.token))?;
        auth.set_sensitive(true);
        Ok(TenantTarget {
            auth,
            create: Uri::try_from(base.path(&self.create))?,
            records: self
                .records
                .iter()
                .map(|r| Uri::try_from(base.path(r)).map_err(anyhow::Error::from))
                .collect::<anyhow::Result<_>>()?,
        })
    }
}

/// Writes the saved tenants, readable by the owner only (the file holds tokens).
fn save_targets(file: &Path, tenants: &[SavedTarget]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let body = serde_json::to_vec(&json!({ "version": 1, "tenants": tenants }))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut f = options
        .open(file)
        .with_context(|| format!("cannot write {}", file.display()))?;
    f.write_all(&body)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", file.display()))
}

/// Reads tenants saved by an earlier run.
fn load_targets(file: &Path, base: &BaseUrl) -> anyhow::Result<Vec<TenantTarget>> {
    let body = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let saved: SavedTargets = serde_json::from_slice(&body)
        .with_context(|| format!("{} is not a file written by --save-targets", file.display()))?;
    ensure!(
        saved.version == 1,
        "{}: unknown format version {}",
        file.display(),
        saved.version
    );
    ensure!(
        !saved.tenants.is_empty(),
        "{} holds no tenants",
        file.display()
    );
    let targets = saved
        .tenants
        .iter()
        .map(|t| t.target(base))
        .collect::<anyhow::Result<Vec<_>>>()?;
    eprintln!(
        "using {} saved tenants with {} records in all from {}",
        targets.len(),
        targets.iter().map(|t| t.records.len()).sum::<usize>(),
        file.display()
    );
    Ok(targets)
}

/// Creates the tenants, their tokens, collections and records.
async fn setup(
    admin: &ApiClient,
    args: &BenchArgs,
    base: &BaseUrl,
    run_id: &str,
) -> anyhow::Result<(Vec<TenantTarget>, Vec<SavedTarget>)> {
    let bar = ProgressBar::new(u64::from(args.tenants)).with_style(bar_style(
        "{msg:>12} [{bar:40}] {pos}/{len} tenants ({per_sec}, eta {eta})",
    ));
    bar.set_message("setting up");
    // Tokens must outlive setup and the run, whatever setup takes (and later runs, if saved).
    let ttl = match args.save_targets {
        Some(_) => 24 * 3600,
        None => 3600,
    } + args.warmup
        + args.duration;
    let targets: Vec<SavedTarget> = futures::stream::iter(0..args.tenants)
        .map(|i| {
            let bar = &bar;
            async move {
                let name = format!("bench-{run_id}-{i}");
                let target = setup_tenant(admin, args, &name, ttl)
                    .await
                    .with_context(|| format!("cannot set up tenant `{name}`"))?;
                bar.inc(1);
                Ok::<_, anyhow::Error>(target)
            }
        })
        .buffer_unordered(usize::try_from(args.setup_concurrency).unwrap_or(32))
        .try_collect()
        .await?;
    bar.finish_and_clear();
    eprintln!(
        "set up {} tenants (bench-{run_id}-*) with {} records each",
        targets.len(),
        args.records_per_tenant
    );
    let live = targets
        .iter()
        .map(|t| t.target(base))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((live, targets))
}

/// Creates one tenant and everything the run needs in it.
async fn setup_tenant(
    admin: &ApiClient,
    args: &BenchArgs,
    name: &str,
    ttl: u64,
) -> anyhow::Result<SavedTarget> {
    let tenant = admin
        .post(
            "/v1/tenants",
            &json!({ "name": name, "tier": args.tier.as_str() }),
        )
        .await?;
    let id = str_field(&tenant, "id")?;
    let tokens_path = format!("/v1/tenants/{}/tokens", encode(id));
    // Declaring a collection needs the admin role; the run itself uses a plain
    // member token, as an application would.
    let setup_token = admin
        .post(
            &tokens_path,
            &json!({ "subject": "bench-setup", "roles": ["admin", "member"], "ttl_seconds": ttl }),
        )
        .await?;
    let run_token = admin
        .post(
            &tokens_path,
            &json!({ "subject": "bench", "roles": ["member"], "ttl_seconds": ttl }),
        )
        .await?;
    let tenant_client = admin.with_token(str_field(&setup_token, "token")?)?;

    let collection = format!("/v1/collections/{COLLECTION}");
    tenant_client
        .put(
            &collection,
            &json!({
                "schema": {
                    "type": "object",
                    "properties": { "n": { "type": "integer" }, "s": { "type": "string" } },
                    "required": ["n"],
                },
                "indexes": ["n"],
            }),
        )
        .await?;
    let create_path = format!("{collection}/records");
    let mut records = Vec::new();
    for n in 0..args.records_per_tenant {
        let record = tenant_client
            .post(&create_path, &json!({ "data": { "n": n, "s": FILLER } }))
            .await?;
        records.push(format!(
            "{create_path}/{}",
            encode(str_field(&record, "id")?)
        ));
    }
    Ok(SavedTarget {
        token: str_field(&run_token, "token")?.to_owned(),
        create: create_path,
        records,
    })
}

/// A string field of the server's answer.
fn str_field<'v>(v: &'v Value, key: &str) -> anyhow::Result<&'v str> {
    v.get(key)
        .and_then(Value::as_str)
        .with_context(|| format!("the server's answer has no `{key}`: {v}"))
}

/// A progress bar style, falling back to the default if the template is bad.
fn bar_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

// ---------------------------------------------------------------------------
// Choices: random numbers, operations, schedule

/// A xorshift64* generator: fast, small, and good enough to pick targets.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    /// A generator seeded through splitmix64, so that any seed (even 0) works.
    fn new(seed: u64) -> Self {
        let mixed = splitmix64(seed);
        Self(if mixed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            mixed
        })
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (0 when `n` is 0), without modulo bias worth noting.
    fn below(&mut self, n: usize) -> usize {
        // Lemire's multiply-shift: the high half of a 64×64-bit product.
        let wide = u128::from(self.next_u64()) * (n as u128);
        usize::try_from(wide >> 64).unwrap_or(0)
    }

    /// A number in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1_u64 << 53) as f64
    }
}

/// The splitmix64 finaliser, to spread seeds.
fn splitmix64(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed from the clock, for runs without `--seed`.
fn seed_from_clock() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    splitmix64(nanos as u64 ^ u64::from(std::process::id()))
}

/// A short id that names this run's tenants.
fn run_id(seed: u64) -> String {
    format!("{:08x}", splitmix64(seed ^ seed_from_clock()) >> 32)
}

/// One request's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write,
    Healthz,
}

/// Picks the next operation of a scenario.
fn pick_op(scenario: Scenario, read_ratio: f64, rng: &mut Rng) -> Op {
    match scenario {
        Scenario::Read | Scenario::NoisyNeighbour => Op::Read,
        Scenario::Write => Op::Write,
        Scenario::Healthz | Scenario::LimiterMemory => Op::Healthz,
        Scenario::Mixed => {
            if rng.unit() < read_ratio {
                Op::Read
            } else {
                Op::Write
            }
        }
    }
}

/// The open-loop send schedule of one worker.
///
/// The workers share the target rate: worker `w` of `c` sends its `k`-th
/// request at `(k·c + w) / rate` seconds after the start, so that together
/// they send one request every `1 / rate` seconds, evenly interleaved.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    /// Total target rate, requests per second.
    rate: f64,
    /// How many workers share it.
    workers: u64,
    /// This worker's index.
    worker: u64,
}

impl Schedule {
    /// When the `k`-th request of this worker is due, from the start.
    fn offset(&self, k: u64) -> Duration {
        let slot = k.saturating_mul(self.workers).saturating_add(self.worker);
        Duration::try_from_secs_f64(slot as f64 / self.rate).unwrap_or(Duration::MAX)
    }

    /// How many of this worker's requests are due strictly before `at`.
    fn due_before(&self, at: Duration) -> u64 {
        // Request k is due before `at` iff k·workers + worker < at·rate.
        let slots = at.as_secs_f64() * self.rate - self.worker as f64;
        if slots <= 0.0 {
            return 0;
        }
        let count = (slots / self.workers.max(1) as f64).ceil() as u64;
        // Guard against rounding at the boundary.
        match count.checked_sub(1) {
            Some(last) if self.offset(last) >= at => last,
            _ => count,
        }
    }
}

// ---------------------------------------------------------------------------
// The run

/// Everything the workers share, read-only.
#[derive(Debug)]
struct Plan {
    scenario: Scenario,
    read_ratio: f64,
    /// Total target rate, if open loop.
    rate: Option<f64>,
    connections: u32,
    addr: SocketAddr,
    /// The `Host` header, same for every request.
    host: HeaderValue,
    /// `/healthz` under the server's path prefix.
    healthz: Uri,
    tenants: Vec<TenantTarget>,
    /// When the workers start sending.
    start: Instant,
    /// Requests meant to be sent from here on are measured.
    warm_end: Instant,
    /// No request is sent from here on.
    end: Instant,
    /// Requests still unanswered here are abandoned as timeouts.
    hard_stop: Instant,
}

impl Plan {
    fn new(
        args: &BenchArgs,
        base: &BaseUrl,
        addr: SocketAddr,
        tenants: Vec<TenantTarget>,
    ) -> anyhow::Result<Self> {
        // Leave the workers a moment to connect before the clock starts.
        let start = Instant::now() + Duration::from_millis(100);
        let warm_end = start + Duration::from_secs(args.warmup);
        let end = warm_end + Duration::from_secs(args.duration);
        Ok(Self {
            scenario: args.scenario,
            read_ratio: args.read_ratio,
            rate: args.rate,
            connections: args.connections,
            addr,
            host: HeaderValue::try_from(base.authority())?,
            healthz: Uri::try_from(base.path("/healthz"))?,
            tenants,
            start,
            warm_end,
            end,
            hard_stop: end + GRACE,
        })
    }

    /// How much of the interval `[from, to]` lies in the measured window.
    fn measured_part(&self, from: Instant, to: Instant) -> Duration {
        to.min(self.end)
            .saturating_duration_since(from.max(self.warm_end))
    }

    /// The request for `op`, or `None` if there is nothing to send it to.
    fn request(&self, op: Op, rng: &mut Rng, seq: u64) -> Option<Request<Full<Bytes>>> {
        let (method, uri, auth, body) = match op {
            Op::Healthz => (Method::GET, &self.healthz, None, Bytes::new()),
            Op::Read => {
                let tenant = self.tenants.get(rng.below(self.tenants.len()))?;
                let record = tenant.records.get(rng.below(tenant.records.len()))?;
                (Method::GET, record, Some(&tenant.auth), Bytes::new())
            }
            Op::Write => {
                let tenant = self.tenants.get(rng.below(self.tenants.len()))?;
                let body = format!(r#"{{"data":{{"n":{seq},"s":"{FILLER}"}}}}"#);
                (
                    Method::POST,
                    &tenant.create,
                    Some(&tenant.auth),
                    Bytes::from(body),
                )
            }
        };
        let is_post = method == Method::POST;
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri.clone();
        let headers = req.headers_mut();
        headers.insert(HOST, self.host.clone());
        if let Some(auth) = auth {
            headers.insert(AUTHORIZATION, auth.clone());
        }
        if is_post {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        Some(req)
    }
}

/// What one worker (or all of them, merged) saw.
#[derive(Debug, Clone)]
struct Stats {
    /// Latency of successful measured requests, in microseconds.
    hist: Histogram<u64>,
    /// Measured requests answered with a non-2xx status, by status.
    by_status: BTreeMap<u16, u64>,
    /// Measured requests lost to a broken or refused connection.
    transport: u64,
    /// Measured requests still unanswered at the hard stop.
    timeouts: u64,
    /// Open loop only: measured requests that were due but never sent,
    /// because the generator fell behind the target rate.
    missed: u64,
    /// Measured time the worker spent unable to connect.
    unreachable: Duration,
    /// The first transport error, to tell the user what went wrong.
    first_error: Option<String>,
}

impl Stats {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            hist: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?,
            by_status: BTreeMap::new(),
            transport: 0,
            timeouts: 0,
            missed: 0,
            unreachable: Duration::ZERO,
            first_error: None,
        })
    }

    fn ok(&self) -> u64 {
        self.hist.len()
    }

    fn errors(&self) -> u64 {
        self.by_status.values().sum::<u64>() + self.transport + self.timeouts
    }

    fn merge(&mut self, other: &Self) -> anyhow::Result<()> {
        self.hist.add(&other.hist)?;
        for (status, n) in &other.by_status {
            *self.by_status.entry(*status).or_default() += n;
        }
        self.transport += other.transport;
        self.timeouts += other.timeouts;
        self.missed += other.missed;
        self.unreachable += other.unreachable;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        Ok(())
    }

    fn transport_error(&mut self, measured: bool, error: impl std::fmt::Display) {
        if measured {
            self.transport += 1;
        }
        if self.first_error.is_none() {
            self.first_error = Some(error.to_string());
        }
    }
}

/// A worker's mutable state.
struct Worker {
    id: u32,
    rng: Rng,
    /// Open loop: the worker's schedule and the index of its next request.
    schedule: Option<Schedule>,
    next: u64,
    /// Sequence number written into created records.
    seq: u64,
    /// `Some(measured)` while a request is unanswered, so that a request lost
    /// with its connection is still counted.
    in_flight: Option<bool>,
    stats: Stats,
}

/// Why a worker's request loop stopped.
enum Outcome {
    /// The run is over.
    Done,
    /// The connection broke: connect again.
    Reconnect,
}

type Conn = Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// Runs all workers and merges what they saw.
async fn run(plan: &Arc<Plan>, seed: u64) -> anyhow::Result<Stats> {
    let total = plan.end.saturating_duration_since(plan.start);
    let bar = ProgressBar::new(u64::try_from(total.as_millis()).unwrap_or(u64::MAX))
        .with_style(bar_style("{msg:>12} [{bar:40}] {elapsed}"));
    let template = Stats::new()?;
    let handles: Vec<_> = (0..plan.connections)
        .map(|id| {
            let plan = Arc::clone(plan);
            let stats = template.clone();
            let seed = splitmix64(seed ^ u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            tokio::spawn(async move { worker(plan, id, seed, stats).await })
        })
        .collect();

    let joined = futures::future::join_all(handles);
    tokio::pin!(joined);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let results = loop {
        tokio::select! {
            results = &mut joined => break results,
            _ = tick.tick() => {
                let now = Instant::now();
                bar.set_message(if now < plan.warm_end { "warming up" } else if now < plan.end { "measuring" } else { "draining" });
                let done = now.saturating_duration_since(plan.start).min(total);
                bar.set_position(u64::try_from(done.as_millis()).unwrap_or(u64::MAX));
            }
        }
    };
    bar.finish_and_clear();

    let mut totals = template;
    for result in results {
        let stats = result.map_err(|e| anyhow!("a benchmark worker failed: {e}"))?;
        totals.merge(&stats)?;
    }
    Ok(totals)
}

/// One worker: connects, sends until the end, reconnects if needed.
async fn worker(plan: Arc<Plan>, id: u32, seed: u64, stats: Stats) -> Stats {
    let mut w = Worker {
        id,
        rng: Rng::new(seed),
        schedule: plan.rate.map(|rate| Schedule {
            rate,
            workers: u64::from(plan.connections),
            worker: u64::from(id),
        }),
        next: 0,
        seq: u64::from(id) << 40,
        in_flight: None,
        stats,
    };
    let hard_stop = tokio::time::sleep_until(plan.hard_stop);
    tokio::pin!(hard_stop);
    // Since when the worker has failed to connect, if it has.
    let mut down_since: Option<Instant> = None;
    loop {
        if Instant::now() >= plan.end {
            break;
        }
        let connected = tokio::select! {
            biased;
            () = &mut hard_stop => break,
            c = connect(plan.addr) => c,
        };
        let (mut sender, conn) = match connected {
            Ok(pair) => {
                if let Some(since) = down_since.take() {
                    w.stats.unreachable += plan.measured_part(since, Instant::now());
                }
                pair
            }
            Err(e) => {
                // Not a request: counted as time without a connection instead,
                // which does not depend on how fast we retry.
                down_since.get_or_insert_with(Instant::now);
                w.stats
                    .transport_error(false, format_args!("cannot connect to {}: {e}", plan.addr));
                tokio::time::sleep(RECONNECT_BACKOFF).await;
                continue;
            }
        };
        tokio::pin!(conn);
        // The connection is driven here, in the worker's own task, rather than
        // in a task of its own: one task and no cross-task wake-up per request.
        // The request loop is polled before the connection so that an answer
        // that arrived just before the server closed is still taken.
        let outcome = tokio::select! {
            biased;
            () = &mut hard_stop => None,
            outcome = send_loop(&plan, &mut sender, &mut w) => Some(Ok(outcome)),
            ended = &mut conn => Some(Err(ended.err().map_or_else(
                || "the server closed the connection".to_owned(),
                |e| e.to_string(),
            ))),
        };
        match outcome {
            None => {
                if w.in_flight.take() == Some(true) {
                    w.stats.timeouts += 1;
                }
                break;
            }
            Some(Err(why)) => {
                if let Some(measured) = w.in_flight.take() {
                    w.stats.transport_error(measured, why);
                }
            }
            Some(Ok(Outcome::Done)) => break,
            Some(Ok(Outcome::Reconnect)) => {}
        }
    }
    if let Some(since) = down_since {
        w.stats.unreachable += plan.measured_part(since, Instant::now());
    }
    // Open loop: whatever was due in the measured window but never sent.
    if let Some(schedule) = w.schedule {
        let first_measured = schedule.due_before(plan.warm_end - plan.start);
        let last = schedule.due_before(plan.end - plan.start);
        w.stats.missed += last.saturating_sub(w.next.max(first_measured));
    }
    w.stats
}

/// Opens one keep-alive HTTP/1.1 connection.
async fn connect(addr: SocketAddr) -> Result<(SendRequest<Full<Bytes>>, Conn), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())
}

/// Sends requests on one connection until the run ends or the connection breaks.
async fn send_loop(plan: &Plan, sender: &mut SendRequest<Full<Bytes>>, w: &mut Worker) -> Outcome {
    loop {
        // Open loop: when the next request is due.
        let due = match w.schedule {
            None => None,
            Some(schedule) => {
                let due = plan.start + schedule.offset(w.next);
                if due >= plan.end {
                    return Outcome::Done;
                }
                if due > Instant::now() + TIMER_SLACK {
                    tokio::time::sleep_until(due - TIMER_SLACK).await;
                }
                Some(due)
            }
        };
        if sender.ready().await.is_err() {
            // Not sent: the same slot is retried on the next connection.
            return Outcome::Reconnect;
        }
        let now = Instant::now();
        // Open loop too: a generator that fell behind does not run over (by
        // more than a timer's hiccup); what it did not send is counted as missed.
        let cutoff = if due.is_some() {
            plan.end + LATE_CUTOFF
        } else {
            plan.end
        };
        if now >= cutoff {
            return Outcome::Done;
        }
        w.next += 1;
        w.seq += 1;
        let op = pick_op(plan.scenario, plan.read_ratio, &mut w.rng);
        let Some(req) = plan.request(op, &mut w.rng, w.seq) else {
            // Only possible if setup produced no targets; stop rather than spin.
            w.stats
                .first_error
                .get_or_insert_with(|| format!("worker {}: nothing to send", w.id));
            return Outcome::Done;
        };
        // Open loop: measured from the intended time if late, from the actual
        // send if a little early (see TIMER_SLACK).
        let started = due.map_or(now, |due| due.min(now));
        let measured = due.unwrap_or(now) >= plan.warm_end;
        w.in_flight = Some(measured);
        let response = match sender.send_request(req).await {
            Ok(response) => response,
            Err(e) => {
                w.in_flight = None;
                w.stats.transport_error(measured, e);
                return Outcome::Reconnect;
            }
        };
        let status = response.status();
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            if let Err(e) = frame {
                w.in_flight = None;
                w.stats.transport_error(measured, e);
                return Outcome::Reconnect;
            }
        }
        w.in_flight = None;
        if measured {
            if status.is_success() {
                let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                w.stats.hist.saturating_record(micros.max(1));
            } else {
                *w.stats.by_status.entry(status.as_u16()).or_default() += 1;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Results

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    #[serde(rename = "p99_9")]
    p999: f64,
    max: f64,
    mean: f64,
}

impl Latency {
    /// Summarises a histogram of microseconds; all zero if it is empty.
    fn of(hist: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        if hist.is_empty() {
            return Self {
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0,
                mean: 0.0,
            };
        }
        Self {
            p50: ms(hist.value_at_quantile(0.50)),
            p90: ms(hist.value_at_quantile(0.90)),
            p99: ms(hist.value_at_quantile(0.99)),
            p999: ms(hist.value_at_quantile(0.999)),
            max: ms(hist.max()),
            mean: hist.mean() / 1000.0,
        }
    }
}

/// Failed requests by cause.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct Errors {
    total: u64,
    /// Non-2xx answers, by status code.
    by_status: BTreeMap<String, u64>,
    /// Broken or refused connections.
    transport: u64,
    /// No answer before the hard stop.
    timeout: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_transport_error: Option<String>,
}

/// The results of a run, as printed.
#[derive(Debug, Clone, Serialize)]
struct Report {
    scenario: Scenario,
    url: String,
    run_id: String,
    seed: u64,
    tenants: u32,
    records_per_tenant: u32,
    connections: u32,
    duration_s: u64,
    warmup_s: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    read_ratio: Option<f64>,
    /// Target total rate (open loop), or null for closed loop.
    target_rate: Option<f64>,
    /// Measured requests: answered with 2xx plus failed.
    requests: u64,
    ok: u64,
    errors: Errors,
    error_rate: f64,
    /// Open loop: requests due in the measured window but never sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    missed: Option<u64>,
    /// Share of the workers' measured time spent unable to connect, 0 to 1.
    unreachable_share: f64,
    throughput_rps: f64,
    latency_ms: Latency,
}

impl Report {
    fn new(remote: &Remote, args: &BenchArgs, seed: u64, run_id: &str, stats: &Stats) -> Self {
        let ok = stats.ok();
        let failed = stats.errors();
        let requests = ok + failed;
        let healthz = args.scenario == Scenario::Healthz;
        Self {
            scenario: args.scenario,
            url: remote.url.clone(),
            run_id: run_id.to_owned(),
            seed,
            tenants: if healthz { 0 } else { args.tenants },
            records_per_tenant: if healthz { 0 } else { args.records_per_tenant },
            connections: args.connections,
            duration_s: args.duration,
            warmup_s: args.warmup,
            read_ratio: (args.scenario == Scenario::Mixed).then_some(args.read_ratio),
            target_rate: args.rate,
            requests,
            ok,
            errors: Errors {
                total: failed,
                by_status: stats
                    .by_status
                    .iter()
                    .map(|(status, n)| (status.to_string(), *n))
                    .collect(),
                transport: stats.transport,
                timeout: stats.timeouts,
                first_transport_error: stats.first_error.clone(),
            },
            error_rate: if requests == 0 {
                0.0
            } else {
                failed as f64 / requests as f64
            },
            missed: args.rate.map(|_| stats.missed),
            unreachable_share: stats.unreachable.as_secs_f64()
                / (f64::from(args.connections) * args.duration as f64),
            throughput_rps: requests as f64 / args.duration as f64,
            latency_ms: Latency::of(&stats.hist),
        }
    }

    /// The report for people.
    fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |key: &str, value: String| {
            let _ = writeln!(out, "  {key:<13} {value}");
        };
        let mode = match self.target_rate {
            Some(rate) => format!("open loop, target {rate} req/s"),
            None => "closed loop".to_owned(),
        };
        line("scenario", self.scenario.as_str().to_owned());
        line("server", self.url.clone());
        if self.tenants > 0 {
            line(
                "tenants",
                format!(
                    "{} × {} records (bench-{}-*)",
                    self.tenants, self.records_per_tenant, self.run_id
                ),
            );
        }
        if let Some(ratio) = self.read_ratio {
            line("read ratio", format!("{ratio}"));
        }
        line("connections", format!("{} ({mode})", self.connections));
        line(
            "duration",
            format!(
                "{} s after {} s warmup (seed {})",
                self.duration_s, self.warmup_s, self.seed
            ),
        );
        line("requests", self.requests.to_string());
        let mut errors = format!("{} ({:.2} %)", self.errors.total, self.error_rate * 100.0);
        let mut causes: Vec<String> = self
            .errors
            .by_status
            .iter()
            .map(|(status, n)| format!("{status} × {n}"))
            .collect();
        if self.errors.transport > 0 {
            causes.push(format!("transport × {}", self.errors.transport));
        }
        if self.errors.timeout > 0 {
            causes.push(format!("timeout × {}", self.errors.timeout));
        }
        if !causes.is_empty() {
            let _ = write!(errors, ": {}", causes.join(", "));
        }
        line("errors", errors);
        if let Some(first) = &self.errors.first_transport_error {
            line("first error", first.clone());
        }
        line("throughput", format!("{:.1} req/s", self.throughput_rps));
        if self.unreachable_share > 0.0 {
            line(
                "unreachable",
                format!(
                    "no connection to the server for {:.2} % of the workers' time",
                    self.unreachable_share * 100.0
                ),
            );
        }
        if let Some(missed) = self.missed.filter(|m| *m > 0) {
            line(
                "missed",
                format!("{missed} requests due but never sent: the target rate was not reached"),
            );
        }
        let l = &self.latency_ms;
        line(
            "latency (ms)",
            format!(
                "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
                l.p50, l.p90, l.p99, l.p999, l.max
            ),
        );
        out
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]
mod tests {
    use clap::{CommandFactory as _, Parser};

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Cmd {
        /// How `main.rs` is expected to wire the command.
        Bench {
            #[command(flatten)]
            remote: Remote,
            #[command(flatten)]
            args: BenchArgs,
        },
    }

    fn parse(args: &[&str]) -> (Remote, BenchArgs) {
        let cli = Cli::try_parse_from(
            ["bulkhead", "bench"]
                .into_iter()
                .chain(args.iter().copied()),
        )
        .unwrap();
        let Cmd::Bench { remote, args } = cli.cmd;
        (remote, args)
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_documentation() {
        let (remote, a) = parse(&["read", "--json"]);
        assert!(remote.json);
        assert_eq!(a.scenario, Scenario::Read);
        assert_eq!(
            (
                a.tenants,
                a.records_per_tenant,
                a.connections,
                a.duration,
                a.warmup
            ),
            (1000, 10, 64, 10, 2)
        );
        assert!((a.read_ratio - 0.9).abs() < f64::EPSILON);
        assert_eq!(a.rate, None);
        assert_eq!(a.tier, Tier::Enterprise);
        validate(&a).unwrap();
    }

    #[test]
    fn rejects_impossible_arguments() {
        let (_, a) = parse(&["mixed", "--read-ratio", "1.5"]);
        assert!(
            validate(&a)
                .unwrap_err()
                .to_string()
                .contains("--read-ratio")
        );
        let (_, a) = parse(&["read", "--records-per-tenant", "0"]);
        assert!(
            validate(&a)
                .unwrap_err()
                .to_string()
                .contains("--records-per-tenant")
        );
        let (_, a) = parse(&["write", "--records-per-tenant", "0"]);
        validate(&a).unwrap();
        let (_, a) = parse(&["healthz", "--rate", "0"]);
        assert!(validate(&a).unwrap_err().to_string().contains("--rate"));
        assert!(Cli::try_parse_from(["bulkhead", "bench", "read", "--connections", "0"]).is_err());
    }

    #[test]
    fn rng_is_deterministic_and_in_range() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        let mut counts = [0_u32; 10];
        for _ in 0..100_000 {
            let x = a.below(10);
            assert_eq!(x, b.below(10));
            counts[x] += 1;
        }
        // Uniform within 5 % of the expected 10 000 per bucket.
        assert!(
            counts.iter().all(|c| (9_500..=10_500).contains(c)),
            "{counts:?}"
        );
        assert_eq!(Rng::new(0).below(0), 0);
        let u = Rng::new(0).unit();
        assert!((0.0..1.0).contains(&u));
    }

    fn read_share(scenario: Scenario, ratio: f64) -> f64 {
        let mut rng = Rng::new(7);
        let n = 100_000;
        let reads = (0..n)
            .filter(|_| pick_op(scenario, ratio, &mut rng) == Op::Read)
            .count();
        reads as f64 / f64::from(n)
    }

    #[test]
    fn scenario_picker_follows_the_read_ratio() {
        assert!((read_share(Scenario::Mixed, 0.9) - 0.9).abs() < 0.01);
        assert!((read_share(Scenario::Mixed, 0.5) - 0.5).abs() < 0.01);
        assert!((read_share(Scenario::Mixed, 0.0)).abs() < f64::EPSILON);
        assert!((read_share(Scenario::Mixed, 1.0) - 1.0).abs() < f64::EPSILON);
        assert!((read_share(Scenario::Read, 0.0) - 1.0).abs() < f64::EPSILON);
        let mut rng = Rng::new(1);
        assert_eq!(pick_op(Scenario::Write, 1.0, &mut rng), Op::Write);
        assert_eq!(pick_op(Scenario::Healthz, 1.0, &mut rng), Op::Healthz);
    }

    #[test]
    fn schedule_interleaves_workers_at_the_target_rate() {
        let workers = 4;
        let mut due: Vec<Duration> = (0..workers)
            .flat_map(|w| {
                let s = Schedule {
                    rate: 1000.0,
                    workers,
                    worker: w,
                };
                (0..10).map(move |k| s.offset(k))
            })
            .collect();
        due.sort();
        // Together: one request every millisecond, none twice.
        for (i, d) in due.iter().enumerate() {
            let expected = Duration::from_millis(i as u64);
            let diff = d.abs_diff(expected);
            assert!(diff < Duration::from_nanos(10), "request {i} due at {d:?}");
        }
        let s = Schedule {
            rate: 3.0,
            workers: 1,
            worker: 0,
        };
        assert_eq!(s.offset(0), Duration::ZERO);
        assert!(s.offset(3).abs_diff(Duration::from_secs(1)) < Duration::from_nanos(10));
        // Counting agrees with the offsets.
        for w in 0..3 {
            let s = Schedule {
                rate: 700.0,
                workers: 3,
                worker: w,
            };
            for at_ms in [0, 1, 4, 5, 100, 1000, 1003] {
                let at = Duration::from_millis(at_ms);
                let expected = (0..10_000).filter(|k| s.offset(*k) < at).count() as u64;
                assert_eq!(s.due_before(at), expected, "worker {w} before {at:?}");
            }
        }
        // Absurd indices saturate instead of overflowing.
        let s = Schedule {
            rate: 1e-300,
            workers: u64::MAX,
            worker: 1,
        };
        assert_eq!(s.offset(u64::MAX), Duration::MAX);
    }

    fn stats_with(latencies_us: impl IntoIterator<Item = u64>) -> Stats {
        let mut s = Stats::new().unwrap();
        for us in latencies_us {
            s.hist.record(us).unwrap();
        }
        s
    }

    #[test]
    fn summarises_percentiles_in_milliseconds() {
        let l = Latency::of(&stats_with(1..=1000).hist);
        assert_eq!(
            l,
            Latency {
                p50: 0.5,
                p90: 0.9,
                p99: 0.99,
                p999: 0.999,
                max: 1.0,
                mean: 0.5005
            }
        );
        assert_eq!(Latency::of(&Stats::new().unwrap().hist).max, 0.0);
    }

    #[test]
    fn merges_worker_stats() {
        let mut a = stats_with(1..=500);
        a.by_status.insert(503, 2);
        a.transport = 1;
        let mut b = stats_with(501..=1000);
        b.by_status.insert(503, 1);
        b.by_status.insert(429, 4);
        b.timeouts = 3;
        b.first_error = Some("connection reset".into());
        a.merge(&b).unwrap();
        assert_eq!(a.ok(), 1000);
        assert_eq!(a.by_status, BTreeMap::from([(429, 4), (503, 3)]));
        assert_eq!(a.errors(), 4 + 3 + 1 + 3);
        assert_eq!(a.first_error.as_deref(), Some("connection reset"));
        assert_eq!(Latency::of(&a.hist).p50, 0.5);
    }

    #[test]
    fn report_counts_errors_apart_from_latencies() {
        let (remote, args) = parse(&["mixed", "--duration", "2"]);
        let mut stats = stats_with([1000; 98]);
        stats.by_status.insert(500, 2);
        let r = Report::new(&remote, &args, 1, "abcd1234", &stats);
        assert_eq!((r.requests, r.ok, r.errors.total), (100, 98, 2));
        assert!((r.error_rate - 0.02).abs() < 1e-12);
        assert!((r.throughput_rps - 50.0).abs() < 1e-12);
        assert_eq!(r.latency_ms.max, 1.0);
        let shown = r.render();
        for needle in [
            "mixed",
            "2 (2.00 %): 500 × 2",
            "50.0 req/s",
            "p99.9 1.000",
            "read ratio",
        ] {
            assert!(shown.contains(needle), "{needle} missing from\n{shown}");
        }
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["errors"]["by_status"]["500"], 2);
        assert_eq!(json["latency_ms"]["p99_9"], 1.0);
        assert_eq!(json["scenario"], "mixed");
        assert!(json["target_rate"].is_null());
    }

    #[test]
    fn saved_targets_round_trip_privately_and_rebase_on_the_url() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("targets.json");
        let saved = vec![SavedTarget {
            token: "tok".into(),
            create: "/v1/collections/bench/records".into(),
            records: vec!["/v1/collections/bench/records/r1".into()],
        }];
        save_targets(&file, &saved).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the file holds tokens");
        }
        // Another instance of the same deployment, under a path prefix.
        let base = BaseUrl::parse("http://127.0.0.1:8701/pfx").unwrap();
        let loaded = load_targets(&file, &base).unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].auth, "Bearer tok");
        assert_eq!(loaded[0].create, "/pfx/v1/collections/bench/records");
        assert_eq!(loaded[0].records[0], "/pfx/v1/collections/bench/records/r1");
        // Not a targets file: a clear error, not an empty run.
        std::fs::write(&file, br#"{"version": 1, "tenants": []}"#).unwrap();
        let e = load_targets(&file, &base).unwrap_err().to_string();
        assert!(e.contains("holds no tenants"), "{e}");
        std::fs::write(&file, b"[]").unwrap();
        let e = load_targets(&file, &base).unwrap_err().to_string();
        assert!(e.contains("not a file written by --save-targets"), "{e}");
    }

    #[test]
    fn requests_are_prebuilt_per_tenant() {
        let base = BaseUrl::parse("http://127.0.0.1:8700/pfx").unwrap();
        let (_, args) = parse(&["mixed", "--read-ratio", "0.5"]);
        let tenant = TenantTarget {
            auth: HeaderValue::from_static("Bearer t"),
            create: Uri::try_from(base.path("/v1/collections/bench/records")).unwrap(),
            records: vec![Uri::try_from(base.path("/v1/collections/bench/records/r1")).unwrap()],
        };
        let plan = Plan::new(
            &args,
            &base,
            "127.0.0.1:8700".parse().unwrap(),
            vec![tenant],
        )
        .unwrap();
        let mut rng = Rng::new(3);
        let read = plan.request(Op::Read, &mut rng, 1).unwrap();
        assert_eq!(read.method(), Method::GET);
        assert_eq!(read.uri(), "/pfx/v1/collections/bench/records/r1");
        assert_eq!(read.headers()[HOST], "127.0.0.1:8700");
        assert_eq!(read.headers()[AUTHORIZATION], "Bearer t");
        let write = plan.request(Op::Write, &mut rng, 77).unwrap();
        assert_eq!(write.method(), Method::POST);
        assert_eq!(write.headers()[CONTENT_TYPE], "application/json");
        let body: Value = serde_json::from_slice(
            &futures::executor::block_on(write.into_body().collect())
                .unwrap()
                .to_bytes(),
        )
        .unwrap();
        assert_eq!(body["data"]["n"], 77);
        let health = plan.request(Op::Healthz, &mut rng, 0).unwrap();
        assert_eq!(health.uri(), "/pfx/healthz");
        assert!(health.headers().get(AUTHORIZATION).is_none());
    }

    #[test]
    fn only_the_measured_window_counts() {
        let (_, args) = parse(&["healthz", "--warmup", "1", "--duration", "2"]);
        let base = BaseUrl::parse("http://127.0.0.1:1").unwrap();
        let plan = Plan::new(&args, &base, "127.0.0.1:1".parse().unwrap(), Vec::new()).unwrap();
        let s = Duration::from_secs;
        let at = |secs| plan.start + s(secs);
        assert_eq!(plan.measured_part(at(0), at(5)), s(2));
        assert_eq!(plan.measured_part(at(0), at(1)), Duration::ZERO);
        assert_eq!(plan.measured_part(at(2), at(5)), s(1));
        assert_eq!(plan.measured_part(at(4), at(5)), Duration::ZERO);
    }

    /// Drives real workers against an in-process server whose records answer
    /// 200 or 404, to check that failures are counted apart from latencies.
    #[tokio::test]
    async fn workers_count_answers_by_status() {
        use axum::routing::get;
        let app = axum::Router::new()
            .route("/healthz", get(|| async { "{\"status\":\"ok\"}" }))
            .route(
                "/v1/collections/bench/records/{id}",
                get(
                    |axum::extract::Path(id): axum::extract::Path<String>| async move {
                        if id == "gone" {
                            (http::StatusCode::NOT_FOUND, "{}")
                        } else {
                            (http::StatusCode::OK, "{}")
                        }
                    },
                ),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });

        let base = BaseUrl::parse(&format!("http://{addr}")).unwrap();
        let record = |id: &str| {
            Uri::try_from(base.path(&format!("/v1/collections/bench/records/{id}"))).unwrap()
        };
        let tenant = TenantTarget {
            auth: HeaderValue::from_static("Bearer t"),
            create: record(""),
            records: vec![record("here"), record("gone")],
        };
        let (_, args) = parse(&["read", "--connections", "4", "--warmup", "0"]);
        let mut plan = Plan::new(&args, &base, addr, vec![tenant]).unwrap();
        // A short window instead of whole seconds.
        plan.end = plan.warm_end + Duration::from_millis(300);
        plan.hard_stop = plan.end + Duration::from_secs(5);
        let stats = run(&Arc::new(plan), 9).await.unwrap();
        server.abort();

        let not_found = stats.by_status.get(&404).copied().unwrap_or(0);
        assert!(stats.ok() > 10, "{stats:?}");
        assert!(not_found > 10, "{stats:?}");
        assert_eq!(stats.by_status.len(), 1, "{stats:?}");
        assert_eq!(stats.errors(), not_found);
        assert_eq!(
            (stats.transport, stats.timeouts, stats.unreachable),
            (0, 0, Duration::ZERO)
        );
        // Half the picks are the missing record.
        let share = not_found as f64 / (stats.ok() + not_found) as f64;
        assert!((0.3..0.7).contains(&share), "{share}");
    }
}
