//! Audit entries and their canonical encoding.
//!
//! An entry is stored in two parts: its **body** (time, actor, action, resource, outcome,
//! request id, source, reason), encoded when the event happens, and its **position** (log and
//! sequence number), given when the log's sequencer places it. The bytes that are hashed into
//! the tree are the whole entry:
//!
//! ```text
//! entry = "BHA1" || log (16 bytes: tenant id, or zeros for the operator log)
//!                || seq (u64, big-endian) || body
//! body  = time (i64 big-endian, microseconds since the Unix epoch)
//!      || kind (u8) || subject || roles || action || resource || outcome || request_id
//!      || source || reason                 (each text: u16 big-endian length, then UTF-8)
//! ```
//!
//! Texts are cut to [`MAX_TEXT`] bytes (at a character boundary) when a body is made, so an
//! encoding never fails. Entries never hold record contents, tokens or key material.

use bulkhead_core::{TenantId, Timestamp};
use serde::{Deserialize, Serialize};

use crate::merkle::Hash;

/// Leads every entry's bytes: format and version.
pub const MAGIC: &[u8; 4] = b"BHA1";
/// Length of the entry header: magic, log, sequence number.
pub const HEADER_LEN: usize = 4 + 16 + 8;
/// Longest text field, in bytes.
pub const MAX_TEXT: usize = 512;

/// Which log an entry belongs to: one per tenant, and one for the operator plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LogId {
    Operator,
    Tenant(TenantId),
}

impl LogId {
    /// The 16 bytes that name the log inside entries and checkpoints. Tenant ids are UUIDv7,
    /// never all zeros, so the operator log's zeros cannot collide with a tenant.
    pub fn to_bytes(self) -> [u8; 16] {
        match self {
            LogId::Operator => [0; 16],
            LogId::Tenant(t) => *t.as_bytes(),
        }
    }

    pub fn from_bytes(b: [u8; 16]) -> Self {
        if b == [0; 16] {
            LogId::Operator
        } else {
            LogId::Tenant(TenantId::from_bytes(b))
        }
    }

    /// `operator`, or the tenant id.
    pub fn parse(s: &str) -> Option<Self> {
        if s == "operator" {
            return Some(LogId::Operator);
        }
        TenantId::parse(s).ok().map(LogId::Tenant)
    }
}

impl std::fmt::Display for LogId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogId::Operator => f.write_str("operator"),
            LogId::Tenant(t) => write!(f, "{t}"),
        }
    }
}

/// Who acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    /// A caller with a verified tenant token (subject and roles from the token).
    Tenant,
    /// The operator credential.
    Operator,
    /// A caller whose credential was not accepted (nothing from it is trusted or recorded).
    Anonymous,
    /// Bulkhead itself (the checkpointer, retention).
    System,
}

impl ActorKind {
    fn code(self) -> u8 {
        match self {
            ActorKind::Tenant => 1,
            ActorKind::Operator => 2,
            ActorKind::Anonymous => 3,
            ActorKind::System => 4,
        }
    }

    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => ActorKind::Tenant,
            2 => ActorKind::Operator,
            3 => ActorKind::Anonymous,
            4 => ActorKind::System,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub kind: ActorKind,
    /// The token's subject for tenant callers; empty otherwise.
    pub subject: String,
    /// The token's roles for tenant callers, comma-separated; empty otherwise.
    pub roles: String,
}

impl Actor {
    pub fn tenant(subject: &str, roles: &str) -> Self {
        Self {
            kind: ActorKind::Tenant,
            subject: cut(subject),
            roles: cut(roles),
        }
    }

    pub fn operator() -> Self {
        Self {
            kind: ActorKind::Operator,
            subject: String::new(),
            roles: String::new(),
        }
    }

    pub fn anonymous() -> Self {
        Self {
            kind: ActorKind::Anonymous,
            subject: String::new(),
            roles: String::new(),
        }
    }

    pub fn system() -> Self {
        Self {
            kind: ActorKind::System,
            subject: String::new(),
            roles: String::new(),
        }
    }
}

/// How the action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    /// Authorization refused the action.
    Denied,
    /// The credential was refused (the reason class says why).
    Rejected,
    NotFound,
    /// A version or idempotency conflict.
    Conflict,
    /// Invalid input.
    Invalid,
    /// A limit (rate, quota, size) stopped it.
    Limited,
    /// A server-side failure.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Denied => "denied",
            Outcome::Rejected => "rejected",
            Outcome::NotFound => "not_found",
            Outcome::Conflict => "conflict",
            Outcome::Invalid => "invalid",
            Outcome::Limited => "limited",
            Outcome::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "success" => Outcome::Success,
            "denied" => Outcome::Denied,
            "rejected" => Outcome::Rejected,
            "not_found" => Outcome::NotFound,
            "conflict" => Outcome::Conflict,
            "invalid" => Outcome::Invalid,
            "limited" => Outcome::Limited,
            "failed" => Outcome::Failed,
            _ => return None,
        })
    }
}

/// What happened: everything of an entry except its place in a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryBody {
    /// Microseconds since the Unix epoch.
    pub time_us: i64,
    pub actor: Actor,
    /// E.g. `record.read`, `tenant.create`, `auth.token`.
    pub action: String,
    /// E.g. `collections/orders/records/<id>`; never contents.
    pub resource: String,
    pub outcome: Outcome,
    pub request_id: String,
    /// The client's address as the server saw it.
    pub source: String,
    /// A reason class (`expired`, `bad-signature`, `role`…), never a secret.
    pub reason: String,
}

/// Errors reading stored entry bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("entry is truncated")]
    Truncated,
    #[error("entry has an unknown format")]
    Format,
    #[error("entry has trailing bytes")]
    Trailing,
}

/// Cuts `s` to at most [`MAX_TEXT`] bytes at a character boundary.
pub fn cut(s: &str) -> String {
    if s.len() <= MAX_TEXT {
        return s.to_owned();
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default().to_owned()
}

impl EntryBody {
    /// A body at `time`, with every text cut to [`MAX_TEXT`].
    #[allow(
        clippy::too_many_arguments,
        reason = "one field each, named at the call site"
    )]
    pub fn new(
        time: Timestamp,
        actor: Actor,
        action: &str,
        resource: &str,
        outcome: Outcome,
        request_id: &str,
        source: &str,
        reason: &str,
    ) -> Self {
        Self {
            time_us: i64::try_from(time.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX),
            actor,
            action: cut(action),
            resource: cut(resource),
            outcome,
            request_id: cut(request_id),
            source: cut(source),
            reason: cut(reason),
        }
    }

    pub fn time(&self) -> Timestamp {
        Timestamp::from_unix_timestamp_nanos(i128::from(self.time_us) * 1000)
            .unwrap_or(Timestamp::UNIX_EPOCH)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.resource.len());
        out.extend_from_slice(&self.time_us.to_be_bytes());
        out.push(self.actor.kind.code());
        for text in [
            self.actor.subject.as_str(),
            self.actor.roles.as_str(),
            self.action.as_str(),
            self.resource.as_str(),
            self.outcome.as_str(),
            self.request_id.as_str(),
            self.source.as_str(),
            self.reason.as_str(),
        ] {
            let bytes = text.as_bytes();
            let bytes = bytes.get(..MAX_TEXT).unwrap_or(bytes);
            let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(bytes);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader(bytes);
        let time_us = i64::from_be_bytes(r.array()?);
        let [kind] = r.array::<1>()?;
        let kind = ActorKind::from_code(kind).ok_or(DecodeError::Format)?;
        let subject = r.text()?;
        let roles = r.text()?;
        let action = r.text()?;
        let resource = r.text()?;
        let outcome = Outcome::parse(&r.text()?).ok_or(DecodeError::Format)?;
        let request_id = r.text()?;
        let source = r.text()?;
        let reason = r.text()?;
        if !r.0.is_empty() {
            return Err(DecodeError::Trailing);
        }
        Ok(Self {
            time_us,
            actor: Actor {
                kind,
                subject,
                roles,
            },
            action,
            resource,
            outcome,
            request_id,
            source,
            reason,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        <[u8; N]>::try_from(self.take(N)?).map_err(|_| DecodeError::Truncated)
    }

    fn text(&mut self) -> Result<String, DecodeError> {
        let len = usize::from(u16::from_be_bytes(self.array()?));
        let b = self.take(len)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Format)
    }
}

/// The entry header: magic, log, sequence number.
#[inline]
pub fn header(log: LogId, seq: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    let (magic, rest) = h.split_at_mut(4);
    magic.copy_from_slice(MAGIC);
    let (l, s) = rest.split_at_mut(16);
    l.copy_from_slice(&log.to_bytes());
    s.copy_from_slice(&seq.to_be_bytes());
    h
}

/// The whole entry's bytes, as hashed into the tree.
pub fn entry_bytes(log: LogId, seq: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&header(log, seq));
    out.extend_from_slice(body);
    out
}

/// The leaf hash of the entry at `seq` of `log` with `body`: `SHA-256(0x00 || entry)`, without
/// copying the body.
#[inline]
pub fn entry_leaf(log: LogId, seq: u64, body: &[u8]) -> Hash {
    crate::sha::digest(&[&[0x00], &header(log, seq), body])
}

/// Adds the leaf hash of the entry at `seq` of `log` with `body` (what [`entry_leaf`] hashes)
/// to a batch hashed later.
#[inline]
pub fn pad_entry_leaf(batch: &mut crate::sha::Batch, log: LogId, seq: u64, body: &[u8]) {
    batch.push(&[&[0x00], &header(log, seq), body]);
}

/// Splits whole entry bytes into log, sequence number and body.
pub fn split_entry(bytes: &[u8]) -> Result<(LogId, u64, &[u8]), DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(DecodeError::Truncated);
    }
    let (head, body) = bytes.split_at(HEADER_LEN);
    let (magic, rest) = head.split_at(4);
    if magic != MAGIC {
        return Err(DecodeError::Format);
    }
    let (log, seq) = rest.split_at(16);
    let log = <[u8; 16]>::try_from(log).map_err(|_| DecodeError::Truncated)?;
    let seq = <[u8; 8]>::try_from(seq).map_err(|_| DecodeError::Truncated)?;
    Ok((LogId::from_bytes(log), u64::from_be_bytes(seq), body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::leaf_hash;

    fn body() -> EntryBody {
        EntryBody::new(
            Timestamp::from_unix_timestamp(1_800_000_000).unwrap(),
            Actor::tenant("alice", "member"),
            "record.read",
            "collections/orders/records/0190",
            Outcome::Success,
            "req-1",
            "127.0.0.1",
            "",
        )
    }

    #[test]
    fn body_round_trips_and_leaf_binds_log_and_seq() {
        let b = body();
        let enc = b.encode();
        assert_eq!(EntryBody::decode(&enc).unwrap(), b);
        let t = LogId::Tenant(TenantId::generate());
        let bytes = entry_bytes(t, 7, &enc);
        assert_eq!(entry_leaf(t, 7, &enc), leaf_hash(&bytes));
        assert_eq!(split_entry(&bytes).unwrap(), (t, 7, enc.as_slice()));
        assert_ne!(entry_leaf(t, 8, &enc), entry_leaf(t, 7, &enc));
        let other = LogId::Tenant(TenantId::generate());
        assert_ne!(entry_leaf(other, 7, &enc), entry_leaf(t, 7, &enc));
        assert_ne!(entry_leaf(LogId::Operator, 7, &enc), entry_leaf(t, 7, &enc));
        // Hashed in a batch: the same leaves.
        let mut batch = crate::sha::Batch::default();
        pad_entry_leaf(&mut batch, t, 7, &enc);
        pad_entry_leaf(&mut batch, LogId::Operator, 8, &enc);
        let mut out = Vec::new();
        batch.hash_into(&mut out);
        assert_eq!(
            out,
            vec![entry_leaf(t, 7, &enc), entry_leaf(LogId::Operator, 8, &enc)]
        );
    }

    #[test]
    fn decode_refuses_damaged_bytes() {
        let enc = body().encode();
        for cut_at in 0..enc.len() {
            assert!(EntryBody::decode(&enc[..cut_at]).is_err(), "{cut_at}");
        }
        let mut long = enc.clone();
        long.push(0);
        assert_eq!(EntryBody::decode(&long), Err(DecodeError::Trailing));
        assert!(split_entry(b"XXXX").is_err());
    }

    #[test]
    fn long_texts_are_cut_at_a_character_boundary() {
        let s = "é".repeat(MAX_TEXT);
        let c = cut(&s);
        assert!(c.len() <= MAX_TEXT && s.starts_with(&c));
        assert_eq!(LogId::parse("operator"), Some(LogId::Operator));
        let t = TenantId::generate();
        assert_eq!(LogId::parse(&t.to_string()), Some(LogId::Tenant(t)));
        assert_eq!(
            LogId::from_bytes(LogId::Operator.to_bytes()),
            LogId::Operator
        );
    }
}
