//! The storage port: the traits a backend adapter implements.
//!
//! INVARIANT: no method of [`RecordBackend`] takes a bare tenant id for tenant-owned rows. Each
//! takes a [`Scope`], which only [`crate::Store::tenant`] can create, from a verified
//! [`bulkhead_core::TenantContext`]. Adapters put `scope.tenant()` into every statement
//! themselves. The one exception is loudly named: [`RecordBackend::danger_purge_tenant`], used
//! by offboarding after the tenant's keys were destroyed.

use async_trait::async_trait;
use bulkhead_core::crypto::WrappedKey;
use bulkhead_core::tenant::Placement;
use bulkhead_core::token::SigningAlg;
use bulkhead_core::{
    CollectionName, KeyId, RecordId, Tenant, TenantId, TenantStatus, TierName, Timestamp,
};

use crate::BackendError;

/// Proof that the caller holds a verified context for `tenant`. Adapters can read the tenant,
/// but nothing outside this crate can make one.
#[derive(Debug, Clone)]
pub struct Scope {
    tenant: TenantId,
}

impl Scope {
    pub(crate) fn new(tenant: TenantId) -> Self {
        Self { tenant }
    }

    pub fn tenant(&self) -> TenantId {
        self.tenant
    }
}

/// A tenant as stored in the registry, with its wrapped key material.
#[derive(Debug, Clone)]
pub struct TenantRow {
    pub tenant: Tenant,
    pub placement: Placement,
    /// The tenant's root key wrapped by the master key; `None` once crypto-shredded.
    pub wrapped_root: Option<WrappedKey>,
}

/// A tenant signing key as stored.
#[derive(Debug, Clone)]
pub struct SigningKeyRow {
    pub tenant: TenantId,
    pub kid: KeyId,
    pub alg: SigningAlg,
    pub public: Vec<u8>,
    pub wrapped_private: WrappedKey,
    pub created_at: Timestamp,
    /// `true` for the key new tokens are minted with; older keys still verify until retired.
    pub active: bool,
}

/// A change to a tenant's registry entry.
#[derive(Debug, Clone, Default)]
pub struct TenantPatch {
    pub status: Option<TenantStatus>,
    pub tier: Option<TierName>,
}

/// The operator-plane registry: tenants, their keys, and server-wide settings.
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Reads a server-wide value (today: `master-key-check`).
    async fn setting(&self, name: &str) -> Result<Option<Vec<u8>>, BackendError>;
    /// Writes a server-wide value only if none is set; returns the value in force afterwards.
    async fn init_setting(&self, name: &str, value: &[u8]) -> Result<Vec<u8>, BackendError>;
    /// Replaces a server-wide value.
    async fn set_setting(&self, name: &str, value: &[u8]) -> Result<(), BackendError>;

    /// Creates a tenant with its first signing key, atomically. A name held by a tenant that
    /// is not deleted is a [`BackendError::Conflict`].
    async fn create_tenant(&self, row: &TenantRow, key: &SigningKeyRow)
    -> Result<(), BackendError>;
    async fn tenant(&self, id: TenantId) -> Result<Option<TenantRow>, BackendError>;
    /// Tenants in id order, after `after`, at most `limit`.
    async fn list_tenants(
        &self,
        after: Option<TenantId>,
        limit: usize,
    ) -> Result<Vec<Tenant>, BackendError>;
    async fn update_tenant(
        &self,
        id: TenantId,
        patch: &TenantPatch,
    ) -> Result<Option<Tenant>, BackendError>;
    /// Offboards: marks the tenant deleted and destroys its wrapped root key and signing keys
    /// in one transaction. Returns `false` if the tenant does not exist.
    async fn shred_tenant(&self, id: TenantId) -> Result<bool, BackendError>;

    async fn signing_keys(&self, id: TenantId) -> Result<Vec<SigningKeyRow>, BackendError>;
    /// Adds a key and makes it the active one.
    async fn add_signing_key(&self, key: &SigningKeyRow) -> Result<(), BackendError>;
}

/// A collection definition as stored: the schema is encrypted with the tenant's data key.
#[derive(Debug, Clone)]
pub struct CollectionRow {
    pub name: CollectionName,
    /// Incremented on every change; writes carry the version they validated against.
    pub version: u64,
    pub sealed_definition: Vec<u8>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A record as stored.
#[derive(Debug, Clone)]
pub struct RecordRow {
    pub collection: CollectionName,
    pub id: RecordId,
    pub version: u64,
    pub ciphertext: Vec<u8>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A blind-index token: keyed by the tenant's index key, collection, field and value.
pub type IndexToken = [u8; 16];

/// An idempotency entry written together with the record it created.
#[derive(Debug, Clone)]
pub struct IdempotencyRow {
    /// Keyed digest of the client's `Idempotency-Key`.
    pub key: [u8; 32],
    /// Digest of the request (collection and body) the key was first used with.
    pub request: [u8; 32],
    /// The first response, encrypted with the tenant's data key.
    pub sealed_response: Vec<u8>,
    pub expires_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct InsertRow {
    pub record: RecordRow,
    pub collection_version: u64,
    pub index: Vec<IndexToken>,
    pub idempotency: Option<IdempotencyRow>,
}

#[derive(Debug, Clone)]
pub struct UpdateRow {
    pub record: RecordRow,
    pub expected_version: u64,
    pub collection_version: u64,
    pub index: Vec<IndexToken>,
}

#[derive(Debug, Clone)]
pub enum InsertOutcome {
    Inserted,
    /// The idempotency key was used before with the same request: the stored response.
    Replayed(Vec<u8>),
    /// The idempotency key was used before with a different request.
    KeyReused,
    /// The collection changed (or vanished) since the caller read it: reload and retry.
    StaleCollection,
}

#[derive(Debug, Clone)]
pub enum WriteOutcome {
    /// Done; the record's creation time, as stored.
    Written {
        created_at: Timestamp,
    },
    NotFound,
    VersionMismatch {
        current: u64,
    },
    StaleCollection,
}

/// One version of a tenant's policies as stored. Versions are append-only: the version in
/// force is the highest, and a rollback stores an earlier version's text as a new version.
#[derive(Debug, Clone)]
pub struct PolicyRow {
    pub version: u64,
    /// The policy text and its metadata, encrypted with the tenant's data key.
    pub sealed: Vec<u8>,
    pub created_at: Timestamp,
}

/// Tenant-owned data. Every method is scoped; see the module's invariant.
#[async_trait]
pub trait RecordBackend: Send + Sync + 'static {
    /// Creates or replaces a collection definition. `expected` is the version the caller read
    /// (`None`: must not exist yet). Returns `false` on a version race.
    async fn put_collection(
        &self,
        s: &Scope,
        row: &CollectionRow,
        expected: Option<u64>,
    ) -> Result<bool, BackendError>;
    async fn collection(
        &self,
        s: &Scope,
        name: &CollectionName,
    ) -> Result<Option<CollectionRow>, BackendError>;
    async fn collections(&self, s: &Scope) -> Result<Vec<CollectionRow>, BackendError>;
    /// Every record of a collection, for re-indexing after its indexes change.
    async fn all_records(
        &self,
        s: &Scope,
        name: &CollectionName,
    ) -> Result<Vec<RecordRow>, BackendError>;
    /// Replaces the blind index of the given records, if the collection is still at `collection_version`.
    async fn reindex(
        &self,
        s: &Scope,
        name: &CollectionName,
        collection_version: u64,
        entries: &[(RecordId, Vec<IndexToken>)],
    ) -> Result<bool, BackendError>;

    async fn insert(&self, s: &Scope, row: &InsertRow) -> Result<InsertOutcome, BackendError>;
    async fn get(
        &self,
        s: &Scope,
        name: &CollectionName,
        id: RecordId,
    ) -> Result<Option<RecordRow>, BackendError>;
    async fn update(&self, s: &Scope, row: &UpdateRow) -> Result<WriteOutcome, BackendError>;
    async fn delete(
        &self,
        s: &Scope,
        name: &CollectionName,
        id: RecordId,
        expected: Option<u64>,
    ) -> Result<WriteOutcome, BackendError>;
    /// Records whose index holds every token in `all_of`, in id order after `after`.
    async fn query(
        &self,
        s: &Scope,
        name: &CollectionName,
        all_of: &[IndexToken],
        after: Option<RecordId>,
        limit: usize,
    ) -> Result<Vec<RecordRow>, BackendError>;

    // ---- tenant policies -------------------------------------------------------------------

    /// Stores a new policy version. Returns `false` if that version already exists (another
    /// writer got there first: re-read and retry).
    async fn insert_policy(&self, s: &Scope, row: &PolicyRow) -> Result<bool, BackendError>;
    /// Every stored policy version, oldest first.
    async fn policies(&self, s: &Scope) -> Result<Vec<PolicyRow>, BackendError>;
    /// The highest stored policy version: the one in force.
    async fn latest_policy(&self, s: &Scope) -> Result<Option<PolicyRow>, BackendError>;

    /// Deletes every row a tenant owns on this backend. Called only by offboarding, after the
    /// tenant's keys were destroyed; the name says what it is.
    async fn danger_purge_tenant(&self, tenant: TenantId) -> Result<u64, BackendError>;
    /// Whether the backend can serve requests now (for `/readyz`).
    async fn ping(&self) -> Result<(), BackendError>;
}
