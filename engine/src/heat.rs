//! Heat: which records earn a place in DRAM. Two decisions, behind one trait so that policies
//! can be compared in `tierbench --policy`:
//! - *promotion*: a record was just read from the far tier; copy it to the DRAM tail?
//! - *readmission*: a record sits on the oldest DRAM page, about to be demoted with it; its
//!   access counter says whether it was read since it was written; copy it to the tail instead?
//!
//! The default, [`GhostAdmission`], promotes a far record only on its second read within a
//! window of recent far reads (remembered as 32-bit fingerprints in a direct-mapped table, the
//! "ghost" entries of 2Q and ARC), so one-off reads of cold records do not push hot records
//! out; and it readmits a DRAM record whose access counter shows reads since its last move.
//! The counter saturates at [`MAX_HEAT`] and is halved on each readmission, so a record that
//! was read often survives a few passes without reads (an LFU with aging), while one read once
//! must be read again to stay.
//!
//! [`FrequencyAdmission`] (a TinyLFU-style sketch of 4-bit counters) is kept for comparison:
//! its counters are shared between keys, so some one-off reads pass it.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};

/// Access counters of DRAM records saturate here.
pub const MAX_HEAT: u8 = 15;

/// A heat policy. Implementations must be cheap: `admit_far` runs on every far read.
pub trait HeatPolicy: Send + Sync + std::fmt::Debug {
    /// A far record with this key hash was read: copy it to DRAM?
    fn admit_far(&self, hash: u64) -> bool;
    /// A DRAM record about to be demoted has this access count: keep it in DRAM?
    fn readmit(&self, heat: u8) -> bool {
        heat > 0
    }
    /// A demotion drained `live` live records from DRAM pages and readmitted `readmitted` of
    /// them. Policies may use it to tell a DRAM tier full of cold records (just after a bulk
    /// load, or when the workload moves) from a settled one.
    fn on_drain(&self, live: usize, readmitted: usize) {
        let _ = (live, readmitted);
    }
    /// DRAM the policy itself uses, charged to the budget.
    fn dram_bytes(&self) -> usize {
        0
    }
    /// A short name for reports.
    fn name(&self) -> &'static str;
}

/// Promote a far record on its second read within about `slots` far reads; readmit a DRAM
/// record that was read since it last moved. While demotions find DRAM mostly cold (fewer
/// than one record in [`EAGER_BELOW`] readmitted), promote on the first read instead, so a
/// freshly loaded tier warms up in about the time it takes to read its size from far.
#[derive(Debug)]
pub struct GhostAdmission {
    slots: Box<[AtomicU32]>,
    /// Readmitted share of drained records, in 1/1024, smoothed over recent demotions.
    readmit_share: AtomicU32,
}

/// The ghost policy admits every far read while the readmitted share of drained DRAM
/// records is below 1 in this many.
pub const EAGER_BELOW: u32 = 5;

impl GhostAdmission {
    /// A table of `slots` fingerprints (4 bytes each, charged to the DRAM budget).
    pub fn new(slots: usize) -> Self {
        GhostAdmission {
            slots: (0..slots.max(64)).map(|_| AtomicU32::new(0)).collect(),
            readmit_share: AtomicU32::new(1024),
        }
    }

    fn eager(&self) -> bool {
        self.readmit_share.load(Relaxed) < 1024 / EAGER_BELOW
    }
}

/// Re-mix a key hash: the engine uses all 64 bits of it for bucket, partition and tag.
#[inline]
fn remix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x
}

impl HeatPolicy for GhostAdmission {
    fn admit_far(&self, hash: u64) -> bool {
        if self.eager() {
            return true;
        }
        let m = remix(hash);
        let fp = (m as u32) | 1;
        let i = (((m >> 32) * self.slots.len() as u64) >> 32) as usize;
        let slot = &self.slots[i];
        if slot.load(Relaxed) == fp {
            slot.store(0, Relaxed);
            true
        } else {
            slot.store(fp, Relaxed);
            false
        }
    }

    fn on_drain(&self, live: usize, readmitted: usize) {
        if live == 0 {
            return;
        }
        let share = (readmitted * 1024 / live) as u32;
        // An exponential average over about eight demotions; races only blur it.
        let old = self.readmit_share.load(Relaxed);
        self.readmit_share.store((old * 7 + share) / 8, Relaxed);
    }

    fn dram_bytes(&self) -> usize {
        self.slots.len() * 4
    }

    fn name(&self) -> &'static str {
        "ghost"
    }
}

/// Promote on the `threshold`-th read within a window, counted in shared 4-bit counters;
/// readmit what was read since it last moved.
#[derive(Debug)]
pub struct FrequencyAdmission {
    /// Two 4-bit counters per byte.
    counters: Box<[AtomicU8]>,
    mask: u64,
    reads: AtomicU64,
    window: u64,
    threshold: u8,
}

impl FrequencyAdmission {
    /// A sketch with `counters` 4-bit counters (rounded up to a power of two), promoting at
    /// `threshold` reads, halved every `window` far reads.
    pub fn new(counters: usize, threshold: u8, window: u64) -> Self {
        let n = counters.next_power_of_two().max(64);
        FrequencyAdmission {
            counters: (0..n / 2).map(|_| AtomicU8::new(0)).collect(),
            mask: n as u64 - 1,
            reads: AtomicU64::new(0),
            window: window.max(1),
            threshold: threshold.clamp(1, 15),
        }
    }

    fn age(&self) {
        for c in self.counters.iter() {
            let v = c.load(Relaxed);
            c.store((v >> 1) & 0x77, Relaxed);
        }
    }
}

impl HeatPolicy for FrequencyAdmission {
    fn admit_far(&self, hash: u64) -> bool {
        if self.reads.fetch_add(1, Relaxed) % self.window == self.window - 1 {
            self.age();
        }
        // Bits 16 and up of the hash (they overlap the bucket and partition bits, which only
        // makes keys of one partition share counters more evenly).
        let i = (hash >> 16) & self.mask;
        let cell = &self.counters[(i / 2) as usize];
        let shift = (i % 2) * 4;
        let old = cell.load(Relaxed);
        let count = (old >> shift) & 0xf;
        if count + 1 >= self.threshold {
            // Start over so a promoted record that is demoted again must prove itself again.
            cell.store(old & !(0xf << shift), Relaxed);
            return true;
        }
        cell.store(old + (1 << shift), Relaxed);
        false
    }

    fn dram_bytes(&self) -> usize {
        self.counters.len()
    }

    fn name(&self) -> &'static str {
        "frequency"
    }
}

/// Promote every far read; readmit what was read (a baseline for comparison).
#[derive(Debug, Default)]
pub struct AlwaysPromote;

impl HeatPolicy for AlwaysPromote {
    fn admit_far(&self, _hash: u64) -> bool {
        true
    }
    fn name(&self) -> &'static str {
        "always"
    }
}

/// Never promote or readmit: pages go to the far tier in write order and stay there (the
/// page-placement baseline).
#[derive(Debug, Default)]
pub struct NeverPromote;

impl HeatPolicy for NeverPromote {
    fn admit_far(&self, _hash: u64) -> bool {
        false
    }
    fn readmit(&self, _heat: u8) -> bool {
        false
    }
    fn name(&self) -> &'static str {
        "never"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ghost_admits_on_the_second_read_only() {
        let p = GhostAdmission::new(1 << 12);
        let (a, b) = (crate::hash::hash_key(b"a"), crate::hash::hash_key(b"b"));
        assert!(!p.admit_far(a));
        assert!(!p.admit_far(b));
        assert!(p.admit_far(a), "second read of a");
        assert!(!p.admit_far(a), "forgotten after a promotion");
        assert!(p.admit_far(b));
    }

    #[test]
    fn ghost_is_eager_only_while_drained_dram_is_cold() {
        let p = GhostAdmission::new(1 << 12);
        let a = crate::hash::hash_key(b"a");
        for _ in 0..40 {
            p.on_drain(1000, 10); // a tier full of records nobody read
        }
        assert!(p.admit_far(a), "cold DRAM: the first read promotes");
        for _ in 0..40 {
            p.on_drain(1000, 600); // a settled tier
        }
        assert!(
            !p.admit_far(crate::hash::hash_key(b"b")),
            "settled: the first read does not"
        );
    }

    #[test]
    fn ghost_forgets_a_key_when_its_slot_is_reused() {
        let p = GhostAdmission::new(64);
        let a = crate::hash::hash_key(b"a");
        assert!(!p.admit_far(a));
        for k in 0..10_000u32 {
            p.admit_far(crate::hash::hash_key(&k.to_le_bytes()));
        }
        assert!(!p.admit_far(a), "a single read long ago must not count");
    }

    #[test]
    fn frequency_admits_on_the_second_read_only() {
        let p = FrequencyAdmission::new(1 << 10, 2, 1 << 20);
        assert!(!p.admit_far(0xdead_0000));
        assert!(p.admit_far(0xdead_0000));
        assert!(
            !p.admit_far(0xdead_0000),
            "counter restarts after a promotion"
        );
        assert!(!p.admit_far(0xbeef_0000_0000));
    }

    #[test]
    fn aging_forgets_old_reads() {
        let p = FrequencyAdmission::new(1 << 10, 3, 4);
        assert!(!p.admit_far(1 << 20)); // count 1
        assert!(!p.admit_far(1 << 20)); // count 2
        p.age(); // count 1
        p.age(); // count 0
        assert!(!p.admit_far(1 << 20));
    }

    #[test]
    fn baselines() {
        assert!(AlwaysPromote.admit_far(1));
        assert!(!NeverPromote.admit_far(1));
        assert!(!NeverPromote.readmit(3));
        assert!(AlwaysPromote.readmit(1) && !AlwaysPromote.readmit(0));
    }
}
