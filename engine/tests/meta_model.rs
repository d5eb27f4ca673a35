//! Model-based test of the metadata model: random sequences of create folder, upload (with and
//! without preconditions), move, delete and attribute changes, against a plain path map: every
//! absolute path to what the namespace should hold there. A move renames every path under the
//! moved one, a recursive delete removes them, and the outcome of every operation (success, or
//! which error) is predicted from the paths alone.
//!
//! Some operations write runs of 10 to 40 names of 100 to 255 bytes into one folder, and some
//! delete every first, second or third name of a run, so that folders' directory nodes (1 KiB
//! here) split over several levels and then empty and go away.
//!
//! After every operation, the namespace walked from the root through listings (a page of 1 to 3
//! entries at a time, following `next`) must equal the model: the same paths, each with the
//! same kind, size, mtime, attributes and id (recorded when the model created the path, so ids
//! stay stable across moves; the walk reaches every path, so nothing is unreachable); each
//! listing gives the model's children in name order. Then:
//! - every folder's tree size is the sum of the file sizes below it, and usage is the root's;
//! - stat by id and by path give the entry the walk found;
//! - an entry's etag changed exactly when it, or something below it before or after the
//!   operation, changed; no etag value is ever issued twice (whether seen in a walk or returned
//!   by an operation), and new ids are always above every earlier one;
//! - at the end, replaying the change feed from cursor 0 onto an empty map gives exactly the
//!   entries of the last walk, and the paths they make equal the model.

mod common;

use common::{meta_records, tiny};
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use tera_engine::meta::{Change, Kind, MetaEntry, MetaError, MetaStore, Precondition, Upload};
use tera_engine::Db;

const NS: u64 = 3;
/// Number of long names a run draws from.
const LONG: u8 = 40;
/// The root's first etag: issued once, to the root, so it never matches anything else.
const STALE: &str = "0000000000000001";

/// The name of path component `c`: `a`, `b`, `c` for 0 to 2, then [`LONG`] names of 100 to 255
/// bytes, some told apart at their start and some only at their end.
fn name(c: u8) -> String {
    const SHORT: [&str; 3] = ["a", "b", "c"];
    if c < 3 {
        return SHORT[c as usize].into();
    }
    let j = usize::from(c - 3);
    let len = 100 + (j * 37) % 156;
    let tag = format!("{}{j:02}", SHORT[j % 3]);
    if j % 2 == 0 {
        format!("{tag}{}", "x".repeat(len - tag.len()))
    } else {
        format!("b{}{tag}", "y".repeat(len - 1 - tag.len()))
    }
}

fn show(p: &[u8]) -> String {
    if p.is_empty() {
        return "/".into();
    }
    p.iter().map(|&c| format!("/{}", name(c))).collect()
}

fn join(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// The parent path and the name of a path other than the root.
fn split(path: &str) -> (&str, &str) {
    let (dir, name) = path.rsplit_once('/').expect("absolute");
    (if dir.is_empty() { "/" } else { dir }, name)
}

/// A condition on an operation: none, the entry's etag read just before, an etag that is not
/// the entry's, or (uploads only) If-None-Match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cond {
    None,
    Current,
    Stale,
    NoneMatch,
}

/// What an operation applies to: a path, or the entry the model holds at an index (modulo the
/// number of entries other than the root), or the folder with something below it at an index,
/// so that moves and deletes often find something.
#[derive(Debug, Clone)]
enum Target {
    Path(Vec<u8>),
    Pick(u16),
    Full(u16),
}

#[derive(Debug, Clone)]
enum Op {
    Mkdir(Vec<u8>, bool),
    Upload(Target, u16, Cond),
    /// Move an entry into a folder (a path of up to two components, or an entry), as a name.
    Move(Target, Target, u8, Cond),
    Delete(Target, bool, Cond),
    Attr(Target, u8, Option<u8>),
    /// Create `n` long names from `start` on in the folder `dir`: folders, or files of
    /// `size + i` bytes.
    Run {
        dir: Vec<u8>,
        start: u8,
        n: u8,
        folders: bool,
        size: u16,
    },
    /// Delete (recursively) every `step`th of the `n` long names from `start` on in `dir`.
    Prune {
        dir: Vec<u8>,
        start: u8,
        n: u8,
        step: u8,
    },
}

/// A path component: mostly a short name, sometimes a long one.
fn component() -> impl Strategy<Value = u8> {
    prop_oneof![6 => 0u8..3, 1 => 3..3 + LONG]
}

/// Paths of one to three components.
fn path() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(component(), 1..4)
}

/// What uploads, moves, deletes and attribute changes apply to.
fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        2 => path().prop_map(Target::Path),
        3 => any::<u16>().prop_map(Target::Pick),
        1 => any::<u16>().prop_map(Target::Full),
    ]
}

/// Where moves go: the root, a folder named by up to two short names, or an entry.
fn move_dir() -> impl Strategy<Value = Target> {
    prop_oneof![
        2 => proptest::collection::vec(0u8..3, 0..3).prop_map(Target::Path),
        1 => any::<u16>().prop_map(Target::Pick),
    ]
}

/// The folders runs go to: the root, `/a`, `/b` or `/c`.
fn run_dir() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(0u8..3, 0..2)
}

fn cond() -> impl Strategy<Value = Cond> {
    prop_oneof![4 => Just(Cond::None), 2 => Just(Cond::Current), 1 => Just(Cond::Stale)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (path(), any::<bool>()).prop_map(|(p, parents)| Op::Mkdir(p, parents)),
        4 => (target(), 0u16..1000, prop_oneof![3 => cond(), 1 => Just(Cond::NoneMatch)])
            .prop_map(|(p, s, c)| Op::Upload(p, s, c)),
        5 => (target(), move_dir(), component(), cond())
            .prop_map(|(a, dir, name, c)| Op::Move(a, dir, name, c)),
        2 => (target(), any::<bool>(), cond()).prop_map(|(p, r, c)| Op::Delete(p, r, c)),
        1 => (target(), 0u8..2, proptest::option::of(0u8..3))
            .prop_map(|(p, k, v)| Op::Attr(p, k, v)),
        1 => (run_dir(), 0..LONG, 10..=LONG, any::<bool>(), 0u16..1000).prop_map(
            |(dir, start, n, folders, size)| Op::Run { dir, start, n, folders, size }
        ),
        1 => (run_dir(), 0..LONG, 10..=LONG, 1u8..4)
            .prop_map(|(dir, start, n, step)| Op::Prune { dir, start, n, step }),
    ]
}

/// What the model knows of the entry at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelEntry {
    kind: Kind,
    size: u64,
    mtime: i64,
    attrs: BTreeMap<String, String>,
    /// The engine's id, recorded when the entry was created.
    id: u64,
}

impl From<&MetaEntry> for ModelEntry {
    fn from(e: &MetaEntry) -> ModelEntry {
        ModelEntry {
            kind: e.kind,
            size: e.size,
            mtime: e.mtime,
            attrs: e.attrs.clone(),
            id: e.id,
        }
    }
}

/// An entry as seen from its parent: what must not change unless the engine gives it (and
/// its ancestors) new etags.
type Fact = (u64, String, ModelEntry);

/// The namespace as a plain path map.
#[derive(Debug, Clone)]
struct Model {
    paths: BTreeMap<String, ModelEntry>,
}

/// Which error an operation gave, or should give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fail {
    NotFound,
    Exists,
    NotAFolder,
    IsAFolder,
    NotEmpty,
    Precondition,
    InvalidPath,
}

fn fail_of(e: &MetaError) -> Fail {
    match e {
        MetaError::NotFound(_) => Fail::NotFound,
        MetaError::AlreadyExists(_) => Fail::Exists,
        MetaError::NotAFolder(_) => Fail::NotAFolder,
        MetaError::IsAFolder(_) => Fail::IsAFolder,
        MetaError::NotEmpty(_) => Fail::NotEmpty,
        MetaError::PreconditionFailed(_) => Fail::Precondition,
        MetaError::InvalidPath { .. } => Fail::InvalidPath,
        other => panic!("unexpected error: {other}"),
    }
}

impl Model {
    /// Paths strictly below `path`, with their entries.
    fn below<'a>(&'a self, path: &str) -> impl Iterator<Item = (&'a String, &'a ModelEntry)> {
        let prefix = if path == "/" {
            "/".to_string()
        } else {
            format!("{path}/")
        };
        let start = prefix.clone();
        self.paths
            .range(start..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .filter(move |(k, _)| k.len() > 1)
    }

    /// Names of the children of the folder at `path`, in name order.
    fn children(&self, path: &str) -> Vec<String> {
        let skip = if path == "/" { 1 } else { path.len() + 1 };
        self.below(path)
            .map(|(k, _)| &k[skip..])
            .filter(|rest| !rest.contains('/'))
            .map(String::from)
            .collect()
    }

    fn tree_size(&self, path: &str) -> u64 {
        let own = self.paths[path].size;
        own + self
            .below(path)
            .filter(|(_, e)| e.kind == Kind::File)
            .map(|(_, e)| e.size)
            .sum::<u64>()
    }

    /// The entry at a path, or the error the engine gives on the way to it.
    fn resolve(&self, p: &[u8]) -> Result<ModelEntry, Fail> {
        let mut cur = &self.paths["/"];
        for i in 0..p.len() {
            if cur.kind != Kind::Folder {
                return Err(Fail::NotAFolder);
            }
            cur = self.paths.get(&show(&p[..=i])).ok_or(Fail::NotFound)?;
        }
        Ok(cur.clone())
    }

    /// Move the entry at `from` and everything below it to `to`.
    fn move_tree(&mut self, from: &str, to: &str) {
        let moved: Vec<String> = self.below(from).map(|(k, _)| k.clone()).collect();
        for k in moved.into_iter().chain([from.to_string()]) {
            let e = self.paths.remove(&k).expect("listed");
            self.paths.insert(format!("{to}{}", &k[from.len()..]), e);
        }
    }

    /// Remove the entry at `path` and everything below it.
    fn remove_tree(&mut self, path: &str) {
        let gone: Vec<String> = self.below(path).map(|(k, _)| k.clone()).collect();
        for k in gone.into_iter().chain([path.to_string()]) {
            self.paths.remove(&k);
        }
    }

    /// Each entry by id: its path, and its parent's id, its name and what it holds.
    fn by_id(&self) -> HashMap<u64, (String, Fact)> {
        self.paths
            .iter()
            .map(|(path, e)| {
                let (parent, name) = if path == "/" {
                    (0, "")
                } else {
                    let (dir, name) = split(path);
                    (self.paths[dir].id, name)
                };
                (e.id, (path.clone(), (parent, name.to_string(), e.clone())))
            })
            .collect()
    }

    /// Ids of the entry at `path` and of its ancestors.
    fn ancestry(&self, path: &str) -> Vec<u64> {
        let mut out = vec![self.paths[path].id];
        let mut p = path;
        while p != "/" {
            p = split(p).0;
            out.push(self.paths[p].id);
        }
        out
    }

    /// Ids whose etag an operation from `old` to `new` must change: entries created, deleted
    /// or changed (a move changes the moved entry's parent or name, not its descendants'),
    /// and their ancestors before and after.
    fn dirty(old: &Model, new: &Model) -> HashSet<u64> {
        let (a, b) = (old.by_id(), new.by_id());
        let mut out = HashSet::new();
        for id in a.keys().chain(b.keys()) {
            let (x, y) = (a.get(id), b.get(id));
            if x.map(|x| &x.1) != y.map(|y| &y.1) {
                if let Some((p, _)) = x {
                    out.extend(old.ancestry(p));
                }
                if let Some((p, _)) = y {
                    out.extend(new.ancestry(p));
                }
            }
        }
        out
    }
}

/// The namespace walked from the root through listings of `page` entries.
struct Walk {
    /// Path → entry.
    entries: BTreeMap<String, MetaEntry>,
    /// Folder path → the names its listing gave, in order.
    listings: HashMap<String, Vec<String>>,
}

fn walk(m: &MetaStore, page: usize) -> Walk {
    let mut out = BTreeMap::new();
    let mut listings = HashMap::new();
    out.insert("/".to_string(), m.stat(NS, "/").unwrap());
    let mut stack = vec!["/".to_string()];
    while let Some(dir) = stack.pop() {
        let id = out[&dir].id;
        let mut names = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let p = m.list(NS, &dir, page, after.as_deref()).unwrap();
            assert!(p.entries.len() <= page, "a page of {dir} over {page}");
            if p.next.is_some() {
                assert!(!p.entries.is_empty(), "an empty page of {dir} with a next");
            }
            for e in p.entries {
                assert_eq!(e.parent, id, "{} listed in {dir}", e.name);
                if let Some(prev) = &after {
                    assert!(*prev < e.name, "{dir} listed out of order");
                }
                after = Some(e.name.clone());
                names.push(e.name.clone());
                let path = join(&dir, &e.name);
                if e.kind == Kind::Folder {
                    stack.push(path.clone());
                }
                assert!(out.insert(path, e).is_none(), "a path listed twice");
            }
            match p.next {
                Some(n) => assert_eq!(Some(&n), after.as_ref(), "next of {dir}"),
                None => break,
            }
        }
        listings.insert(dir, names);
    }
    Walk {
        entries: out,
        listings,
    }
}

/// The namespace's records against a walk: an entry record for each entry found and no
/// other, and directory nodes only of folders with children, their leaves holding the
/// folder's listing in order. So no operation leaks a record, and a directory node that
/// empties goes away.
fn check_records(db: &Db, walk: &Walk, what: &str) {
    let r = meta_records(db, NS);
    let live: HashSet<u64> = walk.entries.values().map(|e| e.id).collect();
    assert_eq!(r.entries, live, "{what}: entry records");
    let dirs: HashMap<u64, Vec<(String, u64)>> = walk
        .listings
        .iter()
        .filter(|(_, names)| !names.is_empty())
        .map(|(path, names)| {
            let ids = names
                .iter()
                .map(|n| (n.clone(), walk.entries[&join(path, n)].id));
            (walk.entries[path].id, ids.collect())
        })
        .collect();
    assert_eq!(r.dirs, dirs, "{what}: directories");
}

/// One run of a sequence: the engine, the model, and what the checks remember.
struct Run {
    db: Db,
    m: MetaStore,
    model: Model,
    page: usize,
    clock: i64,
    step: usize,
    /// Every etag issued so far: the entry it belongs to, and the step that first showed it.
    etags: HashMap<String, (u64, usize)>,
    /// The highest id issued so far.
    max_id: u64,
    /// Name → path component.
    components: HashMap<String, u8>,
}

impl Run {
    /// A new mtime for each engine call, so that every upload changes its file.
    fn tick(&mut self) -> i64 {
        self.clock += 1;
        self.clock
    }

    fn outcome<T: std::fmt::Debug>(
        &self,
        what: &str,
        got: &Result<T, MetaError>,
        want: Result<(), Fail>,
    ) {
        let kind = got.as_ref().map(drop).map_err(fail_of);
        assert_eq!(kind, want, "step {}: {what}: {got:?}", self.step);
    }

    /// An etag returned by an operation: new, or one the same entry has had.
    fn note(&mut self, e: &MetaEntry) {
        match self.etags.get(&e.etag) {
            Some(&(id, _)) => assert_eq!(
                id, e.id,
                "step {}: etag {} of entry {} was issued to entry {id}",
                self.step, e.etag, e.id
            ),
            None => {
                self.etags.insert(e.etag.clone(), (e.id, self.step));
            }
        }
    }

    fn fresh_id(&mut self, id: u64) {
        assert!(id > self.max_id, "id {id} is not above {}", self.max_id);
        self.max_id = id;
    }

    fn if_match(&self, path: &str, c: Cond) -> Option<String> {
        match c {
            Cond::None | Cond::NoneMatch => None,
            Cond::Current => Some(
                self.m
                    .stat(NS, path)
                    .map_or_else(|_| STALE.to_string(), |e| e.etag),
            ),
            Cond::Stale => Some(STALE.to_string()),
        }
    }

    fn mkdir(&mut self, p: &[u8], parents: bool) {
        let path = show(p);
        let t = self.tick();
        let got = self.m.mkdir(NS, &path, parents, t);
        let mut want = Ok(());
        let mut create = Vec::new();
        let mut in_folder = true; // the root
        for i in 0..p.len() {
            if !in_folder {
                want = Err(Fail::NotAFolder);
                break;
            }
            let at = show(&p[..=i]);
            let last = i + 1 == p.len();
            match self.model.paths.get(&at) {
                Some(e) if last => {
                    if !parents || e.kind != Kind::Folder {
                        want = Err(Fail::Exists);
                    }
                }
                Some(e) => in_folder = e.kind == Kind::Folder,
                None if !last && !parents => {
                    want = Err(Fail::NotFound);
                    break;
                }
                None => create.push(at),
            }
        }
        self.outcome(&format!("mkdir {path} parents {parents}"), &got, want);
        if let Ok(e) = got {
            for at in create {
                let id = match self.m.stat(NS, &at) {
                    Ok(e) => e.id,
                    Err(e) => panic!("step {}: {at} was just created: {e}", self.step),
                };
                self.fresh_id(id);
                let folder = ModelEntry {
                    kind: Kind::Folder,
                    size: 0,
                    mtime: t,
                    attrs: BTreeMap::new(),
                    id,
                };
                self.model.paths.insert(at, folder);
            }
            assert_eq!(e.id, self.model.paths[&path].id, "mkdir {path} returned");
            self.note(&e);
        }
    }

    fn upload(&mut self, p: &[u8], size: u64, c: Cond) {
        let path = show(p);
        let pre = match c {
            Cond::None => Precondition::None,
            Cond::NoneMatch => Precondition::IfNoneMatch,
            _ => Precondition::IfMatch(self.if_match(&path, c).expect("a condition")),
        };
        let t = self.tick();
        let up = Upload {
            size,
            mtime: t,
            ..Upload::default()
        };
        let got = self.m.upload(NS, &path, &up, &pre);
        let existing = self.model.paths.get(&path).cloned();
        let want = self.model.resolve(&p[..p.len() - 1]).and_then(|dir| {
            if dir.kind != Kind::Folder {
                return Err(Fail::NotAFolder);
            }
            match (c, &existing) {
                (Cond::Current | Cond::Stale, None) | (Cond::Stale | Cond::NoneMatch, Some(_)) => {
                    Err(Fail::Precondition)
                }
                (_, Some(e)) if e.kind == Kind::Folder => Err(Fail::IsAFolder),
                _ => Ok(()),
            }
        });
        self.outcome(&format!("upload {path} {c:?}"), &got, want);
        if let Ok(e) = got {
            let (id, attrs) = match existing {
                Some(x) => (x.id, x.attrs),
                None => {
                    self.fresh_id(e.id);
                    (e.id, BTreeMap::new())
                }
            };
            let file = ModelEntry {
                kind: Kind::File,
                size,
                mtime: t,
                attrs,
                id,
            };
            assert_eq!(ModelEntry::from(&e), file, "upload {path} returned");
            self.model.paths.insert(path, file);
            self.note(&e);
        }
    }

    fn rename(&mut self, a: &[u8], b: &[u8], c: Cond) {
        let (from, to) = (show(a), show(b));
        let if_match = self.if_match(&from, c);
        let t = self.tick();
        let got = self.m.rename(NS, &from, &to, if_match.as_deref(), t);
        let want = if b.len() > a.len() && b[..a.len()] == *a {
            Err(Fail::InvalidPath)
        } else {
            self.model.resolve(a).and_then(|_| {
                if c == Cond::Stale {
                    return Err(Fail::Precondition);
                }
                if self.model.resolve(&b[..b.len() - 1])?.kind != Kind::Folder {
                    return Err(Fail::NotAFolder);
                }
                if a != b && self.model.paths.contains_key(&to) {
                    return Err(Fail::Exists);
                }
                Ok(())
            })
        };
        self.outcome(&format!("move {from} to {to} {c:?}"), &got, want);
        if let Ok(e) = got {
            if a != b {
                self.model.move_tree(&from, &to);
            }
            assert_eq!(
                ModelEntry::from(&e),
                self.model.paths[&to],
                "move to {to} returned"
            );
            self.note(&e);
        }
    }

    fn delete(&mut self, p: &[u8], recursive: bool, c: Cond) {
        let path = show(p);
        let if_match = self.if_match(&path, c);
        let t = self.tick();
        let got = self.m.delete(NS, &path, recursive, if_match.as_deref(), t);
        let want = self.model.resolve(p).and_then(|e| {
            if c == Cond::Stale {
                Err(Fail::Precondition)
            } else if e.kind == Kind::Folder
                && !recursive
                && self.model.below(&path).next().is_some()
            {
                Err(Fail::NotEmpty)
            } else {
                Ok(())
            }
        });
        self.outcome(
            &format!("delete {path} recursive {recursive} {c:?}"),
            &got,
            want,
        );
        if got.is_ok() {
            self.model.remove_tree(&path);
        }
    }

    fn attr(&mut self, p: &[u8], k: u8, v: Option<u8>) {
        let path = show(p);
        let key = format!("k{k}");
        let val = v.map(|v| format!("v{v}"));
        let t = self.tick();
        let got = self
            .m
            .set_attrs(NS, &path, &[(key.as_str(), val.as_deref())], t);
        let want = self.model.resolve(p).map(drop);
        self.outcome(&format!("set {key}={val:?} on {path}"), &got, want);
        if let Ok(e) = got {
            let attrs = &mut self.model.paths.get_mut(&path).expect("resolved").attrs;
            match val {
                Some(v) => attrs.insert(key, v),
                None => attrs.remove(&key),
            };
            assert_eq!(ModelEntry::from(&e), self.model.paths[&path]);
            self.note(&e);
        }
    }

    /// The path components of a target.
    fn resolve(&self, t: &Target) -> Vec<u8> {
        match t {
            Target::Path(p) => p.clone(),
            Target::Pick(i) | Target::Full(i) => {
                let full = matches!(t, Target::Full(_));
                let paths: Vec<&String> = self
                    .model
                    .paths
                    .keys()
                    .filter(|p| *p != "/" && (!full || self.model.below(p).next().is_some()))
                    .collect();
                match paths.get(usize::from(*i) % paths.len().max(1)) {
                    Some(path) => path[1..]
                        .split('/')
                        .map(|name| self.components[name])
                        .collect(),
                    None => vec![0],
                }
            }
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Mkdir(p, parents) => self.mkdir(p, *parents),
            Op::Upload(t, size, c) => self.upload(&self.resolve(t), u64::from(*size), *c),
            Op::Move(a, dir, name, c) => {
                let mut to = self.resolve(dir);
                to.push(*name);
                self.rename(&self.resolve(a), &to, *c)
            }
            Op::Delete(t, recursive, c) => self.delete(&self.resolve(t), *recursive, *c),
            Op::Attr(t, k, v) => self.attr(&self.resolve(t), *k, *v),
            Op::Run {
                dir,
                start,
                n,
                folders,
                size,
            } => {
                for i in 0..*n {
                    let mut p = dir.clone();
                    p.push(3 + (start + i) % LONG);
                    if *folders {
                        self.mkdir(&p, false);
                    } else {
                        self.upload(&p, u64::from(*size) + u64::from(i), Cond::None);
                    }
                }
            }
            Op::Prune {
                dir,
                start,
                n,
                step,
            } => {
                for i in (0..*n).step_by(usize::from(*step)) {
                    let mut p = dir.clone();
                    p.push(3 + (start + i) % LONG);
                    self.delete(&p, true, Cond::None);
                }
            }
        }
    }

    /// Check the namespace against the model after an operation that took the model from
    /// `old`, and the namespace from the walk `before`; returns the new walk.
    fn check(
        &mut self,
        op: &Op,
        old: &Model,
        before: &BTreeMap<String, MetaEntry>,
    ) -> BTreeMap<String, MetaEntry> {
        let step = self.step;
        let w = walk(&self.m, self.page);
        check_records(&self.db, &w, &format!("step {step}: {op:?}"));
        let Walk {
            entries: after,
            listings,
        } = w;
        let seen: BTreeMap<String, ModelEntry> = after
            .iter()
            .map(|(p, e)| (p.clone(), ModelEntry::from(e)))
            .collect();
        assert_eq!(seen, self.model.paths, "step {step}: {op:?}");
        let mut ids = HashSet::new();
        for (path, e) in &after {
            assert!(ids.insert(e.id), "id {} twice", e.id);
            if e.kind == Kind::Folder {
                assert_eq!(
                    listings[path],
                    self.model.children(path),
                    "listing of {path} after step {step}: {op:?}"
                );
            }
            assert_eq!(
                e.tree_size,
                self.model.tree_size(path),
                "tree size of {path} after step {step}: {op:?}"
            );
            assert_eq!(&self.m.stat_id(NS, e.id).unwrap(), e, "stat_id {}", e.id);
            assert_eq!(&self.m.stat(NS, path).unwrap(), e, "stat {path}");
        }
        assert_eq!(self.m.usage(NS).unwrap().bytes, after["/"].tree_size);

        // Etags: changed exactly on the changed entries and their ancestors, and never one
        // issued before (unless an operation of this step returned it for the same entry).
        let dirty = Model::dirty(old, &self.model);
        let was: HashMap<u64, &str> = before.values().map(|e| (e.id, e.etag.as_str())).collect();
        for (path, e) in &after {
            let prev = was.get(&e.id);
            let changed = prev != Some(&e.etag.as_str());
            if prev.is_some() {
                assert_eq!(
                    changed,
                    dirty.contains(&e.id),
                    "etag of {path} (id {}) at step {step}: {op:?}",
                    e.id
                );
            }
            match self.etags.get(&e.etag) {
                Some(&(id, first)) => assert!(
                    id == e.id && (!changed || first == step),
                    "etag {} of {path} repeats one issued at step {first} to entry {id}",
                    e.etag
                ),
                None => {
                    self.etags.insert(e.etag.clone(), (e.id, step));
                }
            }
        }
        after
    }
}

fn run(ops: &[Op], page: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = tiny(dir.path(), 1 << 20);
    c.max_key_bytes = 1024;
    c.max_value_bytes = 1024; // directory nodes split at 1 KiB: four to nine long names
    c.page_bytes = 16 << 10;
    c.segment_bytes = 64 << 10;
    c.changelog_bytes = 16 << 20; // keep the whole feed for the replay check
    c.dram_budget_bytes = 16 << 20;
    let db = Db::open(c).unwrap();
    let m = MetaStore::open(&db).unwrap();
    let root = m.create_namespace(NS, 0).unwrap();
    assert_eq!(root.etag, STALE, "the root's first etag");
    let mut model = Model {
        paths: BTreeMap::new(),
    };
    model.paths.insert("/".into(), ModelEntry::from(&root));
    let mut r = Run {
        db,
        m,
        model,
        page,
        clock: 0,
        step: 0,
        etags: HashMap::new(),
        max_id: root.id,
        components: (0..3 + LONG).map(|c| (name(c), c)).collect(),
    };
    r.note(&root);
    let mut before = walk(&r.m, page).entries;
    for (step, op) in ops.iter().enumerate() {
        r.step = step;
        let old = r.model.clone();
        r.apply(op);
        before = r.check(op, &old, &before);
    }

    // Replay the whole change feed, a few revisions at a time, onto an empty map.
    let mut feed: BTreeMap<u64, MetaEntry> = BTreeMap::new();
    let mut cursor = 0;
    loop {
        let page =
            r.m.changes(NS, cursor, 7, std::time::Duration::ZERO)
                .unwrap();
        for (_, c) in page.changes {
            match c {
                Change::Upsert(e) => {
                    feed.insert(e.id, e);
                }
                Change::Delete(id) => {
                    assert!(feed.remove(&id).is_some(), "a delete of {id} before it");
                }
            }
        }
        if page.cursor == cursor {
            break;
        }
        cursor = page.cursor;
    }
    let live: BTreeMap<u64, MetaEntry> = before.values().map(|e| (e.id, e.clone())).collect();
    assert_eq!(
        feed, live,
        "the change feed rebuilds the namespace's entries"
    );
    let mut paths = BTreeMap::new();
    for e in feed.values() {
        let mut parts = Vec::new();
        let mut cur = e;
        while cur.parent != 0 {
            assert!(
                parts.len() < 64,
                "a cycle of parents in the feed at {}",
                e.id
            );
            parts.push(cur.name.as_str());
            cur = &feed[&cur.parent];
        }
        parts.reverse();
        paths.insert(format!("/{}", parts.join("/")), ModelEntry::from(e));
    }
    assert_eq!(paths, r.model.paths, "the change feed rebuilds the paths");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(32)
    ))]

    #[test]
    fn the_namespace_matches_a_plain_path_map(
        ops in proptest::collection::vec(op(), 1..80),
        page in 1usize..=3,
    ) {
        run(&ops, page);
    }
}
