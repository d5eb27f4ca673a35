//! Reads never answer with a write a crash could undo: with durability `commit`, a read in
//! `Keyspace::atomic` (what the metadata model, and so terad, reads through) waits until every
//! batch of its partition it could have seen is durable, and after the log fails it refuses
//! what the failure left undurable instead of handing it out. The log's `fdatasync` is held
//! or failed through the storage seam, so "the batch is applied but not yet durable" is a
//! state the test controls, not a race it hopes to hit.

mod common;

use common::*;
use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use tera_engine::{Durability, Error, Keyspace, KeyspaceOptions, OsStorage, Range, Storage};

/// [`OsStorage`] whose write-ahead log syncs can be held (they wait until released) or
/// failed once with `EIO`. Log files are told apart by inode, recorded when the engine opens
/// or creates a `wal-*.log` file through the seam.
#[derive(Debug, Default)]
struct Gate {
    held: Mutex<bool>,
    released: Condvar,
    fail_next: AtomicBool,
    wal_files: Mutex<HashSet<(u64, u64)>>,
}

impl Gate {
    fn note(&self, path: &Path, f: &File) {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("wal-") && name.ends_with(".log") {
            let m = f.metadata().expect("metadata of a file just opened");
            self.wal_files.lock().unwrap().insert((m.dev(), m.ino()));
        }
    }

    fn is_wal(&self, f: &File) -> bool {
        let m = f.metadata().expect("metadata of an open file");
        self.wal_files.lock().unwrap().contains(&(m.dev(), m.ino()))
    }

    fn hold(&self) {
        *self.held.lock().unwrap() = true;
    }

    fn release(&self) {
        *self.held.lock().unwrap() = false;
        self.released.notify_all();
    }
}

impl Storage for Gate {
    fn create(&self, path: &Path, len: u64) -> std::io::Result<File> {
        let f = OsStorage.create(path, len)?;
        self.note(path, &f);
        Ok(f)
    }

    fn open(&self, path: &Path) -> std::io::Result<File> {
        let f = OsStorage.open(path)?;
        self.note(path, &f);
        Ok(f)
    }

    fn sync(&self, file: &File) -> std::io::Result<()> {
        if self.is_wal(file) {
            let mut held = self.held.lock().unwrap();
            while *held {
                held = self.released.wait(held).unwrap();
            }
            drop(held);
            if self.fail_next.swap(false, SeqCst) {
                return Err(std::io::Error::from_raw_os_error(libc::EIO));
            }
        }
        OsStorage.sync(file)
    }
}

/// A small database with `commit` durability and no background checkpoints.
fn commit_config(dir: &Path) -> tera_engine::Config {
    let mut c = tiny(dir, 256 << 10);
    c.durability = Durability::Commit;
    c.checkpoint_wal_bytes = 0;
    c
}

fn open_gated(dir: &Path) -> (tera_engine::Db, Arc<Gate>) {
    let gate = Arc::new(Gate::default());
    let mut c = commit_config(dir);
    c.storage = gate.clone();
    (open(c), gate)
}

/// Make `a` = 1 and, in another partition, a key = x (both durable); returns that key.
fn a_and_other(ks: &Keyspace) -> Vec<u8> {
    let other = key_elsewhere(ks, b"a");
    ks.put(b"a", b"1").unwrap();
    ks.put(&other, b"x").unwrap();
    other
}

/// A key whose partition differs from `key`'s.
fn key_elsewhere(ks: &Keyspace, key: &[u8]) -> Vec<u8> {
    (0u32..)
        .map(|i| format!("other-{i}").into_bytes())
        .find(|k| ks.partition_of(k) != ks.partition_of(key))
        .expect("two partitions")
}

/// Wait until a lock-free read of `key` sees `want` (a batch applied, its flush maybe held).
fn until_visible(ks: &Keyspace, key: &[u8], want: Option<&[u8]>) {
    while ks.get(key).unwrap().map(|e| e.value).as_deref() != want {
        std::thread::yield_now();
    }
}

/// The value of `key`, read in `atomic` as the metadata model reads.
fn read_atomic(ks: &Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
    Ok(ks.atomic(key, |tx| tx.get(key))?.0.map(|e| e.value))
}

/// Released however a scope ends: a failed assertion must fail the test, not leave a writer
/// waiting on its held flush forever (the scope joins it).
struct Release<'a>(&'a Gate);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// With `a` = 1 and `other` (in another partition) = x durable, put `a` = 2 with its flush
/// held, and check that `read` of `a` does not answer until the flush is released (and then
/// sees 2), while `read` of `other` answers at once.
fn check_the_read_waits<F>(ks: &Keyspace, gate: &Gate, read: F)
where
    F: Fn(&Keyspace, &[u8]) -> Result<Option<Vec<u8>>, Error> + Sync,
{
    let other = a_and_other(ks);
    gate.hold();
    let (read, other) = (&read, &other);
    std::thread::scope(|s| {
        let _release = Release(gate);
        let writer = s.spawn(|| ks.put(b"a", b"2"));
        // The batch is applied (a lock-free read sees it) while its flush is held.
        until_visible(ks, b"a", Some(b"2"));
        let (tx, rx) = mpsc::channel();
        s.spawn(move || tx.send(read(ks, b"a")));
        // Not answered while the batch it sees is not durable: a wrong implementation
        // answers in microseconds, so half a second leaves no room for doubt either way.
        assert!(
            rx.recv_timeout(Duration::from_millis(500)).is_err(),
            "the read answered with a batch whose flush is still held"
        );
        assert!(!writer.is_finished(), "the commit waits for its flush");
        // A read of another partition, whose batches are all durable, answers at once.
        let (tx2, rx2) = mpsc::channel();
        s.spawn(move || tx2.send(read(ks, other)));
        let got = rx2
            .recv_timeout(Duration::from_secs(60))
            .expect("a read of a partition with nothing waiting does not wait");
        assert_eq!(got.unwrap(), Some(b"x".to_vec()));

        gate.release();
        writer
            .join()
            .unwrap()
            .expect("the commit, once its flush is released");
        let got = rx
            .recv()
            .unwrap()
            .expect("the read, once the batch is durable");
        assert_eq!(got, Some(b"2".to_vec()));
    });
}

#[test]
fn a_read_in_atomic_waits_until_the_batch_it_saw_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let (db, gate) = open_gated(dir.path());
    let ks = db.keyspace("k", KeyspaceOptions::hash()).unwrap();
    check_the_read_waits(&ks, &gate, read_atomic);
}

#[test]
fn ranges_and_counts_wait_until_the_batches_they_saw_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let (db, gate) = open_gated(dir.path());
    // Partitioned by a one-byte prefix, so that a prefix range reads one partition.
    let ks = db
        .keyspace("o", KeyspaceOptions::ordered().partition_prefix(1))
        .unwrap();
    check_the_read_waits(&ks, &gate, |ks, key| {
        let r = ks.range(&Range::prefix(key))?;
        Ok(r.entries
            .into_iter()
            .find(|e| e.key == key)
            .map(|e| e.value))
    });
    // A count: of `a`, whose value is now durable, and then with a delete of it held.
    ks.put(b"a", b"3").unwrap();
    gate.hold();
    std::thread::scope(|s| {
        let _release = Release(&gate);
        let writer = s.spawn(|| ks.delete(b"a"));
        until_visible(&ks, b"a", None);
        let (tx, rx) = mpsc::channel();
        let ks = &ks;
        s.spawn(move || tx.send(ks.count(&Range::prefix(b"a"))));
        assert!(
            rx.recv_timeout(Duration::from_millis(500)).is_err(),
            "the count answered with a delete whose flush is still held"
        );
        gate.release();
        writer
            .join()
            .unwrap()
            .expect("the delete, once its flush is released");
        assert_eq!(rx.recv().unwrap().expect("the count"), 0);
    });
}

#[test]
fn after_a_failed_flush_a_read_of_what_it_lost_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (db, gate) = open_gated(dir.path());
    let ks = db.keyspace("k", KeyspaceOptions::hash()).unwrap();
    let other = a_and_other(&ks);

    gate.fail_next.store(true, SeqCst);
    let e = ks.put(b"a", b"2").expect_err("the flush fails");
    assert!(e.to_string().contains("Input/output error"), "{e}");
    assert!(db.poisoned().is_some());

    // The failed batch is still applied in memory; a read in atomic must not hand it out.
    match read_atomic(&ks, b"a") {
        Err(Error::NotDurable(why)) => {
            let text = Error::NotDurable(why).to_string();
            assert!(text.contains("could not be made durable"), "{text}");
            assert!(text.contains("reopen"), "{text}");
        }
        other => panic!("expected NotDurable, got {other:?}"),
    }
    // So must an error that `f` returns from the same state (the metadata model's "already
    // exists" is one).
    let r = ks.atomic(b"a", |tx| {
        tx.get(b"a")?;
        Err::<(), _>(Error::Config("refused after reading".into()))
    });
    assert!(matches!(r, Err(Error::NotDurable(_))), "{r:?}");
    // Reads of a partition whose batches were all durable go on.
    assert_eq!(read_atomic(&ks, &other).unwrap(), Some(b"x".to_vec()));
    drop(ks);
    drop(db);

    // Reopened, the database holds the acknowledged value or the failed batch whole, and
    // reads go on.
    let db = open(commit_config(dir.path()));
    let ks = db.keyspace("k", KeyspaceOptions::hash()).unwrap();
    let v = read_atomic(&ks, b"a").unwrap().expect("a exists");
    assert!(v == b"1" || v == b"2", "{v:?}");
    assert_eq!(read_atomic(&ks, &other).unwrap(), Some(b"x".to_vec()));
}

#[test]
fn a_deferred_read_answers_at_once_and_says_what_to_wait_for() {
    let dir = tempfile::tempdir().unwrap();
    let (db, gate) = open_gated(dir.path());
    let ks = db.keyspace("k", KeyspaceOptions::hash()).unwrap();
    let other = a_and_other(&ks);
    // Writes are refused (and dropped) in a deferred read.
    let (r, _) = ks.read_deferred(b"a", |tx| tx.put(b"a", b"9"));
    assert!(matches!(r, Err(Error::Keyspace { .. })), "{r:?}");
    assert_eq!(read_atomic(&ks, b"a").unwrap(), Some(b"1".to_vec()));

    gate.hold();
    let ks = &ks;
    std::thread::scope(|s| {
        let _release = Release(&gate);
        let writer = s.spawn(|| ks.put(b"a", b"2"));
        until_visible(ks, b"a", Some(b"2"));
        // Answers at once, with the batch, and says it is not durable yet.
        let (r, seen) = ks.read_deferred(b"a", |tx| tx.get(b"a"));
        assert_eq!(r.unwrap().map(|e| e.value), Some(b"2".to_vec()));
        assert!(!ks.is_durable(seen));
        // Another partition's read rests on nothing that waits.
        let (r, seen_other) = ks.read_deferred(&other, |tx| tx.get(&other));
        assert_eq!(r.unwrap().map(|e| e.value), Some(b"x".to_vec()));
        assert!(ks.is_durable(seen_other));
        ks.wait_durable(seen_other).unwrap();
        // Waiting for it takes the flush.
        let (tx, rx) = mpsc::channel();
        s.spawn(move || tx.send(ks.wait_durable(seen)));
        assert!(
            rx.recv_timeout(Duration::from_millis(500)).is_err(),
            "wait_durable returned while the flush is held"
        );
        gate.release();
        writer.join().unwrap().unwrap();
        rx.recv()
            .unwrap()
            .expect("durable once the flush is released");
        assert!(ks.is_durable(seen));
    });
}

/// The metadata model's deferred reads (what terad's runtime threads call): a folder being
/// created is seen at once, marked not durable, and its stat and listing wait for it.
#[test]
fn the_metadata_model_s_deferred_reads_say_what_to_wait_for() {
    use tera_engine::meta::MetaStore;
    let dir = tempfile::tempdir().unwrap();
    let (db, gate) = open_gated(dir.path());
    let meta = MetaStore::open(&db).unwrap();
    meta.create_namespace(7, 0).unwrap();
    meta.create_namespace(8, 0).unwrap();
    gate.hold();
    let meta = &meta;
    std::thread::scope(|s| {
        let _release = Release(&gate);
        let writer = s.spawn(|| meta.mkdir(7, "/new", false, 1));
        let (entry, seen) = loop {
            if let (Ok(e), seen) = meta.stat_deferred(7, "/new") {
                break (e, seen);
            }
            std::thread::yield_now();
        };
        assert_eq!(entry.name, "new");
        assert!(!meta.is_durable(seen), "the mkdir's flush is held");
        let mut names = Vec::new();
        let (next, seen_list) = meta.list_with_deferred(7, "/", 10, None, |e| {
            names.push(e.name.to_string());
            true
        });
        assert_eq!(next.unwrap(), None);
        assert_eq!(names, ["new"]);
        assert!(!meta.is_durable(seen_list));
        // An error answer rests on what it read too.
        let (r, seen_err) = meta.stat_deferred(7, "/new/missing");
        assert!(r.is_err());
        assert!(!meta.is_durable(seen_err));
        // Namespace 8 is another partition (a namespace is one), with nothing waiting.
        let (r, seen8) = meta.stat_deferred(8, "/");
        r.unwrap();
        assert!(meta.is_durable(seen8));
        // The blocking forms wait.
        let (tx, rx) = mpsc::channel();
        s.spawn(move || tx.send(meta.stat(7, "/new").map(|e| e.name)));
        assert!(
            rx.recv_timeout(Duration::from_millis(500)).is_err(),
            "stat answered while the mkdir's flush is held"
        );
        gate.release();
        writer.join().unwrap().unwrap();
        assert_eq!(rx.recv().unwrap().unwrap(), "new");
        assert!(meta.is_durable(seen) && meta.is_durable(seen_list));
        meta.wait_durable(seen_err).unwrap();
    });
}

/// A waker that records that it was woken.
struct Woken(AtomicBool);

impl std::task::Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.0.store(true, SeqCst);
    }
}

/// The async wait of a deferred read: pending while the flush is held, woken by the flush
/// (no thread waits), and woken with `NotDurable` when the flush fails instead.
#[test]
fn the_async_wait_is_woken_by_the_flush_or_its_failure() {
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    for fail in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (db, gate) = open_gated(dir.path());
        let ks = db.keyspace("k", KeyspaceOptions::hash()).unwrap();
        ks.put(b"a", b"1").unwrap();
        gate.hold();
        gate.fail_next.store(fail, SeqCst);
        let ks = &ks;
        std::thread::scope(|s| {
            let _release = Release(&gate);
            let writer = s.spawn(|| ks.put(b"a", b"2"));
            until_visible(ks, b"a", Some(b"2"));
            let (r, seen) = ks.read_deferred(b"a", |tx| tx.get(b"a"));
            assert_eq!(r.unwrap().map(|e| e.value), Some(b"2".to_vec()));
            let woken = Arc::new(Woken(AtomicBool::new(false)));
            let waker = Waker::from(woken.clone());
            let mut cx = Context::from_waker(&waker);
            let mut wait = std::pin::pin!(ks.durable(seen));
            assert!(wait.as_mut().poll(&mut cx).is_pending());
            std::thread::sleep(Duration::from_millis(100));
            assert!(!woken.0.load(SeqCst), "woken while the flush is held");
            gate.release();
            let committed = writer.join().unwrap();
            assert_eq!(committed.is_err(), fail);
            assert!(
                woken.0.load(SeqCst),
                "the flush (or its failure) wakes the task"
            );
            match (fail, wait.as_mut().poll(&mut cx)) {
                (false, Poll::Ready(Ok(()))) => {}
                (true, Poll::Ready(Err(Error::NotDurable(_)))) => {}
                (_, other) => panic!("fail {fail}: {other:?}"),
            }
        });
    }
}

/// The metadata model's own answers rest on what they read: after a flush failed, a second
/// mkdir of the folder the failed one left applied answers `NotDurable`, not "already exists"
/// (the folder is gone after a restart), and so does its stat.
#[test]
fn the_metadata_model_does_not_answer_from_a_write_that_failed_its_flush() {
    use tera_engine::meta::{MetaError, MetaStore};
    let dir = tempfile::tempdir().unwrap();
    let (db, gate) = open_gated(dir.path());
    let meta = MetaStore::open(&db).unwrap();
    meta.create_namespace(1, 0).unwrap();
    gate.fail_next.store(true, SeqCst);
    let e = meta.mkdir(1, "/d", false, 1).unwrap_err();
    assert!(e.to_string().contains("Input/output error"), "{e}");
    match meta.mkdir(1, "/d", false, 2) {
        Err(MetaError::Engine(Error::NotDurable(_))) => {}
        other => panic!("expected NotDurable, got {other:?}"),
    }
    match meta.stat(1, "/d") {
        Err(MetaError::Engine(Error::NotDurable(_))) => {}
        other => panic!("expected NotDurable, got {other:?}"),
    }
}
