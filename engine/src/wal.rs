//! The write-ahead log: committed batches, framed and checksummed, appended to `wal-*.log`
//! files in the data directory, and made durable by group commit.
//!
//! Committers append a frame to an in-memory buffer (under a short lock) and get the log
//! sequence number (LSN, a byte position in the log) at which their frame ends. Making it
//! durable is [`Wal::sync_to`]: the first committer to arrive becomes the leader, takes the
//! whole buffer, writes it with one `pwrite` and one `fdatasync`, and publishes the new durable
//! LSN; committers that arrive meanwhile wait on the flush lock and usually find their frame
//! already covered when they get it, so many commits share one flush. In `periodic` mode a
//! background thread does the same every interval instead.
//!
//! A frame is `len: u32 | crc32c: u32 | lsn: u64 | flush: u64 | payload[len]`, `flush` being
//! the LSN at which the flush that writes the frame starts, the checksum covering `flush`, the
//! LSN and the payload. Recovery reads frames in LSN order and stops at the first one whose
//! length, LSN or checksum is wrong. If it is in the last file and every intact frame after it
//! belongs to the same flush (its `flush` is at or before the damage), it is the torn tail of
//! the last flush, which was never acknowledged (a flush's `pwrite` can reach the device in
//! any order of pages before its `fdatasync` returns): the file is cut there and nothing after
//! it is replayed. An intact frame of a later flush after it, or a later file, means damage to
//! a flush that completed, and opening fails rather than drop committed batches.
//!
//! Logs written before the `flush` field (format 1: `len | crc32c | lsn | payload`, the
//! checkpoint's framing) are still read, with the stricter rule they were written for (any
//! intact frame after a bad one is damage); appending then goes on in a new file.
//!
//! After a write or sync fails, the log is poisoned: nothing more is written, and the database
//! refuses writes with the first error's text (a failed `fsync` cannot be retried safely).
//! The failed flush is cut off the log, so that a reopen in the same boot cannot replay its
//! frames from the page cache.

use crate::bell::Bell;
use crate::error::{Error, Result};
use crate::far::Storage;
use crate::waiters::DurableWaiters;
use parking_lot::{Condvar, Mutex};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Acquire, Ordering::Release};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

/// Bytes of a checkpoint frame's header, and of a log frame's in format 1.
pub(crate) const FRAME_HEADER: usize = 16;
/// Bytes of a log frame's header: [`FRAME_HEADER`] and the flush's start.
pub(crate) const LOG_FRAME_HEADER: usize = FRAME_HEADER + 8;
/// Largest frame payload accepted by the reader (a bulk-load chunk is the largest writer).
pub(crate) const MAX_FRAME: usize = 1 << 30;
/// Largest batch accepted, in [`batch_op_bytes`] summed over its operations: half a frame,
/// so that its frame (keys, values and a few dozen bytes of revisions and lengths per
/// operation) always fits, with room to spare. Bulk-load groups and checkpoint chunks stay
/// under it too.
pub(crate) const MAX_BATCH_BYTES: usize = MAX_FRAME / 2;

/// What one operation of a batch counts toward [`MAX_BATCH_BYTES`]: its key, its value and
/// more than its frame's fixed fields.
pub(crate) fn batch_op_bytes(key_len: usize, value_len: usize) -> usize {
    key_len + value_len + 64
}

/// Refuse a batch of operations with these key and value lengths if it counts more than
/// `max` bytes ([`batch_op_bytes`] each).
pub(crate) fn check_batch(
    ops: impl Iterator<Item = (usize, usize)>,
    max: usize,
) -> crate::Result<()> {
    let len = ops.map(|(k, v)| batch_op_bytes(k, v)).sum();
    if len > max {
        return Err(crate::Error::BatchTooLarge { len, max });
    }
    Ok(())
}

/// Append one log frame to `out`: at `lsn`, written by the flush that starts at `flush`.
pub(crate) fn put_log_frame(out: &mut Vec<u8>, lsn: u64, flush: u64, payload: &[u8]) {
    debug_assert!(flush <= lsn);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&log_crc(lsn, flush, payload).to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&flush.to_le_bytes());
    out.extend_from_slice(payload);
}

/// A log frame's checksum. `flush` goes first, so that a frame of format 1 (whose checksum
/// covers `lsn ++ payload`) never reads as intact in this format by its bytes lining up.
fn log_crc(lsn: u64, flush: u64, payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&flush.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c_append(crc, &lsn.to_le_bytes()), payload)
}

/// Parse the log frame at the start of `buf`, expected at `lsn`: its payload and the LSN at
/// which its flush started. `None` if it is not a whole, intact frame written at that
/// position.
pub(crate) fn get_log_frame(buf: &[u8], lsn: u64) -> Option<(&[u8], u64)> {
    if buf.len() < LOG_FRAME_HEADER {
        return None;
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().ok()?);
    let at = u64::from_le_bytes(buf[8..16].try_into().ok()?);
    let flush = u64::from_le_bytes(buf[16..24].try_into().ok()?);
    if at != lsn || flush > lsn || len > MAX_FRAME || buf.len() < LOG_FRAME_HEADER + len {
        return None;
    }
    let payload = &buf[LOG_FRAME_HEADER..LOG_FRAME_HEADER + len];
    (log_crc(lsn, flush, payload) == crc).then_some((payload, flush))
}

/// Append one checkpoint frame (or a log frame of format 1) to `out`.
pub(crate) fn put_frame(out: &mut Vec<u8>, lsn: u64, payload: &[u8]) {
    let mut crc = crc32c::crc32c(&lsn.to_le_bytes());
    crc = crc32c::crc32c_append(crc, payload);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Parse the checkpoint frame (or log frame of format 1) at the start of `buf`, expected at
/// `lsn`. `None` if it is not a whole, intact frame written at that position.
pub(crate) fn get_frame(buf: &[u8], lsn: u64) -> Option<&[u8]> {
    let (payload, crc) = frame_unchecked(buf, lsn)?;
    frame_ok(payload, lsn, crc).then_some(payload)
}

/// Parse the frame header at the start of `buf`, expected at `lsn`, without checking the
/// payload's checksum: the payload and the checksum to verify with [`frame_ok`] (so that
/// large files can be checked in parallel).
pub(crate) fn frame_unchecked(buf: &[u8], lsn: u64) -> Option<(&[u8], u32)> {
    if buf.len() < FRAME_HEADER {
        return None;
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().ok()?);
    let at = u64::from_le_bytes(buf[8..16].try_into().ok()?);
    if at != lsn || len > MAX_FRAME || buf.len() < FRAME_HEADER + len {
        return None;
    }
    Some((&buf[FRAME_HEADER..FRAME_HEADER + len], crc))
}

/// Whether a payload read by [`frame_unchecked`] at `lsn` matches its checksum.
pub(crate) fn frame_ok(payload: &[u8], lsn: u64, crc: u32) -> bool {
    crc32c::crc32c_append(crc32c::crc32c(&lsn.to_le_bytes()), payload) == crc
}

/// The leadership of a flush, given up when the flush ends, by return or by unwinding: a
/// flush that panicked would otherwise leave every later committer waiting for a leader that
/// never comes; it poisons the log first (the buffer it took is lost).
struct Leading<'a>(&'a Wal);

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.poison_after_panic();
        }
        *self.0.leader.lock() = false;
        self.0.flushed.notify_all();
    }
}

/// The name of the log file whose first frame is at `lsn`.
pub(crate) fn wal_name(lsn: u64) -> String {
    format!("wal-{lsn:020}.log")
}

/// The starting LSN of a log file's name, if it is one.
pub(crate) fn parse_wal_name(name: &str) -> Option<u64> {
    let n = name.strip_prefix("wal-")?.strip_suffix(".log")?;
    (n.len() == 20).then(|| n.parse().ok())?
}

struct Buffer {
    data: Vec<u8>,
    /// LSN of `data[0]`.
    start: u64,
}

struct Io {
    file: File,
    path: PathBuf,
    /// LSN of the file's first byte.
    file_start: u64,
}

/// Counters of the log.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct WalStats {
    pub(crate) fsyncs: u64,
    pub(crate) durable_lsn: u64,
}

/// The write-ahead log of one database. See the module docs.
pub(crate) struct Wal {
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    segment_bytes: u64,
    buf: Mutex<Buffer>,
    io: Mutex<Io>,
    /// Whether a flush is under way, and the signal that one ended.
    leader: Mutex<bool>,
    flushed: Condvar,
    fsyncs: AtomicU64,
    poison: Arc<OnceLock<String>>,
    bell: Arc<Bell>,
    /// The durable LSN, and the tasks waiting without a thread for it to reach a position
    /// ([`Wal::poll_durable`]), woken by the flush that gets there or by the failure.
    waiters: DurableWaiters,
    /// The largest buffer allocation a flush hands back for reuse: what the budget charges
    /// for the log's buffers. A larger one (a bulk load's chunk, a huge batch) is freed, so
    /// that one big write does not hold its allocation, outside the budget, for good.
    keep_bytes: usize,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("durable", &self.durable())
            .finish_non_exhaustive()
    }
}

impl Wal {
    /// Open the log for appending at `end` (the end of the last intact frame), in the file
    /// `file_start` (created if missing); the caller has cut any torn tail already.
    #[allow(clippy::too_many_arguments)] // each is a separate setting of the one caller
    pub(crate) fn open(
        dir: &Path,
        storage: Arc<dyn Storage>,
        segment_bytes: u64,
        file_start: u64,
        end: u64,
        poison: Arc<OnceLock<String>>,
        bell: Arc<Bell>,
        keep_bytes: usize,
    ) -> Result<Wal> {
        let path = dir.join(wal_name(file_start));
        let file = storage.open(&path).map_err(|source| Error::Io {
            op: "open",
            path: path.clone(),
            source,
        })?;
        // Recovery replayed this file's frames from the page cache: a process killed between
        // a flush's write and its fsync leaves them there, not on the device. Make them
        // durable before anyone is told of them (watchers, a checkpoint that would let the
        // log before it go): the LSN set as durable below must be.
        storage.sync(&file).map_err(|source| Error::Io {
            op: "fsync",
            path: path.clone(),
            source,
        })?;
        storage.sync_dir(dir).map_err(|source| Error::Io {
            op: "sync directory",
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            storage,
            segment_bytes,
            buf: Mutex::new(Buffer {
                data: Vec::new(),
                start: end,
            }),
            io: Mutex::new(Io {
                file,
                path,
                file_start,
            }),
            leader: Mutex::new(false),
            flushed: Condvar::new(),
            fsyncs: AtomicU64::new(0),
            poison,
            bell,
            waiters: DurableWaiters::new(end),
            keep_bytes,
        })
    }

    /// Append a frame; returns the LSN at which it ends. Called with the partition lock held,
    /// so that frames of one key are in the order their writes were applied.
    pub(crate) fn append(&self, payload: &[u8]) -> u64 {
        let mut b = self.buf.lock();
        let lsn = b.start + b.data.len() as u64;
        // The next flush takes the whole buffer, from `b.start`: that is where the flush
        // that writes this frame starts.
        let flush = b.start;
        put_log_frame(&mut b.data, lsn, flush, payload);
        b.start + b.data.len() as u64
    }

    /// LSN after the last appended frame.
    pub(crate) fn end(&self) -> u64 {
        let b = self.buf.lock();
        b.start + b.data.len() as u64
    }

    /// Bytes waiting in the buffer.
    pub(crate) fn buffered(&self) -> usize {
        self.buf.lock().data.len()
    }

    /// LSN up to which the log is durable.
    pub(crate) fn durable(&self) -> u64 {
        self.waiters.durable()
    }

    /// The size at which appending moves on to a new log file (`Config::wal_file_bytes`).
    pub(crate) fn file_bytes(&self) -> u64 {
        self.segment_bytes
    }

    pub(crate) fn stats(&self) -> WalStats {
        WalStats {
            fsyncs: self.fsyncs.load(Acquire),
            durable_lsn: self.durable(),
        }
    }

    fn poisoned(&self) -> Result<()> {
        match self.poison.get() {
            Some(why) => Err(Error::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    /// Make everything up to `lsn` durable, sharing the flush with concurrent callers.
    ///
    /// One caller at a time is the leader: it takes the whole buffer, writes and syncs it.
    /// The others wait on a condition variable, not on the I/O lock, so that when a flush
    /// ends every committer it covered returns at once, and one of those it did not cover
    /// leads the next flush, taking everything appended meanwhile.
    pub(crate) fn sync_to(&self, lsn: u64) -> Result<()> {
        loop {
            if self.durable() >= lsn {
                return Ok(());
            }
            if let Err(e) = self.poisoned() {
                // No flush comes any more: let async waiters see the poison too, whoever
                // poisoned the log.
                self.waiters.wake_all();
                return Err(e);
            }
            {
                let mut leading = self.leader.lock();
                if self.durable() >= lsn {
                    return Ok(());
                }
                if *leading {
                    self.flushed.wait(&mut leading);
                    continue;
                }
                *leading = true;
            }
            let r = {
                let _lead = Leading(self);
                self.flush()
            };
            r?;
        }
    }

    /// Poison the log because a flush unwound (a bug, or a `Storage` that panicked): the
    /// buffer it took is gone, so nothing written after it could be trusted. Committers and
    /// async waiters learn it at once.
    fn poison_after_panic(&self) {
        let _ = self
            .poison
            .set("a log flush panicked; what it held is not known to be written".into());
        self.waiters.wake_all();
        self.bell.ring();
    }

    /// Whether the log is durable up to `lsn`, for an async task: `Pending` registers
    /// `cx`'s waker, which the flush that gets there (or the log's failure) wakes; the
    /// poisoning error once the log failed. The task does not drive a flush: it waits for
    /// one that is due anyway (with `commit` durability the committer of every frame a read
    /// can wait for syncs it). Why no wake-up is lost: `DurableWaiters`.
    pub(crate) fn poll_durable(&self, lsn: u64, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.waiters.poll(lsn, cx, || self.poisoned().err())
    }

    /// Wake every async waiter: the log is poisoned (by a flush, or by a batch that could not
    /// be undone), so no flush will come; each sees the poison when it polls.
    pub(crate) fn wake_all(&self) {
        self.waiters.wake_all();
    }

    /// Write and sync everything buffered. Only the leader calls this.
    fn flush(&self) -> Result<()> {
        self.poisoned()?;
        let mut io = self.io.lock();
        let (data, start) = {
            let mut b = self.buf.lock();
            let start = b.start;
            let data = std::mem::take(&mut b.data);
            b.start += data.len() as u64;
            (data, start)
        };
        let end = start + data.len() as u64;
        let written = self.write_out(&mut io, &data, start);
        drop(io);
        match written {
            Ok(()) => {
                self.waiters.advance(end);
                self.bell.ring();
                // Hand the buffer's allocation back, unless someone refilled it meanwhile or
                // it is larger than the budget pays for.
                let mut b = self.buf.lock();
                if b.data.is_empty()
                    && b.data.capacity() < data.capacity()
                    && data.capacity() <= self.keep_bytes
                {
                    let mut data = data;
                    data.clear();
                    b.data = data;
                }
                Ok(())
            }
            Err(e) => {
                let why = e.to_string();
                let _ = self.poison.set(format!(
                    "the write-ahead log could not be made durable ({why}); the database \
                     refuses writes until it is reopened, and recovery keeps every write made \
                     durable (with commit durability, every acknowledged write)"
                ));
                self.cut_failed_flush(start);
                self.bell.ring();
                self.waiters.wake_all();
                tracing::error!(error = %why, "write-ahead log failed; writes are refused from now on");
                Err(e)
            }
        }
    }

    /// Cut the log at `start`, where the flush that failed began. Linux keeps the pages of a
    /// failed writeback in the page cache, marked clean: a reopen in the same boot would read
    /// them and replay frames the device may never have received, which the next power loss
    /// would take back. None of them was made durable (with `commit`, none was
    /// acknowledged), so they go. If the cut fails too, the error is logged: reopen only
    /// after a reboot then.
    fn cut_failed_flush(&self, start: u64) {
        let io = self.io.lock();
        let Some(len) = start.checked_sub(io.file_start) else {
            return;
        };
        let cut = self
            .storage
            .set_len(&io.file, len)
            .and_then(|()| self.storage.sync(&io.file));
        match cut {
            Ok(()) => {
                tracing::warn!(path = %io.path.display(), offset = len, "cut the failed flush off the write-ahead log")
            }
            Err(e) => tracing::error!(
                path = %io.path.display(),
                offset = len,
                error = %e,
                "could not cut the failed flush off the write-ahead log: reopen only after a reboot, or its frames may be replayed from the page cache"
            ),
        }
    }

    fn write_out(&self, io: &mut Io, data: &[u8], start: u64) -> Result<()> {
        let err = |op, path: &Path, source| Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        };
        if start - io.file_start >= self.segment_bytes {
            // Start a new file at a frame boundary; the old one is complete and durable.
            let path = self.dir.join(wal_name(start));
            let file = self
                .storage
                .open(&path)
                .map_err(|e| err("create", &path, e))?;
            self.storage
                .sync_dir(&self.dir)
                .map_err(|e| err("sync directory", &self.dir, e))?;
            *io = Io {
                file,
                path,
                file_start: start,
            };
        }
        if !data.is_empty() {
            self.storage
                .write_at(&io.file, data, start - io.file_start)
                .map_err(|e| err("write", &io.path, e))?;
        }
        self.storage
            .sync(&io.file)
            .map_err(|e| err("fsync", &io.path, e))?;
        self.fsyncs.fetch_add(1, Release);
        Ok(())
    }

    /// Remove log files that hold only frames before `lsn` (covered by a checkpoint).
    pub(crate) fn remove_before(&self, lsn: u64) -> Result<usize> {
        let current = self.io.lock().file_start;
        let files = list_wal(&self.dir)?;
        let mut removed = 0;
        for (i, (start, path)) in files.iter().enumerate() {
            let next = files.get(i + 1).map(|f| f.0);
            if *start < current && next.is_some_and(|n| n <= lsn) {
                self.storage.remove(path).map_err(|source| Error::Io {
                    op: "remove",
                    path: path.clone(),
                    source,
                })?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// The log files in `dir`, by starting LSN.
pub(crate) fn list_wal(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut v = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(|source| Error::Io {
        op: "list",
        path: dir.to_path_buf(),
        source,
    })?;
    for e in rd.flatten() {
        if let Some(lsn) = e.file_name().to_str().and_then(parse_wal_name) {
            v.push((lsn, e.path()));
        }
    }
    v.sort();
    Ok(v)
}

/// What [`walk_wal`] found: how many frames from `from` on, and where appending resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WalEnd {
    /// Frames handed to the caller (those from `from` on).
    pub(crate) frames: u64,
    /// The file to go on appending to (a new one at `end` if the last file is of format 1),
    /// and the LSN after the last intact frame.
    pub(crate) file_start: u64,
    pub(crate) end: u64,
    /// Bytes cut off the end as a torn tail.
    pub(crate) torn_bytes: u64,
}

/// One intact frame as [`walk_wal`] hands it over: its LSN, the LSN after it, and its
/// payload (borrowed from the file being walked).
pub(crate) type Frame<'a> = (u64, u64, &'a [u8]);

/// The whole log from `from` on, in memory: [`walk_wal`]'s frames, collected (tests).
#[cfg(test)]
pub(crate) struct WalContents {
    pub(crate) frames: Vec<(u64, u64, Vec<u8>)>,
    pub(crate) file_start: u64,
    pub(crate) end: u64,
    pub(crate) torn_bytes: u64,
}

#[cfg(test)]
pub(crate) fn read_wal(dir: &Path, storage: &dyn Storage, from: u64) -> Result<WalContents> {
    let mut frames = Vec::new();
    let end = walk_wal(dir, storage, from, None, &mut |fs: &[Frame<'_>]| {
        frames.extend(fs.iter().map(|&(lsn, end, p)| (lsn, end, p.to_vec())));
        Ok(())
    })?;
    Ok(WalContents {
        frames,
        file_start: end.file_start,
        end: end.end,
        torn_bytes: end.torn_bytes,
    })
}

/// The framing of one log file, told by its first frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// `len | crc | lsn | payload`: written before frames carried their flush.
    V1,
    /// `len | crc | lsn | flush | payload`.
    V2,
    /// Empty, or its first frame unreadable: read as V2, but an intact frame of format 1 after
    /// damage is damage too (the file may be of format 1 with its first frame damaged).
    Unknown,
}

impl Format {
    /// The frame at the start of `buf`, expected at `lsn`: its payload and the length of the
    /// whole frame.
    fn frame(self, buf: &[u8], lsn: u64) -> Option<(&[u8], usize)> {
        match self {
            Format::V1 => get_frame(buf, lsn).map(|p| (p, FRAME_HEADER + p.len())),
            Format::V2 | Format::Unknown => {
                get_log_frame(buf, lsn).map(|(p, _)| (p, LOG_FRAME_HEADER + p.len()))
            }
        }
    }
}

/// Walk the log from LSN `from` (a checkpoint's start; 0 without one), cutting a torn tail,
/// and hand `on_file` each file's intact frames from `from` on, in log order, once the whole
/// file has been checked. One file is held in memory at a time (a file is at most
/// `wal_file_bytes` plus one flush, or what a larger `wal_file_bytes` once wrote), so the
/// log's length does not bound the caller's memory.
///
/// `again` is what a first walk found, for a second walk of the same log: that one cuts
/// nothing and syncs nothing. It must find the same frames, and a torn tail (the first walk
/// cut the one there was), fewer frames or another end are errors: the files changed between
/// the walks, as when pages that a failed write-back left in the page cache are evicted and
/// the older bytes on the device read back.
pub(crate) fn walk_wal(
    dir: &Path,
    storage: &dyn Storage,
    from: u64,
    again: Option<&WalEnd>,
    on_file: &mut dyn FnMut(&[Frame<'_>]) -> Result<()>,
) -> Result<WalEnd> {
    let changed = |path: &Path, offset: u64, what: String| Error::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason: format!(
            "the log read differently the second time recovery read it ({what}); its files \
             changed under the open (a failed write-back whose pages were then dropped?); \
             nothing was cut"
        ),
    };
    let files = list_wal(dir)?;
    let mut out = WalEnd {
        frames: 0,
        file_start: from,
        end: from,
        torn_bytes: 0,
    };
    if files.is_empty() {
        return Ok(out);
    }
    let first = files.iter().rposition(|f| f.0 <= from).unwrap_or(0);
    if files[first].0 > from {
        return Err(Error::Corrupt {
            path: files[first].1.clone(),
            offset: 0,
            reason: format!(
                "the log starts at LSN {} but recovery needs it from LSN {from}: log files are \
                 missing",
                files[first].0
            ),
        });
    }
    let mut last_format = Format::V2;
    for (i, (start, path)) in files.iter().enumerate().skip(first) {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            op: "read",
            path: path.clone(),
            source,
        })?;
        // A file of format 1 starts with an intact frame of that format; anything else (an
        // empty file, or a first frame torn) is read as the current format.
        let format = if get_log_frame(&bytes, *start).is_some() {
            Format::V2
        } else if get_frame(&bytes, *start).is_some() {
            Format::V1
        } else {
            Format::Unknown
        };
        last_format = format;
        let mut pos = 0usize;
        // Frames before `from` are skipped by position: walk them to keep alignment.
        let mut lsn = *start;
        let mut frames: Vec<Frame<'_>> = Vec::new();
        while let Some((payload, len)) = format.frame(&bytes[pos..], lsn) {
            if lsn >= from {
                frames.push((lsn, lsn + len as u64, payload));
            }
            pos += len;
            lsn += len as u64;
        }
        let last = i + 1 == files.len();
        if pos < bytes.len() {
            // A torn tail is the unacknowledged end of the last flush: no intact frame of a
            // later flush follows it.
            if let Some(reason) = damage_after(&bytes, pos, *start, format, from) {
                return Err(Error::Corrupt {
                    path: path.clone(),
                    offset: pos as u64,
                    reason: format!(
                        "{reason}: this is damage, not a torn tail; refusing to drop committed \
                         batches"
                    ),
                });
            }
        }
        if pos < bytes.len() || (!last && lsn != files[i + 1].0) {
            if !last {
                return Err(Error::Corrupt {
                    path: path.clone(),
                    offset: pos as u64,
                    reason: "a damaged frame in the middle of the log (later log files \
                             follow it), not a torn tail; refusing to drop committed batches"
                        .into(),
                });
            }
            if let Some(first) = again {
                return Err(changed(
                    path,
                    pos as u64,
                    format!(
                        "a bad frame here, where the first read found intact frames up to LSN {}",
                        first.end
                    ),
                ));
            }
            // The torn tail of the last flush: cut it off.
            out.torn_bytes = (bytes.len() - pos) as u64;
            let f = storage.open(path).map_err(|source| Error::Io {
                op: "open",
                path: path.clone(),
                source,
            })?;
            storage
                .set_len(&f, pos as u64)
                .and_then(|()| storage.sync(&f))
                .map_err(|source| Error::Io {
                    op: "truncate torn tail",
                    path: path.clone(),
                    source,
                })?;
            tracing::warn!(path = %path.display(), offset = pos, bytes = out.torn_bytes, "cut a torn tail off the write-ahead log");
        }
        out.file_start = *start;
        out.end = lsn;
        out.frames += frames.len() as u64;
        on_file(&frames)?;
    }
    if out.end < from {
        return Err(Error::Corrupt {
            path: files.last().map(|f| f.1.clone()).unwrap_or_default(),
            offset: 0,
            reason: format!(
                "the log ends at LSN {} but the checkpoint says it reached {from}",
                out.end
            ),
        });
    }
    if let Some(first) = again {
        if (out.frames, out.end) != (first.frames, first.end) {
            let path = files.last().map(|f| f.1.clone()).unwrap_or_default();
            return Err(changed(
                &path,
                0,
                format!(
                    "{} frames ending at LSN {}, where the first read found {} ending at LSN {}",
                    out.frames, out.end, first.frames, first.end
                ),
            ));
        }
    }
    if last_format == Format::V1 {
        // Frames of the current format go to a file of their own. The file read last may hold
        // frames only in the page cache (its writer killed between a flush's write and its
        // fsync), and appending will not sync it: sync it now, before anything it holds is
        // taken as durable (the first walk does).
        let path = &files.last().expect("a file was read").1;
        if again.is_none() {
            storage
                .open(path)
                .and_then(|f| storage.sync(&f))
                .map_err(|source| Error::Io {
                    op: "fsync",
                    path: path.clone(),
                    source,
                })?;
        }
        out.file_start = out.end;
    }
    Ok(out)
}

/// Why the bytes from the bad frame at `pos` on, in a file of `format` starting at LSN
/// `start`, are damage rather than the torn tail of the last flush; `None` for a torn tail.
///
/// Intact frames may follow a torn one in the same flush: its single `pwrite` reaches the
/// device in any order of pages. One that names a flush starting after the bad frame was
/// written after the bad frame's flush completed, so the bad frame had been made durable and
/// acknowledged: damage. So is damage before `from`, the checkpoint's start, and an intact
/// frame whose flush started before it: the checkpoint made everything up to `from` durable,
/// so those flushes completed. A frame of format 1 does not name its flush, so any intact one
/// is taken as damage (in files not known to be of the current format).
fn damage_after(bytes: &[u8], pos: usize, start: u64, format: Format, from: u64) -> Option<String> {
    let bad = start + pos as u64;
    if bad < from {
        return Some(format!(
            "a damaged frame at LSN {bad}, before the checkpoint's LSN {from} (made durable)"
        ));
    }
    let mut p = pos + 1;
    while p + FRAME_HEADER <= bytes.len() {
        let lsn = start + p as u64;
        // The LSN field must equal the frame's own position: a cheap filter before the CRC.
        if bytes[p + 8..p + 16] != lsn.to_le_bytes() {
            p += 1;
            continue;
        }
        if format != Format::V1 {
            if let Some((payload, flush)) = get_log_frame(&bytes[p..], lsn) {
                if flush > bad {
                    return Some(format!(
                        "a damaged frame at LSN {bad} with an intact frame of a later flush \
                         (from LSN {flush}) after it, at offset {p}"
                    ));
                }
                if flush < from {
                    return Some(format!(
                        "a damaged frame at LSN {bad} in a flush that started at LSN {flush}, \
                         before the checkpoint's LSN {from} (so it completed)"
                    ));
                }
                // Written by the same flush as the bad frame: part of the torn tail.
                p += LOG_FRAME_HEADER + payload.len();
                continue;
            }
        }
        if format != Format::V2 && get_frame(&bytes[p..], lsn).is_some() {
            return Some(format!(
                "a damaged frame with an intact frame after it (at offset {p}), in a log file \
                 of format 1, whose frames do not name their flush"
            ));
        }
        p += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A waker that records that it was woken.
    struct Flag(std::sync::atomic::AtomicBool);

    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Poisoned from outside a flush (as a batch that cannot be undone poisons it), the log
    /// still wakes the tasks waiting for a flush that will not come, and they see the poison.
    #[test]
    fn async_waiters_are_woken_when_the_log_is_poisoned_outside_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let poison = Arc::new(OnceLock::new());
        let wal = Wal::open(
            dir.path(),
            Arc::new(crate::far::OsStorage),
            1 << 20,
            0,
            0,
            poison.clone(),
            Arc::new(Bell::default()),
            8 << 20,
        )
        .unwrap();
        let lsn = wal.append(b"frame");
        let flag = Arc::new(Flag(std::sync::atomic::AtomicBool::new(false)));
        let waker = std::task::Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(wal.poll_durable(lsn, &mut cx).is_pending());
        // Polled again while waiting: still one entry.
        assert!(wal.poll_durable(lsn, &mut cx).is_pending());
        assert_eq!(wal.waiters.waiting(), 1);
        poison.set("a batch could not be undone".into()).unwrap();
        assert!(matches!(wal.sync_to(lsn), Err(Error::Poisoned(_))));
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst), "woken");
        assert_eq!(wal.waiters.waiting(), 0);
        assert!(matches!(
            wal.poll_durable(lsn, &mut cx),
            Poll::Ready(Err(Error::Poisoned(_)))
        ));
    }

    /// Storage whose `fdatasync` fails from when `fail` is set (the write before it lands in
    /// the page cache, as with a device that fails its writeback), or panics if `panics`.
    #[derive(Debug, Default)]
    struct SyncFails {
        fail: std::sync::atomic::AtomicBool,
        panics: bool,
    }

    impl Storage for SyncFails {
        fn sync(&self, file: &File) -> std::io::Result<()> {
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                assert!(!self.panics, "a storage that panics in fdatasync");
                return Err(std::io::Error::from_raw_os_error(libc::EIO));
            }
            file.sync_data()
        }
    }

    /// A flush that panics poisons the log and gives up its leadership: a committer waiting
    /// for it gets `Poisoned` instead of waiting for good for a leader that never comes.
    #[test]
    fn a_flush_that_panics_poisons_and_lets_the_others_go() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(SyncFails {
            panics: true,
            ..Default::default()
        });
        let poison = Arc::new(OnceLock::new());
        let wal = Arc::new(
            Wal::open(
                dir.path(),
                storage.clone(),
                1 << 20,
                0,
                0,
                poison.clone(),
                Arc::new(Bell::default()),
                8 << 20,
            )
            .unwrap(),
        );
        let first = wal.append(b"first");
        storage
            .fail
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let w = wal.clone();
        let leader = std::thread::spawn(move || w.sync_to(first));
        assert!(leader.join().is_err(), "the leader's flush panicked");
        assert!(poison.get().is_some_and(|p| p.contains("panicked")));
        let second = wal.append(b"second");
        let w = wal.clone();
        let follower = std::thread::spawn(move || w.sync_to(second));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !follower.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(
            follower.is_finished(),
            "a committer waits for a leader that never comes"
        );
        assert!(matches!(follower.join().unwrap(), Err(Error::Poisoned(_))));
    }

    /// After `fdatasync` fails, the failed flush's frames are cut off the log: they are in
    /// the file (the page cache) but may not be on the device, and a reopen in this boot
    /// must not replay them. The frames made durable before stay.
    #[test]
    fn a_failed_flush_is_cut_off_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(SyncFails::default());
        let poison = Arc::new(OnceLock::new());
        let wal = Wal::open(
            dir.path(),
            storage.clone(),
            1 << 20,
            0,
            0,
            poison.clone(),
            Arc::new(Bell::default()),
            8 << 20,
        )
        .unwrap();
        let durable = wal.append(b"durable");
        wal.sync_to(durable).unwrap();
        let lost = wal.append(b"never durable");
        storage
            .fail
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let e = wal.sync_to(lost).unwrap_err();
        assert!(e.to_string().contains("fsync"), "{e}");
        assert!(poison.get().is_some(), "poisoned");
        let path = dir.path().join(wal_name(0));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), durable, "cut");
        let c = read_wal(dir.path(), &crate::far::OsStorage, 0).unwrap();
        let payloads: Vec<&[u8]> = c.frames.iter().map(|f| &f.2[..]).collect();
        assert_eq!(payloads, [&b"durable"[..]]);
        assert_eq!((c.end, c.torn_bytes), (durable, 0));
    }

    /// Recovery walks the log twice. The second walk cuts nothing: if the log's last flush
    /// now reads as torn (its pages dropped between the walks), or the log ends elsewhere,
    /// the walk is refused naming the file, and the file is left as it is.
    #[test]
    fn a_second_walk_that_reads_another_log_is_refused_and_cuts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let wal = open_log(dir.path(), 0, 0);
        let mut ends = Vec::new();
        for i in 0..5u8 {
            let lsn = wal.append(&[i; 100]);
            wal.sync_to(lsn).unwrap();
            ends.push(lsn);
        }
        drop(wal);
        let path = dir.path().join(wal_name(0));
        let walk = |again: Option<&WalEnd>| {
            let mut n = 0;
            walk_wal(dir.path(), &crate::far::OsStorage, 0, again, &mut |f| {
                n += f.len();
                Ok(())
            })
            .map(|end| (end, n))
        };
        let (first, n) = walk(None).unwrap();
        assert_eq!((first.frames, n, first.end), (5, 5, ends[4]));
        assert_eq!(
            walk(Some(&first)).unwrap(),
            (first, 5),
            "the same log twice"
        );
        // The last flush's bytes change: a torn tail the first walk did not see.
        let mut bytes = std::fs::read(&path).unwrap();
        let len = bytes.len();
        bytes[len - 10] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let e = walk(Some(&first)).unwrap_err();
        assert!(e.to_string().contains("read differently"), "{e}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing was cut");
        // A frame more than the first walk found: another end.
        bytes[len - 10] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let wal = open_log(dir.path(), 0, first.end);
        wal.sync_to(wal.append(b"later")).unwrap();
        drop(wal);
        let e = walk(Some(&first)).unwrap_err();
        assert!(e.to_string().contains("6 frames"), "{e}");
    }

    /// A batch is refused by the bytes it counts (keys, values and 64 bytes of frame fields an
    /// operation), so that its frame always fits; the limit is half a frame.
    #[test]
    fn batches_are_bounded_by_what_their_frame_can_carry() {
        assert!(check_batch([(10, 100), (10, 0)].into_iter(), 248).is_ok());
        let e = check_batch([(10, 100), (10, 0)].into_iter(), 247).unwrap_err();
        assert!(
            matches!(e, crate::Error::BatchTooLarge { len: 248, max: 247 }),
            "{e}"
        );
        assert!(e.to_string().contains("split it"), "{e}");
        assert_eq!(MAX_BATCH_BYTES * 2, MAX_FRAME);
        // 480 values of the default largest size (1 MiB) fit in one batch; 600 do not.
        let max = (1 << 20) + 8 + 24;
        assert!(check_batch(std::iter::repeat_n((64, max), 480), MAX_BATCH_BYTES).is_ok());
        assert!(check_batch(std::iter::repeat_n((64, max), 600), MAX_BATCH_BYTES).is_err());
    }

    fn open_log(dir: &Path, file_start: u64, end: u64) -> Wal {
        Wal::open(
            dir,
            Arc::new(crate::far::OsStorage),
            1 << 20,
            file_start,
            end,
            Arc::new(OnceLock::new()),
            Arc::new(Bell::default()),
            8 << 20,
        )
        .unwrap()
    }

    /// A flush hands its buffer's allocation back for the next appends only up to what the
    /// budget pays for: after one 32 MiB frame the log does not hold 32 MiB for good.
    #[test]
    fn a_big_frame_s_buffer_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let wal = open_log(dir.path(), 0, 0);
        let small = wal.append(&[1u8; 1000]);
        wal.sync_to(small).unwrap();
        assert!(
            wal.buf.lock().data.capacity() >= 1000,
            "a small buffer is kept"
        );
        let big = wal.append(&vec![2u8; 32 << 20]);
        wal.sync_to(big).unwrap();
        let kept = wal.buf.lock().data.capacity();
        assert!(kept <= 8 << 20, "{kept} bytes kept after a 32 MiB frame");
        let next = wal.append(&[3u8; 1000]);
        wal.sync_to(next).unwrap();
        assert_eq!(wal.durable(), next);
    }

    /// Two flushes through the log: three frames of 1000 bytes, then six of 1500. Returns
    /// the log file and each frame's `(lsn, end)`.
    fn two_flushes(dir: &Path) -> (PathBuf, Vec<(u64, u64)>) {
        let wal = open_log(dir, 0, 0);
        let mut frames = Vec::new();
        for (n, len) in [(3, 1000), (6, 1500)] {
            for i in 0..n {
                let start = wal.end();
                let end = wal.append(&vec![i as u8; len]);
                frames.push((start, end));
            }
            wal.sync_to(wal.end()).unwrap();
        }
        assert_eq!(wal.stats().fsyncs, 2, "two flushes");
        (dir.join(wal_name(0)), frames)
    }

    /// Zero `len` bytes of the file from `at`, as a device that lost those pages would.
    fn zero(path: &Path, at: u64, len: usize) {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[at as usize..at as usize + len].fill(0);
        std::fs::write(path, &bytes).unwrap();
    }

    /// A power loss during a flush can leave any of its pages unwritten, so intact frames of
    /// that flush may follow a damaged one. None of it was acknowledged (its `fdatasync` never
    /// returned): the log is cut at the damage, the intact prefix kept, nothing after it.
    #[test]
    fn a_flush_damaged_in_its_middle_is_a_torn_tail_cut_at_the_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (path, frames) = two_flushes(dir.path());
        let len = std::fs::metadata(&path).unwrap().len();
        // The second flush's third frame lost; its fourth to sixth are intact.
        let (bad, _) = frames[5];
        zero(&path, bad, 100);
        let c = read_wal(dir.path(), &crate::far::OsStorage, 0).unwrap();
        let kept: Vec<(u64, u64)> = c.frames.iter().map(|f| (f.0, f.1)).collect();
        assert_eq!(kept, frames[..5], "the frames before the damage");
        assert_eq!(c.frames[4].2, vec![1u8; 1500], "payloads kept whole");
        assert_eq!((c.file_start, c.end, c.torn_bytes), (0, bad, len - bad));
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            bad,
            "cut at the damage"
        );
        // Appending resumes there, and the next read sees the new frame after the kept ones.
        let wal = open_log(dir.path(), c.file_start, c.end);
        wal.append(b"after");
        wal.sync_to(wal.end()).unwrap();
        let c = read_wal(dir.path(), &crate::far::OsStorage, 0).unwrap();
        assert_eq!(c.frames.len(), 6);
        assert_eq!(c.frames[5].2, b"after");
        assert_eq!(c.torn_bytes, 0);
    }

    /// Damage in a flush that completed, with a later flush's frames after it, is not a torn
    /// tail: the damaged flush was acknowledged. Opening refuses, and the file is left whole.
    #[test]
    fn damage_to_a_flush_a_later_flush_follows_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, frames) = two_flushes(dir.path());
        let before = std::fs::read(&path).unwrap();
        let (bad, _) = frames[1];
        zero(&path, bad, 100);
        let e = read_wal(dir.path(), &crate::far::OsStorage, 0)
            .err()
            .expect("refused");
        assert!(
            matches!(&e, Error::Corrupt { offset, .. } if *offset == bad),
            "{e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("later flush") && msg.contains("not a torn tail"),
            "{msg}"
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            before.len() as u64,
            "nothing cut"
        );
    }

    /// Everything before a checkpoint's LSN was made durable, so damage there, or in a flush
    /// that started before it, is never a torn tail: opening refuses and cuts nothing.
    #[test]
    fn damage_in_a_flush_a_checkpoint_covers_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, frames) = two_flushes(dir.path());
        let before = std::fs::read(&path).unwrap();
        // A checkpoint at the second flush's fourth frame: that flush completed.
        let from = frames[6].0;
        for (bad, why) in [(5, "before the checkpoint's LSN"), (7, "so it completed")] {
            std::fs::write(&path, &before).unwrap();
            zero(&path, frames[bad].0, 100);
            let e = read_wal(dir.path(), &crate::far::OsStorage, from)
                .err()
                .expect("refused");
            assert!(e.to_string().contains(why), "frame {bad}: {e}");
            assert_eq!(
                std::fs::metadata(&path).unwrap().len(),
                before.len() as u64,
                "nothing cut"
            );
            // Without the checkpoint, the same damage is the last flush's torn tail.
            assert!(read_wal(dir.path(), &crate::far::OsStorage, 0).is_ok());
        }
    }

    /// A log written before frames named their flush (format 1, the checkpoint's framing) is
    /// read; appending goes on in a new file of the current format, and the next read takes
    /// both. Damage in it followed by an intact frame is refused, as it always was.
    #[test]
    fn a_log_of_format_1_is_read_and_appending_goes_on_in_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join(wal_name(0));
        let mut bytes = Vec::new();
        for i in 0..3u8 {
            let lsn = bytes.len() as u64;
            put_frame(&mut bytes, lsn, &[i; 40]);
        }
        std::fs::write(&old, &bytes).unwrap();
        // The file read last is synced before appending moves to a new one (its frames may
        // be in the page cache only): a failing sync fails the read.
        let failing = SyncFails::default();
        failing
            .fail
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let e = read_wal(dir.path(), &failing, 0)
            .err()
            .expect("fsync failed");
        assert!(matches!(&e, Error::Io { op: "fsync", .. }), "{e}");
        let c = read_wal(dir.path(), &crate::far::OsStorage, 0).unwrap();
        let payloads: Vec<&[u8]> = c.frames.iter().map(|f| &f.2[..]).collect();
        assert_eq!(payloads, [&[0u8; 40][..], &[1; 40], &[2; 40]]);
        let end = bytes.len() as u64;
        assert_eq!((c.end, c.file_start), (end, end), "a new file at the end");
        let wal = open_log(dir.path(), c.file_start, c.end);
        wal.append(b"new");
        wal.sync_to(wal.end()).unwrap();
        drop(wal);
        assert_eq!(
            std::fs::read(&old).unwrap(),
            bytes,
            "the old file untouched"
        );
        let files: Vec<u64> = list_wal(dir.path()).unwrap().iter().map(|f| f.0).collect();
        assert_eq!(files, [0, end]);
        let c = read_wal(dir.path(), &crate::far::OsStorage, 0).unwrap();
        assert_eq!(c.frames.len(), 4);
        assert_eq!((c.frames[3].0, &c.frames[3].2[..]), (end, &b"new"[..]));
        assert_eq!(c.file_start, end, "appending stays in the new file");

        // Format 1 frames do not name their flush: an intact one after damage is damage.
        std::fs::remove_file(dir.path().join(wal_name(end))).unwrap();
        let mut damaged = bytes.clone();
        damaged[FRAME_HEADER + 56 + 20] ^= 1; // the second frame's payload
        std::fs::write(&old, &damaged).unwrap();
        let e = read_wal(dir.path(), &crate::far::OsStorage, 0)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("format 1"), "{e}");
        // Even when its first frame is the damaged one.
        let mut damaged = bytes.clone();
        damaged[FRAME_HEADER + 5] ^= 1;
        std::fs::write(&old, &damaged).unwrap();
        let e = read_wal(dir.path(), &crate::far::OsStorage, 0)
            .err()
            .expect("refused");
        assert!(e.to_string().contains("format 1"), "{e}");
    }

    /// A frame of format 1 never reads as intact in the current format, nor the reverse, and
    /// a frame naming a flush after itself is not intact.
    #[test]
    fn the_two_framings_never_read_as_each_other() {
        let mut v1 = Vec::new();
        put_frame(&mut v1, 64, &[7; 32]);
        assert!(get_frame(&v1, 64).is_some());
        assert!(get_log_frame(&v1, 64).is_none());
        let mut v2 = Vec::new();
        put_log_frame(&mut v2, 64, 32, &[7; 32]);
        assert_eq!(get_log_frame(&v2, 64), Some((&[7u8; 32][..], 32)));
        assert!(get_frame(&v2, 64).is_none());
        let mut later = Vec::new();
        let crc = log_crc(64, 65, &[7; 32]);
        later.extend_from_slice(&32u32.to_le_bytes());
        later.extend_from_slice(&crc.to_le_bytes());
        later.extend_from_slice(&64u64.to_le_bytes());
        later.extend_from_slice(&65u64.to_le_bytes());
        later.extend_from_slice(&[7; 32]);
        assert!(
            get_log_frame(&later, 64).is_none(),
            "a flush after its frame"
        );
    }

    #[test]
    fn frames_round_trip_and_reject_damage() {
        let mut b = Vec::new();
        put_frame(&mut b, 100, b"hello");
        assert_eq!(get_frame(&b, 100), Some(&b"hello"[..]));
        assert_eq!(get_frame(&b, 101), None, "a frame read at the wrong LSN");
        assert_eq!(get_frame(&b[..b.len() - 1], 100), None, "a short frame");
        let mut bad = b.clone();
        bad[FRAME_HEADER] ^= 1;
        assert_eq!(get_frame(&bad, 100), None, "a flipped payload bit");
        assert_eq!(parse_wal_name(&wal_name(42)), Some(42));
        assert_eq!(parse_wal_name("wal-1.log"), None);
    }
}
