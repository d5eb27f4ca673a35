//! Watch: a watcher that starts after revision `r` receives exactly the changes after `r`,
//! once each and in revision order, deletes included, filtered to its key range; concurrent
//! writers on several partitions do not make it skip or repeat a revision; asking for a
//! revision the change log dropped is its own error; a bulk load compacts the history; a
//! watcher behind a long stretch of other keys' revisions reads through them instead of
//! waiting.

mod common;

use common::*;
use std::time::Duration;
use tera_engine::{Batch, Db, Error, EventKind, KeyspaceOptions};

fn drain(w: &mut tera_engine::Watcher, want: usize) -> Vec<tera_engine::Event> {
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while out.len() < want && std::time::Instant::now() < deadline {
        out.extend(w.next(Duration::from_millis(200), 64).unwrap());
    }
    out
}

#[test]
fn a_watcher_from_r_gets_exactly_the_changes_after_r() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(tiny(dir.path(), 512 << 10)).unwrap();
    let ks = db.keyspace("w", KeyspaceOptions::ordered()).unwrap();
    let mut history = Vec::new(); // (rev, kind, key)
    for i in 0..40u32 {
        let rev = ks.put(&key(i % 10), &value_for(i, 1, 20)).unwrap();
        history.push((rev, EventKind::Put, key(i % 10)));
        if i % 7 == 0 {
            let rev = ks.delete(&key(i % 10)).unwrap().unwrap();
            history.push((rev, EventKind::Delete, key(i % 10)));
        }
    }
    for r in [0, 1, 17, history.last().unwrap().0 - 1] {
        let mut w = ks.watch(b"", None, r).unwrap();
        let want: Vec<_> = history.iter().filter(|h| h.0 > r).cloned().collect();
        let got = drain(&mut w, want.len());
        let got: Vec<_> = got
            .iter()
            .map(|e| (e.mod_revision, e.kind, e.key.clone()))
            .collect();
        assert_eq!(got, want, "watch after {r}");
        // Nothing more arrives.
        assert!(w.next(Duration::from_millis(20), 64).unwrap().is_empty());
    }
    // A range watch sees only its keys, and deletes carry no value.
    let mut w = ks.watch(&key(4), Some(&key(5)), 0).unwrap();
    let want = history.iter().filter(|h| h.2 == key(4)).count();
    let got = drain(&mut w, want);
    assert_eq!(got.len(), want);
    assert!(got.iter().all(|e| e.key == key(4)));
    assert!(got
        .iter()
        .any(|e| e.kind == EventKind::Delete && e.value.is_empty()));
}

#[test]
fn concurrent_writers_are_delivered_in_revision_order_without_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = tiny(dir.path(), 8 << 20);
    c.changelog_bytes = 1 << 20; // room for the whole run: this test is not about trimming
    let db = Db::open(c).unwrap();
    // Partitioned by the first byte: batches from different threads land on different
    // partitions and can reach the change log out of revision order.
    let ks = db
        .keyspace("c", KeyspaceOptions::hash().partition_prefix(1))
        .unwrap();
    let start = ks.revision();
    let mut w = ks.watch(b"", None, start).unwrap();
    let threads = 4;
    let per = 300;
    std::thread::scope(|s| {
        for t in 0..threads {
            let ks = ks.clone();
            s.spawn(move || {
                for i in 0..per {
                    let mut b = Batch::new();
                    b.put(format!("{t}-{i}-a"), vec![t as u8; 10])
                        .put(format!("{t}-{i}-b"), vec![t as u8; 10]);
                    ks.write(&b).unwrap();
                }
            });
        }
        let got = drain(&mut w, threads * per * 2);
        assert_eq!(got.len(), threads * per * 2);
        let mut revs: Vec<u64> = got.iter().map(|e| e.mod_revision).collect();
        assert!(revs.windows(2).all(|p| p[0] <= p[1]), "revision order");
        revs.dedup();
        let want: Vec<u64> = (start + 1..=start + (threads * per) as u64).collect();
        assert_eq!(revs, want, "every revision once, none skipped");
        // Both events of each batch share its revision.
        for pair in got.chunks(2) {
            assert_eq!(pair[0].mod_revision, pair[1].mod_revision);
        }
    });
}

#[test]
fn a_compacted_revision_is_its_own_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = tiny(dir.path(), 1 << 20);
    c.changelog_bytes = 16 << 10; // a short history
    let db = Db::open(c).unwrap();
    let ks = db.keyspace("h", KeyspaceOptions::hash()).unwrap();
    for i in 0..500u32 {
        ks.put(&key(i), &[7u8; 100]).unwrap();
    }
    let oldest = ks.oldest_watchable();
    assert!(oldest > 0, "the history was trimmed");
    match ks.watch(b"", None, oldest - 1) {
        Err(Error::Compacted {
            requested,
            oldest: o,
        }) => {
            assert_eq!((requested, o), (oldest - 1, oldest));
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    // From the oldest kept revision, everything after it arrives.
    let mut w = ks.watch(b"", None, oldest).unwrap();
    let got = drain(&mut w, (ks.revision() - oldest) as usize);
    assert_eq!(got.len() as u64, ks.revision() - oldest);
    // A watcher that falls behind the trimming gets the error on its next read.
    let mut slow = ks.watch(b"", None, ks.revision()).unwrap();
    for i in 0..500u32 {
        ks.put(&key(i), &[8u8; 100]).unwrap();
    }
    assert!(matches!(
        slow.next(Duration::from_millis(10), 1),
        Err(Error::Compacted { .. })
    ));
    // A bulk load compacts the history through its revision.
    let b = db.keyspace("b", KeyspaceOptions::ordered()).unwrap();
    b.put(b"x", b"1").unwrap();
    b.delete(b"x").unwrap();
    let before = b.revision();
    let info = b.bulk_load([(b"a", b"1"), (b"b", b"2")]).unwrap();
    assert!(matches!(
        b.watch(b"", None, before),
        Err(Error::Compacted { .. })
    ));
    let mut w = b.watch(b"", None, info.revision).unwrap();
    b.put(b"c", b"3").unwrap();
    let got = drain(&mut w, 1);
    assert_eq!(got[0].key, b"c");
}

/// A watcher blocked in `next` wakes as soon as a change lands, every time, whether the write
/// comes before, during or after it starts waiting: writes ring the bell only while a watcher
/// exists, and none of those rings may be lost (a lost one would leave `next` waiting out its
/// 20 s timeout).
#[test]
fn a_waiting_watcher_wakes_on_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(tiny(dir.path(), 512 << 10)).unwrap();
    let ks = db.keyspace("w", KeyspaceOptions::hash()).unwrap();
    ks.put(b"before", b"any watcher").unwrap();
    let mut w = ks.watch(b"", None, ks.revision()).unwrap();
    let writer = ks.clone();
    let rounds = 200u32;
    let t = std::thread::spawn(move || {
        for i in 0..rounds {
            // From no delay (the write races the watcher's wait) to 2 ms (it is asleep).
            std::thread::sleep(Duration::from_micros(u64::from(i % 5) * 500));
            writer.put(&key(i), b"v").unwrap();
        }
    });
    let mut seen = 0;
    while seen < rounds as usize {
        let start = std::time::Instant::now();
        let got = w.next(Duration::from_secs(20), 64).unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "a write did not wake the watcher ({seen} of {rounds} seen)"
        );
        seen += got.len();
    }
    t.join().unwrap();
    assert_eq!(seen, rounds as usize);
}

/// A watcher whose range sees one change behind 2,000 revisions of other keys gets it at once
/// (it reads on while pages come back full and empty, instead of waiting on the bell for
/// writes that already happened); with no time to wait, each call passes over up to
/// `SCAN_PAGES` pages and moves its revision, and calling again reaches the change.
#[test]
fn a_watcher_reads_through_other_keys_revisions_without_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(tiny(dir.path(), 32 << 20)).unwrap();
    let ks = db.keyspace("w", KeyspaceOptions::ordered()).unwrap();
    let start = ks.revision();
    for i in 0..2000u32 {
        ks.put(format!("other/{i:05}").as_bytes(), b"x").unwrap();
    }
    let rev = ks.put(b"mine/a", b"1").unwrap();

    let mut w = ks.watch(b"mine/", Some(b"mine0"), start).unwrap();
    let t0 = std::time::Instant::now();
    let got = w.next(Duration::from_secs(30), 50).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].key.as_slice(), got[0].mod_revision),
        (&b"mine/a"[..], rev)
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());

    let mut w = ks.watch(b"mine/", Some(b"mine0"), start).unwrap();
    let mut calls = 0;
    let got = loop {
        let before = w.revision();
        let got = w.next(Duration::ZERO, 50).unwrap();
        calls += 1;
        if !got.is_empty() {
            break got;
        }
        assert_eq!(
            w.revision(),
            before + (50 * tera_engine::Watcher::SCAN_PAGES) as u64,
            "each empty call passes over SCAN_PAGES full pages"
        );
        assert!(calls < 10);
    };
    assert_eq!(got[0].mod_revision, rev);
    assert_eq!(calls, 3, "2,001 revisions at 800 a call");
}

/// Keyspaces share the history's limit, and the largest history gives way first: a keyspace
/// written after another one filled the history keeps its own changes, and the idle one's
/// oldest are dropped instead (the writer's own were cut to a few, whichever log was the
/// larger, and its watchers found them `Compacted`).
#[test]
fn keyspaces_share_the_history_and_the_largest_gives_way() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = tiny(dir.path(), 16 << 20);
    c.changelog_bytes = 1 << 20;
    let db = Db::open(c).unwrap();
    let a = db.keyspace("a", KeyspaceOptions::hash()).unwrap();
    let b = db.keyspace("b", KeyspaceOptions::hash()).unwrap();
    for i in 0..700u32 {
        a.put(&key(i), &value_for(i, 1, 1000)).unwrap();
    }
    let a_kept = a.revision() - a.oldest_watchable();
    assert!(a_kept < 700, "a alone passes the limit: {a_kept}");
    let b_from = b.revision();
    let mut w = b.watch(b"", None, b_from).unwrap();
    for i in 0..200u32 {
        b.put(&key(i), &value_for(i, 1, 1000)).unwrap();
    }
    assert!(
        b.oldest_watchable() <= b_from,
        "b's history was cut to {} changes",
        b.revision() - b.oldest_watchable()
    );
    assert_eq!(
        drain(&mut w, 200).len(),
        200,
        "a watcher of b reads every change"
    );
    let a_now = a.revision() - a.oldest_watchable();
    assert!(a_now < a_kept, "a's history gave way: {a_kept} -> {a_now}");
}

/// A watch after the largest revision there is reads nothing, and does not overflow.
#[test]
fn a_watch_after_the_last_possible_revision_reads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(tiny(dir.path(), 512 << 10)).unwrap();
    let ks = db.keyspace("w", KeyspaceOptions::hash()).unwrap();
    ks.put(b"k", b"v").unwrap();
    let mut w = ks.watch(b"", None, u64::MAX).unwrap();
    assert!(w.next(Duration::from_millis(10), 10).unwrap().is_empty());
}

/// A watcher already waiting when a bulk load compacts its history learns it at once
/// (`Compacted`), not when its timeout passes or the next write rings: without a log nothing
/// else rings during a load.
#[test]
fn a_waiting_watcher_learns_of_a_bulk_load_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(tiny(dir.path(), 512 << 10)).unwrap();
    let ks = db.keyspace("w", KeyspaceOptions::hash()).unwrap();
    let mut w = ks.watch(b"", None, ks.revision()).unwrap();
    let waiting = std::thread::spawn(move || {
        let t = std::time::Instant::now();
        (w.next(Duration::from_secs(60), 10), t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(200));
    ks.bulk_load([(b"a", b"1"), (b"b", b"2")]).unwrap();
    let (r, took) = waiting.join().unwrap();
    assert!(matches!(r, Err(Error::Compacted { .. })), "{r:?}");
    assert!(took < Duration::from_secs(30), "it waited {took:?}");
}
