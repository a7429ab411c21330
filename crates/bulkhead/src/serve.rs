//! `bulkhead serve`: resolve secrets, open storage, build the application, run until stopped.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bulkhead_core::crypto::MasterKey;
use bulkhead_core::token::{TokenSettings, Verifier};
use bulkhead_http::auth::OperatorCredential;
use bulkhead_http::{AppState, HttpConfig};
use bulkhead_store::port::{RecordBackend, Registry};
use bulkhead_store::{Store, StoreConfig};
use bulkhead_store_postgres::PostgresStore;
use bulkhead_store_sqlite::SqliteStore;
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use crate::config::Config;

/// Where the operator token came from (for the start-up message).
#[derive(Debug, PartialEq, Eq)]
pub enum AdminTokenSource {
    Env,
    File(PathBuf),
    Generated(PathBuf),
}

/// Writes `contents` to a new file readable by its owner only. Refuses to overwrite.
fn write_secret_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create `{}`", path.display()))?;
    f.write_all(contents.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    Ok(())
}

fn read_secret_file(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(file = %path.display(), "secret file is readable by group or others; chmod 600 it");
    }
    let s = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read `{}`", path.display()))?;
    Ok(Zeroizing::new(s.trim().to_owned()))
}

/// The master key: `BULKHEAD_MASTER_KEY`, else the configured key file, else
/// `<data_dir>/master.key` (generated on first start).
pub fn master_key(cfg: &Config, env: Option<&str>) -> anyhow::Result<MasterKey> {
    if let Some(v) = env {
        return MasterKey::from_base64url(v).context("BULKHEAD_MASTER_KEY is invalid");
    }
    let path = cfg
        .storage
        .master_key_file
        .clone()
        .unwrap_or_else(|| cfg.data_dir.join("master.key"));
    // With PostgreSQL the key never lives beside the data: it must be supplied.
    if cfg.storage.url.is_some() && cfg.storage.master_key_file.is_none() {
        bail!(
            "with PostgreSQL storage the master key must come from BULKHEAD_MASTER_KEY or `storage.master_key_file`"
        );
    }
    if path.exists() {
        let s = read_secret_file(&path)?;
        return MasterKey::from_base64url(&s)
            .with_context(|| format!("`{}` does not hold a valid master key", path.display()));
    }
    if cfg.storage.master_key_file.is_some() {
        bail!("master key file `{}` does not exist", path.display());
    }
    // A new key only for new data: a database written with another key would be unreadable.
    if bulkhead_store_sqlite::database_path(&cfg.data_dir).exists() {
        bail!(
            "`{}` holds a database but no master key: set BULKHEAD_MASTER_KEY or restore `{}`",
            cfg.data_dir.display(),
            path.display()
        );
    }
    let key = MasterKey::generate();
    write_secret_file(&path, &key.to_base64url())?;
    tracing::warn!(file = %path.display(), "generated a new master key; back it up: without it the data cannot be read");
    Ok(key)
}

/// Shortest operator token accepted.
const MIN_ADMIN_TOKEN: usize = 16;

/// The operator token's hash: from `BULKHEAD_ADMIN_TOKEN`, else `<data_dir>/admin-token`
/// (generated on first start and printed once).
pub fn admin_token(
    data_dir: &Path,
    env: Option<&str>,
) -> anyhow::Result<([u8; 32], AdminTokenSource, Option<Zeroizing<String>>)> {
    if let Some(t) = env {
        if t.len() < MIN_ADMIN_TOKEN {
            bail!("BULKHEAD_ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN} characters");
        }
        return Ok((OperatorCredential::hash(t), AdminTokenSource::Env, None));
    }
    let path = data_dir.join("admin-token");
    if path.exists() {
        let t = read_secret_file(&path)?;
        if t.len() < MIN_ADMIN_TOKEN {
            bail!(
                "`{}` must hold a token of at least {MIN_ADMIN_TOKEN} characters",
                path.display()
            );
        }
        return Ok((
            OperatorCredential::hash(&t),
            AdminTokenSource::File(path),
            None,
        ));
    }
    let mut raw = [0u8; 32];
    OsRng.fill_bytes(&mut raw);
    use base64::Engine;
    let token = Zeroizing::new(format!(
        "bh_admin_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    ));
    write_secret_file(&path, &token)?;
    Ok((
        OperatorCredential::hash(&token),
        AdminTokenSource::Generated(path),
        Some(token),
    ))
}

/// Opens the configured storage: PostgreSQL when `storage.url` is set (migrations first, with a
/// bounded retry while the database is unreachable), else the embedded SQLite database.
pub async fn open_storage(
    cfg: &Config,
) -> anyhow::Result<(Arc<dyn Registry>, Arc<dyn RecordBackend>)> {
    let Some(url) = cfg.storage.url.as_deref() else {
        let opts = bulkhead_store_sqlite::SqliteOptions {
            readers: cfg.storage.sqlite_readers,
            read_audit_sync: cfg.audit.read_audit_sync(),
        };
        let sqlite = SqliteStore::open_with(&cfg.data_dir, opts)
            .with_context(|| format!("cannot open the database in `{}`", cfg.data_dir.display()))?;
        return Ok((Arc::new(sqlite.clone()), Arc::new(sqlite)));
    };
    if cfg.storage.migrate_on_start {
        migrate_postgres(
            url,
            Duration::from_secs(cfg.storage.connect_timeout_seconds),
        )
        .await?;
    }
    let pg = match cfg.storage.app_url.as_deref() {
        Some(app) => PostgresStore::connect_app(app, cfg.storage.pool_size).await,
        None => PostgresStore::connect(url, cfg.storage.pool_size).await,
    }
    .map_err(|e| anyhow::anyhow!("cannot serve from PostgreSQL: {e}"))?;
    tracing::info!(
        pool_size = cfg.storage.pool_size,
        "storage: PostgreSQL (row-level security on)"
    );
    Ok((Arc::new(pg.clone()), Arc::new(pg)))
}

/// Runs PostgreSQL migrations, retrying for up to `patience` while the server is unreachable.
pub async fn migrate_postgres(url: &str, patience: Duration) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + patience;
    let mut attempt = 1u32;
    loop {
        match PostgresStore::migrate(url).await {
            Ok(()) => return Ok(()),
            Err(bulkhead_store::BackendError::Unavailable(e))
                if std::time::Instant::now() < deadline =>
            {
                tracing::warn!(attempt, error = %e, "PostgreSQL is not reachable yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                attempt += 1;
            }
            Err(e) => bail!("cannot reach or migrate the PostgreSQL database: {e}"),
        }
    }
}

/// Everything a running server needs, built from configuration (without binding a socket).
pub async fn build(
    cfg: &Config,
    master_env: Option<&str>,
    admin_env: Option<&str>,
) -> anyhow::Result<(AppState, Option<Zeroizing<String>>)> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cfg.data_dir)
        .with_context(|| format!("cannot create data directory `{}`", cfg.data_dir.display()))?;
    let master = master_key(cfg, master_env)?;
    let (registry, backend) = open_storage(cfg).await?;
    let store_cfg = StoreConfig {
        limits: cfg.limits.input(),
        tiers: cfg.limits.tier_limits()?,
        idempotency_ttl: Duration::from_secs(cfg.storage.idempotency_hours.saturating_mul(3600)),
        cache_ttl: Duration::from_secs(cfg.cache.ttl_seconds),
        cache_capacity: cfg.cache.capacity,
        feed_interval: Duration::from_millis(cfg.cache.feed_interval_ms),
        feed_cache_ttl: Duration::from_secs(cfg.cache.feed_ttl_seconds),
        audit: bulkhead_store::AuditConfig {
            enabled: cfg.audit.enabled,
        },
    };
    let store = Store::open(registry, backend, master, store_cfg)
        .await
        .map_err(|e| match e {
            bulkhead_store::StoreError::Internal(m) => anyhow::anyhow!("{m}"),
            other => anyhow::anyhow!(other),
        })?;
    // Tiers the operator defined through the API, before the first request.
    store
        .refresh_tiers()
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the tiers: {e}"))?;
    let (hash, source, generated) = admin_token(&cfg.data_dir, admin_env)?;
    match &source {
        AdminTokenSource::Env => tracing::info!("operator token from BULKHEAD_ADMIN_TOKEN"),
        AdminTokenSource::File(p) => {
            tracing::info!(file = %p.display(), "operator token from file")
        }
        AdminTokenSource::Generated(p) => {
            tracing::info!(file = %p.display(), "generated an operator token")
        }
    }
    let verifier = Verifier::new(TokenSettings {
        issuer: cfg.tokens.issuer.clone(),
        audience: cfg.tokens.audience.clone(),
        leeway_secs: cfg.tokens.leeway_seconds,
        max_token_bytes: cfg.limits.max_token_bytes,
        max_ttl_secs: cfg.tokens.max_ttl_seconds,
    });
    let http = HttpConfig {
        request_timeout: Duration::from_secs(cfg.request_timeout_seconds),
        isolation: bulkhead_http::isolation::IsolationConfig {
            enabled: cfg.limits.enabled,
            metrics_top_k: cfg.limits.metrics_top_k,
            idle_eviction: Duration::from_secs(cfg.limits.idle_eviction_seconds),
            tier_refresh: Duration::from_secs(cfg.limits.tier_refresh_seconds.max(1)),
            redis_url: cfg.limits.redis_url.clone(),
            lease_ttl: Duration::from_secs(cfg.request_timeout_seconds.saturating_mul(2)),
            fair: bulkhead_limits::fair::FairConfig {
                capacity: cfg.limits.fair_capacity,
                per_tenant: cfg.limits.fair_queue_per_tenant,
                total: cfg.limits.fair_queue_total,
            },
        },
        default_token_ttl_secs: cfg.tokens.default_ttl_seconds,
        token_cache_capacity: cfg.tokens.cache_capacity,
        policies: cfg.policy.enabled,
        policy_engine: bulkhead_policy::EngineConfig {
            cache_capacity: cfg.policy.cache_capacity,
            ttl: Duration::from_secs(cfg.policy.cache_ttl_seconds),
            decision_cache_capacity: cfg.policy.decision_cache_capacity,
        },
        policy_dir: cfg.policy.dir.clone(),
    };
    let state = AppState::new(
        Arc::new(store),
        verifier,
        OperatorCredential::from_hash(hash),
        http,
    );
    if let (Some(engine), Some(dir)) = (state.policy.engine(), &cfg.policy.dir) {
        // A policy directory that does not load is a start-up error, not a silent default.
        let generation =
            bulkhead_http::policy::reload_platform(engine, dir).map_err(|problems| {
                anyhow::anyhow!(
                    "platform policies in `{}` are invalid:\n{problems}",
                    dir.display()
                )
            })?;
        tracing::info!(dir = %dir.display(), generation, "platform policies loaded");
    }
    Ok((state, generated))
}

/// The audit checkpointer: every interval, logs that grew are sequenced and a checkpoint of
/// each is signed; every `sweep_every` rounds, every tenant's log (and the operator's) is
/// looked at, and expired entries are pruned per the tier's retention.
pub async fn checkpointer(store: Arc<Store>, cfg: crate::config::AuditSettings) {
    if !cfg.enabled {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(cfg.checkpoint_interval_seconds));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round: u64 = 0;
    loop {
        tick.tick().await;
        round = round.wrapping_add(1);
        store
            .audit()
            .checkpoint_due(Duration::from_secs(cfg.checkpoint_log_seconds))
            .await;
        if round.is_multiple_of(cfg.sweep_every)
            && let Err(e) = sweep(&store, &cfg).await
        {
            tracing::error!(error = %e, "audit: sweep failed");
        }
    }
}

/// Checkpoints every log, and prunes expired entries.
async fn sweep(
    store: &Store,
    cfg: &crate::config::AuditSettings,
) -> Result<(), bulkhead_store::StoreError> {
    use bulkhead_audit::LogId;
    let audit = store.audit();
    audit.checkpoint_logs(vec![LogId::Operator]).await;
    let mut after = None;
    loop {
        let page = store.list_tenants(after, 500).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        let logs: Vec<LogId> = page.iter().map(|t| LogId::Tenant(t.id)).collect();
        audit.checkpoint_logs(logs).await;
        for t in &page {
            if let Some(days) = cfg.retention_days.get(t.tier.as_str()) {
                let before = bulkhead_core::Timestamp::now_utc()
                    - Duration::from_secs(days.saturating_mul(24 * 3600));
                let scope = store.operator_audit(LogId::Tenant(t.id));
                match audit.prune(&scope, before).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(tenant = %t.id, pruned = n, "audit: expired entries pruned")
                    }
                    Err(e) => tracing::warn!(tenant = %t.id, error = %e, "audit: cannot prune"),
                }
            }
        }
    }
    Ok(())
}

/// A future that resolves when the process gets SIGINT or SIGTERM. The handlers are installed
/// when this is called, so a signal that arrives before serving starts is not lost.
pub fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        tracing::info!("shutting down: draining in-flight requests");
    })
}

#[allow(
    clippy::print_stdout,
    reason = "the generated operator token is shown once, on stdout (logs go to stderr)"
)]
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let shutdown = shutdown_signal()?;
    let master_env = std::env::var("BULKHEAD_MASTER_KEY")
        .ok()
        .filter(|s| !s.is_empty())
        .map(Zeroizing::new);
    let admin_env = std::env::var("BULKHEAD_ADMIN_TOKEN")
        .ok()
        .filter(|s| !s.is_empty())
        .map(Zeroizing::new);
    let (state, generated) = build(
        &cfg,
        master_env.as_deref().map(String::as_str),
        admin_env.as_deref().map(String::as_str),
    )
    .await?;
    if let Some(token) = generated {
        println!(
            "\n  Generated an operator token (shown once; saved to {}):\n\n    {}\n\n  export BULKHEAD_ADMIN_TOKEN={}\n",
            cfg.data_dir.join("admin-token").display(),
            token.as_str(),
            token.as_str()
        );
    }
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data_dir = %cfg.data_dir.display(), "bulkhead is listening");
    let _watcher = match (state.policy.engine(), &cfg.policy.dir) {
        (Some(engine), Some(dir)) => Some(bulkhead_http::policy::watch_policy_dir(
            engine.clone(),
            dir.clone(),
            Duration::from_secs(cfg.policy.reload_seconds),
        )),
        _ => None,
    };
    let checkpointer = tokio::spawn(checkpointer(state.store.clone(), cfg.audit.clone()));
    let served = bulkhead_http::serve(listener, bulkhead_http::app(state.clone()), shutdown).await;
    checkpointer.abort();
    // A last round, so what was appended before the stop is checkpointed.
    let signed = state.store.audit().checkpoint_dirty().await;
    tracing::info!(signed, "audit: final checkpoints");
    served.context("server error")?;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_generated_once_with_owner_only_mode() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        let k1 = master_key(&cfg, None).unwrap();
        let k2 = master_key(&cfg, None).unwrap();
        assert_eq!(k1.check_value(), k2.check_value());
        let mode = std::fs::metadata(dir.path().join("master.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (h1, s1, shown) = admin_token(dir.path(), None).unwrap();
        assert!(matches!(s1, AdminTokenSource::Generated(_)));
        let shown = shown.unwrap();
        let (h2, s2, again) = admin_token(dir.path(), None).unwrap();
        assert!(matches!(s2, AdminTokenSource::File(_)));
        assert!(again.is_none(), "printed once only");
        assert_eq!(h1, h2);
        assert_eq!(h1, OperatorCredential::hash(&shown));
        let mode = std::fs::metadata(dir.path().join("admin-token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(admin_token(dir.path(), Some("short")).is_err());
        // A database without its master key is refused rather than given a new key.
        let other = tempfile::tempdir().unwrap();
        std::fs::write(bulkhead_store_sqlite::database_path(other.path()), b"").unwrap();
        let cfg2 = Config {
            data_dir: other.path().to_path_buf(),
            ..Config::default()
        };
        assert!(
            master_key(&cfg2, None)
                .unwrap_err()
                .to_string()
                .contains("no master key")
        );
        assert!(!other.path().join("master.key").exists());
        assert!(master_key(&cfg, Some("bad")).is_err());
    }
}
