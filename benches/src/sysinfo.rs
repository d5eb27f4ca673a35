//! Process memory as the kernel reports it.

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

/// Anonymous resident memory of this process.
pub fn rss_anon() -> u64 {
    status_bytes("RssAnon").unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_rss() {
        assert!(super::rss_anon() > 0);
        assert!(super::status_bytes("NoSuchField").is_none());
    }
}
