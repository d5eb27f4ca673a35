//! Far-tier latency emulation: a calibrated busy-wait added to each far-tier record read, for
//! benchmarks on machines without slow memory (300 ns models Optane PMem, ~100 ns CXL). Off
//! (0) by default. Every figure produced with it must say so.
//!
//! On x86-64 the wait spins on the time-stamp counter, calibrated once against the monotonic
//! clock, so that it adds the requested time and little more (a clock read costs 20-30 ns in a
//! VM, which would add a tenth to a 300 ns wait). Elsewhere it spins on `Instant`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// TSC ticks per nanosecond, or `None` where there is no usable TSC.
fn ticks_per_ns() -> Option<f64> {
    static TICKS: OnceLock<Option<f64>> = OnceLock::new();
    *TICKS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let mut best = None::<f64>;
            for _ in 0..3 {
                let t = Instant::now();
                let c0 = tsc();
                while t.elapsed() < Duration::from_millis(10) {
                    std::hint::spin_loop();
                }
                let c1 = tsc();
                let ns = t.elapsed().as_nanos() as f64;
                let r = (c1.wrapping_sub(c0)) as f64 / ns;
                // Keep the lowest rate: a preempted sample only inflates the elapsed time.
                best = Some(best.map_or(r, |b: f64| b.min(r)));
            }
            best.filter(|r| r.is_finite() && *r > 0.1)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            None
        }
    })
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn tsc() -> u64 {
    // SAFETY: rdtsc has no preconditions on x86-64.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// A busy-wait of about `ns` nanoseconds (nothing for 0).
#[inline]
pub(crate) fn far_delay(ns: u64) {
    if ns == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(r) = ticks_per_ns() {
        let end = tsc().wrapping_add((ns as f64 * r) as u64);
        while (tsc().wrapping_sub(end) as i64) < 0 {
            std::hint::spin_loop();
        }
        return;
    }
    let start = Instant::now();
    let wait = Duration::from_nanos(ns);
    while start.elapsed() < wait {
        std::hint::spin_loop();
    }
}

/// Calibrate now so that the first far read does not pay for it.
pub(crate) fn calibrate() {
    ticks_per_ns();
}

#[cfg(test)]
mod tests {
    #[test]
    fn waits_about_the_requested_time() {
        super::calibrate();
        // The median of single waits: a wait during which the thread was descheduled (other
        // tests share the cores) inflates one sample, not the figure.
        let mut took: Vec<u128> = (0..2_001)
            .map(|_| {
                let t = std::time::Instant::now();
                super::far_delay(1000);
                t.elapsed().as_nanos()
            })
            .collect();
        took.sort_unstable();
        let median = took[took.len() / 2];
        // A busy-wait cannot finish early; only a gross overshoot (a broken calibration)
        // fails.
        assert!(took[0] >= 950, "emulated 1000 ns took {} ns", took[0]);
        assert!(median < 5000, "emulated 1000 ns took {median} ns (median)");
    }
}
