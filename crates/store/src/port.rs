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
use bulkhead_core::tier::{LimitOverrides, TierLimits, Usage};
use bulkhead_core::token::SigningAlg;
use bulkhead_core::{
    CollectionName, KeyId, RecordId, Tenant, TenantId, TenantStatus, TierName, Timestamp,
};

use crate::BackendError;
use bulkhead_audit::LogId;

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

/// A change of a tenant's registry entry (status, tier, keys…), as the change feed reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryChange {
    pub tenant: TenantId,
    /// Increases with every change (but changes commit out of order: see `feed.rs`).
    pub revision: i64,
}

/// A service tier as the operator defined it (operator data, not tenant-owned).
#[derive(Debug, Clone, PartialEq)]
pub struct TierRow {
    pub name: TierName,
    pub limits: TierLimits,
    pub updated_at: Timestamp,
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

    /// The highest revision of the registry change feed, or `None` if this backend has no
    /// feed (a backend only one process uses: every change goes through that process's store,
    /// which updates its own cache).
    async fn registry_revision(&self) -> Result<Option<i64>, BackendError> {
        Ok(None)
    }

    /// The tenants whose registry entries changed with a revision above `after`, lowest first
    /// (at most a few thousand; the rest on the next call). `None`: no feed.
    async fn registry_changes(
        &self,
        after: i64,
    ) -> Result<Option<Vec<RegistryChange>>, BackendError> {
        let _ = after;
        Ok(None)
    }

    /// Every tier the operator defined through the API, in name order.
    async fn tiers(&self) -> Result<Vec<TierRow>, BackendError>;
    /// Creates or replaces a tier definition.
    async fn put_tier(&self, row: &TierRow) -> Result<(), BackendError>;
    /// A tenant's own limit overrides; `None` when it has none.
    async fn tenant_overrides(&self, id: TenantId) -> Result<Option<LimitOverrides>, BackendError>;
    /// Sets (`Some`) or clears (`None`) a tenant's limit overrides.
    async fn set_tenant_overrides(
        &self,
        id: TenantId,
        overrides: Option<&LimitOverrides>,
    ) -> Result<(), BackendError>;
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
pub trait RecordBackend: AuditBackend + Send + Sync + 'static {
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

    /// Inserts a record. `audit` (an encoded entry body) is appended to the scope's audit log
    /// in the same transaction if and only if the outcome is [`InsertOutcome::Inserted`].
    async fn insert(
        &self,
        s: &Scope,
        row: &InsertRow,
        audit: Option<&[u8]>,
    ) -> Result<InsertOutcome, BackendError>;
    /// Reads a record. `audit` is appended to the scope's audit log, durably, before this
    /// returns, if and only if the record was found.
    async fn get(
        &self,
        s: &Scope,
        name: &CollectionName,
        id: RecordId,
        audit: Option<&[u8]>,
    ) -> Result<Option<RecordRow>, BackendError>;
    /// Replaces a record; `audit` is appended in the same transaction if and only if the
    /// outcome is [`WriteOutcome::Written`].
    async fn update(
        &self,
        s: &Scope,
        row: &UpdateRow,
        audit: Option<&[u8]>,
    ) -> Result<WriteOutcome, BackendError>;
    /// Deletes a record; `audit` is appended in the same transaction if and only if the
    /// outcome is [`WriteOutcome::Written`].
    async fn delete(
        &self,
        s: &Scope,
        name: &CollectionName,
        id: RecordId,
        expected: Option<u64>,
        audit: Option<&[u8]>,
    ) -> Result<WriteOutcome, BackendError>;
    /// Records whose index holds every token in `all_of`, in id order after `after`. `audit`
    /// is appended to the scope's audit log, durably, before this returns.
    async fn query(
        &self,
        s: &Scope,
        name: &CollectionName,
        all_of: &[IndexToken],
        after: Option<RecordId>,
        limit: usize,
        audit: Option<&[u8]>,
    ) -> Result<Vec<RecordRow>, BackendError>;

    /// What the scope's tenant has stored: records and their bytes (kept by the backend as
    /// records are written, in the same transaction) and collections.
    async fn usage(&self, s: &Scope) -> Result<Usage, BackendError>;

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

/// Which audit log an operation is on. Only the store service makes one: a tenant's log from
/// a verified context (the tenant's own), the operator plane, or the checkpointer.
#[derive(Debug, Clone, Copy)]
pub struct AuditScope {
    log: LogId,
}

impl AuditScope {
    pub(crate) fn new(log: LogId) -> Self {
        Self { log }
    }

    pub fn log(&self) -> LogId {
        self.log
    }
}

/// A placed audit entry as stored: its body and leaf hash (which commits to log and seq too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub seq: u64,
    pub body: Vec<u8>,
    pub leaf: [u8; 32],
}

/// One stored block of audit entries, as the offline verifier reads it: `count` consecutive
/// entries of `log` from position `first`, in `bulkhead_audit::block` form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditBlockRef<'a> {
    pub log: LogId,
    pub first: u64,
    pub count: u64,
    pub bytes: &'a [u8],
}

/// What [`AuditBackend::unscoped_audit_visit`] hands its visitor: a stored checkpoint (of a
/// log), or a stored block of entries.
#[derive(Debug)]
pub enum AuditScanItem<'a> {
    Checkpoint(LogId, CheckpointRow),
    Block(AuditBlockRef<'a>),
}

/// What [`AuditBackend::unscoped_audit_visit`] hands each item to, where the adapter reads it
/// (on the thread that reads, while the bytes are in cache); `Break` stops the scan.
pub type AuditVisitor =
    Box<dyn FnMut(AuditScanItem<'_>) -> std::ops::ControlFlow<()> + Send + 'static>;

/// A signed checkpoint as stored, with the compact range (right edge) of its tree, so the
/// next checkpoint extends it without the earlier entries (which retention may have pruned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRow {
    pub size: u64,
    pub root: [u8; 32],
    pub time_us: i64,
    pub key_id: String,
    pub signature: Vec<u8>,
    pub frontier: Vec<u8>,
    /// Where the checkpoint sits in the batch its signature covers
    /// ([`bulkhead_audit::checkpoint::BatchPath::to_bytes`]); empty: signed alone.
    pub batch: Vec<u8>,
}

/// Audit logs: one per tenant and one for the operator plane. Append-only through this port:
/// there is no method that changes or removes an entry, except [`AuditBackend::audit_prune`]
/// (retention, below a checkpoint).
///
/// Appends are durable when the call returns. An appended entry gets its sequence number when
/// the log is *sequenced* ([`AuditBackend::audit_sequence`]), or before, in rounds of the
/// adapter's own (SQLite places its journal and `audit_pending` every few seconds; PostgreSQL's
/// concurrent transactions append to a pending queue the checkpointer places in commit order).
#[async_trait]
pub trait AuditBackend: Send + Sync + 'static {
    /// Appends encoded entry bodies to the log, durably, in order.
    async fn audit_append(&self, log: &AuditScope, bodies: &[Vec<u8>]) -> Result<(), BackendError>;
    /// Places every entry appended to these logs before the call and not placed yet (sequence
    /// numbers from the log's size, leaf hashes from `bulkhead_audit::entry::entry_leaf`);
    /// returns each log's placed size afterwards, in order. Many logs at once, so that an
    /// adapter can place them together (SQLite moves its whole append queue at a time).
    async fn audit_sequence(&self, logs: &[AuditScope]) -> Result<Vec<u64>, BackendError>;
    /// Placed entries with `seq >= from`, in order, at most `limit`.
    async fn audit_entries(
        &self,
        log: &AuditScope,
        from: u64,
        limit: usize,
    ) -> Result<Vec<AuditRow>, BackendError>;
    /// Leaf hashes of the placed entries with `from <= seq < to`, in order.
    async fn audit_leaves(
        &self,
        log: &AuditScope,
        from: u64,
        to: u64,
    ) -> Result<Vec<[u8; 32]>, BackendError>;
    /// Stores signed checkpoints, durably (a checkpoint of the same log and size already
    /// stored is kept).
    async fn audit_put_checkpoints(
        &self,
        rows: &[(AuditScope, CheckpointRow)],
    ) -> Result<(), BackendError>;
    /// The checkpoint of exactly `size` entries, or the latest one when `size` is `None`.
    async fn audit_checkpoint(
        &self,
        log: &AuditScope,
        size: Option<u64>,
    ) -> Result<Option<CheckpointRow>, BackendError>;
    /// Checkpoints with `size > after`, smallest first, at most `limit`.
    async fn audit_checkpoints(
        &self,
        log: &AuditScope,
        after: u64,
        limit: usize,
    ) -> Result<Vec<CheckpointRow>, BackendError>;
    /// Retention: deletes the entries with `seq < below`. The caller guarantees a checkpoint
    /// of size `below` exists. Returns how many were deleted.
    async fn audit_prune(&self, log: &AuditScope, below: u64) -> Result<u64, BackendError>;
    /// Operator tooling only (the offline verifier, across every log): every log that has
    /// stored entries, in order of its 16 bytes, with about how many it has — an estimate an
    /// adapter may take from an index alone, for sharing the logs out among the verifier's
    /// workers. `Ok(None)`: not supported by this adapter (the verifier then goes log by log).
    async fn unscoped_audit_logs(&self) -> Result<Option<Vec<(LogId, u64)>>, BackendError> {
        Ok(None)
    }
    /// Operator tooling only: hands `visit` everything stored of the logs from `from`
    /// (`None`: the first) to below `until` (`None`: the last), logs ordered by their 16
    /// bytes: first their checkpoints, in `(log, size)` order, then their entries, as blocks
    /// in `(log, seq)` order; stops early when `visit` says `Break`. `Ok(None)`: not
    /// supported.
    async fn unscoped_audit_visit(
        &self,
        _from: Option<LogId>,
        _until: Option<LogId>,
        _visit: AuditVisitor,
    ) -> Result<Option<()>, BackendError> {
        Ok(None)
    }
}
