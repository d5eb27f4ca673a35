//! The bell: a wake-up shared by the write-ahead log and the change logs. Watchers wait on it,
//! and it rings when a change is added or the durable LSN moves.
//!
//! Ringing is on the path of every write to a watched keyspace (a change log rings only while
//! it has a watcher: see `Changelog::watchers` and the second loom model below) and of every
//! log sync, so it costs one atomic add, and the lock and the
//! notification only while someone waits. The ring count and the number of waiters share one
//! atomic word (waiters in the low [`WAITER_BITS`] bits), so that a ring learns whether anyone
//! waits from the very add that rings, and a waiter registers with an add to the same word:
//! the two adds are ordered, with no reliance on a store-load fence. If the ring comes first,
//! the waiter's check under the lock (after its own add) sees the new count and it does not
//! sleep. If the waiter's add comes first, the ringer sees a waiter and notifies under the
//! lock, which the waiter holds from its check until it sleeps. The loom model below checks
//! this (`make loom`). (A first version kept two atomics and relied on SeqCst for that
//! store-load order. Loom cannot check such code: it models SeqCst as acquire/release, under
//! which the version does lose a ring, and it said so.)

use crate::sync::AtomicU64;
use std::sync::atomic::Ordering::{AcqRel, Acquire};

#[cfg(tera_loom)]
use loom::sync::{Condvar, Mutex};
#[cfg(not(tera_loom))]
use parking_lot::{Condvar, Mutex};

/// Low bits of the state that count waiters; the ring count is the bits above them.
const WAITER_BITS: u32 = 20;
const WAITER_MASK: u64 = (1 << WAITER_BITS) - 1;
const ONE_RING: u64 = 1 << WAITER_BITS;

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Bell {
    /// `rings << WAITER_BITS | waiters`.
    state: AtomicU64,
    lock: Mutex<()>,
    cond: Condvar,
}

impl Bell {
    /// Wake every waiter whose count is now stale.
    pub(crate) fn ring(&self) {
        if self.state.fetch_add(ONE_RING, AcqRel) & WAITER_MASK != 0 {
            #[cfg(not(tera_loom))]
            let _g = self.lock.lock();
            #[cfg(tera_loom)]
            let _g = self.lock.lock().unwrap();
            self.cond.notify_all();
        }
    }

    /// The current ring count, to pass to `wait`.
    pub(crate) fn count(&self) -> u64 {
        self.state.load(Acquire) >> WAITER_BITS
    }

    /// Wait until the bell rings after `seen`, or `until` passes. (Under loom there is no
    /// deadline: a lost ring shows as the model's deadlock.)
    pub(crate) fn wait(&self, seen: u64, until: std::time::Instant) {
        // Threads that wait at once are far fewer than 2^20 (each is a watcher or a flush).
        self.state.fetch_add(1, AcqRel);
        #[cfg(not(tera_loom))]
        {
            let mut g = self.lock.lock();
            while self.count() == seen {
                if self.cond.wait_until(&mut g, until).timed_out() {
                    break;
                }
            }
        }
        #[cfg(tera_loom)]
        {
            let _ = until;
            let mut g = self.lock.lock().unwrap();
            while self.count() == seen {
                g = self.cond.wait(g).unwrap();
            }
        }
        self.state.fetch_sub(1, AcqRel);
    }
}

#[cfg(all(test, not(tera_loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A ring between a waiter's `count` and its sleep is never lost: every wait ends long
    /// before its deadline, and a wait whose count is already stale returns at once.
    #[test]
    fn bell_never_loses_a_ring() {
        let bell = Arc::new(Bell::default());
        for _ in 0..2000 {
            let seen = bell.count();
            let b = Arc::clone(&bell);
            let ringer = std::thread::spawn(move || b.ring());
            let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
            bell.wait(seen, until);
            assert!(std::time::Instant::now() < until, "a ring was lost");
            ringer.join().unwrap();
            assert!(bell.count() > seen);
        }
        let stale = bell.count() - 1;
        let t = std::time::Instant::now();
        bell.wait(stale, t + std::time::Duration::from_secs(20));
        assert!(t.elapsed() < std::time::Duration::from_secs(20));
    }
}

#[cfg(tera_loom)]
mod loom_models {
    use super::*;
    use loom::sync::Arc;

    /// A waiter that read the count just before a ring still wakes: if the ring were lost, the
    /// waiter (which has no deadline under loom) would sleep forever and loom would report a
    /// deadlock. Two ringers race one waiter so that a ring can land at every step of `wait`.
    #[test]
    fn a_ring_after_count_always_wakes_the_waiter() {
        loom::model(|| {
            let bell = Arc::new(Bell::default());
            let seen = bell.count();
            let ringers: Vec<_> = (0..2)
                .map(|_| {
                    let b = bell.clone();
                    loom::thread::spawn(move || b.ring())
                })
                .collect();
            bell.wait(seen, std::time::Instant::now());
            assert!(bell.count() > seen);
            for r in ringers {
                r.join().unwrap();
            }
        });
    }

    /// The change log's protocol (`Changelog::watchers`): a writer inserts under the log's
    /// lock and rings only if it then sees a watcher; a watcher counts itself, then loops on
    /// `count`, a read of the log under the lock, and `wait`. Whichever comes first, the
    /// watcher sees the change: its read finds it, or the writer sees the watcher and rings.
    /// A lost change would leave the watcher waiting forever, which loom reports.
    #[test]
    fn a_writer_that_sees_no_watcher_is_seen_by_the_watchers_read() {
        use crate::sync::AtomicUsize;
        use std::sync::atomic::Ordering::Relaxed;
        loom::model(|| {
            let bell = Arc::new(Bell::default());
            let log = Arc::new(Mutex::new(0u32));
            let watchers = Arc::new(AtomicUsize::new(0));
            let writer = {
                let (bell, log, watchers) = (bell.clone(), log.clone(), watchers.clone());
                loom::thread::spawn(move || {
                    *log.lock().unwrap() += 1;
                    if watchers.load(Relaxed) > 0 {
                        bell.ring();
                    }
                })
            };
            watchers.fetch_add(1, Relaxed);
            loop {
                let seen = bell.count();
                if *log.lock().unwrap() > 0 {
                    break;
                }
                bell.wait(seen, std::time::Instant::now());
            }
            writer.join().unwrap();
        });
    }
}
