//! Heat: which records earn a place in DRAM. Two decisions, behind one trait so that policies
//! can be compared in `tierbench --policy`:
//! - *promotion*: a record was just read from the far tier; copy it to the DRAM tail?
//! - *readmission*: a record sits on the oldest DRAM page, about to be demoted with it; its
//!   access counter says whether it was read since it was written; copy it to the tail instead?
//!
//! The default, [`FrequencyAdmission`], promotes a far record only on its second read within a
//! window (a TinyLFU-style doorkeeper: 4-bit counters indexed by the key hash, halved every
//! `window` far reads), so one-off reads of cold records do not push hot records out, and
//! readmits a DRAM record whose counter shows a read since its last move (CLOCK).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};

/// A heat policy. Implementations must be cheap: `admit_far` runs on every far read.
pub trait HeatPolicy: Send + Sync + std::fmt::Debug {
    /// A far record with this key hash was read: copy it to DRAM?
    fn admit_far(&self, hash: u64) -> bool;
    /// A DRAM record about to be demoted has this access count: keep it in DRAM?
    fn readmit(&self, heat: u8) -> bool {
        heat > 0
    }
    /// DRAM the policy itself uses, charged to the budget.
    fn dram_bytes(&self) -> usize {
        0
    }
    /// A short name for reports.
    fn name(&self) -> &'static str;
}

/// Promote on the second read within a window; readmit what was read since it last moved.
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

    /// Sized for a DRAM tier expected to hold about `records` records.
    pub fn for_records(records: usize) -> Self {
        FrequencyAdmission::new(records.max(1024) * 4, 2, (records.max(1024) * 8) as u64)
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
        // Bits 16..48 of the hash: independent of the index bucket and of the tag.
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
