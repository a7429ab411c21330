//! Signed checkpoints, and the JSON forms of checkpoints, entries and proofs that the API
//! serves and `bulkhead audit verify-proof` checks.
//!
//! A checkpoint is this text (UTF-8, `\n` line ends, the last included):
//!
//! ```text
//! bulkhead audit checkpoint v1
//! log <tenant id | operator>
//! size <decimal>
//! root <64 lowercase hex digits>
//! time <microseconds since the Unix epoch, decimal>
//! ```
//!
//! signed with Ed25519 (RFC 8032) by the server's audit key, alone or in a batch (below). The
//! key id is the first 8 bytes of `SHA-256(public key)` in hex.
//!
//! The server signs the checkpoints of one round together, as a *batch*: each checkpoint's
//! text is a leaf (`SHA-256(0x00 || text)`) in an RFC 6962 tree of [`BATCH_WIDTH`] slots, the
//! round's checkpoints in slots drawn at random and every other slot a random 32-byte value,
//! and one signature covers the tree's root:
//!
//! ```text
//! bulkhead audit checkpoint batch v1
//! width <decimal>
//! root <64 lowercase hex digits>
//! ```
//!
//! Each checkpoint carries its slot and its audit path to that root ([`BatchPath`]), so it
//! still verifies with nothing but the public key; checking a round's checkpoints together
//! costs one Ed25519 verification, not one per log. The width is fixed and the slots random,
//! so a checkpoint says nothing about how many other logs grew in its round or which; the
//! sibling hashes are hashes of other logs' checkpoint texts (their log ids, sizes, roots and
//! times, which a 256-bit root keeps from being guessed) or random padding, indistinguishable.
//! A checkpoint without a batch path is signed alone, over its own text.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::entry::{EntryBody, LogId, split_entry};
use crate::merkle::{
    CompactRange, Hash, all_inclusion_proofs, leaf_hash, node_hash, root_from_inclusion,
    verify_consistency, verify_inclusion,
};
use crate::{hex, parse_hash};

/// The first line of every checkpoint's text.
pub const CHECKPOINT_HEADER: &str = "bulkhead audit checkpoint v1";

/// The first line of a signed batch of checkpoints.
pub const BATCH_HEADER: &str = "bulkhead audit checkpoint batch v1";

/// Slots in a signed batch (a power of two: every audit path has 10 hashes). At most this
/// many checkpoints share one signature; a round with more signs several batches.
pub const BATCH_WIDTH: usize = 1024;

/// "Log `log` had `size` entries with root `root` at `time_us`."
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub log: LogId,
    pub size: u64,
    pub root: Hash,
    pub time_us: i64,
}

impl Checkpoint {
    /// The exact bytes that are signed.
    pub fn signed_text(&self) -> String {
        let mut text = String::with_capacity(192);
        self.write_text(&mut text);
        text
    }

    /// Appends [`Checkpoint::signed_text`] to `out`.
    fn write_text(&self, out: &mut String) {
        use std::fmt::Write;
        let mut root = [0u8; 64];
        // 32 bytes always fit 64 hex digits, which are ASCII.
        let root = match ::hex::encode_to_slice(self.root, &mut root) {
            Ok(()) => std::str::from_utf8(&root).unwrap_or_default(),
            Err(_) => "",
        };
        // Writing to a `String` cannot fail.
        let _ = write!(
            out,
            "{CHECKPOINT_HEADER}\nlog {}\nsize {}\nroot {root}\ntime {}\n",
            self.log, self.size, self.time_us
        );
    }

    /// Its leaf in a batch: `SHA-256(0x00 || signed text)`.
    pub fn batch_leaf(&self) -> Hash {
        self.batch_leaf_with(&mut String::new())
    }

    /// [`Checkpoint::batch_leaf`], writing the text in `buf` (cleared first, reused by the
    /// caller across checkpoints).
    fn batch_leaf_with(&self, buf: &mut String) -> Hash {
        buf.clear();
        self.write_text(buf);
        leaf_hash(buf.as_bytes())
    }
}

/// The signed text of a batch of `width` slots with root `root`.
fn batch_text(width: u64, root: &Hash) -> String {
    format!("{BATCH_HEADER}\nwidth {width}\nroot {}\n", hex(root))
}

/// Where a checkpoint sits in the batch it was signed in: its slot, the batch's width and the
/// audit path from its leaf to the signed root, leaf to root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPath {
    pub index: u64,
    pub width: u64,
    pub path: Vec<Hash>,
}

impl BatchPath {
    /// The stored form: slot and width as 8-byte big-endian numbers, then the path's hashes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 32 * self.path.len());
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.width.to_be_bytes());
        self.path.iter().for_each(|h| out.extend_from_slice(h));
        out
    }

    /// Reads [`BatchPath::to_bytes`]; `None` if malformed.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let (index, rest) = b.split_first_chunk::<8>()?;
        let (width, rest) = rest.split_first_chunk::<8>()?;
        let chunks = rest.chunks_exact(32);
        if !chunks.remainder().is_empty() {
            return None;
        }
        Some(Self {
            index: u64::from_be_bytes(*index),
            width: u64::from_be_bytes(*width),
            path: chunks
                .map(|c| <[u8; 32]>::try_from(c).unwrap_or_default())
                .collect(),
        })
    }
}

/// A checkpoint with the server's signature: over its own text, or (with `batch`) over the
/// root its batch path leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub checkpoint: Checkpoint,
    pub key_id: String,
    pub signature: [u8; 64],
    pub batch: Option<BatchPath>,
}

impl SignedCheckpoint {
    /// The root of the batch it was signed in (`None`: signed alone, or a path that does not
    /// fit).
    pub fn batch_root(&self) -> Option<Hash> {
        let b = self.batch.as_ref()?;
        root_from_inclusion(&self.checkpoint.batch_leaf(), b.index, b.width, &b.path)
    }
}

/// Batch signatures already checked by [`AuditPublicKey::verify_cached`] (a round's
/// checkpoints share one), and the nodes of those batches' trees that checked paths went
/// through, so that the next checkpoint of a batch hashes its path only up to where it meets
/// one checked before.
#[derive(Debug, Default)]
pub struct SignatureCache {
    seen: std::collections::HashSet<(u64, Hash, [u8; 64])>,
    known: std::collections::HashMap<(u64, [u8; 64]), KnownBatch>,
    /// A checkpoint's text, written here for its leaf.
    text: String,
}

/// Batches whose nodes a [`SignatureCache`] keeps at most (each at most `2 × width` hashes,
/// 64 KiB for [`BATCH_WIDTH`]); past it, it starts again.
const KNOWN_BATCHES: usize = 128;

/// Widest batch whose nodes are kept (a power of two, `2^MAX_PATH`); wider ones are checked
/// path by path.
const KNOWN_WIDTH: u64 = 1 << MAX_PATH;

/// The nodes of one signed batch's tree that checked paths went through, by heap position
/// (the root at 1, the children of `k` at `2k` and `2k + 1`, slot `i` at `width + i`): each
/// one hashes up to the root, which the batch's signature covers.
#[derive(Debug)]
struct KnownBatch {
    nodes: Vec<Hash>,
    /// Which of `nodes` are set, a bit each.
    set: Vec<u64>,
}

/// Hashes on a path of a kept width, at most: `log2(KNOWN_WIDTH)`.
const MAX_PATH: usize = 12;

impl KnownBatch {
    fn new(width: u64) -> Self {
        let n = usize::try_from(2 * width).unwrap_or(0);
        Self {
            nodes: vec![[0; 32]; n],
            set: vec![0; n.div_ceil(64)],
        }
    }

    fn get(&self, pos: u64) -> Option<&Hash> {
        let i = usize::try_from(pos).ok()?;
        let bit = self.set.get(i / 64)? >> (i % 64) & 1;
        if bit == 1 { self.nodes.get(i) } else { None }
    }

    fn put(&mut self, pos: u64, h: Hash) {
        let Ok(i) = usize::try_from(pos) else { return };
        if let (Some(n), Some(w)) = (self.nodes.get_mut(i), self.set.get_mut(i / 64)) {
            *n = h;
            *w |= 1 << (i % 64);
        }
    }

    /// Keeps the nodes `hashed` (from heap position `pos` up) and their siblings, the first
    /// hashes of `path`.
    fn keep(&mut self, pos: u64, hashed: &[Hash], path: &[Hash]) {
        for (up, (h, p)) in hashed.iter().zip(path).enumerate() {
            self.put(pos >> up, *h);
            self.put((pos >> up) ^ 1, *p);
        }
    }

    /// Whether `leaf` at heap position `pos` with audit path `path` leads to the root, read
    /// off the nodes kept: hashing up from the leaf until a node kept is reached, from where
    /// the rest of the path must be the siblings kept. `false` when it cannot tell (a node not
    /// kept on the way), not only when it does not. When it does, the nodes hashed on the way
    /// and their siblings are kept too.
    fn vouches(&mut self, leaf: Hash, pos: u64, path: &[Hash]) -> bool {
        if path.len() > MAX_PATH {
            return false;
        }
        let (level, r, hashed) = climb(leaf, pos, path, |at, r| self.get(at) == Some(r));
        let at = pos >> level;
        // Climbed to the root without meeting a node kept (or met one, at the root).
        if self.get(at) != Some(&r) {
            return false;
        }
        let rest = path.get(level..).unwrap_or_default();
        let ok = rest
            .iter()
            .enumerate()
            .all(|(up, p)| self.get((at >> up) ^ 1) == Some(p));
        if ok {
            self.keep(pos, hashed.get(..level).unwrap_or_default(), path);
        }
        ok
    }
}

/// The parent of node `r` at heap position `at` and its sibling `sibling`.
fn parent(at: u64, r: &Hash, sibling: &Hash) -> Hash {
    if at & 1 == 1 {
        node_hash(sibling, r)
    } else {
        node_hash(r, sibling)
    }
}

/// Hashes up a full tree from `leaf` at heap position `pos` along its audit path `path` (at
/// most [`MAX_PATH`] hashes), until `stop(position, node)` holds for the node reached or the
/// path ends: the level stopped at, the node there (the root at the path's end: what
/// [`root_from_inclusion`] computes for a power-of-two width), and the nodes hashed below it,
/// leaf first.
fn climb(
    leaf: Hash,
    pos: u64,
    path: &[Hash],
    mut stop: impl FnMut(u64, &Hash) -> bool,
) -> (usize, Hash, [Hash; MAX_PATH]) {
    let mut hashed = [[0u8; 32]; MAX_PATH];
    let (mut r, mut at) = (leaf, pos);
    for (level, (p, h)) in path.iter().zip(hashed.iter_mut()).enumerate() {
        if stop(at, &r) {
            return (level, r, hashed);
        }
        *h = r;
        r = parent(at, &r, p);
        at >>= 1;
    }
    (path.len().min(MAX_PATH), r, hashed)
}

/// The server's audit signing key.
pub struct AuditKey {
    signing: SigningKey,
    public: AuditPublicKey,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditKey({})", self.public.key_id)
    }
}

impl AuditKey {
    /// The key whose Ed25519 seed is `seed` (derived from the master key by the caller).
    pub fn from_seed(seed: &Zeroizing<[u8; 32]>) -> Self {
        let signing = SigningKey::from_bytes(seed);
        let public = AuditPublicKey::from_verifying(signing.verifying_key());
        Self { signing, public }
    }

    pub fn public(&self) -> &AuditPublicKey {
        &self.public
    }

    /// Signs one checkpoint alone, over its own text (what servers before batch signing
    /// stored; the server now signs every checkpoint in a batch, [`AuditKey::sign_batch`]).
    pub fn sign(&self, checkpoint: Checkpoint) -> SignedCheckpoint {
        let sig = self.signing.sign(checkpoint.signed_text().as_bytes());
        SignedCheckpoint {
            checkpoint,
            key_id: self.public.key_id.clone(),
            signature: sig.to_bytes(),
            batch: None,
        }
    }

    /// Signs `checkpoints` in batches of [`BATCH_WIDTH`] slots (see the module docs): one
    /// signature per batch, whatever the number of checkpoints in it. `rng` draws the slots
    /// and the padding. Returned in the order given.
    pub fn sign_batch(
        &self,
        checkpoints: &[Checkpoint],
        rng: &mut impl rand_core::CryptoRngCore,
    ) -> Vec<SignedCheckpoint> {
        let mut out = Vec::with_capacity(checkpoints.len());
        for chunk in checkpoints.chunks(BATCH_WIDTH) {
            // The batch's randomness in one draw: the padding leaves, then 8 bytes per slot
            // drawn.
            let mut random = vec![0u8; 32 * BATCH_WIDTH + 8 * chunk.len()];
            rng.fill_bytes(&mut random);
            let (padding, draws) = random.split_at(32 * BATCH_WIDTH);
            // Random slots: a partial Fisher–Yates shuffle of 0..width.
            let mut slots: Vec<usize> = (0..BATCH_WIDTH).collect();
            for (i, draw) in draws.chunks_exact(8).enumerate() {
                let draw = u64::from_le_bytes(<[u8; 8]>::try_from(draw).unwrap_or_default());
                let left = (BATCH_WIDTH - i) as u64;
                let j = i + usize::try_from(draw % left).unwrap_or(0);
                slots.swap(i, j);
            }
            let mut leaves: Vec<Hash> = padding
                .chunks_exact(32)
                .map(|c| <[u8; 32]>::try_from(c).unwrap_or_default())
                .collect();
            for (cp, slot) in chunk.iter().zip(&slots) {
                if let Some(l) = leaves.get_mut(*slot) {
                    *l = cp.batch_leaf();
                }
            }
            let (root, paths) = all_inclusion_proofs(&leaves);
            let width = BATCH_WIDTH as u64;
            let signature = self
                .signing
                .sign(batch_text(width, &root).as_bytes())
                .to_bytes();
            for (cp, slot) in chunk.iter().zip(&slots) {
                out.push(SignedCheckpoint {
                    checkpoint: *cp,
                    key_id: self.public.key_id.clone(),
                    signature,
                    batch: Some(BatchPath {
                        index: *slot as u64,
                        width,
                        path: paths.get(*slot).cloned().unwrap_or_default(),
                    }),
                });
            }
        }
        out
    }
}

/// The public half of the audit key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditPublicKey {
    pub key_id: String,
    key: VerifyingKey,
}

impl AuditPublicKey {
    fn from_verifying(key: VerifyingKey) -> Self {
        let digest = Sha256::digest(key.as_bytes());
        let key_id = hex(digest.get(..8).unwrap_or_default());
        Self { key_id, key }
    }

    pub fn from_bytes(bytes: &[u8; 32]) -> Option<Self> {
        VerifyingKey::from_bytes(bytes)
            .ok()
            .map(Self::from_verifying)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        self.key.as_bytes()
    }

    /// Checks a checkpoint's signature (strictly: no malleable or small-order signatures),
    /// over its own text or over the batch root its path leads to.
    pub fn verify(&self, cp: &SignedCheckpoint) -> Result<(), VerifyError> {
        self.verify_cached(cp, &mut SignatureCache::default())
    }

    /// [`AuditPublicKey::verify`], checking each batch's signature once: a checkpoint whose
    /// path leads to a batch root already verified with the same signature costs its path's
    /// hashes only.
    pub fn verify_cached(
        &self,
        cp: &SignedCheckpoint,
        cache: &mut SignatureCache,
    ) -> Result<(), VerifyError> {
        if cp.key_id != self.key_id {
            return Err(VerifyError::UnknownKey(cp.key_id.clone()));
        }
        let strict = |message: &str| {
            self.key
                .verify_strict(message.as_bytes(), &Signature::from_bytes(&cp.signature))
                .map_err(|_| VerifyError::BadSignature)
        };
        let Some(b) = &cp.batch else {
            return strict(&cp.checkpoint.signed_text());
        };
        // A full tree of a width whose nodes are kept: the path's nodes are remembered once
        // its root is checked, and the batch's next paths stop where they meet them.
        let full = b.width.is_power_of_two()
            && b.width <= KNOWN_WIDTH
            && b.index < b.width
            && b.path.len() == b.width.trailing_zeros() as usize;
        if !full {
            let root = cp.batch_root().ok_or(VerifyError::BadSignature)?;
            return self.check_batch(b.width, root, cp.signature, cache, strict);
        }
        let leaf = cp.checkpoint.batch_leaf_with(&mut cache.text);
        let pos = b.width + b.index;
        let key = (b.width, cp.signature);
        if cache
            .known
            .get_mut(&key)
            .is_some_and(|k| k.vouches(leaf, pos, &b.path))
        {
            return Ok(());
        }
        let (_, root, hashed) = climb(leaf, pos, &b.path, |_, _| false);
        self.check_batch(b.width, root, cp.signature, cache, strict)?;
        if cache.known.len() >= KNOWN_BATCHES && !cache.known.contains_key(&key) {
            cache.known.clear();
        }
        let known = cache
            .known
            .entry(key)
            .or_insert_with(|| KnownBatch::new(b.width));
        if known.get(1).is_some_and(|r| *r != root) {
            // Another root under the same signature (not possible short of breaking
            // Ed25519): only the nodes of the one checked last are kept.
            *known = KnownBatch::new(b.width);
        }
        known.put(1, root);
        known.keep(pos, &hashed, &b.path);
        Ok(())
    }

    /// Checks the signature of the batch of `width` slots with root `root` (once per cache).
    fn check_batch(
        &self,
        width: u64,
        root: Hash,
        signature: [u8; 64],
        cache: &mut SignatureCache,
        strict: impl Fn(&str) -> Result<(), VerifyError>,
    ) -> Result<(), VerifyError> {
        let seen = (width, root, signature);
        if !cache.seen.contains(&seen) {
            strict(&batch_text(width, &root))?;
            cache.seen.insert(seen);
        }
        Ok(())
    }

    pub fn to_json(&self) -> KeyJson {
        KeyJson {
            key_id: self.key_id.clone(),
            alg: "Ed25519".into(),
            public_key: B64.encode(self.key.as_bytes()),
        }
    }

    pub fn from_json(k: &KeyJson) -> Result<Self, VerifyError> {
        if k.alg != "Ed25519" {
            return Err(VerifyError::Malformed(
                "key algorithm is not `Ed25519`".into(),
            ));
        }
        let bytes = B64
            .decode(&k.public_key)
            .map_err(|_| VerifyError::Malformed("public key is not base64".into()))?;
        let arr = <[u8; 32]>::try_from(bytes.as_slice())
            .map_err(|_| VerifyError::Malformed("public key is not 32 bytes".into()))?;
        let key = Self::from_bytes(&arr)
            .ok_or_else(|| VerifyError::Malformed("public key is not a valid point".into()))?;
        if key.key_id != k.key_id {
            return Err(VerifyError::Malformed(
                "key id does not match the key".into(),
            ));
        }
        Ok(key)
    }
}

/// Why a checkpoint, entry or proof did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("signed by unknown key `{0}`")]
    UnknownKey(String),
    #[error("checkpoint signature is not valid")]
    BadSignature,
    #[error("the proof names log `{got}`, expected `{want}`")]
    WrongLog { want: String, got: String },
    #[error("the checkpoint is for size {got}, the proof for size {want}")]
    WrongSize { want: u64, got: u64 },
    #[error("the entry is not at the position the proof claims")]
    WrongPosition,
    #[error("the proof does not lead to the checkpoint's root")]
    BadProof,
}

// ---- JSON forms --------------------------------------------------------------------------

/// `GET /v1/audit/keys` item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyJson {
    pub key_id: String,
    pub alg: String,
    /// The 32-byte Ed25519 public key, standard base64.
    pub public_key: String,
}

/// A signed checkpoint on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointJson {
    pub log: String,
    pub size: u64,
    /// Hex.
    pub root: String,
    /// Microseconds since the Unix epoch (what is signed).
    pub time_us: i64,
    pub key_id: String,
    /// Ed25519 signature, standard base64: over the checkpoint text, or with `batch` over the
    /// batch text.
    pub signature: String,
    /// Where the checkpoint sits in the batch the signature covers (absent: signed alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchJson>,
}

/// A checkpoint's place in its signed batch, on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchJson {
    /// Its slot (its leaf's index in the batch tree).
    pub index: u64,
    /// Slots in the batch (the tree's size).
    pub width: u64,
    /// Audit path from its leaf, `SHA-256(0x00 || checkpoint text)`, to the signed root; hex,
    /// leaf to root.
    pub path: Vec<String>,
}

impl SignedCheckpoint {
    pub fn to_json(&self) -> CheckpointJson {
        let c = &self.checkpoint;
        CheckpointJson {
            log: c.log.to_string(),
            size: c.size,
            root: hex(&c.root),
            time_us: c.time_us,
            key_id: self.key_id.clone(),
            signature: B64.encode(self.signature),
            batch: self.batch.as_ref().map(|b| BatchJson {
                index: b.index,
                width: b.width,
                path: b.path.iter().map(|h| hex(h)).collect(),
            }),
        }
    }

    pub fn from_json(j: &CheckpointJson) -> Result<Self, VerifyError> {
        let log = LogId::parse(&j.log)
            .ok_or_else(|| VerifyError::Malformed(format!("unknown log `{}`", j.log)))?;
        let root = parse_hash(&j.root)
            .ok_or_else(|| VerifyError::Malformed("root is not 64 hex digits".into()))?;
        let sig = B64
            .decode(&j.signature)
            .map_err(|_| VerifyError::Malformed("signature is not base64".into()))?;
        let signature = <[u8; 64]>::try_from(sig.as_slice())
            .map_err(|_| VerifyError::Malformed("signature is not 64 bytes".into()))?;
        Ok(Self {
            checkpoint: Checkpoint {
                log,
                size: j.size,
                root,
                time_us: j.time_us,
            },
            key_id: j.key_id.clone(),
            signature,
            batch: match &j.batch {
                None => None,
                Some(b) => Some(BatchPath {
                    index: b.index,
                    width: b.width,
                    path: b
                        .path
                        .iter()
                        .map(|h| {
                            parse_hash(h).ok_or_else(|| {
                                VerifyError::Malformed("batch path hash is not hex".into())
                            })
                        })
                        .collect::<Result<_, _>>()?,
                }),
            },
        })
    }
}

/// An entry on the wire: the decoded fields for people, the exact bytes for verifiers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryJson {
    pub seq: u64,
    pub log: String,
    /// RFC 3339.
    pub time: String,
    pub actor: crate::entry::Actor,
    pub action: String,
    pub resource: String,
    pub outcome: crate::entry::Outcome,
    pub request_id: String,
    pub source: String,
    pub reason: String,
    /// The whole entry as hashed into the tree, standard base64.
    pub entry: String,
    /// `SHA-256(0x00 || entry)`, hex.
    pub leaf_hash: String,
}

impl EntryJson {
    pub fn new(log: LogId, seq: u64, body: &[u8]) -> Result<Self, crate::entry::DecodeError> {
        let b = EntryBody::decode(body)?;
        let bytes = crate::entry::entry_bytes(log, seq, body);
        let time = b
            .time()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        Ok(Self {
            seq,
            log: log.to_string(),
            time,
            actor: b.actor,
            action: b.action,
            resource: b.resource,
            outcome: b.outcome,
            request_id: b.request_id,
            source: b.source,
            reason: b.reason,
            leaf_hash: hex(&leaf_hash(&bytes)),
            entry: B64.encode(bytes),
        })
    }
}

/// `GET /v1/audit/proof/inclusion` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProofJson {
    pub log: String,
    pub seq: u64,
    pub size: u64,
    /// The entry at `seq`, standard base64 (its header names the log and `seq`).
    pub entry: String,
    /// Audit path, hex, leaf to root.
    pub proof: Vec<String>,
    /// The signed checkpoint of size `size` the proof leads to.
    pub checkpoint: CheckpointJson,
}

/// `GET /v1/audit/proof/consistency` response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyProofJson {
    pub log: String,
    pub from: u64,
    pub to: u64,
    pub proof: Vec<String>,
    pub from_checkpoint: CheckpointJson,
    pub to_checkpoint: CheckpointJson,
}

fn parse_proof(p: &[String]) -> Result<Vec<Hash>, VerifyError> {
    p.iter()
        .map(|h| {
            parse_hash(h).ok_or_else(|| VerifyError::Malformed("proof hash is not hex".into()))
        })
        .collect()
}

fn expect_log(want: &LogId, got: &str) -> Result<(), VerifyError> {
    if want.to_string() != got {
        return Err(VerifyError::WrongLog {
            want: want.to_string(),
            got: got.to_owned(),
        });
    }
    Ok(())
}

/// Checks an inclusion proof response with nothing but the public key: the checkpoint's
/// signature, that checkpoint, entry and proof all name `log` (when given) and one size, and
/// that the entry's leaf leads to the signed root. Returns the verified checkpoint.
pub fn verify_inclusion_json(
    p: &InclusionProofJson,
    key: &AuditPublicKey,
    log: Option<LogId>,
) -> Result<SignedCheckpoint, VerifyError> {
    let cp = SignedCheckpoint::from_json(&p.checkpoint)?;
    key.verify(&cp)?;
    let want = log.unwrap_or(cp.checkpoint.log);
    expect_log(&want, &p.log)?;
    expect_log(&want, &cp.checkpoint.log.to_string())?;
    if cp.checkpoint.size != p.size {
        return Err(VerifyError::WrongSize {
            want: p.size,
            got: cp.checkpoint.size,
        });
    }
    let bytes = B64
        .decode(&p.entry)
        .map_err(|_| VerifyError::Malformed("entry is not base64".into()))?;
    let (elog, eseq, _) =
        split_entry(&bytes).map_err(|e| VerifyError::Malformed(format!("entry: {e}")))?;
    if elog != want || eseq != p.seq {
        return Err(VerifyError::WrongPosition);
    }
    let proof = parse_proof(&p.proof)?;
    if !verify_inclusion(
        &leaf_hash(&bytes),
        p.seq,
        p.size,
        &proof,
        &cp.checkpoint.root,
    ) {
        return Err(VerifyError::BadProof);
    }
    Ok(cp)
}

/// Checks a consistency proof response: both checkpoints signed, for `log` (when given) and
/// the claimed sizes, and the smaller tree a prefix of the larger.
pub fn verify_consistency_json(
    p: &ConsistencyProofJson,
    key: &AuditPublicKey,
    log: Option<LogId>,
) -> Result<(), VerifyError> {
    let from = SignedCheckpoint::from_json(&p.from_checkpoint)?;
    let to = SignedCheckpoint::from_json(&p.to_checkpoint)?;
    key.verify(&from)?;
    key.verify(&to)?;
    let want = log.unwrap_or(to.checkpoint.log);
    expect_log(&want, &p.log)?;
    expect_log(&want, &from.checkpoint.log.to_string())?;
    expect_log(&want, &to.checkpoint.log.to_string())?;
    for (claimed, cp) in [(p.from, &from), (p.to, &to)] {
        if cp.checkpoint.size != claimed {
            return Err(VerifyError::WrongSize {
                want: claimed,
                got: cp.checkpoint.size,
            });
        }
    }
    let proof = parse_proof(&p.proof)?;
    if !verify_consistency(
        p.from,
        p.to,
        &from.checkpoint.root,
        &to.checkpoint.root,
        &proof,
    ) {
        return Err(VerifyError::BadProof);
    }
    Ok(())
}

/// Builds an inclusion proof response for the entry at `seq` (with `body`) against the signed
/// checkpoint `cp`, from the log's first `cp.size` leaf hashes. `None` if the position does
/// not fit.
pub fn inclusion_json(
    seq: u64,
    body: &[u8],
    leaves: &[Hash],
    cp: &SignedCheckpoint,
) -> Option<InclusionProofJson> {
    inclusion_json_after(&CompactRange::new(), seq, body, leaves, cp)
}

/// [`inclusion_json`] for a log whose first `prefix.size()` entries were pruned: `leaves` are
/// the leaf hashes from there on, `prefix` the compact range stored with the checkpoint of
/// the prune point.
pub fn inclusion_json_after(
    prefix: &CompactRange,
    seq: u64,
    body: &[u8],
    leaves: &[Hash],
    cp: &SignedCheckpoint,
) -> Option<InclusionProofJson> {
    let kept = usize::try_from(cp.checkpoint.size.checked_sub(prefix.size())?).ok()?;
    let proof = crate::merkle::inclusion_proof_after(prefix, leaves.get(..kept)?, seq)?;
    let log = cp.checkpoint.log;
    Some(InclusionProofJson {
        log: log.to_string(),
        seq,
        size: cp.checkpoint.size,
        entry: B64.encode(crate::entry::entry_bytes(log, seq, body)),
        proof: proof.iter().map(|h| hex(h)).collect(),
        checkpoint: cp.to_json(),
    })
}

/// Builds a consistency proof response between two signed checkpoints of one log, from the
/// log's first `to.size` leaf hashes.
pub fn consistency_json(
    leaves: &[Hash],
    from: &SignedCheckpoint,
    to: &SignedCheckpoint,
) -> Option<ConsistencyProofJson> {
    consistency_json_after(&CompactRange::new(), leaves, from, to)
}

/// [`consistency_json`] for a log whose first `prefix.size()` entries were pruned (see
/// [`inclusion_json_after`]); `from` must not be inside the pruned prefix.
pub fn consistency_json_after(
    prefix: &CompactRange,
    leaves: &[Hash],
    from: &SignedCheckpoint,
    to: &SignedCheckpoint,
) -> Option<ConsistencyProofJson> {
    let kept = usize::try_from(to.checkpoint.size.checked_sub(prefix.size())?).ok()?;
    let proof =
        crate::merkle::consistency_proof_after(prefix, leaves.get(..kept)?, from.checkpoint.size)?;
    Some(ConsistencyProofJson {
        log: to.checkpoint.log.to_string(),
        from: from.checkpoint.size,
        to: to.checkpoint.size,
        proof: proof.iter().map(|h| hex(h)).collect(),
        from_checkpoint: from.to_json(),
        to_checkpoint: to.to_json(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulkhead_core::TenantId;

    fn key() -> AuditKey {
        AuditKey::from_seed(&Zeroizing::new([7u8; 32]))
    }

    #[test]
    fn signatures_verify_and_any_change_breaks_them() {
        let k = key();
        let cp = Checkpoint {
            log: LogId::Tenant(TenantId::generate()),
            size: 3,
            root: [1; 32],
            time_us: 42,
        };
        let s = k.sign(cp);
        k.public().verify(&s).unwrap();
        let back = SignedCheckpoint::from_json(&s.to_json()).unwrap();
        assert_eq!(back, s);
        let key_back = AuditPublicKey::from_json(&k.public().to_json()).unwrap();
        assert_eq!(&key_back, k.public());
        for change in [
            |c: &mut Checkpoint| c.size += 1,
            |c: &mut Checkpoint| c.root[0] ^= 1,
            |c: &mut Checkpoint| c.time_us += 1,
            |c: &mut Checkpoint| c.log = LogId::Operator,
        ] {
            let mut bad = s.clone();
            change(&mut bad.checkpoint);
            assert_eq!(k.public().verify(&bad), Err(VerifyError::BadSignature));
        }
        let mut bad = s.clone();
        bad.signature[10] ^= 1;
        assert_eq!(k.public().verify(&bad), Err(VerifyError::BadSignature));
        let other = AuditKey::from_seed(&Zeroizing::new([8u8; 32]));
        assert!(matches!(
            other.public().verify(&s),
            Err(VerifyError::UnknownKey(_))
        ));
    }

    fn checkpoints(n: usize) -> Vec<Checkpoint> {
        (0..n)
            .map(|i| Checkpoint {
                log: LogId::Tenant(TenantId::generate()),
                size: i as u64 + 1,
                root: [i as u8; 32],
                time_us: 42,
            })
            .collect()
    }

    #[test]
    fn a_batch_signs_each_checkpoint_and_any_change_breaks_it() {
        let k = key();
        let mut rng = rand_core::OsRng;
        for n in [1, 2, 3, 700, BATCH_WIDTH, BATCH_WIDTH + 5] {
            let cps = checkpoints(n);
            let signed = k.sign_batch(&cps, &mut rng);
            assert_eq!(signed.len(), n);
            let mut cache = SignatureCache::default();
            for (s, cp) in signed.iter().zip(&cps) {
                assert_eq!(&s.checkpoint, cp);
                let b = s.batch.as_ref().unwrap();
                // Fixed width: the path says nothing of how many logs shared the batch.
                assert_eq!((b.width, b.path.len()), (BATCH_WIDTH as u64, 10));
                k.public().verify(s).unwrap();
                k.public().verify_cached(s, &mut cache).unwrap();
                assert_eq!(SignedCheckpoint::from_json(&s.to_json()).unwrap(), *s);
            }
            // One signature per batch.
            assert_eq!(cache.seen.len(), n.div_ceil(BATCH_WIDTH));
        }
        let signed = k.sign_batch(&checkpoints(3), &mut rng);
        let s = &signed[0];
        type Change = Box<dyn Fn(&mut SignedCheckpoint)>;
        let mut changes: Vec<Change> = vec![
            Box::new(|c| c.checkpoint.size += 1),
            Box::new(|c| c.checkpoint.root[0] ^= 1),
            Box::new(|c| c.checkpoint.time_us += 1),
            Box::new(|c| c.checkpoint.log = LogId::Operator),
            Box::new(|c| c.signature[3] ^= 1),
            Box::new(|c| c.batch.as_mut().unwrap().path[4][0] ^= 1),
            Box::new(|c| c.batch.as_mut().unwrap().index ^= 1),
            Box::new(|c| c.batch.as_mut().unwrap().width = 2048),
            Box::new(|c| {
                c.batch.as_mut().unwrap().path.pop();
            }),
            // Signed alone, it is not a valid checkpoint: the signature is the batch's.
            Box::new(|c| c.batch = None),
        ];
        // Another checkpoint's place in the same batch.
        let other = signed[1].batch.clone();
        changes.push(Box::new(move |c| c.batch = other.clone()));
        for (i, change) in changes.iter().enumerate() {
            let mut bad = s.clone();
            change(&mut bad);
            assert_eq!(
                k.public().verify(&bad),
                Err(VerifyError::BadSignature),
                "{i}"
            );
            // A cache that holds the genuine batch vouches for nothing changed either.
            let mut cache = SignatureCache::default();
            k.public().verify_cached(&signed[2], &mut cache).unwrap();
            assert_eq!(
                k.public().verify_cached(&bad, &mut cache),
                Err(VerifyError::BadSignature),
                "{i}"
            );
        }
        // A lone signature is not a batch's either.
        let alone = k.sign(s.checkpoint);
        let mut bad = alone.clone();
        bad.batch = s.batch.clone();
        assert_eq!(k.public().verify(&bad), Err(VerifyError::BadSignature));
        assert_eq!(
            BatchPath::from_bytes(&s.batch.as_ref().unwrap().to_bytes()),
            s.batch
        );
        assert_eq!(BatchPath::from_bytes(&[0u8; 15]), None);
        assert_eq!(BatchPath::from_bytes(&[0u8; 17]), None);
    }

    #[test]
    fn the_signed_text_is_the_documented_one() {
        let cp = Checkpoint {
            log: LogId::Operator,
            size: 3,
            root: [0xab; 32],
            time_us: -42,
        };
        let text = format!(
            "bulkhead audit checkpoint v1\nlog operator\nsize 3\nroot {}\ntime -42\n",
            "ab".repeat(32)
        );
        assert_eq!(cp.signed_text(), text);
        assert_eq!(cp.batch_leaf(), leaf_hash(text.as_bytes()));
        // A buffer reused from a longer text is cleared first.
        let mut buf = "x".repeat(500);
        assert_eq!(cp.batch_leaf_with(&mut buf), leaf_hash(text.as_bytes()));
        assert_eq!(buf, text);
    }

    #[test]
    fn nodes_kept_vouch_for_their_batch_and_for_nothing_changed() {
        let k = key();
        let signed = k.sign_batch(&checkpoints(BATCH_WIDTH + 300), &mut rand_core::OsRng);
        let mut cache = SignatureCache::default();
        for s in &signed {
            k.public().verify_cached(s, &mut cache).unwrap();
        }
        assert_eq!((cache.seen.len(), cache.known.len()), (2, 2));
        // Every path hashed on its way to nodes kept is kept in turn: all 2,047 nodes of the
        // full batch are kept (its 1,024 slots were all checked).
        let full = &cache.known[&(BATCH_WIDTH as u64, signed[0].signature)];
        let kept: u32 = full.set.iter().map(|w| w.count_ones()).sum();
        assert_eq!(kept, 2 * BATCH_WIDTH as u32 - 1);
        // Once a batch's paths are checked, its nodes alone vouch for each of them again.
        for s in &signed {
            let b = s.batch.as_ref().unwrap();
            let known = cache.known.get_mut(&(b.width, s.signature)).unwrap();
            assert!(known.vouches(s.checkpoint.batch_leaf(), b.width + b.index, &b.path));
            k.public().verify_cached(s, &mut cache).unwrap();
        }
        // With every node of both batches kept, any change still fails.
        for i in [0, 1, 513, BATCH_WIDTH + 7] {
            let s = &signed[i];
            let other_batch = signed[if i < BATCH_WIDTH { BATCH_WIDTH } else { 0 }].signature;
            let neighbour = signed[i + 1].batch.clone();
            type Change = Box<dyn Fn(&mut SignedCheckpoint)>;
            let mut changes: Vec<Change> = vec![
                Box::new(|c| c.checkpoint.size += 1),
                Box::new(|c| c.checkpoint.root[31] ^= 1),
                Box::new(|c| c.checkpoint.time_us -= 1),
                Box::new(|c| c.checkpoint.log = LogId::Operator),
                Box::new(|c| c.batch.as_mut().unwrap().index ^= 1),
                Box::new(|c| c.batch.as_mut().unwrap().index ^= 512),
                Box::new(move |c| c.batch = neighbour.clone()),
                Box::new(|c| c.signature[0] ^= 1),
                Box::new(move |c| c.signature = other_batch),
                Box::new(|c| {
                    c.batch.as_mut().unwrap().path.pop();
                }),
            ];
            for level in 0..10 {
                changes.push(Box::new(move |c| {
                    c.batch.as_mut().unwrap().path[level][level] ^= 0x40;
                }));
            }
            for (n, change) in changes.iter().enumerate() {
                let mut bad = s.clone();
                change(&mut bad);
                assert_ne!(bad, *s);
                assert_eq!(
                    k.public().verify_cached(&bad, &mut cache),
                    Err(VerifyError::BadSignature),
                    "checkpoint {i}, change {n}"
                );
            }
        }
        // The genuine ones still verify after the failures.
        for s in &signed {
            k.public().verify_cached(s, &mut cache).unwrap();
        }
    }

    #[test]
    fn a_cache_past_its_bound_starts_again_and_still_checks_every_batch() {
        let k = key();
        let cps = checkpoints(2);
        let batches: Vec<Vec<SignedCheckpoint>> = (0..KNOWN_BATCHES + 3)
            .map(|_| k.sign_batch(&cps, &mut rand_core::OsRng))
            .collect();
        let mut cache = SignatureCache::default();
        for round in 0..2 {
            for b in &batches {
                for s in b {
                    k.public().verify_cached(s, &mut cache).unwrap();
                    let mut bad = s.clone();
                    bad.batch.as_mut().unwrap().path[9][0] ^= 1;
                    assert_eq!(
                        k.public().verify_cached(&bad, &mut cache),
                        Err(VerifyError::BadSignature),
                        "round {round}"
                    );
                }
                assert!(cache.known.len() <= KNOWN_BATCHES);
            }
        }
        assert_eq!(cache.seen.len(), KNOWN_BATCHES + 3);
    }

    #[test]
    fn slots_are_drawn_at_random() {
        let k = key();
        let cps = checkpoints(2);
        let slots: std::collections::HashSet<u64> = (0..20)
            .map(|_| {
                k.sign_batch(&cps, &mut rand_core::OsRng)[0]
                    .batch
                    .as_ref()
                    .unwrap()
                    .index
            })
            .collect();
        assert!(slots.len() > 1, "{slots:?}");
    }
}
