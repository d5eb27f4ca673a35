//! Bad input gets a clear error and never a panic or a wrong value: oversized keys and
//! values, unusable far directories, impossible budgets and configurations, and far files
//! truncated or overwritten under a running engine.

mod common;

use common::*;
use std::os::unix::fs::FileExt;
use tera_engine::{Config, Db, Error, NeverPromote};

#[test]
fn oversized_keys_and_values_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(tiny(dir.path(), 64 << 10));
    db.put(b"k", b"v").unwrap();
    let big_key = vec![b'k'; 257];
    let err = db.put(&big_key, b"v").unwrap_err();
    assert!(
        matches!(err, Error::KeyTooLarge { len: 257, max: 256 }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "key of 257 bytes is longer than the maximum of 256 bytes"
    );
    let err = db.put(b"k", &vec![0u8; 1025]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ValueTooLarge {
                len: 1025,
                max: 1024
            }
        ),
        "{err}"
    );
    let err = db.update(b"k", |_| Some(vec![0u8; 2000])).unwrap_err();
    assert!(matches!(err, Error::ValueTooLarge { .. }), "{err}");
    assert!(matches!(db.get(&big_key), Ok(None)));
    assert_eq!(db.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    // Exactly at the limits is fine.
    db.put(&vec![b'x'; 256], &vec![1u8; 1024]).unwrap();
    assert_eq!(db.get(&vec![b'x'; 256]).unwrap().unwrap().len(), 1024);
}

#[test]
fn default_limits_are_64_kib_keys_and_1_mib_values() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::new(dir.path());
    c.partitions = 1;
    c.dram_budget_bytes = 16 << 20;
    c.background_maintenance = false;
    let db = Db::open(c).unwrap();
    db.put(&vec![1u8; 64 << 10], &vec![2u8; 1 << 20]).unwrap();
    assert_eq!(
        db.get(&vec![1u8; 64 << 10]).unwrap().unwrap().len(),
        1 << 20
    );
    assert!(matches!(
        db.put(&vec![1u8; (64 << 10) + 1], b"v"),
        Err(Error::KeyTooLarge { .. })
    ));
    assert!(matches!(
        db.put(b"k", &vec![2u8; (1 << 20) + 1]),
        Err(Error::ValueTooLarge { .. })
    ));
}

#[test]
fn a_far_directory_that_cannot_be_created_or_written_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    for bad in [file.join("far"), "/proc/tera-far-test".into()] {
        let err = Db::open(tiny(&bad, 64 << 10)).unwrap_err();
        assert!(matches!(err, Error::FarDir { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&bad.display().to_string()), "{msg}");
        assert!(
            msg.contains("cannot create") || msg.contains("not writable"),
            "{msg}"
        );
    }
}

/// A data directory (log and checkpoints) that is a file, or lies under one, or under
/// /proc, is refused with an error naming it; a path that is not UTF-8 works.
#[test]
fn a_data_directory_that_cannot_be_used_is_refused_and_any_bytes_name_one() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    for bad in [file.clone(), file.join("db"), "/proc/tera-data-test".into()] {
        let mut c = tiny(&dir.path().join("far"), 64 << 10);
        c.durability = tera_engine::Durability::Commit;
        c.data_dir = Some(bad.clone());
        let err = Db::open(c).map(|_| ()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&bad.display().to_string()), "{msg}");
    }
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"x",
        "the file is left alone"
    );
    let odd = dir
        .path()
        .join(std::ffi::OsStr::from_bytes(b"data-\xff\xfe"));
    let mut c = tiny(&odd.join("far"), 64 << 10);
    c.durability = tera_engine::Durability::Commit;
    c.data_dir = Some(odd.join("db"));
    {
        let db = Db::open(c.clone()).unwrap();
        db.put(b"k", b"v").unwrap();
    }
    let db = Db::open(c).unwrap();
    assert_eq!(db.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
}

#[test]
fn a_far_directory_with_segment_files_from_another_run_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p000-0000000000.seg"), b"old").unwrap();
    let err = Db::open(tiny(dir.path(), 64 << 10)).unwrap_err();
    assert!(err.to_string().contains("segment files"), "{err}");
    assert_eq!(
        std::fs::read(dir.path().join("p000-0000000000.seg")).unwrap(),
        b"old",
        "refusing must not touch the files"
    );
}

#[test]
fn two_databases_cannot_share_a_far_directory() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(tiny(dir.path(), 64 << 10));
    first.put(b"k", b"mine").unwrap();
    let err = Db::open(tiny(dir.path(), 64 << 10)).unwrap_err();
    assert!(matches!(err, Error::FarDir { .. }), "{err}");
    assert!(err.to_string().contains("another open database"), "{err}");
    assert_eq!(first.get(b"k").unwrap().as_deref(), Some(&b"mine"[..]));
    drop(first);
    // Closed (and its scratch files removed): the directory can be used again.
    open(tiny(dir.path(), 64 << 10));
}

#[test]
fn impossible_budgets_and_configurations_say_what_to_change() {
    let dir = tempfile::tempdir().unwrap();
    let err = Db::open(tiny(dir.path(), 8 << 10)).unwrap_err();
    assert!(matches!(err, Error::BudgetExhausted(_)), "{err}");
    assert!(err.to_string().contains("dram_budget_bytes"), "{err}");

    let mut c = tiny(dir.path(), 1 << 20);
    c.page_bytes = 3000;
    assert!(Db::open(c).unwrap_err().to_string().contains("page_bytes"));
    let mut c = tiny(dir.path(), 1 << 20);
    c.max_value_bytes = 8000;
    let msg = Db::open(c).unwrap_err().to_string();
    assert!(msg.contains("cannot hold the largest record"), "{msg}");
    let mut c = tiny(dir.path(), 1 << 20);
    c.segment_bytes = 6000;
    assert!(Db::open(c)
        .unwrap_err()
        .to_string()
        .contains("segment_bytes"));
    let mut c = tiny(dir.path(), 1 << 20);
    c.expected_records = 1 << 40; // would be a 12 TB index: refused before allocating
    let msg = Db::open(c).unwrap_err().to_string();
    assert!(msg.contains("expected_records"), "{msg}");
    let mut c = tiny(dir.path(), 1 << 20);
    c.partitions = 70_000;
    assert!(Db::open(c).unwrap_err().to_string().contains("partitions"));
}

#[test]
fn the_index_outgrowing_the_budget_is_an_error_not_an_overrun() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(tiny(dir.path(), 56 << 10));
    let mut refused = None;
    for k in 0..100_000u32 {
        match db.put(&key(k), b"") {
            Ok(()) => {}
            Err(e) => {
                refused = Some((k, e));
                break;
            }
        }
        let s = db.stats();
        assert!(s.dram_used_bytes <= s.dram_budget_bytes, "{s:?}");
    }
    let (k, e) = refused.expect("a 56 KiB budget cannot index 100,000 keys");
    assert!(matches!(e, Error::BudgetExhausted(_)), "{e}");
    // Everything acknowledged before the refusal is still there.
    for j in (0..k).step_by(97) {
        assert_eq!(
            db.get(&key(j)).unwrap().as_deref(),
            Some(&b""[..]),
            "key {j}"
        );
    }
}

/// A batch refused at the index's limit part way through (its delete applied, its new key
/// refused) is undone: the deleted key is back, the database is not poisoned, and writes
/// that need no new index entry (overwrites, a deleted key written again) still succeed.
#[test]
fn a_batch_refused_at_the_index_limit_is_undone_and_poisons_nothing() {
    use tera_engine::{Batch, KeyspaceOptions, DEFAULT_KEYSPACE};
    let dir = tempfile::tempdir().unwrap();
    let mut c = tiny(dir.path(), 56 << 10);
    c.partitions = 1;
    let db = open(c);
    let mut n = 0u32;
    let refused = loop {
        match db.put(&key(n), b"") {
            Ok(()) => n += 1,
            Err(e) => break e,
        }
        assert!(n < 100_000, "a 56 KiB budget cannot index 100,000 keys");
    };
    assert!(matches!(refused, Error::BudgetExhausted(_)), "{refused}");
    let ks = db
        .keyspace(DEFAULT_KEYSPACE, KeyspaceOptions::hash())
        .unwrap();
    let mut b = Batch::new();
    b.delete(key(0)).put(key(n), b"new");
    let e = ks.write(&b).unwrap_err();
    assert!(matches!(e, Error::BudgetExhausted(_)), "{e}");
    assert_eq!(db.poisoned(), None);
    assert_eq!(db.get(&key(0)).unwrap().as_deref(), Some(&b""[..]));
    assert_eq!(db.get(&key(n)).unwrap(), None);
    db.put(&key(1), b"again").unwrap();
    assert!(db.delete(&key(2)).unwrap());
    db.put(&key(2), b"back").unwrap();
    assert_eq!(db.get(&key(1)).unwrap().as_deref(), Some(&b"again"[..]));
    assert_eq!(db.get(&key(2)).unwrap().as_deref(), Some(&b"back"[..]));
    for j in (3..n).step_by(7) {
        assert_eq!(
            db.get(&key(j)).unwrap().as_deref(),
            Some(&b""[..]),
            "key {j}"
        );
    }
}

/// An ordered keyspace whose key index (counted in the DRAM budget, and checked against it
/// only when the hash index grows) leaves the log no frame: every write from then on is
/// refused with `BudgetExhausted`, none panics, and what was acknowledged stays readable.
/// Several budgets, so that some run out of frames between two growths of the hash index.
#[test]
fn a_log_left_without_frames_refuses_writes_and_never_panics() {
    use tera_engine::KeyspaceOptions;
    for budget_kib in [48u64, 56, 64, 80, 96, 128] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = tiny(dir.path(), budget_kib << 10);
        c.partitions = 1;
        let db = open(c);
        let ks = db.keyspace("sorted", KeyspaceOptions::ordered()).unwrap();
        let long = |k: u32| {
            let mut v = vec![b'k'; 256];
            v[..4].copy_from_slice(&k.to_be_bytes());
            v
        };
        let mut n = 0u32;
        let refused = loop {
            match ks.put(&long(n), b"v") {
                Ok(_) => n += 1,
                Err(e) => break e,
            }
            assert!(
                n < 100_000,
                "{budget_kib} KiB cannot hold 100,000 keys of 256 bytes"
            );
        };
        assert!(matches!(refused, Error::BudgetExhausted(_)), "{refused}");
        for attempt in 0..3 {
            for k in [n + 1 + attempt, 0] {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    ks.put(&long(k), b"again")
                }))
                .unwrap_or_else(|_| panic!("{budget_kib} KiB: a put of key {k} panicked"));
                if let Err(e) = r {
                    assert!(matches!(e, Error::BudgetExhausted(_)), "{e}");
                }
            }
        }
        assert_eq!(db.poisoned(), None, "{budget_kib} KiB");
        for j in (1..n).step_by(5) {
            let v = ks.get(&long(j)).unwrap().map(|e| e.value);
            assert_eq!(v, Some(b"v".to_vec()), "{budget_kib} KiB: key {j}");
        }
    }
}

/// `usize::MAX` as a range's limit means no limit in effect: every entry, none cut.
#[test]
fn a_range_limit_of_usize_max_returns_everything() {
    use tera_engine::{KeyspaceOptions, Range};
    let dir = tempfile::tempdir().unwrap();
    let db = open(tiny(dir.path(), 1 << 20));
    let ks = db.keyspace("sorted", KeyspaceOptions::ordered()).unwrap();
    for k in [b"a", b"b", b"c"] {
        ks.put(k, b"v").unwrap();
    }
    for reverse in [false, true] {
        let r = ks
            .range(&Range {
                limit: usize::MAX,
                reverse,
                ..Range::prefix(b"")
            })
            .unwrap();
        assert_eq!(r.entries.len(), 3, "reverse {reverse}");
        assert!(!r.more);
    }
}

/// Fill a database so that most records sit in far segments; returns the keys written.
fn fill_far(db: &Db) -> u32 {
    let n = 400;
    for k in 0..n {
        db.put(&key(k), &value_for(k, 1, 300)).unwrap();
    }
    assert!(db.stats().far.records > 100, "{:?}", db.stats());
    n
}

fn segment_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

#[test]
fn a_far_file_truncated_under_the_engine_gives_errors_not_wrong_values() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(with_policy(
        tiny(dir.path(), 64 << 10),
        std::sync::Arc::new(NeverPromote),
    ));
    let n = fill_far(&db);
    for f in segment_files(dir.path()) {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&f)
            .unwrap()
            .set_len(0)
            .unwrap();
    }
    let (mut ok, mut corrupt) = (0, 0);
    let mut damaged_key = None;
    for k in 0..n {
        match db.get(&key(k)) {
            Ok(Some(v)) => {
                assert_eq!(v, value_for(k, 1, 300), "wrong value for {k}");
                ok += 1;
            }
            Ok(None) => panic!("key {k} reported missing instead of damaged"),
            Err(e @ Error::Corrupt { .. }) => {
                assert!(e.to_string().contains("truncated"), "{e}");
                corrupt += 1;
                damaged_key = Some(k);
            }
            Err(e) => panic!("unexpected error for {k}: {e}"),
        }
    }
    assert!(
        corrupt > 100,
        "truncation not detected: {ok} ok, {corrupt} corrupt"
    );
    assert!(ok > 0, "DRAM records should be unaffected");
    // A write over a key whose old version is unreadable is refused too (the engine cannot
    // tell that the damaged record is that key's), not applied over an unknown state; writes
    // to new keys still work.
    let k = damaged_key.unwrap();
    assert!(matches!(
        db.put(&key(k), b"new"),
        Err(Error::Corrupt { .. })
    ));
    db.put(b"fresh", b"v").unwrap();
    assert_eq!(db.get(b"fresh").unwrap().as_deref(), Some(&b"v"[..]));
}

#[test]
fn a_far_file_overwritten_under_the_engine_fails_its_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(with_policy(
        tiny(dir.path(), 64 << 10),
        std::sync::Arc::new(NeverPromote),
    ));
    let n = fill_far(&db);
    let files = segment_files(dir.path());
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&files[0])
        .unwrap();
    // Damage bytes across the segment's first used page (page 0 of the log is never used).
    for off in (4096 + 100..8000).step_by(50) {
        f.write_all_at(&[0x5a], off).unwrap();
    }
    let mut bad = 0;
    for k in 0..n {
        match db.get(&key(k)) {
            Ok(Some(v)) => assert_eq!(v, value_for(k, 1, 300), "wrong value for {k}"),
            Ok(None) => panic!("key {k} reported missing instead of damaged"),
            Err(Error::Corrupt { reason, path, .. }) => {
                assert_eq!(path, files[0]);
                assert!(
                    ["checksum", "header", "past the end of its page"]
                        .iter()
                        .any(|w| reason.contains(w)),
                    "{reason}"
                );
                bad += 1;
            }
            Err(e) => panic!("unexpected error for {k}: {e}"),
        }
    }
    assert!(bad > 0, "damage not detected");
}

#[test]
fn compaction_of_a_damaged_segment_reports_it_and_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(with_policy(
        tiny(dir.path(), 64 << 10),
        std::sync::Arc::new(NeverPromote),
    ));
    let n = fill_far(&db);
    // Make the first segment a compaction candidate with live records left in it (one with
    // none is removed without being read): overwrite two keys in three.
    for k in (0..n).filter(|k| k % 3 != 0) {
        db.put(&key(k), &value_for(k, 2, 300)).unwrap();
    }
    let files = segment_files(dir.path());
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&files[0])
        .unwrap();
    for off in (100..16_000).step_by(64) {
        f.write_all_at(&[0xa5], off).unwrap();
    }
    let err = loop {
        match db.maintain() {
            Err(e) => break e,
            Ok(0) => panic!("the damaged segment was never compacted"),
            Ok(_) => {}
        }
    };
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    // The damaged segment is left alone from now on; the rest compacts and reads as before.
    db.maintain().unwrap();
    let (mut ok, mut bad) = (0, 0);
    for k in 0..n {
        let want = value_for(k, if k % 3 != 0 { 2 } else { 1 }, 300);
        match db.get(&key(k)) {
            Ok(Some(v)) => {
                assert_eq!(v, want, "wrong value for {k}");
                ok += 1;
            }
            Ok(None) => panic!("key {k} reported missing"),
            Err(Error::Corrupt { .. }) => bad += 1,
            Err(e) => panic!("unexpected error for {k}: {e}"),
        }
    }
    assert!(ok > n / 2, "{ok} readable, {bad} damaged");
}

#[test]
fn compaction_over_a_damaged_record_header_keeps_the_records_it_could_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(with_policy(
        tiny(dir.path(), 64 << 10),
        std::sync::Arc::new(NeverPromote),
    ));
    let n = fill_far(&db);
    // The key of the first record of the first segment's first used page (page 0 of the log
    // is never used): its stored key (a 2-byte keyspace id, then the key) starts after the
    // 24-byte header.
    let files = segment_files(dir.path());
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&files[0])
        .unwrap();
    let mut head = [0u8; 24 + 12];
    f.read_exact_at(&mut head, 4096).unwrap();
    assert_eq!(head[5], 0xA5, "a record's marker byte starts the page");
    let first = std::str::from_utf8(&head[24 + 2..])
        .ok()
        .and_then(|s| s.strip_prefix("key-")?.parse::<u32>().ok())
        .expect("the first record's key");
    // That key and two keys in three overwritten: the first segment is a compaction
    // candidate, and each of its pages still holds live records.
    let stays = move |k: u32| k % 3 == 0 && k != first;
    for k in (0..n).filter(|&k| !stays(k)) {
        db.put(&key(k), &value_for(k, 2, 300)).unwrap();
    }
    // Clear that record's marker byte. A page's sweep ends at the first byte that starts no
    // record, so compaction sees the rest of the page, live records among them, as empty.
    f.write_all_at(&[0], 4096 + 5).unwrap();
    let err = loop {
        match db.maintain() {
            Err(e) => break e,
            Ok(0) => panic!("compaction removed a segment whose live records it did not move"),
            Ok(_) => {}
        }
    };
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("live"), "{err}");
    assert!(files[0].exists(), "the segment was kept for the operator");
    // The rest compacts; every key reads its value, but for the one whose header was damaged.
    db.maintain().unwrap();
    let reads = std::thread::spawn(move || {
        let (mut ok, mut bad) = (0, 0);
        for k in 0..n {
            let want = value_for(k, if stays(k) { 1 } else { 2 }, 300);
            match db.get(&key(k)) {
                Ok(Some(v)) => {
                    assert_eq!(v, want, "wrong value for {k}");
                    ok += 1;
                }
                Ok(None) => panic!("key {k} reported missing"),
                Err(Error::Corrupt { .. }) => bad += 1,
                Err(e) => panic!("unexpected error for {k}: {e}"),
            }
        }
        (ok, bad, db)
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !reads.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "a read never returned (its segment is gone?)"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (ok, bad, db) = reads.join().unwrap();
    // The damaged record was a dead version: every key reads.
    assert_eq!((ok, bad), (n, 0));
    // Once nothing in the damaged segment is live, compaction removes it without a sweep.
    for k in (0..n).filter(|&k| stays(k)) {
        db.put(&key(k), &value_for(k, 3, 300)).unwrap();
    }
    db.maintain().unwrap();
    assert!(
        !files[0].exists(),
        "a damaged segment with nothing live is removed"
    );
    for k in 0..n {
        let want = value_for(k, if stays(k) { 3 } else { 2 }, 300);
        assert_eq!(db.get(&key(k)).unwrap(), Some(want), "key {k}");
    }
}

#[test]
fn index_growth_over_a_damaged_far_record_is_refused_not_guessed() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = with_policy(
        tiny(dir.path(), 512 << 10),
        std::sync::Arc::new(NeverPromote),
    );
    c.partitions = 1;
    let db = open(c);
    // 300-byte values in a 512 KiB budget: the first ~1,200 go far.
    for k in 0..2000u32 {
        db.put(&key(k), &value_for(k, 1, 300)).unwrap();
    }
    assert!(db.stats().far.records > 500, "{:?}", db.stats());
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment_files(dir.path())[0])
        .unwrap();
    f.write_all_at(&[0xff; 64], 4096 + 200).unwrap();
    // New keys grow the index, whose rebuild must rehash every key, the damaged one too: it
    // cannot, so the insert is refused with the damage named, rather than the key dropped.
    let mut refused = None;
    for k in 2000..20_000u32 {
        if let Err(e) = db.put(&key(k), b"v") {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("the index had to grow over the damaged record");
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
    // Healthy records still read correctly.
    assert_eq!(db.get(&key(1999)).unwrap(), Some(value_for(1999, 1, 300)));
}
