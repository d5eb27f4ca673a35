//! Criterion benches of the metadata model's read paths on a folder like `teractl bench`'s
//! fixture (100 files with a SHA-256 checksum and a MIME type): listing the folder, with each
//! entry's record found, copied out under the namespace's lock and parsed (what terad does
//! before it encodes a listing), and stat of one file by path. One thread, all in DRAM: the
//! engine's own cost, without the server, the network or a second thread taking turns for
//! the lock.
//!
//! `cargo bench -p tera-benches --bench meta`; figures in docs/benchmarks.md (issue 5).
//! `make test` runs each bench once (`cargo test --benches`) so that they cannot rot.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use tera_engine::meta::{MetaStore, Precondition, Upload};
use tera_engine::{Config, Db};

const NS: u64 = 1;
const ENTRIES: u64 = 100;

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = Config::new(dir.path());
    cfg.dram_budget_bytes = 64 << 20;
    cfg.background_maintenance = false;
    let db = Db::open(cfg).expect("open");
    let m = MetaStore::open(&db).expect("metadata store");
    m.create_namespace(NS, 1).expect("namespace");
    m.mkdir(NS, "/bench/fixture", true, 0).expect("mkdir");
    for i in 0..ENTRIES {
        let up = Upload {
            size: 1000 + i,
            mtime: 0,
            checksum: ("sha256".into(), format!("{i:064x}")),
            mime: "application/octet-stream".into(),
        };
        m.upload(
            NS,
            &format!("/bench/fixture/f{i:05}"),
            &up,
            &Precondition::None,
        )
        .expect("upload");
    }

    c.bench_function(
        "meta: list a 100-entry folder (found, copied, parsed)",
        |b| {
            b.iter(|| {
                let mut n = 0u64;
                let (r, _) = m.list_with_deferred(NS, "/bench/fixture", 1000, None, |e| {
                    n += e.size;
                    true
                });
                assert_eq!(r.expect("list"), None, "one page holds the folder");
                black_box(n)
            })
        },
    );
    let mut i = 0u64;
    c.bench_function("meta: stat a file by path", |b| {
        b.iter(|| {
            i = (i + 37) % ENTRIES;
            black_box(
                m.stat(NS, &format!("/bench/fixture/f{i:05}"))
                    .expect("stat"),
            )
        })
    });
}

criterion_group! {
    name = meta;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = benches
}
criterion_main!(meta);
