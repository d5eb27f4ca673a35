//! One suite, three backends: the same behaviour tests run with every record in DRAM, with
//! nearly every record in the far tier (a tiny budget and no promotion), and with the far tier
//! behind emulated latency and eager promotion. What a caller sees must not depend on where
//! a record lives.

mod common;

use common::*;
use std::sync::Arc;
use tera_engine::{AlwaysPromote, Config, Db, NeverPromote};

fn all_dram(dir: &std::path::Path) -> Config {
    tiny(dir, 4 << 20)
}

fn mostly_far(dir: &std::path::Path) -> Config {
    with_policy(tiny(dir, 56 << 10), Arc::new(NeverPromote))
}

fn emulated_far(dir: &std::path::Path) -> Config {
    let mut c = with_policy(tiny(dir, 56 << 10), Arc::new(AlwaysPromote));
    c.far_latency_ns = 200;
    c
}

/// Load enough to push a tiny budget's records far, then check where they ended up.
fn loaded(config: Config, expect_far: bool) -> Db {
    let db = open(config);
    for k in 0..500u32 {
        db.put(&key(k), &value_for(k, 1, 200)).unwrap();
    }
    let s = db.stats();
    if expect_far {
        assert!(s.far.records > 300, "{s:?}");
    } else {
        assert_eq!(s.far.records, 0, "{s:?}");
    }
    db
}

fn reads_return_what_was_written(db: &Db) {
    for k in 0..500u32 {
        assert_eq!(
            db.get(&key(k)).unwrap(),
            Some(value_for(k, 1, 200)),
            "key {k}"
        );
    }
    assert_eq!(db.get(b"never written").unwrap(), None);
    let mut out = vec![9u8; 3];
    assert!(!db.get_into(b"never written", &mut out).unwrap());
    assert!(out.is_empty(), "a miss clears the buffer");
}

fn overwrites_deletes_and_updates(db: &Db) {
    for k in (0..500u32).step_by(3) {
        db.put(&key(k), &value_for(k, 2, 50 + k as usize % 300))
            .unwrap();
    }
    for k in (1..500u32).step_by(3) {
        assert!(db.delete(&key(k)).unwrap());
        assert!(!db.delete(&key(k)).unwrap(), "second delete of {k}");
    }
    for k in (2..500u32).step_by(3) {
        db.update(&key(k), |old| {
            assert_eq!(old, Some(&value_for(k, 1, 200)[..]));
            Some(value_for(k, 3, 10))
        })
        .unwrap();
    }
    db.update(b"fresh", |old| {
        assert!(old.is_none());
        Some(b"made by update".to_vec())
    })
    .unwrap();
    db.update(&key(5), |_| None).unwrap(); // update can delete
    for k in 0..500u32 {
        let want = match k % 3 {
            0 => Some(value_for(k, 2, 50 + k as usize % 300)),
            1 => None,
            _ if k == 5 => None,
            _ => Some(value_for(k, 3, 10)),
        };
        assert_eq!(db.get(&key(k)).unwrap(), want, "key {k}");
    }
    assert_eq!(
        db.get(b"fresh").unwrap().as_deref(),
        Some(&b"made by update"[..])
    );
    let s = db.stats();
    assert_eq!(s.keys, s.dram.records + s.far.records);
}

fn empty_values_and_keys_of_every_length(db: &Db) {
    db.put(b"", b"empty key").unwrap();
    db.put(b"empty value", b"").unwrap();
    assert_eq!(db.get(b"").unwrap().as_deref(), Some(&b"empty key"[..]));
    assert_eq!(db.get(b"empty value").unwrap().as_deref(), Some(&b""[..]));
    for len in [1, 7, 8, 9, 15, 16, 17, 255, 256] {
        let k = vec![len as u8; len];
        db.put(&k, &k).unwrap();
    }
    for len in [1, 7, 8, 9, 15, 16, 17, 255, 256] {
        let k = vec![len as u8; len];
        assert_eq!(db.get(&k).unwrap(), Some(k.clone()), "key of {len} bytes");
    }
}

fn survives_compaction(db: &Db) {
    for round in 2..6u32 {
        for k in 0..500u32 {
            db.put(&key(k), &value_for(k, round, 150)).unwrap();
        }
        db.maintain().unwrap();
    }
    for k in 0..500u32 {
        assert_eq!(
            db.get(&key(k)).unwrap(),
            Some(value_for(k, 5, 150)),
            "key {k}"
        );
    }
}

/// A read inside a transaction hands `f` the value where it is stored, DRAM or far: the
/// same bytes as a plain read, and `None` for a key never written. With eager promotion
/// (`promotes`) a far record read so is promoted, as by a plain read; with none, none is. The
/// same holds for a read that shares the partition's lock (`read_deferred`, whose promotions
/// wait until it gives the lock back), in `get_many` as in `read`.
fn transaction_reads_see_the_stored_value(db: &Db, promotes: bool) {
    let ks = db
        .keyspace("in_place", tera_engine::KeyspaceOptions::hash())
        .unwrap();
    let filler = db
        .keyspace("filler", tera_engine::KeyspaceOptions::hash())
        .unwrap();
    for (round, how) in (4u32..).zip(["atomic", "shared", "shared get_many"]) {
        for k in 0..150u32 {
            ks.put(&key(k), &value_for(k, round, 150)).unwrap();
        }
        // Newer records push these out of a tiny budget.
        for k in 0..150u32 {
            filler.put(&key(k), &value_for(k, round + 10, 600)).unwrap();
        }
        let far_reads = db.stats().far.reads;
        let promotions = db.stats().promotions;
        for k in 0..150u32 {
            let k_ = key(k);
            let got = match how {
                "atomic" => ks.atomic(&k_, |tx| tx.read(&k_, |v| v.to_vec())).unwrap().0,
                "shared" => ks
                    .read_deferred(&k_, |tx| tx.read(&k_, |v| v.to_vec()))
                    .0
                    .unwrap(),
                _ => {
                    let mut got = None;
                    ks.read_deferred(&k_, |tx| tx.get_many(&[&k_], |_, v| got = Some(v.to_vec())))
                        .0
                        .unwrap();
                    got
                }
            };
            assert_eq!(got, Some(value_for(k, round, 150)), "{how}: key {k}");
        }
        let none = match how {
            "atomic" => {
                ks.atomic(b"never written", |tx| {
                    tx.read(b"never written", |v| v.len())
                })
                .unwrap()
                .0
            }
            _ => ks
                .read_deferred(b"never written", |tx| {
                    tx.read(b"never written", |v| v.len())
                })
                .0
                .unwrap(),
        };
        assert_eq!(none, None, "{how}");
        let far_reads = db.stats().far.reads - far_reads;
        let promoted = db.stats().promotions - promotions;
        if db.stats().far.records > 0 {
            assert!(
                far_reads > 50,
                "{how}: read far in place: {far_reads} far reads"
            );
        } else {
            assert_eq!(far_reads, 0, "{how}");
        }
        if promotes {
            assert!(
                promoted > 50,
                "{how}: {promoted} of {far_reads} far reads promoted"
            );
        } else {
            assert_eq!(promoted, 0, "{how}");
        }
        // Promoted or not, every key reads the same afterwards.
        for k in 0..150u32 {
            assert_eq!(
                ks.get(&key(k)).unwrap().map(|e| e.value),
                Some(value_for(k, round, 150)),
                "{how}: key {k}"
            );
        }
    }
}

macro_rules! suite {
    ($($backend:ident: $config:expr, far = $far:expr, promotes = $promotes:expr;)*) => {$(
        mod $backend {
            use super::*;
            #[test]
            fn reads_return_what_was_written() {
                let dir = tempfile::tempdir().unwrap();
                super::reads_return_what_was_written(&loaded($config(dir.path()), $far));
            }
            #[test]
            fn overwrites_deletes_and_updates() {
                let dir = tempfile::tempdir().unwrap();
                super::overwrites_deletes_and_updates(&loaded($config(dir.path()), $far));
            }
            #[test]
            fn empty_values_and_keys_of_every_length() {
                let dir = tempfile::tempdir().unwrap();
                super::empty_values_and_keys_of_every_length(&loaded($config(dir.path()), $far));
            }
            #[test]
            fn transaction_reads_see_the_stored_value() {
                let dir = tempfile::tempdir().unwrap();
                super::transaction_reads_see_the_stored_value(
                    &loaded($config(dir.path()), $far),
                    $promotes,
                );
            }
            #[test]
            fn survives_compaction() {
                let dir = tempfile::tempdir().unwrap();
                super::survives_compaction(&loaded($config(dir.path()), $far));
            }
        }
    )*};
}

suite! {
    dram: all_dram, far = false, promotes = false;
    far: mostly_far, far = true, promotes = false;
    emulated: emulated_far, far = true, promotes = true;
}

/// A parallel scan pays the emulated latency for each far record it visits, as a read does:
/// a scan of far data at DRAM speed would make every emulated scan figure wrong.
#[test]
fn a_parallel_scan_pays_the_emulated_far_latency() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = with_policy(tiny(dir.path(), 56 << 10), Arc::new(NeverPromote));
    c.far_latency_ns = 200_000;
    let db = open(c);
    let ks = db
        .keyspace("scan", tera_engine::KeyspaceOptions::hash())
        .unwrap();
    for k in 0..500u32 {
        ks.put(&key(k), &value_for(k, 1, 200)).unwrap();
    }
    let far = db.stats().far.records;
    assert!(far > 300, "{far} far records");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let t = std::time::Instant::now();
    let (counts, _) = ks
        .scan_parallel(|| 0u64, |n: &mut u64, _, _, _| *n += 1)
        .unwrap();
    let took = t.elapsed();
    assert_eq!(counts.iter().sum::<u64>(), 500);
    // A busy-wait cannot end early: the scan takes at least its far records' waits, spread
    // over every thread it could use.
    let floor = std::time::Duration::from_micros(200) * far as u32 / threads;
    assert!(
        took >= floor,
        "scanned {far} far records in {took:?}, under the emulated floor of {floor:?}"
    );
}
