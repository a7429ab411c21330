//! The record service: encryption, validation, blind indexes and idempotency on top of the
//! storage port, and the only way to reach tenant data.
//!
//! INVARIANT: tenant-owned data is reachable only through a [`TenantHandle`], and the only way
//! to get one is [`Store::tenant`], which takes a verified [`TenantContext`]. The handle carries
//! the tenant's [`Scope`] and keys; none of its methods take a tenant id.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bulkhead_core::crypto::{MasterKey, RecordPlace, TenantKeys};
use bulkhead_core::limits::{InputLimits, json_depth};
use bulkhead_core::schema::{CompiledCollection, FieldPolicy};
use bulkhead_core::tenant::Placement;
use bulkhead_core::token::{PublicKey, SigningAlg, SigningKeyPair};
use bulkhead_core::{
    CollectionName, RecordId, Subject, Tenant, TenantContext, TenantId, TenantName, TenantStatus,
    TierName, Timestamp,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::port::{
    CollectionRow, IdempotencyRow, InsertOutcome, InsertRow, PolicyRow, RecordBackend, RecordRow,
    Registry, Scope, SigningKeyRow, TenantPatch, TenantRow, UpdateRow, WriteOutcome,
};
use crate::{BackendError, StoreError};

/// How many times a write is retried when the collection changed under it.
const STALE_RETRIES: usize = 4;
/// How many times storing a policy version is retried when another writer took the number.
/// Each round one concurrent writer wins, so this bounds how many admins can change one
/// tenant's policies at the same moment without a 503.
const POLICY_RETRIES: usize = 16;
/// Most schema violations reported for one record.
const MAX_VIOLATIONS: usize = 16;

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub limits: InputLimits,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl: Duration,
    /// How long tenant state (status, keys) and collection definitions are cached before they
    /// are re-read. Bounds how long another instance's change takes to apply here.
    pub cache_ttl: Duration,
    /// Most tenants and collections kept in the caches.
    pub cache_capacity: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            limits: InputLimits::default(),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            cache_ttl: Duration::from_secs(5),
            cache_capacity: 100_000,
        }
    }
}

/// What the authentication layer needs to know about a tenant.
#[derive(Debug)]
pub struct TenantState {
    pub tenant: Tenant,
    placement: Placement,
    pub public_keys: Vec<PublicKey>,
    keys: Option<Arc<TenantKeys>>,
    loaded_at: Instant,
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
    tenants: quick_cache::sync::Cache<TenantId, Arc<TenantState>>,
    collections: quick_cache::sync::Cache<(TenantId, CollectionName), Arc<CachedCollection>>,
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
        Ok(Self {
            registry,
            shared,
            master,
            tenants: quick_cache::sync::Cache::new(cap),
            collections: quick_cache::sync::Cache::new(cap),
            cfg,
        })
    }

    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    pub fn registry(&self) -> &dyn Registry {
        self.registry.as_ref()
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

    /// Cached tenant state for authentication. `None` for an unknown tenant.
    pub async fn tenant_state(&self, id: TenantId) -> Result<Option<Arc<TenantState>>, StoreError> {
        self.tenant_state_younger_than(id, self.cfg.cache_ttl).await
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
            && s.loaded_at.elapsed() < max_age.min(self.cfg.cache_ttl)
        {
            return Ok(Some(s));
        }
        let Some(row) = self.registry.tenant(id).await? else {
            return Ok(None);
        };
        let keys = match (&row.wrapped_root, row.tenant.status) {
            (Some(w), TenantStatus::Active | TenantStatus::Suspended) => {
                Some(Arc::new(self.master.open_tenant_root(id, w).map_err(
                    |e| StoreError::Integrity(format!("root key of tenant {id}: {e}")),
                )?))
            }
            _ => None,
        };
        let public_keys = if row.tenant.status == TenantStatus::Deleted {
            Vec::new()
        } else {
            let mut out = Vec::new();
            for k in self.registry.signing_keys(id).await? {
                // INVARIANT: a verification key is derived from the private key, which is
                // authenticated by the master key (AAD: tenant and kid). The stored public key
                // is not trusted: someone who can write the database but lacks the master key
                // cannot plant a key of their own.
                out.push(self.open_signing_key(&k)?.public().clone());
            }
            out
        };
        let state = Arc::new(TenantState {
            placement: row.placement,
            tenant: row.tenant,
            public_keys,
            keys,
            loaded_at: Instant::now(),
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
            scope: Scope::new(id),
            keys,
            // The tenant's data lives where its placement says.
            backend: self.backend(&state.placement).clone(),
        })
    }
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

    fn compile(&self, row: &CollectionRow) -> Result<CachedCollection, StoreError> {
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
            loaded_at: Instant::now(),
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
            && c.loaded_at.elapsed() < self.store.cfg.cache_ttl
        {
            return Ok(c);
        }
        let row = self
            .backend
            .collection(&self.scope, name)
            .await?
            .ok_or(StoreError::NotFound)?;
        let c = Arc::new(self.compile(&row)?);
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
        let c = self.collection(name, true).await?;
        Ok(self.info(name, &c))
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
        for _ in 0..POLICY_RETRIES {
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
            match self.backend.insert(&self.scope, &row).await? {
                InsertOutcome::Inserted => {
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
        let row = self
            .backend
            .get(&self.scope, name, id)
            .await?
            .ok_or(StoreError::NotFound)?;
        self.to_record(&row)
    }

    /// Replaces a record's data if its current version is `expected`.
    pub async fn update_record(
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
            match self.backend.update(&self.scope, &row).await? {
                WriteOutcome::Written { created_at } => {
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
        match self.backend.delete(&self.scope, name, id, expected).await? {
            WriteOutcome::Written { .. } => Ok(()),
            WriteOutcome::NotFound | WriteOutcome::StaleCollection => Err(StoreError::NotFound),
            WriteOutcome::VersionMismatch { current } => {
                Err(StoreError::VersionMismatch { current })
            }
        }
    }

    /// Lists records matching every `(field, value)` equality filter, in id order.
    pub async fn query(
        &self,
        name: &CollectionName,
        filters: &[(String, String)],
        cursor: Option<&str>,
        limit: usize,
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
        let mut rows = self
            .backend
            .query(&self.scope, name, &tokens, after, limit.saturating_add(1))
            .await?;
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
