//! Model-based test of ordered keyspaces: random puts, deletes, batches, conditional
//! transactions, range scans (forward and backward, with limits), prefix scans and counts,
//! against a `BTreeMap` that also tracks each key's create revision, mod revision and version.
//! The DRAM budget (80 KiB) is small enough that records are demoted, promoted and compacted while the
//! test runs, and half the cases run with durability `commit` and reopen the database in the
//! middle, so recovery is checked against the same model.

mod common;

use common::*;
use proptest::prelude::*;
use std::collections::BTreeMap;
use tera_engine::{
    Batch, Compare, CompareOp, CompareTarget, Db, Durability, KeyspaceOptions, Op as KOp, Range,
    Txn,
};

/// Keys share a 1-byte partition prefix (4 prefixes), so a batch over one prefix is atomic.
fn key_of(p: u8, k: u8) -> Vec<u8> {
    format!("{}{:03}", (b'a' + p % 4) as char, k).into_bytes()
}

fn val(k: u8, n: u16, salt: u8) -> Vec<u8> {
    (0..n)
        .map(|i| k.wrapping_mul(7).wrapping_add(salt).wrapping_add(i as u8))
        .collect()
}

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u8, u16, u8),
    Delete(u8, u8),
    /// Several writes (put if `Some(len)`, else delete) under one prefix.
    Batch(u8, Vec<(u8, Option<u16>)>),
    /// If key `c` has the given version (or modrev matches the model's), put `k`; else
    /// delete `k`.
    Txn(u8, u8, u8, bool),
    Scan(u8, u8, u8, bool),
    Prefix(u8, u8),
    Count(u8, u8),
    Get(u8, u8),
    Maintain,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0u8..60;
    prop_oneof![
        6 => (any::<u8>(), k.clone(), 0u16..700, any::<u8>()).prop_map(|(p, k, n, s)| Op::Put(p, k, n, s)),
        2 => (any::<u8>(), k.clone()).prop_map(|(p, k)| Op::Delete(p, k)),
        3 => (any::<u8>(), proptest::collection::vec((0u8..60, proptest::option::of(0u16..400)), 1..6))
            .prop_map(|(p, w)| Op::Batch(p, w)),
        3 => (any::<u8>(), k.clone(), k.clone(), any::<bool>()).prop_map(|(p, c, k, m)| Op::Txn(p, c, k, m)),
        3 => (any::<u8>(), k.clone(), 0u8..20, any::<bool>()).prop_map(|(p, s, l, r)| Op::Scan(p, s, l, r)),
        1 => (any::<u8>(), 0u8..6).prop_map(|(p, d)| Op::Prefix(p, d)),
        1 => (any::<u8>(), k.clone()).prop_map(|(p, s)| Op::Count(p, s)),
        4 => (any::<u8>(), k).prop_map(|(p, k)| Op::Get(p, k)),
        1 => Just(Op::Maintain),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct M {
    value: Vec<u8>,
    create: u64,
    modified: u64,
    version: u64,
}

struct Model {
    map: BTreeMap<Vec<u8>, M>,
    rev: u64,
}

impl Model {
    /// Apply writes as one batch at the next revision (if anything changes).
    fn apply(&mut self, writes: &[(Vec<u8>, Option<Vec<u8>>)]) -> Option<u64> {
        let changes = writes
            .iter()
            .scan(self.map.clone(), |m, (k, v)| {
                let changed = match v {
                    Some(v) => {
                        m.insert(
                            k.clone(),
                            M {
                                value: v.clone(),
                                create: 0,
                                modified: 0,
                                version: 0,
                            },
                        );
                        true
                    }
                    None => m.remove(k).is_some(),
                };
                Some(changed)
            })
            .any(|c| c);
        if !changes {
            return None;
        }
        self.rev += 1;
        let rev = self.rev;
        for (k, v) in writes {
            match v {
                Some(v) => {
                    let (create, version) = match self.map.get(k) {
                        Some(m) => (m.create, m.version + 1),
                        None => (rev, 1),
                    };
                    self.map.insert(
                        k.clone(),
                        M {
                            value: v.clone(),
                            create,
                            modified: rev,
                            version,
                        },
                    );
                }
                None => {
                    self.map.remove(k);
                }
            }
        }
        Some(rev)
    }
}

fn entries(m: &Model, lo: &[u8], hi: Option<&[u8]>) -> Vec<(Vec<u8>, M)> {
    m.map
        .iter()
        .filter(|(k, _)| k.as_slice() >= lo && hi.is_none_or(|h| k.as_slice() < h))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn config(dir: &std::path::Path, durable: bool) -> tera_engine::Config {
    let mut c = tiny(dir, 80 << 10);
    if durable {
        c.durability = Durability::Commit;
        c.checkpoint_wal_bytes = 32 << 10; // background checkpoints during the run
    }
    c
}

fn run(ops: &[Op], durable: bool) -> tera_engine::Stats {
    let dir = tempfile::tempdir().unwrap();
    let opts = KeyspaceOptions::ordered().partition_prefix(1);
    let mut db = Db::open(config(dir.path(), durable)).unwrap();
    let mut ks = db.keyspace("m", opts).unwrap();
    let mut model = Model {
        map: BTreeMap::new(),
        rev: 0,
    };
    let check_entry = |e: &tera_engine::Entry, m: &M| {
        assert_eq!(
            (&e.value, e.create_revision, e.mod_revision, e.version),
            (&m.value, m.create, m.modified, m.version),
            "entry {:?}",
            String::from_utf8_lossy(&e.key)
        );
    };
    for op in ops {
        match op {
            Op::Put(p, k, n, s) => {
                let key = key_of(*p, *k);
                let v = val(*k, *n, *s);
                let rev = ks.put(&key, &v).unwrap();
                assert_eq!(Some(rev), model.apply(&[(key, Some(v))]));
            }
            Op::Delete(p, k) => {
                let key = key_of(*p, *k);
                let rev = ks.delete(&key).unwrap();
                assert_eq!(rev, model.apply(&[(key, None)]));
            }
            Op::Batch(p, w) => {
                let mut b = Batch::new();
                let mut writes = Vec::new();
                for (k, v) in w {
                    let key = key_of(*p, *k);
                    match v {
                        Some(n) => {
                            let v = val(*k, *n, *p);
                            b.put(key.clone(), v.clone());
                            writes.push((key, Some(v)));
                        }
                        None => {
                            b.delete(key.clone());
                            writes.push((key, None));
                        }
                    }
                }
                assert_eq!(ks.write(&b).unwrap(), model.apply(&writes));
            }
            Op::Txn(p, c, k, by_modrev) => {
                let (ckey, key) = (key_of(*p, *c), key_of(*p, *k));
                let cur = model.map.get(&ckey).cloned();
                // Half the time compare against the truth (succeeds), half against a wrong
                // value (fails), so both branches run.
                let target = if *by_modrev {
                    CompareTarget::ModRevision(cur.as_ref().map_or(0, |m| m.modified))
                } else {
                    CompareTarget::Version(cur.as_ref().map_or(0, |m| m.version) + 1)
                };
                let t = Txn {
                    compares: vec![Compare::new(ckey.clone(), CompareOp::Equal, target)],
                    success: vec![KOp::Put {
                        key: key.clone(),
                        value: val(*k, 33, 1),
                    }],
                    failure: vec![KOp::Delete { key: key.clone() }],
                };
                let r = ks.txn(&t).unwrap();
                assert_eq!(r.succeeded, *by_modrev);
                let want = if *by_modrev {
                    model.apply(&[(key, Some(val(*k, 33, 1)))])
                } else {
                    model.apply(&[(key, None)])
                };
                assert_eq!(r.revision, want.unwrap_or(model.rev));
            }
            Op::Scan(p, s, limit, reverse) => {
                let start = key_of(*p, *s);
                let end = key_of(*p, s.saturating_add(25));
                let mut r = Range::between(&start, &end).limit(usize::from(*limit));
                if *reverse {
                    r = r.reverse();
                }
                let got = ks.range(&r).unwrap();
                let mut want = entries(&model, &start, Some(&end));
                if *reverse {
                    want.reverse();
                }
                let more = *limit > 0 && want.len() > usize::from(*limit);
                if *limit > 0 {
                    want.truncate(usize::from(*limit));
                }
                assert_eq!(got.more, more);
                assert_eq!(got.entries.len(), want.len());
                for (e, (k, m)) in got.entries.iter().zip(&want) {
                    assert_eq!(&e.key, k);
                    check_entry(e, m);
                }
            }
            Op::Prefix(p, d) => {
                // Prefixes of 1 to 3 bytes; one byte spans a partition, shorter ones all.
                let full = key_of(*p, d * 10);
                let prefix = &full[..1 + usize::from(d % 3)];
                let got = ks.range(&Range::prefix(prefix)).unwrap();
                let want: Vec<_> = model
                    .map
                    .range(prefix.to_vec()..)
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .map(|(k, _)| k.clone())
                    .collect();
                let keys: Vec<_> = got.entries.iter().map(|e| e.key.clone()).collect();
                assert_eq!(keys, want);
                let all = ks.range(&Range::prefix(b"")).unwrap();
                assert_eq!(all.entries.len(), model.map.len());
            }
            Op::Count(p, s) => {
                let start = key_of(*p, *s);
                let r = Range {
                    start: start.clone(),
                    end: None,
                    ..Range::default()
                };
                assert_eq!(
                    ks.count(&r).unwrap(),
                    entries(&model, &start, None).len() as u64
                );
            }
            Op::Get(p, k) => {
                let key = key_of(*p, *k);
                match (ks.get(&key).unwrap(), model.map.get(&key)) {
                    (Some(e), Some(m)) => check_entry(&e, m),
                    (None, None) => {}
                    (got, want) => panic!("get {key:?}: {got:?} vs {want:?}"),
                }
            }
            Op::Maintain => {
                db.maintain().unwrap();
            }
            Op::Reopen => {
                if durable {
                    drop(ks);
                    drop(db);
                    db = Db::open(config(dir.path(), durable)).unwrap();
                    ks = db.keyspace("m", opts).unwrap();
                }
            }
        }
        assert_eq!(ks.revision(), model.rev);
    }
    let all = ks.range(&Range::prefix(b"")).unwrap();
    assert_eq!(all.entries.len(), model.map.len());
    for (e, (k, m)) in all.entries.iter().zip(&model.map) {
        assert_eq!(&e.key, k);
        check_entry(e, m);
    }
    assert_eq!(ks.len(), model.map.len() as u64);
    db.stats()
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn ordered_keyspace_matches_a_btreemap(ops in proptest::collection::vec(op(), 1..400), durable in any::<bool>()) {
        run(&ops, durable);
    }
}

/// A fixed long run in which tiering is certainly active (the property cases are short).
#[test]
fn a_long_run_tiers_and_still_matches() {
    let mut ops = Vec::new();
    for i in 0..3000u32 {
        let p = (i % 4) as u8;
        let k = (i.wrapping_mul(2_654_435_761) >> 26) as u8;
        ops.push(match i % 11 {
            0 => Op::Delete(p, k),
            1 => Op::Batch(
                p,
                vec![
                    (k, Some(300)),
                    (k.wrapping_add(1) % 60, None),
                    (k / 2, Some(100)),
                ],
            ),
            2 => Op::Txn(p, k, k / 3, i % 2 == 0),
            3 => Op::Scan(p, k % 60, (i % 20) as u8, i % 3 == 0),
            4 => Op::Get(p, k % 60),
            5 if i % 500 == 5 => Op::Reopen,
            6 if i % 100 == 6 => Op::Maintain,
            _ => Op::Put(p, k % 60, (i % 700) as u16, i as u8),
        });
    }
    for durable in [false, true] {
        let s = run(&ops, durable);
        assert!(
            s.pages_demoted > 0 && s.far.records > 0,
            "tiering ran: {s:?}"
        );
        assert!(s.ordered_index_bytes > 0);
    }
}
