//! Signed checkpoints, and the JSON forms of checkpoints, entries and proofs that the API
//! serves and `bulkhead audit verify-proof` checks.
//!
//! The signed message of a checkpoint is this text (UTF-8, `\n` line ends, the last included):
//!
//! ```text
//! bulkhead audit checkpoint v1
//! log <tenant id | operator>
//! size <decimal>
//! root <64 lowercase hex digits>
//! time <microseconds since the Unix epoch, decimal>
//! ```
//!
//! signed with Ed25519 (RFC 8032) by the server's audit key. The key id is the first 8 bytes
//! of `SHA-256(public key)` in hex.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::entry::{EntryBody, LogId, split_entry};
use crate::merkle::{CompactRange, Hash, leaf_hash, verify_consistency, verify_inclusion};
use crate::{hex, parse_hash};

/// The first line of every signed checkpoint.
pub const CHECKPOINT_HEADER: &str = "bulkhead audit checkpoint v1";

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
        format!(
            "{CHECKPOINT_HEADER}\nlog {}\nsize {}\nroot {}\ntime {}\n",
            self.log,
            self.size,
            hex(&self.root),
            self.time_us
        )
    }
}

/// A checkpoint with the server's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub checkpoint: Checkpoint,
    pub key_id: String,
    pub signature: [u8; 64],
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

    pub fn sign(&self, checkpoint: Checkpoint) -> SignedCheckpoint {
        let sig = self.signing.sign(checkpoint.signed_text().as_bytes());
        SignedCheckpoint {
            checkpoint,
            key_id: self.public.key_id.clone(),
            signature: sig.to_bytes(),
        }
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

    /// Checks a checkpoint's signature (strictly: no malleable or small-order signatures).
    pub fn verify(&self, cp: &SignedCheckpoint) -> Result<(), VerifyError> {
        if cp.key_id != self.key_id {
            return Err(VerifyError::UnknownKey(cp.key_id.clone()));
        }
        let sig = Signature::from_bytes(&cp.signature);
        self.key
            .verify_strict(cp.checkpoint.signed_text().as_bytes(), &sig)
            .map_err(|_| VerifyError::BadSignature)
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
    /// Ed25519 signature over the checkpoint text, standard base64.
    pub signature: String,
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
}
