//! Fault injection through the one I/O seam, [`tera_engine::Storage`]: far-tier writes that
//! fail (ENOSPC), writes that stop half way, and segment files that cannot be created. Each
//! failed operation returns a clear error and changes nothing; every acknowledged write stays
//! readable; once the fault clears, writes go on.

mod common;

use common::*;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tera_engine::{Error, NeverPromote, OsStorage, Storage};

/// Fails far writes number `from..to` (counting from 0), either outright or after writing the
/// first half of the buffer; fails segment creation number `create_fail` too.
#[derive(Debug)]
struct Flaky {
    writes: AtomicU64,
    creates: AtomicU64,
    from: u64,
    to: u64,
    half: bool,
    create_fail: u64,
}

impl Flaky {
    fn new(from: u64, to: u64, half: bool, create_fail: u64) -> Arc<Flaky> {
        Arc::new(Flaky {
            writes: AtomicU64::new(0),
            creates: AtomicU64::new(0),
            from,
            to,
            half,
            create_fail,
        })
    }
}

impl Storage for Flaky {
    fn create(&self, path: &Path, len: u64) -> std::io::Result<File> {
        if self.creates.fetch_add(1, Relaxed) == self.create_fail {
            return Err(std::io::Error::from_raw_os_error(libc::EDQUOT));
        }
        OsStorage.create(path, len)
    }

    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let n = self.writes.fetch_add(1, Relaxed);
        if (self.from..self.to).contains(&n) {
            if self.half {
                file.write_all_at(&buf[..buf.len() / 2], offset)?;
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    "device stopped half way",
                ));
            }
            return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
        }
        OsStorage.write_at(file, buf, offset)
    }
}

/// Write 3000 versions over 300 keys through `storage`; check every acknowledged value and
/// that failures were clear and harmless. Returns how many puts failed.
fn run(storage: Arc<Flaky>, expect: &str) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let mut c = with_policy(tiny(dir.path(), 64 << 10), Arc::new(NeverPromote));
    c.storage = storage;
    let db = open(c);
    let mut model: HashMap<u32, Vec<u8>> = HashMap::new();
    let mut failed = 0;
    for i in 0..3000u32 {
        let k = i % 300;
        let v = value_for(k, i, 200 + (i as usize % 50));
        match db.put(&key(k), &v) {
            Ok(()) => {
                model.insert(k, v);
            }
            Err(e @ Error::Io { .. }) => {
                assert!(e.to_string().contains(expect), "{e}");
                assert!(e.to_string().contains(".seg"), "names the file: {e}");
                failed += 1;
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
        if i % 97 == 0 {
            for (k, v) in &model {
                assert_eq!(
                    db.get(&key(*k)).unwrap().as_ref(),
                    Some(v),
                    "key {k} at {i}"
                );
            }
        }
    }
    for (k, v) in &model {
        assert_eq!(db.get(&key(*k)).unwrap().as_ref(), Some(v), "key {k}");
    }
    let s = db.stats();
    assert_eq!(s.keys, model.len() as u64);
    assert_eq!(s.dram.records + s.far.records, model.len() as u64, "{s:?}");
    db.maintain().unwrap();
    for (k, v) in &model {
        assert_eq!(
            db.get(&key(*k)).unwrap().as_ref(),
            Some(v),
            "after compaction, key {k}"
        );
    }
    failed
}

#[test]
fn enospc_on_far_writes_loses_nothing_and_clears() {
    let failed = run(
        Flaky::new(20, 30, false, u64::MAX),
        "No space left on device",
    );
    assert!(
        failed >= 10,
        "each failing write should fail a put: {failed}"
    );
}

#[test]
fn a_write_that_stops_half_way_loses_nothing() {
    let failed = run(Flaky::new(5, 12, true, u64::MAX), "device stopped half way");
    assert!(failed >= 7, "{failed}");
}

#[test]
fn a_segment_file_that_cannot_be_created_fails_the_write_only() {
    let failed = run(
        Flaky::new(u64::MAX, u64::MAX, false, 2),
        "Disk quota exceeded",
    );
    assert!(failed >= 1, "{failed}");
}

#[test]
fn the_nth_write_fails_for_every_n_in_a_range() {
    for n in 0..12 {
        run(Flaky::new(n, n + 1, n % 2 == 1, u64::MAX), "");
    }
}

/// A bulk load whose far writes start failing part way returns the error, and the records it
/// did load are counted: the key count matches what reads find, and a second load into the
/// keyspace (no longer empty) is refused.
#[test]
fn a_bulk_load_that_fails_part_way_counts_what_it_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = with_policy(tiny(dir.path(), 64 << 10), Arc::new(NeverPromote));
    c.storage = Flaky::new(3, u64::MAX, false, u64::MAX);
    let db = open(c);
    let ks = db
        .keyspace("bulk", tera_engine::KeyspaceOptions::hash())
        .unwrap();
    let n = 3000u32;
    let e = ks
        .bulk_load((0..n).map(|i| (key(i), value_for(i, 1, 200))))
        .expect_err("the budget forces far writes, which fail");
    assert!(e.to_string().contains("No space left on device"), "{e}");
    let found = (0..n)
        .filter(|&i| ks.get(&key(i)).unwrap().is_some())
        .count() as u64;
    assert!(found > 0, "some groups were loaded before the failure");
    assert!(found < u64::from(n), "the failure stopped the load");
    assert_eq!(ks.len(), found, "the key count includes what was loaded");
    let again = ks.bulk_load([(b"x".to_vec(), b"y".to_vec())]);
    assert!(
        matches!(again, Err(Error::Keyspace { .. })),
        "a second load into the part-loaded keyspace: {again:?}"
    );
}
