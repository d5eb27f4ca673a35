//! Opens a database with the DRAM budget given on the command line, loads records worth
//! several times that budget, reads and updates them (so pages are demoted, records promoted
//! and segments compacted), and prints one line: the budget, the engine's own account of its
//! DRAM, the process's anonymous resident memory at its highest sample, and the tiering
//! counters. `tests/tests/rss.rs` runs it as a child process, so that nothing else shares its
//! resident memory.
//!
//! Usage: `rss_probe BUDGET_BYTES RECORDS VALUE_BYTES`

use tera_engine::{Config, Db};

fn rss_anon() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numeric arguments"))
        .collect();
    let [budget, records, value_bytes] = args[..] else {
        eprintln!("usage: rss_probe BUDGET_BYTES RECORDS VALUE_BYTES");
        std::process::exit(2);
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let mut c = Config::new(dir.path());
    c.dram_budget_bytes = budget;
    c.page_bytes = 256 << 10;
    c.segment_bytes = 4 << 20;
    c.max_value_bytes = value_bytes as usize;
    c.max_key_bytes = 64;
    let db = Db::open(c).expect("open");
    let value = vec![0x5au8; value_bytes as usize];
    let mut peak = 0;
    for i in 0..records {
        db.put(format!("key-{i:012}").as_bytes(), &value)
            .expect("put");
        if i % 10_000 == 0 {
            peak = peak.max(rss_anon());
        }
    }
    let mut out = Vec::new();
    let mut x = 1u64;
    for round in 0..4 * records {
        // A skewed mix: most requests go to the first tenth of the keys.
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let i = if (x >> 60) < 12 {
            (x >> 20) % (records / 10).max(1)
        } else {
            (x >> 20) % records
        };
        let k = format!("key-{i:012}");
        if round % 10 == 0 {
            db.put(k.as_bytes(), &value).expect("update");
        } else {
            db.get_into(k.as_bytes(), &mut out).expect("get");
        }
        if round % 10_000 == 0 {
            peak = peak.max(rss_anon());
        }
    }
    db.maintain().expect("compaction");
    peak = peak.max(rss_anon());
    let s = db.stats();
    let maps = std::fs::read_to_string("/proc/self/maps").map_or(0, |m| m.lines().count());
    println!(
        "budget={} used={} rss_anon_peak={} far_records={} promotions={} pages_demoted={} segments_compacted={} frames={} mappings={}",
        s.dram_budget_bytes,
        s.dram_used_bytes,
        peak,
        s.far.records,
        s.promotions,
        s.pages_demoted,
        s.segments_compacted,
        s.frame_bytes / (256 << 10),
        maps
    );
}
