//! The change log of a keyspace: every committed batch, by revision, kept in DRAM for a
//! bounded number of bytes, and the [`Watcher`]s that read it.
//!
//! Revisions are taken from an atomic counter while the batch's partition lock is held, so
//! batches of different partitions can reach the change log out of revision order. Each change
//! is put in its revision's slot, and watchers read only the prefix with no empty slot, so they
//! see revisions in order and none twice. A revision whose batch failed and was rolled back is
//! filled with an empty change.
//!
//! A change becomes visible to watchers once the log holds it durably (its frame's end LSN is
//! at or below the durable LSN), so a watcher never sees a change that a crash could take back.
//! The oldest changes are dropped when the database's change logs together pass their byte
//! limit; a watcher that asks for a dropped revision gets [`Error::Compacted`].

use crate::error::{Error, Result};
use crate::wal::Bell;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a change did to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created or overwritten.
    Put,
    /// The key was deleted.
    Delete,
}

/// One key's change at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub key: Vec<u8>,
    /// The new value (empty for a delete).
    pub value: Vec<u8>,
    /// The revision of the batch that made this change.
    pub mod_revision: u64,
    /// For a put, the revision the key was created at; 0 for a delete.
    pub create_revision: u64,
    /// For a put, the key's version after it (1 on creation); 0 for a delete.
    pub version: u64,
}

impl Event {
    fn bytes(&self) -> usize {
        self.key.len() + self.value.len() + std::mem::size_of::<Event>()
    }
}

/// The changes of one revision, and the LSN its log frame ends at.
#[derive(Debug)]
pub(crate) struct Change {
    pub(crate) events: Vec<Event>,
    pub(crate) lsn: u64,
}

struct State {
    /// Revision of `slots[0]`.
    first: u64,
    slots: VecDeque<Option<Arc<Change>>>,
    /// Slots from the front that are filled.
    filled: usize,
    bytes: usize,
}

/// A keyspace's change log. See the module docs.
pub(crate) struct Changelog {
    state: Mutex<State>,
    /// Bytes held by all change logs of the database, and their limit.
    total: Arc<AtomicUsize>,
    limit: usize,
    bell: Arc<Bell>,
}

impl std::fmt::Debug for Changelog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.state.lock();
        f.debug_struct("Changelog")
            .field("first", &st.first)
            .field("filled", &st.filled)
            .finish_non_exhaustive()
    }
}

impl Changelog {
    /// A change log whose next change is revision `next`.
    pub(crate) fn new(next: u64, total: Arc<AtomicUsize>, limit: usize, bell: Arc<Bell>) -> Self {
        Changelog {
            state: Mutex::new(State {
                first: next,
                slots: VecDeque::new(),
                filled: 0,
                bytes: 0,
            }),
            total,
            limit,
            bell,
        }
    }

    /// Record revision `rev`'s change (an empty one for a rolled-back revision).
    pub(crate) fn insert(&self, rev: u64, change: Change) {
        let size = change.events.iter().map(Event::bytes).sum::<usize>() + 64;
        let mut st = self.state.lock();
        if rev < st.first {
            return; // dropped already (a bulk load compacted past it)
        }
        let i = (rev - st.first) as usize;
        while st.slots.len() <= i {
            st.slots.push_back(None);
        }
        debug_assert!(st.slots[i].is_none(), "one change per revision");
        st.slots[i] = Some(Arc::new(change));
        while st.filled < st.slots.len() && st.slots[st.filled].is_some() {
            st.filled += 1;
        }
        st.bytes += size;
        self.total.fetch_add(size, Relaxed);
        // Drop the oldest filled changes while all change logs are over their limit.
        while self.total.load(Relaxed) > self.limit && st.filled > 1 {
            let old = st.slots.pop_front().flatten().expect("filled slot");
            let s = old.events.iter().map(Event::bytes).sum::<usize>() + 64;
            st.bytes -= s;
            self.total.fetch_sub(s, Relaxed);
            st.first += 1;
            st.filled -= 1;
        }
        drop(st);
        self.bell.ring();
    }

    /// Drop every change up to and including `rev` (a bulk load made them meaningless to
    /// replay: a watcher must read the keyspace again).
    pub(crate) fn compact_through(&self, rev: u64) {
        let mut st = self.state.lock();
        while st.first <= rev {
            match st.slots.pop_front() {
                Some(slot) => {
                    if let Some(c) = slot {
                        let s = c.events.iter().map(Event::bytes).sum::<usize>() + 64;
                        st.bytes -= s;
                        self.total.fetch_sub(s, Relaxed);
                    }
                    st.filled = st.filled.saturating_sub(1);
                }
                None => st.filled = 0,
            }
            st.first += 1;
        }
        while st.filled < st.slots.len() && st.slots[st.filled].is_some() {
            st.filled += 1;
        }
    }

    /// The oldest revision a watcher can still start after (changes after it are all kept).
    pub(crate) fn oldest(&self) -> u64 {
        self.state.lock().first - 1
    }

    /// Changes after `after`, in revision order, up to `max` of them and only those whose
    /// frame ends at or below `visible` LSN.
    fn read(&self, after: u64, visible: u64, max: usize) -> Result<Vec<(u64, Arc<Change>)>> {
        let st = self.state.lock();
        if after + 1 < st.first {
            return Err(Error::Compacted {
                requested: after,
                oldest: st.first - 1,
            });
        }
        let mut out = Vec::new();
        let mut i = (after + 1 - st.first) as usize;
        while i < st.filled && out.len() < max {
            let c = st.slots[i].as_ref().expect("filled");
            if c.lsn > visible {
                break;
            }
            out.push((st.first + i as u64, c.clone()));
            i += 1;
        }
        Ok(out)
    }
}

/// The source of the durable LSN, for visibility.
pub(crate) trait Visible: Send + Sync {
    fn visible_lsn(&self) -> u64;
}

/// A reader of a keyspace's changes after a revision, for a key range. Made by
/// [`crate::Keyspace::watch`]. Each change is delivered once, in revision order.
pub struct Watcher {
    log: Arc<Changelog>,
    visible: Arc<dyn Visible>,
    bell: Arc<Bell>,
    lo: Bound<Vec<u8>>,
    hi: Bound<Vec<u8>>,
    /// The last revision delivered (or skipped as outside the range).
    after: u64,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("after", &self.after)
            .finish_non_exhaustive()
    }
}

impl Watcher {
    pub(crate) fn new(
        log: Arc<Changelog>,
        visible: Arc<dyn Visible>,
        bell: Arc<Bell>,
        lo: Bound<Vec<u8>>,
        hi: Bound<Vec<u8>>,
        after: u64,
    ) -> Result<Watcher> {
        let oldest = log.oldest();
        if after < oldest {
            return Err(Error::Compacted {
                requested: after,
                oldest,
            });
        }
        Ok(Watcher {
            log,
            visible,
            bell,
            lo,
            hi,
            after,
        })
    }

    /// The last revision this watcher has passed (delivered, or had nothing in range).
    pub fn revision(&self) -> u64 {
        self.after
    }

    fn in_range(&self, key: &[u8]) -> bool {
        let above = match &self.lo {
            Bound::Included(lo) => key >= lo.as_slice(),
            Bound::Excluded(lo) => key > lo.as_slice(),
            Bound::Unbounded => true,
        };
        let below = match &self.hi {
            Bound::Included(hi) => key <= hi.as_slice(),
            Bound::Excluded(hi) => key < hi.as_slice(),
            Bound::Unbounded => true,
        };
        above && below
    }

    /// The next events in range, waiting up to `timeout` for some (an empty vector when it
    /// passes). Returns at most the events of `max_revisions` revisions. Fails with
    /// [`Error::Compacted`] if this watcher fell so far behind that changes it has not read
    /// were dropped.
    pub fn next(&mut self, timeout: Duration, max_revisions: usize) -> Result<Vec<Event>> {
        let until = Instant::now() + timeout;
        loop {
            let seen = self.bell.count();
            let changes =
                self.log
                    .read(self.after, self.visible.visible_lsn(), max_revisions.max(1))?;
            let mut out = Vec::new();
            for (rev, c) in changes {
                out.extend(c.events.iter().filter(|e| self.in_range(&e.key)).cloned());
                self.after = rev;
            }
            if !out.is_empty() || Instant::now() >= until {
                return Ok(out);
            }
            self.bell.wait(seen, until);
        }
    }
}
