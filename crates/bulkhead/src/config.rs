//! Configuration: defaults, then a TOML file, then `BULKHEAD_*` environment variables, then
//! command-line flags — resolved once at start into typed settings.
//!
//! Secrets (`BULKHEAD_ADMIN_TOKEN`, `BULKHEAD_MASTER_KEY`) are not part of the file format:
//! they come from the environment or from files in the data directory, and never print.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use bulkhead_core::limits::InputLimits;
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
    pub limits: InputLimits,
    pub cache: CacheConfig,
    pub storage: StorageConfig,
    /// Tier names tenants may be given.
    pub tiers: Vec<String>,
    /// A request still running after this many seconds is abandoned with 503.
    pub request_timeout_seconds: u64,
    pub policy: PolicyConfig,
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
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: None,
            reload_seconds: 2,
            cache_capacity: 10_000,
            cache_ttl_seconds: 5,
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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Seconds tenant state and collection definitions are cached before being re-read.
    pub ttl_seconds: u64,
    /// Most tenants and collections cached.
    pub capacity: usize,
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
            limits: InputLimits::default(),
            cache: CacheConfig::default(),
            storage: StorageConfig::default(),
            tiers: vec!["free".into(), "standard".into(), "enterprise".into()],
            request_timeout_seconds: 30,
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
    "tiers",
    "request_timeout_seconds",
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
                k == "database_url" || ENV_KEYS.contains(&k.split("__").next().unwrap_or(""))
            })
            .map(|k| match k.as_str().to_ascii_lowercase().as_str() {
                // The one short form: `BULKHEAD_DATABASE_URL` is `[storage] url`.
                "database_url" => "storage.url".into(),
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
        for t in &self.tiers {
            bulkhead_core::TierName::parse(t).map_err(|e| anyhow::anyhow!("tiers: {e}"))?;
        }
        if self.policy.reload_seconds == 0 {
            anyhow::bail!("policy.reload_seconds must be at least 1");
        }
        if !self.tiers.iter().any(|t| t == "standard") {
            anyhow::bail!("tiers must include `standard` (the default tier)");
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
    fn bad_values_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("b.toml", "[tokens]\nleeway_seconds = 600\n")?;
            assert!(Config::load(Some(Path::new("b.toml"))).is_err());
            jail.create_file("c.toml", "nonsense = 1\n")?;
            assert!(Config::load(Some(Path::new("c.toml"))).is_err());
            assert!(Config::load(Some(Path::new("missing.toml"))).is_err());
            Ok(())
        });
    }
}
