//! `tierbench`: YCSB-style workloads over Teraservices at several DRAM budgets in one
//! invocation, on the same data and the same seeded operation streams, so that figures at
//! different budgets are side by side. See docs/benchmarks.md for the published runs.

use clap::Parser;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};
use tera_benches::keys::{self, KEY_LEN};
use tera_benches::probe;
use tera_benches::workload::{self, Dist, Phase, Workload};
use tera_engine::{
    AlwaysPromote, Config, Db, Durability, FrequencyAdmission, GhostAdmission, HeatPolicy,
    KeyspaceOptions, NeverPromote,
};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "YCSB-style workloads over Teraservices at several DRAM budgets"
)]
struct Args {
    /// Workloads to run, comma separated: A (50% read, 50% update), B (95/5), C (read only),
    /// E (95% short range scans of 1-100 records on an ordered keyspace, 5% inserts),
    /// F (50% read, 50% read-modify-write).
    #[arg(long, default_value = "C", value_delimiter = ',')]
    workload: Vec<String>,
    /// Records loaded.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Bytes per value (keys are 20 bytes).
    #[arg(long, default_value_t = 1024)]
    value_bytes: usize,
    /// Request distribution: zipf or uniform.
    #[arg(long, default_value = "zipf")]
    dist: String,
    /// Zipf exponent.
    #[arg(long, default_value_t = 0.99)]
    theta: f64,
    /// Client threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Most unmeasured seconds before each measured run. The warm-up runs the workload in
    /// slices of `--warmup-slice` seconds until the DRAM hit ratio of a slice moves by less
    /// than 0.002 from the slice before (the tiers have settled), or this much time has passed.
    #[arg(long, default_value_t = 60.0)]
    warmup_seconds: f64,
    /// Length of one warm-up slice, in seconds.
    #[arg(long, default_value_t = 2.0)]
    warmup_slice: f64,
    /// Emulated far-tier latency per record read, ns (0: none). Figures with it say so.
    #[arg(long, default_value_t = 0)]
    far_ns: u64,
    /// DRAM budgets as fractions of the loaded data (records x (key + value bytes)).
    #[arg(long, default_value = "1,0.125", value_delimiter = ',')]
    dram_fractions: Vec<f64>,
    /// Heat policy: ghost (the engine's default), frequency, always, never.
    #[arg(long, default_value = "ghost")]
    policy: String,
    /// For the ghost policy: one remembered far read per this many bytes of DRAM budget
    /// (smaller remembers more, so admits records that are read less often).
    #[arg(long, default_value_t = 4096)]
    ghost_slot_bytes: u64,
    /// Ask for transparent huge pages on the engine's DRAM frames (`Config::huge_pages`).
    #[arg(long)]
    huge_pages: bool,
    /// Partitions (0: the engine's default, two per CPU).
    #[arg(long, default_value_t = 0)]
    partitions: usize,
    /// Directory for far-tier files (default: a fresh directory under the system temp dir).
    #[arg(long)]
    far_dir: Option<std::path::PathBuf>,
    /// Seed of the operation streams.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// One JSON object per run per line on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Skip the machine probes (DRAM latency, sequential bandwidth).
    #[arg(long)]
    no_probes: bool,
    /// When a write is durable: none (the default: in memory only), periodic:<ms> (the log
    /// is synced every <ms> milliseconds) or commit (group commit; every write waits for its
    /// sync). With a durable mode the data is bulk loaded (one put per record would be one
    /// sync per record).
    #[arg(long, default_value = "none")]
    durability: String,
    /// Directory for the write-ahead log and checkpoints (default: the far directory).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// How to load: puts (one put per record, in record order) or bulk (sorted bulk load).
    /// Default: puts with durability none, bulk otherwise.
    #[arg(long)]
    load: Option<String>,
}

fn durability(s: &str) -> Result<Durability, String> {
    match s {
        "none" => Ok(Durability::None),
        "commit" => Ok(Durability::Commit),
        _ => match s
            .strip_prefix("periodic:")
            .and_then(|ms| ms.parse::<u64>().ok())
        {
            Some(ms) if ms > 0 => Ok(Durability::Periodic(Duration::from_millis(ms))),
            _ => Err(format!(
                "unknown durability {s:?}: use none, periodic:<ms> (ms > 0) or commit"
            )),
        },
    }
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("tierbench: {e}");
        std::process::exit(1);
    }
}

fn policy(
    name: &str,
    budget: u64,
    ghost_slot_bytes: u64,
) -> Result<std::sync::Arc<dyn HeatPolicy>, String> {
    Ok(match name {
        "ghost" => std::sync::Arc::new(GhostAdmission::new(
            (budget / ghost_slot_bytes.max(1)) as usize,
        )),
        "frequency" => std::sync::Arc::new(FrequencyAdmission::new(
            (budget / 256) as usize,
            2,
            budget / 256,
        )),
        "always" => std::sync::Arc::new(AlwaysPromote),
        "never" => std::sync::Arc::new(NeverPromote),
        other => {
            return Err(format!(
                "unknown policy {other:?}: use ghost, frequency, always or never"
            ))
        }
    })
}

/// Page size for a budget: about 32 pages per partition share, 64 KiB to 2 MiB, and at
/// least one record.
fn page_bytes(share: u64, record: usize) -> usize {
    let p = (share / 32).clamp(64 << 10, 2 << 20);
    let p = 1usize << (63 - p.leading_zeros());
    p.max((record + 64).next_power_of_two())
}

fn real_main() -> Result<(), String> {
    let a = Args::parse();
    let workloads = a
        .workload
        .iter()
        .map(|w| {
            Workload::parse(w).ok_or_else(|| format!("unknown workload {w:?}: use A, B, C, E or F"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let dist = match a.dist.as_str() {
        "zipf" => Dist::Zipf { theta: a.theta },
        "uniform" => Dist::Uniform,
        d => return Err(format!("unknown distribution {d:?}: use zipf or uniform")),
    };
    if a.records == 0 || a.threads == 0 {
        return Err("--records and --threads must be at least 1".into());
    }
    if a.dram_fractions.iter().any(|f| f.is_nan() || *f <= 0.0) {
        return Err("--dram-fractions must be positive".into());
    }
    let data_bytes = a.records * (KEY_LEN + a.value_bytes) as u64;
    let mode = durability(&a.durability)?;
    let bulk = match a.load.as_deref() {
        None => mode != Durability::None,
        Some("bulk") => true,
        Some("puts") => false,
        Some(l) => return Err(format!("unknown --load {l:?}: use puts or bulk")),
    };
    let emulation = if a.far_ns > 0 { "emulated" } else { "none" };

    if !a.no_probes {
        let ns = probe::dram_random_load_ns(1 << 30, 20_000_000);
        let gbps = probe::seq_read_gbps(1 << 30, 3);
        if a.json {
            println!("{{\"probe\":\"dram_random_load_ns\",\"value\":{ns:.1}}}");
            println!("{{\"probe\":\"seq_read_gbps\",\"value\":{gbps:.2}}}");
        } else {
            println!("machine: random DRAM load {ns:.1} ns (1 GiB pointer chase), sequential read {gbps:.1} GB/s");
        }
    }
    if !a.json {
        println!(
            "{} records x {} B values ({:.1} MiB of data), {} threads, {:?}, far latency: {}",
            a.records,
            a.value_bytes,
            data_bytes as f64 / (1 << 20) as f64,
            a.threads,
            dist,
            if a.far_ns > 0 {
                format!("{} ns (emulated)", a.far_ns)
            } else {
                "none (page cache)".into()
            }
        );
        println!(
            "{:<3} {:>6} {:>9} {:>12} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>10}",
            "wl",
            "frac",
            "budget",
            "ops/s",
            "dram-hit",
            "p50",
            "p99",
            "p99.9",
            "used",
            "rss-anon",
            "index",
            "idx B/k",
            "promotions"
        );
    }
    let tmp;
    let far_root = match &a.far_dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("tierbench-")
                .tempdir()
                .map_err(|e| e.to_string())?;
            tmp.path().to_path_buf()
        }
    };
    for &w in &workloads {
        for (i, &fraction) in a.dram_fractions.iter().enumerate() {
            let budget = (data_bytes as f64 * fraction) as u64;
            let dir = far_root.join(format!("{}-{i}", w.name()));
            let mut c = Config::new(&dir);
            c.dram_budget_bytes = budget;
            c.partitions = a.partitions;
            c.max_key_bytes = KEY_LEN;
            c.max_value_bytes = a.value_bytes;
            let parts = if a.partitions == 0 {
                (2 * num_cpus()).max(4)
            } else {
                a.partitions
            };
            c.page_bytes = page_bytes(budget / parts as u64, KEY_LEN + a.value_bytes + 24);
            c.segment_bytes = c.page_bytes * 32;
            c.far_latency_ns = a.far_ns;
            c.huge_pages = a.huge_pages;
            c.expected_records = a.records as usize;
            c.policy = Some(policy(&a.policy, budget, a.ghost_slot_bytes)?);
            c.durability = mode;
            c.data_dir = a
                .data_dir
                .as_ref()
                .map(|d| d.join(format!("{}-{i}", w.name())));
            let page = c.page_bytes;
            let db = Db::open(c).map_err(|e| format!("fraction {fraction}: {e}"))?;
            // E scans an ordered keyspace; the others use the hash-only default keyspace.
            let ks = if w == Workload::E {
                db.keyspace("usertable", KeyspaceOptions::ordered())
            } else {
                db.keyspace(tera_engine::DEFAULT_KEYSPACE, KeyspaceOptions::hash())
            }
            .map_err(|e| e.to_string())?;

            let t = Instant::now();
            let show = !a.json && std::io::stderr().is_terminal();
            if bulk {
                workload::load_bulk(&ks, a.records, a.value_bytes).map_err(|e| e.to_string())?;
            } else {
                workload::load(&ks, a.records, a.value_bytes, |done| {
                    if show {
                        progress(done, a.records);
                    }
                })
                .map_err(|e| e.to_string())?;
            }
            let load_s = t.elapsed().as_secs_f64();
            if show {
                eprint!("\r{:80}\r", "");
            }
            // Stream 0 is measured (the same at every fraction); warm-up slices use streams
            // 1, 2, ..., so the measured operations never replay what warmed the tiers.
            let phase = |secs: f64, stream: u64| Phase {
                workload: w,
                dist,
                records: a.records,
                value_bytes: a.value_bytes,
                threads: a.threads,
                duration: Duration::from_secs_f64(secs),
                seed: keys::mix(a.seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            };
            let (warmup, trace) = warm_up(&db, &ks, a.warmup_seconds, a.warmup_slice, phase)?;
            if !a.json && !trace.is_empty() {
                let t: Vec<String> = trace.iter().map(|h| format!("{h:.3}")).collect();
                eprintln!(
                    "warm-up hit ratio per {}s slice: {}",
                    a.warmup_slice,
                    t.join(" ")
                );
            }
            let before = db.stats();
            let m = workload::run(&db, &ks, &phase(a.seconds, 0)).map_err(|e| e.to_string())?;
            let after = db.stats();
            let hit = after.dram_hit_ratio_since(&before);
            let ops_s = m.ops as f64 / m.elapsed.as_secs_f64();
            let used = m.max_dram_used.max(after.dram_used_bytes);
            let (p50, p99, p999) = (
                m.latency.value_at_quantile(0.50),
                m.latency.value_at_quantile(0.99),
                m.latency.value_at_quantile(0.999),
            );
            if a.json {
                let line = serde_json::json!({
                    "engine": "tera",
                    "workload": w.name(),
                    "dist": a.dist,
                    "theta": if matches!(dist, Dist::Zipf{..}) { serde_json::json!(a.theta) } else { serde_json::Value::Null },
                    "records": a.records,
                    "value_bytes": a.value_bytes,
                    "threads": a.threads,
                    "dram_fraction": fraction,
                    "far_ns": a.far_ns,
                    "far_latency": emulation,
                    "ops_per_sec": ops_s.round(),
                    "dram_hit_ratio": (hit * 10000.0).round() / 10000.0,
                    "p50_ns": p50,
                    "p99_ns": p99,
                    "p999_ns": p999,
                    "dram_budget_bytes": budget,
                    "dram_used_bytes": used,
                    "rss_anon_bytes": m.max_rss_anon,
                    "index_bytes": after.index_bytes,
                    "index_bytes_per_key": (after.index_bytes_per_key() * 100.0).round() / 100.0,
                    "frame_bytes": after.frame_bytes,
                    "promotions": after.promotions - before.promotions,
                    "readmissions": after.readmissions - before.readmissions,
                    "pages_demoted": after.pages_demoted - before.pages_demoted,
                    "compaction_bytes": after.compaction_bytes - before.compaction_bytes,
                    "policy": db.policy_name(),
                    "partitions": after.partitions,
                    "huge_pages": a.huge_pages,
                    "page_bytes": page,
                    "seconds": m.elapsed.as_secs_f64(),
                    "warmup_seconds": warmup,
                    "load_seconds": load_s,
                    "load": if bulk { "bulk" } else { "puts" },
                    "durability": a.durability,
                    "wal_fsyncs": after.wal_fsyncs - before.wal_fsyncs,
                    "ordered_index_bytes": after.ordered_index_bytes,
                    "seed": a.seed,
                });
                println!("{line}");
            } else {
                println!(
                    "{:<3} {:>6} {:>9} {:>12.0} {:>8.4} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8.1} {:>10} {:>5.0}s",
                    w.name(),
                    fraction,
                    mib(budget),
                    ops_s,
                    hit,
                    ns(p50),
                    ns(p99),
                    ns(p999),
                    mib(used),
                    mib(m.max_rss_anon),
                    mib(after.index_bytes),
                    after.index_bytes_per_key(),
                    after.promotions - before.promotions,
                    warmup,
                );
            }
            let _ = std::io::stdout().flush();
            drop(ks);
            drop(db);
            if let Some(d) = &a.data_dir {
                let _ = std::fs::remove_dir_all(d.join(format!("{}-{i}", w.name())));
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    if !a.json && a.far_ns > 0 {
        println!("far-tier latency of {} ns per record read is EMULATED (busy-wait); see docs/benchmarks.md", a.far_ns);
    }
    Ok(())
}

/// Run the workload unmeasured until the DRAM hit ratio settles (a slice no better than the
/// best of the two before it, by 0.001) or `most` seconds pass; returns the seconds spent.
fn warm_up(
    db: &Db,
    ks: &tera_engine::Keyspace,
    most: f64,
    slice: f64,
    phase: impl Fn(f64, u64) -> Phase,
) -> Result<(f64, Vec<f64>), String> {
    let t = Instant::now();
    let mut hits: Vec<f64> = Vec::new();
    while slice > 0.0 && t.elapsed().as_secs_f64() + slice <= most + 1e-9 {
        let before = db.stats();
        workload::run(db, ks, &phase(slice, hits.len() as u64 + 1)).map_err(|e| e.to_string())?;
        let hit = db.stats().dram_hit_ratio_since(&before);
        let n = hits.len();
        hits.push(hit);
        if n >= 2 && hit <= hits[n - 1].max(hits[n - 2]) + 0.001 {
            break;
        }
    }
    Ok((t.elapsed().as_secs_f64(), hits))
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn mib(b: u64) -> String {
    format!("{:.1}M", b as f64 / (1 << 20) as f64)
}

fn ns(v: u64) -> String {
    if v >= 10_000 {
        format!("{:.1}us", v as f64 / 1000.0)
    } else {
        format!("{v}ns")
    }
}

fn progress(done: u64, total: u64) {
    let pct = done * 100 / total.max(1);
    let bar = (pct / 4) as usize;
    eprint!(
        "\rloading [{}{}] {pct:>3}% {done}/{total} records",
        "#".repeat(bar),
        ".".repeat(25 - bar)
    );
}
