//! Epoch protection: how lock-free readers and the threads that reuse memory agree on when a
//! DRAM frame, an old index table or an unmapped far segment may be reused.
//!
//! A reader *pins* before it follows an address and unpins when it has copied what it needs.
//! A thread that unlinks an object (a frame whose page went to the far tier, an index table
//! replaced by a larger one) calls [`Epochs::advance`], which returns the epoch `e` at which the
//! object stopped being reachable; the object may be reused once [`Epochs::is_safe`]`(e)` holds,
//! that is once no thread is pinned at an epoch `<= e`.
//!
//! Architecture invariant: a pinned thread never blocks on a lock and never waits for an epoch.
//! Threads that wait for an epoch (writers holding a partition lock) are not pinned. This is
//! what keeps the scheme free of deadlock.
//!
//! The handshake uses read-modify-write operations on both sides of each slot (the reader's
//! `swap` on pin, the reclaimer's `fetch_add(0)` on scan) instead of SeqCst fences, so that the
//! argument rests on the modification order of one location, which loom models exactly: either
//! the reclaimer's scan reads the reader's pin (and waits), or the reader's pin reads from the
//! scan and so sees the unlink that came before it.

use crate::sync::{spin_wait, AtomicU64, AtomicUsize};
use crossbeam_utils::CachePadded;
use std::cell::Cell;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};

/// Slot value of a thread that is not pinned.
const IDLE: u64 = 0;

/// The shared epoch state: a global epoch and one slot per registered thread.
pub(crate) struct Epochs {
    global: CachePadded<AtomicU64>,
    slots: Box<[CachePadded<Slot>]>,
    /// One past the highest slot ever claimed; scans stop there.
    high_water: AtomicUsize,
}

struct Slot {
    epoch: AtomicU64,
    /// 1 while a thread owns the slot.
    owned: AtomicU64,
}

impl std::fmt::Debug for Epochs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Epochs")
            .field("global", &self.global.load(Relaxed))
            .field("slots", &self.slots.len())
            .finish()
    }
}

impl Epochs {
    pub(crate) fn new(slots: usize) -> Self {
        Epochs {
            global: CachePadded::new(AtomicU64::new(1)),
            slots: (0..slots)
                .map(|_| {
                    CachePadded::new(Slot {
                        epoch: AtomicU64::new(IDLE),
                        owned: AtomicU64::new(0),
                    })
                })
                .collect(),
            high_water: AtomicUsize::new(0),
        }
    }

    /// Claim a slot for the calling thread. `None` when every slot is owned.
    pub(crate) fn register(&self) -> Option<Local<'_>> {
        for (i, slot) in self.slots.iter().enumerate() {
            if slot.owned.compare_exchange(0, 1, AcqRel, Relaxed).is_ok() {
                self.high_water.fetch_max(i + 1, AcqRel);
                return Some(Local {
                    epochs: self,
                    index: i,
                    depth: Cell::new(0),
                });
            }
        }
        None
    }

    /// Mark everything unlinked so far as retired; returns the epoch to pass to
    /// [`Epochs::is_safe`].
    pub(crate) fn advance(&self) -> u64 {
        self.global.fetch_add(1, AcqRel)
    }

    /// True once no thread is pinned at an epoch `<= retired`.
    pub(crate) fn is_safe(&self, retired: u64) -> bool {
        // An RMW here too: a thread registering concurrently either shows up in `n`, or its
        // registration read from this RMW and its pin will see everything unlinked before it.
        let n = self.high_water.fetch_add(0, AcqRel);
        self.slots[..n].iter().all(|slot| {
            // A read-modify-write reads the newest value in the slot's modification order.
            let e = slot.epoch.fetch_add(0, AcqRel);
            e == IDLE || e > retired
        })
    }

    /// Wait until [`Epochs::is_safe`]`(retired)`. The caller must not be pinned.
    pub(crate) fn wait_safe(&self, retired: u64) {
        while !self.is_safe(retired) {
            spin_wait();
        }
    }
}

/// A thread's claim on one slot.
pub(crate) struct Local<'a> {
    epochs: &'a Epochs,
    index: usize,
    depth: Cell<u32>,
}

impl std::fmt::Debug for Local<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local").field("index", &self.index).finish()
    }
}

impl<'a> Local<'a> {
    /// Pin the thread; nested pins are counted and only the outermost one publishes.
    pub(crate) fn pin(&self) -> Guard<'_, 'a> {
        let d = self.depth.get();
        if d == 0 {
            let e = self.epochs.global.load(Acquire);
            self.epochs.slots[self.index].epoch.swap(e, AcqRel);
        }
        self.depth.set(d + 1);
        Guard { local: self }
    }

    /// The slot number, also used to pick a counter stripe.
    pub(crate) fn index(&self) -> usize {
        self.index
    }
}

impl Drop for Local<'_> {
    fn drop(&mut self) {
        let slot = &self.epochs.slots[self.index];
        slot.epoch.store(IDLE, Release);
        slot.owned.store(0, Release);
    }
}

/// Proof that the thread is pinned; unpins on drop. Not `Send`: a pin belongs to its thread.
pub(crate) struct Guard<'l, 'a> {
    local: &'l Local<'a>,
}

impl Drop for Guard<'_, '_> {
    fn drop(&mut self) {
        let d = self.local.depth.get() - 1;
        self.local.depth.set(d);
        if d == 0 {
            self.local.epochs.slots[self.local.index]
                .epoch
                .store(IDLE, Release);
        }
    }
}

#[cfg(not(tera_loom))]
mod global {
    use super::{Epochs, Local};
    use std::sync::OnceLock;

    /// Slots for the process; threads beyond this many wait for a slot to free up.
    const SLOTS: usize = 1024;

    pub(crate) fn epochs() -> &'static Epochs {
        static EPOCHS: OnceLock<Epochs> = OnceLock::new();
        EPOCHS.get_or_init(|| Epochs::new(SLOTS))
    }

    thread_local! {
        static LOCAL: Local<'static> = register_blocking();
    }

    fn register_blocking() -> Local<'static> {
        let mut warned = false;
        loop {
            if let Some(l) = epochs().register() {
                return l;
            }
            if !warned {
                tracing::warn!(
                    "more than {SLOTS} threads are using the engine at once; waiting for one to exit"
                );
                warned = true;
            }
            std::thread::yield_now();
        }
    }

    /// Run `f` with the calling thread pinned in the process-wide epoch state.
    #[inline]
    pub(crate) fn with_pin<R>(f: impl FnOnce(usize) -> R) -> R {
        LOCAL.with(|l| {
            let _g = l.pin();
            f(l.index())
        })
    }
}

#[cfg(not(tera_loom))]
pub(crate) use global::{epochs, with_pin};

#[cfg(all(test, not(tera_loom)))]
mod tests {
    use super::*;

    #[test]
    fn pinned_reader_blocks_reuse_until_it_unpins() {
        let e = Epochs::new(4);
        let r = e.register().unwrap();
        let g = r.pin();
        let retired = e.advance();
        assert!(
            !e.is_safe(retired),
            "a reader pinned before the retire must hold it"
        );
        drop(g);
        assert!(e.is_safe(retired));
    }

    #[test]
    fn a_pin_after_the_retire_does_not_hold_it() {
        let e = Epochs::new(4);
        let r = e.register().unwrap();
        let retired = e.advance();
        let _g = r.pin();
        assert!(e.is_safe(retired));
        let later = e.advance();
        assert!(!e.is_safe(later));
    }

    #[test]
    fn nested_pins_publish_once_and_release_at_the_outermost() {
        let e = Epochs::new(2);
        let r = e.register().unwrap();
        let g1 = r.pin();
        let retired = e.advance();
        let g2 = r.pin();
        drop(g2);
        assert!(
            !e.is_safe(retired),
            "inner unpin must not release the outer pin"
        );
        drop(g1);
        assert!(e.is_safe(retired));
    }

    #[test]
    fn slots_are_returned_when_a_local_drops() {
        let e = Epochs::new(1);
        let a = e.register().unwrap();
        assert!(e.register().is_none());
        drop(a);
        assert!(e.register().is_some());
    }
}

#[cfg(tera_loom)]
mod loom_models {
    use super::*;
    use loom::sync::atomic::AtomicU64 as LAtomic;
    use loom::sync::Arc;

    /// Frame reuse: a reader that saw page 1 in a frame must never read the frame's next
    /// contents, whatever the interleaving with the demoter that retires and reuses the frame.
    #[test]
    fn frame_reuse_waits_for_pinned_readers() {
        loom::model(|| {
            let epochs = Arc::new(Epochs::new(2));
            // head: the first page still in DRAM. frame: the page number the frame holds.
            let head = Arc::new(LAtomic::new(1));
            let frame = Arc::new(LAtomic::new(1));
            let (e2, h2, f2) = (epochs.clone(), head.clone(), frame.clone());
            let reader = loom::thread::spawn(move || {
                let local = e2.register().unwrap();
                let _g = local.pin();
                if h2.load(Acquire) <= 1 {
                    // Page 1 is in DRAM: its frame must still hold page 1 while pinned.
                    assert_eq!(f2.load(Acquire), 1, "frame reused under a pinned reader");
                }
            });
            // Demoter: page 1 goes to the far tier, then its frame is reused for page 2 if the
            // epoch allows. (One check instead of `wait_safe`'s spin, which loom cannot bound;
            // the property is the same: whenever the check passes, reuse is safe.)
            head.store(2, Release);
            let retired = epochs.advance();
            if epochs.is_safe(retired) {
                frame.store(2, Release);
            }
            reader.join().unwrap();
            // Liveness (a finished reader no longer holds the frame) is checked by the unit
            // tests on real atomics, not here: loom 0.7 lets a read-modify-write read a store
            // that is not the latest in modification order, which C++ atomicity forbids, so
            // in its model a scan can appear to re-publish a pin. That only adds behaviours,
            // so the safety assertion above still holds for every real execution.
        });
    }

    /// The reader's double check of `head` around the ring-slot load (partition.rs,
    /// `pinned_visit`): page 1 lives in frame A at ring slot 0; the demoter moves `head` past
    /// page 1, installs frame B in the same slot for a newer page and writes to it, and reuses
    /// frame A once the epoch allows. A reader that passes both checks must be reading frame A
    /// with page 1's contents.
    #[test]
    fn ring_slot_reuse_is_caught_by_the_second_head_check() {
        const A: u64 = 1;
        const B: u64 = 2;
        loom::model(|| {
            let epochs = Arc::new(Epochs::new(2));
            let head = Arc::new(LAtomic::new(1));
            let slot = Arc::new(LAtomic::new(A));
            let frame_a = Arc::new(LAtomic::new(1)); // page 1's contents
            let frame_b = Arc::new(LAtomic::new(0));
            let (e2, h2, s2, fa, fb) = (
                epochs.clone(),
                head.clone(),
                slot.clone(),
                frame_a.clone(),
                frame_b.clone(),
            );
            let reader = loom::thread::spawn(move || {
                let local = e2.register().unwrap();
                let _g = local.pin();
                if h2.load(Acquire) <= 1 {
                    let ptr = s2.load(Acquire);
                    if h2.load(Acquire) <= 1 {
                        assert_eq!(ptr, A, "the slot's new frame was taken for page 1");
                        assert_eq!(fa.load(Acquire), 1, "frame A was reused under the reader");
                    }
                }
                let _ = fb.load(Acquire);
            });
            // Demoter: page 1's records are already repointed; release the page.
            head.store(2, Release);
            let retired = epochs.advance();
            slot.store(B, Release);
            frame_b.store(7, Release); // writes into the newer page
            if epochs.is_safe(retired) {
                frame_a.store(99, Release); // frame A reused for yet another page
            }
            reader.join().unwrap();
        });
    }
}
