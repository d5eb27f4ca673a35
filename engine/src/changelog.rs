//! The change log of a keyspace: every committed batch, by revision, kept in DRAM for a
//! bounded number of bytes, and the [`Watcher`]s that read it.
//!
//! Changes are kept encoded, back to back, in one ring of bytes per keyspace (a `VecDeque<u8>`)
//! with an index of revisions: one allocation that grows to the history's size and is
//! charged to the budget exactly, instead of several small allocations per change whose
//! freeing in arrival order fragments the heap (measured: 34-72 MiB of resident memory beyond
//! a 31 MiB history).
//!
//! Revisions are taken from an atomic counter while the batch's partition lock is held, so
//! batches of different partitions can reach the change log out of revision order. A change
//! that arrives before a lower revision is held aside until the gap fills, so the ring is in
//! revision order and watchers see revisions in order and none twice. A revision whose batch
//! failed and was rolled back is filled with an empty change.
//!
//! A change becomes visible to watchers once the log holds it durably (its frame's end LSN is
//! at or below the durable LSN), so a watcher never sees a change that a crash could take back.
//! The oldest changes are dropped when the database's change logs together hold more than
//! half of `Config::changelog_bytes` of changes (the rings' spare capacity, at most as much
//! again, takes the other half), down to a slack below that (16 KiB; 1/64 of a limit under
//! 1 MiB), so that a log at its limit trims once per slack of changes rather than on every
//! write. A change counts its encoded bytes and its entry in the index of revisions, so
//! that empty changes (failed writes' revisions) count too. The trim takes from the largest
//! change logs first, whichever keyspace's write passed the limit: a quiet keyspace keeps its
//! history while it holds less than the others, and a busy one cannot be cut to nothing by
//! another's idle history. What they hold is charged to the DRAM budget (within the same slack per keyspace:
//! the shared accounts move in steps, so that writers do not all write the same counters); a
//! watcher that asks for a dropped revision gets [`Error::Compacted`].

use crate::bell::Bell;
use crate::error::{Error, Result};

/// How far a change log's size may drift from what the shared accounts charge for it (at
/// most; a history limit under 1 MiB allows 1/64 of it).
const RECHARGE_SLACK: usize = 16 << 10;
use parking_lot::Mutex;
use std::collections::{BTreeMap, VecDeque};
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

/// The changes of one revision, and the LSN its log frame ends at.
#[derive(Debug)]
pub(crate) struct Change {
    pub(crate) events: Vec<Event>,
    pub(crate) lsn: u64,
}

/// One revision in the ring: its log LSN, and where its encoded events start (a position in
/// the stream of bytes ever appended to the ring) and how long they are.
#[derive(Debug, Clone, Copy)]
struct Entry {
    lsn: u64,
    at: u64,
    len: u32,
}

struct State {
    /// Revision of `index[0]`: every revision from `first` on is in `index` (in order,
    /// none missing) or still to come.
    first: u64,
    index: VecDeque<Entry>,
    /// The encoded events of `index`, back to back; `ring[0]` is stream position `ring_at`.
    ring: VecDeque<u8>,
    ring_at: u64,
    /// Changes that arrived before a revision below them (another partition's commit still
    /// under way): held here until the gap fills.
    pending: BTreeMap<u64, (u64, Vec<u8>)>,
    /// Bytes charged to the database's totals: held, and content (as `content_now` was
    /// when last charged).
    charged: usize,
    content: usize,
}

impl State {
    /// What the changes held count towards the limit: their encoded events and their index
    /// entries.
    fn content_now(&self) -> usize {
        self.ring.len() + self.index.len() * ENTRY_BYTES
    }

    fn next(&self) -> u64 {
        self.first + self.index.len() as u64
    }

    fn append(&mut self, lsn: u64, bytes: &[u8]) {
        let at = self.ring_at + self.ring.len() as u64;
        self.ring.extend(bytes);
        self.index.push_back(Entry {
            lsn,
            at,
            len: bytes.len() as u32,
        });
    }

    /// Append the held changes that now follow in revision order.
    fn append_held(&mut self) {
        while let Some((lsn, b)) = {
            let n = self.next();
            self.pending.remove(&n)
        } {
            self.append(lsn, &b);
        }
    }

    fn pop(&mut self) {
        if let Some(e) = self.index.pop_front() {
            self.ring.drain(..e.len as usize);
            self.ring_at += u64::from(e.len);
            self.first += 1;
        }
    }

    /// What this change log holds in DRAM: the ring's and index's allocations, and the held
    /// changes.
    fn size(&self) -> usize {
        self.ring.capacity()
            + self.index.capacity() * std::mem::size_of::<Entry>()
            + self
                .pending
                .values()
                .map(|p| p.1.capacity() + 48)
                .sum::<usize>()
    }
}

/// What one change counts towards the limit besides its encoded events: its entry in the
/// index of revisions.
const ENTRY_BYTES: usize = std::mem::size_of::<Entry>();

/// The database-wide counters every change log adds to, and the logs, for trimming.
#[derive(Debug, Clone, Default)]
pub(crate) struct Accounts {
    /// Change bytes held by all change logs (encoded events and index entries): trimmed to
    /// the limit.
    pub(crate) content: Arc<AtomicUsize>,
    /// DRAM all change logs hold (their allocations): reported.
    pub(crate) held: Arc<AtomicUsize>,
    /// The DRAM the database charges to its partitions' shares, to which `held` is added.
    pub(crate) overhead: Arc<AtomicUsize>,
    /// Every change log made with these accounts (dropped ones are pruned as found).
    pub(crate) logs: Arc<Mutex<Vec<std::sync::Weak<Changelog>>>>,
    /// Held by the one writer trimming; the others pass (it trims for them).
    pub(crate) trimming: Arc<Mutex<()>>,
}

impl Accounts {
    /// Drop the oldest changes of the largest change logs until all of them together hold
    /// at most `limit` less a slack, as they stood when it started (what other writers add
    /// meanwhile is theirs to trim: the caller holds a partition lock, so its work is
    /// bounded). The caller holds no change log's lock. A log's newest change is never
    /// dropped.
    fn trim(&self, limit: usize) {
        let Some(_one) = self.trimming.try_lock() else {
            return;
        };
        let slack = RECHARGE_SLACK.min(limit / 64);
        let target = limit.saturating_sub(slack);
        let mut logs: Vec<(Arc<Changelog>, bool)> = {
            let mut all = self.logs.lock();
            all.retain(|w| w.strong_count() > 0);
            all.iter()
                .filter_map(std::sync::Weak::upgrade)
                .map(|l| (l, true))
                .collect()
        };
        let mut excess = self.content.load(Relaxed).saturating_sub(target);
        while excess > 0 {
            // The largest log that can still give, and what the next largest holds.
            // Sizes read once: other writers change them meanwhile, and a sort whose keys
            // change under it may panic.
            let mut by_size: Vec<(usize, usize)> = (0..logs.len())
                .filter(|&i| logs[i].1)
                .map(|i| (logs[i].0.content_now.load(Relaxed), i))
                .collect();
            by_size.sort_unstable_by(|a, b| b.cmp(a));
            let Some(&(_, v)) = by_size.first() else {
                return; // every log is down to its newest change
            };
            let floor = by_size.get(1).map_or(0, |&(size, _)| size);
            let log = logs[v].0.clone();
            let mut st = log.state.lock();
            // At least a slack's worth (or the excess) at a time, then on while this log is
            // still the largest.
            let (step, mut dropped) = (excess.min(slack).max(1), 0);
            while excess > 0 && st.index.len() > 1 && (dropped < step || st.content_now() > floor) {
                let len = st.index.front().map_or(0, |e| e.len as usize) + ENTRY_BYTES;
                st.pop();
                excess = excess.saturating_sub(len);
                dropped += len;
            }
            if dropped == 0 {
                logs[v].1 = false;
            }
            // A ring whose content shrank a lot gives memory back.
            if st.ring.capacity() > 4 * st.ring.len() && st.ring.capacity() > 4096 {
                let keep = 2 * st.ring.len();
                st.ring.shrink_to(keep);
            }
            log.recharge(&mut st, true);
        }
    }
}

/// A keyspace's change log. See the module docs.
pub(crate) struct Changelog {
    state: Mutex<State>,
    accounts: Accounts,
    /// Limit of `accounts.content`.
    limit: usize,
    bell: Arc<Bell>,
    /// Live [`Watcher`]s of this log. A change rings the bell only while there is one: the
    /// bell's word is shared by every writer of every keyspace, and with nobody watching,
    /// ringing it on every write only moved its cache line between the cores. No ring is
    /// lost: a watcher counts itself before it first reads the log, and reads the log under
    /// the lock a writer inserts under, so a writer that inserts after that read sees the
    /// count (the lock orders them), and one that inserts before it is seen by the read.
    watchers: AtomicUsize,
    /// The content this log last charged, readable without its lock, for the trim to find
    /// the largest logs.
    content_now: AtomicUsize,
}

impl std::fmt::Debug for Changelog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.state.lock();
        f.debug_struct("Changelog")
            .field("first", &st.first)
            .field("revisions", &st.index.len())
            .finish_non_exhaustive()
    }
}

fn encode(events: &[Event], out: &mut Vec<u8>) {
    for e in events {
        encode_event(e.kind, &e.key, &e.value, e.create_revision, e.version, out);
    }
}

/// Append one event's encoding to `out` (the layout `decode` reads), from borrowed parts: a
/// single put writes its change without building an [`Event`].
pub(crate) fn encode_event(
    kind: EventKind,
    key: &[u8],
    value: &[u8],
    create_revision: u64,
    version: u64,
    out: &mut Vec<u8>,
) {
    out.push(u8::from(kind == EventKind::Delete));
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
    out.extend_from_slice(&create_revision.to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
}

/// Decode the events of revision `rev` written by `encode`, those whose key `keep` takes
/// (the others are passed over without copying their keys or values).
fn decode(mut b: &[u8], rev: u64, keep: &dyn Fn(&[u8]) -> bool, out: &mut Vec<Event>) {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> &'a [u8] {
        let (h, t) = b.split_at(n);
        *b = t;
        h
    }
    let u32_of = |s: &[u8]| u32::from_le_bytes(s.try_into().expect("4 bytes")) as usize;
    let u64_of = |s: &[u8]| u64::from_le_bytes(s.try_into().expect("8 bytes"));
    while !b.is_empty() {
        let delete = take(&mut b, 1)[0] == 1;
        let kl = u32_of(take(&mut b, 4));
        let key = take(&mut b, kl);
        let vl = u32_of(take(&mut b, 4));
        let value = take(&mut b, vl);
        let create_revision = u64_of(take(&mut b, 8));
        let version = u64_of(take(&mut b, 8));
        if !keep(key) {
            continue;
        }
        let (key, value) = (key.to_vec(), value.to_vec());
        out.push(Event {
            kind: if delete {
                EventKind::Delete
            } else {
                EventKind::Put
            },
            key,
            value,
            mod_revision: rev,
            create_revision,
            version,
        });
    }
}

impl Changelog {
    /// A change log whose next change is revision `next`, counted in `accounts` (which trim
    /// it with the others made with them).
    pub(crate) fn new(next: u64, accounts: Accounts, limit: usize, bell: Arc<Bell>) -> Arc<Self> {
        let log = Arc::new(Changelog {
            state: Mutex::new(State {
                first: next,
                index: VecDeque::new(),
                ring: VecDeque::new(),
                ring_at: 0,
                pending: BTreeMap::new(),
                charged: 0,
                content: 0,
            }),
            accounts,
            limit,
            bell,
            watchers: AtomicUsize::new(0),
            content_now: AtomicUsize::new(0),
        });
        log.accounts.logs.lock().push(Arc::downgrade(&log));
        log
    }

    /// Bring the database's totals up to date with this log's size.
    /// Bring the shared accounts up to this change log's size. They are shared by every
    /// keyspace and read by the budget, so a write moves them only once its change log has
    /// drifted by [`RECHARGE_SLACK`] bytes (`force` moves them whatever the drift): the
    /// budget may lag a change log by that much.
    fn recharge(&self, st: &mut State, force: bool) {
        fn adjust(a: &AtomicUsize, from: usize, to: usize) {
            if to >= from {
                a.fetch_add(to - from, Relaxed);
            } else {
                a.fetch_sub(from - to, Relaxed);
            }
        }
        let held = st.size();
        let content = st.content_now();
        // A small history (a small budget) moves the accounts in proportionally small steps.
        let slack = RECHARGE_SLACK.min(self.limit / 64);
        if !force && held.abs_diff(st.charged) < slack && content.abs_diff(st.content) < slack {
            return;
        }
        adjust(&self.accounts.held, st.charged, held);
        adjust(&self.accounts.overhead, st.charged, held);
        st.charged = held;
        adjust(&self.accounts.content, st.content, content);
        st.content = content;
        self.content_now.store(content, Relaxed);
    }

    /// Record revision `rev`'s change (an empty one for a rolled-back revision).
    pub(crate) fn insert(&self, rev: u64, change: Change) {
        let mut bytes = Vec::new();
        encode(&change.events, &mut bytes);
        self.insert_encoded(rev, change.lsn, &bytes);
    }

    /// Fill revision `rev` with an empty change: a revision that was taken but applied nothing
    /// (a failed write, or one a recovery found no log frame for), so that later revisions
    /// are still delivered in order.
    pub(crate) fn insert_empty(&self, rev: u64) {
        self.insert_encoded(rev, 0, &[]);
    }

    /// [`Changelog::insert`] of a change already encoded (by [`encode_event`]).
    pub(crate) fn insert_encoded(&self, rev: u64, lsn: u64, bytes: &[u8]) {
        let mut st = self.state.lock();
        let next = st.next();
        if rev < next {
            return; // dropped already (a bulk load compacted past it)
        }
        if rev > next {
            // Never over a change already held: only a write that unwound fills its own
            // revision with an empty one, which must not replace what it held aside.
            st.pending
                .entry(rev)
                .or_insert_with(|| (lsn, bytes.to_vec()));
        } else {
            st.append(lsn, bytes);
            st.append_held();
        }
        // Once all change logs together pass their limit, drop the oldest changes of the
        // largest, down to a slack below it: the logs then trim, and move the shared
        // accounts, once per slack's worth of writes instead of on every write (where every
        // writer wrote the accounts' shared cache lines).
        self.recharge(&mut st, false);
        drop(st);
        if self.watchers.load(Relaxed) > 0 {
            self.bell.ring();
        }
        if self.accounts.content.load(Relaxed) > self.limit {
            self.accounts.trim(self.limit);
        }
    }

    /// Drop every change up to and including `rev` (a bulk load made them meaningless to
    /// replay: a watcher must read the keyspace again).
    pub(crate) fn compact_through(&self, rev: u64) {
        let mut st = self.state.lock();
        while st.first <= rev && !st.index.is_empty() {
            st.pop();
        }
        if st.first <= rev {
            st.first = rev + 1;
            st.pending = st.pending.split_off(&(rev + 1));
        }
        st.append_held();
        self.recharge(&mut st, true);
        drop(st);
        // A watcher waiting now learns at once that it must read the keyspace again.
        if self.watchers.load(Relaxed) > 0 {
            self.bell.ring();
        }
    }

    /// The oldest revision a watcher can still start after (changes after it are all kept).
    pub(crate) fn oldest(&self) -> u64 {
        self.state.lock().first - 1
    }

    /// Changes after `after`, in revision order, up to `max` of them and only those whose
    /// frame ends at or below `visible` LSN, each with its events whose key `keep` takes
    /// (often none: the revision is still returned, so that the reader moves past it). Only
    /// the events kept are copied out, under the lock that writers take.
    fn read(
        &self,
        after: u64,
        visible: u64,
        max: usize,
        keep: &dyn Fn(&[u8]) -> bool,
    ) -> Result<Vec<(u64, Vec<Event>)>> {
        let st = self.state.lock();
        let from = after.saturating_add(1);
        if from < st.first {
            return Err(Error::Compacted {
                requested: after,
                oldest: st.first - 1,
            });
        }
        let mut out = Vec::new();
        let mut i = usize::try_from(from - st.first).unwrap_or(usize::MAX);
        let mut buf = Vec::new();
        while i < st.index.len() && out.len() < max {
            let e = st.index[i];
            if e.lsn > visible {
                break;
            }
            let from = (e.at - st.ring_at) as usize;
            buf.clear();
            buf.extend(st.ring.range(from..from + e.len as usize));
            let mut events = Vec::new();
            let rev = st.first + i as u64;
            decode(&buf, rev, keep, &mut events);
            out.push((rev, events));
            i += 1;
        }
        Ok(out)
    }
}

/// The source of the durable LSN, for visibility.
pub(crate) trait Visible: Send + Sync {
    fn visible_lsn(&self) -> u64;
    /// Why the database was poisoned, if it was: nothing more will become visible.
    fn poisoned(&self) -> Option<String> {
        None
    }
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

impl Drop for Watcher {
    fn drop(&mut self) {
        self.log.watchers.fetch_sub(1, Relaxed);
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
        // Counted before its first read of the log (see `Changelog::watchers`).
        log.watchers.fetch_add(1, Relaxed);
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
    /// were dropped, and with [`Error::Poisoned`] once it has read every change that became
    /// visible before the database was poisoned (no more will, but for a flush, or without
    /// a log a write, already under way at that moment: a poisoned database must be
    /// reopened, and its watchers read again from their revision).
    ///
    /// Revisions out of range (other namespaces' writes) do not make it wait: while there is
    /// history to read it reads on, page after page, until it finds events in range or the
    /// timeout passes, and at least [`Watcher::SCAN_PAGES`] pages even with no time to wait.
    /// So an empty answer means nothing in range came in time, or (with a short timeout) that
    /// a long stretch of others' revisions was passed over: [`Watcher::revision`] moved.
    pub fn next(&mut self, timeout: Duration, max_revisions: usize) -> Result<Vec<Event>> {
        // Capped at about 136 years, so that `Duration::MAX` means "until something comes"
        // instead of overflowing the clock.
        let until = Instant::now() + timeout.min(Duration::from_secs(u64::from(u32::MAX)));
        let max = max_revisions.max(1);
        let mut pages = 0;
        loop {
            let seen = self.bell.count();
            let changes = self.log.read(
                self.after,
                self.visible.visible_lsn(),
                max,
                &|k: &[u8]| self.in_range(k),
            )?;
            // A full page: more history may be waiting right behind it.
            let full = changes.len() >= max;
            let mut out = Vec::new();
            for (rev, events) in changes {
                out.extend(events);
                self.after = rev;
            }
            if !out.is_empty() {
                return Ok(out);
            }
            pages += 1;
            // Everything visible is read, and a poisoned database makes nothing more durable:
            // say so rather than wait for changes that will never be visible.
            if !full {
                if let Some(why) = self.visible.poisoned() {
                    return Err(Error::Poisoned(why));
                }
            }
            let late = Instant::now() >= until;
            if full && (!late || pages < Self::SCAN_PAGES) {
                continue;
            }
            if late {
                return Ok(out);
            }
            self.bell.wait(seen, until);
        }
    }

    /// Pages of history [`Watcher::next`] reads even when its timeout has passed, looking for
    /// events in range.
    pub const SCAN_PAGES: usize = 16;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read copies out only the events its reader keeps, and still returns every revision
    /// (empty where nothing is kept), so that the reader moves past the others.
    #[test]
    fn a_read_copies_only_the_events_kept_and_passes_the_others() {
        let log = Changelog::new(1, Accounts::default(), 1 << 20, Arc::new(Bell::default()));
        let mut enc = Vec::new();
        for (rev, keys) in [
            (1u64, &[&b"a/1"[..], b"b/1"][..]),
            (2, &[b"b/2"]),
            (3, &[b"a/3"]),
        ] {
            enc.clear();
            for k in keys {
                encode_event(EventKind::Put, k, &[9; 1000], rev, 1, &mut enc);
            }
            log.insert_encoded(rev, 0, &enc);
        }
        let got = log
            .read(0, u64::MAX, 10, &|k| k.starts_with(b"a/"))
            .unwrap();
        let revs: Vec<(u64, Vec<&[u8]>)> = got
            .iter()
            .map(|(r, ev)| (*r, ev.iter().map(|e| &e.key[..]).collect()))
            .collect();
        assert_eq!(
            revs,
            vec![(1, vec![&b"a/1"[..]]), (2, vec![]), (3, vec![&b"a/3"[..]])]
        );
        assert!(got.iter().flat_map(|g| &g.1).all(|e| e.value == [9; 1000]));
    }

    /// A log at its limit stays within it (the charged content never passes the limit, the
    /// ring never passes it by more than the slack) and trims in steps of about the slack,
    /// not one change per write.
    #[test]
    fn a_log_at_its_limit_trims_in_steps_and_stays_within_it() {
        let accounts = Accounts::default();
        let limit = 64 << 10;
        let slack = RECHARGE_SLACK.min(limit / 64);
        let log = Changelog::new(1, accounts.clone(), limit, Arc::new(Bell::default()));
        let (mut enc, mut trims, mut oldest) = (Vec::new(), 0, log.oldest());
        let writes = 5000u64;
        for rev in 1..=writes {
            enc.clear();
            encode_event(EventKind::Put, b"key", &[7; 100], rev, 1, &mut enc);
            log.insert_encoded(rev, 0, &enc);
            assert!(accounts.content.load(Relaxed) <= limit, "rev {rev}");
            assert!(log.state.lock().ring.len() <= limit + slack, "rev {rev}");
            if log.oldest() != oldest {
                trims += 1;
                oldest = log.oldest();
            }
        }
        // A change counts its encoding and its index entry.
        let per_change = (enc.len() + ENTRY_BYTES) as u64;
        let full = limit as u64 / per_change;
        let kept = writes - oldest;
        let least = (limit - 2 * slack) as u64 / per_change;
        assert!(
            kept >= least && kept <= full,
            "{kept} changes kept, {least}..={full}"
        );
        // A trim drops at least the slack's worth of changes.
        let max_trims = (writes - full) / (slack as u64 / per_change) + 1;
        assert!(
            trims > 0 && trims <= max_trims,
            "{trims} trims, at most {max_trims}"
        );
    }

    /// Empty changes (revisions of failed writes) count towards the limit by their index
    /// entries: a stream of them alone is trimmed like any change, where it used to grow the
    /// index without end (nothing of the ring passed the limit).
    #[test]
    fn empty_changes_count_towards_the_limit() {
        let accounts = Accounts::default();
        let limit = 64 << 10;
        let slack = RECHARGE_SLACK.min(limit / 64);
        let log = Changelog::new(1, accounts.clone(), limit, Arc::new(Bell::default()));
        for rev in 1..=100_000 {
            log.insert_empty(rev);
        }
        let held = log.state.lock().index.len() * ENTRY_BYTES;
        assert!(held <= limit + slack, "{held} bytes of index entries");
        assert!(accounts.content.load(Relaxed) <= limit);
        assert!(log.oldest() > 90_000, "oldest {}", log.oldest());
    }

    /// Several change logs share one limit, and a trim takes from the largest first, not
    /// from the log whose write passed the limit: a quiet log's history is trimmed for a
    /// busy one's, down to equal shares, and the busy one keeps its own.
    #[test]
    fn a_trim_takes_from_the_largest_log_first() {
        let accounts = Accounts::default();
        let limit = 512 << 10;
        let bell = Arc::new(Bell::default());
        let a = Changelog::new(1, accounts.clone(), limit, bell.clone());
        let b = Changelog::new(1, accounts.clone(), limit, bell);
        let mut enc = Vec::new();
        encode_event(EventKind::Put, b"key", &[7; 1000], 1, 1, &mut enc);
        for rev in 1..=700 {
            a.insert_encoded(rev, 0, &enc);
        }
        let a_kept = 700 - a.oldest();
        assert!(a_kept < 700, "a was trimmed on its own");
        for rev in 1..=200 {
            b.insert_encoded(rev, 0, &enc);
        }
        assert_eq!(b.oldest(), 0, "b kept every change");
        let a_now = 700 - a.oldest();
        assert!(
            a_now + 200 <= a_kept + 20,
            "a gave up room: {a_kept} -> {a_now}"
        );
        // Writes to b go on: a is trimmed until the two hold about as much, and then both.
        for rev in 201..=1000 {
            b.insert_encoded(rev, 0, &enc);
        }
        let (a_end, b_end) = (700 - a.oldest(), 1000 - b.oldest());
        // Equal shares, within a trim's step (the slack: 8 KiB, about 8 of these changes).
        assert!(a_end.abs_diff(b_end) <= 10, "a {a_end}, b {b_end}");
        assert!(a_end >= 1 && b_end < 1000, "a {a_end}, b {b_end}");
        assert!(accounts.content.load(Relaxed) <= limit);
    }

    /// A read after the largest revision there is finds nothing (it overflowed in `after +
    /// 1`: a debug build panicked, a release build answered `Compacted`).
    #[test]
    fn a_read_after_the_last_possible_revision_is_empty() {
        let log = Changelog::new(1, Accounts::default(), 1 << 20, Arc::new(Bell::default()));
        log.insert_empty(1);
        assert!(log
            .read(u64::MAX, u64::MAX, 10, &|_| true)
            .unwrap()
            .is_empty());
    }

    /// An empty change for a revision never replaces the change already held aside for it
    /// (a write that unwinds fills its own revision, perhaps after parking its change).
    #[test]
    fn an_empty_fill_keeps_a_change_held_aside() {
        let log = Changelog::new(1, Accounts::default(), 1 << 20, Arc::new(Bell::default()));
        let mut enc = Vec::new();
        encode_event(EventKind::Put, b"k", b"v", 2, 1, &mut enc);
        log.insert_encoded(2, 0, &enc); // held: revision 1 has not come
        log.insert_empty(2);
        log.insert_empty(1);
        let got = log.read(0, u64::MAX, 10, &|_| true).unwrap();
        let revs: Vec<(u64, usize)> = got.iter().map(|(r, e)| (*r, e.len())).collect();
        assert_eq!(revs, [(1, 0), (2, 1)]);
    }
}
