//! The sync-and-share metadata model (DESIGN.md §5): namespaces of folders and files, each
//! mutation one atomic batch in the namespace's partition.
//!
//! Layout, in the keyspace `meta` (hash-indexed, partitioned by the first 8 bytes, the
//! namespace id big-endian, so a namespace is one partition):
//!
//! - `ns | 0x00` → the namespace's counters: next id `u64`, next etag `u64`;
//! - `ns | 0x01 | id` → the entry with that id (see [`encode`]);
//! - `ns | 0x02 | folder id | node u32` → a node of the folder's directory, a B+tree of its
//!   children's names and ids (see [`dir`]): a listing reads a few nodes in name order, and a
//!   move is a relink of one name, whatever the subtree's size;
//! - `ns | 0x03` → the bounds `lo u64, hi u64` of the namespace's trash queue, and
//!   `ns | 0x04 | seq u64` for `lo <= seq < hi` → an item of it, `folder u64 | node u32`: a
//!   directory node of a folder a recursive delete detached, whose entries are still to be
//!   removed (see [`MetaStore::delete`]).
//!
//! The directories are records like any other, so they tier to far memory when cold; the
//! keyspace needs no ordered index, whose DRAM per key would not fit a namespace of millions
//! of entries into a small budget.
//!
//! Ids are never reused (the counter only grows) and never change on rename or move. Etags
//! come from the same kind of counter, so no value repeats, and every change gives a new etag
//! to the entry and to each of its ancestors up to the root, in the same batch; tree size and
//! tree mtime of every ancestor change with it.
//!
//! The change feed is the keyspace's change log filtered to a namespace's entry keys: a
//! cursor is a revision, and a cursor older than the log's history is [`MetaError::CursorTooOld`].

mod dir;

use crate::db::{Db, Keyspace, Seen, Tx};
use crate::keyspace::KeyspaceOptions;
use std::collections::HashMap;
use std::fmt;

/// The id of every namespace's root folder.
pub const ROOT_ID: u64 = 1;
/// Longest name of an entry, in bytes.
pub const MAX_NAME: usize = 255;
/// Longest path of an entry being created (a new folder or file, a move's target), in bytes.
pub const MAX_PATH: usize = 4096;
/// Longest path that reaches an existing entry, in bytes. Moving a folder makes the paths
/// below it longer without naming them, so they can pass [`MAX_PATH`]; such entries stay
/// reachable (stat, list, attributes, delete, a move's source) up to this length.
pub const MAX_LOOKUP_PATH: usize = 1 << 20;
/// Largest page of a listing.
pub const MAX_PAGE: usize = 10_000;
/// Largest file size, in bytes: 2^63 - 1, what a signed 64-bit size (Java's, WebDAV
/// clients', `off_t`) can hold.
pub const MAX_FILE_SIZE: u64 = i64::MAX as u64;

/// What a metadata operation can refuse; the server maps each to a status code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetaError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("not a folder: {0}")]
    NotAFolder(String),
    #[error("is a folder: {0}")]
    IsAFolder(String),
    #[error("folder not empty: {0} (delete it recursively, or empty it first)")]
    NotEmpty(String),
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error("cursor {cursor} is too old: the change history starts after revision {oldest}; take the namespace's current revision (usage) first, then list it again and follow changes from that revision")]
    CursorTooOld { cursor: u64, oldest: u64 },
    #[error("cursor {cursor} is ahead of the namespace's revision {revision}: pass a cursor from a change page or from usage")]
    CursorAhead { cursor: u64, revision: u64 },
    /// A value out of its range (a file size).
    #[error("{0}")]
    OutOfBounds(String),
    #[error(transparent)]
    Engine(#[from] crate::Error),
}

/// One change of the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The entry was created or changed; its state after the change.
    Upsert(MetaEntry),
    /// The entry with this id was deleted.
    Delete(u64),
}

/// A page of the change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangePage {
    /// (revision, change), in revision order.
    pub changes: Vec<(u64, Change)>,
    /// The cursor to pass next (the last revision read).
    pub cursor: u64,
}

/// A namespace's totals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Total size of its files (the root's tree size).
    pub bytes: u64,
    /// The revision the figure is from.
    pub revision: u64,
}

pub type MetaResult<T> = std::result::Result<T, MetaError>;

/// A file or a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Folder,
}

/// One entry of a namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaEntry {
    pub id: u64,
    /// 0 for the root.
    pub parent: u64,
    /// Empty for the root.
    pub name: String,
    pub kind: Kind,
    /// A file's size; 0 for a folder.
    pub size: u64,
    /// Modification time, in the caller's units (microseconds since the epoch, say).
    pub mtime: i64,
    pub etag: String,
    /// A file's checksum, e.g. `("sha256", hex)`; empty for a folder.
    pub checksum: (String, String),
    pub mime: String,
    /// A folder's total size of the files below it; a file's own size.
    pub tree_size: u64,
    /// The newest mtime below a folder (or of the folder itself).
    pub tree_mtime: i64,
    /// Arbitrary attributes, by name.
    pub attrs: std::collections::BTreeMap<String, String>,
}

/// What a committed upload says about a file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Upload {
    pub size: u64,
    pub mtime: i64,
    pub checksum: (String, String),
    pub mime: String,
}

/// A condition on the current entry at a path.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Precondition {
    /// No condition.
    #[default]
    None,
    /// The entry exists with this etag (HTTP `If-Match`).
    IfMatch(String),
    /// No entry exists at the path (HTTP `If-None-Match: *`).
    IfNoneMatch,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    pub entries: Vec<MetaEntry>,
    /// Pass to the next call to continue after the last entry; `None` at the end.
    pub next: Option<String>,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::File => "file",
            Kind::Folder => "folder",
        })
    }
}

/// Split and check a path: absolute, no empty, `.` or `..` components, no NUL, names up to
/// [`MAX_NAME`] bytes, the whole up to [`MAX_PATH`]. `/` is the root (no components).
pub fn parse_path(path: &str) -> MetaResult<Vec<&str>> {
    if path.len() > MAX_PATH {
        return Err(too_long_to_create(path));
    }
    parse_existing(path)
}

/// The refusal of a path to a new entry that is longer than [`MAX_PATH`].
fn too_long_to_create(path: &str) -> MetaError {
    MetaError::InvalidPath {
        path: path.chars().take(200).collect(),
        reason: format!("longer than {MAX_PATH} bytes, the most for a new entry"),
    }
}

/// [`parse_path`] for a path that reaches an existing entry: up to [`MAX_LOOKUP_PATH`].
fn parse_existing(path: &str) -> MetaResult<Vec<&str>> {
    let bad = |reason: &str| MetaError::InvalidPath {
        path: path.chars().take(200).collect(),
        reason: reason.into(),
    };
    if path.len() > MAX_LOOKUP_PATH {
        return Err(bad(&format!("longer than {MAX_LOOKUP_PATH} bytes")));
    }
    if path.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(bad("not absolute (it must start with /)"));
    };
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    // One trailing slash is allowed (a folder's path); `//` is not the root.
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Err(bad("has an empty component (//)"));
    }
    let parts: Vec<&str> = rest.split('/').collect();
    for p in &parts {
        match *p {
            "" => return Err(bad("has an empty component (//)")),
            "." | ".." => return Err(bad("has a . or .. component")),
            p if p.len() > MAX_NAME => {
                return Err(bad(&format!("has a name longer than {MAX_NAME} bytes")))
            }
            _ => {}
        }
    }
    Ok(parts)
}

/// `ns | kind`, then `id` big-endian if given: a key of one of the namespace's kinds (see the
/// module docs).
fn kind_key(ns: u64, kind: u8, id: Option<u64>) -> Vec<u8> {
    let mut k = Vec::with_capacity(21);
    k.extend_from_slice(&ns.to_be_bytes());
    k.push(kind);
    if let Some(id) = id {
        k.extend_from_slice(&id.to_be_bytes());
    }
    k
}

fn ns_key(ns: u64) -> Vec<u8> {
    kind_key(ns, 0, None)
}

/// The length of every [`entry_key`]: namespace, kind, id.
const ENTRY_KEY_BYTES: usize = 17;

fn entry_key(ns: u64, id: u64) -> [u8; ENTRY_KEY_BYTES] {
    let mut k = [0u8; ENTRY_KEY_BYTES];
    k[..8].copy_from_slice(&ns.to_be_bytes());
    k[8] = 1;
    k[9..].copy_from_slice(&id.to_be_bytes());
    k
}

fn trash_head_key(ns: u64) -> Vec<u8> {
    kind_key(ns, 3, None)
}

fn trash_key(ns: u64, seq: u64) -> Vec<u8> {
    kind_key(ns, 4, Some(seq))
}

fn node_key(ns: u64, folder: u64, no: u32) -> Vec<u8> {
    let mut k = kind_key(ns, 2, Some(folder));
    k.extend_from_slice(&no.to_be_bytes());
    k
}

/// An etag counter value as the 16 lowercase hex digits clients see (`format!` with padding
/// costs several times as much, and listings make one per entry).
fn etag_hex(v: u64) -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, d) in out.iter_mut().enumerate() {
        *d = HEX[((v >> ((15 - i) * 4)) & 0xf) as usize];
    }
    out
}

fn etag_string(v: u64) -> String {
    String::from_utf8(etag_hex(v).to_vec()).expect("hex digits")
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// An entry's stored form: `id, parent, kind u8, size, mtime, etag counter, tree_size,
/// tree_mtime` (u64/i64 little-endian), then as length-prefixed strings `name, checksum
/// algorithm, checksum, mime`, then the number of attributes (`u32`) and each attribute's
/// name and value as length-prefixed strings.
fn encode(e: &MetaEntry) -> Vec<u8> {
    let mut out = Vec::with_capacity(80 + e.name.len() + e.mime.len());
    out.extend_from_slice(&e.id.to_le_bytes());
    out.extend_from_slice(&e.parent.to_le_bytes());
    out.push(u8::from(e.kind == Kind::Folder));
    out.extend_from_slice(&e.size.to_le_bytes());
    out.extend_from_slice(&e.mtime.to_le_bytes());
    let etag = u64::from_str_radix(&e.etag, 16).unwrap_or(0);
    out.extend_from_slice(&etag.to_le_bytes());
    out.extend_from_slice(&e.tree_size.to_le_bytes());
    out.extend_from_slice(&e.tree_mtime.to_le_bytes());
    put_str(&mut out, &e.name);
    put_str(&mut out, &e.checksum.0);
    put_str(&mut out, &e.checksum.1);
    put_str(&mut out, &e.mime);
    out.extend_from_slice(&(e.attrs.len() as u32).to_le_bytes());
    for (k, v) in &e.attrs {
        put_str(&mut out, k);
        put_str(&mut out, v);
    }
    out
}

fn read_str<'a>(r: &mut crate::durable::Reader<'a>) -> Option<&'a str> {
    let n = r.u32()? as usize;
    std::str::from_utf8(r.bytes(n)?).ok()
}

/// The part of a record that holds its strings, from `start` on, as one `str` if it is
/// valid UTF-8 as a whole.
struct Strings<'a> {
    start: usize,
    whole: Option<&'a str>,
}

impl<'a> Strings<'a> {
    /// [`read_str`] on `r`, a reader of `b` past `start`. A string of a valid whole is the
    /// slice of it that holds the same bytes (`str::get` checks that its ends are character
    /// boundaries); where they are not, or the whole is not valid, its bytes are checked on
    /// their own.
    fn read(&self, b: &'a [u8], r: &mut crate::durable::Reader<'a>) -> Option<&'a str> {
        let n = r.u32()? as usize;
        let at = b.len() - r.remaining();
        let bytes = r.bytes(n)?;
        self.whole
            .and_then(|w| w.get(at - self.start..at - self.start + n))
            .or_else(|| std::str::from_utf8(bytes).ok())
    }
}

fn damaged_entry() -> MetaError {
    MetaError::Engine(crate::Error::Keyspace {
        name: "meta".into(),
        reason: "an entry record does not parse (written by another version?)".into(),
    })
}

/// An entry read in place from its stored bytes: what [`MetaEntry`] holds, with the strings
/// borrowed instead of copied. [`MetaStore::list_with`] hands these out so that a caller that
/// only re-encodes a listing (terad writes each straight into its protobuf response) makes no
/// allocation per entry; [`EntryView::to_entry`] makes the owned form.
#[derive(Debug, Clone, Copy)]
pub struct EntryView<'a> {
    pub id: u64,
    /// 0 for the root.
    pub parent: u64,
    /// Empty for the root.
    pub name: &'a str,
    pub kind: Kind,
    pub size: u64,
    pub mtime: i64,
    /// The etag's counter; [`EntryView::etag_hex`] is the string clients see.
    pub etag: u64,
    /// The checksum's algorithm and value; empty for a folder.
    pub checksum: (&'a str, &'a str),
    pub mime: &'a str,
    pub tree_size: u64,
    pub tree_mtime: i64,
    attr_count: u32,
    /// The attributes' stored form (`attr_count` name/value pairs), checked by `parse`.
    attr_bytes: &'a [u8],
}

impl<'a> EntryView<'a> {
    /// Read an entry's stored form (see `encode`), checking all of it: lengths and UTF-8.
    pub fn parse(b: &'a [u8]) -> MetaResult<EntryView<'a>> {
        let bad = damaged_entry;
        let mut r = crate::durable::Reader::new(b);
        let id = r.u64().ok_or_else(bad)?;
        let parent = r.u64().ok_or_else(bad)?;
        let kind = if r.u8().ok_or_else(bad)? == 1 {
            Kind::Folder
        } else {
            Kind::File
        };
        let size = r.u64().ok_or_else(bad)?;
        let mtime = r.u64().ok_or_else(bad)? as i64;
        let etag = r.u64().ok_or_else(bad)?;
        let tree_size = r.u64().ok_or_else(bad)?;
        let tree_mtime = r.u64().ok_or_else(bad)? as i64;
        // What follows is strings and their lengths. Checked as UTF-8 in one pass, a rest
        // that is valid (every length under 128 is ASCII bytes) gives each string by slicing,
        // which checks only its ends; otherwise each string is checked on its own.
        let strings = Strings {
            start: b.len() - r.remaining(),
            whole: std::str::from_utf8(&b[b.len() - r.remaining()..]).ok(),
        };
        let name = strings.read(b, &mut r).ok_or_else(bad)?;
        let alg = strings.read(b, &mut r).ok_or_else(bad)?;
        let sum = strings.read(b, &mut r).ok_or_else(bad)?;
        let mime = strings.read(b, &mut r).ok_or_else(bad)?;
        let attr_count = r.u32().ok_or_else(bad)?;
        let attr_start = b.len() - r.remaining();
        for _ in 0..attr_count {
            strings.read(b, &mut r).ok_or_else(bad)?;
            strings.read(b, &mut r).ok_or_else(bad)?;
        }
        let attr_bytes = &b[attr_start..b.len() - r.remaining()];
        Ok(EntryView {
            id,
            parent,
            name,
            kind,
            size,
            mtime,
            etag,
            checksum: (alg, sum),
            mime,
            tree_size,
            tree_mtime,
            attr_count,
            attr_bytes,
        })
    }

    /// The etag as clients see it: 16 lowercase hex digits.
    pub fn etag_hex(&self) -> [u8; 16] {
        etag_hex(self.etag)
    }

    /// The attributes, name and value, in name order.
    pub fn attrs(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        let mut r = crate::durable::Reader::new(self.attr_bytes);
        // `parse` checked every pair, so none of these reads fails.
        (0..self.attr_count).map_while(move |_| Some((read_str(&mut r)?, read_str(&mut r)?)))
    }

    /// The owned form.
    pub fn to_entry(&self) -> MetaEntry {
        MetaEntry {
            id: self.id,
            parent: self.parent,
            name: self.name.to_owned(),
            kind: self.kind,
            size: self.size,
            mtime: self.mtime,
            etag: etag_string(self.etag),
            checksum: (self.checksum.0.to_owned(), self.checksum.1.to_owned()),
            mime: self.mime.to_owned(),
            tree_size: self.tree_size,
            tree_mtime: self.tree_mtime,
            attrs: self
                .attrs()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }
}

/// Bytes a listed entry's record is expected to take (name, etag, checksum, a few
/// attributes): what a listing's copy buffer reserves per entry, so that it rarely grows.
const LISTED_RECORD_GUESS: usize = 160;
/// Bytes of records a listing's page copies out under the namespace's lock before it ends
/// the page early (the page's `next` then continues after the last entry copied). It bounds
/// a listing's memory and how long it holds the lock, whatever the page size asked for
/// (up to [`MAX_PAGE`] entries of up to a record's largest size each); terad's pages end at
/// its response budget anyway.
pub const LIST_COPY_MAX: usize = 4 << 20;

/// A listing's buffers, kept by each thread between its listings: allocating them each time
/// was five allocations a listing (two of them under the namespace's lock), of up to
/// 16 KiB for 100 entries.
#[derive(Default)]
struct ListBufs {
    /// The page's entry keys, side by side.
    keys: Vec<u8>,
    /// Their records, side by side.
    records: Vec<u8>,
    /// Where each record ends in `records`.
    ends: Vec<usize>,
}

/// A thread's [`ListBufs`] are given back to the allocator past this many bytes of records,
/// so that one huge page does not pin its memory for the thread's life.
const LIST_BUFS_KEEP: usize = 1 << 20;

thread_local! {
    static LIST_BUFS: std::cell::Cell<Option<Box<ListBufs>>> = const { std::cell::Cell::new(None) };
}

impl ListBufs {
    /// The thread's buffers, empty; new ones if it has none (a listing inside another's
    /// `visit` gets new ones).
    fn take() -> Box<ListBufs> {
        LIST_BUFS.take().unwrap_or_default()
    }

    /// Keep the buffers for the thread's next listing, unless they grew too large.
    fn give_back(mut self: Box<Self>) {
        if self.records.capacity() > LIST_BUFS_KEEP {
            return;
        }
        self.keys.clear();
        self.records.clear();
        self.ends.clear();
        LIST_BUFS.set(Some(self));
    }
}

/// Hand the records of a listing's page (`records`, the i-th ending at `ends[i]`) to
/// `visit` in order until it returns false, and return the page's continuation: the last
/// name handed out when entries remain (`more`: the folder has entries past the page; or
/// `visit` stopped before the page's end), else `None`.
fn visit_records(
    records: &[u8],
    ends: &[usize],
    more: bool,
    mut visit: impl FnMut(&EntryView<'_>) -> bool,
) -> MetaResult<Option<String>> {
    let mut start = 0;
    let mut last = None;
    for (i, &end) in ends.iter().enumerate() {
        let e = EntryView::parse(&records[start..end])?;
        start = end;
        let go_on = visit(&e);
        let stopped_early = !go_on && i + 1 < ends.len();
        if more || stopped_early {
            last = Some(e.name);
        }
        if !go_on {
            break;
        }
    }
    Ok(last.filter(|n| !n.is_empty()).map(str::to_owned))
}

fn decode(b: &[u8]) -> MetaResult<MetaEntry> {
    EntryView::parse(b).map(|v| v.to_entry())
}

/// The metadata store: namespaces of folders and files. See the module docs.
#[derive(Debug, Clone)]
pub struct MetaStore {
    ks: Keyspace,
    node_bytes: usize,
    reclaim_step: usize,
}

/// Items of work one step of a recursive delete's reclaim does, at most (plus the rest of
/// the directory node it took last): an item is an entry forgotten, a queued node taken off
/// the trash queue, or a node or folder put on it, each about one write. Each step is one
/// atomic batch, so this bounds the memory a delete of any size holds at once.
pub const RECLAIM_STEP: usize = 1024;

/// What [`MetaStore::reclaim`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Entries removed.
    pub entries: u64,
    /// Atomic batches that did work.
    pub steps: u64,
    /// Most entries one batch removed.
    pub largest_step: u64,
    /// Most items of work one batch did (queued nodes taken off, nodes and folders queued,
    /// entries forgotten): about its writes.
    pub largest_work: u64,
}

/// One mutation's working state inside its namespace's atomic batch.
struct Op<'a, 'b> {
    tx: &'a mut Tx<'b>,
    ns: u64,
    node_bytes: usize,
    /// The counters as read; written back only if they moved, so that an operation that
    /// changes nothing (a move onto itself, mkdir -p of an existing folder) commits nothing
    /// and takes no revision.
    read_counters: (u64, u64),
    next_id: u64,
    next_etag: u64,
    /// Entries read or changed so far, written back at the end.
    dirty: Vec<MetaEntry>,
    /// Entries deleted.
    deleted: Vec<u64>,
    /// Directory nodes this operation changed (`None` once removed), with whether the store
    /// has the node. The transaction reads the state before its own writes, so this is what
    /// makes an operation see its own changes; nodes only read are read in place.
    nodes: HashMap<(u64, u32), CachedNode>,
    /// The trash queue, once this operation has used it.
    trash: Option<Trash>,
}

/// The trash queue's state in one operation: its bounds as read and as they are now, and the
/// items pushed (at `read.1` on).
struct Trash {
    read: (u64, u64),
    lo: u64,
    hi: u64,
    pushed: Vec<(u64, u32)>,
}

struct CachedNode {
    node: Option<Vec<u8>>,
    stored: bool,
}

impl dir::Nodes for Op<'_, '_> {
    fn read<R>(
        &mut self,
        folder: u64,
        no: u32,
        f: impl FnOnce(Option<&[u8]>) -> R,
    ) -> MetaResult<R> {
        if let Some(c) = self.nodes.get(&(folder, no)) {
            return Ok(f(c.node.as_deref()));
        }
        let mut f = Some(f);
        let key = node_key(self.ns, folder, no);
        match self.tx.read(&key, |v| f.take().map(|f| f(Some(v))))? {
            Some(Some(r)) => Ok(r),
            _ => Ok(f.take().map(|f| f(None)).expect("f not called yet")),
        }
    }

    fn store(&mut self, folder: u64, no: u32, node: Vec<u8>) -> MetaResult<()> {
        self.set_node(folder, no, Some(node))
    }

    fn remove(&mut self, folder: u64, no: u32) -> MetaResult<()> {
        self.set_node(folder, no, None)
    }

    fn node_bytes(&self) -> usize {
        self.node_bytes
    }
}

impl<'a, 'b> Op<'a, 'b> {
    fn set_node(&mut self, folder: u64, no: u32, node: Option<Vec<u8>>) -> MetaResult<()> {
        if let Some(c) = self.nodes.get_mut(&(folder, no)) {
            c.node = node;
            return Ok(());
        }
        let stored = self
            .tx
            .read(&node_key(self.ns, folder, no), |_| ())?
            .is_some();
        self.nodes.insert((folder, no), CachedNode { node, stored });
        Ok(())
    }

    fn begin(tx: &'a mut Tx<'b>, ns: u64, node_bytes: usize) -> MetaResult<Op<'a, 'b>> {
        let header = tx.read(&ns_key(ns), |v| {
            let mut r = crate::durable::Reader::new(v);
            (r.u64(), r.u64())
        })?;
        let Some(header) = header else {
            return Err(MetaError::NotFound(format!("namespace {ns}")));
        };
        let (Some(next_id), Some(next_etag)) = header else {
            // Damage, not absence: a caller told "not found" might create the namespace
            // again over what is left of it.
            return Err(MetaError::Engine(crate::Error::Corrupt {
                path: format!("<namespace {ns} header>").into(),
                offset: 0,
                reason: "its id and etag counters do not decode".into(),
            }));
        };
        Ok(Op {
            tx,
            ns,
            node_bytes,
            read_counters: (next_id, next_etag),
            next_id,
            next_etag,
            dirty: Vec::new(),
            deleted: Vec::new(),
            nodes: HashMap::new(),
            trash: None,
        })
    }

    fn trash(&mut self) -> MetaResult<&mut Trash> {
        if self.trash.is_none() {
            let read = self
                .tx
                .read(&trash_head_key(self.ns), |v| {
                    let mut r = crate::durable::Reader::new(v);
                    (r.u64(), r.u64())
                })?
                .map(|b| match b {
                    (Some(lo), Some(hi)) if lo <= hi => Ok((lo, hi)),
                    _ => Err(MetaError::Engine(crate::Error::Corrupt {
                        path: format!("<namespace {} trash queue>", self.ns).into(),
                        offset: 0,
                        reason: "its bounds do not decode".into(),
                    })),
                })
                .transpose()?
                .unwrap_or((0, 0));
            self.trash = Some(Trash {
                read,
                lo: read.0,
                hi: read.1,
                pushed: Vec::new(),
            });
        }
        Ok(self.trash.as_mut().expect("set above"))
    }

    /// Queue node `no` of `folder`'s directory for reclaim.
    fn trash_push(&mut self, folder: u64, no: u32) -> MetaResult<()> {
        let t = self.trash()?;
        t.pushed.push((folder, no));
        t.hi += 1;
        Ok(())
    }

    /// The oldest queued directory node, taken off the queue.
    fn trash_pop(&mut self) -> MetaResult<Option<(u64, u32)>> {
        let ns = self.ns;
        let t = self.trash()?;
        if t.lo == t.hi {
            return Ok(None);
        }
        let seq = t.lo;
        t.lo += 1;
        if seq >= t.read.1 {
            return Ok(Some(t.pushed[(seq - t.read.1) as usize]));
        }
        let item = self.tx.read(&trash_key(ns, seq), |v| {
            let mut r = crate::durable::Reader::new(v);
            (r.u64(), r.u32())
        })?;
        match item {
            Some((Some(folder), Some(no))) => Ok(Some((folder, no))),
            // A queue item that is missing or does not decode leaves its nodes and entries
            // behind as garbage; everything reachable is unaffected.
            _ => Err(MetaError::Engine(crate::Error::Corrupt {
                path: format!("<namespace {ns} trash queue>").into(),
                offset: seq,
                reason: "a queued item is missing or does not decode".into(),
            })),
        }
    }

    /// Whether the trash queue has items left.
    fn trash_pending(&mut self) -> MetaResult<bool> {
        let t = self.trash()?;
        Ok(t.lo < t.hi)
    }

    /// Take up to about `budget` items of work off the trash queue: each queued node is
    /// removed whole, its child nodes or its entries' sub-folders queued, its entries
    /// forgotten. An item is a queued node taken off, a node or folder queued, or an entry
    /// forgotten, so that a step's batch stays about `budget` writes (plus one node's) even
    /// when its items forget nothing: an empty folder is queued and has no node, and a tree
    /// of 800k empty folders once made one batch of them all. Returns the entries forgotten
    /// and the items of work.
    fn reclaim_some(&mut self, budget: usize) -> MetaResult<(usize, usize)> {
        let (mut removed, mut work) = (0, 0);
        while work < budget {
            let Some((folder, no)) = self.trash_pop()? else {
                break;
            };
            work += 1;
            match dir::take_node(self, folder, no)? {
                None => {}
                Some((true, children)) => {
                    for c in children {
                        self.trash_push(folder, c as u32)?;
                        work += 1;
                    }
                }
                Some((false, ids)) => {
                    for id in ids {
                        if self.is_folder(id)? {
                            self.trash_push(id, 0)?;
                            work += 1;
                        }
                        self.forget(id);
                        removed += 1;
                        work += 1;
                    }
                }
            }
        }
        Ok((removed, work))
    }

    fn etag(&mut self) -> String {
        let e = self.next_etag;
        self.next_etag += 1;
        etag_string(e)
    }

    fn entry(&mut self, id: u64) -> MetaResult<MetaEntry> {
        if let Some(e) = self.dirty.iter().find(|e| e.id == id) {
            return Ok(e.clone());
        }
        match self.tx.read(&entry_key(self.ns, id), decode)? {
            Some(e) => e,
            None => Err(MetaError::NotFound(format!("entry {id}"))),
        }
    }

    /// Whether `e` is still in the tree: its folders lead up to the root. A recursive delete
    /// unlinks and forgets the folder at once but removes what was below it in steps (the
    /// trash), so an entry below a deleted folder can be stored for a while yet: by id it
    /// reads as not found, as by path. Costs a read per folder above the entry.
    fn check_attached(&mut self, e: &MetaEntry) -> MetaResult<()> {
        // Moves can make a tree deeper than any path limit, so depth alone proves nothing:
        // past a depth no usual tree reaches, the folders seen are remembered, and meeting
        // one again is a cycle of parents (damage).
        const USUAL_DEPTH: usize = 4096;
        let mut seen = std::collections::HashSet::new();
        let mut parent = e.parent;
        let mut depth = 0usize;
        while e.id != ROOT_ID && parent != ROOT_ID {
            depth += 1;
            if depth > USUAL_DEPTH && !seen.insert(parent) {
                return Err(MetaError::Engine(crate::Error::Corrupt {
                    path: Default::default(),
                    offset: 0,
                    reason: format!(
                        "namespace {}: the folders above entry {} form a cycle (folder {parent} \
                         is its own ancestor)",
                        self.ns, e.id
                    ),
                }));
            }
            match self.entry(parent) {
                Ok(p) => parent = p.parent,
                Err(MetaError::NotFound(_)) => {
                    return Err(MetaError::NotFound(format!(
                        "entry {} (a folder above it was deleted)",
                        e.id
                    )))
                }
                Err(other) => return Err(other),
            }
        }
        Ok(())
    }

    fn child(&mut self, parent: u64, name: &str) -> MetaResult<Option<u64>> {
        dir::lookup(self, parent, name.as_bytes())
    }

    /// The id of the entry at `parts`, or the error naming the first missing component.
    fn resolve_id(&mut self, path: &str, parts: &[&str]) -> MetaResult<u64> {
        let mut id = ROOT_ID;
        for (i, p) in parts.iter().enumerate() {
            if !self.is_folder(id)? {
                return Err(MetaError::NotAFolder(format!("/{}", parts[..i].join("/"))));
            }
            match self.child(id, p)? {
                Some(c) => id = c,
                None => return Err(MetaError::NotFound(path.to_string())),
            }
        }
        Ok(id)
    }

    /// The entry at `parts`, or the error naming the first missing component.
    fn resolve(&mut self, path: &str, parts: &[&str]) -> MetaResult<MetaEntry> {
        let id = self.resolve_id(path, parts)?;
        self.entry(id)
    }

    /// The id of the folder at `parts`: [`Op::resolve`]'s walk and errors, and `NotAFolder`
    /// for a file, without decoding the folder's record (a listing, under the namespace's
    /// lock, needs its id alone).
    fn resolve_folder(&mut self, path: &str, parts: &[&str]) -> MetaResult<u64> {
        let id = self.resolve_id(path, parts)?;
        if !self.is_folder(id)? {
            return Err(MetaError::NotAFolder(path.into()));
        }
        Ok(id)
    }

    /// [`Op::resolve`] for the entry a request names: a path ending in `/` names a folder,
    /// so a file there is `NotAFolder` (as POSIX's `ENOTDIR` for `file/`).
    fn resolve_named(&mut self, path: &str, parts: &[&str]) -> MetaResult<MetaEntry> {
        let e = self.resolve(path, parts)?;
        if e.kind == Kind::File && path.ends_with('/') {
            return Err(MetaError::NotAFolder(path.to_string()));
        }
        Ok(e)
    }

    /// Whether entry `id` is a folder, read from its record's kind byte alone (path
    /// resolution needs no more of the folders on the way).
    fn is_folder(&mut self, id: u64) -> MetaResult<bool> {
        if let Some(e) = self.dirty.iter().find(|e| e.id == id) {
            return Ok(e.kind == Kind::Folder);
        }
        match self
            .tx
            .read(&entry_key(self.ns, id), |v| v.get(16).copied())?
        {
            Some(Some(kind)) => Ok(kind == 1),
            Some(None) => Err(damaged_entry()),
            None => Err(MetaError::NotFound(format!("entry {id}"))),
        }
    }

    fn save(&mut self, e: MetaEntry) {
        match self.dirty.iter_mut().find(|d| d.id == e.id) {
            Some(d) => *d = e,
            None => self.dirty.push(e),
        }
    }

    /// Give `from` and each of its ancestors a new etag, add `size_delta` to their tree
    /// sizes, and raise their tree mtimes to `mtime`. A tree size that would pass
    /// `u64::MAX` refuses the whole mutation.
    fn touch_up(&mut self, from: u64, size_delta: i128, mtime: i64) -> MetaResult<()> {
        let mut id = from;
        while id != 0 {
            let mut e = self.entry(id)?;
            e.etag = self.etag();
            // Never below 0: a tree's size is the sum of what is below it, so only damage
            // could take it there, and a size is better clamped than refused forever.
            let size = (i128::from(e.tree_size) + size_delta).max(0);
            e.tree_size = u64::try_from(size).map_err(|_| {
                MetaError::OutOfBounds(format!(
                    "the files below the folder {:?} would total {size} bytes, more than the {} a tree can hold",
                    if e.name.is_empty() { "/" } else { &e.name },
                    u64::MAX
                ))
            })?;
            e.tree_mtime = e.tree_mtime.max(mtime);
            id = e.parent;
            self.save(e);
        }
        Ok(())
    }

    fn link(&mut self, parent: u64, name: &str, id: u64) -> MetaResult<()> {
        dir::insert(self, parent, name.as_bytes(), id)
    }

    fn unlink(&mut self, parent: u64, name: &str) -> MetaResult<()> {
        dir::remove(self, parent, name.as_bytes())?;
        Ok(())
    }

    /// Forget entry `id`: it is deleted at commit.
    fn forget(&mut self, id: u64) {
        self.dirty.retain(|d| d.id != id);
        self.deleted.push(id);
    }

    /// Write the changed entries and directory nodes, and the counters.
    fn commit(self) -> MetaResult<()> {
        for e in &self.dirty {
            self.tx.put(&entry_key(self.ns, e.id), &encode(e))?;
        }
        for &id in &self.deleted {
            self.tx.delete(&entry_key(self.ns, id))?;
        }
        let mut nodes: Vec<_> = self.nodes.into_iter().collect();
        nodes.sort_unstable_by_key(|(k, _)| *k); // one order for the log, whatever the hasher
        for ((folder, no), c) in nodes {
            let key = node_key(self.ns, folder, no);
            match c.node {
                Some(n) => self.tx.put(&key, &n)?,
                None if c.stored => self.tx.delete(&key)?,
                None => {}
            }
        }
        if let Some(t) = self.trash {
            for seq in t.read.0..t.lo.min(t.read.1) {
                self.tx.delete(&trash_key(self.ns, seq))?;
            }
            for (i, &(folder, no)) in t.pushed.iter().enumerate() {
                let seq = t.read.1 + i as u64;
                if seq >= t.lo {
                    let mut v = folder.to_le_bytes().to_vec();
                    v.extend_from_slice(&no.to_le_bytes());
                    self.tx.put(&trash_key(self.ns, seq), &v)?;
                }
            }
            if (t.lo, t.hi) != t.read {
                if t.lo == t.hi {
                    // Empty: start again at 0 (every item key is gone).
                    self.tx.delete(&trash_head_key(self.ns))?;
                } else {
                    let mut h = t.lo.to_le_bytes().to_vec();
                    h.extend_from_slice(&t.hi.to_le_bytes());
                    self.tx.put(&trash_head_key(self.ns), &h)?;
                }
            }
        }
        if (self.next_id, self.next_etag) != self.read_counters {
            let mut h = self.next_id.to_le_bytes().to_vec();
            h.extend_from_slice(&self.next_etag.to_le_bytes());
            self.tx.put(&ns_key(self.ns), &h)?;
        }
        Ok(())
    }
}

/// With `if_match`, the entry at `path` must carry that etag.
fn if_match_etag(path: &str, e: &MetaEntry, if_match: Option<&str>) -> MetaResult<()> {
    match if_match {
        Some(t) if e.etag != t => Err(MetaError::PreconditionFailed(format!(
            "{path} has etag {}, not {t}",
            e.etag
        ))),
        _ => Ok(()),
    }
}

fn folder(id: u64, parent: u64, name: &str, mtime: i64, etag: String) -> MetaEntry {
    MetaEntry {
        id,
        parent,
        name: name.into(),
        kind: Kind::Folder,
        size: 0,
        mtime,
        etag,
        checksum: Default::default(),
        mime: String::new(),
        tree_size: 0,
        tree_mtime: mtime,
        attrs: Default::default(),
    }
}

impl MetaStore {
    /// Set (`Some`) or remove (`None`) attributes of the entry at `path`.
    pub fn set_attrs(
        &self,
        ns: u64,
        path: &str,
        attrs: &[(&str, Option<&str>)],
        mtime: i64,
    ) -> MetaResult<MetaEntry> {
        let parts = parse_existing(path)?;
        self.atomic(ns, |op| {
            let mut e = op.resolve_named(path, &parts)?;
            let before = e.attrs.clone();
            for (k, v) in attrs {
                match v {
                    Some(v) => e.attrs.insert((*k).into(), (*v).into()),
                    None => e.attrs.remove(*k),
                };
            }
            if e.attrs == before {
                return Ok(e); // nothing changed: etags stay
            }
            let id = e.id;
            op.save(e);
            op.touch_up(id, 0, mtime)?;
            op.entry(id)
        })
    }

    /// The namespace's total file size, and the durable revision it is from (a change
    /// cursor; see [`MetaStore::cursor`]).
    pub fn usage(&self, ns: u64) -> MetaResult<Usage> {
        let revision = self.cursor()?;
        let root = self.stat(ns, "/")?;
        Ok(Usage {
            bytes: root.tree_size,
            revision,
        })
    }

    /// The keyspace's current revision, made durable: a cursor from which
    /// [`MetaStore::changes`] returns every later change, also after a crash (a revision not
    /// yet durable could be handed out again by the recovery, and a client holding it would
    /// skip that change). May wait for one log flush.
    pub fn cursor(&self) -> MetaResult<u64> {
        Ok(self.ks.durable_revision()?)
    }

    /// Changes to namespace `ns` after `cursor`, from at most `max_revisions` revisions,
    /// waiting up to `wait` for the first (zero: return at once). Deleting a folder
    /// recursively shows as one delete per entry below it.
    pub fn changes(
        &self,
        ns: u64,
        cursor: u64,
        max_revisions: usize,
        wait: std::time::Duration,
    ) -> MetaResult<ChangePage> {
        let revision = self.ks.revision();
        if cursor > revision {
            return Err(MetaError::CursorAhead { cursor, revision });
        }
        let mut lo = ns.to_be_bytes().to_vec();
        lo.push(1);
        let mut hi = ns.to_be_bytes().to_vec();
        hi.push(2);
        let too_old = |e| match e {
            crate::Error::Compacted { requested, oldest } => MetaError::CursorTooOld {
                cursor: requested,
                oldest,
            },
            e => MetaError::Engine(e),
        };
        let mut w = self.ks.watch(&lo, Some(&hi), cursor).map_err(too_old)?;
        let events = w.next(wait, max_revisions).map_err(too_old)?;
        let mut changes = Vec::with_capacity(events.len());
        for e in events {
            let change = match e.kind {
                crate::EventKind::Put => Change::Upsert(decode(&e.value)?),
                crate::EventKind::Delete => Change::Delete(u64::from_be_bytes(
                    e.key[9..17].try_into().unwrap_or([0; 8]),
                )),
            };
            changes.push((e.mod_revision, change));
        }
        Ok(ChangePage {
            changes,
            cursor: w.revision(),
        })
    }

    /// The metadata store of `db` (its keyspace `meta`, created if missing).
    pub fn open(db: &Db) -> MetaResult<MetaStore> {
        let ks = db.keyspace("meta", KeyspaceOptions::hash().partition_prefix(8))?;
        let node_bytes = ks.max_value_bytes().min(dir::NODE_BYTES);
        if node_bytes < dir::MIN_NODE_BYTES {
            return Err(MetaError::Engine(crate::Error::Config(format!(
                "max_value_bytes = {}: the metadata store needs values of at least {} bytes",
                ks.max_value_bytes(),
                dir::MIN_NODE_BYTES
            ))));
        }
        Ok(MetaStore {
            ks,
            node_bytes,
            reclaim_step: RECLAIM_STEP,
        })
    }

    fn atomic<R>(
        &self,
        ns: u64,
        f: impl FnOnce(&mut Op<'_, '_>) -> MetaResult<R>,
    ) -> MetaResult<R> {
        let mut out = None;
        let mut err = None;
        let pk = ns.to_be_bytes();
        self.ks
            .atomic(&pk, |tx| {
                let r = Op::begin(tx, ns, self.node_bytes).and_then(|mut op| {
                    let v = f(&mut op)?;
                    op.commit()?;
                    Ok(v)
                });
                match r {
                    Ok(v) => {
                        out = Some(v);
                        Ok(())
                    }
                    Err(MetaError::Engine(e)) => Err(e),
                    Err(e) => {
                        err = Some(e);
                        // Abort the batch: nothing is written.
                        Err(crate::Error::Keyspace {
                            name: "meta".into(),
                            reason: "aborted".into(),
                        })
                    }
                }
            })
            .map_err(|e| match e {
                // The model's own answer (already exists, not found, ...) rests on what it
                // read; if that could not be made durable, the answer must not be given.
                e @ crate::Error::NotDurable(_) => MetaError::Engine(e),
                e => err.take().unwrap_or(MetaError::Engine(e)),
            })?;
        Ok(out.expect("set on success"))
    }

    /// Create namespace `ns` with an empty root folder; an existing one is left as it is.
    pub fn create_namespace(&self, ns: u64, mtime: i64) -> MetaResult<MetaEntry> {
        let pk = ns.to_be_bytes();
        let (root, _) = self.ks.atomic(&pk, |tx| {
            if tx.get(&ns_key(ns))?.is_some() {
                return Ok(None);
            }
            let root = folder(ROOT_ID, 0, "", mtime, etag_string(1));
            tx.put(&entry_key(ns, ROOT_ID), &encode(&root))?;
            let mut h = (ROOT_ID + 1).to_le_bytes().to_vec();
            h.extend_from_slice(&2u64.to_le_bytes());
            tx.put(&ns_key(ns), &h)?;
            Ok(Some(root))
        })?;
        match root {
            Some(r) => Ok(r),
            None => self.stat(ns, "/"),
        }
    }

    /// The entry at `path`.
    pub fn stat(&self, ns: u64, path: &str) -> MetaResult<MetaEntry> {
        self.settle(self.stat_deferred(ns, path))
    }

    /// The entry with id `id`.
    pub fn stat_id(&self, ns: u64, id: u64) -> MetaResult<MetaEntry> {
        self.settle(self.stat_id_deferred(ns, id))
    }

    /// [`MetaStore::stat`] without waiting for what it read to be durable: the answer, to be
    /// given only once [`MetaStore::is_durable`] (or [`MetaStore::wait_durable`]) says so
    /// (see [`Keyspace::read_deferred`]). For an async server's runtime threads, which must
    /// not wait for a log flush.
    pub fn stat_deferred(&self, ns: u64, path: &str) -> (MetaResult<MetaEntry>, Seen) {
        match parse_existing(path) {
            Ok(parts) => self.read_deferred(ns, |op| op.resolve_named(path, &parts)),
            Err(e) => (Err(e), Seen::default()),
        }
    }

    /// [`MetaStore::stat_id`] without waiting (see [`MetaStore::stat_deferred`]).
    pub fn stat_id_deferred(&self, ns: u64, id: u64) -> (MetaResult<MetaEntry>, Seen) {
        self.read_deferred(ns, |op| {
            let e = op.entry(id)?;
            op.check_attached(&e)?;
            Ok(e)
        })
    }

    /// Whether an answer that rests on `seen` may be given now (one atomic load).
    pub fn is_durable(&self, seen: Seen) -> bool {
        self.ks.is_durable(seen)
    }

    /// Wait until what a deferred read saw is durable; an error if the log failed first
    /// (the answer must not be given).
    pub fn wait_durable(&self, seen: Seen) -> MetaResult<()> {
        Ok(self.ks.wait_durable(seen)?)
    }

    /// [`MetaStore::wait_durable`] for an async task: no thread waits (see
    /// [`Keyspace::durable`]).
    pub fn durable(&self, seen: Seen) -> impl std::future::Future<Output = MetaResult<()>> + '_ {
        let wait = self.ks.durable(seen);
        async move { Ok(wait.await?) }
    }

    /// A deferred read's answer, once what it saw is durable.
    fn settle<R>(&self, (r, seen): (MetaResult<R>, Seen)) -> MetaResult<R> {
        self.wait_durable(seen)?;
        r
    }

    /// Reads under the namespace's lock (one consistent state), writing nothing, and what
    /// they saw.
    fn read_deferred<R>(
        &self,
        ns: u64,
        f: impl FnOnce(&mut Op<'_, '_>) -> MetaResult<R>,
    ) -> (MetaResult<R>, Seen) {
        let mut out = None;
        let pk = ns.to_be_bytes();
        let (r, seen) = self.ks.read_deferred(&pk, |tx| {
            out = Some(Op::begin(tx, ns, self.node_bytes).and_then(|mut op| f(&mut op)));
            Ok(())
        });
        let r = match r {
            Ok(()) => out.expect("ran"),
            Err(e) => Err(MetaError::Engine(e)),
        };
        (r, seen)
    }

    /// A page of the folder at `path`, in name order: up to `page` entries (1 to
    /// [`MAX_PAGE`]) after the name in `after` (a previous page's `next`).
    pub fn list(
        &self,
        ns: u64,
        path: &str,
        page: usize,
        after: Option<&str>,
    ) -> MetaResult<ListPage> {
        let mut entries = Vec::new();
        let next = self.list_with(ns, path, page, after, |v| {
            entries.push(v.to_entry());
            true
        })?;
        Ok(ListPage { entries, next })
    }

    /// [`MetaStore::list`] without the copies: each entry of the page goes to `visit` as a
    /// view of its stored bytes, in name order, and the result is the page's `next`. The
    /// page's records are copied out under the namespace's lock and `visit` runs after it is
    /// released, on that copy. `visit` returns whether to go on, and when it says stop, the
    /// page ends with that entry (its `next` is that entry's name if more follow: a caller
    /// can end a page early, at a byte budget). A page also ends early, with a `next`, once
    /// its records take [`LIST_COPY_MAX`] bytes (at least one entry is always given). If an
    /// entry does not parse, the listing fails with that error and `visit` has seen only the
    /// entries before it.
    pub fn list_with(
        &self,
        ns: u64,
        path: &str,
        page: usize,
        after: Option<&str>,
        visit: impl FnMut(&EntryView<'_>) -> bool,
    ) -> MetaResult<Option<String>> {
        self.settle(self.list_with_deferred(ns, path, page, after, visit))
    }

    /// [`MetaStore::list_with`] without waiting for what it read to be durable (see
    /// [`MetaStore::stat_deferred`]): what `visit` was given must not be handed out before.
    pub fn list_with_deferred(
        &self,
        ns: u64,
        path: &str,
        page: usize,
        after: Option<&str>,
        visit: impl FnMut(&EntryView<'_>) -> bool,
    ) -> (MetaResult<Option<String>>, Seen) {
        let parts = match parse_existing(path) {
            Ok(parts) => parts,
            Err(e) => return (Err(e), Seen::default()),
        };
        let page = page.clamp(1, MAX_PAGE);
        // Under the namespace's lock, only what must be: find the entries and copy their
        // records out, side by side in one buffer. Parsing them and `visit` (a server
        // encodes each into its response) run after the lock is released, so that listings
        // and writes of the same namespace on other threads wait for a copy, not an encoding.
        let mut bufs = ListBufs::take();
        let ListBufs {
            keys,
            records,
            ends,
        } = &mut *bufs;
        let (more, seen) = self.read_deferred(ns, |op| {
            let dir = op.resolve_folder(path, &parts)?;
            // The entries' keys side by side in one buffer, all the same length.
            dir::scan(op, dir, after.map(str::as_bytes), page + 1, |_, id| {
                keys.extend_from_slice(&entry_key(ns, id))
            })?;
            let more = keys.len() > page * ENTRY_KEY_BYTES;
            keys.truncate(page * ENTRY_KEY_BYTES);
            let refs: Vec<&[u8]> = keys.chunks_exact(ENTRY_KEY_BYTES).collect();
            records.reserve((refs.len() * LISTED_RECORD_GUESS).min(LIST_COPY_MAX));
            let mut full = false;
            op.tx.get_many(&refs, |_, v| {
                if !full {
                    records.extend_from_slice(v);
                    ends.push(records.len());
                    full = records.len() >= LIST_COPY_MAX;
                }
            })?;
            // Entries left out past the cap follow on the next page.
            Ok(more || ends.len() < refs.len())
        });
        let r = more.and_then(|more| visit_records(records, ends, more, visit));
        bufs.give_back();
        (r, seen)
    }

    /// Create the folder at `path` (and, with `parents`, the folders above it that are
    /// missing). An existing folder at `path` is `AlreadyExists` unless `parents` is set.
    pub fn mkdir(&self, ns: u64, path: &str, parents: bool, mtime: i64) -> MetaResult<MetaEntry> {
        let parts = parse_path(path)?;
        if parts.is_empty() {
            return if parents {
                self.stat(ns, "/")
            } else {
                Err(MetaError::AlreadyExists("/".into()))
            };
        }
        self.atomic(ns, |op| {
            let mut cur = op.entry(ROOT_ID)?;
            let mut created = None;
            for (i, p) in parts.iter().enumerate() {
                let last = i + 1 == parts.len();
                if cur.kind != Kind::Folder {
                    return Err(MetaError::NotAFolder(format!("/{}", parts[..i].join("/"))));
                }
                match op.child(cur.id, p)? {
                    Some(id) => {
                        let e = op.entry(id)?;
                        if last {
                            if !parents || e.kind != Kind::Folder {
                                return Err(MetaError::AlreadyExists(path.into()));
                            }
                            return Ok(e);
                        }
                        cur = e;
                    }
                    None => {
                        if !last && !parents {
                            return Err(MetaError::NotFound(format!(
                                "/{} (create it first, or pass parents)",
                                parts[..=i].join("/")
                            )));
                        }
                        let id = op.next_id;
                        op.next_id += 1;
                        let etag = op.etag();
                        let f = folder(id, cur.id, p, mtime, etag);
                        op.link(cur.id, p, id)?;
                        op.save(f.clone());
                        created.get_or_insert(cur.id);
                        cur = f;
                    }
                }
            }
            if let Some(top) = created {
                op.touch_up(top, 0, mtime)?;
            }
            op.entry(cur.id)
        })
    }

    /// Commit an upload: create or overwrite the file at `path` (its parent must exist).
    pub fn upload(
        &self,
        ns: u64,
        path: &str,
        up: &Upload,
        pre: &Precondition,
    ) -> MetaResult<MetaEntry> {
        let parts = parse_existing(path)?;
        let Some((name, dir)) = parts.split_last() else {
            return Err(MetaError::IsAFolder("/".into()));
        };
        if path.ends_with('/') {
            return Err(MetaError::InvalidPath {
                path: path.chars().take(200).collect(),
                reason: "a file's path cannot end with /".into(),
            });
        }
        if up.size > MAX_FILE_SIZE {
            return Err(MetaError::OutOfBounds(format!(
                "size {} of {path} is over the largest file size, {MAX_FILE_SIZE} bytes",
                up.size
            )));
        }
        self.atomic(ns, |op| {
            let parent = op.resolve(path, dir).map_err(|e| match e {
                MetaError::NotFound(_) => {
                    MetaError::NotFound(format!("/{} (the parent folder)", dir.join("/")))
                }
                e => e,
            })?;
            if parent.kind != Kind::Folder {
                return Err(MetaError::NotAFolder(format!("/{}", dir.join("/"))));
            }
            let existing = match op.child(parent.id, name)? {
                Some(id) => Some(op.entry(id)?),
                None => None,
            };
            match (pre, &existing) {
                (Precondition::IfMatch(t), Some(e)) => if_match_etag(path, e, Some(t))?,
                (Precondition::IfMatch(t), None) => {
                    return Err(MetaError::PreconditionFailed(format!(
                        "{path} does not exist (If-Match {t})"
                    )))
                }
                (Precondition::IfNoneMatch, Some(_)) => {
                    return Err(MetaError::PreconditionFailed(format!(
                        "{path} exists (If-None-Match)"
                    )))
                }
                _ => {}
            }
            if existing.as_ref().is_some_and(|e| e.kind == Kind::Folder) {
                return Err(MetaError::IsAFolder(path.into()));
            }
            let old_size = existing.as_ref().map_or(0, |e| e.size);
            let id = match &existing {
                Some(e) => e.id,
                None if path.len() > MAX_PATH => return Err(too_long_to_create(path)),
                None => {
                    let id = op.next_id;
                    op.next_id += 1;
                    op.link(parent.id, name, id)?;
                    id
                }
            };
            let etag = op.etag();
            op.save(MetaEntry {
                id,
                parent: parent.id,
                name: (*name).into(),
                kind: Kind::File,
                size: up.size,
                mtime: up.mtime,
                etag,
                checksum: up.checksum.clone(),
                mime: up.mime.clone(),
                tree_size: up.size,
                tree_mtime: up.mtime,
                attrs: existing
                    .as_ref()
                    .map(|e| e.attrs.clone())
                    .unwrap_or_default(),
            });
            op.touch_up(
                parent.id,
                i128::from(up.size) - i128::from(old_size),
                up.mtime,
            )?;
            op.entry(id)
        })
    }

    /// Move (or rename) the entry at `from` to `to`, whose parent must exist and where
    /// nothing may exist. A folder cannot move into itself or below itself. With `if_match`,
    /// the entry's etag must match.
    pub fn rename(
        &self,
        ns: u64,
        from: &str,
        to: &str,
        if_match: Option<&str>,
        mtime: i64,
    ) -> MetaResult<MetaEntry> {
        let src = parse_existing(from)?;
        let dst = parse_path(to)?;
        if src.is_empty() {
            return Err(MetaError::InvalidPath {
                path: from.into(),
                reason: "the root cannot move".into(),
            });
        }
        let Some((new_name, new_dir)) = dst.split_last() else {
            return Err(MetaError::AlreadyExists("/".into()));
        };
        if dst.len() > src.len() && dst[..src.len()] == src[..] {
            return Err(MetaError::InvalidPath {
                path: to.into(),
                reason: format!("{from} cannot move into itself or below itself"),
            });
        }
        self.atomic(ns, |op| {
            let e = op.resolve_named(from, &src)?;
            if_match_etag(from, &e, if_match)?;
            if e.kind == Kind::File && to.ends_with('/') {
                return Err(MetaError::InvalidPath {
                    path: to.chars().take(200).collect(),
                    reason: "a file's path cannot end with /".into(),
                });
            }
            let target = op.resolve(to, new_dir).map_err(|err| match err {
                MetaError::NotFound(_) => {
                    MetaError::NotFound(format!("/{} (the target folder)", new_dir.join("/")))
                }
                err => err,
            })?;
            if target.kind != Kind::Folder {
                return Err(MetaError::NotAFolder(format!("/{}", new_dir.join("/"))));
            }
            if src == dst {
                return Ok(e); // nothing changes: etags stay
            }
            if op.child(target.id, new_name)?.is_some() {
                return Err(MetaError::AlreadyExists(to.into()));
            }
            let size = i128::from(e.tree_size);
            op.unlink(e.parent, &e.name)?;
            op.touch_up(e.parent, -size, mtime)?;
            op.link(target.id, new_name, e.id)?;
            let mut moved = op.entry(e.id)?;
            moved.parent = target.id;
            moved.name = (*new_name).into();
            op.save(moved);
            // The moved entry, its new parent and the new parent's ancestors get new etags
            // (the entry's own tree size does not change).
            let mut m = op.entry(e.id)?;
            m.etag = op.etag();
            op.save(m);
            op.touch_up(target.id, size, mtime)?;
            op.entry(e.id)
        })
    }

    /// Delete the entry at `path`: a file, an empty folder, or with `recursive` a folder and
    /// everything below it.
    ///
    /// A recursive delete is atomic where it shows: one batch unlinks the folder from its
    /// parent, deletes its entry, updates the ancestors' etags and tree sizes, and puts its
    /// directory on the namespace's trash queue. From that revision on no path reaches
    /// anything below it. The entries below are then removed in batches of about
    /// [`RECLAIM_STEP`] writes ([`MetaStore::reclaim`]), each with its own revision in the
    /// change feed, so a delete of millions of entries never holds more than one step in
    /// memory. If a step fails, or the process stops, the delete still stands and the queue
    /// keeps the rest: the next recursive delete in the namespace, or `reclaim`, finishes it.
    pub fn delete(
        &self,
        ns: u64,
        path: &str,
        recursive: bool,
        if_match: Option<&str>,
        mtime: i64,
    ) -> MetaResult<()> {
        let detached = self.delete_deferred(ns, path, recursive, if_match, mtime)?;
        if detached {
            if let Err(e) = self.reclaim(ns) {
                // The delete itself is committed; what is left stays queued for later.
                tracing::warn!(ns, path, error = %e, "reclaiming a deleted folder's entries stopped; the next recursive delete in the namespace resumes it");
            }
        }
        Ok(())
    }

    /// Remove the entries of folders that recursive deletes detached in namespace `ns`, one
    /// atomic batch of about [`RECLAIM_STEP`] writes at a time, until its trash queue is
    /// empty. Cheap when there is nothing to do (one read). [`MetaStore::delete`] calls it;
    /// call it after a restart to finish deletes a stopped process left half reclaimed.
    pub fn reclaim(&self, ns: u64) -> MetaResult<Reclaimed> {
        let mut done = Reclaimed::default();
        loop {
            let ((n, work), more) = self.atomic(ns, |op| {
                let n = op.reclaim_some(self.reclaim_step)?;
                Ok((n, op.trash_pending()?))
            })?;
            if n > 0 {
                done.entries += n as u64;
                done.largest_step = done.largest_step.max(n as u64);
            }
            if work > 0 {
                done.steps += 1;
                done.largest_work = done.largest_work.max(work as u64);
            }
            if !more {
                return Ok(done);
            }
        }
    }

    /// Set how many items of work one reclaim step does (at least 1; [`RECLAIM_STEP`] by
    /// default). For tests that want many steps from a small tree.
    pub fn set_reclaim_step(&mut self, entries: usize) {
        self.reclaim_step = entries.max(1);
    }

    /// Detach like a recursive delete and stop before reclaiming anything, as a process
    /// killed right after the detach would. For crash tests only.
    #[doc(hidden)]
    pub fn delete_detach_only(&self, ns: u64, path: &str, mtime: i64) -> MetaResult<()> {
        self.delete_deferred(ns, path, true, None, mtime).map(drop)
    }

    /// Delete like [`MetaStore::delete`], but leave the removal of what was below a
    /// non-empty folder to the caller: the call ends after the delete's visible, atomic part,
    /// however large the folder. Returns whether the namespace's trash queue now holds work
    /// ([`MetaStore::reclaim`] it, in the background; until then neither a path nor an id
    /// reaches those entries, and they hold their storage). A server calls this so that a
    /// delete's latency does not grow with the size of the folder.
    pub fn delete_deferred(
        &self,
        ns: u64,
        path: &str,
        recursive: bool,
        if_match: Option<&str>,
        mtime: i64,
    ) -> MetaResult<bool> {
        let parts = parse_existing(path)?;
        if parts.is_empty() {
            return Err(MetaError::InvalidPath {
                path: path.into(),
                reason: "the root cannot be deleted".into(),
            });
        }
        self.atomic(ns, |op| {
            let e = op.resolve_named(path, &parts)?;
            if_match_etag(path, &e, if_match)?;
            let detach = e.kind == Kind::Folder && !dir::is_empty(op, e.id)?;
            if detach {
                if !recursive {
                    return Err(MetaError::NotEmpty(path.into()));
                }
                op.trash_push(e.id, 0)?;
            }
            op.unlink(e.parent, &e.name)?;
            op.forget(e.id);
            op.touch_up(e.parent, -i128::from(e.tree_size), mtime)?;
            Ok(detach)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_entry() -> impl Strategy<Value = MetaEntry> {
        (
            (
                any::<u64>(),
                any::<u64>(),
                any::<bool>(),
                any::<u64>(),
                any::<i64>(),
            ),
            (any::<u64>(), any::<u64>(), any::<i64>()),
            (
                "\\PC{0,40}",
                "[a-z0-9]{0,8}",
                "[0-9a-f]{0,64}",
                "\\PC{0,20}",
            ),
            proptest::collection::btree_map("\\PC{0,12}", "\\PC{0,30}", 0..4),
        )
            .prop_map(
                |((id, parent, folder, size, mtime), (etag, tree_size, tree_mtime), s, attrs)| {
                    MetaEntry {
                        id,
                        parent,
                        name: s.0,
                        kind: if folder { Kind::Folder } else { Kind::File },
                        size,
                        mtime,
                        etag: etag_string(etag),
                        checksum: (s.1, s.2),
                        mime: s.3,
                        tree_size,
                        tree_mtime,
                        attrs,
                    }
                },
            )
    }

    proptest! {
        /// The stored form reads back as the entry, through the view and its owned form.
        #[test]
        fn entries_read_back_through_the_view(e in any_entry()) {
            let b = encode(&e);
            let v = EntryView::parse(&b).unwrap();
            prop_assert_eq!(v.name, e.name.as_str());
            prop_assert_eq!(v.attrs().count(), e.attrs.len());
            prop_assert_eq!(v.to_entry(), e);
        }

        /// A record cut short anywhere is a damaged entry, never a panic or a wrong entry.
        #[test]
        fn truncated_entries_are_errors(e in any_entry(), cut in any::<prop::sample::Index>()) {
            let b = encode(&e);
            let n = cut.index(b.len());
            prop_assert!(matches!(EntryView::parse(&b[..n]), Err(MetaError::Engine(_))));
        }

        /// Strings read from the record's valid whole are those read one by one: a byte of
        /// the strings' part set to anything (a continuation byte, a lead byte, a length's
        /// byte) parses the same both ways, or fails both ways.
        #[test]
        fn strings_read_whole_are_read_one_by_one(
            e in any_entry(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let mut b = encode(&e);
            let fixed = 2 * 8 + 1 + 5 * 8;
            let i = fixed + at.index(b.len() - fixed);
            b[i] = byte;
            let each = {
                let mut r = crate::durable::Reader::new(&b[fixed..]);
                let mut got = Vec::new();
                let mut ok = (0..4).all(|_| read_str(&mut r).map(|s| got.push(s)).is_some());
                if ok {
                    match r.u32() {
                        Some(n) => {
                            for _ in 0..n {
                                ok &= read_str(&mut r).map(|s| got.push(s)).is_some()
                                    && read_str(&mut r).map(|s| got.push(s)).is_some();
                                if !ok {
                                    break;
                                }
                            }
                        }
                        None => ok = false,
                    }
                }
                ok.then_some(got)
            };
            let whole = EntryView::parse(&b).ok().map(|v| {
                let mut got = vec![v.name, v.checksum.0, v.checksum.1, v.mime];
                for (k, val) in v.attrs() {
                    got.push(k);
                    got.push(val);
                }
                got
            });
            prop_assert_eq!(whole, each);
        }

        /// Arbitrary bytes parse or fail cleanly, and what parses has checked UTF-8 throughout.
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(v) = EntryView::parse(&b) {
                let _ = v.to_entry();
            }
        }
    }

    #[test]
    fn a_name_that_is_not_utf8_is_a_damaged_entry() {
        let mut b = encode(&MetaEntry {
            id: 2,
            parent: 1,
            name: "ab".into(),
            kind: Kind::File,
            size: 0,
            mtime: 0,
            etag: etag_string(7),
            checksum: Default::default(),
            mime: String::new(),
            tree_size: 0,
            tree_mtime: 0,
            attrs: Default::default(),
        });
        // The name's bytes follow id, parent, the kind byte, five more u64s and its u32 length.
        let at = 2 * 8 + 1 + 5 * 8 + 4;
        assert_eq!(&b[at..at + 2], b"ab");
        b[at] = 0xff;
        assert!(matches!(EntryView::parse(&b), Err(MetaError::Engine(_))));
    }

    fn named(name: &str) -> Vec<u8> {
        encode(&MetaEntry {
            id: 2,
            parent: 1,
            name: name.into(),
            kind: Kind::File,
            size: 0,
            mtime: 0,
            etag: etag_string(7),
            checksum: Default::default(),
            mime: String::new(),
            tree_size: 0,
            tree_mtime: 0,
            attrs: Default::default(),
        })
    }

    /// A listing's records, side by side, and where each ends.
    fn page(names: &[&str]) -> (Vec<u8>, Vec<usize>) {
        let (mut records, mut ends) = (Vec::new(), Vec::new());
        for n in names {
            records.extend_from_slice(&named(n));
            ends.push(records.len());
        }
        (records, ends)
    }

    /// What a page's visit hands out, and the continuation: the last name handed out when
    /// entries remain, whether past the page or past where `visit` stopped.
    #[test]
    fn a_listing_page_continues_after_the_last_entry_handed_out() {
        let (records, ends) = page(&["a", "b", "c"]);
        let run = |more: bool, stop_at: usize| {
            let mut got = Vec::new();
            let next = visit_records(&records, &ends, more, |e| {
                got.push(e.name.to_owned());
                got.len() < stop_at
            })
            .unwrap();
            (got, next)
        };
        // The whole page, and nothing after it.
        assert_eq!(
            run(false, 9),
            (vec!["a".into(), "b".into(), "c".into()], None)
        );
        // The whole page, more after it.
        assert_eq!(run(true, 9).1.as_deref(), Some("c"));
        // Stopped early: continue after the last entry handed out, more or not.
        assert_eq!(
            run(false, 2),
            (vec!["a".into(), "b".into()], Some("b".into()))
        );
        assert_eq!(run(true, 1), (vec!["a".into()], Some("a".into())));
        // Stopped at the page's last entry: only what is past the page remains.
        assert_eq!(run(false, 3).1, None);
        assert_eq!(run(true, 3).1.as_deref(), Some("c"));
        // An empty page.
        assert_eq!(visit_records(&[], &[], false, |_| true).unwrap(), None);
    }

    /// A damaged record in a page is an error, after the entries before it were handed out.
    #[test]
    fn a_damaged_record_in_a_page_is_an_error() {
        let (mut records, ends) = page(&["a", "b", "c"]);
        records.truncate(ends[2] - 1);
        let mut ends = ends;
        ends[2] = records.len();
        let mut got = Vec::new();
        let r = visit_records(&records, &ends, false, |e| {
            got.push(e.name.to_owned());
            true
        });
        assert!(matches!(r, Err(MetaError::Engine(_))), "{r:?}");
        assert_eq!(got, ["a", "b"]);
    }

    /// Folders whose parents loop (only damage can make that) are `Corrupt` by id, naming the
    /// cycle, not a walk without end; an entry below them too.
    #[test]
    fn a_cycle_of_parents_is_corrupt_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = crate::Config::new(dir.path());
        c.dram_budget_bytes = 16 << 20;
        c.partitions = 1;
        c.page_bytes = 64 << 10;
        c.segment_bytes = 256 << 10;
        c.max_key_bytes = 4200;
        c.max_value_bytes = 2048;
        c.background_maintenance = false;
        let db = crate::Db::open(c).unwrap();
        let m = MetaStore::open(&db).unwrap();
        m.create_namespace(3, 1).unwrap();
        let a = m.mkdir(3, "/a", false, 1).unwrap();
        let b = m.mkdir(3, "/a/b", false, 1).unwrap();
        let f = m
            .upload(
                3,
                "/a/b/f",
                &Upload {
                    size: 1,
                    mtime: 1,
                    ..Default::default()
                },
                &Precondition::None,
            )
            .unwrap();
        // Damage: /a's parent is now /a/b.
        let raw = db.get_keyspace("meta").unwrap();
        raw.put(
            &entry_key(3, a.id),
            &encode(&MetaEntry {
                parent: b.id,
                ..a.clone()
            }),
        )
        .unwrap();
        for id in [a.id, b.id, f.id] {
            match m.stat_id(3, id) {
                Err(MetaError::Engine(crate::Error::Corrupt { reason, .. })) => {
                    assert!(reason.contains("cycle"), "{reason}")
                }
                other => panic!("entry {id}: {other:?}"),
            }
        }
    }
}
