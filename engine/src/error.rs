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
    /// The configuration cannot work; the message says which setting and why.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The far directory cannot be used.
    #[error("far-tier directory {path}: {reason}")]
    FarDir { path: PathBuf, reason: String },
    /// An I/O call on a far-tier file failed.
    #[error("far-tier I/O failed: {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A far-tier file no longer holds what the engine wrote (truncated, overwritten or
    /// damaged under the engine). The read is refused rather than answered wrongly.
    #[error("far-tier file {path} is damaged at offset {offset}: {reason}; the records stored there cannot be read")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A partition's log has used all of its 2^47 bytes of addresses.
    #[error("address space exhausted: {0}")]
    AddressSpaceExhausted(String),
    /// The DRAM budget cannot hold the index and the minimum number of log frames.
    #[error("DRAM budget exhausted: {0}")]
    BudgetExhausted(String),
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
