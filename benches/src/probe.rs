//! Physical-limit probes, run in the same invocation as the benchmark so that figures sit
//! next to what the machine can do: random DRAM load latency (one dependent cache miss per
//! step of a pointer chase over a buffer far larger than the caches), sequential read
//! bandwidth, and the disk's 4 KiB random-read IOPS (`O_DIRECT`, so the page cache cannot
//! answer).

use std::time::Instant;

/// Nanoseconds per dependent random load over a `bytes`-sized buffer (one load per 64-byte
/// line; the chase visits lines in a random cyclic order, so prefetchers cannot help).
pub fn dram_random_load_ns(bytes: usize, steps: usize) -> f64 {
    let lines = (bytes / 64).max(2);
    // A random cyclic permutation (Sattolo's algorithm) with a small xorshift.
    let mut next: Vec<u64> = (0..lines as u64).collect();
    let mut s = 0x2545_f491_4f6c_dd1du64;
    for i in (1..lines).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let j = (s % i as u64) as usize;
        next.swap(i, j);
    }
    // Lay the chase out one u64 per 64-byte line.
    let mut buf = vec![0u64; lines * 8];
    for (i, &n) in next.iter().enumerate() {
        buf[i * 8] = n * 8;
    }
    drop(next);
    let mut p = 0u64;
    for _ in 0..lines.min(1 << 20) {
        p = buf[p as usize];
    }
    let t = Instant::now();
    for _ in 0..steps {
        p = buf[p as usize];
    }
    std::hint::black_box(p);
    t.elapsed().as_nanos() as f64 / steps as f64
}

/// Sequential read bandwidth in GB/s over a `bytes`-sized buffer, best of `rounds`.
pub fn seq_read_gbps(bytes: usize, rounds: usize) -> f64 {
    let buf = vec![1u64; bytes / 8];
    let mut best = f64::MAX;
    let mut sum = 0u64;
    for _ in 0..rounds.max(1) {
        let t = Instant::now();
        sum = sum.wrapping_add(buf.iter().fold(0u64, |a, &x| a.wrapping_add(x)));
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(sum);
    bytes as f64 / best / 1e9
}

/// A 4 KiB-aligned buffer for `O_DIRECT` reads.
struct Aligned(std::ptr::NonNull<u8>);

impl Aligned {
    const LAYOUT: std::alloc::Layout = match std::alloc::Layout::from_size_align(4096, 4096) {
        Ok(l) => l,
        Err(_) => panic!("valid layout"),
    };
    fn new() -> Aligned {
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(Self::LAYOUT) };
        Aligned(
            std::ptr::NonNull::new(p)
                .unwrap_or_else(|| std::alloc::handle_alloc_error(Self::LAYOUT)),
        )
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with the same layout.
        unsafe { std::alloc::dealloc(self.0.as_ptr(), Self::LAYOUT) }
    }
}

/// The disk's random 4 KiB read rate under `dir`: a `file_bytes` file is written once, then
/// `threads` threads each read random aligned 4 KiB blocks with `O_DIRECT` (queue depth one
/// per thread) for `seconds`. Returns reads per second, or why it could not measure (a file
/// system without `O_DIRECT`, such as tmpfs, says so).
pub fn disk_random_read_iops(
    dir: &std::path::Path,
    file_bytes: u64,
    threads: usize,
    seconds: f64,
) -> Result<f64, String> {
    use std::io::Write;
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let path = dir.join("iops-probe.dat");
    // Removed on every way out, a failed write or open included: it is a gigabyte.
    struct Remove<'a>(&'a std::path::Path);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0);
        }
    }
    let _remove = Remove(&path);
    let blocks = (file_bytes / 4096).max(1);
    {
        let mut f = std::fs::File::create(&path).map_err(|e| e.to_string())?;
        let chunk = vec![0x5au8; 1 << 20];
        let mut left = blocks * 4096;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            f.write_all(&chunk[..n]).map_err(|e| e.to_string())?;
            left -= n as u64;
        }
        f.sync_all().map_err(|e| e.to_string())?;
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .map_err(|e| format!("O_DIRECT open of {}: {e}", path.display()))?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let t = Instant::now();
    let total: Result<u64, String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads.max(1))
            .map(|i| {
                let (f, stop) = (&f, &stop);
                s.spawn(move || -> Result<u64, String> {
                    let buf = Aligned::new();
                    // SAFETY: `buf` owns 4096 bytes for the whole loop and nothing else
                    // aliases them.
                    let b = unsafe { std::slice::from_raw_parts_mut(buf.0.as_ptr(), 4096) };
                    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (i as u64 + 1);
                    let mut n = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        f.read_exact_at(b, (x % blocks) * 4096)
                            .map_err(|e| format!("O_DIRECT read: {e}"))?;
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        // A probe timer, not a test wait.
        std::thread::sleep(std::time::Duration::from_secs_f64(seconds));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        hs.into_iter()
            .map(|h| h.join().expect("probe thread"))
            .sum()
    });
    let secs = t.elapsed().as_secs_f64();
    Ok(total? as f64 / secs)
}

#[cfg(test)]
mod tests {
    #[test]
    fn probes_return_plausible_numbers() {
        let ns = super::dram_random_load_ns(1 << 20, 100_000);
        assert!(ns > 0.1 && ns < 10_000.0, "{ns}");
        let gbps = super::seq_read_gbps(1 << 20, 3);
        assert!(gbps > 0.01, "{gbps}");
    }

    /// On a disk and on tmpfs (which may refuse `O_DIRECT`): a figure or why not, and the
    /// probe's file is gone either way.
    #[test]
    fn disk_probe_reads_or_says_why_not() {
        let mut dirs = vec![tempfile::tempdir().unwrap()];
        if let Ok(d) = tempfile::tempdir_in("/dev/shm") {
            dirs.push(d);
        }
        for d in &dirs {
            match super::disk_random_read_iops(d.path(), 1 << 20, 2, 0.2) {
                Ok(iops) => assert!(iops > 1.0, "{iops}"),
                // tmpfs and some overlay file systems refuse O_DIRECT.
                Err(e) => assert!(e.contains("O_DIRECT"), "{e}"),
            }
            assert!(!d.path().join("iops-probe.dat").exists(), "{:?}", d.path());
        }
    }
}
