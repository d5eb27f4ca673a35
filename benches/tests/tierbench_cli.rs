//! `tierbench` as a user runs it: several engines in one invocation give one JSON line per
//! (engine, workload, distribution), with the same operations for each; bad arguments are
//! refused with a message that says what to use (those of `metabench` and `durabench` too,
//! before they start anything); and a memory-bounded run either runs in a cgroup and reports
//! its peak, or says why it cannot.

use serde_json::Value;
use std::process::Command;

fn tierbench(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tierbench"))
        .args(args)
        .output()
        .expect("tierbench runs")
}

fn lines(out: &std::process::Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// Run tierbench, check that it succeeded, and return its JSON lines.
fn ok_lines(args: &[&str]) -> Vec<Value> {
    let out = tierbench(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lines(&out)
}

const SMALL: &[&str] = &[
    "--records",
    "20000",
    "--value-bytes",
    "100",
    "--seconds",
    "0.3",
    "--warmup-seconds",
    "0",
    "--no-probes",
    "--json",
];

#[test]
fn runs_every_engine_workload_and_distribution_in_one_invocation() {
    let mut args = SMALL.to_vec();
    args.extend([
        "--engine",
        "tera,dram",
        "--workload",
        "C,A",
        "--dist",
        "zipf:0.99,uniform",
        "--dram-fractions",
        "1",
        // Room for the index and record headers too: every record in DRAM.
        "--budget-headroom",
        "2",
    ]);
    let l = ok_lines(&args);
    assert_eq!(l.len(), 2 * 2 * 2, "{l:?}");
    for engine in ["tera", "dram"] {
        for w in ["C", "A"] {
            for d in ["zipf:0.99", "uniform"] {
                let r = l
                    .iter()
                    .find(|r| r["engine"] == engine && r["workload"] == w && r["dist"] == d)
                    .unwrap_or_else(|| panic!("no line for {engine} {w} {d}: {l:?}"));
                assert!(r["ops_per_sec"].as_f64().unwrap() > 0.0, "{r}");
                assert!(r["p50_ns"].as_u64().unwrap() <= r["p99_ns"].as_u64().unwrap());
                assert_eq!(r["far_latency"], "none");
            }
        }
    }
    // Each engine ran in a process of its own, not in the one the previous engine left.
    let pid = |e: &str| {
        let pids: Vec<&Value> = l
            .iter()
            .filter(|r| r["engine"] == e)
            .map(|r| &r["pid"])
            .collect();
        assert!(pids.iter().all(|p| *p == pids[0] && p.is_u64()), "{pids:?}");
        pids[0].as_u64().unwrap()
    };
    assert_ne!(pid("tera"), pid("dram"));
    assert_ne!(pid("tera") as u32, std::process::id());
    // Only Teraservices has tiers to report.
    let tera = l.iter().find(|r| r["engine"] == "tera").unwrap();
    let dram = l.iter().find(|r| r["engine"] == "dram").unwrap();
    assert!(tera["dram_hit_ratio"].as_f64().unwrap() > 0.99, "{tera}");
    assert!(tera["index_bytes_per_key"].as_f64().unwrap() > 0.0);
    assert!(dram.get("dram_hit_ratio").is_none(), "{dram}");
}

/// `--same-process` runs every engine in the one process, one after another.
#[test]
fn same_process_runs_every_engine_in_one_process() {
    let mut args = SMALL.to_vec();
    args.extend([
        "--engine",
        "tera,dram",
        "--workload",
        "C",
        "--dram-fractions",
        "1",
        "--budget-headroom",
        "2",
        "--same-process",
    ]);
    let l = ok_lines(&args);
    assert_eq!(l.len(), 2, "{l:?}");
    assert_eq!(l[0]["pid"], l[1]["pid"], "{l:?}");
    assert!(l[0]["pid"].is_u64(), "{l:?}");
}

/// A warm-up cap of exactly one slice runs that slice (it once ran none).
#[test]
fn a_warm_up_cap_of_one_slice_runs_one_slice() {
    let l = ok_lines(&[
        "--records",
        "20000",
        "--value-bytes",
        "100",
        "--seconds",
        "0.2",
        "--warmup-seconds",
        "0.5",
        "--warmup-slice",
        "0.5",
        "--engine",
        "tera",
        "--workload",
        "C",
        "--dram-fractions",
        "1",
        "--budget-headroom",
        "2",
        "--no-probes",
        "--json",
    ]);
    assert_eq!(l.len(), 1, "{l:?}");
    let w = l[0]["warmup_seconds"].as_f64().unwrap();
    assert!((0.5..1.5).contains(&w), "warm-up of {w} s: {l:?}");
}

#[test]
fn refuses_bad_arguments_with_a_useful_message() {
    for (args, says) in [
        (&["--engine", "mongo"][..], "unknown engine \"mongo\""),
        (&["--dist", "zipf:x"][..], "unknown distribution"),
        (&["--engine", "dram", "--workload", "E"][..], "cannot scan"),
        (&["--memory-limit", "--far-ns", "300"][..], "drop --far-ns"),
        (&["--load", "sideways"][..], "unknown --load"),
        // Numbers that would panic in a worker after the load. (`--theta -1` without `=` is
        // refused by clap itself, as an unknown flag `-1`.)
        (
            &["--theta=-1"][..],
            "the Zipf exponent must be a finite number",
        ),
        (
            &["--theta=nan"][..],
            "the Zipf exponent must be a finite number",
        ),
        (
            &["--seconds=-1"][..],
            "--seconds must be a number of seconds above 0",
        ),
        (
            &["--seconds=nan"][..],
            "--seconds must be a number of seconds above 0",
        ),
        (
            &["--seconds=inf"][..],
            "--seconds must be a number of seconds above 0",
        ),
        (&["--warmup-seconds=-1"][..], "--warmup-seconds must be"),
        (
            &["--dram-fractions=inf"][..],
            "--dram-fractions must be positive",
        ),
    ] {
        let mut a = SMALL.to_vec();
        a.extend(args);
        let out = tierbench(&a);
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // metabench and durabench: refused at once, not by a division by zero or a panic in a
    // worker thread.
    let metabench = env!("CARGO_BIN_EXE_metabench");
    let durabench = env!("CARGO_BIN_EXE_durabench");
    for (exe, args, says) in [
        (
            metabench,
            &["throughput", "--namespaces", "0"][..],
            "--namespaces, --folders and --files must each be at least 1",
        ),
        (
            metabench,
            &["throughput", "--folders", "0"][..],
            "--namespaces, --folders and --files must each be at least 1",
        ),
        (
            metabench,
            &["throughput", "--files", "0"][..],
            "--namespaces, --folders and --files must each be at least 1",
        ),
        (
            metabench,
            &["throughput", "--seconds=-1"][..],
            "--seconds must be a number of seconds above 0",
        ),
        (
            metabench,
            &["throughput", "--seconds=nan"][..],
            "--seconds must be a number of seconds above 0",
        ),
        (
            metabench,
            &["throughput", "--seconds=inf"][..],
            "--seconds must be a number of seconds above 0",
        ),
        (
            metabench,
            &["throughput", "--threads", "0"][..],
            "--threads must list thread counts of at least 1",
        ),
        (
            metabench,
            &["throughput", "--ops", "stat,rename"][..],
            "unknown operation \"rename\"",
        ),
        (
            durabench,
            &["commit", "--seconds=-1"][..],
            "--seconds must be a number of seconds above 0",
        ),
        (
            durabench,
            &["commit", "--seconds=nan"][..],
            "--seconds must be a number of seconds above 0",
        ),
        (
            durabench,
            &["checkpoint", "--records", "0"][..],
            "--records must be at least 1",
        ),
    ] {
        let out = Command::new(exe).args(args).output().expect("it runs");
        assert!(!out.status.success(), "{exe} {args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{exe} {args:?}: {err}");
        assert!(!err.contains("panicked"), "{exe} {args:?}: {err}");
    }
    if !cfg!(feature = "peers") {
        let mut a = SMALL.to_vec();
        a.extend(["--engine", "lmdb"]);
        let out = tierbench(&a);
        assert!(String::from_utf8_lossy(&out.stderr).contains("--features peers"));
    }
}

#[test]
fn memory_bounded_run_reports_its_cgroup_or_why_not() {
    let mut args = SMALL.to_vec();
    args.extend([
        // Enough records for a quarter of them to leave each partition room for log frames.
        "--records",
        "100000",
        "--engine",
        "tera",
        "--workload",
        "C",
        "--dram-fractions",
        "0.25,0.5",
        "--memory-limit",
        "--memory-allowance-mib",
        "128",
        "--rounds",
        "2",
        // On the build's disk: the system temp dir may be a tmpfs, which this mode refuses.
        "--far-dir",
        env!("CARGO_TARGET_TMPDIR"),
    ]);
    let out = tierbench(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let l = lines(&out);
    if l.iter().any(|r| r.get("skipped").is_some()) {
        // No cgroup here (not root, no controller): every run is skipped, saying why.
        assert_skipped(&l, &err);
        return;
    }
    // One line per fraction and round, each from its own child with its own limit (a child
    // runs one round: the parent does not pass it `--rounds`).
    assert_eq!(l.len(), 4, "{l:?} {err}");
    for (r, (round, fraction)) in l.iter().zip([(0, 0.25), (0, 0.5), (1, 0.25), (1, 0.5)]) {
        assert_eq!(r["dram_fraction"].as_f64(), Some(fraction), "{r}");
        assert_eq!(r["round"].as_u64(), Some(round), "{r}");
        let limit = r["memory_limit_bytes"].as_u64().unwrap();
        let want = (100_000.0 * 120.0 * fraction) as u64 + (128 << 20);
        assert_eq!(limit, want, "{r}");
        assert!(matches!(r["cgroup"].as_str(), Some("v1" | "v2")), "{r}");
        if let Some(peak) = r["cgroup_peak_bytes"].as_u64() {
            assert!(peak > 0 && peak <= limit, "peak {peak} over limit {limit}");
        }
        // Teraservices' budget is the limit less its reserve.
        assert_eq!(
            r["dram_budget_bytes"].as_u64(),
            Some(limit - (64 << 20)),
            "{r}"
        );
    }
}

/// Every line of a memory-bounded invocation says its run was skipped and why (a cgroup could
/// not be made), one per fraction and round, and stderr says so too.
fn assert_skipped(l: &[Value], err: &str) {
    assert_eq!(l.len(), 4, "{l:?}");
    for (r, (round, fraction)) in l.iter().zip([(0, 0.25), (0, 0.5), (1, 0.25), (1, 0.5)]) {
        assert_eq!(r["engine"].as_str(), Some("tera"), "{r}");
        assert_eq!(r["dram_fraction"].as_f64(), Some(fraction), "{r}");
        assert_eq!(r["round"].as_u64(), Some(round), "{r}");
        let why = r["skipped"].as_str().unwrap_or_default();
        assert!(why.contains("cgroup"), "{r}");
        assert!(r.get("ops_per_sec").is_none(), "{r}");
    }
    assert!(err.contains("skipping"), "{err}");
}

/// Where no memory cgroup can be made, a memory-bounded invocation skips its runs with a
/// clear reason on each line and on stderr, and exits 0 (the machine, not the run, lacks
/// something). Here the cgroup root is pointed at an empty directory to stand for such a
/// machine.
#[test]
fn memory_bounded_runs_are_skipped_where_no_cgroup_can_be_made() {
    let empty = tempfile::tempdir().unwrap();
    let mut args = SMALL.to_vec();
    args.extend([
        "--engine",
        "tera",
        "--workload",
        "C",
        "--dram-fractions",
        "0.25,0.5",
        "--memory-limit",
        "--rounds",
        "2",
    ]);
    let out = Command::new(env!("CARGO_BIN_EXE_tierbench"))
        .args(&args)
        .env("TIERBENCH_CGROUP_ROOT", empty.path())
        .output()
        .expect("tierbench runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_skipped(&lines(&out), &err);
    assert!(err.contains("no cgroup memory controller"), "{err}");
}

/// A memory-bounded run refuses a far directory on tmpfs (its files would be charged to the
/// cgroup as memory, not read from a device), naming it, before it runs anything.
#[test]
fn memory_bounded_runs_refuse_a_far_directory_in_memory() {
    let shm = std::path::Path::new("/dev/shm");
    if tera_benches::cgroup::memory_backed_fs(shm).is_none() {
        eprintln!("no tmpfs at /dev/shm here; nothing to check");
        return;
    }
    let dir = tempfile::tempdir_in(shm).unwrap();
    let mut args = SMALL.to_vec();
    let far = dir
        .path()
        .join("not-made-yet")
        .to_str()
        .unwrap()
        .to_string();
    args.extend(["--engine", "tera", "--memory-limit", "--far-dir", &far]);
    // A v1 memory hierarchy as detection sees one, so that the check runs on any machine
    // (it comes before any group is made).
    let fake = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(fake.path().join("memory")).unwrap();
    std::fs::write(fake.path().join("memory/memory.limit_in_bytes"), "0").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tierbench"))
        .args(&args)
        .env("TIERBENCH_CGROUP_ROOT", fake.path())
        .output()
        .expect("tierbench runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("tmpfs") && err.contains(&far), "{err}");
    assert!(lines(&out).is_empty());
}
