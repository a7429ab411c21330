//! Bulkhead's core: the vocabulary every other crate speaks.
//!
//! This crate never does I/O and knows nothing of HTTP, SQL or wire formats beyond the token
//! format it verifies. It holds:
//! - identifiers that are parsed once and trusted afterwards ([`id`]);
//! - the verified tenant context, the capability every tenant-data path needs ([`context`]);
//! - token minting and verification with per-tenant keys ([`token`]);
//! - envelope encryption and blind indexes ([`crypto`]);
//! - collection schemas and record validation ([`schema`]);
//! - the limits that bound untrusted input ([`limits`]);
//! - service tiers: per-tenant rate, concurrency and storage limits ([`tier`]).
//!
//! The one place a [`context::TenantContext`] is created is [`token::Verifier::verify`]: any
//! code that holds one has, by construction, a tenant that came from a verified token.

pub mod context;
pub mod crypto;
pub mod id;
pub mod limits;
pub mod role;
pub mod schema;
pub mod tenant;
pub mod tier;
pub mod token;

pub use context::TenantContext;
pub use id::{CollectionName, FieldName, KeyId, RecordId, Subject, TenantId, TenantName, TierName};
pub use role::{Action, Role, Roles};
pub use tenant::{Tenant, TenantStatus};

/// Wall-clock instants as Bulkhead stores and prints them (UTC, RFC 3339 on the wire).
pub type Timestamp = time::OffsetDateTime;
