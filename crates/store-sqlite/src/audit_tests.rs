//! Unit tests of the SQLite audit storage: placement of appended entries into their logs,
//! blocks, retention, the offline verifier's scan, and the move of older versions' logs into
//! `audit.db`.
//!
//! The tests drive the adapter's own pieces (the two database connections, the journal, the
//! reader pool and `crate::place`) the way `SqliteStore::open_with` wires them, without its
//! threads, so that every placement happens exactly when a test asks for it.

use bulkhead_audit::entry::entry_leaf;
use bulkhead_audit::{Actor, EntryBody, LogId, Outcome, block};
use bulkhead_store::port::{AuditRow, AuditScanItem, CheckpointRow};
use rusqlite::{Connection, params};
use std::ops::ControlFlow;
use tempfile::TempDir;

use crate::journal::{self, Journal};
use crate::{Pool, audit, schema};

/// A tenant's log named by sixteen copies of `n` (never zero: that is the operator log).
fn log(n: u8) -> LogId {
    LogId::from_bytes([n; 16])
}

/// An entry body at `time_us` whose action is `tag` (how the tests recognise entries).
fn body(time_us: i64, tag: &str) -> Vec<u8> {
    EntryBody {
        time_us,
        actor: Actor::system(),
        action: tag.to_owned(),
        resource: String::new(),
        outcome: Outcome::Success,
        request_id: String::new(),
        source: String::new(),
        reason: String::new(),
    }
    .encode()
}

fn tag(body: &[u8]) -> String {
    EntryBody::decode(body).unwrap().action
}

fn checkpoint(size: u64) -> CheckpointRow {
    CheckpointRow {
        size,
        root: [size as u8; 32],
        time_us: 1_000 + size as i64,
        key_id: format!("key-{size}"),
        signature: vec![0xaa, size as u8],
        frontier: vec![0xbb, size as u8],
        batch: Vec::new(),
    }
}

/// `(seq, tag)` of rows.
fn tags(rows: &[AuditRow]) -> Vec<(u64, String)> {
    rows.iter().map(|r| (r.seq, tag(&r.body))).collect()
}

/// Every row's stored leaf is the leaf of its log, position and body.
fn assert_leaves(log: LogId, rows: &[AuditRow]) {
    for r in rows {
        assert_eq!(
            r.leaf,
            entry_leaf(log, r.seq, &r.body),
            "leaf of {log} at {}",
            r.seq
        );
    }
}

/// Owned `(seq, tag)` expectations.
fn expect(items: &[(u64, &str)]) -> Vec<(u64, String)> {
    items.iter().map(|(s, t)| (*s, (*t).to_owned())).collect()
}

/// A data directory opened the way `SqliteStore::open_with` opens it (migrations, the move of
/// older logs, the journal recovered from the placed offset), without its threads.
struct Env {
    dir: TempDir,
    main: Connection,
    audit: Connection,
    data: Pool,
    journal: Journal,
}

impl Env {
    fn new() -> Self {
        Self::open(tempfile::tempdir().unwrap())
    }

    fn open(dir: TempDir) -> Self {
        let main_path = crate::database_path(dir.path());
        let mut main = Connection::open(&main_path).unwrap();
        schema::configure_writer(&main).unwrap();
        schema::migrate(&mut main).unwrap();
        let mut audit = Connection::open(crate::audit_database_path(dir.path())).unwrap();
        schema::configure_writer(&audit).unwrap();
        schema::migrate_audit(&mut audit).unwrap();
        schema::move_audit_logs(&mut audit, &mut main, &main_path).unwrap();
        let data = Pool::new(main_path, 2, false);
        let placed = audit::journal_placed(&audit).unwrap();
        let journal = Journal::open(&crate::journal_dir(dir.path()), placed, false).unwrap();
        Self {
            dir,
            main,
            audit,
            data,
            journal,
        }
    }

    /// Closes everything, as a process that stops without placing or clearing anything on
    /// the way down (a crash); the data directory is left.
    fn close(self) -> TempDir {
        let Self {
            dir,
            main,
            audit,
            data,
            journal,
        } = self;
        drop((journal, data, audit, main));
        dir
    }

    /// Closes everything and opens the directory again, as a restarted process does.
    fn restart(self) -> Self {
        Self::open(self.close())
    }

    async fn journal(&self, log: LogId, bodies: &[Vec<u8>]) {
        let bodies: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
        self.journal.append(log, &bodies).await.unwrap();
    }

    /// One `audit_pending` row holding `entries`, as one group commit writes it.
    fn pending(&self, entries: &[(LogId, Vec<u8>)]) {
        let mut records = Vec::new();
        for (l, b) in entries {
            journal::encode(&mut records, *l, b).unwrap();
        }
        audit::append_pending(&self.main, &records).unwrap();
    }

    fn pending_rows(&self) -> i64 {
        self.main
            .query_row("SELECT count(*) FROM audit_pending", [], |r| r.get(0))
            .unwrap()
    }

    /// One placement round, as the audit writer runs it; the last pending row placed.
    fn place(&self) -> Option<i64> {
        crate::place(&self.audit, &self.journal, &self.data).unwrap()
    }

    fn entries(&self, log: LogId) -> Vec<AuditRow> {
        audit::entries(&self.audit, log, 0, usize::MAX).unwrap()
    }

    fn size(&self, log: LogId) -> u64 {
        audit::size(&self.audit, log).unwrap()
    }

    /// Every stored block: `(log, first, count)` in `(log, first)` order.
    fn blocks(&self) -> Vec<(LogId, u64, u64)> {
        blocks_of(&self.audit)
    }

    fn state(&self, name: &str) -> Option<i64> {
        self.audit
            .query_row(
                "SELECT value FROM audit_state WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .ok()
    }
}

fn blocks_of(c: &Connection) -> Vec<(LogId, u64, u64)> {
    let mut st = c
        .prepare("SELECT log, first, count FROM audit_blocks ORDER BY log, first")
        .unwrap();
    st.query_map([], |r| {
        let l: Vec<u8> = r.get(0)?;
        Ok((
            LogId::from_bytes(l.try_into().unwrap()),
            r.get::<_, i64>(1)? as u64,
            r.get::<_, i64>(2)? as u64,
        ))
    })
    .unwrap()
    .collect::<rusqlite::Result<_>>()
    .unwrap()
}

#[tokio::test]
async fn placement_orders_a_log_by_time_and_numbers_it_from_its_size() {
    let env = Env::new();
    let (a, b) = (log(1), log(2));
    // A log whose entries were all pruned has its latest checkpoint's size.
    audit::put_checkpoint(&env.audit, a, &checkpoint(7)).unwrap();
    env.journal(a, &[body(10, "j10"), body(30, "j30")]).await;
    env.journal(b, &[body(15, "b-j15")]).await;
    env.journal(a, &[body(50, "j50")]).await;
    env.pending(&[(a, body(20, "p20")), (b, body(5, "b-p5"))]);
    // `p30` has the time of `j30`: the journal's entry goes first.
    env.pending(&[(a, body(40, "p40")), (a, body(30, "p30"))]);

    assert_eq!(env.place(), Some(2), "the last pending row placed");
    let rows = env.entries(a);
    assert_eq!(
        tags(&rows),
        expect(&[
            (7, "j10"),
            (8, "p20"),
            (9, "j30"),
            (10, "p30"),
            (11, "p40"),
            (12, "j50"),
        ])
    );
    assert_leaves(a, &rows);
    let rows = env.entries(b);
    assert_eq!(tags(&rows), expect(&[(0, "b-p5"), (1, "b-j15")]));
    assert_leaves(b, &rows);
    assert_eq!(env.blocks(), vec![(a, 7, 6), (b, 0, 2)]);
    assert_eq!(env.state("pending_placed"), Some(2));
    assert_eq!(
        env.state("journal_placed"),
        Some(env.journal.written() as i64)
    );

    // A second round continues each log where the first stopped, whatever its entries' times.
    // Entries of the same time: the journal's first, each source's as appended.
    env.journal(a, &[body(1, "late"), body(45, "j45a")]).await;
    env.pending(&[
        (a, body(45, "p45a")),
        (a, body(60, "p60")),
        (b, body(70, "b-p70")),
    ]);
    env.journal(a, &[body(45, "j45b")]).await;
    env.pending(&[(a, body(45, "p45b"))]);
    assert_eq!(env.place(), Some(4));
    assert_eq!(
        tags(&env.entries(a))[6..],
        expect(&[
            (13, "late"),
            (14, "j45a"),
            (15, "j45b"),
            (16, "p45a"),
            (17, "p45b"),
            (18, "p60"),
        ])[..]
    );
    assert_eq!(tags(&env.entries(b))[2..], expect(&[(2, "b-p70")])[..]);
    assert_eq!(
        env.blocks(),
        vec![(a, 7, 6), (a, 13, 6), (b, 0, 2), (b, 2, 1)]
    );
    assert_leaves(a, &env.entries(a));
    assert_leaves(b, &env.entries(b));
    // Nothing new: nothing placed, nothing stored.
    assert_eq!(env.place(), None);
    assert_eq!(env.blocks().len(), 4);
}

#[tokio::test]
async fn nothing_is_placed_twice_after_a_restart_and_later_entries_still_are() {
    let env = Env::new();
    let a = log(1);
    env.journal(a, &[body(10, "j10")]).await;
    env.pending(&[(a, body(20, "p20"))]);
    assert_eq!(env.place(), Some(1));
    let written = env.journal.written();
    // The process stops before the placed `audit_pending` row is deleted (that is a later
    // write to `bulkhead.db`).
    assert_eq!(env.pending_rows(), 1);

    let env = env.restart();
    assert_eq!(
        env.journal.written(),
        written,
        "the journal is recovered whole"
    );
    assert_eq!(
        env.place(),
        None,
        "the journal and the pending row are placed already"
    );
    assert_eq!(env.blocks(), vec![(a, 0, 2)]);
    assert_eq!(tags(&env.entries(a)), expect(&[(0, "j10"), (1, "p20")]));

    // The positive twin: what is appended after the restart is placed, once.
    env.journal(a, &[body(30, "j30")]).await;
    env.pending(&[(a, body(40, "p40"))]);
    assert_eq!(env.place(), Some(2));
    audit::clear_pending(&env.main, 2).unwrap();
    assert_eq!(env.pending_rows(), 0);
    let env = env.restart();
    assert_eq!(env.place(), None);
    let rows = env.entries(a);
    assert_eq!(
        tags(&rows),
        expect(&[(0, "j10"), (1, "p20"), (2, "j30"), (3, "p40")])
    );
    assert_leaves(a, &rows);
    assert_eq!(env.blocks(), vec![(a, 0, 2), (a, 2, 2)]);
}

#[tokio::test]
async fn entries_of_different_logs_stay_in_their_own_blocks() {
    let env = Env::new();
    let logs = [LogId::Operator, log(1), log(2)];
    let mut appended: Vec<Vec<String>> = vec![Vec::new(); logs.len()];
    // Interleaved in time and across both sources, in two rounds.
    for round in 0..2i64 {
        for i in 0..30i64 {
            let which = (i % 3) as usize;
            let t = format!("{which}-{round}-{i}");
            let b = body(round * 1000 + i, &t);
            if i % 2 == 0 {
                env.journal(logs[which], &[b]).await;
            } else {
                env.pending(&[(logs[which], b)]);
            }
            appended[which].push(t);
        }
        assert!(env.place().is_some());
    }
    for (which, l) in logs.iter().enumerate() {
        let rows = env.entries(*l);
        // Every appended entry is found, once, in the order appended (their times).
        let found: Vec<String> = rows.iter().map(|r| tag(&r.body)).collect();
        assert_eq!(found, appended[which], "entries of {l}");
        let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (0..20).collect::<Vec<_>>());
        assert_leaves(*l, &rows);
    }
    assert_eq!(
        env.blocks(),
        vec![
            (logs[0], 0, 10),
            (logs[0], 10, 10),
            (logs[1], 0, 10),
            (logs[1], 10, 10),
            (logs[2], 0, 10),
            (logs[2], 10, 10),
        ]
    );
    // Each stored block holds only its own log's entries.
    let mut st = env
        .audit
        .prepare("SELECT log, count, entries FROM audit_blocks")
        .unwrap();
    let mut rows = st.query([]).unwrap();
    let mut seen = 0;
    while let Some(r) = rows.next().unwrap() {
        let l: Vec<u8> = r.get(0).unwrap();
        let which = logs
            .iter()
            .position(|x| x.to_bytes().as_slice() == l.as_slice())
            .unwrap();
        let count: i64 = r.get(1).unwrap();
        let bytes: Vec<u8> = r.get(2).unwrap();
        for (b, _) in block::entries_exact(&bytes, count as u64).unwrap() {
            assert!(
                tag(b).starts_with(&format!("{which}-")),
                "{} in {which}",
                tag(b)
            );
            seen += 1;
        }
    }
    assert_eq!(seen, 60);
}

#[tokio::test]
async fn a_large_round_is_split_into_full_blocks_read_back_across_their_bounds() {
    let env = Env::new();
    let (a, b) = (log(1), log(2));
    env.pending(&[(a, body(0, "0")), (a, body(1, "1")), (a, body(2, "2"))]);
    assert_eq!(env.place(), Some(1));
    // 2500 entries of `a` in one round, alternating between the journal (even times) and
    // pending rows (odd times), beside a few of `b`.
    let even: Vec<Vec<u8>> = (0..1250)
        .map(|i| body(100 + 2 * i, &(100 + 2 * i).to_string()))
        .collect();
    env.journal(a, &even).await;
    for chunk in (0..1250i64).collect::<Vec<_>>().chunks(500) {
        let rows: Vec<(LogId, Vec<u8>)> = chunk
            .iter()
            .map(|i| (a, body(101 + 2 * i, &(101 + 2 * i).to_string())))
            .collect();
        env.pending(&rows);
    }
    env.journal(b, &(0..5).map(|i| body(i, "b")).collect::<Vec<_>>())
        .await;
    assert_eq!(env.place(), Some(4));
    assert_eq!(
        env.blocks(),
        vec![
            (a, 0, 3),
            (a, 3, 1024),
            (a, 1027, 1024),
            (a, 2051, 452),
            (b, 0, 5)
        ]
    );
    // Exactly a block's worth: one full block, and no empty one after it.
    env.pending(
        &(0..1024)
            .map(|i| (a, body(3000 + i, &(3000 + i).to_string())))
            .collect::<Vec<_>>(),
    );
    assert_eq!(env.place(), Some(5));
    let blocks = env.blocks();
    assert_eq!(&blocks[3..], &[(a, 2051, 452), (a, 2503, 1024), (b, 0, 5)]);
    assert_eq!(env.size(a), 3527);

    let all = env.entries(a);
    assert_eq!(all.len(), 3527);
    let times: Vec<i64> = [0, 1, 2]
        .into_iter()
        .chain(100..2600)
        .chain(3000..4024)
        .collect();
    for ((seq, row), time) in (0u64..).zip(&all).zip(&times) {
        assert_eq!(row.seq, seq);
        assert_eq!(tag(&row.body), time.to_string(), "entry {seq}");
    }
    assert_leaves(a, &all);

    // Reads that start or end inside a block, or cross a block's end.
    let crossing = audit::entries(&env.audit, a, 1022, 10).unwrap();
    assert_eq!(crossing, all[1022..1032]);
    let crossing = audit::entries(&env.audit, a, 2, 2).unwrap();
    assert_eq!(crossing, all[2..4]);
    let leaves = audit::leaves(&env.audit, a, 1020, 1030).unwrap();
    let expected: Vec<[u8; 32]> = all[1020..1030]
        .iter()
        .map(|r| entry_leaf(a, r.seq, &r.body))
        .collect();
    assert_eq!(leaves, expected);
    let leaves = audit::leaves(&env.audit, a, 2050, 2052).unwrap();
    assert_eq!(leaves, vec![all[2050].leaf, all[2051].leaf]);
    // Beyond the end: only what exists; empty ranges: nothing.
    let tail = audit::leaves(&env.audit, a, 3520, 4000).unwrap();
    assert_eq!(tail, all[3520..].iter().map(|r| r.leaf).collect::<Vec<_>>());
    assert!(audit::leaves(&env.audit, a, 5, 5).unwrap().is_empty());
    assert!(audit::entries(&env.audit, a, 3527, 10).unwrap().is_empty());
    assert!(audit::entries(&env.audit, a, 0, 0).unwrap().is_empty());
}

/// `a` with 2100 entries (blocks at 0, 1024, 2048) and `b` with 10, placed.
async fn pruning_env() -> (Env, LogId, LogId) {
    let env = Env::new();
    let (a, b) = (log(1), log(2));
    env.pending(
        &(0..2100)
            .map(|i| (a, body(i, &i.to_string())))
            .collect::<Vec<_>>(),
    );
    env.journal(b, &(0..10).map(|i| body(i, "b")).collect::<Vec<_>>())
        .await;
    env.place();
    assert_eq!(
        env.blocks(),
        vec![(a, 0, 1024), (a, 1024, 1024), (a, 2048, 52), (b, 0, 10)]
    );
    (env, a, b)
}

#[tokio::test]
async fn pruning_inside_a_block_keeps_the_rest_at_their_positions() {
    let (env, a, b) = pruning_env().await;
    let before = env.entries(a);
    let other = env.entries(b);

    assert_eq!(audit::prune(&env.audit, a, 1500).unwrap(), 1500);
    assert_eq!(
        env.blocks(),
        vec![(a, 1500, 548), (a, 2048, 52), (b, 0, 10)]
    );
    assert_eq!(env.entries(a), before[1500..]);
    // Blocks at 1500 and 2048: a span of 548, and as much again for the last block.
    assert_eq!(audit::logs(&env.audit).unwrap(), vec![(a, 1096), (b, 64)]);
    assert_eq!(
        audit::entries(&env.audit, a, 1000, 3).unwrap(),
        before[1500..1503]
    );
    assert_eq!(
        audit::entries(&env.audit, a, 1600, 2).unwrap(),
        before[1600..1602]
    );
    let leaves: Vec<[u8; 32]> = before[1500..].iter().map(|r| r.leaf).collect();
    assert_eq!(audit::leaves(&env.audit, a, 1500, 2100).unwrap(), leaves);
    assert_eq!(
        audit::leaves(&env.audit, a, 0, 1502).unwrap(),
        leaves[..2],
        "pruned positions have no leaves"
    );
    assert_leaves(a, &env.entries(a));
    assert_eq!(env.size(a), 2100);
    assert_eq!(env.entries(b), other, "another log is untouched");

    // Again at the same place: nothing left to delete.
    assert_eq!(audit::prune(&env.audit, a, 1500).unwrap(), 0);
    assert_eq!(audit::prune(&env.audit, a, 10).unwrap(), 0);
    // Across a block's end: the whole rewritten block and one entry of the next.
    assert_eq!(audit::prune(&env.audit, a, 2049).unwrap(), 549);
    assert_eq!(env.blocks(), vec![(a, 2049, 51), (b, 0, 10)]);
    assert_eq!(env.entries(a), before[2049..]);

    // Later entries continue the log.
    env.pending(&[(a, body(5000, "next"))]);
    env.place();
    let rows = env.entries(a);
    assert_eq!(tags(&rows[51..]), expect(&[(2100, "next")]));
    assert_leaves(a, &rows);
    assert_eq!(env.entries(b), other);
}

#[tokio::test]
async fn pruning_at_a_block_boundary_deletes_whole_blocks_only() {
    let (env, a, b) = pruning_env().await;
    let before = env.entries(a);
    assert_eq!(audit::prune(&env.audit, a, 0).unwrap(), 0);
    assert_eq!(audit::prune(&env.audit, a, 1024).unwrap(), 1024);
    assert_eq!(
        env.blocks(),
        vec![(a, 1024, 1024), (a, 2048, 52), (b, 0, 10)]
    );
    assert_eq!(env.entries(a), before[1024..]);
    assert_eq!(audit::prune(&env.audit, a, 2048).unwrap(), 1024);
    assert_eq!(env.blocks(), vec![(a, 2048, 52), (b, 0, 10)]);
    assert_eq!(env.entries(a), before[2048..]);
    assert_eq!(
        audit::leaves(&env.audit, a, 2048, 2050).unwrap(),
        vec![before[2048].leaf, before[2049].leaf]
    );
}

#[tokio::test]
async fn pruning_every_entry_keeps_the_numbering_from_the_checkpoint() {
    let (env, a, b) = pruning_env().await;
    let other = env.entries(b);
    // Retention prunes below a checkpoint (the port's contract).
    audit::put_checkpoint(&env.audit, a, &checkpoint(2100)).unwrap();
    assert_eq!(audit::prune(&env.audit, a, 2100).unwrap(), 2100);
    assert_eq!(env.blocks(), vec![(b, 0, 10)]);
    assert!(env.entries(a).is_empty());
    assert_eq!(env.size(a), 2100);
    assert_eq!(audit::logs(&env.audit).unwrap(), vec![(b, 64)]);
    env.journal(a, &[body(9000, "after")]).await;
    env.place();
    let rows = env.entries(a);
    assert_eq!(tags(&rows), expect(&[(2100, "after")]));
    assert_leaves(a, &rows);
    assert_eq!(env.entries(b), other);
}

/// The operator log with 5 entries, `log(1)` with 1030 (two blocks), `log(2)` with 3 and
/// `log(3)` with 2, placed in one round.
async fn scan_env() -> Env {
    let env = Env::new();
    env.journal(
        LogId::Operator,
        &(0..5).map(|i| body(i, "op")).collect::<Vec<_>>(),
    )
    .await;
    env.pending(
        &(0..1030)
            .map(|i| (log(1), body(i, &i.to_string())))
            .collect::<Vec<_>>(),
    );
    env.pending(&(0..3).map(|i| (log(2), body(i, "b"))).collect::<Vec<_>>());
    env.journal(log(3), &[body(0, "c0"), body(1, "c1")]).await;
    env.place();
    env
}

/// What a visit hands out: a checkpoint's log and size, or a block's log, first and count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Cp(LogId, u64),
    Block(LogId, u64, u64),
}

/// Visits the logs from `from` to below `until`, checks that every block's bytes are its
/// stored entries, and returns what it was handed; `stop_after`: says `Break` after that many
/// items.
fn visit(env: &Env, from: Option<LogId>, until: Option<LogId>, stop_after: usize) -> Vec<Seen> {
    let mut seen = Vec::new();
    let mut blocks = Vec::new();
    audit::visit(&env.audit, from, until, &mut |item| {
        match item {
            AuditScanItem::Checkpoint(l, cp) => seen.push(Seen::Cp(l, cp.size)),
            AuditScanItem::Block(b) => {
                seen.push(Seen::Block(b.log, b.first, b.count));
                blocks.push((b.log, b.first, b.count, b.bytes.to_vec()));
            }
        }
        if seen.len() >= stop_after {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    for (log, first, count, bytes) in blocks {
        let stored =
            audit::entries(&env.audit, log, first, usize::try_from(count).unwrap()).unwrap();
        let got: Vec<AuditRow> = (first..)
            .zip(block::entries_exact(&bytes, count).unwrap())
            .map(|(seq, (body, leaf))| AuditRow {
                seq,
                body: body.to_vec(),
                leaf,
            })
            .collect();
        assert_eq!(got, stored, "block of {log} at {first}");
    }
    seen
}

/// The log blocks a visit of `reader` hands out, in one snapshot (as the verifier reads); on
/// the first checkpoint it is handed, `meanwhile` runs (a running server's write).
fn blocks_seen(reader: &Connection, of: LogId, mut meanwhile: impl FnMut()) -> u64 {
    let mut blocks = 0;
    let mut first = true;
    audit::in_snapshot(reader, |r| {
        audit::visit(r, None, None, &mut |item| {
            match item {
                AuditScanItem::Checkpoint(..) if first => {
                    first = false;
                    meanwhile();
                }
                AuditScanItem::Block(b) if b.log == of => blocks += 1,
                _ => {}
            }
            ControlFlow::Continue(())
        })
    })
    .unwrap();
    blocks
}

/// A visit reads the checkpoints and the blocks in one snapshot: retention committed by a
/// running server while the checkpoints are handed out does not take blocks away from under
/// them. Positive twin: a visit begun after the prune sees the blocks gone.
#[tokio::test]
async fn a_visit_reads_one_snapshot() {
    let env = scan_env().await;
    let c = log(3);
    audit::put_checkpoint(&env.audit, c, &checkpoint(2)).unwrap();
    let path = crate::audit_database_path(env.dir.path());
    let reader = schema::open_reader(&path, true).unwrap();
    let pruned = std::cell::Cell::new(false);
    let seen = blocks_seen(&reader, c, || {
        assert_eq!(audit::prune(&env.audit, c, 2).unwrap(), 2);
        pruned.set(true);
    });
    assert!(pruned.get());
    assert_eq!(seen, 1, "the block as it was when the visit began");
    assert_eq!(
        blocks_seen(&reader, c, || {}),
        0,
        "a later visit sees the prune"
    );
}

#[tokio::test]
async fn visit_hands_out_checkpoints_then_whole_blocks_in_log_order() {
    let env = scan_env().await;
    let (op, a, b, c) = (LogId::Operator, log(1), log(2), log(3));
    for (l, size) in [(c, 2), (a, 1024), (a, 0), (op, 5)] {
        audit::put_checkpoint(&env.audit, l, &checkpoint(size)).unwrap();
    }
    let blocks = vec![(op, 0, 5), (a, 0, 1024), (a, 1024, 6), (b, 0, 3), (c, 0, 2)];
    assert_eq!(env.blocks(), blocks);
    use Seen::{Block, Cp};
    let all = vec![
        Cp(op, 5),
        Cp(a, 0),
        Cp(a, 1024),
        Cp(c, 2),
        Block(op, 0, 5),
        Block(a, 0, 1024),
        Block(a, 1024, 6),
        Block(b, 0, 3),
        Block(c, 0, 2),
    ];
    assert_eq!(visit(&env, None, None, usize::MAX), all);
    // From a log (inclusive) to below another.
    assert_eq!(
        visit(&env, Some(a), Some(c), usize::MAX),
        vec![
            Cp(a, 0),
            Cp(a, 1024),
            Block(a, 0, 1024),
            Block(a, 1024, 6),
            Block(b, 0, 3)
        ]
    );
    assert_eq!(
        visit(&env, Some(c), None, usize::MAX),
        vec![Cp(c, 2), Block(c, 0, 2)]
    );
    assert_eq!(
        visit(&env, None, Some(a), usize::MAX),
        vec![Cp(op, 5), Block(op, 0, 5)]
    );
    assert!(visit(&env, Some(a), Some(a), usize::MAX).is_empty());
    // Bounds between two stored logs.
    let mut between = [1; 16];
    between[15] = 2;
    let between = LogId::from_bytes(between);
    assert_eq!(
        visit(&env, Some(op), Some(between), usize::MAX),
        all.iter()
            .copied()
            .filter(|s| matches!(s, Cp(l, _) | Block(l, ..) if *l == op || *l == a))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        visit(&env, Some(between), None, usize::MAX),
        vec![Cp(c, 2), Block(b, 0, 3), Block(c, 0, 2)]
    );
}

#[tokio::test]
async fn visit_stops_when_told() {
    let env = scan_env().await;
    let (op, a) = (LogId::Operator, log(1));
    audit::put_checkpoint(&env.audit, a, &checkpoint(1024)).unwrap();
    // On a checkpoint: no block follows.
    assert_eq!(visit(&env, None, None, 1), vec![Seen::Cp(a, 1024)]);
    // On a block: no later block.
    assert_eq!(
        visit(&env, None, None, 3),
        vec![
            Seen::Cp(a, 1024),
            Seen::Block(op, 0, 5),
            Seen::Block(a, 0, 1024)
        ]
    );
}

#[tokio::test]
async fn log_sizes_are_estimated_from_the_index() {
    let env = scan_env().await;
    let (op, a, b, c) = (LogId::Operator, log(1), log(2), log(3));
    // Two blocks: the span of their starts, and as much again for the last block; one block:
    // a guess.
    assert_eq!(
        audit::logs(&env.audit).unwrap(),
        vec![(op, 64), (a, 2048), (b, 64), (c, 64)]
    );
}

/// The per-entry audit tables of migration 3, as older versions kept them in `bulkhead.db`
/// (without their triggers): to put them back as if a move had stopped before dropping them.
const OLD_TABLES: &str = r"
CREATE TABLE audit_entries (
    log  BLOB NOT NULL,
    seq  INTEGER NOT NULL,
    body BLOB NOT NULL,
    leaf BLOB NOT NULL,
    PRIMARY KEY (log, seq)
) WITHOUT ROWID;
CREATE TABLE audit_checkpoints (
    log       BLOB NOT NULL,
    size      INTEGER NOT NULL,
    root      BLOB NOT NULL,
    time_us   INTEGER NOT NULL,
    key_id    TEXT NOT NULL,
    signature BLOB NOT NULL,
    frontier  BLOB NOT NULL,
    PRIMARY KEY (log, size)
) WITHOUT ROWID;
";

fn old_entry(c: &Connection, l: LogId, seq: u64, b: &[u8]) {
    c.execute(
        "INSERT INTO audit_entries (log, seq, body, leaf) VALUES (?1, ?2, ?3, ?4)",
        params![
            l.to_bytes().as_slice(),
            seq as i64,
            b,
            entry_leaf(l, seq, b).as_slice()
        ],
    )
    .unwrap();
}

fn old_checkpoint(c: &Connection, l: LogId, row: &CheckpointRow) {
    c.execute(
        "INSERT INTO audit_checkpoints (log, size, root, time_us, key_id, signature, frontier)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            l.to_bytes().as_slice(),
            row.size as i64,
            row.root.as_slice(),
            row.time_us,
            row.key_id,
            row.signature,
            row.frontier
        ],
    )
    .unwrap();
}

fn has_table(c: &Connection, name: &str) -> bool {
    c.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        [name],
        |r| r.get(0),
    )
    .unwrap()
}

/// What an older version's log holds: `(seq, body, leaf)`.
fn rows_of(l: LogId, seqs: impl IntoIterator<Item = u64>) -> Vec<AuditRow> {
    seqs.into_iter()
        .map(|seq| {
            let b = body(seq as i64, &format!("{l}-{seq}"));
            AuditRow {
                seq,
                leaf: entry_leaf(l, seq, &b),
                body: b,
            }
        })
        .collect()
}

fn write_old(c: &Connection, l: LogId, rows: &[AuditRow]) {
    for r in rows {
        old_entry(c, l, r.seq, &r.body);
    }
}

/// An older version's `bulkhead.db` in `dir`, holding `logs` and `checkpoints` in the
/// per-entry tables. Migration 3 (still in the list; the move drops its tables) creates them,
/// with their triggers.
fn old_database(dir: &TempDir, logs: &[(LogId, &[AuditRow])], checkpoints: &[(LogId, u64)]) {
    let mut main = Connection::open(crate::database_path(dir.path())).unwrap();
    schema::migrate(&mut main).unwrap();
    assert!(has_table(&main, "audit_entries"));
    let tx = main.transaction().unwrap();
    for (l, rows) in logs {
        write_old(&tx, *l, rows);
    }
    for (l, size) in checkpoints {
        old_checkpoint(&tx, *l, &checkpoint(*size));
    }
    tx.commit().unwrap();
}

#[tokio::test]
async fn older_logs_move_into_blocks_with_their_checkpoints_and_the_old_tables_go() {
    let dir = tempfile::tempdir().unwrap();
    let (op, a, b) = (LogId::Operator, log(1), log(2));
    let a_rows = rows_of(a, 0..10);
    // Pruned below 5 by an older version's retention.
    let b_rows = rows_of(b, 5..8);
    old_database(
        &dir,
        &[(a, &a_rows), (b, &b_rows)],
        // The operator log's entries were all pruned: only its checkpoint is left.
        &[(a, 4), (a, 10), (b, 5), (op, 3)],
    );
    let env = Env::open(dir);
    assert!(!has_table(&env.main, "audit_entries"));
    assert!(!has_table(&env.main, "audit_checkpoints"));
    assert!(has_table(&env.main, "audit_pending"));
    assert_eq!(env.blocks(), vec![(a, 0, 10), (b, 5, 3)]);
    assert_eq!(env.entries(a), a_rows);
    assert_eq!(env.entries(b), b_rows);
    assert!(env.entries(op).is_empty());
    assert_eq!(
        audit::leaves(&env.audit, a, 3, 6).unwrap(),
        a_rows[3..6].iter().map(|r| r.leaf).collect::<Vec<_>>()
    );
    assert_eq!(
        audit::checkpoints(&env.audit, a, 0, 10).unwrap(),
        vec![checkpoint(4), checkpoint(10)]
    );
    assert_eq!(
        audit::checkpoint(&env.audit, b, None).unwrap(),
        Some(checkpoint(5))
    );
    assert_eq!(
        audit::checkpoint(&env.audit, op, Some(3)).unwrap(),
        Some(checkpoint(3))
    );
    assert_eq!([env.size(op), env.size(a), env.size(b)], [3, 10, 8]);

    // Again, and at the next open: nothing to move, nothing changes.
    let mut env = env;
    let main_path = crate::database_path(env.dir.path());
    schema::move_audit_logs(&mut env.audit, &mut env.main, &main_path).unwrap();
    let env = env.restart();
    assert_eq!(env.blocks(), vec![(a, 0, 10), (b, 5, 3)]);
    assert_eq!(env.entries(a), a_rows);
    let mut cps = Vec::new();
    audit::visit(&env.audit, None, None, &mut |item| {
        if let AuditScanItem::Checkpoint(l, c) = item {
            cps.push((l, c.size));
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(cps, vec![(op, 3), (a, 4), (a, 10), (b, 5)]);

    // New entries continue the moved logs.
    env.pending(&[(a, body(5000, "new-a")), (op, body(5000, "new-op"))]);
    env.place();
    assert_eq!(tags(&env.entries(a)[10..]), expect(&[(10, "new-a")]));
    assert_eq!(tags(&env.entries(op)), expect(&[(3, "new-op")]));
    assert_leaves(a, &env.entries(a));
    assert_leaves(op, &env.entries(op));
}

#[tokio::test]
async fn older_logs_longer_than_a_block_or_with_gaps_move_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (a, c) = (log(1), log(3));
    let a_rows = rows_of(a, 0..1030);
    // A gap, kept as stored (the verifier reports it).
    let c_rows = rows_of(c, [0, 1, 2, 5, 6]);
    old_database(&dir, &[(a, &a_rows), (c, &c_rows)], &[(a, 1030)]);
    let env = Env::open(dir);
    assert!(!has_table(&env.main, "audit_entries"));
    // Every entry is copied: a new block at the block size and at the gap.
    assert_eq!(
        env.blocks(),
        vec![(a, 0, 1024), (a, 1024, 6), (c, 0, 3), (c, 5, 2)]
    );
    assert_eq!(env.entries(a), a_rows);
    assert_eq!(env.entries(c), c_rows);
    assert_eq!(
        audit::leaves(&env.audit, a, 1020, 1030).unwrap(),
        a_rows[1020..].iter().map(|r| r.leaf).collect::<Vec<_>>()
    );
    assert_eq!([env.size(a), env.size(c)], [1030, 7]);
}

#[tokio::test]
async fn a_move_interrupted_before_the_drop_copies_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (a, d) = (log(1), log(4));
    let a_rows = rows_of(a, 0..4);
    let d_rows = rows_of(d, 0..2);
    old_database(&dir, &[(a, &a_rows)], &[(a, 2)]);
    let env = Env::open(dir);
    assert_eq!(env.blocks(), vec![(a, 0, 4)]);
    // As if the process stopped after the copy committed and before the old tables were
    // dropped (here: they are back, with what they held, and a log and a checkpoint the copy
    // had not seen).
    env.main.execute_batch(OLD_TABLES).unwrap();
    write_old(&env.main, a, &a_rows);
    write_old(&env.main, d, &d_rows);
    old_checkpoint(&env.main, a, &checkpoint(2));
    old_checkpoint(&env.main, a, &checkpoint(4));
    let env = env.restart();
    assert_eq!(env.blocks(), vec![(a, 0, 4), (d, 0, 2)]);
    assert_eq!(env.entries(a), a_rows);
    assert_eq!(env.entries(d), d_rows);
    assert_eq!(
        audit::checkpoints(&env.audit, a, 0, 10).unwrap(),
        vec![checkpoint(2), checkpoint(4)]
    );
    assert!(!has_table(&env.main, "audit_entries"));
    assert!(!has_table(&env.main, "audit_checkpoints"));
}

#[tokio::test]
async fn opening_the_store_places_what_a_stopped_process_left() {
    let env = Env::new();
    let (a, b) = (log(1), log(2));
    env.journal(a, &[body(30, "j30")]).await;
    env.pending(&[(a, body(20, "p20")), (b, body(10, "b-p10"))]);
    env.journal(b, &[body(5, "b-j5")]).await;
    let dir = env.close();
    let store = crate::SqliteStore::open_with(dir.path(), crate::SqliteOptions::default()).unwrap();
    let audit_pool = &store.inner.audit;
    let a_rows = audit_pool
        .with(|c| audit::entries(c, a, 0, usize::MAX))
        .unwrap();
    assert_eq!(tags(&a_rows), expect(&[(0, "p20"), (1, "j30")]));
    assert_leaves(a, &a_rows);
    let b_rows = audit_pool
        .with(|c| audit::entries(c, b, 0, usize::MAX))
        .unwrap();
    assert_eq!(tags(&b_rows), expect(&[(0, "b-j5"), (1, "b-p10")]));
    // The placed pending row is deleted at open.
    let pending: i64 = store
        .inner
        .data
        .with(|c| c.query_row("SELECT count(*) FROM audit_pending", [], |r| r.get(0)))
        .unwrap();
    assert_eq!(pending, 0);
    drop(store);
    drop(dir);
}

#[test]
fn an_entry_body_leads_with_its_time() {
    // Placement orders entries by their bodies' first eight bytes: `EntryBody::encode` must
    // keep the time there.
    let b = body(0x0102_0304_0506_0708, "x");
    assert_eq!(&b[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
}
