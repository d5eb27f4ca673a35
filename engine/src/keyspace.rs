//! Keyspaces and the types of their API: options, entries, batches and conditional
//! transactions (the etcd `Txn` model), range requests, and the layout of keys and values as the
//! partitions store them.
//!
//! A keyspace's key `k` is stored as the record key `id (u16, big-endian) ++ k`, so each
//! keyspace's keys sort together in the ordered index, and its value `v` as
//! `create_revision (u64 LE) ++ mod_revision (u64 LE) ++ version (u64 LE) ++ v`.

/// Bytes the engine adds in front of a key (the keyspace id).
pub(crate) const KEY_PREFIX: usize = 2;
/// Bytes the engine adds in front of a value (the key's revisions and version).
pub(crate) const META: usize = 24;

/// Which part of a key picks its partition. Keys with the same partition key share a
/// partition, so a batch or a transaction over them is atomic, and a range scan that stays
/// within one partition key visits one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionBy {
    /// The whole key (keys spread evenly; batches of more than one key are refused unless the
    /// keys happen to share a partition).
    Key,
    /// The first `n` bytes (a key shorter than `n` uses all of its bytes). The metadata model
    /// uses the 8-byte namespace id, so a namespace is one partition.
    Prefix(u32),
}

/// How a keyspace stores its keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyspaceOptions {
    /// Keep an ordered index (range and prefix scans, counts). Its DRAM comes from the same
    /// budget as everything else (about 60 bytes per key plus the key).
    pub ordered: bool,
    pub partition_by: PartitionBy,
}

impl KeyspaceOptions {
    /// A hash-only keyspace partitioned by whole key: point reads and writes.
    pub fn hash() -> Self {
        KeyspaceOptions {
            ordered: false,
            partition_by: PartitionBy::Key,
        }
    }

    /// An ordered keyspace partitioned by whole key.
    pub fn ordered() -> Self {
        KeyspaceOptions {
            ordered: true,
            partition_by: PartitionBy::Key,
        }
    }

    /// Partition by the first `n` bytes of each key.
    pub fn partition_prefix(mut self, n: u32) -> Self {
        self.partition_by = PartitionBy::Prefix(n);
        self
    }
}

/// A key's value with its revisions, as of the read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// Revision of the batch that created the key (since it last did not exist).
    pub create_revision: u64,
    /// Revision of the batch that last wrote it.
    pub mod_revision: u64,
    /// Writes since creation, counting the creation as 1.
    pub version: u64,
}

/// The revisions of a stored value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Meta {
    pub(crate) create: u64,
    pub(crate) modified: u64,
    pub(crate) version: u64,
}

impl Meta {
    pub(crate) fn encode(self, value: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.reserve(META + value.len());
        out.extend_from_slice(&self.create.to_le_bytes());
        out.extend_from_slice(&self.modified.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(value);
    }

    /// Write the revisions as a stored value's first [`META`] bytes (`head` holds at least
    /// that many).
    pub(crate) fn encode_head(self, head: &mut [u8]) {
        head[..8].copy_from_slice(&self.create.to_le_bytes());
        head[8..16].copy_from_slice(&self.modified.to_le_bytes());
        head[16..META].copy_from_slice(&self.version.to_le_bytes());
    }

    /// Split a stored value into its revisions and the user's value.
    pub(crate) fn decode(stored: &[u8]) -> (Meta, &[u8]) {
        if stored.len() < META {
            return (Meta::default(), stored); // never written by this version
        }
        let u = |i: usize| u64::from_le_bytes(stored[i..i + 8].try_into().expect("8 bytes"));
        (
            Meta {
                create: u(0),
                modified: u(8),
                version: u(16),
            },
            &stored[META..],
        )
    }
}

/// One write of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
}

impl Op {
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Put { key, .. } | Op::Delete { key } => key,
        }
    }
}

/// Writes applied all or nothing, at one revision. All keys must share a partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub ops: Vec<Op>,
}

impl Batch {
    pub fn new() -> Self {
        Batch::default()
    }
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(Op::Put {
            key: key.into(),
            value: value.into(),
        });
        self
    }
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(Op::Delete { key: key.into() });
        self
    }
}

/// What a [`Compare`] looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    /// The value (a missing key compares as absent: only `NotEqual` holds).
    Value(Vec<u8>),
    /// The version (0 for a missing key).
    Version(u64),
    /// The create revision (0 for a missing key).
    CreateRevision(u64),
    /// The mod revision (0 for a missing key).
    ModRevision(u64),
}

/// How a [`Compare`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

/// One condition of a transaction, on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: Vec<u8>,
    pub op: CompareOp,
    pub target: CompareTarget,
}

impl Compare {
    pub fn new(key: impl Into<Vec<u8>>, op: CompareOp, target: CompareTarget) -> Self {
        Compare {
            key: key.into(),
            op,
            target,
        }
    }
    /// The key does not exist (its version is 0).
    pub fn absent(key: impl Into<Vec<u8>>) -> Self {
        Compare::new(key, CompareOp::Equal, CompareTarget::Version(0))
    }
    /// The key exists.
    pub fn exists(key: impl Into<Vec<u8>>) -> Self {
        Compare::new(key, CompareOp::Greater, CompareTarget::Version(0))
    }

    pub(crate) fn holds(&self, cur: Option<(&Meta, &[u8])>) -> bool {
        use std::cmp::Ordering;
        let ord = match (&self.target, cur) {
            (CompareTarget::Value(want), Some((_, v))) => v.cmp(want.as_slice()),
            (CompareTarget::Value(_), None) => return self.op == CompareOp::NotEqual,
            (CompareTarget::Version(n), c) => c.map_or(0, |c| c.0.version).cmp(n),
            (CompareTarget::CreateRevision(n), c) => c.map_or(0, |c| c.0.create).cmp(n),
            (CompareTarget::ModRevision(n), c) => c.map_or(0, |c| c.0.modified).cmp(n),
        };
        match self.op {
            CompareOp::Equal => ord == Ordering::Equal,
            CompareOp::NotEqual => ord != Ordering::Equal,
            CompareOp::Less => ord == Ordering::Less,
            CompareOp::Greater => ord == Ordering::Greater,
        }
    }
}

/// A conditional batch: if every compare holds, `success` is applied, else `failure`; either
/// way at one revision (when it writes anything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

/// The outcome of a [`Txn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether every compare held (and `success` ran).
    pub succeeded: bool,
    /// The revision of the batch that ran, or the keyspace's revision if it wrote nothing.
    pub revision: u64,
}

/// A range of keys: `start..end`, `end` `None` meaning no upper bound.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Range {
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
    /// Newest-first order: from the end of the range backward.
    pub reverse: bool,
    /// At most this many entries; 0 means no limit.
    pub limit: usize,
}

impl Range {
    /// Every key with this prefix.
    pub fn prefix(prefix: &[u8]) -> Range {
        Range {
            start: prefix.to_vec(),
            end: prefix_end(prefix),
            ..Range::default()
        }
    }

    /// Keys from `start` (inclusive) to `end` (exclusive).
    pub fn between(start: &[u8], end: &[u8]) -> Range {
        Range {
            start: start.to_vec(),
            end: Some(end.to_vec()),
            ..Range::default()
        }
    }

    pub fn limit(mut self, n: usize) -> Range {
        self.limit = n;
        self
    }

    pub fn reverse(mut self) -> Range {
        self.reverse = true;
        self
    }
}

/// The smallest key greater than every key with `prefix`, or `None` (all `0xff`).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// What a range read returns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeResult {
    pub entries: Vec<Entry>,
    /// Whether the limit cut the range short.
    pub more: bool,
    /// The keyspace's revision when the read was made.
    pub revision: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_skips_ff() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
    }

    #[test]
    fn compares_follow_etcd() {
        let m = Meta {
            create: 3,
            modified: 5,
            version: 2,
        };
        let cur = Some((&m, &b"v"[..]));
        assert!(Compare::exists("k").holds(cur));
        assert!(!Compare::absent("k").holds(cur));
        assert!(Compare::absent("k").holds(None));
        let c = |op, t| Compare::new("k", op, t);
        assert!(c(CompareOp::Equal, CompareTarget::ModRevision(5)).holds(cur));
        assert!(c(CompareOp::Less, CompareTarget::CreateRevision(4)).holds(cur));
        assert!(c(CompareOp::Greater, CompareTarget::Value(b"u".to_vec())).holds(cur));
        assert!(!c(CompareOp::Equal, CompareTarget::Value(b"v".to_vec())).holds(None));
        assert!(c(CompareOp::NotEqual, CompareTarget::Value(b"v".to_vec())).holds(None));
    }
}
