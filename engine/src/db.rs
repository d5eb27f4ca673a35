//! [`Db`]: the partitions, their placement on NUMA nodes, the maintenance threads and the
//! public operations. A key goes to the partition picked by its hash; each partition's frames
//! and index are bound to its home node, and the maintenance thread of that node (pinned to
//! its CPUs) compacts it.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::hash::{hash_key, partition_of};
use crate::heat::{GhostAdmission, HeatPolicy};
use crate::partition::{Partition, Shared, Tier};
use crate::stats::{Stats, TierStats};
use crossbeam_utils::CachePadded;
use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
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

    fn totals(&self) -> (u64, u64) {
        self.stripes.iter().fold((0, 0), |(d, f), s| {
            (d + s[0].load(Relaxed), f + s[1].load(Relaxed))
        })
    }
}

struct Inner {
    parts: Vec<Partition>,
    budget: u64,
    policy: Arc<dyn HeatPolicy>,
    topology: Topology,
    reads: ReadCounters,
    stop: Mutex<bool>,
    wake: Condvar,
    /// Held for the database's life: the far directory's lock.
    _far_lock: std::fs::File,
}

/// A tiered record store. See the crate docs for an example.
pub struct Db {
    inner: Arc<Inner>,
    maintenance: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("partitions", &self.inner.parts.len())
            .field("dram_budget_bytes", &self.inner.budget)
            .field("policy", &self.inner.policy.name())
            .finish_non_exhaustive()
    }
}

impl Db {
    /// Open a database. The far directory is created if missing and must be writable.
    ///
    /// The far tier is scratch space in this version: segment files are removed when the
    /// database is dropped, and a directory that still holds segment files is refused rather
    /// than overwritten.
    pub fn open(config: Config) -> Result<Db> {
        config.validate().map_err(Error::Config)?;
        let far_lock = prepare_far_dir(&config)?;
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
        let left = budget.saturating_sub(policy.dram_bytes() as u64);
        let share = (left / n as u64) as usize;
        let shared = Arc::new(Shared {
            page_shift: config.page_bytes.trailing_zeros(),
            seg_shift: config.segment_bytes.trailing_zeros(),
            far_ns: config.far_latency_ns,
            max_key: config.max_key_bytes,
            max_value: config.max_value_bytes,
            far_dir: config.far_dir.clone(),
            storage: config.storage.clone(),
            policy: policy.clone(),
            compaction_ratio: config.compaction_live_ratio,
            huge_pages: config.huge_pages,
        });
        let per_part = config.expected_records.div_ceil(n);
        let per_part = per_part + per_part / 100;
        let parts = (0..n)
            .map(|i| Partition::open(i, nodes[i % nodes.len()], shared.clone(), share, per_part))
            .collect::<Result<Vec<_>>>()?;
        let inner = Arc::new(Inner {
            parts,
            budget,
            policy,
            topology,
            reads: ReadCounters::new(),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            _far_lock: far_lock,
        });
        let mut db = Db {
            inner,
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
        Ok(db)
    }

    #[inline]
    fn part(&self, hash: u64) -> &Partition {
        &self.inner.parts[partition_of(hash, self.inner.parts.len())]
    }

    /// The value of `key`, or `None`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut out = Vec::new();
        Ok(self.get_into(key, &mut out)?.then_some(out))
    }

    /// Copy the value of `key` into `out` (cleared first); returns whether the key exists.
    /// Reusing `out` across calls saves an allocation per read.
    #[inline]
    pub fn get_into(&self, key: &[u8], out: &mut Vec<u8>) -> Result<bool> {
        let hash = hash_key(key);
        match self.part(hash).read(hash, key, out)? {
            Some(found) => {
                self.inner.reads.count(found.tier);
                Ok(true)
            }
            None => {
                out.clear();
                Ok(false)
            }
        }
    }

    /// Set `key` to `value`. Keys up to `max_key_bytes` (64 KiB), values up to
    /// `max_value_bytes` (1 MiB by default); larger ones are refused.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let hash = hash_key(key);
        self.part(hash).put(hash, key, value)
    }

    /// Remove `key`; returns whether it existed.
    pub fn delete(&self, key: &[u8]) -> Result<bool> {
        let hash = hash_key(key);
        self.part(hash).delete(hash, key)
    }

    /// Read-modify-write, atomic with respect to every other write of the key: `f` receives
    /// the current value (or `None`) and returns the new value (or `None` to delete). `f` runs
    /// under the lock of the key's partition: it must be short and must not call back into
    /// this database (that would deadlock on the partition lock).
    pub fn update(
        &self,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> Option<Vec<u8>>,
    ) -> Result<()> {
        let hash = hash_key(key);
        let mut scratch = Vec::new();
        if let Some(tier) = self.part(hash).update(hash, key, &mut scratch, f)? {
            self.inner.reads.count(tier);
        }
        Ok(())
    }

    /// Run compaction until no far segment qualifies. Returns the steps taken (pages
    /// processed plus segments removed). The maintenance threads do this in the background
    /// unless turned off in the config.
    pub fn maintain(&self) -> Result<usize> {
        let mut steps = 0;
        for p in &self.inner.parts {
            while p.compact_step()? {
                steps += 1;
            }
        }
        Ok(steps)
    }

    /// Counters per tier and the DRAM budget against its use.
    pub fn stats(&self) -> Stats {
        let mut s = Stats {
            partitions: self.inner.parts.len(),
            dram_budget_bytes: self.inner.budget,
            ..Stats::default()
        };
        let mut used = self.inner.policy.dram_bytes() as u64;
        for p in &self.inner.parts {
            let ps = p.stats();
            add(&mut s.dram, ps.dram);
            add(&mut s.far, ps.far);
            s.promotions += ps.promotions;
            s.readmissions += ps.readmissions;
            s.pages_demoted += ps.pages_demoted;
            s.compaction_bytes += ps.compaction_bytes;
            s.segments_compacted += ps.segments_compacted;
            s.far_file_bytes += ps.far_file_bytes;
            s.index_bytes += ps.index_bytes;
            s.frame_bytes += ps.frame_bytes;
            s.keys += ps.keys;
            used += ps.used_bytes;
        }
        s.dram_used_bytes = used;
        let (d, f) = self.inner.reads.totals();
        s.dram.reads = d;
        s.far.reads = f;
        s
    }

    /// The home NUMA node of each partition, by partition number.
    pub fn partition_nodes(&self) -> Vec<u32> {
        self.inner.parts.iter().map(|p| p.node).collect()
    }

    /// The partition a key belongs to.
    pub fn partition_of(&self, key: &[u8]) -> usize {
        partition_of(hash_key(key), self.inner.parts.len())
    }

    /// The topology partitions were placed on.
    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// The name of the heat policy in use.
    pub fn policy_name(&self) -> &'static str {
        self.inner.policy.name()
    }
}

fn add(t: &mut TierStats, l: crate::partition::Live) {
    t.records += l.records;
    t.bytes += l.bytes;
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

fn spawn_maintenance(inner: Arc<Inner>, node: u32) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("tera-maint-n{node}"))
        .spawn(move || {
            if let Err(e) = tera_numa::pin_current_thread(&inner.topology, node) {
                tracing::debug!(node, error = %e, "maintenance thread not pinned");
            }
            let mut warned = false;
            loop {
                let mut worked = false;
                for p in inner.parts.iter().filter(|p| p.node == node) {
                    match p.compact_step() {
                        Ok(did) => worked |= did,
                        Err(e) if !warned => {
                            tracing::error!(partition = p.id, error = %e, "compaction failed");
                            warned = true;
                        }
                        Err(_) => {}
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

/// Create the far directory if needed, check that it is writable and holds no segment files,
/// and lock it for this database (an exclusive `flock` on `.tera.lock`, held while the
/// returned file is open) so that two databases never share one far directory.
fn prepare_far_dir(config: &Config) -> Result<std::fs::File> {
    let dir = &config.far_dir;
    let err = |reason: String| Error::FarDir {
        path: dir.clone(),
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
    let entries = std::fs::read_dir(dir).map_err(|e| err(format!("cannot list it: {e}")))?;
    for entry in entries.flatten() {
        if let Some(name) = entry.file_name().to_str() {
            if crate::far::is_segment_name(name) {
                return Err(err(format!(
                    "it holds segment files ({name}, ...) from another run; this version keeps \
                     the far tier as scratch space and does not recover it. Remove them or \
                     choose an empty directory"
                )));
            }
        }
    }
    Ok(lock)
}
