//! The embedded stores people would pick instead of Teraservices, configured as their own
//! documentation recommends for point lookups (feature `peers`; see docs/benchmarks.md,
//! "The engines and how each is set up", for each setting and where it comes from).
//!
//! None of them syncs: LMDB runs with `MDB_NOSYNC`, RocksDB without its WAL, redb with
//! `Durability::None`, fjall with manual journal persistence. That matches Teraservices'
//! durability `none` in the same runs. Values are incompressible, so no compression is built
//! or configured anywhere. Read-modify-write (YCSB-F) is atomic in each: a write transaction
//! in LMDB and redb, a striped lock around get and put in RocksDB and fjall.

use crate::store::{for_each_sorted, found_into, Store, StoreResult};
use parking_lot::Mutex;
use std::hash::Hasher;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Records per write transaction or batch while loading.
const LOAD_BATCH: usize = 50_000;

/// 1024 locks picked by key hash: makes get + put atomic for stores without transactions.
#[derive(Debug)]
struct Stripes(Box<[Mutex<()>]>);

impl Stripes {
    fn new() -> Stripes {
        Stripes((0..1024).map(|_| Mutex::new(())).collect())
    }
    fn lock(&self, key: &[u8]) -> parking_lot::MutexGuard<'_, ()> {
        let mut h = crate::store::FxHasher::default();
        h.write(key);
        self.0[(h.finish() >> 54) as usize].lock()
    }
}

/// LMDB through heed: one environment, the unnamed database.
///
/// Settings: `MDB_NOSYNC` (no durability, as in every engine here), `MDB_NORDAHEAD` (LMDB's
/// advice for random reads of a database larger than RAM), a map of twice the data plus
/// 1 GiB. A read is one read-only transaction (LMDB's reader slots make that cheap).
#[derive(Debug)]
pub struct Lmdb {
    env: heed::Env,
    db: heed::Database<heed::types::Bytes, heed::types::Bytes>,
}

impl Lmdb {
    pub fn open(dir: &Path, data_bytes: u64) -> StoreResult<Lmdb> {
        std::fs::create_dir_all(dir).map_err(err)?;
        let map = (2 * data_bytes + (1 << 30)).next_multiple_of(1 << 21) as usize;
        let mut o = heed::EnvOpenOptions::new();
        o.map_size(map).max_readers(256).max_dbs(1);
        // SAFETY: NO_SYNC and NO_READ_AHEAD only give up durability and readahead; the
        // environment is opened once, by this process only.
        unsafe {
            o.flags(heed::EnvFlags::NO_SYNC | heed::EnvFlags::NO_READ_AHEAD);
        }
        // SAFETY: the directory is fresh and no other environment maps it.
        let env = unsafe { o.open(dir) }.map_err(err)?;
        let mut w = env.write_txn().map_err(err)?;
        let db = env.create_database(&mut w, None).map_err(err)?;
        w.commit().map_err(err)?;
        Ok(Lmdb { env, db })
    }

    /// Sorted load with `MDB_APPEND`, 50,000 records per transaction.
    pub fn load(&self, records: u64, value_bytes: usize) -> StoreResult<()> {
        let mut w = Some(self.env.write_txn().map_err(err)?);
        let mut n = 0usize;
        for_each_sorted(records, value_bytes, |k, v| {
            let txn = w.as_mut().expect("open transaction");
            self.db
                .put_with_flags(txn, heed::PutFlags::APPEND, k, v)
                .map_err(err)?;
            n += 1;
            if n % LOAD_BATCH == 0 {
                w.take().expect("open transaction").commit().map_err(err)?;
                w = Some(self.env.write_txn().map_err(err)?);
            }
            Ok(())
        })?;
        w.take().expect("open transaction").commit().map_err(err)
    }
}

impl Store for Lmdb {
    fn engine(&self) -> &'static str {
        "lmdb"
    }
    fn get_into(&self, key: &[u8], out: &mut Vec<u8>) -> StoreResult<bool> {
        let r = self.env.read_txn().map_err(err)?;
        Ok(found_into(self.db.get(&r, key).map_err(err)?, out))
    }
    fn put(&self, key: &[u8], value: &[u8]) -> StoreResult<()> {
        let mut w = self.env.write_txn().map_err(err)?;
        self.db.put(&mut w, key, value).map_err(err)?;
        w.commit().map_err(err)
    }
    fn read_modify_write(&self, key: &[u8], f: &mut dyn FnMut(&mut Vec<u8>)) -> StoreResult<()> {
        let mut w = self.env.write_txn().map_err(err)?;
        let mut v = self
            .db
            .get(&w, key)
            .map_err(err)?
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        f(&mut v);
        self.db.put(&mut w, key, &v).map_err(err)?;
        w.commit().map_err(err)
    }
    fn scan(&self, start: &[u8], limit: usize) -> StoreResult<usize> {
        let r = self.env.read_txn().map_err(err)?;
        // LMDB refuses an empty key, even as a bound: the empty key is the start anyway.
        let from = if start.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Included(start)
        };
        let range = (from, Bound::Unbounded);
        let mut n = 0;
        for kv in self.db.range(&r, &range).map_err(err)?.take(limit) {
            std::hint::black_box(kv.map_err(err)?);
            n += 1;
        }
        Ok(n)
    }
}

/// RocksDB through rust-rocksdb.
///
/// Settings: `OptimizeForPointLookup(cache)` (RocksDB's own preset for point reads: a block
/// cache of that size, a hash index inside data blocks and a bloom filter),
/// `IncreaseParallelism(cores)`, no compression, the WAL disabled on every write. After the
/// load, one full manual compaction, so reads meet a settled tree as in the other engines.
pub struct Rocks {
    db: rocksdb::DB,
    write: rocksdb::WriteOptions,
    stripes: Stripes,
}

impl Rocks {
    pub fn open(dir: &Path, cache_bytes: u64) -> StoreResult<Rocks> {
        Rocks::open_with(dir, cache_bytes, false)
    }

    /// [`Rocks::open`], reading files with `O_DIRECT` (`use_direct_reads`): blocks are cached
    /// once, in the block cache, not also in the page cache.
    pub fn open_direct(dir: &Path, cache_bytes: u64) -> StoreResult<Rocks> {
        Rocks::open_with(dir, cache_bytes, true)
    }

    fn open_with(dir: &Path, cache_bytes: u64, direct: bool) -> StoreResult<Rocks> {
        let mut o = rocksdb::Options::default();
        o.set_use_direct_reads(direct);
        o.create_if_missing(true);
        o.optimize_for_point_lookup((cache_bytes >> 20).max(8));
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        o.increase_parallelism(cores as i32);
        o.set_compression_type(rocksdb::DBCompressionType::None);
        let db = rocksdb::DB::open(&o, dir).map_err(err)?;
        let mut write = rocksdb::WriteOptions::default();
        write.disable_wal(true);
        Ok(Rocks {
            db,
            write,
            stripes: Stripes::new(),
        })
    }

    /// Sorted load in write batches of 50,000, then a full compaction.
    pub fn load(&self, records: u64, value_bytes: usize) -> StoreResult<()> {
        let mut b = rocksdb::WriteBatch::default();
        for_each_sorted(records, value_bytes, |k, v| {
            b.put(k, v);
            if b.len() >= LOAD_BATCH {
                self.db
                    .write_opt(std::mem::take(&mut b), &self.write)
                    .map_err(err)?;
            }
            Ok(())
        })?;
        self.db.write_opt(b, &self.write).map_err(err)?;
        self.db.flush().map_err(err)?;
        self.db.compact_range(None::<&[u8]>, None::<&[u8]>);
        Ok(())
    }
}

impl std::fmt::Debug for Rocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rocks")
    }
}

impl Store for Rocks {
    fn engine(&self) -> &'static str {
        "rocksdb"
    }
    fn get_into(&self, key: &[u8], out: &mut Vec<u8>) -> StoreResult<bool> {
        let v = self.db.get_pinned(key).map_err(err)?;
        Ok(found_into(v.as_deref(), out))
    }
    fn put(&self, key: &[u8], value: &[u8]) -> StoreResult<()> {
        self.db.put_opt(key, value, &self.write).map_err(err)
    }
    fn read_modify_write(&self, key: &[u8], f: &mut dyn FnMut(&mut Vec<u8>)) -> StoreResult<()> {
        let _g = self.stripes.lock(key);
        let mut v = self.db.get(key).map_err(err)?.unwrap_or_default();
        f(&mut v);
        self.db.put_opt(key, &v, &self.write).map_err(err)
    }
    fn scan(&self, start: &[u8], limit: usize) -> StoreResult<usize> {
        let it = self.db.iterator(rocksdb::IteratorMode::From(
            start,
            rocksdb::Direction::Forward,
        ));
        let mut n = 0;
        for kv in it.take(limit) {
            std::hint::black_box(kv.map_err(err)?);
            n += 1;
        }
        Ok(n)
    }
}

const REDB_TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("usertable");

/// redb: one table in one file.
///
/// Settings: the cache size (`Builder::set_cache_size`), `Durability::None` on writes. redb
/// frees the pages of non-durable commits only after a durable one, so every 1024th write
/// commits with `Durability::Immediate`; without that the file grows by a few pages per
/// update.
#[derive(Debug)]
pub struct Redb {
    db: redb::Database,
    writes: AtomicU64,
}

impl Redb {
    pub fn open(dir: &Path, cache_bytes: u64) -> StoreResult<Redb> {
        std::fs::create_dir_all(dir).map_err(err)?;
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes as usize)
            .create(dir.join("data.redb"))
            .map_err(err)?;
        let w = db.begin_write().map_err(err)?;
        w.open_table(REDB_TABLE).map_err(err)?;
        w.commit().map_err(err)?;
        Ok(Redb {
            db,
            writes: AtomicU64::new(0),
        })
    }

    fn write(
        &self,
        f: impl FnOnce(&mut redb::Table<&[u8], &[u8]>) -> StoreResult<()>,
    ) -> StoreResult<()> {
        let mut w = self.db.begin_write().map_err(err)?;
        if self.writes.fetch_add(1, Relaxed) % 1024 != 0 {
            w.set_durability(redb::Durability::None).map_err(err)?;
        }
        {
            let mut t = w.open_table(REDB_TABLE).map_err(err)?;
            f(&mut t)?;
        }
        w.commit().map_err(err)
    }

    /// Sorted load, 50,000 records per transaction, the last one durable.
    pub fn load(&self, records: u64, value_bytes: usize) -> StoreResult<()> {
        let mut batch: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(LOAD_BATCH);
        let flush = |batch: &mut Vec<(Vec<u8>, Vec<u8>)>| -> StoreResult<()> {
            let mut w = self.db.begin_write().map_err(err)?;
            w.set_durability(redb::Durability::None).map_err(err)?;
            {
                let mut t = w.open_table(REDB_TABLE).map_err(err)?;
                for (k, v) in batch.drain(..) {
                    t.insert(k.as_slice(), v.as_slice()).map_err(err)?;
                }
            }
            w.commit().map_err(err)
        };
        for_each_sorted(records, value_bytes, |k, v| {
            batch.push((k.to_vec(), v.to_vec()));
            if batch.len() >= LOAD_BATCH {
                flush(&mut batch)?;
            }
            Ok(())
        })?;
        flush(&mut batch)?;
        // One durable commit, so the pages of the load's commits are freed.
        let w = self.db.begin_write().map_err(err)?;
        w.commit().map_err(err)
    }
}

impl Store for Redb {
    fn engine(&self) -> &'static str {
        "redb"
    }
    fn get_into(&self, key: &[u8], out: &mut Vec<u8>) -> StoreResult<bool> {
        use redb::ReadableDatabase;
        let r = self.db.begin_read().map_err(err)?;
        let t = r.open_table(REDB_TABLE).map_err(err)?;
        let v = t.get(key).map_err(err)?;
        Ok(found_into(v.as_ref().map(|v| v.value()), out))
    }
    fn put(&self, key: &[u8], value: &[u8]) -> StoreResult<()> {
        self.write(|t| t.insert(key, value).map(|_| ()).map_err(err))
    }
    fn read_modify_write(&self, key: &[u8], f: &mut dyn FnMut(&mut Vec<u8>)) -> StoreResult<()> {
        use redb::ReadableTable;
        self.write(|t| {
            let mut v = t
                .get(key)
                .map_err(err)?
                .map(|g| g.value().to_vec())
                .unwrap_or_default();
            f(&mut v);
            t.insert(key, v.as_slice()).map(|_| ()).map_err(err)
        })
    }
    fn scan(&self, start: &[u8], limit: usize) -> StoreResult<usize> {
        use redb::ReadableDatabase;
        let r = self.db.begin_read().map_err(err)?;
        let t = r.open_table(REDB_TABLE).map_err(err)?;
        let mut n = 0;
        for kv in t.range::<&[u8]>(start..).map_err(err)?.take(limit) {
            let (k, v) = kv.map_err(err)?;
            std::hint::black_box((k.value().len(), v.value().len()));
            n += 1;
        }
        Ok(n)
    }
}

/// fjall: one keyspace.
///
/// Settings: the block cache (`cache_size`), manual journal persistence (no flush per
/// write), `expect_point_read_hits` (fjall's option for point reads that find their key:
/// no filter on the last level), no compression (the crate is built without lz4). Loaded
/// through fjall's ingestion of sorted input.
pub struct Fjall {
    _db: fjall::Database,
    ks: fjall::Keyspace,
    stripes: Stripes,
}

impl std::fmt::Debug for Fjall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fjall")
    }
}

impl Fjall {
    pub fn open(dir: &Path, cache_bytes: u64) -> StoreResult<Fjall> {
        let db = fjall::Database::builder(dir)
            .cache_size(cache_bytes)
            .manual_journal_persist(true)
            .open()
            .map_err(err)?;
        let ks = db
            .keyspace("usertable", || {
                fjall::KeyspaceCreateOptions::default()
                    .manual_journal_persist(true)
                    .expect_point_read_hits(true)
            })
            .map_err(err)?;
        Ok(Fjall {
            _db: db,
            ks,
            stripes: Stripes::new(),
        })
    }

    pub fn load(&self, records: u64, value_bytes: usize) -> StoreResult<()> {
        let mut ing = self.ks.start_ingestion().map_err(err)?;
        for_each_sorted(records, value_bytes, |k, v| {
            ing.write(k.to_vec(), v.to_vec()).map_err(err)
        })?;
        ing.finish().map_err(err)
    }
}

impl Store for Fjall {
    fn engine(&self) -> &'static str {
        "fjall"
    }
    fn get_into(&self, key: &[u8], out: &mut Vec<u8>) -> StoreResult<bool> {
        let v = self.ks.get(key).map_err(err)?;
        Ok(found_into(v.as_deref(), out))
    }
    fn put(&self, key: &[u8], value: &[u8]) -> StoreResult<()> {
        self.ks.insert(key, value).map_err(err)
    }
    fn read_modify_write(&self, key: &[u8], f: &mut dyn FnMut(&mut Vec<u8>)) -> StoreResult<()> {
        let _g = self.stripes.lock(key);
        let mut v = self
            .ks
            .get(key)
            .map_err(err)?
            .map(|v| v.to_vec())
            .unwrap_or_default();
        f(&mut v);
        self.ks.insert(key, v).map_err(err)
    }
    fn scan(&self, start: &[u8], limit: usize) -> StoreResult<usize> {
        let mut n = 0;
        for g in self.ks.range(start..).take(limit) {
            std::hint::black_box(g.into_inner().map_err(err)?);
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{key, value_into};

    fn check(s: &dyn Store, loaded: u64) {
        let mut out = Vec::new();
        let mut want = Vec::new();
        for i in [0, loaded / 2, loaded - 1] {
            assert!(s.get_into(&key(i), &mut out).unwrap(), "{}", s.engine());
            value_into(i, 0, &mut want, 32);
            assert_eq!(out, want, "{}", s.engine());
        }
        assert!(!s.get_into(&key(loaded + 5), &mut out).unwrap());
        s.put(&key(1), b"new").unwrap();
        s.get_into(&key(1), &mut out).unwrap();
        assert_eq!(out, b"new");
        s.read_modify_write(&key(1), &mut |v| v[0] = b'N').unwrap();
        s.get_into(&key(1), &mut out).unwrap();
        assert_eq!(out, b"New");
        assert_eq!(s.scan(b"", 10).unwrap(), 10, "{}", s.engine());
        assert_eq!(s.scan(&[0xff], 10).unwrap(), 0, "{}", s.engine());
    }

    #[test]
    fn every_peer_loads_reads_writes_and_scans() {
        let n = 3000;
        let dir = tempfile::tempdir().unwrap();
        let l = Lmdb::open(&dir.path().join("lmdb"), 1 << 20).unwrap();
        l.load(n, 32).unwrap();
        check(&l, n);
        let r = Rocks::open(&dir.path().join("rocks"), 8 << 20).unwrap();
        r.load(n, 32).unwrap();
        check(&r, n);
        let r = Redb::open(&dir.path().join("redb"), 8 << 20).unwrap();
        r.load(n, 32).unwrap();
        check(&r, n);
        let f = Fjall::open(&dir.path().join("fjall"), 8 << 20).unwrap();
        f.load(n, 32).unwrap();
        check(&f, n);
    }
}
