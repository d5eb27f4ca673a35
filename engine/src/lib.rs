//! `tera-engine`: a tiered-memory record store. Hot records live in DRAM, cold ones in a far
//! tier of large, slower, byte-addressable memory (or a memory-mapped file on NVMe), and one
//! configured DRAM budget bounds everything the engine keeps in DRAM.
//!
//! ```
//! use tera_engine::{Config, Db};
//! # let dir = tempfile::tempdir().unwrap();
//! let mut config = Config::new(dir.path());
//! config.dram_budget_bytes = 64 << 20;
//! config.page_bytes = 256 << 10;
//! config.max_value_bytes = 64 << 10;
//! let db = Db::open(config)?;
//! db.put(b"user:42", b"Ada")?;
//! assert_eq!(db.get(b"user:42")?.as_deref(), Some(&b"Ada"[..]));
//! db.update(b"user:42", |v| v.map(|v| [v, b" Lovelace"].concat()))?;
//! assert_eq!(db.get(b"user:42")?.as_deref(), Some(&b"Ada Lovelace"[..]));
//! assert!(db.delete(b"user:42")?);
//! let stats = db.stats();
//! assert!(stats.dram_used_bytes <= stats.dram_budget_bytes);
//! # Ok::<(), tera_engine::Error>(())
//! ```
//!
//! How records move between tiers, and the formats, are in `docs/architecture.md`.

// Under `--cfg tera_loom` only the modules with loom models are built (see `make loom`).
mod bell;
#[cfg(not(tera_loom))]
mod bulk;
#[cfg(not(tera_loom))]
mod changelog;
#[cfg(not(tera_loom))]
mod config;
#[cfg(not(tera_loom))]
mod db;
#[cfg(not(tera_loom))]
mod durable;
#[cfg(not(tera_loom))]
mod emulate;
mod epoch;
#[cfg(not(tera_loom))]
mod error;
#[cfg(not(tera_loom))]
mod far;
mod hash;
#[cfg(not(tera_loom))]
mod heat;
mod index;
#[cfg(not(tera_loom))]
mod keyspace;
#[cfg(not(tera_loom))]
pub mod meta;
#[cfg(not(tera_loom))]
mod partition;
#[cfg(not(tera_loom))]
mod record;
#[cfg(not(tera_loom))]
mod recovery;
#[cfg(not(tera_loom))]
mod shares;
#[cfg(not(tera_loom))]
mod sigbus;
#[cfg(not(tera_loom))]
mod stats;
mod sync;
mod waiters;
#[cfg(not(tera_loom))]
mod wal;

#[cfg(not(tera_loom))]
pub use changelog::{Event, EventKind, Watcher};
#[cfg(not(tera_loom))]
pub use config::{Config, Durability, MAX_KEY_BYTES};
#[cfg(not(tera_loom))]
pub use db::{
    BulkLoadInfo, CheckpointInfo, Db, Keyspace, RecoveryInfo, ScanInfo, Seen, Tx, DEFAULT_KEYSPACE,
};
#[cfg(not(tera_loom))]
pub use error::{Error, Result};
#[cfg(not(tera_loom))]
pub use far::{OsStorage, Storage};
pub use hash::hash_key;
#[cfg(not(tera_loom))]
pub use heat::{
    AlwaysPromote, FrequencyAdmission, GhostAdmission, HeatPolicy, NeverPromote, MAX_HEAT,
};
#[cfg(not(tera_loom))]
pub use keyspace::{
    prefix_end, Batch, Compare, CompareOp, CompareTarget, Entry, KeyspaceOptions, Op, PartitionBy,
    Range, RangeResult, Txn, TxnResult,
};
#[cfg(not(tera_loom))]
pub use stats::{Stats, TierStats};
#[cfg(not(tera_loom))]
pub use tera_numa::Topology;
