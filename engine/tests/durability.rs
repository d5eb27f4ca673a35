//! Durability in one process: what is committed survives a reopen, with and without a
//! checkpoint, with tiering active; a torn log tail is cut; revisions continue upward;
//! keyspaces and ordered indexes come back; the modes refuse what they cannot honour.
//! (Crashes of a real process are in tests/tests/crash.rs.)

mod common;

use common::*;
use std::time::Duration;
use tera_engine::{Batch, Compare, Config, Db, Durability, Error, KeyspaceOptions, Op, Range, Txn};

fn durable(dir: &std::path::Path, budget: u64, mode: Durability) -> Config {
    let mut c = tiny(dir, budget);
    c.durability = mode;
    c.checkpoint_wal_bytes = 0; // tests take checkpoints themselves
    c
}

/// Write a mix of puts, overwrites, deletes and batches over two keyspaces; returns the
/// expected state of the ordered one.
fn workload(db: &Db, n: u32) -> std::collections::BTreeMap<Vec<u8>, Vec<u8>> {
    let kv = db.keyspace("kv", KeyspaceOptions::hash()).unwrap();
    let ord = db.keyspace("ord", KeyspaceOptions::ordered()).unwrap();
    let mut model = std::collections::BTreeMap::new();
    for i in 0..n {
        kv.put(&key(i), &value_for(i, 1, 200)).unwrap();
        ord.put(&key(i), &value_for(i, 1, 64)).unwrap();
        model.insert(key(i), value_for(i, 1, 64));
    }
    for i in (0..n).step_by(3) {
        kv.put(&key(i), &value_for(i, 2, 300)).unwrap();
        ord.delete(&key(i)).unwrap();
        model.remove(&key(i));
    }
    model
}

fn check(db: &Db, n: u32, model: &std::collections::BTreeMap<Vec<u8>, Vec<u8>>) {
    let kv = db.get_keyspace("kv").expect("keyspace kv recovered");
    let ord = db.get_keyspace("ord").expect("keyspace ord recovered");
    assert_eq!(ord.options(), KeyspaceOptions::ordered());
    for i in 0..n {
        let e = kv.get(&key(i)).unwrap().expect("acknowledged put");
        let (k, ver) = check_value(&e.value);
        assert_eq!(k, i);
        assert_eq!(ver, if i % 3 == 0 { 2 } else { 1 });
        assert_eq!(e.version, u64::from(ver));
        assert_eq!(
            ord.get(&key(i)).unwrap().map(|e| e.value),
            model.get(&key(i)).cloned()
        );
    }
    let all = ord.range(&Range::prefix(b"")).unwrap();
    let got: Vec<_> = all
        .entries
        .iter()
        .map(|e| (e.key.clone(), e.value.clone()))
        .collect();
    let want: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(got, want, "the ordered index is rebuilt exactly");
    assert_eq!(ord.len(), model.len() as u64);
    assert_eq!(kv.len(), u64::from(n));
}

#[test]
fn commits_survive_reopen_with_and_without_a_checkpoint() {
    for with_checkpoint in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let n = 600;
        let (model, revs) = {
            let db = Db::open(durable(dir.path(), 256 << 10, Durability::Commit)).unwrap();
            let model = workload(&db, n / 2);
            if with_checkpoint {
                let info = db.checkpoint().unwrap();
                assert!(info.records >= u64::from(n / 2));
            }
            // More after the checkpoint: replayed from the log.
            let kv = db.get_keyspace("kv").unwrap();
            for i in n / 2..n {
                kv.put(&key(i), &value_for(i, 1, 200)).unwrap();
            }
            for i in (n / 2..n).step_by(3) {
                kv.put(&key(i), &value_for(i, 2, 300)).unwrap();
            }
            let s = db.stats();
            assert!(s.far.records > 0, "tiering is active: {s:?}");
            let revs = (kv.revision(), db.get_keyspace("ord").unwrap().revision());
            (model, revs)
        };
        let (db, info) =
            Db::open_with_info(durable(dir.path(), 256 << 10, Durability::Commit)).unwrap();
        if with_checkpoint {
            assert!(info.checkpoint_records > 0, "{info:?}");
        }
        // Reads of the second half of kv come from the log in both cases.
        let kv = db.get_keyspace("kv").unwrap();
        for i in n / 2..n {
            let e = kv.get(&key(i)).unwrap().unwrap();
            assert_eq!(check_value(&e.value), (i, if i % 3 == 0 { 2 } else { 1 }));
        }
        // First half: ord model only covers n/2 keys.
        let ord = db.get_keyspace("ord").unwrap();
        assert_eq!(ord.len(), model.len() as u64);
        assert_eq!(
            (kv.revision(), ord.revision()),
            revs,
            "revisions are recovered"
        );
        let r = kv.put(b"next", b"v").unwrap();
        assert_eq!(r, revs.0 + 1, "revisions continue upward");
    }
}

/// The log and checkpoint files in `dir`, with their bytes.
fn durable_files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ckpt-") || n.starts_with("wal-"))
        .map(|n| {
            let bytes = std::fs::read(dir.join(&n)).unwrap();
            (n, bytes)
        })
        .collect();
    v.sort();
    v
}

/// A checkpoint damaged after it was written (a byte changed, cut short, emptied) is refused
/// with `Corrupt` naming it, never opened with other data. The refused opens change no log or
/// checkpoint file, so once the checkpoint is restored the database opens with everything.
#[test]
fn a_damaged_checkpoint_is_refused_and_left_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let n = 400;
    let model = {
        let db = Db::open(durable(dir.path(), 256 << 10, Durability::Commit)).unwrap();
        let model = workload(&db, n);
        db.checkpoint().unwrap();
        model
    };
    let files = durable_files(dir.path());
    let (name, good) = files
        .iter()
        .find(|(n, _)| n.ends_with(".tck"))
        .expect("a checkpoint file");
    let ck = dir.path().join(name);
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x40;
    for (what, bytes) in [
        ("a changed byte", flipped),
        ("cut in half", good[..good.len() / 2].to_vec()),
        ("cut before its last byte", good[..good.len() - 1].to_vec()),
        ("emptied", Vec::new()),
    ] {
        std::fs::write(&ck, &bytes).unwrap();
        let before = durable_files(dir.path());
        let e = Db::open(durable(dir.path(), 256 << 10, Durability::Commit))
            .map(|_| ())
            .unwrap_err();
        let Error::Corrupt { path, .. } = &e else {
            panic!("{what}: {e}")
        };
        assert_eq!(path, &ck, "{what}: {e}");
        assert_eq!(
            durable_files(dir.path()),
            before,
            "{what}: the refused open changed a file"
        );
    }
    std::fs::write(&ck, good).unwrap();
    let db = Db::open(durable(dir.path(), 256 << 10, Durability::Commit)).unwrap();
    check(&db, n, &model);
}

#[test]
fn reopen_with_checkpoint_and_log_gives_the_same_state() {
    let dir = tempfile::tempdir().unwrap();
    let n = 500;
    let model = {
        let db = Db::open(durable(dir.path(), 256 << 10, Durability::Commit)).unwrap();
        let m = workload(&db, n);
        db.checkpoint().unwrap();
        m
    };
    let db = Db::open(durable(dir.path(), 256 << 10, Durability::Commit)).unwrap();
    check(&db, n, &model);
    // And once more, now from the log written after the first recovery.
    let ord = db.get_keyspace("ord").unwrap();
    ord.put(b"zz", b"last").unwrap();
    drop(ord); // a keyspace handle keeps the database open
    drop(db);
    let db = Db::open(durable(dir.path(), 256 << 10, Durability::Commit)).unwrap();
    let mut model = model;
    model.insert(b"zz".to_vec(), b"last".to_vec());
    check(&db, n, &model);
}

/// A checkpoint of large values is written in chunks bounded in bytes (a slice of the index
/// ends once its records pass 16 MiB, so no chunk nears the log's frame limit, which the next
/// open enforces) and reads back whole: every record, once.
#[test]
fn a_checkpoint_of_large_values_reads_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || {
        let mut c = durable(dir.path(), 4 << 20, Durability::Commit);
        c.partitions = 1;
        c.page_bytes = 64 << 10;
        c.segment_bytes = 1 << 20;
        c.max_value_bytes = 32 << 10;
        c
    };
    let n = 1200u32; // about 36 MB: three slices or more
    {
        let db = Db::open(cfg()).unwrap();
        for i in 0..n {
            db.put(&key(i), &value_for(i, 1, 30_000)).unwrap();
        }
        let info = db.checkpoint().unwrap();
        assert!(info.records >= u64::from(n), "{info:?}");
        assert!(info.bytes > 36_000_000, "{info:?}");
    }
    let (db, r) = Db::open_with_info(cfg()).unwrap();
    assert_eq!(r.log_frames, 0, "all from the checkpoint: {r:?}");
    assert!(r.checkpoint_records >= u64::from(n), "{r:?}");
    for i in 0..n {
        let v = db.get(&key(i)).unwrap().expect("present");
        assert_eq!(check_value(&v), (i, 1));
    }
    assert_eq!(db.stats().keys, u64::from(n));
}

/// A revision taken by a batch that failed (here the index is full) is logged as an empty
/// batch: after a reopen, revisions go on above it, never handing out again one that a
/// watcher may have moved its cursor past.
#[test]
fn a_failed_batch_s_revision_is_never_handed_out_again() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || {
        let mut c = durable(dir.path(), 56 << 10, Durability::Commit);
        c.partitions = 1;
        c
    };
    let failed = {
        let db = Db::open(cfg()).unwrap();
        let mut n = 0u32;
        while db.put(&key(n), b"").is_ok() {
            n += 1;
            assert!(n < 100_000);
        }
        let ks = db
            .keyspace(tera_engine::DEFAULT_KEYSPACE, KeyspaceOptions::hash())
            .unwrap();
        let before = ks.revision();
        let mut b = Batch::new();
        b.put(key(n), b"new");
        assert!(matches!(ks.write(&b), Err(Error::BudgetExhausted(_))));
        assert_eq!(
            ks.revision(),
            before + 1,
            "the failed batch took a revision"
        );
        ks.revision()
    };
    let db = Db::open(cfg()).unwrap();
    let ks = db
        .keyspace(tera_engine::DEFAULT_KEYSPACE, KeyspaceOptions::hash())
        .unwrap();
    assert_eq!(ks.revision(), failed);
    db.delete(&key(0)).unwrap();
    assert_eq!(ks.revision(), failed + 1);
}

/// `durable_revision` makes every batch up to the revision it returns durable: with a flush
/// interval of an hour, a watcher (which sees a change once it is durable) sees the batch at
/// once after it, and not before.
#[test]
fn durable_revision_makes_the_batches_up_to_it_durable() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(durable(
        dir.path(),
        256 << 10,
        Durability::Periodic(Duration::from_secs(3600)),
    ))
    .unwrap();
    let ks = db
        .keyspace(tera_engine::DEFAULT_KEYSPACE, KeyspaceOptions::hash())
        .unwrap();
    let before = ks.revision();
    let rev = ks.put(b"k", b"v").unwrap();
    let mut w = ks.watch(b"", None, before).unwrap();
    assert!(
        w.next(Duration::from_millis(50), 10).unwrap().is_empty(),
        "not durable yet, so not visible"
    );
    assert_eq!(ks.durable_revision().unwrap(), rev);
    let events = w.next(Duration::from_secs(5), 10).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].mod_revision, rev);
}

#[test]
fn versions_and_revisions_follow_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(durable(dir.path(), 256 << 10, Durability::Commit)).unwrap();
    let ks = db.keyspace("k", KeyspaceOptions::ordered()).unwrap();
    let r1 = ks.put(b"a", b"1").unwrap();
    let r2 = ks.put(b"a", b"2").unwrap();
    let e = ks.get(b"a").unwrap().unwrap();
    assert_eq!((e.create_revision, e.mod_revision, e.version), (r1, r2, 2));
    let r3 = ks.delete(b"a").unwrap().unwrap();
    assert_eq!(r3, r2 + 1);
    assert_eq!(
        ks.delete(b"a").unwrap(),
        None,
        "deleting a missing key makes no revision"
    );
    let r4 = ks.put(b"a", b"3").unwrap();
    let e = ks.get(b"a").unwrap().unwrap();
    assert_eq!(
        (e.create_revision, e.mod_revision, e.version),
        (r4, r4, 1),
        "version restarts"
    );
    drop(ks);
    drop(db);
    let db = Db::open(durable(dir.path(), 256 << 10, Durability::Commit)).unwrap();
    let ks = db.get_keyspace("k").unwrap();
    let e = ks.get(b"a").unwrap().unwrap();
    assert_eq!((e.create_revision, e.mod_revision, e.version), (r4, r4, 1));
}

#[test]
fn a_torn_log_tail_is_cut_and_never_replayed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(durable(dir.path(), 256 << 10, Durability::Commit)).unwrap();
        for i in 0..50 {
            db.put(&key(i), &value_for(i, 1, 100)).unwrap();
        }
    }
    // Append half a frame and some garbage, as a crash in the middle of a flush would.
    let wal = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .max()
        .unwrap();
    let len = std::fs::metadata(&wal).unwrap().len();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&wal).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7]).unwrap();
    }
    let (db, info) =
        Db::open_with_info(durable(dir.path(), 256 << 10, Durability::Commit)).unwrap();
    assert_eq!(info.torn_bytes, 11);
    assert_eq!(
        std::fs::metadata(&wal).unwrap().len(),
        len,
        "the tail was cut off"
    );
    for i in 0..50 {
        assert_eq!(check_value(&db.get(&key(i)).unwrap().unwrap()), (i, 1));
    }
    db.put(b"after", b"x").unwrap();
    drop(db);
    let db = Db::open(durable(dir.path(), 256 << 10, Durability::Commit)).unwrap();
    assert_eq!(db.get(b"after").unwrap().as_deref(), Some(&b"x"[..]));
}

#[test]
fn damage_in_the_middle_of_the_log_is_refused_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(durable(dir.path(), 256 << 10, Durability::Commit)).unwrap();
        for i in 0..50 {
            db.put(&key(i), &value_for(i, 1, 100)).unwrap();
        }
    }
    let wal = dir.path().join(format!("wal-{:020}.log", 0));
    let mut bytes = std::fs::read(&wal).unwrap();
    bytes[40] ^= 0xff; // inside the first frame; whole frames follow
    std::fs::write(&wal, &bytes).unwrap();
    // A bad frame followed by intact ones is damage, not a torn tail: opening refuses
    // rather than drop the 49 committed writes after it.
    let e = Db::open(durable(dir.path(), 256 << 10, Durability::Commit)).unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("not a torn tail"), "{e}");
}

/// `get_many` reads keys of its transaction's partition only: one of another partition
/// among them, even after many of the same prefix (checked once), is refused.
#[test]
fn get_many_refuses_a_key_of_another_partition() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(durable(dir.path(), 256 << 10, Durability::Commit)).unwrap();
    let ks = db
        .keyspace("ns", KeyspaceOptions::hash().partition_prefix(4))
        .unwrap();
    let other = (0..64)
        .map(|i| format!("u{i:03}"))
        .find(|p| ks.partition_of(p.as_bytes()) != ks.partition_of(b"u001"))
        .expect("64 prefixes in one partition");
    let mut keys: Vec<Vec<u8>> = (0..20).map(|i| format!("u001/{i}").into_bytes()).collect();
    let mut b = Batch::new();
    for k in &keys {
        b.put(k.clone(), k.clone());
    }
    ks.write(&b).unwrap();
    let read = |keys: &[Vec<u8>]| {
        let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        ks.atomic(b"u001", |tx| {
            let mut got = Vec::new();
            tx.get_many(&refs, |_, v| got.push(v.to_vec()))?;
            Ok(got)
        })
    };
    assert_eq!(read(&keys).unwrap().0, keys);
    keys.push(format!("{other}/x").into_bytes());
    let e = read(&keys).unwrap_err();
    assert!(matches!(e, Error::CrossPartition { .. }), "{e}");
    // A short key that is all prefix is checked as itself.
    let e = read(&[b"u001/0".to_vec(), other.clone().into_bytes()]).unwrap_err();
    assert!(matches!(e, Error::CrossPartition { .. }), "{e}");
}

#[test]
fn batches_and_transactions_are_all_or_nothing_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let opts = KeyspaceOptions::ordered().partition_prefix(4);
    {
        let db = Db::open(durable(dir.path(), 256 << 10, Durability::Commit)).unwrap();
        let ks = db.keyspace("ns", opts).unwrap();
        let mut b = Batch::new();
        b.put(b"u001/a".to_vec(), b"1".to_vec())
            .put(b"u001/b".to_vec(), b"2".to_vec());
        let r = ks.write(&b).unwrap().unwrap();
        let t = Txn {
            compares: vec![Compare::absent(b"u001/c".to_vec())],
            success: vec![
                Op::Put {
                    key: b"u001/c".to_vec(),
                    value: b"3".to_vec(),
                },
                Op::Delete {
                    key: b"u001/a".to_vec(),
                },
            ],
            failure: vec![],
        };
        let out = ks.txn(&t).unwrap();
        assert!(out.succeeded);
        assert_eq!(out.revision, r + 1);
        let again = ks.txn(&t).unwrap();
        assert!(!again.succeeded, "the compare now fails");
        assert_eq!(
            again.revision,
            r + 1,
            "a transaction that writes nothing takes no revision"
        );
        // A batch across partition keys is refused whole.
        let mut cross = Batch::new();
        cross.put(b"u001/x".to_vec(), b"1".to_vec());
        for i in 0..64 {
            cross.put(format!("u{i:03}/x").into_bytes(), b"1".to_vec());
        }
        assert!(matches!(
            ks.write(&cross),
            Err(Error::CrossPartition { .. })
        ));
        assert_eq!(ks.get(b"u001/x").unwrap(), None);
    }
    let db = Db::open(durable(dir.path(), 256 << 10, Durability::Commit)).unwrap();
    let ks = db.keyspace("ns", opts).unwrap();
    let keys: Vec<_> = ks
        .range(&Range::prefix(b"u001/"))
        .unwrap()
        .entries
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect();
    assert_eq!(
        keys,
        vec![
            (b"u001/b".to_vec(), b"2".to_vec()),
            (b"u001/c".to_vec(), b"3".to_vec())
        ]
    );
}

#[test]
fn periodic_durability_flushes_on_its_interval_and_at_close() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(durable(
            dir.path(),
            256 << 10,
            Durability::Periodic(Duration::from_millis(20)),
        ))
        .unwrap();
        db.put(b"a", b"1").unwrap();
        let before = db.stats().wal_fsyncs;
        std::thread::sleep(Duration::from_millis(200));
        assert!(db.stats().wal_fsyncs > before, "the flusher ran");
        db.put(b"b", b"2").unwrap(); // flushed by close
    }
    let db = Db::open(durable(
        dir.path(),
        256 << 10,
        Durability::Periodic(Duration::from_millis(20)),
    ))
    .unwrap();
    assert_eq!(db.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(db.get(b"b").unwrap().as_deref(), Some(&b"2"[..]));
}

#[test]
fn modes_refuse_what_they_cannot_honour() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Db::open(durable(dir.path(), 256 << 10, Durability::Commit)).unwrap();
        db.put(b"a", b"1").unwrap();
    }
    // Opening a durable database without durability would fork its history.
    let e = Db::open(tiny(dir.path(), 256 << 10)).unwrap_err();
    assert!(e.to_string().contains("holds a durable database"), "{e}");
    // Without durability there is nothing to checkpoint.
    let other = tempfile::tempdir().unwrap();
    let db = Db::open(tiny(other.path(), 256 << 10)).unwrap();
    assert!(matches!(db.checkpoint(), Err(Error::Config(_))));
    // A zero interval is not a mode.
    let mut c = durable(
        other.path(),
        256 << 10,
        Durability::Periodic(Duration::ZERO),
    );
    c.far_dir = other.path().join("x");
    assert!(matches!(Db::open(c), Err(Error::Config(_))));
}

#[test]
fn bulk_load_then_recover_and_scan() {
    let dir = tempfile::tempdir().unwrap();
    let n = 3000u32;
    {
        let db = Db::open(durable(dir.path(), 512 << 10, Durability::Commit)).unwrap();
        let ks = db.keyspace("bulk", KeyspaceOptions::ordered()).unwrap();
        let info = ks
            .bulk_load((0..n).map(|i| (key(i), value_for(i, 1, 100))))
            .unwrap();
        assert_eq!(info.records, u64::from(n));
        assert_eq!(info.skipped, 0);
        let again = ks.bulk_load([(b"x".to_vec(), b"y".to_vec())]);
        assert!(
            matches!(again, Err(Error::Keyspace { .. })),
            "a second load into a full keyspace"
        );
        let bad = db.keyspace("bad", KeyspaceOptions::hash()).unwrap();
        let e = bad
            .bulk_load([
                (b"b".to_vec(), b"1".to_vec()),
                (b"a".to_vec(), b"2".to_vec()),
            ])
            .unwrap_err();
        assert!(matches!(e, Error::Unsorted { index: 1 }), "{e}");
        assert_eq!(
            bad.get(b"b").unwrap().map(|e| e.value),
            Some(b"1".to_vec()),
            "the sorted prefix is loaded"
        );
    }
    let db = Db::open(durable(dir.path(), 512 << 10, Durability::Commit)).unwrap();
    let ks = db.get_keyspace("bulk").unwrap();
    assert_eq!(ks.count(&Range::prefix(b"")).unwrap(), u64::from(n));
    let (accs, info) = ks
        .scan_parallel(
            || (0u64, 0u64),
            |a, k, v, _| {
                let (i, ver) = check_value(v);
                assert_eq!(k, key(i).as_slice());
                assert_eq!(ver, 1);
                a.0 += 1;
                a.1 += u64::from(i);
            },
        )
        .unwrap();
    let total: u64 = accs.iter().map(|a| a.0).sum();
    let sum: u64 = accs.iter().map(|a| a.1).sum();
    assert_eq!(total, u64::from(n));
    assert_eq!(
        sum,
        u64::from(n) * u64::from(n - 1) / 2,
        "every record once"
    );
    assert_eq!(info.records, u64::from(n));
}

/// A bulk load that loads nothing (empty input, or input refused at its first record) still
/// hands out its revision (watchers are moved past it): a reopen must continue above it.
#[test]
fn an_empty_bulk_load_s_revision_is_never_handed_out_again() {
    let dir = tempfile::tempdir().unwrap();
    let (empty, refused) = {
        let db = Db::open(durable(dir.path(), 512 << 10, Durability::Commit)).unwrap();
        let a = db.keyspace("a", KeyspaceOptions::hash()).unwrap();
        let empty = a
            .bulk_load(Vec::<(Vec<u8>, Vec<u8>)>::new())
            .unwrap()
            .revision;
        assert_eq!(a.revision(), empty);
        let b = db.keyspace("b", KeyspaceOptions::hash()).unwrap();
        let e = b.bulk_load([(vec![b'k'; 300], b"v".to_vec())]).unwrap_err();
        assert!(matches!(e, Error::KeyTooLarge { .. }), "{e}");
        (empty, b.revision())
    };
    assert!(refused > 0, "the refused load took a revision");
    let db = Db::open(durable(dir.path(), 512 << 10, Durability::Commit)).unwrap();
    let a = db.get_keyspace("a").unwrap();
    assert!(a.put(b"k", b"v").unwrap() > empty, "a's next revision");
    let b = db.get_keyspace("b").unwrap();
    assert!(b.put(b"k", b"v").unwrap() > refused, "b's next revision");
}

/// A database written until its budget refuses a write must reopen with the same budget.
/// (Recovery once grew each index by rebuilds as keys arrived, needing old and new tables
/// side by side, more than the running database had needed.)
#[test]
fn a_database_filled_to_its_budget_reopens_with_the_same_budget() {
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        let mut c = durable(dir.path(), 4 << 20, Durability::Commit);
        c.partitions = 4;
        c.page_bytes = 64 << 10;
        c.segment_bytes = 256 << 10;
        c.max_key_bytes = 64;
        c.max_value_bytes = 16 << 10;
        c.checkpoint_wal_bytes = 1 << 20;
        c
    };
    let opts = KeyspaceOptions::ordered().partition_prefix(4);
    let mut written = 0u64;
    {
        let db = Db::open(config()).unwrap();
        let ks = db.keyspace("full", opts).unwrap();
        for i in 0u64.. {
            let p = format!("{:04}", i % 97);
            let mut b = Batch::new();
            for j in 0..3 {
                b.put(
                    format!("{p}/b{i:08}/{j}"),
                    vec![b'x'; 10 + ((i * 7 + j * 13) % 1000) as usize],
                );
            }
            if i % 4 == 0 && i >= 291 {
                b.delete(format!("{p}/b{:08}/2", i - 291));
            }
            match ks.write(&b) {
                Ok(_) => written = i + 1,
                Err(Error::BudgetExhausted(_)) => break,
                Err(e) => panic!("batch {i}: {e}"),
            }
        }
        assert!(written > 100, "the budget filled after {written} batches");
    }
    let db = Db::open(config()).unwrap_or_else(|e| panic!("reopen after {written} batches: {e}"));
    let ks = db.keyspace("full", opts).unwrap();
    let last = format!("{:04}/b{:08}/0", (written - 1) % 97, written - 1);
    assert!(
        ks.get(last.as_bytes()).unwrap().is_some(),
        "the last batch is there"
    );
}

/// After a reopen, watchers can start after any revision since the checkpoint: the replayed
/// batches are back in the change log; older ones are `Compacted`.
#[test]
fn watch_history_survives_reopen_from_the_checkpoint_on() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || durable(dir.path(), 1 << 20, Durability::Commit);
    let at_checkpoint = {
        let db = Db::open(cfg()).unwrap();
        let ks = db.keyspace("w", KeyspaceOptions::hash()).unwrap();
        for i in 0..10 {
            ks.put(&key(i), b"before").unwrap();
        }
        db.checkpoint().unwrap();
        let r = ks.revision();
        for i in 0..10 {
            ks.put(&key(i), b"after").unwrap();
        }
        ks.delete(&key(3)).unwrap();
        r
    };
    let db = Db::open(cfg()).unwrap();
    let ks = db.get_keyspace("w").unwrap();
    assert_eq!(ks.revision(), at_checkpoint + 11);
    let mut w = ks.watch(b"", None, at_checkpoint).unwrap();
    let got = w.next(Duration::from_secs(5), 100).unwrap();
    let revs: Vec<u64> = got.iter().map(|e| e.mod_revision).collect();
    assert_eq!(
        revs,
        (at_checkpoint + 1..=at_checkpoint + 11).collect::<Vec<_>>()
    );
    assert_eq!(got.last().unwrap().kind, tera_engine::EventKind::Delete);
    assert!(got[..10].iter().all(|e| e.value == b"after"));
    assert!(matches!(
        ks.watch(b"", None, at_checkpoint - 1),
        Err(Error::Compacted { .. })
    ));
}

/// Recovery reads the log a file at a time, twice (a walk that checks and measures it, then
/// one that replays it): a log of many small files, with a key overwritten in every file,
/// deletes, two keyspaces and a watch history spanning the files, reopens exactly, after a
/// checkpoint taken part way through and without one.
#[test]
fn a_log_of_many_files_replays_in_order_across_them() {
    for checkpoint in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = || {
            // Periodic: thousands of commits without an fsync each; close flushes them.
            let mut c = durable(
                dir.path(),
                4 << 20,
                Durability::Periodic(Duration::from_millis(20)),
            );
            c.wal_file_bytes = 1 << 16; // the smallest allowed: about 250 puts a file
            c
        };
        let n = 1000;
        let (model, rev_before, files) = {
            let db = Db::open(cfg()).unwrap();
            let hot = db.keyspace("hot", KeyspaceOptions::hash()).unwrap();
            let model = workload(&db, n);
            for round in 0..2u32 {
                if round == 1 && checkpoint {
                    db.checkpoint().unwrap();
                }
                for i in 0..n {
                    hot.put(b"counter", format!("{round}:{i}").as_bytes())
                        .unwrap();
                }
            }
            // A keyspace the log creates after the checkpoint, written across files too.
            let late = db.keyspace("late", KeyspaceOptions::ordered()).unwrap();
            for i in 0..n {
                late.put(&key(i), &value_for(i, 1, 200)).unwrap();
            }
            hot.delete(b"counter").unwrap();
            hot.put(b"counter", b"last").unwrap();
            let files = std::fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("wal-"))
                .count();
            (model, hot.revision(), files)
        };
        assert!(files >= 4, "the log to replay spans {files} files");
        let (db, info) = Db::open_with_info(cfg()).unwrap();
        assert!(info.log_frames > 0, "{info:?}");
        check(&db, n, &model);
        let hot = db.get_keyspace("hot").unwrap();
        assert_eq!(hot.revision(), rev_before, "checkpoint {checkpoint}");
        assert_eq!(hot.get(b"counter").unwrap().unwrap().value, b"last");
        let late = db.get_keyspace("late").unwrap();
        assert_eq!(late.len(), u64::from(n));
        for i in (0..n).step_by(7) {
            let e = late
                .get(&key(i))
                .unwrap()
                .expect("a put to the late keyspace");
            assert_eq!(check_value(&e.value), (i, 1));
        }
        // The history's newest revisions come back in order, the last two being the delete
        // and the put that followed it.
        let mut w = hot.watch(b"", None, rev_before - 10).unwrap();
        let got = w.next(Duration::from_secs(5), 100).unwrap();
        let revs: Vec<u64> = got.iter().map(|e| e.mod_revision).collect();
        assert_eq!(revs, (rev_before - 9..=rev_before).collect::<Vec<_>>());
        assert_eq!(got[8].kind, tera_engine::EventKind::Delete);
        assert_eq!(got[9].value, b"last");
        assert_eq!(got[7].value, format!("1:{}", n - 1).as_bytes());
        // Writes go on where the log ended, and survive another reopen.
        hot.put(b"after", b"x").unwrap();
        drop((hot, late, db));
        let db = Db::open(cfg()).unwrap();
        check(&db, n, &model);
        let hot = db.get_keyspace("hot").unwrap();
        assert_eq!(hot.revision(), rev_before + 1);
        assert_eq!(hot.get(b"after").unwrap().unwrap().value, b"x");
    }
}

/// A bulk load of records `0..n` (16-byte values) on another thread that stops before record
/// `at`, while it stages its first chunk: the first `wait` on the barrier returns once it has
/// stopped, the second lets it go on.
fn paused_load(
    ks: &tera_engine::Keyspace,
    n: u32,
    at: u32,
) -> (
    std::thread::JoinHandle<tera_engine::Result<tera_engine::BulkLoadInfo>>,
    std::sync::Arc<std::sync::Barrier>,
) {
    let pause = std::sync::Arc::new(std::sync::Barrier::new(2));
    let (ks, p) = (ks.clone(), pause.clone());
    let loader = std::thread::spawn(move || {
        ks.bulk_load((0..n).map(|i| {
            if i == at {
                p.wait();
                p.wait();
            }
            (key(i), value_for(i, 1, 16))
        }))
    });
    (loader, pause)
}

/// One bulk load into a keyspace at a time: a second one started while the first runs (a
/// retry of one that timed out, say) is refused instead of mixing its records in, and the
/// first goes on to load everything. The load is more than one chunk (65,536 records), and
/// survives a reopen whole.
#[test]
fn a_second_bulk_load_while_one_runs_is_refused_and_a_long_load_spans_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let n = 70_000u32;
    let cfg = || durable(dir.path(), 32 << 20, Durability::Commit);
    {
        let db = Db::open(cfg()).unwrap();
        let ks = db.keyspace("bulk", KeyspaceOptions::hash()).unwrap();
        let (loader, pause) = paused_load(&ks, n, n / 2);
        pause.wait();
        let e = ks.bulk_load([(b"x".to_vec(), b"y".to_vec())]).unwrap_err();
        assert!(
            matches!(&e, Error::Keyspace { reason, .. } if reason.contains("running already")),
            "{e}"
        );
        pause.wait();
        let info = loader.join().unwrap().unwrap();
        assert_eq!((info.records, info.skipped), (u64::from(n), 0));
        assert!(
            ks.get(b"x").unwrap().is_none(),
            "nothing of the refused load"
        );
    }
    let db = Db::open(cfg()).unwrap();
    let ks = db.get_keyspace("bulk").unwrap();
    assert_eq!(ks.len(), u64::from(n));
    for i in (0..n).step_by(997) {
        assert_eq!(
            check_value(&ks.get(&key(i)).unwrap().unwrap().value),
            (i, 1)
        );
    }
}

/// A panic in a parallel scan's callback reaches the caller with its own message.
#[test]
fn a_panic_in_a_scan_callback_keeps_its_message() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(tiny(dir.path(), 1 << 20)).unwrap();
    let ks = db.keyspace("s", KeyspaceOptions::hash()).unwrap();
    for i in 0..100 {
        ks.put(&key(i), b"v").unwrap();
    }
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ks.scan_parallel(|| (), |_, _, _, _| panic!("the callback's own message"))
    }));
    let payload = r.expect_err("the panic is raised again");
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    assert!(text.contains("the callback's own message"), "{text:?}");
}

/// A key someone else puts and then deletes while a bulk load runs stays deleted: the delete
/// came after the load's revision, so the load's older record must not bring it back (it
/// did: the load asked only whether the key existed). A key put is kept, a delete of a key
/// that did not exist changes nothing, and all of it reads the same after a reopen.
#[test]
fn a_key_deleted_while_a_bulk_load_runs_stays_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || durable(dir.path(), 4 << 20, Durability::Commit);
    let n = 100u32;
    let check = |ks: &tera_engine::Keyspace| {
        assert!(
            ks.get(&key(50)).unwrap().is_none(),
            "deleted after the load's revision"
        );
        assert_eq!(
            check_value(&ks.get(&key(60)).unwrap().unwrap().value),
            (60, 2)
        );
        assert_eq!(
            check_value(&ks.get(&key(70)).unwrap().unwrap().value),
            (70, 1)
        );
        assert_eq!(ks.len(), u64::from(n) - 1);
    };
    {
        let db = Db::open(cfg()).unwrap();
        let ks = db.keyspace("bulk", KeyspaceOptions::hash()).unwrap();
        let (loader, pause) = paused_load(&ks, n, 10);
        pause.wait();
        let load_rev = ks.revision();
        ks.put(&key(50), &value_for(50, 2, 16)).unwrap();
        assert!(ks.delete(&key(50)).unwrap().is_some_and(|r| r > load_rev));
        ks.put(&key(60), &value_for(60, 2, 16)).unwrap();
        assert!(ks.delete(&key(70)).unwrap().is_none(), "not loaded yet");
        pause.wait();
        let info = loader.join().unwrap().unwrap();
        assert_eq!((info.records, info.skipped), (u64::from(n) - 2, 2));
        check(&ks);
    }
    let db = Db::open(cfg()).unwrap();
    check(&db.get_keyspace("bulk").unwrap());
}

/// A bulk load's revision is in the log before any of its records: `durable_revision` taken
/// while the load stages its first chunk includes the load's revision, and a crash at that
/// moment (the data directory copied as it is) reopens above it, so the revision is never
/// handed out again to a batch that a watcher from it would skip.
#[test]
fn a_bulk_load_s_revision_is_durable_before_its_records_are() {
    let dir = tempfile::tempdir().unwrap();
    let crashed = tempfile::tempdir().unwrap();
    let db = Db::open(durable(dir.path(), 4 << 20, Durability::Commit)).unwrap();
    let ks = db.keyspace("bulk", KeyspaceOptions::hash()).unwrap();
    let (loader, pause) = paused_load(&ks, 100, 10);
    pause.wait();
    let r = ks.durable_revision().unwrap();
    assert_eq!(r, ks.revision(), "the load's revision is handed out");
    for e in std::fs::read_dir(dir.path()).unwrap().flatten() {
        let name = e.file_name();
        if e.file_type().unwrap().is_file() && name != ".tera.lock" {
            std::fs::copy(e.path(), crashed.path().join(&name)).unwrap();
        }
    }
    pause.wait();
    assert_eq!(loader.join().unwrap().unwrap().revision, r);
    drop((ks, db));
    let db = Db::open(durable(crashed.path(), 4 << 20, Durability::Commit)).unwrap();
    let ks = db.get_keyspace("bulk").unwrap();
    assert!(
        ks.revision() >= r,
        "{} after a crash, {r} was durable",
        ks.revision()
    );
    assert!(
        ks.put(b"after", b"x").unwrap() > r,
        "never handed out again"
    );
}
