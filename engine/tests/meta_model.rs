//! Model-based test of the metadata model: random sequences of create folder, upload, move,
//! delete and attribute changes on a small tree, against a plain model keyed by entry id.
//! After every operation the outcome (success, or the kind of error) must match the model's,
//! and then:
//! - the whole tree, walked through listings, equals the model (names, kinds, sizes,
//!   attributes, ids: ids stay stable across moves), so nothing is unreachable from the root;
//! - every folder's tree size is the sum of the file sizes below it;
//! - an entry's etag changed exactly when it or something below it (before or after the
//!   operation) changed, and no etag value ever repeats;
//! - at the end, replaying the change feed from the first cursor onto an empty model rebuilds
//!   the namespace.

mod common;

use common::tiny;
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use tera_engine::meta::{Change, Kind, MetaError, MetaStore, Precondition, Upload, ROOT_ID};
use tera_engine::Db;

const NS: u64 = 3;

#[derive(Debug, Clone)]
enum Op {
    Mkdir(Vec<u8>, bool),
    Upload(Vec<u8>, u16),
    Move(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>, bool),
    Attr(Vec<u8>, u8, Option<u8>),
}

/// Paths of up to three components over the names a, b, c.
fn path() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(0u8..3, 1..4)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (path(), any::<bool>()).prop_map(|(p, parents)| Op::Mkdir(p, parents)),
        4 => (path(), 0u16..1000).prop_map(|(p, s)| Op::Upload(p, s)),
        2 => (path(), path()).prop_map(|(a, b)| Op::Move(a, b)),
        2 => (path(), any::<bool>()).prop_map(|(p, r)| Op::Delete(p, r)),
        1 => (path(), 0u8..2, proptest::option::of(0u8..3)).prop_map(|(p, k, v)| Op::Attr(p, k, v)),
    ]
}

fn show(p: &[u8]) -> String {
    p.iter()
        .map(|c| format!("/{}", (b'a' + c) as char))
        .collect()
}

/// What the model knows of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct E {
    parent: u64,
    name: String,
    kind: Kind,
    size: u64,
    attrs: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default)]
struct Model {
    entries: BTreeMap<u64, E>,
}

impl Model {
    fn child(&self, parent: u64, name: &str) -> Option<u64> {
        self.entries
            .iter()
            .find(|(_, e)| e.parent == parent && e.name == name)
            .map(|(&id, _)| id)
    }

    /// The id at a path, or which error the engine should give.
    fn resolve(&self, p: &[u8]) -> Result<u64, &'static str> {
        let mut cur = ROOT_ID;
        for c in p {
            if self.entries[&cur].kind != Kind::Folder {
                return Err("not a folder");
            }
            cur = self
                .child(cur, &((b'a' + c) as char).to_string())
                .ok_or("not found")?;
        }
        Ok(cur)
    }

    fn below(&self, id: u64) -> Vec<u64> {
        let mut out = vec![id];
        let mut i = 0;
        while i < out.len() {
            let p = out[i];
            out.extend(
                self.entries
                    .iter()
                    .filter(|(_, e)| e.parent == p)
                    .map(|(&c, _)| c),
            );
            i += 1;
        }
        out
    }

    fn ancestors(&self, mut id: u64) -> Vec<u64> {
        let mut out = vec![id];
        while let Some(e) = self.entries.get(&id) {
            if e.parent == 0 {
                break;
            }
            id = e.parent;
            out.push(id);
        }
        out
    }

    fn tree_size(&self, id: u64) -> u64 {
        self.below(id).iter().map(|i| self.entries[i].size).sum()
    }
}

fn kind_of(e: &MetaError) -> &'static str {
    match e {
        MetaError::NotFound(_) => "not found",
        MetaError::AlreadyExists(_) => "exists",
        MetaError::NotAFolder(_) => "not a folder",
        MetaError::IsAFolder(_) => "is a folder",
        MetaError::NotEmpty(_) => "not empty",
        MetaError::PreconditionFailed(_) => "precondition",
        MetaError::InvalidPath { .. } => "invalid path",
        other => panic!("unexpected error: {other}"),
    }
}

/// Walk the engine's tree through listings: id → (entry, etag).
fn walk(m: &MetaStore) -> HashMap<u64, (E, String, u64)> {
    let mut out = HashMap::new();
    let root = m.stat(NS, "/").unwrap();
    let mut stack = vec![("/".to_string(), root)];
    while let Some((path, e)) = stack.pop() {
        if e.kind == Kind::Folder {
            let page = m.list(NS, &path, 1000, None).unwrap();
            assert!(page.next.is_none());
            for c in page.entries {
                let p = if path == "/" {
                    format!("/{}", c.name)
                } else {
                    format!("{path}/{}", c.name)
                };
                stack.push((p, c));
            }
        }
        let model = E {
            parent: e.parent,
            name: e.name.clone(),
            kind: e.kind,
            size: e.size,
            attrs: e.attrs.clone(),
        };
        assert!(
            out.insert(e.id, (model, e.etag.clone(), e.tree_size))
                .is_none(),
            "an id twice"
        );
    }
    out
}

fn run(ops: &[Op]) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = tiny(dir.path(), 1 << 20);
    c.max_key_bytes = 1024;
    c.max_value_bytes = 1024;
    c.page_bytes = 16 << 10;
    c.segment_bytes = 64 << 10;
    c.changelog_bytes = 4 << 20; // keep the whole feed for the replay check
    c.dram_budget_bytes = 8 << 20;
    let db = Db::open(c).unwrap();
    let m = MetaStore::open(&db).unwrap();
    let first = m.cursor();
    m.create_namespace(NS, 0).unwrap();
    let mut model = Model::default();
    model.entries.insert(
        ROOT_ID,
        E {
            parent: 0,
            name: String::new(),
            kind: Kind::Folder,
            size: 0,
            attrs: BTreeMap::new(),
        },
    );
    let mut seen_etags: HashSet<String> = HashSet::new();
    let mut before = walk(&m);
    for (_, etag, _) in before.values() {
        seen_etags.insert(etag.clone());
    }
    for (step, op) in ops.iter().enumerate() {
        let t = step as i64 + 1;
        let old = model.clone();
        // (engine result, model result)
        let (got, want): (Result<(), &str>, Result<(), &str>) = match op {
            Op::Mkdir(p, parents) => {
                let got = m.mkdir(NS, &show(p), *parents, t).map(drop);
                let mut want = Ok(());
                let mut cur = ROOT_ID;
                for (i, c) in p.iter().enumerate() {
                    let name = ((b'a' + c) as char).to_string();
                    let last = i + 1 == p.len();
                    if model.entries[&cur].kind != Kind::Folder {
                        want = Err("not a folder");
                        break;
                    }
                    match model.child(cur, &name) {
                        Some(id) if last => {
                            if !*parents || model.entries[&id].kind != Kind::Folder {
                                want = Err("exists");
                            }
                        }
                        Some(id) => cur = id,
                        None if !last && !parents => {
                            want = Err("not found");
                            break;
                        }
                        None => {
                            if let Ok(e) = m.stat(NS, &show(&p[..=i])) {
                                model.entries.insert(
                                    e.id,
                                    E {
                                        parent: cur,
                                        name,
                                        kind: Kind::Folder,
                                        size: 0,
                                        attrs: BTreeMap::new(),
                                    },
                                );
                                cur = e.id;
                            }
                        }
                    }
                }
                if want.is_err() {
                    model = old.clone();
                }
                (got.map_err(|e| kind_of(&e)), want)
            }
            Op::Upload(p, size) => {
                let up = Upload {
                    size: u64::from(*size),
                    mtime: t,
                    ..Upload::default()
                };
                let got = m.upload(NS, &show(p), &up, &Precondition::None);
                let want = match model.resolve(&p[..p.len() - 1]) {
                    Err(e) => Err(e),
                    Ok(dir) if model.entries[&dir].kind != Kind::Folder => Err("not a folder"),
                    Ok(dir) => {
                        let name = ((b'a' + p[p.len() - 1]) as char).to_string();
                        match model.child(dir, &name) {
                            Some(id) if model.entries[&id].kind == Kind::Folder => {
                                Err("is a folder")
                            }
                            Some(id) => {
                                model.entries.get_mut(&id).unwrap().size = up.size;
                                Ok(())
                            }
                            None => {
                                if let Ok(e) = &got {
                                    model.entries.insert(
                                        e.id,
                                        E {
                                            parent: dir,
                                            name,
                                            kind: Kind::File,
                                            size: up.size,
                                            attrs: BTreeMap::new(),
                                        },
                                    );
                                }
                                Ok(())
                            }
                        }
                    }
                };
                (got.map(drop).map_err(|e| kind_of(&e)), want)
            }
            Op::Move(a, b) => {
                let got = m.rename(NS, &show(a), &show(b), None, t).map(drop);
                let want = if b.len() > a.len() && b[..a.len()] == a[..] {
                    Err("invalid path")
                } else {
                    match model.resolve(a) {
                        Err(e) => Err(e),
                        Ok(id) => match model.resolve(&b[..b.len() - 1]) {
                            Err(e) => Err(e),
                            Ok(dir) if model.entries[&dir].kind != Kind::Folder => {
                                Err("not a folder")
                            }
                            Ok(_) if a == b => Ok(()),
                            Ok(dir) => {
                                let name = ((b'a' + b[b.len() - 1]) as char).to_string();
                                if model.child(dir, &name).is_some() {
                                    Err("exists")
                                } else {
                                    let e = model.entries.get_mut(&id).unwrap();
                                    e.parent = dir;
                                    e.name = name;
                                    Ok(())
                                }
                            }
                        },
                    }
                };
                (got.map_err(|e| kind_of(&e)), want)
            }
            Op::Delete(p, recursive) => {
                let got = m.delete(NS, &show(p), *recursive, None, t);
                let want = match model.resolve(p) {
                    Err(e) => Err(e),
                    Ok(id) => {
                        let below = model.below(id);
                        if below.len() > 1 && !recursive {
                            Err("not empty")
                        } else {
                            for i in below {
                                model.entries.remove(&i);
                            }
                            Ok(())
                        }
                    }
                };
                (got.map_err(|e| kind_of(&e)), want)
            }
            Op::Attr(p, k, v) => {
                let key = format!("k{k}");
                let val = v.map(|v| format!("v{v}"));
                let got = m
                    .set_attrs(NS, &show(p), &[(key.as_str(), val.as_deref())], t)
                    .map(drop);
                let want = model.resolve(p).map(|id| {
                    let e = model.entries.get_mut(&id).unwrap();
                    match val {
                        Some(v) => e.attrs.insert(key, v),
                        None => e.attrs.remove(&key),
                    };
                });
                (got.map_err(|e| kind_of(&e)), want)
            }
        };
        assert_eq!(got, want, "step {step}: {op:?}");

        // The tree equals the model, and tree sizes add up.
        let after = walk(&m);
        let ids: BTreeMap<u64, E> = after
            .iter()
            .map(|(&id, (e, _, _))| (id, e.clone()))
            .collect();
        assert_eq!(ids, model.entries, "step {step}: {op:?}");
        for (&id, (_, _, tree)) in &after {
            assert_eq!(
                *tree,
                model.tree_size(id),
                "tree size of {id} after step {step}"
            );
        }
        // Etags: changed exactly for changed entries and their ancestors, before and after.
        let mut dirty = HashSet::new();
        let all: HashSet<u64> = old
            .entries
            .keys()
            .chain(model.entries.keys())
            .copied()
            .collect();
        for id in all {
            if old.entries.get(&id) != model.entries.get(&id) {
                dirty.extend(old.ancestors(id));
                dirty.extend(model.ancestors(id));
            }
        }
        for (id, (_, etag, _)) in &after {
            let was = before.get(id).map(|b| &b.1);
            let changed = was != Some(etag);
            if was.is_some() {
                assert_eq!(
                    changed,
                    dirty.contains(id),
                    "etag of {id} at step {step}: {op:?}"
                );
            }
            if changed {
                assert!(seen_etags.insert(etag.clone()), "etag {etag} repeated");
            }
        }
        before = after;
    }

    // Replay the change feed onto an empty model.
    let mut replayed: BTreeMap<u64, E> = BTreeMap::new();
    let mut cursor = first;
    loop {
        let page = m
            .changes(NS, cursor, 50, std::time::Duration::ZERO)
            .unwrap();
        for (_, c) in page.changes {
            match c {
                Change::Upsert(e) => {
                    replayed.insert(
                        e.id,
                        E {
                            parent: e.parent,
                            name: e.name,
                            kind: e.kind,
                            size: e.size,
                            attrs: e.attrs,
                        },
                    );
                }
                Change::Delete(id) => {
                    replayed.remove(&id);
                }
            }
        }
        if page.cursor == cursor {
            break;
        }
        cursor = page.cursor;
    }
    assert_eq!(
        replayed, model.entries,
        "the change feed rebuilds the namespace"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(32)
    ))]

    #[test]
    fn the_namespace_matches_a_plain_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(&ops);
    }
}
