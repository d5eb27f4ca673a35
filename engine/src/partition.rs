//! A partition: one hash index and two logs. The DRAM log holds the newest records in
//! page-sized DRAM frames `[head, tail]`; the far log holds the rest in segment files. The
//! partition is the unit of placement (its frames and index are bound to its home NUMA node)
//! and of write concurrency (one lock).
//!
//! Reads take no lock: they pin the epoch, probe the index, and read the record in place, from
//! a frame (DRAM address) or from the far mapping (address with the [`FAR`] bit). Writes take
//! the partition lock, append a record at the DRAM tail, and repoint the index. When the tail
//! needs a frame and the partition's share of the DRAM budget is used, the oldest DRAM pages
//! are demoted: live records on them that were read since they last moved are carried into
//! the new tail page (readmission, hottest first, up to three quarters of a page); the other
//! live records are appended to the far log's open page, which is written with one sequential
//! `pwrite`; every moved record is repointed; then `head` advances and the frames are retired
//! until no pinned reader can still be in them. A far record that the heat policy admits is
//! copied to the DRAM tail (promotion). Far segments whose live share falls low are compacted
//! into the far log's open page, never through DRAM, so compaction does not displace hot
//! records; the emptied file is removed.
//!
//! Architecture invariants:
//! - Index entries, frames, segment tables and segments of a partition are changed and
//!   reclaimed only by the exclusive holder of its lock; the holder is never pinned, and
//!   pinned readers never take the lock (they `try_write` to promote, after unpinning).
//! - Every live record of a DRAM page is repointed (to the far log or the tail) before `head`
//!   moves past the page, and `head` moves before the frame is retired. A reader holding an
//!   address below `head` (read before the repoint) probes the index again.
//! - A far record is written before the index points at it, and a segment is unmapped only
//!   after no pinned reader can hold an address in it.
//! - `frames allocated * page + index + buffers <= share` at every point, so the sum over
//!   partitions never exceeds the DRAM budget. Shares move between partitions as their needs
//!   change (shares.rs); a share shrinks only under its partition's lock.

use crate::epoch::{epochs, Epochs};
use crate::error::{Error, Result};
use crate::far::{segment_path, SegTable, Segment, Storage};
use crate::hash::hash_key;
use crate::heat::{HeatPolicy, MAX_HEAT};
use crate::index::{Index, Table};
use crate::record::{self, Bad, RecordRef, HEADER};
use crate::shares::Shares;
use crate::sync::AtomicPtr;
use crossbeam_utils::CachePadded;
use memmap2::MmapMut;
use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

/// Fewest frames a partition can work with: the tail page, one being demoted, one spare.
pub(crate) const MIN_FRAMES: usize = 3;

/// Address bit of the far log (DRAM log addresses are below it).
pub(crate) const FAR: u64 = 1 << 47;

/// Settings every partition of a database shares.
pub(crate) struct Shared {
    pub(crate) page_shift: u32,
    pub(crate) seg_shift: u32,
    pub(crate) far_ns: u64,
    pub(crate) max_key: usize,
    pub(crate) max_value: usize,
    pub(crate) far_dir: PathBuf,
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) policy: Arc<dyn HeatPolicy>,
    pub(crate) compaction_ratio: f64,
    pub(crate) huge_pages: bool,
    /// Number of partitions, which share `global_overhead` equally.
    pub(crate) partitions: usize,
    /// DRAM the database holds outside partitions (change log, WAL buffers), charged to every
    /// partition's share in equal parts.
    pub(crate) global_overhead: Arc<AtomicUsize>,
    /// Each partition's share of the DRAM budget.
    pub(crate) shares: Shares,
    /// The database's partitions, for a writer short of room to take it from the others.
    pub(crate) siblings: OnceLock<Weak<[Partition]>>,
    /// Recovery is loading the partitions (each on a thread that holds its partition's
    /// lock for long stretches); see [`Partition::advance_page`].
    pub(crate) recovering: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("page_bytes", &self.page_bytes())
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn page_bytes(&self) -> usize {
        1 << self.page_shift
    }
    fn seg_bytes(&self) -> usize {
        1 << self.seg_shift
    }
}

/// Which tier served a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tier {
    Dram,
    Far,
}

/// What a read found.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Found {
    pub(crate) tier: Tier,
    pub(crate) addr: u64,
    /// The record's sequence number (kept by promotion, which moves a version, not makes one).
    pub(crate) seq: u64,
}

enum ReadErr {
    /// The index changed under the probe (a segment was compacted away): probe again.
    Retry,
    Fail(Error),
}

impl From<Error> for ReadErr {
    fn from(e: Error) -> Self {
        ReadErr::Fail(e)
    }
}

/// One page-sized DRAM frame: an index into the partition's [`Arena`].
#[derive(Debug)]
struct Frame(usize);

/// The virtual memory all of a partition's frames are carved from: one anonymous mapping
/// (bound to the home node), so the kernel sees one mapping per partition rather than one per
/// frame, which at terabyte budgets would pass `vm.max_map_count`. Memory becomes resident
/// only when a frame is written; a frame given back is dropped with `MADV_DONTNEED`.
struct Arena {
    _map: MmapMut,
    base: *mut u8,
    page: usize,
}

// SAFETY: `base` points into `_map`, which the arena owns and never moves; which frame may be
// touched by whom is the partition's discipline (lock holder writes, pinned readers read).
unsafe impl Send for Arena {}
// SAFETY: as above.
unsafe impl Sync for Arena {}

impl Arena {
    fn new(frames: usize, page: usize, node: u32, huge_pages: bool) -> Result<Arena> {
        let bytes = frames * page;
        let mut map = MmapMut::map_anon(bytes).map_err(|e| {
            Error::BudgetExhausted(format!(
                "could not reserve {bytes} bytes for log frames: {e}"
            ))
        })?;
        tera_numa::bind_memory_or_log(map.as_ptr(), bytes, node);
        if huge_pages {
            // SAFETY: advice on our own mapping; the kernel may ignore it.
            let r = unsafe { libc::madvise(map.as_mut_ptr().cast(), bytes, libc::MADV_HUGEPAGE) };
            if r != 0 {
                tracing::debug!(error = %std::io::Error::last_os_error(), "MADV_HUGEPAGE refused");
            }
        }
        let base = map.as_mut_ptr();
        Ok(Arena {
            _map: map,
            base,
            page,
        })
    }

    fn ptr(&self, f: &Frame) -> *mut u8 {
        // SAFETY: frame indices are below the arena's frame count (they come from the
        // partition's list of `0..frames`), so the offset stays inside the mapping.
        unsafe { self.base.add(f.0 * self.page) }
    }

    /// Fault a fresh frame's pages in with one call (`MADV_POPULATE_WRITE`, Linux 5.14)
    /// instead of one page fault per 4 KiB as the tail fills it. Advice only: on an older
    /// kernel the pages fault in as before.
    fn populate(&self, f: &Frame) {
        const MADV_POPULATE_WRITE: libc::c_int = 23;
        // SAFETY: the range is one frame inside our mapping; populating writes zeros to pages
        // that read as zeros already, so no byte anyone can see changes.
        let r = unsafe { libc::madvise(self.ptr(f).cast(), self.page, MADV_POPULATE_WRITE) };
        if r != 0 {
            tracing::trace!(error = %std::io::Error::last_os_error(), "MADV_POPULATE_WRITE refused");
        }
    }

    /// Give a frame's memory back to the kernel (it reads as zeros when next touched).
    fn release(&self, f: &Frame) {
        // SAFETY: the range is one frame inside our mapping, and the caller owns the frame:
        // no reader can be in it (it came from the spare list, past the epoch).
        let r = unsafe { libc::madvise(self.ptr(f).cast(), self.page, libc::MADV_DONTNEED) };
        if r != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "madvise(DONTNEED) on a frame failed");
        }
    }
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena")
            .field("page", &self.page)
            .finish_non_exhaustive()
    }
}

/// Something unlinked that pinned readers may still be using.
#[derive(Debug)]
enum Retired {
    Frame(Frame),
    Table(Box<Table>),
    SegTable(Box<SegTable>),
    Segment(Box<Segment>),
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("bytes", &self.bytes())
            .finish()
    }
}

/// Live bytes and size of one far segment.
#[derive(Debug, Default, Clone, Copy)]
struct SegMeta {
    live: u64,
    /// Compaction found a record here that fails its check: leave the segment alone.
    damaged: bool,
}

/// Counters of one tier, kept under the lock.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Live {
    pub(crate) records: u64,
    pub(crate) bytes: u64,
}

/// Everything the lock protects.
#[derive(Debug)]
struct State {
    /// Next address to write.
    tail: u64,
    /// Frames of DRAM pages, by ring slot.
    frames: Vec<Option<Frame>>,
    /// Resident frames ready for reuse.
    spare: Vec<Frame>,
    /// Frames whose memory is not resident (never used, or given back).
    unbacked: Vec<Frame>,
    retired: VecDeque<(u64, Retired)>,
    allocated_frames: usize,
    retired_index_bytes: usize,
    retired_segtable_bytes: usize,
    seq: u64,
    segs: BTreeMap<u64, SegMeta>,
    dram: Live,
    far: Live,
    /// Records to readmit: their bytes, and (hash, old address, length) of each.
    readmit_bytes: Vec<u8>,
    readmit: Vec<(u64, u64, usize)>,
    /// Segment being compacted and the next page offset in it.
    compacting: Option<(u64, usize)>,
    /// Next far log offset (without the FAR bit).
    far_tail: u64,
    /// Far log offset up to which records are written and repointed.
    far_flushed: u64,
    /// Image of the far log's open page, and how much of it is written.
    far_page: Vec<u8>,
    far_written: usize,
    /// Records appended to the open far page but not yet written: (hash, from, to, length).
    far_pending: Vec<(u64, u64, u64, usize)>,
    pub(crate) promotions: u64,
    pub(crate) readmissions: u64,
    pub(crate) pages_demoted: u64,
    pub(crate) compaction_bytes: u64,
    pub(crate) segments_compacted: u64,
    /// Keys of ordered keyspaces, in order (the ordered index), and its estimated DRAM.
    ordered: BTreeSet<OrdKey>,
    ordered_bytes: usize,
    /// Bumped whenever the index table is replaced, so that a scan done a slice at a time
    /// can tell that bucket positions changed.
    index_generation: u64,
    /// The log position after the last frame of a batch of this partition (0 before any, or
    /// without a log): what a read under the lock may have seen, and must wait to be durable
    /// before it answers (`db.rs`, `after_read`).
    logged: u64,
}

/// A snapshot of one partition's counters.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PartitionStats {
    pub(crate) dram: Live,
    pub(crate) far: Live,
    pub(crate) promotions: u64,
    pub(crate) readmissions: u64,
    pub(crate) pages_demoted: u64,
    pub(crate) compaction_bytes: u64,
    pub(crate) segments_compacted: u64,
    pub(crate) far_file_bytes: u64,
    pub(crate) used_bytes: u64,
    pub(crate) index_bytes: u64,
    pub(crate) ordered_index_bytes: u64,
    pub(crate) frame_bytes: u64,
    pub(crate) keys: u64,
}

/// One partition. See the module docs.
pub(crate) struct Partition {
    pub(crate) id: usize,
    pub(crate) node: u32,
    shared: Arc<Shared>,
    index: Index,
    /// First page still in DRAM.
    head: CachePadded<AtomicU64>,
    arena: Arena,
    /// Frame of DRAM page `p` at `ring[p % ring.len()]`.
    ring: Box<[AtomicPtr<u8>]>,
    segs: AtomicPtr<SegTable>,
    /// On cache lines of its own: every write takes the lock and changes the state, and the
    /// fields above are what every lock-free read loads.
    state: CachePadded<RwLock<State>>,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition")
            .field("id", &self.id)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// Entries a repointing loop prefetches the index buckets of ahead of the one it is at.
const REPOINT_AHEAD: usize = 16;

/// In a loop that repoints `items[i]` (whose key hash `hash_of` gives) in `table`: prefetch
/// the bucket [`REPOINT_AHEAD`] items on (and, at the first item, the ones before it), so
/// that the drains' repoints, which used to miss the cache one after another, overlap.
#[inline]
fn prefetch_ahead<T>(table: &Table, items: &[T], i: usize, hash_of: impl Fn(&T) -> u64) {
    if i == 0 {
        for it in items.iter().take(REPOINT_AHEAD) {
            table.prefetch(hash_of(it));
        }
    }
    if let Some(it) = items.get(i + REPOINT_AHEAD) {
        table.prefetch(hash_of(it));
    }
}

fn epoch() -> &'static Epochs {
    epochs()
}

impl Partition {
    pub(crate) fn open(
        id: usize,
        node: u32,
        shared: Arc<Shared>,
        expected_keys: usize,
    ) -> Result<Partition> {
        let page = shared.page_bytes();
        let share = shared.shares.share(id);
        // Room for every frame of the largest share the partition may grow to.
        let ring_len = shared.shares.cap() / page + 1;
        let buckets = Table::buckets_for_expected(expected_keys.max(64));
        let index_bytes = buckets.saturating_mul(crate::index::BUCKET_BYTES);
        if index_bytes >= share {
            return Err(Error::BudgetExhausted(format!(
                "partition {id}: {expected_keys} expected keys need an index of {index_bytes} \
                 bytes, more than the partition's share of {share} bytes; raise \
                 dram_budget_bytes or lower expected_records"
            )));
        }
        let table = Table::with_buckets(buckets);
        let (p, n) = table.memory();
        bind_inner(p, n, node);
        let part = Partition {
            id,
            node,
            index: Index::new(table),
            arena: Arena::new(ring_len, page, node, shared.huge_pages)?,
            head: CachePadded::new(AtomicU64::new(1)),
            ring: (0..ring_len)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect(),
            segs: AtomicPtr::new(Box::into_raw(SegTable::new(0, 16))),
            state: CachePadded::new(RwLock::new(State {
                tail: 1 << shared.page_shift,
                frames: (0..ring_len).map(|_| None).collect(),
                spare: Vec::new(),
                unbacked: (0..ring_len).rev().map(Frame).collect(),
                retired: VecDeque::new(),
                allocated_frames: 0,
                retired_index_bytes: 0,
                retired_segtable_bytes: 0,
                seq: 0,
                segs: BTreeMap::new(),
                dram: Live::default(),
                far: Live::default(),
                readmit_bytes: Vec::with_capacity(page),
                readmit: Vec::new(),
                compacting: None,
                far_tail: 0,
                far_flushed: 0,
                far_page: vec![0; page],
                far_written: 0,
                far_pending: Vec::new(),
                promotions: 0,
                readmissions: 0,
                pages_demoted: 0,
                compaction_bytes: 0,
                segments_compacted: 0,
                ordered: BTreeSet::new(),
                ordered_bytes: 0,
                index_generation: 0,
                logged: 0,
            })),
            shared,
        };
        {
            let mut st = part.state.write();
            let q = part.quota(&st);
            if q < MIN_FRAMES {
                return Err(Error::BudgetExhausted(format!(
                    "partition {id}: a share of {share} bytes leaves room for {q} log frames of \
                     {page} bytes after the index; at least {MIN_FRAMES} are needed. Raise \
                     dram_budget_bytes, or lower partitions, page_bytes or expected_records"
                )));
            }
            let f = part.new_frame(&mut st)?;
            let ptr = part.arena.ptr(&f);
            part.ring[1 % ring_len].store(ptr, Release);
            st.frames[1 % ring_len] = Some(f);
        }
        Ok(part)
    }

    // ----- reads -------------------------------------------------------------------------

    /// Copy the value of `key` into `out`. Returns where it was found, or `None`.
    ///
    /// The value's first `head.len()` bytes go into `head` and only the rest into `out` (the
    /// keyspace layer keeps revisions there, and most reads want the user's value alone: this
    /// saves moving it down afterwards).
    pub(crate) fn read(
        &self,
        hash: u64,
        key: &[u8],
        out: &mut Vec<u8>,
        head: &mut [u8],
    ) -> Result<Option<Found>> {
        let skip = head.len();
        loop {
            let r = crate::epoch::with_pin(|_| {
                // SAFETY: pinned; tables are freed only after every pinned reader is gone.
                let table = unsafe { self.index.table() };
                let mut tier = Tier::Dram;
                let mut seq = 0;
                let hit = table.find(hash, |addr| {
                    self.pinned_visit(addr, key, |rec, t| {
                        let v = rec.value();
                        let n = skip.min(v.len());
                        head[..n].copy_from_slice(&v[..n]);
                        out.clear();
                        out.extend_from_slice(&v[n..]);
                        tier = t;
                        seq = rec.seq();
                        if t == Tier::Dram {
                            // Racy increments may lose a count; the counter is a heat hint.
                            let h = rec.heat();
                            let v = h.load(Relaxed);
                            if v < MAX_HEAT {
                                h.store(v + 1, Relaxed);
                            }
                        }
                    })
                })?;
                Ok::<_, ReadErr>(hit.map(|addr| Found { tier, addr, seq }))
            });
            match r {
                Ok(found) => {
                    if let Some(Found {
                        tier: Tier::Far,
                        addr,
                        seq,
                    }) = found
                    {
                        if self.shared.policy.admit_far(hash) {
                            if skip == 0 {
                                self.promote(hash, key, out, addr, seq);
                            } else {
                                // Rare (an admitted far read): put the value back together.
                                let whole = [&head[..], &out[..]].concat();
                                self.promote(hash, key, &whole, addr, seq);
                            }
                        }
                    }
                    return Ok(found);
                }
                Err(ReadErr::Retry) => continue,
                Err(ReadErr::Fail(e)) => return Err(e),
            }
        }
    }

    /// While pinned: if the record at `addr` holds `key`, call `f` on it and return true.
    #[inline]
    fn pinned_visit(
        &self,
        addr: u64,
        key: &[u8],
        f: impl FnOnce(&RecordRef, Tier),
    ) -> Result<bool, ReadErr> {
        if addr & FAR != 0 {
            return self.far_visit(addr & !FAR, key, f);
        }
        let shift = self.shared.page_shift;
        let page = addr >> shift;
        let off = (addr & ((1 << shift) - 1)) as usize;
        if page < self.head.load(Acquire) {
            return Err(ReadErr::Retry); // the record moved before its page was released
        }
        let base = self.ring[(page % self.ring.len() as u64) as usize].load(Acquire);
        // If the slot was reused for a newer page, `head` has moved past ours; the pointer we
        // loaded may be the newer page's frame.
        if page < self.head.load(Acquire) {
            return Err(ReadErr::Retry);
        }
        // SAFETY: the frame holds `page` (checked above) and cannot be reused while we are
        // pinned (or hold the lock); records are immutable once published but for heat.
        let rec = unsafe { RecordRef::parse(base.add(off), (1 << shift) - off) }
            .map_err(|b| ReadErr::Fail(self.dram_bug(addr, b)))?;
        if rec.key() != key {
            return Ok(false);
        }
        rec.prefetch();
        f(&rec, Tier::Dram);
        Ok(true)
    }

    /// Before a writer takes the lock: load the key's index bucket and start loading the
    /// record its first candidate entry points to, if that is in DRAM, so that the lookup
    /// under the lock finds both in the cache. The two misses then stall only this writer,
    /// not also every other writer of the partition queued on the lock behind it. A hint: a
    /// stale or wrong candidate costs a useless prefetch, nothing else.
    pub(crate) fn prefetch_for_write(&self, hash: u64) {
        crate::epoch::with_pin(|_| {
            // SAFETY: pinned; tables are freed only after every pinned reader is gone.
            let table = unsafe { self.index.table() };
            if let Some(addr) = table.candidate(hash) {
                if addr & FAR == 0 {
                    self.prefetch_record(addr);
                }
            }
        });
    }

    /// Prefetch the first lines of the record at `addr` (lock held or pinned; a prefetch of
    /// a frame reused meanwhile is harmless).
    fn prefetch_record(&self, addr: u64) {
        let shift = self.shared.page_shift;
        if addr & FAR == 0 {
            let page = addr >> shift;
            let base = self.ring[(page % self.ring.len() as u64) as usize].load(Relaxed);
            if !base.is_null() {
                let p = base.wrapping_add((addr & ((1 << shift) - 1)) as usize);
                crate::record::prefetch_line(p);
                crate::record::prefetch_line(p.wrapping_add(64));
            }
        } else {
            let a = addr & !FAR;
            // SAFETY: lock held or pinned; segment tables are retired through the epoch.
            let segs = unsafe { &*self.segs.load(Acquire) };
            if let Some(seg) = segs.get(a >> self.shared.seg_shift) {
                let off = (a & ((1 << self.shared.seg_shift) - 1)) as usize;
                crate::record::prefetch_line(seg.base().wrapping_add(off));
            }
        }
    }

    fn far_visit(
        &self,
        addr: u64,
        key: &[u8],
        f: impl FnOnce(&RecordRef, Tier),
    ) -> Result<bool, ReadErr> {
        crate::emulate::far_delay(self.shared.far_ns);
        self.far_record(addr, true, |rec| {
            let hit = rec.key() == key;
            if hit {
                f(rec, Tier::Far);
            }
            hit
        })
    }

    /// Run `f` on the far record at `addr` (with or without the FAR bit), parsed (and, if
    /// `verify`, checksummed) under the SIGBUS guard. `Retry` if its segment is gone (the
    /// index moved on); `Corrupt` if the bytes are not the record written there.
    fn far_record<R>(
        &self,
        addr: u64,
        verify: bool,
        f: impl FnOnce(&RecordRef) -> R,
    ) -> Result<R, ReadErr> {
        let addr = addr & !FAR;
        // SAFETY: the caller is pinned or holds the lock; segment tables are retired through
        // the epoch.
        let segs = unsafe { &*self.segs.load(Acquire) };
        let Some(seg) = segs.get(addr >> self.shared.seg_shift) else {
            return Err(ReadErr::Retry);
        };
        let off = (addr & ((1 << self.shared.seg_shift) - 1)) as usize;
        let page_end = (off | (self.shared.page_bytes() - 1)) + 1;
        let res = crate::sigbus::guarded(seg.base(), seg.len(), || {
            // SAFETY: `off..page_end` lies inside the mapping, which stays mapped while we are
            // pinned or hold the lock; loads past the file's end are caught by `guarded`.
            let rec = unsafe { RecordRef::parse(seg.base().add(off), page_end - off) }?;
            if verify {
                rec.prefetch();
                rec.verify()?;
            }
            Ok::<_, Bad>(f(&rec))
        });
        let reason = match res {
            Ok(Ok(r)) => return Ok(r),
            Ok(Err(bad)) => seg.damage(off, &bad.to_string()),
            Err(()) => seg.damage(off, "the mapping could not be read"),
        };
        Err(ReadErr::Fail(Error::Corrupt {
            path: seg.path.clone(),
            offset: off as u64,
            reason,
        }))
    }

    fn dram_bug(&self, addr: u64, b: Bad) -> Error {
        Error::Corrupt {
            path: PathBuf::from(format!("<partition {} DRAM frame>", self.id)),
            offset: addr,
            reason: format!("{b} (an engine bug: DRAM records are written by this process)"),
        }
    }

    /// Lock held: a failed read as an error (with the lock held, the index never points
    /// into a removed segment, so `Retry` is a bug too).
    fn locked_err(&self, addr: u64, e: ReadErr) -> Error {
        match e {
            ReadErr::Fail(e) => e,
            ReadErr::Retry => Error::Corrupt {
                path: self.shared.far_dir.clone(),
                offset: addr,
                reason: "the index points into a segment that is gone (an engine bug)".into(),
            },
        }
    }

    /// Lock held: does the record at `addr` hold `key`? (For index probes by writers.)
    fn locked_is_key(&self, addr: u64, key: &[u8]) -> Result<bool> {
        self.pinned_visit(addr, key, |_, _| ())
            .map_err(|e| self.locked_err(addr, e))
    }

    /// Lock held (the `&State` proves it): the hash of the key of the record at `addr`, and
    /// its length.
    fn locked_hash_len(&self, _st: &State, addr: u64) -> Result<(u64, usize)> {
        if addr & FAR == 0 {
            let rec = self.dram_record(addr);
            return Ok((hash_key(rec.key()), rec.len()));
        }
        self.far_record(addr, true, |rec| (hash_key(rec.key()), rec.len()))
            .map_err(|e| self.locked_err(addr, e))
    }

    /// Copy a far record that proved hot to the tail, if it is still the key's newest version
    /// and the lock is free (a busy lock means the next read will try again).
    fn promote(&self, hash: u64, key: &[u8], value: &[u8], from: u64, seq: u64) {
        let Some(mut st) = self.state.try_write() else {
            return;
        };
        self.promote_locked(&mut st, hash, key, value, from, seq);
    }

    fn promote_locked(
        &self,
        st: &mut State,
        hash: u64,
        key: &[u8],
        value: &[u8],
        from: u64,
        seq: u64,
    ) {
        // SAFETY: lock held.
        let table = unsafe { self.index.table() };
        if table.find::<()>(hash, |a| Ok(a == from)) != Ok(Some(from)) {
            return;
        }
        let len = record::record_len(key.len(), value.len());
        match self.append(st, key, value, 0, seq, 0) {
            Ok(to) => {
                let moved = table.replace(hash, from, to);
                debug_assert!(moved, "lock held: the entry cannot have changed");
                self.far_dead(st, from, len);
                st.dram.records += 1;
                st.dram.bytes += len as u64;
                st.promotions += 1;
            }
            Err(e) => tracing::debug!(partition = self.id, error = %e, "promotion skipped"),
        }
    }

    // ----- writes ------------------------------------------------------------------------

    fn check_sizes(&self, key: &[u8], value_len: usize) -> Result<()> {
        if key.len() > self.shared.max_key {
            return Err(Error::KeyTooLarge {
                len: key.len(),
                max: self.shared.max_key,
            });
        }
        if value_len > self.shared.max_value {
            return Err(Error::ValueTooLarge {
                len: value_len,
                max: self.shared.max_value,
            });
        }
        Ok(())
    }

    fn put_locked(
        &self,
        st: &mut State,
        hash: u64,
        key: &[u8],
        value: &[u8],
        ordered: bool,
    ) -> Result<bool> {
        self.ensure_index_room_for(st, hash, key)?;
        st.seq += 1;
        let seq = st.seq;
        let addr = self.append(st, key, value, 0, seq, 0)?;
        // SAFETY: lock held.
        let table = unsafe { self.index.table() };
        // Candidates are compared with the key as just stored, not the caller's bytes: a
        // drain inside `append` may have sent records far, a far candidate's key is compared
        // inside its segment's SIGBUS guard, and the caller's bytes may be a mapped file
        // (recovery's checkpoint) whose faults that guard would not catch.
        let stored = self.dram_record(addr);
        let old = table.upsert(hash, addr, |a| self.locked_is_key(a, stored.key()))?;
        let len = record::record_len(key.len(), value.len()) as u64;
        st.dram.records += 1;
        st.dram.bytes += len;
        match old {
            Some(old) => self.dead(st, old)?,
            None => Self::add_ordered(st, key, ordered),
        }
        Ok(old.is_some())
    }

    fn delete_locked(&self, st: &mut State, hash: u64, key: &[u8], ordered: bool) -> Result<bool> {
        // SAFETY: lock held.
        let table = unsafe { self.index.table() };
        let Some(old) = table.remove(hash, |a| self.locked_is_key(a, key))? else {
            return Ok(false);
        };
        self.dead(st, old)?;
        if ordered && st.ordered.remove(&OrdKey::new(key)) {
            st.ordered_bytes -= ordered_key_bytes(key.len());
        }
        Ok(true)
    }

    /// Take the partition lock for a sequence of reads and writes that no other writer can
    /// interleave with (a batch, a scan, a slice of a checkpoint).
    pub(crate) fn lock(&self) -> Locked<'_> {
        Locked {
            part: self,
            st: Guard::Exclusive(self.state.write()),
            deferred: Vec::new(),
        }
    }

    /// Take the partition lock shared, for reads that must see one consistent state and
    /// change nothing: other such reads go on beside them, writers wait (and new readers
    /// wait behind a waiting writer). The far records these reads find hot are promoted after
    /// the shared lock is released, under the exclusive one.
    pub(crate) fn lock_shared(&self) -> Locked<'_> {
        Locked {
            part: self,
            st: Guard::Shared(self.state.read()),
            deferred: Vec::new(),
        }
    }

    /// Account for a record that is no longer the newest version of its key.
    /// The caller has just found (and, for a far record, verified) the record at `addr`
    /// through the index, so only its length is read here.
    fn dead(&self, st: &mut State, addr: u64) -> Result<()> {
        let len = if addr & FAR == 0 {
            self.dram_record(addr).len()
        } else {
            self.far_len(addr)?
        };
        self.dead_len(st, addr, len);
        Ok(())
    }

    /// [`Partition::dead`] for a caller that knows the record's length: out of its tier's
    /// counters (and its segment's live bytes), and, in DRAM, marked dead.
    fn dead_len(&self, st: &mut State, addr: u64, len: usize) {
        if addr & FAR == 0 {
            self.dram_record(addr).dead().store(1, Relaxed);
            st.dram.records -= 1;
            st.dram.bytes -= len as u64;
        } else {
            self.far_dead(st, addr, len);
        }
    }

    /// A key new to the partition: into the ordered index if its keyspace keeps one.
    fn add_ordered(st: &mut State, key: &[u8], ordered: bool) {
        if ordered {
            st.ordered_bytes += ordered_key_bytes(key.len());
            st.ordered.insert(OrdKey::new(key));
        }
    }

    /// Lock held: the length of the far record at `addr`, from its header alone.
    fn far_len(&self, addr: u64) -> Result<usize> {
        self.far_record(addr, false, |rec| rec.len())
            .map_err(|e| self.locked_err(addr, e))
    }

    fn far_dead(&self, st: &mut State, addr: u64, len: usize) {
        st.far.records -= 1;
        st.far.bytes -= len as u64;
        if let Some(m) = st.segs.get_mut(&((addr & !FAR) >> self.shared.seg_shift)) {
            m.live -= len as u64;
        }
    }

    // ----- the DRAM log -----------------------------------------------------------------

    /// Append a record at the tail; returns its address. The caller accounts for it.
    fn append(
        &self,
        st: &mut State,
        key: &[u8],
        value: &[u8],
        flags: u8,
        seq: u64,
        heat: u8,
    ) -> Result<u64> {
        let len = record::record_len(key.len(), value.len());
        let addr = self.reserve_tail(st, len)?;
        self.write_reserved(st, addr, key, &[], value, flags, seq, heat);
        Ok(addr)
    }

    /// Make room for a record of `len` bytes at the tail (advancing, and so possibly
    /// draining, pages) and return its address. Until the record is written there with
    /// [`Partition::write_reserved`], nothing else may be appended; but nothing moves either,
    /// so a record looked up in between stays where it was found.
    fn reserve_tail(&self, st: &mut State, len: usize) -> Result<u64> {
        let page = self.shared.page_bytes();
        let off = st.tail as usize & (page - 1);
        if off + len > page || (off == 0 && !self.tail_has_frame(st)) {
            self.advance_page(st, len)?;
        }
        debug_assert!(
            (st.tail as usize & (page - 1)) + len <= page,
            "the record fits its page"
        );
        Ok(st.tail)
    }

    /// Write the record whose room [`Partition::reserve_tail`] returned at `addr` (the tail), with
    /// the value `head ++ value`, and move the tail past it.
    #[allow(clippy::too_many_arguments)]
    fn write_reserved(
        &self,
        st: &mut State,
        addr: u64,
        key: &[u8],
        head: &[u8],
        value: &[u8],
        flags: u8,
        seq: u64,
        heat: u8,
    ) {
        debug_assert_eq!(addr, st.tail, "a reserved record is written at the tail");
        let len = record::record_len(key.len(), head.len() + value.len());
        let dst = self.tail_slice(st, addr, len);
        record::encode(dst, key, head, value, flags, seq, heat);
        st.tail += len as u64;
    }

    /// The unwritten bytes at `addr` in the tail page.
    #[allow(clippy::mut_from_ref)] // the bytes are past the tail: no reader can reach them
    fn tail_slice(&self, st: &mut State, addr: u64, len: usize) -> &mut [u8] {
        let shift = self.shared.page_shift;
        let slot = ((addr >> shift) % self.ring.len() as u64) as usize;
        let off = (addr & ((1 << shift) - 1)) as usize;
        let frame = st.frames[slot].as_ref().expect("the tail page has a frame");
        // SAFETY: `off + len <= page`; bytes past the tail are unpublished, so no reader holds
        // a reference to them, and the lock makes us the only writer.
        unsafe { std::slice::from_raw_parts_mut(self.arena.ptr(frame).add(off), len) }
    }

    /// A record that ends exactly at a page's end leaves the tail at the start of a page that
    /// has no frame yet.
    fn tail_has_frame(&self, st: &State) -> bool {
        let slot = ((st.tail >> self.shared.page_shift) % self.ring.len() as u64) as usize;
        st.frames[slot].is_some()
    }

    /// Seal the tail page and start the next one, leaving at least `need` bytes free in it for
    /// the record that asked. If the budget requires, the oldest pages are demoted first: their
    /// hot records are carried into the new page (readmission), the rest of their live records
    /// go to the far log, and only then does `head` move past them.
    fn advance_page(&self, st: &mut State, need: usize) -> Result<()> {
        let shift = self.shared.page_shift;
        let page_bytes = self.shared.page_bytes();
        let off = st.tail as usize & (page_bytes - 1);
        let next = if off == 0 && !self.tail_has_frame(st) {
            st.tail >> shift
        } else {
            if off + 8 <= page_bytes {
                self.tail_slice(st, st.tail, 8).fill(0); // end-of-page marker: no magic
            }
            (st.tail >> shift) + 1
        };
        if (next + 1) << shift >= FAR {
            return Err(Error::AddressSpaceExhausted(format!(
                "partition {}: the DRAM log has used its 2^47 bytes of addresses",
                self.id
            )));
        }
        self.reclaim(st);
        // After this advance, DRAM pages plus one reserve frame must fit the quota.
        let head = self.head.load(Relaxed);
        let quota = self.quota(st) as u64;
        let demote = (next - head + 2).saturating_sub(quota).min(next - head);
        if demote > 0 {
            // While the live records in DRAM fill at most half of its quota, the pages leave
            // DRAM only because dead records (overwritten or deleted) fill the rest: then
            // every live record is carried forward, whatever its heat, up to a whole page less
            // the record that asked, so that a data set that fits is not sent far by its own
            // garbage (the drain works as a copying cleaner; with at most half of DRAM live,
            // dead pages keep coming to the head). Otherwise the heat policy chooses, within
            // the readmission cap.
            let clean = st.dram.bytes * 2 <= quota * page_bytes as u64;
            let room = if clean {
                page_bytes - need
            } else {
                readmit_cap(page_bytes).min(page_bytes - need)
            };
            self.drain_pages(st, head, demote, room, clean)?;
        }
        let frame = match self.take_frame(st) {
            Ok(f) => f,
            Err(e) => {
                // No frame left: the quota shrank (while draining, the far segment table or
                // the change logs grew). Send the records meant for readmission far too,
                // release the drained pages, and demote more of the oldest pages, one at a
                // time, until a frame comes free.
                if demote > 0 {
                    self.readmitted_to_far(st)?;
                    self.release_pages(st, demote);
                }
                let mut asked_patiently = false;
                loop {
                    match self.take_frame(st) {
                        Ok(f) => return self.install_page(st, next, Some(f)),
                        Err(e2) => {
                            let head = self.head.load(Relaxed);
                            if head >= next {
                                // During recovery, each partition is loaded on a thread
                                // that holds its lock through whole groups of records, so
                                // asking without waiting for their locks rarely takes any
                                // room back: ask once more, waiting up to PATIENCE for each
                                // (only then: every thread holds one lock, and no
                                // promotion is paying for it).
                                if !asked_patiently && self.shared.recovering.load(Relaxed) {
                                    asked_patiently = true;
                                    self.ask_for_frame(st, true);
                                    continue;
                                }
                                // Every page is gone, the sealed tail page too: the next
                                // record starts the next page (which has no frame yet),
                                // not the released one.
                                st.tail = next << shift;
                                return Err(if demote > 0 { e2 } else { e });
                            }
                            self.drain_pages(st, head, 1, 0, false)?;
                            self.release_pages(st, 1);
                        }
                    }
                }
            }
        };
        self.install_page(st, next, Some(frame))?;
        self.place_readmitted(st);
        if demote > 0 {
            self.release_pages(st, demote);
        }
        Ok(())
    }

    /// Make `page` the tail page, with `frame` or one taken now.
    fn install_page(&self, st: &mut State, page: u64, frame: Option<Frame>) -> Result<()> {
        let frame = match frame {
            Some(f) => f,
            None => self.take_frame(st)?,
        };
        let slot = (page % self.ring.len() as u64) as usize;
        let ptr = self.arena.ptr(&frame);
        st.frames[slot] = Some(frame);
        self.ring[slot].store(ptr, Release);
        st.tail = page << self.shared.page_shift;
        Ok(())
    }

    /// Scan `count` pages from `first`: live records the policy keeps (with `clean`, all live
    /// records) are collected for readmission, hottest first, up to `readmit_room` bytes (0:
    /// none); all other live records
    /// are moved to the far log and repointed there. On failure nothing is released, nothing
    /// is collected, and what was not yet written to the far log stays where it was.
    fn drain_pages(
        &self,
        st: &mut State,
        first: u64,
        count: u64,
        readmit_room: usize,
        clean: bool,
    ) -> Result<()> {
        let r = self.drain_pages_inner(st, first, count, readmit_room, clean);
        if r.is_err() {
            st.readmit.clear();
            st.readmit_bytes.clear();
            self.far_abort(st);
        }
        r
    }

    fn drain_pages_inner(
        &self,
        st: &mut State,
        first: u64,
        count: u64,
        readmit_room: usize,
        clean: bool,
    ) -> Result<()> {
        let readmit = readmit_room > 0;
        let shift = self.shared.page_shift;
        let page_bytes = self.shared.page_bytes();
        let policy = &self.shared.policy;
        let clean = readmit && clean;
        // Live records the policy would keep: (heat, address, length, hash).
        let mut keep: Vec<(u8, u64, usize, u64)> = Vec::new();
        let (mut live, mut hot) = (0, 0);
        for page in first..first + count {
            let base = self.frame_ptr(st, page);
            let mut off = 0;
            while off + HEADER <= page_bytes {
                // SAFETY: the frame is ours (lock held) and holds a page of records.
                let rec = match unsafe { RecordRef::parse(base.add(off), page_bytes - off) } {
                    Ok(r) => r,
                    Err(Bad::NoMagic) => break,
                    Err(b) => return Err(self.dram_bug((page << shift) | off as u64, b)),
                };
                let addr = (page << shift) | off as u64;
                let len = rec.len();
                off += len;
                if rec.is_tombstone() || rec.dead().load(Relaxed) != 0 {
                    continue; // superseded or deleted
                }
                let hash = hash_key(rec.key());
                debug_assert_eq!(
                    // SAFETY: lock held.
                    unsafe { self.index.table() }.find::<()>(hash, |a| Ok(a == addr)),
                    Ok(Some(addr)),
                    "a record not marked dead is its key's newest"
                );
                live += 1;
                let heat = rec.heat().load(Relaxed);
                let is_hot = readmit && policy.readmit(heat);
                hot += usize::from(is_hot);
                if is_hot || clean {
                    keep.push((heat, addr, len, hash));
                } else {
                    self.far_append(st, &rec, hash, addr)?;
                }
            }
        }
        keep.sort_unstable_by_key(|k| std::cmp::Reverse(k.0));
        for (heat, addr, len, hash) in keep {
            let rec = self.dram_record(addr);
            if st.readmit_bytes.len() + len <= readmit_room {
                let at = st.readmit_bytes.len();
                st.readmit_bytes.resize(at + len, 0);
                rec.copy_to(&mut st.readmit_bytes[at..]);
                st.readmit_bytes[at + 4] = heat / 2; // the heat byte: halved per pass
                st.readmit.push((hash, addr, len));
            } else {
                self.far_append(st, &rec, hash, addr)?;
            }
        }
        if readmit {
            // The policy learns how hot DRAM is from the records it chose itself.
            policy.on_drain(live, hot);
        }
        self.far_flush(st)
    }

    /// Lock held: the DRAM record at `addr` (which the index pointed at).
    fn dram_record(&self, addr: u64) -> RecordRef {
        let shift = self.shared.page_shift;
        let page = addr >> shift;
        let off = (addr & ((1 << shift) - 1)) as usize;
        let base = self.ring[(page % self.ring.len() as u64) as usize].load(Relaxed);
        // SAFETY: lock held, so the page's frame is in place; the record was parsed when it
        // was found in the index.
        unsafe { RecordRef::parse(base.add(off), (1 << shift) - off) }
            .expect("a DRAM record the index pointed at parses")
    }

    fn frame_ptr(&self, st: &mut State, page: u64) -> *mut u8 {
        // (Only the drain's page walk uses raw frame pointers; records are copied through
        // `RecordRef::copy_to`, which reads the heat byte atomically.)
        let slot = (page % self.ring.len() as u64) as usize;
        self.arena
            .ptr(st.frames[slot].as_ref().expect("a DRAM page has a frame"))
    }

    /// Copy the records collected for readmission into the (new) tail page and repoint them.
    /// The tail page is fresh, and the collection is capped below a page, so they fit.
    fn place_readmitted(&self, st: &mut State) {
        if st.readmit.is_empty() {
            return;
        }
        let bytes = std::mem::take(&mut st.readmit_bytes);
        let list = std::mem::take(&mut st.readmit);
        // SAFETY: lock held.
        let table = unsafe { self.index.table() };
        let mut at = 0;
        for (i, &(hash, from, len)) in list.iter().enumerate() {
            prefetch_ahead(table, &list, i, |r| r.0);
            let to = st.tail;
            self.tail_slice(st, to, len)
                .copy_from_slice(&bytes[at..at + len]);
            st.tail += len as u64;
            at += len;
            let moved = table.replace(hash, from, to);
            debug_assert!(moved, "lock held: a collected record stays live");
            self.dram_record(from).dead().store(1, Relaxed);
            st.readmissions += 1;
        }
        st.readmit_bytes = bytes;
        st.readmit_bytes.clear();
        st.readmit = list;
        st.readmit.clear();
    }

    /// Send the records collected for readmission to the far log instead.
    fn readmitted_to_far(&self, st: &mut State) -> Result<()> {
        let bytes = std::mem::take(&mut st.readmit_bytes);
        let list = std::mem::take(&mut st.readmit);
        let mut at = 0;
        for &(hash, from, len) in &list {
            // SAFETY: `bytes` is our own buffer holding whole records back to back.
            let rec = unsafe { RecordRef::parse(bytes[at..].as_ptr(), len) }
                .map_err(|b| self.dram_bug(from, b))?;
            self.far_append(st, &rec, hash, from)?;
            at += len;
        }
        st.readmit_bytes = bytes;
        st.readmit_bytes.clear();
        st.readmit = list;
        st.readmit.clear();
        self.far_flush(st)
    }

    /// Move `head` past `count` drained pages and retire their frames. Every live record on
    /// them has been repointed (to the far log or the tail) before this.
    fn release_pages(&self, st: &mut State, count: u64) {
        let head = self.head.load(Relaxed);
        self.head.store(head + count, Release);
        let e = epoch().advance();
        for page in head..head + count {
            let slot = (page % self.ring.len() as u64) as usize;
            let frame = st.frames[slot].take().expect("a DRAM page has a frame");
            st.retired.push_back((e, Retired::Frame(frame)));
            st.pages_demoted += 1;
        }
    }

    // ----- the far log -------------------------------------------------------------------

    /// Copy a live record (now at `from`) into the far log's open page. It is written and
    /// repointed by the next [`Partition::far_flush`], which the caller must call before
    /// releasing the lock.
    fn far_append(&self, st: &mut State, rec: &RecordRef, hash: u64, from: u64) -> Result<()> {
        let page_bytes = self.shared.page_bytes();
        let len = rec.len();
        if st.far_tail + (2 * page_bytes) as u64 >= FAR {
            return Err(Error::AddressSpaceExhausted(format!(
                "partition {}: the far log has used its 2^47 bytes of addresses",
                self.id
            )));
        }
        let mut off = st.far_tail as usize & (page_bytes - 1);
        if off + len > page_bytes {
            // The rest of the page stays zero in the (sparse) file: that ends the page.
            self.far_flush(st)?;
            st.far_tail += (page_bytes - off) as u64;
            off = 0;
        }
        if off == 0 {
            // A new far page: what is pending belongs to the previous one.
            self.far_flush(st)?;
            st.far_written = 0;
        }
        rec.copy_to(&mut st.far_page[off..off + len]);
        st.far_pending.push((hash, from, FAR | st.far_tail, len));
        st.far_tail += len as u64;
        Ok(())
    }

    /// Write what [`Partition::far_append`] added to the open far page, then repoint each
    /// record there. On failure nothing is repointed and the appends are forgotten, so the
    /// records stay where they were.
    fn far_flush(&self, st: &mut State) -> Result<()> {
        if st.far_pending.is_empty() {
            return Ok(());
        }
        let page_bytes = self.shared.page_bytes();
        let end = match st.far_tail as usize & (page_bytes - 1) {
            0 => page_bytes,
            e => e,
        };
        let page_start = (st.far_tail - 1) & !(page_bytes as u64 - 1);
        let seg_no = page_start >> self.shared.seg_shift;
        let seg_off = (page_start & (self.shared.seg_bytes() as u64 - 1)) as usize;
        let from = st.far_written;
        let written = self.segment_for_write(st, seg_no).and_then(|seg| {
            seg.write(
                &*self.shared.storage,
                &st.far_page[from..end],
                seg_off + from,
            )
        });
        if let Err(e) = written {
            self.far_abort(st);
            return Err(e);
        }
        st.far_written = end;
        st.far_flushed = st.far_tail;
        st.segs.entry(seg_no).or_default();
        // SAFETY: lock held.
        let table = unsafe { self.index.table() };
        let pending = std::mem::take(&mut st.far_pending);
        for (i, &(hash, from, to, len)) in pending.iter().enumerate() {
            prefetch_ahead(table, &pending, i, |p| p.0);
            let moved = table.replace(hash, from, to);
            debug_assert!(moved, "lock held: an appended record stays live");
            if from & FAR == 0 {
                // Should this demotion fail before its pages are released, a retry must not
                // move the record twice.
                self.dram_record(from).dead().store(1, Relaxed);
                st.dram.records -= 1;
                st.dram.bytes -= len as u64;
            } else {
                self.far_dead(st, from, len);
                st.compaction_bytes += len as u64;
            }
            st.far.records += 1;
            st.far.bytes += len as u64;
            st.segs.entry(seg_no).or_default().live += len as u64;
        }
        st.far_pending = pending;
        st.far_pending.clear();
        Ok(())
    }

    /// Forget what was appended to the far log since the last flush: those records stay where
    /// they were (their index entries were never changed).
    fn far_abort(&self, st: &mut State) {
        st.far_pending.clear();
        st.far_tail = st.far_flushed;
        st.far_written = st.far_flushed as usize & (self.shared.page_bytes() - 1);
    }

    /// The segment that far writes for `seg_no` go to, created (and the table grown) if new.
    fn segment_for_write<'a>(&'a self, st: &mut State, seg_no: u64) -> Result<&'a Segment> {
        // SAFETY: lock held; only the lock holder swaps segment tables.
        let mut segs = unsafe { &*self.segs.load(Relaxed) };
        if let Some(s) = segs.get(seg_no) {
            return Ok(s);
        }
        if !segs.covers(seg_no) {
            let first = segs.min_present().unwrap_or(seg_no).min(seg_no);
            let len = ((seg_no - first + 1) as usize * 2).max(16);
            let grown = segs.grown(first, len);
            let old = self.segs.swap(Box::into_raw(grown), Release);
            // SAFETY: `old` came from Box::into_raw and is unreachable now.
            let old = unsafe { Box::from_raw(old) };
            st.retired_segtable_bytes += old.bytes();
            let e = epoch().advance();
            st.retired.push_back((e, Retired::SegTable(old)));
            // SAFETY: as above.
            segs = unsafe { &*self.segs.load(Relaxed) };
        }
        let path = segment_path(&self.shared.far_dir, self.id, seg_no);
        let s = Segment::create(&*self.shared.storage, path, self.shared.seg_bytes())?;
        segs.set(seg_no, Box::new(s));
        Ok(segs.get(seg_no).expect("just set"))
    }

    // ----- frames and budget -------------------------------------------------------------

    /// DRAM this partition holds besides frames.
    fn overhead(&self, st: &State) -> usize {
        // SAFETY: lock held.
        let table = unsafe { self.index.table() };
        // SAFETY: lock held.
        let segs = unsafe { &*self.segs.load(Relaxed) };
        table.bytes()
            + st.retired_index_bytes
            + segs.bytes()
            + st.retired_segtable_bytes
            + self.ring.len() * (8 + std::mem::size_of::<Option<Frame>>())
            + self.shared.page_bytes() // the readmission buffer
            + self.shared.page_bytes() // the far log's open page
            + st.ordered_bytes
            + self.shared.global_overhead.load(Relaxed) / self.shared.partitions.max(1)
    }

    /// This partition's share of the DRAM budget now. It may grow at any time (from the pool);
    /// it shrinks only under the lock.
    fn share(&self) -> usize {
        self.shared.shares.share(self.id)
    }

    /// Bytes the partition is about to need (lock held): `growth` more it asks for, or the
    /// index's next table once the index is nearly full.
    fn soon(&self, growth: usize) -> usize {
        // SAFETY: lock held.
        let table = unsafe { self.index.table() };
        let next = if table.nearly_full() {
            Table::buckets_for(table.live() + 1) * crate::index::BUCKET_BYTES
        } else {
            0
        };
        growth.max(next)
    }

    /// Publish what the partition holds, for rebalancing (lock held).
    fn publish(&self, st: &State, overhead: usize, growth: usize) {
        self.shared.shares.publish(
            self.id,
            overhead,
            self.soon(growth),
            st.allocated_frames * self.shared.page_bytes(),
            st.pages_demoted,
        );
    }

    /// Frames the partition may hold now. Publishes what it holds, for rebalancing.
    fn quota(&self, st: &State) -> usize {
        let overhead = self.overhead(st);
        self.publish(st, overhead, 0);
        self.share().saturating_sub(overhead) / self.shared.page_bytes()
    }

    /// Lock held, short of room for `growth` more bytes: publish the need and take room from
    /// the pool and from other partitions' shares (never waiting for their locks).
    fn grow_share(&self, st: &State, growth: usize) {
        let overhead = self.overhead(st);
        let needed = overhead + growth + MIN_FRAMES * self.shared.page_bytes();
        self.grow_share_to(st, overhead, growth, needed, false);
    }

    /// [`Partition::grow_share`] toward a share of `needed` bytes, publishing `overhead` and
    /// `growth` bytes needed soon. `patient`: wait a little ([`crate::shares::PATIENCE`]) for
    /// each other partition's lock instead of none, for a caller that fails otherwise.
    fn grow_share_to(
        &self,
        st: &State,
        overhead: usize,
        growth: usize,
        needed: usize,
        patient: bool,
    ) {
        let shares = &self.shared.shares;
        if shares.share(self.id) >= needed {
            return;
        }
        self.publish(st, overhead, growth);
        let Some(parts) = self.shared.siblings.get().and_then(Weak::upgrade) else {
            return;
        };
        // A few tries: a rebalance in progress elsewhere (a maintenance thread waiting for
        // this partition's lock, which this thread holds) makes one return having done
        // nothing for this partition. (Fewer when each may wait for locks.)
        for _ in 0..if patient { 2 } else { 4 } {
            let short = needed.saturating_sub(shares.share(self.id));
            if short == 0 || shares.grant(self.id, short) == short {
                return;
            }
            if let Err(e) = shares.rebalance(&parts, Some(self.id), patient) {
                tracing::warn!(partition = self.id, error = %e, "could not take DRAM from the other partitions' shares");
            }
        }
    }

    /// Free frames until at most `room` of them are allocated (recomputed each time: a drain
    /// can grow the segment table), draining the oldest pages (all their live records go far)
    /// when no spare or retired frame is left. `false` when only the tail page is left.
    fn free_frames_to(
        &self,
        st: &mut State,
        room: impl Fn(&Self, &State) -> usize,
    ) -> Result<bool> {
        let shift = self.shared.page_shift;
        loop {
            if st.allocated_frames <= room(self, st) {
                return Ok(true);
            }
            self.reclaim(st);
            let head = self.head.load(Relaxed);
            if let Some(f) = st.spare.pop() {
                self.free_frame(st, f);
            } else if let Some((e, _)) = st.retired.front() {
                epoch().wait_safe(*e);
            } else if head < st.tail >> shift {
                self.drain_pages(st, head, 1, 0, false)?;
                self.release_pages(st, 1);
            } else {
                return Ok(false);
            }
        }
    }

    /// Lower this partition's share toward `to`, never below what it cannot give up, draining
    /// its oldest pages when its frames do not fit; the difference goes to the pool. Waits for
    /// the lock for `wait` (`None`: not at all) and does nothing if it stays busy.
    pub(crate) fn try_shrink_share(&self, to: usize, wait: Option<Duration>) -> Result<()> {
        let guard = match wait {
            Some(d) => self.state.try_write_for(d),
            None => self.state.try_write(),
        };
        let Some(mut guard) = guard else {
            return Ok(());
        };
        let st = &mut *guard;
        self.reclaim(st);
        let page = self.shared.page_bytes();
        let share = self.share();
        let to = to.max(self.overhead(st) + MIN_FRAMES * page);
        if to >= share {
            return Ok(());
        }
        let fits = self.free_frames_to(st, |p, st| to.saturating_sub(p.overhead(st)) / page);
        // Whatever happened, what the frames hold now is all the share can lose.
        let held = self.overhead(st) + st.allocated_frames * page;
        let to = if matches!(fits, Ok(true)) {
            to
        } else {
            to.max(held)
        };
        if to < share {
            self.shared.shares.lower(self.id, to);
        }
        self.publish(st, self.overhead(st), 0);
        fits.map(|_| ())
    }

    fn new_frame(&self, st: &mut State) -> Result<Frame> {
        let f = st.unbacked.pop().ok_or_else(|| {
            Error::BudgetExhausted(format!(
                "partition {}: every frame of its arena is in use (an engine bug: the quota \
                 never exceeds the arena)",
                self.id
            ))
        })?;
        st.allocated_frames += 1;
        self.arena.populate(&f);
        Ok(f)
    }

    /// Give a resident frame's memory back.
    fn free_frame(&self, st: &mut State, f: Frame) {
        self.arena.release(&f);
        st.unbacked.push(f);
        st.allocated_frames -= 1;
    }

    /// Move retired objects whose epoch has passed out of the retired list.
    fn reclaim(&self, st: &mut State) {
        while let Some((e, _)) = st.retired.front() {
            if !epoch().is_safe(*e) {
                break;
            }
            let (_, r) = st.retired.pop_front().expect("front exists");
            self.release(st, r);
        }
    }

    fn release(&self, st: &mut State, r: Retired) {
        match r {
            Retired::Frame(f) => st.spare.push(f),
            Retired::Table(t) => st.retired_index_bytes -= t.bytes(),
            Retired::SegTable(t) => st.retired_segtable_bytes -= t.bytes(),
            Retired::Segment(s) => drop(s),
        }
    }

    /// Ask the other partitions for a frame's worth of share (`patient`: see
    /// [`Partition::grow_share_to`]).
    fn ask_for_frame(&self, st: &State, patient: bool) {
        let page = self.shared.page_bytes();
        let overhead = self.overhead(st);
        let needed = overhead + (st.allocated_frames + 1) * page;
        self.grow_share_to(st, overhead, page, needed, patient);
    }

    /// A frame for a new tail page: a spare, a new one within quota, or the oldest retired
    /// one once readers have left it.
    fn take_frame(&self, st: &mut State) -> Result<Frame> {
        let mut asked = false;
        loop {
            if st.allocated_frames > self.quota(st) {
                if let Some(f) = st.spare.pop() {
                    self.free_frame(st, f);
                    continue;
                }
            }
            if let Some(f) = st.spare.pop() {
                return Ok(f);
            }
            if st.allocated_frames < self.quota(st) {
                return self.new_frame(st);
            }
            let Some((e, _)) = st.retired.front() else {
                // Its overhead (an ordered index, the segment table, the change logs) took the
                // room of its frames: ask the other partitions for a frame's worth once.
                if !asked {
                    asked = true;
                    self.ask_for_frame(st, false);
                    continue;
                }
                return Err(Error::BudgetExhausted(format!(
                    "partition {}: no log frame can be freed within a share of {} bytes",
                    self.id,
                    self.share()
                )));
            };
            epoch().wait_safe(*e);
            self.reclaim(st);
        }
    }

    /// Before a put of `key`: room in the index if the key takes a new entry. An overwrite,
    /// or a key written again where it was deleted (its DELETED entry is reused), needs none,
    /// so such writes work at the index's limit too: undoing a refused batch writes keys
    /// back this way, and must not be refused for the room the batch lacked.
    fn ensure_index_room_for(&self, st: &mut State, hash: u64, key: &[u8]) -> Result<()> {
        // SAFETY: lock held.
        let table = unsafe { self.index.table() };
        if table.needs_rebuild() && table.takes_new_entry(hash, |a| self.locked_is_key(a, key))? {
            self.ensure_index_room(st)?;
        }
        Ok(())
    }

    /// Before an insert: grow the index if it is full, shrinking the frames to pay for it.
    fn ensure_index_room(&self, st: &mut State) -> Result<()> {
        // SAFETY: lock held.
        let table = unsafe { self.index.table() };
        if !table.needs_rebuild() {
            return Ok(());
        }
        let new_bytes = Table::buckets_for(table.live() + 1) * crate::index::BUCKET_BYTES;
        let page = self.shared.page_bytes();
        let room =
            |p: &Self, st: &State| p.share().saturating_sub(p.overhead(st) + new_bytes) / page;
        let short = |p: &Self, st: &State| {
            Error::BudgetExhausted(format!(
                "partition {}: {} keys need an index of {new_bytes} bytes, which leaves {} log \
                 frames in a share of {} bytes (the other partitions could give no more); \
                 raise dram_budget_bytes",
                p.id,
                table.live(),
                room(p, st),
                p.share()
            ))
        };
        if room(self, st) < MIN_FRAMES {
            self.grow_share(st, new_bytes);
            if room(self, st) < MIN_FRAMES {
                return Err(short(self, st));
            }
        }
        // Free frames until the new table fits beside the old one (freed later).
        if !self.free_frames_to(st, room)? || room(self, st) < MIN_FRAMES {
            return Err(short(self, st));
        }
        let new = table.rebuilt(1, |a| self.locked_hash_len(st, a).map(|(h, _)| h))?;
        self.install_table(st, new);
        Ok(())
    }

    /// Lock held: make `new` the index table (bound to the home node) and retire the old one
    /// until no reader can be in it.
    fn install_table(&self, st: &mut State, new: Box<Table>) {
        let (p, n) = new.memory();
        bind_inner(p, n, self.node);
        let old = self.index.swap(new);
        st.index_generation += 1;
        st.retired_index_bytes += old.bytes();
        let e = epoch().advance();
        st.retired.push_back((e, Retired::Table(old)));
    }

    /// Before recovery loads about `keys` keys into this (empty) partition: size the index for
    /// them up front, at the load a presized table aims for. A table grown by rebuilds as the
    /// keys arrive would need the old and the new table side by side, more than the running
    /// database that wrote them needed, and could refuse to reopen a full database.
    pub(crate) fn reserve(&self, keys: usize) -> Result<()> {
        let mut st = self.state.write();
        // SAFETY: lock held.
        let table = unsafe { self.index.table() };
        let want = Table::buckets_for_expected(keys.max(64));
        if table.buckets() >= want || table.live() > 0 {
            return Ok(());
        }
        let want_bytes = want.saturating_mul(crate::index::BUCKET_BYTES);
        // Does nothing when the share has room for the table already.
        self.grow_share(&st, want_bytes);
        self.install_table(&mut st, Table::with_buckets(want));
        self.reclaim(&mut st);
        let q = self.quota(&st);
        if q < MIN_FRAMES {
            return Err(Error::BudgetExhausted(format!(
                "partition {}: recovering about {keys} keys needs an index of {} bytes, which \
                 leaves room for {q} log frames in a share of {} bytes (at least {MIN_FRAMES} \
                 are needed); raise dram_budget_bytes",
                self.id,
                want_bytes,
                self.share()
            )));
        }
        Ok(())
    }

    // ----- compaction --------------------------------------------------------------------

    /// Do one page of compaction work if a segment qualifies. Returns whether it did any.
    pub(crate) fn compact_step(&self) -> Result<bool> {
        let mut st = self.state.write();
        self.reclaim(&mut st);
        let seg_bytes = self.shared.seg_bytes() as u64;
        let page_bytes = self.shared.page_bytes();
        if st.compacting.is_none() {
            let ratio = self.shared.compaction_ratio;
            // Only segments the far log has moved past, and none known to be damaged unless
            // nothing in it is live any more.
            let open = st.far_tail >> self.shared.seg_shift;
            let victim = st
                .segs
                .iter()
                .filter(|(s, m)| **s < open && (!m.damaged || m.live == 0))
                .filter(|(_, m)| (m.live as f64) < ratio * seg_bytes as f64)
                .min_by_key(|(_, m)| m.live)
                .map(|(s, m)| (*s, m.live));
            match victim {
                // Nothing live: no page to sweep, straight to removing it.
                Some((s, 0)) => st.compacting = Some((s, seg_bytes as usize)),
                Some((s, _)) => st.compacting = Some((s, 0)),
                None => return Ok(false),
            }
        }
        let (seg_no, off) = st.compacting.expect("set above");
        if off < seg_bytes as usize {
            if let Err(e) = self.compact_page(&mut st, seg_no, off) {
                // Records not yet written stay where they are. A damaged segment is left
                // for the operator; after an I/O error the segment is tried again later.
                self.far_abort(&mut st);
                st.compacting = None;
                if matches!(e, Error::Corrupt { .. }) {
                    if let Some(m) = st.segs.get_mut(&seg_no) {
                        m.damaged = true;
                    }
                }
                return Err(e);
            }
            st.compacting = Some((seg_no, off + page_bytes));
            return Ok(true);
        }
        st.compacting = None;
        // SAFETY: lock held.
        let segs = unsafe { &*self.segs.load(Relaxed) };
        // Every record the sweep found has moved. If the accounts still count live bytes here,
        // the sweep missed records: a page's sweep ends at the first byte that starts no
        // record, so one damaged marker byte hides the rest of its page. Removing the segment
        // would lose them (and leave the index pointing at nothing): keep it, damaged.
        let live = st.segs.get(&seg_no).map_or(0, |m| m.live);
        if live > 0 {
            if let Some(m) = st.segs.get_mut(&seg_no) {
                m.damaged = true;
            }
            let path = segs.get(seg_no).map(|s| s.path.clone()).unwrap_or_default();
            return Err(Error::Corrupt {
                path,
                offset: 0,
                reason: format!(
                    "compaction found no more records, but {live} bytes of live records are \
                     still in the segment (a damaged record header hides them); the segment \
                     is kept and no longer compacted"
                ),
            });
        }
        if let Some(seg) = segs.take(seg_no) {
            if let Err(e) = self.shared.storage.remove(&seg.path) {
                tracing::warn!(path = %seg.path.display(), error = %e, "could not remove a compacted segment file");
            }
            let e = epoch().advance();
            st.retired.push_back((e, Retired::Segment(seg)));
        }
        st.segs.remove(&seg_no);
        st.segments_compacted += 1;
        Ok(true)
    }

    fn compact_page(&self, st: &mut State, seg_no: u64, page_off: usize) -> Result<()> {
        let page_bytes = self.shared.page_bytes();
        // SAFETY: lock held.
        let segs = unsafe { &*self.segs.load(Relaxed) };
        let Some(seg) = segs.get(seg_no) else {
            return Ok(());
        };
        let corrupt = |at: usize, what: String| Error::Corrupt {
            path: seg.path.clone(),
            offset: at as u64,
            reason: seg.damage(at, &what),
        };
        seg.will_need(page_off, page_bytes);
        let base_addr = FAR | (seg_no << self.shared.seg_shift) | page_off as u64;
        let mut off = 0;
        while off + HEADER <= page_bytes {
            let at = page_off + off;
            // Each record is checked and copied under the guard, straight from the mapping.
            let step =
                crate::sigbus::guarded(seg.base(), seg.len(), || -> Result<Option<usize>> {
                    // SAFETY: `at..page_off+page_bytes` lies inside the mapping, which the lock
                    // keeps mapped; loads past the file's end are caught by the guard.
                    let rec =
                        match unsafe { RecordRef::parse(seg.base().add(at), page_bytes - off) } {
                            Ok(r) => r,
                            Err(Bad::NoMagic) => return Ok(None),
                            Err(b) => return Err(corrupt(at, b.to_string())),
                        };
                    rec.verify().map_err(|b| corrupt(at, b.to_string()))?;
                    let addr = base_addr + off as u64;
                    if !rec.is_tombstone() {
                        let hash = hash_key(rec.key());
                        // SAFETY: lock held.
                        let table = unsafe { self.index.table() };
                        if table.find::<()>(hash, |a| Ok(a == addr)) == Ok(Some(addr)) {
                            self.far_append(st, &rec, hash, addr)?;
                        }
                    }
                    Ok(Some(rec.len()))
                });
            match step {
                Ok(Ok(Some(len))) => off += len,
                Ok(Ok(None)) => break,
                Ok(Err(e)) => return Err(e),
                Err(()) => return Err(corrupt(at, "the mapping could not be read".into())),
            }
        }
        self.far_flush(st)
    }

    // ----- reporting ---------------------------------------------------------------------

    /// The partition's counters, under the lock that `Locked` holds.
    fn stats_of(&self, st: &mut State) -> PartitionStats {
        self.reclaim(st);
        // SAFETY: lock held.
        let table = unsafe { self.index.table() };
        let frame_bytes = (st.allocated_frames * self.shared.page_bytes()) as u64;
        let overhead = self.overhead(st) as u64;
        PartitionStats {
            dram: st.dram,
            far: st.far,
            promotions: st.promotions,
            readmissions: st.readmissions,
            pages_demoted: st.pages_demoted,
            compaction_bytes: st.compaction_bytes,
            segments_compacted: st.segments_compacted,
            far_file_bytes: st.segs.len() as u64 * self.shared.seg_bytes() as u64,
            used_bytes: frame_bytes + overhead,
            index_bytes: (table.bytes() + st.retired_index_bytes) as u64,
            ordered_index_bytes: st.ordered_bytes as u64,
            frame_bytes,
            keys: table.live() as u64,
        }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        // SAFETY: dropping the partition means no reader is left.
        let segs = unsafe { Box::from_raw(self.segs.load(Relaxed)) };
        for seg in segs.drain() {
            if let Err(e) = self.shared.storage.remove(&seg.path) {
                tracing::warn!(path = %seg.path.display(), error = %e, "could not remove a segment file at close");
            }
        }
    }
}

/// The held lock of a partition: reads, writes and scans that see and make one consistent
/// state. Writes here are single-key and unconditional; batches, revisions and logging are
/// the job of `db.rs`, which holds this for the whole batch.
pub(crate) struct Locked<'a> {
    part: &'a Partition,
    st: Guard<'a>,
    /// Far records that reads under the shared lock found hot, to promote once it is released
    /// (promoting changes the state, which takes the exclusive lock).
    deferred: Vec<Promotion>,
}

/// How a [`Locked`] holds its partition's lock. Reads that cannot write (`Keyspace::
/// read_deferred`: stat and listing in terad) share it, so the I/O threads reading one
/// namespace do not take turns; everything else holds it exclusively. Under the shared lock
/// nothing changes the state: the one change a read makes, promoting a far record, is put off
/// until the lock is released ([`Locked`]'s `Drop`).
enum Guard<'a> {
    Exclusive(RwLockWriteGuard<'a, State>),
    Shared(RwLockReadGuard<'a, State>),
    /// Only while dropping: the shared lock given back before the promotions.
    Released,
}

impl std::ops::Deref for Guard<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        match self {
            Guard::Exclusive(g) => g,
            Guard::Shared(g) => g,
            Guard::Released => unreachable!("a released partition lock is not read"),
        }
    }
}

impl std::ops::DerefMut for Guard<'_> {
    fn deref_mut(&mut self) -> &mut State {
        match self {
            Guard::Exclusive(g) => g,
            // Reads under the shared lock reach only the methods that take `&self` or put
            // their change off (`Locked::promote_found`); the tests of every read path run
            // under it.
            Guard::Shared(_) | Guard::Released => {
                panic!("a partition's state changed under its shared lock (an engine bug)")
            }
        }
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        if self.deferred.is_empty() {
            return;
        }
        // The shared lock first: the exclusive one waits for every holder of it, this one too.
        // Waiting (not `try_write`, as the lock-free reads do): before the shared lock these
        // reads held the lock exclusively anyway, and a promotion given up would leave a hot
        // record far until the policy admitted it again.
        self.st = Guard::Released;
        let mut st = self.part.state.write();
        for (hash, key, value, from, seq) in self.deferred.drain(..) {
            // Checks that `from` is still the key's record: a write after the read wins.
            self.part
                .promote_locked(&mut st, hash, &key, &value, from, seq);
        }
    }
}

impl Locked<'_> {
    /// Promote the far record at `from`, which the heat policy admitted: now under the
    /// exclusive lock, after the shared one is released otherwise.
    fn promote_found(&mut self, hash: u64, key: &[u8], value: Vec<u8>, from: u64, seq: u64) {
        match &mut self.st {
            Guard::Exclusive(st) => self.part.promote_locked(st, hash, key, &value, from, seq),
            Guard::Shared(_) | Guard::Released => {
                self.deferred.push((hash, key.to_vec(), value, from, seq))
            }
        }
    }

    /// The partition's counters (see `Db::stats`, which holds every partition's lock at once
    /// so that its sum is one state).
    pub(crate) fn stats(&mut self) -> PartitionStats {
        self.part.stats_of(&mut self.st)
    }

    /// The log position after the last frame logged for this partition's batches.
    pub(crate) fn logged(&self) -> u64 {
        self.st.logged
    }

    /// Note that a frame of this partition's batch was logged, ending at `lsn`.
    pub(crate) fn set_logged(&mut self, lsn: u64) {
        self.st.logged = self.st.logged.max(lsn);
    }

    /// Copy the value of `key` into `out`; returns where it was found.
    pub(crate) fn get(&mut self, hash: u64, key: &[u8], out: &mut Vec<u8>) -> Result<Option<Tier>> {
        let found = self.read_with(hash, key, |v| {
            out.clear();
            out.extend_from_slice(v);
        })?;
        Ok(found.map(|((), tier)| tier))
    }

    /// Call `f` with the value of `key` where it is stored; its result comes back with where
    /// it was found (`None` if the key is absent). A far record the heat policy admits is
    /// promoted, as on the lock-free read path (reads inside a transaction would otherwise
    /// never bring a record back).
    pub(crate) fn read_with<R>(
        &mut self,
        hash: u64,
        key: &[u8],
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<(R, Tier)>> {
        let p = self.part;
        // SAFETY: lock held.
        let table = unsafe { p.index.table() };
        let mut f = Some(f);
        let mut out = None;
        let mut promote = None;
        table.find(hash, |a| {
            match p.pinned_visit(a, key, |rec, t| {
                if let Some(f) = f.take() {
                    out = Some((f(rec.value()), t));
                }
                if t == Tier::Far && p.shared.policy.admit_far(hash) {
                    promote = Some((a, rec.seq(), rec.value().to_vec()));
                }
            }) {
                Ok(b) => Ok(b),
                Err(e) => Err(p.locked_err(a, e)),
            }
        })?;
        if let Some((from, seq, value)) = promote {
            self.promote_found(hash, key, value, from, seq);
        }
        Ok(out)
    }

    /// Set `key` to `value`; `ordered` keeps the key in the ordered index. Returns whether the
    /// key existed.
    pub(crate) fn put(
        &mut self,
        hash: u64,
        key: &[u8],
        value: &[u8],
        ordered: bool,
    ) -> Result<bool> {
        self.part.check_sizes(key, value.len())?;
        self.part
            .put_locked(&mut self.st, hash, key, value, ordered)
    }

    /// Set `key` to the value `head ++ value`, where `make_head(old, head)` fills `head` from
    /// the first `head.len()` bytes of the value it replaces (`None` if the key is new): a
    /// keyspace's revisions, which follow from the old version's. One index probe finds the
    /// old version; only its first bytes are read, and it is not promoted. The new version
    /// inherits the old one's heat plus one (a write is an access: a key that is written and
    /// not read stays in DRAM as a read one would); a new key starts cold, as a loaded one.
    /// Returns whether the key existed.
    pub(crate) fn put_over(
        &mut self,
        hash: u64,
        key: &[u8],
        value: &[u8],
        ordered: bool,
        head: &mut [u8],
        make_head: impl FnOnce(Option<&[u8]>, &mut [u8]),
    ) -> Result<bool> {
        let p = self.part;
        let st = &mut *self.st;
        p.check_sizes(key, head.len() + value.len())?;
        p.ensure_index_room_for(st, hash, key)?;
        let len = record::record_len(key.len(), head.len() + value.len());
        // Room first: reserving may drain pages and move the old version, after which
        // nothing moves until the new record is in place.
        let addr = p.reserve_tail(st, len)?;
        // SAFETY: lock held.
        let table = unsafe { p.index.table() };
        let mut prev = [0u8; 64];
        assert!(head.len() <= prev.len(), "a value head is at most 64 bytes");
        let n = head.len();
        let (mut heat, mut old_len) = (0, 0);
        let old = table.find(hash, |a| {
            p.pinned_visit(a, key, |rec, t| {
                old_len = rec.len();
                let v = rec.value();
                let m = n.min(v.len());
                prev[..m].copy_from_slice(&v[..m]);
                prev[m..n].fill(0);
                heat = match t {
                    Tier::Dram => rec.heat().load(Relaxed).saturating_add(1).min(MAX_HEAT),
                    Tier::Far => 1,
                };
            })
            .map_err(|e| p.locked_err(a, e))
        })?;
        // From here on nothing can fail: the revisions `make_head` takes are always used.
        make_head(old.map(|_| &prev[..n]), head);
        st.seq += 1;
        let seq = st.seq;
        p.write_reserved(st, addr, key, head, value, 0, seq, heat);
        st.dram.records += 1;
        st.dram.bytes += len as u64;
        match old {
            Some(from) => {
                let moved = table.replace(hash, from, addr);
                debug_assert!(moved, "lock held: the entry cannot have changed");
                p.dead_len(st, from, old_len);
            }
            None => {
                // The probe above found no entry for the key, so it takes a free slot.
                let fresh = table.upsert(hash, addr, |_| Ok::<_, ()>(false));
                debug_assert_eq!(fresh, Ok(None));
                Partition::add_ordered(st, key, ordered);
            }
        }
        Ok(old.is_some())
    }

    /// Remove `key`; returns whether it existed.
    pub(crate) fn delete(&mut self, hash: u64, key: &[u8], ordered: bool) -> Result<bool> {
        self.part.delete_locked(&mut self.st, hash, key, ordered)
    }

    /// Copy up to `max` keys of the ordered index in `lo..hi` (backward if `reverse`) into
    /// `buf`, recording `(tag, start, len)` of each in `spans`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn ordered_keys(
        &self,
        lo: Bound<&[u8]>,
        hi: Bound<&[u8]>,
        reverse: bool,
        max: usize,
        tag: u32,
        buf: &mut Vec<u8>,
        spans: &mut Vec<(u32, usize, u32)>,
    ) {
        if inverted(lo, hi) {
            return;
        }
        let (lo, hi) = (ord_bound(lo), ord_bound(hi));
        let range = self
            .st
            .ordered
            .range::<OrdKey, _>((as_ord(&lo), as_ord(&hi)));
        let keys: Vec<&OrdKey> = if reverse {
            range.rev().take(max).collect()
        } else {
            range.take(max).collect()
        };
        for k in keys {
            let start = buf.len();
            k.append_to(buf);
            // A key is at most `max_key` bytes; the buffer may pass 4 GiB.
            spans.push((tag, start, (buf.len() - start) as u32));
        }
    }

    /// Read the values of `keys` (all in the index, e.g. from [`Locked::ordered_keys`]),
    /// calling `f(i, key, value)` for each, with the memory loads of all keys overlapped: every
    /// index bucket is prefetched, then every record. Far records the heat policy admits are
    /// promoted. Returns the records read from DRAM and from the far tier.
    pub(crate) fn get_many(
        &mut self,
        keys: &[&[u8]],
        f: impl FnMut(usize, &[u8], &[u8]),
    ) -> Result<(u64, u64)> {
        let hashes: Vec<u64> = keys.iter().map(|k| hash_key(k)).collect();
        self.get_many_hashed(keys, &hashes, f)
    }

    /// [`Locked::get_many`] for a caller that has hashed the keys already (`hashes[i]` is
    /// `hash_key(keys[i])`).
    pub(crate) fn get_many_hashed(
        &mut self,
        keys: &[&[u8]],
        hashes: &[u64],
        mut f: impl FnMut(usize, &[u8], &[u8]),
    ) -> Result<(u64, u64)> {
        debug_assert_eq!(keys.len(), hashes.len());
        let p = self.part;
        // SAFETY: lock held.
        let table = unsafe { p.index.table() };
        for &h in hashes {
            table.prefetch(h);
        }
        let cands: Vec<Option<u64>> = hashes.iter().map(|&h| table.candidate(h)).collect();
        for a in cands.iter().flatten() {
            p.prefetch_record(*a);
        }
        let (mut dram, mut far) = (0u64, 0u64);
        let mut promote: Vec<Promotion> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let hash = hashes[i];
            let mut visit = |a: u64| -> Result<bool> {
                p.pinned_visit(a, key, |rec, t| {
                    f(i, key, rec.value());
                    if t == Tier::Far {
                        far += 1;
                        if p.shared.policy.admit_far(hash) {
                            promote.push((hash, key.to_vec(), rec.value().to_vec(), a, rec.seq()));
                        }
                    } else {
                        dram += 1;
                    }
                })
                .map_err(|e| p.locked_err(a, e))
            };
            let hit = match cands[i] {
                Some(a) => visit(a)?,
                None => false,
            };
            // A tag collision: probe properly.
            if !hit && table.find(hash, &mut visit)?.is_none() {
                return Err(Error::Corrupt {
                    path: PathBuf::from(format!("<partition {}>", p.id)),
                    offset: 0,
                    reason: "a key read by a batched read is missing from the hash index (the \
                             ordered index, or a caller's own directory, names a record that \
                             does not exist)"
                        .into(),
                });
            }
        }
        for (hash, key, value, from, seq) in promote {
            self.promote_found(hash, &key, value, from, seq);
        }
        Ok((dram, far))
    }

    /// Keys of the ordered index in `lo..hi`.
    pub(crate) fn count(&self, lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> usize {
        if inverted(lo, hi) {
            return 0;
        }
        let (lo, hi) = (ord_bound(lo), ord_bound(hi));
        self.st
            .ordered
            .range::<OrdKey, _>((as_ord(&lo), as_ord(&hi)))
            .count()
    }

    /// Visit the records indexed from buckets `start..start + n` of the current index table,
    /// stopping early once the visited keys and values reach `max_bytes` (`bytes.0`), and
    /// below the larger of `bytes.1` and `max_bytes` plus one bucket of the largest records
    /// (a checkpoint bounds its chunk frames so; `(usize::MAX, usize::MAX)`: no bound). With
    /// `emulate`, each far
    /// record visited pays the emulated far latency, as a read does (a user's scan does; a
    /// checkpoint, the engine's own copy, does not). Returns how many buckets
    /// it visited, the table's bucket count and its generation: a caller that goes on with
    /// the next slice later must start again if the generation changed (the table was
    /// rebuilt and bucket positions moved).
    pub(crate) fn scan_buckets(
        &mut self,
        start: usize,
        n: usize,
        (max_bytes, hard_bytes): (usize, usize),
        emulate: bool,
        scratch: &mut Vec<u64>,
        mut f: impl FnMut(&[u8], &[u8]),
    ) -> Result<(usize, usize, u64)> {
        let p = self.part;
        // SAFETY: lock held.
        let table = unsafe { p.index.table() };
        let group = if max_bytes == usize::MAX {
            n
        } else {
            SCAN_GROUP
        };
        let (mut visited, mut bytes) = (0, 0usize);
        // The most key and value bytes a bucket's records can hold (every indexed record
        // passed `check_sizes`).
        let bucket_max = crate::index::SLOTS * (p.shared.max_key + p.shared.max_value);
        while visited < n && bytes < max_bytes {
            // A bounded scan takes no more buckets at once than could take it past
            // `hard_bytes`, and at least one: it ends below the larger of `hard_bytes` and
            // `max_bytes` plus one bucket. (Eight buckets of the largest records, 32 MiB
            // values, pass a checkpoint's chunk frame limit of 1 GiB; with the default limits
            // a checkpoint's groups stay at eight buckets, whose prefetching they need.)
            let room = if max_bytes == usize::MAX {
                group
            } else {
                (hard_bytes.saturating_sub(bytes) / bucket_max).clamp(1, group)
            };
            let m = room.min(n - visited);
            scratch.clear();
            table.addresses_in(start + visited, m, scratch);
            visited += m;
            // Ask for the records a little ahead of copying them, so that their cache misses
            // overlap (a slice's records are scattered over the frames and segments).
            for &a in scratch.iter().take(16) {
                p.prefetch_record(a);
            }
            for (i, &a) in scratch.iter().enumerate() {
                if let Some(&ahead) = scratch.get(i + 16) {
                    p.prefetch_record(ahead);
                }
                let mut visit = |k: &[u8], v: &[u8]| {
                    bytes += k.len() + v.len();
                    f(k, v)
                };
                if a & FAR == 0 {
                    let rec = p.dram_record(a);
                    visit(rec.key(), rec.value());
                } else {
                    if emulate {
                        crate::emulate::far_delay(p.shared.far_ns);
                    }
                    p.far_record(a, true, |rec| visit(rec.key(), rec.value()))
                        .map_err(|e| p.locked_err(a, e))?;
                }
            }
        }
        Ok((visited, table.buckets(), self.st.index_generation))
    }

    /// Whether any of the partition's records are in the far tier (if none, no index entry
    /// holds a far address, and no probe reads a far record).
    pub(crate) fn has_far_records(&self) -> bool {
        self.st.far.records > 0
    }

    /// Prefetch the index bucket of `hash`, ahead of a `put` or `contains` of it (loaders
    /// run a few records ahead, so that the bucket's cache miss overlaps other work).
    #[inline]
    pub(crate) fn prefetch(&self, hash: u64) {
        // SAFETY: lock held.
        unsafe { self.part.index.table() }.prefetch(hash);
    }

    /// Whether `key` is in the index.
    pub(crate) fn contains(&mut self, hash: u64, key: &[u8]) -> Result<bool> {
        let p = self.part;
        // SAFETY: lock held.
        let table = unsafe { p.index.table() };
        Ok(table.find(hash, |a| p.locked_is_key(a, key))?.is_some())
    }
}

/// Whether `lo..hi` is a range whose start lies past its end (`BTreeSet::range` panics on
/// those; they hold nothing).
fn inverted(lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> bool {
    matches!((lo, hi), (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) if a > b)
}

/// A key in the ordered index: its first [`ORD_INLINE`] bytes inline, so that a B-tree
/// search compares bytes inside the node it is reading instead of following a pointer per
/// comparison (each a likely cache miss); the rest, for longer keys, on the heap.
#[derive(Debug, Clone)]
pub(crate) struct OrdKey {
    inline: [u8; ORD_INLINE],
    len: u32,
    rest: Option<Box<[u8]>>,
}

/// Key bytes an [`OrdKey`] holds inline.
pub(crate) const ORD_INLINE: usize = 24;

impl OrdKey {
    pub(crate) fn new(key: &[u8]) -> OrdKey {
        let n = key.len().min(ORD_INLINE);
        let mut inline = [0u8; ORD_INLINE];
        inline[..n].copy_from_slice(&key[..n]);
        OrdKey {
            inline,
            len: key.len() as u32,
            rest: (key.len() > ORD_INLINE).then(|| key[ORD_INLINE..].into()),
        }
    }

    fn head(&self) -> &[u8] {
        &self.inline[..(self.len as usize).min(ORD_INLINE)]
    }

    pub(crate) fn append_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.head());
        if let Some(r) = &self.rest {
            out.extend_from_slice(r);
        }
    }
}

impl Ord for OrdKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Byte order of the whole keys: the inline heads first; only two keys that agree on
        // all inline bytes and both go on need their heap parts.
        match self.head().cmp(other.head()) {
            std::cmp::Ordering::Equal => {}
            o => return o,
        }
        match (&self.rest, &other.rest) {
            (Some(a), Some(b)) => a.cmp(b),
            _ => self.len.cmp(&other.len),
        }
    }
}

impl PartialOrd for OrdKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for OrdKey {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for OrdKey {}

fn ord_bound(b: Bound<&[u8]>) -> Bound<OrdKey> {
    match b {
        Bound::Included(k) => Bound::Included(OrdKey::new(k)),
        Bound::Excluded(k) => Bound::Excluded(OrdKey::new(k)),
        Bound::Unbounded => Bound::Unbounded,
    }
}

fn as_ord(b: &Bound<OrdKey>) -> Bound<&OrdKey> {
    match b {
        Bound::Included(k) => Bound::Included(k),
        Bound::Excluded(k) => Bound::Excluded(k),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// A far record to promote once a scan is done: hash, key, value, address and sequence.
type Promotion = (u64, Vec<u8>, Vec<u8>, u64, u64);

/// Estimated DRAM of one key in the ordered index: its 48-byte [`OrdKey`] in a B-tree node,
/// scaled for nodes being about 2/3 full on average (72 bytes), plus the heap part of a key
/// longer than [`ORD_INLINE`] (malloc rounds to 16 bytes, with 8 of header).
pub(crate) fn ordered_key_bytes(key_len: usize) -> usize {
    let heap = if key_len > ORD_INLINE {
        (key_len - ORD_INLINE + 8).div_ceil(16).max(2) * 16
    } else {
        0
    };
    72 + heap
}

/// Buckets a byte-bounded [`Locked::scan_buckets`] visits between checks of its bound, at
/// most (fewer where their records could take it past its hard bound).
const SCAN_GROUP: usize = 8;

/// Bytes of readmitted records one page advance may carry into the new tail page.
fn readmit_cap(page_bytes: usize) -> usize {
    page_bytes / 4 * 3
}

/// Bind the page-aligned interior of `[ptr, ptr+len)` to `node`.
fn bind_inner(ptr: *const u8, len: usize, node: u32) {
    let page = 4096usize;
    let start = (ptr as usize + page - 1) & !(page - 1);
    let end = (ptr as usize + len) & !(page - 1);
    if end > start {
        tera_numa::bind_memory_or_log(start as *const u8, end - start, node);
    }
}

#[cfg(test)]
mod ord_tests {
    use super::OrdKey;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn ordkey_orders_like_bytes(a in proptest::collection::vec(0u8..3, 0..40), b in proptest::collection::vec(0u8..3, 0..40)) {
            let (x, y) = (OrdKey::new(&a), OrdKey::new(&b));
            prop_assert_eq!(x.cmp(&y), a.cmp(&b));
            let mut out = Vec::new();
            x.append_to(&mut out);
            prop_assert_eq!(out, a);
        }
    }
}
