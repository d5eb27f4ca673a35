//! How the DRAM budget is split over the partitions. Each partition keeps its index, buffers
//! and frames within its share (partition.rs); the shares and a pool of bytes no partition
//! holds add up to the budget left after the heat policy's table, so the partitions together
//! never pass the budget. Shares follow need: every partition first gets what it cannot give
//! up (its index, its buffers, the fewest frames it can work with, and the room its index
//! needs to grow when it is nearly full), and the rest is split evenly over the partitions
//! that are short of frames (they demote pages to make room), while the others keep what they
//! use and a little more. When the needs do not all fit with the room the indexes need soon,
//! they are shared out without it. So one namespace of the metadata model, which lives in one
//! partition, can grow its index past `budget / partitions` while the other partitions have
//! room to spare, and a skewed load gets most of the frames.
//!
//! Invariants:
//! - `pool + Σ share <= left` at every point. A share grows only by bytes taken from the pool
//!   first, and shrinks only under its partition's lock, after the partition's frames fit the
//!   smaller share; the bytes go to the pool after that.
//! - A partition's lock holder may read a share that has grown since; never one that has
//!   shrunk since (a share shrinks only under its lock), so it never allocates past it.
//! - Rebalancing never waits for a partition lock without a time limit, and never locks the
//!   partition of the thread that asked for it: a writer that holds its own lock (and in a
//!   batch, others) can rebalance without a deadlock.

use crate::error::Result;
use crate::partition::Partition;
use crossbeam_utils::CachePadded;
use parking_lot::Mutex;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::Duration;

/// What a partition publishes for rebalancing (written by its lock holder, read by anyone).
#[derive(Default)]
pub(crate) struct Cell {
    /// Bytes of the budget the partition may hold.
    share: AtomicUsize,
    /// Bytes it cannot give up: index and buffers, without frames.
    pinned: AtomicUsize,
    /// Bytes it is about to need: the index's next table once the index is nearly full, or
    /// the growth its writer is asking for. Dropped from the needs when they do not all fit.
    soon: AtomicUsize,
    /// Bytes of frames it holds.
    frames: AtomicUsize,
    /// Pages it has demoted, ever (a change since the last rebalance: short of frames).
    demoted: AtomicU64,
}

/// The budget's split. One per database, in `partition::Shared`.
pub(crate) struct Shares {
    cells: Box<[CachePadded<Cell>]>,
    /// Bytes no partition holds.
    pool: AtomicUsize,
    /// What the shares and the pool add up to.
    left: usize,
    /// Largest share a partition may hold (its frame arena is sized for it).
    cap: usize,
    page: usize,
    /// Bytes moved into shares from the pool, ever (a statistic).
    moved: AtomicU64,
    /// One rebalance at a time; holds each partition's demotion count at the last one.
    last: Mutex<Vec<u64>>,
}

/// Fewest frames a partition can work with (see partition.rs).
const MIN_FRAMES: usize = crate::partition::MIN_FRAMES;

/// How long a rebalance waits for a partition's lock, or a writer for a rebalance in progress.
pub(crate) const PATIENCE: Duration = Duration::from_millis(50);

/// One partition's demand, for [`targets`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Demand {
    /// Bytes it must hold whatever happens (pinned bytes plus the fewest frames).
    pub(crate) need: usize,
    /// The fewest frames' bytes, part of `need`.
    pub(crate) min_frames: usize,
    /// Bytes of frames it holds.
    pub(crate) frames: usize,
    /// Short of frames: it has demoted pages since the last rebalance, or is at its quota.
    pub(crate) pressed: bool,
}

/// Shares for `demands` out of `left` bytes, none above `cap`. Every partition gets its need;
/// the rest is filled up like water, each partition rising until it reaches its limit (a
/// pressed partition: `cap`; another: room for the frames it holds plus `slack`, where its
/// fewest frames, already in its need, count towards them) or the rest runs out;
/// what is left then is spread evenly up to `cap`. `None` when the needs alone pass `left` or
/// one need passes `cap` (nothing can be done then).
pub(crate) fn targets(
    left: usize,
    cap: usize,
    slack: usize,
    demands: &[Demand],
) -> Option<Vec<usize>> {
    let needs = demands
        .iter()
        .try_fold(0usize, |a, d| a.checked_add(d.need))?;
    if needs > left || demands.iter().any(|d| d.need > cap) {
        return None;
    }
    let mut t: Vec<usize> = demands.iter().map(|d| d.need).collect();
    let mut rest = left - needs;
    let limit = |i: usize| -> usize {
        let d = &demands[i];
        if d.pressed {
            cap
        } else {
            let frames = d.frames.saturating_add(slack).saturating_sub(d.min_frames);
            d.need.saturating_add(frames).min(cap)
        }
    };
    // Each pass either brings a partition to its limit or leaves less than one byte per open
    // partition, so there are at most `demands.len() + 1` passes per fill.
    for limit_of in [&limit as &dyn Fn(usize) -> usize, &|_| cap] {
        loop {
            let open: Vec<usize> = (0..t.len()).filter(|&i| t[i] < limit_of(i)).collect();
            if open.is_empty() {
                break;
            }
            let each = rest / open.len();
            if each == 0 {
                break;
            }
            for i in open {
                let add = each.min(limit_of(i) - t[i]);
                t[i] += add;
                rest -= add;
            }
        }
    }
    Some(t)
}

impl Shares {
    /// `n` shares of `left / n` each, none to grow past `cap`.
    pub(crate) fn new(left: usize, n: usize, cap: usize, page: usize) -> Shares {
        let n = n.max(1);
        let even = left / n;
        Shares {
            cells: (0..n)
                .map(|_| {
                    let c = Cell::default();
                    c.share.store(even, Relaxed);
                    CachePadded::new(c)
                })
                .collect(),
            pool: AtomicUsize::new(left - even * n),
            left,
            cap: cap.max(even),
            page,
            moved: AtomicU64::new(0),
            last: Mutex::new(vec![0; n]),
        }
    }

    /// The largest share a partition may hold.
    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    /// Partition `i`'s share now.
    pub(crate) fn share(&self, i: usize) -> usize {
        self.cells[i].share.load(Acquire)
    }

    /// Bytes moved into shares from the pool so far.
    pub(crate) fn moved(&self) -> u64 {
        self.moved.load(Relaxed)
    }

    /// Partition `i`'s lock holder: what it holds now, and what it is about to need.
    pub(crate) fn publish(
        &self,
        i: usize,
        pinned: usize,
        soon: usize,
        frames: usize,
        demoted: u64,
    ) {
        let c = &self.cells[i];
        c.pinned.store(pinned, Relaxed);
        c.soon.store(soon, Relaxed);
        c.frames.store(frames, Relaxed);
        c.demoted.store(demoted, Relaxed);
    }

    /// Take up to `bytes` from the pool into partition `i`'s share, never past `cap`.
    /// Returns what was added.
    pub(crate) fn grant(&self, i: usize, bytes: usize) -> usize {
        let want = bytes.min(self.cap.saturating_sub(self.share(i)));
        let mut got = 0;
        let _ = self.pool.fetch_update(AcqRel, Acquire, |p| {
            got = p.min(want);
            Some(p - got)
        });
        if got == 0 {
            return 0;
        }
        // Two grants may race for the same room below the cap: each adds what is left of it,
        // and what does not fit goes back to the pool.
        let mut added = 0;
        let _ = self.cells[i].share.fetch_update(AcqRel, Acquire, |s| {
            added = got.min(self.cap.saturating_sub(s));
            Some(s + added)
        });
        if added < got {
            self.pool.fetch_add(got - added, AcqRel);
        }
        self.moved.fetch_add(added as u64, Relaxed);
        added
    }

    /// Partition `i`'s lock holder, its frames fitting `to`: lower its share to `to` and
    /// put the difference in the pool.
    pub(crate) fn lower(&self, i: usize, to: usize) {
        let mut was = 0;
        let _ = self.cells[i].share.fetch_update(AcqRel, Acquire, |s| {
            was = s;
            Some(to.min(s))
        });
        self.pool.fetch_add(was.saturating_sub(to), AcqRel);
    }

    /// Move shares toward [`targets`]: lower the shares above theirs (each under its
    /// partition's lock, draining pages when its frames do not fit), then raise those below
    /// from the pool. `caller` is the partition whose lock the calling thread holds: it is
    /// never locked here, counts as pressed, and is raised first, by any amount.
    pub(crate) fn rebalance(
        &self,
        parts: &[Partition],
        caller: Option<usize>,
        patient: bool,
    ) -> Result<()> {
        let Some(mut last) = self.last.try_lock_for(PATIENCE) else {
            return Ok(()); // someone else is at it
        };
        let n = self.cells.len().min(parts.len());
        let demands = |with_soon: bool| -> Vec<Demand> {
            (0..n)
                .map(|i| {
                    let c = &self.cells[i];
                    let pinned = c.pinned.load(Relaxed);
                    let soon = if with_soon { c.soon.load(Relaxed) } else { 0 };
                    let frames = c.frames.load(Relaxed);
                    let room = self.share(i).saturating_sub(pinned + soon);
                    Demand {
                        need: pinned + soon + MIN_FRAMES * self.page,
                        min_frames: MIN_FRAMES * self.page,
                        frames,
                        // Short of frames: it demoted since the last look, or its frames
                        // are within a page of its quota.
                        pressed: caller == Some(i)
                            || c.demoted.load(Relaxed) != last[i]
                            || frames + self.page >= room,
                    }
                })
                .collect()
        };
        let even = self.left / n.max(1);
        let slack = self.page + even / 32;
        // When the needs with what partitions are about to need do not all fit (a partition
        // refused at its index's limit keeps asking for its next table), share out by what
        // they hold: otherwise nothing would ever move again.
        let Some(t) = targets(self.left, self.cap, slack, &demands(true))
            .or_else(|| targets(self.left, self.cap, slack, &demands(false)))
        else {
            return Ok(()); // what they hold alone passes the budget: nothing to move
        };
        for (i, l) in last.iter_mut().enumerate().take(n) {
            *l = self.cells[i].demoted.load(Relaxed);
        }
        // Small differences are left alone (shares would otherwise move back and forth),
        // unless a writer is waiting for room.
        let threshold = (2 * self.page).max(even / 64);
        let shrink_over = if caller.is_some() { 0 } else { threshold };
        // A background rebalance lowers a share by at most this much a round, so that the
        // drains it may cost hold a partition's lock (and `last`, which a writer short of
        // room may be waiting for) only briefly; a writer's takes what it needs.
        let step = (4 * self.page).max(even / 8);
        let mut first_err = None;
        for (i, (&ti, part)) in t.iter().zip(parts).enumerate() {
            let s = self.share(i);
            if caller == Some(i) || s <= ti + shrink_over {
                continue;
            }
            // A writer asking holds locks of its own: it waits for no other, or (`patient`,
            // its last try before failing) for each no longer than PATIENCE, so that two
            // writers each waiting for the other's lock cost a stall, not a deadlock.
            let (wait, to) = if caller.is_some() {
                (patient.then_some(PATIENCE), ti)
            } else {
                (Some(PATIENCE), ti.max(s.saturating_sub(step)))
            };
            if let Err(e) = part.try_shrink_share(to, wait) {
                first_err.get_or_insert(e);
            }
            // Pages it demoted to shrink are not a sign it is short of frames.
            last[i] = self.cells[i].demoted.load(Relaxed);
        }
        if let Some(c) = caller {
            self.grant(c, t[c].saturating_sub(self.share(c)));
        }
        for (i, &ti) in t.iter().enumerate() {
            let s = self.share(i);
            if caller != Some(i) && ti > s + threshold {
                self.grant(i, ti - s);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: usize = 1 << 20;

    fn d(need: usize, frames: usize, pressed: bool) -> Demand {
        Demand {
            need,
            min_frames: 0,
            frames,
            pressed,
        }
    }

    /// An idle partition's fewest frames count towards the frames it holds and its slack:
    /// it is not given room for both.
    #[test]
    fn an_idle_partition_keeps_its_fewest_frames_not_more() {
        let idle = |frames| Demand {
            need: 12 * MIB,
            min_frames: 6 * MIB,
            frames,
            pressed: false,
        };
        let hot = d(12 * MIB, 50 * MIB, true);
        let t = targets(
            128 * MIB,
            128 * MIB,
            3 * MIB,
            &[hot, idle(2 * MIB), idle(2 * MIB)],
        )
        .unwrap();
        assert_eq!(t, vec![104 * MIB, 12 * MIB, 12 * MIB]);
        // One holding more frames than its fewest keeps them and the slack.
        let t = targets(
            128 * MIB,
            128 * MIB,
            3 * MIB,
            &[hot, idle(10 * MIB), idle(0)],
        )
        .unwrap();
        assert_eq!(t, vec![97 * MIB, 19 * MIB, 12 * MIB]);
    }

    #[test]
    fn even_when_every_partition_is_pressed_alike() {
        let t = targets(400 * MIB, 400 * MIB, 4 * MIB, &[d(10 * MIB, 0, true); 4]).unwrap();
        assert_eq!(t, vec![100 * MIB; 4]);
    }

    #[test]
    fn a_large_index_is_paid_for_before_frames_are_split() {
        // Partition 0's index needs 250 MiB: more than an even quarter of 400 MiB.
        let ds = [
            d(250 * MIB, 0, true),
            d(10 * MIB, 0, true),
            d(10 * MIB, 0, true),
            d(10 * MIB, 0, true),
        ];
        let t = targets(400 * MIB, 400 * MIB, 4 * MIB, &ds).unwrap();
        assert_eq!(t, vec![280 * MIB, 40 * MIB, 40 * MIB, 40 * MIB]);
    }

    #[test]
    fn idle_partitions_keep_what_they_use_and_the_pressed_one_gets_the_rest() {
        let ds = [
            d(10 * MIB, 90 * MIB, true),
            d(10 * MIB, 6 * MIB, false),
            d(10 * MIB, 0, false),
            d(10 * MIB, 0, false),
        ];
        let t = targets(400 * MIB, 400 * MIB, 4 * MIB, &ds).unwrap();
        assert_eq!(t[1], 20 * MIB);
        assert_eq!(t[2], 14 * MIB);
        assert_eq!(t[3], 14 * MIB);
        assert_eq!(t[0], 400 * MIB - 48 * MIB);
    }

    #[test]
    fn the_cap_holds_and_the_rest_is_spread() {
        let ds = [d(10 * MIB, 0, true), d(10 * MIB, 0, false)];
        let t = targets(400 * MIB, 250 * MIB, 4 * MIB, &ds).unwrap();
        assert_eq!(t, vec![250 * MIB, 150 * MIB]);
    }

    #[test]
    fn needs_past_the_budget_or_the_cap_give_nothing() {
        assert_eq!(
            targets(100, 100, 1, &[d(60, 0, true), d(50, 0, true)]),
            None
        );
        assert_eq!(targets(100, 50, 1, &[d(60, 0, true), d(10, 0, true)]), None);
        assert_eq!(
            targets(usize::MAX, usize::MAX, 1, &[d(usize::MAX, 0, true); 2]),
            None
        );
    }

    /// Grants racing for one share never take it past the cap, lowering never loses bytes,
    /// and the pool and the shares always add up to what they started as.
    #[test]
    fn racing_grants_and_lowers_keep_the_cap_and_the_sum() {
        let shares = std::sync::Arc::new(Shares::new(64 * MIB, 4, 20 * MIB, MIB));
        // Free 4 MiB of each share into the pool (as a partition's lock holder would).
        for i in 0..4 {
            shares.lower(i, 12 * MIB);
        }
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let shares = shares.clone();
                std::thread::spawn(move || {
                    for round in 0..2_000 {
                        // Everyone grants to partition 0; thread t also lowers its own share
                        // (t > 0), as only its lock holder may.
                        shares.grant(0, 3 * MIB);
                        assert!(shares.share(0) <= 20 * MIB);
                        if t > 0 && round % 2 == 0 {
                            let s = shares.share(t);
                            shares.lower(t, s.saturating_sub(MIB).max(2 * MIB));
                            shares.grant(t, MIB);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let sum: usize = (0..4).map(|i| shares.share(i)).sum::<usize>() + shares.pool.load(Relaxed);
        assert_eq!(sum, 64 * MIB);
        assert_eq!(shares.share(0), 20 * MIB, "partition 0 took all it could");
    }

    proptest! {
        #[test]
        fn targets_keep_the_budget(
            left in 0usize..1 << 40,
            cap_frac in 1usize..=8,
            slack in 0usize..1 << 24,
            ds in prop::collection::vec((0usize..1 << 38, 0usize..1 << 38, any::<bool>(), 0usize..1 << 30), 1..16),
        ) {
            let n = ds.len();
            let cap = (left / n).max(1) * cap_frac;
            let demands: Vec<Demand> = ds
                .iter()
                .map(|&(need, frames, pressed, min_frames)| Demand {
                    need,
                    min_frames: min_frames.min(need),
                    frames,
                    pressed,
                })
                .collect();
            match targets(left, cap, slack, &demands) {
                None => {
                    let needs: u128 = demands.iter().map(|d| d.need as u128).sum();
                    prop_assert!(needs > left as u128 || demands.iter().any(|d| d.need > cap));
                }
                Some(t) => {
                    prop_assert_eq!(t.len(), n);
                    prop_assert!(t.iter().map(|&x| x as u128).sum::<u128>() <= left as u128);
                    for (x, dm) in t.iter().zip(&demands) {
                        prop_assert!(*x >= dm.need && *x <= cap);
                    }
                    // Nothing worth a byte per partition is kept back while a share could grow.
                    let rest = left - t.iter().sum::<usize>();
                    if t.iter().any(|&x| x < cap) {
                        prop_assert!(rest < n, "{} bytes kept back", rest);
                    }
                    // A pressed partition below the cap has at least as much above its need
                    // as any other (the fill rises evenly, and only it has no limit short of
                    // the cap).
                    for (i, a) in demands.iter().enumerate() {
                        for (j, b) in demands.iter().enumerate() {
                            if a.pressed && t[i] < cap {
                                prop_assert!(t[i] - a.need >= t[j] - b.need, "{} {}", i, j);
                            }
                        }
                    }
                }
            }
        }
    }
}
