//! The DRAM budget follows need across partitions: one partition's keys (a keyspace
//! partitioned by a prefix they share, as a namespace of the metadata model is) can take far
//! more than `budget / partitions` while the others have room, the budget holds throughout,
//! the other partitions still take writes, and a database that grew so reopens.

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use tera_engine::{Db, Durability, Error, KeyspaceOptions};

const BUDGET: u64 = 256 << 10;
const PARTITIONS: usize = 4;

fn config(dir: &std::path::Path) -> tera_engine::Config {
    let mut c = tiny(dir, BUDGET);
    c.partitions = PARTITIONS;
    c
}

/// Keys that all go to one partition: the keyspace partitions by their first 3 bytes.
fn one_key(k: u32) -> Vec<u8> {
    let mut v = b"ns1".to_vec();
    v.extend_from_slice(&k.to_be_bytes());
    v
}

/// Put `one_key(0..)` until refused (at most `limit`); returns how many were acknowledged,
/// checking the budget after every put.
fn fill_one_partition(db: &Db, limit: u32) -> (u32, Option<Error>) {
    let ks = db
        .keyspace("one", KeyspaceOptions::hash().partition_prefix(3))
        .unwrap();
    for k in 0..limit {
        if let Err(e) = ks.put(&one_key(k), b"v") {
            return (k, Some(e));
        }
        let s = db.stats();
        assert!(
            s.dram_used_bytes <= s.dram_budget_bytes,
            "after key {k}: {s:?}"
        );
    }
    (limit, None)
}

#[test]
fn one_partition_grows_past_an_even_share_while_the_others_have_room() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(config(dir.path()));
    let even = BUDGET / PARTITIONS as u64;
    let (n, refused) = fill_one_partition(&db, 200_000);
    // The budget does end: the refusal says so, and nothing was overrun (checked above).
    let e = refused.expect("256 KiB cannot index 200,000 keys");
    assert!(matches!(e, Error::BudgetExhausted(_)), "{e}");
    let s = db.stats();
    // The one partition's index alone outgrew an even share, which it could not before.
    assert!(
        s.index_bytes > even,
        "index {} bytes, even share {even}: {s:?}",
        s.index_bytes
    );
    assert!(s.largest_share_bytes > even, "{s:?}");
    assert!(s.shares_moved_bytes > 0, "{s:?}");
    let ks = db.get_keyspace("one").unwrap();
    for k in (0..n).step_by(31) {
        assert_eq!(
            ks.get(&one_key(k)).unwrap().map(|e| e.value),
            Some(b"v".to_vec()),
            "key {k}"
        );
    }
    // The other partitions still take writes of new keys: 1,000 of them, about 250 a
    // partition, past the 68 their first index tables hold, so their indexes must grow: they
    // take room back from the large one, which demotes to give it.
    let mut written = 0;
    for k in 0..1_000u32 {
        match db.put(&key(k), &value_for(k, 1, 64)) {
            Ok(()) => written += 1,
            Err(Error::BudgetExhausted(_)) => {}
            Err(e) => panic!("key {k}: {e}"),
        }
        let s = db.stats();
        assert!(s.dram_used_bytes <= s.dram_budget_bytes, "{s:?}");
    }
    // About 250 of the keys fall in the full partition and are refused, and the budget as a
    // whole ends too (764 of 1,000 were taken when this was written). Without index growth
    // in the other three partitions at most 3 × 68 would be.
    assert!(
        written >= 400,
        "only {written} of 1,000 keys went to the other partitions"
    );
    for k in (0..n).step_by(31) {
        assert_eq!(
            ks.get(&one_key(k)).unwrap().map(|e| e.value),
            Some(b"v".to_vec()),
            "key {k} after the others grew"
        );
    }
}

/// With an even split the same keys are refused far sooner: the gain is the shares', not
/// the test's. (One partition of the same even share: the index limit of the old split.)
#[test]
fn an_even_share_alone_indexes_fewer_keys() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(config(dir.path()));
    let (grown, _) = fill_one_partition(&db, 200_000);
    drop(db);
    let dir = tempfile::tempdir().unwrap();
    let mut c = tiny(dir.path(), BUDGET / PARTITIONS as u64);
    c.partitions = 1;
    let alone = open(c);
    let (even, refused) = fill_one_partition(&alone, 200_000);
    assert!(matches!(refused, Some(Error::BudgetExhausted(_))));
    eprintln!("{grown} keys with shares that follow need, {even} in an even share alone");
    assert!(
        grown > 2 * even,
        "{grown} keys with shares that follow need, {even} in an even share"
    );
}

/// A database whose one partition holds most of the budget reopens: recovery sizes that
/// partition's index before loading, and takes the room from the others.
#[test]
fn a_database_grown_into_one_partition_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.durability = Durability::Commit;
    c.checkpoint_wal_bytes = 0;
    let n = {
        let db = open(c.clone());
        fill_one_partition(&db, 200_000).0
    };
    let db = open(c);
    let ks = db.get_keyspace("one").expect("keyspace recovered");
    for k in (0..n).step_by(17) {
        assert_eq!(
            ks.get(&one_key(k)).unwrap().map(|e| e.value),
            Some(b"v".to_vec()),
            "key {k}"
        );
    }
    let s = db.stats();
    assert!(s.dram_used_bytes <= s.dram_budget_bytes, "{s:?}");
    assert!(
        s.index_bytes > BUDGET / PARTITIONS as u64,
        "recovered index {} bytes: {s:?}",
        s.index_bytes
    );
}

/// Writers on a skewed load (one partition's keys hot, the others' cold) with the
/// maintenance threads rebalancing every 200 ms: the budget holds at every sample, and every
/// acknowledged write reads back.
#[test]
fn shares_move_under_concurrent_skewed_writers_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.dram_budget_bytes = 1 << 20;
    c.background_maintenance = true;
    let db = Arc::new(open(c));
    let stop = Arc::new(AtomicBool::new(false));
    // `Db::stats` holds every partition's lock at once: each sample is one state.
    let sampler = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut samples = 0u32;
            while !stop.load(Relaxed) {
                let s = db.stats();
                assert!(s.dram_used_bytes <= s.dram_budget_bytes, "{s:?}");
                samples += 1;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            samples
        })
    };
    let writers: Vec<_> = (0..2u32)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || {
                let hot = db
                    .keyspace("one", KeyspaceOptions::hash().partition_prefix(3))
                    .unwrap();
                let mut acked = Vec::new();
                for i in 0..6_000u32 {
                    let k = i * 2 + t;
                    // Nine in ten writes to the hot partition, with 200-byte values.
                    let r = if i % 10 != 0 {
                        hot.put(&one_key(k), &value_for(k, 1, 200)).map(|_| ())
                    } else {
                        db.put(&key(k), &value_for(k, 1, 200))
                    };
                    match r {
                        Ok(()) => acked.push((i % 10 != 0, k)),
                        Err(Error::BudgetExhausted(_)) => {}
                        Err(e) => panic!("key {k}: {e}"),
                    }
                }
                acked
            })
        })
        .collect();
    let acked: Vec<(bool, u32)> = writers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    stop.store(true, Relaxed);
    assert!(sampler.join().unwrap() > 0);
    assert!(
        acked.len() > 10_000,
        "{} of 12,000 acknowledged",
        acked.len()
    );
    let hot = db.get_keyspace("one").unwrap();
    for &(is_hot, k) in &acked {
        let v = if is_hot {
            hot.get(&one_key(k)).unwrap().map(|e| e.value)
        } else {
            db.get(&key(k)).unwrap()
        };
        assert_eq!(v, Some(value_for(k, 1, 200)), "key {k}");
    }
    let s = db.stats();
    assert!(s.dram_used_bytes <= s.dram_budget_bytes, "{s:?}");
    assert!(
        s.largest_share_bytes > s.dram_budget_bytes / PARTITIONS as u64,
        "{s:?}"
    );
}
