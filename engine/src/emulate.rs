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
            let samples: Vec<f64> = (0..3)
                .map(|_| {
                    let t = Instant::now();
                    let c0 = tsc();
                    while t.elapsed() < Duration::from_millis(10) {
                        std::hint::spin_loop();
                    }
                    let c1 = tsc();
                    let ns = t.elapsed().as_nanos() as f64;
                    (c1.wrapping_sub(c0)) as f64 / ns
                })
                .collect();
            best_rate(&samples)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            None
        }
    })
}

/// The calibration from samples of TSC ticks over clock nanoseconds: the highest. Each
/// sample's ticks are counted within its clock interval, so a sample can only read low (the
/// thread preempted between a clock read and a TSC read adds clock time and no ticks), never
/// high; the lowest would make every emulated wait short.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn best_rate(samples: &[f64]) -> Option<f64> {
    samples
        .iter()
        .copied()
        .filter(|r| r.is_finite() && *r > 0.1)
        .max_by(f64::total_cmp)
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
    fn calibration_keeps_the_sample_no_preemption_lowered() {
        // True rate 3 ticks/ns; the second sample was preempted outside its TSC reads, so
        // its clock time is 50% longer.
        assert_eq!(super::best_rate(&[3.0, 2.0, 2.999]), Some(3.0));
        assert_eq!(super::best_rate(&[f64::NAN, 0.0, 2.5]), Some(2.5));
        assert_eq!(super::best_rate(&[f64::INFINITY, 0.05]), None);
    }

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
