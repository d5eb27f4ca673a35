//! Process memory and block-device reads as the kernel reports them.

/// A field of /proc/self/status in bytes (`RssAnon`, `VmHWM`, ...), if present.
pub fn status_bytes(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    let kb: u64 = line[field.len() + 1..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Restart the peak of resident memory (`VmHWM`) from the current resident size, so that the
/// next reading of `VmHWM` is the peak since now (`/proc/self/clear_refs`, Linux 4.0). False
/// where the kernel refuses.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Anonymous resident memory of this process.
pub fn rss_anon() -> u64 {
    status_bytes("RssAnon").unwrap_or(0)
}

/// Bytes this process (all its threads) has caused to be read from block devices:
/// `read_bytes` of /proc/self/io. Counts reads by `read`/`pread`, `O_DIRECT` and page faults
/// on mapped files alike, and not what the page cache served.
pub fn io_read_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/io").ok()?;
    field_u64(&s, "read_bytes")
}

fn field_u64(s: &str, field: &str) -> Option<u64> {
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .parse()
        .ok()
}

/// The block device a path lives on, as `(major, minor)`.
pub fn device_of(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    Some((libc::major(dev) as u64, libc::minor(dev) as u64))
}

/// Reads completed by device `(major, minor)` since boot (field 4 of /proc/diskstats), by
/// every process.
pub fn device_reads(dev: (u64, u64)) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/diskstats").ok()?;
    diskstats_reads(&s, dev)
}

fn diskstats_reads(s: &str, dev: (u64, u64)) -> Option<u64> {
    s.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let major: u64 = f.next()?.parse().ok()?;
        let minor: u64 = f.next()?.parse().ok()?;
        if (major, minor) != dev {
            return None;
        }
        f.nth(1)?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_rss() {
        assert!(super::rss_anon() > 0);
        assert!(super::status_bytes("NoSuchField").is_none());
    }

    #[test]
    fn parses_io_and_diskstats() {
        let io = "rchar: 10\nwchar: 5\nsyscr: 1\nread_bytes: 4096\nwrite_bytes: 0\n";
        assert_eq!(super::field_u64(io, "read_bytes"), Some(4096));
        assert_eq!(super::field_u64(io, "write_bytes"), Some(0));
        assert_eq!(super::field_u64(io, "cancelled_write_bytes"), None);
        let ds = " 254       0 vda 22728340 26009 372008530 4283971 4658361\n 254       1 vda1 17 0 136 2 0\n";
        assert_eq!(super::diskstats_reads(ds, (254, 0)), Some(22_728_340));
        assert_eq!(super::diskstats_reads(ds, (254, 1)), Some(17));
        assert_eq!(super::diskstats_reads(ds, (8, 0)), None);
    }

    #[test]
    fn this_process_and_its_device_have_counters() {
        // Containers may hide /proc/self/io; where it is there it parses.
        if std::path::Path::new("/proc/self/io").exists() {
            assert!(super::io_read_bytes().is_some());
        }
        assert!(super::device_of(std::path::Path::new("/")).is_some());
    }
}
