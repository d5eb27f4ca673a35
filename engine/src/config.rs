//! Configuration of a [`crate::Db`]. Every size is a parameter: the same code runs a test with
//! a 4 MiB budget and a benchmark with hundreds of gigabytes.

use crate::far::{OsStorage, Storage};
use crate::heat::HeatPolicy;
use std::path::PathBuf;
use std::sync::Arc;
use tera_numa::Topology;

/// When a commit is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Nothing is written to the data directory: the database lives in memory (DRAM and the
    /// far tier) and starts empty every time. The only honest mode when the far directory is
    /// on volatile memory and there is no data directory on durable storage.
    None,
    /// Committed batches go to the write-ahead log, which a background thread makes durable
    /// every `interval`: a crash loses at most the last interval (plus one flush) of commits.
    Periodic(std::time::Duration),
    /// A commit returns once its batch is durable; concurrent committers share one flush
    /// (group commit). A read in [`crate::Keyspace::atomic`] (or a `range` or `count`)
    /// returns once every batch it could have seen is durable, so nothing it hands out can be
    /// undone by a crash; lock-free reads ([`crate::Keyspace::get`] and the parallel scans)
    /// can see a batch while it waits for its flush.
    Commit,
}

/// How to open a database. Start from [`Config::new`] and set what you need.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Directory for far-tier segment files (a DAX or tmpfs mount on far memory, or a
    /// directory on an NVMe drive). Created if missing; must be writable.
    pub far_dir: PathBuf,
    /// Everything the engine keeps in DRAM (indexes, log frames, heat sketch, buffers) stays
    /// within this many bytes.
    pub dram_budget_bytes: u64,
    /// Number of partitions; 0 picks two per CPU, at least four.
    pub partitions: usize,
    /// Log page size: a power of two from 4 KiB to 64 MiB, large enough for the largest record.
    pub page_bytes: usize,
    /// Far segment file size: a multiple of `page_bytes`.
    pub segment_bytes: usize,
    /// Largest key accepted (at most 64 KiB).
    pub max_key_bytes: usize,
    /// Largest value accepted (at most 1 MiB by default).
    pub max_value_bytes: usize,
    /// Emulated extra latency per far-tier record read, in nanoseconds; 0 (off) by default.
    pub far_latency_ns: u64,
    /// Expected number of records, to size the index up front (0: grow as needed).
    pub expected_records: usize,
    /// A far segment whose live bytes fall below this share of its size is compacted.
    pub compaction_live_ratio: f64,
    /// The machine's topology; `None` detects it (tests pass `Topology::simulated`).
    pub topology: Option<Topology>,
    /// Promotion and readmission policy; `None` uses [`crate::GhostAdmission`] with one
    /// fingerprint per 4 KiB of budget (measured best for 1 KiB records: see
    /// docs/benchmarks.md; `tierbench --ghost-slot-bytes` explores other sizes).
    pub policy: Option<Arc<dyn HeatPolicy>>,
    /// Run compaction in background threads (one per NUMA node with CPUs). When false, call
    /// [`crate::Db::maintain`] yourself.
    pub background_maintenance: bool,
    /// The I/O seam for far-tier files.
    pub storage: Arc<dyn Storage>,
    /// Ask for transparent huge pages (`MADV_HUGEPAGE`) on the DRAM frames. Off by default:
    /// it speeds DRAM reads (fewer TLB misses; see docs/benchmarks.md) but lets the kernel's
    /// huge-page compaction stall writers, which is why many databases advise against it.
    pub huge_pages: bool,
    /// When a commit is durable (see [`Durability`]); `None` by default.
    pub durability: Durability,
    /// Directory for the write-ahead log and checkpoints (durable storage); `None` uses the
    /// far directory. Unused with [`Durability::None`].
    pub data_dir: Option<PathBuf>,
    /// Size at which a write-ahead log file is closed and a new one started.
    pub wal_file_bytes: u64,
    /// A checkpoint is taken in the background once this many log bytes follow the last one
    /// (0: only when [`crate::Db::checkpoint`] is called). Bounds recovery time.
    pub checkpoint_wal_bytes: u64,
    /// DRAM for the change logs of all keyspaces together (watch history), counted in the
    /// budget; 0 picks 1/32 of the budget, at most 64 MiB. About half of it holds changes;
    /// past that the oldest changes of the largest histories are dropped first.
    pub changelog_bytes: usize,
}

/// Largest key the format allows.
pub const MAX_KEY_BYTES: usize = 64 * 1024;

impl Config {
    /// Defaults: 256 MiB budget, 2 MiB pages, 64 MiB segments, keys to 64 KiB, values to
    /// 1 MiB, no latency emulation, background compaction on.
    pub fn new(far_dir: impl Into<PathBuf>) -> Config {
        Config {
            far_dir: far_dir.into(),
            dram_budget_bytes: 256 << 20,
            partitions: 0,
            page_bytes: 2 << 20,
            segment_bytes: 64 << 20,
            max_key_bytes: MAX_KEY_BYTES,
            max_value_bytes: 1 << 20,
            far_latency_ns: 0,
            expected_records: 0,
            compaction_live_ratio: 0.5,
            topology: None,
            policy: None,
            background_maintenance: true,
            storage: Arc::new(OsStorage),
            huge_pages: false,
            durability: Durability::None,
            data_dir: None,
            wal_file_bytes: 64 << 20,
            checkpoint_wal_bytes: 1 << 30,
            changelog_bytes: 0,
        }
    }

    /// The directory holding the log and checkpoints.
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| self.far_dir.clone())
    }

    /// Bytes the change logs may hold.
    pub(crate) fn changelog_limit(&self) -> usize {
        if self.changelog_bytes > 0 {
            self.changelog_bytes
        } else {
            ((self.dram_budget_bytes / 32) as usize).min(64 << 20)
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        let p = self.page_bytes;
        if !p.is_power_of_two() || !(4096..=64 << 20).contains(&p) {
            return Err(format!(
                "page_bytes = {p}: must be a power of two from 4096 to 67108864"
            ));
        }
        if self.segment_bytes < p || self.segment_bytes % p != 0 {
            return Err(format!(
                "segment_bytes = {}: must be a multiple of page_bytes ({p})",
                self.segment_bytes
            ));
        }
        if !self.segment_bytes.is_power_of_two() {
            return Err(format!(
                "segment_bytes = {}: must be a power of two",
                self.segment_bytes
            ));
        }
        if self.partitions > 1 << 16 {
            return Err(format!(
                "partitions = {}: at most 65536 (a key's partition comes from 16 bits of its hash)",
                self.partitions
            ));
        }
        if self.max_key_bytes == 0 || self.max_key_bytes > MAX_KEY_BYTES {
            return Err(format!(
                "max_key_bytes = {}: must be 1 to {MAX_KEY_BYTES}",
                self.max_key_bytes
            ));
        }
        let largest = crate::record::record_len(
            self.max_key_bytes + crate::keyspace::KEY_PREFIX,
            self.max_value_bytes + crate::keyspace::META,
        );
        if largest > p {
            return Err(format!(
                "page_bytes = {p} cannot hold the largest record ({largest} bytes for a \
                 {}-byte key and a {}-byte value): raise page_bytes or lower the maxima",
                self.max_key_bytes, self.max_value_bytes
            ));
        }
        if let Durability::Periodic(d) = self.durability {
            if d.is_zero() {
                return Err(
                    "durability = periodic(0): the interval must be positive (use \
                            commit to flush every commit)"
                        .into(),
                );
            }
        }
        if self.wal_file_bytes < 1 << 16 {
            return Err(format!(
                "wal_file_bytes = {}: at least 65536",
                self.wal_file_bytes
            ));
        }
        if !(0.0..1.0).contains(&self.compaction_live_ratio) {
            return Err(format!(
                "compaction_live_ratio = {}: must be in [0, 1)",
                self.compaction_live_ratio
            ));
        }
        Ok(())
    }
}
