//! The audit service: recording entries, the checkpointer, the tenant- and operator-facing
//! reads (entries, checkpoints, proofs), retention and the offline verifier.
//!
//! INVARIANT: a tenant's log is reached with an [`AuditScope`] made from that tenant's verified
//! context ([`crate::Store::tenant_audit`]), or through the operator door
//! ([`crate::Store::operator_audit`]), which only operator-authenticated paths call.

use std::collections::BTreeSet;
use std::sync::Arc;

use bulkhead_audit::checkpoint::{
    ConsistencyProofJson, EntryJson, InclusionProofJson, consistency_json, inclusion_json,
};
use bulkhead_audit::entry::entry_leaf;
use bulkhead_audit::{
    Actor, AuditKey, AuditPublicKey, Checkpoint, CompactRange, EntryBody, LogId, Outcome,
    SignedCheckpoint,
};
use bulkhead_core::{TenantContext, Timestamp};
use serde::Serialize;

use crate::StoreError;
use crate::port::{AuditScope, CheckpointRow, RecordBackend};

/// Entries read per storage round trip by the checkpointer and the verifier.
const CHUNK: usize = 4096;
/// Most entries a listing looks at per request (so a filter that matches little stays cheap).
const MAX_SCAN: usize = 8192;

/// Where an event came from, for its entry. Never holds secrets.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    /// The `x-request-id` of the request.
    pub request_id: String,
    /// The client's address as the server saw it.
    pub source: String,
}

/// Audit settings.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// Off: nothing is recorded (for benchmarks that compare; not for production).
    pub enabled: bool,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// The audit service. One per [`crate::Store`].
pub struct Audit {
    backend: Arc<dyn RecordBackend>,
    key: AuditKey,
    cfg: AuditConfig,
    /// Logs this instance appended to since the checkpointer last looked.
    dirty: parking_lot::Mutex<BTreeSet<LogId>>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("key", &self.key)
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// One page of a log.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<EntryJson>,
    /// Pass as `cursor` to continue; absent at the end of the log.
    pub next_cursor: Option<String>,
}

/// A filter for listing a log.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
    pub action: Option<String>,
}

/// Why a log failed verification: the first bad position, and what was wrong there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("log `{log}`: {what} (at {at})")]
pub struct VerifyFailure {
    pub log: String,
    /// `entry <seq>` or `checkpoint <size>`.
    pub at: String,
    pub what: String,
}

/// What verifying one log covered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub entries: u64,
    pub checkpoints: u64,
    /// Bytes of entries hashed.
    pub bytes: u64,
    /// Entries pruned by retention before the first kept one.
    pub pruned: u64,
}

fn micros(t: Timestamp) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

fn to_signed(log: LogId, row: &CheckpointRow) -> Result<SignedCheckpoint, StoreError> {
    let signature = <[u8; 64]>::try_from(row.signature.as_slice())
        .map_err(|_| StoreError::Integrity(format!("checkpoint {} of log {log}", row.size)))?;
    Ok(SignedCheckpoint {
        checkpoint: Checkpoint {
            log,
            size: row.size,
            root: row.root,
            time_us: row.time_us,
        },
        key_id: row.key_id.clone(),
        signature,
    })
}

impl Audit {
    pub(crate) fn new(backend: Arc<dyn RecordBackend>, key: AuditKey, cfg: AuditConfig) -> Self {
        Self {
            backend,
            key,
            cfg,
            dirty: parking_lot::Mutex::new(BTreeSet::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.cfg.enabled
    }

    /// The public half of the key checkpoints are signed with.
    pub fn public_key(&self) -> &AuditPublicKey {
        self.key.public()
    }

    pub(crate) fn mark(&self, log: LogId) {
        self.dirty.lock().insert(log);
    }

    /// Appends one entry, durably. Used by every path that is not a data change (those append
    /// in their own transaction).
    pub(crate) async fn append(
        &self,
        scope: &AuditScope,
        body: &EntryBody,
    ) -> Result<(), StoreError> {
        if !self.cfg.enabled {
            return Ok(());
        }
        self.backend.audit_append(scope, &[body.encode()]).await?;
        self.mark(scope.log());
        Ok(())
    }

    /// Records an operator-plane event in the operator log.
    pub async fn record_operator(
        &self,
        action: &str,
        resource: &str,
        outcome: Outcome,
        meta: &RequestMeta,
        reason: &str,
    ) -> Result<(), StoreError> {
        let body = EntryBody::new(
            Timestamp::now_utc(),
            Actor::operator(),
            action,
            resource,
            outcome,
            &meta.request_id,
            &meta.source,
            reason,
        );
        self.append(&AuditScope::new(LogId::Operator), &body).await
    }

    /// Records an event of a credential that was refused (the reason class only, never the
    /// token). It goes to the operator log: a refused token's tenant is not verified, so it
    /// must not be able to write into that tenant's log.
    pub async fn record_rejected(
        &self,
        action: &str,
        reason: &str,
        meta: &RequestMeta,
    ) -> Result<(), StoreError> {
        let body = EntryBody::new(
            Timestamp::now_utc(),
            Actor::anonymous(),
            action,
            "",
            Outcome::Rejected,
            &meta.request_id,
            &meta.source,
            reason,
        );
        self.append(&AuditScope::new(LogId::Operator), &body).await
    }

    /// Records an event of a verified tenant caller in its own tenant's log: authorization
    /// denials, limit events (`outcome` [`Outcome::Limited`], `reason` the limit's name), and
    /// anything else that happens outside the record service.
    pub async fn record(
        &self,
        ctx: &TenantContext,
        action: &str,
        resource: &str,
        outcome: Outcome,
        meta: &RequestMeta,
        reason: &str,
    ) -> Result<(), StoreError> {
        let body = EntryBody::new(
            Timestamp::now_utc(),
            actor_of(ctx),
            action,
            resource,
            outcome,
            &meta.request_id,
            &meta.source,
            reason,
        );
        self.append(&AuditScope::new(LogId::Tenant(ctx.tenant())), &body)
            .await
    }

    /// Records an operator action in a tenant's own log too (creation, suspension,
    /// offboarding's tombstone), so the tenant sees what was done to it.
    pub(crate) async fn record_in_tenant_log(
        &self,
        log: LogId,
        action: &str,
        outcome: Outcome,
        meta: &RequestMeta,
    ) -> Result<(), StoreError> {
        let body = EntryBody::new(
            Timestamp::now_utc(),
            Actor::operator(),
            action,
            &log.to_string(),
            outcome,
            &meta.request_id,
            &meta.source,
            "",
        );
        self.append(&AuditScope::new(log), &body).await
    }

    // ---- the checkpointer --------------------------------------------------------------------

    /// Places the log's pending entries (gives them sequence numbers) without signing;
    /// returns the log's size.
    pub async fn place(&self, scope: &AuditScope) -> Result<u64, StoreError> {
        Ok(self.backend.audit_sequence(scope).await?)
    }

    /// Places the log's pending entries and, if it grew (or has no checkpoint yet), signs and
    /// stores a checkpoint of it. Every entry's leaf is recomputed from its body before it is
    /// signed over, so bytes changed in storage are never vouched for.
    pub async fn checkpoint(
        &self,
        scope: &AuditScope,
    ) -> Result<Option<SignedCheckpoint>, StoreError> {
        let log = scope.log();
        let size = self.backend.audit_sequence(scope).await?;
        let last = self.backend.audit_checkpoint(scope, None).await?;
        let mut range = match &last {
            Some(cp) if cp.size == size => return Ok(None),
            Some(cp) if cp.size > size => {
                return Err(StoreError::Integrity(format!(
                    "audit log {log} has {size} entries but a checkpoint of {}",
                    cp.size
                )));
            }
            Some(cp) => CompactRange::from_bytes(cp.size, &cp.frontier).ok_or_else(|| {
                StoreError::Integrity(format!("frontier of checkpoint {} of log {log}", cp.size))
            })?,
            None => CompactRange::new(),
        };
        if let Some(cp) = &last
            && range.root() != cp.root
        {
            return Err(StoreError::Integrity(format!(
                "frontier of checkpoint {} of log {log} does not match its root",
                cp.size
            )));
        }
        while range.size() < size {
            let rows = self
                .backend
                .audit_entries(scope, range.size(), CHUNK)
                .await?;
            if rows.is_empty() {
                break;
            }
            for r in rows {
                if r.seq != range.size() || entry_leaf(log, r.seq, &r.body) != r.leaf {
                    return Err(StoreError::Integrity(format!(
                        "audit log {log}: entry {} does not match its position or hash",
                        range.size()
                    )));
                }
                if r.seq >= size {
                    break;
                }
                range.push(r.leaf);
            }
        }
        if range.size() != size {
            return Err(StoreError::Integrity(format!(
                "audit log {log}: entries end at {} before its size {size}",
                range.size()
            )));
        }
        let signed = self.key.sign(Checkpoint {
            log,
            size,
            root: range.root(),
            time_us: micros(Timestamp::now_utc()),
        });
        self.backend
            .audit_put_checkpoint(
                scope,
                &CheckpointRow {
                    size,
                    root: signed.checkpoint.root,
                    time_us: signed.checkpoint.time_us,
                    key_id: signed.key_id.clone(),
                    signature: signed.signature.to_vec(),
                    frontier: range.to_bytes(),
                },
            )
            .await?;
        Ok(Some(signed))
    }

    /// Checkpoints the logs this instance appended to since the last call. Returns how many
    /// checkpoints were signed. A log that fails stays marked and is retried next time.
    pub async fn checkpoint_dirty(&self) -> usize {
        let logs: Vec<LogId> = std::mem::take(&mut *self.dirty.lock())
            .into_iter()
            .collect();
        self.checkpoint_logs(logs).await
    }

    /// Checkpoints the given logs (a sweep over every tenant catches entries appended by other
    /// instances and by ones that stopped before checkpointing).
    pub async fn checkpoint_logs(&self, logs: Vec<LogId>) -> usize {
        let mut signed = 0;
        for log in logs {
            match self.checkpoint(&AuditScope::new(log)).await {
                Ok(Some(_)) => signed += 1,
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(log = %log, error = %e, "audit: cannot checkpoint");
                    self.mark(log);
                }
            }
        }
        signed
    }

    // ---- reading -------------------------------------------------------------------------------

    /// A page of the log, oldest first, from `cursor` (a sequence number).
    pub async fn entries(
        &self,
        scope: &AuditScope,
        filter: &AuditFilter,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<AuditPage, StoreError> {
        let log = scope.log();
        let mut from = match cursor {
            Some(c) => c.parse::<u64>().map_err(|_| StoreError::BadCursor)?,
            None => 0,
        };
        let limit = limit.clamp(1, 1000);
        let since = filter.since.map(micros);
        let until = filter.until.map(micros);
        let mut items = Vec::new();
        let mut scanned = 0;
        loop {
            let rows = self
                .backend
                .audit_entries(scope, from, CHUNK.min(MAX_SCAN))
                .await?;
            let at_end = rows.len() < CHUNK.min(MAX_SCAN);
            for r in rows {
                from = r.seq + 1;
                scanned += 1;
                let body = EntryBody::decode(&r.body).map_err(|e| {
                    StoreError::Integrity(format!("audit entry {} of log {log}: {e}", r.seq))
                })?;
                let keep = since.is_none_or(|s| body.time_us >= s)
                    && until.is_none_or(|u| body.time_us < u)
                    && filter.action.as_deref().is_none_or(|a| body.action == a);
                if keep {
                    items.push(EntryJson::new(log, r.seq, &r.body).map_err(|e| {
                        StoreError::Integrity(format!("audit entry {} of log {log}: {e}", r.seq))
                    })?);
                    if items.len() == limit {
                        return Ok(AuditPage {
                            items,
                            next_cursor: Some(from.to_string()),
                        });
                    }
                }
            }
            if at_end {
                return Ok(AuditPage {
                    items,
                    next_cursor: None,
                });
            }
            if scanned >= MAX_SCAN {
                return Ok(AuditPage {
                    items,
                    next_cursor: Some(from.to_string()),
                });
            }
        }
    }

    /// The latest signed checkpoint of the log.
    pub async fn latest_checkpoint(
        &self,
        scope: &AuditScope,
    ) -> Result<SignedCheckpoint, StoreError> {
        let row = self
            .backend
            .audit_checkpoint(scope, None)
            .await?
            .ok_or(StoreError::NotFound)?;
        to_signed(scope.log(), &row)
    }

    async fn checkpoint_at(
        &self,
        scope: &AuditScope,
        size: u64,
    ) -> Result<SignedCheckpoint, StoreError> {
        let row = self
            .backend
            .audit_checkpoint(scope, Some(size))
            .await?
            .ok_or(StoreError::NotFound)?;
        to_signed(scope.log(), &row)
    }

    async fn leaves(&self, scope: &AuditScope, size: u64) -> Result<Vec<[u8; 32]>, StoreError> {
        let leaves = self.backend.audit_leaves(scope, 0, size).await?;
        if leaves.len() as u64 != size {
            // Pruned by retention (or missing): no proof from stored entries.
            return Err(StoreError::NotFound);
        }
        Ok(leaves)
    }

    /// The proof that entry `seq` is in the checkpoint of `size` entries (which must exist).
    pub async fn inclusion(
        &self,
        scope: &AuditScope,
        seq: u64,
        size: u64,
    ) -> Result<InclusionProofJson, StoreError> {
        if seq >= size {
            return Err(StoreError::NotFound);
        }
        let cp = self.checkpoint_at(scope, size).await?;
        let entry = self
            .backend
            .audit_entries(scope, seq, 1)
            .await?
            .into_iter()
            .find(|r| r.seq == seq)
            .ok_or(StoreError::NotFound)?;
        let leaves = self.leaves(scope, size).await?;
        inclusion_json(seq, &entry.body, &leaves, &cp).ok_or(StoreError::NotFound)
    }

    /// The proof that the checkpoint of `from` entries is a prefix of the one of `to`.
    pub async fn consistency(
        &self,
        scope: &AuditScope,
        from: u64,
        to: u64,
    ) -> Result<ConsistencyProofJson, StoreError> {
        if from > to {
            return Err(StoreError::NotFound);
        }
        let a = self.checkpoint_at(scope, from).await?;
        let b = self.checkpoint_at(scope, to).await?;
        let leaves = self.leaves(scope, to).await?;
        consistency_json(&leaves, &a, &b).ok_or(StoreError::NotFound)
    }

    // ---- retention -----------------------------------------------------------------------------

    /// Deletes the log's entries older than `before`, up to the largest checkpoint whose
    /// entries are all older: the checkpoint (kept forever, with its frontier) lets the tree
    /// grow and be verified without them. Returns how many entries were deleted.
    pub async fn prune(&self, scope: &AuditScope, before: Timestamp) -> Result<u64, StoreError> {
        let cutoff = micros(before);
        // The first entry at or after the cutoff bounds what may go.
        let mut keep_from: Option<u64> = None;
        let mut from = 0;
        'scan: loop {
            let rows = self.backend.audit_entries(scope, from, CHUNK).await?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                from = r.seq + 1;
                let t = EntryBody::decode(&r.body)
                    .map(|b| b.time_us)
                    .unwrap_or(i64::MAX);
                if t >= cutoff {
                    keep_from = Some(r.seq);
                    break 'scan;
                }
            }
        }
        let limit = keep_from.unwrap_or(from);
        // The largest checkpoint at or below `limit`.
        let mut best = None;
        let mut after = 0;
        loop {
            let cps = self.backend.audit_checkpoints(scope, after, 1000).await?;
            let Some(last) = cps.last() else { break };
            after = last.size;
            for cp in &cps {
                if cp.size <= limit {
                    best = Some(cp.size);
                }
            }
            if last.size > limit {
                break;
            }
        }
        match best {
            Some(size) if size > 0 => Ok(self.backend.audit_prune(scope, size).await?),
            _ => Ok(0),
        }
    }

    // ---- verification --------------------------------------------------------------------------

    /// Recomputes the log's tree from its stored entries and checks every stored checkpoint
    /// against it (root, size, frontier, signature by `key`). `progress` is told how many
    /// entries were checked so far. Read-only: nothing is placed or written.
    pub async fn verify(
        &self,
        scope: &AuditScope,
        key: &AuditPublicKey,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<VerifyReport, VerifyFailure> {
        verify_log(self.backend.as_ref(), scope.log(), key, progress).await
    }
}

fn actor_of(ctx: &TenantContext) -> Actor {
    let roles: Vec<&str> = ctx
        .roles()
        .to_vec()
        .into_iter()
        .map(|r| r.as_str())
        .collect();
    Actor::tenant(ctx.subject().as_str(), &roles.join(","))
}

/// The actor of a verified tenant caller (subject and roles from its token).
pub fn tenant_actor(ctx: &TenantContext) -> Actor {
    actor_of(ctx)
}

/// See [`Audit::verify`]; usable without a [`crate::Store`] (the offline verifier, `bulkhead
/// audit verify`, has the storage and the public key only). It reads any log and reports only
/// whether it verifies: operator tooling, never a request path.
pub async fn verify_log(
    backend: &dyn RecordBackend,
    log: LogId,
    key: &AuditPublicKey,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<VerifyReport, VerifyFailure> {
    let scope = &AuditScope::new(log);
    let fail = |at: String, what: String| VerifyFailure {
        log: log.to_string(),
        at,
        what,
    };
    let storage = |e: crate::BackendError| fail("storage".into(), e.to_string());
    let mut report = VerifyReport::default();
    // Where the stored entries start (retention may have pruned a prefix).
    let first = backend
        .audit_entries(scope, 0, 1)
        .await
        .map_err(storage)?
        .first()
        .map(|r| r.seq);
    let mut range = CompactRange::new();
    if let Some(start) = first.filter(|s| *s > 0) {
        // Pruned below `start`: the checkpoint of exactly `start` entries carries the tree's
        // right edge; it must be signed and agree with its root.
        let cp = backend
            .audit_checkpoint(scope, Some(start))
            .await
            .map_err(storage)?
            .ok_or_else(|| {
                fail(
                    format!("entry {}", start.saturating_sub(1)),
                    "entries are missing before the first stored one, and no checkpoint covers them"
                        .into(),
                )
            })?;
        check_checkpoint(log, &cp, key).map_err(|w| fail(format!("checkpoint {}", cp.size), w))?;
        range = CompactRange::from_bytes(cp.size, &cp.frontier)
            .filter(|r| r.root() == cp.root)
            .ok_or_else(|| {
                fail(
                    format!("checkpoint {}", cp.size),
                    "its frontier does not match its root".into(),
                )
            })?;
        report.pruned = start;
    }
    if range.size() == 0
        && let Some(cp) = backend
            .audit_checkpoint(scope, Some(0))
            .await
            .map_err(storage)?
    {
        check_checkpoint(log, &cp, key).map_err(|w| fail("checkpoint 0".into(), w))?;
        if cp.root != range.root() {
            return Err(fail(
                "checkpoint 0".into(),
                "not the empty tree's root".into(),
            ));
        }
        report.checkpoints += 1;
    }
    // Checkpoints in size order, consumed as the tree reaches their size.
    let mut cps = Checkpoints {
        backend,
        scope,
        after: range.size(),
        buf: std::collections::VecDeque::new(),
        done: false,
    };
    loop {
        let rows = backend
            .audit_entries(scope, range.size(), CHUNK)
            .await
            .map_err(storage)?;
        let Some(last) = rows.last() else { break };
        let last_seq = last.seq;
        for r in rows {
            let at = format!("entry {}", range.size());
            if r.seq != range.size() {
                return Err(fail(
                    at,
                    format!("missing: the next stored entry is {}", r.seq),
                ));
            }
            // The hash is what proves the bytes; their format is the server's own business
            // (the listing reports unreadable entries).
            let leaf = entry_leaf(log, r.seq, &r.body);
            if leaf != r.leaf {
                return Err(fail(
                    at,
                    "its bytes do not match its stored leaf hash".into(),
                ));
            }
            report.bytes += (bulkhead_audit::entry::HEADER_LEN + r.body.len() + 1) as u64;
            range.push(leaf);
            report.entries += 1;
            while let Some(cp) = cps.peek().await.map_err(storage)? {
                if cp.size != range.size() {
                    break;
                }
                let at = format!("checkpoint {}", cp.size);
                check_checkpoint(log, cp, key).map_err(|w| fail(at.clone(), w))?;
                if cp.root != range.root() {
                    return Err(fail(
                        format!("entry {}", cp.size.saturating_sub(1)),
                        format!(
                            "the entries up to here do not hash to the signed root of checkpoint {}",
                            cp.size
                        ),
                    ));
                }
                if cp.frontier != range.to_bytes() {
                    return Err(fail(
                        at,
                        "its stored frontier does not match the tree".into(),
                    ));
                }
                report.checkpoints += 1;
                cps.buf.pop_front();
            }
        }
        progress(report.entries);
        if last_seq + 1 != range.size() {
            break;
        }
    }
    // A checkpoint left over names a size the stored entries do not reach: the tail is gone.
    if let Some(cp) = cps.peek().await.map_err(storage)? {
        return Err(fail(
            format!("entry {}", range.size()),
            format!(
                "missing: the log ends at {} entries but checkpoint {} is signed",
                range.size(),
                cp.size
            ),
        ));
    }
    Ok(report)
}

/// A log's checkpoints with sizes above `after`, read page by page.
struct Checkpoints<'a> {
    backend: &'a dyn RecordBackend,
    scope: &'a AuditScope,
    after: u64,
    buf: std::collections::VecDeque<CheckpointRow>,
    done: bool,
}

impl Checkpoints<'_> {
    async fn peek(&mut self) -> Result<Option<&CheckpointRow>, crate::BackendError> {
        if self.buf.is_empty() && !self.done {
            let more = self
                .backend
                .audit_checkpoints(self.scope, self.after, 1000)
                .await?;
            match more.last() {
                Some(l) => self.after = l.size,
                None => self.done = true,
            }
            self.buf.extend(more);
        }
        Ok(self.buf.front())
    }
}

fn check_checkpoint(log: LogId, cp: &CheckpointRow, key: &AuditPublicKey) -> Result<(), String> {
    let signed = to_signed(log, cp).map_err(|e| e.to_string())?;
    key.verify(&signed).map_err(|e| e.to_string())
}
