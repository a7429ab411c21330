//! The engine's decisions: defaults, layering, validation with locations, tenant isolation.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]

use bulkhead_core::role::Decision;
use bulkhead_core::schema::{ClassSet, Classification};
use bulkhead_core::{Action, Role, Roles, TenantId};
use bulkhead_policy::{Engine, EngineConfig, Principal, Resource};

fn engine() -> Engine {
    Engine::new(EngineConfig::default()).unwrap()
}

fn who(roles: &[Role]) -> Principal<'static> {
    Principal {
        subject: "u1",
        roles: Roles::from_slice(roles).unwrap(),
    }
}

fn record(owner: Option<&str>) -> Resource<'_> {
    Resource::Record {
        collection: "notes",
        id: Some("r1"),
        owner,
    }
}

/// One table-driven helper: (roles, action, resource, allowed).
fn check(
    e: &Engine,
    set: &bulkhead_policy::TenantPolicies,
    cases: &[(&[Role], Action, Resource<'_>, bool)],
) {
    for (roles, action, resource, allowed) in cases {
        let d = e.decide(set, &who(roles), *action, resource);
        let want = if *allowed {
            Decision::Allow
        } else {
            Decision::Deny { action: *action }
        };
        assert_eq!(d, want, "{roles:?} {action:?} {resource:?}");
    }
}

#[test]
fn defaults_give_the_role_matrix() {
    use Action::*;
    use Role::*;
    let e = engine();
    let set = e.load(TenantId::generate(), None).unwrap();
    let coll = Resource::Collection("notes");
    check(
        &e,
        &set,
        &[
            (&[Admin], ManageCollection, coll, true),
            (&[Admin], ManagePolicies, Resource::Tenant, true),
            (&[Member], ManageCollection, coll, false),
            (&[Member], ManagePolicies, Resource::Tenant, false),
            (&[Member], ReadPolicies, Resource::Tenant, false),
            (&[Member], CreateRecord, record(None), true),
            (&[Member], UpdateRecord, record(Some("someone-else")), true),
            (&[Member], ListRecords, coll, true),
            (&[Reader], ReadRecord, record(None), true),
            (&[Reader], ListCollections, Resource::Tenant, true),
            (&[Reader], CreateRecord, record(None), false),
            (&[Reader], UpdateRecord, record(None), false),
            (&[Reader], DeleteRecord, record(None), false),
        ],
    );
    let field = |c| Resource::Field {
        collection: "notes",
        classification: c,
    };
    check(
        &e,
        &set,
        &[
            (&[Reader], ReadField, field(Classification::Public), true),
            (&[Reader], ReadField, field(Classification::Internal), true),
            (
                &[Reader],
                ReadField,
                field(Classification::Confidential),
                false,
            ),
            (
                &[Member],
                ReadField,
                field(Classification::Confidential),
                true,
            ),
            (
                &[Member],
                ReadField,
                field(Classification::Restricted),
                false,
            ),
            (&[Admin], ReadField, field(Classification::Restricted), true),
        ],
    );
    let visible = e.visible_classes(&set, &who(&[Reader]), "notes", ClassSet::EVERY);
    assert!(visible.contains(Classification::Public));
    assert!(!visible.contains(Classification::Confidential));
}

const OWNER_ONLY: &str = r#"
@id("members-edit-own")
forbid (
    principal in Bulkhead::Role::"member",
    action in [Bulkhead::Action::"record:update", Bulkhead::Action::"record:delete"],
    resource
) unless { resource has owner && resource.owner == principal.subject };
"#;

#[test]
fn tenant_forbids_narrow_and_stay_with_their_tenant() {
    use Action::*;
    use Role::*;
    let e = engine();
    let (a, b) = (TenantId::generate(), TenantId::generate());
    let set_a = e.load(a, Some((1, OWNER_ONLY))).unwrap();
    let set_b = e.load(b, None).unwrap();
    // A: members edit only what they own.
    check(
        &e,
        &set_a,
        &[
            (&[Member], UpdateRecord, record(Some("u1")), true),
            (&[Member], UpdateRecord, record(Some("u2")), false),
            (&[Member], DeleteRecord, record(None), false),
            (&[Member], CreateRecord, record(None), true),
            (&[Admin], UpdateRecord, record(Some("u2")), true),
        ],
    );
    // B (positive twin of the isolation): A's policy is not in B's set.
    check(
        &e,
        &set_b,
        &[(&[Member], UpdateRecord, record(Some("u2")), true)],
    );
    assert!(
        set_a
            .policy_ids()
            .iter()
            .any(|p| p == "tenant/v1/members-edit-own")
    );
    assert!(!set_b.policy_ids().iter().any(|p| p.starts_with("tenant/")));
    // The cache hands each tenant its own set.
    assert_eq!(e.cached(a).unwrap().version(), Some(1));
    assert_eq!(e.cached(b).unwrap().version(), None);
    let why = e.explain(&set_a, &who(&[Member]), UpdateRecord, &record(Some("u2")));
    assert_eq!(why.decision, "deny");
    assert_eq!(
        why.decided_by,
        vec!["tenant/v1/members-edit-own".to_owned()]
    );
    let why = e.explain(&set_b, &who(&[Member]), UpdateRecord, &record(Some("u2")));
    assert_eq!(
        (why.decision, why.decided_by),
        ("allow", vec!["default/default-member".to_owned()])
    );
}

#[test]
fn tenant_permits_are_refused_with_their_location() {
    let e = engine();
    let text = "// widen\npermit (principal, action, resource);\n";
    let problems = e.check_tenant(text, 1).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!((problems[0].line, problems[0].column), (2, 1));
    assert!(problems[0].message.contains("forbid"), "{problems:?}");
}

#[test]
fn invalid_policies_list_each_error_with_its_location() {
    let e = engine();
    // A syntax error.
    let p = e
        .check_tenant("forbid (principal, action resource);", 1)
        .unwrap_err();
    assert!(!p.is_empty());
    assert_eq!(p[0].line, 1);
    assert!(p[0].column > 1, "{p:?}");
    // Two schema errors on different lines: an unknown attribute and an unknown action.
    let text = "forbid (principal, action, resource)\nwhen { principal.nope == 1 };\nforbid (principal, action == Bulkhead::Action::\"record:fly\", resource);\n";
    let p = e.check_tenant(text, 1).unwrap_err();
    assert_eq!(p.len(), 2, "{p:?}");
    assert_eq!(p[0].line, 2, "{p:?}");
    assert_eq!(p[1].line, 3, "{p:?}");
    assert!(p.iter().all(|p| p.policy.is_some()));
    // An optional attribute used without `has` fails strict validation.
    let p = e
        .check_tenant(
            "forbid (principal, action, resource is Bulkhead::Record) when { resource.owner == \"x\" };",
            1,
        )
        .unwrap_err();
    assert_eq!(p.len(), 1, "{p:?}");
}

#[test]
fn platform_layer_changes_apply_to_every_tenant_and_bad_files_change_nothing() {
    use Action::*;
    use Role::*;
    let e = engine();
    let t = TenantId::generate();
    e.load(t, None).unwrap();
    let files = vec![(
        "no-deletes.cedar".to_owned(),
        "@id(\"no-deletes\") forbid (principal, action == Bulkhead::Action::\"record:delete\", resource);".to_owned(),
    )];
    e.set_platform(files).unwrap();
    // The cached set was built on the old layer: it is not handed out any more.
    assert!(e.cached(t).is_none());
    let set = e.load(t, None).unwrap();
    check(
        &e,
        &set,
        &[
            (&[Admin], DeleteRecord, record(None), false),
            (&[Admin], UpdateRecord, record(None), true),
        ],
    );
    assert!(
        set.policy_ids()
            .contains(&"platform/no-deletes.cedar/no-deletes".to_owned())
    );
    // A bad file is refused and the layer in force stays.
    let bad = vec![(
        "x.cedar".to_owned(),
        "permit (principal, action, resource) when { 1 };".to_owned(),
    )];
    let p = e.set_platform(bad).unwrap_err();
    assert_eq!(p[0].source, "x.cedar");
    assert_eq!(e.platform_sources().1[0].0, "no-deletes.cedar");
}

#[test]
fn the_cache_is_bounded() {
    let e = Engine::new(EngineConfig {
        cache_capacity: 32,
        ttl: std::time::Duration::from_secs(60),
        ..EngineConfig::default()
    })
    .unwrap();
    for _ in 0..1000 {
        e.load(TenantId::generate(), Some((1, OWNER_ONLY))).unwrap();
    }
    assert!(e.cached_tenants() <= 64, "{}", e.cached_tenants());
}
