//! `bulkhead lint` and `bulkhead policy test` as CI runs them: the shipped examples pass, and
//! each kind of violation fails with a precise message and a non-zero exit.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn bulkhead(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bulkhead"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A copy of the example governance directory to break.
fn governance_copy() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&examples().join("governance"), tmp.path());
    tmp
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// `(file to write, content, expected message part)`: each breaks one rule.
fn check_failing(file: &str, content: &str, expected: &str) {
    let dir = governance_copy();
    std::fs::write(dir.path().join(file), content).unwrap();
    let (ok, out) = bulkhead(&["lint", dir.path().to_str().unwrap()]);
    assert!(!ok, "lint passed with {file}:\n{out}");
    assert!(out.contains(expected), "expected `{expected}` in:\n{out}");
}

#[test]
fn the_example_governance_directory_passes() {
    let (ok, out) = bulkhead(&["lint", examples().join("governance").to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("no violations"), "{out}");
}

#[test]
fn restricted_fields_without_retention_fail() {
    check_failing(
        "collections/secrets.json",
        r#"{"name": "secrets", "schema": {"type": "object", "properties": {"key": {"type": "string", "x-classification": "restricted"}}}}"#,
        "collections/secrets.json:0:0: collection `secrets` has restricted fields (`key`) but no retention",
    );
}

#[test]
fn policies_that_fail_schema_validation_fail_with_their_location() {
    check_failing(
        "policies/typo.cedar",
        "// a typo on line 3\n\nforbid (principal, action, resource) when { principal.rolez == \"x\" };\n",
        "policies/typo.cedar:3:",
    );
}

#[test]
fn granting_reader_a_write_action_fails() {
    check_failing(
        "policies/open.cedar",
        "@id(\"readers-write\")\npermit (principal in Bulkhead::Role::\"reader\", action == Bulkhead::Action::\"record:create\", resource);\n",
        "policy `platform/open.cedar/readers-write`: grants role `reader` the write action `record:create`",
    );
}

#[test]
fn a_tier_without_limits_fails() {
    check_failing(
        "tiers/unlimited.toml",
        "# nothing set\n",
        "tiers/unlimited.toml:0:0: tier sets no limits",
    );
}

#[test]
fn a_tier_weight_out_of_range_fails() {
    check_failing(
        "tiers/greedy.toml",
        "rate_per_second = 10.0\nweight = 5000\n",
        "tiers/greedy.toml:0:0: weight 5000 is out of range",
    );
}

#[test]
fn the_example_policy_tests_pass_and_a_wrong_expectation_fails() {
    let dir = examples().join("policy-tests");
    let (ok, out) = bulkhead(&["policy", "test", dir.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("7 passed, 0 failed"), "{out}");
    // The same cases with one expectation turned around.
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&dir, tmp.path());
    let cases = std::fs::read_to_string(tmp.path().join("cases.json")).unwrap();
    let flipped = cases.replacen("\"expect\": \"deny\"", "\"expect\": \"allow\"", 1);
    std::fs::write(tmp.path().join("cases.json"), flipped).unwrap();
    let (ok, out) = bulkhead(&["policy", "test", tmp.path().to_str().unwrap()]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("FAIL  cases.json: a member cannot edit someone else's record: expected allow, got deny (decided by: [tenant/v1/members-edit-own])"),
        "{out}"
    );
    // A tenant file with a permit is refused.
    std::fs::write(
        tmp.path().join("tenant.cedar"),
        "permit (principal, action, resource);",
    )
    .unwrap();
    let (ok, out) = bulkhead(&["policy", "test", tmp.path().to_str().unwrap()]);
    assert!(!ok);
    assert!(out.contains("tenant.cedar:1:1"), "{out}");
}
