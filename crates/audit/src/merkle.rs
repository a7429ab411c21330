//! RFC 6962 Merkle tree hashing, proofs and their verification.
//!
//! - leaf hash: `SHA-256(0x00 || entry)`; node hash: `SHA-256(0x01 || left || right)`;
//! - the tree of `n` leaves splits at the largest power of two below `n` (RFC 6962 §2.1);
//! - the empty tree's root is `SHA-256("")`.
//!
//! Proof generation works on the leaf hashes of a log (`&[Hash]`); verification follows
//! RFC 9162 §2.1.3.2 and §2.1.4.2 and needs only the proof, the sizes and the roots.

use sha2::{Digest, Sha256};

use crate::sha::Batch;

pub type Hash = [u8; 32];

/// The root of the empty tree.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// `SHA-256(0x00 || entry)`.
#[inline]
pub fn leaf_hash(entry: &[u8]) -> Hash {
    crate::sha::digest(&[&[0x00], entry])
}

/// `SHA-256(0x01 || left || right)`.
#[inline]
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    crate::sha::pair(0x01, left, right)
}

/// The root of the tree whose leaf hashes are `leaves` (RFC 6962 MTH).
pub fn root(leaves: &[Hash]) -> Hash {
    let mut range = CompactRange::new();
    for l in leaves {
        range.push(*l);
    }
    range.root()
}

/// The audit path of leaf `index` in the tree of the first `leaves.len()` leaves (RFC 6962
/// PATH). `None` if `index` is out of range.
pub fn inclusion_proof(leaves: &[Hash], index: usize) -> Option<Vec<Hash>> {
    inclusion_proof_after(&CompactRange::new(), leaves, u64::try_from(index).ok()?)
}

/// The proof that the tree of the first `m` leaves is a prefix of the tree of all `leaves`
/// (RFC 6962 PROOF). `None` unless `m <= leaves.len()`. Empty for `m == 0` or `m == n`.
pub fn consistency_proof(leaves: &[Hash], m: usize) -> Option<Vec<Hash>> {
    consistency_proof_after(&CompactRange::new(), leaves, u64::try_from(m).ok()?)
}

/// A tree known through the compact range of its first `prefix.size()` leaves (their leaves
/// may be gone: retention) and the leaf hashes after them.
struct Known<'a> {
    prefix: &'a CompactRange,
    leaves: &'a [Hash],
}

impl Known<'_> {
    fn size(&self) -> u64 {
        self.prefix.size() + self.leaves.len() as u64
    }

    /// The root of the subtree of leaves `a..b` (RFC 6962 MTH), if it can be known: every
    /// subtree the proofs below ask for is either after the prefix, or made of the prefix's
    /// peaks (its maximal perfect subtrees) and leaves after it.
    fn mth(&self, a: u64, b: u64) -> Option<Hash> {
        let p = self.prefix.size();
        if a >= p {
            let from = usize::try_from(a - p).ok()?;
            let to = usize::try_from(b - p).ok()?;
            return Some(root(self.leaves.get(from..to)?));
        }
        if b <= p {
            // Only a peak of the prefix is known.
            let mut start = 0u64;
            for (bit, peak) in (0..64u32)
                .rev()
                .filter(|i| p >> i & 1 == 1)
                .zip(self.prefix.peaks())
            {
                let end = start + (1u64 << bit);
                if (start, end) == (a, b) {
                    return Some(*peak);
                }
                start = end;
            }
            return None;
        }
        let k = split_u64(b - a);
        Some(node_hash(&self.mth(a, a + k)?, &self.mth(a + k, b)?))
    }

    fn path(&self, m: u64, a: u64, b: u64, out: &mut Vec<Hash>) -> Option<()> {
        if b - a <= 1 {
            return Some(());
        }
        let k = split_u64(b - a);
        if m < a + k {
            self.path(m, a, a + k, out)?;
            out.push(self.mth(a + k, b)?);
        } else {
            self.path(m, a + k, b, out)?;
            out.push(self.mth(a, a + k)?);
        }
        Some(())
    }

    fn subproof(&self, m: u64, a: u64, b: u64, complete: bool, out: &mut Vec<Hash>) -> Option<()> {
        let n = b - a;
        if m == n {
            if !complete {
                out.push(self.mth(a, b)?);
            }
            return Some(());
        }
        let k = split_u64(n);
        if m <= k {
            self.subproof(m, a, a + k, complete, out)?;
            out.push(self.mth(a + k, b)?);
        } else {
            self.subproof(m - k, a + k, b, false, out)?;
            out.push(self.mth(a, a + k)?);
        }
        Some(())
    }
}

/// The largest power of two strictly below `n` (`n >= 2`).
fn split_u64(n: u64) -> u64 {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// The audit path of leaf `index` in the tree made of the leaves summarized by `prefix` and
/// then `leaves`. `None` if `index` is out of range or inside the prefix (its leaf is gone).
pub fn inclusion_proof_after(
    prefix: &CompactRange,
    leaves: &[Hash],
    index: u64,
) -> Option<Vec<Hash>> {
    let t = Known { prefix, leaves };
    if index < prefix.size() || index >= t.size() {
        return None;
    }
    let mut out = Vec::new();
    t.path(index, 0, t.size(), &mut out)?;
    Some(out)
}

/// The proof that the tree of the first `m` leaves is a prefix of the tree made of the leaves
/// summarized by `prefix` and then `leaves`. `None` unless `prefix.size() <= m <= size`
/// (or `m == 0`).
pub fn consistency_proof_after(
    prefix: &CompactRange,
    leaves: &[Hash],
    m: u64,
) -> Option<Vec<Hash>> {
    let t = Known { prefix, leaves };
    let n = t.size();
    if m > n || (m > 0 && m < prefix.size()) {
        return None;
    }
    let mut out = Vec::new();
    if m > 0 && m < n {
        t.subproof(m, 0, n, true, &mut out)?;
    }
    Some(out)
}

/// Checks that `leaf` is at `index` in the tree of `size` leaves with root `root`
/// (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    root_from_inclusion(leaf, index, size, proof).is_some_and(|r| r == *root)
}

/// The root that `leaf` at `index` and its audit path `proof` lead to in a tree of `size`
/// leaves (RFC 9162 §2.1.3.2, without the final comparison); `None` if the path does not fit
/// the position and size.
pub fn root_from_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash]) -> Option<Hash> {
    if index >= size {
        return None;
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s_n == 0 {
            return None;
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            while f_n & 1 == 0 && f_n != 0 {
                f_n >>= 1;
                s_n >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    (s_n == 0).then_some(r)
}

/// The root of the tree of `leaves` and the audit path of every leaf, in leaf order: what
/// [`inclusion_proof`] gives for each index, in one pass (`n - 1` node hashes, where asking
/// for each path alone costs `n` each).
pub fn all_inclusion_proofs(leaves: &[Hash]) -> (Hash, Vec<Vec<Hash>>) {
    match leaves {
        [] => (empty_root(), Vec::new()),
        [leaf] => (*leaf, vec![Vec::new()]),
        _ => {
            let k = usize::try_from(split_u64(leaves.len() as u64)).unwrap_or(1);
            let (left, right) = leaves.split_at(k.min(leaves.len()));
            let (l_root, mut l_paths) = all_inclusion_proofs(left);
            let (r_root, r_paths) = all_inclusion_proofs(right);
            l_paths.iter_mut().for_each(|p| p.push(r_root));
            l_paths.extend(r_paths.into_iter().map(|mut p| {
                p.push(l_root);
                p
            }));
            (node_hash(&l_root, &r_root), l_paths)
        }
    }
}

/// Checks that the tree of `first` leaves with root `first_root` is a prefix of the tree of
/// `second` leaves with root `second_root` (RFC 9162 §2.1.4.2). Equal sizes need an empty proof
/// and equal roots; size 0 is a prefix of everything (empty proof).
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> bool {
    if first > second {
        return false;
    }
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    if first == 0 {
        return proof.is_empty() && *first_root == empty_root();
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let Some((start, rest)) = path.split_first() else {
        return false;
    };
    let (mut f_n, mut s_n) = (first - 1, second - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let (mut fr, mut sr) = (*start, *start);
    for c in rest {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f_n & 1 == 0 && f_n != 0 {
                f_n >>= 1;
                s_n >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    s_n == 0 && fr == *first_root && sr == *second_root
}

/// Buffers that [`CompactRange::extend`] reuses from one call to the next.
#[derive(Debug, Default)]
pub struct Scratch {
    batch: Batch,
    level: Vec<Hash>,
    next: Vec<Hash>,
}

impl Scratch {
    /// The root of the perfect tree over `leaves` (a power of two of them), level by level.
    fn perfect_root(&mut self, leaves: &[Hash]) -> Hash {
        self.level.clear();
        self.level.extend_from_slice(leaves);
        while self.level.len() > 1 {
            for pair in self.level.chunks_exact(2) {
                if let [l, r] = pair {
                    self.batch.push_pair(0x01, l, r);
                }
            }
            self.next.clear();
            self.batch.hash_into(&mut self.next);
            std::mem::swap(&mut self.level, &mut self.next);
        }
        self.level.first().copied().unwrap_or_else(empty_root)
    }
}

/// The right edge of a tree: the roots of its maximal perfect subtrees, largest first (one per
/// set bit of its size). Enough to append leaves and compute the root without the leaves
/// themselves: O(log n) memory, O(1) amortized hashing per leaf.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CompactRange {
    size: u64,
    peaks: Vec<Hash>,
}

impl CompactRange {
    pub fn new() -> Self {
        Self::default()
    }

    /// Restores a range from its stored form; `None` if the peaks do not fit the size.
    pub fn from_parts(size: u64, peaks: Vec<Hash>) -> Option<Self> {
        (u64::from(size.count_ones()) == peaks.len() as u64).then_some(Self { size, peaks })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn peaks(&self) -> &[Hash] {
        &self.peaks
    }

    /// Appends one leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut h = leaf;
        let mut s = self.size;
        while s & 1 == 1 {
            let Some(left) = self.peaks.pop() else { break };
            h = node_hash(&left, &h);
            s >>= 1;
        }
        self.peaks.push(h);
        self.size += 1;
    }

    /// Appends `leaves`: the same as [`CompactRange::push`] of each in turn, but the leaves
    /// are taken as the largest perfect subtrees that fit where the range ends, and the nodes
    /// of each level of such a subtree are hashed in one [`Batch`] (independent messages,
    /// padded ahead).
    pub fn extend(&mut self, leaves: &[Hash], scratch: &mut Scratch) {
        let mut rest = leaves;
        while let Some(first) = rest.first() {
            // Largest power of two that fits in what is left and divides the size.
            let fits = 1usize << rest.len().ilog2();
            let aligned =
                usize::try_from(1u64 << self.size.trailing_zeros().min(63)).unwrap_or(usize::MAX);
            let k = fits.min(aligned);
            let (sub, tail) = rest.split_at(k);
            if k == 1 {
                self.push(*first);
            } else {
                let root = scratch.perfect_root(sub);
                self.push_subtree(root, k.trailing_zeros());
            }
            rest = tail;
        }
    }

    /// Appends the root of a perfect subtree of `2^height` leaves (the size is a multiple of
    /// it).
    fn push_subtree(&mut self, root: Hash, height: u32) {
        let mut h = root;
        let mut s = self.size >> height;
        while s & 1 == 1 {
            let Some(left) = self.peaks.pop() else { break };
            h = node_hash(&left, &h);
            s >>= 1;
        }
        self.peaks.push(h);
        self.size += 1 << height;
    }

    /// The root of the tree so far.
    pub fn root(&self) -> Hash {
        let mut it = self.peaks.iter().rev();
        let Some(last) = it.next() else {
            return empty_root();
        };
        it.fold(*last, |acc, p| node_hash(p, &acc))
    }

    /// Whether `bytes` is this range's stored form ([`CompactRange::to_bytes`]), without
    /// building it.
    pub fn frontier_is(&self, bytes: &[u8]) -> bool {
        bytes.len() == self.peaks.len() * 32
            && bytes
                .chunks_exact(32)
                .zip(&self.peaks)
                .all(|(b, p)| b == p.as_slice())
    }

    /// The stored form: the peaks concatenated.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.peaks.concat()
    }

    /// Restores a range from [`CompactRange::to_bytes`] and its size.
    pub fn from_bytes(size: u64, bytes: &[u8]) -> Option<Self> {
        if !bytes.len().is_multiple_of(32) {
            return None;
        }
        let peaks = bytes
            .chunks_exact(32)
            .map(|c| <Hash>::try_from(c).ok())
            .collect::<Option<Vec<_>>>()?;
        Self::from_parts(size, peaks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    /// The recursive definition, to check the compact range against.
    fn mth(d: &[Hash]) -> Hash {
        match d.len() {
            0 => empty_root(),
            1 => d[0],
            n => {
                let k = usize::try_from(split_u64(n as u64)).unwrap();
                node_hash(&mth(&d[..k]), &mth(&d[k..]))
            }
        }
    }

    /// After retention, proofs made from the prune point's compact range and the leaves after
    /// it are the proofs made from all the leaves; positions inside the pruned prefix have none.
    #[test]
    fn proofs_from_a_pruned_prefix_match_the_full_ones() {
        for n in 1..40usize {
            let l = leaves(n);
            for p in 0..=n {
                let mut prefix = CompactRange::new();
                for h in &l[..p] {
                    prefix.push(*h);
                }
                let kept = &l[p..];
                for i in 0..n {
                    let got = inclusion_proof_after(&prefix, kept, i as u64);
                    if i < p {
                        assert_eq!(got, None, "n={n} p={p} i={i}");
                    } else {
                        let proof = got.unwrap();
                        assert!(verify_inclusion(
                            &l[i],
                            i as u64,
                            n as u64,
                            &proof,
                            &mth(&l)
                        ));
                        assert_eq!(Some(proof), inclusion_proof(&l, i), "n={n} p={p} i={i}");
                    }
                }
                for m in 0..=n {
                    let got = consistency_proof_after(&prefix, kept, m as u64);
                    if m > 0 && m < p {
                        assert_eq!(got, None, "n={n} p={p} m={m}");
                    } else {
                        let proof = got.unwrap();
                        assert!(verify_consistency(
                            m as u64,
                            n as u64,
                            &mth(&l[..m]),
                            &mth(&l),
                            &proof
                        ));
                        assert_eq!(Some(proof), consistency_proof(&l, m), "n={n} p={p} m={m}");
                    }
                }
            }
        }
    }

    #[test]
    fn known_answers() {
        // RFC 6962 conventions: the empty root is SHA-256 of nothing.
        assert_eq!(
            crate::hex(&empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // A leaf of the empty entry: SHA-256(0x00).
        assert_eq!(
            crate::hex(&leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
    }

    #[test]
    fn compact_range_matches_recursive_root() {
        for n in 0..70 {
            let l = leaves(n);
            assert_eq!(root(&l), mth(&l), "n = {n}");
            let mut r = CompactRange::new();
            for x in &l {
                r.push(*x);
            }
            let back = CompactRange::from_bytes(r.size(), &r.to_bytes()).unwrap();
            assert_eq!(back, r);
        }
        assert!(CompactRange::from_bytes(3, &[0u8; 32]).is_none());
    }

    #[test]
    fn every_proof_of_small_trees_verifies_and_a_wrong_one_does_not() {
        for n in 1..40usize {
            let l = leaves(n);
            let r = root(&l);
            for i in 0..n {
                let p = inclusion_proof(&l, i).unwrap();
                assert!(verify_inclusion(&l[i], i as u64, n as u64, &p, &r));
                assert!(!verify_inclusion(&l[(i + 1) % n], i as u64, n as u64, &p, &r) || n == 1);
                // Out of range is refused. (A wrong size can verify when its path has the same
                // shape; the size a verifier uses is the signed checkpoint's, never the proof's.)
                assert!(!verify_inclusion(&l[i], n as u64, n as u64, &p, &r));
            }
            for m in 0..=n {
                let p = consistency_proof(&l, m).unwrap();
                let rm = root(&l[..m]);
                assert!(
                    verify_consistency(m as u64, n as u64, &rm, &r, &p),
                    "{m} {n}"
                );
                if m > 0 && m < n {
                    let mut bad = p.clone();
                    bad[0][0] ^= 1;
                    assert!(!verify_consistency(m as u64, n as u64, &rm, &r, &bad));
                    let other = root(&leaves(m + 1)[1..]);
                    assert!(!verify_consistency(m as u64, n as u64, &other, &r, &p));
                }
            }
        }
        assert!(inclusion_proof(&leaves(3), 3).is_none());
        assert!(consistency_proof(&leaves(3), 4).is_none());
    }

    #[test]
    fn all_paths_at_once_are_the_paths_one_by_one() {
        for n in 0..70usize {
            let l = leaves(n);
            let (r, paths) = all_inclusion_proofs(&l);
            assert_eq!(r, root(&l), "n = {n}");
            assert_eq!(paths.len(), n);
            for (i, p) in paths.iter().enumerate() {
                assert_eq!(Some(p.clone()), inclusion_proof(&l, i), "n = {n}, i = {i}");
                assert_eq!(root_from_inclusion(&l[i], i as u64, n as u64, p), Some(r));
            }
        }
        // A path one hash short or long does not fit the size.
        let l = leaves(8);
        let (_, paths) = all_inclusion_proofs(&l);
        assert_eq!(root_from_inclusion(&l[0], 0, 8, &paths[0][..2]), None);
        let mut long = paths[0].clone();
        long.push([0; 32]);
        assert_eq!(root_from_inclusion(&l[0], 0, 8, &long), None);
    }

    #[test]
    fn extending_is_pushing_one_by_one() {
        let all = leaves(300);
        let mut scratch = Scratch::default();
        // Every start size up to 70 and every batch length up to 70, then a long one.
        for start in 0..70usize {
            let mut base = CompactRange::new();
            for l in &all[..start] {
                base.push(*l);
            }
            for len in (0..70usize).chain([300 - start]) {
                let batch = &all[start..start + len];
                let mut one = base.clone();
                for l in batch {
                    one.push(*l);
                }
                let mut many = base.clone();
                many.extend(batch, &mut scratch);
                assert_eq!(many, one, "start {start}, {len} leaves");
                assert_eq!(many.root(), mth(&all[..start + len]));
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn extending_in_random_pieces_gives_the_same_tree(
            pieces in proptest::collection::vec(0usize..200, 0..12),
        ) {
            let total: usize = pieces.iter().sum();
            let all = leaves(total);
            let mut scratch = Scratch::default();
            let mut many = CompactRange::new();
            let mut at = 0;
            for n in &pieces {
                many.extend(&all[at..at + n], &mut scratch);
                at += n;
                proptest::prop_assert_eq!(many.root(), root(&all[..at]));
            }
            proptest::prop_assert_eq!(many.size(), total as u64);
        }
    }
}
