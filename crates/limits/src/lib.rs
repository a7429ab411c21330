//! Bulkhead's performance isolation: one tenant's flood must not be another tenant's outage.
//!
//! - [`gcra`]: the rate limit, as the generic cell rate algorithm, with per-call parameters
//!   (a tenant's tier can change between two of its requests).
//! - [`local`]: the per-tenant state of this instance (rate and concurrency) in a compact,
//!   sharded map with idle eviction.
//! - [`shared`]: the same limits shared by every instance through Redis, with the local
//!   limiter as the fallback while Redis is unreachable.
//! - [`fair`]: fair scheduling when the server is saturated: per-tenant queues served by
//!   deficit round robin weighted by tier, bounded, shedding the tenant over its share first.
//! - [`metrics`]: per-tenant request metrics with bounded label cardinality (the top K tenants
//!   by traffic get their own label; every other tenant is `other`).
//!
//! This crate knows no HTTP and does no storage I/O. The tenant it is given always comes from a
//! verified token (the HTTP edge calls it right after verification, before any storage work).

pub mod fair;
pub mod gcra;
pub mod local;
pub mod metrics;
pub mod shared;
pub mod testing;

pub use gcra::RateDecision;
pub use local::{Admission, LocalLimiter, Permit, Refusal};
pub use shared::{Admitted, Limiter, Slot};
