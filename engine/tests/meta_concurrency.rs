//! Eight threads on one namespace of the metadata model: uploads (some conditional on the
//! etag a stat just read, retried when it lost a race), moves of files and of folders between
//! a few folders (a folder often moving with everything below it, sometimes into a folder that
//! is moving too), folder creation, and deletes of files and (recursively) of folders. Names
//! are long enough that directories split into several nodes and empty again.
//!
//! Beside them, each thread increments counter files, which nothing else touches, by
//! read-modify-write: stat, then upload with If-Match of the etag read and a size one more,
//! retried on a failed precondition. A lost update would leave a counter's size below the
//! number of increments that succeeded.
//!
//! Afterwards the namespace, walked from the root, must hold together: every entry's parent is
//! the folder it was listed in, listings are in name order, no id appears twice, stat by id
//! and by path agree with the walk, every folder's tree size is the sum of the files below it
//! and usage is the root's; no etag repeats, among the walk's and those every successful
//! operation returned, and no etag a thread read (of a file, or of the root) belongs to two
//! entries; the stored records are the walk's entries and their directories, with
//! no node leaked; and replaying the change feed gives the walk's entries.

mod common;

use common::{meta_records, tiny};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};
use tera_engine::meta::{Change, Kind, MetaEntry, MetaError, MetaStore, Precondition, Upload};
use tera_engine::Db;

const NS: u64 = 11;
const THREADS: usize = 8;
/// Operations per thread.
const OPS: usize = 2500;
/// The folders `/w/p0` to `/w/p3` that files and folders move between.
const HOMES: usize = 4;
const COUNTERS: usize = 4;

/// A small deterministic generator (splitmix64), one per thread.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// A name of about 100 bytes: nine or ten fit in a directory node of 1 KiB. Files are named
/// `f…` and folders `d…`, so a path never runs through a file and an upload never meets a
/// folder: `NotAFolder` and `IsAFolder` are never right here.
fn name(kind: char, i: usize) -> String {
    format!("{kind}{i:02}-{}", "n".repeat(96))
}

/// Folder names below the homes.
const FOLDERS: usize = 4;
/// File names in each folder.
const FILES: usize = 16;

/// A folder of the work area that may exist: a home, or one or two levels of folders below one.
fn folder(r: &mut Rng) -> String {
    let mut p = format!("/w/p{}", r.below(HOMES));
    let depth = match r.below(20) {
        0..=9 => 0,
        10..=16 => 1,
        _ => 2,
    };
    for _ in 0..depth {
        p = format!("{p}/{}", name('d', r.below(FOLDERS)));
    }
    p
}

fn file(r: &mut Rng) -> String {
    format!("{}/{}", folder(r), name('f', r.below(FILES)))
}

fn counter(c: usize) -> String {
    format!("/counters/c{c}")
}

/// What a thread did.
#[derive(Default)]
struct Log {
    /// (etag, id) of every entry returned by an upload, a move or a folder creation: each
    /// gave its entry a new etag.
    etags: Vec<(String, u64)>,
    /// (etag, id) of every entry a stat read: an etag may be read again, but always of the
    /// same entry.
    seen: Vec<(String, u64)>,
    /// Successful increments of each counter.
    increments: [u64; COUNTERS],
    /// Conditional uploads that lost a race and were retried.
    retries: u64,
    /// Operations that succeeded, and that failed for an expected reason.
    ok: u64,
    refused: u64,
}

impl Log {
    /// Note an outcome; panics on an error that `allowed` does not accept.
    fn outcome(
        &mut self,
        what: &str,
        r: Result<Option<MetaEntry>, MetaError>,
        allowed: fn(&MetaError) -> bool,
    ) {
        match r {
            Ok(e) => {
                self.ok += 1;
                if let Some(e) = e {
                    self.etags.push((e.etag, e.id));
                }
            }
            Err(e) if allowed(&e) => self.refused += 1,
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

fn up(size: u64, mtime: i64) -> Upload {
    Upload {
        size,
        mtime,
        checksum: ("sha256".into(), format!("{size:064x}")),
        mime: "application/octet-stream".into(),
    }
}

/// Read-modify-write of counter `c`: retried until it wins.
fn increment(m: &MetaStore, c: usize, t: i64, log: &mut Log) {
    let path = counter(c);
    loop {
        let cur = m.stat(NS, &path).unwrap();
        log.seen.push((cur.etag.clone(), cur.id));
        std::thread::yield_now(); // let another writer in between the read and the write
        match m.upload(
            NS,
            &path,
            &up(cur.size + 1, t),
            &Precondition::IfMatch(cur.etag),
        ) {
            Ok(e) => {
                log.increments[c] += 1;
                log.etags.push((e.etag, e.id));
                // The root's etag, most likely the last one this increment issued.
                let root = m.stat(NS, "/").unwrap();
                log.seen.push((root.etag, root.id));
                return;
            }
            Err(MetaError::PreconditionFailed(_)) => log.retries += 1,
            Err(e) => panic!("increment {path}: {e}"),
        }
    }
}

/// An upload conditional on the etag a stat just read, retried while it loses races, until
/// it wins or the file is gone.
fn conditional_upload(m: &MetaStore, path: &str, t: i64, log: &mut Log) {
    loop {
        let cur = match m.stat(NS, path) {
            Ok(e) => e,
            Err(MetaError::NotFound(_)) => return log.refused += 1,
            Err(e) => panic!("stat {path}: {e}"),
        };
        assert_eq!(cur.kind, Kind::File, "{path}");
        log.seen.push((cur.etag.clone(), cur.id));
        std::thread::yield_now();
        match m.upload(
            NS,
            path,
            &up(cur.size + 1, t),
            &Precondition::IfMatch(cur.etag),
        ) {
            Ok(e) => return log.outcome("", Ok(Some(e)), |_| false),
            Err(MetaError::PreconditionFailed(_)) => log.retries += 1,
            Err(MetaError::NotFound(_)) => return log.refused += 1,
            Err(e) => panic!("upload {path} if-match: {e}"),
        }
    }
}

fn work(m: &MetaStore, thread: usize) -> Log {
    let mut r = Rng(0x5eed_0000 + thread as u64);
    let mut log = Log::default();
    for i in 0..OPS {
        let t = (i * THREADS + thread) as i64 + 10;
        match r.below(20) {
            0..=3 => increment(m, r.below(COUNTERS), t, &mut log),
            4..=6 => {
                let p = file(&mut r);
                let size = r.below(1000) as u64;
                let pre = if r.chance(20) {
                    Precondition::IfNoneMatch
                } else {
                    Precondition::None
                };
                let got = m.upload(NS, &p, &up(size, t), &pre);
                log.outcome(&format!("upload {p}"), got.map(Some), |e| {
                    matches!(e, MetaError::NotFound(_) | MetaError::PreconditionFailed(_))
                });
            }
            7..=8 => conditional_upload(m, &file(&mut r), t, &mut log),
            9..=10 => {
                let parents = r.chance(30);
                let p = format!("{}/{}", folder(&mut r), name('d', r.below(FOLDERS)));
                let got = m.mkdir(NS, &p, parents, t);
                // With parents, an existing folder is returned as it is: no new etag.
                let got = got.map(|e| (!parents).then_some(e));
                log.outcome(&format!("mkdir {p}"), got, |e| {
                    matches!(e, MetaError::NotFound(_) | MetaError::AlreadyExists(_))
                });
            }
            11..=12 => {
                let (from, to) = (file(&mut r), file(&mut r));
                if from != to {
                    let got = m.rename(NS, &from, &to, None, t);
                    log.outcome(&format!("move {from} to {to}"), got.map(Some), |e| {
                        matches!(e, MetaError::NotFound(_) | MetaError::AlreadyExists(_))
                    });
                }
            }
            13..=15 => {
                // A folder with everything below it (now and then a home) into another.
                let from = if r.chance(10) {
                    format!("/w/p{}", r.below(HOMES))
                } else {
                    format!("{}/{}", folder(&mut r), name('d', r.below(FOLDERS)))
                };
                let to = format!("{}/{}", folder(&mut r), name('d', r.below(FOLDERS)));
                let if_match = if r.chance(30) {
                    m.stat(NS, &from).ok().map(|e| e.etag)
                } else {
                    None
                };
                if from != to {
                    let got = m.rename(NS, &from, &to, if_match.as_deref(), t);
                    log.outcome(&format!("move {from} to {to}"), got.map(Some), |e| {
                        matches!(
                            e,
                            MetaError::NotFound(_)
                                | MetaError::AlreadyExists(_)
                                | MetaError::InvalidPath { .. }
                                | MetaError::PreconditionFailed(_)
                        )
                    });
                }
                // Bring the home back if it moved away.
                let home = format!("/w/p{}", r.below(HOMES));
                let got = m.mkdir(NS, &home, true, t).map(|_| None);
                log.outcome(&format!("mkdir {home}"), got, |_| false);
            }
            16..=17 => {
                let p = file(&mut r);
                let if_match = if r.chance(30) {
                    m.stat(NS, &p).ok().map(|e| e.etag)
                } else {
                    None
                };
                let got = m.delete(NS, &p, false, if_match.as_deref(), t);
                log.outcome(&format!("delete {p}"), got.map(|()| None), |e| {
                    matches!(e, MetaError::NotFound(_) | MetaError::PreconditionFailed(_))
                });
            }
            _ => {
                // Delete a folder below a home (never a home: they keep the tree populated).
                let p = format!("{}/{}", folder(&mut r), name('d', r.below(FOLDERS)));
                let recursive = r.chance(40);
                let got = m.delete(NS, &p, recursive, None, t);
                log.outcome(&format!("delete {p}"), got.map(|()| None), |e| {
                    matches!(e, MetaError::NotFound(_) | MetaError::NotEmpty(_))
                });
            }
        }
    }
    log
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// Walk from `path`: every entry found goes to `out` (path → entry), and the names of each
/// folder's children, in listing order, to `dirs`. Returns the sum of the file sizes below
/// (or at) `path`, having checked every folder's tree size and parent links on the way.
fn walk(
    m: &MetaStore,
    path: &str,
    e: MetaEntry,
    out: &mut BTreeMap<String, MetaEntry>,
    dirs: &mut HashMap<u64, Vec<(String, u64)>>,
) -> u64 {
    let total = if e.kind == Kind::File {
        assert_eq!(e.tree_size, e.size, "tree size of the file {path}");
        e.size
    } else {
        let mut sum = 0;
        let mut names: Vec<(String, u64)> = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = m.list(NS, path, 7, after.as_deref()).unwrap();
            for c in page.entries {
                assert_eq!(c.parent, e.id, "{} listed in {path}", c.name);
                if let Some((prev, _)) = names.last() {
                    assert!(*prev < c.name, "{path} listed out of order");
                }
                names.push((c.name.clone(), c.id));
                let child = join(path, &c.name);
                sum += walk(m, &child, c, out, dirs);
            }
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(e.tree_size, sum, "tree size of {path}");
        if !names.is_empty() {
            dirs.insert(e.id, names);
        }
        sum
    };
    assert!(out.insert(path.to_string(), e).is_none(), "{path} twice");
    total
}

#[test]
fn eight_writers_keep_the_invariants_and_lose_no_update() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let mut c = tiny(dir.path(), 64 << 20);
    c.max_key_bytes = 1024;
    c.max_value_bytes = 1024; // directory nodes split at 1 KiB: nine or ten names
    c.page_bytes = 64 << 10;
    c.segment_bytes = 256 << 10;
    c.changelog_bytes = 32 << 20; // keep the whole feed for the replay check
    let db = Db::open(c).unwrap();
    let m = MetaStore::open(&db).unwrap();
    let start = m.cursor().unwrap();
    m.create_namespace(NS, 1).unwrap();
    m.mkdir(NS, "/counters", false, 1).unwrap();
    for h in 0..HOMES {
        m.mkdir(NS, &format!("/w/p{h}"), true, 1).unwrap();
    }
    let mut counters = Vec::new();
    for c in 0..COUNTERS {
        let e = m
            .upload(NS, &counter(c), &up(0, 1), &Precondition::IfNoneMatch)
            .unwrap();
        counters.push(e.id);
    }

    let logs: Vec<Log> = std::thread::scope(|s| {
        let m = &m;
        let threads: Vec<_> = (0..THREADS).map(|t| s.spawn(move || work(m, t))).collect();
        threads.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ran = started.elapsed();

    // No lost update.
    for (c, &id) in counters.iter().enumerate() {
        let e = m.stat(NS, &counter(c)).unwrap();
        let made: u64 = logs.iter().map(|l| l.increments[c]).sum();
        assert_eq!(e.id, id, "counter {c} kept its id");
        assert_eq!(
            e.size, made,
            "counter {c}: every increment that succeeded counts"
        );
        assert_eq!(e.tree_size, made);
    }

    // The tree holds together.
    let root = m.stat(NS, "/").unwrap();
    let mut entries = BTreeMap::new();
    let mut dirs = HashMap::new();
    let total = walk(&m, "/", root, &mut entries, &mut dirs);
    assert_eq!(
        m.usage(NS).unwrap().bytes,
        total,
        "usage is the root's tree size"
    );
    let mut ids = HashSet::new();
    for (path, e) in &entries {
        assert!(ids.insert(e.id), "id {} twice", e.id);
        assert_eq!(&m.stat_id(NS, e.id).unwrap(), e, "stat_id of {path}");
        assert_eq!(&m.stat(NS, path).unwrap(), e, "stat of {path}");
    }

    // No etag repeats: the operations', each a new one, and the walk's, each an entry's own.
    let mut issued: HashMap<&str, u64> = HashMap::new();
    for (etag, id) in logs.iter().flat_map(|l| &l.etags) {
        assert!(
            issued.insert(etag.as_str(), *id).is_none(),
            "etag {etag} returned twice"
        );
    }
    let mut current = HashSet::new();
    for (path, e) in &entries {
        assert!(current.insert(e.etag.as_str()), "etag {} twice", e.etag);
        if let Some(&id) = issued.get(e.etag.as_str()) {
            assert_eq!(
                id, e.id,
                "etag {} of {path} was issued to entry {id}",
                e.etag
            );
        }
    }
    for (etag, id) in logs.iter().flat_map(|l| &l.seen) {
        let owner = *issued.entry(etag.as_str()).or_insert(*id);
        assert_eq!(
            owner, *id,
            "etag {etag} read of entry {id} was entry {owner}'s"
        );
    }

    // The records are the walk's entries and directories, and nothing else.
    let records = meta_records(&db, NS);
    assert_eq!(records.entries, ids, "entry records");
    assert_eq!(records.dirs, dirs, "directories");

    // The change feed rebuilds the namespace.
    let mut feed: BTreeMap<u64, MetaEntry> = BTreeMap::new();
    let mut cursor = start;
    loop {
        let page = m.changes(NS, cursor, 100, Duration::ZERO).unwrap();
        for (_, c) in page.changes {
            match c {
                Change::Upsert(e) => {
                    feed.insert(e.id, e);
                }
                Change::Delete(id) => {
                    feed.remove(&id);
                }
            }
        }
        if page.cursor == cursor {
            break;
        }
        cursor = page.cursor;
    }
    let live: BTreeMap<u64, MetaEntry> = entries.values().map(|e| (e.id, e.clone())).collect();
    assert_eq!(feed, live, "the change feed rebuilds the namespace");

    // The run did what it is for: entries left, races lost and retried, folders moved.
    let sum = |f: fn(&Log) -> u64| logs.iter().map(f).sum::<u64>();
    eprintln!(
        "{THREADS} threads x {OPS} operations in {ran:?}: {} succeeded, {} refused, {} retries; \
         {} entries left, {} folders with children",
        sum(|l| l.ok),
        sum(|l| l.refused),
        sum(|l| l.retries),
        entries.len(),
        dirs.len()
    );
}
