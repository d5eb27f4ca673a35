//! Criterion benches of the engine's core pieces, each on a database built for it:
//! index probe (a get that misses), DRAM read, far read with and without emulated latency,
//! reads with promotion (far reads copied to DRAM, mixed with DRAM hits), and writes with and
//! without page demotion.
//!
//! `cargo bench -p tera-benches --bench core`; figures in docs/benchmarks.md. `make test` runs
//! each bench once on small fixtures (`TERA_BENCH_QUICK=1 cargo test --benches`) so that they
//! cannot rot.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use std::sync::Arc;
use tera_benches::keys::{key, value_into, KEY_LEN};
use tera_engine::{AlwaysPromote, Config, Db, HeatPolicy, NeverPromote};

const VALUE: usize = 1024;

/// Records per fixture: 200,000, or 20,000 under `TERA_BENCH_QUICK` (the test-mode run).
fn records() -> u64 {
    if std::env::var_os("TERA_BENCH_QUICK").is_some() {
        20_000
    } else {
        200_000
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    db: Db,
}

fn open(budget: u64, far_ns: u64, policy: Arc<dyn HeatPolicy>) -> Fixture {
    open_with(budget, far_ns, policy, records())
}

/// A fixture of `load` records (keys `0..load`).
fn open_with(budget: u64, far_ns: u64, policy: Arc<dyn HeatPolicy>, load: u64) -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut c = Config::new(dir.path());
    c.dram_budget_bytes = budget;
    c.partitions = 4;
    c.page_bytes = 256 << 10;
    c.segment_bytes = 8 << 20;
    c.max_key_bytes = KEY_LEN;
    c.max_value_bytes = VALUE;
    c.far_latency_ns = far_ns;
    c.expected_records = records() as usize;
    c.policy = Some(policy);
    c.background_maintenance = false;
    // These benches never watch: keep the change log's share of the budget small.
    c.changelog_bytes = 256 << 10;
    let db = Db::open(c).expect("open");
    let mut v = Vec::new();
    for i in 0..load {
        value_into(i, 0, &mut v, VALUE);
        db.put(&key(i), &v).expect("load");
    }
    Fixture { _dir: dir, db }
}

/// Records 0..records()/2 (the first loaded) are far when the budget holds a quarter.
fn far_fixture(far_ns: u64, policy: Arc<dyn HeatPolicy>) -> Fixture {
    let f = open(records() * 1100 / 4, far_ns, policy);
    assert!(f.db.stats().far.records >= records() / 2);
    f
}

fn next(i: &mut u64, n: u64) -> u64 {
    *i = i
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (*i >> 33) % n
}

fn benches(c: &mut Criterion) {
    let mut out = Vec::with_capacity(VALUE);
    let dram = open(records() * 1400, 0, Arc::new(NeverPromote));
    assert_eq!(dram.db.stats().far.records, 0, "all records in DRAM");
    let mut r = 1;
    c.bench_function("index probe (get of a missing key)", |b| {
        b.iter(|| {
            let k = key(records() + next(&mut r, records()));
            black_box(dram.db.get_into(&k, &mut out).expect("get"))
        })
    });
    c.bench_function("DRAM read (1 KiB value)", |b| {
        b.iter(|| {
            let k = key(next(&mut r, records()));
            black_box(dram.db.get_into(&k, &mut out).expect("get"))
        })
    });
    drop(dram);

    for ns in [0, 300] {
        let far = far_fixture(ns, Arc::new(NeverPromote));
        let name = format!("far read (1 KiB value, {ns} ns emulated latency)");
        c.bench_function(&name, |b| {
            b.iter(|| {
                let k = key(next(&mut r, records() / 2));
                black_box(far.db.get_into(&k, &mut out).expect("get"))
            })
        });
        assert_eq!(far.db.stats().promotions, 0);
    }

    let promo = far_fixture(0, Arc::new(AlwaysPromote));
    // The fixture must promote, or the bench measures something else (checked before timing,
    // so the check also holds in the one-iteration test mode).
    for i in 0..1000 {
        promo.db.get_into(&key(i), &mut out).expect("get");
    }
    assert!(promo.db.stats().promotions > 0);
    // Uniform over all keys with a quarter of them in DRAM: about 3/4 of the reads are far,
    // each promoted (promoted records push others far, whose demotion is amortized in), the
    // rest DRAM hits. The measured share is printed, since the figure is that blend.
    let before = promo.db.stats();
    c.bench_function(
        "read + promotion, uniform (about 3/4 far reads, 1 KiB value)",
        |b| {
            b.iter(|| {
                let k = key(next(&mut r, records()));
                black_box(promo.db.get_into(&k, &mut out).expect("get"))
            })
        },
    );
    let after = promo.db.stats();
    eprintln!(
        "read + promotion: DRAM hit ratio {:.3} over the bench's reads ({} promotions)",
        after.dram_hit_ratio_since(&before),
        after.promotions - before.promotions
    );
    drop(promo);

    let mut v = Vec::new();
    value_into(7, 1, &mut v, VALUE);
    // Overwrites of a small set of keys, the only ones loaded: the DRAM log still fills (it
    // is log-structured) and its oldest pages are drained, but by then every record on them
    // has been overwritten, so nothing goes far; the cleaning is amortized in. (Over 200,000
    // keys, the 2M or so puts of a run would pass the budget and demote live records.)
    let hot = (records() / 20).max(1);
    let roomy = open_with(records() * 4000, 0, Arc::new(NeverPromote), hot);
    c.bench_function(
        "put, overwrite in DRAM (cleaning amortized, nothing goes far)",
        |b| b.iter(|| roomy.db.put(&key(next(&mut r, hot)), &v).expect("put")),
    );
    assert_eq!(
        roomy.db.stats().far.records,
        0,
        "the put bench must not send records far"
    );
    drop(roomy);
    let tight = far_fixture(0, Arc::new(NeverPromote));
    let before = tight.db.stats().pages_demoted;
    for i in 0..1000 {
        tight.db.put(&key(i), &v).expect("put");
    }
    assert!(
        tight.db.stats().pages_demoted > before,
        "the fixture must demote"
    );
    c.bench_function("put with page demotion (amortized)", |b| {
        b.iter(|| {
            tight
                .db
                .put(&key(next(&mut r, records())), &v)
                .expect("put")
        })
    });
}

criterion_group! {
    name = core;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = benches
}
criterion_main!(core);
