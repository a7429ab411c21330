//! Bulkhead's storage: the port every backend adapter implements, and the record service that
//! sits on top of it.
//!
//! - [`port`] is what an adapter (SQLite, PostgreSQL) implements. It moves opaque bytes: adapters
//!   never see plaintext record data or key material, only ciphertext, blind-index tokens and
//!   wrapped keys.
//! - [`service`] is what the rest of Bulkhead calls. It encrypts, validates and indexes, and
//!   hands out tenant data only through a [`service::TenantHandle`], which can only be made from
//!   a verified [`bulkhead_core::TenantContext`].
//! - [`audit`] records the tamper-evident audit logs, signs their checkpoints, serves proofs
//!   and verifies stored logs.
//! - [`contract`] (feature `contract`) is the one test suite every adapter runs.

pub mod audit;
pub mod error;
mod feed;
pub mod port;
pub mod service;

#[cfg(feature = "contract")]
pub mod contract;

pub use audit::{Audit, AuditConfig, RequestMeta};
pub use error::{BackendError, StoreError};
pub use port::{AuditBackend, AuditScope, RecordBackend, Registry, Scope};
pub use service::{Store, StoreConfig, TenantHandle};
