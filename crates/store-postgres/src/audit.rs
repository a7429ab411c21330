//! The audit logs on PostgreSQL (migration `0004_audit.sql`).
//!
//! - A tenant write appends its entry in the same pipelined transaction as the write (see
//!   [`with_append`]): one extra statement, no extra round trip. The statement inserts into
//!   `audit_pending` only if the write took effect, which it checks in SQL (the fresh record
//!   exists; the record holds exactly the new ciphertext; the record to delete exists at the
//!   expected version and is locked before the delete runs).
//! - Reads, denials and operator actions append with [`PostgresStore`]'s `audit_append`: one
//!   pipelined transaction.
//! - The checkpointer *places* pending entries ([`sequence`]): under a per-log advisory lock it
//!   numbers them from the log's size in pending-id order, stores their leaf hashes and deletes
//!   them from the queue, in one transaction.
//!
//! Every tenant log statement runs with the tenant set for row-level security, and filters on
//! `tenant_id = $1` itself.

use std::future::Future;

use bulkhead_audit::LogId;
use bulkhead_audit::entry::entry_leaf;
use bulkhead_core::TenantId;
use bulkhead_store::BackendError;
use bulkhead_store::port::{AuditRow, CheckpointRow};
use tokio_postgres::Row;
use uuid::Uuid;

use crate::conn::{Conn, Mode};
use crate::sql::col;

/// Appends `$2` (reads of a list, unconditionally).
pub(crate) const APPEND: &str = "INSERT INTO audit_pending (tenant_id, body) VALUES ($1, $2)";

/// Appends `$4` for the record `$3` of collection `$2` if it exists: after an insert, the
/// insert made it (its id is fresh); beside a read, the read found it.
pub(crate) const AFTER_INSERT: &str = "INSERT INTO audit_pending (tenant_id, body)
    SELECT $1, $4 WHERE EXISTS (
        SELECT 1 FROM records WHERE tenant_id = $1 AND collection = $2 AND id = $3)";

/// Appends `$6` if the record now holds exactly this update's version and ciphertext.
pub(crate) const AFTER_UPDATE: &str = "INSERT INTO audit_pending (tenant_id, body)
    SELECT $1, $6 WHERE EXISTS (
        SELECT 1 FROM records WHERE tenant_id = $1 AND collection = $2 AND id = $3
           AND version = $4 AND data = $5)";

/// Runs BEFORE the delete: appends `$5` if the record exists at the expected version (`$4`,
/// or any), and locks it so that the delete that follows is the one that removes it.
pub(crate) const BEFORE_DELETE: &str = "WITH r AS (
        SELECT 1 FROM records WHERE tenant_id = $1 AND collection = $2 AND id = $3
           AND ($4::bigint IS NULL OR version = $4) FOR UPDATE)
    INSERT INTO audit_pending (tenant_id, body) SELECT $1, $5 FROM r";

/// Both statements of a pipelined transaction body, sent back to back on the first poll (so
/// `Conn::transaction`'s single round trip holds): `first`, then `second`. Returns both.
pub(crate) fn both<A, B>(
    first: impl Future<Output = Result<A, tokio_postgres::Error>>,
    second: impl Future<Output = Result<B, tokio_postgres::Error>>,
) -> impl Future<Output = Result<(A, B), tokio_postgres::Error>> {
    futures::future::try_join(first, second)
}

/// The tables of a log: pending queue, entries, checkpoints.
fn tables(log: LogId) -> (&'static str, &'static str, &'static str) {
    match log {
        LogId::Operator => (
            "audit_operator_pending",
            "audit_operator_entries",
            "audit_operator_checkpoints",
        ),
        LogId::Tenant(_) => ("audit_pending", "audit_entries", "audit_checkpoints"),
    }
}

/// The tenant set for row-level security while working on `log` (the nil id for the operator
/// log, which has no RLS and whose rows all carry the nil id).
pub(crate) fn rls_tenant(log: LogId) -> TenantId {
    TenantId::from_bytes(log.to_bytes())
}

fn log_uuid(log: LogId) -> Uuid {
    Uuid::from_bytes(log.to_bytes())
}

fn position(v: u64) -> Result<i64, BackendError> {
    i64::try_from(v).map_err(|_| BackendError::Other(format!("audit position {v} is out of range")))
}

fn unposition(v: i64) -> Result<u64, BackendError> {
    u64::try_from(v).map_err(|_| BackendError::Other("stored audit position is invalid".into()))
}

fn hash(b: Vec<u8>) -> Result<[u8; 32], BackendError> {
    <[u8; 32]>::try_from(b.as_slice())
        .map_err(|_| BackendError::Other("stored audit hash is invalid".into()))
}

pub(crate) async fn append(
    conn: &Conn,
    log: LogId,
    bodies: &[Vec<u8>],
) -> Result<(), BackendError> {
    let (pending, _, _) = tables(log);
    let sql = format!(
        "INSERT INTO {pending} (tenant_id, body)
         SELECT $1, b FROM unnest($2::bytea[]) WITH ORDINALITY AS u(b, n) ORDER BY n"
    );
    let (tx, [st]) = conn.prepare_tx(Mode::Write, [sql.as_str()]).await?;
    conn.transaction(
        &tx,
        rls_tenant(log),
        conn.client()?.execute(&st, &[&log_uuid(log), &bodies]),
    )
    .await
    .map(drop)
}

/// The advisory lock that lets one sequencer at a time place a log's entries.
fn lock_key(log: LogId) -> i64 {
    let b = log.to_bytes();
    let mut k = [0u8; 8];
    for (i, x) in b.iter().enumerate() {
        if let Some(slot) = k.get_mut(i % 8) {
            *slot ^= x;
        }
    }
    // "audit" salt, so the key differs from the migration lock's.
    i64::from_be_bytes(k) ^ 0x0061_7564_6974_0000
}

/// Most pending entries placed by one transaction.
const SEQUENCE_BATCH: i64 = 10_000;

/// Places pending entries; returns the log's size afterwards.
pub(crate) async fn sequence(conn: &Conn, log: LogId) -> Result<u64, BackendError> {
    let c = conn.client()?;
    let (pending, entries, checkpoints) = tables(log);
    let id = log_uuid(log);
    let run = async {
        c.batch_execute("BEGIN").await?;
        c.execute(
            "SELECT set_config('bulkhead.tenant_id', $1, true)",
            &[&rls_tenant(log).to_string()],
        )
        .await?;
        c.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key(log)])
            .await?;
        let size_row = c
            .query_one(
                &format!(
                    "SELECT greatest(
                        (SELECT coalesce(max(seq) + 1, 0) FROM {entries} WHERE tenant_id = $1),
                        (SELECT coalesce(max(size), 0) FROM {checkpoints} WHERE tenant_id = $1))"
                ),
                &[&id],
            )
            .await?;
        let mut next: i64 = size_row.try_get(0)?;
        loop {
            let rows = c
                .query(
                    &format!(
                        "SELECT id, body FROM {pending} WHERE tenant_id = $1 ORDER BY id LIMIT $2"
                    ),
                    &[&id, &SEQUENCE_BATCH],
                )
                .await?;
            if rows.is_empty() {
                break;
            }
            let mut ids = Vec::with_capacity(rows.len());
            let mut seqs = Vec::with_capacity(rows.len());
            let mut bodies: Vec<Vec<u8>> = Vec::with_capacity(rows.len());
            let mut leaves: Vec<Vec<u8>> = Vec::with_capacity(rows.len());
            for r in &rows {
                let pid: i64 = r.try_get(0)?;
                let body: Vec<u8> = r.try_get(1)?;
                let seq = u64::try_from(next).unwrap_or(0);
                leaves.push(entry_leaf(log, seq, &body).to_vec());
                ids.push(pid);
                seqs.push(next);
                bodies.push(body);
                next += 1;
            }
            c.execute(
                &format!(
                    "INSERT INTO {entries} (tenant_id, seq, body, leaf)
                     SELECT $1, s, b, l FROM unnest($2::bigint[], $3::bytea[], $4::bytea[]) AS u(s, b, l)"
                ),
                &[&id, &seqs, &bodies, &leaves],
            )
            .await?;
            c.execute(
                &format!("DELETE FROM {pending} WHERE tenant_id = $1 AND id = ANY($2)"),
                &[&id, &ids],
            )
            .await?;
        }
        c.batch_execute("COMMIT").await?;
        Ok::<i64, tokio_postgres::Error>(next)
    };
    match run.await {
        Ok(n) => unposition(n),
        Err(e) => {
            // Leave the connection clean, or out of the pool.
            if c.batch_execute("ROLLBACK").await.is_err() {
                conn.discard();
            }
            Err(conn.fail(&e))
        }
    }
}

fn row_of(r: &Row) -> Result<AuditRow, BackendError> {
    Ok(AuditRow {
        seq: unposition(col(r, 0)?)?,
        body: col(r, 1)?,
        leaf: hash(col(r, 2)?)?,
    })
}

pub(crate) async fn entries(
    conn: &Conn,
    log: LogId,
    from: u64,
    limit: usize,
) -> Result<Vec<AuditRow>, BackendError> {
    let (_, entries, _) = tables(log);
    let sql = format!(
        "SELECT seq, body, leaf FROM {entries} WHERE tenant_id = $1 AND seq >= $2
         ORDER BY seq LIMIT $3"
    );
    let (tx, [st]) = conn.prepare_tx(Mode::Read, [sql.as_str()]).await?;
    let rows = conn
        .transaction(
            &tx,
            rls_tenant(log),
            conn.client()?.query(
                &st,
                &[
                    &log_uuid(log),
                    &position(from)?,
                    &crate::sql::sql_limit(limit),
                ],
            ),
        )
        .await?;
    rows.iter().map(row_of).collect()
}

pub(crate) async fn leaves(
    conn: &Conn,
    log: LogId,
    from: u64,
    to: u64,
) -> Result<Vec<[u8; 32]>, BackendError> {
    let (_, entries, _) = tables(log);
    let sql = format!(
        "SELECT leaf FROM {entries} WHERE tenant_id = $1 AND seq >= $2 AND seq < $3 ORDER BY seq"
    );
    let (tx, [st]) = conn.prepare_tx(Mode::Read, [sql.as_str()]).await?;
    let rows = conn
        .transaction(
            &tx,
            rls_tenant(log),
            conn.client()?
                .query(&st, &[&log_uuid(log), &position(from)?, &position(to)?]),
        )
        .await?;
    rows.iter().map(|r| hash(col(r, 0)?)).collect()
}

pub(crate) async fn put_checkpoint(
    conn: &Conn,
    log: LogId,
    row: &CheckpointRow,
) -> Result<(), BackendError> {
    let (_, _, checkpoints) = tables(log);
    let sql = format!(
        "INSERT INTO {checkpoints}
         (tenant_id, size, root, time_us, key_id, signature, frontier, batch)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (tenant_id, size) DO NOTHING"
    );
    let (tx, [st]) = conn.prepare_tx(Mode::Write, [sql.as_str()]).await?;
    conn.transaction(
        &tx,
        rls_tenant(log),
        conn.client()?.execute(
            &st,
            &[
                &log_uuid(log),
                &position(row.size)?,
                &row.root.as_slice(),
                &row.time_us,
                &row.key_id,
                &row.signature,
                &row.frontier,
                &row.batch,
            ],
        ),
    )
    .await
    .map(drop)
}

const CHECKPOINT_COLUMNS: &str = "size, root, time_us, key_id, signature, frontier, batch";

fn checkpoint_of(r: &Row) -> Result<CheckpointRow, BackendError> {
    Ok(CheckpointRow {
        size: unposition(col(r, 0)?)?,
        root: hash(col(r, 1)?)?,
        time_us: col(r, 2)?,
        key_id: col(r, 3)?,
        signature: col(r, 4)?,
        frontier: col(r, 5)?,
        batch: col(r, 6)?,
    })
}

pub(crate) async fn checkpoint(
    conn: &Conn,
    log: LogId,
    size: Option<u64>,
) -> Result<Option<CheckpointRow>, BackendError> {
    let (_, _, checkpoints) = tables(log);
    // Size -1 never exists: `$2 < 0` asks for the latest.
    let sql = format!(
        "SELECT {CHECKPOINT_COLUMNS} FROM {checkpoints}
         WHERE tenant_id = $1 AND ($2::bigint < 0 OR size = $2::bigint) ORDER BY size DESC LIMIT 1"
    );
    let want = match size {
        Some(n) => position(n)?,
        None => -1,
    };
    let (tx, [st]) = conn.prepare_tx(Mode::Read, [sql.as_str()]).await?;
    let row = conn
        .transaction(
            &tx,
            rls_tenant(log),
            conn.client()?.query_opt(&st, &[&log_uuid(log), &want]),
        )
        .await?;
    row.map(|r| checkpoint_of(&r)).transpose()
}

pub(crate) async fn checkpoints(
    conn: &Conn,
    log: LogId,
    after: u64,
    limit: usize,
) -> Result<Vec<CheckpointRow>, BackendError> {
    let (_, _, checkpoints) = tables(log);
    let sql = format!(
        "SELECT {CHECKPOINT_COLUMNS} FROM {checkpoints} WHERE tenant_id = $1 AND size > $2
         ORDER BY size LIMIT $3"
    );
    let (tx, [st]) = conn.prepare_tx(Mode::Read, [sql.as_str()]).await?;
    let rows = conn
        .transaction(
            &tx,
            rls_tenant(log),
            conn.client()?.query(
                &st,
                &[
                    &log_uuid(log),
                    &position(after)?,
                    &crate::sql::sql_limit(limit),
                ],
            ),
        )
        .await?;
    rows.iter().map(checkpoint_of).collect()
}

pub(crate) async fn prune(conn: &Conn, log: LogId, below: u64) -> Result<u64, BackendError> {
    let (_, entries, _) = tables(log);
    let sql = format!("DELETE FROM {entries} WHERE tenant_id = $1 AND seq < $2");
    let (tx, [st]) = conn.prepare_tx(Mode::Write, [sql.as_str()]).await?;
    let n = conn
        .transaction(
            &tx,
            rls_tenant(log),
            conn.client()?
                .execute(&st, &[&log_uuid(log), &position(below)?]),
        )
        .await?;
    Ok(n)
}
