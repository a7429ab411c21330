//! The storage contract: one suite of tests that every adapter runs, through the record
//! service, so SQLite and PostgreSQL are held to exactly the same behaviour — isolation first.
//!
//! An adapter's test crate implements [`Harness`] and invokes [`crate::contract_suite!`]. Each
//! isolation test has its positive twin next to it ("A reads A" beside "B cannot read A").
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use bulkhead_core::crypto::MasterKey;
use bulkhead_core::token::{MintRequest, SigningAlg, TokenSettings, Verifier};
use bulkhead_core::{
    CollectionName, RecordId, Role, Roles, Subject, TenantContext, TenantId, TenantName, TierName,
};
use serde_json::{Value, json};

use bulkhead_core::tier::{LimitOverrides, Quota, TierLimits, Usage};

use crate::BackendError;
use crate::StoreError;
use crate::audit::{AuditFilter, RequestMeta};
use crate::port::{
    AuditBackend, AuditRow, AuditScope, CheckpointRow, RecordBackend, Registry, TenantPatch,
};
use crate::service::{Idempotency, Store, StoreConfig};
use bulkhead_audit::checkpoint::{verify_consistency_json, verify_inclusion_json};
use bulkhead_audit::{LogId, Outcome};

/// What an adapter provides to run the contract against it.
#[async_trait]
pub trait Harness: Send + Sync + Sized + 'static {
    /// A new, empty backend (its own database).
    async fn fresh() -> Self;
    fn registry(&self) -> Arc<dyn Registry>;
    fn backend(&self) -> Arc<dyn RecordBackend>;
    /// Overwrites, bypassing Bulkhead, the stored data bytes of record `to` with those of `from`.
    async fn raw_copy_data(
        &self,
        from: (TenantId, &CollectionName, RecordId),
        to: (TenantId, &CollectionName, RecordId),
    );
    /// Moves, bypassing Bulkhead, a record row to another tenant, bytes unchanged.
    async fn raw_move_record(&self, rec: (TenantId, &CollectionName, RecordId), to: TenantId);
    /// Every byte the backend keeps (database files, or a dump of every table).
    async fn raw_dump(&self) -> Vec<u8>;
    /// Changes the stored audit log `log`, bypassing Bulkhead and any guard of the database.
    async fn raw_audit_tamper(&self, log: LogId, tamper: AuditTamper);
}

/// What an attacker with write access to the storage does to an audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditTamper {
    /// Flips one bit of the body of entry `seq` (its stored leaf hash left as it was).
    FlipBodyByte { seq: u64 },
    /// Deletes entry `seq` (where the storage keeps entries in blocks, the entries after it
    /// move up one position in theirs).
    Delete { seq: u64 },
    /// Deletes entry `seq`; the entries after it keep their positions (a deleted row or
    /// block).
    Hole { seq: u64 },
    /// Stores the log's entries again as they are, the way the changes to entries store them
    /// (their positive twin: nothing changed, everything verifies).
    Rewrite,
    /// Stores the log's entries again as they are, its blocks stored last first (where the
    /// storage keeps blocks in an order of its own, as retention's replaced block and a moved
    /// log are: stored after blocks that follow them). A positive twin too.
    RewriteBackwards,
    /// Swaps the stored rows (body and leaf) of entries `a` and `b`.
    Swap { a: u64, b: u64 },
    /// Deletes every entry from `seq` on.
    TruncateFrom { seq: u64 },
    /// Flips one bit of the signature of the checkpoint of `size` entries.
    FlipSignature { size: u64 },
    /// Flips one bit of the first hash of the batch path of the checkpoint of `size` entries.
    FlipBatchPath { size: u64 },
}

impl AuditTamper {
    /// For a change to a stored checkpoint: its size, the column changed and which byte of it.
    pub fn checkpoint_change(self) -> Option<(u64, &'static str, usize)> {
        match self {
            AuditTamper::FlipSignature { size } => Some((size, "signature", 0)),
            // Past the slot and the width (8 bytes each).
            AuditTamper::FlipBatchPath { size } => Some((size, "batch", 16)),
            _ => None,
        }
    }
}

/// A store over a fresh backend, and a way to get verified contexts for new tenants.
#[allow(missing_debug_implementations, reason = "test fixture")]
pub struct Env<H: Harness> {
    pub harness: H,
    pub store: Store,
    verifier: Verifier,
}

impl<H: Harness> Env<H> {
    pub async fn new() -> Self {
        let harness = H::fresh().await;
        let store = Store::open(
            harness.registry(),
            harness.backend(),
            MasterKey::generate(),
            StoreConfig::default(),
        )
        .await
        .unwrap();
        let verifier = Verifier::new(TokenSettings {
            issuer: "https://bulkhead.test".into(),
            audience: "bulkhead".into(),
            leeway_secs: 5,
            max_token_bytes: 8192,
            max_ttl_secs: 3600,
        });
        Self {
            harness,
            store,
            verifier,
        }
    }

    /// Onboards a tenant and returns a verified context for it, made the way the server makes
    /// one: mint a token with the tenant's key, then verify it.
    pub async fn tenant(&self, roles: &[Role]) -> TenantContext {
        let name = TenantName::parse(&format!("t-{}", RecordId::generate())).unwrap();
        let t = self
            .store
            .create_tenant(name, TierName::standard(), SigningAlg::EdDSA)
            .await
            .unwrap();
        self.context(t.id, roles).await
    }

    pub async fn context(&self, id: TenantId, roles: &[Role]) -> TenantContext {
        let key = self.store.active_signing_key(id).await.unwrap();
        let now = bulkhead_core::Timestamp::now_utc();
        let req = MintRequest {
            subject: Subject::parse("tester").unwrap(),
            roles: Roles::from_slice(roles).unwrap(),
            ttl_secs: 600,
        };
        let (token, _) = self.verifier.mint(&key, &req, now).unwrap();
        let claimed = self.verifier.inspect(&token).unwrap();
        let public = self
            .store
            .tenant_state(id)
            .await
            .unwrap()
            .unwrap()
            .key(&claimed.kid)
            .unwrap()
            .clone();
        self.verifier.verify(&token, claimed, &public, now).unwrap()
    }
}

fn coll(s: &str) -> CollectionName {
    CollectionName::parse(s).unwrap()
}

fn users_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "email": {"type": "string"},
            "age": {"type": "integer", "minimum": 0},
            "team": {"type": "string"},
            "note": {"type": "string"}
        },
        "required": ["email"]
    })
}

async fn with_users<H: Harness>(env: &Env<H>, ctx: &TenantContext) {
    let h = env.store.tenant(ctx).await.unwrap();
    h.put_collection(
        &coll("users"),
        users_schema(),
        vec!["email".into(), "team".into()],
    )
    .await
    .unwrap();
}

/// Creates one `users` record per number in `n`, with email `{i}@x.example`.
async fn add_users(h: &crate::service::TenantHandle<'_>, n: std::ops::Range<u32>) {
    for i in n {
        h.create_record(
            &coll("users"),
            json!({"email": format!("{i}@x.example")}),
            None,
        )
        .await
        .unwrap();
    }
}

/// A new tenant with a `users` collection, whose log is checkpointed after each run of
/// `users` added ([`add_users`]): the tenant and each checkpoint's size.
async fn checkpointed_tenant<H: Harness>(
    env: &Env<H>,
    runs: &[std::ops::Range<u32>],
) -> (TenantContext, Vec<u64>) {
    let t = env.tenant(&[Role::Admin]).await;
    with_users(env, &t).await;
    let h = env.store.tenant(&t).await.unwrap();
    let scope = env.store.tenant_audit(&t);
    let mut sizes = Vec::new();
    for n in runs {
        add_users(&h, n.clone()).await;
        let cp = env.store.audit().checkpoint(&scope).await.unwrap().unwrap();
        sizes.push(cp.checkpoint.size);
    }
    (t, sizes)
}

macro_rules! assert_not_found {
    ($e:expr) => {
        match $e {
            Err(StoreError::NotFound) => {}
            other => panic!("expected NotFound, got {other:?}"),
        }
    };
}

pub async fn create_then_get<H: Harness>() {
    let env = Env::<H>::new().await;
    let a = env.tenant(&[Role::Admin]).await;
    with_users(&env, &a).await;
    let h = env.store.tenant(&a).await.unwrap();
    let c = h
        .create_record(
            &coll("users"),
            json!({"email": "a@x.example", "age": 3}),
            None,
        )
        .await
        .unwrap();
    assert!(!c.replayed);
    assert_eq!(c.record.version, 1);
    let got = h.get_record(&coll("users"), c.record.id).await.unwrap();
    assert_eq!(got, c.record);
}

pub async fn other_tenant_cannot_read_update_or_delete<H: Harness>() {
    let env = Env::<H>::new().await;
    let a = env.tenant(&[Role::Admin]).await;
    let b = env.tenant(&[Role::Admin]).await;
    with_users(&env, &a).await;
    let ha = env.store.tenant(&a).await.unwrap();
    let hb = env.store.tenant(&b).await.unwrap();
    let rec = ha
        .create_record(&coll("users"), json!({"email": "secret@a.example"}), None)
        .await
        .unwrap()
        .record;
    // B has no such collection: the same NotFound as for a missing record.
    assert_not_found!(hb.get_record(&coll("users"), rec.id).await);
    assert_not_found!(hb.get_collection(&coll("users")).await);
    // B defines a collection of the same name: A's record is still invisible to B.
    with_users(&env, &b).await;
    assert_not_found!(hb.get_record(&coll("users"), rec.id).await);
    assert_not_found!(
        hb.update_record(&coll("users"), rec.id, json!({"email": "x@b.example"}), 1)
            .await
    );
    assert_not_found!(hb.delete_record(&coll("users"), rec.id, None).await);
    assert_not_found!(hb.delete_record(&coll("users"), rec.id, Some(1)).await);
    // Positive twin: A still reads its record, unchanged, at version 1.
    assert_eq!(ha.get_record(&coll("users"), rec.id).await.unwrap(), rec);
    // And a record id that never existed looks exactly like A's record does to B.
    assert_not_found!(hb.get_record(&coll("users"), RecordId::generate()).await);
}

pub async fn lists_and_filters_are_scoped<H: Harness>() {
    let env = Env::<H>::new().await;
    let a = env.tenant(&[Role::Admin]).await;
    let b = env.tenant(&[Role::Admin]).await;
    with_users(&env, &a).await;
    with_users(&env, &b).await;
    let ha = env.store.tenant(&a).await.unwrap();
    let hb = env.store.tenant(&b).await.unwrap();
    let mut a_ids = BTreeSet::new();
    for i in 0..5 {
        a_ids.insert(
            ha.create_record(
                &coll("users"),
                json!({"email": "same@x.example", "team": format!("a{i}")}),
                None,
            )
            .await
            .unwrap()
            .record
            .id,
        );
    }
    let b_id = hb
        .create_record(&coll("users"), json!({"email": "same@x.example"}), None)
        .await
        .unwrap()
        .record
        .id;
    let la = ha.query(&coll("users"), &[], None, 100).await.unwrap();
    assert_eq!(
        la.items.iter().map(|r| r.id).collect::<BTreeSet<_>>(),
        a_ids
    );
    let fa = ha
        .query(
            &coll("users"),
            &[("email".into(), "same@x.example".into())],
            None,
            100,
        )
        .await
        .unwrap();
    assert_eq!(fa.items.len(), 5);
    let fb = hb
        .query(
            &coll("users"),
            &[("email".into(), "same@x.example".into())],
            None,
            100,
        )
        .await
        .unwrap();
    assert_eq!(
        fb.items.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![b_id]
    );
    // Collections are scoped too.
    let hb_cols = hb.list_collections().await.unwrap();
    assert_eq!(hb_cols.len(), 1);
    let c = env.tenant(&[Role::Admin]).await;
    let hc = env.store.tenant(&c).await.unwrap();
    assert!(hc.list_collections().await.unwrap().is_empty());
    assert_not_found!(hc.query(&coll("users"), &[], None, 10).await);
}

pub async fn idempotency<H: Harness>() {
    let env = Env::<H>::new().await;
    let a = env.tenant(&[Role::Admin]).await;
    let b = env.tenant(&[Role::Admin]).await;
    with_users(&env, &a).await;
    with_users(&env, &b).await;
    let ha = env.store.tenant(&a).await.unwrap();
    let hb = env.store.tenant(&b).await.unwrap();
    let idem = |key, d| {
        Some(Idempotency {
            key,
            body_digest: [d; 32],
        })
    };
    let first = ha
        .create_record(
            &coll("users"),
            json!({"email": "i@x.example"}),
            idem("k1", 1),
        )
        .await
        .unwrap();
    let again = ha
        .create_record(
            &coll("users"),
            json!({"email": "i@x.example"}),
            idem("k1", 1),
        )
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.record, first.record);
    assert_eq!(
        ha.query(&coll("users"), &[], None, 100)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    match ha
        .create_record(
            &coll("users"),
            json!({"email": "other@x.example"}),
            idem("k1", 2),
        )
        .await
    {
        Err(StoreError::IdempotencyConflict) => {}
        other => panic!("expected IdempotencyConflict, got {other:?}"),
    }
    // The same key in another tenant is another key: no replay of A's response to B.
    let in_b = hb
        .create_record(
            &coll("users"),
            json!({"email": "i@x.example"}),
            idem("k1", 1),
        )
        .await
        .unwrap();
    assert!(!in_b.replayed);
    assert_ne!(in_b.record.id, first.record.id);
    // A different key in A creates a second record.
    let second = ha
        .create_record(
            &coll("users"),
            json!({"email": "i@x.example"}),
            idem("k2", 1),
        )
        .await
        .unwrap();
    assert!(!second.replayed);
}

pub async fn optimistic_concurrency<H: Harness>() {
    let env = Env::<H>::new().await;
    let a = env.tenant(&[Role::Admin]).await;
    with_users(&env, &a).await;
    let h = env.store.tenant(&a).await.unwrap();
    let r = h
        .create_record(&coll("users"), json!({"email": "v@x.example"}), None)
        .await
        .unwrap()
        .record;
    let u = h
        .update_record(&coll("users"), r.id, json!({"email": "v2@x.example"}), 1)
        .await
        .unwrap();
    assert_eq!(u.version, 2);
    assert_eq!(u.created_at, r.created_at);
    match h
        .update_record(&coll("users"), r.id, json!({"email": "v3@x.example"}), 1)
        .await
    {
        Err(StoreError::VersionMismatch { current: 2 }) => {}
        other => panic!("expected VersionMismatch, got {other:?}"),
    }
    assert_eq!(h.get_record(&coll("users"), r.id).await.unwrap(), u);
    match h.delete_record(&coll("users"), r.id, Some(1)).await {
        Err(StoreError::VersionMismatch { current: 2 }) => {}
        other => panic!("expected VersionMismatch, got {other:?}"),
    }
    h.delete_record(&coll("users"), r.id, Some(2))
        .await
        .unwrap();
    assert_not_found!(h.get_record(&coll("users"), r.id).await);
    assert_not_found!(h.delete_record(&coll("users"), r.id, None).await);
}

pub async fn pagination_is_stable<H: Harness>() {
    let env = Env::<H>::new().await;
    let a = env.tenant(&[Role::Admin]).await;
    with_users(&env, &a).await;
    let h = env.store.tenant(&a).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..23 {
        ids.push(
            h.create_record(
                &coll("users"),
                json!({"email": format!("{i}@x.example"), "team": "t"}),
                None,
            )
            .await
            .unwrap()
            .record
            .id,
        );
    }
    for filters in [vec![], vec![("team".to_string(), "t".to_string())]] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = h
                .query(&coll("users"), &filters, cursor.as_deref(), 10)
                .await
                .unwrap();
            seen.extend(page.items.iter().map(|r| r.id));
            pages += 1;
            if pages == 1 {
                // A write between pages lands after the cursor and does not shift later pages.
                h.create_record(
                    &coll("users"),
                    json!({"email": "late@x.example", "team": "late"}),
                    None,
                )
                .await
                .unwrap();
            }
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        let mut sorted = seen.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, seen, "ordered, no duplicates");
        assert!(ids.iter().all(|id| seen.contains(id)), "every record seen");
    }
    match h.query(&coll("users"), &[], Some("not-a-cursor"), 10).await {
        Err(StoreError::BadCursor) => {}
        other => panic!("expected BadCursor, got {other:?}"),
    }
}

pub async fn blind_index_filters<H: Harness>() {
    let env = Env::<H>::new().await;
    let a = env.tenant(&[Role::Admin]).await;
    with_users(&env, &a).await;
    let h = env.store.tenant(&a).await.unwrap();
    let u = coll("users");
    let r1 = h
        .create_record(&u, json!({"email": "a@x.example", "team": "red"}), None)
        .await
        .unwrap()
        .record;
    let r2 = h
        .create_record(&u, json!({"email": "b@x.example", "team": "red"}), None)
        .await
        .unwrap()
        .record;
    let q = |f: &[(&str, &str)]| {
        f.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    };
    let ids = |p: crate::service::Page| p.items.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(h.query(&u, &q(&[("team", "red")]), None, 10).await.unwrap()),
        vec![r1.id, r2.id]
    );
    assert_eq!(
        ids(h
            .query(
                &u,
                &q(&[("team", "red"), ("email", "b@x.example")]),
                None,
                10
            )
            .await
            .unwrap()),
        vec![r2.id]
    );
    assert!(
        h.query(&u, &q(&[("team", "blue")]), None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    // An update moves the record out of its old value's index and into the new one.
    h.update_record(
        &u,
        r1.id,
        json!({"email": "a@x.example", "team": "blue"}),
        1,
    )
    .await
    .unwrap();
    assert_eq!(
        ids(h.query(&u, &q(&[("team", "red")]), None, 10).await.unwrap()),
        vec![r2.id]
    );
    assert_eq!(
        ids(h
            .query(&u, &q(&[("team", "blue")]), None, 10)
            .await
            .unwrap()),
        vec![r1.id]
    );
    h.delete_record(&u, r2.id, None).await.unwrap();
    assert!(
        h.query(&u, &q(&[("team", "red")]), None, 10)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    // Only declared indexes can be filtered on.
    match h.query(&u, &q(&[("note", "x")]), None, 10).await {
        Err(StoreError::Filter(_)) => {}
        other => panic!("expected Filter error, got {other:?}"),
    }
    // Adding an index re-indexes existing records.
    h.put_collection(
        &u,
        users_schema(),
        vec!["email".into(), "team".into(), "age".into()],
    )
    .await
    .unwrap();
    let r3 = h
        .create_record(&u, json!({"email": "c@x.example", "age": 7}), None)
        .await
        .unwrap()
        .record;
    h.update_record(&u, r1.id, json!({"email": "a@x.example", "age": 7}), 2)
        .await
        .unwrap();
    assert_eq!(
        ids(h.query(&u, &q(&[("age", "7")]), None, 10).await.unwrap()),
        vec![r1.id, r3.id]
    );
    let n = coll("notes");
    h.put_collection(
        &n,
        json!({"type": "object", "properties": {"k": {"type": "string"}}}),
        vec![],
    )
    .await
    .unwrap();
    let old = h
        .create_record(&n, json!({"k": "v"}), None)
        .await
        .unwrap()
        .record;
    h.put_collection(
        &n,
        json!({"type": "object", "properties": {"k": {"type": "string"}}}),
        vec!["k".into()],
    )
    .await
    .unwrap();
    assert_eq!(
        ids(h.query(&n, &q(&[("k", "v")]), None, 10).await.unwrap()),
        vec![old.id]
    );
}

pub async fn validation_and_limits<H: Harness>() {
    let env = Env::<H>::new().await;
    let a = env.tenant(&[Role::Admin]).await;
    with_users(&env, &a).await;
    let h = env.store.tenant(&a).await.unwrap();
    let u = coll("users");
    match h
        .create_record(&u, json!({"email": 5, "age": -1}), None)
        .await
    {
        Err(StoreError::Invalid(v)) => {
            let paths: Vec<_> = v.iter().map(|v| v.path.as_str()).collect();
            assert!(
                paths.contains(&"/email") && paths.contains(&"/age"),
                "{paths:?}"
            );
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    let mut deep = json!("x");
    for _ in 0..70 {
        deep = json!([deep]);
    }
    assert!(matches!(
        h.create_record(
            &u,
            json!({"email": "d@x.example", "note": "n", "deep": deep}),
            None
        )
        .await,
        Err(StoreError::TooDeep { .. })
    ));
    let big = "x".repeat(300 * 1024);
    assert!(matches!(
        h.create_record(&u, json!({"email": "d@x.example", "note": big}), None)
            .await,
        Err(StoreError::RecordTooLarge { .. })
    ));
    // Nothing was written by the refused requests.
    assert!(h.query(&u, &[], None, 10).await.unwrap().items.is_empty());
    assert!(matches!(
        h.put_collection(&coll("bad"), json!({"type": "array"}), vec![])
            .await,
        Err(StoreError::Schema(_))
    ));
    assert_not_found!(h.create_record(&coll("missing"), json!({}), None).await);
}

pub async fn ciphertext_is_bound_to_its_place<H: Harness>() {
    let env = Env::<H>::new().await;
    let a = env.tenant(&[Role::Admin]).await;
    let b = env.tenant(&[Role::Admin]).await;
    with_users(&env, &a).await;
    with_users(&env, &b).await;
    let ha = env.store.tenant(&a).await.unwrap();
    let hb = env.store.tenant(&b).await.unwrap();
    let u = coll("users");
    let ra = ha
        .create_record(&u, json!({"email": "victim@a.example"}), None)
        .await
        .unwrap()
        .record;
    let ra2 = ha
        .create_record(&u, json!({"email": "other@a.example"}), None)
        .await
        .unwrap()
        .record;
    let rb = hb
        .create_record(&u, json!({"email": "attacker@b.example"}), None)
        .await
        .unwrap()
        .record;
    // A's ciphertext pasted onto B's row: B gets an integrity error, never A's plaintext.
    env.harness
        .raw_copy_data((a.tenant(), &u, ra.id), (b.tenant(), &u, rb.id))
        .await;
    assert!(matches!(
        hb.get_record(&u, rb.id).await,
        Err(StoreError::Integrity(_))
    ));
    // Within one tenant, one record's bytes pasted onto another's also fail.
    env.harness
        .raw_copy_data((a.tenant(), &u, ra.id), (a.tenant(), &u, ra2.id))
        .await;
    assert!(matches!(
        ha.get_record(&u, ra2.id).await,
        Err(StoreError::Integrity(_))
    ));
    // Positive twin: the untouched record still reads.
    assert_eq!(ha.get_record(&u, ra.id).await.unwrap(), ra);
    // A whole row moved to B: B cannot decrypt it, A no longer sees it.
    env.harness
        .raw_move_record((a.tenant(), &u, ra.id), b.tenant())
        .await;
    assert!(matches!(
        hb.get_record(&u, ra.id).await,
        Err(StoreError::Integrity(_))
    ));
    assert_not_found!(ha.get_record(&u, ra.id).await);
}

pub async fn no_plaintext_at_rest<H: Harness>() {
    let env = Env::<H>::new().await;
    let a = env.tenant(&[Role::Admin]).await;
    with_users(&env, &a).await;
    let h = env.store.tenant(&a).await.unwrap();
    let planted = "planted-8c1f4e2a-value@x.example";
    let r = h
        .create_record(
            &coll("users"),
            json!({"email": planted, "team": "planted-team-7d3b"}),
            Some(Idempotency {
                key: "planted-key-2f9c",
                body_digest: [3; 32],
            }),
        )
        .await
        .unwrap();
    h.update_record(
        &coll("users"),
        r.record.id,
        json!({"email": planted, "note": "planted-note-5e6a"}),
        1,
    )
    .await
    .unwrap();
    let dump = env.harness.raw_dump().await;
    assert!(!dump.is_empty());
    for needle in [
        planted,
        "planted-team-7d3b",
        "planted-note-5e6a",
        "planted-key-2f9c",
        "minimum",
    ] {
        assert!(
            !contains(&dump, needle.as_bytes()),
            "`{needle}` found in plaintext at rest"
        );
    }
    // Positive twin: the dump does hold what is not secret, so the search itself works.
    assert!(
        contains(&dump, b"users"),
        "collection name expected in the dump"
    );
}

/// Tenant policy versions: scoped to their tenant, append-only, the highest in force.
pub async fn policy_versions_are_scoped<H: Harness>() {
    let env = Env::<H>::new().await;
    let a = env.tenant(&[Role::Admin]).await;
    let b = env.tenant(&[Role::Admin]).await;
    let ha = env.store.tenant(&a).await.unwrap();
    let hb = env.store.tenant(&b).await.unwrap();
    let who = Subject::parse("alice").unwrap();
    assert!(ha.active_policy().await.unwrap().is_none());
    let v1 = ha.put_policy("// a1".into(), &who, None).await.unwrap();
    let v2 = ha.put_policy("// a2".into(), &who, None).await.unwrap();
    assert_eq!((v1.version, v2.version), (1, 2));
    assert_eq!(v2.created_by, "alice");
    // B sees none of A's versions, and cannot read one by number.
    assert!(hb.active_policy().await.unwrap().is_none());
    assert!(hb.policy_versions().await.unwrap().is_empty());
    assert_not_found!(hb.policy_version(1).await);
    // Positive twin: B's own versions start at 1 and leave A's alone.
    let b1 = hb.put_policy("// b1".into(), &who, None).await.unwrap();
    assert_eq!(b1.version, 1);
    assert_eq!(hb.active_policy().await.unwrap().unwrap().text, "// b1");
    assert_eq!(ha.active_policy().await.unwrap().unwrap().text, "// a2");
    // A rollback is a new version with an earlier text.
    let old = ha.policy_version(1).await.unwrap();
    let v3 = ha
        .put_policy(old.text.clone(), &who, Some(old.version))
        .await
        .unwrap();
    assert_eq!((v3.version, v3.restored_from), (3, Some(1)));
    let all = ha.policy_versions().await.unwrap();
    assert_eq!(
        all.iter()
            .map(|v| (v.version, v.text.as_str()))
            .collect::<Vec<_>>(),
        vec![(1, "// a1"), (2, "// a2"), (3, "// a1")]
    );
    assert_eq!(ha.active_policy().await.unwrap().unwrap().version, 3);
    // Concurrent writers each get their own version; none is lost.
    let writes = (0..6).map(|i| {
        let ha = &ha;
        let who = &who;
        async move {
            ha.put_policy(format!("// c{i}"), who, None)
                .await
                .unwrap()
                .version
        }
    });
    let mut versions = futures_join_all(writes).await;
    versions.sort_unstable();
    assert_eq!(versions, vec![4, 5, 6, 7, 8, 9]);
}

async fn futures_join_all<F: std::future::Future>(fs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let handles: Vec<_> = fs.collect();
    let mut out = Vec::with_capacity(handles.len());
    // Poll them together: join each in turn (they run concurrently inside the backend queue).
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = handles.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if done[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => done[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    for d in done {
        out.push(d.unwrap());
    }
    out
}

/// Policy text is tenant data: it is encrypted at rest like records.
pub async fn policy_text_is_encrypted_at_rest<H: Harness>() {
    let env = Env::<H>::new().await;
    let a = env.tenant(&[Role::Admin]).await;
    let h = env.store.tenant(&a).await.unwrap();
    let who = Subject::parse("planted-author-81c2").unwrap();
    h.put_policy("// planted-policy-4b7e".into(), &who, None)
        .await
        .unwrap();
    let dump = env.harness.raw_dump().await;
    for needle in ["planted-policy-4b7e", "planted-author-81c2"] {
        assert!(
            !contains(&dump, needle.as_bytes()),
            "`{needle}` found in plaintext at rest"
        );
    }
    // Positive twin: it reads back in clear through the tenant's handle.
    assert_eq!(
        h.active_policy().await.unwrap().unwrap().text,
        "// planted-policy-4b7e"
    );
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

pub async fn lifecycle_suspend_and_offboard<H: Harness>() {
    let env = Env::<H>::new().await;
    let a = env.tenant(&[Role::Admin]).await;
    let b = env.tenant(&[Role::Admin]).await;
    with_users(&env, &a).await;
    with_users(&env, &b).await;
    let rb = env
        .store
        .tenant(&b)
        .await
        .unwrap()
        .create_record(&coll("users"), json!({"email": "b@x.example"}), None)
        .await
        .unwrap()
        .record;
    env.store
        .tenant(&a)
        .await
        .unwrap()
        .create_record(&coll("users"), json!({"email": "a@x.example"}), None)
        .await
        .unwrap();
    env.store
        .update_tenant(
            a.tenant(),
            TenantPatch {
                status: Some(bulkhead_core::TenantStatus::Suspended),
                tier: None,
            },
        )
        .await
        .unwrap();
    assert!(matches!(
        env.store.tenant(&a).await,
        Err(StoreError::TenantNotActive(_))
    ));
    env.store
        .update_tenant(
            a.tenant(),
            TenantPatch {
                status: Some(bulkhead_core::TenantStatus::Active),
                tier: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        env.store
            .tenant(&a)
            .await
            .unwrap()
            .query(&coll("users"), &[], None, 10)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    let name = env.store.get_tenant(a.tenant()).await.unwrap().name;
    let purged = env.store.offboard(a.tenant()).await.unwrap();
    assert_eq!(purged, 1);
    assert!(env.store.tenant(&a).await.is_err());
    assert!(env.store.active_signing_key(a.tenant()).await.is_err());
    assert!(env.store.public_keys(a.tenant()).await.is_err());
    assert_eq!(
        env.store.get_tenant(a.tenant()).await.unwrap().status,
        bulkhead_core::TenantStatus::Deleted
    );
    // B is untouched.
    assert_eq!(
        env.store
            .tenant(&b)
            .await
            .unwrap()
            .get_record(&coll("users"), rb.id)
            .await
            .unwrap(),
        rb
    );
    // The name is free again; the id is not reused.
    let again = env
        .store
        .create_tenant(name.clone(), TierName::standard(), SigningAlg::ES256)
        .await
        .unwrap();
    assert_ne!(again.id, a.tenant());
    match env
        .store
        .create_tenant(name, TierName::standard(), SigningAlg::EdDSA)
        .await
    {
        Err(StoreError::NameTaken(_)) => {}
        other => panic!("expected NameTaken, got {other:?}"),
    }
    // Offboarding again is a no-op that succeeds, so an interrupted offboarding can be retried.
    assert_eq!(env.store.offboard(a.tenant()).await.unwrap(), 0);
    assert_not_found!(env.store.offboard(TenantId::generate()).await);
}

pub async fn concurrent_writes_are_all_acknowledged<H: Harness>() {
    let env = Arc::new(Env::<H>::new().await);
    let a = env.tenant(&[Role::Admin]).await;
    with_users(&env, &a).await;
    let mut tasks = Vec::new();
    for i in 0..64 {
        let env = env.clone();
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            let h = env.store.tenant(&a).await.unwrap();
            h.create_record(
                &coll("users"),
                json!({"email": format!("{i}@x.example")}),
                None,
            )
            .await
            .map(|c| c.record.id)
        }));
    }
    let mut ids = BTreeSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap().unwrap());
    }
    let h = env.store.tenant(&a).await.unwrap();
    let listed: BTreeSet<_> = h
        .query(&coll("users"), &[], None, 1000)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(listed, ids);
}

/// One step of the isolation property test.
#[derive(Debug, Clone)]
pub enum Op {
    Create {
        tenant: usize,
        team: u8,
    },
    Update {
        tenant: usize,
        pick: usize,
        team: u8,
    },
    Delete {
        tenant: usize,
        pick: usize,
    },
    /// Tenant `tenant` tries to read a record it picks from *another* tenant.
    Probe {
        tenant: usize,
        victim: usize,
        pick: usize,
    },
}

fn op_strategy(tenants: usize) -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        (0..tenants, 0u8..3).prop_map(|(tenant, team)| Op::Create { tenant, team }),
        (0..tenants, any::<usize>(), 0u8..3).prop_map(|(tenant, pick, team)| Op::Update {
            tenant,
            pick,
            team
        }),
        (0..tenants, any::<usize>()).prop_map(|(tenant, pick)| Op::Delete { tenant, pick }),
        (0..tenants, 0..tenants, any::<usize>()).prop_map(|(tenant, victim, pick)| Op::Probe {
            tenant,
            victim,
            pick
        }),
    ]
}

/// Property: under any interleaving of writes by three tenants, every tenant's view (lists,
/// filters, reads) equals a model of its own writes, and nothing of another tenant is visible.
pub fn prop_isolation<H: Harness>(cases: u32) {
    use proptest::test_runner::{Config, TestRunner};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let env = rt.block_on(Env::<H>::new());
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = proptest::collection::vec(op_strategy(3), 1..40);
    runner
        .run(&strategy, |ops| {
            rt.block_on(run_ops(&env, ops));
            Ok(())
        })
        .unwrap();
}

async fn run_ops<H: Harness>(env: &Env<H>, ops: Vec<Op>) {
    let mut ctxs = Vec::new();
    for _ in 0..3 {
        let c = env.tenant(&[Role::Admin]).await;
        with_users(env, &c).await;
        ctxs.push(c);
    }
    // Model: per tenant, record id -> team.
    let mut model: Vec<BTreeMap<RecordId, u8>> = vec![BTreeMap::new(); 3];
    let u = coll("users");
    for op in ops {
        match op {
            Op::Create { tenant, team } => {
                let h = env.store.tenant(&ctxs[tenant]).await.unwrap();
                let r = h
                    .create_record(
                        &u,
                        json!({"email": "p@x.example", "team": format!("t{team}")}),
                        None,
                    )
                    .await
                    .unwrap();
                model[tenant].insert(r.record.id, team);
            }
            Op::Update { tenant, pick, team } => {
                let Some(id) = nth(&model[tenant], pick) else {
                    continue;
                };
                let h = env.store.tenant(&ctxs[tenant]).await.unwrap();
                let cur = h.get_record(&u, id).await.unwrap();
                h.update_record(
                    &u,
                    id,
                    json!({"email": "p@x.example", "team": format!("t{team}")}),
                    cur.version,
                )
                .await
                .unwrap();
                model[tenant].insert(id, team);
            }
            Op::Delete { tenant, pick } => {
                let Some(id) = nth(&model[tenant], pick) else {
                    continue;
                };
                env.store
                    .tenant(&ctxs[tenant])
                    .await
                    .unwrap()
                    .delete_record(&u, id, None)
                    .await
                    .unwrap();
                model[tenant].remove(&id);
            }
            Op::Probe {
                tenant,
                victim,
                pick,
            } => {
                let Some(id) = nth(&model[victim], pick) else {
                    continue;
                };
                let h = env.store.tenant(&ctxs[tenant]).await.unwrap();
                if tenant == victim {
                    assert!(
                        h.get_record(&u, id).await.is_ok(),
                        "positive twin: own record readable"
                    );
                } else {
                    assert_not_found!(h.get_record(&u, id).await);
                    assert_not_found!(h.delete_record(&u, id, None).await);
                }
            }
        }
    }
    for (i, ctx) in ctxs.iter().enumerate() {
        let h = env.store.tenant(ctx).await.unwrap();
        let all: BTreeSet<_> = h
            .query(&u, &[], None, 1000)
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(all, model[i].keys().copied().collect::<BTreeSet<_>>());
        for team in 0u8..3 {
            let got: BTreeSet<_> = h
                .query(&u, &[("team".into(), format!("t{team}"))], None, 1000)
                .await
                .unwrap()
                .items
                .into_iter()
                .map(|r| r.id)
                .collect();
            let want: BTreeSet<_> = model[i]
                .iter()
                .filter(|(_, t)| **t == team)
                .map(|(id, _)| *id)
                .collect();
            assert_eq!(got, want);
        }
    }
}

fn nth(m: &BTreeMap<RecordId, u8>, pick: usize) -> Option<RecordId> {
    if m.is_empty() {
        None
    } else {
        m.keys().nth(pick % m.len()).copied()
    }
}

// ---- performance isolation: tiers, overrides, usage and quotas ------------------------------

pub async fn usage_is_counted_per_tenant<H: Harness>() {
    let env = Env::<H>::new().await;
    let a = env.tenant(&[Role::Admin]).await;
    let b = env.tenant(&[Role::Admin]).await;
    with_users(&env, &a).await;
    let ha = env.store.tenant(&a).await.unwrap();
    let hb = env.store.tenant(&b).await.unwrap();
    assert_eq!(hb.usage().await.unwrap(), Usage::default());
    let r1 = ha
        .create_record(&coll("users"), json!({"email": "a1@x.example"}), None)
        .await
        .unwrap()
        .record;
    let r2 = ha
        .create_record(&coll("users"), json!({"email": "a2@x.example"}), None)
        .await
        .unwrap()
        .record;
    let u = ha.usage().await.unwrap();
    assert_eq!((u.records, u.collections), (2, 1));
    assert!(u.bytes > 0);
    // A longer version of a record stores more bytes; deleting one counts it out.
    ha.update_record(
        &coll("users"),
        r1.id,
        json!({"email": "a1@x.example", "note": "x".repeat(500)}),
        1,
    )
    .await
    .unwrap();
    let grown = ha.usage().await.unwrap();
    assert_eq!(grown.records, 2);
    assert!(grown.bytes >= u.bytes + 500, "{grown:?} after {u:?}");
    ha.delete_record(&coll("users"), r2.id, None).await.unwrap();
    let after = ha.usage().await.unwrap();
    assert_eq!(after.records, 1);
    assert!(after.bytes < grown.bytes);
    // B's usage does not include A's (and the twin: B's own record counts for B only).
    assert_eq!(hb.usage().await.unwrap(), Usage::default());
    with_users(&env, &b).await;
    hb.create_record(&coll("users"), json!({"email": "b@x.example"}), None)
        .await
        .unwrap();
    let ub = hb.usage().await.unwrap();
    assert_eq!((ub.records, ub.collections), (1, 1));
    assert_eq!(ha.usage().await.unwrap(), after);
    // Offboarding A leaves B's usage alone.
    env.store.offboard(a.tenant()).await.unwrap();
    assert_eq!(hb.usage().await.unwrap(), ub);
}

pub async fn tiers_and_overrides_are_stored<H: Harness>() {
    let env = Env::<H>::new().await;
    assert!(env.harness.registry().tiers().await.unwrap().is_empty());
    let gold = TierName::parse("gold").unwrap();
    let limits = env
        .store
        .put_tier(
            gold.clone(),
            &LimitOverrides {
                rate_per_second: Some(7.0),
                max_records: Some(3),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // Omitted fields keep the defaults.
    let standard = TierLimits::builtin("standard");
    assert_eq!(limits.rate_per_second, 7.0);
    assert_eq!(limits.burst, standard.burst);
    let rows = env.harness.registry().tiers().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].name.clone(), rows[0].limits),
        (gold.clone(), limits)
    );
    assert_eq!(env.store.tier("gold").unwrap().1, limits);
    // Replacing keeps one row.
    env.store
        .put_tier(gold.clone(), &LimitOverrides::default())
        .await
        .unwrap();
    assert_eq!(env.harness.registry().tiers().await.unwrap().len(), 1);
    assert_eq!(env.store.tier("gold").unwrap().1, standard);
    // Limits that cannot be enforced are refused.
    assert!(matches!(
        env.store
            .put_tier(
                gold,
                &LimitOverrides {
                    burst: Some(0),
                    ..Default::default()
                }
            )
            .await,
        Err(StoreError::BadLimits(_))
    ));

    // Overrides: per tenant, and only that tenant's.
    let a = env.tenant(&[Role::Admin]).await;
    let b = env.tenant(&[Role::Admin]).await;
    let o = LimitOverrides {
        max_concurrency: Some(3),
        ..Default::default()
    };
    env.store
        .set_limit_overrides(a.tenant(), Some(o))
        .await
        .unwrap();
    assert_eq!(env.store.limit_overrides(a.tenant()).await.unwrap(), o);
    assert!(
        env.store
            .limit_overrides(b.tenant())
            .await
            .unwrap()
            .is_empty()
    );
    let la = env.store.tenant(&a).await.unwrap().limits().max_concurrency;
    let lb = env.store.tenant(&b).await.unwrap().limits().max_concurrency;
    assert_eq!((la, lb), (3, standard.max_concurrency));
    env.store
        .set_limit_overrides(a.tenant(), None)
        .await
        .unwrap();
    assert!(
        env.store
            .limit_overrides(a.tenant())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        env.store.tenant(&a).await.unwrap().limits().max_concurrency,
        standard.max_concurrency
    );
}

pub async fn storage_quotas_refuse_and_write_nothing<H: Harness>() {
    let env = Env::<H>::new().await;
    let a = env.tenant(&[Role::Admin]).await;
    let b = env.tenant(&[Role::Admin]).await;
    let small = LimitOverrides {
        max_records: Some(2),
        max_collections: Some(1),
        ..Default::default()
    };
    env.store
        .set_limit_overrides(a.tenant(), Some(small))
        .await
        .unwrap();
    with_users(&env, &a).await;
    let ha = env.store.tenant(&a).await.unwrap();
    match ha
        .put_collection(&coll("other"), users_schema(), vec![])
        .await
    {
        Err(StoreError::QuotaExceeded(Quota::Collections)) => {}
        other => panic!("expected the collections quota, got {other:?}"),
    }
    // Redefining an existing collection is not a new one.
    ha.put_collection(&coll("users"), users_schema(), vec![])
        .await
        .unwrap();
    add_users(&ha, 0..2).await;
    match ha
        .create_record(&coll("users"), json!({"email": "3@x.example"}), None)
        .await
    {
        Err(StoreError::QuotaExceeded(Quota::Records)) => {}
        other => panic!("expected the records quota, got {other:?}"),
    }
    // Nothing was written.
    assert_eq!(ha.usage().await.unwrap().records, 2);
    assert_eq!(
        ha.query(&coll("users"), &[], None, 10)
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    // Twin: B, on the default tier, is not held to A's quotas.
    with_users(&env, &b).await;
    let hb = env.store.tenant(&b).await.unwrap();
    hb.put_collection(&coll("other"), users_schema(), vec![])
        .await
        .unwrap();
    add_users(&hb, 0..3).await;
    // A bytes quota.
    let c = env.tenant(&[Role::Admin]).await;
    env.store
        .set_limit_overrides(
            c.tenant(),
            Some(LimitOverrides {
                max_bytes: Some(300),
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    with_users(&env, &c).await;
    let hc = env.store.tenant(&c).await.unwrap();
    hc.create_record(&coll("users"), json!({"email": "c@x.example"}), None)
        .await
        .unwrap();
    match hc
        .create_record(
            &coll("users"),
            json!({"email": "c2@x.example", "note": "y".repeat(400)}),
            None,
        )
        .await
    {
        Err(StoreError::QuotaExceeded(Quota::Bytes)) => {}
        other => panic!("expected the bytes quota, got {other:?}"),
    }
    assert_eq!(hc.usage().await.unwrap().records, 1);
}

// ---- audit ------------------------------------------------------------------------------

async fn entries_of<H: Harness>(
    env: &Env<H>,
    log: LogId,
) -> Vec<bulkhead_audit::checkpoint::EntryJson> {
    let scope = env.store.operator_audit(log);
    env.store.audit().checkpoint(&scope).await.unwrap();
    env.store
        .audit()
        .entries(&scope, &AuditFilter::default(), None, 1000)
        .await
        .unwrap()
        .items
}

pub async fn audit_records_every_access_and_change<H: Harness>() {
    let env = Env::<H>::new().await;
    let a = env.tenant(&[Role::Admin]).await;
    with_users(&env, &a).await;
    let h = env
        .store
        .tenant(&a)
        .await
        .unwrap()
        .with_request(RequestMeta {
            request_id: "req-1".into(),
            source: "192.0.2.7".into(),
        });
    let users = coll("users");
    let r = h
        .create_record(&users, json!({"email": "secret-value@x.example"}), None)
        .await
        .unwrap()
        .record;
    h.get_record(&users, r.id).await.unwrap();
    h.update_record(&users, r.id, json!({"email": "other-secret@x.example"}), 1)
        .await
        .unwrap();
    assert!(matches!(
        h.update_record(&users, r.id, json!({"email": "x@x.example"}), 1)
            .await,
        Err(StoreError::VersionMismatch { current: 2 })
    ));
    h.query(&users, &[], None, 10).await.unwrap();
    h.delete_record(&users, r.id, None).await.unwrap();
    assert_not_found!(h.get_record(&users, r.id).await);
    assert_not_found!(h.delete_record(&users, r.id, None).await);

    let scope = env.store.tenant_audit(&a);
    let audit = env.store.audit();
    let first = audit.checkpoint(&scope).await.unwrap().unwrap();
    let items = audit
        .entries(&scope, &AuditFilter::default(), None, 100)
        .await
        .unwrap()
        .items;
    let got: Vec<(&str, Outcome)> = items
        .iter()
        .map(|e| (e.action.as_str(), e.outcome))
        .collect();
    assert_eq!(
        got,
        [
            ("collection.put", Outcome::Success),
            ("record.create", Outcome::Success),
            ("record.read", Outcome::Success),
            ("record.update", Outcome::Success),
            ("record.update", Outcome::Conflict),
            ("record.list", Outcome::Success),
            ("record.delete", Outcome::Success),
            ("record.read", Outcome::NotFound),
            ("record.delete", Outcome::NotFound),
        ]
    );
    let rec = format!("collections/users/records/{}", r.id);
    for e in &items[1..] {
        assert!(e.resource.starts_with("collections/users"), "{e:?}");
        assert_eq!(e.request_id, "req-1");
        assert_eq!(e.source, "192.0.2.7");
        assert_eq!(e.actor.subject, "tester");
        assert_eq!(e.actor.roles, "admin");
        assert_eq!(e.log, a.tenant().to_string());
    }
    assert_eq!(items[2].resource, rec);
    for (i, e) in items.iter().enumerate() {
        assert_eq!(e.seq, i as u64);
    }
    // Names and ids only, never contents.
    let json = serde_json::to_string(&items).unwrap();
    assert!(!json.contains("secret"), "{json}");
    // Filters.
    let reads = audit
        .entries(
            &scope,
            &AuditFilter {
                action: Some("record.read".into()),
                ..AuditFilter::default()
            },
            None,
            100,
        )
        .await
        .unwrap();
    assert_eq!(reads.items.len(), 2);
    let later = audit
        .entries(
            &scope,
            &AuditFilter {
                since: Some(
                    bulkhead_core::Timestamp::now_utc() + std::time::Duration::from_secs(60),
                ),
                ..AuditFilter::default()
            },
            None,
            100,
        )
        .await
        .unwrap();
    assert!(later.items.is_empty());
    let page = audit
        .entries(&scope, &AuditFilter::default(), None, 4)
        .await
        .unwrap();
    assert_eq!(page.items.len(), 4);
    let rest = audit
        .entries(
            &scope,
            &AuditFilter::default(),
            page.next_cursor.as_deref(),
            100,
        )
        .await
        .unwrap();
    assert_eq!(rest.items[0].seq, 4);
    assert!(matches!(
        audit
            .entries(&scope, &AuditFilter::default(), Some("x"), 4)
            .await,
        Err(StoreError::BadCursor)
    ));

    // Every entry is provably in the checkpoint, and the log only grew between checkpoints.
    let key = audit.public_key().clone();
    let n = first.checkpoint.size;
    assert_eq!(n, items.len() as u64);
    for seq in 0..n {
        let p = audit.inclusion(&scope, seq, n).await.unwrap();
        verify_inclusion_json(&p, &key, Some(LogId::Tenant(a.tenant()))).unwrap();
    }
    assert_not_found!(audit.inclusion(&scope, n, n).await);
    assert_not_found!(audit.inclusion(&scope, 0, n + 5).await);
    h.get_collection(&users).await.unwrap();
    let second = audit.checkpoint(&scope).await.unwrap().unwrap();
    assert_eq!(second.checkpoint.size, n + 1);
    assert!(
        audit.checkpoint(&scope).await.unwrap().is_none(),
        "no growth, no checkpoint"
    );
    let c = audit.consistency(&scope, n, n + 1).await.unwrap();
    verify_consistency_json(&c, &key, Some(LogId::Tenant(a.tenant()))).unwrap();
    assert_eq!(audit.latest_checkpoint(&scope).await.unwrap(), second);
    let report = audit.verify(&scope, &key, &|_| {}).await.unwrap();
    assert_eq!((report.entries, report.checkpoints), (n + 1, 2));
}

pub async fn audit_logs_are_per_tenant<H: Harness>() {
    let env = Env::<H>::new().await;
    let a = env.tenant(&[Role::Admin]).await;
    let b = env.tenant(&[Role::Admin]).await;
    let mut ids = Vec::new();
    for ctx in [&a, &b] {
        with_users(&env, ctx).await;
        let r = env
            .store
            .tenant(ctx)
            .await
            .unwrap()
            .create_record(&coll("users"), json!({"email": "e@x.example"}), None)
            .await
            .unwrap()
            .record;
        ids.push(r.id.to_string());
    }
    let audit = env.store.audit();
    let (sa, sb) = (env.store.tenant_audit(&a), env.store.tenant_audit(&b));
    let ca = audit.checkpoint(&sa).await.unwrap().unwrap();
    let cb = audit.checkpoint(&sb).await.unwrap().unwrap();
    let list = |scope| async move {
        serde_json::to_string(
            &audit
                .entries(&scope, &AuditFilter::default(), None, 100)
                .await
                .unwrap()
                .items,
        )
        .unwrap()
    };
    // A sees its own record in its log (the positive twin), and nothing of B's; and back.
    let (la, lb) = (list(sa).await, list(sb).await);
    assert!(la.contains(&ids[0]) && !la.contains(&ids[1]));
    assert!(lb.contains(&ids[1]) && !lb.contains(&ids[0]));
    assert!(!la.contains(&b.tenant().to_string()));
    // A's proof verifies against A's checkpoint and never against B's, although both logs
    // hold the same actions at the same positions.
    let key = audit.public_key().clone();
    let p = audit.inclusion(&sa, 1, ca.checkpoint.size).await.unwrap();
    verify_inclusion_json(&p, &key, Some(LogId::Tenant(a.tenant()))).unwrap();
    assert!(verify_inclusion_json(&p, &key, Some(LogId::Tenant(b.tenant()))).is_err());
    let mut forged = p.clone();
    forged.checkpoint = cb.to_json();
    forged.log = b.tenant().to_string();
    assert!(verify_inclusion_json(&forged, &key, None).is_err());
    assert_ne!(ca.checkpoint.root, cb.checkpoint.root);
}

/// Every log verified, as `bulkhead audit verify --all` does: in one pass where the adapter
/// can scan every log, else log by log in log order.
async fn verify_every_log<H: Harness>(
    env: &Env<H>,
    key: &bulkhead_audit::AuditPublicKey,
    logs: &[LogId],
) -> Result<Option<u64>, crate::audit::VerifyFailure> {
    let backend = env.harness.backend();
    match crate::audit::verify_all(backend.clone(), key, Arc::new(|_| {})).await? {
        Some((count, _)) => Ok(Some(count)),
        None => {
            for log in std::iter::once(&LogId::Operator).chain(logs) {
                crate::audit::verify_log(backend.as_ref(), *log, key, &|_| {}).await?;
            }
            Ok(None)
        }
    }
}

/// `audit verify --all` names the first failure in (log, position) order, whichever worker
/// finds it; in one log, a bad signature of a checkpoint reached before a damaged entry comes
/// first. Positive twin: the untouched storage verifies, every log counted.
pub async fn audit_verify_all_names_the_first_failure<H: Harness>() {
    let env = Env::<H>::new().await;
    let audit = env.store.audit();
    let key = audit.public_key().clone();
    // Three tenants' logs, each with a checkpoint after two records and one after five.
    let mut logs = Vec::new();
    for _ in 0..3 {
        let (t, sizes) = checkpointed_tenant(&env, &[0..2, 2..5]).await;
        logs.push((LogId::Tenant(t.tenant()), sizes[0], sizes[1]));
    }
    logs.sort_by_key(|(l, _, _)| l.to_bytes());
    let ids: Vec<LogId> = logs.iter().map(|(l, _, _)| *l).collect();
    if let Some(count) = verify_every_log(&env, &key, &ids).await.unwrap() {
        // The three tenants' logs (and the operator log, if anything recorded it).
        assert!((3..=4).contains(&count), "{count}");
    }

    // Damage in the last log and a bad signature in the middle one: the middle one is named.
    let ((first, c1, _), (middle, _, m2), (last, _, _)) = (logs[0], logs[1], logs[2]);
    let tampered = |tampers: [(LogId, AuditTamper); 2]| {
        let (env, key, ids) = (&env, &key, &ids);
        async move {
            for (log, t) in tampers {
                env.harness.raw_audit_tamper(log, t).await;
            }
            let err = verify_every_log(env, key, ids).await.unwrap_err();
            (err.log, err.at)
        }
    };
    assert_eq!(
        tampered([
            (last, AuditTamper::FlipBodyByte { seq: 2 }),
            (middle, AuditTamper::FlipSignature { size: m2 }),
        ])
        .await,
        (middle.to_string(), format!("checkpoint {m2}"))
    );
    // In the first log, an entry after its first checkpoint is damaged and that checkpoint's
    // signature is bad: the signature, reached first, is named.
    assert_eq!(
        tampered([
            (first, AuditTamper::FlipBodyByte { seq: c1 + 1 }),
            (first, AuditTamper::FlipSignature { size: c1 }),
        ])
        .await,
        (first.to_string(), format!("checkpoint {c1}"))
    );
}

/// The checkpointer signs a round's checkpoints as one batch: one signature, each checkpoint
/// with its own path, each verifying alone (the positive twin) and only for its own log; a
/// tampered signature or path of one log's checkpoint is named although the genuine batch
/// signature was already checked for the logs before it.
pub async fn audit_rounds_share_one_signature<H: Harness>() {
    let env = Env::<H>::new().await;
    let audit = env.store.audit();
    let key = audit.public_key().clone();
    let mut tenants = Vec::new();
    for _ in 0..3 {
        let t = env.tenant(&[Role::Admin]).await;
        with_users(&env, &t).await;
        add_users(&env.store.tenant(&t).await.unwrap(), 0..2).await;
        tenants.push(t);
    }
    tenants.sort_by_key(|t| LogId::Tenant(t.tenant()).to_bytes());
    let logs: Vec<LogId> = tenants.iter().map(|t| LogId::Tenant(t.tenant())).collect();
    assert_eq!(audit.checkpoint_logs(logs.clone()).await, 3);
    let mut cps = Vec::new();
    for t in &tenants {
        let scope = env.store.tenant_audit(t);
        let cp = audit.latest_checkpoint(&scope).await.unwrap();
        key.verify(&cp).unwrap();
        let p = audit
            .inclusion(&scope, 1, cp.checkpoint.size)
            .await
            .unwrap();
        assert_eq!(p.checkpoint, cp.to_json());
        verify_inclusion_json(&p, &key, Some(LogId::Tenant(t.tenant()))).unwrap();
        cps.push((p, cp));
    }
    let (p0, c0) = &cps[0];
    let (_, c1) = &cps[1];
    // One signature over one root; distinct slots; the width says nothing of the count.
    assert_eq!(c0.signature, c1.signature);
    assert_eq!(c0.batch_root(), c1.batch_root());
    let (b0, b1) = (c0.batch.as_ref().unwrap(), c1.batch.as_ref().unwrap());
    assert_ne!(b0.index, b1.index);
    assert_eq!(b0.width, bulkhead_audit::checkpoint::BATCH_WIDTH as u64);
    // Tenant 0's proof never verifies against tenant 1's checkpoint, signed with it.
    let mut other = p0.clone();
    other.checkpoint = c1.to_json();
    assert!(verify_inclusion_json(&other, &key, Some(logs[0])).is_err());
    other.log = logs[1].to_string();
    assert!(verify_inclusion_json(&other, &key, None).is_err());
    verify_every_log(&env, &key, &logs).await.unwrap();
    for tamper in [
        AuditTamper::FlipBatchPath {
            size: cps[2].1.checkpoint.size,
        },
        AuditTamper::FlipSignature {
            size: cps[2].1.checkpoint.size,
        },
    ] {
        let env = &env;
        env.harness.raw_audit_tamper(logs[2], tamper).await;
        let err = verify_every_log(env, &key, &logs).await.unwrap_err();
        assert_eq!(
            (err.log, err.at),
            (
                logs[2].to_string(),
                format!("checkpoint {}", cps[2].1.checkpoint.size)
            ),
            "{tamper:?}"
        );
        // Undone: it verifies again.
        env.harness.raw_audit_tamper(logs[2], tamper).await;
        verify_every_log(env, &key, &logs).await.unwrap();
    }
}

pub async fn audit_tampering_is_detected<H: Harness>() {
    let cases = [
        (AuditTamper::FlipBodyByte { seq: 2 }, "entry 2"),
        (AuditTamper::Delete { seq: 2 }, "entry 2"),
        (AuditTamper::Hole { seq: 2 }, "entry 2"),
        // Past the last checkpoint: no signed root covers it, only the positions tell.
        (AuditTamper::Hole { seq: 7 }, "entry 7"),
        (AuditTamper::Swap { a: 1, b: 3 }, "entry 1"),
        (AuditTamper::TruncateFrom { seq: 4 }, "entry 4"),
        (AuditTamper::FlipSignature { size: 6 }, "checkpoint 6"),
        (AuditTamper::FlipSignature { size: 3 }, "checkpoint 3"),
        (AuditTamper::FlipBatchPath { size: 6 }, "checkpoint 6"),
        (AuditTamper::FlipBatchPath { size: 3 }, "checkpoint 3"),
    ];
    for (tamper, at) in cases {
        let env = Env::<H>::new().await;
        let (a, sizes) = checkpointed_tenant(&env, &[0..2, 2..5]).await;
        assert_eq!(sizes, [3, 6]);
        let h = env.store.tenant(&a).await.unwrap();
        let audit = env.store.audit();
        let scope = env.store.tenant_audit(&a);
        // Entries past the last checkpoint, for a hole among them.
        if let AuditTamper::Hole { seq } = tamper
            && seq >= 6
        {
            for _ in 6..seq + 2 {
                h.list_collections().await.unwrap();
            }
            assert_eq!(audit.place(&scope).await.unwrap(), seq + 2);
        }
        let key = audit.public_key().clone();
        let log = LogId::Tenant(a.tenant());
        for twin in [AuditTamper::Rewrite, AuditTamper::RewriteBackwards] {
            env.harness.raw_audit_tamper(log, twin).await;
            audit.verify(&scope, &key, &|_| {}).await.unwrap();
            verify_every_log(&env, &key, &[log]).await.unwrap();
        }
        env.harness.raw_audit_tamper(log, tamper).await;
        // The verifier names the first bad place, log by log and over every log.
        let one = audit.verify(&scope, &key, &|_| {}).await.unwrap_err();
        assert_eq!(one.at, at, "{tamper:?}: {one}");
        let all = verify_every_log(&env, &key, &[log]).await.unwrap_err();
        assert_eq!(
            (&all.log, &all.at),
            (&log.to_string(), &at.to_owned()),
            "{tamper:?}: {all}"
        );
        // A hole is named as one, not as the wrong tree it leaves further on.
        if let AuditTamper::Hole { seq } = tamper {
            for err in [&one, &all] {
                assert!(
                    err.what
                        .contains(&format!("missing: the next stored entry is {}", seq + 1)),
                    "{err}"
                );
            }
        }
        // Proofs from the tampered storage do not check out (or cannot be made).
        let proven = |seq: u64, size: u64| {
            let key = key.clone();
            async move {
                match audit.inclusion(&scope, seq, size).await {
                    Ok(p) => verify_inclusion_json(&p, &key, Some(log)).is_ok(),
                    Err(_) => false,
                }
            }
        };
        let bad_seq = match tamper {
            AuditTamper::FlipBodyByte { seq }
            | AuditTamper::Delete { seq }
            | AuditTamper::Hole { seq } => seq,
            AuditTamper::Swap { a, .. } => a,
            AuditTamper::TruncateFrom { seq } => seq,
            AuditTamper::FlipSignature { size } | AuditTamper::FlipBatchPath { size } => size - 1,
            // Not a change (and not among the cases).
            AuditTamper::Rewrite | AuditTamper::RewriteBackwards => continue,
        };
        let size = tamper.checkpoint_change().map_or(6, |(size, _, _)| size);
        assert!(!proven(bad_seq, size).await, "{tamper:?}");
        if tamper
            .checkpoint_change()
            .is_some_and(|(size, _, _)| size == 3)
        {
            let c = audit.consistency(&scope, 3, 6).await.unwrap();
            assert!(verify_consistency_json(&c, &key, Some(log)).is_err());
        }
        // Nor does the checkpointer sign over a hole past the last checkpoint.
        if let AuditTamper::Hole { seq } = tamper
            && seq >= 6
        {
            let signed = audit.checkpoint(&scope).await;
            assert!(signed.is_err(), "{tamper:?}: {signed:?}");
        }
        // The checkpointer does not sign over an entry changed before it was checkpointed.
        if let AuditTamper::FlipBodyByte { .. } = tamper {
            h.list_collections().await.unwrap();
            assert_eq!(audit.place(&scope).await.unwrap(), 7);
            env.harness
                .raw_audit_tamper(log, AuditTamper::FlipBodyByte { seq: 6 })
                .await;
            assert!(matches!(
                audit.checkpoint(&scope).await,
                Err(StoreError::Integrity(_))
            ));
        }
    }
}

pub async fn audit_retention_keeps_the_log_verifiable<H: Harness>() {
    let env = Env::<H>::new().await;
    let a = env.tenant(&[Role::Admin]).await;
    with_users(&env, &a).await;
    let h = env.store.tenant(&a).await.unwrap();
    let audit = env.store.audit();
    let scope = env.store.tenant_audit(&a);
    add_users(&h, 0..3).await;
    audit.checkpoint(&scope).await.unwrap();
    // Nothing is older than a minute ago: nothing goes.
    let past = bulkhead_core::Timestamp::now_utc() - std::time::Duration::from_secs(60);
    assert_eq!(audit.prune(&scope, past).await.unwrap(), 0);
    let cutoff = bulkhead_core::Timestamp::now_utc() + std::time::Duration::from_secs(1);
    assert_eq!(audit.prune(&scope, cutoff).await.unwrap(), 4);
    // Every entry pruned: the log is its checkpoints alone, and still verifies.
    let key = audit.public_key().clone();
    let log = LogId::Tenant(a.tenant());
    let report = audit.verify(&scope, &key, &|_| {}).await.unwrap();
    assert_eq!((report.pruned, report.entries), (4, 0));
    verify_every_log(&env, &key, &[log]).await.unwrap();
    // Its twin: that checkpoint's signature changed, it does not verify, by either verifier.
    let flip = AuditTamper::FlipSignature { size: 4 };
    env.harness.raw_audit_tamper(log, flip).await;
    let one = audit.verify(&scope, &key, &|_| {}).await.unwrap_err();
    let all = verify_every_log(&env, &key, &[log]).await.unwrap_err();
    for err in [one, all] {
        assert_eq!((err.log, err.at), (log.to_string(), "checkpoint 4".into()));
    }
    // Flipped back.
    env.harness.raw_audit_tamper(log, flip).await;
    add_users(&h, 3..5).await;
    let cp = audit.checkpoint(&scope).await.unwrap().unwrap();
    assert_eq!(cp.checkpoint.size, 6);
    let report = audit.verify(&scope, &key, &|_| {}).await.unwrap();
    assert_eq!((report.pruned, report.entries), (4, 2));
    let items = audit
        .entries(&scope, &AuditFilter::default(), None, 100)
        .await
        .unwrap()
        .items;
    assert_eq!(items.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5]);
    // Proofs of kept entries, and from the prune point on, are still served and verify; a
    // pruned entry has none.
    for seq in [4, 5] {
        let p = audit.inclusion(&scope, seq, 6).await.unwrap();
        verify_inclusion_json(&p, &key, Some(log)).unwrap();
    }
    assert_not_found!(audit.inclusion(&scope, 1, 6).await);
    let c = audit.consistency(&scope, 4, 6).await.unwrap();
    verify_consistency_json(&c, &key, Some(log)).unwrap();
    // Tampering after pruning is still caught.
    env.harness
        .raw_audit_tamper(
            LogId::Tenant(a.tenant()),
            AuditTamper::FlipBodyByte { seq: 5 },
        )
        .await;
    assert_eq!(
        audit.verify(&scope, &key, &|_| {}).await.unwrap_err().at,
        "entry 5"
    );
}

/// The audit port of a backend whose retention sweep lands once, pruning `log` below
/// `below`, just before the log's checkpoints are first read: a running server's sweep in
/// the middle of `audit verify --tenant`.
struct PrunedMidway {
    inner: Arc<dyn RecordBackend>,
    below: u64,
    armed: std::sync::atomic::AtomicBool,
}

impl PrunedMidway {
    fn new(inner: Arc<dyn RecordBackend>, below: u64) -> Self {
        Self {
            inner,
            below,
            armed: true.into(),
        }
    }

    fn pruned(&self) -> bool {
        !self.armed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait]
impl AuditBackend for PrunedMidway {
    async fn audit_append(&self, log: &AuditScope, bodies: &[Vec<u8>]) -> Result<(), BackendError> {
        self.inner.audit_append(log, bodies).await
    }
    async fn audit_sequence(&self, logs: &[AuditScope]) -> Result<Vec<u64>, BackendError> {
        self.inner.audit_sequence(logs).await
    }
    async fn audit_entries(
        &self,
        log: &AuditScope,
        from: u64,
        limit: usize,
    ) -> Result<Vec<AuditRow>, BackendError> {
        self.inner.audit_entries(log, from, limit).await
    }
    async fn audit_leaves(
        &self,
        log: &AuditScope,
        from: u64,
        to: u64,
    ) -> Result<Vec<[u8; 32]>, BackendError> {
        self.inner.audit_leaves(log, from, to).await
    }
    async fn audit_put_checkpoints(
        &self,
        rows: &[(AuditScope, CheckpointRow)],
    ) -> Result<(), BackendError> {
        self.inner.audit_put_checkpoints(rows).await
    }
    async fn audit_checkpoint(
        &self,
        log: &AuditScope,
        size: Option<u64>,
    ) -> Result<Option<CheckpointRow>, BackendError> {
        self.inner.audit_checkpoint(log, size).await
    }
    async fn audit_checkpoints(
        &self,
        log: &AuditScope,
        after: u64,
        limit: usize,
    ) -> Result<Vec<CheckpointRow>, BackendError> {
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.inner.audit_prune(log, self.below).await?;
        }
        self.inner.audit_checkpoints(log, after, limit).await
    }
    async fn audit_prune(&self, log: &AuditScope, below: u64) -> Result<u64, BackendError> {
        self.inner.audit_prune(log, below).await
    }
}

/// `audit verify --tenant` while the server's retention sweep prunes the log: the log is
/// read again from its new start and verifies. Its twin: a log damaged after the prune point
/// and pruned the same way meanwhile still fails, at the damaged entry.
pub async fn audit_verify_is_not_fooled_by_retention_meanwhile<H: Harness>() {
    let env = Env::<H>::new().await;
    let audit = env.store.audit();
    let key = audit.public_key().clone();
    // Two logs, each with checkpoints of 4 and 6 entries.
    let mut logs = Vec::new();
    for _ in 0..2 {
        let (t, sizes) = checkpointed_tenant(&env, &[0..3, 3..5]).await;
        assert_eq!(sizes, [4, 6]);
        logs.push(LogId::Tenant(t.tenant()));
    }
    let (sound, damaged) = (logs[0], logs[1]);
    let midway = PrunedMidway::new(env.harness.backend(), 4);
    let report = crate::audit::verify_log(&midway, sound, &key, &|_| {})
        .await
        .unwrap();
    assert!(midway.pruned());
    assert_eq!((report.pruned, report.entries), (4, 2));
    env.harness
        .raw_audit_tamper(damaged, AuditTamper::FlipBodyByte { seq: 5 })
        .await;
    let midway = PrunedMidway::new(env.harness.backend(), 4);
    let err = crate::audit::verify_log(&midway, damaged, &key, &|_| {})
        .await
        .unwrap_err();
    assert!(midway.pruned());
    assert_eq!((err.log, err.at), (damaged.to_string(), "entry 5".into()));
}

pub async fn audit_offboarding_keeps_the_log<H: Harness>() {
    let env = Env::<H>::new().await;
    let a = env.tenant(&[Role::Admin]).await;
    with_users(&env, &a).await;
    env.store
        .operator_record_in_tenant_log(a.tenant(), "tenant.offboard", &RequestMeta::default())
        .await
        .unwrap();
    env.store.offboard(a.tenant()).await.unwrap();
    let items = entries_of(&env, LogId::Tenant(a.tenant())).await;
    let actions: Vec<&str> = items.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["collection.put", "tenant.offboard"]);
    let scope = env.store.operator_audit(LogId::Tenant(a.tenant()));
    let key = env.store.audit().public_key().clone();
    env.store
        .audit()
        .verify(&scope, &key, &|_| {})
        .await
        .unwrap();
    // The operator log is a log of its own.
    env.store
        .audit()
        .record_operator(
            "tenant.offboard",
            &a.tenant().to_string(),
            Outcome::Success,
            &RequestMeta::default(),
            "",
        )
        .await
        .unwrap();
    let op = entries_of(&env, LogId::Operator).await;
    assert_eq!(op.len(), 1);
    assert_eq!(op[0].log, "operator");
}

/// Generates one test per contract function for an adapter's [`Harness`].
#[macro_export]
macro_rules! contract_suite {
    ($harness:ty) => {
        $crate::contract_suite!(@each $harness;
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
            usage_is_counted_per_tenant,
            tiers_and_overrides_are_stored,
            storage_quotas_refuse_and_write_nothing,
            audit_records_every_access_and_change,
            audit_logs_are_per_tenant,
            audit_tampering_is_detected,
            audit_verify_all_names_the_first_failure,
            audit_rounds_share_one_signature,
            audit_retention_keeps_the_log_verifiable,
            audit_verify_is_not_fooled_by_retention_meanwhile,
            audit_offboarding_keeps_the_log,
            policy_versions_are_scoped,
            policy_text_is_encrypted_at_rest
        );
        #[test]
        fn prop_isolation() {
            $crate::contract::prop_isolation::<$harness>(24);
        }
    };
    (@each $harness:ty; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::contract::$name::<$harness>().await;
            }
        )*
    };
}
