//! What [`crate::Db::stats`] reports: per tier, and the DRAM budget against its use.

/// One tier's contents and traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TierStats {
    /// Bytes of live records (headers included) in the tier.
    pub bytes: u64,
    /// Live records in the tier.
    pub records: u64,
    /// Record reads served from the tier (gets and read-modify-writes).
    pub reads: u64,
}

/// A snapshot of the engine's counters.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// The DRAM tier: log frames.
    pub dram: TierStats,
    /// The far tier: segment files.
    pub far: TierStats,
    /// Far records copied to the DRAM tail because they proved hot.
    pub promotions: u64,
    /// DRAM records given another pass in DRAM when their page was demoted.
    pub readmissions: u64,
    /// DRAM pages demoted: their live records moved to the far log or readmitted, and their
    /// frames released for reuse.
    pub pages_demoted: u64,
    /// Bytes of live records moved out of far segments by compaction.
    pub compaction_bytes: u64,
    /// Far segments compacted away (their files removed).
    pub segments_compacted: u64,
    /// Apparent size of the far segment files (they are sparse: the last one is allocated
    /// only as far as written).
    pub far_file_bytes: u64,
    /// The configured DRAM budget.
    pub dram_budget_bytes: u64,
    /// DRAM the engine holds now: index + frames + heat sketch + buffers. Never above the
    /// budget.
    pub dram_used_bytes: u64,
    /// Of which: hash index tables (including replaced tables not yet freed).
    pub index_bytes: u64,
    /// Of which: ordered indexes (estimated: see `partition::ordered_key_bytes`).
    pub ordered_index_bytes: u64,
    /// Of which: log frames (in use, spare and awaiting reuse).
    pub frame_bytes: u64,
    /// Of which: the keyspaces' change logs (watch history).
    pub changelog_bytes: u64,
    /// `fdatasync` calls made on the write-ahead log.
    pub wal_fsyncs: u64,
    /// Log position up to which commits are durable.
    pub wal_durable_lsn: u64,
    /// Checkpoints written since open.
    pub checkpoints: u64,
    /// Live keys.
    pub keys: u64,
    /// Partitions.
    pub partitions: usize,
    /// The largest partition's share of the DRAM budget now (shares follow need; an even
    /// split is `dram_budget_bytes / partitions`, less the heat policy's table).
    pub largest_share_bytes: u64,
    /// Bytes moved into partitions' shares from others since the database opened.
    pub shares_moved_bytes: u64,
}

impl Stats {
    /// Share of record reads served from DRAM (1.0 when there were none).
    pub fn dram_hit_ratio(&self) -> f64 {
        let total = self.dram.reads + self.far.reads;
        if total == 0 {
            1.0
        } else {
            self.dram.reads as f64 / total as f64
        }
    }

    /// Share of record reads served from DRAM between `earlier` and this snapshot (1.0 when
    /// there were none).
    pub fn dram_hit_ratio_since(&self, earlier: &Stats) -> f64 {
        let d = self.dram.reads - earlier.dram.reads;
        let f = self.far.reads - earlier.far.reads;
        if d + f == 0 {
            1.0
        } else {
            d as f64 / (d + f) as f64
        }
    }

    /// Index DRAM per live key.
    pub fn index_bytes_per_key(&self) -> f64 {
        if self.keys == 0 {
            0.0
        } else {
            self.index_bytes as f64 / self.keys as f64
        }
    }
}
