//! Checkpoints and recovery.
//!
//! A checkpoint records the log position `L` first, then scans every partition's index a slice
//! at a time (the partition lock is held for one slice, so writers wait at most a slice) and
//! writes every record to `ckpt-L.tmp`. It is fuzzy: a record may be captured before or after
//! a write made during the scan. That is safe because every batch applied before a slice was
//! scanned has its log frame appended already (the frame is appended under the partition
//! lock), so after the scan the log is synced, and replaying it from `L` redoes every write
//! made since `L` with its exact revisions: the state after replay is the same whichever
//! version the scan caught, and a batch the scan caught half of is completed by the replay.
//! Then the file is synced, renamed to `ckpt-L.tck`, the directory synced, and older
//! checkpoints and log files wholly before `L` removed.
//!
//! Recovery loads the newest complete checkpoint (in parallel, one thread per CPU, each
//! inserting a chunk of records a partition at a time), replays the log from its `L`, cutting
//! a torn tail, and sets each keyspace's revision to the highest it saw. The log is read a
//! file at a time, twice: a first walk checks and measures it (the keyspaces, each
//! partition's index size, the revisions, which batches go back into the change logs), and a
//! second replays it. So recovery holds one log file, not the whole log since `L`, in memory.
//! The far tier is not recovered: it is a cache of the data, rebuilt as the loaded records
//! overflow DRAM.

use crate::db::{ikey, Inner, KsInfo, RecoveryInfo};
use crate::durable::{
    ckpt_name, decode_ck, decode_log, encode_ck_header, encode_ck_trailer, parse_ckpt_name,
    LogRecord, Reader, CK_HEADER, CK_PARTS, CK_RECORDS, CK_TRAILER,
};
use crate::error::{Error, Result};
use crate::far::Storage;
use crate::hash::hash_key;
use crate::keyspace::{Meta, KEY_PREFIX, META};
use crate::wal::{frame_ok, frame_unchecked, put_frame, walk_wal, Wal, FRAME_HEADER};
use crate::{CheckpointInfo, Config};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// Buckets scanned per lock hold (8 slots each: about 1,600 records at a table's usual load,
/// a few hundred microseconds of copying on this machine's 300 ns DRAM), at most.
const SLICE_BUCKETS: usize = 256;
/// A slice also ends after the bucket that takes its records past this many bytes, so that a
/// chunk frame stays below the log's frame limit (which the next open enforces) and a
/// checkpoint of large values holds little in memory at once.
const SLICE_BYTES: usize = 16 << 20;
/// And a slice takes fewer buckets at once where eight buckets of the largest records the
/// limits allow could take it past this: it stays below this, or [`SLICE_BYTES`] plus one
/// bucket of the largest records (8 of a page each: 16 MiB + 512 MiB at the largest page,
/// 64 MiB), against the frame limit's 1 GiB.
const SLICE_HARD_BYTES: usize = 256 << 20;
/// A checkpoint file is synced every this many bytes written.
const SYNC_EVERY: u64 = 32 << 20;
/// How many records ahead a loader prefetches index buckets.
const PREFETCH_AHEAD: usize = 8;
/// A checkpoint chunk frame is written once it holds this much.
const CHUNK_BYTES: usize = 1 << 20;

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

fn list_ckpts(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io("list", dir))?.flatten() {
        if let Some(l) = e.file_name().to_str().and_then(parse_ckpt_name) {
            v.push((l, e.path()));
        }
    }
    v.sort();
    Ok(v)
}

/// Log files' worth of free space a checkpoint must leave the log.
const LOG_ROOM_FILES: u64 = 2;

/// Refuse to start a checkpoint that would leave the log less than [`LOG_ROOM_FILES`] log
/// files of room on the file system they share: the log goes on appending while the
/// checkpoint is written, and a log write that finds the disk full poisons the database,
/// where a checkpoint that does not start costs nothing. The checkpoint's size is estimated
/// as the live records' bytes (each record's header is larger than its checkpoint entry's),
/// but the file can still grow past that (writes made while it runs, a partition scanned
/// again after its index was rebuilt), so the writer also stops once the free space falls
/// below the log's room ([`out_of_room`]). A file system that cannot say is not checked.
fn check_room(inner: &Inner, storage: &dyn Storage, dir: &Path, log_file: u64) -> Result<()> {
    let Ok(free) = storage.available_bytes(dir) else {
        return Ok(());
    };
    let records: u64 = inner
        .parts()
        .iter()
        .map(|p| {
            let s = p.lock().stats();
            s.dram.bytes + s.far.bytes
        })
        .sum();
    let keep = LOG_ROOM_FILES * log_file;
    if free >= records.saturating_add(keep) {
        return Ok(());
    }
    Err(no_room(
        dir,
        format!(
            "not started: it needs about {records} bytes and the log {keep} more, and the file \
             system has {free} bytes free"
        ),
    ))
}

/// While a checkpoint is written: an error if the file system's free space has fallen below
/// the room kept for the log (the checkpoint is then given up, and its file removed).
fn out_of_room(storage: &dyn Storage, dir: &Path, log_file: u64) -> Result<()> {
    let keep = LOG_ROOM_FILES * log_file;
    match storage.available_bytes(dir) {
        Ok(free) if free < keep => Err(no_room(
            dir,
            format!(
                "stopped: the file system's free space fell to {free} bytes, below the {keep} \
                 kept for the log"
            ),
        )),
        _ => Ok(()),
    }
}

/// The `StorageFull` error of a checkpoint in `dir` that did not start or was given up.
fn no_room(dir: &Path, what: String) -> Error {
    Error::Io {
        op: "checkpoint",
        path: dir.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            format!(
                "{what}; free space or move the data directory (the log keeps every write \
                 meanwhile, and recovery replays it)"
            ),
        ),
    }
}

/// Write a checkpoint. See the module docs.
pub(crate) fn checkpoint(inner: &Inner) -> Result<CheckpointInfo> {
    let Some(wal) = inner.wal() else {
        return Err(Error::Config(
            "a checkpoint needs durability periodic or commit (with none, nothing is written)"
                .into(),
        ));
    };
    let _one = inner.checkpoint_lock();
    inner.writable()?;
    let storage = inner.storage().clone();
    let dir = inner.data_dir().to_path_buf();
    check_room(inner, &*storage, &dir, wal.file_bytes())?;
    let lsn = wal.end();
    let tmp = dir.join(format!("ckpt-{lsn:020}.tmp"));
    let file = storage.create(&tmp, 0).map_err(io("create", &tmp))?;
    let result = (|| {
        let mut off = 0u64;
        let mut out = Vec::with_capacity(CHUNK_BYTES + (1 << 16));
        let mut payload = Vec::with_capacity(CHUNK_BYTES + (1 << 16));
        // `check`: after writing, give up if the free space fell below the log's room; not
        // after the last write, which completes the checkpoint (finishing it lets the older
        // checkpoint and the log before it go, which frees space).
        let write = |out: &mut Vec<u8>, off: &mut u64, check: bool| -> Result<()> {
            storage
                .write_at(&file, out, *off)
                .map_err(io("write", &tmp))?;
            let before = *off;
            *off += out.len() as u64;
            out.clear();
            // Sync as we go: a checkpoint's gigabytes of dirty pages would otherwise be
            // written back all at once, and the log's next fsync (which the file system can
            // tie to other files' writeback) would wait for them, stalling committers.
            if before / SYNC_EVERY != *off / SYNC_EVERY {
                storage.sync(&file).map_err(io("fsync", &tmp))?;
            }
            // One `statvfs` a chunk (a megabyte or more).
            if check {
                out_of_room(&*storage, &dir, wal.file_bytes())?;
            }
            Ok(())
        };
        let defs: Vec<_> = inner
            .all_ks()
            .iter()
            .map(|k| crate::durable::KeyspaceDef {
                id: k.id,
                name: k.name.clone(),
                opts: k.opts,
                revision: 0,
            })
            .collect();
        encode_ck_header(lsn, &defs, &mut payload);
        put_frame(&mut out, off, &payload);
        write(&mut out, &mut off, true)?;
        let mut records = 0u64;
        let mut rescans = 0u64;
        let mut addrs = Vec::new();
        let mut per_part = Vec::with_capacity(inner.parts().len());
        for part in inner.parts() {
            let first = records;
            let mut start = 0;
            let mut generation = None;
            let mut rescan = false;
            loop {
                let mut n = 0u32;
                payload.clear();
                payload.push(CK_RECORDS);
                payload.push(u8::from(rescan));
                payload.extend_from_slice(&0u32.to_le_bytes());
                let (scanned, buckets, g) = {
                    let mut lk = part.lock();
                    lk.scan_buckets(
                        start,
                        SLICE_BUCKETS,
                        (SLICE_BYTES, SLICE_HARD_BYTES),
                        false,
                        &mut addrs,
                        |k, v| {
                            payload.extend_from_slice(&(k.len() as u32).to_le_bytes());
                            payload.extend_from_slice(&(v.len() as u32).to_le_bytes());
                            payload.extend_from_slice(k);
                            payload.extend_from_slice(v);
                            n += 1;
                        },
                    )?
                };
                payload[2..6].copy_from_slice(&n.to_le_bytes());
                records += u64::from(n);
                if n > 0 {
                    let at = off + out.len() as u64;
                    put_frame(&mut out, at, &payload);
                }
                if out.len() >= CHUNK_BYTES {
                    write(&mut out, &mut off, true)?;
                }
                if generation.is_some_and(|old| old != g) {
                    // The index was rebuilt between slices: bucket positions moved. Scan the
                    // partition again; duplicates are resolved by mod revision at load.
                    rescans += 1;
                    rescan = true;
                    start = 0;
                    generation = Some(g);
                    continue;
                }
                generation = Some(g);
                start += scanned;
                if start >= buckets {
                    break;
                }
            }
            per_part.push(records - first);
        }
        payload.clear();
        payload.push(CK_PARTS);
        payload.extend_from_slice(&(per_part.len() as u32).to_le_bytes());
        for n in &per_part {
            payload.extend_from_slice(&n.to_le_bytes());
        }
        let at = off + out.len() as u64;
        put_frame(&mut out, at, &payload);
        // Every batch the scan saw is in the log buffer: make it durable before the
        // checkpoint counts, so replay can complete a batch caught half-applied.
        wal.sync_to(wal.end())?;
        // A batch that failed and could not be undone during the scan poisoned the database
        // and may be in the scan half-applied (it is not in the log): such a state must not
        // become a checkpoint. (`sync_to` has nothing to flush then, so it would not say.)
        inner.writable()?;
        let defs: Vec<_> = inner.all_ks().iter().map(|k| def_of(k)).collect();
        encode_ck_trailer(records, &defs, &mut payload);
        let at = off + out.len() as u64;
        put_frame(&mut out, at, &payload);
        write(&mut out, &mut off, false)?;
        storage.sync(&file).map_err(io("fsync", &tmp))?;
        Ok((records, off, rescans))
    })();
    let (records, bytes, rescans) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = storage.remove(&tmp);
            return Err(e);
        }
    };
    let done = dir.join(ckpt_name(lsn));
    storage.rename(&tmp, &done).map_err(io("rename", &tmp))?;
    storage.sync_dir(&dir).map_err(io("sync directory", &dir))?;
    inner.set_checkpoint_lsn(lsn);
    inner.count_checkpoint();
    // The new checkpoint is durable: older ones and the log before it are not needed.
    for (l, path) in list_ckpts(&dir)? {
        if l < lsn {
            storage.remove(&path).map_err(io("remove", &path))?;
        }
    }
    wal.remove_before(lsn)?;
    tracing::info!(lsn, records, bytes, rescans, "checkpoint written");
    Ok(CheckpointInfo {
        lsn,
        records,
        bytes,
        rescans,
    })
}

fn def_of(k: &KsInfo) -> crate::durable::KeyspaceDef {
    crate::durable::KeyspaceDef {
        id: k.id,
        name: k.name.clone(),
        opts: k.opts,
        revision: k.rev.load(Relaxed),
    }
}

/// Recover `inner` from its data directory. See the module docs.
pub(crate) fn recover(inner: &mut Inner, config: &Config) -> Result<RecoveryInfo> {
    let dir = inner.data_dir().to_path_buf();
    std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
    let storage = inner.storage().clone();
    // A checkpoint that never completed.
    for e in std::fs::read_dir(&dir).map_err(io("list", &dir))?.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("ckpt-") && name.ends_with(".tmp") {
            storage
                .remove(&e.path())
                .map_err(io("remove incomplete checkpoint", &e.path()))?;
        }
    }
    let mut info = RecoveryInfo::default();
    let ckpt = list_ckpts(&dir)?.pop();
    let from = ckpt.as_ref().map_or(0, |c| c.0);
    // The log file holding an LSN, and its offset there, for errors.
    let files = crate::wal::list_wal(&dir)?;
    let at = |lsn: u64| match files.iter().rev().find(|f| f.0 <= lsn) {
        Some((start, path)) => (path.clone(), lsn - start),
        None => (dir.join(crate::wal::wal_name(from)), lsn),
    };
    let parsed = match &ckpt {
        Some((_, path)) => Some(parse_checkpoint(path)?),
        None => None,
    };
    if let Some(c) = &parsed {
        for d in &c.defs {
            inner.add_keyspace(d.clone(), true)?;
        }
    }
    // Size every partition's index for what it is about to receive.
    let n = inner.parts().len();
    let mut expect = vec![0u64; n];
    if let Some(c) = &parsed {
        if c.per_part.len() == n {
            expect.copy_from_slice(&c.per_part);
        } else {
            // Written with another partition count: assume an even spread, with room.
            let each = c.records / n as u64 + c.records / n as u64 / 8 + 64;
            expect.iter_mut().for_each(|e| *e = each);
        }
    }
    // The log is walked twice, a file at a time, so that recovery holds one log file in
    // memory rather than the whole log since the checkpoint. The first walk checks every
    // frame before anything is replayed (so that replay cannot fail half way on a frame),
    // adds the keyspaces the log created, counts each partition's puts, and finds each
    // keyspace's highest revision and which of its batches go back into its change log.
    let limit = inner.changelog_limit();
    let mut max_rev: HashMap<u16, u64> = HashMap::new();
    let mut history: HashMap<u16, History> = HashMap::new();
    let walked = walk_wal(&dir, &*storage, from, None, &mut |frames| {
        for &(lsn, _, payload) in frames {
            match decode(payload, lsn, &at)? {
                LogRecord::Keyspace(d) => {
                    inner.add_keyspace(d, false)?;
                }
                LogRecord::Batch { ks, rev, ops } => {
                    // A keyspace's record is logged before its handle exists, so before any
                    // batch of it.
                    let Some(ksi) = inner.ks_by_id(ks) else {
                        let (path, offset) = at(lsn);
                        return Err(corrupt(
                            &path,
                            offset,
                            format!(
                                "a batch of keyspace {ks}, which neither the checkpoint nor \
                                 the log before it created"
                            ),
                        ));
                    };
                    // What the change log would hold: at least an entry, for an empty batch
                    // (a skipped revision), so that empty ones count towards the limit too.
                    let mut bytes = 0;
                    for op in &ops {
                        bytes += op.key.len() + op.put.map_or(0, |p| p.2.len()) + 96;
                        if op.put.is_some() {
                            let ik = ikey(&ksi, op.key);
                            expect[inner.partition_for(&ksi, &ik, hash_key(&ik))] += 1;
                        }
                    }
                    let m = max_rev.entry(ks).or_default();
                    *m = (*m).max(rev);
                    history
                        .entry(ks)
                        .or_insert_with(|| History::new(ksi.rev.load(Relaxed)))
                        .push(rev, lsn, bytes.max(EMPTY_CHANGE_BYTES), limit);
                }
            }
        }
        Ok(())
    })?;
    info.torn_bytes = walked.torn_bytes;
    info.log_frames = walked.frames;
    history.values_mut().for_each(History::settle);
    for (p, &e) in inner.parts().iter().zip(&expect) {
        p.reserve(e as usize)?;
    }
    if let Some(c) = parsed {
        info.checkpoint_records = load_checkpoint(inner, c).map_err(lowered_limit)?;
    }
    // The second walk replays each file's batches, and keeps the events of those that go
    // back into the change logs.
    let mut kept: HashMap<u16, Vec<(u64, u64, Vec<crate::changelog::Event>)>> = HashMap::new();
    let shared: &Inner = inner;
    walk_wal(&dir, &*storage, from, Some(&walked), &mut |frames| {
        let mut records = Vec::with_capacity(frames.len());
        for &(lsn, end, payload) in frames {
            let rec = decode(payload, lsn, &at)?;
            if let LogRecord::Batch { ks, rev, ops } = &rec {
                if history.get(ks).is_some_and(|h| h.keeps(*rev, lsn)) {
                    let events = ops.iter().map(|o| event_of(o, *rev)).collect();
                    kept.entry(*ks).or_default().push((*rev, end, events));
                }
            }
            records.push(rec);
        }
        replay(shared, &records).map_err(lowered_limit)
    })?;
    // Revisions continue from the highest seen. The newest replayed batches newer than the
    // checkpoint go back into the change logs (as many as their byte limit holds), and
    // revisions with no batch (rolled back, or lost unacknowledged) become empty changes.
    for ks in inner.all_ks() {
        let top = max_rev.get(&ks.id).copied().unwrap_or(0);
        let start = ks.rev.load(Relaxed);
        if top <= start {
            continue;
        }
        ks.rev.store(top, Relaxed);
        let mut kept = kept.remove(&ks.id).unwrap_or_default();
        kept.sort_by_key(|k| k.0);
        // Revisions up to the cut are not in the history.
        let oldest = history.get(&ks.id).and_then(|h| h.cut).unwrap_or(start);
        ks.changelog.compact_through(oldest);
        let mut next = kept.into_iter().peekable();
        for rev in oldest + 1..=top {
            match next.next_if(|k| k.0 == rev) {
                Some((rev, end, events)) => ks
                    .changelog
                    .insert(rev, crate::changelog::Change { events, lsn: end }),
                None => ks.changelog.insert_empty(rev),
            }
        }
    }
    let wal = Wal::open(
        &dir,
        storage,
        config.wal_file_bytes,
        walked.file_start,
        walked.end,
        inner.poison_cell(),
        inner.bell(),
        2 * inner.wal_buffer_cap(),
    )?;
    inner.set_wal(Arc::new(wal));
    inner.set_checkpoint_lsn(from);
    if info.checkpoint_records > 0 || info.log_frames > 0 {
        tracing::info!(
            checkpoint_records = info.checkpoint_records,
            log_frames = info.log_frames,
            torn_bytes = info.torn_bytes,
            "recovered"
        );
    }
    Ok(info)
}

/// A log frame's record; an error naming where it is if this version does not know it.
fn decode<'a>(
    payload: &'a [u8],
    lsn: u64,
    at: &dyn Fn(u64) -> (PathBuf, u64),
) -> Result<LogRecord<'a>> {
    decode_log(payload).ok_or_else(|| {
        let (path, offset) = at(lsn);
        corrupt(
            &path,
            offset,
            "a log frame with an intact checksum holds a record this version does not know \
             (written by a newer version?)",
        )
    })
}

/// What the history counts for a batch with no ops (a revision skipped, or an empty bulk
/// load) when it picks the batches that fit the change log's limit: the size of an op's
/// estimate with no key or value.
const EMPTY_CHANGE_BYTES: usize = 96;

/// Which of a keyspace's replayed batches go back into its change log: the newest, in log
/// order, whose events fit the history's byte limit, none of a revision up to `cut`. The
/// first walk of the log finds them by their sizes alone, so that only their events are
/// ever copied (by the second walk).
///
/// Log order is not revision order (revisions are taken before frames are appended, on every
/// partition at once), so a frame left out can have a higher revision than one kept: the
/// history starts after `cut`, the highest revision left out, never with a hole where a
/// left-out revision would read as empty.
#[derive(Debug)]
struct History {
    /// The keyspace's revision in the checkpoint: batches up to it are not replayed history.
    start: u64,
    /// The kept frames so far, oldest first: (revision, LSN, estimated bytes).
    frames: std::collections::VecDeque<(u64, u64, usize)>,
    bytes: usize,
    cut: Option<u64>,
}

impl History {
    fn new(start: u64) -> Self {
        History {
            start,
            frames: Default::default(),
            bytes: 0,
            cut: None,
        }
    }

    /// The next frame in log order: kept, and the oldest frames dropped until the kept ones
    /// fit `limit` again.
    fn push(&mut self, rev: u64, lsn: u64, bytes: usize, limit: usize) {
        if rev <= self.start {
            return;
        }
        self.frames.push_back((rev, lsn, bytes));
        self.bytes += bytes;
        while self.bytes > limit {
            let (rev, _, bytes) = self.frames.pop_front().expect("bytes are counted");
            self.bytes -= bytes;
            self.cut = self.cut.max(Some(rev));
        }
    }

    /// After the last frame: a revision in several frames is a bulk load's (a frame per
    /// group), and as when it ran, the history starts after it.
    fn settle(&mut self) {
        let mut revs: Vec<u64> = self.frames.iter().map(|f| f.0).collect();
        revs.sort_unstable();
        for w in revs.windows(2) {
            if w[0] == w[1] {
                self.cut = self.cut.max(Some(w[0]));
            }
        }
    }

    /// Whether the settled history keeps the batch of revision `rev` in the frame at `lsn`.
    fn keeps(&self, rev: u64, lsn: u64) -> bool {
        rev > self.start
            && self.frames.front().is_some_and(|f| lsn >= f.1)
            && self.cut.is_none_or(|c| rev > c)
    }
}

/// The change a replayed op made.
fn event_of(o: &crate::durable::LoggedOp<'_>, rev: u64) -> crate::changelog::Event {
    use crate::changelog::{Event, EventKind};
    match o.put {
        Some((create, version, value)) => Event {
            kind: EventKind::Put,
            key: o.key.to_vec(),
            value: value.to_vec(),
            mod_revision: rev,
            create_revision: create,
            version,
        },
        None => Event {
            kind: EventKind::Delete,
            key: o.key.to_vec(),
            value: Vec::new(),
            mod_revision: rev,
            create_revision: 0,
            version: 0,
        },
    }
}

/// Recovery puts every record through the size checks of a new write, so a record it finds
/// over a limit was written under a higher one: say so, and which setting, instead of a bare
/// "too large" that reads like a write of the caller's.
fn lowered_limit(e: Error) -> Error {
    let (what, setting, len, max) = match e {
        // The partition's limits count the keyspace prefix and the revisions too.
        Error::KeyTooLarge { len, max } => (
            "key",
            "max_key_bytes",
            len.saturating_sub(KEY_PREFIX),
            max.saturating_sub(KEY_PREFIX),
        ),
        Error::ValueTooLarge { len, max } => (
            "value",
            "max_value_bytes",
            len.saturating_sub(META),
            max.saturating_sub(META),
        ),
        e => return e,
    };
    Error::Config(format!(
        "{setting} = {max}: the database holds a {what} of {len} bytes, written under a \
         higher {setting}; open it with the {setting} it was written with"
    ))
}

/// Apply a stretch of the log's batches, in parallel: thread `t` of `T` applies, in log
/// order, the ops whose partition is `t` mod `T`. A key's ops are all in one partition and in
/// log order there, and stretches are applied in log order, so the result is that of a
/// serial replay.
fn replay(inner: &Inner, records: &[LogRecord<'_>]) -> Result<()> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(inner.parts().len());
    let failure = parking_lot::Mutex::new(None);
    std::thread::scope(|s| {
        for t in 0..threads {
            let failure = &failure;
            s.spawn(move || {
                let mut buf = Vec::new();
                let r = (|| -> Result<()> {
                    for rec in records {
                        let LogRecord::Batch { ks, rev, ops } = rec else {
                            continue;
                        };
                        // The first walk checked every batch's keyspace, and the second saw
                        // the same frames.
                        let info = inner.ks_by_id(*ks).ok_or_else(|| Error::Corrupt {
                            path: inner.data_dir().to_path_buf(),
                            offset: 0,
                            reason: format!(
                                "a batch of keyspace {ks}, which the first read of the log \
                                 did not show"
                            ),
                        })?;
                        let mut held: Option<(usize, crate::partition::Locked<'_>)> = None;
                        for op in ops {
                            let ik = ikey(&info, op.key);
                            let hash = hash_key(&ik);
                            let p = inner.partition_for(&info, &ik, hash);
                            if p % threads != t {
                                continue;
                            }
                            if held.as_ref().is_none_or(|h| h.0 != p) {
                                drop(held.take()); // one partition lock at a time
                                held = Some((p, inner.parts()[p].lock()));
                            }
                            let lk = &mut held.as_mut().expect("held").1;
                            match &op.put {
                                Some((create, version, value)) => {
                                    let m = Meta {
                                        create: *create,
                                        modified: *rev,
                                        version: *version,
                                    };
                                    m.encode(value, &mut buf);
                                    if !lk.put(hash, &ik, &buf, info.opts.ordered)? {
                                        info.keys.fetch_add(1, Relaxed);
                                    }
                                }
                                None => {
                                    if lk.delete(hash, &ik, info.opts.ordered)? {
                                        info.keys.fetch_sub(1, Relaxed);
                                    }
                                }
                            }
                        }
                    }
                    Ok(())
                })();
                if let Err(e) = r {
                    failure.lock().get_or_insert(e);
                }
            });
        }
    });
    match failure.into_inner() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A checkpoint file, mapped and checked frame by frame (record chunks are checksummed
/// later, by the loader threads).
struct Parsed {
    path: PathBuf,
    map: memmap2::Mmap,
    /// (offset, payload start, payload length, checksum) of each record chunk.
    chunks: Vec<(u64, usize, usize, u32)>,
    defs: Vec<crate::durable::KeyspaceDef>,
    records: u64,
    per_part: Vec<u64>,
}

fn parse_checkpoint(path: &Path) -> Result<Parsed> {
    let file = std::fs::File::open(path).map_err(io("open", path))?;
    // SAFETY: the data directory is locked by this process, and checkpoints are never
    // written in place. A page that cannot be read (a media error, or the file cut under
    // us) raises SIGBUS: every read of the mapping runs inside `read_guarded`, which turns
    // that into an error. (A far record's key is compared inside a guard of its own, which
    // does not cover this mapping: `load_chunk` and `put_locked` never hand that comparison
    // a key that lies in it.)
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io("mmap", path))?;
    let _ = map.advise(memmap2::Advice::Sequential);
    let (chunks, defs, records, per_part) =
        read_guarded(&map, path, || walk_checkpoint(&map, path))?;
    Ok(Parsed {
        path: path.to_path_buf(),
        map,
        chunks,
        defs,
        records,
        per_part,
    })
}

/// Chunk positions, keyspaces, record count and per-partition counts of a checkpoint.
type Walked = (
    Vec<(u64, usize, usize, u32)>,
    Vec<crate::durable::KeyspaceDef>,
    u64,
    Vec<u64>,
);

/// Check a checkpoint's frames but its record chunks, and find those.
fn walk_checkpoint(bytes: &[u8], path: &Path) -> Result<Walked> {
    let mut off = 0usize;
    let mut chunks = Vec::new();
    let mut header = None;
    let mut trailer = None;
    let mut per_part = Vec::new();
    while off < bytes.len() {
        let Some((p, crc)) = frame_unchecked(&bytes[off..], off as u64) else {
            return Err(damaged(path, off as u64));
        };
        match p.first() {
            // Record chunks are checked by the loader threads, in parallel.
            Some(&CK_RECORDS) => chunks.push((off as u64, off + FRAME_HEADER, p.len(), crc)),
            _ if !frame_ok(p, off as u64, crc) => return Err(damaged(path, off as u64)),
            Some(&CK_HEADER) => header = decode_ck(CK_HEADER, p),
            Some(&CK_TRAILER) => trailer = decode_ck(CK_TRAILER, p),
            Some(&CK_PARTS) => {
                let mut r = Reader::new(&p[1..]);
                let n = r.u32().ok_or_else(|| damaged(path, off as u64))?;
                per_part = (0..n)
                    .map(|_| r.u64())
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| damaged(path, off as u64))?;
            }
            _ => return Err(corrupt(path, off as u64, "an unknown checkpoint frame")),
        }
        off += FRAME_HEADER + p.len();
    }
    let (Some(_), Some((records, defs))) = (header, trailer) else {
        return Err(corrupt(
            path,
            off as u64,
            "the checkpoint has no header or trailer",
        ));
    };
    Ok((chunks, defs, records, per_part))
}

/// Run `f`, which reads the checkpoint's mapping `map`, so that a page that cannot be read (a
/// media error, or the file cut under us) fails recovery with an error naming the file
/// instead of killing the process with SIGBUS. (What `f` read from such a page is zeros;
/// recovery fails, so none of it is kept.)
fn read_guarded<R>(map: &memmap2::Mmap, path: &Path, f: impl FnOnce() -> Result<R>) -> Result<R> {
    crate::sigbus::guarded(map.as_ptr(), map.len(), f).unwrap_or_else(|()| {
        Err(Error::Io {
            op: "read",
            path: path.to_path_buf(),
            source: std::io::Error::other(
                "a page of the checkpoint could not be read (a media error, or the file was \
                 cut while recovery read it)",
            ),
        })
    })
}

fn damaged(path: &Path, off: u64) -> Error {
    corrupt(
        path,
        off,
        "a damaged frame in a checkpoint (it was complete when renamed): the file was changed \
         after it was written; restore it, or remove it to recover from the log alone (only \
         if the log reaches back to its start)",
    )
}

/// Load a parsed checkpoint into the partitions; returns the records read.
fn load_checkpoint(inner: &mut Inner, c: Parsed) -> Result<u64> {
    let bytes: &[u8] = &c.map;
    let path = c.path.as_path();
    let records = c.records;
    let chunks: Vec<(u64, &[u8], u32)> = c
        .chunks
        .iter()
        .map(|&(at, start, len, crc)| (at, &bytes[start..start + len], crc))
        .collect();
    // A chunk holds one slice of one partition, and the file has each partition's chunks
    // together. Deal them out round-robin over partitions, so that loader threads taking
    // chunks in turn work on different partitions instead of queueing on one lock.
    let chunks = read_guarded(&c.map, path, || Ok(interleave(inner, chunks)))?;
    let by_id: Vec<Option<Arc<KsInfo>>> = {
        let all = inner.all_ks();
        let n = all.iter().map(|k| k.id as usize + 1).max().unwrap_or(0);
        let mut v = vec![None; n];
        for k in all {
            let id = k.id as usize;
            v[id] = Some(k);
        }
        v
    };
    let inner: &Inner = inner;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = AtomicUsize::new(0);
    let loaded = AtomicU64::new(0);
    let failure = parking_lot::Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut counts = vec![0i64; by_id.len()];
                let mut recs: Vec<(usize, u64, &[u8], &[u8])> = Vec::new();
                let mut scratch = Vec::new();
                loop {
                    let i = next.fetch_add(1, Relaxed);
                    let Some(&(at, chunk, crc)) = chunks.get(i) else {
                        break;
                    };
                    let r = read_guarded(&c.map, path, || {
                        if !frame_ok(chunk, at, crc) {
                            return Err(damaged(path, at));
                        }
                        load_chunk(inner, &by_id, chunk, &mut recs, &mut counts, &mut scratch)
                    });
                    if let Err(e) = r {
                        failure.lock().get_or_insert(e);
                        break;
                    }
                    loaded.fetch_add(recs.len() as u64, Relaxed);
                }
                for (id, n) in counts.into_iter().enumerate() {
                    if let Some(Some(k)) = by_id.get(id) {
                        k.keys.fetch_add(n, Relaxed);
                    }
                }
            });
        }
    });
    if let Some(e) = failure.into_inner() {
        return Err(e);
    }
    let loaded = loaded.into_inner();
    if loaded != records {
        return Err(corrupt(
            path,
            0,
            format!("the trailer counts {records} records but the chunks hold {loaded}"),
        ));
    }
    Ok(loaded)
}

/// Reorder chunks round-robin by the partition of their first record.
fn interleave<'a>(inner: &Inner, chunks: Vec<(u64, &'a [u8], u32)>) -> Vec<(u64, &'a [u8], u32)> {
    let n = inner.parts().len();
    let mut by_part: Vec<Vec<(u64, &[u8], u32)>> = vec![Vec::new(); n];
    for c in chunks {
        // rescan u8 | n u32 | klen u32 | vlen u32 | key: the first key, if the chunk parses
        // (a chunk that does not is reported by the loader).
        let mut r = Reader::new(&c.1[1..]);
        let first = (|| {
            r.bytes(5)?;
            let kl = r.u32()? as usize;
            r.u32()?;
            let k = r.bytes(kl)?;
            let id = u16::from_be_bytes([*k.first()?, *k.get(1)?]);
            let ks = inner.ks_by_id(id)?;
            Some(inner.partition_for(&ks, k, hash_key(k)))
        })();
        by_part[first.unwrap_or(0)].push(c);
    }
    let mut out = Vec::new();
    let mut iters: Vec<_> = by_part.into_iter().map(Vec::into_iter).collect();
    loop {
        let before = out.len();
        for it in &mut iters {
            out.extend(it.next());
        }
        if out.len() == before {
            return out;
        }
    }
}

fn load_chunk<'a>(
    inner: &Inner,
    by_id: &[Option<Arc<KsInfo>>],
    chunk: &'a [u8],
    recs: &mut Vec<(usize, u64, &'a [u8], &'a [u8])>,
    counts: &mut [i64],
    scratch: &mut Vec<u8>,
) -> Result<()> {
    let bad = || Error::Corrupt {
        path: PathBuf::from("<checkpoint chunk>"),
        offset: 0,
        reason: "a record chunk does not parse".into(),
    };
    let mut r = Reader::new(&chunk[1..]);
    let rescan = r.u8().ok_or_else(bad)? != 0;
    let n = r.u32().ok_or_else(bad)?;
    recs.clear();
    for _ in 0..n {
        let kl = r.u32().ok_or_else(bad)? as usize;
        let vl = r.u32().ok_or_else(bad)? as usize;
        let k = r.bytes(kl).ok_or_else(bad)?;
        let v = r.bytes(vl).ok_or_else(bad)?;
        if k.len() < KEY_PREFIX {
            return Err(bad());
        }
        let id = u16::from_be_bytes([k[0], k[1]]);
        let ks = by_id
            .get(id as usize)
            .and_then(Option::as_ref)
            .ok_or_else(bad)?;
        let hash = hash_key(k);
        recs.push((inner.partition_for(ks, k, hash), hash, k, v));
    }
    // One lock hold per partition run.
    recs.sort_unstable_by_key(|r| r.0);
    // Where the partition has far records, each key is copied out of the mapping before the
    // index compares it with stored keys: a far record's key is compared inside the
    // segment's `sigbus::guarded`, which would not catch a fault on the checkpoint's page
    // (the caller's guard covers only the loads made outside it). Without far records no
    // probe before the put's append reads one, and the copy (it made loading about a sixth
    // slower) is skipped; records the append itself sends far are compared with the key as
    // stored in DRAM (`put_locked`).
    let mut key = Vec::new();
    let mut i = 0;
    while i < recs.len() {
        let p = recs[i].0;
        let mut lk = inner.parts()[p].lock();
        while i < recs.len() && recs[i].0 == p {
            if let Some(ahead) = recs.get(i + PREFETCH_AHEAD) {
                if ahead.0 == p {
                    lk.prefetch(ahead.1);
                }
            }
            let (_, hash, k, v) = recs[i];
            i += 1;
            let k = if lk.has_far_records() {
                key.clear();
                key.extend_from_slice(k);
                key.as_slice()
            } else {
                k
            };
            let id = u16::from_be_bytes([k[0], k[1]]);
            let ks = by_id[id as usize].as_ref().expect("checked");
            if rescan && lk.get(hash, k, scratch)?.is_some() {
                // Two copies: keep the newer.
                if Meta::decode(scratch).0.modified >= Meta::decode(v).0.modified {
                    continue;
                }
            }
            if !lk.put(hash, k, v, ks.opts.ordered)? {
                counts[id as usize] += 1;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::durable::{finish_batch, push_put, start_batch};
    use crate::wal::{list_wal, put_log_frame};
    use crate::{Config, Db, Durability, Error, KeyspaceOptions, DEFAULT_KEYSPACE};
    use std::io::Write;
    use std::time::Duration;

    fn small_config(dir: &std::path::Path, durability: Durability) -> Config {
        let mut c = Config::new(dir);
        c.dram_budget_bytes = 4 << 20;
        c.partitions = 2;
        c.page_bytes = 64 << 10;
        c.segment_bytes = 256 << 10;
        c.max_value_bytes = 48 << 10;
        c.max_key_bytes = 256;
        c.durability = durability;
        c.checkpoint_wal_bytes = 0;
        c.background_maintenance = false;
        c.topology = Some(tera_numa::Topology::simulated(1, 2, 0, 1 << 30));
        c
    }

    /// A byte-bounded scan, a checkpoint's slice, whose largest possible records would take
    /// two buckets past its hard bound takes one bucket at a time. (It used to take buckets
    /// eight at a time whatever their records' size: with 64 MiB pages and 32 MiB values a
    /// slice could pass the log's 1 GiB frame limit, and the next open refused the
    /// checkpoint.)
    #[test]
    fn a_bounded_scan_passes_its_bound_by_at_most_one_bucket() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = small_config(dir.path(), Durability::None);
        c.partitions = 1;
        let db = Db::open(c).unwrap();
        let n = 60u32;
        for i in 0..n {
            db.put(format!("k{i:02}").as_bytes(), &[b'v'; 40 << 10])
                .unwrap();
        }
        let part = &db.inner_for_tests().parts()[0];
        let mut lk = part.lock();
        let (mut start, mut seen, mut addrs) = (0, 0u32, Vec::new());
        loop {
            let mut records = 0;
            let (visited, buckets, _) = lk
                .scan_buckets(start, 1 << 20, (1, 2), false, &mut addrs, |_, v| {
                    // The stored value: the revisions, then the 40 KiB.
                    assert!(v.len() > 40 << 10);
                    records += 1;
                })
                .unwrap();
            assert!(
                records <= crate::index::SLOTS,
                "{records} records in a slice bounded at one byte"
            );
            seen += records as u32;
            start += visited;
            if start >= buckets {
                break;
            }
        }
        assert_eq!(seen, n, "the slices together visit every record once");
    }

    /// A checkpoint page that cannot be read is an error naming the file, not a SIGBUS that
    /// kills the process.
    #[test]
    fn a_checkpoint_page_that_cannot_be_read_is_an_error() {
        crate::sigbus::init();
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(16384).unwrap();
        // SAFETY: the test owns the file; its loads run inside `read_guarded`.
        let map = unsafe { memmap2::Mmap::map(f.as_file()) }.unwrap();
        f.as_file().set_len(4096).unwrap();
        let ok = super::read_guarded(&map, f.path(), || Ok(map[100]));
        assert_eq!(ok.unwrap(), 0);
        let e = super::read_guarded(&map, f.path(), || Ok(map[8192])).unwrap_err();
        let Error::Io { op, path, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!((*op, path.as_path()), ("read", f.path()));
        assert!(e.to_string().contains("could not be read"), "{e}");
    }

    /// A database written under higher size limits refuses to open under lower ones with a
    /// message naming the setting, from the checkpoint and from the log alike.
    #[test]
    fn reopening_under_lower_limits_names_the_setting() {
        for checkpointed in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let config = || small_config(dir.path(), Durability::Commit);
            {
                let db = Db::open(config()).unwrap();
                db.put(&[b'k'; 200], &[b'v'; 1000]).unwrap();
                if checkpointed {
                    db.checkpoint().unwrap();
                }
            }
            let mut c = config();
            c.max_value_bytes = 500;
            let e = Db::open(c).map(|_| ()).unwrap_err();
            assert!(matches!(e, Error::Config(_)), "{e}");
            let m = e.to_string();
            assert!(
                m.contains("max_value_bytes = 500") && m.contains("value of 1000 bytes"),
                "{m}"
            );
            let mut c = config();
            c.max_key_bytes = 100;
            let m = Db::open(c).map(|_| ()).unwrap_err().to_string();
            assert!(
                m.contains("max_key_bytes = 100") && m.contains("key of 200 bytes"),
                "{m}"
            );
            // Under the limits it was written with, it opens and has the record.
            let db = Db::open(config()).unwrap();
            assert_eq!(db.get(&[b'k'; 200]).unwrap(), Some(vec![b'v'; 1000]));
        }
    }

    /// A power loss in the middle of a group flush: the device kept the flush's first pages
    /// and its last, not one in between. The database opens with the writes before the hole
    /// (none of the flush was acknowledged, so a prefix of it is all a reopen may keep) and
    /// goes on from there.
    #[test]
    fn a_group_flush_torn_in_its_middle_opens_with_the_writes_before_the_hole() {
        let dir = tempfile::tempdir().unwrap();
        let config = || small_config(dir.path(), Durability::Periodic(Duration::from_secs(3600)));
        {
            let db = Db::open(config()).unwrap();
            for i in 0..50u32 {
                db.put(format!("k{i:02}").as_bytes(), &[b'v'; 200]).unwrap();
            }
            // Closing flushes the 50 writes at once.
        }
        let c = crate::wal::read_wal(dir.path(), &crate::far::OsStorage, 0).unwrap();
        let puts: Vec<(u64, u64)> = c
            .frames
            .iter()
            .filter(|f| f.2[0] == crate::durable::REC_BATCH)
            .map(|f| (f.0, f.1))
            .collect();
        assert_eq!(puts.len(), 50);
        let (start, path) = list_wal(dir.path()).unwrap().pop().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let flush_of = |b: &[u8], lsn: u64| {
            crate::wal::get_log_frame(&b[(lsn - start) as usize..], lsn)
                .unwrap()
                .1
        };
        let flush = flush_of(&bytes, puts[0].0);
        assert!(
            puts.iter().all(|p| flush_of(&bytes, p.0) == flush),
            "one flush wrote them all"
        );
        // The 21st write's frame lost.
        let (bad, end) = puts[20];
        bytes[(bad - start) as usize..(end - start) as usize].fill(0);
        std::fs::write(&path, &bytes).unwrap();

        let (db, info) = Db::open_with_info(config()).unwrap();
        assert_eq!(info.torn_bytes, start + bytes.len() as u64 - bad);
        for i in 0..50u32 {
            let got = db.get(format!("k{i:02}").as_bytes()).unwrap();
            assert_eq!(got.is_some(), i < 20, "k{i:02}");
        }
        db.put(b"after", b"x").unwrap();
        drop(db);
        let db = Db::open(config()).unwrap();
        assert_eq!(db.get(b"after").unwrap().as_deref(), Some(&b"x"[..]));
        assert!(db.get(b"k19").unwrap().is_some() && db.get(b"k20").unwrap().is_none());
    }

    /// A data directory whose log was written before frames named their flush opens with
    /// every write, and new writes go to a new log file that the next open reads after it.
    #[test]
    fn a_log_of_format_1_opens_with_every_write_and_the_next_ones_follow_it() {
        let dir = tempfile::tempdir().unwrap();
        let config = || small_config(dir.path(), Durability::Commit);
        {
            let db = Db::open(config()).unwrap();
            for i in 0..50u32 {
                db.put(format!("k{i:02}").as_bytes(), &[b'v'; 100]).unwrap();
            }
        }
        assert!(
            super::list_ckpts(dir.path()).unwrap().is_empty(),
            "no checkpoint"
        );
        // Write the same records again as format 1 frames, at their positions in that format.
        let c = crate::wal::read_wal(dir.path(), &crate::far::OsStorage, 0).unwrap();
        let files = list_wal(dir.path()).unwrap();
        assert_eq!(files.len(), 1);
        let mut old = Vec::new();
        for (_, _, payload) in &c.frames {
            let lsn = old.len() as u64;
            crate::wal::put_frame(&mut old, lsn, payload);
        }
        std::fs::write(&files[0].1, &old).unwrap();

        let db = Db::open(config()).unwrap();
        for i in 0..50u32 {
            assert!(
                db.get(format!("k{i:02}").as_bytes()).unwrap().is_some(),
                "k{i:02}"
            );
        }
        db.put(b"k00", b"new").unwrap();
        db.put(b"after", b"x").unwrap();
        drop(db);
        let files: Vec<u64> = list_wal(dir.path()).unwrap().iter().map(|f| f.0).collect();
        assert_eq!(
            files,
            [0, old.len() as u64],
            "a new file at the old one's end"
        );
        let db = Db::open(config()).unwrap();
        assert_eq!(db.get(b"k00").unwrap().as_deref(), Some(&b"new"[..]));
        assert_eq!(db.get(b"after").unwrap().as_deref(), Some(&b"x"[..]));
        assert!(db.get(b"k49").unwrap().is_some());
    }

    /// Log order is not revision order: when recovery's change history is cut at its byte
    /// limit, a revision left out of it, however it sits among the kept ones, is before the
    /// history (a watcher from before it is told to read again), never delivered as empty.
    #[test]
    fn the_history_rebuilt_at_recovery_has_no_hole_where_a_frame_was_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let config = || {
            let mut c = small_config(dir.path(), Durability::Commit);
            c.partitions = 1;
            c.changelog_bytes = 32 << 10;
            c
        };
        let top = {
            let db = Db::open(config()).unwrap();
            db.put(b"k0", b"v").unwrap();
            db.keyspace(DEFAULT_KEYSPACE, KeyspaceOptions::hash())
                .unwrap()
                .revision()
        };
        assert!(
            config().changelog_limit() < 40 << 10,
            "the big frame passes it"
        );
        // Frames of revisions top+2 (40 KiB), top+1, top+3 and top+4, in that log order.
        let (start, path) = list_wal(dir.path()).unwrap().pop().unwrap();
        let mut lsn = start + std::fs::metadata(&path).unwrap().len();
        let flush = lsn;
        let mut bytes = Vec::new();
        for (d, len) in [(2u64, 40 << 10), (1, 10), (3, 10), (4, 10)] {
            let rev = top + d;
            let mut p = Vec::new();
            start_batch(0, rev, &mut p);
            push_put(&mut p, format!("r{d}").as_bytes(), rev, 1, &vec![b'x'; len]);
            finish_batch(&mut p, 1);
            let before = bytes.len();
            put_log_frame(&mut bytes, lsn, flush, &p);
            lsn += (bytes.len() - before) as u64;
        }
        append(&path, &bytes);

        let db = Db::open(config()).unwrap();
        let ks = db
            .keyspace(DEFAULT_KEYSPACE, KeyspaceOptions::hash())
            .unwrap();
        assert_eq!(ks.revision(), top + 4);
        for d in 1..=4 {
            let e = ks
                .get(format!("r{d}").as_bytes())
                .unwrap()
                .expect("replayed");
            assert_eq!(e.mod_revision, top + d);
        }
        // From before the frame left out: read again (not an empty top+2).
        match ks
            .watch(b"", None, top)
            .and_then(|mut w| w.next(Duration::ZERO, 10))
        {
            Err(Error::Compacted { oldest, .. }) => assert_eq!(oldest, top + 2),
            other => panic!("expected Compacted, got {other:?}"),
        }
        // From it on: top+3 and top+4, each with its key.
        let mut w = ks.watch(b"", None, top + 2).unwrap();
        let events = w.next(Duration::ZERO, 10).unwrap();
        let got: Vec<(u64, Vec<u8>)> = events
            .iter()
            .map(|e| (e.mod_revision, e.key.clone()))
            .collect();
        assert_eq!(
            got,
            vec![(top + 3, b"r3".to_vec()), (top + 4, b"r4".to_vec())]
        );
    }

    /// Append `bytes` to the file at `path`.
    fn append(path: &std::path::Path, bytes: &[u8]) {
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
    }

    /// A batch of a keyspace that neither the checkpoint nor an earlier log record created is
    /// damage: the open is refused naming the frame, before anything is replayed, and the
    /// log is left as it was.
    #[test]
    fn a_batch_of_a_keyspace_never_created_before_it_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = || small_config(dir.path(), Durability::Commit);
        {
            let db = Db::open(config()).unwrap();
            db.put(b"k0", b"v").unwrap();
        }
        let (start, path) = list_wal(dir.path()).unwrap().pop().unwrap();
        let lsn = start + std::fs::metadata(&path).unwrap().len();
        let mut p = Vec::new();
        start_batch(9, 5, &mut p);
        push_put(&mut p, b"orphan", 5, 1, b"v");
        finish_batch(&mut p, 1);
        let mut bytes = Vec::new();
        put_log_frame(&mut bytes, lsn, lsn, &p);
        append(&path, &bytes);
        let log = std::fs::read(&path).unwrap();
        match Db::open(config()) {
            Err(Error::Corrupt {
                path: p,
                offset,
                reason,
            }) => {
                assert_eq!(p, path);
                assert_eq!(offset, lsn - start);
                assert!(reason.contains("keyspace 9"), "{reason}");
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        assert_eq!(
            std::fs::read(&path).unwrap(),
            log,
            "the log is left as it was"
        );
    }

    /// The history recovery rebuilds, as the first version found it: walking the log
    /// backwards, keep frames while their bytes fit, then leave out every older one; a
    /// revision kept in two frames, and everything up to the highest left out, is cut.
    /// Returns the kept frames' positions and the cut.
    fn history_backwards(
        frames: &[(u64, usize)],
        start: u64,
        limit: usize,
    ) -> (Vec<usize>, Option<u64>) {
        let mut kept = Vec::new();
        let mut bytes = 0;
        let mut cut = None;
        for (i, &(rev, b)) in frames.iter().enumerate().rev() {
            if rev <= start {
                continue;
            }
            if cut.is_none() {
                bytes += b;
                if bytes <= limit {
                    kept.push((rev, i));
                    continue;
                }
            }
            cut = cut.max(Some(rev));
        }
        kept.sort();
        for w in kept.windows(2) {
            if w[0].0 == w[1].0 {
                cut = cut.max(Some(w[0].0));
            }
        }
        if let Some(c) = cut {
            kept.retain(|k| k.0 > c);
        }
        let mut at: Vec<usize> = kept.into_iter().map(|k| k.1).collect();
        at.sort_unstable();
        (at, cut)
    }

    proptest::proptest! {
        /// `History` finds, walking forwards with the sizes alone, the frames and the cut
        /// that walking backwards over the whole log found.
        #[test]
        fn the_history_kept_walking_forwards_is_the_one_kept_walking_backwards(
            frames in proptest::collection::vec((1u64..30, 0usize..600), 0..60),
            start in 0u64..8,
            limit in 0usize..4000,
        ) {
            let mut h = super::History::new(start);
            for (i, &(rev, bytes)) in frames.iter().enumerate() {
                h.push(rev, i as u64, bytes, limit);
            }
            h.settle();
            let kept: Vec<usize> = (0..frames.len())
                .filter(|&i| h.keeps(frames[i].0, i as u64))
                .collect();
            let (want, cut) = history_backwards(&frames, start, limit);
            proptest::prop_assert_eq!(kept, want);
            proptest::prop_assert_eq!(h.cut, cut);
        }
    }
}
