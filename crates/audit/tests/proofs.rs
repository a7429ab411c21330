//! Property tests: random logs, every proof verifies against the signed checkpoint of its own
//! log, and never against another tenant's.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "tests")]

use bulkhead_audit::checkpoint::{
    VerifyError, consistency_json, inclusion_json, verify_consistency_json, verify_inclusion_json,
};
use bulkhead_audit::entry::{EntryBody, entry_leaf};
use bulkhead_audit::merkle::root;
use bulkhead_audit::{Actor, AuditKey, Checkpoint, LogId, Outcome, SignedCheckpoint};
use bulkhead_core::{TenantId, Timestamp};
use proptest::prelude::*;
use zeroize::Zeroizing;

fn body(i: u64, resource: &str) -> Vec<u8> {
    EntryBody::new(
        Timestamp::from_unix_timestamp(1_800_000_000).unwrap(),
        Actor::tenant("alice", "member"),
        "record.read",
        &format!("{resource}/{i}"),
        Outcome::Success,
        "req",
        "127.0.0.1",
        "",
    )
    .encode()
}

struct Log {
    id: LogId,
    bodies: Vec<Vec<u8>>,
    leaves: Vec<[u8; 32]>,
}

impl Log {
    fn new(id: LogId, resources: &[String]) -> Self {
        let bodies: Vec<Vec<u8>> = resources
            .iter()
            .enumerate()
            .map(|(i, r)| body(i as u64, r))
            .collect();
        let leaves = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| entry_leaf(id, i as u64, b))
            .collect();
        Self { id, bodies, leaves }
    }

    fn checkpoint(&self, key: &AuditKey, size: usize) -> SignedCheckpoint {
        key.sign(Checkpoint {
            log: self.id,
            size: size as u64,
            root: root(&self.leaves[..size]),
            time_us: 1,
        })
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_proof_verifies_and_never_for_another_tenant(
        resources in proptest::collection::vec("[a-z]{0,6}", 1..48),
        picks in proptest::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>()), 1..16),
    ) {
        let key = AuditKey::from_seed(&Zeroizing::new([3u8; 32]));
        let a = Log::new(LogId::Tenant(TenantId::generate()), &resources);
        // Tenant B's log holds the very same bodies: only the log id differs.
        let b = Log::new(LogId::Tenant(TenantId::generate()), &resources);
        let n = resources.len();
        for (x, y) in picks {
            let size = y.index(n) + 1;
            let seq = x.index(size);
            let cp_a = a.checkpoint(&key, size);
            let cp_b = b.checkpoint(&key, size);
            let p = inclusion_json(seq as u64, &a.bodies[seq], &a.leaves, &cp_a).unwrap();
            prop_assert!(verify_inclusion_json(&p, key.public(), Some(a.id)).is_ok());
            // Against B's checkpoint, whatever the proof claims about its log.
            let mut swapped = p.clone();
            swapped.checkpoint = cp_b.to_json();
            prop_assert!(verify_inclusion_json(&swapped, key.public(), Some(b.id)).is_err());
            swapped.log = b.id.to_string();
            prop_assert!(verify_inclusion_json(&swapped, key.public(), None).is_err());
            prop_assert!(verify_inclusion_json(&p, key.public(), Some(b.id)).is_err());

            // A's and B's checkpoints signed in one batch (as the server signs a round): A's
            // verifies, B's never stands in for it, nor does A's checkpoint at B's slot.
            let batch = key.sign_batch(&[cp_a.checkpoint, cp_b.checkpoint], &mut rand_core::OsRng);
            let mut pb = p.clone();
            pb.checkpoint = batch[0].to_json();
            prop_assert!(verify_inclusion_json(&pb, key.public(), Some(a.id)).is_ok());
            pb.checkpoint = batch[1].to_json();
            prop_assert!(verify_inclusion_json(&pb, key.public(), Some(b.id)).is_err());
            pb.log = b.id.to_string();
            prop_assert!(verify_inclusion_json(&pb, key.public(), None).is_err());
            let mut moved = batch[0].clone();
            moved.batch = batch[1].batch.clone();
            let mut pm = p.clone();
            pm.checkpoint = moved.to_json();
            prop_assert_eq!(
                verify_inclusion_json(&pm, key.public(), Some(a.id)).unwrap_err(),
                VerifyError::BadSignature
            );

            let m = x.index(size + 1);
            let from = a.checkpoint(&key, m);
            let c = consistency_json(&a.leaves, &from, &cp_a).unwrap();
            prop_assert!(verify_consistency_json(&c, key.public(), Some(a.id)).is_ok());
            let mut cross = c.clone();
            cross.to_checkpoint = cp_b.to_json();
            prop_assert!(verify_consistency_json(&cross, key.public(), None).is_err());
            prop_assert!(verify_consistency_json(&c, key.public(), Some(b.id)).is_err());
        }
    }

    #[test]
    fn a_changed_entry_or_a_forged_checkpoint_is_caught(
        resources in proptest::collection::vec("[a-z]{1,6}", 2..32),
        at in any::<prop::sample::Index>(),
        byte in any::<prop::sample::Index>(),
    ) {
        let key = AuditKey::from_seed(&Zeroizing::new([3u8; 32]));
        let a = Log::new(LogId::Tenant(TenantId::generate()), &resources);
        let n = resources.len();
        let seq = at.index(n);
        let cp = a.checkpoint(&key, n);
        // One flipped byte anywhere in the body.
        let mut changed = a.bodies[seq].clone();
        let i = byte.index(changed.len());
        changed[i] ^= 0x01;
        let p = inclusion_json(seq as u64, &changed, &a.leaves, &cp).unwrap();
        prop_assert_eq!(verify_inclusion_json(&p, key.public(), Some(a.id)).unwrap_err(), VerifyError::BadProof);
        // A checkpoint over the changed log, signed by someone else.
        let forger = AuditKey::from_seed(&Zeroizing::new([4u8; 32]));
        let mut leaves = a.leaves.clone();
        leaves[seq] = entry_leaf(a.id, seq as u64, &changed);
        let forged = forger.sign(Checkpoint { log: a.id, size: n as u64, root: root(&leaves), time_us: 1 });
        let mut fp = inclusion_json(seq as u64, &changed, &leaves, &forged).unwrap();
        prop_assert!(verify_inclusion_json(&fp, key.public(), Some(a.id)).is_err());
        // ... or with its key id swapped for the real one.
        fp.checkpoint.key_id = key.public().key_id.clone();
        prop_assert_eq!(verify_inclusion_json(&fp, key.public(), Some(a.id)).unwrap_err(), VerifyError::BadSignature);
    }
}
