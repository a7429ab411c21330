//! Configuration: defaults, then a TOML file, then `BULKHEAD_*` environment variables, then
//! command-line flags — resolved once at start into typed settings.
//!
//! Secrets (`BULKHEAD_ADMIN_TOKEN`, `BULKHEAD_MASTER_KEY`) are not part of the file format:
//! they come from the environment or from files in the data directory, and never print.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use std::collections::BTreeMap;

use bulkhead_core::TierName;
use bulkhead_core::limits::InputLimits;
use bulkhead_core::tier::{LimitOverrides, TierLimits};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Everything `bulkhead serve` is configured with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Where the embedded database, the generated master key and admin token live.
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    /// A tracing filter (`info`, `bulkhead_http=debug,info`…); `RUST_LOG` overrides it.
    pub log_level: String,
    pub tokens: TokenConfig,
    pub limits: LimitsConfig,
    pub cache: CacheConfig,
    pub storage: StorageConfig,
    /// A request still running after this many seconds is abandoned with 503.
    pub request_timeout_seconds: u64,
    pub audit: AuditSettings,
    pub policy: PolicyConfig,
}

/// The tamper-evident audit logs (docs/audit.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// Record audit entries. Turning it off is for side-by-side benchmarks only: nothing is
    /// recorded then, and the logs have gaps in time that nobody can see.
    pub enabled: bool,
    /// Seconds between checkpoint rounds: appended entries are placed in their logs
    /// (sequenced) and a checkpoint of each log that grew is signed. Proofs cover entries up to
    /// the latest checkpoint. Placing many entries at a time is what keeps auditing cheap, so
    /// shorter rounds cost throughput.
    pub checkpoint_interval_seconds: u64,
    /// A log that grew is checkpointed once its oldest entry not yet covered is this many
    /// seconds old (0, the default: at the next round). Bounds how long an entry is unprovable
    /// (plus one round), and how many signatures a busy log costs: one per this many seconds
    /// (and at most one per round).
    pub checkpoint_log_seconds: u64,
    /// Every this many checkpoint rounds, every tenant's log is looked at (catches entries
    /// appended by other instances); in between, only logs this instance appended to.
    pub sweep_every: u64,
    /// Days audit entries are kept, per tier; a tier not listed keeps them forever. Expired
    /// entries are pruned below a checkpoint, which keeps the tree verifiable.
    pub retention_days: std::collections::BTreeMap<String, u64>,
    /// Embedded storage only: when an entry that commits with no data change (a read's, a
    /// denial's, an operator action's) is fsync'd. `window` (default): the request is answered
    /// once its entry is written to the audit journal (durable against a killed process), and
    /// the journal is fsync'd within `read_sync_ms`. `strict`: fsync'd before the request is
    /// answered, like a write. (A data change's entry always commits, fsync'd, with the change;
    /// PostgreSQL commits a read's entry with the read's own transaction either way.)
    pub read_sync: ReadSync,
    /// With `read_sync = "window"`: the longest an acknowledged entry stays un-fsync'd.
    pub read_sync_ms: u64,
}

/// See [`AuditSettings::read_sync`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadSync {
    Window,
    Strict,
}

impl AuditSettings {
    /// The SQLite adapter's setting for reads' entries.
    pub fn read_audit_sync(&self) -> bulkhead_store_sqlite::ReadAuditSync {
        match self.read_sync {
            ReadSync::Strict => bulkhead_store_sqlite::ReadAuditSync::Strict,
            ReadSync::Window => bulkhead_store_sqlite::ReadAuditSync::Window(
                std::time::Duration::from_millis(self.read_sync_ms),
            ),
        }
    }
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            checkpoint_interval_seconds: 5,
            checkpoint_log_seconds: 0,
            sweep_every: 12,
            retention_days: std::collections::BTreeMap::new(),
            read_sync: ReadSync::Window,
            read_sync_ms: 100,
        }
    }
}

/// The policy engine (see docs/policies.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Decide tenant requests with Cedar policies. `false`: the built-in role rules only
    /// (no tenant policies, no field masking); meant for comparison benchmarks.
    pub enabled: bool,
    /// Directory of platform policy files (`*.cedar`), added to the built-in defaults and
    /// reloaded when they change. `--policy-dir` sets it too.
    pub dir: Option<PathBuf>,
    /// Seconds between checks of `dir` for changes.
    pub reload_seconds: u64,
    /// Most tenants' policy sets kept built in memory.
    pub cache_capacity: usize,
    /// Seconds a tenant's policy set is trusted before its stored policies are read again
    /// (how long a change made on another instance takes to apply here).
    pub cache_ttl_seconds: u64,
    /// Most policy decisions remembered in memory (keyed by the exact policy set, principal,
    /// action and resource attributes; see docs/policies.md). 0 evaluates every decision.
    pub decision_cache_capacity: usize,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
            reload_seconds: 2,
            cache_capacity: 10_000,
            cache_ttl_seconds: 5,
            decision_cache_capacity: 65_536,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenConfig {
    /// Issuer prefix: a tenant's `iss` is `{issuer}/tenants/{tenant_id}`.
    pub issuer: String,
    /// The audience every token carries and every request requires.
    pub audience: String,
    /// Clock skew tolerated on `exp`/`nbf`/`iat`, in seconds; at most 60.
    pub leeway_seconds: u64,
    /// Lifetime of a minted token when the request does not say.
    pub default_ttl_seconds: u64,
    /// Longest lifetime a minted token may have.
    pub max_ttl_seconds: u64,
    /// Most verified tokens cached (signature checks skipped on a hit; expiry and tenant status
    /// are checked on every request regardless).
    pub cache_capacity: usize,
}

/// `[limits]`: bounds on untrusted input, and performance isolation between tenants.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body accepted, in bytes (413 above it); a tier may only lower it.
    pub max_body_bytes: usize,
    /// Deepest nesting of arrays and objects accepted in a JSON body (422 above it).
    pub max_json_depth: usize,
    /// Largest record `data`, serialized, in bytes (413 above it).
    pub max_record_bytes: usize,
    /// Most records one list request returns.
    pub max_page_size: usize,
    /// Largest accepted token, in bytes (401 above it).
    pub max_token_bytes: usize,
    /// Most indexed fields per collection.
    pub max_indexes: usize,
    /// Largest collection schema, serialized, in bytes.
    pub max_schema_bytes: usize,
    /// Enforce per-tenant rate and concurrency limits (storage quotas are always enforced).
    pub enabled: bool,
    /// Tiers: `[limits.tiers.<name>]` with any of `rate_per_second`, `burst`,
    /// `max_concurrency`, `max_records`, `max_bytes`, `max_collections`, `max_body_bytes`,
    /// `weight` (the tier's share in the fair queue). Fields left out keep the built-in limits of `free`/`standard`/`enterprise` (`standard`'s
    /// for other names). The three built-in tiers always exist.
    pub tiers: BTreeMap<String, LimitOverrides>,
    /// Tenants with a `tenant` label of their own in `/metrics` (the top K by traffic); the
    /// rest are counted as `tenant="other"`.
    pub metrics_top_k: usize,
    /// Seconds a tenant must be idle before the limiter forgets it.
    pub idle_eviction_seconds: u64,
    /// Seconds between re-reads of the tiers stored in the database.
    pub tier_refresh_seconds: u64,
    /// Redis URL (`redis://127.0.0.1:6379`): rate and concurrency limits are shared by every
    /// instance using it. Unset: each instance limits on its own. Env: `BULKHEAD_REDIS_URL`.
    pub redis_url: Option<String>,
    /// Requests served at once, over all tenants; beyond it requests wait in per-tenant
    /// queues served round-robin (fair scheduling).
    pub fair_capacity: usize,
    /// Requests of one tenant that may wait for a turn; more are shed (503).
    pub fair_queue_per_tenant: usize,
    /// Requests that may wait, over all tenants; beyond it the longest queue is shed first.
    pub fair_queue_total: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let input = InputLimits::default();
        Self {
            max_body_bytes: input.max_body_bytes,
            max_json_depth: input.max_json_depth,
            max_record_bytes: input.max_record_bytes,
            max_page_size: input.max_page_size,
            max_token_bytes: input.max_token_bytes,
            max_indexes: input.max_indexes,
            max_schema_bytes: input.max_schema_bytes,
            enabled: true,
            tiers: BTreeMap::new(),
            metrics_top_k: 20,
            idle_eviction_seconds: 60,
            tier_refresh_seconds: 2,
            redis_url: None,
            fair_capacity: 256,
            fair_queue_per_tenant: 128,
            fair_queue_total: 4096,
        }
    }
}

impl std::fmt::Debug for LimitsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitsConfig")
            .field("input", &self.input())
            .field("enabled", &self.enabled)
            .field("tiers", &self.tiers)
            .field("metrics_top_k", &self.metrics_top_k)
            // URLs may carry passwords.
            .field("redis_url", &self.redis_url.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

impl LimitsConfig {
    /// The bounds on untrusted input.
    pub fn input(&self) -> InputLimits {
        InputLimits {
            max_body_bytes: self.max_body_bytes,
            max_json_depth: self.max_json_depth,
            max_record_bytes: self.max_record_bytes,
            max_page_size: self.max_page_size,
            max_token_bytes: self.max_token_bytes,
            max_indexes: self.max_indexes,
            max_schema_bytes: self.max_schema_bytes,
        }
    }

    /// Every tier: the built-in ones, with the configured changes and additions.
    pub fn tier_limits(&self) -> anyhow::Result<BTreeMap<String, TierLimits>> {
        let mut all = bulkhead_store::service::builtin_tiers();
        for (name, changes) in &self.tiers {
            TierName::parse(name).map_err(|e| anyhow::anyhow!("limits.tiers: {e}"))?;
            let base = all
                .get(name)
                .copied()
                .unwrap_or_else(|| TierLimits::builtin("standard"));
            let l = base.with(changes);
            l.check()
                .map_err(|e| anyhow::anyhow!("limits.tiers.{name}: {e}"))?;
            all.insert(name.clone(), l);
        }
        Ok(all)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Seconds tenant state and collection definitions are cached before being re-read.
    pub ttl_seconds: u64,
    /// Most tenants and collections cached.
    pub capacity: usize,
    /// PostgreSQL: milliseconds between polls of the registry change feed, through which
    /// other instances' changes to a tenant (suspension, keys, tier) reach this one.
    pub feed_interval_ms: u64,
    /// PostgreSQL: seconds tenant state stays cached while the change feed works (a safety
    /// net; the feed invalidates changed tenants within `feed_interval_ms`).
    pub feed_ttl_seconds: u64,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// PostgreSQL URL (`postgres://user@host:5432/db`). Unset: the embedded SQLite database in
    /// `data_dir`. Migrations run as this URL's user; tenant traffic runs as the
    /// `bulkhead_app` role (see `app_url`). Env: `BULKHEAD_DATABASE_URL`.
    pub url: Option<String>,
    /// A separate URL for tenant traffic, logging in as a role that is a member of
    /// `bulkhead_app` and cannot bypass row-level security. Unset: `url`, narrowed with
    /// `SET ROLE bulkhead_app` on every connection.
    pub app_url: Option<String>,
    /// PostgreSQL connections per instance.
    pub pool_size: usize,
    /// How long to keep retrying an unreachable database at start before giving up.
    pub connect_timeout_seconds: u64,
    /// Apply PostgreSQL migrations when `serve` starts (as `url`'s user). Turn off when the
    /// serving instances should not hold the owner's credentials; run `bulkhead migrate`
    /// separately then.
    pub migrate_on_start: bool,
    /// File holding the master key (unpadded base64url of 32 bytes). Default:
    /// `<data_dir>/master.key`, generated on the first start of an embedded data directory
    /// (never with PostgreSQL, never beside an existing database). `BULKHEAD_MASTER_KEY` wins.
    pub master_key_file: Option<PathBuf>,
    /// Read connections to the embedded database.
    pub sqlite_readers: usize,
    /// Hours an `Idempotency-Key` is remembered.
    pub idempotency_hours: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8700)),
            data_dir: PathBuf::from("./bulkhead-data"),
            log_format: LogFormat::Text,
            log_level: "info".into(),
            tokens: TokenConfig::default(),
            limits: LimitsConfig::default(),
            cache: CacheConfig::default(),
            storage: StorageConfig::default(),
            request_timeout_seconds: 30,
            audit: AuditSettings::default(),
            policy: PolicyConfig::default(),
        }
    }
}

impl Default for TokenConfig {
    fn default() -> Self {
        Self {
            issuer: "bulkhead".into(),
            audience: "bulkhead".into(),
            leeway_seconds: 30,
            default_ttl_seconds: 3600,
            max_ttl_seconds: 30 * 24 * 3600,
            cache_capacity: 100_000,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            ttl_seconds: 5,
            capacity: 100_000,
            feed_interval_ms: 1000,
            feed_ttl_seconds: 60,
        }
    }
}

impl std::fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // URLs may carry passwords: show only whether they are set.
        f.debug_struct("StorageConfig")
            .field("url", &self.url.as_ref().map(|_| "<set>"))
            .field("app_url", &self.app_url.as_ref().map(|_| "<set>"))
            .field("pool_size", &self.pool_size)
            .field("master_key_file", &self.master_key_file)
            .field("sqlite_readers", &self.sqlite_readers)
            .field("idempotency_hours", &self.idempotency_hours)
            .finish_non_exhaustive()
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            url: None,
            app_url: None,
            pool_size: 16,
            connect_timeout_seconds: 30,
            migrate_on_start: true,
            master_key_file: None,
            sqlite_readers: 8,
            idempotency_hours: 24,
        }
    }
}

/// Top-level keys the environment may set, as `BULKHEAD_<KEY>` or `BULKHEAD_<KEY>__<SUBKEY>`.
/// Other `BULKHEAD_*` variables (secrets, client settings, test settings) are not configuration.
const ENV_KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "log_format",
    "log_level",
    "tokens",
    "limits",
    "cache",
    "storage",
    "request_timeout_seconds",
    "audit",
    "policy",
];

impl Config {
    /// Resolves the configuration: defaults → `file` → `BULKHEAD_*` environment. Nested keys
    /// use `__` in the environment (`BULKHEAD_TOKENS__LEEWAY_SECONDS=10`).
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.exists() {
                anyhow::bail!("config file `{}` does not exist", f.display());
            }
            fig = fig.merge(Toml::file_exact(f));
        }
        let env = Env::prefixed("BULKHEAD_")
            .filter(|k| {
                let k = k.as_str().to_ascii_lowercase();
                k == "database_url"
                    || k == "redis_url"
                    || ENV_KEYS.contains(&k.split("__").next().unwrap_or(""))
            })
            .map(|k| match k.as_str().to_ascii_lowercase().as_str() {
                // The one short form: `BULKHEAD_DATABASE_URL` is `[storage] url`.
                "database_url" => "storage.url".into(),
                // And `BULKHEAD_REDIS_URL` is `[limits] redis_url`.
                "redis_url" => "limits.redis_url".into(),
                other => other.replace("__", ".").into(),
            });
        fig = fig.merge(env);
        let cfg: Config = fig.extract().context("invalid configuration")?;
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.tokens.leeway_seconds > 60 {
            anyhow::bail!(
                "tokens.leeway_seconds must be at most 60 (got {})",
                self.tokens.leeway_seconds
            );
        }
        if self.audit.checkpoint_interval_seconds == 0 || self.audit.sweep_every == 0 {
            anyhow::bail!(
                "audit.checkpoint_interval_seconds and audit.sweep_every must be at least 1"
            );
        }
        if self.audit.read_sync == ReadSync::Window
            && !(1..=10_000).contains(&self.audit.read_sync_ms)
        {
            anyhow::bail!("audit.read_sync_ms must be between 1 and 10000");
        }
        for (tier, days) in &self.audit.retention_days {
            // Tiers may also be defined later through the API: only the name's form is checked.
            if bulkhead_core::TierName::parse(tier).is_err() {
                anyhow::bail!("audit.retention_days: `{tier}` is not a valid tier name");
            }
            if *days == 0 {
                anyhow::bail!("audit.retention_days: `{tier}` must keep entries at least 1 day");
            }
        }
        if self.request_timeout_seconds == 0 {
            anyhow::bail!("request_timeout_seconds must be at least 1");
        }
        if self.tokens.max_ttl_seconds == 0 || self.tokens.default_ttl_seconds == 0 {
            anyhow::bail!("token lifetimes must be at least 1 second");
        }
        if self.limits.max_body_bytes < 1024
            || self.limits.max_record_bytes == 0
            || self.limits.max_json_depth == 0
            || self.limits.max_page_size == 0
            || self.limits.max_token_bytes < 512
        {
            anyhow::bail!("limits are too small to serve any request");
        }
        self.limits.tier_limits()?;
        if let Some(url) = &self.limits.redis_url {
            bulkhead_limits::shared::check_url(url)
                .map_err(|e| anyhow::anyhow!("limits.redis_url: {e}"))?;
        }
        if self.policy.reload_seconds == 0 {
            anyhow::bail!("policy.reload_seconds must be at least 1");
        }
        if self.limits.fair_capacity == 0 {
            anyhow::bail!("limits.fair_capacity must be at least 1");
        }
        if self.limits.metrics_top_k > 10_000 {
            anyhow::bail!("limits.metrics_top_k must be at most 10000");
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::result_large_err,
    reason = "tests; figment's Jail returns its own error"
)]
mod tests {
    use super::*;

    #[test]
    fn file_then_env_layering() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "b.toml",
                "listen = \"127.0.0.1:9000\"\n[tokens]\nleeway_seconds = 10\n",
            )?;
            jail.set_env("BULKHEAD_TOKENS__LEEWAY_SECONDS", "20");
            jail.set_env("BULKHEAD_ADMIN_TOKEN", "not-config");
            jail.set_env("BULKHEAD_TEST_DATABASE_URL", "not-config-either");
            jail.set_env("BULKHEAD_DATABASE_URL", "postgres://u@127.0.0.1/db");
            let c = Config::load(Some(Path::new("b.toml"))).unwrap();
            assert_eq!(c.listen.port(), 9000);
            assert_eq!(c.tokens.leeway_seconds, 20);
            assert_eq!(c.storage.url.as_deref(), Some("postgres://u@127.0.0.1/db"));
            Ok(())
        });
    }

    #[test]
    fn tiers_from_the_file_over_the_built_in_ones() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "b.toml",
                "[limits]\nmax_body_bytes = 4096\n[limits.tiers.free]\nburst = 3\n[limits.tiers.gold]\nrate_per_second = 5.5\nweight = 3\n",
            )?;
            jail.set_env("BULKHEAD_LIMITS__METRICS_TOP_K", "7");
            jail.set_env("BULKHEAD_REDIS_URL", "redis://127.0.0.1:6379");
            let c = Config::load(Some(Path::new("b.toml"))).unwrap();
            assert_eq!(c.limits.input().max_body_bytes, 4096);
            assert_eq!(c.limits.metrics_top_k, 7);
            assert_eq!(
                c.limits.redis_url.as_deref(),
                Some("redis://127.0.0.1:6379")
            );
            let tiers = c.limits.tier_limits().unwrap();
            assert_eq!(tiers["free"].burst, 3);
            assert_eq!(
                tiers["free"].rate_per_second,
                TierLimits::builtin("free").rate_per_second
            );
            assert_eq!(tiers["gold"].rate_per_second, 5.5);
            assert_eq!(tiers["gold"].burst, TierLimits::builtin("standard").burst);
            // Fair-queue weights: set in the file, or the built-in tier's.
            assert_eq!(tiers["gold"].weight, 3);
            assert_eq!(tiers["free"].weight, 1);
            assert_eq!(tiers["enterprise"].weight, 4);
            assert!(tiers.contains_key("enterprise"));
            Ok(())
        });
    }

    #[test]
    fn bad_values_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("b.toml", "[tokens]\nleeway_seconds = 600\n")?;
            assert!(Config::load(Some(Path::new("b.toml"))).is_err());
            jail.create_file("c.toml", "nonsense = 1\n")?;
            assert!(Config::load(Some(Path::new("c.toml"))).is_err());
            jail.create_file("c.toml", "[limits]\nmax_bodybytes = 1\n")?;
            assert!(Config::load(Some(Path::new("c.toml"))).is_err());
            jail.create_file("c.toml", "[limits.tiers.free]\nburst = 0\n")?;
            assert!(Config::load(Some(Path::new("c.toml"))).is_err());
            jail.create_file("c.toml", "[limits.tiers.free]\nbursts = 5\n")?;
            assert!(Config::load(Some(Path::new("c.toml"))).is_err());
            assert!(Config::load(Some(Path::new("missing.toml"))).is_err());
            Ok(())
        });
    }
}
