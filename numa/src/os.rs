//! Thin safe wrappers over the libc queries that several modules need (`sysconf`), so that
//! their `unsafe` blocks live in one place.

/// `sysconf(name)` as a positive number, or `None` when the value is unknown or the call fails.
pub(crate) fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf takes an integer and returns an integer; it reads and writes no memory of
    // ours, and an unknown `name` makes it return -1 (EINVAL), handled below.
    let value = unsafe { libc::sysconf(name) };
    u64::try_from(value).ok().filter(|&v| v > 0)
}

/// The system page size in bytes (4 KiB when sysconf cannot tell, as on every Linux target
/// whose page size sysconf fails to report, which is none in practice).
pub(crate) fn page_size() -> usize {
    sysconf(libc::_SC_PAGESIZE)
        .and_then(|size| usize::try_from(size).ok())
        .unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_is_a_power_of_two() {
        let size = page_size();
        assert!(size >= 4096 && size.is_power_of_two(), "{size}");
    }

    #[test]
    fn online_cpus_are_known() {
        assert!(sysconf(libc::_SC_NPROCESSORS_ONLN).unwrap() >= 1);
        assert_eq!(sysconf(-12345), None);
    }
}
