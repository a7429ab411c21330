//! Remembered decisions: the engine's memory of decisions must give exactly what evaluation
//! gives, for every principal, action and resource, across tenants and policy changes.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]

use bulkhead_core::role::Decision;
use bulkhead_core::schema::Classification;
use bulkhead_core::{Action, Role, Roles, TenantId};
use bulkhead_policy::{Engine, EngineConfig, Principal, Resource, TenantPolicies};
use proptest::prelude::*;

/// A platform layer whose decisions depend on a record's id, its owner and the subject.
const PLATFORM: &str = r#"
@id("no-reading-r2")
forbid (principal, action == Bulkhead::Action::"record:read", resource == Bulkhead::Record::"r2");
"#;

const TENANT: &str = r#"
@id("members-edit-own")
forbid (
    principal in Bulkhead::Role::"member",
    action in [Bulkhead::Action::"record:update", Bulkhead::Action::"record:delete"],
    resource
) unless { resource has owner && resource.owner == principal.subject };

@id("no-mallory")
forbid (principal, action, resource) when { principal.subject == "mallory" };
"#;

const SUBJECTS: [&str; 3] = ["alice", "bob", "mallory"];
const OWNERS: [Option<&str>; 3] = [None, Some("alice"), Some("bob")];
const IDS: [Option<&str>; 3] = [None, Some("r1"), Some("r2")];
const COLLECTIONS: [&str; 2] = ["notes", "orders"];

#[derive(Debug, Clone)]
struct Ask {
    tenant: usize,
    subject: usize,
    roles: Vec<Role>,
    action: usize,
    resource: u8,
    collection: usize,
    id: usize,
    owner: usize,
    class: usize,
}

fn ask() -> impl Strategy<Value = Ask> {
    (
        0..3usize,
        0..3usize,
        proptest::sample::subsequence(vec![Role::Admin, Role::Member, Role::Reader], 1..=3),
        0..Action::ALL.len(),
        0..4u8,
        0..2usize,
        (0..3usize, 0..3usize, 0..Classification::ALL.len()),
    )
        .prop_map(
            |(tenant, subject, roles, action, resource, collection, (id, owner, class))| Ask {
                tenant,
                subject,
                roles,
                action,
                resource,
                collection,
                id,
                owner,
                class,
            },
        )
}

fn resource(a: &Ask) -> Resource<'static> {
    let collection = COLLECTIONS[a.collection];
    match a.resource {
        0 => Resource::Tenant,
        1 => Resource::Collection(collection),
        2 => Resource::Record {
            collection,
            id: IDS[a.id],
            owner: OWNERS[a.owner],
        },
        _ => Resource::Field {
            collection,
            classification: Classification::ALL[a.class],
        },
    }
}

/// Three tenants: one with its own forbids, two with the platform layer only (one of which
/// is never given the tenant policies of the first).
fn sets(e: &Engine) -> Vec<std::sync::Arc<TenantPolicies>> {
    vec![
        e.load(TenantId::generate(), Some((1, TENANT))).unwrap(),
        e.load(TenantId::generate(), None).unwrap(),
        e.load(TenantId::generate(), Some((3, TENANT))).unwrap(),
    ]
}

fn platform_engine(capacity: usize) -> Engine {
    let e = Engine::new(EngineConfig {
        decision_cache_capacity: capacity,
        ..EngineConfig::default()
    })
    .unwrap();
    e.set_platform(vec![("records.cedar".into(), PLATFORM.into())])
        .unwrap();
    e
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every remembered decision equals a fresh evaluation, asked twice (the second from
    /// memory), interleaved over tenants whose policies differ.
    #[test]
    fn remembered_decisions_equal_evaluation(asks in proptest::collection::vec(ask(), 1..40)) {
        let e = platform_engine(1024);
        let sets = sets(&e);
        // Each ask is also made with every subject, record id and owner, so asks that
        // differ only there follow each other (and would share a wrongly built key).
        let variants = |a: &Ask| {
            let mut out = Vec::new();
            for subject in 0..SUBJECTS.len() {
                for id in 0..IDS.len() {
                    for owner in 0..OWNERS.len() {
                        out.push(Ask { subject, id, owner, ..a.clone() });
                    }
                }
            }
            out
        };
        for _ in 0..2 {
            for a in asks.iter().flat_map(variants) {
                let set = &sets[a.tenant];
                let who = Principal {
                    subject: SUBJECTS[a.subject],
                    roles: Roles::from_slice(&a.roles).unwrap(),
                };
                let action = Action::ALL[a.action];
                let r = resource(&a);
                let remembered = e.decide(set, &who, action, &r);
                // Requests that make no sense (a field action on the tenant…) fail to
                // evaluate and deny; those are never remembered, and must agree too.
                let (evaluated, _) = e.evaluate(set, &who, action, &r);
                prop_assert_eq!(remembered, evaluated, "{:?}", a);
            }
        }
    }
}

fn member(subject: &str) -> Principal<'_> {
    Principal {
        subject,
        roles: Roles::from_slice(&[Role::Member]).unwrap(),
    }
}

fn read(id: &str) -> Resource<'_> {
    Resource::Record {
        collection: "notes",
        id: Some(id),
        owner: None,
    }
}

#[test]
fn a_policy_naming_a_record_keeps_record_ids_apart() {
    let e = platform_engine(1024);
    let set = e.load(TenantId::generate(), None).unwrap();
    for _ in 0..3 {
        assert_eq!(
            e.decide(&set, &member("alice"), Action::ReadRecord, &read("r1")),
            Decision::Allow
        );
        assert_eq!(
            e.decide(&set, &member("alice"), Action::ReadRecord, &read("r2")),
            Decision::Deny {
                action: Action::ReadRecord
            }
        );
    }
}

#[test]
fn decisions_are_remembered_and_a_zero_capacity_remembers_none() {
    let e = Engine::new(EngineConfig::default()).unwrap();
    let set = e.load(TenantId::generate(), None).unwrap();
    // Without a policy naming records, reads of different records share one decision.
    for id in ["r1", "r2", "r3"] {
        assert_eq!(
            e.decide(&set, &member("alice"), Action::ReadRecord, &read(id)),
            Decision::Allow
        );
    }
    assert_eq!(e.remembered_decisions(), 1);

    let off = Engine::new(EngineConfig {
        decision_cache_capacity: 0,
        ..EngineConfig::default()
    })
    .unwrap();
    let set = off.load(TenantId::generate(), None).unwrap();
    assert_eq!(
        off.decide(&set, &member("alice"), Action::ReadRecord, &read("r1")),
        Decision::Allow
    );
    assert_eq!(off.remembered_decisions(), 0);
}

#[test]
fn a_new_tenant_version_is_decided_at_once() {
    let e = Engine::new(EngineConfig::default()).unwrap();
    let t = TenantId::generate();
    let update = Resource::Record {
        collection: "notes",
        id: Some("r1"),
        owner: Some("bob"),
    };
    let before = e.load(t, None).unwrap();
    assert_eq!(
        e.decide(&before, &member("alice"), Action::UpdateRecord, &update),
        Decision::Allow
    );
    let after = e.load(t, Some((2, TENANT))).unwrap();
    assert_eq!(
        e.decide(&after, &member("alice"), Action::UpdateRecord, &update),
        Decision::Deny {
            action: Action::UpdateRecord
        }
    );
    // Reloading the same content keeps the remembered decision valid and correct.
    let again = e.load(t, Some((2, TENANT))).unwrap();
    assert_eq!(
        e.decide(&again, &member("alice"), Action::UpdateRecord, &update),
        Decision::Deny {
            action: Action::UpdateRecord
        }
    );
    // Back to no tenant policies (as after an import): allowed again.
    let none = e.load(t, None).unwrap();
    assert_eq!(
        e.decide(&none, &member("alice"), Action::UpdateRecord, &update),
        Decision::Allow
    );
}

#[test]
fn a_platform_change_is_decided_at_once() {
    let e = Engine::new(EngineConfig::default()).unwrap();
    let t = TenantId::generate();
    let set = e.load(t, None).unwrap();
    assert_eq!(
        e.decide(&set, &member("alice"), Action::ReadRecord, &read("r2")),
        Decision::Allow
    );
    e.set_platform(vec![("records.cedar".into(), PLATFORM.into())])
        .unwrap();
    assert!(e.cached(t).is_none(), "the old set is stale");
    let set = e.load(t, None).unwrap();
    assert_eq!(
        e.decide(&set, &member("alice"), Action::ReadRecord, &read("r2")),
        Decision::Deny {
            action: Action::ReadRecord
        }
    );
}
