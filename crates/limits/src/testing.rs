//! For tests that need a real Redis.

/// The variable naming the Redis the shared-limit tests use.
pub const REDIS_VAR: &str = "BULKHEAD_TEST_REDIS_URL";

/// The Redis URL tests use, or `None` when they cannot run.
///
/// The rule (as for PostgreSQL): without `BULKHEAD_TEST_REDIS_URL`, a test prints that it did
/// not run and passes, so `cargo test` works on a machine without Redis; under CI (`CI` set and
/// not empty, `false` or `0`) it panics instead: CI never passes by not testing.
pub fn test_redis_url() -> Option<String> {
    match std::env::var(REDIS_VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0") {
                not_configured_under_ci();
            }
            eprintln!("redis tests did not run: {REDIS_VAR} is not set");
            None
        }
    }
}

#[allow(
    clippy::panic,
    reason = "a test that cannot run under CI must fail, not pass silently"
)]
fn not_configured_under_ci() -> ! {
    panic!("redis tests cannot run: {REDIS_VAR} is not set, and under CI they must");
}
