//! `durabench`: the figures of durability and of engulfing a dataset, each a subcommand that
//! prints one JSON object per measurement (and a line for people on stderr):
//!
//! - `reopen`: bulk load N records with durability `commit`, then time a reopen that replays
//!   the whole log (and its peak resident memory), take a checkpoint, and time a reopen from
//!   the checkpoint;
//! - `commit`: many writers with durability `commit`: commits/s and the fsyncs/s behind them;
//! - `checkpoint`: write latency of writers while a checkpoint of N records runs, next to the
//!   latency before it;
//! - `engulf`: bulk load rate and parallel full-scan rate next to the machine's sequential read
//!   bandwidth, measured in the same run.
//!
//! Nothing here emulates far-tier latency. See docs/benchmarks.md for published runs.
//! Arguments that make no sense (a time that is not a positive number of seconds, a
//! checkpoint of no records) are refused before anything runs.

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tera_benches::{probe, sysinfo};
use tera_engine::{Config, Db, Durability, KeyspaceOptions};

#[derive(Parser, Debug)]
#[command(version, about = "Durability and engulf figures for Teraservices")]
struct Args {
    /// Directory for the data (log, checkpoints, far tier); default: a fresh temp dir.
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Reopen time with and without a checkpoint.
    Reopen {
        #[arg(long, default_value_t = 10_000_000)]
        records: u64,
        #[arg(long, default_value_t = 100)]
        value_bytes: usize,
        /// DRAM budget, MiB (default: room for every record).
        #[arg(long)]
        budget_mib: Option<u64>,
    },
    /// Time one open (recovery) of an existing directory (`--dir`), e.g. one `reopen` left.
    Open {
        #[arg(long, default_value_t = 10_000_000)]
        records: u64,
        #[arg(long, default_value_t = 100)]
        value_bytes: usize,
    },
    /// Group commit: commits/s and fsyncs/s with many writers.
    Commit {
        #[arg(long, default_value_t = 64)]
        writers: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long, default_value_t = 100)]
        value_bytes: usize,
    },
    /// Writer latency while a checkpoint runs.
    Checkpoint {
        #[arg(long, default_value_t = 10_000_000)]
        records: u64,
        #[arg(long, default_value_t = 100)]
        value_bytes: usize,
        #[arg(long, default_value_t = 2)]
        writers: usize,
        /// The log is synced every this many ms (durability periodic).
        #[arg(long, default_value_t = 10)]
        sync_ms: u64,
    },
    /// Bulk load and parallel full-scan rates next to sequential read bandwidth.
    Engulf {
        #[arg(long, default_value_t = 10_000_000)]
        records: u64,
        #[arg(long, default_value_t = 100)]
        value_bytes: usize,
    },
}

/// Refuse arguments that would panic or divide by zero.
fn check(cmd: &Cmd) -> Result<(), String> {
    match cmd {
        Cmd::Commit { seconds, .. } => tera_benches::check_seconds("--seconds", *seconds, false),
        // The writers pick random records of the loaded ones.
        Cmd::Checkpoint { records: 0, .. } => Err(
            "checkpoint: --records must be at least 1 (the writers overwrite loaded records)"
                .into(),
        ),
        _ => Ok(()),
    }
}

fn main() {
    let a = Args::parse();
    if let Err(e) = check(&a.cmd) {
        eprintln!("durabench: {e}");
        std::process::exit(1);
    }
    let tmp;
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("durabench-")
                .tempdir()
                .expect("temp dir");
            tmp.path().to_path_buf()
        }
    };
    let r = match a.cmd {
        Cmd::Reopen {
            records,
            value_bytes,
            budget_mib,
        } => reopen(&dir, records, value_bytes, budget_mib),
        Cmd::Open {
            records,
            value_bytes,
        } => {
            let t = Instant::now();
            Db::open_with_info(config(
                &dir,
                budget_for(records, value_bytes),
                records,
                Durability::Commit,
            ))
            .map(|(_, info)| eprintln!("open: {:.2}s, {info:?}", t.elapsed().as_secs_f64()))
            .map_err(|e| e.to_string())
        }
        Cmd::Commit {
            writers,
            seconds,
            value_bytes,
        } => commit(&dir, writers, seconds, value_bytes),
        Cmd::Checkpoint {
            records,
            value_bytes,
            writers,
            sync_ms,
        } => checkpoint(&dir, records, value_bytes, writers, sync_ms),
        Cmd::Engulf {
            records,
            value_bytes,
        } => engulf(&dir, records, value_bytes),
    };
    if let Err(e) = r {
        eprintln!("durabench: {e}");
        std::process::exit(1);
    }
}

/// Keys in ascending order without sorting: `k` + 16 hex digits of the record number.
fn key(i: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = b'k';
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (j, b) in k[1..].iter_mut().enumerate() {
        *b = HEX[((i >> (60 - 4 * j)) & 0xf) as usize];
    }
    k
}

fn value(i: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::new();
    tera_benches::keys::value_into(i, 0, &mut v, len);
    v
}

/// Budget for `records` records all in DRAM: record, index and ordered-index allowances.
fn budget_for(records: u64, value_bytes: usize) -> u64 {
    let per = (17 + 2 + 24 + value_bytes + 24 + 7) as u64 / 8 * 8 + 16;
    (records * per * 5 / 4).max(256 << 20)
}

fn config(dir: &std::path::Path, budget: u64, records: u64, mode: Durability) -> Config {
    let mut c = Config::new(dir);
    c.dram_budget_bytes = budget;
    c.durability = mode;
    c.expected_records = records as usize;
    c.checkpoint_wal_bytes = 0; // checkpoints only when the benchmark asks
    c.max_key_bytes = 64;
    c.max_value_bytes = 64 << 10;
    c
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

fn reopen(
    dir: &std::path::Path,
    records: u64,
    value_bytes: usize,
    budget_mib: Option<u64>,
) -> Result<(), String> {
    let budget = budget_mib.map_or_else(|| budget_for(records, value_bytes), |m| m << 20);
    let cfg = || config(dir, budget, records, Durability::Commit);
    let e = |e: tera_engine::Error| e.to_string();
    let (load_s, log_bytes) = {
        let db = Db::open(cfg()).map_err(e)?;
        let ks = db.keyspace("bench", KeyspaceOptions::hash()).map_err(e)?;
        let t = Instant::now();
        ks.bulk_load((0..records).map(|i| (key(i), value(i, value_bytes))))
            .map_err(e)?;
        (t.elapsed(), db.stats().wal_durable_lsn)
    };
    eprintln!(
        "loaded {records} records in {:.1}s; log {:.0} MiB",
        load_s.as_secs_f64(),
        log_bytes as f64 / (1 << 20) as f64
    );
    // Recovery's own memory: resident memory before the open, and its peak during it.
    let rss_before = sysinfo::status_bytes("VmRSS");
    let peak_reset = sysinfo::reset_peak_rss();
    let t = Instant::now();
    let (db, info) = Db::open_with_info(cfg()).map_err(e)?;
    let replay = t.elapsed();
    let replay_peak = peak_reset.then(|| sysinfo::status_bytes("VmHWM")).flatten();
    let keys = db.get_keyspace("bench").map_or(0, |k| k.len());
    if keys != records {
        return Err(format!("replay recovered {keys} of {records} records"));
    }
    let mib = |b: Option<u64>| b.map_or("?".into(), |b| format!("{:.0} MiB", b as f64 / 1048576.0));
    eprintln!(
        "reopen replaying the log: {:.2}s ({} frames); resident {} before, peak {} during it",
        replay.as_secs_f64(),
        info.log_frames,
        mib(rss_before),
        mib(replay_peak)
    );
    let t = Instant::now();
    let ck = db.checkpoint().map_err(e)?;
    let ck_time = t.elapsed();
    drop(db);
    let t = Instant::now();
    let (db, info) = Db::open_with_info(cfg()).map_err(e)?;
    let from_ck = t.elapsed();
    let keys = db.get_keyspace("bench").map_or(0, |k| k.len());
    if keys != records {
        return Err(format!(
            "checkpoint recovery found {keys} of {records} records"
        ));
    }
    eprintln!(
        "checkpoint: {:.2}s, {:.0} MiB; reopen from it: {:.2}s ({} records)",
        ck_time.as_secs_f64(),
        ck.bytes as f64 / (1 << 20) as f64,
        from_ck.as_secs_f64(),
        info.checkpoint_records
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "reopen",
            "records": records,
            "value_bytes": value_bytes,
            "dram_budget_bytes": budget,
            "partitions": db.stats().partitions,
            "bulk_load_seconds": secs(load_s),
            "log_bytes": log_bytes,
            "reopen_log_only_seconds": secs(replay),
            "reopen_log_only_rss_before_bytes": rss_before,
            "reopen_log_only_peak_rss_bytes": replay_peak,
            "checkpoint_seconds": secs(ck_time),
            "checkpoint_bytes": ck.bytes,
            "reopen_with_checkpoint_seconds": secs(from_ck),
        })
    );
    Ok(())
}

fn commit(
    dir: &std::path::Path,
    writers: usize,
    seconds: f64,
    value_bytes: usize,
) -> Result<(), String> {
    let db = Db::open(config(dir, 256 << 20, 0, Durability::Commit)).map_err(|e| e.to_string())?;
    let ks = db
        .keyspace("bench", KeyspaceOptions::hash())
        .map_err(|e| e.to_string())?;
    let stop = AtomicBool::new(false);
    let commits = AtomicU64::new(0);
    let before = db.stats().wal_fsyncs;
    let t = Instant::now();
    let hists = std::thread::scope(|s| {
        let hs: Vec<_> = (0..writers)
            .map(|w| {
                let (ks, stop, commits) = (&ks, &stop, &commits);
                s.spawn(move || {
                    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
                    let v = value(w as u64, value_bytes);
                    let mut i = 0u64;
                    while !stop.load(Relaxed) {
                        let k = key((w as u64) << 40 | (i % 100_000));
                        let t0 = Instant::now();
                        ks.put(&k, &v).expect("put");
                        let _ = h.record(t0.elapsed().as_nanos().max(1) as u64);
                        i += 1;
                    }
                    commits.fetch_add(i, Relaxed);
                    h
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Relaxed);
        hs.into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    let elapsed = t.elapsed().as_secs_f64();
    let fsyncs = db.stats().wal_fsyncs - before;
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    for x in hists {
        h.add(x).unwrap();
    }
    let n = commits.load(Relaxed);
    eprintln!(
        "{writers} writers: {:.0} commits/s, {:.0} fsyncs/s ({:.1} commits per fsync), p50 {:.2} ms, p99 {:.2} ms",
        n as f64 / elapsed,
        fsyncs as f64 / elapsed,
        n as f64 / fsyncs.max(1) as f64,
        h.value_at_quantile(0.5) as f64 / 1e6,
        h.value_at_quantile(0.99) as f64 / 1e6
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "commit",
            "writers": writers,
            "value_bytes": value_bytes,
            "seconds": elapsed,
            "commits_per_sec": (n as f64 / elapsed).round(),
            "fsyncs_per_sec": (fsyncs as f64 / elapsed).round(),
            "commits_per_fsync": ((n as f64 / fsyncs.max(1) as f64) * 10.0).round() / 10.0,
            "p50_ns": h.value_at_quantile(0.5),
            "p99_ns": h.value_at_quantile(0.99),
            "p999_ns": h.value_at_quantile(0.999),
        })
    );
    Ok(())
}

fn checkpoint(
    dir: &std::path::Path,
    records: u64,
    value_bytes: usize,
    writers: usize,
    sync_ms: u64,
) -> Result<(), String> {
    let budget = budget_for(records, value_bytes);
    let mode = Durability::Periodic(Duration::from_millis(sync_ms));
    let db = Db::open(config(dir, budget, records, mode)).map_err(|e| e.to_string())?;
    let ks = db
        .keyspace("bench", KeyspaceOptions::hash())
        .map_err(|e| e.to_string())?;
    ks.bulk_load((0..records).map(|i| (key(i), value(i, value_bytes))))
        .map_err(|e| e.to_string())?;
    // Writers overwrite random loaded records and record every write's latency, split into
    // before the checkpoint and during it.
    let phase = AtomicU64::new(0); // 0 before, 1 during, 2 after
    let stop = AtomicBool::new(false);
    let mut ck_time = Duration::ZERO;
    let mut ck_info = None;
    let results = std::thread::scope(|s| {
        let hs: Vec<_> = (0..writers)
            .map(|w| {
                let (ks, stop, phase) = (&ks, &stop, &phase);
                s.spawn(move || {
                    let mk = || Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
                    let (mut before, mut during) = (mk(), mk());
                    let v = value(w as u64, value_bytes);
                    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ w as u64;
                    while !stop.load(Relaxed) {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let k = key(x % records);
                        let p = phase.load(Relaxed);
                        let t0 = Instant::now();
                        ks.put(&k, &v).expect("put");
                        let ns = t0.elapsed().as_nanos().max(1) as u64;
                        match p {
                            0 => {
                                let _ = before.record(ns);
                            }
                            1 => {
                                let _ = during.record(ns);
                            }
                            _ => {}
                        }
                    }
                    (before, during)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(3));
        phase.store(1, Relaxed);
        let t = Instant::now();
        ck_info = Some(db.checkpoint());
        ck_time = t.elapsed();
        phase.store(2, Relaxed);
        stop.store(true, Relaxed);
        hs.into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    let ck = ck_info.expect("ran").map_err(|e| e.to_string())?;
    let mk = || Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    let (mut before, mut during) = (mk(), mk());
    for (b, d) in results {
        before.add(b).unwrap();
        during.add(d).unwrap();
    }
    let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p);
    eprintln!(
        "checkpoint of {} records took {:.2}s; writes during it: {} (p50 {:.1} us, p99 {:.1} us, max {:.2} ms); before: p99 {:.1} us, max {:.2} ms",
        ck.records,
        ck_time.as_secs_f64(),
        during.len(),
        q(&during, 0.5) as f64 / 1e3,
        q(&during, 0.99) as f64 / 1e3,
        during.max() as f64 / 1e6,
        q(&before, 0.99) as f64 / 1e3,
        before.max() as f64 / 1e6
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "checkpoint",
            "records": records,
            "value_bytes": value_bytes,
            "writers": writers,
            "durability": format!("periodic:{sync_ms}"),
            "checkpoint_seconds": secs(ck_time),
            "checkpoint_records": ck.records,
            "checkpoint_rescans": ck.rescans,
            "writes_during": during.len(),
            "during_p50_ns": q(&during, 0.5),
            "during_p99_ns": q(&during, 0.99),
            "during_p999_ns": q(&during, 0.999),
            "during_max_ns": during.max(),
            "before_p50_ns": q(&before, 0.5),
            "before_p99_ns": q(&before, 0.99),
            "before_max_ns": before.max(),
        })
    );
    Ok(())
}

fn engulf(dir: &std::path::Path, records: u64, value_bytes: usize) -> Result<(), String> {
    let gbps = probe::seq_read_gbps(1 << 30, 3);
    let budget = budget_for(records, value_bytes);
    let db = Db::open(config(dir, budget, records, Durability::None)).map_err(|e| e.to_string())?;
    let ks = db
        .keyspace("bench", KeyspaceOptions::hash())
        .map_err(|e| e.to_string())?;
    // The input is generated ahead, so that the load's rate is the engine's, not the
    // generator's.
    let input: Vec<([u8; 17], Vec<u8>)> = (0..records)
        .map(|i| (key(i), value(i, value_bytes)))
        .collect();
    let t = Instant::now();
    let info = ks
        .bulk_load(input.iter().map(|(k, v)| (k, v)))
        .map_err(|e| e.to_string())?;
    let load = t.elapsed().as_secs_f64();
    drop(input);
    let t = Instant::now();
    let (sums, scan) = ks
        .scan_parallel(
            || 0u64,
            |a, _k, v, _| *a = a.wrapping_add(v.first().copied().unwrap_or(0) as u64),
        )
        .map_err(|e| e.to_string())?;
    let scan_s = t.elapsed().as_secs_f64();
    std::hint::black_box(sums);
    if scan.records != records {
        return Err(format!(
            "the scan saw {} of {records} records",
            scan.records
        ));
    }
    let gbps_after = probe::seq_read_gbps(1 << 30, 3);
    let load_mbps = info.bytes as f64 / load / 1e6;
    let scan_gbps = scan.value_bytes as f64 / scan_s / 1e9;
    eprintln!(
        "bulk load: {:.0} MB/s ({:.2} M records/s); full scan: {:.2} GB/s of values ({:.1} M records/s, {} threads); sequential read: {:.1} / {:.1} GB/s (before / after)",
        load_mbps,
        records as f64 / load / 1e6,
        scan_gbps,
        records as f64 / scan_s / 1e6,
        scan.threads,
        gbps,
        gbps_after
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "engulf",
            "records": records,
            "value_bytes": value_bytes,
            "bulk_load_seconds": load,
            "bulk_load_mb_per_sec": load_mbps.round(),
            "scan_seconds": scan_s,
            "scan_gb_per_sec": (scan_gbps * 1000.0).round() / 1000.0,
            "scan_threads": scan.threads,
            "seq_read_gbps_before": (gbps * 100.0).round() / 100.0,
            "seq_read_gbps_after": (gbps_after * 100.0).round() / 100.0,
            "partitions": db.stats().partitions,
        })
    );
    Ok(())
}
