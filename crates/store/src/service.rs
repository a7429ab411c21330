//! The record service: encryption, validation, blind indexes and idempotency on top of the
//! storage port, and the only way to reach tenant data.
//!
//! INVARIANT: tenant-owned data is reachable only through a [`TenantHandle`], and the only way
//! to get one is [`Store::tenant`], which takes a verified [`TenantContext`]. The handle carries
//! the tenant's [`Scope`] and keys; none of its methods take a tenant id.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_core::crypto::{MasterKey, RecordPlace, SEAL_OVERHEAD, TenantKeys};
use bulkhead_core::limits::{InputLimits, json_depth};
use bulkhead_core::schema::{CompiledCollection, FieldPolicy};
use bulkhead_core::tenant::Placement;
use bulkhead_core::tier::{LimitOverrides, TierLimits, Usage};
use bulkhead_core::token::{PublicKey, SigningAlg, SigningKeyPair};
use bulkhead_core::{
    CollectionName, RecordId, Subject, Tenant, TenantContext, TenantId, TenantName, TenantStatus,
    TierName, Timestamp,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::audit::{Audit, AuditConfig, RequestMeta};
use crate::port::{
    AuditScope, CollectionRow, IdempotencyRow, InsertOutcome, InsertRow, PolicyRow, RecordBackend,
    RecordRow, Registry, Scope, SigningKeyRow, TenantPatch, TenantRow, TierRow, UpdateRow,
    WriteOutcome,
};
use crate::{BackendError, StoreError};
use bulkhead_audit::{Actor, AuditKey, EntryBody, LogId, Outcome};

/// How many times a write is retried when the collection changed under it.
const STALE_RETRIES: usize = 4;
/// How many times a policy update is retried when another update took its version (each
/// round one of the concurrent updates wins, so this many concurrent updates all succeed).
const POLICY_RETRIES: usize = 32;
/// Most schema violations reported for one record.
const MAX_VIOLATIONS: usize = 16;

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub limits: InputLimits,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl: Duration,
    /// How long tenant state (status, keys) and collection definitions are cached before they
    /// are re-read. Bounds how long another instance's change takes to apply here — for
    /// tenant state, only while the registry change feed is not working (or the backend has
    /// none).
    pub cache_ttl: Duration,
    /// How often the registry change feed is polled (backends shared by several instances).
    /// Another instance's change to a tenant (suspension, key rotation, tier) applies here
    /// within about this long.
    pub feed_interval: Duration,
    /// How long tenant state is cached while the change feed works (a safety net: the feed
    /// invalidates changed tenants long before).
    pub feed_cache_ttl: Duration,
    /// Most tenants and collections kept in the caches.
    pub cache_capacity: usize,
    /// Tiers defined in configuration. Tiers the operator defines through the API (stored in
    /// the database) take precedence over these, by name.
    pub tiers: BTreeMap<String, TierLimits>,
    pub audit: AuditConfig,
}

/// The tiers every server knows unless configured otherwise.
pub fn builtin_tiers() -> BTreeMap<String, TierLimits> {
    ["free", "standard", "enterprise"]
        .into_iter()
        .map(|n| (n.to_owned(), TierLimits::builtin(n)))
        .collect()
}

/// The tier a tenant whose tier is unknown here is held to.
pub const DEFAULT_TIER: &str = "standard";
/// How long a cached usage figure may be used for a quota check while the tenant is far from
/// its quotas, at least. Near a quota (see [`USAGE_NEAR`]) every write re-reads it.
const USAGE_TTL: Duration = Duration::from_secs(1);
/// ... and at most: longer than [`USAGE_TTL`] only while the tenant's rate limit cannot take
/// it near a quota meanwhile ([`Usage::trusted_for_seconds`]).
const USAGE_TTL_MAX: Duration = Duration::from_secs(30);
/// "Near" a quota: above this share of it.
const USAGE_NEAR: f64 = 0.9;

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            limits: InputLimits::default(),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            cache_ttl: Duration::from_secs(5),
            feed_interval: Duration::from_secs(1),
            feed_cache_ttl: Duration::from_secs(60),
            cache_capacity: 100_000,
            tiers: builtin_tiers(),
            audit: AuditConfig::default(),
        }
    }
}

/// What the authentication layer needs to know about a tenant.
#[derive(Debug)]
pub struct TenantState {
    pub tenant: Tenant,
    placement: Placement,
    pub public_keys: Vec<PublicKey>,
    /// The tenant's own limit overrides (empty when it has none).
    pub overrides: LimitOverrides,
    keys: Option<Arc<TenantKeys>>,
    loaded_at: Instant,
    /// What the keys above were opened from (the wrapped root key, and each signing key's
    /// wrapped private key): a reload that finds the same bytes reuses them instead of
    /// unwrapping and deriving again.
    source: KeySource,
}

/// The stored, wrapped key material a [`TenantState`] was opened from.
#[derive(Debug, PartialEq, Eq)]
struct KeySource {
    root: Option<Vec<u8>>,
    signing: Vec<(String, &'static str, Vec<u8>)>,
}

impl TenantState {
    pub fn key(&self, kid: &bulkhead_core::KeyId) -> Option<&PublicKey> {
        self.public_keys.iter().find(|k| &k.kid == kid)
    }
}

struct CachedCollection {
    row_version: u64,
    compiled: CompiledCollection,
    created_at: Timestamp,
    updated_at: Timestamp,
    loaded_at: Instant,
}

/// The store: the registry, the placements tenants' data lives in, and the caches.
pub struct Store {
    registry: Arc<dyn Registry>,
    /// The shared pool. A tenant's [`Placement`] picks its backend; today there is one.
    shared: Arc<dyn RecordBackend>,
    master: MasterKey,
    cfg: StoreConfig,
    tenants: Arc<quick_cache::sync::Cache<TenantId, Arc<TenantState>>>,
    /// The registry change feed, if the backend has one.
    feed: Option<crate::feed::Feed>,
    collections: quick_cache::sync::Cache<(TenantId, CollectionName), Arc<CachedCollection>>,
    /// Every tier in force: configuration, overlaid with the operator's tiers from the
    /// database. Replaced whole on refresh, so a reader never sees half an update.
    tiers: parking_lot::RwLock<Arc<BTreeMap<String, TierLimits>>>,
    /// Held by a tier refresh from its read to its store, so that a refresh which read the
    /// tiers before a change committed cannot overwrite the one after it.
    tiers_refresh: tokio::sync::Mutex<()>,
    /// Recently read storage usage per tenant, for quota checks (see [`USAGE_TTL`]).
    usage: quick_cache::sync::Cache<TenantId, (Usage, Instant)>,
    /// When the change feed last reported a change of each tenant: what was cached for the
    /// tenant before then (collection definitions, policy sets) is stale. Bounded: a tenant
    /// whose entry was evicted falls back to `StoreConfig::feed_cache_ttl`.
    changed: Arc<quick_cache::sync::Cache<TenantId, Instant>>,
    audit: Audit,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// The error [`Store::open`] gives when the master key is not the one the data was written with.
pub const WRONG_MASTER_KEY: &str =
    "the master key does not match the one this storage was created with";

impl Store {
    /// Opens the store and checks that `master` is the key the stored data was written with.
    pub async fn open(
        registry: Arc<dyn Registry>,
        shared: Arc<dyn RecordBackend>,
        master: MasterKey,
        cfg: StoreConfig,
    ) -> Result<Self, StoreError> {
        let check = master.check_value();
        let stored = registry.init_setting("master-key-check", &check).await?;
        if stored.as_slice() != check.as_slice() {
            return Err(StoreError::Internal(WRONG_MASTER_KEY.into()));
        }
        let cap = cfg.cache_capacity.max(16);
        let tenants = Arc::new(quick_cache::sync::Cache::new(cap));
        let changed = Arc::new(quick_cache::sync::Cache::new(cap));
        let feed = {
            let tenants: Arc<quick_cache::sync::Cache<TenantId, Arc<TenantState>>> =
                Arc::clone(&tenants);
            let changed: Arc<quick_cache::sync::Cache<TenantId, Instant>> = Arc::clone(&changed);
            crate::feed::Feed::start(registry.clone(), cfg.feed_interval, move |id| {
                tenants.remove(&id);
                changed.insert(id, Instant::now());
            })
            .await?
        };
        let audit = Audit::new(
            shared.clone(),
            AuditKey::from_seed(&master.audit_signing_seed()),
            cfg.audit.clone(),
        );
        Ok(Self {
            registry,
            shared,
            master,
            tenants,
            feed,
            audit,
            collections: quick_cache::sync::Cache::new(cap),
            tiers: parking_lot::RwLock::new(Arc::new(cfg.tiers.clone())),
            tiers_refresh: tokio::sync::Mutex::new(()),
            usage: quick_cache::sync::Cache::new(cap),
            changed,
            cfg,
        })
        .and_then(|s: Self| s.check_tiers().map(|()| s))
    }

    fn check_tiers(&self) -> Result<(), StoreError> {
        if !self.cfg.tiers.contains_key(DEFAULT_TIER) {
            return Err(StoreError::BadLimits(format!(
                "the tiers must include `{DEFAULT_TIER}`"
            )));
        }
        for (name, l) in &self.cfg.tiers {
            TierName::parse(name).map_err(|e| StoreError::BadLimits(e.to_string()))?;
            l.check()
                .map_err(|e| StoreError::BadLimits(format!("tier `{name}`: {e}")))?;
        }
        Ok(())
    }

    // ---- tiers and limits -----------------------------------------------------------------

    /// Every tier in force, by name.
    pub fn tiers(&self) -> Arc<BTreeMap<String, TierLimits>> {
        self.tiers.read().clone()
    }

    /// The tier named `name`, if there is one.
    pub fn tier(&self, name: &str) -> Option<(TierName, TierLimits)> {
        let tiers = self.tiers.read();
        let limits = *tiers.get(name)?;
        Some((TierName::parse(name).ok()?, limits))
    }

    /// Re-reads the operator's tiers from the database. Called periodically, so a tier changed
    /// on another instance applies here within the refresh period.
    pub async fn refresh_tiers(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.tiers_refresh.lock().await;
        let rows = self.registry.tiers().await?;
        let mut all = self.cfg.tiers.clone();
        for row in rows {
            all.insert(row.name.as_str().to_owned(), row.limits);
        }
        *self.tiers.write() = Arc::new(all);
        Ok(())
    }

    /// Creates or replaces a tier. Fields `changes` leaves out take the tier's configured
    /// limits (or the built-in `standard` ones for a tier configuration does not define).
    pub async fn put_tier(
        &self,
        name: TierName,
        changes: &LimitOverrides,
    ) -> Result<TierLimits, StoreError> {
        let base = self
            .cfg
            .tiers
            .get(name.as_str())
            .copied()
            .unwrap_or_else(|| TierLimits::builtin(DEFAULT_TIER));
        let limits = base.with(changes);
        limits
            .check()
            .map_err(|e| StoreError::BadLimits(e.to_string()))?;
        self.registry
            .put_tier(&TierRow {
                name,
                limits,
                updated_at: now(),
            })
            .await?;
        self.refresh_tiers().await?;
        Ok(limits)
    }

    /// The limits a tenant is held to: its tier's, with its own overrides on top.
    pub fn limits_of(&self, state: &TenantState) -> TierLimits {
        let tiers = self.tiers.read();
        let base = tiers
            .get(state.tenant.tier.as_str())
            .or_else(|| tiers.get(DEFAULT_TIER))
            .copied()
            .unwrap_or_else(|| TierLimits::builtin(DEFAULT_TIER));
        let mut l = base.with(&state.overrides);
        // A tier never raises the server-wide body limit.
        let global = u64::try_from(self.cfg.limits.max_body_bytes).unwrap_or(u64::MAX);
        l.max_body_bytes = l.max_body_bytes.min(global);
        l
    }

    /// The last storage usage this instance read or counted for `tenant`, and when it was read
    /// (no storage access: `None` if it is not in the usage cache). For metrics.
    pub fn known_usage(&self, tenant: TenantId) -> Option<(Usage, Instant)> {
        self.usage.get(&tenant)
    }

    /// Every usage figure in the usage cache (bounded by the cache's capacity; no storage
    /// access). For metrics.
    pub fn known_usages(&self) -> impl Iterator<Item = (TenantId, Usage)> + '_ {
        self.usage.iter().map(|(t, (u, _))| (t, u))
    }

    /// The tenant's state if it is in the cache (no storage access, whatever its age).
    pub fn cached_tenant_state(&self, tenant: TenantId) -> Option<Arc<TenantState>> {
        self.tenants.get(&tenant)
    }

    /// Sets or clears a tenant's limit overrides (operator plane).
    pub async fn set_limit_overrides(
        &self,
        id: TenantId,
        overrides: Option<LimitOverrides>,
    ) -> Result<(), StoreError> {
        let t = self.get_tenant(id).await?;
        if t.status == TenantStatus::Deleted {
            return Err(StoreError::NotFound);
        }
        let overrides = overrides.filter(|o| !o.is_empty());
        if let Some(o) = &overrides {
            TierLimits::builtin(DEFAULT_TIER)
                .with(o)
                .check()
                .map_err(|e| StoreError::BadLimits(e.to_string()))?;
        }
        self.registry
            .set_tenant_overrides(id, overrides.as_ref())
            .await?;
        self.tenants.remove(&id);
        Ok(())
    }

    /// A tenant's limit overrides (operator plane).
    pub async fn limit_overrides(&self, id: TenantId) -> Result<LimitOverrides, StoreError> {
        Ok(self
            .registry
            .tenant_overrides(id)
            .await?
            .unwrap_or_default())
    }

    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    pub fn registry(&self) -> &dyn Registry {
        self.registry.as_ref()
    }

    /// The audit service: recording, checkpoints, proofs.
    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// The caller's own audit log.
    pub fn tenant_audit(&self, ctx: &TenantContext) -> AuditScope {
        // INVARIANT: the log is the verified context's tenant's.
        AuditScope::new(LogId::Tenant(ctx.tenant()))
    }

    /// Any audit log, for the operator plane (and the checkpointer and verifier). Callers
    /// must have authenticated the operator; tenant paths use [`Store::tenant_audit`].
    pub fn operator_audit(&self, log: LogId) -> AuditScope {
        AuditScope::new(log)
    }

    /// Records an operator action on a tenant in that tenant's own log as well (so the tenant
    /// sees what was done to it: creation, status changes, key rotation, offboarding's
    /// tombstone). Operator paths only.
    pub async fn operator_record_in_tenant_log(
        &self,
        tenant: TenantId,
        action: &str,
        meta: &RequestMeta,
    ) -> Result<(), StoreError> {
        self.audit
            .record_in_tenant_log(LogId::Tenant(tenant), action, Outcome::Success, meta)
            .await
    }

    fn backend(&self, placement: &Placement) -> &Arc<dyn RecordBackend> {
        match placement {
            Placement::Shared => &self.shared,
        }
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.shared.ping().await.map_err(StoreError::from)
    }

    // ---- operator plane -------------------------------------------------------------------

    /// Onboards a tenant: a fresh root key (wrapped) and a fresh signing key.
    pub async fn create_tenant(
        &self,
        name: TenantName,
        tier: TierName,
        alg: SigningAlg,
    ) -> Result<Tenant, StoreError> {
        let id = TenantId::generate();
        let now = now();
        let (wrapped_root, _) = self
            .master
            .new_tenant_root(id)
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        let key = self.new_signing_key_row(id, alg, now)?;
        let tenant = Tenant {
            id,
            name: name.clone(),
            tier,
            status: TenantStatus::Active,
            created_at: now,
        };
        let row = TenantRow {
            tenant: tenant.clone(),
            placement: Placement::Shared,
            wrapped_root: Some(wrapped_root),
        };
        self.registry
            .create_tenant(&row, &key)
            .await
            .map_err(|e| match e {
                BackendError::Conflict(_) => StoreError::NameTaken(name.as_str().to_owned()),
                other => other.into(),
            })?;
        Ok(tenant)
    }

    fn new_signing_key_row(
        &self,
        id: TenantId,
        alg: SigningAlg,
        now: Timestamp,
    ) -> Result<SigningKeyRow, StoreError> {
        let pair =
            SigningKeyPair::generate(id, alg).map_err(|e| StoreError::Internal(e.to_string()))?;
        let wrapped = self
            .master
            .wrap_signing_key(id, &pair.public().kid, pair.pkcs8_der())
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        Ok(SigningKeyRow {
            tenant: id,
            kid: pair.public().kid.clone(),
            alg,
            public: pair.public().bytes.clone(),
            wrapped_private: wrapped,
            created_at: now,
            active: true,
        })
    }

    pub async fn get_tenant(&self, id: TenantId) -> Result<Tenant, StoreError> {
        match self.registry.tenant(id).await? {
            Some(row) => Ok(row.tenant),
            None => Err(StoreError::NotFound),
        }
    }

    pub async fn list_tenants(
        &self,
        after: Option<TenantId>,
        limit: usize,
    ) -> Result<Vec<Tenant>, StoreError> {
        Ok(self.registry.list_tenants(after, limit).await?)
    }

    /// Changes a tenant's status or tier. Deleted tenants cannot be changed back.
    pub async fn update_tenant(
        &self,
        id: TenantId,
        patch: TenantPatch,
    ) -> Result<Tenant, StoreError> {
        let current = self.get_tenant(id).await?;
        if current.status == TenantStatus::Deleted {
            return Err(StoreError::NotFound);
        }
        if patch.status == Some(TenantStatus::Deleted) {
            return Err(StoreError::Internal(
                "deletion goes through offboard".into(),
            ));
        }
        let updated = self
            .registry
            .update_tenant(id, &patch)
            .await?
            .ok_or(StoreError::NotFound)?;
        self.tenants.remove(&id);
        Ok(updated)
    }

    /// Offboards a tenant by crypto-shredding: its wrapped root key and signing keys are
    /// destroyed first (the live database can no longer decrypt anything of it), then its rows
    /// are purged. Idempotent: offboarding a deleted tenant purges again, so an interrupted
    /// offboarding can be retried. Backups taken earlier still hold the wrapped root key and
    /// stay readable with the master key (see docs/threat-model.md).
    pub async fn offboard(&self, id: TenantId) -> Result<u64, StoreError> {
        let row = self
            .registry
            .tenant(id)
            .await?
            .ok_or(StoreError::NotFound)?;
        if row.tenant.status != TenantStatus::Deleted && !self.registry.shred_tenant(id).await? {
            return Err(StoreError::NotFound);
        }
        self.tenants.remove(&id);
        let purged = self.backend(&row.placement).danger_purge_tenant(id).await?;
        Ok(purged)
    }

    /// The key new tokens for `id` are signed with.
    pub async fn active_signing_key(&self, id: TenantId) -> Result<SigningKeyPair, StoreError> {
        let keys = self.registry.signing_keys(id).await?;
        let row = keys.iter().find(|k| k.active).ok_or(StoreError::NotFound)?;
        self.open_signing_key(row)
    }

    /// Unwraps a stored signing key with the master key (authenticated: tenant and kid).
    fn open_signing_key(&self, row: &SigningKeyRow) -> Result<SigningKeyPair, StoreError> {
        let id = row.tenant;
        let integrity = |e: &dyn std::fmt::Display| {
            StoreError::Integrity(format!("signing key of tenant {id}: {e}"))
        };
        let der = self
            .master
            .unwrap_signing_key(id, &row.kid, &row.wrapped_private)
            .map_err(|e| integrity(&e))?;
        SigningKeyPair::from_pkcs8(id, row.kid.clone(), row.alg, &der).map_err(|e| integrity(&e))
    }

    /// Adds a new signing key and makes it the active one; older keys keep verifying.
    pub async fn rotate_signing_key(
        &self,
        id: TenantId,
        alg: SigningAlg,
    ) -> Result<PublicKey, StoreError> {
        let t = self.get_tenant(id).await?;
        if t.status == TenantStatus::Deleted {
            return Err(StoreError::NotFound);
        }
        let row = self.new_signing_key_row(id, alg, now())?;
        self.registry.add_signing_key(&row).await?;
        self.tenants.remove(&id);
        Ok(PublicKey {
            tenant: id,
            kid: row.kid,
            alg,
            bytes: row.public,
        })
    }

    /// The tenant's public keys (for JWKS). Deleted and unknown tenants have none.
    pub async fn public_keys(&self, id: TenantId) -> Result<Vec<PublicKey>, StoreError> {
        match self.tenant_state(id).await? {
            Some(s) if s.tenant.status != TenantStatus::Deleted => Ok(s.public_keys.clone()),
            _ => Err(StoreError::NotFound),
        }
    }

    /// How long cached tenant state is trusted: long while the change feed invalidates changed
    /// tenants, short otherwise.
    fn tenant_ttl(&self) -> Duration {
        self.ttl_given(self.cfg.cache_ttl)
    }

    /// How long something cached is trusted: `feed_cache_ttl` (at least `short_ttl`) while the
    /// change feed works, else `short_ttl`.
    fn ttl_given(&self, short_ttl: Duration) -> Duration {
        if self.change_feed_live() {
            self.cfg.feed_cache_ttl.max(short_ttl)
        } else {
            short_ttl
        }
    }

    /// Whether something cached for `tenant` from a storage read that started at `loaded_at`
    /// may still be used. While the change feed works (several instances over one database),
    /// until the feed reports a change of the tenant after that read began (collection and
    /// policy changes are on the feed too), for at most `feed_cache_ttl`; otherwise for
    /// `short_ttl`.
    pub fn cache_fresh(&self, tenant: TenantId, loaded_at: Instant, short_ttl: Duration) -> bool {
        loaded_at.elapsed() < self.ttl_given(short_ttl)
            && (!self.change_feed_live()
                || self.changed.get(&tenant).is_none_or(|at| at < loaded_at))
    }

    /// Whether the registry change feed is running and recently succeeded.
    pub fn change_feed_live(&self) -> bool {
        self.feed.as_ref().is_some_and(crate::feed::Feed::live)
    }

    /// Cached tenant state for authentication. `None` for an unknown tenant.
    pub async fn tenant_state(&self, id: TenantId) -> Result<Option<Arc<TenantState>>, StoreError> {
        self.tenant_state_younger_than(id, self.tenant_ttl()).await
    }

    /// Like [`Store::tenant_state`], re-reading the registry if the cached state is `max_age`
    /// old or older. Authentication uses a short `max_age` when a token names a key the cached
    /// state does not know, so a key rotated on another instance is picked up at once (and a
    /// flood of unknown key ids cannot make every request read the registry).
    pub async fn tenant_state_younger_than(
        &self,
        id: TenantId,
        max_age: Duration,
    ) -> Result<Option<Arc<TenantState>>, StoreError> {
        if let Some(s) = self.tenants.get(&id)
            && s.loaded_at.elapsed() < max_age.min(self.tenant_ttl())
        {
            return Ok(Some(s));
        }
        let previous = self.tenants.get(&id);
        let Some(row) = self.registry.tenant(id).await? else {
            return Ok(None);
        };
        let live = matches!(
            row.tenant.status,
            TenantStatus::Active | TenantStatus::Suspended
        );
        let root = match (&row.wrapped_root, live) {
            (Some(w), true) => Some(w),
            _ => None,
        };
        let overrides = if row.tenant.status == TenantStatus::Deleted {
            LimitOverrides::default()
        } else {
            self.registry
                .tenant_overrides(id)
                .await?
                .unwrap_or_default()
        };
        let signing = if row.tenant.status == TenantStatus::Deleted {
            Vec::new()
        } else {
            self.registry.signing_keys(id).await?
        };
        let source = KeySource {
            root: root.map(|w| w.as_bytes().to_vec()),
            signing: signing
                .iter()
                .map(|k| {
                    (
                        k.kid.as_str().to_owned(),
                        k.alg.as_str(),
                        k.wrapped_private.as_bytes().to_vec(),
                    )
                })
                .collect(),
        };
        // The common case of a reload: nothing about the keys changed (only the cache entry
        // aged). Unwrapping is authenticated decryption plus key derivation; skip it.
        let (keys, public_keys) = match previous {
            Some(p) if p.source == source => (p.keys.clone(), p.public_keys.clone()),
            _ => {
                let keys = match root {
                    Some(w) => Some(Arc::new(self.master.open_tenant_root(id, w).map_err(
                        |e| StoreError::Integrity(format!("root key of tenant {id}: {e}")),
                    )?)),
                    None => None,
                };
                let mut public_keys = Vec::with_capacity(signing.len());
                for k in &signing {
                    // INVARIANT: a verification key is derived from the private key, which is
                    // authenticated by the master key (AAD: tenant and kid). The stored public
                    // key is not trusted: someone who can write the database but lacks the
                    // master key cannot plant a key of their own.
                    public_keys.push(self.open_signing_key(k)?.public().clone());
                }
                (keys, public_keys)
            }
        };
        let state = Arc::new(TenantState {
            placement: row.placement,
            tenant: row.tenant,
            public_keys,
            overrides,
            keys,
            loaded_at: Instant::now(),
            source,
        });
        self.tenants.insert(id, state.clone());
        Ok(Some(state))
    }

    // ---- the tenant plane -----------------------------------------------------------------

    /// The only door to tenant data: a handle scoped to the context's tenant.
    pub async fn tenant(&self, ctx: &TenantContext) -> Result<TenantHandle<'_>, StoreError> {
        let id = ctx.tenant();
        let state = self.tenant_state(id).await?.ok_or(StoreError::NotFound)?;
        if state.tenant.status != TenantStatus::Active {
            return Err(StoreError::TenantNotActive(state.tenant.status));
        }
        let keys = state
            .keys
            .clone()
            .ok_or(StoreError::TenantNotActive(TenantStatus::Deleted))?;
        // INVARIANT: the scope's tenant is the verified context's tenant, and nothing else.
        Ok(TenantHandle {
            store: self,
            actor: crate::audit::tenant_actor(ctx),
            meta: RequestMeta::default(),
            audit_scope: AuditScope::new(LogId::Tenant(id)),
            scope: Scope::new(id),
            // INVARIANT: every handle carries its tenant's storage quotas; writes check them.
            limits: self.limits_of(&state),
            keys,
            // The tenant's data lives where its placement says.
            backend: self.backend(&state.placement).clone(),
        })
    }
}

/// The outcome and reason class an error is recorded with.
fn failure_class(e: &StoreError) -> (Outcome, &'static str) {
    match e {
        StoreError::NotFound => (Outcome::NotFound, ""),
        StoreError::VersionMismatch { .. } => (Outcome::Conflict, "version"),
        StoreError::IdempotencyConflict => (Outcome::Conflict, "idempotency-key"),
        StoreError::Invalid(_) => (Outcome::Invalid, "schema"),
        StoreError::Schema(_) => (Outcome::Invalid, "schema-definition"),
        StoreError::Filter(_) => (Outcome::Invalid, "filter"),
        StoreError::RecordTooLarge { .. } => (Outcome::Limited, "record-size"),
        StoreError::TooDeep { .. } => (Outcome::Limited, "record-depth"),
        StoreError::QuotaExceeded(_) => (Outcome::Limited, "quota"),
        StoreError::BadLimits(_) => (Outcome::Invalid, "limits"),
        StoreError::BadCursor => (Outcome::Invalid, "cursor"),
        StoreError::NameTaken(_) => (Outcome::Conflict, "name"),
        StoreError::TenantNotActive(_) => (Outcome::Denied, "tenant-status"),
        StoreError::Unavailable(_) => (Outcome::Failed, "unavailable"),
        StoreError::Integrity(_) => (Outcome::Failed, "integrity"),
        StoreError::Internal(_) => (Outcome::Failed, "internal"),
    }
}

/// The resource name of a record in audit entries.
fn record_resource(name: &CollectionName, id: RecordId) -> String {
    format!("collections/{name}/records/{id}")
}

fn now() -> Timestamp {
    // Stored times have microsecond precision on every backend.
    let t = Timestamp::now_utc();
    t.replace_nanosecond(t.nanosecond() / 1000 * 1000)
        .unwrap_or(t)
}

/// A record as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Record {
    #[schema(value_type = String, format = Uuid)]
    pub id: RecordId,
    pub version: u64,
    pub data: Value,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

/// A collection as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CollectionInfo {
    #[schema(value_type = String, example = "orders")]
    pub name: CollectionName,
    pub version: u64,
    pub schema: Value,
    pub indexes: Vec<String>,
    /// The field holding each record's owner (policies see it as `resource.owner`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_field: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

/// The stored form of a collection definition (encrypted as a whole).
#[derive(Serialize, Deserialize)]
struct Definition {
    schema: Value,
    indexes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    owner_field: Option<String>,
}

/// One version of a tenant's policies as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PolicyVersion {
    pub version: u64,
    /// The Cedar policy text.
    pub text: String,
    /// The subject whose request stored this version.
    pub created_by: String,
    /// For a rollback: the version whose text this one restored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<u64>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

/// The stored form of a policy version (encrypted as a whole: policy text is tenant data).
#[derive(Serialize, Deserialize)]
struct SealedPolicy {
    text: String,
    created_by: String,
    #[serde(default)]
    restored_from: Option<u64>,
}

/// One page of a list.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Page {
    pub items: Vec<Record>,
    pub next_cursor: Option<String>,
}

/// The client's idempotency key with a digest of the request body it came with.
#[derive(Debug, Clone)]
pub struct Idempotency<'a> {
    pub key: &'a str,
    pub body_digest: [u8; 32],
}

/// What creating a record did.
#[derive(Debug, Clone)]
pub struct Created {
    pub record: Record,
    /// `true` when an earlier request with the same idempotency key created it.
    pub replayed: bool,
}

/// Tenant data, scoped to one verified tenant. See the module invariant.
pub struct TenantHandle<'s> {
    store: &'s Store,
    scope: Scope,
    limits: TierLimits,
    /// The caller, for audit entries (subject and roles from the verified token).
    actor: Actor,
    /// The request, for audit entries.
    meta: RequestMeta,
    /// The tenant's own audit log.
    audit_scope: AuditScope,
    keys: Arc<TenantKeys>,
    backend: Arc<dyn RecordBackend>,
}

impl std::fmt::Debug for TenantHandle<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantHandle")
            .field("tenant", &self.scope.tenant())
            .finish_non_exhaustive()
    }
}

impl TenantHandle<'_> {
    pub fn tenant(&self) -> TenantId {
        self.scope.tenant()
    }

    /// The limits this tenant is held to.
    pub fn limits(&self) -> &TierLimits {
        &self.limits
    }

    /// Whether something cached for this tenant from a read begun at `loaded_at` may still be
    /// used (see [`Store::cache_fresh`]).
    pub fn cache_fresh(&self, loaded_at: Instant, short_ttl: Duration) -> bool {
        self.store
            .cache_fresh(self.scope.tenant(), loaded_at, short_ttl)
    }

    /// What the tenant has stored now (read from storage, not from a cache).
    pub async fn usage(&self) -> Result<Usage, StoreError> {
        let u = self.backend.usage(&self.scope).await?;
        self.store
            .usage
            .insert(self.scope.tenant(), (u, Instant::now()));
        Ok(u)
    }

    /// Refuses a write that would take the tenant over a storage quota. Far from its quotas a
    /// recent usage figure is trusted (for a second, or as long as the tenant's rate limit
    /// cannot bring it near a quota, up to 30 s); near one, usage is re-read first. Concurrent
    /// writes of one tenant can together pass a quota by at most the tenant's concurrency cap.
    async fn check_quota(
        &self,
        records: u64,
        bytes: u64,
        collections: u64,
    ) -> Result<(), StoreError> {
        #[allow(
            clippy::cast_precision_loss,
            reason = "a nearness heuristic: precision is not needed"
        )]
        let near = |used: u64, add: u64, max: u64| {
            add > 0 && (used.saturating_add(add) as f64) > (max as f64) * USAGE_NEAR
        };
        let cached = self
            .store
            .usage
            .get(&self.scope.tenant())
            .filter(|(u, at)| {
                let largest = self
                    .store
                    .cfg
                    .limits
                    .max_record_bytes
                    .saturating_add(SEAL_OVERHEAD);
                let trusted = u.trusted_for_seconds(
                    &self.limits,
                    records,
                    bytes,
                    collections,
                    u64::try_from(largest).unwrap_or(u64::MAX),
                    USAGE_NEAR,
                );
                let ttl = Duration::try_from_secs_f64(trusted)
                    .unwrap_or(USAGE_TTL_MAX)
                    .clamp(USAGE_TTL, USAGE_TTL_MAX);
                at.elapsed() < ttl
            })
            .map(|(u, _)| u);
        let usage = match cached {
            Some(u)
                if !near(u.records, records, self.limits.max_records)
                    && !near(u.bytes, bytes, self.limits.max_bytes)
                    && !near(u.collections, collections, self.limits.max_collections) =>
            {
                u
            }
            _ => self.usage().await?,
        };
        match usage.exceeds(&self.limits, records, bytes, collections) {
            Some(q) => Err(StoreError::QuotaExceeded(q)),
            None => Ok(()),
        }
    }

    /// Counts a successful write in the cached usage, so the next check sees it.
    fn count(&self, records: i64, bytes: i64, collections: i64) {
        let id = self.scope.tenant();
        if let Some((mut u, at)) = self.store.usage.get(&id) {
            u.records = u.records.saturating_add_signed(records);
            u.bytes = u.bytes.saturating_add_signed(bytes);
            u.collections = u.collections.saturating_add_signed(collections);
            self.store.usage.insert(id, (u, at));
        }
    }

    /// Says which request the handle serves, for the audit entries it writes.
    pub fn with_request(mut self, meta: RequestMeta) -> Self {
        self.meta = meta;
        self
    }

    fn entry(&self, action: &str, resource: &str, outcome: Outcome, reason: &str) -> EntryBody {
        EntryBody::new(
            now(),
            self.actor.clone(),
            action,
            resource,
            outcome,
            &self.meta.request_id,
            &self.meta.source,
            reason,
        )
    }

    /// The encoded entry of a data change, to commit with it (`None` with auditing off).
    fn change_entry(&self, action: &str, resource: &str) -> Option<Vec<u8>> {
        self.store
            .audit
            .enabled()
            .then(|| self.entry(action, resource, Outcome::Success, "").encode())
    }

    /// Appends an entry for an access or a refused change, durably.
    async fn note(
        &self,
        action: &str,
        resource: &str,
        outcome: Outcome,
        reason: &str,
    ) -> Result<(), StoreError> {
        let body = self.entry(action, resource, outcome, reason);
        self.store.audit.append(&self.audit_scope, &body).await
    }

    /// Records an authorization denial of `action` (`reason`: what decided it, e.g. `policy`),
    /// durably, in the tenant's own log. Nothing with auditing off.
    pub async fn record_denied(&self, action: &str, reason: &str) -> Result<(), StoreError> {
        if !self.store.audit.enabled() {
            return Ok(());
        }
        self.note(action, "", Outcome::Denied, reason).await
    }

    /// Records the failure of an operation and hands its error back. The failure entry is best
    /// effort: the request fails either way.
    async fn failed<T>(
        &self,
        action: &str,
        resource: &str,
        e: StoreError,
    ) -> Result<T, StoreError> {
        let (outcome, reason) = failure_class(&e);
        if let Err(n) = self.note(action, resource, outcome, reason).await {
            tracing::warn!(error = %n, "audit: cannot record a failed operation");
        }
        Err(e)
    }

    fn definition_label(name: &CollectionName) -> [&[u8]; 2] {
        [b"collection", name.as_str().as_bytes()]
    }

    fn open_definition(&self, row: &CollectionRow) -> Result<Definition, StoreError> {
        let plain = self
            .keys
            .open_meta(&Self::definition_label(&row.name), &row.sealed_definition)
            .map_err(|_| {
                StoreError::Integrity(format!("definition of collection `{}`", row.name))
            })?;
        serde_json::from_slice(&plain).map_err(|e| StoreError::Internal(e.to_string()))
    }

    /// `loaded_at`: when the read of `row` began (see [`Store::cache_fresh`]).
    fn compile(
        &self,
        row: &CollectionRow,
        loaded_at: Instant,
    ) -> Result<CachedCollection, StoreError> {
        let def = self.open_definition(row)?;
        // A stored definition was valid when written; compile with generous bounds so a later
        // tightening of limits does not make existing collections unreadable.
        let compiled = CompiledCollection::compile(
            row.name.clone(),
            def.schema,
            &def.indexes,
            usize::MAX,
            usize::MAX,
        )
        .and_then(|c| c.with_owner_field(def.owner_field.as_deref()))
        .map_err(|e| StoreError::Internal(format!("stored definition of `{}`: {e}", row.name)))?;
        Ok(CachedCollection {
            row_version: row.version,
            compiled,
            created_at: row.created_at,
            updated_at: row.updated_at,
            loaded_at,
        })
    }

    /// The collection's compiled definition, from cache when fresh.
    async fn collection(
        &self,
        name: &CollectionName,
        fresh: bool,
    ) -> Result<Arc<CachedCollection>, StoreError> {
        let key = (self.scope.tenant(), name.clone());
        if !fresh
            && let Some(c) = self.store.collections.get(&key)
            && self
                .store
                .cache_fresh(key.0, c.loaded_at, self.store.cfg.cache_ttl)
        {
            return Ok(c);
        }
        let started = Instant::now();
        let row = self
            .backend
            .collection(&self.scope, name)
            .await?
            .ok_or(StoreError::NotFound)?;
        let c = Arc::new(self.compile(&row, started)?);
        self.store.collections.insert(key, c.clone());
        Ok(c)
    }

    fn info(&self, name: &CollectionName, c: &CachedCollection) -> CollectionInfo {
        CollectionInfo {
            name: name.clone(),
            version: c.row_version,
            schema: c.compiled.schema.clone(),
            indexes: c
                .compiled
                .indexes
                .iter()
                .map(|i| i.field.as_str().to_owned())
                .collect(),
            owner_field: c
                .compiled
                .fields
                .owner_field
                .as_ref()
                .map(|f| f.as_str().to_owned()),
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }

    /// Creates or replaces a collection. Returns the collection and whether it was created.
    /// When the set of indexes changes, existing records are re-indexed before this returns.
    pub async fn put_collection(
        &self,
        name: &CollectionName,
        schema: Value,
        indexes: Vec<String>,
    ) -> Result<(CollectionInfo, bool), StoreError> {
        self.put_collection_with_owner(name, schema, indexes, None)
            .await
    }

    /// [`TenantHandle::put_collection`], naming the field that holds each record's owner.
    pub async fn put_collection_with_owner(
        &self,
        name: &CollectionName,
        schema: Value,
        indexes: Vec<String>,
        owner_field: Option<String>,
    ) -> Result<(CollectionInfo, bool), StoreError> {
        let resource = format!("collections/{name}");
        match self
            .put_collection_inner(name, schema, indexes, owner_field)
            .await
        {
            Ok(v) => {
                self.note("collection.put", &resource, Outcome::Success, "")
                    .await?;
                Ok(v)
            }
            Err(e) => self.failed("collection.put", &resource, e).await,
        }
    }

    async fn put_collection_inner(
        &self,
        name: &CollectionName,
        schema: Value,
        indexes: Vec<String>,
        owner_field: Option<String>,
    ) -> Result<(CollectionInfo, bool), StoreError> {
        let lim = &self.store.cfg.limits;
        let compiled = CompiledCollection::compile(
            name.clone(),
            schema,
            &indexes,
            lim.max_indexes,
            lim.max_schema_bytes,
        )?
        .with_owner_field(owner_field.as_deref())?;
        let def = Definition {
            schema: compiled.schema.clone(),
            indexes,
            owner_field,
        };
        let plain = serde_json::to_vec(&def).map_err(|e| StoreError::Internal(e.to_string()))?;
        let sealed = self
            .keys
            .seal_meta(&Self::definition_label(name), &plain)
            .map_err(|e| StoreError::Internal(e.to_string()))?;
        for _ in 0..STALE_RETRIES {
            let existing = self.backend.collection(&self.scope, name).await?;
            if existing.is_none() {
                self.check_quota(0, 0, 1).await?;
            }
            let now = now();
            let (expected, version, created_at, old_indexes) = match &existing {
                Some(row) => {
                    let old = self.open_definition(row)?;
                    (
                        Some(row.version),
                        row.version.saturating_add(1),
                        row.created_at,
                        old.indexes,
                    )
                }
                None => (None, 1, now, Vec::new()),
            };
            let row = CollectionRow {
                name: name.clone(),
                version,
                sealed_definition: sealed.clone(),
                created_at,
                updated_at: now,
            };
            if !self
                .backend
                .put_collection(&self.scope, &row, expected)
                .await?
            {
                continue;
            }
            self.store
                .collections
                .remove(&(self.scope.tenant(), name.clone()));
            if existing.is_none() {
                self.count(0, 0, 1);
            }
            if existing.is_some()
                && old_indexes != def.indexes
                && !self.reindex(name, version, &compiled).await?
            {
                // Someone changed the collection again meanwhile; their write re-indexes.
            }
            let cached = CachedCollection {
                row_version: version,
                compiled,
                created_at,
                updated_at: now,
                loaded_at: Instant::now(),
            };
            return Ok((self.info(name, &cached), existing.is_none()));
        }
        Err(StoreError::Unavailable(
            "collection kept changing during the update; retry".into(),
        ))
    }

    async fn reindex(
        &self,
        name: &CollectionName,
        version: u64,
        compiled: &CompiledCollection,
    ) -> Result<bool, StoreError> {
        let rows = self.backend.all_records(&self.scope, name).await?;
        let mut entries = Vec::with_capacity(rows.len());
        for row in rows {
            let data = self.decrypt(&row)?;
            entries.push((row.id, self.tokens(name, compiled, &data)));
        }
        Ok(self
            .backend
            .reindex(&self.scope, name, version, &entries)
            .await?)
    }

    pub async fn list_collections(&self) -> Result<Vec<CollectionInfo>, StoreError> {
        match self.list_collections_inner().await {
            Ok(v) => {
                self.note("collection.list", "collections", Outcome::Success, "")
                    .await?;
                Ok(v)
            }
            Err(e) => self.failed("collection.list", "collections", e).await,
        }
    }

    async fn list_collections_inner(&self) -> Result<Vec<CollectionInfo>, StoreError> {
        let rows = self.backend.collections(&self.scope).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let def = self.open_definition(&row)?;
            out.push(CollectionInfo {
                name: row.name,
                version: row.version,
                schema: def.schema,
                indexes: def.indexes,
                owner_field: def.owner_field,
                created_at: row.created_at,
                updated_at: row.updated_at,
            });
        }
        Ok(out)
    }

    pub async fn get_collection(
        &self,
        name: &CollectionName,
    ) -> Result<CollectionInfo, StoreError> {
        let resource = format!("collections/{name}");
        match self.collection(name, true).await {
            Ok(c) => {
                self.note("collection.read", &resource, Outcome::Success, "")
                    .await?;
                Ok(self.info(name, &c))
            }
            Err(e) => self.failed("collection.read", &resource, e).await,
        }
    }

    /// The classified fields and owner field of a collection (from the cache when fresh).
    pub async fn fields(&self, name: &CollectionName) -> Result<Arc<FieldPolicy>, StoreError> {
        Ok(self.collection(name, false).await?.compiled.fields.clone())
    }

    // ---- policies -------------------------------------------------------------------------

    fn open_policy(&self, row: &PolicyRow) -> Result<PolicyVersion, StoreError> {
        let plain = self
            .keys
            .open_meta(&[b"policy", &row.version.to_be_bytes()], &row.sealed)
            .map_err(|_| StoreError::Integrity(format!("policy version {}", row.version)))?;
        let p: SealedPolicy =
            serde_json::from_slice(&plain).map_err(|e| StoreError::Internal(e.to_string()))?;
        Ok(PolicyVersion {
            version: row.version,
            text: p.text,
            created_by: p.created_by,
            restored_from: p.restored_from,
            created_at: row.created_at,
        })
    }

    /// Stores `text` as the tenant's next policy version, which is then the one in force.
    /// The caller has validated it. `restored_from` marks a rollback.
    pub async fn put_policy(
        &self,
        text: String,
        author: &Subject,
        restored_from: Option<u64>,
    ) -> Result<PolicyVersion, StoreError> {
        let sealed = SealedPolicy {
            text,
            created_by: author.as_str().to_owned(),
            restored_from,
        };
        let plain = serde_json::to_vec(&sealed).map_err(|e| StoreError::Internal(e.to_string()))?;
        // Optimistic: each round, one of the concurrent writers wins the next version. The
        // version is sealed into the ciphertext (AAD), so it must be chosen before the insert.
        for attempt in 0..POLICY_RETRIES {
            if attempt > 0 {
                tokio::task::yield_now().await;
            }
            let latest = self.backend.latest_policy(&self.scope).await?;
            let version = latest.map_or(1, |r| r.version.saturating_add(1));
            let row = PolicyRow {
                version,
                sealed: self
                    .keys
                    .seal_meta(&[b"policy", &version.to_be_bytes()], &plain)
                    .map_err(|e| StoreError::Internal(e.to_string()))?,
                created_at: now(),
            };
            if self.backend.insert_policy(&self.scope, &row).await? {
                let action = if restored_from.is_some() {
                    "policy.rollback"
                } else {
                    "policy.put"
                };
                self.note(
                    action,
                    &format!("policies/v{version}"),
                    Outcome::Success,
                    "",
                )
                .await?;
                return self.open_policy(&row);
            }
        }
        Err(StoreError::Unavailable(
            "policies kept changing during the update; retry".into(),
        ))
    }

    /// Every policy version, oldest first.
    pub async fn policy_versions(&self) -> Result<Vec<PolicyVersion>, StoreError> {
        let rows = self.backend.policies(&self.scope).await?;
        rows.iter().map(|r| self.open_policy(r)).collect()
    }

    /// The policy version in force (the highest), if the tenant has any.
    pub async fn active_policy(&self) -> Result<Option<PolicyVersion>, StoreError> {
        self.backend
            .latest_policy(&self.scope)
            .await?
            .map(|r| self.open_policy(&r))
            .transpose()
    }

    /// One policy version.
    pub async fn policy_version(&self, version: u64) -> Result<PolicyVersion, StoreError> {
        self.policy_versions()
            .await?
            .into_iter()
            .find(|p| p.version == version)
            .ok_or(StoreError::NotFound)
    }

    fn check_limits(&self, data: &Value) -> Result<Vec<u8>, StoreError> {
        let lim = &self.store.cfg.limits;
        let depth = json_depth(data);
        if depth > lim.max_json_depth {
            return Err(StoreError::TooDeep {
                max: lim.max_json_depth,
            });
        }
        let plain = serde_json::to_vec(data).map_err(|e| StoreError::Internal(e.to_string()))?;
        if plain.len() > lim.max_record_bytes {
            return Err(StoreError::RecordTooLarge {
                max: lim.max_record_bytes,
            });
        }
        Ok(plain)
    }

    fn tokens(&self, name: &CollectionName, c: &CompiledCollection, data: &Value) -> Vec<[u8; 16]> {
        c.index_terms(data)
            .into_iter()
            .map(|(f, t)| self.keys.blind_index(name, f, &t))
            .collect()
    }

    fn decrypt(&self, row: &RecordRow) -> Result<Value, StoreError> {
        let place = RecordPlace {
            collection: &row.collection,
            record: row.id,
            version: row.version,
        };
        let plain = self
            .keys
            .open_record(&place, &row.ciphertext)
            .map_err(|_| {
                StoreError::Integrity(format!(
                    "record {} of collection `{}` failed authentication",
                    row.id, row.collection
                ))
            })?;
        serde_json::from_slice(&plain).map_err(|e| StoreError::Internal(e.to_string()))
    }

    fn to_record(&self, row: &RecordRow) -> Result<Record, StoreError> {
        Ok(Record {
            id: row.id,
            version: row.version,
            data: self.decrypt(row)?,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }

    /// Creates a record. With an idempotency key, a repeat of the same request returns the
    /// first response and creates nothing; the same key with another request is refused.
    pub async fn create_record(
        &self,
        name: &CollectionName,
        data: Value,
        idem: Option<Idempotency<'_>>,
    ) -> Result<Created, StoreError> {
        match self.create_record_inner(name, data, idem).await {
            Ok(c) => {
                if c.replayed {
                    // Not a change: an access to the record the first request created.
                    let resource = record_resource(name, c.record.id);
                    self.note(
                        "record.create",
                        &resource,
                        Outcome::Success,
                        "idempotent-replay",
                    )
                    .await?;
                }
                Ok(c)
            }
            Err(e) => {
                let resource = format!("collections/{name}/records");
                self.failed("record.create", &resource, e).await
            }
        }
    }

    async fn create_record_inner(
        &self,
        name: &CollectionName,
        data: Value,
        idem: Option<Idempotency<'_>>,
    ) -> Result<Created, StoreError> {
        let plain = self.check_limits(&data)?;
        let idem = idem.map(|i| {
            let key = self.keys.keyed_digest(b"idempotency-key", i.key.as_bytes());
            // Keyed, so a copy of the database cannot confirm a guessed request body.
            let mut request = Vec::with_capacity(name.as_str().len() + 33);
            request.extend_from_slice(name.as_str().as_bytes());
            request.push(0);
            request.extend_from_slice(&i.body_digest);
            (
                key,
                self.keys.keyed_digest(b"idempotency-request", &request),
            )
        });
        let mut fresh = false;
        for _ in 0..STALE_RETRIES {
            let c = self.collection(name, fresh).await?;
            c.compiled
                .validate(&data, MAX_VIOLATIONS)
                .map_err(StoreError::Invalid)?;
            let id = RecordId::generate();
            let now = now();
            let place = RecordPlace {
                collection: name,
                record: id,
                version: 1,
            };
            let ciphertext = self
                .keys
                .seal_record(&place, &plain)
                .map_err(|e| StoreError::Internal(e.to_string()))?;
            let stored = u64::try_from(ciphertext.len()).unwrap_or(u64::MAX);
            self.check_quota(1, stored, 0).await?;
            let record = Record {
                id,
                version: 1,
                data: data.clone(),
                created_at: now,
                updated_at: now,
            };
            let idempotency = match &idem {
                Some((key, request)) => {
                    let response = serde_json::to_vec(&record)
                        .map_err(|e| StoreError::Internal(e.to_string()))?;
                    let sealed_response = self
                        .keys
                        .seal_meta(&[b"idempotency", key], &response)
                        .map_err(|e| StoreError::Internal(e.to_string()))?;
                    Some(IdempotencyRow {
                        key: *key,
                        request: *request,
                        sealed_response,
                        expires_at: now + self.store.cfg.idempotency_ttl,
                    })
                }
                None => None,
            };
            let row = InsertRow {
                record: RecordRow {
                    collection: name.clone(),
                    id,
                    version: 1,
                    ciphertext,
                    created_at: now,
                    updated_at: now,
                },
                collection_version: c.row_version,
                index: self.tokens(name, &c.compiled, &data),
                idempotency,
            };
            let entry = self.change_entry("record.create", &record_resource(name, id));
            match self
                .backend
                .insert(&self.scope, &row, entry.as_deref())
                .await?
            {
                InsertOutcome::Inserted => {
                    self.count(1, i64::try_from(stored).unwrap_or(i64::MAX), 0);
                    self.store.audit.mark(self.audit_scope.log());
                    return Ok(Created {
                        record,
                        replayed: false,
                    });
                }
                InsertOutcome::Replayed(sealed) => {
                    let key = idem.as_ref().map(|(k, _)| *k).unwrap_or_default();
                    let plain = self
                        .keys
                        .open_meta(&[b"idempotency", &key], &sealed)
                        .map_err(|_| StoreError::Integrity("stored idempotent response".into()))?;
                    let record: Record = serde_json::from_slice(&plain)
                        .map_err(|e| StoreError::Internal(e.to_string()))?;
                    return Ok(Created {
                        record,
                        replayed: true,
                    });
                }
                InsertOutcome::KeyReused => return Err(StoreError::IdempotencyConflict),
                InsertOutcome::StaleCollection => fresh = true,
            }
        }
        Err(StoreError::Unavailable(
            "collection kept changing during the write; retry".into(),
        ))
    }

    /// Reads one record. Missing and foreign records are the same [`StoreError::NotFound`].
    pub async fn get_record(
        &self,
        name: &CollectionName,
        id: RecordId,
    ) -> Result<Record, StoreError> {
        let resource = record_resource(name, id);
        // The access is on record (durably, with the read) before the record is returned.
        let entry = self.change_entry("record.read", &resource);
        let read = async {
            let row = self
                .backend
                .get(&self.scope, name, id, entry.as_deref())
                .await?
                .ok_or(StoreError::NotFound)?;
            self.store.audit.mark(self.audit_scope.log());
            self.to_record(&row)
        };
        match read.await {
            Ok(r) => Ok(r),
            Err(e) => self.failed("record.read", &resource, e).await,
        }
    }

    /// Replaces a record's data if its current version is `expected`.
    pub async fn update_record(
        &self,
        name: &CollectionName,
        id: RecordId,
        data: Value,
        expected: u64,
    ) -> Result<Record, StoreError> {
        match self.update_record_inner(name, id, data, expected).await {
            Ok(r) => Ok(r),
            Err(e) => {
                self.failed("record.update", &record_resource(name, id), e)
                    .await
            }
        }
    }

    async fn update_record_inner(
        &self,
        name: &CollectionName,
        id: RecordId,
        data: Value,
        expected: u64,
    ) -> Result<Record, StoreError> {
        let plain = self.check_limits(&data)?;
        let mut fresh = false;
        for _ in 0..STALE_RETRIES {
            let c = self.collection(name, fresh).await?;
            c.compiled
                .validate(&data, MAX_VIOLATIONS)
                .map_err(StoreError::Invalid)?;
            let version = expected
                .checked_add(1)
                .ok_or(StoreError::VersionMismatch { current: expected })?;
            let now = now();
            let place = RecordPlace {
                collection: name,
                record: id,
                version,
            };
            let ciphertext = self
                .keys
                .seal_record(&place, &plain)
                .map_err(|e| StoreError::Internal(e.to_string()))?;
            // The new version needs room of its own: the old one's size is not known here.
            self.check_quota(0, u64::try_from(ciphertext.len()).unwrap_or(u64::MAX), 0)
                .await?;
            let row = UpdateRow {
                record: RecordRow {
                    collection: name.clone(),
                    id,
                    version,
                    ciphertext,
                    created_at: now,
                    updated_at: now,
                },
                expected_version: expected,
                collection_version: c.row_version,
                index: self.tokens(name, &c.compiled, &data),
            };
            let entry = self.change_entry("record.update", &record_resource(name, id));
            match self
                .backend
                .update(&self.scope, &row, entry.as_deref())
                .await?
            {
                WriteOutcome::Written { created_at } => {
                    self.store.audit.mark(self.audit_scope.log());
                    return Ok(Record {
                        id,
                        version,
                        data,
                        created_at,
                        updated_at: now,
                    });
                }
                WriteOutcome::NotFound => return Err(StoreError::NotFound),
                WriteOutcome::VersionMismatch { current } => {
                    return Err(StoreError::VersionMismatch { current });
                }
                WriteOutcome::StaleCollection => fresh = true,
            }
        }
        Err(StoreError::Unavailable(
            "collection kept changing during the write; retry".into(),
        ))
    }

    /// Deletes a record; with `expected`, only if that is its current version.
    pub async fn delete_record(
        &self,
        name: &CollectionName,
        id: RecordId,
        expected: Option<u64>,
    ) -> Result<(), StoreError> {
        let resource = record_resource(name, id);
        let entry = self.change_entry("record.delete", &resource);
        let out = match self
            .backend
            .delete(&self.scope, name, id, expected, entry.as_deref())
            .await
        {
            Ok(o) => o,
            Err(e) => return self.failed("record.delete", &resource, e.into()).await,
        };
        let e = match out {
            WriteOutcome::Written { .. } => {
                self.store.audit.mark(self.audit_scope.log());
                return Ok(());
            }
            WriteOutcome::NotFound | WriteOutcome::StaleCollection => StoreError::NotFound,
            WriteOutcome::VersionMismatch { current } => StoreError::VersionMismatch { current },
        };
        self.failed("record.delete", &resource, e).await
    }

    /// Lists records matching every `(field, value)` equality filter, in id order.
    pub async fn query(
        &self,
        name: &CollectionName,
        filters: &[(String, String)],
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let resource = format!("collections/{name}/records");
        match self
            .query_inner(name, filters, cursor, limit, &resource)
            .await
        {
            Ok(p) => Ok(p),
            Err(e) => self.failed("record.list", &resource, e).await,
        }
    }

    async fn query_inner(
        &self,
        name: &CollectionName,
        filters: &[(String, String)],
        cursor: Option<&str>,
        limit: usize,
        resource: &str,
    ) -> Result<Page, StoreError> {
        let c = self.collection(name, false).await?;
        let mut tokens = Vec::with_capacity(filters.len());
        for (field, raw) in filters {
            let (f, term) = c.compiled.filter_term(field, raw)?;
            tokens.push(self.keys.blind_index(name, f, &term));
        }
        let after = match cursor {
            Some(s) => Some(RecordId::parse(s).map_err(|_| StoreError::BadCursor)?),
            None => None,
        };
        let limit = limit.clamp(1, self.store.cfg.limits.max_page_size.max(1));
        // The access is on record (durably, with the read) before the page is returned.
        let entry = self.change_entry("record.list", resource);
        let mut rows = self
            .backend
            .query(
                &self.scope,
                name,
                &tokens,
                after,
                limit.saturating_add(1),
                entry.as_deref(),
            )
            .await?;
        self.store.audit.mark(self.audit_scope.log());
        let more = rows.len() > limit;
        rows.truncate(limit);
        let items = rows
            .iter()
            .map(|r| self.to_record(r))
            .collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if more {
            items.last().map(|r| r.id.to_string())
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }
}
