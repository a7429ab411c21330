//! Storage errors: what adapters report ([`BackendError`]) and what the service reports to
//! its callers ([`StoreError`]).

use bulkhead_core::TenantStatus;
use bulkhead_core::schema::{FilterError, SchemaError, Violation};
use bulkhead_core::tier::Quota;

/// What an adapter can report. Adapters map their driver errors into these three classes.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The database cannot be reached or is restarting: retry later (HTTP 503).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A uniqueness rule was hit (tenant name taken).
    #[error("conflict: {0}")]
    Conflict(String),
    /// Anything else: a bug or corruption. Logged, never sent to a client.
    #[error("storage error: {0}")]
    Other(String),
    /// An audit log's stored entries do not read back from position `at` on (a damaged block
    /// on the embedded storage): corruption, named by position for `bulkhead audit verify`.
    #[error("stored audit entries are damaged from entry {at}: {what}")]
    AuditDamaged { at: u64, what: String },
}

/// What the store service reports. Every variant maps to one HTTP problem type at the edge.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The record, collection or tenant does not exist *for this caller*. Another tenant's
    /// record and a record that never existed give the same error, on purpose.
    #[error("not found")]
    NotFound,
    #[error("version mismatch: the current version is {current}")]
    VersionMismatch { current: u64 },
    #[error("idempotency key was already used with a different request")]
    IdempotencyConflict,
    #[error("record does not match the collection schema")]
    Invalid(Vec<Violation>),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error("record data is larger than {max} bytes")]
    RecordTooLarge { max: usize },
    #[error("record data nests deeper than {max} levels")]
    TooDeep { max: usize },
    #[error("cursor is not valid")]
    BadCursor,
    #[error("a tenant named `{0}` already exists")]
    NameTaken(String),
    #[error("tenant is {}", .0.as_str())]
    TenantNotActive(TenantStatus),
    /// The write would take the tenant over a storage quota of its tier; nothing was written.
    #[error("the `{}` quota of the tenant's tier would be exceeded", .0.as_str())]
    QuotaExceeded(Quota),
    /// An operator-supplied tier or override cannot be enforced.
    #[error("{0}")]
    BadLimits(String),
    #[error("storage unavailable")]
    Unavailable(String),
    /// Stored bytes failed authentication: tampering or a wrong master key. Loud in logs.
    #[error("stored data failed integrity checks")]
    Integrity(String),
    #[error("internal storage error")]
    Internal(String),
}

impl From<BackendError> for StoreError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Unavailable(m) => StoreError::Unavailable(m),
            // A conflict a caller did not expect is a bug, not something to show a client.
            BackendError::Conflict(m) => StoreError::Internal(format!("unexpected conflict: {m}")),
            BackendError::Other(m) => StoreError::Internal(m),
            e @ BackendError::AuditDamaged { .. } => StoreError::Integrity(e.to_string()),
        }
    }
}
