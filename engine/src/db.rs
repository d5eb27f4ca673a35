//! [`Db`] and [`Keyspace`]: the partitions and their placement on NUMA nodes, keyspaces, the
//! commit path (revisions, rollback, the log, the change log), and the background threads.
//!
//! A key goes to the partition picked by the hash of its partition key; each partition's
//! frames and index are bound to its home node, and the maintenance thread of that node
//! (pinned to its CPUs) compacts it.
//!
//! A commit runs under its partition's lock: read the touched keys, take the keyspace's next
//! revision, apply the writes (undoing those done if one fails), append the batch to the log
//! and its events to the change log, release the lock, then wait for the log to be durable if
//! the mode says so. Appending to the log under the partition lock keeps each key's frames in
//! the order its writes were applied, which is what replay relies on.

use crate::bell::Bell;
use crate::changelog::{Change, Changelog, Event, EventKind, Visible, Watcher};
use crate::config::{Config, Durability};
use crate::durable::{
    encode_keyspace, finish_batch, push_delete, push_put, start_batch, KeyspaceDef,
};
use crate::error::{Error, Result};
use crate::far::Storage;
use crate::hash::{hash_key, partition_of};
use crate::heat::{GhostAdmission, HeatPolicy};
use crate::keyspace::{
    prefix_end, Batch, Entry, KeyspaceOptions, Meta, Op, PartitionBy, Range, RangeResult, Txn,
    TxnResult, KEY_PREFIX, META,
};
use crate::partition::{Locked, Partition, Shared, Tier};
use crate::shares::Shares;
use crate::stats::{Stats, TierStats};
use crate::wal::Wal;
use crossbeam_utils::CachePadded;
use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::HashMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{
    AtomicBool, AtomicI64, AtomicU64, AtomicUsize,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;
use tera_numa::Topology;

/// Read counters, striped by thread so that readers on different cores do not share a line.
struct ReadCounters {
    stripes: Box<[CachePadded<[AtomicU64; 2]>]>,
}

impl ReadCounters {
    fn new() -> Self {
        ReadCounters {
            stripes: (0..64)
                .map(|_| CachePadded::new([AtomicU64::new(0), AtomicU64::new(0)]))
                .collect(),
        }
    }

    #[inline]
    fn count(&self, tier: Tier) {
        thread_local! {
            static STRIPE: usize = {
                static NEXT: AtomicUsize = AtomicUsize::new(0);
                NEXT.fetch_add(1, Relaxed)
            };
        }
        let s = STRIPE.with(|s| *s) % self.stripes.len();
        let i = match tier {
            Tier::Dram => 0,
            Tier::Far => 1,
        };
        self.stripes[s][i].fetch_add(1, Relaxed);
    }

    /// Count `dram` and `far` reads at once (a scan).
    fn count_n(&self, dram: u64, far: u64) {
        let s = &self.stripes[0];
        if dram > 0 {
            s[0].fetch_add(dram, Relaxed);
        }
        if far > 0 {
            s[1].fetch_add(far, Relaxed);
        }
    }

    fn totals(&self) -> (u64, u64) {
        self.stripes.iter().fold((0, 0), |(d, f), s| {
            (d + s[0].load(Relaxed), f + s[1].load(Relaxed))
        })
    }
}

/// A keyspace as the database keeps it.
pub(crate) struct KsInfo {
    pub(crate) id: u16,
    pub(crate) name: String,
    pub(crate) opts: KeyspaceOptions,
    /// Last revision handed out. Every write adds to it, so it has a cache line of its own:
    /// beside `id` and `opts`, which every read uses, each write moved the line those reads
    /// need away from the other cores.
    pub(crate) rev: CachePadded<AtomicU64>,
    pub(crate) changelog: Arc<Changelog>,
    /// Keys in the keyspace (its own cache line, as `rev`).
    pub(crate) keys: CachePadded<AtomicI64>,
    /// A bulk load is running into the keyspace (one at a time: see `bulk::bulk_load`).
    pub(crate) loading: std::sync::atomic::AtomicBool,
    /// Keys deleted while a bulk load runs, with their delete's revision, so that the load
    /// does not bring back a key whose delete came after the load's revision (see
    /// `bulk::bulk_load`).
    pub(crate) load_deletes: crate::bulk::LoadDeletes,
}

#[derive(Default)]
struct KsTable {
    by_name: HashMap<String, Arc<KsInfo>>,
    by_id: Vec<Option<Arc<KsInfo>>>,
}

/// The name of the keyspace behind [`Db::get`], [`Db::put`] and friends.
pub const DEFAULT_KEYSPACE: &str = "default";

/// How often the maintenance threads move DRAM shares between partitions.
const REBALANCE_EVERY: Duration = Duration::from_millis(200);

/// How often a maintenance thread reports compaction failures, at most.
const COMPACTION_REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Where watchers may read up to: the durable LSN, or everything without a log; and the
/// database's poison, after which nothing more becomes durable.
struct VisibleLsn(Option<Arc<Wal>>, Arc<OnceLock<String>>);
impl Visible for VisibleLsn {
    fn visible_lsn(&self) -> u64 {
        self.0.as_ref().map_or(u64::MAX, |w| w.durable())
    }
    fn poisoned(&self) -> Option<String> {
        self.1.get().cloned()
    }
}

pub(crate) struct Inner {
    parts: Arc<[Partition]>,
    shared: Arc<Shared>,
    budget: u64,
    policy: Arc<dyn HeatPolicy>,
    topology: Topology,
    reads: ReadCounters,
    stop: Mutex<bool>,
    wake: Condvar,
    max_key: usize,
    max_value: usize,
    keyspaces: RwLock<KsTable>,
    durability: Durability,
    data_dir: PathBuf,
    storage: Arc<dyn Storage>,
    wal: Option<Arc<Wal>>,
    visible: Arc<VisibleLsn>,
    poison: Arc<OnceLock<String>>,
    bell: Arc<Bell>,
    changelog_accounts: crate::changelog::Accounts,
    changelog_limit: usize,
    wal_buffer_cap: usize,
    checkpoint_wal_bytes: u64,
    checkpoint_lock: Mutex<()>,
    /// LSN replay would start from (the last checkpoint's).
    checkpoint_lsn: AtomicU64,
    checkpoints: AtomicU64,
    /// Held for the database's life: the far directory's lock (and the data directory's).
    _far_lock: std::fs::File,
    _data_lock: Option<std::fs::File>,
}

/// A tiered record store. See the crate docs for an example.
pub struct Db {
    inner: Arc<Inner>,
    /// The default keyspace (looked up once, so that `Db::get` takes no lock).
    default: Arc<KsInfo>,
    maintenance: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("partitions", &self.inner.parts.len())
            .field("dram_budget_bytes", &self.inner.budget)
            .field("policy", &self.inner.policy.name())
            .field("durability", &self.inner.durability)
            .finish_non_exhaustive()
    }
}

/// What [`Db::checkpoint`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// Log position recovery replays from.
    pub lsn: u64,
    pub records: u64,
    pub bytes: u64,
    /// Partition slices scanned again because an index grew under the scan.
    pub rescans: u64,
}

/// What a recovery found, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecoveryInfo {
    pub checkpoint_records: u64,
    pub log_frames: u64,
    /// Bytes cut off the end of the log as a torn tail.
    pub torn_bytes: u64,
}

/// What [`Keyspace::bulk_load`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkLoadInfo {
    pub records: u64,
    /// Key and value bytes loaded.
    pub bytes: u64,
    /// Records skipped because someone else wrote their key while the load ran: put (the
    /// key existed) or deleted (after the load's revision).
    pub skipped: u64,
    /// The revision every loaded record carries.
    pub revision: u64,
}

/// Totals of a [`Keyspace::scan_parallel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScanInfo {
    pub records: u64,
    pub key_bytes: u64,
    pub value_bytes: u64,
    pub threads: usize,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

impl Db {
    /// Open a database. The far directory is created if missing and must be writable. With a
    /// durability other than `None`, the database is recovered from the data directory (the
    /// newest checkpoint, then the write-ahead log after it).
    pub fn open(config: Config) -> Result<Db> {
        Ok(Self::open_with_info(config)?.0)
    }

    /// [`Db::open`], also saying what recovery found.
    pub fn open_with_info(config: Config) -> Result<(Db, RecoveryInfo)> {
        config.validate().map_err(Error::Config)?;
        let durable = config.durability != Durability::None;
        let data_dir = config.data_dir();
        let far_lock = prepare_far_dir(&config, durable)?;
        let data_lock = if durable && data_dir != config.far_dir {
            Some(lock_dir(&data_dir)?)
        } else {
            None
        };
        if !durable {
            refuse_durable_files(&data_dir)?;
        }
        crate::sigbus::init();
        if config.far_latency_ns > 0 {
            crate::emulate::calibrate();
        }

        let topology = config.topology.clone().unwrap_or_else(Topology::detect);
        let mut nodes = topology.cpu_nodes();
        if nodes.is_empty() {
            nodes.push(0);
        }
        let cpus: usize = topology.nodes().iter().map(|n| n.cpus.len()).sum();
        let n = if config.partitions == 0 {
            (cpus * 2).max(4)
        } else {
            config.partitions
        };
        let budget = config.dram_budget_bytes;
        let policy: Arc<dyn HeatPolicy> = match &config.policy {
            Some(p) => p.clone(),
            None => Arc::new(GhostAdmission::new((budget / 4096) as usize)),
        };
        let left = budget.saturating_sub(policy.dram_bytes() as u64) as usize;
        // A partition may grow to hold all of what is left, or 4 even shares on machines with
        // more than 4 partitions (its frame arena reserves address space for that much).
        let cap = left.min((left / n).saturating_mul(4));
        // The log's buffer (and the one being flushed) is charged to every partition.
        let wal_buffer_cap = ((budget / 64) as usize).clamp(4 << 10, 4 << 20);
        let overhead = Arc::new(AtomicUsize::new(if durable {
            2 * wal_buffer_cap
        } else {
            0
        }));
        let shared = Arc::new(Shared {
            page_shift: config.page_bytes.trailing_zeros(),
            seg_shift: config.segment_bytes.trailing_zeros(),
            far_ns: config.far_latency_ns,
            max_key: config.max_key_bytes + KEY_PREFIX,
            max_value: config.max_value_bytes + META,
            far_dir: config.far_dir.clone(),
            storage: config.storage.clone(),
            policy: policy.clone(),
            compaction_ratio: config.compaction_live_ratio,
            huge_pages: config.huge_pages,
            partitions: n,
            global_overhead: overhead.clone(),
            shares: Shares::new(left, n, cap, config.page_bytes),
            siblings: OnceLock::new(),
            recovering: AtomicBool::new(false),
        });
        let per_part = config.expected_records.div_ceil(n);
        let per_part = per_part + per_part / 100;
        let parts: Arc<[Partition]> = (0..n)
            .map(|i| Partition::open(i, nodes[i % nodes.len()], shared.clone(), per_part))
            .collect::<Result<Vec<_>>>()?
            .into();
        let _ = shared.siblings.set(Arc::downgrade(&parts));
        let bell = Arc::new(Bell::default());
        let poison: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
        let inner = Inner {
            parts,
            shared,
            budget,
            policy,
            topology,
            reads: ReadCounters::new(),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            max_key: config.max_key_bytes,
            max_value: config.max_value_bytes,
            keyspaces: RwLock::new(KsTable::default()),
            durability: config.durability,
            data_dir: data_dir.clone(),
            storage: config.storage.clone(),
            wal: None,
            visible: Arc::new(VisibleLsn(None, poison.clone())),
            poison,
            bell,
            changelog_accounts: crate::changelog::Accounts {
                overhead: overhead.clone(),
                ..Default::default()
            },
            changelog_limit: config.changelog_limit(),
            wal_buffer_cap,
            checkpoint_wal_bytes: config.checkpoint_wal_bytes,
            checkpoint_lock: Mutex::new(()),
            checkpoint_lsn: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            _far_lock: far_lock,
            _data_lock: data_lock,
        };
        let mut inner = inner;
        inner.add_keyspace(
            KeyspaceDef {
                id: 0,
                name: DEFAULT_KEYSPACE.into(),
                opts: KeyspaceOptions::hash(),
                revision: 0,
            },
            false,
        )?;
        let mut info = RecoveryInfo::default();
        if durable {
            inner.shared.recovering.store(true, Relaxed);
            info = crate::recovery::recover(&mut inner, &config)?;
            inner.shared.recovering.store(false, Relaxed);
        }
        let inner = Arc::new(inner);
        let default = inner
            .ks_by_id(0)
            .expect("the default keyspace always exists");
        let mut db = Db {
            inner,
            default,
            maintenance: Vec::new(),
        };
        if config.background_maintenance {
            for &node in &nodes {
                // On failure, dropping `db` stops and joins the threads already started.
                let h = spawn_maintenance(db.inner.clone(), node).map_err(|e| {
                    Error::Config(format!("could not start a maintenance thread: {e}"))
                })?;
                db.maintenance.push(h);
            }
        }
        if durable {
            let hs = spawn_durability(db.inner.clone())
                .map_err(|e| Error::Config(format!("could not start the log threads: {e}")))?;
            db.maintenance.extend(hs);
        }
        Ok((db, info))
    }

    /// The keyspace named `name`, created with `opts` if it does not exist. An existing
    /// keyspace must have been created with the same options.
    pub fn keyspace(&self, name: &str, opts: KeyspaceOptions) -> Result<Keyspace> {
        let inner = &self.inner;
        if let Some(ks) = inner.keyspaces.read().by_name.get(name) {
            return check_opts(ks, opts).map(|()| self.handle(ks.clone()));
        }
        let bad = |reason: &str| Error::Keyspace {
            name: name.into(),
            reason: reason.into(),
        };
        if name.is_empty() || name.len() > 255 {
            return Err(bad("a name is 1 to 255 bytes"));
        }
        if let PartitionBy::Prefix(0) = opts.partition_by {
            return Err(bad("a partition prefix of 0 bytes would put every key in one partition; use a positive length"));
        }
        inner.writable()?;
        let ks = {
            let mut t = inner.keyspaces.write();
            if let Some(ks) = t.by_name.get(name) {
                let ks = ks.clone();
                drop(t);
                return check_opts(&ks, opts).map(|()| self.handle(ks));
            }
            let id = t.by_id.len();
            if id > u16::MAX as usize {
                return Err(bad("65536 keyspaces exist already"));
            }
            let def = KeyspaceDef {
                id: id as u16,
                name: name.into(),
                opts,
                revision: 0,
            };
            let ks = inner.new_ks(&def);
            t.by_id.push(Some(ks.clone()));
            t.by_name.insert(name.into(), ks.clone());
            if let Some(wal) = &inner.wal {
                let mut buf = Vec::new();
                encode_keyspace(&def, &mut buf);
                let lsn = wal.append(&buf);
                drop(t);
                wal.sync_to(lsn)?;
            }
            ks
        };
        Ok(self.handle(ks))
    }

    /// The keyspace named `name`, if it exists.
    pub fn get_keyspace(&self, name: &str) -> Option<Keyspace> {
        let ks = self.inner.keyspaces.read().by_name.get(name).cloned()?;
        Some(self.handle(ks))
    }

    /// Names of all keyspaces, by id.
    pub fn keyspace_names(&self) -> Vec<String> {
        let t = self.inner.keyspaces.read();
        t.by_id.iter().flatten().map(|k| k.name.clone()).collect()
    }

    fn handle(&self, ks: Arc<KsInfo>) -> Keyspace {
        Keyspace {
            inner: self.inner.clone(),
            ks,
        }
    }

    fn default_ks(&self) -> Keyspace {
        self.handle(self.default.clone())
    }

    /// The value of `key` in the default keyspace, or `None`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut out = Vec::new();
        Ok(self.get_into(key, &mut out)?.then_some(out))
    }

    /// Copy the value of `key` (default keyspace) into `out` (cleared first); returns whether
    /// the key exists. Reusing `out` across calls saves an allocation per read.
    #[inline]
    pub fn get_into(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool> {
        self.inner
            .read_stored(&self.default, key, out, &mut [0; META])
    }

    /// Set `key` to `value` in the default keyspace. Keys up to `max_key_bytes` (64 KiB),
    /// values up to `max_value_bytes` (1 MiB by default); larger ones are refused.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.default_ks().put(key, value).map(drop)
    }

    /// Remove `key` from the default keyspace; returns whether it existed.
    pub fn delete(&self, key: &[u8]) -> Result<bool> {
        Ok(self.default_ks().delete(key)?.is_some())
    }

    /// Read-modify-write in the default keyspace, atomic with respect to every other write of
    /// the key: `f` receives the current value (or `None`) and returns the new value (or
    /// `None` to delete). `f` runs under the lock of the key's partition: it must be short and
    /// must not call back into this database (that would deadlock on the partition lock).
    pub fn update(
        &self,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> Option<Vec<u8>>,
    ) -> Result<()> {
        self.default_ks()
            .atomic(key, |tx| {
                let cur = tx.get(key)?;
                match f(cur.as_ref().map(|e| e.value.as_slice())) {
                    Some(v) => tx.put(key, &v),
                    None if cur.is_some() => tx.delete(key),
                    None => Ok(()),
                }
            })
            .map(drop)
    }

    /// Write a checkpoint: every record, so that recovery loads it and replays only the log
    /// after it. Writers go on meanwhile (each partition is scanned a slice at a time under
    /// its lock). Fails with durability `None`.
    pub fn checkpoint(&self) -> Result<CheckpointInfo> {
        crate::recovery::checkpoint(&self.inner)
    }

    /// Make every commit so far durable (with durability `periodic`, without waiting for the
    /// interval). A no-op with durability `None`.
    pub fn sync(&self) -> Result<()> {
        match &self.inner.wal {
            Some(w) => w.sync_to(w.end()),
            None => Ok(()),
        }
    }

    /// Why writes are refused, if they are (after a log write or sync failed).
    pub fn poisoned(&self) -> Option<String> {
        self.inner.poison.get().cloned()
    }

    /// Run compaction until no far segment qualifies. Returns the steps taken (pages
    /// processed plus segments removed). The maintenance threads do this in the background
    /// unless turned off in the config.
    pub fn maintain(&self) -> Result<usize> {
        let mut steps = 0;
        for p in self.inner.parts.iter() {
            while p.compact_step()? {
                steps += 1;
            }
        }
        self.inner.rebalance()?;
        Ok(steps)
    }

    /// Counters per tier and the DRAM budget against its use.
    pub fn stats(&self) -> Stats {
        let inner = &self.inner;
        let mut s = Stats {
            partitions: inner.parts.len(),
            dram_budget_bytes: inner.budget,
            ..Stats::default()
        };
        let mut used = inner.policy.dram_bytes() as u64;
        // Every partition's lock at once (in index order, as batches take them), so that the
        // sum is one state: DRAM moving between partitions' shares is never counted twice or
        // missed. They are held together only for the loads of the counters.
        let mut held: Vec<Locked<'_>> = inner.parts.iter().map(|p| p.lock()).collect();
        for lk in &mut held {
            let ps = lk.stats();
            add(&mut s.dram, ps.dram);
            add(&mut s.far, ps.far);
            s.promotions += ps.promotions;
            s.readmissions += ps.readmissions;
            s.pages_demoted += ps.pages_demoted;
            s.compaction_bytes += ps.compaction_bytes;
            s.segments_compacted += ps.segments_compacted;
            s.far_file_bytes += ps.far_file_bytes;
            s.index_bytes += ps.index_bytes;
            s.ordered_index_bytes += ps.ordered_index_bytes;
            s.frame_bytes += ps.frame_bytes;
            s.keys += ps.keys;
            // Partitions each count their share of the global overhead; count it once.
            used += ps.used_bytes;
        }
        drop(held);
        let global = inner.shared.global_overhead.load(Relaxed) as u64;
        let n = inner.parts.len() as u64;
        used = used - (global / n.max(1)) * n + global;
        s.dram_used_bytes = used;
        s.changelog_bytes = inner.changelog_accounts.held.load(Relaxed) as u64;
        if let Some(w) = &inner.wal {
            let ws = w.stats();
            s.wal_fsyncs = ws.fsyncs;
            s.wal_durable_lsn = ws.durable_lsn;
        }
        s.checkpoints = inner.checkpoints.load(Relaxed);
        s.shares_moved_bytes = inner.shared.shares.moved();
        s.largest_share_bytes = (0..inner.parts.len())
            .map(|i| inner.shared.shares.share(i) as u64)
            .max()
            .unwrap_or(0);
        let (d, f) = inner.reads.totals();
        s.dram.reads = d;
        s.far.reads = f;
        s
    }

    /// The home NUMA node of each partition, by partition number.
    pub fn partition_nodes(&self) -> Vec<u32> {
        self.inner.parts.iter().map(|p| p.node).collect()
    }

    /// The partition a key of the default keyspace belongs to.
    pub fn partition_of(&self, key: &[u8]) -> usize {
        let ik = ikey(&self.default, key);
        self.inner.partition_for(&self.default, &ik, hash_key(&ik))
    }

    /// The topology partitions were placed on.
    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// The name of the heat policy in use.
    pub fn policy_name(&self) -> &'static str {
        self.inner.policy.name()
    }

    /// The durability mode.
    pub fn durability(&self) -> Durability {
        self.inner.durability
    }
}

fn check_opts(ks: &KsInfo, opts: KeyspaceOptions) -> Result<()> {
    if ks.opts == opts {
        Ok(())
    } else {
        Err(Error::Keyspace {
            name: ks.name.clone(),
            reason: format!(
                "exists with options {:?}, not the {opts:?} asked for",
                ks.opts
            ),
        })
    }
}

/// The stored key of `key` in `ks`.
pub(crate) fn ikey(ks: &KsInfo, key: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(KEY_PREFIX + key.len());
    push_ikey(ks, key, &mut v);
    v
}

/// Append the stored key of `key` in `ks` to `out`.
fn push_ikey(ks: &KsInfo, key: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&ks.id.to_be_bytes());
    out.extend_from_slice(key);
}

impl Inner {
    pub(crate) fn new_ks(&self, def: &KeyspaceDef) -> Arc<KsInfo> {
        Arc::new(KsInfo {
            id: def.id,
            name: def.name.clone(),
            opts: def.opts,
            rev: CachePadded::new(AtomicU64::new(def.revision)),
            changelog: Changelog::new(
                def.revision + 1,
                self.changelog_accounts.clone(),
                self.changelog_limit / 2,
                self.bell.clone(),
            ),
            keys: CachePadded::new(AtomicI64::new(0)),
            loading: std::sync::atomic::AtomicBool::new(false),
            load_deletes: Default::default(),
        })
    }

    /// Register a keyspace found by recovery (or the default one).
    pub(crate) fn add_keyspace(&mut self, def: KeyspaceDef, replace: bool) -> Result<Arc<KsInfo>> {
        let ks = self.new_ks(&def);
        let t = self.keyspaces.get_mut();
        let id = def.id as usize;
        if t.by_id.len() <= id {
            t.by_id.resize(id + 1, None);
        }
        if let Some(old) = &t.by_id[id] {
            if old.name != def.name || old.opts != def.opts {
                return Err(Error::Corrupt {
                    path: self.data_dir.clone(),
                    offset: 0,
                    reason: format!(
                        "keyspace {id} is both {:?} and {:?} in the log",
                        old.name, def.name
                    ),
                });
            }
            if !replace {
                return Ok(old.clone());
            }
        }
        t.by_id[id] = Some(ks.clone());
        t.by_name.insert(def.name, ks.clone());
        Ok(ks)
    }

    pub(crate) fn changelog_limit(&self) -> usize {
        self.changelog_limit
    }

    pub(crate) fn ks_by_id(&self, id: u16) -> Option<Arc<KsInfo>> {
        self.keyspaces
            .read()
            .by_id
            .get(id as usize)
            .cloned()
            .flatten()
    }

    pub(crate) fn all_ks(&self) -> Vec<Arc<KsInfo>> {
        self.keyspaces
            .read()
            .by_id
            .iter()
            .flatten()
            .cloned()
            .collect()
    }

    pub(crate) fn parts(&self) -> &[Partition] {
        &self.parts
    }

    /// Move DRAM shares between partitions to follow their needs (shares.rs).
    pub(crate) fn rebalance(&self) -> Result<()> {
        self.shared.shares.rebalance(&self.parts, None, false)
    }

    pub(crate) fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    pub(crate) fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub(crate) fn wal(&self) -> Option<&Arc<Wal>> {
        self.wal.as_ref()
    }

    pub(crate) fn set_wal(&mut self, wal: Arc<Wal>) {
        self.visible = Arc::new(VisibleLsn(Some(wal.clone()), self.poison.clone()));
        self.wal = Some(wal);
    }

    /// The log buffer's size past which a writer flushes itself (`periodic`); the budget
    /// charges twice this for the log's buffers.
    pub(crate) fn wal_buffer_cap(&self) -> usize {
        self.wal_buffer_cap
    }

    pub(crate) fn poison_cell(&self) -> Arc<OnceLock<String>> {
        self.poison.clone()
    }

    pub(crate) fn bell(&self) -> Arc<Bell> {
        self.bell.clone()
    }

    pub(crate) fn checkpoint_lock(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.checkpoint_lock.lock()
    }

    pub(crate) fn set_checkpoint_lsn(&self, lsn: u64) {
        self.checkpoint_lsn.store(lsn, Release);
    }

    pub(crate) fn count_checkpoint(&self) {
        self.checkpoints.fetch_add(1, Relaxed);
    }

    /// The partition of a stored key.
    #[inline]
    pub(crate) fn partition_for(&self, ks: &KsInfo, ikey: &[u8], hash: u64) -> usize {
        let n = self.parts.len();
        match ks.opts.partition_by {
            PartitionBy::Key => partition_of(hash, n),
            PartitionBy::Prefix(p) => {
                let end = (KEY_PREFIX + p as usize).min(ikey.len());
                partition_of(hash_key(&ikey[..end]), n)
            }
        }
    }

    pub(crate) fn check_sizes(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.check_key(key)?;
        self.check_value(value)
    }

    pub(crate) fn topology_ref(&self) -> &Topology {
        &self.topology
    }

    fn check_key(&self, key: &[u8]) -> Result<()> {
        if key.len() > self.max_key {
            return Err(Error::KeyTooLarge {
                len: key.len(),
                max: self.max_key,
            });
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<()> {
        if value.len() > self.max_value {
            return Err(Error::ValueTooLarge {
                len: value.len(),
                max: self.max_value,
            });
        }
        Ok(())
    }

    /// Revision `rev` was taken by a write that failed and applied nothing: log it as an
    /// empty batch, and fill it in the change log with an empty change that watchers see once
    /// that frame is durable. Logged, a reopen knows the revision was used and never hands
    /// it out again (a watcher may have moved its cursor past it); unlogged, recovery would
    /// restart the count below it. (After a log failure the frame is only buffered: the
    /// database is poisoned and a reopen recovers from the log as it is.)
    fn skip_revision(&self, ks: &KsInfo, rev: u64) {
        match &self.wal {
            Some(wal) => {
                let mut frame = Vec::new();
                start_batch(ks.id, rev, &mut frame);
                finish_batch(&mut frame, 0);
                let lsn = wal.append(&frame);
                ks.changelog.insert(
                    rev,
                    Change {
                        events: Vec::new(),
                        lsn,
                    },
                );
            }
            None => ks.changelog.insert_empty(rev),
        }
    }

    /// Poison the database from outside the log (the log poisons itself, and wakes the same
    /// waiters): reads waiting for a flush and watchers of every keyspace waiting for a change
    /// learn that none will come. The first reason stays.
    fn set_poison(&self, why: String) {
        let _ = self.poison.set(why);
        if let Some(wal) = &self.wal {
            wal.wake_all();
        }
        self.bell.ring();
    }

    /// Refuse writes after a log failure.
    pub(crate) fn writable(&self) -> Result<()> {
        match self.poison.get() {
            Some(why) => Err(Error::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    /// Lock-free read of a stored value: its revisions into `head`, the user's value into
    /// `out`.
    #[inline]
    fn read_stored(
        &self,
        ks: &KsInfo,
        key: &[u8],
        out: &mut Vec<u8>,
        head: &mut [u8; META],
    ) -> Result<bool> {
        if key.len() > self.max_key {
            out.clear();
            return Ok(false); // cannot have been written
        }
        thread_local! {
            static KEY: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        KEY.with(|k| {
            let mut ik = k.borrow_mut();
            ik.clear();
            ik.extend_from_slice(&ks.id.to_be_bytes());
            ik.extend_from_slice(key);
            let hash = hash_key(&ik);
            let p = self.partition_for(ks, &ik, hash);
            match self.parts[p].read(hash, &ik, out, head)? {
                Some(found) => {
                    self.reads.count(found.tier);
                    Ok(true)
                }
                None => {
                    out.clear();
                    Ok(false)
                }
            }
        })
    }

    /// Apply `writes` (stored keys, and user values or `None` for deletes) at the next
    /// revision, all or nothing, under the partition lock `lk`; log them and add them to the
    /// change log. Returns the revision and the log LSN to wait for, or `None` if the writes
    /// change nothing (deletes of missing keys).
    fn commit_locked(
        &self,
        ks: &KsInfo,
        lk: &mut Locked<'_>,
        writes: &[(Vec<u8>, Option<Vec<u8>>)],
    ) -> Result<Option<(u64, u64)>> {
        self.writable()?;
        // A batch is one log frame: refuse one too large for a frame before anything is
        // applied (a frame over the limit would be written, acknowledged, and then refused
        // as damage at the next open).
        crate::wal::check_batch(
            writes
                .iter()
                .map(|(k, v)| (k.len(), v.as_ref().map_or(0, Vec::len))),
            crate::wal::MAX_BATCH_BYTES,
        )?;
        // The state each touched key had before the batch (for rollback), and as the batch
        // goes on (for versions and create revisions).
        let mut before: HashMap<&[u8], Before> = HashMap::new();
        let mut effects: Vec<Effect<'_>> = Vec::new();
        let mut scratch = Vec::new();
        for (ik, value) in writes {
            if !before.contains_key(ik.as_slice()) {
                let hash = hash_key(ik);
                let orig = lk.get(hash, ik, &mut scratch)?.map(|_| scratch.clone());
                let meta = orig.as_deref().map(|s| Meta::decode(s).0);
                before.insert(ik.as_slice(), (orig, meta));
            }
            let cur = &mut before.get_mut(ik.as_slice()).expect("inserted").1;
            match value {
                Some(v) => {
                    // create 0 stands for "this batch's revision", filled in below.
                    let m = Meta {
                        create: cur.map_or(0, |c| c.create),
                        modified: 0,
                        version: cur.map_or(1, |c| c.version + 1),
                    };
                    *cur = Some(m);
                    effects.push((ik.as_slice(), Some(m), Some(v)));
                }
                None => {
                    if cur.take().is_some() {
                        effects.push((ik.as_slice(), None, None));
                    }
                }
            }
        }
        if effects.is_empty() {
            return Ok(None);
        }
        let rev = ks.rev.fetch_add(1, AcqRel) + 1;
        let mut taken = Taken {
            inner: self,
            ks,
            rev: Some(rev),
        };
        let ordered = ks.opts.ordered;
        let mut applied = 0;
        let mut failure = None;
        for (ik, meta, value) in &effects {
            let hash = hash_key(ik);
            let r = match (meta, value) {
                (Some(m), Some(v)) => {
                    let m = Meta {
                        create: if m.create == 0 { rev } else { m.create },
                        modified: rev,
                        version: m.version,
                    };
                    m.encode(v, &mut scratch);
                    lk.put(hash, ik, &scratch, ordered).map(drop)
                }
                _ => lk.delete(hash, ik, ordered).map(drop),
            };
            if let Err(e) = r {
                failure = Some(e);
                break;
            }
            applied += 1;
        }
        if let Some(e) = failure {
            // Undo the writes already applied, restoring each key's state from before.
            let mut undone = std::collections::HashSet::new();
            let mut undo_err = None;
            for (ik, _, _) in effects[..applied].iter().rev() {
                if !undone.insert(*ik) {
                    continue;
                }
                let hash = hash_key(ik);
                let r = match &before[ik].0 {
                    Some(orig) => lk.put(hash, ik, orig, ordered).map(drop),
                    None => lk.delete(hash, ik, ordered).map(drop),
                };
                if let Err(u) = r {
                    undo_err = Some(u);
                }
            }
            if let Some(u) = undo_err {
                // What is left of it can never be durable: reads under this lock must not
                // hand it out (with `commit` durability, `after_read` fails on the poison),
                // and reads already waiting for a flush must learn that none will come.
                lk.set_logged(u64::MAX);
                self.set_poison(format!(
                    "a batch failed ({e}) and could not be undone ({u}); it is not logged, so \
                     a reopen drops it"
                ));
            }
            taken.rev = None;
            self.skip_revision(ks, rev);
            return Err(e);
        }
        // Keys created and removed.
        for (orig, fin) in before.values() {
            match (orig.is_some(), fin.is_some()) {
                (false, true) => ks.keys.fetch_add(1, Relaxed),
                (true, false) => ks.keys.fetch_sub(1, Relaxed),
                _ => 0,
            };
        }
        // A load that runs now must not bring back what this batch deleted (read after the
        // revision was taken: a batch above the load's revision sees the load's flag).
        if ks.loading.load(Acquire) {
            let deleted = before
                .iter()
                .filter(|(_, (orig, fin))| orig.is_some() && fin.is_none());
            ks.load_deletes.note(deleted.map(|(ik, _)| *ik), rev);
        }
        let mut events = Vec::with_capacity(effects.len());
        for (ik, meta, value) in &effects {
            let key = ik[KEY_PREFIX..].to_vec();
            events.push(match (meta, value) {
                (Some(m), Some(v)) => Event {
                    kind: EventKind::Put,
                    key,
                    value: (*v).clone(),
                    mod_revision: rev,
                    create_revision: if m.create == 0 { rev } else { m.create },
                    version: m.version,
                },
                _ => Event {
                    kind: EventKind::Delete,
                    key,
                    value: Vec::new(),
                    mod_revision: rev,
                    create_revision: 0,
                    version: 0,
                },
            });
        }
        let lsn = match &self.wal {
            Some(wal) => {
                start_batch(ks.id, rev, &mut scratch);
                for e in &events {
                    match e.kind {
                        EventKind::Put => {
                            push_put(&mut scratch, &e.key, e.create_revision, e.version, &e.value)
                        }
                        EventKind::Delete => push_delete(&mut scratch, &e.key),
                    }
                }
                finish_batch(&mut scratch, events.len() as u32);
                let lsn = wal.append(&scratch);
                lk.set_logged(lsn);
                lsn
            }
            None => 0,
        };
        ks.changelog.insert(rev, Change { events, lsn });
        taken.rev = None;
        Ok(Some((rev, lsn)))
    }

    /// The one-key put of [`Keyspace::put`]: what `commit_locked` does for a batch of one
    /// put, without its per-batch maps and copies. One index probe finds the old version,
    /// whose revisions become the new one's head in place ([`Locked::put_over`]); the change
    /// is encoded straight from the borrowed key and value. Returns the revision and the log
    /// LSN to wait for.
    fn put_locked(
        &self,
        ks: &KsInfo,
        lk: &mut Locked<'_>,
        ik: &[u8],
        hash: u64,
        value: &[u8],
    ) -> Result<(u64, u64)> {
        thread_local! {
            static ENC: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        self.writable()?;
        let mut head = [0u8; META];
        let mut meta = None;
        let mut taken = Taken {
            inner: self,
            ks,
            rev: None,
        };
        let put = lk.put_over(hash, ik, value, ks.opts.ordered, &mut head, |old, head| {
            let old = old.map(|b| Meta::decode(b).0);
            let rev = ks.rev.fetch_add(1, AcqRel) + 1;
            taken.rev = Some(rev);
            let m = Meta {
                create: old.map_or(rev, |o| o.create),
                modified: rev,
                version: old.map_or(1, |o| o.version + 1),
            };
            m.encode_head(head);
            meta = Some(m);
        });
        let existed = match put {
            Ok(existed) => existed,
            Err(e) => {
                // `put_over` fails only before it takes a revision; should that ever change,
                // the revision is filled with an empty change so later ones still arrive.
                if let Some(m) = meta {
                    taken.rev = None;
                    self.skip_revision(ks, m.modified);
                }
                return Err(e);
            }
        };
        let m = meta.expect("put_over makes the head when it succeeds");
        if !existed {
            ks.keys.fetch_add(1, Relaxed);
        }
        let rev = m.modified;
        let key = &ik[KEY_PREFIX..];
        ENC.with(|b| {
            let enc = &mut *b.borrow_mut();
            let lsn = match &self.wal {
                Some(wal) => {
                    start_batch(ks.id, rev, enc);
                    push_put(enc, key, m.create, m.version, value);
                    finish_batch(enc, 1);
                    let lsn = wal.append(enc);
                    lk.set_logged(lsn);
                    lsn
                }
                None => 0,
            };
            enc.clear();
            crate::changelog::encode_event(EventKind::Put, key, value, m.create, m.version, enc);
            ks.changelog.insert_encoded(rev, lsn, enc);
            taken.rev = None;
            Ok((rev, lsn))
        })
    }

    /// After a read under a partition lock (the lock is released): with durability `commit`,
    /// wait until the log is durable up to `seen`, the end of the partition's last logged
    /// batch when the lock was held, so that the read never answers with a batch a crash
    /// could still undo. Usually nothing is waiting and this is one atomic load; otherwise
    /// it shares the flush that the batch's own committer is waiting for. With `periodic`
    /// durability a commit is acknowledged before it is durable, and a read is not held to
    /// more than that.
    fn after_read(&self, seen: u64) -> Result<()> {
        if self.read_durable(seen) {
            return Ok(());
        }
        let wal = self.wal.as_ref().expect("a read waits only with a log");
        wal.sync_to(seen)
            .map_err(|e| Error::NotDurable(e.to_string()))
    }

    /// `after_read` for an async task: ready once the log is durable up to `seen`, without
    /// a thread waiting (see `Wal::poll_durable`).
    fn poll_read_durable(
        &self,
        seen: u64,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<()>> {
        if self.read_durable(seen) {
            return std::task::Poll::Ready(Ok(()));
        }
        let wal = self.wal.as_ref().expect("a read waits only with a log");
        wal.poll_durable(seen, cx)
            .map_err(|e| Error::NotDurable(e.to_string()))
    }

    /// Whether a read that saw up to log position `seen` may answer now (`after_read` would
    /// not wait): one atomic load.
    fn read_durable(&self, seen: u64) -> bool {
        match &self.wal {
            Some(wal) => self.durability != Durability::Commit || wal.durable() >= seen,
            None => true,
        }
    }

    /// After the partition lock is released: wait for durability as the mode says.
    fn after_commit(&self, lsn: u64) -> Result<()> {
        let Some(wal) = &self.wal else {
            return Ok(());
        };
        match self.durability {
            Durability::Commit => wal.sync_to(lsn),
            // Bound the buffer: a writer that outruns the flusher flushes itself.
            _ if wal.buffered() > self.wal_buffer_cap => wal.sync_to(lsn),
            _ => Ok(()),
        }
    }
}

/// A revision a write has taken and not yet put in the change log. Should the write unwind
/// before it does (a panic under the partition lock: a bug), the drop poisons the database
/// (the partition may hold part of the write; a reopen drops what the log does not hold)
/// and fills the revision with an empty change: without it every later revision of the
/// keyspace would wait behind the gap, and its watchers with them, for good.
struct Taken<'a> {
    inner: &'a Inner,
    ks: &'a KsInfo,
    rev: Option<u64>,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        let Some(rev) = self.rev.filter(|_| std::thread::panicking()) else {
            return;
        };
        self.inner.set_poison(format!(
            "a write to keyspace {:?} panicked after taking revision {rev}; reopen the database",
            self.ks.name
        ));
        self.ks.changelog.insert_empty(rev);
    }
}

/// A touched key's stored value before a batch (for undo), and its revisions as the batch
/// goes on.
type Before = (Option<Vec<u8>>, Option<Meta>);
/// One write's effect: the stored key, and for a put its new revisions and value.
type Effect<'a> = (&'a [u8], Option<Meta>, Option<&'a Vec<u8>>);

/// A handle on one keyspace. Cheap to clone. It keeps the database open: the files stay
/// locked, and with durability `periodic` the last flush happens, when the last handle (this
/// or the [`Db`]) is dropped. After the `Db` is dropped its background threads are stopped,
/// so drop keyspace handles with it.
#[derive(Clone)]
pub struct Keyspace {
    inner: Arc<Inner>,
    ks: Arc<KsInfo>,
}

/// What a read under a partition lock saw, as a position in the write-ahead log: with
/// [`Durability::Commit`] its answer must not be handed out before that position is durable
/// ([`Keyspace::is_durable`], [`Keyspace::wait_durable`]). From [`Keyspace::read_deferred`].
/// `Seen::default()` rests on nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[must_use = "the answer of the read must wait until what it saw is durable"]
pub struct Seen(u64);

impl std::fmt::Debug for Keyspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyspace")
            .field("name", &self.ks.name)
            .field("id", &self.ks.id)
            .field("opts", &self.ks.opts)
            .finish()
    }
}

/// Reads and writes inside one partition, under its lock, committed at one revision when
/// the closure given to [`Keyspace::atomic`] returns. Reads see the state before this
/// transaction's own writes.
pub struct Tx<'a> {
    inner: &'a Inner,
    ks: &'a KsInfo,
    part: usize,
    lk: Locked<'a>,
    writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("partition", &self.part)
            .field("writes", &self.writes.len())
            .finish_non_exhaustive()
    }
}

impl Tx<'_> {
    fn own(&self, key: &[u8]) -> Result<(Vec<u8>, u64)> {
        self.inner.check_key(key)?;
        let ik = ikey(self.ks, key);
        let hash = self.check_partition(key, &ik)?;
        Ok((ik, hash))
    }

    /// The hash of `ik` (`key` as stored), or `CrossPartition` if it is not in this
    /// transaction's partition.
    fn check_partition(&self, key: &[u8], ik: &[u8]) -> Result<u64> {
        let hash = hash_key(ik);
        let got = self.inner.partition_for(self.ks, ik, hash);
        if got != self.part {
            return Err(Error::CrossPartition {
                key: String::from_utf8_lossy(key).into_owned(),
                want: self.part,
                got,
            });
        }
        Ok(hash)
    }

    /// The entry of `key` (which must be in this partition), as before this transaction.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Entry>> {
        let (ik, hash) = self.own(key)?;
        match self.lk.get(hash, &ik, &mut self.scratch)? {
            Some(tier) => self.inner.reads.count(tier),
            None => return Ok(None),
        }
        let (m, v) = Meta::decode(&self.scratch);
        Ok(Some(Entry {
            key: key.to_vec(),
            value: v.to_vec(),
            create_revision: m.create,
            mod_revision: m.modified,
            version: m.version,
        }))
    }

    /// Entries of an ordered keyspace in `range` within this partition.
    pub fn range(&mut self, range: &Range) -> Result<Vec<Entry>> {
        require_ordered(self.ks)?;
        let (lo, hi) = stored_bounds(self.ks, range);
        let limit = if range.limit == 0 {
            usize::MAX
        } else {
            range.limit
        };
        let (mut buf, mut spans) = (Vec::new(), Vec::new());
        self.lk.ordered_keys(
            as_ref(&lo),
            as_ref(&hi),
            range.reverse,
            limit,
            0,
            &mut buf,
            &mut spans,
        );
        let keys: Vec<&[u8]> = spans
            .iter()
            .map(|&(_, s, l)| &buf[s..s + l as usize])
            .collect();
        let mut out = Vec::with_capacity(keys.len());
        let (d, f) = self
            .lk
            .get_many(&keys, |_, k, v| out.push(entry_of(k, v)))?;
        self.inner.reads.count_n(d, f);
        Ok(out)
    }

    /// Call `f` with the value of `key` (which must be in this partition), as before this
    /// transaction, without copying it out; `None` if the key is absent. `f` reads the
    /// record where it is stored, under the partition's lock; for a far record that is the
    /// mapped file, so a media error while `f` reads it turns the call into
    /// [`Error::Corrupt`] after `f` saw zeroes (as with [`Tx::get_many`]): `f` should only
    /// read, and not read far records itself.
    pub fn read<R>(&mut self, key: &[u8], f: impl FnOnce(&[u8]) -> R) -> Result<Option<R>> {
        let (ik, hash) = self.own(key)?;
        // Under the lock the record cannot be reclaimed, so `f` reads it where it is.
        match self.lk.read_with(hash, &ik, |v| f(&v[META..]))? {
            Some((r, tier)) => {
                self.inner.reads.count(tier);
                Ok(Some(r))
            }
            None => Ok(None),
        }
    }

    /// The values of `keys` (each in this partition, and each present: a missing one is
    /// [`Error::Corrupt`]), as before this transaction, with their memory loads overlapped;
    /// `f(i, value)` for each, in order.
    pub fn get_many(&mut self, keys: &[&[u8]], mut f: impl FnMut(usize, &[u8])) -> Result<()> {
        // The stored keys side by side in one buffer (a listing reads hundreds).
        let total: usize = keys.iter().map(|k| KEY_PREFIX + k.len()).sum();
        let mut flat = Vec::with_capacity(total);
        let mut hashes = Vec::with_capacity(keys.len());
        // With partitioning by prefix, keys that share the prefix of one already checked
        // (all of a listing's) are in this partition too: one prefix hash, not one each.
        let prefix = match self.ks.opts.partition_by {
            PartitionBy::Prefix(p) => Some(KEY_PREFIX + p as usize),
            PartitionBy::Key => None,
        };
        let mut checked: Option<Vec<u8>> = None;
        for k in keys {
            self.inner.check_key(k)?;
            let start = flat.len();
            push_ikey(self.ks, k, &mut flat);
            let ik = &flat[start..];
            let same = match (prefix, &checked) {
                (Some(p), Some(c)) => ik.len() >= p && ik[..p] == c[..],
                _ => false,
            };
            if same {
                hashes.push(hash_key(ik));
            } else {
                hashes.push(self.check_partition(k, ik)?);
                if let Some(p) = prefix.filter(|&p| ik.len() >= p) {
                    checked = Some(ik[..p].to_vec());
                }
            }
        }
        let mut refs: Vec<&[u8]> = Vec::with_capacity(keys.len());
        let mut rest = flat.as_slice();
        for k in keys {
            let (ik, tail) = rest.split_at(KEY_PREFIX + k.len());
            refs.push(ik);
            rest = tail;
        }
        let (d, f_) = self
            .lk
            .get_many_hashed(&refs, &hashes, |i, _, v| f(i, &v[META..]))?;
        self.inner.reads.count_n(d, f_);
        Ok(())
    }

    /// Set `key` to `value` when the transaction commits.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.inner.check_value(value)?;
        let (ik, _) = self.own(key)?;
        self.writes.push((ik, Some(value.to_vec())));
        Ok(())
    }

    /// Delete `key` when the transaction commits.
    pub fn delete(&mut self, key: &[u8]) -> Result<()> {
        let (ik, _) = self.own(key)?;
        self.writes.push((ik, None));
        Ok(())
    }

    /// The keyspace's current revision.
    pub fn revision(&self) -> u64 {
        self.ks.rev.load(Acquire)
    }
}

fn require_ordered(ks: &KsInfo) -> Result<()> {
    if ks.opts.ordered {
        Ok(())
    } else {
        Err(Error::Keyspace {
            name: ks.name.clone(),
            reason: "range scans and counts need an ordered keyspace (KeyspaceOptions::ordered)"
                .into(),
        })
    }
}

fn as_ref(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(v) => Bound::Included(v.as_slice()),
        Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// The stored-key bounds of a user range (the end of the keyspace if it has no end).
fn stored_bounds(ks: &KsInfo, r: &Range) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let lo = Bound::Included(ikey(ks, &r.start));
    let hi = match &r.end {
        Some(e) => Bound::Excluded(ikey(ks, e)),
        None => match ks.id.checked_add(1) {
            Some(next) => Bound::Excluded(next.to_be_bytes().to_vec()),
            None => Bound::Unbounded,
        },
    };
    (lo, hi)
}

fn entry_of(stored_key: &[u8], stored: &[u8]) -> Entry {
    let (m, v) = Meta::decode(stored);
    Entry {
        key: stored_key[KEY_PREFIX..].to_vec(),
        value: v.to_vec(),
        create_revision: m.create,
        mod_revision: m.modified,
        version: m.version,
    }
}

impl Keyspace {
    /// The largest value a put accepts (the configuration's `max_value_bytes`).
    pub fn max_value_bytes(&self) -> usize {
        self.inner.max_value
    }

    /// The keyspace's name.
    pub fn name(&self) -> &str {
        &self.ks.name
    }

    /// The options it was created with.
    pub fn options(&self) -> KeyspaceOptions {
        self.ks.opts
    }

    /// The revision of the last committed batch.
    pub fn revision(&self) -> u64 {
        self.ks.rev.load(Acquire)
    }

    /// [`Keyspace::revision`] made durable: every batch up to the returned revision is in the
    /// log on disk (or a failed one's empty frame is), so a reopen after a crash continues
    /// above it and never hands it out again. A client that keeps a revision as a change
    /// cursor should take it from here. It waits for batches committing at the moment (it
    /// takes each partition's lock once: a batch takes its revision and appends its frame
    /// under its partition's lock) and for one log flush, shared with concurrent committers;
    /// without a log (durability `none`) it is the revision.
    pub fn durable_revision(&self) -> Result<u64> {
        let rev = self.revision();
        if let Some(wal) = self.inner.wal() {
            for p in self.inner.parts() {
                drop(p.lock());
            }
            wal.sync_to(wal.end())?;
        }
        Ok(rev)
    }

    /// Keys in the keyspace.
    pub fn len(&self) -> u64 {
        self.ks.keys.load(Relaxed).max(0) as u64
    }

    /// Whether the keyspace has no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entry of `key`, or `None`. Lock-free, so it can return a batch still waiting for
    /// its log flush (which a crash would undo); a read in [`Keyspace::atomic`] waits for
    /// what it saw to be durable (with [`Durability::Commit`]).
    pub fn get(&self, key: &[u8]) -> Result<Option<Entry>> {
        let mut value = Vec::new();
        let mut head = [0; META];
        if !self
            .inner
            .read_stored(&self.ks, key, &mut value, &mut head)?
        {
            return Ok(None);
        }
        let (m, _) = Meta::decode(&head);
        Ok(Some(Entry {
            key: key.to_vec(),
            value,
            create_revision: m.create,
            mod_revision: m.modified,
            version: m.version,
        }))
    }

    /// Copy the value of `key` into `out`; returns whether it exists. Lock-free.
    #[inline]
    pub fn get_into(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool> {
        self.inner.read_stored(&self.ks, key, out, &mut [0; META])
    }

    /// The partition of `key`.
    pub fn partition_of(&self, key: &[u8]) -> usize {
        let ik = ikey(&self.ks, key);
        self.inner.partition_for(&self.ks, &ik, hash_key(&ik))
    }

    /// Run `f` under the lock of the partition of `partition_key`; its writes commit at one
    /// revision, all or nothing, when it returns `Ok` (and are dropped when it returns an
    /// error). Returns `f`'s result and the revision, or `None` if nothing changed. `f` must
    /// not call back into the database.
    ///
    /// With [`Durability::Commit`] nothing returns before it is durable: a batch waits for its
    /// flush, and a call that commits nothing (a read, a batch that changes nothing, `f`'s
    /// error) waits until every batch of the partition it could have seen is durable, so
    /// that its answer never rests on a write a crash would undo (usually nothing is
    /// waiting). If the log fails meanwhile, such a call gets [`Error::NotDurable`].
    pub fn atomic<R>(
        &self,
        partition_key: &[u8],
        f: impl FnOnce(&mut Tx<'_>) -> Result<R>,
    ) -> Result<(R, Option<u64>)> {
        let inner = &*self.inner;
        let mut tx = self.begin(partition_key);
        let r = f(&mut tx);
        let committed = match &r {
            Ok(_) if !tx.writes.is_empty() => {
                let writes = std::mem::take(&mut tx.writes);
                inner.commit_locked(&self.ks, &mut tx.lk, &writes)?
            }
            _ => None,
        };
        let seen = tx.lk.logged();
        drop(tx);
        match committed {
            Some((rev, lsn)) => {
                inner.after_commit(lsn)?;
                Ok((r?, Some(rev)))
            }
            // A read, a batch that changed nothing, or `f`'s error: its answer rests on the
            // state it saw, which must be durable before anyone hears of it.
            None => {
                inner.after_read(seen)?;
                Ok((r?, None))
            }
        }
    }

    /// A transaction under the lock of the partition of `partition_key`.
    fn begin(&self, partition_key: &[u8]) -> Tx<'_> {
        self.begin_with(partition_key, Partition::lock)
    }

    /// A transaction under `lock` of the partition of `partition_key` (exclusive, or shared
    /// for reads that change nothing).
    fn begin_with<'a>(
        &'a self,
        partition_key: &[u8],
        lock: impl FnOnce(&'a Partition) -> Locked<'a>,
    ) -> Tx<'a> {
        let inner = &*self.inner;
        let ik = ikey(&self.ks, partition_key);
        let part = inner.partition_for(&self.ks, &ik, hash_key(&ik));
        Tx {
            inner,
            ks: &self.ks,
            part,
            lk: lock(&inner.parts[part]),
            writes: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// [`Keyspace::atomic`] for a read that must not block on the log (an async server's
    /// runtime thread): `f` runs under the partition's lock and may not write (a write is
    /// refused), and its result comes back at once with what it [`Seen`]. Before handing the
    /// result out, the caller checks [`Keyspace::is_durable`] and, if it is not,
    /// [`Keyspace::wait_durable`]s (off the runtime); the result of `f`'s error too, which
    /// also rests on what it read.
    pub fn read_deferred<R>(
        &self,
        partition_key: &[u8],
        f: impl FnOnce(&mut Tx<'_>) -> Result<R>,
    ) -> (Result<R>, Seen) {
        // Shared: it cannot write, so the partition's other readers need not wait for it.
        let mut tx = self.begin_with(partition_key, Partition::lock_shared);
        let mut r = f(&mut tx);
        if r.is_ok() && !tx.writes.is_empty() {
            r = Err(Error::Keyspace {
                name: self.ks.name.clone(),
                reason: "read_deferred does not write (its writes are dropped): use atomic".into(),
            });
        }
        let seen = Seen(tx.lk.logged());
        (r, seen)
    }

    /// Whether a read's answer that rests on `seen` may be handed out now: one atomic load.
    pub fn is_durable(&self, seen: Seen) -> bool {
        self.inner.read_durable(seen.0)
    }

    /// Wait until what a read saw is durable (with [`Durability::Commit`]; at once
    /// otherwise), sharing the log flush its writers wait for. [`Error::NotDurable`] if the
    /// log failed first: the answer must then not be given.
    pub fn wait_durable(&self, seen: Seen) -> Result<()> {
        self.inner.after_read(seen.0)
    }

    /// [`Keyspace::wait_durable`] for an async task: no thread waits; the flush that makes
    /// `seen` durable (the one its writers wait for) wakes the task. Works with any
    /// executor.
    pub fn durable(&self, seen: Seen) -> impl std::future::Future<Output = Result<()>> + '_ {
        std::future::poll_fn(move |cx| self.inner.poll_read_durable(seen.0, cx))
    }

    /// Set `key` to `value`; returns the revision.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<u64> {
        let inner = &*self.inner;
        inner.check_key(key)?;
        inner.check_value(value)?;
        // The stored key on the stack when it is short (it is, but for huge max_key_bytes).
        let mut stack = [0u8; 256];
        let heap;
        let ik: &[u8] = if KEY_PREFIX + key.len() <= stack.len() {
            stack[..KEY_PREFIX].copy_from_slice(&self.ks.id.to_be_bytes());
            stack[KEY_PREFIX..KEY_PREFIX + key.len()].copy_from_slice(key);
            &stack[..KEY_PREFIX + key.len()]
        } else {
            heap = ikey(&self.ks, key);
            &heap
        };
        let hash = hash_key(ik);
        let part = inner.partition_for(&self.ks, ik, hash);
        inner.parts[part].prefetch_for_write(hash);
        let mut lk = inner.parts[part].lock();
        let (rev, lsn) = inner.put_locked(&self.ks, &mut lk, ik, hash, value)?;
        drop(lk);
        inner.after_commit(lsn)?;
        Ok(rev)
    }

    /// Delete `key`; returns the revision, or `None` if it did not exist.
    pub fn delete(&self, key: &[u8]) -> Result<Option<u64>> {
        Ok(self.atomic(key, |tx| tx.delete(key))?.1)
    }

    /// Apply a batch, all or nothing, at one revision. Its keys must share a partition.
    /// Returns the revision, or `None` if it changed nothing.
    pub fn write(&self, batch: &Batch) -> Result<Option<u64>> {
        let Some(first) = batch.ops.first() else {
            return Ok(None);
        };
        Ok(self
            .atomic(first.key(), |tx| {
                for op in &batch.ops {
                    match op {
                        Op::Put { key, value } => tx.put(key, value)?,
                        Op::Delete { key } => tx.delete(key)?,
                    }
                }
                Ok(())
            })?
            .1)
    }

    /// A conditional batch (etcd `Txn`): all compares and writes must share a partition.
    pub fn txn(&self, txn: &Txn) -> Result<TxnResult> {
        let first = txn
            .compares
            .first()
            .map(|c| c.key.as_slice())
            .or_else(|| txn.success.first().map(Op::key))
            .or_else(|| txn.failure.first().map(Op::key));
        let Some(first) = first else {
            return Ok(TxnResult {
                succeeded: true,
                revision: self.revision(),
            });
        };
        let (succeeded, rev) = self.atomic(first, |tx| {
            let mut ok = true;
            for c in &txn.compares {
                let cur = tx.get(&c.key)?;
                let m = cur.as_ref().map(|e| {
                    (
                        Meta {
                            create: e.create_revision,
                            modified: e.mod_revision,
                            version: e.version,
                        },
                        e.value.as_slice(),
                    )
                });
                if !c.holds(m.as_ref().map(|(m, v)| (m, *v))) {
                    ok = false;
                    break;
                }
            }
            for op in if ok { &txn.success } else { &txn.failure } {
                match op {
                    Op::Put { key, value } => tx.put(key, value)?,
                    Op::Delete { key } => tx.delete(key)?,
                }
            }
            Ok(ok)
        })?;
        Ok(TxnResult {
            succeeded,
            revision: rev.unwrap_or_else(|| self.revision()),
        })
    }

    /// The partitions a range can touch: one if it stays within one partition key.
    fn range_parts(&self, r: &Range) -> Vec<usize> {
        if let PartitionBy::Prefix(n) = self.ks.opts.partition_by {
            let n = n as usize;
            if r.start.len() >= n {
                let pk = &r.start[..n];
                let within = match (&r.end, prefix_end(pk)) {
                    (Some(e), Some(pe)) => e.as_slice() <= pe.as_slice(),
                    (_, None) => true,
                    (None, Some(_)) => false,
                };
                if within {
                    return vec![self.partition_of(pk)];
                }
            }
        }
        (0..self.inner.parts.len()).collect()
    }

    /// Entries of an ordered keyspace in `range`, in key order (or reverse), up to its limit.
    /// Each partition is read under its lock, so a batch is seen whole or not at all; with
    /// [`Durability::Commit`] it returns once every batch it could have seen is durable (as
    /// [`Keyspace::atomic`] does).
    pub fn range(&self, range: &Range) -> Result<RangeResult> {
        require_ordered(&self.ks)?;
        let (lo, hi) = stored_bounds(&self.ks, range);
        // One more than the limit, to tell whether there is more.
        let want = if range.limit == 0 {
            usize::MAX
        } else {
            range.limit.saturating_add(1)
        };
        let parts = self.range_parts(range);
        let revision = self.revision();
        // Lock every partition the range touches (in ascending order, the only order in
        // which anyone holds two), so that the result is one consistent state. Take the keys
        // first, merge, and read values only for the keys that make the cut.
        let mut locks: Vec<Locked<'_>> =
            parts.iter().map(|&p| self.inner.parts[p].lock()).collect();
        let (mut buf, mut spans) = (Vec::new(), Vec::new());
        for (i, lk) in locks.iter().enumerate() {
            lk.ordered_keys(
                as_ref(&lo),
                as_ref(&hi),
                range.reverse,
                want,
                i as u32,
                &mut buf,
                &mut spans,
            );
        }
        let key = |s: &(u32, usize, u32)| &buf[s.1..s.1 + s.2 as usize];
        if locks.len() > 1 {
            if range.reverse {
                spans.sort_unstable_by(|a, b| key(b).cmp(key(a)));
            } else {
                spans.sort_unstable_by(|a, b| key(a).cmp(key(b)));
            }
        }
        let more = range.limit != 0 && spans.len() > range.limit;
        if more {
            spans.truncate(range.limit);
        }
        let mut out: Vec<Option<Entry>> = vec![None; spans.len()];
        for (li, lk) in locks.iter_mut().enumerate() {
            let idx: Vec<usize> = (0..spans.len())
                .filter(|&j| spans[j].0 == li as u32)
                .collect();
            if idx.is_empty() {
                continue;
            }
            let keys: Vec<&[u8]> = idx.iter().map(|&j| key(&spans[j])).collect();
            let (d, f) = lk.get_many(&keys, |n, k, v| out[idx[n]] = Some(entry_of(k, v)))?;
            self.inner.reads.count_n(d, f);
        }
        let seen = locks.iter().map(Locked::logged).max().unwrap_or(0);
        drop(locks);
        self.inner.after_read(seen)?;
        Ok(RangeResult {
            entries: out
                .into_iter()
                .map(|e| e.expect("every key read"))
                .collect(),
            more,
            revision,
        })
    }

    /// Keys of an ordered keyspace in `range` (its limit and direction are ignored).
    pub fn count(&self, range: &Range) -> Result<u64> {
        require_ordered(&self.ks)?;
        let (lo, hi) = stored_bounds(&self.ks, range);
        self.range_parts(range)
            .into_iter()
            .map(|p| {
                let lk = self.inner.parts[p].lock();
                let n = lk.count(as_ref(&lo), as_ref(&hi)) as u64;
                let seen = lk.logged();
                drop(lk);
                self.inner.after_read(seen).map(|()| n)
            })
            .sum::<Result<u64>>()
    }

    /// Watch the changes to keys in `start..end` (`end` `None`: no upper bound) made after
    /// revision `after`: each once, in revision order, deletes included. Fails with
    /// [`Error::Compacted`] if the change log no longer holds them.
    pub fn watch(&self, start: &[u8], end: Option<&[u8]>, after: u64) -> Result<Watcher> {
        Watcher::new(
            self.ks.changelog.clone(),
            self.inner.visible.clone(),
            self.inner.bell.clone(),
            Bound::Included(start.to_vec()),
            end.map_or(Bound::Unbounded, |e| Bound::Excluded(e.to_vec())),
            after,
        )
    }

    /// The oldest revision a watch can start after.
    pub fn oldest_watchable(&self) -> u64 {
        self.ks.changelog.oldest()
    }

    /// Load sorted records fast: one revision for the whole load, records grouped by
    /// partition and inserted under one lock hold per group, in parallel (one thread per
    /// CPU), logged in large frames. The keyspace must be empty when the load starts, and one
    /// load runs into it at a time (another is refused while it runs); a key put by someone
    /// else while the load runs is kept and the loaded record skipped, and so is a key put
    /// and then deleted (it stays gone, as its delete came after the load's revision; the
    /// keys deleted while a load runs are held on the heap until it ends). Input that is not
    /// strictly ascending stops the load with [`Error::Unsorted`] after the records before it
    /// are loaded. Watchers from before the load get [`Error::Compacted`]: they must read the
    /// keyspace again. The input is staged a chunk at a time (64K records or 64 MiB,
    /// whichever comes first), on the heap, outside the DRAM budget.
    pub fn bulk_load<K, V>(&self, records: impl IntoIterator<Item = (K, V)>) -> Result<BulkLoadInfo>
    where
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        crate::bulk::bulk_load(&self.inner, &self.ks, records)
    }

    /// Visit every entry of the keyspace, in parallel: one thread per CPU, pinned to its NUMA
    /// node, each scanning partitions of that node. `init` makes each thread's accumulator
    /// and `f` folds an entry (key, value, mod revision) into it; the accumulators are
    /// returned. Each partition is scanned under its lock (writers to it wait), so a batch is
    /// seen whole or not at all; entries come in no particular order. `f` runs under that
    /// lock: it must not call back into the database (a write, a read, a checkpoint would
    /// wait for the lock it holds). A panic in `f` is raised again in the caller, with its
    /// own payload, once the other threads have finished.
    pub fn scan_parallel<A: Send>(
        &self,
        init: impl Fn() -> A + Sync,
        f: impl Fn(&mut A, &[u8], &[u8], u64) + Sync,
    ) -> Result<(Vec<A>, ScanInfo)> {
        crate::bulk::scan_parallel(&self.inner, &self.ks, init, f)
    }
}
fn add(t: &mut TierStats, l: crate::partition::Live) {
    t.records += l.records;
    t.bytes += l.bytes;
}

#[cfg(test)]
impl Db {
    /// The engine's shared state, for the unit tests of the crate's other modules.
    pub(crate) fn inner_for_tests(&self) -> &Inner {
        &self.inner
    }
}

#[cfg(all(test, not(tera_loom)))]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A write that unwinds after taking its revision (a panic under the partition lock)
    /// poisons the database and fills the revision, so that a watcher is not held at the
    /// gap for good: it reads the revisions after it, then learns of the poison.
    #[test]
    fn a_write_that_panics_after_taking_its_revision_does_not_stall_watchers() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::new(dir.path());
        c.dram_budget_bytes = 16 << 20;
        c.partitions = 1;
        let db = Db::open(c).unwrap();
        let ks = db.keyspace("k", KeyspaceOptions::hash()).unwrap();
        let before = ks.revision();
        // A watcher of another keyspace, waiting when the database is poisoned, is woken
        // with it (nothing else rings the bell: the poisoned keyspace has no watcher yet,
        // and no write of the other comes).
        let other = db.keyspace("other", KeyspaceOptions::hash()).unwrap();
        let mut w2 = other.watch(b"", None, other.revision()).unwrap();
        let waiting = std::thread::spawn(move || {
            let t = Instant::now();
            (w2.next(Duration::from_secs(60), 10), t.elapsed())
        });
        std::thread::sleep(Duration::from_millis(200));
        let inner = db.inner_for_tests();
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _taken = Taken {
                inner,
                ks: &ks.ks,
                rev: Some(ks.ks.rev.fetch_add(1, AcqRel) + 1),
            };
            panic!("a bug under the partition lock");
        }));
        assert!(unwound.is_err());
        assert!(db.poisoned().unwrap().contains("panicked"));
        let (r, took) = waiting.join().unwrap();
        assert!(matches!(r, Err(Error::Poisoned(_))), "{r:?}");
        assert!(
            took < Duration::from_secs(30),
            "the other keyspace's watcher took {took:?}"
        );
        let mut w = ks.watch(b"", None, before).unwrap();
        // A revision taken after the gap, filled the way a failed write fills its own.
        let after = ks.ks.rev.fetch_add(1, AcqRel) + 1;
        ks.ks.changelog.insert_encoded(after, 0, &{
            let mut e = Vec::new();
            crate::changelog::encode_event(EventKind::Put, b"x", b"1", after, 1, &mut e);
            e
        });
        let got = w.next(Duration::from_secs(30), 10).unwrap();
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(
            (got[0].key.as_slice(), got[0].mod_revision),
            (&b"x"[..], after)
        );
        let started = Instant::now();
        assert!(matches!(
            w.next(Duration::from_secs(30), 10),
            Err(Error::Poisoned(_))
        ));
        assert!(started.elapsed() < Duration::from_secs(10), "it waited");
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        *self.inner.stop.lock() = true;
        self.inner.wake.notify_all();
        for h in self.maintenance.drain(..) {
            if h.join().is_err() {
                tracing::error!("a maintenance thread panicked");
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone. With durability `periodic`, commits since the last
        // interval are made durable now.
        if let Some(w) = &self.wal {
            if self.poison.get().is_none() {
                if let Err(e) = w.sync_to(w.end()) {
                    tracing::error!(error = %e, "the log could not be flushed at close");
                }
            }
        }
    }
}

/// The log's background work, in two threads so that a long checkpoint never delays the
/// flush of `periodic` durability: the flusher syncs every interval; the checkpointer writes
/// a checkpoint once the log has grown by `checkpoint_wal_bytes` since the last one.
fn spawn_durability(inner: Arc<Inner>) -> std::io::Result<Vec<JoinHandle<()>>> {
    let mut threads = Vec::new();
    if let Durability::Periodic(tick) = inner.durability {
        let inner = inner.clone();
        threads.push(
            std::thread::Builder::new()
                .name("tera-log".into())
                .spawn(move || {
                    while wait_or_stop(&inner, tick) {
                        if let Some(wal) = &inner.wal {
                            if inner.poison.get().is_none() {
                                // An error poisons the log and is reported to the next writer.
                                let _ = wal.sync_to(wal.end());
                            }
                        }
                    }
                })?,
        );
    }
    if inner.checkpoint_wal_bytes > 0 {
        threads.push(
            std::thread::Builder::new()
                .name("tera-ckpt".into())
                .spawn(move || {
                    // After a failure the next attempt waits twice as long as the last, up to
                    // a minute: a full disk is not written to (and logged) ten times a second.
                    let tick = Duration::from_millis(100);
                    let mut wait = tick;
                    while wait_or_stop(&inner, wait) {
                        let Some(wal) = &inner.wal else { return };
                        let since = wal.end() - inner.checkpoint_lsn.load(Acquire);
                        if inner.poison.get().is_some() || since < inner.checkpoint_wal_bytes {
                            // Nothing due (a checkpoint someone else took counts too).
                            wait = tick;
                            continue;
                        }
                        match crate::recovery::checkpoint(&inner) {
                            Ok(_) => wait = tick,
                            Err(e) => {
                                wait = (wait * 2).min(CHECKPOINT_RETRY_MAX);
                                tracing::error!(error = %e, retry_in_ms = wait.as_millis() as u64, "background checkpoint failed");
                            }
                        }
                    }
                })?,
        );
    }
    Ok(threads)
}

/// The longest a background checkpoint waits to try again after failures.
const CHECKPOINT_RETRY_MAX: Duration = Duration::from_secs(60);

/// Sleep for `tick` unless the database is closing; false once it is.
fn wait_or_stop(inner: &Inner, tick: Duration) -> bool {
    let mut stop = inner.stop.lock();
    if !*stop {
        inner.wake.wait_for(&mut stop, tick);
    }
    !*stop
}

fn spawn_maintenance(inner: Arc<Inner>, node: u32) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("tera-maint-n{node}"))
        .spawn(move || {
            if let Err(e) = tera_numa::pin_current_thread(&inner.topology, node) {
                tracing::debug!(node, error = %e, "maintenance thread not pinned");
            }
            // Failures are reported at most once a minute (a failing device fails every
            // step), each report saying how many were not.
            let mut reported: Option<std::time::Instant> = None;
            let mut unreported = 0u64;
            let mut rebalanced = std::time::Instant::now();
            loop {
                if rebalanced.elapsed() >= REBALANCE_EVERY {
                    // One thread at a time does it; the others find it busy and go on.
                    if let Err(e) = inner.rebalance() {
                        // A failing device fails writes too, which report it; not every
                        // 200 ms here.
                        tracing::debug!(error = %e, "moving DRAM shares between partitions failed");
                    }
                    rebalanced = std::time::Instant::now();
                }
                let mut worked = false;
                for p in inner.parts.iter().filter(|p| p.node == node) {
                    match p.compact_step() {
                        Ok(did) => worked |= did,
                        Err(e) => {
                            if reported.is_none_or(|t| t.elapsed() >= COMPACTION_REPORT_EVERY) {
                                tracing::error!(
                                    partition = p.id,
                                    error = %e,
                                    unreported,
                                    "compaction failed"
                                );
                                reported = Some(std::time::Instant::now());
                                unreported = 0;
                            } else {
                                unreported += 1;
                            }
                        }
                    }
                }
                let mut stop = inner.stop.lock();
                if *stop {
                    return;
                }
                if !worked {
                    // A periodic check, not a synchronisation: compaction work appears as
                    // segments fill, and the engine does not signal each change.
                    inner.wake.wait_for(&mut stop, Duration::from_millis(20));
                    if *stop {
                        return;
                    }
                }
            }
        })
}

/// Create the far directory if needed, check that it is writable, and lock it. Segment files
/// left there by an earlier run are refused without durability (the directory may be the
/// wrong one) and removed with it (the far tier is rebuilt from the checkpoint and the log).
fn prepare_far_dir(config: &Config, durable: bool) -> Result<std::fs::File> {
    let dir = &config.far_dir;
    let lock = lock_dir(dir)?;
    let err = |reason: String| Error::FarDir {
        path: dir.clone(),
        reason,
    };
    let entries = std::fs::read_dir(dir).map_err(|e| err(format!("cannot list it: {e}")))?;
    for entry in entries.flatten() {
        if let Some(name) = entry.file_name().to_str() {
            if crate::far::is_segment_name(name) {
                if durable {
                    config
                        .storage
                        .remove(&entry.path())
                        .map_err(io_err("remove stale segment", &entry.path()))?;
                    continue;
                }
                return Err(err(format!(
                    "it holds segment files ({name}, ...) from another run; with durability \
                     none the far tier is scratch space and is not recovered. Remove them or \
                     choose an empty directory"
                )));
            }
        }
    }
    Ok(lock)
}

/// A directory with durable files must be opened with durability.
fn refuse_durable_files(dir: &Path) -> Result<()> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if crate::wal::parse_wal_name(&name).is_some()
            || crate::durable::parse_ckpt_name(&name).is_some()
        {
            return Err(Error::Config(format!(
                "{} holds a durable database ({name}); open it with durability periodic or \
                 commit, or choose another directory",
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Create `dir` if needed and lock it for this database (an exclusive `flock` on
/// `.tera.lock`, held while the returned file is open) so that two databases never share it.
fn lock_dir(dir: &Path) -> Result<std::fs::File> {
    let err = |reason: String| Error::FarDir {
        path: dir.to_path_buf(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create it: {e}")))?;
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(".tera.lock"))
        .map_err(|e| err(format!("not writable: {e}")))?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&lock),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    } != 0
    {
        let e = std::io::Error::last_os_error();
        return Err(err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            "another open database is using it (its .tera.lock is held); close that one or \
             choose another directory"
                .to_string()
        } else {
            format!("cannot lock .tera.lock: {e}")
        }));
    }
    Ok(lock)
}
