//! The audit logs' SQL for the SQLite adapter. The one writer thread places entries as they
//! are appended (sequence number = the log's size, leaf hash computed here), inside the same
//! group-commit transaction as the data change they describe.

use bulkhead_audit::LogId;
use bulkhead_audit::entry::entry_leaf;
use bulkhead_store::port::{AuditRow, AuditScanChunk, AuditScanRow, CheckpointRow};
use rusqlite::{Connection, OptionalExtension, Row, params};

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

/// The log's size: one past its last entry, or its latest checkpoint's size if retention
/// pruned every entry.
pub(crate) fn size(c: &Connection, log: LogId) -> rusqlite::Result<u64> {
    let log = log.to_bytes();
    let next: i64 = c
        .prepare_cached("SELECT coalesce(max(seq) + 1, 0) FROM audit_entries WHERE log = ?1")?
        .query_row([log.as_slice()], |r| r.get(0))?;
    let checkpointed: i64 = c
        .prepare_cached("SELECT coalesce(max(size), 0) FROM audit_checkpoints WHERE log = ?1")?
        .query_row([log.as_slice()], |r| r.get(0))?;
    to_u64(next.max(checkpointed))
}

/// Places `bodies` at the end of the log, whose size is `size` (the writer knows it: see
/// `Tx::append`). Runs on the writer, inside the caller's transaction.
pub(crate) fn append_at(
    c: &Connection,
    log: LogId,
    size: u64,
    bodies: &[Vec<u8>],
) -> rusqlite::Result<()> {
    let id = log.to_bytes();
    let mut st = c.prepare_cached(
        "INSERT INTO audit_entries (log, seq, body, leaf) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (seq, body) in (size..).zip(bodies) {
        let leaf = entry_leaf(log, seq, body);
        st.execute(params![id.as_slice(), to_i64(seq)?, body, leaf.as_slice()])?;
    }
    Ok(())
}

fn row_of(r: &Row<'_>) -> rusqlite::Result<AuditRow> {
    Ok(AuditRow {
        seq: to_u64(r.get(0)?)?,
        body: r.get(1)?,
        leaf: hash(r.get(2)?)?,
    })
}

pub(crate) fn entries(
    c: &Connection,
    log: LogId,
    from: u64,
    limit: usize,
) -> rusqlite::Result<Vec<AuditRow>> {
    let mut st = c.prepare_cached(
        "SELECT seq, body, leaf FROM audit_entries WHERE log = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3",
    )?;
    let rows = st.query_map(
        params![
            log.to_bytes().as_slice(),
            to_i64(from)?,
            i64::try_from(limit).unwrap_or(i64::MAX)
        ],
        row_of,
    )?;
    rows.collect()
}

pub(crate) fn leaves(
    c: &Connection,
    log: LogId,
    from: u64,
    to: u64,
) -> rusqlite::Result<Vec<[u8; 32]>> {
    let mut st = c.prepare_cached(
        "SELECT leaf FROM audit_entries WHERE log = ?1 AND seq >= ?2 AND seq < ?3 ORDER BY seq",
    )?;
    let rows = st.query_map(
        params![log.to_bytes().as_slice(), to_i64(from)?, to_i64(to)?],
        |r| hash(r.get(0)?),
    )?;
    rows.collect()
}

pub(crate) fn put_checkpoint(
    c: &Connection,
    log: LogId,
    row: &CheckpointRow,
) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT OR IGNORE INTO audit_checkpoints (log, size, root, time_us, key_id, signature, frontier)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        log.to_bytes().as_slice(),
        to_i64(row.size)?,
        row.root.as_slice(),
        row.time_us,
        row.key_id,
        row.signature,
        row.frontier,
    ])?;
    Ok(())
}

const CHECKPOINT_COLUMNS: &str = "size, root, time_us, key_id, signature, frontier";

fn checkpoint_of(r: &Row<'_>) -> rusqlite::Result<CheckpointRow> {
    Ok(CheckpointRow {
        size: to_u64(r.get(0)?)?,
        root: hash(r.get(1)?)?,
        time_us: r.get(2)?,
        key_id: r.get(3)?,
        signature: r.get(4)?,
        frontier: r.get(5)?,
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

pub(crate) fn prune(c: &Connection, log: LogId, below: u64) -> rusqlite::Result<u64> {
    let n = c
        .prepare_cached("DELETE FROM audit_entries WHERE log = ?1 AND seq < ?2")?
        .execute(params![log.to_bytes().as_slice(), to_i64(below)?])?;
    Ok(u64::try_from(n).unwrap_or(u64::MAX))
}

fn log_of(b: &[u8]) -> rusqlite::Result<LogId> {
    <[u8; 16]>::try_from(b)
        .map(LogId::from_bytes)
        .map_err(|_| bad("log"))
}

/// Entries of every log after `after`, in `(log, seq)` order, bodies in one buffer.
pub(crate) fn scan(
    c: &Connection,
    after: Option<(LogId, u64)>,
    limit: usize,
) -> rusqlite::Result<AuditScanChunk> {
    let limit_i = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut out = AuditScanChunk {
        rows: Vec::with_capacity(limit.min(65_536)),
        bodies: Vec::with_capacity(limit.min(65_536).saturating_mul(256)),
    };
    let mut push = |r: &Row<'_>| -> rusqlite::Result<()> {
        let log = log_of(r.get_ref(0)?.as_blob()?)?;
        let seq = to_u64(r.get(1)?)?;
        let body = r.get_ref(2)?.as_blob()?;
        let leaf = <[u8; 32]>::try_from(r.get_ref(3)?.as_blob()?).map_err(|_| bad("hash"))?;
        let start = out.bodies.len();
        out.bodies.extend_from_slice(body);
        out.rows.push(AuditScanRow {
            log,
            seq,
            start,
            end: out.bodies.len(),
            leaf,
        });
        Ok(())
    };
    match after {
        None => {
            let mut st = c.prepare_cached(
                "SELECT log, seq, body, leaf FROM audit_entries ORDER BY log, seq LIMIT ?1",
            )?;
            let mut rows = st.query([limit_i])?;
            while let Some(r) = rows.next()? {
                push(r)?;
            }
        }
        Some((log, seq)) => {
            let mut st = c.prepare_cached(
                "SELECT log, seq, body, leaf FROM audit_entries WHERE (log, seq) > (?1, ?2)
                 ORDER BY log, seq LIMIT ?3",
            )?;
            let mut rows = st.query(params![log.to_bytes().as_slice(), to_i64(seq)?, limit_i])?;
            while let Some(r) = rows.next()? {
                push(r)?;
            }
        }
    }
    Ok(out)
}

/// Checkpoints of every log after `after`, in `(log, size)` order.
pub(crate) fn scan_checkpoints(
    c: &Connection,
    after: Option<(LogId, u64)>,
    limit: usize,
) -> rusqlite::Result<Vec<(LogId, CheckpointRow)>> {
    let (log, size) = match after {
        Some((l, s)) => (l.to_bytes().to_vec(), to_i64(s)?),
        // Below every log id and size.
        None => (Vec::new(), -1),
    };
    let mut st = c.prepare_cached(&format!(
        "SELECT log, {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE (log, size) > (?1, ?2)
         ORDER BY log, size LIMIT ?3"
    ))?;
    let rows = st.query_map(
        params![log, size, i64::try_from(limit).unwrap_or(i64::MAX)],
        |r| {
            Ok((
                log_of(r.get_ref(0)?.as_blob()?)?,
                CheckpointRow {
                    size: to_u64(r.get(1)?)?,
                    root: hash(r.get(2)?)?,
                    time_us: r.get(3)?,
                    key_id: r.get(4)?,
                    signature: r.get(5)?,
                    frontier: r.get(6)?,
                },
            ))
        },
    )?;
    rows.collect()
}
