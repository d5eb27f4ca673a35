//! The DRAM budget is a bound on the process, not only on the engine's own accounting: a child
//! process loads four times its budget into the engine, runs a skewed read/update mix, and its
//! anonymous resident memory must stay within the budget plus a fixed allowance for the
//! process itself (code, stacks, allocator, the test's own buffers).

use std::process::Command;

const ALLOWANCE: u64 = 16 << 20;

fn field(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        .parse()
        .unwrap()
}

#[test]
fn resident_memory_stays_within_the_dram_budget() {
    let budget: u64 = 64 << 20;
    let out = Command::new(env!("CARGO_BIN_EXE_rss_probe"))
        .args([budget.to_string(), "250000".into(), "1000".into()])
        .output()
        .expect("run rss_probe");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    let (used, rss) = (field(&line, "used"), field(&line, "rss_anon_peak"));
    assert!(used <= budget, "engine over its budget: {line}");
    assert!(
        rss <= budget + ALLOWANCE,
        "resident {rss} above budget {budget} + {ALLOWANCE}: {line}"
    );
    // Frames are carved from one mapping per partition: the process has fewer mappings than
    // the engine has frames (one mapping per frame would not scale to terabyte budgets).
    let (frames, maps) = (field(&line, "frames"), field(&line, "mappings"));
    assert!(frames > 200 && maps < frames, "{line}");
    // The run must have exercised tiering, or it proves nothing about the bound.
    assert!(field(&line, "far_records") > 100_000, "{line}");
    assert!(
        field(&line, "promotions") > 0 && field(&line, "pages_demoted") > 0,
        "{line}"
    );
}
