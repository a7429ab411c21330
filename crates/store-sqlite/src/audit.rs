//! The audit logs' SQL for the SQLite adapter. The logs live in `audit.db`; an entry reaches its
//! log in two steps: it is appended (the entry of a data change to `audit_pending` in
//! `bulkhead.db`, in the change's transaction; every other entry to the [`Journal`]), then the
//! audit writer thread *places* it ([`place`]): gives it its sequence number and leaf hash and
//! stores it in its log, where every read finds it.
//!
//! A log is stored in **blocks** (`bulkhead_audit::block`): one row of `audit_blocks` holds up
//! to `block::MAX_ENTRIES` consecutive entries of one log (each with its leaf hash). Placement writes one row per log it touches,
//! appended at the end of the table, and a small index entry; reading a log or verifying every
//! log costs one row per block, not per entry. An entry's sequence number is its block's
//! `first` plus its position in the block.

use bulkhead_audit::LogId;
use bulkhead_audit::block;
use bulkhead_audit::entry::entry_leaf;
use bulkhead_store::BackendError;
use bulkhead_store::port::{AuditBlockRef, AuditRow, AuditScanItem, CheckpointRow};
use rusqlite::{Connection, OptionalExtension, Row, params};
use std::ops::ControlFlow;

use crate::Pool;
use crate::journal::Journal;

/// The `audit_state` row holding the journal offset up to which entries are placed.
const JOURNAL_PLACED: &str = "journal_placed";
/// The `audit_state` row holding the last row of `audit_pending` placed.
const PENDING_PLACED: &str = "pending_placed";

fn bad(what: &str) -> rusqlite::Error {
    rusqlite::Error::InvalidColumnType(
        0,
        format!("stored audit {what} is invalid"),
        rusqlite::types::Type::Blob,
    )
}

fn to_i64(v: u64) -> rusqlite::Result<i64> {
    i64::try_from(v).map_err(|_| bad("position"))
}

fn to_u64(v: i64) -> rusqlite::Result<u64> {
    u64::try_from(v).map_err(|_| bad("position"))
}

fn hash(b: Vec<u8>) -> rusqlite::Result<[u8; 32]> {
    <[u8; 32]>::try_from(b.as_slice()).map_err(|_| bad("hash"))
}

/// The size of the log's placed part: one past its last entry, or its latest checkpoint's
/// size if retention pruned every entry.
pub(crate) fn size(c: &Connection, log: LogId) -> rusqlite::Result<u64> {
    let log = log.to_bytes();
    let next: i64 = c
        .prepare_cached(
            "SELECT coalesce((SELECT first + count FROM audit_blocks WHERE log = ?1
                              ORDER BY first DESC LIMIT 1), 0)",
        )?
        .query_row([log.as_slice()], |r| r.get(0))?;
    let checkpointed: i64 = c
        .prepare_cached("SELECT coalesce(max(size), 0) FROM audit_checkpoints WHERE log = ?1")?
        .query_row([log.as_slice()], |r| r.get(0))?;
    to_u64(next.max(checkpointed))
}

fn block_error(e: block::BlockError) -> rusqlite::Error {
    bad(&format!("block ({e})"))
}

/// Appends one entry to a block being built.
pub(crate) fn push_entry(
    block: &mut Vec<u8>,
    body: &[u8],
    leaf: &[u8; 32],
) -> rusqlite::Result<()> {
    block::push(block, body, leaf).map_err(block_error)
}

/// The entries of a stored block, which must hold exactly `count` of them: `(body, leaf)`.
fn block_entries(bytes: &[u8], count: u64) -> rusqlite::Result<Vec<(&[u8], [u8; 32])>> {
    block::entries_exact(bytes, count).map_err(block_error)
}

/// A block of a log that does not read back: the first position it cannot give.
/// [`crate::sql::map`] turns it into [`BackendError::AuditDamaged`].
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub(crate) struct DamagedBlock {
    pub(crate) at: u64,
    pub(crate) what: String,
}

/// The entries of the block starting at `first` that holds `count` of them, handed to `f` in
/// order while it returns `true`; the entries before a damaged place are handed out first, and
/// the damage is then reported at its position. Returns whether `f` wants more.
fn each_in_block(
    bytes: &[u8],
    first: u64,
    count: u64,
    f: &mut impl FnMut(u64, &[u8], &[u8; 32]) -> bool,
) -> rusqlite::Result<bool> {
    block::each_entry(bytes, first, count, |seq, body, leaf| {
        if f(seq, body, &leaf) {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        }
    })
    .map(|flow| flow.is_continue())
    .map_err(|d| {
        rusqlite::Error::FromSqlConversionFailure(
            2,
            rusqlite::types::Type::Blob,
            Box::new(DamagedBlock {
                at: d.at,
                what: d.to_string(),
            }),
        )
    })
}

/// Stores a block of the log's entries starting at `first`.
pub(crate) fn put_block(
    c: &Connection,
    log: &[u8; 16],
    first: u64,
    count: usize,
    block: &[u8],
) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT INTO audit_blocks (log, first, count, entries) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![
        log.as_slice(),
        to_i64(first)?,
        i64::try_from(count).map_err(|_| bad("block"))?,
        block
    ])
    .map(drop)
}

/// Calls `f(seq, body, leaf)` for the log's stored entries from `from` on, in order, until it
/// returns `false` or the log ends.
fn each_entry(
    c: &Connection,
    log: LogId,
    from: u64,
    mut f: impl FnMut(u64, &[u8], &[u8; 32]) -> bool,
) -> rusqlite::Result<()> {
    let mut st = c.prepare_cached(
        "SELECT first, count, entries FROM audit_blocks WHERE log = ?1 AND first >=
             coalesce((SELECT max(first) FROM audit_blocks WHERE log = ?1 AND first <= ?2), 0)
         ORDER BY first",
    )?;
    let mut rows = st.query(params![log.to_bytes().as_slice(), to_i64(from)?])?;
    let mut wanted = |seq, body: &[u8], leaf: &[u8; 32]| seq < from || f(seq, body, leaf);
    while let Some(r) = rows.next()? {
        let first = to_u64(r.get(0)?)?;
        let count = to_u64(r.get(1)?)?;
        if !each_in_block(r.get_ref(2)?.as_blob()?, first, count, &mut wanted)? {
            return Ok(());
        }
    }
    Ok(())
}

/// Appends the audit entries of a group's data changes (encoded journal records) to
/// `audit_pending` (in `bulkhead.db`), in the group's transaction. They are placed later,
/// with the journal's.
pub(crate) fn append_pending(c: &Connection, records: &[u8]) -> rusqlite::Result<()> {
    c.prepare_cached("INSERT INTO audit_pending (entries) VALUES (?1)")?
        .execute([records])
        .map(drop)
}

/// Deletes the rows of `audit_pending` (in `bulkhead.db`) up to `upto`, which are placed.
pub(crate) fn clear_pending(c: &Connection, upto: i64) -> rusqlite::Result<()> {
    c.prepare_cached("DELETE FROM audit_pending WHERE n <= ?1")?
        .execute([upto])
        .map(drop)
}

fn state(c: &Connection, name: &str) -> rusqlite::Result<Option<i64>> {
    c.prepare_cached("SELECT value FROM audit_state WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()
}

fn set_state(c: &Connection, name: &str, value: i64) -> rusqlite::Result<()> {
    c.prepare_cached("INSERT OR REPLACE INTO audit_state (name, value) VALUES (?1, ?2)")?
        .execute(params![name, value])
        .map(drop)
}

/// How far the journal is placed (its offset).
pub(crate) fn journal_placed(c: &Connection) -> rusqlite::Result<u64> {
    state(c, JOURNAL_PLACED)?.map_or(Ok(0), to_u64)
}

/// What a placement covered.
#[derive(Debug, Default)]
pub(crate) struct Placed {
    /// The journal offset now placed, if it moved.
    pub journal: Option<u64>,
    /// The last `audit_pending` row now placed, if any was.
    pub pending: Option<i64>,
}

/// One entry being placed.
struct Placing {
    log: [u8; 16],
    /// The entry's time (its body's first field), so that a log's entries from the journal
    /// and from `audit_pending` are placed in the order they were made.
    time_us: i64,
    body: Vec<u8>,
}

/// The entries of the rows of `audit_pending` after `after`, in order, and the last row's
/// number.
fn pending_after(data: &Pool, after: i64) -> Result<(Vec<Placing>, Option<i64>), BackendError> {
    let rows: Vec<(i64, Vec<u8>)> = data.with(|c| {
        let mut st =
            c.prepare_cached("SELECT n, entries FROM audit_pending WHERE n > ?1 ORDER BY n")?;
        let rows = st.query_map([after], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    })?;
    let last = rows.last().map(|(n, _)| *n);
    let mut out = Vec::new();
    for (n, records) in rows {
        let mut rest = records.as_slice();
        while !rest.is_empty() {
            match crate::journal::decode(rest) {
                Ok(Some((r, len))) => {
                    out.push(Placing {
                        log: r.log.to_bytes(),
                        time_us: time_of(&r.body),
                        body: r.body,
                    });
                    rest = rest.get(len..).unwrap_or_default();
                }
                Ok(None) | Err(_) => {
                    return Err(BackendError::Other(format!(
                        "audit: pending row {n} is damaged"
                    )));
                }
            }
        }
    }
    Ok((out, last))
}

/// Places every appended entry: the rows of `audit_pending` not placed yet and the journal's
/// records from where placement stopped to its written end. Within each log, entries are
/// ordered by their time (then journal before pending, then as appended), numbered from the
/// log's size, hashed and inserted; how far each source is placed is stored with them. Runs in
/// the caller's transaction on `audit.db` (the audit writer's).
///
/// `audit_pending` is read before the journal's end: an entry acknowledged before another
/// entry's request began was durable first, so whenever the later one is placed in a round the
/// earlier one is too, and the time order puts it first. `audit_pending` numbers its rows with
/// AUTOINCREMENT (never reused, in commit order: one writer), so "after the last placed row" is
/// exactly "not placed yet".
pub(crate) fn place(
    c: &Connection,
    journal: &Journal,
    data: &Pool,
) -> Result<Placed, BackendError> {
    let map = crate::sql::map;
    let pending_from = state(c, PENDING_PLACED).map_err(map)?.unwrap_or(0);
    let (mut pending, last_pending) = pending_after(data, pending_from)?;
    let from = journal_placed(c).map_err(map)?;
    let to = journal.written().max(from);
    if pending.is_empty() && from == to {
        return Ok(Placed::default());
    }
    let mut all: Vec<Placing> = journal
        .read(from, to)?
        .into_iter()
        .map(|r| Placing {
            log: r.log.to_bytes(),
            time_us: time_of(&r.body),
            body: r.body,
        })
        .collect();
    all.append(&mut pending);
    // Stable: equal keys keep the journal first, then pending rows, each as appended.
    all.sort_by_key(|e| (e.log, e.time_us));
    // One block per run of a log's entries (at most `block::MAX_ENTRIES` each).
    let mut at = 0;
    while let Some(head) = all.get(at) {
        let id = head.log;
        let log = LogId::from_bytes(id);
        let mut next = size(c, log).map_err(map)?;
        let (mut first, mut count, mut block) = (next, 0usize, Vec::new());
        while let Some(e) = all.get(at).filter(|e| e.log == id) {
            let leaf = entry_leaf(log, next, &e.body);
            push_entry(&mut block, &e.body, &leaf).map_err(map)?;
            next += 1;
            count += 1;
            at += 1;
            if count == block::MAX_ENTRIES {
                put_block(c, &id, first, count, &block).map_err(map)?;
                (first, count) = (next, 0);
                block.clear();
            }
        }
        if count > 0 {
            put_block(c, &id, first, count, &block).map_err(map)?;
        }
    }
    if let Some(n) = last_pending {
        set_state(c, PENDING_PLACED, n).map_err(map)?;
    }
    if to > from {
        set_state(c, JOURNAL_PLACED, to_i64(to).map_err(map)?).map_err(map)?;
    }
    Ok(Placed {
        journal: (to > from).then_some(to),
        pending: last_pending,
    })
}

/// The time field of an encoded entry body (`EntryBody::encode` puts it first); a body too
/// short to hold one sorts first.
fn time_of(body: &[u8]) -> i64 {
    body.get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(i64::MIN, i64::from_be_bytes)
}

pub(crate) fn entries(
    c: &Connection,
    log: LogId,
    from: u64,
    limit: usize,
) -> rusqlite::Result<Vec<AuditRow>> {
    let mut out = Vec::new();
    if limit > 0 {
        each_entry(c, log, from, |seq, body, leaf| {
            out.push(AuditRow {
                seq,
                body: body.to_vec(),
                leaf: *leaf,
            });
            out.len() < limit
        })?;
    }
    Ok(out)
}

pub(crate) fn leaves(
    c: &Connection,
    log: LogId,
    from: u64,
    to: u64,
) -> rusqlite::Result<Vec<[u8; 32]>> {
    let mut out = Vec::new();
    if from < to {
        each_entry(c, log, from, |seq, _, leaf| {
            if seq < to {
                out.push(*leaf);
            }
            seq + 1 < to
        })?;
    }
    Ok(out)
}

pub(crate) fn put_checkpoint(
    c: &Connection,
    log: LogId,
    row: &CheckpointRow,
) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT OR IGNORE INTO audit_checkpoints
         (log, size, root, time_us, key_id, signature, frontier, batch)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        log.to_bytes().as_slice(),
        to_i64(row.size)?,
        row.root.as_slice(),
        row.time_us,
        row.key_id,
        row.signature,
        row.frontier,
        row.batch,
    ])?;
    Ok(())
}

const CHECKPOINT_COLUMNS: &str = "size, root, time_us, key_id, signature, frontier, batch";

fn checkpoint_of(r: &Row<'_>) -> rusqlite::Result<CheckpointRow> {
    checkpoint_at(r, 0)
}

/// The checkpoint in [`CHECKPOINT_COLUMNS`] from column `at` on.
fn checkpoint_at(r: &Row<'_>, at: usize) -> rusqlite::Result<CheckpointRow> {
    Ok(CheckpointRow {
        size: to_u64(r.get(at)?)?,
        root: hash(r.get(at + 1)?)?,
        time_us: r.get(at + 2)?,
        key_id: r.get(at + 3)?,
        signature: r.get(at + 4)?,
        frontier: r.get(at + 5)?,
        batch: r.get(at + 6)?,
    })
}

pub(crate) fn checkpoint(
    c: &Connection,
    log: LogId,
    size: Option<u64>,
) -> rusqlite::Result<Option<CheckpointRow>> {
    let id = log.to_bytes();
    match size {
        Some(n) => c
            .prepare_cached(&format!(
                "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE log = ?1 AND size = ?2"
            ))?
            .query_row(params![id.as_slice(), to_i64(n)?], checkpoint_of)
            .optional(),
        None => c
            .prepare_cached(&format!(
                "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE log = ?1
                 ORDER BY size DESC LIMIT 1"
            ))?
            .query_row(params![id.as_slice()], checkpoint_of)
            .optional(),
    }
}

pub(crate) fn checkpoints(
    c: &Connection,
    log: LogId,
    after: u64,
    limit: usize,
) -> rusqlite::Result<Vec<CheckpointRow>> {
    let mut st = c.prepare_cached(&format!(
        "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE log = ?1 AND size > ?2
         ORDER BY size LIMIT ?3"
    ))?;
    let rows = st.query_map(
        params![
            log.to_bytes().as_slice(),
            to_i64(after)?,
            i64::try_from(limit).unwrap_or(i64::MAX)
        ],
        checkpoint_of,
    )?;
    rows.collect()
}

/// Retention: deletes the log's entries below `below`. Blocks wholly below go; a block
/// straddling `below` is replaced by one holding its entries from `below` on. Returns how many
/// entries were deleted.
pub(crate) fn prune(c: &Connection, log: LogId, below: u64) -> rusqlite::Result<u64> {
    let id = log.to_bytes();
    let below_i = to_i64(below)?;
    let whole: i64 = c
        .prepare_cached(
            "SELECT coalesce(sum(count), 0) FROM audit_blocks WHERE log = ?1 AND first + count <= ?2",
        )?
        .query_row(params![id.as_slice(), below_i], |r| r.get(0))?;
    c.prepare_cached("DELETE FROM audit_blocks WHERE log = ?1 AND first + count <= ?2")?
        .execute(params![id.as_slice(), below_i])?;
    let mut removed = to_u64(whole)?;
    let straddling: Option<(i64, i64, Vec<u8>)> = c
        .prepare_cached(
            "SELECT first, count, entries FROM audit_blocks
             WHERE log = ?1 AND first < ?2 AND first + count > ?2",
        )?
        .query_row(params![id.as_slice(), below_i], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    if let Some((first, count, bytes)) = straddling {
        let entries = block_entries(&bytes, to_u64(count)?)?;
        let skip = usize::try_from(below - to_u64(first)?).map_err(|_| bad("block"))?;
        let mut block = Vec::new();
        for (body, leaf) in entries.iter().skip(skip) {
            push_entry(&mut block, body, leaf)?;
        }
        c.prepare_cached("DELETE FROM audit_blocks WHERE log = ?1 AND first = ?2")?
            .execute(params![id.as_slice(), first])?;
        put_block(c, &id, below, entries.len() - skip, &block)?;
        removed += skip as u64;
    }
    Ok(removed)
}

fn log_of(b: &[u8]) -> rusqlite::Result<LogId> {
    <[u8; 16]>::try_from(b)
        .map(LogId::from_bytes)
        .map_err(|_| bad("log"))
}

/// Hands `visit` the checkpoints of the logs from `from` to below `until`, in `(log, size)`
/// order, then their blocks, in `(log, first)` order, until it says `Break`. Each block's
/// row is found once, its bytes copied once from the database (SQLite reads a block's
/// overflow pages straight into the column's buffer) and visited while still in cache.
pub(crate) fn visit(
    c: &Connection,
    from: Option<LogId>,
    until: Option<LogId>,
    visit: &mut dyn FnMut(AuditScanItem<'_>) -> ControlFlow<()>,
) -> rusqlite::Result<()> {
    // Below every log id / above every log id.
    let from = from.map_or_else(Vec::new, |l| l.to_bytes().to_vec());
    let until = until.map_or_else(|| vec![0xff; 17], |l| l.to_bytes().to_vec());
    let mut st = c.prepare_cached(&format!(
        "SELECT log, {CHECKPOINT_COLUMNS} FROM audit_checkpoints
         WHERE log >= ?1 AND log < ?2 ORDER BY log, size"
    ))?;
    let mut rows = st.query(params![from, until])?;
    while let Some(r) = rows.next()? {
        let log = log_of(r.get_ref(0)?.as_blob()?)?;
        if visit(AuditScanItem::Checkpoint(log, checkpoint_at(r, 1)?)).is_break() {
            return Ok(());
        }
    }
    let mut st = c.prepare_cached(
        "SELECT log, first, count, entries FROM audit_blocks
         WHERE log >= ?1 AND log < ?2 ORDER BY log, first",
    )?;
    let mut rows = st.query(params![from, until])?;
    while let Some(r) = rows.next()? {
        let log = log_of(r.get_ref(0)?.as_blob()?)?;
        let first = to_u64(r.get(1)?)?;
        let count = to_u64(r.get(2)?)?;
        let bytes = r.get_ref(3)?.as_blob()?;
        if visit(AuditScanItem::Block(AuditBlockRef {
            log,
            first,
            count,
            bytes,
        }))
        .is_break()
        {
            break;
        }
    }
    Ok(())
}

/// Runs `f` in one read transaction: the checkpoints and the blocks it reads are one snapshot,
/// whatever a running server places, signs or prunes meanwhile.
pub(crate) fn in_snapshot<T>(
    c: &Connection,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    c.execute_batch("BEGIN DEFERRED")?;
    let out = f(c);
    let end = c.execute_batch(if out.is_ok() { "COMMIT" } else { "ROLLBACK" });
    let out = out?;
    end.map(|()| out)
}

/// Every log with stored entries, in order, and about how many it has, from the index alone:
/// the span between its first and last block's starts, and the last block at the log's
/// average block length; a log of one block counts as [`ESTIMATED_BLOCK`] entries.
pub(crate) fn logs(c: &Connection) -> rusqlite::Result<Vec<(LogId, u64)>> {
    // The index's entries in order, summed up here: SQLite's own grouping costs several times
    // as much per block, and this runs before the verifier's workers can start.
    let mut st = c.prepare_cached("SELECT log, first FROM audit_blocks ORDER BY log, first")?;
    let mut rows = st.query([])?;
    let mut out = Vec::new();
    // The log being summed up: its id, first and last block's start, and its block count.
    let mut open: Option<([u8; 16], u64, u64, u64)> = None;
    let size = |(id, min, max, n): ([u8; 16], u64, u64, u64)| {
        let span = max.saturating_sub(min);
        let size = match n {
            0 | 1 => ESTIMATED_BLOCK,
            n => span + span / (n - 1),
        };
        (LogId::from_bytes(id), size.max(1))
    };
    while let Some(r) = rows.next()? {
        let log = r.get_ref(0)?.as_blob()?;
        let first = to_u64(r.get(1)?)?;
        match open.as_mut() {
            Some((id, _, max, n)) if id.as_slice() == log => {
                *max = first;
                *n += 1;
            }
            _ => {
                let id = <[u8; 16]>::try_from(log).map_err(|_| bad("log"))?;
                if let Some(done) = open.replace((id, first, first, 1)) {
                    out.push(size(done));
                }
            }
        }
    }
    out.extend(open.map(size));
    Ok(out)
}

/// What a log of one block is taken to hold, for sharing work out.
const ESTIMATED_BLOCK: u64 = 64;
