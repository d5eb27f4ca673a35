//! YCSB-style workloads over any [`Store`]: load `records` records, then run a seeded
//! stream of operations from several threads for a fixed time, and report throughput,
//! latency percentiles and where reads were served. The streams depend only on the seed, so
//! every engine sees the same operations in the same order.
//!
//! Workloads (YCSB core): A = 50% read / 50% update, B = 95/5, C = 100% read, E = 95% short
//! range scan (1 to 100 records from a chosen key, on an ordered keyspace) / 5% insert of a new
//! record, F = 50% read / 50% read-modify-write. Request keys follow a Zipf distribution over popularity ranks (or a
//! uniform one); ranks are scattered over records by [`crate::keys::scatter`], so the hottest
//! records are neither adjacent in the key space nor in load order.

use crate::keys::{key_into, scatter, value_into, KEY_LEN};
use crate::store::{Store, StoreResult};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Zipf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tera_engine::{Keyspace, Result};

/// A YCSB core workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    A,
    B,
    C,
    E,
    F,
}

impl Workload {
    pub fn parse(s: &str) -> Option<Workload> {
        match s.to_ascii_uppercase().as_str() {
            "A" => Some(Workload::A),
            "B" => Some(Workload::B),
            "C" => Some(Workload::C),
            "E" => Some(Workload::E),
            "F" => Some(Workload::F),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Workload::A => "A",
            Workload::B => "B",
            Workload::C => "C",
            Workload::E => "E",
            Workload::F => "F",
        }
    }
    /// Percent of operations that are plain reads; the rest are writes (update or RMW).
    fn read_percent(self) -> u32 {
        match self {
            Workload::A | Workload::F => 50,
            Workload::B | Workload::E => 95,
            Workload::C => 100,
        }
    }
}

/// The request distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Dist {
    Zipf { theta: f64 },
    Uniform,
}

/// Picks records for requests.
#[derive(Debug)]
pub struct KeyChooser {
    n: u64,
    zipf: Option<Zipf<f64>>,
    rng: SmallRng,
}

impl KeyChooser {
    pub fn new(n: u64, dist: Dist, seed: u64) -> KeyChooser {
        let zipf = match dist {
            Dist::Zipf { theta } => {
                Some(Zipf::new(n as f64, theta).expect("records >= 1, theta >= 0"))
            }
            Dist::Uniform => None,
        };
        KeyChooser {
            n,
            zipf,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    #[inline]
    pub fn next_record(&mut self) -> u64 {
        match &self.zipf {
            Some(z) => scatter(z.sample(&mut self.rng) as u64 - 1, self.n),
            None => self.rng.random_range(0..self.n),
        }
    }

    /// A scan length, uniform in 1..=max.
    #[inline]
    pub fn scan_len(&mut self, max: usize) -> usize {
        self.rng.random_range(1..=max.max(1))
    }

    /// A number in 0..100, for the operation mix.
    #[inline]
    pub fn percent(&mut self) -> u32 {
        self.rng.random_range(0..100)
    }
}

/// Longest YCSB-E scan.
pub const MAX_SCAN: usize = 100;

/// Load records `0..records` in order, one put each; `progress(done)` is called every 1% or so.
pub fn load(
    db: &Keyspace,
    records: u64,
    value_bytes: usize,
    mut progress: impl FnMut(u64),
) -> Result<()> {
    let mut k = [0u8; KEY_LEN];
    let mut v = Vec::with_capacity(value_bytes);
    let step = (records / 100).max(1);
    for i in 0..records {
        key_into(i, &mut k);
        value_into(i, 0, &mut v, value_bytes);
        db.put(&k, &v)?;
        if i % step == 0 {
            progress(i);
        }
    }
    progress(records);
    Ok(())
}

/// One timed phase.
#[derive(Debug, Clone, Copy)]
pub struct Phase {
    pub workload: Workload,
    pub dist: Dist,
    pub records: u64,
    pub value_bytes: usize,
    pub threads: usize,
    pub duration: Duration,
    pub seed: u64,
}

/// What a phase measured.
#[derive(Debug)]
pub struct Measured {
    pub ops: u64,
    pub elapsed: Duration,
    /// Latency of every 4th operation, in nanoseconds.
    pub latency: Histogram<u64>,
    /// Highest `dram_used_bytes` (Teraservices only; 0 otherwise) and RssAnon seen while it
    /// ran (sampled every 200 ms).
    pub max_dram_used: u64,
    pub max_rss_anon: u64,
}

/// Run a phase: `threads` threads, each with its own seeded stream (the same streams for the
/// same seed, whatever the database), until `duration` has passed.
pub fn run(store: &dyn Store, p: &Phase) -> StoreResult<Measured> {
    let stop = AtomicBool::new(false);
    let ops = AtomicU64::new(0);
    let start = Instant::now();
    let mut max_dram_used = 0;
    let mut max_rss_anon = 0;
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = (0..p.threads)
            .map(|t| {
                let (stop, ops) = (&stop, &ops);
                s.spawn(move || worker(store, p, t as u64, stop, ops))
            })
            .collect();
        let deadline = start + p.duration;
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            // A benchmark timer: sample memory while the workers run.
            std::thread::sleep((deadline - now).min(Duration::from_millis(200)));
            if let Some(st) = store.tier_stats() {
                max_dram_used = max_dram_used.max(st.dram_used_bytes);
            }
            max_rss_anon = max_rss_anon.max(crate::sysinfo::rss_anon());
        }
        stop.store(true, Relaxed);
        handles
            .into_iter()
            .map(|h| h.join().expect("worker panicked"))
            .collect::<Vec<_>>()
    });
    let elapsed = start.elapsed();
    let mut latency = Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds");
    for r in results {
        latency.add(r?).expect("same bounds");
    }
    Ok(Measured {
        ops: ops.load(Relaxed),
        elapsed,
        latency,
        max_dram_used,
        max_rss_anon,
    })
}

fn worker(
    db: &dyn Store,
    p: &Phase,
    t: u64,
    stop: &AtomicBool,
    ops: &AtomicU64,
) -> StoreResult<Histogram<u64>> {
    let mut chooser = KeyChooser::new(
        p.records,
        p.dist,
        p.seed ^ (t + 1).wrapping_mul(0x9e37_79b9),
    );
    let mut hist = Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds");
    let mut key = [0u8; KEY_LEN];
    let mut out = Vec::with_capacity(p.value_bytes);
    let mut value = Vec::new();
    value_into(t, 1, &mut value, p.value_bytes);
    let read_pct = p.workload.read_percent();
    let mut done = 0u64;
    let mut version = 1u32;
    while !stop.load(Relaxed) {
        for i in 0..256u32 {
            let rec = chooser.next_record();
            key_into(rec, &mut key);
            let write = read_pct < 100 && chooser.percent() >= read_pct;
            let timed = i % 4 == 0;
            let t0 = timed.then(Instant::now);
            if !write && p.workload == Workload::E {
                std::hint::black_box(db.scan(&key, chooser.scan_len(MAX_SCAN))?);
            } else if !write {
                if !db.get_into(&key, &mut out)? {
                    return Err(format!("{}: record {rec} is missing", db.engine()));
                }
            } else if p.workload == Workload::E {
                // Insert a new record, numbered past the loaded ones (a process-wide counter,
                // so that no two inserts, in any phase or thread, share a key).
                static INSERTED: AtomicU64 = AtomicU64::new(0);
                let n = p.records + INSERTED.fetch_add(1, Relaxed);
                key_into(n, &mut key);
                value_into(n, 0, &mut out, p.value_bytes);
                db.put(&key, &out)?;
            } else if p.workload == Workload::F {
                db.read_modify_write(&key, &mut |v| {
                    if let Some(b) = v.first_mut() {
                        *b = b.wrapping_add(1);
                    }
                })?;
            } else {
                // A new version: the record number and a counter in the first 12 bytes of
                // a per-thread value (generating a whole value per update would cost more
                // than the update).
                version = version.wrapping_add(1);
                let n = value.len().min(12);
                let mut tag = [0u8; 12];
                tag[..8].copy_from_slice(&rec.to_le_bytes());
                tag[8..].copy_from_slice(&version.to_le_bytes());
                value[..n].copy_from_slice(&tag[..n]);
                db.put(&key, &value)?;
            }
            if let Some(t0) = t0 {
                let _ = hist.record(t0.elapsed().as_nanos().max(1) as u64);
            }
        }
        done += 256;
    }
    ops.fetch_add(done, Relaxed);
    Ok(hist)
}
