//! The durable formats: what a write-ahead log frame holds, and the checkpoint file.
//!
//! A log frame's payload is one record, little-endian throughout:
//! - `1` batch: `keyspace u16 | revision u64 | n u32 | n × op`, an op being
//!   `1 (put) | klen u32 | key | create u64 | version u64 | vlen u32 | value` or
//!   `2 (delete) | klen u32 | key`. Each put carries its revisions, so replaying a frame over
//!   a state that already holds some of its effects (a fuzzy checkpoint) gives the same result.
//! - `2` keyspace: `id u16 | ordered u8 | partition kind u8 | prefix u32 | name len u16 | name`.
//!
//! A checkpoint `ckpt-<lsn>.tck` is a sequence of frames (the log's framing, each frame's
//! "LSN" being its byte offset in the file): a header (`3`: `"TERACKP1"`, the log LSN replay
//! starts from, and the keyspaces), record chunks (`4`: `rescan u8 | n u32 | n × (klen u32 |
//! vlen u32 | stored key | stored value)`), and a trailer (`5`: `"TERACKP1"`, the record count,
//! and every keyspace with its revision at the end of the checkpoint). Records come from
//! scanning each partition's index a slice at a time; when an index is rebuilt under the scan
//! the partition is scanned again, and the chunks from then on have `rescan` set: the loader
//! then keeps, of two copies of a key, the one with the higher mod revision.
//! A frame `6` before the trailer holds `n u32 | n × records u64`, the records written per
//! partition, so that recovery can size each partition's index before loading.
//! A checkpoint is written as `.tmp`, synced, and renamed, so a complete name always means a
//! complete file: one without its trailer was damaged after it was written, and the open
//! refuses it with `Corrupt` (a leftover `.tmp` is an interrupted checkpoint: the open
//! removes it).

use crate::keyspace::{KeyspaceOptions, PartitionBy};

pub(crate) const REC_BATCH: u8 = 1;
pub(crate) const REC_KEYSPACE: u8 = 2;
pub(crate) const CK_HEADER: u8 = 3;
pub(crate) const CK_RECORDS: u8 = 4;
pub(crate) const CK_TRAILER: u8 = 5;
pub(crate) const CK_PARTS: u8 = 6;
const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;

/// One logged write: a user key, and for a put its value and revisions. It borrows the
/// frame it was decoded from, so that recovery holds a log file's bytes once, not again as
/// keys and values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoggedOp<'a> {
    pub(crate) key: &'a [u8],
    /// `(create revision, version, value)` for a put; `None` for a delete.
    pub(crate) put: Option<(u64, u64, &'a [u8])>,
}

/// A keyspace's definition as logged and checkpointed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyspaceDef {
    pub(crate) id: u16,
    pub(crate) name: String,
    pub(crate) opts: KeyspaceOptions,
    /// Its revision (in checkpoints; 0 in the log).
    pub(crate) revision: u64,
}

/// A decoded log record, borrowing its frame's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LogRecord<'a> {
    Batch {
        ks: u16,
        rev: u64,
        ops: Vec<LoggedOp<'a>>,
    },
    Keyspace(KeyspaceDef),
}

/// Start a batch payload whose ops are added with [`push_put`] and [`push_delete`];
/// [`finish_batch`] writes the count.
pub(crate) fn start_batch(ks: u16, rev: u64, out: &mut Vec<u8>) {
    out.clear();
    out.push(REC_BATCH);
    out.extend_from_slice(&ks.to_le_bytes());
    out.extend_from_slice(&rev.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
}

pub(crate) fn push_put(out: &mut Vec<u8>, key: &[u8], create: u64, version: u64, value: &[u8]) {
    out.push(OP_PUT);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&create.to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(value);
}

pub(crate) fn push_delete(out: &mut Vec<u8>, key: &[u8]) {
    out.push(OP_DELETE);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
}

pub(crate) fn finish_batch(out: &mut [u8], n: u32) {
    out[11..15].copy_from_slice(&n.to_le_bytes());
}

pub(crate) fn encode_def(d: &KeyspaceDef, out: &mut Vec<u8>) {
    out.extend_from_slice(&d.id.to_le_bytes());
    out.push(u8::from(d.opts.ordered));
    let (kind, n) = match d.opts.partition_by {
        PartitionBy::Key => (0u8, 0u32),
        PartitionBy::Prefix(n) => (1, n),
    };
    out.push(kind);
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&(d.name.len() as u16).to_le_bytes());
    out.extend_from_slice(d.name.as_bytes());
    out.extend_from_slice(&d.revision.to_le_bytes());
}

pub(crate) fn encode_keyspace(d: &KeyspaceDef, out: &mut Vec<u8>) {
    out.clear();
    out.push(REC_KEYSPACE);
    encode_def(d, out);
}

/// A cursor over a payload; every read is bounds-checked.
pub(crate) struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Self {
        Reader { b }
    }
    pub(crate) fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Some(h)
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }
    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.bytes(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.bytes(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4")))
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.bytes(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8")))
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.b.is_empty()
    }
    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.b.len()
    }
}

pub(crate) fn decode_def(r: &mut Reader<'_>) -> Option<KeyspaceDef> {
    let id = r.u16()?;
    let ordered = r.u8()? != 0;
    let kind = r.u8()?;
    let n = r.u32()?;
    let len = r.u16()? as usize;
    let name = String::from_utf8(r.bytes(len)?.to_vec()).ok()?;
    let revision = r.u64()?;
    let partition_by = match kind {
        0 => PartitionBy::Key,
        1 => PartitionBy::Prefix(n),
        _ => return None,
    };
    Some(KeyspaceDef {
        id,
        name,
        opts: KeyspaceOptions {
            ordered,
            partition_by,
        },
        revision,
    })
}

/// Decode a log record; `None` if it is not one this version wrote.
pub(crate) fn decode_log(payload: &[u8]) -> Option<LogRecord<'_>> {
    let mut r = Reader::new(payload);
    match r.u8()? {
        REC_BATCH => {
            let ks = r.u16()?;
            let rev = r.u64()?;
            let n = r.u32()? as usize;
            let mut ops = Vec::with_capacity(n.min(1 << 16));
            for _ in 0..n {
                let kind = r.u8()?;
                let klen = r.u32()? as usize;
                let key = r.bytes(klen)?;
                let put = match kind {
                    OP_PUT => {
                        let create = r.u64()?;
                        let version = r.u64()?;
                        let vlen = r.u32()? as usize;
                        Some((create, version, r.bytes(vlen)?))
                    }
                    OP_DELETE => None,
                    _ => return None,
                };
                ops.push(LoggedOp { key, put });
            }
            r.is_empty().then_some(LogRecord::Batch { ks, rev, ops })
        }
        REC_KEYSPACE => {
            let d = decode_def(&mut r)?;
            r.is_empty().then_some(LogRecord::Keyspace(d))
        }
        _ => None,
    }
}

/// A checkpoint header payload.
pub(crate) fn encode_ck_header(lsn: u64, defs: &[KeyspaceDef], out: &mut Vec<u8>) {
    encode_ck(CK_HEADER, lsn, defs, out);
}

/// The trailer: the record count, and the keyspaces with their revisions at the end.
pub(crate) fn encode_ck_trailer(records: u64, defs: &[KeyspaceDef], out: &mut Vec<u8>) {
    encode_ck(CK_TRAILER, records, defs, out);
}

fn encode_ck(kind: u8, n: u64, defs: &[KeyspaceDef], out: &mut Vec<u8>) {
    out.clear();
    out.push(kind);
    out.extend_from_slice(b"TERACKP1");
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&(defs.len() as u32).to_le_bytes());
    for d in defs {
        encode_def(d, out);
    }
}

/// Decode a header or trailer of the given kind: its number and keyspaces.
pub(crate) fn decode_ck(kind: u8, payload: &[u8]) -> Option<(u64, Vec<KeyspaceDef>)> {
    let mut r = Reader::new(payload);
    if r.u8()? != kind || r.bytes(8)? != b"TERACKP1" {
        return None;
    }
    let lsn = r.u64()?;
    let n = r.u32()? as usize;
    let mut defs = Vec::with_capacity(n.min(1 << 16));
    for _ in 0..n {
        defs.push(decode_def(&mut r)?);
    }
    r.is_empty().then_some((lsn, defs))
}

/// The name of the checkpoint that starts replay at `lsn`.
pub(crate) fn ckpt_name(lsn: u64) -> String {
    format!("ckpt-{lsn:020}.tck")
}

pub(crate) fn parse_ckpt_name(name: &str) -> Option<u64> {
    let n = name.strip_prefix("ckpt-")?.strip_suffix(".tck")?;
    (n.len() == 20).then(|| n.parse().ok())?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_batch(ks: u16, rev: u64, ops: &[LoggedOp], out: &mut Vec<u8>) {
        start_batch(ks, rev, out);
        for op in ops {
            match &op.put {
                Some((create, version, value)) => push_put(out, op.key, *create, *version, value),
                None => push_delete(out, op.key),
            }
        }
        finish_batch(out, ops.len() as u32);
    }

    #[test]
    fn log_records_round_trip() {
        let ops = vec![
            LoggedOp {
                key: b"a",
                put: Some((3, 2, b"value")),
            },
            LoggedOp {
                key: b"b",
                put: None,
            },
        ];
        let mut buf = Vec::new();
        encode_batch(7, 42, &ops, &mut buf);
        assert_eq!(
            decode_log(&buf),
            Some(LogRecord::Batch {
                ks: 7,
                rev: 42,
                ops
            })
        );
        assert_eq!(decode_log(&buf[..buf.len() - 1]), None, "a cut record");
        let d = KeyspaceDef {
            id: 3,
            name: "meta".into(),
            opts: KeyspaceOptions::ordered().partition_prefix(8),
            revision: 0,
        };
        encode_keyspace(&d, &mut buf);
        assert_eq!(decode_log(&buf), Some(LogRecord::Keyspace(d.clone())));
        encode_ck_header(99, std::slice::from_ref(&d), &mut buf);
        assert_eq!(decode_ck(CK_HEADER, &buf), Some((99, vec![d.clone()])));
        assert_eq!(decode_ck(CK_TRAILER, &buf), None);
        let mut b2 = Vec::new();
        start_batch(1, 2, &mut b2);
        push_put(&mut b2, b"k", 2, 1, b"v");
        finish_batch(&mut b2, 1);
        assert_eq!(
            decode_log(&b2),
            Some(LogRecord::Batch {
                ks: 1,
                rev: 2,
                ops: vec![LoggedOp {
                    key: b"k",
                    put: Some((2, 1, b"v"))
                }]
            })
        );
        assert_eq!(parse_ckpt_name(&ckpt_name(5)), Some(5));
    }
}
