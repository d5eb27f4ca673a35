//! The stores `tierbench` drives, behind one small trait, so that every engine gets the same
//! keys, values, load order, threads and seeded operation stream.
//!
//! [`Tera`] is Teraservices itself (one [`Db`] and one keyspace); [`Dram`] is the all-DRAM
//! baseline: a sharded hash map in plain memory with no tiering, no log and no durability, the
//! speed of "just a hash table". The peers people would pick instead (LMDB, RocksDB, redb,
//! fjall) live in [`crate::peers`], behind the `peers` cargo feature.
//!
//! Loading is always in ascending key order, through each engine's fastest documented path
//! for sorted input (Teraservices' bulk load, LMDB's append, RocksDB write batches without
//! the WAL, fjall's ingestion, redb in large transactions), so that the load is comparable.

use crate::keys::{key_into, value_into, KEY_LEN};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use tera_engine::{Db, Keyspace, Range, Stats};

/// A store error, as text: the benchmark only reports it.
pub type StoreResult<T> = Result<T, String>;

/// What the benchmark needs from an engine. Every method may be called from several threads.
pub trait Store: Sync {
    /// The engine's name in the JSON lines (`tera`, `dram`, `lmdb`, ...).
    fn engine(&self) -> &'static str;
    /// Copy the value of `key` into `out`; false if there is none.
    fn get_into(&self, key: &[u8], out: &mut Vec<u8>) -> StoreResult<bool>;
    /// Insert or replace.
    fn put(&self, key: &[u8], value: &[u8]) -> StoreResult<()>;
    /// Read, change and write back one record atomically (YCSB-F).
    fn read_modify_write(&self, key: &[u8], f: &mut dyn FnMut(&mut Vec<u8>)) -> StoreResult<()>;
    /// Read up to `limit` records from `start` in key order; returns how many were read.
    fn scan(&self, start: &[u8], limit: usize) -> StoreResult<usize>;
    /// Teraservices' tier counters; `None` for every other engine.
    fn tier_stats(&self) -> Option<Stats> {
        None
    }
}

/// Records `0..records` in ascending key order: `(key, record number)`. Built once per load
/// (about 32 bytes per record) and freed before the measured phases.
/// What every `get_into` ends with: copy a found value into `out`, and say whether there
/// was one.
pub fn found_into(v: Option<&[u8]>, out: &mut Vec<u8>) -> bool {
    match v {
        Some(v) => {
            out.clear();
            out.extend_from_slice(v);
            true
        }
        None => false,
    }
}

pub fn sorted_keys(records: u64) -> Vec<([u8; KEY_LEN], u64)> {
    let mut order: Vec<([u8; KEY_LEN], u64)> = (0..records)
        .map(|i| {
            let mut k = [0u8; KEY_LEN];
            key_into(i, &mut k);
            (k, i)
        })
        .collect();
    order.sort_unstable();
    order
}

/// Walk `records` records in ascending key order, calling `f(key, value)` for each.
pub fn for_each_sorted(
    records: u64,
    value_bytes: usize,
    mut f: impl FnMut(&[u8], &[u8]) -> StoreResult<()>,
) -> StoreResult<()> {
    let mut v = Vec::with_capacity(value_bytes);
    for (k, i) in sorted_keys(records) {
        value_into(i, 0, &mut v, value_bytes);
        f(&k, &v)?;
    }
    Ok(())
}

/// Teraservices: one database, one keyspace (hash-indexed unless range scans are asked for).
#[derive(Debug)]
pub struct Tera {
    pub db: Db,
    pub ks: Keyspace,
}

impl Tera {
    /// Bulk load records `0..records` (sorted, one revision).
    pub fn load(&self, records: u64, value_bytes: usize) -> StoreResult<()> {
        let order = sorted_keys(records);
        let mut v = Vec::with_capacity(value_bytes);
        self.ks
            .bulk_load(order.into_iter().map(|(k, i)| {
                value_into(i, 0, &mut v, value_bytes);
                (k, v.clone())
            }))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

impl Store for Tera {
    fn engine(&self) -> &'static str {
        "tera"
    }
    fn get_into(&self, key: &[u8], out: &mut Vec<u8>) -> StoreResult<bool> {
        self.ks.get_into(key, out).map_err(|e| e.to_string())
    }
    fn put(&self, key: &[u8], value: &[u8]) -> StoreResult<()> {
        self.ks
            .put(key, value)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    fn read_modify_write(&self, key: &[u8], f: &mut dyn FnMut(&mut Vec<u8>)) -> StoreResult<()> {
        self.ks
            .atomic(key, |tx| {
                let mut v = tx.get(key)?.map(|e| e.value).unwrap_or_default();
                f(&mut v);
                tx.put(key, &v)
            })
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    fn scan(&self, start: &[u8], limit: usize) -> StoreResult<usize> {
        let r = Range {
            start: start.to_vec(),
            end: None,
            reverse: false,
            limit,
        };
        self.ks
            .range(&r)
            .map(|rows| rows.entries.len())
            .map_err(|e| e.to_string())
    }
    fn tier_stats(&self) -> Option<Stats> {
        Some(self.db.stats())
    }
}

/// FxHash-style multiply-rotate hashing of the key bytes: the baseline should not lose time
/// to SipHash, which a tuned in-memory table would not use either.
#[derive(Debug, Default, Clone, Copy)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

type Shard = RwLock<HashMap<Box<[u8]>, Box<[u8]>, BuildHasherDefault<FxHasher>>>;

/// The all-DRAM baseline: 256 shards, each a hash map behind a reader-writer lock. No
/// tiering, no log, no durability, no budget; it cannot scan (YCSB-E is refused).
#[derive(Debug)]
pub struct Dram {
    shards: Box<[Shard]>,
}

impl Default for Dram {
    fn default() -> Self {
        Dram {
            shards: (0..256).map(|_| RwLock::default()).collect(),
        }
    }
}

impl Dram {
    #[inline]
    fn shard(&self, key: &[u8]) -> &Shard {
        let mut h = FxHasher::default();
        h.write(key);
        // The top bits: the map itself uses the low ones.
        &self.shards[(h.finish() >> 56) as usize]
    }

    /// Insert records `0..records`, in key order like every other engine.
    pub fn load(&self, records: u64, value_bytes: usize) -> StoreResult<()> {
        let per_shard = (records as usize / self.shards.len()) + 1;
        for s in self.shards.iter() {
            s.write().reserve(per_shard);
        }
        for_each_sorted(records, value_bytes, |k, v| self.put(k, v))
    }
}

impl Store for Dram {
    fn engine(&self) -> &'static str {
        "dram"
    }
    fn get_into(&self, key: &[u8], out: &mut Vec<u8>) -> StoreResult<bool> {
        let s = self.shard(key).read();
        Ok(found_into(s.get(key).map(|v| &v[..]), out))
    }
    fn put(&self, key: &[u8], value: &[u8]) -> StoreResult<()> {
        let mut s = self.shard(key).write();
        match s.get_mut(key) {
            Some(v) if v.len() == value.len() => v.copy_from_slice(value),
            Some(v) => *v = value.into(),
            None => {
                s.insert(key.into(), value.into());
            }
        }
        Ok(())
    }
    fn read_modify_write(&self, key: &[u8], f: &mut dyn FnMut(&mut Vec<u8>)) -> StoreResult<()> {
        let mut s = self.shard(key).write();
        let mut v = s.get(key).map(|v| v.to_vec()).unwrap_or_default();
        f(&mut v);
        s.insert(key.into(), v.into_boxed_slice());
        Ok(())
    }
    fn scan(&self, _start: &[u8], _limit: usize) -> StoreResult<usize> {
        Err("the dram baseline is a hash map and cannot scan (YCSB-E)".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::key;

    /// Every store, through the trait: what was put is read back, a missing key is absent,
    /// read-modify-write applies.
    pub fn exercise(s: &dyn Store) {
        let mut out = Vec::new();
        for i in 0..100u64 {
            s.put(&key(i), &i.to_le_bytes()).unwrap();
        }
        for i in 0..100u64 {
            assert!(s.get_into(&key(i), &mut out).unwrap(), "{}", s.engine());
            assert_eq!(out, i.to_le_bytes());
        }
        assert!(!s.get_into(&key(1000), &mut out).unwrap());
        s.read_modify_write(&key(7), &mut |v| v[0] = 99).unwrap();
        s.get_into(&key(7), &mut out).unwrap();
        assert_eq!(out[0], 99);
    }

    #[test]
    fn dram_baseline_reads_its_writes_and_refuses_scans() {
        let d = Dram::default();
        exercise(&d);
        assert!(d.scan(b"user", 10).unwrap_err().contains("cannot scan"));
        let d = Dram::default();
        d.load(1000, 16).unwrap();
        let mut out = Vec::new();
        let mut want = Vec::new();
        for i in [0u64, 500, 999] {
            assert!(d.get_into(&key(i), &mut out).unwrap());
            value_into(i, 0, &mut want, 16);
            assert_eq!(out, want);
        }
    }

    #[test]
    fn tera_store_reads_its_writes_and_scans() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(tera_engine::Config::new(dir.path())).unwrap();
        let ks = db
            .keyspace("t", tera_engine::KeyspaceOptions::ordered())
            .unwrap();
        let t = Tera { db, ks };
        exercise(&t);
        assert_eq!(t.scan(b"", 10).unwrap(), 10);
        assert!(t.tier_stats().is_some());
    }

    #[test]
    fn sorted_keys_are_sorted_and_complete() {
        let k = sorted_keys(5000);
        assert_eq!(k.len(), 5000);
        assert!(k.windows(2).all(|w| w[0].0 < w[1].0));
        let mut ids: Vec<u64> = k.iter().map(|x| x.1).collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..5000).collect::<Vec<_>>());
    }
}
