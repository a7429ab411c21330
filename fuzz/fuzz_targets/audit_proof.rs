//! Fuzzes the audit proof checks a tenant runs offline (`bulkhead audit verify-proof`) on JSON
//! it saved from the API, and the stored form of a checkpoint's batch path. The inputs may come
//! from a server that lies. Must never panic, and must never accept a checkpoint, inclusion
//! proof or consistency proof that is not exactly what the key signed and the log holds.
//!
//! The first input byte picks the mode:
//! - `0`, `1`, `2`: the rest is JSON, read as a checkpoint, an inclusion proof or a consistency
//!   proof and checked with the fixture's key (random JSON never verifies);
//! - `3`: the rest is a stored batch path (`BatchPath::from_bytes`), which must read back to
//!   the same bytes;
//! - otherwise: edits (see `bulkhead_fuzz::apply_edits`) of a real inclusion proof and a real
//!   consistency proof (their checkpoints signed in one batch with another log's, as the
//!   server signs a round), which must verify if and only if what they say is unchanged.
#![no_main]

use std::sync::OnceLock;

use bulkhead_audit::checkpoint::{
    BatchPath, CheckpointJson, ConsistencyProofJson, InclusionProofJson, consistency_json,
    inclusion_json, verify_consistency_json, verify_inclusion_json,
};
use bulkhead_audit::entry::entry_leaf;
use bulkhead_audit::merkle::root;
use bulkhead_audit::{
    Actor, AuditKey, Checkpoint, EntryBody, LogId, Outcome, SignedCheckpoint,
};
use bulkhead_core::{TenantId, Timestamp};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use libfuzzer_sys::fuzz_target;
use zeroize::Zeroizing;

struct Fixture {
    key: AuditKey,
    log: LogId,
    inclusion: InclusionProofJson,
    consistency: ConsistencyProofJson,
    inclusion_bytes: Vec<u8>,
    consistency_bytes: Vec<u8>,
}

fn fixture() -> &'static Fixture {
    static FX: OnceLock<Fixture> = OnceLock::new();
    FX.get_or_init(|| {
        let key = AuditKey::from_seed(&Zeroizing::new([9u8; 32]));
        let log = LogId::Tenant(TenantId::generate());
        let other = LogId::Tenant(TenantId::generate());
        let bodies: Vec<Vec<u8>> = (0..7)
            .map(|i| {
                EntryBody::new(
                    Timestamp::from_unix_timestamp(1_800_000_000 + i).unwrap(),
                    Actor::tenant("alice", "member"),
                    "record.read",
                    &format!("users/{i}"),
                    Outcome::Success,
                    "req",
                    "127.0.0.1",
                    "",
                )
                .encode()
            })
            .collect();
        let leaves: Vec<[u8; 32]> = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| entry_leaf(log, i as u64, b))
            .collect();
        let at = |size: usize, time_us| Checkpoint {
            log,
            size: size as u64,
            root: root(&leaves[..size]),
            time_us,
        };
        let foreign = Checkpoint {
            log: other,
            size: 3,
            root: [7; 32],
            time_us: 1,
        };
        let mut rng = rand_core::OsRng;
        let first = key.sign_batch(&[at(3, 1), foreign], &mut rng).remove(0);
        let last = key.sign_batch(&[foreign, at(7, 2)], &mut rng).remove(1);
        let inclusion = inclusion_json(4, &bodies[4], &leaves, &last).unwrap();
        let consistency = consistency_json(&leaves, &first, &last).unwrap();
        // Positive twins: the genuine proofs verify, so a refusal below means something.
        verify_inclusion_json(&inclusion, key.public(), Some(log)).unwrap();
        verify_consistency_json(&consistency, key.public(), Some(log)).unwrap();
        Fixture {
            inclusion_bytes: serde_json::to_vec(&inclusion).unwrap(),
            consistency_bytes: serde_json::to_vec(&consistency).unwrap(),
            key,
            log,
            inclusion,
            consistency,
        }
    })
}

/// What a checkpoint says, parsed (so that spellings of the same values compare equal).
fn said(c: &CheckpointJson) -> Option<SignedCheckpoint> {
    SignedCheckpoint::from_json(c).ok()
}

fn hashes(p: &[String]) -> Vec<Option<[u8; 32]>> {
    p.iter().map(|h| bulkhead_audit::parse_hash(h)).collect()
}

fuzz_target!(|data: &[u8]| {
    let fx = fixture();
    let key = fx.key.public();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode {
        0 => {
            if let Ok(c) = serde_json::from_slice::<CheckpointJson>(rest)
                && let Ok(s) = SignedCheckpoint::from_json(&c)
            {
                // Only the fixture's two checkpoints are signed by this key.
                if key.verify(&s).is_ok() {
                    assert!(
                        Some(&s) == said(&fx.inclusion.checkpoint).as_ref()
                            || Some(&s) == said(&fx.consistency.from_checkpoint).as_ref(),
                        "a checkpoint the key did not sign verified"
                    );
                }
            }
        }
        1 => {
            if let Ok(p) = serde_json::from_slice::<InclusionProofJson>(rest) {
                let _ = verify_inclusion_json(&p, key, None);
            }
        }
        2 => {
            if let Ok(p) = serde_json::from_slice::<ConsistencyProofJson>(rest) {
                let _ = verify_consistency_json(&p, key, None);
            }
        }
        3 => {
            if let Some(b) = BatchPath::from_bytes(rest) {
                assert_eq!(b.to_bytes(), rest, "a batch path did not read back");
            }
        }
        _ => {
            let edited = bulkhead_fuzz::apply_edits(&fx.inclusion_bytes, rest);
            if let Ok(p) = serde_json::from_slice::<InclusionProofJson>(&edited)
                && verify_inclusion_json(&p, key, Some(fx.log)).is_ok()
            {
                let g = &fx.inclusion;
                assert!(
                    p.log == g.log
                        && p.seq == g.seq
                        && p.size == g.size
                        && B64.decode(&p.entry).ok() == B64.decode(&g.entry).ok()
                        && hashes(&p.proof) == hashes(&g.proof)
                        && said(&p.checkpoint) == said(&g.checkpoint),
                    "a changed inclusion proof verified"
                );
            }
            let edited = bulkhead_fuzz::apply_edits(&fx.consistency_bytes, rest);
            if let Ok(p) = serde_json::from_slice::<ConsistencyProofJson>(&edited)
                && verify_consistency_json(&p, key, Some(fx.log)).is_ok()
            {
                let g = &fx.consistency;
                assert!(
                    p.log == g.log
                        && p.from == g.from
                        && p.to == g.to
                        && hashes(&p.proof) == hashes(&g.proof)
                        && said(&p.from_checkpoint) == said(&g.from_checkpoint)
                        && said(&p.to_checkpoint) == said(&g.to_checkpoint),
                    "a changed consistency proof verified"
                );
            }
        }
    }
});
