//! Bulkhead's tamper-evident audit log, as pure functions and types (this crate never does I/O).
//!
//! - [`entry`]: what an audit entry says (time, log, actor, action, resource, outcome, request
//!   id, source address) and its canonical byte encoding. Entries never carry record contents,
//!   tokens or key material: only names, ids and reason classes.
//! - [`merkle`]: RFC 6962 (Certificate Transparency) hashing — leaf `SHA-256(0x00 || entry)`,
//!   node `SHA-256(0x01 || left || right)` — with inclusion and consistency proofs, and a
//!   compact range that extends a tree's root in O(log n) memory.
//! - [`block`]: consecutive entries of one log with their leaf hashes in one byte string (how
//!   the embedded storage keeps logs, and how the offline verifier reads them).
//! - [`sha`]: SHA-256 of those short messages through the bare compression function.
//! - [`checkpoint`]: the signed statement "log L had size N and root R at time T", signed with
//!   the server's Ed25519 audit key, and the JSON forms of checkpoints and proofs that a
//!   verifier checks with nothing but the server's public key.
//!
//! INVARIANT: every leaf and every signed checkpoint names its log (the tenant, or the
//! operator plane), so an entry, a proof or a checkpoint of one tenant's log never verifies as
//! another's.

pub mod block;
pub mod checkpoint;
pub mod entry;
pub mod merkle;
pub mod sha;

pub use checkpoint::{AuditKey, AuditPublicKey, Checkpoint, SignedCheckpoint};
pub use entry::{Actor, ActorKind, EntryBody, LogId, Outcome};
pub use merkle::{CompactRange, Hash};

/// Hex encoding of hashes on the wire (lowercase).
pub fn hex(bytes: &[u8]) -> String {
    ::hex::encode(bytes)
}

/// Parses a 32-byte hash written as 64 hex digits (either case).
pub fn parse_hash(s: &str) -> Option<Hash> {
    let mut out = [0u8; 32];
    ::hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_round_trip() {
        let h = [0xab; 32];
        assert_eq!(super::parse_hash(&super::hex(&h)), Some(h));
        assert_eq!(super::parse_hash("zz"), None);
        assert_eq!(super::parse_hash(&"g".repeat(64)), None);
    }
}
