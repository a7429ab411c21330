//! The audit service: recording entries, the checkpointer, the tenant- and operator-facing
//! reads (entries, checkpoints, proofs), retention and the offline verifier.
//!
//! INVARIANT: a tenant's log is reached with an [`AuditScope`] made from that tenant's verified
//! context ([`crate::Store::tenant_audit`]), or through the operator door
//! ([`crate::Store::operator_audit`]), which only operator-authenticated paths call.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use bulkhead_audit::checkpoint::{
    BatchPath, ConsistencyProofJson, EntryJson, InclusionProofJson, SignatureCache,
    consistency_json_after, inclusion_json_after,
};
use bulkhead_audit::entry::{entry_leaf, pad_entry_leaf};
use bulkhead_audit::merkle::Scratch;
use bulkhead_audit::sha::Batch;
use bulkhead_audit::{
    Actor, AuditKey, AuditPublicKey, Checkpoint, CompactRange, EntryBody, Hash, LogId, Outcome,
    SignedCheckpoint,
};
use bulkhead_core::{TenantContext, Timestamp};
use serde::Serialize;

use crate::StoreError;
use crate::port::{
    AuditBackend, AuditBlockRef, AuditScanItem, AuditScope, CheckpointRow, RecordBackend,
};

/// Entries read per storage round trip by the checkpointer and the verifier.
const CHUNK: usize = 4096;
/// Most logs the checkpointer places and checkpoints together.
const CHECKPOINT_BATCH: usize = 1024;
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
    /// Logs this instance appended to since their last checkpoint here, with when they were
    /// first appended to since then.
    dirty: parking_lot::Mutex<BTreeMap<LogId, std::time::Instant>>,
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
    let damaged = || StoreError::Integrity(format!("checkpoint {} of log {log}", row.size));
    let signature = <[u8; 64]>::try_from(row.signature.as_slice()).map_err(|_| damaged())?;
    let batch = if row.batch.is_empty() {
        None
    } else {
        Some(BatchPath::from_bytes(&row.batch).ok_or_else(damaged)?)
    };
    Ok(SignedCheckpoint {
        checkpoint: Checkpoint {
            log,
            size: row.size,
            root: row.root,
            time_us: row.time_us,
        },
        key_id: row.key_id.clone(),
        signature,
        batch,
    })
}

/// The row that stores `signed`, with the frontier of its tree.
fn to_row(signed: &SignedCheckpoint, frontier: Vec<u8>) -> CheckpointRow {
    CheckpointRow {
        size: signed.checkpoint.size,
        root: signed.checkpoint.root,
        time_us: signed.checkpoint.time_us,
        key_id: signed.key_id.clone(),
        signature: signed.signature.to_vec(),
        frontier,
        batch: signed
            .batch
            .as_ref()
            .map(BatchPath::to_bytes)
            .unwrap_or_default(),
    }
}

impl Audit {
    pub(crate) fn new(backend: Arc<dyn RecordBackend>, key: AuditKey, cfg: AuditConfig) -> Self {
        Self {
            backend,
            key,
            cfg,
            dirty: parking_lot::Mutex::new(BTreeMap::new()),
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
        self.dirty
            .lock()
            .entry(log)
            .or_insert_with(std::time::Instant::now);
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
        let sizes = self
            .backend
            .audit_sequence(std::slice::from_ref(scope))
            .await?;
        sizes
            .first()
            .copied()
            .ok_or_else(|| StoreError::Internal(format!("no size for audit log {}", scope.log())))
    }

    /// Places the log's pending entries and, if it grew (or has no checkpoint yet), signs and
    /// stores a checkpoint of it. Every entry's leaf is recomputed from its body before it is
    /// signed over, so bytes changed in storage are never vouched for.
    pub async fn checkpoint(
        &self,
        scope: &AuditScope,
    ) -> Result<Option<SignedCheckpoint>, StoreError> {
        let size = self.place(scope).await?;
        let Some((cp, frontier)) = self.next_checkpoint(scope, size).await? else {
            return Ok(None);
        };
        let signed = self
            .sign_and_store(vec![(*scope, cp, frontier)])
            .await?
            .pop()
            .ok_or_else(|| StoreError::Internal("a signed batch came back empty".into()))?;
        Ok(Some(signed))
    }

    /// Signs the logs' next checkpoints (each with its tree's frontier) as one batch and
    /// stores them in one durable write.
    async fn sign_and_store(
        &self,
        next: Vec<(AuditScope, Checkpoint, Vec<u8>)>,
    ) -> Result<Vec<SignedCheckpoint>, StoreError> {
        let cps: Vec<Checkpoint> = next.iter().map(|(_, cp, _)| *cp).collect();
        let signed = self.key.sign_batch(&cps, &mut rand_core::OsRng);
        let rows: Vec<(AuditScope, CheckpointRow)> = next
            .into_iter()
            .zip(&signed)
            .map(|((scope, _, frontier), s)| (scope, to_row(s, frontier)))
            .collect();
        self.backend.audit_put_checkpoints(&rows).await?;
        Ok(signed)
    }

    /// The checkpoint of the log's first `size` entries (placed), to be signed, with the
    /// frontier of its tree; `None` if its latest checkpoint already has that size.
    async fn next_checkpoint(
        &self,
        scope: &AuditScope,
        size: u64,
    ) -> Result<Option<(Checkpoint, Vec<u8>)>, StoreError> {
        let log = scope.log();
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
        let cp = Checkpoint {
            log,
            size,
            root: range.root(),
            time_us: micros(Timestamp::now_utc()),
        };
        Ok(Some((cp, range.to_bytes())))
    }

    /// Checkpoints the logs this instance appended to since the last call. Returns how many
    /// checkpoints were signed. A log that fails stays marked and is retried next time.
    pub async fn checkpoint_dirty(&self) -> usize {
        let logs: Vec<LogId> = std::mem::take(&mut *self.dirty.lock())
            .into_keys()
            .collect();
        self.checkpoint_logs(logs).await
    }

    /// Checkpoints the logs this instance appended to whose oldest entry not checkpointed here
    /// was appended at least `age` ago (the periodic checkpointer: a busy log gets one
    /// checkpoint per `age`, not one per round). Returns how many checkpoints were signed.
    pub async fn checkpoint_due(&self, age: std::time::Duration) -> usize {
        let logs: Vec<LogId> = {
            let mut dirty = self.dirty.lock();
            let due: Vec<LogId> = dirty
                .iter()
                .filter(|(_, since)| since.elapsed() >= age)
                .map(|(l, _)| *l)
                .collect();
            for l in &due {
                dirty.remove(l);
            }
            due
        };
        self.checkpoint_logs(logs).await
    }

    /// Checkpoints the given logs (a sweep over every tenant catches entries appended by other
    /// instances and by ones that stopped before checkpointing), [`CHECKPOINT_BATCH`] at a
    /// time: one placement, one signature (a signed batch, see [`bulkhead_audit::checkpoint`])
    /// and one durable write of checkpoints per batch. Returns how many checkpoints were
    /// signed; a log that fails is marked to be retried.
    pub async fn checkpoint_logs(&self, logs: Vec<LogId>) -> usize {
        let mut signed = 0;
        for batch in logs.chunks(CHECKPOINT_BATCH) {
            let scopes: Vec<AuditScope> = batch.iter().map(|l| AuditScope::new(*l)).collect();
            let sizes = match self.backend.audit_sequence(&scopes).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(logs = batch.len(), error = %e, "audit: cannot place entries");
                    batch.iter().for_each(|l| self.mark(*l));
                    continue;
                }
            };
            let mut next = Vec::with_capacity(scopes.len());
            for (scope, size) in scopes.iter().zip(sizes) {
                match self.next_checkpoint(scope, size).await {
                    Ok(Some((cp, frontier))) => next.push((*scope, cp, frontier)),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(log = %scope.log(), error = %e, "audit: cannot checkpoint");
                        self.mark(scope.log());
                    }
                }
            }
            if next.is_empty() {
                continue;
            }
            let logs: Vec<LogId> = next.iter().map(|(scope, _, _)| scope.log()).collect();
            match self.sign_and_store(next).await {
                Ok(done) => signed += done.len(),
                Err(e) => {
                    tracing::error!(logs = logs.len(), error = %e, "audit: cannot store checkpoints");
                    logs.iter().for_each(|l| self.mark(*l));
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

    /// The tree of the log's first `size` entries as far as storage knows it: the compact
    /// range of the pruned prefix (empty if nothing was pruned; else the frontier stored with
    /// the checkpoint at the prune point) and the leaf hashes of the stored entries up to
    /// `size`.
    async fn known_tree(
        &self,
        scope: &AuditScope,
        size: u64,
    ) -> Result<(CompactRange, Vec<[u8; 32]>), StoreError> {
        let log = scope.log();
        if size == 0 {
            return Ok((CompactRange::new(), Vec::new()));
        }
        let first = self
            .backend
            .audit_entries(scope, 0, 1)
            .await?
            .first()
            .map(|r| r.seq)
            .ok_or(StoreError::NotFound)?;
        let prefix = if first == 0 {
            CompactRange::new()
        } else {
            let cp = self
                .backend
                .audit_checkpoint(scope, Some(first))
                .await?
                .ok_or(StoreError::NotFound)?;
            CompactRange::from_bytes(cp.size, &cp.frontier)
                .filter(|r| r.root() == cp.root)
                .ok_or_else(|| {
                    StoreError::Integrity(format!(
                        "frontier of checkpoint {} of log {log} does not match its root",
                        cp.size
                    ))
                })?
        };
        if size < prefix.size() {
            return Err(StoreError::NotFound);
        }
        let leaves = self
            .backend
            .audit_leaves(scope, prefix.size(), size)
            .await?;
        if leaves.len() as u64 != size - prefix.size() {
            // Missing entries: no proof from stored entries.
            return Err(StoreError::NotFound);
        }
        Ok((prefix, leaves))
    }

    /// The proof that entry `seq` is in the checkpoint of `size` entries (which must exist).
    /// Works after retention pruned entries below `seq` (from the prune point's frontier);
    /// a pruned entry has no proof.
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
        let (prefix, leaves) = self.known_tree(scope, size).await?;
        inclusion_json_after(&prefix, seq, &entry.body, &leaves, &cp).ok_or(StoreError::NotFound)
    }

    /// The proof that the checkpoint of `from` entries is a prefix of the one of `to`. Works
    /// after retention as long as `from` is not below the prune point (or is 0).
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
        let (prefix, leaves) = self.known_tree(scope, to).await?;
        consistency_json_after(&prefix, &leaves, &a, &b).ok_or(StoreError::NotFound)
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

/// The verification of one log, fed its stored entries in order: the state shared by
/// [`verify_log`] (one log) and [`verify_all`] (every log in one pass). Signatures are not
/// checked here but handed out ([`LogCheck::take_signatures`]), so the caller may check them
/// in bulk.
struct LogCheck {
    log: LogId,
    range: CompactRange,
    /// Stored checkpoints with a size above where the stored entries start, smallest first,
    /// not reached yet.
    cps: std::collections::VecDeque<CheckpointRow>,
    /// Checkpoints reached (their root and frontier agree with the tree) whose signature is
    /// still to be checked.
    sigs: Vec<CheckpointRow>,
    report: VerifyReport,
}

impl LogCheck {
    fn fail(&self, at: String, what: impl Into<String>) -> VerifyFailure {
        VerifyFailure {
            log: self.log.to_string(),
            at,
            what: what.into(),
        }
    }

    /// Starts a log whose first stored entry is `first` (`None`: no stored entry), with its
    /// stored checkpoints in size order. A log with checkpoints but no stored entry had every
    /// entry pruned by retention (which keeps the checkpoint it pruned up to, and prunes
    /// everything only when that is the last): it starts, and ends, at its last checkpoint.
    fn start(
        log: LogId,
        first: Option<u64>,
        checkpoints: Vec<CheckpointRow>,
    ) -> Result<Self, VerifyFailure> {
        let first = first.or_else(|| checkpoints.last().map(|cp| cp.size));
        let mut c = LogCheck {
            log,
            range: CompactRange::new(),
            cps: checkpoints.into(),
            sigs: Vec::new(),
            report: VerifyReport::default(),
        };
        if let Some(start) = first.filter(|s| *s > 0) {
            // Pruned below `start`: the checkpoint of exactly `start` entries carries the
            // tree's right edge; it must be signed and agree with its root.
            let Some(i) = c.cps.iter().position(|cp| cp.size == start) else {
                return Err(c.fail(
                    format!("entry {}", start - 1),
                    "entries are missing before the first stored one, and no checkpoint covers them",
                ));
            };
            let cp = c
                .cps
                .remove(i)
                .ok_or_else(|| c.fail("storage".into(), "checkpoint"))?;
            c.range = CompactRange::from_bytes(cp.size, &cp.frontier)
                .filter(|r| r.root() == cp.root)
                .ok_or_else(|| {
                    c.fail(
                        format!("checkpoint {}", cp.size),
                        "its frontier does not match its root",
                    )
                })?;
            // Counted as before: the prefix's checkpoint is not one of the verified ones.
            c.sigs.push(cp);
            c.report.pruned = start;
        }
        // Checkpoints below where the entries start were checked when those entries were
        // there; only the one of size 0 (the empty tree) is checked again.
        let from = c.range.size();
        while let Some(cp) = c.cps.front() {
            if cp.size > from {
                break;
            }
            if let Some(cp) = c.cps.pop_front()
                && cp.size == 0
                && from == 0
            {
                if cp.root != c.range.root() {
                    return Err(c.fail("checkpoint 0".into(), "not the empty tree's root"));
                }
                c.report.checkpoints += 1;
                c.sigs.push(cp);
            }
        }
        Ok(c)
    }

    /// The next stored entries, from position `first` on: each one's body length and stored
    /// leaf hash in `entries`, and the leaf hash of its bytes in `leaves`. Checks their
    /// positions and stored leaves, adds them to the tree, and checks every checkpoint the
    /// tree reaches on the way; the first failure in position order is reported.
    fn push_hashed(
        &mut self,
        first: u64,
        entries: &[(usize, Hash)],
        leaves: &[Hash],
        scratch: &mut Scratch,
    ) -> Result<(), VerifyFailure> {
        if entries.is_empty() {
            return Ok(());
        }
        if first != self.range.size() {
            return Err(self.fail(
                format!("entry {}", self.range.size()),
                format!("missing: the next stored entry is {first}"),
            ));
        }
        // The entries before the first whose bytes do not match its stored leaf go into the
        // tree (a checkpoint among them fails first).
        let good = entries
            .iter()
            .zip(leaves)
            .position(|((_, stored), leaf)| stored != leaf)
            .unwrap_or(entries.len().min(leaves.len()));
        let mut at = 0;
        while at < good {
            // Up to the next checkpoint, or to the end.
            let next = self.cps.front().map_or(u64::MAX, |cp| cp.size);
            let room =
                usize::try_from(next.saturating_sub(self.range.size())).unwrap_or(usize::MAX);
            let end = good.min(at.saturating_add(room.max(1)));
            let (Some(part), Some(sizes)) = (leaves.get(at..end), entries.get(at..end)) else {
                break;
            };
            self.range.extend(part, scratch);
            self.report.entries += part.len() as u64;
            self.report.bytes += sizes
                .iter()
                .map(|(len, _)| (bulkhead_audit::entry::HEADER_LEN + len + 1) as u64)
                .sum::<u64>();
            at = end;
            self.reached()?;
        }
        if good < entries.len() {
            return Err(self.fail(
                format!("entry {}", first + good as u64),
                "its bytes do not match its stored leaf hash",
            ));
        }
        Ok(())
    }

    /// Checks the checkpoints of the tree's current size (root and frontier); their
    /// signatures are checked later.
    fn reached(&mut self) -> Result<(), VerifyFailure> {
        while self
            .cps
            .front()
            .is_some_and(|cp| cp.size == self.range.size())
        {
            let Some(cp) = self.cps.pop_front() else {
                break;
            };
            if cp.root != self.range.root() {
                return Err(self.fail(
                    format!("entry {}", cp.size.saturating_sub(1)),
                    format!(
                        "the entries up to here do not hash to the signed root of checkpoint {}",
                        cp.size
                    ),
                ));
            }
            if !self.range.frontier_is(&cp.frontier) {
                return Err(self.fail(
                    format!("checkpoint {}", cp.size),
                    "its stored frontier does not match the tree",
                ));
            }
            self.report.checkpoints += 1;
            self.sigs.push(cp);
        }
        Ok(())
    }

    /// The end of the log's stored entries: a checkpoint left over names a size the entries
    /// do not reach (the tail is gone).
    fn finish(&self) -> Result<(), VerifyFailure> {
        match self.cps.front() {
            Some(cp) => Err(self.fail(
                format!("entry {}", self.range.size()),
                format!(
                    "missing: the log ends at {} entries but checkpoint {} is signed",
                    self.range.size(),
                    cp.size
                ),
            )),
            None => Ok(()),
        }
    }

    fn take_signatures(&mut self) -> Vec<CheckpointRow> {
        std::mem::take(&mut self.sigs)
    }
}

/// Entries waiting to be checked together, and the buffers the verifier reuses: their leaves
/// are padded as they come and hashed all at once ([`Batch`]), and the tree's nodes are
/// hashed level by level ([`CompactRange::extend`]). The entries waiting are consecutive
/// entries of one log; they may come from several of its blocks (a log placed one entry per
/// round is stored as blocks of one entry).
#[derive(Default)]
struct Pending {
    /// Position of the first entry waiting.
    first: u64,
    /// Body length and stored leaf hash of each entry waiting.
    entries: Vec<(usize, Hash)>,
    batch: Batch,
    leaves: Vec<Hash>,
    scratch: Scratch,
}

/// Entries hashed together at most: their padded leaves stay in the core's first-level cache.
const BATCH: usize = 64;

impl Pending {
    /// Adds the entry at `seq` of `check`'s log, after checking the entries waiting if they
    /// are a full batch or it does not follow them (a gap, which the check then names).
    fn push(
        &mut self,
        check: &mut LogCheck,
        seq: u64,
        body: &[u8],
        stored: Hash,
    ) -> Result<(), VerifyFailure> {
        if (!self.entries.is_empty() && seq != self.next()) || self.is_full() {
            self.check(check)?;
        }
        if self.entries.is_empty() {
            self.first = seq;
        }
        pad_entry_leaf(&mut self.batch, check.log, seq, body);
        self.entries.push((body.len(), stored));
        Ok(())
    }

    /// The position after the entries waiting.
    fn next(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    fn is_full(&self) -> bool {
        self.entries.len() >= BATCH
    }

    /// Checks the entries waiting against `check` (see [`LogCheck::push_hashed`]).
    fn check(&mut self, check: &mut LogCheck) -> Result<(), VerifyFailure> {
        self.leaves.clear();
        self.batch.hash_into(&mut self.leaves);
        let r = check.push_hashed(self.first, &self.entries, &self.leaves, &mut self.scratch);
        self.entries.clear();
        r
    }

    /// Checks `rows` (stored entries of `check`'s log in position order) against `check`.
    fn check_rows(
        &mut self,
        check: &mut LogCheck,
        rows: &[crate::port::AuditRow],
    ) -> Result<(), VerifyFailure> {
        for r in rows {
            self.push(check, r.seq, &r.body, r.leaf)?;
        }
        self.check(check)
    }
}

/// Checks the signatures of `cps` (of `log`, in order; a batch signature once per `cache`);
/// the first bad one fails.
fn check_signatures(
    log: LogId,
    cps: &[CheckpointRow],
    key: &AuditPublicKey,
    cache: &mut SignatureCache,
) -> Result<(), VerifyFailure> {
    for cp in cps {
        check_checkpoint(log, cp, key, cache).map_err(|what| VerifyFailure {
            log: log.to_string(),
            at: format!("checkpoint {}", cp.size),
            what,
        })?;
    }
    Ok(())
}

/// How many times [`verify_log`] reads a log again because retention pruned it meanwhile.
const PRUNED_MEANWHILE_RETRIES: usize = 3;

/// See [`Audit::verify`]; usable without a [`crate::Store`] (the offline verifier, `bulkhead
/// audit verify`, has the storage and the public key only). It reads any log and reports only
/// whether it verifies: operator tooling, never a request path.
///
/// The log is read in several round trips (where it starts, its checkpoints, its entries in
/// chunks), so retention committed meanwhile by a running server can leave a read that mixes
/// the log before and after the prune. A log that fails while its first stored entry moved is
/// therefore read again, from its new start (a few times at most); a failure that stays is
/// reported.
pub async fn verify_log(
    backend: &dyn AuditBackend,
    log: LogId,
    key: &AuditPublicKey,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<VerifyReport, VerifyFailure> {
    let mut tries = 0;
    loop {
        let first = first_stored(backend, log).await?;
        let outcome = verify_log_from(backend, log, first, key, progress).await;
        if outcome.is_err()
            && tries < PRUNED_MEANWHILE_RETRIES
            && first_stored(backend, log)
                .await
                .is_ok_and(|now| now != first)
        {
            tries += 1;
            continue;
        }
        return outcome;
    }
}

/// A storage error met verifying `log`, as its failure: damage at a position names that entry.
fn storage_failure_in(log: LogId, e: crate::BackendError) -> VerifyFailure {
    match e {
        crate::BackendError::AuditDamaged { at, what } => VerifyFailure {
            log: log.to_string(),
            at: format!("entry {at}"),
            what,
        },
        e => VerifyFailure {
            log: log.to_string(),
            at: "storage".into(),
            what: e.to_string(),
        },
    }
}

/// Where the log's stored entries start (retention may have pruned a prefix); `None`: none
/// is stored.
async fn first_stored(
    backend: &dyn AuditBackend,
    log: LogId,
) -> Result<Option<u64>, VerifyFailure> {
    Ok(backend
        .audit_entries(&AuditScope::new(log), 0, 1)
        .await
        .map_err(|e| storage_failure_in(log, e))?
        .first()
        .map(|r| r.seq))
}

/// One reading of the log for [`verify_log`], whose stored entries start at `first`.
async fn verify_log_from(
    backend: &dyn AuditBackend,
    log: LogId,
    first: Option<u64>,
    key: &AuditPublicKey,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<VerifyReport, VerifyFailure> {
    let scope = &AuditScope::new(log);
    let storage = |e: crate::BackendError| storage_failure_in(log, e);
    let mut checkpoints = Vec::new();
    let mut after = None;
    loop {
        let more = backend
            .audit_checkpoints(scope, after.unwrap_or(0), 1000)
            .await
            .map_err(storage)?;
        if after.is_none()
            && let Some(zero) = backend
                .audit_checkpoint(scope, Some(0))
                .await
                .map_err(storage)?
        {
            checkpoints.push(zero);
        }
        let Some(last) = more.last() else { break };
        after = Some(last.size);
        checkpoints.extend(more);
    }
    let mut check = LogCheck::start(log, first, checkpoints)?;
    let mut pending = Pending::default();
    let mut from = check.range.size();
    let outcome = loop {
        let rows = match backend.audit_entries(scope, from, CHUNK).await {
            Ok(rows) => rows,
            // Damaged storage at `at`: the entries before it are checked first (a checkpoint
            // among them may fail before), then the damage is named.
            Err(crate::BackendError::AuditDamaged { at, what }) => {
                let before = usize::try_from(at.saturating_sub(from)).unwrap_or(usize::MAX);
                let rows = if before > 0 {
                    backend
                        .audit_entries(scope, from, before)
                        .await
                        .map_err(storage)?
                } else {
                    Vec::new()
                };
                if let Err(f) = pending.check_rows(&mut check, &rows) {
                    break Err(f);
                }
                break Err(check.fail(format!("entry {at}"), what));
            }
            Err(e) => return Err(storage(e)),
        };
        let Some(last) = rows.last() else {
            break Ok(());
        };
        let last_seq = last.seq;
        if let Err(f) = pending.check_rows(&mut check, &rows) {
            break Err(f);
        }
        progress(check.report.entries);
        from = check.range.size();
        if last_seq + 1 != from {
            break Ok(());
        }
    }
    .and_then(|()| check.finish());
    // A bad signature of a checkpoint reached before the failure is reported first.
    check_signatures(
        log,
        &check.take_signatures(),
        key,
        &mut SignatureCache::default(),
    )?;
    outcome.map(|()| check.report)
}

/// A failure, with the log it is in (failures are reported in log order).
type Located = ([u8; 16], VerifyFailure);

/// The work on one unit of [`verify_all`]: a run of logs, verified in order. It hashes the
/// entries, builds the trees and checks the checkpoints' signatures (on short logs a good part
/// of the work), so that both are shared out among the workers alike.
struct Share {
    /// Checkpoints of the unit's logs not started yet.
    checkpoints: BTreeMap<[u8; 16], Vec<CheckpointRow>>,
    current: Option<LogCheck>,
    logs: u64,
    total: VerifyReport,
    failure: Option<Located>,
    key: AuditPublicKey,
    /// Batch signatures checked so far (by this worker, across its units).
    cache: SignatureCache,
    pending: Pending,
    /// Entries read since the shared progress count was last moved.
    unreported: u64,
}

/// How many entries a worker reads between moves of the shared progress count: the count is
/// shared by every worker, and logs of tiny blocks would otherwise move it every few entries.
const PROGRESS_STEP: u64 = 4096;

/// Adds a worker's `unreported` entries to the shared count and shows it.
fn report_progress(units: &Units, progress: &Arc<dyn Fn(u64) + Send + Sync>, unreported: &mut u64) {
    if *unreported > 0 {
        let n = std::mem::take(unreported);
        progress(
            units
                .done
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed)
                + n,
        );
    }
}

impl Share {
    /// Checks the signatures of the checkpoints the current log has reached so far.
    fn check_reached(&mut self) -> Result<(), VerifyFailure> {
        match self.current.as_mut() {
            Some(c) => check_signatures(c.log, &c.take_signatures(), &self.key, &mut self.cache),
            None => Ok(()),
        }
    }

    /// Ends the current log: the entries waiting, leftover checkpoints, totals.
    fn end(&mut self) -> Result<(), VerifyFailure> {
        let Some(c) = self.current.as_mut() else {
            return Ok(());
        };
        self.pending.check(c)?;
        let r = c.finish();
        // The checkpoints reached come before what is missing at the end.
        self.check_reached()?;
        r?;
        if let Some(c) = self.current.take() {
            self.total.entries += c.report.entries;
            self.total.checkpoints += c.report.checkpoints;
            self.total.bytes += c.report.bytes;
            self.total.pruned += c.report.pruned;
        }
        Ok(())
    }

    /// Starts `log` (first stored entry `first`; `None`: none stored), after the logs before
    /// it that have checkpoints but no stored entry.
    fn start(&mut self, log: LogId, first: Option<u64>) -> Result<(), VerifyFailure> {
        self.end()?;
        let id = log.to_bytes();
        let before: Vec<[u8; 16]> = self.checkpoints.range(..id).map(|(k, _)| *k).collect();
        for k in before {
            let list = self.checkpoints.remove(&k).unwrap_or_default();
            self.current = Some(LogCheck::start(LogId::from_bytes(k), None, list)?);
            self.logs += 1;
            self.end()?;
        }
        let list = self.checkpoints.remove(&id).unwrap_or_default();
        self.current = Some(LogCheck::start(log, first, list)?);
        self.logs += 1;
        Ok(())
    }

    /// Verifies the entries of a block (blocks come in `(log, seq)` order). Its entries join
    /// those waiting from the log's blocks before it, if they follow on; they are checked when
    /// a batch is full, at a gap, or when the log ends.
    fn block(&mut self, b: AuditBlockRef<'_>) -> Result<(), VerifyFailure> {
        if self.current.as_ref().is_none_or(|c| c.log != b.log) {
            self.start(b.log, Some(b.first))?;
        }
        let Some(c) = self.current.as_mut() else {
            return Ok(());
        };
        let pending = &mut self.pending;
        let read =
            bulkhead_audit::block::each_entry(b.bytes, b.first, b.count, |seq, body, leaf| {
                match pending.push(c, seq, body, leaf) {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(f) => ControlFlow::Break(f),
                }
            });
        match read {
            Ok(ControlFlow::Break(f)) => Err(f),
            Ok(ControlFlow::Continue(())) => Ok(()),
            Err(damage) => {
                // The entries before the damage are checked first.
                pending.check(c)?;
                Err(c.fail(format!("entry {}", damage.at), damage.to_string()))
            }
        }
    }

    /// The end of the unit: the last log, and logs with checkpoints but no stored entry.
    fn finish(&mut self) -> Result<(), VerifyFailure> {
        self.end()?;
        for (k, list) in std::mem::take(&mut self.checkpoints) {
            self.current = Some(LogCheck::start(LogId::from_bytes(k), None, list)?);
            self.logs += 1;
            self.end()?;
        }
        Ok(())
    }

    /// Records a failure (what the failing log reached is checked too, before it is reported).
    fn failed(&mut self, f: VerifyFailure) {
        let log = self
            .current
            .as_ref()
            .map_or([0xff; 16], |c| c.log.to_bytes());
        // A bad signature of a checkpoint reached before the failure is reported first.
        let f = self.check_reached().err().unwrap_or(f);
        self.failure = Some((log_of_failure(&f).unwrap_or(log), f));
    }
}

/// The log a failure names, as the 16 bytes logs are ordered by.
fn log_of_failure(f: &VerifyFailure) -> Option<[u8; 16]> {
    if f.log == LogId::Operator.to_string() {
        return Some(LogId::Operator.to_bytes());
    }
    bulkhead_core::TenantId::parse(&f.log)
        .ok()
        .map(|t| LogId::Tenant(t).to_bytes())
}

/// Splits `logs` (in order, with their estimated sizes) into runs for `workers` workers that
/// take them in order as they free up: each run about `1 / (2 × workers)` of what is left, so
/// that the runs shrink towards the end and no worker is left alone with a long one (no
/// smaller than `1 / (32 × workers)` of the whole). Returns the first log of each run after
/// the first.
fn split_logs(logs: &[(LogId, u64)], workers: usize) -> Vec<LogId> {
    let workers = workers.max(1) as u64;
    let mut left: u64 = logs.iter().map(|(_, n)| *n).sum();
    let least = (left / (32 * workers)).max(1);
    let mut bounds = Vec::new();
    let mut acc = 0u64;
    let mut target = (left / (2 * workers)).max(least);
    for (log, n) in logs {
        if acc >= target {
            bounds.push(*log);
            left = left.saturating_sub(acc);
            acc = 0;
            target = (left / (2 * workers)).max(least);
        }
        acc += n;
    }
    bounds
}

/// What the workers of [`verify_all`] share: the units (runs of logs), the next one to take,
/// the first failure found so far (units wholly after it are skipped), and the entries
/// verified so far.
struct Units {
    /// `(from, until)` of each unit, in log order.
    ranges: Vec<(Option<LogId>, Option<LogId>)>,
    next: std::sync::atomic::AtomicUsize,
    earliest: parking_lot::Mutex<Option<[u8; 16]>>,
    done: std::sync::atomic::AtomicU64,
}

/// What a worker of [`verify_all`] found.
#[derive(Default)]
struct WorkerReport {
    logs: u64,
    total: VerifyReport,
    failure: Option<Located>,
    read_error: Option<crate::BackendError>,
}

/// Verifies every log in the storage (what `bulkhead audit verify --all` does). The logs are
/// cut into runs ([`split_logs`]) that a worker per core takes in turn; for each, the adapter
/// hands the worker the run's checkpoints, then its entries block by block, where it reads
/// them (SQLite: on the reading thread, with no hand-off per block), and the worker builds
/// each log's tree and checks its checkpoints' signatures. `Ok(None)`: the
/// adapter cannot scan every log (verify log by log with [`verify_log`]). The report counts
/// logs too; the first failure in `(log, position)` order is reported.
pub async fn verify_all(
    backend: Arc<dyn RecordBackend>,
    key: &AuditPublicKey,
    progress: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<Option<(u64, VerifyReport)>, VerifyFailure> {
    let internal = |what: String| VerifyFailure {
        log: "*".into(),
        at: "verifier".into(),
        what,
    };
    let storage = |e: crate::BackendError| VerifyFailure {
        log: "*".into(),
        at: "storage".into(),
        what: e.to_string(),
    };
    let Some(logs) = backend.unscoped_audit_logs().await.map_err(storage)? else {
        return Ok(None);
    };
    // One worker per core: a worker reads and hashes on one thread, without waiting.
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 16);
    let bounds = split_logs(&logs, workers);
    let mut ranges = Vec::with_capacity(bounds.len() + 1);
    let mut from = None;
    for b in bounds {
        ranges.push((from, Some(b)));
        from = Some(b);
    }
    ranges.push((from, None));
    let units = Arc::new(Units {
        ranges,
        next: Default::default(),
        earliest: Default::default(),
        done: Default::default(),
    });
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (backend, units, progress) = (backend.clone(), units.clone(), progress.clone());
            tokio::spawn(verify_units(backend, units, key.clone(), progress))
        })
        .collect();
    let mut count = 0u64;
    let mut total = VerifyReport::default();
    let mut failure: Option<Located> = None;
    let mut read_error = None;
    for t in tasks {
        let r = t
            .await
            .map_err(|e| internal(format!("a verifying task failed: {e}")))?;
        count += r.logs;
        total.entries += r.total.entries;
        total.checkpoints += r.total.checkpoints;
        total.bytes += r.total.bytes;
        total.pruned += r.total.pruned;
        if let Some(f) = r.failure
            && failure.as_ref().is_none_or(|(l, _)| f.0 < *l)
        {
            failure = Some(f);
        }
        read_error = read_error.or(r.read_error);
    }
    // The first failure in log order (each unit reports its own first).
    if let Some((_, f)) = failure {
        return Err(f);
    }
    if let Some(e) = read_error {
        return Err(storage(e));
    }
    Ok(Some((count, total)))
}

/// One worker of [`verify_all`]: takes units until none is left.
async fn verify_units(
    backend: Arc<dyn RecordBackend>,
    units: Arc<Units>,
    key: AuditPublicKey,
    progress: Arc<dyn Fn(u64) + Send + Sync>,
) -> WorkerReport {
    use std::sync::atomic::Ordering;
    let mut report = WorkerReport::default();
    let mut cache = SignatureCache::default();
    loop {
        let i = units.next.fetch_add(1, Ordering::Relaxed);
        let Some(&(from, until)) = units.ranges.get(i) else {
            break;
        };
        // A unit wholly after a failure found already cannot hold the first one.
        if let (Some(f), Some(earliest)) = (from, *units.earliest.lock())
            && f.to_bytes() > earliest
        {
            continue;
        }
        let share = match verify_unit(&*backend, &units, from, until, &key, cache, &progress).await
        {
            Ok(s) => s,
            Err((e, c)) => {
                cache = c;
                report.read_error = report.read_error.or(Some(e));
                continue;
            }
        };
        report.logs += share.logs;
        report.total.entries += share.total.entries;
        report.total.checkpoints += share.total.checkpoints;
        report.total.bytes += share.total.bytes;
        report.total.pruned += share.total.pruned;
        if let Some(f) = share.failure {
            let mut earliest = units.earliest.lock();
            if earliest.is_none_or(|e| f.0 < e) {
                *earliest = Some(f.0);
            }
            if report.failure.as_ref().is_none_or(|(l, _)| f.0 < *l) {
                report.failure = Some(f);
            }
        }
        cache = share.cache;
    }
    report
}

/// Verifies the logs from `from` to below `until`: the adapter hands their checkpoints, then
/// their blocks, to a [`Share`]. On a storage error, the error and the signature cache.
async fn verify_unit(
    backend: &dyn RecordBackend,
    units: &Arc<Units>,
    from: Option<LogId>,
    until: Option<LogId>,
    key: &AuditPublicKey,
    cache: SignatureCache,
    progress: &Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<Share, (crate::BackendError, SignatureCache)> {
    let share = Arc::new(parking_lot::Mutex::new(Some(Share {
        checkpoints: BTreeMap::new(),
        current: None,
        logs: 0,
        total: VerifyReport::default(),
        failure: None,
        key: key.clone(),
        cache,
        pending: Pending::default(),
        unreported: 0,
    })));
    let visitor = {
        let (share, units, progress) = (share.clone(), units.clone(), progress.clone());
        Box::new(move |item: AuditScanItem<'_>| {
            let mut guard = share.lock();
            let Some(s) = guard.as_mut() else {
                return ControlFlow::Break(());
            };
            match item {
                AuditScanItem::Checkpoint(log, cp) => {
                    s.checkpoints.entry(log.to_bytes()).or_default().push(cp);
                }
                AuditScanItem::Block(b) => {
                    if let Err(f) = s.block(b) {
                        s.failed(f);
                        return ControlFlow::Break(());
                    }
                    s.unreported += b.count;
                    if s.unreported >= PROGRESS_STEP {
                        report_progress(&units, &progress, &mut s.unreported);
                    }
                }
            }
            ControlFlow::Continue(())
        })
    };
    let read = backend.unscoped_audit_visit(from, until, visitor).await;
    let Some(mut s) = share.lock().take() else {
        return Err((
            crate::BackendError::Other("the verifier lost a unit's state".into()),
            SignatureCache::default(),
        ));
    };
    match read {
        Ok(Some(())) => {}
        Ok(None) => {
            return Err((
                crate::BackendError::Other(
                    "the adapter lists audit logs but cannot scan them".into(),
                ),
                s.cache,
            ));
        }
        Err(e) => return Err((e, s.cache)),
    }
    report_progress(units, progress, &mut s.unreported);
    if s.failure.is_none()
        && let Err(f) = s.finish()
    {
        s.failed(f);
    }
    Ok(s)
}

fn check_checkpoint(
    log: LogId,
    cp: &CheckpointRow,
    key: &AuditPublicKey,
    cache: &mut SignatureCache,
) -> Result<(), String> {
    let signed = to_signed(log, cp).map_err(|e| e.to_string())?;
    key.verify_cached(&signed, cache).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logs(sizes: &[u64]) -> Vec<(LogId, u64)> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let mut id = [0u8; 16];
                id[15] = u8::try_from(i + 1).unwrap();
                (LogId::from_bytes(id), *n)
            })
            .collect()
    }

    /// The runs `split_logs` cuts, as their sizes.
    fn runs(logs: &[(LogId, u64)], workers: usize) -> Vec<u64> {
        let bounds = split_logs(logs, workers);
        let mut out = vec![0];
        for (l, n) in logs {
            if bounds.contains(l) {
                out.push(0);
            }
            *out.last_mut().unwrap() += n;
        }
        out
    }

    #[test]
    fn runs_shrink_towards_the_end_and_cover_every_log() {
        let equal = logs(&[1_000; 64]);
        let r = runs(&equal, 2);
        assert_eq!(r.iter().sum::<u64>(), 64_000);
        // The first run is about a quarter of the whole (half of what is left per worker)…
        assert!((15_000..=17_000).contains(&r[0]), "{r:?}");
        // … and the runs never grow, down to single logs at the end.
        assert!(r.windows(2).all(|w| w[1] <= w[0]), "{r:?}");
        assert_eq!(*r.last().unwrap(), 1_000, "{r:?}");
        // No run is cut below the floor (1/64 of the whole, here a single log).
        assert!(r.iter().all(|n| *n >= 1_000));
    }

    #[test]
    fn a_long_log_ends_its_run_and_small_ones_are_not_cut_finer_than_the_floor() {
        // The logs before the long one join its run; the rest are below the floor together.
        assert_eq!(
            runs(&logs(&[10, 10, 100_000, 10, 10]), 2),
            vec![100_020, 20]
        );
        assert_eq!(split_logs(&[], 2), Vec::<LogId>::new());
        assert_eq!(runs(&logs(&[5]), 4), vec![5]);
        // One worker: still runs (so a failure found early skips the rest), all covered.
        let r = runs(&logs(&[100; 10]), 1);
        assert_eq!(r.iter().sum::<u64>(), 1_000);
    }
}
