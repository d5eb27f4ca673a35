//! Engulfing a dataset: bulk load of sorted input, and parallel full scans.
//!
//! Bulk load (one at a time per keyspace) reads the input in chunks of at most 64K records
//! or 64 MiB, checks order and sizes, groups each chunk's records
//! by partition, and inserts every group under one hold of its partition's lock, groups
//! spread over one thread per CPU. The whole load is one revision, logged first as an empty
//! frame (so that the revision is durable before any record of it); each group's records are
//! logged as one frame, appended under the lock like any batch, and the log is synced after
//! each chunk, so a crash keeps a prefix of whole groups.
//!
//! A parallel scan runs one thread per CPU, pinned to that CPU's NUMA node, and each thread
//! takes the partitions homed on its node, so every byte it reads is local.

use crate::db::{BulkLoadInfo, Inner, KsInfo, ScanInfo};
use crate::durable::{finish_batch, push_put, start_batch};
use crate::error::{Error, Result};
use crate::hash::hash_key;
use crate::keyspace::{Meta, KEY_PREFIX};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::AcqRel, Ordering::Relaxed};

/// Records read from the input per chunk, at most.
const CHUNK: usize = 1 << 16;
/// Bytes of keys and values staged per chunk, at most (plus one record): with large values,
/// 64K records would stage gigabytes on the heap.
const CHUNK_BYTES: usize = 64 << 20;

/// Keys deleted while a bulk load runs, each with the highest revision it was deleted at.
/// The load skips a key deleted above its own revision: that delete came after the load, so
/// the key must stay gone (the load's record is older). A batch notes its deletes under the
/// key's partition lock, and the load's group for that partition reads them under the same
/// lock, so `count`, read without the mutex, is current for every key of the partition the
/// reader holds. Held on the heap, outside the DRAM budget, while a load runs; a load empties
/// it when it starts and when it ends.
#[derive(Default)]
pub(crate) struct LoadDeletes {
    count: AtomicUsize,
    keys: parking_lot::Mutex<std::collections::HashMap<Vec<u8>, u64>>,
}

impl LoadDeletes {
    /// Note stored keys a batch at `rev` deleted. The caller holds their partition's lock.
    pub(crate) fn note<'a>(&self, keys: impl Iterator<Item = &'a [u8]>, rev: u64) {
        let mut m = self.keys.lock();
        for k in keys {
            let at = m.entry(k.to_vec()).or_insert(rev);
            *at = (*at).max(rev);
        }
        self.count.store(m.len(), Relaxed);
    }

    /// Whether the stored key `ik` was deleted above revision `rev`. The caller holds the
    /// key's partition lock.
    fn deleted_after(&self, ik: &[u8], rev: u64) -> bool {
        self.count.load(Relaxed) > 0 && self.keys.lock().get(ik).is_some_and(|&at| at > rev)
    }

    fn clear(&self) {
        let mut m = self.keys.lock();
        *m = Default::default();
        self.count.store(0, Relaxed);
    }
}

struct Staged {
    /// Stored keys and values, back to back.
    bytes: Vec<u8>,
    /// (partition, hash, key start, key len, value len).
    recs: Vec<(usize, u64, usize, usize, usize)>,
}

pub(crate) fn bulk_load<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    inner: &Inner,
    ks: &KsInfo,
    records: impl IntoIterator<Item = (K, V)>,
) -> Result<BulkLoadInfo> {
    inner.writable()?;
    // One load at a time: a second one (a retry of a load that timed out, say) would pass
    // the empty check below until the first's first chunk is counted, and the two would mix.
    if ks
        .loading
        .compare_exchange(false, true, AcqRel, Relaxed)
        .is_err()
    {
        return Err(Error::Keyspace {
            name: ks.name.clone(),
            reason: "a bulk load into this keyspace is running already; wait for it (a \
                     keyspace takes one load)"
                .into(),
        });
    }
    struct Loading<'a>(&'a KsInfo);
    impl Drop for Loading<'_> {
        fn drop(&mut self) {
            self.0
                .loading
                .store(false, std::sync::atomic::Ordering::Release);
            self.0.load_deletes.clear();
        }
    }
    let _loading = Loading(ks);
    // Emptied before the revision is taken: every batch above it notes its deletes after.
    // (What a batch of an earlier load, or below this one's revision, notes late is older
    // than the revision, and `deleted_after` passes over it.)
    ks.load_deletes.clear();
    let existing = ks.keys.load(Relaxed);
    if existing > 0 {
        return Err(Error::Keyspace {
            name: ks.name.clone(),
            reason: format!(
                "bulk load needs an empty keyspace, and this one has {existing} keys; load \
                 into a new keyspace, or write with batches"
            ),
        });
    }
    // The load's revision, and an empty frame for it in the log, under a partition's lock as
    // a batch takes its revision and appends its frame: `durable_revision` (which takes each
    // partition's lock once, then syncs the log) then never returns the revision before the
    // log holds it, so a crash cannot hand it out again to a batch a watcher would skip. (The
    // groups' frames follow with the same revision: recovery tells a load by that.)
    let (rev, first_frame) = {
        let _lk = inner.parts()[0].lock();
        let rev = ks.rev.fetch_add(1, AcqRel) + 1;
        let lsn = inner.wal().map(|w| {
            let mut frame = Vec::new();
            start_batch(ks.id, rev, &mut frame);
            finish_batch(&mut frame, 0);
            w.append(&frame)
        });
        (rev, lsn)
    };
    // Watchers from before the load cannot replay it: they must read the keyspace again.
    ks.changelog.compact_through(rev);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut info = BulkLoadInfo {
        records: 0,
        bytes: 0,
        skipped: 0,
        revision: rev,
    };
    let mut prev: Vec<u8> = Vec::new();
    let mut first = true;
    let mut index = 0u64;
    let mut it = records.into_iter();
    let mut staged = Staged {
        bytes: Vec::new(),
        recs: Vec::new(),
    };
    let outcome = (|| loop {
        staged.bytes.clear();
        staged.recs.clear();
        let mut stop: Option<Error> = None;
        // Whether the chunk ended at its bound (more input may follow) rather than with the
        // input.
        let mut full = false;
        for (k, v) in it.by_ref() {
            let (k, v) = (k.as_ref(), v.as_ref());
            if let Err(e) = inner.check_sizes(k, v) {
                stop = Some(e);
                break;
            }
            if !first && k <= prev.as_slice() {
                stop = Some(Error::Unsorted { index });
                break;
            }
            first = false;
            prev.clear();
            prev.extend_from_slice(k);
            index += 1;
            let start = staged.bytes.len();
            staged.bytes.extend_from_slice(&ks.id.to_be_bytes());
            staged.bytes.extend_from_slice(k);
            let ik = &staged.bytes[start..];
            let hash = hash_key(ik);
            let p = inner.partition_for(ks, ik, hash);
            staged.bytes.extend_from_slice(v);
            staged
                .recs
                .push((p, hash, start, KEY_PREFIX + k.len(), v.len()));
            if staged.recs.len() == CHUNK || staged.bytes.len() >= CHUNK_BYTES {
                full = true;
                break;
            }
        }
        if staged.recs.is_empty() && stop.is_none() {
            return Ok(());
        }
        // A chunk that fails part way has loaded (and logged) some of its groups: count them
        // before reporting the failure, or the keyspace's key count would miss them (and a
        // retried load into the "empty" keyspace would be let in).
        let ((loaded, skipped, bytes), failed) = load_chunk(inner, ks, rev, &mut staged, threads);
        info.records += loaded;
        info.skipped += skipped;
        info.bytes += bytes;
        ks.keys.fetch_add(loaded as i64, Relaxed);
        if let Some(w) = inner.wal() {
            w.sync_to(w.end())?;
        }
        if let Some(e) = failed.or(stop) {
            return Err(e);
        }
        if !full {
            return Ok(());
        }
    })();
    // The revision's first frame is durable even when no record carried it (empty input,
    // every record skipped, or a failure before the first chunk's sync), so that a reopen
    // continues above it.
    let sealed = match (inner.wal(), first_frame) {
        (Some(w), Some(lsn)) => w.sync_to(lsn),
        _ => Ok(()),
    };
    outcome?;
    sealed?;
    Ok(info)
}

/// Load one chunk: its counts (records loaded, skipped, bytes) and the first failure, if a
/// group failed (the other groups are loaded and logged all the same).
fn load_chunk(
    inner: &Inner,
    ks: &KsInfo,
    rev: u64,
    staged: &mut Staged,
    threads: usize,
) -> ((u64, u64, u64), Option<Error>) {
    staged.recs.sort_by_key(|r| r.0); // stable: keeps key order within a partition
                                      // A group is one partition's records, cut where its log frame would pass
                                      // `MAX_BATCH_BYTES` (each group is one frame).
    let mut groups = Vec::new();
    let mut i = 0;
    while i < staged.recs.len() {
        let p = staged.recs[i].0;
        let (mut j, mut bytes) = (i, 0);
        while let Some(&(q, _, _, kl, vl)) = staged.recs.get(j) {
            let b = crate::wal::batch_op_bytes(kl, vl);
            if q != p || (j > i && bytes + b > crate::wal::MAX_BATCH_BYTES) {
                break;
            }
            bytes += b;
            j += 1;
        }
        groups.push(i..j);
        i = j;
    }
    let next = AtomicUsize::new(0);
    let loaded = AtomicU64::new(0);
    let skipped = AtomicU64::new(0);
    let bytes = AtomicU64::new(0);
    let failure = parking_lot::Mutex::new(None);
    let staged = &*staged;
    std::thread::scope(|s| {
        for _ in 0..threads.min(groups.len()) {
            s.spawn(|| {
                let mut value = Vec::new();
                let mut frame = Vec::new();
                let meta = Meta {
                    create: rev,
                    modified: rev,
                    version: 1,
                };
                loop {
                    let g = next.fetch_add(1, Relaxed);
                    let Some(range) = groups.get(g) else { break };
                    let p = staged.recs[range.start].0;
                    let mut lk = inner.parts()[p].lock();
                    start_batch(ks.id, rev, &mut frame);
                    let mut n = 0u32;
                    let r = (|| {
                        // A log failure on another thread stops the load: nothing more is
                        // applied that could never be durable.
                        inner.writable()?;
                        let group = &staged.recs[range.clone()];
                        for (j, &(_, hash, ks_at, kl, vl)) in group.iter().enumerate() {
                            if let Some(ahead) = group.get(j + 8) {
                                lk.prefetch(ahead.1);
                            }
                            let ik = &staged.bytes[ks_at..ks_at + kl];
                            let v = &staged.bytes[ks_at + kl..ks_at + kl + vl];
                            // Written by someone else while the load ran: kept, or
                            // deleted after the load's revision: stays gone.
                            if lk.contains(hash, ik)? || ks.load_deletes.deleted_after(ik, rev) {
                                skipped.fetch_add(1, Relaxed);
                                continue;
                            }
                            meta.encode(v, &mut value);
                            lk.put(hash, ik, &value, ks.opts.ordered)?;
                            push_put(&mut frame, &ik[KEY_PREFIX..], rev, 1, v);
                            n += 1;
                            bytes.fetch_add((kl - KEY_PREFIX + vl) as u64, Relaxed);
                        }
                        Ok::<_, Error>(())
                    })();
                    if n > 0 {
                        loaded.fetch_add(u64::from(n), Relaxed);
                        if let Some(w) = inner.wal() {
                            finish_batch(&mut frame, n);
                            lk.set_logged(w.append(&frame));
                        }
                    }
                    drop(lk);
                    if let Err(e) = r {
                        failure.lock().get_or_insert(e);
                        break;
                    }
                }
            });
        }
    });
    (
        (
            loaded.into_inner(),
            skipped.into_inner(),
            bytes.into_inner(),
        ),
        failure.into_inner(),
    )
}

pub(crate) fn scan_parallel<A: Send>(
    inner: &Inner,
    ks: &KsInfo,
    init: impl Fn() -> A + Sync,
    f: impl Fn(&mut A, &[u8], &[u8], u64) + Sync,
) -> Result<(Vec<A>, ScanInfo)> {
    let topo = inner.topology_ref();
    let mut nodes: Vec<(u32, usize)> = topo
        .cpu_nodes()
        .iter()
        .map(|&n| (n, topo.node(n).map_or(1, |x| x.cpus.len().max(1))))
        .collect();
    if nodes.is_empty() {
        nodes.push((0, 1));
    }
    let prefix = ks.id.to_be_bytes();
    let records = AtomicU64::new(0);
    let key_bytes = AtomicU64::new(0);
    let value_bytes = AtomicU64::new(0);
    let failure = parking_lot::Mutex::new(None);
    let queues: Vec<(u32, Vec<usize>, AtomicUsize)> = nodes
        .iter()
        .map(|&(n, _)| {
            let parts: Vec<usize> = inner
                .parts()
                .iter()
                .enumerate()
                .filter(|(_, p)| p.node == n)
                .map(|(i, _)| i)
                .collect();
            (n, parts, AtomicUsize::new(0))
        })
        .collect();
    // Partitions homed on a node with no CPUs in the list go to the first queue.
    let orphan: Vec<usize> = inner
        .parts()
        .iter()
        .enumerate()
        .filter(|(_, p)| !nodes.iter().any(|n| n.0 == p.node))
        .map(|(i, _)| i)
        .collect();
    let orphan_next = AtomicUsize::new(0);
    let threads: usize = nodes.iter().map(|n| n.1).sum();
    let accs = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for (qi, &(node, cpus)) in nodes.iter().enumerate() {
            for _ in 0..cpus {
                let queues = &queues;
                let (init, f) = (&init, &f);
                let (records, key_bytes, value_bytes) = (&records, &key_bytes, &value_bytes);
                let (failure, orphan, orphan_next) = (&failure, &orphan, &orphan_next);
                handles.push(s.spawn(move || {
                    if let Err(e) = tera_numa::pin_current_thread(topo, node) {
                        tracing::debug!(node, error = %e, "scan thread not pinned");
                    }
                    let mut acc = init();
                    let mut addrs = Vec::new();
                    let (_, parts, next) = &queues[qi];
                    loop {
                        let i = next.fetch_add(1, Relaxed);
                        let p = match parts.get(i) {
                            Some(&p) => p,
                            None => match orphan.get(orphan_next.fetch_add(1, Relaxed)) {
                                Some(&p) => p,
                                None => break,
                            },
                        };
                        let mut lk = inner.parts()[p].lock();
                        let (mut n, mut kb, mut vb) = (0u64, 0u64, 0u64);
                        let mut start = 0;
                        loop {
                            let r = lk.scan_buckets(
                                start,
                                4096,
                                (usize::MAX, usize::MAX),
                                true,
                                &mut addrs,
                                |k, v| {
                                    if k.len() >= KEY_PREFIX && k[..KEY_PREFIX] == prefix {
                                        let (m, v) = Meta::decode(v);
                                        f(&mut acc, &k[KEY_PREFIX..], v, m.modified);
                                        n += 1;
                                        kb += (k.len() - KEY_PREFIX) as u64;
                                        vb += v.len() as u64;
                                    }
                                },
                            );
                            match r {
                                Ok((scanned, buckets, _)) => {
                                    start += scanned;
                                    if start >= buckets {
                                        break;
                                    }
                                }
                                Err(e) => {
                                    failure.lock().get_or_insert(e);
                                    break;
                                }
                            }
                        }
                        drop(lk);
                        records.fetch_add(n, Relaxed);
                        key_bytes.fetch_add(kb, Relaxed);
                        value_bytes.fetch_add(vb, Relaxed);
                    }
                    acc
                }));
            }
        }
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect::<Vec<A>>()
    });
    if let Some(e) = failure.into_inner() {
        return Err(e);
    }
    Ok((
        accs,
        ScanInfo {
            records: records.into_inner(),
            key_bytes: key_bytes.into_inner(),
            value_bytes: value_bytes.into_inner(),
            threads,
        },
    ))
}
