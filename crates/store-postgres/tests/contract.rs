//! The storage contract, run against the PostgreSQL adapter: every test on its own fresh,
//! migrated database, through connections running as `bulkhead_app` (under row-level
//! security), with the raw hooks going around Bulkhead as a superuser.
//!
//! Needs `BULKHEAD_TEST_DATABASE_URL` (an admin URL, e.g.
//! `postgres://postgres@127.0.0.1:5432/postgres`). The suite's tests call the harness
//! directly and cannot skip themselves, so `build.rs` decides at build time: without the
//! variable, stubs of the same names report that nothing ran (and fail under `CI`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests"
)]

mod common;

#[cfg(bulkhead_pg_tests)]
bulkhead_store::contract_suite!(common::Postgres);

/// The suite's test names, for the stubs. Only the not-configured build uses this list.
#[cfg(not(bulkhead_pg_tests))]
macro_rules! not_configured {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                assert!(
                    common::test_url().is_none(),
                    "{} is set now but was not when these tests were built: rebuild them",
                    common::URL_VAR
                );
            }
        )*
    };
}

#[cfg(not(bulkhead_pg_tests))]
not_configured!(
    create_then_get,
    other_tenant_cannot_read_update_or_delete,
    lists_and_filters_are_scoped,
    idempotency,
    optimistic_concurrency,
    pagination_is_stable,
    blind_index_filters,
    validation_and_limits,
    ciphertext_is_bound_to_its_place,
    no_plaintext_at_rest,
    lifecycle_suspend_and_offboard,
    concurrent_writes_are_all_acknowledged,
    audit_records_every_access_and_change,
    audit_logs_are_per_tenant,
    audit_tampering_is_detected,
    audit_verify_all_names_the_first_failure,
    audit_rounds_share_one_signature,
    audit_retention_keeps_the_log_verifiable,
    audit_verify_is_not_fooled_by_retention_meanwhile,
    audit_offboarding_keeps_the_log,
    prop_isolation,
);
