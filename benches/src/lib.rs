//! `tera-benches`: the `tierbench` macro benchmark (YCSB-style workloads over Teraservices and
//! the engines people would pick instead, at several DRAM budgets) and the pieces it shares
//! with the criterion benches: key and value generation, the seeded operation stream, the
//! stores behind one trait, memory cgroups for memory-bounded runs, and the machine probes
//! that put the figures next to physical limits.

pub mod cgroup;
pub mod keys;
#[cfg(feature = "peers")]
pub mod peers;
pub mod probe;
pub mod store;
pub mod sysinfo;
pub mod workload;

/// Check a command-line count of seconds (`flag` names it in the message): a finite number, not
/// negative, that a `Duration` holds, and above 0 unless `zero_ok`. `Duration::from_secs_f64`
/// panics on the rest (in tierbench, only once the load is done).
pub fn check_seconds(flag: &str, secs: f64, zero_ok: bool) -> Result<(), String> {
    let fits = std::time::Duration::try_from_secs_f64(secs).is_ok();
    if fits && (zero_ok || secs > 0.0) {
        Ok(())
    } else {
        Err(format!(
            "{flag} must be a number of seconds {}, not {secs}",
            if zero_ok { "of 0 or more" } else { "above 0" }
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn seconds_are_checked() {
        use super::check_seconds as c;
        assert!(c("--seconds", 0.3, false).is_ok());
        assert!(c("--warmup-seconds", 0.0, true).is_ok());
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e300] {
            let e = c("--seconds", bad, false).unwrap_err();
            assert!(
                e.contains("--seconds must be a number of seconds above 0"),
                "{e}"
            );
        }
        assert!(c("--warmup-seconds", -0.5, true).is_err());
    }
}
