//! SHA-256 of the short messages a Merkle tree hashes (a node's 65 bytes, an entry of a few
//! hundred), padded on the stack and handed to the `sha2` crate's compression function in one
//! call. The streaming hasher buffers every `update` and pads at `finalize`: on 190-byte
//! entries that bookkeeping is about a tenth of the time `audit verify` spends hashing
//! (BENCHMARKS.md, "A worker per core reading and hashing in one place"). The result is plain SHA-256 —
//! the tests check it against the streaming hasher for every length this path takes and past
//! it.

use sha2_block::block_api::compress256;

use crate::merkle::Hash;

/// The streaming SHA-256 of the same implementation (`bulkhead audit verify --bench` measures
/// the machine's raw hash throughput with it).
pub use sha2_block::{Digest, Sha256};

/// Blocks hashed on the stack at most.
const BLOCKS: usize = 4;
/// The longest message hashed on the stack: four blocks less the padding's 9 bytes. Longer
/// ones go through the streaming hasher.
const MAX_SHORT: usize = BLOCKS * 64 - 9;

/// SHA-256's initial hash value (FIPS 180-4 §5.3.3).
const IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// The digest of padded `blocks`.
#[inline]
fn finish(blocks: &[[u8; 64]]) -> Hash {
    let mut state = IV;
    compress256(&mut state, blocks);
    let mut out = [0u8; 32];
    for (o, w) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&w.to_be_bytes());
    }
    out
}

/// `SHA-256(parts[0] || parts[1] || …)`.
#[inline]
pub fn digest(parts: &[&[u8]]) -> Hash {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len > MAX_SHORT {
        let mut h = Sha256::new();
        for p in parts {
            h.update(p);
        }
        return h.finalize().into();
    }
    let used = (len + 9).div_ceil(64);
    let mut blocks = [[0u8; 64]; BLOCKS];
    let flat = blocks.as_flattened_mut();
    let mut at = 0;
    for p in parts {
        if let Some(dst) = flat.get_mut(at..at + p.len()) {
            dst.copy_from_slice(p);
        }
        at += p.len();
    }
    if let Some(b) = flat.get_mut(at) {
        *b = 0x80;
    }
    if let Some(dst) = flat.get_mut(used * 64 - 8..used * 64) {
        dst.copy_from_slice(&(len as u64).wrapping_mul(8).to_be_bytes());
    }
    finish(blocks.get(..used).unwrap_or(&blocks))
}

/// Many messages padded first, then hashed one after the other. A message padded just before
/// its compression makes the compression wait: its first loads read bytes that the padding's
/// copies have not written back yet (the loads span several smaller stores, which the CPU
/// cannot forward). Padded a batch ahead, the bytes are in cache when they are hashed: a
/// 190-byte entry's leaf hash takes about 121 ns instead of 145 ns, against 117 ns for its
/// four compressions alone (BENCHMARKS.md, "Leaves and nodes hashed in batches").
#[derive(Debug, Default)]
pub struct Batch {
    /// Every message's padded blocks, one message after the other.
    blocks: Vec<[u8; 64]>,
    /// Where each message's blocks end in `blocks`.
    ends: Vec<usize>,
}

impl Batch {
    /// Messages added since the last [`Batch::hash_into`].
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Adds `parts[0] || parts[1] || …` as one message (of any length).
    #[inline]
    pub fn push(&mut self, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let start = self.blocks.len();
        let end = start + (len + 9).div_ceil(64);
        self.blocks.resize(end, [0; 64]);
        let flat = self
            .blocks
            .get_mut(start..)
            .unwrap_or_default()
            .as_flattened_mut();
        let mut at = 0;
        for p in parts {
            if let Some(dst) = flat.get_mut(at..at + p.len()) {
                dst.copy_from_slice(p);
            }
            at += p.len();
        }
        if let Some(b) = flat.get_mut(at) {
            *b = 0x80;
        }
        let tail = flat.len().saturating_sub(8);
        if let Some(dst) = flat.get_mut(tail..) {
            dst.copy_from_slice(&(len as u64).wrapping_mul(8).to_be_bytes());
        }
        self.ends.push(end);
    }

    /// Adds `tag || left || right` (a node's 65 bytes).
    pub fn push_pair(&mut self, tag: u8, left: &Hash, right: &Hash) {
        self.push(&[&[tag], left, right]);
    }

    /// Hashes the messages in the order they were added, appends their digests to `out`, and
    /// empties the batch.
    pub fn hash_into(&mut self, out: &mut Vec<Hash>) {
        out.reserve(self.ends.len());
        let mut start = 0;
        for &end in &self.ends {
            out.push(finish(self.blocks.get(start..end).unwrap_or_default()));
            start = end;
        }
        self.blocks.clear();
        self.ends.clear();
    }
}

/// `SHA-256(tag || left || right)`: 65 bytes, two blocks.
#[inline]
pub fn pair(tag: u8, left: &Hash, right: &Hash) -> Hash {
    let mut blocks = [[0u8; 64]; 2];
    let flat = blocks.as_flattened_mut();
    let (t, rest) = flat.split_at_mut(1);
    t.copy_from_slice(&[tag]);
    let (l, rest) = rest.split_at_mut(32);
    l.copy_from_slice(left);
    let (r, rest) = rest.split_at_mut(32);
    r.copy_from_slice(right);
    if let Some(b) = rest.first_mut() {
        *b = 0x80;
    }
    if let Some(dst) = rest.get_mut(rest.len() - 8..) {
        dst.copy_from_slice(&(65u64 * 8).to_be_bytes());
    }
    finish(&blocks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sha2::{Digest as _, Sha256 as Reference};

    fn reference(parts: &[&[u8]]) -> Hash {
        let mut h = Reference::new();
        for p in parts {
            h.update(p);
        }
        h.finalize().into()
    }

    #[test]
    fn every_length_on_and_past_the_stack_path_is_sha256() {
        let bytes: Vec<u8> = (0..400u32).map(|i| (i * 37 + 11) as u8).collect();
        for len in 0..=bytes.len() {
            let m = bytes.get(..len).unwrap_or_default();
            assert_eq!(digest(&[m]), reference(&[m]), "length {len}");
            // Split in three, across block boundaries.
            let (a, rest) = m.split_at(len / 3);
            let (b, c) = rest.split_at(rest.len() / 2);
            assert_eq!(digest(&[a, b, c]), reference(&[m]), "length {len}, split");
        }
        assert_eq!(digest(&[]), reference(&[]));
    }

    #[test]
    fn a_node_is_sha256_of_its_65_bytes() {
        let (l, r) = ([0x11; 32], [0xee; 32]);
        assert_eq!(pair(0x01, &l, &r), reference(&[&[0x01], &l, &r]));
        assert_eq!(pair(0x00, &r, &l), reference(&[&[0x00], &r, &l]));
    }

    #[test]
    fn a_batch_hashes_each_message_as_sha256_in_order() {
        let bytes: Vec<u8> = (0..700u32).map(|i| (i * 29 + 3) as u8).collect();
        let mut batch = Batch::default();
        let mut expected = Vec::new();
        // Every length on and past each block boundary, and long ones, in one batch.
        for len in (0..=300).chain([447, 448, 700]) {
            let m = bytes.get(..len).unwrap_or_default();
            let (a, b) = m.split_at(len / 2);
            batch.push(&[a, b]);
            expected.push(reference(&[m]));
        }
        batch.push_pair(0x01, &[7; 32], &[9; 32]);
        expected.push(reference(&[&[0x01], &[7; 32], &[9; 32]]));
        assert_eq!(batch.len(), expected.len());
        let mut out = vec![[0xaa; 32]];
        batch.hash_into(&mut out);
        assert_eq!(out.first(), Some(&[0xaa; 32]), "appends");
        assert_eq!(out.get(1..), Some(expected.as_slice()));
        assert!(batch.is_empty());
        // Reused after hashing.
        batch.push(&[b"abc"]);
        let mut again = Vec::new();
        batch.hash_into(&mut again);
        assert_eq!(again, vec![reference(&[b"abc"])]);
    }

    proptest! {
        #[test]
        fn random_parts_hash_as_one_message(
            parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..120), 0..5),
            l in any::<[u8; 32]>(),
            r in any::<[u8; 32]>(),
        ) {
            let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            prop_assert_eq!(digest(&refs), reference(&refs));
            prop_assert_eq!(pair(0x01, &l, &r), reference(&[&[0x01], &l, &r]));
        }
    }
}
