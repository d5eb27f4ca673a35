//! `metabench throughput` as a user runs it: every move it counts is a rename that
//! succeeded (a failed one is an error in the line and fails the run, never an operation).

use serde_json::Value;
use std::process::Command;

#[test]
fn every_counted_move_is_a_rename_that_succeeded() {
    let out = Command::new(env!("CARGO_BIN_EXE_metabench"))
        .args([
            "throughput",
            "--namespaces",
            "3",
            "--folders",
            "1",
            "--files",
            "1",
            "--seconds",
            "0.2",
            "--threads",
            "1,2",
            "--ops",
            "move",
            "--budget-mib",
            "1024",
        ])
        .output()
        .expect("metabench runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let l: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    // One line per thread count; the 2-thread run finds thread 0's files where the 1-thread
    // run left them.
    assert_eq!(l.len(), 2, "{l:?} {err}");
    for (r, threads) in l.iter().zip([1, 2]) {
        assert_eq!(r["op"], "move", "{r}");
        assert_eq!(r["threads"], threads, "{r}");
        assert_eq!(r["errors"], 0, "{r} {err}");
        assert!(r["first_error"].is_null(), "{r}");
        assert!(r["ops_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    }
}
