//! `metabench`: figures of the metadata model (`tera_engine::meta`).
//!
//! - `bigfolder` fills one folder with N files, lists it page by page, and times moving it (N
//!   descendants) against moving an empty folder: a move is a relink, so both should take
//!   about as long.
//! - `throughput` fills namespaces of folders of files, then runs each operation (stat, list
//!   of a folder, create folder, commit upload, move) alone from 1, 2, ... threads for a fixed
//!   time, on random namespaces: ops/s and latency percentiles. A move renames a file of the
//!   thread's own in that namespace from one name to the other and back; the files are made
//!   before any clock starts, and a rename that fails is not counted as an operation: it is
//!   counted in the line's `errors`, and the run exits non-zero.
//!
//! One JSON object per figure on stdout, a summary on stderr. The far-tier latency is
//! emulated only when `--far-ns` says so, and the JSON says which. Arguments that make no
//! sense (no namespaces, folders or files, a time that is not a positive number of seconds,
//! an unknown operation) are refused before anything runs.

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tera_engine::meta::{MetaStore, Precondition, Upload};
use tera_engine::{Config, Db};

#[derive(Parser, Debug)]
#[command(version, about = "Metadata model figures for Teraservices")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// One folder of many children: listing and moving it.
    Bigfolder(Args),
    /// Operation throughput over many namespaces.
    Throughput(Tp),
}

#[derive(clap::Args, Debug)]
struct Args {
    /// Files in the big folder.
    #[arg(long, default_value_t = 1_000_000)]
    children: u64,
    /// Entries per listing page.
    #[arg(long, default_value_t = 1000)]
    page: usize,
    /// DRAM budget, MiB.
    #[arg(long, default_value_t = 4096)]
    budget_mib: u64,
}

#[derive(clap::Args, Debug)]
struct Tp {
    #[arg(long, default_value_t = 1000)]
    namespaces: u64,
    /// Folders per namespace.
    #[arg(long, default_value_t = 100)]
    folders: u64,
    /// Files per folder.
    #[arg(long, default_value_t = 99)]
    files: u64,
    /// Thread counts to run each operation with.
    #[arg(long, default_value = "1,2", value_delimiter = ',')]
    threads: Vec<usize>,
    /// Seconds per operation and thread count.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// DRAM budget of the fraction-1 run, MiB: it must hold every record.
    #[arg(long, default_value_t = 8192)]
    budget_mib: u64,
    /// DRAM budgets to run at, as fractions of the record bytes the fraction-1 run stored
    /// (which always runs first, to measure them).
    #[arg(long, default_value = "1", value_delimiter = ',')]
    dram_fractions: Vec<f64>,
    /// Emulated far-tier latency per record read, ns (0: none).
    #[arg(long, default_value_t = 0)]
    far_ns: u64,
    /// Operations to run, in order.
    #[arg(
        long,
        default_value = "stat,list,mkdir,upload,move",
        value_delimiter = ','
    )]
    ops: Vec<String>,
}

/// The operations `throughput --ops` knows.
const OPS: [&str; 5] = ["stat", "list", "mkdir", "upload", "move"];

fn main() {
    let cli = Cli::parse();
    if let Err(e) = check(&cli.cmd) {
        eprintln!("metabench: {e}");
        std::process::exit(1);
    }
    match cli.cmd {
        Cmd::Bigfolder(a) => bigfolder(a),
        Cmd::Throughput(t) => {
            let failed = throughput(t);
            if failed > 0 {
                eprintln!(
                    "metabench: {failed} move(s) failed (see the lines' \"errors\" and \"first_error\"): the move figures of those lines are not valid"
                );
                std::process::exit(1);
            }
        }
    }
}

/// Refuse arguments that would divide by zero, panic in a worker or mean nothing.
fn check(cmd: &Cmd) -> Result<(), String> {
    match cmd {
        Cmd::Bigfolder(a) => {
            if a.page == 0 {
                return Err("--page must be at least 1".into());
            }
        }
        Cmd::Throughput(t) => {
            if t.namespaces == 0 || t.folders == 0 || t.files == 0 {
                return Err(format!(
                    "--namespaces, --folders and --files must each be at least 1 (got {}, {}, {})",
                    t.namespaces, t.folders, t.files
                ));
            }
            if t.threads.is_empty() || t.threads.contains(&0) {
                return Err("--threads must list thread counts of at least 1".into());
            }
            tera_benches::check_seconds("--seconds", t.seconds, false)?;
            if t.dram_fractions
                .iter()
                .any(|f| !(f.is_finite() && *f > 0.0))
            {
                return Err("--dram-fractions must be positive".into());
            }
            if let Some(op) = t.ops.iter().find(|o| !OPS.contains(&o.as_str())) {
                return Err(format!(
                    "unknown operation {op:?} in --ops: use {}",
                    OPS.join(", ")
                ));
            }
        }
    }
    Ok(())
}

/// A fresh database in a temporary directory (kept while the returned guard lives).
fn open(budget_mib: u64, far_ns: u64, expected_records: u64) -> (tempfile::TempDir, Db) {
    open_bytes(budget_mib << 20, far_ns, expected_records)
}

fn open_bytes(budget: u64, far_ns: u64, expected_records: u64) -> (tempfile::TempDir, Db) {
    let dir = tempfile::Builder::new()
        .prefix("metabench-")
        .tempdir()
        .expect("temp dir");
    let mut c = Config::new(dir.path());
    c.dram_budget_bytes = budget;
    c.max_key_bytes = 4200;
    c.max_value_bytes = 16 << 10;
    c.changelog_bytes = 16 << 20;
    c.far_latency_ns = far_ns;
    // Size the hash index for the records to come: growing it on the way frees frames by
    // demoting whole pages, live records and all.
    c.expected_records = expected_records as usize;
    let db = Db::open(c).expect("open");
    (dir, db)
}

/// Run every fraction; returns the number of moves that failed.
fn throughput(a: Tp) -> u64 {
    let mut fractions = a.dram_fractions.clone();
    fractions.retain(|&f| f != 1.0);
    fractions.insert(0, 1.0);
    let mut record_bytes = 0;
    let mut failed = 0;
    for f in fractions {
        let budget = if f == 1.0 {
            a.budget_mib << 20
        } else {
            (record_bytes as f64 * f) as u64
        };
        let (stored, failed_here) = throughput_at(&a, f, budget);
        failed += failed_here;
        if f == 1.0 {
            record_bytes = stored;
        }
    }
    failed
}

/// The file thread `th` moves back and forth in every namespace: `/mv/t<th>-a` or, after an
/// odd number of moves there, `/mv/t<th>-b`.
fn mv_path(th: usize, at_b: bool) -> String {
    format!("/mv/t{th}-{}", if at_b { 'b' } else { 'a' })
}

/// What one worker thread measured.
struct Worker {
    ops: u64,
    hist: Histogram<u64>,
    /// Operations that failed (moves only; the others panic): not in `ops` or `hist`.
    failed: u64,
    first_error: Option<String>,
}

/// Fill a fresh database with budget `budget` and run every operation; returns the record
/// bytes stored after the fill and the number of moves that failed.
fn throughput_at(a: &Tp, fraction: f64, budget: u64) -> (u64, u64) {
    let fillers = a.threads.iter().copied().max().unwrap_or(1);
    let moves = a.ops.iter().any(|o| o == "move");
    // Entry records, plus about one directory node per folder and the namespace headers (and
    // the files the moves rename).
    let expected =
        a.namespaces * (a.folders * (a.files + 2) + 8 + if moves { fillers as u64 } else { 0 });
    let (_dir, db) = open_bytes(budget, a.far_ns, expected);
    let m = MetaStore::open(&db).expect("meta");
    let up = |i: u64| Upload {
        size: 1000 + i % 1000,
        mtime: i as i64,
        checksum: ("sha256".into(), format!("{i:064x}")),
        mime: "application/octet-stream".into(),
    };
    // Fill: namespaces split over the threads of the largest count.
    let t = Instant::now();
    std::thread::scope(|s| {
        for f in 0..fillers as u64 {
            let (m, up) = (&m, &up);
            s.spawn(move || {
                for ns in (f..a.namespaces).step_by(fillers) {
                    m.create_namespace(ns, 0).expect("namespace");
                    m.mkdir(ns, "/new", false, 0).expect("mkdir");
                    m.mkdir(ns, "/mv", false, 0).expect("mkdir");
                    for d in 0..a.folders {
                        m.mkdir(ns, &format!("/d{d:04}"), false, 0).expect("mkdir");
                        for i in 0..a.files {
                            m.upload(
                                ns,
                                &format!("/d{d:04}/f{i:04}"),
                                &up(i),
                                &Precondition::None,
                            )
                            .expect("upload");
                        }
                    }
                }
            });
        }
    });
    let entries = a.namespaces * a.folders * (a.files + 1);
    let st = db.stats();
    let record_bytes = st.dram.bytes + st.far.bytes;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "fraction {fraction}: filled {entries} entries over {} namespaces in {:.1}s; {:.0} MiB of records ({} keys); DRAM used {:.0} MiB of {:.0} MiB (index {:.0}, ordered index {:.0}); far records {}",
        a.namespaces,
        t.elapsed().as_secs_f64(),
        mib(record_bytes),
        st.keys,
        mib(st.dram_used_bytes),
        mib(budget),
        mib(st.index_bytes),
        mib(st.ordered_index_bytes),
        st.far.records
    );
    if fraction == 1.0 && st.far.records > 0 {
        eprintln!("warning: the fraction-1 run tiered records to far memory: raise --budget-mib");
    }
    // The files the moves rename: one per thread (of the largest count) in every namespace,
    // made here, before any clock starts, and after the fill's figures were taken. `at_b[th]
    // [ns]` says which of its two names thread `th`'s file has in namespace `ns`; a thread
    // count's run leaves them where the next one finds them.
    let mut at_b: Vec<Vec<bool>> = if moves {
        for ns in 0..a.namespaces {
            for th in 0..fillers {
                m.upload(ns, &mv_path(th, false), &up(0), &Precondition::None)
                    .expect("upload of a file to move");
            }
        }
        vec![vec![false; a.namespaces as usize]; fillers]
    } else {
        Vec::new()
    };
    let next_dir = AtomicU64::new(0);
    let mut failed_total = 0;
    for op in a.ops.iter().map(String::as_str) {
        for &threads in &a.threads {
            let stop = AtomicBool::new(false);
            let before = db.stats();
            let t = Instant::now();
            let workers: Vec<Worker> = std::thread::scope(|s| {
                // Each thread gets its own files' places (none unless moving).
                let mut places = at_b.iter_mut();
                let hs: Vec<_> = (0..threads)
                    .map(|th| {
                        let (m, stop, next_dir, up) = (&m, &stop, &next_dir, &up);
                        let mut mine: Option<&mut Vec<bool>> = places.next();
                        s.spawn(move || {
                            let mut h =
                                Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
                            let mut x = 0x9e37_79b9_7f4a_7c15u64
                                ^ (th as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                            let mut n = 0u64;
                            let mut failed = 0u64;
                            let mut first_error = None;
                            while !stop.load(Relaxed) {
                                x ^= x << 13;
                                x ^= x >> 7;
                                x ^= x << 17;
                                let ns = x % a.namespaces;
                                let d = (x >> 20) % a.folders;
                                let f = (x >> 40) % a.files;
                                let t0 = Instant::now();
                                match op {
                                    "stat" => {
                                        m.stat(ns, &format!("/d{d:04}/f{f:04}")).expect("stat");
                                    }
                                    "list" => {
                                        let p = m
                                            .list(ns, &format!("/d{d:04}"), 100, None)
                                            .expect("list");
                                        assert_eq!(p.entries.len() as u64, a.files.min(100));
                                    }
                                    "mkdir" => {
                                        let i = next_dir.fetch_add(1, Relaxed);
                                        m.mkdir(ns, &format!("/new/n{i}"), false, 1)
                                            .expect("mkdir");
                                    }
                                    "upload" => {
                                        m.upload(
                                            ns,
                                            &format!("/d{d:04}/f{f:04}"),
                                            &up(n),
                                            &Precondition::None,
                                        )
                                        .expect("upload");
                                    }
                                    "move" => {
                                        // Thread `th` moves its own file in namespace `ns`
                                        // to its other name: every rename has a source and
                                        // a free target, and one that fails anyway is an
                                        // error, not an operation.
                                        let here = &mut mine
                                            .as_deref_mut()
                                            .expect("the files to move were made")
                                            [ns as usize];
                                        let (from, to) = (mv_path(th, *here), mv_path(th, !*here));
                                        match m.rename(ns, &from, &to, None, 1) {
                                            Ok(_) => *here = !*here,
                                            Err(e) => {
                                                failed += 1;
                                                if first_error.is_none() {
                                                    first_error = Some(format!(
                                                        "namespace {ns}: {from} -> {to}: {e}"
                                                    ));
                                                }
                                                continue;
                                            }
                                        }
                                    }
                                    other => panic!("unknown operation {other}"),
                                }
                                let _ = h.record(t0.elapsed().as_nanos().max(1) as u64);
                                n += 1;
                            }
                            Worker {
                                ops: n,
                                hist: h,
                                failed,
                                first_error,
                            }
                        })
                    })
                    .collect();
                std::thread::sleep(Duration::from_secs_f64(a.seconds));
                stop.store(true, Relaxed);
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let secs = t.elapsed().as_secs_f64();
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
            let mut n = 0;
            let mut failed = 0;
            let mut first_error = None;
            for w in workers {
                n += w.ops;
                h.add(w.hist).unwrap();
                failed += w.failed;
                first_error = first_error.or(w.first_error);
            }
            failed_total += failed;
            if let Some(e) = &first_error {
                eprintln!(
                    "fraction {fraction}: {op} {threads} threads: {failed} failed (not counted as operations); the first: {e}"
                );
            }
            let after = db.stats();
            let hit = after.dram_hit_ratio_since(&before);
            eprintln!(
                "fraction {fraction}: {op:<7} {threads} threads: {:>9.0} ops/s  p50 {:>7.1} µs  p99 {:>8.1} µs  DRAM hit {hit:.3}",
                n as f64 / secs,
                h.value_at_quantile(0.5) as f64 / 1e3,
                h.value_at_quantile(0.99) as f64 / 1e3
            );
            println!(
                "{}",
                serde_json::json!({
                    "bench": "meta-throughput",
                    "op": op,
                    "threads": threads,
                    "ops_per_sec": (n as f64 / secs).round(),
                    // Operations that failed, left out of ops_per_sec and the percentiles
                    // (a run with any exits non-zero).
                    "errors": failed,
                    "first_error": first_error,
                    "p50_ns": h.value_at_quantile(0.5),
                    "p99_ns": h.value_at_quantile(0.99),
                    "dram_hit_ratio": (hit * 10000.0).round() / 10000.0,
                    "entries": entries,
                    "namespaces": a.namespaces,
                    "dram_fraction": fraction,
                    "record_bytes": record_bytes,
                    "index_bytes": after.index_bytes,
                    "dram_budget_bytes": budget,
                    "dram_used_bytes": after.dram_used_bytes,
                    "far_ns": a.far_ns,
                    "far_latency": if a.far_ns > 0 { "emulated" } else { "none" },
                })
            );
        }
    }
    (record_bytes, failed_total)
}

fn bigfolder(a: Args) {
    let (_dir, db) = open(a.budget_mib, 0, a.children + a.children / 16 + 16);
    let m = MetaStore::open(&db).expect("meta");
    let ns = 1;
    m.create_namespace(ns, 0).expect("namespace");
    m.mkdir(ns, "/big", false, 0).expect("mkdir");
    m.mkdir(ns, "/empty", false, 0).expect("mkdir");
    m.mkdir(ns, "/to", false, 0).expect("mkdir");
    let t = Instant::now();
    for i in 0..a.children {
        let up = Upload {
            size: 1000 + i % 1000,
            mtime: i as i64,
            checksum: ("sha256".into(), format!("{i:064x}")),
            mime: "application/octet-stream".into(),
        };
        m.upload(ns, &format!("/big/file-{i:09}"), &up, &Precondition::None)
            .expect("upload");
    }
    let fill = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut seen = 0u64;
    let mut pages = 0u64;
    let mut after: Option<String> = None;
    let mut worst = 0f64;
    loop {
        let p0 = Instant::now();
        let page = m.list(ns, "/big", a.page, after.as_deref()).expect("list");
        worst = worst.max(p0.elapsed().as_secs_f64());
        seen += page.entries.len() as u64;
        pages += 1;
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let list = t.elapsed().as_secs_f64();
    assert_eq!(seen, a.children, "the listing saw every child once");

    // Moves: the big folder and the empty one, there and back, a few times; medians.
    let mut big = Vec::new();
    let mut empty = Vec::new();
    for _ in 0..5 {
        for (from, to, is_big) in [
            ("/big", "/to/big", true),
            ("/to/big", "/big", true),
            ("/empty", "/to/empty", false),
            ("/to/empty", "/empty", false),
        ] {
            let t = Instant::now();
            m.rename(ns, from, to, None, 1).expect("move");
            let us = t.elapsed().as_secs_f64() * 1e6;
            if is_big {
                big.push(us);
            } else {
                empty.push(us);
            }
        }
    }
    big.sort_by(f64::total_cmp);
    empty.sort_by(f64::total_cmp);
    let (big_us, empty_us) = (big[big.len() / 2], empty[empty.len() / 2]);
    eprintln!(
        "{} children: filled in {fill:.1}s ({:.0} uploads/s); listed in {pages} pages of {} in {list:.2}s (slowest page {:.1} ms); move of the full folder {big_us:.0} µs, of an empty one {empty_us:.0} µs (medians of 10)",
        a.children,
        a.children as f64 / fill,
        a.page,
        worst * 1e3
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "bigfolder",
            "children": a.children,
            "fill_seconds": fill,
            "uploads_per_sec": (a.children as f64 / fill).round(),
            "list_seconds": list,
            "pages": pages,
            "page_size": a.page,
            "slowest_page_ms": worst * 1e3,
            "move_full_folder_us": big_us,
            "move_empty_folder_us": empty_us,
            "dram_used_bytes": db.stats().dram_used_bytes,
        })
    );
}
