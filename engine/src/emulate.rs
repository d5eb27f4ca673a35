//! Far-tier latency emulation: a calibrated busy-wait added to each far-tier record read, for
//! benchmarks on machines without slow memory (300 ns models Optane PMem, ~100 ns CXL). Off
//! (0) by default. Every figure produced with it must say so.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// What one `Instant::now()` costs here, measured once; subtracted from each wait so that the
/// emulated latency is the added latency, not the added latency plus the clock reads.
fn clock_cost_ns() -> u64 {
    static COST: OnceLock<u64> = OnceLock::new();
    *COST.get_or_init(|| {
        let mut best = u64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            for _ in 0..1000 {
                std::hint::black_box(Instant::now());
            }
            best = best.min(t.elapsed().as_nanos() as u64 / 1000);
        }
        best
    })
}

/// A busy-wait of about `ns` nanoseconds (nothing for 0).
#[inline]
pub(crate) fn far_delay(ns: u64) {
    if ns == 0 {
        return;
    }
    let wait = Duration::from_nanos(ns.saturating_sub(clock_cost_ns()));
    let start = Instant::now();
    while start.elapsed() < wait {
        std::hint::spin_loop();
    }
}

/// Warm the calibration so that the first far read does not pay for it.
pub(crate) fn calibrate() {
    clock_cost_ns();
}

#[cfg(test)]
mod tests {
    #[test]
    fn waits_at_least_most_of_the_requested_time() {
        super::calibrate();
        let n = 2000;
        let t = std::time::Instant::now();
        for _ in 0..n {
            super::far_delay(1000);
        }
        let per = t.elapsed().as_nanos() as u64 / n;
        // A busy-wait can overshoot on a loaded machine but cannot finish early.
        assert!(per >= 900, "emulated 1000 ns took {per} ns");
    }
}
