//! The audit journal: an append-only file of audit entries not yet placed in the database.
//!
//! Every audit entry that does not commit with a data change (reads, lists, denials, refused
//! credentials, operator actions) is appended here instead of to SQLite: appending is one
//! `write` to the end of a file, without a database commit, so a read stays a read (a commit
//! would also make every reader connection drop its page cache). The writer thread later places
//! the journal's entries into their logs in `audit.db` (see `audit::place`) and records, in the same
//! transaction, how far the journal is placed; segments wholly below that point are deleted.
//!
//! **Durability.** [`Journal::append`] returns once the entry is written to the file (in the
//! operating system's page cache: it survives a killed process) and, with `strict`, fsync'd.
//! Otherwise a syncer fsyncs the file within the window (`audit.read_sync_ms`); a machine crash
//! can lose only a suffix of the journal, which is what recovery truncates.
//!
//! **Group commit without a thread hop.** The first appender that finds no write in progress
//! becomes the leader: it writes every record queued so far with one `write`, then every record
//! queued meanwhile, until none is left; the others wait to be told their record is written.
//! Under load many records share a write; alone, a record waits for nothing but its own write.
//!
//! **Format.** Segment files `<first offset, 20 digits>.seg` in `<data dir>/audit-journal/`,
//! each continuing the offsets of the previous one. A record is `length (u32 BE) ‖ CRC-32 of the
//! payload (u32 BE) ‖ payload`, and the payload is `log (16 bytes) ‖ entry body`. Offsets are
//! byte positions in the concatenated segments, so they never repeat.
//!
//! **Recovery.** At open, the journal from the placed offset on is scanned: a record cut short
//! or failing its checksum at the end of the last segment (a write the machine did not finish)
//! is truncated away; one anywhere else is an integrity error and the store does not open.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bulkhead_audit::LogId;
use bulkhead_store::BackendError;
use parking_lot::Mutex;

/// A segment is closed (fsync'd) and a new one begun beyond this size.
const SEGMENT_BYTES: u64 = 64 << 20;
/// Record header: length and checksum.
const HEADER: usize = 8;
/// Largest payload accepted (an entry body is at most a few KiB: its texts are cut to 512
/// bytes each).
pub(crate) const MAX_PAYLOAD: usize = 1 << 20;

/// One journal record, read back for placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub log: LogId,
    pub body: Vec<u8>,
}

/// What appenders share: the records waiting for a write, and who is writing.
struct Queue {
    /// Encoded records not yet handed to a write.
    buf: Vec<u8>,
    /// Tickets handed out: one per append.
    issued: u64,
    /// A leader is writing.
    writing: bool,
    /// A write failed: nothing more is appended (the store reports itself unavailable).
    failed: Option<String>,
}

/// The segment being appended to; only the leader touches it.
struct Tail {
    file: File,
    start: u64,
    len: u64,
}

pub(crate) struct Journal {
    dir: PathBuf,
    strict: bool,
    queue: Mutex<Queue>,
    tail: Mutex<Tail>,
    /// First offsets of the segments on disk, ascending (the last is the tail).
    segments: Mutex<Vec<u64>>,
    /// Tickets whose records are written (with `strict`: and fsync'd).
    done: AtomicU64,
    /// Offset up to which records are written.
    written: AtomicU64,
    /// Offset up to which records are fsync'd.
    synced: AtomicU64,
    failed: AtomicBool,
    wake: tokio::sync::Notify,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.dir)
            .field("written", &self.written.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn io(what: &str, path: &Path, e: &std::io::Error) -> BackendError {
    BackendError::Unavailable(format!(
        "audit journal: cannot {what} `{}`: {e}",
        path.display()
    ))
}

fn segment_path(dir: &Path, start: u64) -> PathBuf {
    dir.join(format!("{start:020}.seg"))
}

/// Appends one encoded record to `out`.
pub(crate) fn encode(out: &mut Vec<u8>, log: LogId, body: &[u8]) -> Result<(), BackendError> {
    let len = 16 + body.len();
    if len > MAX_PAYLOAD {
        return Err(BackendError::Other(format!(
            "audit entry of {} bytes is too large",
            body.len()
        )));
    }
    let mut crc = crc32fast::Hasher::new();
    let id = log.to_bytes();
    crc.update(&id);
    crc.update(body);
    // In range: checked against MAX_PAYLOAD above.
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&crc.finalize().to_be_bytes());
    out.extend_from_slice(&id);
    out.extend_from_slice(body);
    Ok(())
}

/// The record at the start of `bytes`: `Ok(Some((record, its length)))`, `Ok(None)` if `bytes`
/// ends before the record does, `Err` if the record is malformed or fails its checksum.
pub(crate) fn decode(bytes: &[u8]) -> Result<Option<(Record, usize)>, &'static str> {
    let Some(head) = bytes.get(..HEADER) else {
        return Ok(None);
    };
    let mut len = [0u8; 4];
    let mut sum = [0u8; 4];
    len.copy_from_slice(head.get(..4).unwrap_or(&[0; 4]));
    sum.copy_from_slice(head.get(4..).unwrap_or(&[0; 4]));
    let len = u32::from_be_bytes(len) as usize;
    if !(16..=MAX_PAYLOAD).contains(&len) {
        return Err("bad record length");
    }
    let Some(payload) = bytes.get(HEADER..HEADER + len) else {
        return Ok(None);
    };
    if crc32fast::hash(payload) != u32::from_be_bytes(sum) {
        return Err("checksum mismatch");
    }
    let (id, body) = payload.split_at(16);
    let mut log = [0u8; 16];
    log.copy_from_slice(id);
    Ok(Some((
        Record {
            log: LogId::from_bytes(log),
            body: body.to_vec(),
        },
        HEADER + len,
    )))
}

/// Syncs a directory, so that a file created or removed in it stays so after a crash.
fn sync_dir(dir: &Path) -> Result<(), BackendError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("sync", dir, &e))
}

fn create_segment(dir: &Path, start: u64) -> Result<File, BackendError> {
    let path = segment_path(dir, start);
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| io("create", &path, &e))?;
    sync_dir(dir)?;
    Ok(file)
}

impl Journal {
    /// Opens the journal in `dir` (created if missing), recovering it from offset `placed`
    /// (everything below is in the database). Segments wholly below `placed` are deleted.
    pub(crate) fn open(dir: &Path, placed: u64, strict: bool) -> Result<Self, BackendError> {
        {
            use std::os::unix::fs::DirBuilderExt;
            // Owner-only, like the data directory: the journal holds tenants' audit entries.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| io("create", dir, &e))?;
        }
        let mut starts: Vec<u64> = std::fs::read_dir(dir)
            .map_err(|e| io("read", dir, &e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?;
                name.strip_suffix(".seg")?.parse::<u64>().ok()
            })
            .collect();
        starts.sort_unstable();
        // Segments wholly below what is placed are no longer needed.
        while starts.len() > 1 && starts.get(1).is_some_and(|next| *next <= placed) {
            let old = starts.remove(0);
            let path = segment_path(dir, old);
            std::fs::remove_file(&path).map_err(|e| io("remove", &path, &e))?;
        }
        let mut end = placed;
        let mut tail = None;
        let count = starts.len();
        for (i, start) in starts.iter().copied().enumerate() {
            let last = i + 1 == count;
            let path = segment_path(dir, start);
            let file = OpenOptions::new()
                .read(true)
                .append(true)
                .open(&path)
                .map_err(|e| io("open", &path, &e))?;
            let size = file.metadata().map_err(|e| io("read", &path, &e))?.len();
            if start > end && i > 0 {
                return Err(BackendError::Other(format!(
                    "audit journal: segment `{}` does not follow the one before it",
                    path.display()
                )));
            }
            // Check every record from where placement resumes (or the segment's start).
            let from = placed.saturating_sub(start).min(size);
            let good = match scan(&file, from, size).map_err(|e| io("read", &path, &e))? {
                Ok(good) => good,
                Err(cut) => {
                    return Err(BackendError::Other(format!(
                        "audit journal: segment `{p}` is damaged at byte {cut}, and valid records \
                         follow (not a write cut short at the end); refusing to open. Keep a copy \
                         of the segment for investigation; to give up its records from that byte \
                         on (e.g. after a power loss with `audit.read_sync_ms` > 0), run \
                         `truncate -s {cut} {p}` and start again",
                        p = path.display()
                    )));
                }
            };
            if good < size {
                if !last {
                    return Err(BackendError::Other(format!(
                        "audit journal: segment `{}` is damaged at byte {good}",
                        path.display()
                    )));
                }
                tracing::warn!(
                    segment = %path.display(),
                    kept = good,
                    dropped = size - good,
                    "audit journal: dropping an unfinished record at the end (the process or the machine stopped mid-write)"
                );
                file.set_len(good).map_err(|e| io("truncate", &path, &e))?;
                file.sync_all().map_err(|e| io("sync", &path, &e))?;
            }
            end = start + good;
            if last {
                tail = Some(Tail {
                    file,
                    start,
                    len: good,
                });
            }
        }
        let tail = match tail {
            // Placement cannot be ahead of the journal; if it is, the journal was removed or
            // cut by hand: start afresh after the placed point, so offsets never repeat.
            Some(t) if t.start + t.len >= placed => t,
            _ => {
                if !starts.is_empty() {
                    tracing::warn!(
                        placed,
                        end,
                        "audit journal: ends before what the database says is placed; starting a new segment"
                    );
                }
                let file = create_segment(dir, placed)?;
                starts.push(placed);
                Tail {
                    file,
                    start: placed,
                    len: 0,
                }
            }
        };
        let end = tail.start + tail.len;
        Ok(Self {
            dir: dir.to_path_buf(),
            strict,
            queue: Mutex::new(Queue {
                buf: Vec::new(),
                issued: 0,
                writing: false,
                failed: None,
            }),
            tail: Mutex::new(tail),
            segments: Mutex::new(starts),
            done: AtomicU64::new(0),
            written: AtomicU64::new(end),
            synced: AtomicU64::new(end),
            failed: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
        })
    }

    /// Offset up to which records are written (and, with `strict`, fsync'd): what placement may
    /// read.
    pub(crate) fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Whether a write failed (the journal then refuses appends until the store is reopened).
    pub(crate) fn failed(&self) -> Option<String> {
        if self.failed.load(Ordering::Acquire) {
            self.queue.lock().failed.clone()
        } else {
            None
        }
    }

    /// Appends entries to the journal; returns once they are written (see the module
    /// documentation for how durable that is).
    pub(crate) async fn append(&self, log: LogId, bodies: &[&[u8]]) -> Result<(), BackendError> {
        let (ticket, lead) = {
            let mut q = self.queue.lock();
            if let Some(f) = &q.failed {
                return Err(BackendError::Unavailable(f.clone()));
            }
            for body in bodies {
                encode(&mut q.buf, log, body)?;
            }
            q.issued += 1;
            let lead = !q.writing;
            q.writing = true;
            (q.issued, lead)
        };
        if lead {
            // Let the requests that are ready now reach their appends first: they join this
            // write instead of each making its own (fewer `write`s, the same wait).
            tokio::task::yield_now().await;
            self.lead();
        }
        loop {
            let wait = self.wake.notified();
            tokio::pin!(wait);
            wait.as_mut().enable();
            if self.done.load(Ordering::Acquire) >= ticket {
                return Ok(());
            }
            {
                let mut q = self.queue.lock();
                if let Some(f) = &q.failed {
                    return Err(BackendError::Unavailable(f.clone()));
                }
                // The leader left before this record was written (it cannot happen while every
                // leader writes until the queue is empty, but a waiter never waits on nobody).
                if !q.writing && self.done.load(Ordering::Acquire) < ticket {
                    q.writing = true;
                    drop(q);
                    self.lead();
                    continue;
                }
            }
            wait.await;
        }
    }

    /// Writes queued records until none is left.
    fn lead(&self) {
        let mut spare = Vec::new();
        loop {
            let (mut buf, upto) = {
                let mut q = self.queue.lock();
                if q.buf.is_empty() {
                    q.writing = false;
                    break;
                }
                (
                    std::mem::replace(&mut q.buf, std::mem::take(&mut spare)),
                    q.issued,
                )
            };
            match self.write(&buf) {
                Ok(end) => {
                    self.written.store(end, Ordering::Release);
                    if self.strict {
                        self.synced.store(end, Ordering::Release);
                    }
                    self.done.store(upto, Ordering::Release);
                }
                Err(e) => {
                    tracing::error!(error = %e, "audit journal: write failed; audited requests fail until the server restarts");
                    let mut q = self.queue.lock();
                    q.failed = Some(format!("the audit journal cannot be written: {e}"));
                    q.writing = false;
                    q.buf.clear();
                    self.failed.store(true, Ordering::Release);
                    drop(q);
                    self.wake.notify_waiters();
                    return;
                }
            }
            self.wake.notify_waiters();
            buf.clear();
            spare = buf;
        }
        self.wake.notify_waiters();
    }

    /// Writes `buf` at the end of the journal (beginning a new segment first if the tail is
    /// full); returns the new end offset.
    fn write(&self, buf: &[u8]) -> Result<u64, BackendError> {
        let mut tail = self.tail.lock();
        if tail.len >= SEGMENT_BYTES {
            // Close the full segment durably before the next one exists.
            tail.file
                .sync_data()
                .map_err(|e| io("sync", &segment_path(&self.dir, tail.start), &e))?;
            let start = tail.start + tail.len;
            let file = create_segment(&self.dir, start)?;
            *tail = Tail {
                file,
                start,
                len: 0,
            };
            self.segments.lock().push(start);
        }
        if let Err(e) = tail.file.write_all(buf) {
            // Leave no half record behind; if even that fails, stop appending (recovery at
            // the next open truncates it).
            let path = segment_path(&self.dir, tail.start);
            let _ = tail.file.set_len(tail.len);
            return Err(io("write", &path, &e));
        }
        if self.strict {
            tail.file
                .sync_data()
                .map_err(|e| io("sync", &segment_path(&self.dir, tail.start), &e))?;
        }
        tail.len += buf.len() as u64;
        Ok(tail.start + tail.len)
    }

    /// Fsyncs the tail segment if records were written since the last sync (the syncer's
    /// round, every `read_sync_ms`).
    pub(crate) fn sync(&self) -> Result<(), BackendError> {
        let end = self.written();
        if self.synced.load(Ordering::Acquire) >= end {
            return Ok(());
        }
        // A duplicate handle, so that appends go on during the sync. Every record up to `end`
        // is in the tail segment or in an earlier one, which was synced before it was closed.
        let (file, start) = {
            let tail = self.tail.lock();
            (tail.file.try_clone(), tail.start)
        };
        let path = segment_path(&self.dir, start);
        file.and_then(|f| f.sync_data())
            .map_err(|e| io("sync", &path, &e))?;
        self.synced.fetch_max(end, Ordering::AcqRel);
        Ok(())
    }

    /// The records between offsets `from` and `to` (both record boundaries, `to` at most
    /// [`Journal::written`]).
    pub(crate) fn read(&self, from: u64, to: u64) -> Result<Vec<Record>, BackendError> {
        let mut out = Vec::new();
        if from >= to {
            return Ok(out);
        }
        let starts = self.segments.lock().clone();
        let mut at = from;
        for (i, start) in starts.iter().copied().enumerate() {
            let end = starts.get(i + 1).copied().unwrap_or(u64::MAX).min(to);
            if end <= at || start > at {
                continue;
            }
            let path = segment_path(&self.dir, start);
            let file = File::open(&path).map_err(|e| io("open", &path, &e))?;
            let len = usize::try_from(end - at).map_err(|_| {
                BackendError::Other("audit journal: range too large to read".into())
            })?;
            let mut bytes = vec![0u8; len];
            file.read_exact_at(&mut bytes, at - start)
                .map_err(|e| io("read", &path, &e))?;
            let mut pos = 0;
            while pos < bytes.len() {
                let rest = bytes.get(pos..).unwrap_or_default();
                match decode(rest) {
                    Ok(Some((record, n))) => {
                        out.push(record);
                        pos += n;
                    }
                    Ok(None) | Err(_) => {
                        return Err(BackendError::Other(format!(
                            "audit journal: record at offset {} of `{}` is damaged",
                            at - start + pos as u64,
                            path.display()
                        )));
                    }
                }
            }
            at = end;
        }
        if at < to {
            return Err(BackendError::Other(format!(
                "audit journal: offsets {at} to {to} are missing"
            )));
        }
        Ok(out)
    }

    /// Deletes the segments wholly below `placed` (never the tail).
    pub(crate) fn release(&self, placed: u64) {
        let mut starts = self.segments.lock();
        let mut removed = false;
        while starts.len() > 1 && starts.get(1).is_some_and(|next| *next <= placed) {
            let old = starts.remove(0);
            let path = segment_path(&self.dir, old);
            match std::fs::remove_file(&path) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(segment = %path.display(), error = %e, "audit journal: cannot remove a placed segment");
                }
            }
        }
        if removed && let Err(e) = sync_dir(&self.dir) {
            tracing::warn!(error = %e, "audit journal: cannot sync its directory");
        }
    }
}

/// Where the whole, valid records of `file` (from `from` to `size`) end. A record cut short, or
/// failing its checksum or length check with nothing valid after it, is an unfinished write at
/// the end (what a crash leaves: a partial record, zeros); `Ok(Err(at))` when a bad record is
/// followed by a good one, which no crash does: the file was damaged at `at`.
fn scan(file: &File, from: u64, size: u64) -> std::io::Result<Result<u64, u64>> {
    let len = usize::try_from(size - from).map_err(std::io::Error::other)?;
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, from)?;
    let mut pos = 0usize;
    while pos < bytes.len() {
        let rest = bytes.get(pos..).unwrap_or_default();
        match decode(rest) {
            Ok(Some((_, n))) => pos += n,
            Ok(None) => break,
            Err(_) => {
                // Skip the bad record by its length, if that is plausible, and look at what
                // follows.
                let claimed = rest
                    .get(..4)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map(|b| u32::from_be_bytes(b) as usize)
                    .filter(|n| (16..=MAX_PAYLOAD).contains(n));
                let next = claimed.and_then(|n| rest.get(HEADER + n..));
                if next.is_some_and(|next| matches!(decode(next), Ok(Some(_)))) {
                    return Ok(Err(from + pos as u64));
                }
                break;
            }
        }
    }
    Ok(Ok(from + pos as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(n: u8) -> LogId {
        LogId::from_bytes([n; 16])
    }

    #[test]
    fn records_round_trip_and_damage_is_found() {
        let mut buf = Vec::new();
        encode(&mut buf, log(1), b"first").unwrap();
        encode(&mut buf, log(2), b"").unwrap();
        let (a, n) = decode(&buf).unwrap().unwrap();
        assert_eq!((a.log, a.body.as_slice()), (log(1), &b"first"[..]));
        let (b, m) = decode(&buf[n..]).unwrap().unwrap();
        assert_eq!((b.log, b.body.len(), n + m), (log(2), 0, buf.len()));
        // Cut short: not an error, just not there yet.
        assert_eq!(decode(&buf[..n - 1]).unwrap(), None);
        assert_eq!(decode(&buf[..3]).unwrap(), None);
        // A flipped byte fails the checksum; a silly length is refused.
        let mut bad = buf.clone();
        bad[HEADER + 17] ^= 1;
        assert!(decode(&bad).is_err());
        let mut long = buf.clone();
        long[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode(&long).is_err());
    }

    #[tokio::test]
    async fn appends_survive_reopen_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), 0, false).unwrap();
        j.append(log(1), &[b"one"]).await.unwrap();
        j.append(log(2), &[b"two", b"three"]).await.unwrap();
        let end = j.written();
        let all = j.read(0, end).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(
            all[2],
            Record {
                log: log(2),
                body: b"three".to_vec()
            }
        );
        drop(j);
        // A half-written record at the end, as a crash mid-write leaves.
        let path = segment_path(dir.path(), 0);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        let mut rec = Vec::new();
        encode(&mut rec, log(3), b"torn").unwrap();
        f.write_all(&rec[..rec.len() - 2]).unwrap();
        drop(f);
        let j = Journal::open(dir.path(), 0, false).unwrap();
        assert_eq!(j.written(), end, "the torn record is dropped");
        assert_eq!(j.read(0, end).unwrap().len(), 3);
        // Appends continue after the good records.
        j.append(log(4), &[b"four"]).await.unwrap();
        let again = j.read(end, j.written()).unwrap();
        assert_eq!(
            again,
            vec![Record {
                log: log(4),
                body: b"four".to_vec()
            }]
        );
    }

    #[tokio::test]
    async fn damage_before_the_end_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), 0, false).unwrap();
        j.append(log(1), &[b"one"]).await.unwrap();
        j.append(log(1), &[b"two"]).await.unwrap();
        drop(j);
        let path = segment_path(dir.path(), 0);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER + 16] ^= 1; // the first record's body
        std::fs::write(&path, &bytes).unwrap();
        // The damaged record is followed by a good one: not a crash's unfinished write.
        let e = Journal::open(dir.path(), 0, false).unwrap_err();
        assert!(e.to_string().contains("damaged at byte 0"), "{e}");
        // The way out the message gives: cut the segment at the damage; it then opens empty.
        assert!(
            e.to_string()
                .contains(&format!("truncate -s 0 {}", path.display())),
            "{e}"
        );
        // A journal placed beyond the damage opens (the damaged record is in the database).
        let second = (HEADER + 16 + 3) as u64;
        let j = Journal::open(dir.path(), second, false).unwrap();
        assert_eq!(j.read(second, j.written()).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn placed_segments_are_released_and_offsets_continue() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), 0, false).unwrap();
        j.append(log(1), &[b"one"]).await.unwrap();
        let end = j.written();
        // Force a new segment, then release the first.
        j.tail.lock().len = SEGMENT_BYTES;
        j.append(log(1), &[b"two"]).await.unwrap();
        let second = SEGMENT_BYTES;
        assert!(segment_path(dir.path(), second).exists());
        assert_eq!(j.read(second, j.written()).unwrap().len(), 1);
        j.release(second);
        assert!(!segment_path(dir.path(), 0).exists());
        assert!(end < second);
        // A journal whose files were removed continues after the placed offset.
        drop(j);
        std::fs::remove_dir_all(dir.path()).unwrap();
        let j = Journal::open(dir.path(), 4242, false).unwrap();
        assert_eq!(j.written(), 4242);
        j.append(log(1), &[b"x"]).await.unwrap();
        assert_eq!(j.read(4242, j.written()).unwrap().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_are_all_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let j = std::sync::Arc::new(Journal::open(dir.path(), 0, false).unwrap());
        let mut tasks = Vec::new();
        for t in 0..16u8 {
            let j = j.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..200u32 {
                    j.append(log(t), &[&i.to_be_bytes()]).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let all = j.read(0, j.written()).unwrap();
        assert_eq!(all.len(), 16 * 200);
        for t in 0..16u8 {
            let mine: Vec<u32> = all
                .iter()
                .filter(|r| r.log == log(t))
                .map(|r| u32::from_be_bytes(r.body[..4].try_into().unwrap()))
                .collect();
            assert_eq!(
                mine,
                (0..200).collect::<Vec<_>>(),
                "one task's appends stay in order"
            );
        }
    }
}
