//! The hash index: key hash -> address of the key's newest record, one table per partition.
//!
//! Layout: an array of 64-byte buckets of eight 8-byte entries, probed linearly from the
//! bucket picked by the hash's low 32 bits. An entry is `tag << 48 | address` (tag = the hash's
//! top 16 bits, never 0), `EMPTY` (0) or `DELETED` (1). A key's entries never move while a
//! table is live, so a reader's probe needs no lock: it loads entries with Acquire, skips
//! entries whose tag differs and asks the caller whether the record at a matching address
//! holds its key. A probe stops at the first empty entry.
//!
//! Writers (holding the partition lock) change entries with Release stores after the record
//! they point to is written. A table that fills past [`MAX_LOAD`] is rebuilt larger from the
//! records' keys and swapped in whole; the old table stays readable, frozen, until the epoch
//! says no reader can be in it. Architecture invariant: an entry is only ever changed by the
//! holder of the partition lock, so a check and a change under that lock are atomic with
//! respect to every other change (this is what makes promotion safe against updates).

use crate::sync::{AtomicPtr, AtomicU64, AtomicUsize};
use crossbeam_utils::CachePadded;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};

pub(crate) const EMPTY: u64 = 0;
pub(crate) const DELETED: u64 = 1;
const ADDR_BITS: u32 = 48;
pub(crate) const ADDR_MASK: u64 = (1 << ADDR_BITS) - 1;
/// Entries per bucket.
pub(crate) const SLOTS: usize = 8;
/// Rebuild when entries (live or deleted) would pass this share of the slots.
pub(crate) const MAX_LOAD: f64 = 0.85;
/// Past this load the next rebuild's table counts as room the partition needs (shares.rs).
const NEAR_FULL_LOAD: f64 = 0.75;
/// Load a rebuilt table starts at.
const REBUILD_LOAD: f64 = 0.6;
/// Load a table sized from the expected key count ends at.
const PRESIZED_LOAD: f64 = 0.8;

#[repr(C, align(64))]
struct Bucket([AtomicU64; SLOTS]);

/// Ask the CPU to bring the cache line at `p` in (a hint: never faults, may do nothing).
#[inline]
pub(crate) fn prefetch_line(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults, whatever the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Bytes of one bucket, the unit of index memory.
pub(crate) const BUCKET_BYTES: usize = std::mem::size_of::<Bucket>();

#[inline]
fn entry(tag: u16, addr: u64) -> u64 {
    debug_assert!(addr > DELETED && addr <= ADDR_MASK);
    (u64::from(tag) << ADDR_BITS) | addr
}

/// The buckets of a table, in an anonymous mapping of their own, so that a replaced table's
/// memory goes back to the system when it is freed. (From the heap it did not: once glibc's
/// allocator has freed one mapped block it raises its mapping threshold, up to 32 MiB, and
/// serves later large blocks from its heaps, which keep freed memory. terad's `RssAnon`
/// then grew by each replaced index table while the engine's accounting stayed flat.)
#[cfg(not(tera_loom))]
struct Buckets {
    map: memmap2::MmapMut,
    n: usize,
}

#[cfg(not(tera_loom))]
impl Buckets {
    fn zeroed(n: usize) -> Buckets {
        let Some(bytes) = n.checked_mul(BUCKET_BYTES) else {
            // What collecting that many into a `Box` did too.
            panic!("an index table of {n} buckets does not fit the address space");
        };
        match memmap2::MmapMut::map_anon(bytes) {
            Ok(map) => Buckets { map, n },
            // What a failed `Box` allocation does too.
            Err(_) => std::alloc::handle_alloc_error(
                std::alloc::Layout::from_size_align(bytes, BUCKET_BYTES).expect("bucket layout"),
            ),
        }
    }
}

#[cfg(not(tera_loom))]
impl std::ops::Deref for Buckets {
    type Target = [Bucket];
    fn deref(&self) -> &[Bucket] {
        // SAFETY: the mapping is `n * BUCKET_BYTES` bytes, page-aligned (so aligned for
        // `Bucket`), zero-filled by the kernel (a zero `AtomicU64` is a valid one, `EMPTY`),
        // lives as long as `self`, and is only ever accessed through shared atomics.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast::<Bucket>(), self.n) }
    }
}

/// Under loom, buckets of loom's atomics, which cannot be zero-filled memory.
#[cfg(tera_loom)]
type Buckets = Box<[Bucket]>;

/// One table: a slice of buckets (bound to the partition's node where its pages allow, see
/// `partition::bind_inner`).
pub(crate) struct Table {
    buckets: Buckets,
    /// Entries that are not EMPTY (live or DELETED). Changed only by the lock holder; atomic
    /// so that the table is only ever shared, never mutably borrowed, while readers are in it.
    /// Both counters have a cache line of their own, away from `buckets`, which every read
    /// loads and inserts would otherwise keep taking from the other cores.
    used: CachePadded<AtomicUsize>,
    live: CachePadded<AtomicUsize>,
}

impl Table {
    pub(crate) fn with_buckets(n: usize) -> Box<Table> {
        let n = n.max(1);
        #[cfg(not(tera_loom))]
        let buckets = Buckets::zeroed(n);
        #[cfg(tera_loom)]
        let buckets = (0..n)
            .map(|_| Bucket(std::array::from_fn(|_| AtomicU64::new(EMPTY))))
            .collect();
        Box::new(Table {
            buckets,
            used: CachePadded::new(AtomicUsize::new(0)),
            live: CachePadded::new(AtomicUsize::new(0)),
        })
    }

    /// Buckets needed to hold `keys` at the load a rebuild aims for.
    pub(crate) fn buckets_for(keys: usize) -> usize {
        Self::buckets_at(keys, REBUILD_LOAD)
    }

    /// Buckets for a table sized up front for `keys` expected keys: fuller than a rebuilt
    /// table, since it need not leave room for growth.
    pub(crate) fn buckets_for_expected(keys: usize) -> usize {
        Self::buckets_at(keys, PRESIZED_LOAD)
    }

    fn buckets_at(keys: usize, load: f64) -> usize {
        ((keys as f64 / load / SLOTS as f64).ceil() as usize).max(1)
    }

    pub(crate) fn bytes(&self) -> usize {
        self.buckets.len() * BUCKET_BYTES
    }

    pub(crate) fn live(&self) -> usize {
        self.live.load(Relaxed)
    }

    fn capacity(&self) -> usize {
        self.buckets.len() * SLOTS
    }

    /// Memory of the buckets, to bind to a NUMA node.
    pub(crate) fn memory(&self) -> (*const u8, usize) {
        (self.buckets.as_ptr().cast(), self.bytes())
    }

    /// Probe for `hash`; `is_key(addr)` says whether the record at `addr` holds the key.
    /// Returns the address, or `None`.
    #[inline]
    pub(crate) fn find<E>(
        &self,
        hash: u64,
        mut is_key: impl FnMut(u64) -> Result<bool, E>,
    ) -> Result<Option<u64>, E> {
        let tag = crate::hash::tag_of(hash);
        let n = self.buckets.len();
        let mut b = crate::hash::bucket_of(hash, n);
        for _ in 0..n {
            for slot in &self.buckets[b].0 {
                let v = slot.load(Acquire);
                if v == EMPTY {
                    return Ok(None);
                }
                if (v >> ADDR_BITS) as u16 == tag && is_key(v & ADDR_MASK)? {
                    return Ok(Some(v & ADDR_MASK));
                }
            }
            b = if b + 1 == n { 0 } else { b + 1 };
        }
        Ok(None)
    }

    /// Prefetch the home bucket of `hash` (for batched lookups).
    #[inline]
    pub(crate) fn prefetch(&self, hash: u64) {
        let b = crate::hash::bucket_of(hash, self.buckets.len());
        prefetch_line(self.buckets[b].0.as_ptr().cast());
    }

    /// The first entry on `hash`'s probe path whose tag matches: the key's address unless two
    /// keys' tags collide (the caller checks the record's key and falls back to `find`).
    #[inline]
    pub(crate) fn candidate(&self, hash: u64) -> Option<u64> {
        let tag = crate::hash::tag_of(hash);
        let n = self.buckets.len();
        let mut b = crate::hash::bucket_of(hash, n);
        for _ in 0..n {
            for slot in &self.buckets[b].0 {
                let v = slot.load(Acquire);
                if v == EMPTY {
                    return None;
                }
                if (v >> ADDR_BITS) as u16 == tag {
                    return Some(v & ADDR_MASK);
                }
            }
            b = if b + 1 == n { 0 } else { b + 1 };
        }
        None
    }

    /// Writer side: the slot holding the key, or the first reusable slot on its probe path.
    fn locate<E>(
        &self,
        hash: u64,
        mut is_key: impl FnMut(u64) -> Result<bool, E>,
    ) -> Result<Slot<'_>, E> {
        let tag = crate::hash::tag_of(hash);
        let n = self.buckets.len();
        let mut b = crate::hash::bucket_of(hash, n);
        let mut vacant: Option<&AtomicU64> = None;
        for _ in 0..n {
            for slot in &self.buckets[b].0 {
                let v = slot.load(Relaxed);
                if v == EMPTY {
                    return Ok(Slot::Vacant(vacant.unwrap_or(slot), vacant.is_some()));
                }
                if v == DELETED {
                    vacant.get_or_insert(slot);
                } else if (v >> ADDR_BITS) as u16 == tag && is_key(v & ADDR_MASK)? {
                    return Ok(Slot::Found(slot, v & ADDR_MASK));
                }
            }
            b = if b + 1 == n { 0 } else { b + 1 };
        }
        Ok(match vacant {
            Some(s) => Slot::Vacant(s, true),
            None => Slot::Full,
        })
    }

    /// Whether pointing the key at an address would take an entry that is EMPTY now (the key
    /// is not in the table, and no DELETED entry on its probe path can be reused): only then
    /// does an upsert raise the load. The caller holds the partition lock.
    pub(crate) fn takes_new_entry<E>(
        &self,
        hash: u64,
        is_key: impl FnMut(u64) -> Result<bool, E>,
    ) -> Result<bool, E> {
        Ok(matches!(
            self.locate(hash, is_key)?,
            Slot::Vacant(_, false) | Slot::Full
        ))
    }

    /// True when one more entry would pass the maximum load.
    /// Close to needing a rebuild: the partition counts the next table as room it needs.
    pub(crate) fn nearly_full(&self) -> bool {
        (self.used.load(Relaxed) + 1) as f64 > self.capacity() as f64 * NEAR_FULL_LOAD
    }

    pub(crate) fn needs_rebuild(&self) -> bool {
        (self.used.load(Relaxed) + 1) as f64 > self.capacity() as f64 * MAX_LOAD
    }

    /// Point the key at `addr`. Returns the previous address. The caller holds the partition
    /// lock and has checked [`Table::needs_rebuild`].
    pub(crate) fn upsert<E>(
        &self,
        hash: u64,
        addr: u64,
        is_key: impl FnMut(u64) -> Result<bool, E>,
    ) -> Result<Option<u64>, E> {
        let tag = crate::hash::tag_of(hash);
        match self.locate(hash, is_key)? {
            Slot::Found(s, old) => {
                s.store(entry(tag, addr), Release);
                Ok(Some(old))
            }
            Slot::Vacant(s, reused) => {
                s.store(entry(tag, addr), Release);
                if !reused {
                    self.used.fetch_add(1, Relaxed);
                }
                self.live.fetch_add(1, Relaxed);
                Ok(None)
            }
            Slot::Full => unreachable!("upsert on a full table; needs_rebuild was not checked"),
        }
    }

    /// Remove the key. Returns its address if it was present.
    pub(crate) fn remove<E>(
        &self,
        hash: u64,
        is_key: impl FnMut(u64) -> Result<bool, E>,
    ) -> Result<Option<u64>, E> {
        match self.locate(hash, is_key)? {
            Slot::Found(s, old) => {
                s.store(DELETED, Release);
                self.live.fetch_sub(1, Relaxed);
                Ok(Some(old))
            }
            _ => Ok(None),
        }
    }

    /// Repoint the key from `expected` to `addr` if it still points at `expected` (promotion,
    /// compaction). Returns whether it did.
    pub(crate) fn replace(&self, hash: u64, expected: u64, addr: u64) -> bool {
        let tag = crate::hash::tag_of(hash);
        let want = entry(tag, expected);
        let n = self.buckets.len();
        let mut b = crate::hash::bucket_of(hash, n);
        for _ in 0..n {
            for slot in &self.buckets[b].0 {
                let v = slot.load(Relaxed);
                if v == EMPTY {
                    return false;
                }
                if v == want {
                    // Only the lock holder writes entries, so the check and the store are one
                    // step for every other writer; readers see either address, both valid.
                    return slot
                        .compare_exchange(want, entry(tag, addr), AcqRel, Relaxed)
                        .is_ok();
                }
            }
            b = if b + 1 == n { 0 } else { b + 1 };
        }
        false
    }

    /// Every live address (for rebuilds, scans and checks).
    pub(crate) fn addresses(&self) -> impl Iterator<Item = u64> + '_ {
        self.buckets.iter().flat_map(|b| {
            b.0.iter().filter_map(|s| {
                let v = s.load(Relaxed);
                (v > DELETED).then_some(v & ADDR_MASK)
            })
        })
    }

    /// Number of buckets.
    pub(crate) fn buckets(&self) -> usize {
        self.buckets.len()
    }

    /// The live addresses in buckets `start..start + n` (clamped to the table), for scans
    /// that visit a table a slice at a time.
    pub(crate) fn addresses_in(&self, start: usize, n: usize, out: &mut Vec<u64>) {
        let end = start.saturating_add(n).min(self.buckets.len());
        for b in &self.buckets[start.min(end)..end] {
            for s in &b.0 {
                let v = s.load(Relaxed);
                if v > DELETED {
                    out.push(v & ADDR_MASK);
                }
            }
        }
    }

    /// Build a table for this one's live entries (and room for `extra` more); `hash_of(addr)`
    /// recomputes an entry's hash from its record.
    pub(crate) fn rebuilt<E>(
        &self,
        extra: usize,
        mut hash_of: impl FnMut(u64) -> Result<u64, E>,
    ) -> Result<Box<Table>, E> {
        let t = Table::with_buckets(Table::buckets_for(self.live() + extra));
        for addr in self.addresses() {
            let h = hash_of(addr)?;
            // Entries are distinct keys: the first vacancy on the probe path is the place.
            let placed = t.upsert::<std::convert::Infallible>(h, addr, |_| Ok(false));
            debug_assert!(matches!(placed, Ok(None)));
        }
        Ok(t)
    }
}

enum Slot<'a> {
    Found(&'a AtomicU64, u64),
    /// A slot to fill, and whether it is a DELETED one (which does not raise `used`).
    Vacant(&'a AtomicU64, bool),
    Full,
}

/// The current table of a partition, swapped whole on rebuild.
pub(crate) struct Index {
    current: AtomicPtr<Table>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index").finish_non_exhaustive()
    }
}

impl Index {
    pub(crate) fn new(table: Box<Table>) -> Self {
        Index {
            current: AtomicPtr::new(Box::into_raw(table)),
        }
    }

    /// The current table. Writers (the partition lock holder) change it through the same
    /// shared reference; every field is atomic.
    ///
    /// # Safety
    /// The caller must be pinned (or hold the partition lock) for as long as it uses the
    /// reference: tables replaced by [`Index::swap`] are freed once the epoch allows.
    #[inline]
    pub(crate) unsafe fn table(&self) -> &Table {
        // SAFETY: `current` always holds a pointer from Box::into_raw that is only freed after
        // it is swapped out and no pinned reader remains (caller's contract).
        unsafe { &*self.current.load(Acquire) }
    }

    /// Install `table` and return the old one, to retire through the epoch.
    pub(crate) fn swap(&self, table: Box<Table>) -> Box<Table> {
        let old = self.current.swap(Box::into_raw(table), AcqRel);
        // SAFETY: `old` came from Box::into_raw and is no longer reachable through `current`.
        unsafe { Box::from_raw(old) }
    }
}

impl Drop for Index {
    fn drop(&mut self) {
        let p = self.current.load(Relaxed);
        // SAFETY: dropping the index means no reader is left; `p` came from Box::into_raw.
        drop(unsafe { Box::from_raw(p) });
    }
}

#[cfg(all(test, not(tera_loom)))]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn h(k: u64) -> u64 {
        crate::hash::hash_key(&k.to_le_bytes())
    }

    /// Addresses encode the key, so `is_key` can be checked without records.
    fn addr(k: u64) -> u64 {
        (k + 1) << 4
    }

    #[test]
    fn upsert_find_remove_against_a_map() {
        let mut t = Table::with_buckets(4);
        let mut model = HashMap::new();
        for round in 0..3u64 {
            for k in 0..1000u64 {
                if t.needs_rebuild() {
                    t = t.rebuilt::<()>(1, |a| Ok(h((a >> 4) - 1))).unwrap();
                }
                let key = |a: u64| Ok::<_, ()>(a == addr(k));
                if (k + round) % 3 == 0 {
                    assert_eq!(t.remove(h(k), key).unwrap(), model.remove(&k));
                } else {
                    assert_eq!(
                        t.upsert(h(k), addr(k), key).unwrap(),
                        model.insert(k, addr(k))
                    );
                }
            }
        }
        for k in 0..1000u64 {
            let found = t.find::<()>(h(k), |a| Ok(a == addr(k))).unwrap();
            assert_eq!(found, model.get(&k).copied(), "key {k}");
        }
        assert_eq!(t.live(), model.len());
        let mut addrs: Vec<u64> = t.addresses().collect();
        addrs.sort_unstable();
        let mut want: Vec<u64> = model.values().copied().collect();
        want.sort_unstable();
        assert_eq!(addrs, want);
    }

    #[test]
    fn replace_only_moves_the_expected_address() {
        let t = Table::with_buckets(2);
        t.upsert::<()>(h(1), 100 << 4, |_| Ok(false)).unwrap();
        assert!(!t.replace(h(1), 99 << 4, 200 << 4));
        assert!(t.replace(h(1), 100 << 4, 200 << 4));
        assert_eq!(t.find::<()>(h(1), |_| Ok(true)).unwrap(), Some(200 << 4));
    }

    #[test]
    fn a_full_table_of_tombstones_still_finds_nothing_and_accepts_inserts() {
        let t = Table::with_buckets(1);
        for k in 0..6 {
            t.upsert::<()>(h(k), addr(k), |a| Ok(a == addr(k))).unwrap();
        }
        for k in 0..6 {
            t.remove::<()>(h(k), |a| Ok(a == addr(k))).unwrap();
        }
        assert_eq!(t.live(), 0);
        assert_eq!(t.find::<()>(h(3), |_| Ok(true)).unwrap(), None);
        t.upsert::<()>(h(9), addr(9), |_| Ok(false)).unwrap();
        assert_eq!(
            t.find::<()>(h(9), |a| Ok(a == addr(9))).unwrap(),
            Some(addr(9))
        );
    }
}

#[cfg(tera_loom)]
mod loom_models {
    use super::*;
    use loom::sync::{Arc, Mutex};

    /// Index update against promotion: a promotion reads the key's address without the lock,
    /// copies the record and repoints the key only if it still holds the address it read; a
    /// concurrent put must never be undone by it.
    #[test]
    fn promotion_never_undoes_a_newer_put() {
        loom::model(|| {
            let hash = crate::hash::hash_key(b"k");
            let (far, promoted, put) = (0x100u64, 0x200u64, 0x300u64);
            let t = Table::with_buckets(1);
            t.upsert::<()>(hash, far, |_| Ok(false)).unwrap();
            let index = Arc::new(Index::new(t));
            let lock = Arc::new(Mutex::new(()));
            let (i2, l2) = (index.clone(), lock.clone());
            let promoter = loom::thread::spawn(move || {
                // SAFETY: the model never swaps tables, so the reference stays valid.
                let seen = unsafe { i2.table() }
                    .find::<()>(hash, |_| Ok(true))
                    .unwrap();
                if seen == Some(far) {
                    let _g = l2.lock().unwrap();
                    // SAFETY: as above.
                    unsafe { i2.table() }.replace(hash, far, promoted);
                }
            });
            let (i3, l3) = (index.clone(), lock.clone());
            let reader = loom::thread::spawn(move || {
                // SAFETY: as above.
                let seen = unsafe { i3.table() }
                    .find::<()>(hash, |_| Ok(true))
                    .unwrap();
                assert!(matches!(seen, Some(a) if a == far || a == promoted || a == put));
            });
            {
                let _g = lock.lock().unwrap();
                // SAFETY: the lock is held; no tables are swapped.
                unsafe { index.table() }
                    .upsert::<()>(hash, put, |_| Ok(true))
                    .unwrap();
            }
            promoter.join().unwrap();
            reader.join().unwrap();
            // SAFETY: all threads joined.
            let last = unsafe { index.table() }
                .find::<()>(hash, |_| Ok(true))
                .unwrap();
            assert_eq!(last, Some(put), "a promotion overwrote a newer put");
        });
    }
}
