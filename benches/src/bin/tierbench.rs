//! `tierbench`: YCSB-style workloads over Teraservices and the engines people would pick
//! instead, at several DRAM budgets in one invocation, on the same data and the same seeded
//! operation streams, so that figures are side by side. See docs/benchmarks.md for the
//! published runs.
//!
//! With `--memory-limit`, each (engine, DRAM fraction) runs in a child process of this
//! binary inside a memory cgroup of its own (see `tera_benches::cgroup`); the child prints
//! its JSON lines and the parent shows them.

use clap::Parser;
use serde_json::{json, Value};
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tera_benches::cgroup::{self, Group, Hierarchy};
use tera_benches::keys::{self, KEY_LEN};
use tera_benches::probe;
use tera_benches::store::{Dram, Store, Tera};
use tera_benches::workload::{self, Dist, Phase, Workload};
use tera_engine::{
    AlwaysPromote, Config, Db, Durability, FrequencyAdmission, GhostAdmission, HeatPolicy,
    KeyspaceOptions, NeverPromote,
};

/// Every engine `--engine all` runs, in order.
const ALL_ENGINES: [&str; 6] = ["tera", "dram", "lmdb", "rocksdb", "redb", "fjall"];

#[derive(Parser, Debug)]
#[command(
    version,
    about = "YCSB-style workloads over Teraservices and its peers at several DRAM budgets",
    args_override_self = true
)]
struct Args {
    /// Engines, comma separated: tera, dram (the all-DRAM baseline), lmdb, rocksdb, redb,
    /// fjall, or `all`. The peers need the `peers` cargo feature.
    #[arg(long, default_value = "tera", value_delimiter = ',')]
    engine: Vec<String>,
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
    /// Request distributions, comma separated: zipf (exponent `--theta`), zipf:<exponent>,
    /// or uniform. Each is warmed up and measured in turn on the same loaded data.
    #[arg(long, default_value = "zipf", value_delimiter = ',')]
    dist: Vec<String>,
    /// Zipf exponent of a plain `zipf`.
    #[arg(long, default_value_t = 0.99)]
    theta: f64,
    /// Client threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Most unmeasured seconds before each measured run. The warm-up runs the workload in
    /// slices of `--warmup-slice` seconds until a slice's DRAM hit ratio is no better than the
    /// best of the two slices before it by 0.001 (the tiers have settled; engines with no hit
    /// ratio: until a slice's ops/s is no better than the best of the two before by 1%), or
    /// until the next slice would pass this many seconds. 0: no warm-up.
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
    /// Teraservices' DRAM budget is the DRAM fraction of the data times this. Its record
    /// headers, index and log slack live inside the budget, so at fraction 1 and headroom 1
    /// not every record fits in DRAM; the in-memory comparison, where no engine has a limit,
    /// uses 2 (every engine's resident memory is reported next to its figures).
    #[arg(long, default_value_t = 1.0)]
    budget_headroom: f64,
    /// In memory-bounded runs Teraservices' DRAM budget is the limit less this, MiB: its
    /// code, thread stacks, allocator slack and the page cache its far reads fault in (the
    /// peers likewise get their documented shares of the same limit).
    #[arg(long, default_value_t = 64)]
    tera_reserve_mib: u64,
    /// RocksDB reads its files with `O_DIRECT` (`use_direct_reads`), so that under a memory
    /// limit its blocks are not cached twice (block cache and page cache), and its block
    /// cache takes half of the limit instead of a third (60% was OOM-killed in one run of
    /// three at 1/8 of 16M records). The alternative set-up RocksDB's Direct IO page
    /// describes; off by default.
    #[arg(long)]
    rocksdb_direct_reads: bool,
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
    /// Run the whole engine list this many times, in the same order each round, so that
    /// engines measured one after another on a shared device get its good and bad spells
    /// alike; every line carries its `round` (from 0). Compare medians over rounds.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Seed of the operation streams.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// One JSON object per run per line on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Skip the machine probes (DRAM latency, sequential bandwidth, disk IOPS).
    #[arg(long)]
    no_probes: bool,
    /// Run each engine in a memory cgroup of its own, limited to the DRAM fraction of the
    /// data plus `--memory-allowance-mib`. The load runs before the limit is set; warm-up
    /// and measurement run under it. Teraservices' far tier is a file on the real disk and
    /// no latency is emulated. Needs root and a cgroup memory controller (v1 or v2).
    #[arg(long)]
    memory_limit: bool,
    /// The fixed allowance on top of the DRAM fraction in memory-bounded runs, MiB: code,
    /// thread stacks, allocator slack and whatever page cache the engine gets beyond that.
    #[arg(long, default_value_t = 256)]
    memory_allowance_mib: u64,
    /// Run every engine, fraction and round in this process, one after another. By default a
    /// run of more than one starts a child process for each engine and fraction (as
    /// memory-bounded runs do), so that no engine runs in the heap and threads the previous
    /// one left behind (measured: in one process Teraservices ran YCSB-A about 25% slower
    /// right after the all-DRAM map had freed its 16M allocations than on its own).
    #[arg(long)]
    same_process: bool,
    /// (internal) This process is a child: run its one engine and fraction, and exit.
    #[arg(long, hide = true)]
    child: bool,
    /// (internal) The cgroup a memory-bounded child joins, and the limit it sets after its
    /// load.
    #[arg(long, hide = true)]
    child_cgroup: Option<PathBuf>,
    #[arg(long, hide = true, default_value_t = 0)]
    child_limit: u64,
    #[arg(long, hide = true, default_value = "v1")]
    child_cgroup_version: String,
    /// When a write is durable: none (the default: in memory only), periodic:<ms> (the log
    /// is synced every <ms> milliseconds) or commit (group commit; every write waits for its
    /// sync). With a durable mode the data is bulk loaded (one put per record would be one
    /// sync per record).
    #[arg(long, default_value = "none")]
    durability: String,
    /// Directory for the write-ahead log and checkpoints (default: the far directory).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// How Teraservices loads: bulk (the default: ascending key order through its bulk
    /// load, as every other engine loads) or puts (one put per record, in record order).
    #[arg(long, default_value = "bulk")]
    load: String,
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

/// A parsed `--dist` item.
fn parse_dist(s: &str, theta: f64) -> Result<(Dist, String), String> {
    match s {
        // `--theta`, checked here as `zipf:<exponent>` is below: Zipf::new refuses the rest,
        // and would do so in a worker thread after the load.
        "zipf" if theta >= 0.0 && theta.is_finite() => {
            Ok((Dist::Zipf { theta }, format!("zipf:{theta}")))
        }
        "zipf" => Err(format!(
            "--theta {theta}: the Zipf exponent must be a finite number of 0 or more"
        )),
        "uniform" => Ok((Dist::Uniform, "uniform".into())),
        _ => match s.strip_prefix("zipf:").map(str::parse::<f64>) {
            Some(Ok(t)) if t >= 0.0 && t.is_finite() => Ok((Dist::Zipf { theta: t }, s.into())),
            _ => Err(format!(
                "unknown distribution {s:?}: use zipf, zipf:<exponent> or uniform"
            )),
        },
    }
}

/// The engines of `--engine`, checked.
fn parse_engines(list: &[String]) -> Result<Vec<&'static str>, String> {
    let mut out = Vec::new();
    for e in list {
        if e == "all" {
            out.extend(ALL_ENGINES);
            continue;
        }
        match ALL_ENGINES.iter().find(|&&n| n == e) {
            Some(&n) => out.push(n),
            None => {
                return Err(format!(
                    "unknown engine {e:?}: use {} or all",
                    ALL_ENGINES.join(", ")
                ))
            }
        }
    }
    if !cfg!(feature = "peers") {
        if let Some(p) = out.iter().find(|e| !matches!(**e, "tera" | "dram")) {
            return Err(format!(
                "engine {p} needs the peers: cargo build --release -p tera-benches --features peers"
            ));
        }
    }
    Ok(out)
}

/// What one (engine, fraction) run needs to open and load its store.
struct RunSpec<'a> {
    a: &'a Args,
    engine: &'static str,
    fraction: f64,
    data_bytes: u64,
    dir: PathBuf,
    ordered: bool,
}

/// The cache a peer gets: in a memory-bounded run, a share of the limit (RocksDB a third, as
/// its tuning guide suggests for the block cache; redb a third and fjall a quarter, which
/// their documentation leaves open), the rest going to the page cache; otherwise the DRAM
/// fraction of the data plus a quarter, so that at fraction 1 everything fits.
#[cfg(feature = "peers")]
fn peer_cache(spec: &RunSpec, share: u64) -> u64 {
    if spec.a.child_limit > 0 {
        spec.a.child_limit / share
    } else {
        (spec.data_bytes as f64 * spec.fraction * 1.25) as u64
    }
}

/// Teraservices' DRAM budget: in a memory-bounded run (a child with a limit) the limit less
/// `--tera-reserve-mib`; otherwise the DRAM fraction of the data times `--budget-headroom`.
fn tera_budget(a: &Args, data_bytes: u64, fraction: f64) -> u64 {
    if a.child_limit > 0 {
        a.child_limit.saturating_sub(a.tera_reserve_mib << 20)
    } else {
        (data_bytes as f64 * fraction * a.budget_headroom) as u64
    }
}

/// Open and load one store.
fn open_store(spec: &RunSpec) -> Result<Box<dyn Store>, String> {
    let a = spec.a;
    Ok(match spec.engine {
        "tera" => {
            let budget = tera_budget(a, spec.data_bytes, spec.fraction);
            let mut c = Config::new(&spec.dir);
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
            c.durability = durability(&a.durability)?;
            c.data_dir = a
                .data_dir
                .as_ref()
                .map(|d| d.join(spec.dir.file_name().unwrap_or_default()));
            let db = Db::open(c).map_err(|e| format!("fraction {}: {e}", spec.fraction))?;
            // E scans an ordered keyspace; the others use the hash-only default keyspace.
            let ks = if spec.ordered {
                db.keyspace("usertable", KeyspaceOptions::ordered())
            } else {
                db.keyspace(tera_engine::DEFAULT_KEYSPACE, KeyspaceOptions::hash())
            }
            .map_err(|e| e.to_string())?;
            let t = Tera { db, ks };
            match a.load.as_str() {
                "bulk" => t.load(a.records, a.value_bytes)?,
                _ => {
                    let show = !a.json && std::io::stderr().is_terminal();
                    workload::load(&t.ks, a.records, a.value_bytes, |done| {
                        if show {
                            progress(done, a.records);
                        }
                    })
                    .map_err(|e| e.to_string())?;
                    if show {
                        eprint!("\r{:80}\r", "");
                    }
                }
            }
            Box::new(t)
        }
        "dram" => {
            let d = Dram::default();
            d.load(a.records, a.value_bytes)?;
            Box::new(d)
        }
        #[cfg(feature = "peers")]
        "lmdb" => {
            let s = tera_benches::peers::Lmdb::open(&spec.dir, spec.data_bytes)?;
            s.load(a.records, a.value_bytes)?;
            Box::new(s)
        }
        #[cfg(feature = "peers")]
        "rocksdb" => {
            let s = if a.rocksdb_direct_reads {
                let cache = if a.child_limit > 0 {
                    a.child_limit / 2
                } else {
                    peer_cache(spec, 3)
                };
                tera_benches::peers::Rocks::open_direct(&spec.dir, cache)?
            } else {
                tera_benches::peers::Rocks::open(&spec.dir, peer_cache(spec, 3))?
            };
            s.load(a.records, a.value_bytes)?;
            Box::new(s)
        }
        #[cfg(feature = "peers")]
        "redb" => {
            let s = tera_benches::peers::Redb::open(&spec.dir, peer_cache(spec, 3))?;
            s.load(a.records, a.value_bytes)?;
            Box::new(s)
        }
        #[cfg(feature = "peers")]
        "fjall" => {
            let s = tera_benches::peers::Fjall::open(&spec.dir, peer_cache(spec, 4))?;
            s.load(a.records, a.value_bytes)?;
            Box::new(s)
        }
        other => return Err(format!("engine {other} is not built in")),
    })
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
    let dists = a
        .dist
        .iter()
        .map(|d| parse_dist(d, a.theta))
        .collect::<Result<Vec<_>, _>>()?;
    let engines = parse_engines(&a.engine)?;
    if a.records == 0 || a.threads == 0 {
        return Err("--records and --threads must be at least 1".into());
    }
    if a.dram_fractions
        .iter()
        .any(|f| !(f.is_finite() && *f > 0.0))
    {
        return Err("--dram-fractions must be positive".into());
    }
    if a.memory_limit && a.tera_reserve_mib >= a.memory_allowance_mib {
        return Err(format!(
            "--tera-reserve-mib ({}) must be below --memory-allowance-mib ({}): Teraservices' budget is the limit less its reserve",
            a.tera_reserve_mib, a.memory_allowance_mib
        ));
    }
    if !(a.budget_headroom.is_finite() && a.budget_headroom > 0.0) {
        return Err("--budget-headroom must be positive".into());
    }
    tera_benches::check_seconds("--seconds", a.seconds, false)?;
    tera_benches::check_seconds("--warmup-seconds", a.warmup_seconds, true)?;
    tera_benches::check_seconds("--warmup-slice", a.warmup_slice, true)?;
    if !matches!(a.load.as_str(), "bulk" | "puts") {
        return Err(format!("unknown --load {:?}: use bulk or puts", a.load));
    }
    durability(&a.durability)?;
    if a.memory_limit && a.far_ns > 0 {
        return Err("--memory-limit runs use the real disk: drop --far-ns".into());
    }
    if engines.contains(&"dram") && workloads.contains(&Workload::E) {
        return Err("the dram baseline cannot scan: drop workload E or engine dram".into());
    }
    let data_bytes = a.records * (KEY_LEN + a.value_bytes) as u64;

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

    // A child: join its memory group if it has one, run its one engine and fraction, exit.
    if a.child {
        let g = match &a.child_cgroup {
            Some(path) => {
                let version = match a.child_cgroup_version.as_str() {
                    "v2" => cgroup::Version::V2,
                    _ => cgroup::Version::V1,
                };
                let g = Group::open(version, path.clone());
                g.join()?;
                Some(g)
            }
            None => None,
        };
        let r = run_engine(
            &a,
            engines[0],
            0,
            a.dram_fractions[0],
            data_bytes,
            &far_root,
            &workloads,
            &dists,
            g.as_ref(),
            &mut |v| {
                println!("{v}");
                let _ = std::io::stdout().flush();
            },
        );
        // The parent removes the group once this process has left it.
        std::mem::forget(g);
        return r;
    }

    if !a.no_probes {
        let ns = probe::dram_random_load_ns(1 << 30, 20_000_000);
        let gbps = probe::seq_read_gbps(1 << 30, 3);
        let iops = probe::disk_random_read_iops(&far_root, 1 << 30, 1, 3.0);
        let iops2 = probe::disk_random_read_iops(&far_root, 1 << 30, 8, 3.0);
        if a.json {
            println!(
                "{}",
                json!({"probe": "dram_random_load_ns", "value": (ns * 10.0).round() / 10.0})
            );
            println!(
                "{}",
                json!({"probe": "seq_read_gbps", "value": (gbps * 100.0).round() / 100.0})
            );
            match (&iops, &iops2) {
                (Ok(i1), Ok(i8)) => {
                    println!(
                        "{}",
                        json!({"probe": "disk_4k_random_read_iops", "queue_depth": 1, "value": i1.round()})
                    );
                    println!(
                        "{}",
                        json!({"probe": "disk_4k_random_read_iops", "queue_depth": 8, "value": i8.round()})
                    );
                }
                (Err(e), _) | (_, Err(e)) => println!(
                    "{}",
                    json!({"probe": "disk_4k_random_read_iops", "error": e})
                ),
            }
        } else {
            let disk = match (&iops, &iops2) {
                (Ok(i1), Ok(i8)) => {
                    format!("disk 4 KiB random reads {i1:.0}/s at depth 1, {i8:.0}/s at depth 8")
                }
                (Err(e), _) | (_, Err(e)) => format!("disk probe failed: {e}"),
            };
            println!("machine: random DRAM load {ns:.1} ns (1 GiB pointer chase), sequential read {gbps:.1} GB/s, {disk}");
        }
    }
    // Memory-bounded runs need a cgroup: where none can be made they are skipped, each with
    // a line saying why (`skipped`), and the exit status is 0 unless a run failed.
    let mut skip_why: Option<String> = None;
    let hierarchy = match a.memory_limit.then(Hierarchy::detect) {
        Some(Ok(h)) => Some(h),
        Some(Err(why)) => {
            eprintln!("tierbench: skipping the memory-bounded runs: {why}");
            skip_why = Some(why);
            None
        }
        None => None,
    };
    if let Some(h) = &hierarchy {
        if let Some(fs) = cgroup::memory_backed_fs(&far_root) {
            return Err(format!(
                "--far-dir {} is on {fs}: memory-bounded runs need the far tier on a disk (a \
                 {fs} file is memory, charged to the engine's cgroup); pass --far-dir on one",
                far_root.display()
            ));
        }
        let stale = Group::remove_stale(h);
        if stale > 0 {
            eprintln!("tierbench: removed {stale} cgroup(s) left by earlier runs that were killed");
        }
        if !a.json {
            println!(
                "memory-bounded: cgroup {} under {}, limit = DRAM fraction of the data + {} MiB",
                h.version.name(),
                h.parent.display(),
                a.memory_allowance_mib
            );
        }
    }
    if !a.json {
        println!(
            "{} records x {} B values ({:.1} MiB of data), {} threads, far latency: {}",
            a.records,
            a.value_bytes,
            data_bytes as f64 / (1 << 20) as f64,
            a.threads,
            if a.far_ns > 0 {
                format!("{} ns (EMULATED)", a.far_ns)
            } else {
                "none (page cache and disk)".into()
            }
        );
        if a.memory_limit.not()
            && engines.iter().any(|e| !matches!(*e, "tera" | "dram"))
            && a.dram_fractions.iter().any(|f| *f < 1.0)
        {
            println!("note: without --memory-limit the peers use the page cache freely; the DRAM fraction only sizes their own caches");
        }
        print_header();
    }
    let round = std::cell::Cell::new(0usize);
    let mut emit = |mut v: Value| {
        if a.rounds > 1 {
            if let Value::Object(o) = &mut v {
                o.entry("round").or_insert(json!(round.get()));
            }
        }
        if a.json {
            println!("{v}");
        } else {
            print_row(&v);
        }
        let _ = std::io::stdout().flush();
    };
    // Runs in child processes: every memory-bounded one, and any of several unless asked not.
    let isolate = hierarchy.is_some()
        || (!a.same_process && engines.len() * a.dram_fractions.len() * a.rounds.max(1) > 1);
    // Child runs that failed (the others still run; the exit status says so).
    let mut failed = Vec::new();
    for (r, &engine) in (0..a.rounds.max(1)).flat_map(|r| engines.iter().map(move |e| (r, e))) {
        round.set(r);
        if a.memory_limit && engine == "dram" {
            if r == 0 {
                eprintln!("tierbench: skipping dram in memory-bounded runs: it has no far tier and cannot fit");
            }
            continue;
        }
        for (i, &fraction) in a.dram_fractions.iter().enumerate() {
            if let Some(why) = &skip_why {
                emit(json!({"engine": engine, "dram_fraction": fraction, "skipped": why}));
                continue;
            }
            if !isolate {
                run_engine(
                    &a, engine, i, fraction, data_bytes, &far_root, &workloads, &dists, None,
                    &mut emit,
                )?;
                continue;
            }
            let limit = (data_bytes as f64 * fraction) as u64 + (a.memory_allowance_mib << 20);
            let limited = hierarchy.as_ref().map(|h| (h, limit));
            if !run_child(
                limited,
                engine,
                fraction,
                &far_root,
                a.data_dir.as_deref(),
                &mut emit,
            )? {
                failed.push(format!("{engine} at fraction {fraction}"));
            }
        }
    }
    if !a.json && a.far_ns > 0 {
        println!("far-tier latency of {} ns per record read is EMULATED (busy-wait); see docs/benchmarks.md", a.far_ns);
    }
    if !failed.is_empty() {
        return Err(format!(
            "{} run(s) failed: {}",
            failed.len(),
            failed.join(", ")
        ));
    }
    Ok(())
}

use std::ops::Not;

/// The parent's arguments less those a child gets its own values of. (Repeating them would
/// not do: a list option given twice is the two lists joined.)
fn child_args() -> Vec<std::ffi::OsString> {
    const OWN: [&str; 4] = ["--engine", "--dram-fractions", "--far-dir", "--rounds"];
    let mut out = Vec::new();
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        let s = arg.to_string_lossy();
        if OWN.contains(&s.as_ref()) {
            args.next(); // its value
        } else if !OWN.iter().any(|o| s.starts_with(&format!("{o}="))) {
            out.push(arg);
        }
    }
    out
}

/// Remove the directories of run `name` (`<engine>-<i>`): its far directory under `far_root`
/// and its twin under `--data-dir`. A run removes them when it ends, but one that was killed
/// (say by its cgroup's OOM killer) or failed leaves them, and the next run of that engine
/// would open the stale files (LMDB's append load fails on them; the others load over them).
/// Best effort.
fn remove_run_dirs(far_root: &Path, data_dir: Option<&Path>, name: &str) {
    if let Some(d) = data_dir {
        let _ = std::fs::remove_dir_all(d.join(name));
    }
    let _ = std::fs::remove_dir_all(far_root.join(name));
}

/// Run one engine at one fraction in a child process (inside a memory cgroup of its own
/// with the given limit, for a memory-bounded run), and pass its lines on. Returns false if
/// the child failed (its error is emitted as a line). The child's directories (it runs as
/// index 0: `<engine>-0`) are removed before it starts and after it fails.
fn run_child(
    limited: Option<(&Hierarchy, u64)>,
    engine: &str,
    fraction: f64,
    far_root: &Path,
    data_dir: Option<&Path>,
    emit: &mut dyn FnMut(Value),
) -> Result<bool, String> {
    let dirs = format!("{engine}-0");
    remove_run_dirs(far_root, data_dir, &dirs);
    let group = match limited {
        Some((h, limit)) => {
            let name = format!("tierbench-{}-{engine}", std::process::id());
            match Group::create(h, &name) {
                Ok(g) => Some((g, h.version.name(), limit)),
                Err(why) => {
                    eprintln!("tierbench: skipping {engine} at fraction {fraction}: {why}");
                    emit(json!({"engine": engine, "dram_fraction": fraction,
                        "memory_limit_bytes": limit, "skipped": why}));
                    return Ok(true);
                }
            }
        }
        None => None,
    };
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(child_args())
        .args(["--child", "--engine", engine, "--no-probes", "--json"])
        .arg("--dram-fractions")
        .arg(fraction.to_string())
        .arg("--far-dir")
        .arg(far_root);
    if let Some((g, version, limit)) = &group {
        cmd.arg("--child-cgroup")
            .arg(&g.path)
            .arg("--child-limit")
            .arg(limit.to_string())
            .args(["--child-cgroup-version", version]);
    }
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting the {engine} child: {e}"))?;
    let out = child.stdout.take().expect("piped stdout");
    for line in std::io::BufReader::new(out).lines() {
        let line = line.map_err(|e| e.to_string())?;
        match serde_json::from_str::<Value>(&line) {
            Ok(v) => emit(v),
            Err(_) => println!("{line}"),
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        use std::os::unix::process::ExitStatusExt;
        let why = match (status.signal(), &group) {
            (Some(9), Some((_, _, limit))) => format!(
                "killed (SIGKILL): most likely the cgroup's OOM killer, so {engine} needs more than {} MiB at fraction {fraction}",
                limit >> 20
            ),
            (Some(s), _) => format!("killed by signal {s}"),
            (None, _) => status.to_string(),
        };
        eprintln!("tierbench: {engine} at fraction {fraction}: {why}; going on with the next run");
        remove_run_dirs(far_root, data_dir, &dirs);
        let limit = group.as_ref().map(|g| g.2);
        emit(
            json!({"engine": engine, "dram_fraction": fraction, "memory_limit_bytes": limit, "error": why}),
        );
    }
    drop(group);
    Ok(status.success())
}

/// Open, load and run every workload and distribution on one engine at one fraction.
#[allow(clippy::too_many_arguments)]
fn run_engine(
    a: &Args,
    engine: &'static str,
    i: usize,
    fraction: f64,
    data_bytes: u64,
    far_root: &Path,
    workloads: &[Workload],
    dists: &[(Dist, String)],
    group: Option<&Group>,
    emit: &mut dyn FnMut(Value),
) -> Result<(), String> {
    let name = format!("{engine}-{i}");
    // Whatever an earlier run of this name left (one killed before it could clean up).
    remove_run_dirs(far_root, a.data_dir.as_deref(), &name);
    let dir = far_root.join(&name);
    let spec = RunSpec {
        a,
        engine,
        fraction,
        data_bytes,
        dir: dir.clone(),
        ordered: workloads.contains(&Workload::E),
    };
    let t = Instant::now();
    let store = open_store(&spec)?;
    let load_s = t.elapsed().as_secs_f64();
    if let Some(g) = group {
        g.set_limit(a.child_limit)?;
    }
    for &w in workloads {
        for (dist, dist_name) in dists {
            // Stream 0 is measured (the same for every engine and fraction); warm-up slices
            // use streams 1, 2, ..., so the measured operations never replay the warm-up.
            let phase = |secs: f64, stream: u64| Phase {
                workload: w,
                dist: *dist,
                records: a.records,
                value_bytes: a.value_bytes,
                threads: a.threads,
                duration: Duration::from_secs_f64(secs),
                seed: keys::mix(a.seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            };
            let (warmup, trace) = warm_up(store.as_ref(), a.warmup_seconds, a.warmup_slice, phase)?;
            if !a.json && !trace.is_empty() {
                let t: Vec<String> = trace.iter().map(|h| format!("{h:.3}")).collect();
                eprintln!(
                    "{engine} {} {dist_name} warm-up per {}s slice: {}",
                    w.name(),
                    a.warmup_slice,
                    t.join(" ")
                );
            }
            if let Some(g) = group {
                g.reset_peak();
            }
            let before = store.tier_stats();
            let dev = tera_benches::sysinfo::device_of(&dir);
            let io0 = tera_benches::sysinfo::io_read_bytes();
            let reads0 = dev.and_then(tera_benches::sysinfo::device_reads);
            let m = workload::run(store.as_ref(), &phase(a.seconds, 0))?;
            let io1 = tera_benches::sysinfo::io_read_bytes();
            let reads1 = dev.and_then(tera_benches::sysinfo::device_reads);
            let after = store.tier_stats();
            let ops_s = m.ops as f64 / m.elapsed.as_secs_f64();
            let per_op = |d: Option<u64>| {
                d.filter(|_| m.ops > 0)
                    .map(|d| (d as f64 / m.ops as f64 * 1000.0).round() / 1000.0)
            };
            let mut line = json!({
                "engine": engine,
                "workload": w.name(),
                "dist": dist_name,
                "theta": match dist { Dist::Zipf { theta } => json!(theta), Dist::Uniform => Value::Null },
                "records": a.records,
                "value_bytes": a.value_bytes,
                "threads": a.threads,
                "dram_fraction": fraction,
                "far_ns": a.far_ns,
                "far_latency": if a.far_ns > 0 { "emulated" } else { "none" },
                "rocksdb_direct_reads": engine == "rocksdb" && a.rocksdb_direct_reads,
                "ops_per_sec": ops_s.round(),
                "p50_ns": m.latency.value_at_quantile(0.50),
                "p99_ns": m.latency.value_at_quantile(0.99),
                "p999_ns": m.latency.value_at_quantile(0.999),
                "rss_anon_bytes": m.max_rss_anon,
                "seconds": m.elapsed.as_secs_f64(),
                "warmup_seconds": warmup,
                "load_seconds": load_s,
                "seed": a.seed,
                // The process that ran it: one per engine and fraction unless --same-process.
                "pid": std::process::id(),
                "memory_limit_bytes": if group.is_some() { json!(a.child_limit) } else { Value::Null },
                "cgroup": group.map(|g| g.version.name()),
                "cgroup_peak_bytes": group.and_then(Group::peak),
                // Reads from the device during the measured phase: bytes this process had
                // read (/proc/self/io), and reads the far directory's device completed for
                // anyone (/proc/diskstats), each per operation.
                "device_read_bytes_per_op": per_op(io0.zip(io1).map(|(x, y)| y.saturating_sub(x))),
                "device_reads_per_op": per_op(reads0.zip(reads1).map(|(x, y)| y.saturating_sub(x))),
            });
            if let (Some(b), Some(s)) = (&before, &after) {
                let budget = tera_budget(a, data_bytes, fraction);
                let extra = json!({
                    "budget_headroom": if a.child_limit > 0 { Value::Null } else { json!(a.budget_headroom) },
                    "tera_reserve_mib": if a.child_limit > 0 { json!(a.tera_reserve_mib) } else { Value::Null },
                    "dram_hit_ratio": (s.dram_hit_ratio_since(b) * 10000.0).round() / 10000.0,
                    "dram_budget_bytes": budget,
                    "dram_used_bytes": m.max_dram_used.max(s.dram_used_bytes),
                    "index_bytes": s.index_bytes,
                    "index_bytes_per_key": (s.index_bytes_per_key() * 100.0).round() / 100.0,
                    "ordered_index_bytes": s.ordered_index_bytes,
                    "frame_bytes": s.frame_bytes,
                    "promotions": s.promotions - b.promotions,
                    "readmissions": s.readmissions - b.readmissions,
                    "pages_demoted": s.pages_demoted - b.pages_demoted,
                    "compaction_bytes": s.compaction_bytes - b.compaction_bytes,
                    "partitions": s.partitions,
                    // Bytes of DRAM share that moved between partitions during the measured
                    // phase (shares follow need; an even load moves little).
                    "shares_moved_bytes": s.shares_moved_bytes - b.shares_moved_bytes,
                    "largest_share_bytes": s.largest_share_bytes,
                    "policy": a.policy,
                    "huge_pages": a.huge_pages,
                    "load": a.load,
                    "durability": a.durability,
                    "wal_fsyncs": s.wal_fsyncs - b.wal_fsyncs,
                });
                if let (Value::Object(l), Value::Object(e)) = (&mut line, extra) {
                    l.extend(e);
                }
            }
            emit(line);
        }
    }
    drop(store);
    remove_run_dirs(far_root, a.data_dir.as_deref(), &name);
    Ok(())
}

fn print_header() {
    println!(
        "{:<8} {:<3} {:<9} {:>6} {:>11} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>8} {:>8}",
        "engine",
        "wl",
        "dist",
        "frac",
        "ops/s",
        "dram-hit",
        "p50",
        "p99",
        "p99.9",
        "rss-anon",
        "cg-peak",
        "idx B/k",
        "dev-rd/op"
    );
}

fn print_row(v: &Value) {
    let f = |k: &str| v.get(k).and_then(Value::as_f64);
    let u = |k: &str| v.get(k).and_then(Value::as_u64);
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
    if v.get("probe").is_some() {
        println!("{v}");
        return;
    }
    if let Some(e) = v.get("error") {
        println!(
            "{:<8} fraction {}: {}",
            s("engine"),
            f("dram_fraction").unwrap_or(0.0),
            e
        );
        return;
    }
    if let Some(why) = v.get("skipped").and_then(Value::as_str) {
        println!(
            "{:<8} fraction {}: skipped: {why}",
            s("engine"),
            f("dram_fraction").unwrap_or(0.0)
        );
        return;
    }
    let opt = |x: Option<u64>, g: fn(u64) -> String| x.map_or("-".to_string(), g);
    println!(
        "{:<8} {:<3} {:<9} {:>6} {:>11.0} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>8} {:>8}",
        s("engine"),
        s("workload"),
        s("dist"),
        f("dram_fraction").unwrap_or(0.0),
        f("ops_per_sec").unwrap_or(0.0),
        f("dram_hit_ratio").map_or("-".into(), |h| format!("{h:.4}")),
        opt(u("p50_ns"), ns),
        opt(u("p99_ns"), ns),
        opt(u("p999_ns"), ns),
        opt(u("rss_anon_bytes"), mib),
        opt(u("cgroup_peak_bytes"), mib),
        f("index_bytes_per_key").map_or("-".into(), |b| format!("{b:.1}")),
        f("device_reads_per_op").map_or("-".into(), |r| format!("{r:.3}")),
    );
}

/// Run the workload unmeasured in slices until it settles, or `most` seconds pass; returns
/// the seconds spent and each slice's figure. Teraservices settles on its DRAM hit ratio (a
/// slice no better than the best of the two before, by 0.001); the other engines, which
/// report no hit ratio, on throughput (a slice no better than the best of the two before,
/// by 1%).
fn warm_up(
    store: &dyn Store,
    most: f64,
    slice: f64,
    phase: impl Fn(f64, u64) -> Phase,
) -> Result<(f64, Vec<f64>), String> {
    let t = Instant::now();
    let mut figs: Vec<f64> = Vec::new();
    // Slices are counted, not timed: a slice fits if the slices so far and it fit in `most`
    // (timing them let `--warmup-slice 40 --warmup-seconds 40` run none at all, since the
    // clock had moved past 0 by the first check).
    while slice > 0.0 && (figs.len() + 1) as f64 * slice <= most + 1e-9 {
        let before = store.tier_stats();
        let m = workload::run(store, &phase(slice, figs.len() as u64 + 1))?;
        let (fig, slack) = match (before, store.tier_stats()) {
            (Some(b), Some(s)) => (s.dram_hit_ratio_since(&b), 0.001),
            _ => {
                let ops = m.ops as f64 / m.elapsed.as_secs_f64();
                (ops, ops * 0.01)
            }
        };
        let n = figs.len();
        figs.push(fig);
        if n >= 2 && fig <= figs[n - 1].max(figs[n - 2]) + slack {
            break;
        }
    }
    Ok((t.elapsed().as_secs_f64(), figs))
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
