//! Multi-thread stress: mixed puts, deletes, read-modify-writes and reads from several threads
//! while pages are demoted, records promoted and readmitted, and segments compacted (by the
//! background threads and by an explicit compaction loop). No value may be lost, duplicated,
//! torn or go back in time.

mod common;

use common::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tera_engine::{AlwaysPromote, Db};

const THREADS: u32 = 4;
const KEYS: u32 = 600;
const OPS: u32 = 40_000;

/// A small xorshift so each thread's op stream is seeded and reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u32) -> u32 {
        (self.next() % u64::from(n)) as u32
    }
}

/// Thread `t` owns keys `k % THREADS == t`: only it writes them, so it knows their exact
/// state; every thread reads every key and checks what it can.
fn worker(db: &Db, t: u32) -> HashMap<u32, Option<u32>> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(t + 1));
    let mut mine: HashMap<u32, Option<u32>> = HashMap::new();
    let mut next_version: HashMap<u32, u32> = HashMap::new();
    let mut seen: HashMap<u32, u32> = HashMap::new();
    let mut out = Vec::new();
    for _ in 0..OPS {
        let r = rng.below(100);
        let k = rng.below(KEYS / THREADS) * THREADS + t;
        let len = 50 + rng.below(400) as usize;
        if r < 30 {
            let v = next_version.entry(k).or_insert(0);
            *v += 1;
            db.put(&key(k), &value_for(k, *v, len)).unwrap();
            mine.insert(k, Some(*v));
        } else if r < 36 {
            let existed = db.delete(&key(k)).unwrap();
            assert_eq!(existed, matches!(mine.get(&k), Some(Some(_))), "delete {k}");
            mine.insert(k, None);
        } else if r < 45 {
            let v = next_version.entry(k).or_insert(0);
            *v += 1;
            let new = *v;
            let want = mine.get(&k).copied().flatten();
            db.update(&key(k), |old| {
                assert_eq!(old.map(|o| check_value(o).1), want, "rmw read of {k}");
                Some(value_for(k, new, len))
            })
            .unwrap();
            mine.insert(k, Some(new));
        } else {
            let k = rng.below(KEYS);
            let found = db.get_into(&key(k), &mut out).unwrap();
            if k % THREADS == t {
                let want = mine.get(&k).copied().flatten();
                let got = found.then(|| check_value(&out)).map(|(_, v)| v);
                assert_eq!(got, want, "read-your-writes on {k}");
            } else if found {
                let (kk, v) = check_value(&out);
                assert_eq!(kk, k, "value of another key returned for {k}");
                let last = seen.entry(k).or_insert(0);
                assert!(v >= *last, "key {k} went back from version {last} to {v}");
                *last = v;
            }
        }
    }
    mine
}

#[test]
fn concurrent_mixed_operations_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = tiny(dir.path(), 160 << 10);
    c.partitions = 4;
    c.background_maintenance = true;
    c.policy = Some(Arc::new(AlwaysPromote));
    let db = Arc::new(Db::open(c).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let compactor = {
        let (db, stop) = (db.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut steps = 0;
            while !stop.load(Ordering::Relaxed) {
                steps += db.maintain().unwrap();
                std::thread::yield_now();
            }
            steps
        })
    };
    let finals: Vec<_> = (0..THREADS)
        .map(|t| {
            let db = db.clone();
            std::thread::spawn(move || worker(&db, t))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    stop.store(true, Ordering::Relaxed);
    compactor.join().unwrap();

    let mut live = 0;
    for mine in &finals {
        for (&k, &want) in mine {
            let got = db.get(&key(k)).unwrap().map(|v| check_value(&v));
            assert_eq!(got.map(|(_, v)| v), want, "final state of {k}");
            live += u64::from(want.is_some());
        }
    }
    let s = db.stats();
    assert_eq!(s.keys, live, "index holds a key twice or lost one: {s:?}");
    assert_eq!(s.dram.records + s.far.records, live, "{s:?}");
    assert!(s.dram_used_bytes <= s.dram_budget_bytes, "{s:?}");
    assert!(
        s.pages_demoted > 0 && s.promotions > 0,
        "tiering did not run: {s:?}"
    );
    assert!(s.segments_compacted > 0, "compaction did not run: {s:?}");
}
