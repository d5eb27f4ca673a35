//! `metabench`: figures of the metadata model (`tera_engine::meta`).
//!
//! `bigfolder` fills one folder with N files, lists it page by page, and times moving it (N
//! descendants) against moving an empty folder: a move is a relink, so both should take about
//! as long. One JSON object on stdout, a summary on stderr. No latency emulation.

use clap::Parser;
use std::time::Instant;
use tera_engine::meta::{MetaStore, Precondition, Upload};
use tera_engine::{Config, Db};

#[derive(Parser, Debug)]
#[command(version, about = "Metadata model figures for Teraservices")]
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

fn main() {
    let a = Args::parse();
    let dir = tempfile::Builder::new()
        .prefix("metabench-")
        .tempdir()
        .expect("temp dir");
    let mut c = Config::new(dir.path());
    c.dram_budget_bytes = a.budget_mib << 20;
    c.max_key_bytes = 4200;
    c.max_value_bytes = 16 << 10;
    c.changelog_bytes = 16 << 20;
    let db = Db::open(c).expect("open");
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
