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

/// Promote every far read, readmit nothing: records the readers keep reading still go far
/// when their pages are demoted, so the readers keep finding far records to promote.
#[derive(Debug)]
struct PromoteWithoutReadmission;

impl tera_engine::HeatPolicy for PromoteWithoutReadmission {
    fn admit_far(&self, _hash: u64) -> bool {
        true
    }
    fn readmit(&self, _heat: u8) -> bool {
        false
    }
    fn name(&self) -> &'static str {
        "promote without readmission"
    }
}

/// Reads that share a partition's lock (`read_deferred`: stat and listing in terad) beside
/// batches that rewrite every key of a group at once, with a small budget, eager promotion
/// and the background threads on: each read sees one batch whole (every key at the same
/// version), never a batch older than one it saw before, and the far records the reads find
/// hot are promoted once they give the lock back, while pages are demoted around them.
/// Afterwards every key holds the last batch's value.
#[test]
fn reads_sharing_the_lock_see_whole_batches_while_promoting() {
    const GROUP: u32 = 40;
    const READERS: u32 = 3;
    const BATCHES: u32 = 20;
    let dir = tempfile::tempdir().unwrap();
    let mut c = tiny(dir.path(), 256 << 10);
    c.background_maintenance = true;
    c.policy = Some(Arc::new(PromoteWithoutReadmission));
    let db = Arc::new(Db::open(c).unwrap());
    // Every key starts with "key-": one partition holds the group.
    let opts = tera_engine::KeyspaceOptions::hash().partition_prefix(4);
    let ks = Arc::new(db.keyspace("group", opts).unwrap());
    let filler = db
        .keyspace("filler", tera_engine::KeyspaceOptions::hash())
        .unwrap();
    let batch = |b: u32| {
        ks.atomic(&key(0), |tx| {
            (0..GROUP).try_for_each(|k| tx.put(&key(k), &value_for(k, b, 100)))
        })
        .unwrap();
    };
    batch(0);
    let promotions = db.stats().promotions;
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (ks, stop) = (ks.clone(), stop.clone());
            std::thread::spawn(move || {
                let keys: Vec<Vec<u8>> = (0..GROUP).map(key).collect();
                let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
                let (mut last, mut reads) = (0, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let mut seen = Vec::with_capacity(GROUP as usize);
                    let (res, _) = ks.read_deferred(&key(0), |tx| {
                        if reads % 2 == 0 {
                            tx.get_many(&refs, |_, v| seen.push(check_value(v)))
                        } else {
                            for k in &keys {
                                let v = tx.read(k, check_value)?;
                                seen.push(v.expect("every key of the group is there"));
                            }
                            Ok(())
                        }
                    });
                    res.unwrap();
                    let version = seen[0].1;
                    for (i, &(k, v)) in seen.iter().enumerate() {
                        assert_eq!(k, i as u32, "reader {r}: key {i} read as key {k}");
                        assert_eq!(v, version, "reader {r}: a batch seen in part: {seen:?}");
                    }
                    assert!(version >= last, "reader {r}: batch {version} after {last}");
                    last = version;
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let mut f = 0u32;
    for b in 1..=BATCHES {
        batch(b);
        // Push the batch far: newer records over many keys, so that DRAM holds live records
        // and demotes them (a log of garbage would be cleaned instead, carrying the group
        // forward); then give the readers time to find it there.
        for _ in 0..700 {
            filler
                .put(&key(f % 2000), &value_for(f % 2000, f, 400))
                .unwrap();
            f += 1;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    for (r, h) in readers.into_iter().enumerate() {
        let reads = h.join().unwrap();
        assert!(reads > 10, "reader {r} read only {reads} times");
    }
    // Before the reads below, which promote too.
    let s = db.stats();
    assert!(s.dram_used_bytes <= s.dram_budget_bytes, "{s:?}");
    assert!(
        s.promotions > promotions + 100 && s.far.reads > 100 && s.pages_demoted > 0,
        "tiering did not run: {s:?}"
    );
    for k in 0..GROUP {
        let got = ks.get(&key(k)).unwrap().expect("present").value;
        assert_eq!(check_value(&got), (k, BATCHES), "key {k}");
    }
}

/// Two `read_deferred`s of one partition run at the same time: each waits, inside its read,
/// for the other to be inside its own (with an exclusive lock the second could not enter
/// until the first left, and the first gives up waiting after 10 s). A writer of that
/// partition, started once both are inside, waits until both have left.
#[test]
fn reads_share_a_partition_and_writers_wait_for_them() {
    use std::sync::mpsc::{channel, Receiver, Sender};
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(tiny(dir.path(), 4 << 20)).unwrap());
    let opts = tera_engine::KeyspaceOptions::hash().partition_prefix(4);
    let ks = Arc::new(db.keyspace("shared", opts).unwrap());
    ks.put(&key(1), b"before").unwrap();
    let (a_in, a_seen) = channel();
    let (b_in, b_seen) = channel();
    let (ready, both_in) = channel();
    let wrote = Arc::new(AtomicBool::new(false));
    let reader = |inside: Sender<()>, other: Receiver<()>, ready: Sender<()>| {
        let (ks, wrote) = (ks.clone(), wrote.clone());
        std::thread::spawn(move || {
            let (r, _) = ks.read_deferred(&key(0), |tx| {
                let _ = inside.send(());
                let both = other.recv_timeout(Duration::from_secs(10)).is_ok();
                let _ = ready.send(());
                // The writer starts now and must wait for this read to end.
                std::thread::sleep(Duration::from_millis(100));
                let value = tx.read(&key(1), |v| v.to_vec())?;
                Ok((both, wrote.load(Ordering::SeqCst), value))
            });
            r.unwrap()
        })
    };
    let a = reader(a_in, b_seen, ready.clone());
    let b = reader(b_in, a_seen, ready);
    for _ in 0..2 {
        both_in
            .recv_timeout(Duration::from_secs(60))
            .expect("a reader is stuck");
    }
    let writer = {
        let (ks, wrote) = (ks.clone(), wrote.clone());
        std::thread::spawn(move || {
            ks.put(&key(1), b"after").unwrap();
            wrote.store(true, Ordering::SeqCst);
        })
    };
    for (name, h) in [("a", a), ("b", b)] {
        let (both, wrote_inside, value) = h.join().unwrap();
        assert!(
            both,
            "reader {name} never saw the other inside: the lock is not shared"
        );
        assert!(
            !wrote_inside,
            "reader {name}: a write went in under the shared lock"
        );
        assert_eq!(value.as_deref(), Some(&b"before"[..]), "reader {name}");
    }
    writer.join().unwrap();
    assert_eq!(ks.get(&key(1)).unwrap().unwrap().value, b"after");
}
