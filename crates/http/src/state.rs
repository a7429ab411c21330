//! The application state every handler shares.

use std::sync::Arc;

use bulkhead_core::token::Verifier;
use bulkhead_store::Store;

use crate::auth::{Authenticator, OperatorCredential};
use crate::isolation::{Isolation, IsolationConfig};
use crate::policy::PolicyMode;

/// Settings of the HTTP edge, resolved from configuration at start.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Lifetime of a minted token when the request does not say.
    pub default_token_ttl_secs: u64,
    /// Most tokens kept in the verified-token cache.
    pub token_cache_capacity: usize,
    /// A request still running after this long is abandoned with 503.
    pub request_timeout: std::time::Duration,
    /// Rate and concurrency limits, metrics.
    pub isolation: IsolationConfig,
    /// Decide tenant requests with the Cedar policy engine (`true`, the default) or with the
    /// built-in role rules only (`false`: no tenant policies, no field masking; for
    /// comparison benchmarks).
    pub policies: bool,
    /// The policy engine's per-tenant cache.
    pub policy_engine: bulkhead_policy::EngineConfig,
    /// The directory of platform policy files (`*.cedar`), if any.
    pub policy_dir: Option<std::path::PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            default_token_ttl_secs: 3600,
            token_cache_capacity: 100_000,
            request_timeout: std::time::Duration::from_secs(30),
            isolation: IsolationConfig::default(),
            policies: true,
            policy_engine: bulkhead_policy::EngineConfig::default(),
            policy_dir: None,
        }
    }
}

/// Shared by all requests; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    pub store: Arc<Store>,
    pub auth: Arc<Authenticator>,
    pub operator: Arc<OperatorCredential>,
    pub config: Arc<HttpConfig>,
    /// Per-tenant limiter and metrics.
    pub isolation: Arc<Isolation>,
    /// The policy decision point every tenant request goes through.
    pub policy: Arc<PolicyMode>,
}

impl AppState {
    pub fn new(
        store: Arc<Store>,
        verifier: Verifier,
        operator: OperatorCredential,
        config: HttpConfig,
    ) -> Self {
        Self::with_clock(
            store,
            verifier,
            operator,
            config,
            Arc::new(bulkhead_core::Timestamp::now_utc),
        )
    }

    /// Like [`AppState::new`], with the clock tokens are checked against (tests move it).
    pub fn with_clock(
        store: Arc<Store>,
        verifier: Verifier,
        operator: OperatorCredential,
        config: HttpConfig,
        clock: crate::auth::Clock,
    ) -> Self {
        let auth =
            Authenticator::with_clock(store.clone(), verifier, config.token_cache_capacity, clock);
        let policy = PolicyMode::from_config(&config);
        Self {
            store,
            auth: Arc::new(auth),
            operator: Arc::new(operator),
            isolation: Arc::new(Isolation::new(config.isolation.clone())),
            config: Arc::new(config),
            policy: Arc::new(policy),
        }
    }
}
