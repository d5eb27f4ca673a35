//! The engine's error type. One enum, non-exhaustive, with messages written for the person
//! who has to act on them; the server maps variants to status codes by kind, not by text.

use std::path::PathBuf;

/// Everything the engine can refuse or fail at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key is longer than the configured maximum.
    #[error("key of {len} bytes is longer than the maximum of {max} bytes")]
    KeyTooLarge { len: usize, max: usize },
    /// The value is longer than the configured maximum.
    #[error("value of {len} bytes is longer than the maximum of {max} bytes")]
    ValueTooLarge { len: usize, max: usize },
    /// A batch (or transaction) is larger than one log frame can carry.
    #[error("a batch of about {len} bytes is larger than the maximum of {max} bytes: split it into smaller batches")]
    BatchTooLarge { len: usize, max: usize },
    /// The configuration cannot work; the message says which setting and why.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The far directory cannot be used.
    #[error("far-tier directory {path}: {reason}")]
    FarDir { path: PathBuf, reason: String },
    /// An I/O call on a far-tier, log or checkpoint file failed.
    #[error("I/O failed: {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A far-tier, log or checkpoint file no longer holds what the engine wrote (truncated,
    /// overwritten or damaged under the engine). The read is refused rather than answered
    /// wrongly.
    #[error("file {path} is damaged at offset {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A partition's log has used all of its 2^47 bytes of addresses.
    #[error("address space exhausted: {0}")]
    AddressSpaceExhausted(String),
    /// A write-ahead log write or sync failed: the database refuses writes until it is
    /// reopened (reads go on, but a read in [`crate::Keyspace::atomic`] that saw a write the
    /// failure left undurable gets [`Error::NotDurable`]). The text says what failed. A commit that gets this error (or the `Io`
    /// error of the failed flush it waited on) was not acknowledged: after a reopen it is
    /// there whole or not at all.
    #[error("writes are refused: {0}")]
    Poisoned(String),
    /// A read in [`crate::Keyspace::atomic`] saw a batch that could not be made durable (the
    /// log failed while it waited for it): answering would hand out a write that a reopen
    /// drops. Reads of state that was durable go on; reopen the database to read the rest.
    #[error("the read saw a write that could not be made durable ({0}): reopen the database")]
    NotDurable(String),
    /// A watch asked for changes after a revision the change log no longer holds.
    #[error("revision {requested} is compacted: the change log holds changes after revision {oldest} only; read the keyspace again and watch from its revision")]
    Compacted { requested: u64, oldest: u64 },
    /// A batch or transaction names keys in more than one partition.
    #[error("key {key:?} is in partition {got}, not in partition {want} of the rest of the batch: a batch is atomic within one partition (choose a partition key that groups these keys)")]
    CrossPartition {
        key: String,
        want: usize,
        got: usize,
    },
    /// A keyspace operation that the keyspace cannot do, or a bad keyspace name or option.
    #[error("keyspace {name:?}: {reason}")]
    Keyspace { name: String, reason: String },
    /// Bulk load input was not strictly ascending; the records before it are loaded.
    #[error("bulk load input is not sorted: record {index} (counting from 0) is not greater than the one before it; the records before it are loaded (less any skipped because someone else wrote their key during the load)")]
    Unsorted { index: u64 },
    /// The DRAM budget cannot hold the index and the minimum number of log frames.
    #[error("DRAM budget exhausted: {0}")]
    BudgetExhausted(String),
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
