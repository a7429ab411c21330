//! Bulkhead's policy decision point: every tenant-plane request is decided here, by Cedar.
//!
//! - [`CEDAR_SCHEMA`]: the entities and actions policies are written against. Every policy is
//!   validated against it in strict mode before it is accepted; problems carry line and column.
//! - Two layers. The **platform** layer (the built-in [`DEFAULT_POLICIES`] plus the operator's
//!   policy files) grants; the **tenant** layer (a tenant admin's policies) can only narrow:
//!   it may contain `forbid` policies only, and a tenant `permit` is refused when submitted
//!   (it could never take effect, and a silent no-op would mislead its author). Both layers are
//!   evaluated as one Cedar policy set, so a forbid in either beats every permit.
//! - Deny by default: nothing is allowed unless a platform `permit` matches, no `forbid` does,
//!   and no policy failed to evaluate (an evaluation error denies: fail closed).
//! - Per-tenant policy sets are built lazily and kept in a bounded cache keyed by tenant id;
//!   a tenant's set holds the platform layer and that tenant's policies and nothing else.
//!
//! This crate knows no HTTP and does no I/O: callers hand it policy text.

mod engine;
pub mod lint;
mod source;
pub mod testcase;

pub use engine::{
    Decision, Engine, EngineConfig, Explanation, Principal, Resource, TenantPolicies,
};
pub use source::{Layer, Problem};

/// The Cedar schema of Bulkhead's entities and actions (Cedar schema syntax).
pub const CEDAR_SCHEMA: &str = include_str!("bulkhead.cedarschema");

/// The built-in platform policies: `admin` may do everything in its tenant (including
/// collections, schemas and policies); `member` reads and writes records; `reader` reads;
/// everyone sees `public` and `internal` fields, `member` also `confidential`, and only
/// `admin` `restricted`.
pub const DEFAULT_POLICIES: &str = include_str!("defaults.cedar");

#[cfg(test)]
mod tests {
    /// docs/policies.md publishes the schema and the defaults: they must be the ones in force.
    #[test]
    fn the_published_schema_and_defaults_are_the_ones_in_force() {
        let doc = include_str!("../../../docs/policies.md");
        assert!(doc.contains(super::CEDAR_SCHEMA));
        assert!(doc.contains(super::DEFAULT_POLICIES));
    }
}
