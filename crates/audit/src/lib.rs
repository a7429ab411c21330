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

pub use checkpoint::{AuditKey, AuditPublicKey, Checkpoint, SignedCheckpoint};
pub use entry::{Actor, ActorKind, EntryBody, LogId, Outcome};
pub use merkle::{CompactRange, Hash};

/// Hex encoding of hashes on the wire (lowercase).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Parses a 32-byte hash written as 64 hex digits.
pub fn parse_hash(s: &str) -> Option<Hash> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        let hi = hex_digit(*pair.first()?)?;
        let lo = hex_digit(*pair.get(1)?)?;
        *o = (hi << 4) | lo;
    }
    Some(out)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
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
