//! Physical-limit probes, run in the same invocation as the benchmark so that figures sit
//! next to what the machine can do: random DRAM load latency (one dependent cache miss per
//! step of a pointer chase over a buffer far larger than the caches) and sequential read
//! bandwidth.

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

#[cfg(test)]
mod tests {
    #[test]
    fn probes_return_plausible_numbers() {
        let ns = super::dram_random_load_ns(1 << 20, 100_000);
        assert!(ns > 0.1 && ns < 10_000.0, "{ns}");
        let gbps = super::seq_read_gbps(1 << 20, 3);
        assert!(gbps > 0.01, "{gbps}");
    }
}
