//! The metadata model's operations and errors, one by one: namespaces, stat by path and by
//! id, folder creation (with and without parents), uploads with their preconditions, listings
//! in name order page by page, moves and renames (ids stable, a folder never into itself),
//! deletes (file, empty folder, recursive, reclaimed in bounded steps and resumed after a
//! stop), etags on every ancestor and never repeated, tree
//! sizes, bad paths, and a namespace surviving a reopen.

mod common;

use common::tiny;
use std::collections::HashSet;
use tera_engine::meta::{Kind, MetaError, MetaStore, Precondition, Upload};
use tera_engine::{Db, Durability};

const NS: u64 = 7;

fn store(dir: &std::path::Path) -> (Db, MetaStore) {
    let mut c = tiny(dir, 4 << 20);
    c.max_key_bytes = 4200;
    c.max_value_bytes = 2048; // directory nodes then split at 2 KiB
    c.page_bytes = 64 << 10;
    c.segment_bytes = 256 << 10;
    let db = Db::open(c).unwrap();
    let m = MetaStore::open(&db).unwrap();
    m.create_namespace(NS, 1).unwrap();
    (db, m)
}

fn up(size: u64, mtime: i64) -> Upload {
    Upload {
        size,
        mtime,
        checksum: ("sha256".into(), format!("{size:064x}")),
        mime: "text/plain".into(),
    }
}

#[test]
fn folders_and_uploads_stat_and_list() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, m) = store(dir.path());
    let root = m.stat(NS, "/").unwrap();
    assert_eq!(
        (root.kind, root.id),
        (Kind::Folder, tera_engine::meta::ROOT_ID)
    );
    assert_eq!(
        m.create_namespace(NS, 5).unwrap(),
        root,
        "creating it again changes nothing"
    );

    let a = m.mkdir(NS, "/a", false, 10).unwrap();
    assert_eq!(
        (a.kind, a.name.as_str(), a.parent),
        (Kind::Folder, "a", root.id)
    );
    assert!(matches!(
        m.mkdir(NS, "/a", false, 10),
        Err(MetaError::AlreadyExists(_))
    ));
    assert_eq!(
        m.mkdir(NS, "/a", true, 10).unwrap().id,
        a.id,
        "parents: an existing folder is fine"
    );
    assert!(matches!(
        m.mkdir(NS, "/x/y", false, 10),
        Err(MetaError::NotFound(_))
    ));
    let deep = m.mkdir(NS, "/x/y/z", true, 11).unwrap();
    assert_eq!(m.stat(NS, "/x/y/z").unwrap(), deep);
    assert_eq!(m.stat_id(NS, deep.id).unwrap(), deep);

    let f = m
        .upload(NS, "/a/f.txt", &up(100, 20), &Precondition::None)
        .unwrap();
    assert_eq!((f.kind, f.size, f.mtime), (Kind::File, 100, 20));
    assert_eq!(f.checksum.0, "sha256");
    assert!(matches!(
        m.mkdir(NS, "/a/f.txt/sub", true, 1),
        Err(MetaError::NotAFolder(_))
    ));
    assert!(matches!(
        m.upload(NS, "/a", &up(1, 1), &Precondition::None),
        Err(MetaError::IsAFolder(_))
    ));
    assert!(matches!(
        m.upload(NS, "/nope/f", &up(1, 1), &Precondition::None),
        Err(MetaError::NotFound(_))
    ));
    assert!(matches!(
        m.upload(NS, "/a/f.txt/g", &up(1, 1), &Precondition::None),
        Err(MetaError::NotAFolder(_))
    ));
    assert!(matches!(
        m.stat(NS, "/a/missing"),
        Err(MetaError::NotFound(_))
    ));
    assert!(
        matches!(m.stat(99, "/"), Err(MetaError::NotFound(_))),
        "unknown namespace"
    );

    // Overwrite keeps the id; preconditions.
    let f2 = m
        .upload(
            NS,
            "/a/f.txt",
            &up(50, 30),
            &Precondition::IfMatch(f.etag.clone()),
        )
        .unwrap();
    assert_eq!(f2.id, f.id);
    assert_ne!(f2.etag, f.etag);
    assert!(
        matches!(
            m.upload(
                NS,
                "/a/f.txt",
                &up(1, 1),
                &Precondition::IfMatch(f.etag.clone())
            ),
            Err(MetaError::PreconditionFailed(_))
        ),
        "a stale etag loses"
    );
    assert!(matches!(
        m.upload(NS, "/a/f.txt", &up(1, 1), &Precondition::IfNoneMatch),
        Err(MetaError::PreconditionFailed(_))
    ));
    assert!(matches!(
        m.upload(NS, "/a/new", &up(1, 1), &Precondition::IfMatch("0".into())),
        Err(MetaError::PreconditionFailed(_))
    ));
    m.upload(NS, "/a/new", &up(7, 40), &Precondition::IfNoneMatch)
        .unwrap();
    assert_eq!(
        m.stat(NS, "/a/f.txt").unwrap().size,
        50,
        "failed uploads changed nothing"
    );

    // Tree sizes and mtimes.
    assert_eq!(m.stat(NS, "/a").unwrap().tree_size, 57);
    assert_eq!(m.stat(NS, "/").unwrap().tree_size, 57);
    assert_eq!(m.stat(NS, "/").unwrap().tree_mtime, 40);

    // Listing: name order, pages.
    for i in (0..25).rev() {
        m.upload(NS, &format!("/x/f{i:02}"), &up(1, 1), &Precondition::None)
            .unwrap();
    }
    let mut names = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let p = m.list(NS, "/x", 10, after.as_deref()).unwrap();
        pages += 1;
        names.extend(p.entries.iter().map(|e| e.name.clone()));
        match p.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    let mut want: Vec<String> = (0..25).map(|i| format!("f{i:02}")).collect();
    want.push("y".into());
    assert_eq!(names, want);
    assert_eq!(pages, 3);
    assert!(matches!(
        m.list(NS, "/a/f.txt", 10, None),
        Err(MetaError::NotAFolder(_))
    ));
}

#[test]
fn moves_keep_ids_and_refuse_cycles() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, m) = store(dir.path());
    let src = m.mkdir(NS, "/src/inner", true, 1).unwrap();
    let f = m
        .upload(NS, "/src/inner/f", &up(10, 2), &Precondition::None)
        .unwrap();
    m.mkdir(NS, "/dst", false, 1).unwrap();
    let top = m.stat(NS, "/src").unwrap();

    assert!(matches!(
        m.rename(NS, "/src", "/src/inner/x", None, 3),
        Err(MetaError::InvalidPath { .. })
    ));
    assert!(matches!(
        m.rename(NS, "/src", "/src/x", None, 3),
        Err(MetaError::InvalidPath { .. })
    ));
    assert!(matches!(
        m.rename(NS, "/src", "/dst", None, 3),
        Err(MetaError::AlreadyExists(_))
    ));
    assert!(matches!(
        m.rename(NS, "/src", "/nope/src", None, 3),
        Err(MetaError::NotFound(_))
    ));
    assert!(matches!(
        m.rename(NS, "/nope", "/dst/x", None, 3),
        Err(MetaError::NotFound(_))
    ));
    assert!(matches!(
        m.rename(NS, "/src", "/dst/src", Some("00"), 3),
        Err(MetaError::PreconditionFailed(_))
    ));
    let same = m.rename(NS, "/src", "/src", None, 3).unwrap();
    assert_eq!(same.etag, top.etag, "a move to where it is changes nothing");

    let moved = m
        .rename(NS, "/src", "/dst/renamed", Some(&top.etag), 4)
        .unwrap();
    assert_eq!(moved.id, top.id, "ids never change on a move");
    assert_ne!(moved.etag, top.etag);
    assert_eq!(m.stat(NS, "/dst/renamed/inner").unwrap().id, src.id);
    assert_eq!(m.stat(NS, "/dst/renamed/inner/f").unwrap().id, f.id);
    assert!(matches!(m.stat(NS, "/src"), Err(MetaError::NotFound(_))));
    assert_eq!(m.stat(NS, "/dst").unwrap().tree_size, 10);
    assert_eq!(m.stat(NS, "/").unwrap().tree_size, 10);
    // Rename a file in place.
    let r = m
        .rename(NS, "/dst/renamed/inner/f", "/dst/renamed/inner/g", None, 5)
        .unwrap();
    assert_eq!((r.id, r.name.as_str()), (f.id, "g"));
    assert!(matches!(
        m.rename(NS, "/", "/x", None, 1),
        Err(MetaError::InvalidPath { .. })
    ));
}

#[test]
fn deletes_and_tree_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, m) = store(dir.path());
    m.mkdir(NS, "/d/e/f", true, 1).unwrap();
    m.upload(NS, "/d/e/f/1", &up(5, 1), &Precondition::None)
        .unwrap();
    m.upload(NS, "/d/2", &up(7, 1), &Precondition::None)
        .unwrap();
    m.mkdir(NS, "/empty", false, 1).unwrap();
    assert_eq!(m.stat(NS, "/").unwrap().tree_size, 12);

    assert!(matches!(
        m.delete(NS, "/d", false, None, 2),
        Err(MetaError::NotEmpty(_))
    ));
    m.delete(NS, "/empty", false, None, 2).unwrap();
    let two = m.stat(NS, "/d/2").unwrap();
    assert!(matches!(
        m.delete(NS, "/d/2", false, Some("00"), 2),
        Err(MetaError::PreconditionFailed(_))
    ));
    m.delete(NS, "/d/2", false, Some(&two.etag), 2).unwrap();
    assert_eq!(m.stat(NS, "/d").unwrap().tree_size, 5);
    m.delete(NS, "/d", true, None, 3).unwrap();
    assert!(matches!(
        m.stat(NS, "/d/e/f/1"),
        Err(MetaError::NotFound(_))
    ));
    assert_eq!(m.stat(NS, "/").unwrap().tree_size, 0);
    assert!(m.list(NS, "/", 100, None).unwrap().entries.is_empty());
    assert!(matches!(
        m.delete(NS, "/", true, None, 3),
        Err(MetaError::InvalidPath { .. })
    ));
    assert!(matches!(
        m.delete(NS, "/gone", false, None, 3),
        Err(MetaError::NotFound(_))
    ));
    // Ids are never reused.
    let again = m.mkdir(NS, "/d", false, 4).unwrap();
    assert!(again.id > two.id);
}

/// A size past a signed 64-bit count is refused, and so is an upload that would take any
/// tree's total (a folder's or the namespace's) past `u64::MAX`: refused whole, with every
/// tree size as it was, never wrapped or clamped. (A move cannot: every folder's total is
/// part of the root's.)
#[test]
fn sizes_that_do_not_fit_are_refused_and_change_nothing() {
    use tera_engine::meta::MAX_FILE_SIZE;
    let dir = tempfile::tempdir().unwrap();
    let (_db, m) = store(dir.path());
    m.upload(NS, "/a", &up(100, 1), &Precondition::None)
        .unwrap();
    let e = m
        .upload(NS, "/b", &up(MAX_FILE_SIZE + 1, 1), &Precondition::None)
        .unwrap_err();
    assert!(matches!(e, MetaError::OutOfBounds(_)), "{e:?}");
    assert!(e.to_string().contains("/b"), "{e}");
    assert!(matches!(m.stat(NS, "/b"), Err(MetaError::NotFound(_))));
    assert_eq!(m.usage(NS).unwrap().bytes, 100);

    // /big's total would fit, the namespace's (100 bytes more) would not.
    m.mkdir(NS, "/big", false, 1).unwrap();
    m.upload(NS, "/big/1", &up(MAX_FILE_SIZE, 1), &Precondition::None)
        .unwrap();
    let e = m
        .upload(NS, "/big/2", &up(MAX_FILE_SIZE, 1), &Precondition::None)
        .unwrap_err();
    assert!(matches!(e, MetaError::OutOfBounds(_)), "{e:?}");
    assert!(e.to_string().contains("\"/\""), "names the root: {e}");
    assert!(matches!(m.stat(NS, "/big/2"), Err(MetaError::NotFound(_))));
    assert_eq!(m.stat(NS, "/big").unwrap().tree_size, MAX_FILE_SIZE);
    assert_eq!(m.usage(NS).unwrap().bytes, MAX_FILE_SIZE + 100);

    // Without /a it fits: 2^64 - 2 bytes. One more byte still fits, two do not.
    m.delete(NS, "/a", false, None, 2).unwrap();
    m.upload(NS, "/big/2", &up(MAX_FILE_SIZE, 2), &Precondition::None)
        .unwrap();
    assert_eq!(m.usage(NS).unwrap().bytes, u64::MAX - 1);
    let e = m
        .upload(NS, "/big/3", &up(2, 3), &Precondition::None)
        .unwrap_err();
    assert!(e.to_string().contains("\"big\""), "names the folder: {e}");
    m.upload(NS, "/big/3", &up(1, 3), &Precondition::None)
        .unwrap();
    assert_eq!(m.stat(NS, "/big").unwrap().tree_size, u64::MAX);
    // Growing a file past it is refused; shrinking one is fine.
    assert!(m
        .upload(NS, "/big/3", &up(2, 4), &Precondition::None)
        .is_err());
    m.upload(NS, "/big/2", &up(0, 4), &Precondition::None)
        .unwrap();
    assert_eq!(m.usage(NS).unwrap().bytes, MAX_FILE_SIZE + 1);
}

/// Moving a folder lengthens the paths below it without naming them: past `MAX_PATH`, those
/// entries stay reachable by path (stat, list, attributes, overwrite, move out, delete), while
/// creating a new entry at such a path is refused with the reason.
#[test]
fn entries_moved_past_the_path_limit_stay_reachable() {
    use tera_engine::meta::MAX_PATH;
    let dir = tempfile::tempdir().unwrap();
    let (_db, m) = store(dir.path());
    let seg = "n".repeat(250);
    let mut deep = String::from("/a");
    for _ in 0..16 {
        deep.push('/');
        deep.push_str(&seg);
    }
    assert!(deep.len() <= MAX_PATH);
    let folder = m.mkdir(NS, &deep, true, 1).unwrap();
    let file = m
        .upload(NS, &format!("{deep}/f"), &up(3, 1), &Precondition::None)
        .unwrap();
    let long = format!("/{}", "b".repeat(255));
    m.rename(NS, "/a", &long, None, 2).unwrap();
    let moved = format!("{long}{}", &deep[2..]);
    assert!(moved.len() > MAX_PATH, "{}", moved.len());
    let f = format!("{moved}/f");
    assert_eq!(m.stat(NS, &moved).unwrap().id, folder.id);
    assert_eq!(m.stat(NS, &f).unwrap().id, file.id);
    let listing = m.list(NS, &moved, 10, None).unwrap();
    assert_eq!(listing.entries.len(), 1);
    m.set_attrs(NS, &f, &[("k", Some("v"))], 3).unwrap();
    m.upload(NS, &f, &up(4, 4), &Precondition::None).unwrap();
    assert_eq!(m.stat(NS, &f).unwrap().size, 4);
    // A new entry there is refused, saying why.
    let e = m
        .upload(NS, &format!("{moved}/g"), &up(1, 5), &Precondition::None)
        .unwrap_err();
    assert!(e.to_string().contains("the most for a new entry"), "{e}");
    assert!(m.mkdir(NS, &format!("{moved}/h"), false, 5).is_err());
    // Moved out, and deleted.
    m.rename(NS, &f, "/f", None, 6).unwrap();
    assert_eq!(m.stat(NS, "/f").unwrap().id, file.id);
    m.delete(NS, &moved, false, None, 7).unwrap();
    assert!(matches!(m.stat(NS, &moved), Err(MetaError::NotFound(_))));
}

/// A wait of `Duration::MAX` means "until a change comes", and returns at once when one is
/// there (it must not overflow the clock).
#[test]
fn a_change_feed_wait_of_duration_max_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, m) = store(dir.path());
    m.mkdir(NS, "/x", false, 1).unwrap();
    let page = m.changes(NS, 0, 10, std::time::Duration::MAX).unwrap();
    assert!(!page.changes.is_empty());
}

#[test]
fn etags_change_on_every_ancestor_and_never_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, m) = store(dir.path());
    m.mkdir(NS, "/a/b", true, 1).unwrap();
    m.mkdir(NS, "/other", false, 1).unwrap();
    let mut seen = HashSet::new();
    let snap = |m: &MetaStore| ["/", "/a", "/a/b", "/other"].map(|p| m.stat(NS, p).unwrap().etag);
    for i in 0..20 {
        let before = snap(&m);
        let f = m
            .upload(NS, "/a/b/f", &up(i, i as i64), &Precondition::None)
            .unwrap();
        let after = snap(&m);
        assert_ne!(before[0], after[0]);
        assert_ne!(before[1], after[1]);
        assert_ne!(before[2], after[2]);
        assert_eq!(before[3], after[3], "an unrelated folder keeps its etag");
        for e in after.iter().take(3).chain([&f.etag]) {
            assert!(seen.insert(e.clone()), "etag {e} repeated");
        }
    }
    // A failed operation changes no etag.
    let before = snap(&m);
    let _ = m.mkdir(NS, "/a", false, 1);
    assert_eq!(before, snap(&m));
}

#[test]
fn bad_paths_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, m) = store(dir.path());
    let long_name = format!("/{}", "n".repeat(256));
    let long_path = "/abc".repeat(1025);
    for (p, why) in [
        ("", "not absolute"),
        ("relative/x", "not absolute"),
        ("/a//b", "empty component"),
        ("//", "empty component"),
        ("/a//", "empty component"),
        ("/a/./b", ". or .."),
        ("/a/../b", ". or .."),
        ("/a\0b", "NUL"),
        (long_name.as_str(), "longer than 255"),
        (
            long_path.as_str(),
            "longer than 4096 bytes, the most for a new entry",
        ),
    ] {
        match m.mkdir(NS, p, true, 1) {
            Err(MetaError::InvalidPath { reason, .. }) => {
                assert!(reason.contains(why), "{p:?}: {reason}")
            }
            other => panic!("{p:?}: {other:?}"),
        }
        // A lookup may be longer (entries moved deep stay reachable): nothing is there.
        let r = m.stat(NS, p);
        if p == long_path {
            assert!(matches!(r, Err(MetaError::NotFound(_))), "{r:?}");
        } else {
            assert!(
                matches!(r, Err(MetaError::InvalidPath { .. })),
                "{p:?}: {r:?}"
            );
        }
    }
    let too_long = "/abc".repeat((tera_engine::meta::MAX_LOOKUP_PATH / 4) + 1);
    match m.stat(NS, &too_long) {
        Err(MetaError::InvalidPath { reason, .. }) => {
            assert!(reason.contains("longer than 1048576 bytes"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(m.stat(NS, "/").unwrap().tree_size, 0);
    // One trailing slash names a folder; a file's path cannot have one.
    m.mkdir(NS, "/d/", false, 1).unwrap();
    assert!(m.stat(NS, "/d/").is_ok());
    match m.upload(NS, "/d/f/", &up(3, 1), &Precondition::None) {
        Err(MetaError::InvalidPath { reason, .. }) => assert!(reason.contains("end with /")),
        other => panic!("{other:?}"),
    }
    assert!(matches!(m.stat(NS, "/d/f"), Err(MetaError::NotFound(_))));
    // A file named with a trailing slash is not there as a folder (POSIX's ENOTDIR): stat,
    // attributes, move and delete all refuse it, and change nothing.
    m.upload(NS, "/d/f", &up(3, 1), &Precondition::None)
        .unwrap();
    let not_a_folder = |r: Result<(), MetaError>, what: &str| match r {
        Err(MetaError::NotAFolder(p)) => assert_eq!(p, "/d/f/", "{what}"),
        other => panic!("{what}: {other:?}"),
    };
    not_a_folder(m.stat(NS, "/d/f/").map(drop), "stat");
    not_a_folder(
        m.set_attrs(NS, "/d/f/", &[("k", Some("v"))], 2).map(drop),
        "attributes",
    );
    not_a_folder(m.rename(NS, "/d/f/", "/d/g", None, 2).map(drop), "move");
    not_a_folder(m.delete(NS, "/d/f/", false, None, 2), "delete");
    // And a file cannot be moved to a path ending in `/`.
    match m.rename(NS, "/d/f", "/d/g/", None, 2) {
        Err(MetaError::InvalidPath { reason, .. }) => assert!(reason.contains("end with /")),
        other => panic!("{other:?}"),
    }
    let f = m.stat(NS, "/d/f").unwrap();
    assert!(f.attrs.is_empty(), "{f:?}");
    assert!(matches!(m.stat(NS, "/d/g"), Err(MetaError::NotFound(_))));
}

#[test]
fn a_namespace_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || {
        let mut c = tiny(dir.path(), 4 << 20);
        c.max_key_bytes = 4200;
        c.max_value_bytes = 2048; // directory nodes then split at 2 KiB
        c.page_bytes = 64 << 10;
        c.segment_bytes = 256 << 10;
        c.durability = Durability::Commit;
        c
    };
    let (f, root) = {
        let db = Db::open(cfg()).unwrap();
        let m = MetaStore::open(&db).unwrap();
        m.create_namespace(NS, 1).unwrap();
        m.mkdir(NS, "/docs", false, 1).unwrap();
        let f = m
            .upload(NS, "/docs/r.txt", &up(3, 2), &Precondition::None)
            .unwrap();
        (f, m.stat(NS, "/").unwrap())
    };
    let db = Db::open(cfg()).unwrap();
    let m = MetaStore::open(&db).unwrap();
    assert_eq!(m.stat(NS, "/docs/r.txt").unwrap(), f);
    assert_eq!(m.stat(NS, "/").unwrap(), root);
    let g = m
        .upload(NS, "/docs/s.txt", &up(1, 3), &Precondition::None)
        .unwrap();
    assert!(g.id > f.id, "ids go on after a reopen");
    assert!(g.etag > root.etag, "etags go on after a reopen");
}

#[test]
fn attributes_usage_and_the_change_feed() {
    use std::time::Duration;
    use tera_engine::meta::Change;
    let dir = tempfile::tempdir().unwrap();
    let (_db, m) = store(dir.path());
    let start = m.cursor().unwrap();
    m.mkdir(NS, "/p", false, 1).unwrap();
    let f = m
        .upload(NS, "/p/f", &up(9, 2), &Precondition::None)
        .unwrap();
    let tagged = m
        .set_attrs(NS, "/p/f", &[("color", Some("red")), ("x", Some("1"))], 3)
        .unwrap();
    assert_eq!(tagged.attrs.get("color").map(String::as_str), Some("red"));
    assert_ne!(tagged.etag, f.etag);
    let same = m
        .set_attrs(NS, "/p/f", &[("color", Some("red"))], 4)
        .unwrap();
    assert_eq!(
        same.etag, tagged.etag,
        "setting what is there changes nothing"
    );
    let untagged = m.set_attrs(NS, "/p/f", &[("x", None)], 5).unwrap();
    assert!(!untagged.attrs.contains_key("x"));
    let kept = m
        .upload(NS, "/p/f", &up(4, 6), &Precondition::None)
        .unwrap();
    assert_eq!(kept.attrs, untagged.attrs, "an overwrite keeps attributes");
    assert_eq!(m.usage(NS).unwrap().bytes, 4);

    // Another namespace's changes stay out of this one's feed.
    m.create_namespace(NS + 1, 1).unwrap();
    m.mkdir(NS + 1, "/other", false, 1).unwrap();
    m.delete(NS, "/p", true, None, 7).unwrap();

    // Read the feed a revision at a time and rebuild the namespace from it.
    let mut cursor = start;
    let mut live = std::collections::BTreeMap::new();
    let mut pages = 0;
    loop {
        let page = m.changes(NS, cursor, 1, Duration::ZERO).unwrap();
        if page.cursor == cursor {
            break;
        }
        pages += 1;
        for (_, c) in page.changes {
            match c {
                Change::Upsert(e) => {
                    assert!(e.name != "other", "a change of another namespace");
                    live.insert(e.id, e);
                }
                Change::Delete(id) => {
                    live.remove(&id);
                }
            }
        }
        cursor = page.cursor;
    }
    assert!(pages >= 7);
    let names: Vec<_> = live.values().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        vec![""],
        "only the root is left, as in the namespace"
    );
    assert_eq!(live[&tera_engine::meta::ROOT_ID], m.stat(NS, "/").unwrap());

    // Waiting for the next change.
    let now = m.cursor().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(50));
            m.mkdir(NS, "/later", false, 8).unwrap();
        });
        let page = m.changes(NS, now, 10, Duration::from_secs(10)).unwrap();
        assert!(page
            .changes
            .iter()
            .any(|(_, c)| matches!(c, Change::Upsert(e) if e.name == "later")));
    });
}

#[test]
fn a_cursor_older_than_the_history_is_too_old() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = tiny(dir.path(), 4 << 20);
    c.max_key_bytes = 4200;
    c.max_value_bytes = 2048; // directory nodes then split at 2 KiB
    c.page_bytes = 64 << 10;
    c.segment_bytes = 256 << 10;
    c.changelog_bytes = 32 << 10;
    let db = Db::open(c).unwrap();
    let m = MetaStore::open(&db).unwrap();
    m.create_namespace(NS, 1).unwrap();
    let start = m.cursor().unwrap();
    for i in 0..300 {
        m.upload(NS, &format!("/f{i}"), &up(i, i as i64), &Precondition::None)
            .unwrap();
    }
    match m.changes(NS, start, 10, std::time::Duration::ZERO) {
        Err(MetaError::CursorTooOld { cursor, oldest }) => assert!(cursor < oldest),
        other => panic!("expected CursorTooOld, got {other:?}"),
    }
}

/// Sum of file sizes below `path`, checking every folder's tree size on the way.
fn check_tree(m: &MetaStore, path: &str) -> u64 {
    let e = m.stat(NS, path).unwrap();
    if e.kind == Kind::File {
        return e.size;
    }
    let mut sum = 0;
    let mut after: Option<String> = None;
    loop {
        let page = m.list(NS, path, 100, after.as_deref()).unwrap();
        for c in &page.entries {
            let child = if path == "/" {
                format!("/{}", c.name)
            } else {
                format!("{path}/{}", c.name)
            };
            assert_eq!(c.parent, e.id);
            sum += check_tree(m, &child);
        }
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(e.tree_size, sum, "tree size of {path}");
    sum
}

#[test]
fn concurrent_writers_lose_no_update_and_keep_the_invariants() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, m) = store(dir.path());
    m.upload(NS, "/counter", &up(0, 0), &Precondition::None)
        .unwrap();
    let threads = 8;
    let per = 60;
    std::thread::scope(|s| {
        for t in 0..threads {
            let m = &m;
            s.spawn(move || {
                let home = format!("/t{t}");
                m.mkdir(NS, &home, false, 1).unwrap();
                for i in 0..per {
                    // A compare-and-set increment of the shared counter: retried until it
                    // wins, never lost.
                    loop {
                        let cur = m.stat(NS, "/counter").unwrap();
                        match m.upload(
                            NS,
                            "/counter",
                            &up(cur.size + 1, i),
                            &Precondition::IfMatch(cur.etag),
                        ) {
                            Ok(_) => break,
                            Err(MetaError::PreconditionFailed(_)) => continue,
                            Err(e) => panic!("{e}"),
                        }
                    }
                    // Own files and folders: upload, move, delete.
                    let f = format!("{home}/f{i}");
                    m.upload(NS, &f, &up(i as u64 + 1, i), &Precondition::None)
                        .unwrap();
                    if i % 3 == 0 {
                        m.mkdir(NS, &format!("{home}/d{i}"), false, i).unwrap();
                        m.rename(NS, &f, &format!("{home}/d{i}/moved"), None, i)
                            .unwrap();
                    }
                    if i % 5 == 0 && i > 0 {
                        let _ = m.delete(NS, &format!("{home}/f{}", i - 1), false, None, i);
                    }
                    if i % 12 == 6 {
                        m.rename(
                            NS,
                            &format!("{home}/d{}", i - 6),
                            &format!("/t{t}/d{i}/inner"),
                            None,
                            i,
                        )
                        .unwrap();
                    }
                }
            });
        }
    });
    assert_eq!(
        m.stat(NS, "/counter").unwrap().size,
        (threads * per) as u64,
        "no lost update"
    );
    let total = check_tree(&m, "/");
    assert_eq!(total, m.usage(NS).unwrap().bytes);
}

#[test]
fn an_operation_that_changes_nothing_takes_no_revision() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, m) = store(dir.path());
    m.create_namespace(NS, 1).unwrap();
    m.mkdir(NS, "/a/b", true, 2).unwrap();
    m.upload(NS, "/a/f", &up(5, 3), &Precondition::None)
        .unwrap();
    let before = m.cursor().unwrap();
    let root = m.stat(NS, "/").unwrap();
    // A move onto itself, mkdir -p of an existing folder, setting what is already set.
    m.rename(NS, "/a/f", "/a/f", None, 9).unwrap();
    m.mkdir(NS, "/a/b", true, 9).unwrap();
    m.set_attrs(NS, "/a", &[("gone", None)], 9).unwrap();
    assert_eq!(m.cursor().unwrap(), before, "no revision was taken");
    assert_eq!(m.stat(NS, "/").unwrap().etag, root.etag, "no etag moved");
    let page = m
        .changes(NS, before, 100, std::time::Duration::ZERO)
        .unwrap();
    assert!(page.changes.is_empty(), "{page:?}");
    // A cursor from the future is refused, not quietly moved back.
    match m.changes(NS, before + 1000, 10, std::time::Duration::ZERO) {
        Err(MetaError::CursorAhead { cursor, revision }) => {
            assert_eq!((cursor, revision), (before + 1000, before))
        }
        other => panic!("expected CursorAhead, got {other:?}"),
    }
    // A real change still takes one.
    m.upload(NS, "/a/f", &up(6, 10), &Precondition::None)
        .unwrap();
    assert!(m.cursor().unwrap() > before);
}

/// `/big`: 3 folders of 60 files and a sub-folder of 25 more each, names long enough that
/// every directory splits into several nodes at the test's 2 KiB. Returns every id below it.
fn big_tree(m: &MetaStore) -> Vec<u64> {
    let mut ids = vec![m.mkdir(NS, "/big", false, 1).unwrap().id];
    for d in 0..3 {
        ids.push(m.mkdir(NS, &format!("/big/d{d}"), false, 1).unwrap().id);
        ids.push(m.mkdir(NS, &format!("/big/d{d}/sub"), false, 1).unwrap().id);
        for f in 0..60 {
            let p = format!("/big/d{d}/a-rather-long-file-name-to-fill-nodes-{f:04}");
            ids.push(m.upload(NS, &p, &up(1, 1), &Precondition::None).unwrap().id);
        }
        for f in 0..25 {
            let p = format!("/big/d{d}/sub/another-long-file-name-{f:04}");
            ids.push(m.upload(NS, &p, &up(2, 1), &Precondition::None).unwrap().id);
        }
    }
    ids
}

#[test]
fn a_recursive_delete_is_reclaimed_in_bounded_steps() {
    use std::time::Duration;
    use tera_engine::meta::Change;
    let dir = tempfile::tempdir().unwrap();
    let (db, mut m) = store(dir.path());
    m.set_reclaim_step(7);
    let keys = || db.get_keyspace("meta").unwrap().len();
    m.mkdir(NS, "/keep", false, 1).unwrap();
    let before = keys();
    let ids = big_tree(&m);
    assert_eq!(m.stat(NS, "/").unwrap().tree_size, 3 * (60 + 50));
    assert!(
        keys() > before + ids.len() as u64,
        "entries and directory nodes"
    );
    let start = m.cursor().unwrap();

    m.delete(NS, "/big", true, None, 2).unwrap();
    assert!(matches!(m.stat(NS, "/big"), Err(MetaError::NotFound(_))));
    assert!(matches!(
        m.stat(NS, "/big/d1/sub"),
        Err(MetaError::NotFound(_))
    ));
    assert_eq!(m.stat(NS, "/").unwrap().tree_size, 0);
    for &id in &ids {
        assert!(m.stat_id(NS, id).is_err(), "entry {id} was left behind");
    }
    assert_eq!(
        keys(),
        before,
        "every entry, directory node and queue item is gone"
    );
    assert_eq!(m.reclaim(NS).unwrap(), Default::default(), "nothing left");
    m.stat(NS, "/keep").unwrap();

    // The feed deletes every id, the folder's own first.
    let page = m.changes(NS, start, usize::MAX, Duration::ZERO).unwrap();
    let deleted: Vec<u64> = page
        .changes
        .iter()
        .filter_map(|(_, c)| match c {
            Change::Delete(id) => Some(*id),
            Change::Upsert(_) => None,
        })
        .collect();
    assert_eq!(deleted.first(), Some(&ids[0]));
    let mut sorted = deleted.clone();
    sorted.sort_unstable();
    let mut want = ids.clone();
    want.sort_unstable();
    assert_eq!(sorted, want, "one Delete per entry, none twice");
    let revisions: HashSet<u64> = page
        .changes
        .iter()
        .filter(|(_, c)| matches!(c, Change::Delete(_)))
        .map(|&(r, _)| r)
        .collect();
    // A step stops at its budget, after the rest of the leaf it is in (at most 2 KiB of
    // names of 20 bytes or more).
    assert!(
        revisions.len() > 1 && revisions.len() >= ids.len() / (7 + 2048 / 20),
        "{} revisions for {} deletes: not in steps",
        revisions.len(),
        ids.len()
    );
}

/// Empty folders are queued for reclaim but have no directory node, so taking one off the
/// queue forgets no entry: a step must still end after about its budget of such items,
/// or a tree of many empty folders is reclaimed in one batch as large as the tree (800k
/// of them made one batch of hundreds of MB outside the DRAM budget).
#[test]
fn a_tree_of_empty_folders_is_reclaimed_in_bounded_batches() {
    let dir = tempfile::tempdir().unwrap();
    let (db, mut m) = store(dir.path());
    m.set_reclaim_step(8);
    let keys = || db.get_keyspace("meta").unwrap().len();
    m.mkdir(NS, "/keep", false, 1).unwrap();
    let before = keys();
    m.mkdir(NS, "/work", false, 1).unwrap();
    for i in 0..600 {
        m.mkdir(NS, &format!("/work/d{i:04}"), false, 1).unwrap();
    }
    m.upload(NS, "/work/file", &up(1, 1), &Precondition::None)
        .unwrap();
    m.delete_detach_only(NS, "/work", 2).unwrap();
    let done = m.reclaim(NS).unwrap();
    assert_eq!(done.entries, 601, "{done:?}");
    // A leaf of /work's directory holds at most node_bytes / 12 names (2048 / 12 here):
    // each forgets an entry and may queue a folder.
    let most = 8 + 2 * (2048 / 12);
    assert!(done.largest_work <= most as u64, "{done:?}");
    assert!(done.steps >= 600 / most as u64, "{done:?}");
    assert_eq!(keys(), before, "everything below /work is gone");
    assert!(m.list(NS, "/keep", 10, None).unwrap().entries.is_empty());
}

#[test]
fn a_recursive_delete_stopped_after_its_detach_is_finished_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || {
        let mut c = tiny(dir.path(), 4 << 20);
        c.max_key_bytes = 4200;
        c.max_value_bytes = 2048;
        c.page_bytes = 64 << 10;
        c.segment_bytes = 256 << 10;
        c.durability = Durability::Commit;
        c
    };
    let (before, n) = {
        let db = Db::open(cfg()).unwrap();
        let mut m = MetaStore::open(&db).unwrap();
        m.set_reclaim_step(5);
        m.create_namespace(NS, 1).unwrap();
        let kept = m.mkdir(NS, "/kept", false, 1).unwrap().id;
        let before = db.get_keyspace("meta").unwrap().len();
        let ids = big_tree(&m);
        let n = ids.len() as u64;
        for &id in &ids {
            assert_eq!(m.stat_id(NS, id).unwrap().id, id);
        }
        // The process stops right after the delete's visible, atomic part.
        m.delete_detach_only(NS, "/big", 2).unwrap();
        assert!(matches!(m.stat(NS, "/big"), Err(MetaError::NotFound(_))));
        // Everything below it is still stored, but by id it is gone too, at every depth.
        for &id in &ids {
            match m.stat_id(NS, id) {
                Err(MetaError::NotFound(why)) => assert!(why.contains(&id.to_string()), "{why}"),
                other => panic!("entry {id} below a deleted folder: {other:?}"),
            }
        }
        assert_eq!(m.stat_id(NS, kept).unwrap().name, "kept");
        (before, n)
    };
    let db = Db::open(cfg()).unwrap();
    let mut m = MetaStore::open(&db).unwrap();
    m.set_reclaim_step(5);
    let keys = || db.get_keyspace("meta").unwrap().len();
    assert!(matches!(m.stat(NS, "/big"), Err(MetaError::NotFound(_))));
    assert_eq!(m.stat(NS, "/").unwrap().tree_size, 0);
    assert!(keys() > before + n, "the detached subtree is still stored");
    let done = m.reclaim(NS).unwrap();
    assert_eq!(done.entries, n - 1, "everything below the folder");
    assert!(done.largest_step <= 5 + 2048 / 20, "{done:?}");
    assert!(done.steps >= (n - 1) / (5 + 2048 / 20), "{done:?}");
    assert_eq!(keys(), before);
    // The namespace works on.
    m.mkdir(NS, "/big", false, 3).unwrap();
}

/// A listing's buffers are the thread's, kept between listings: pages of different sizes in
/// turn, and a listing made inside another's visit, each get their own entries only.
#[test]
fn listings_in_turn_and_nested_keep_their_entries_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, m) = store(dir.path());
    for (folder, n) in [("/big", 40), ("/small", 3)] {
        m.mkdir(NS, folder, false, 1).unwrap();
        for i in 0..n {
            m.upload(
                NS,
                &format!("{folder}/f{i:03}"),
                &up(i, 1),
                &Precondition::None,
            )
            .unwrap();
        }
    }
    let names = |path: &str| -> Vec<String> {
        let mut out = Vec::new();
        m.list_with(NS, path, 100, None, |e| {
            out.push(e.name.to_owned());
            true
        })
        .unwrap();
        out
    };
    let big: Vec<String> = (0..40).map(|i| format!("f{i:03}")).collect();
    let small: Vec<String> = (0..3).map(|i| format!("f{i:03}")).collect();
    for _ in 0..3 {
        assert_eq!(names("/big"), big);
        assert_eq!(names("/small"), small);
    }
    // Inside the visit of /big, list /small each time.
    let mut outer = Vec::new();
    m.list_with(NS, "/big", 100, None, |e| {
        assert_eq!(names("/small"), small);
        outer.push(e.name.to_owned());
        true
    })
    .unwrap();
    assert_eq!(outer, big);
    assert_eq!(names("/big"), big);
    // A listing that fails leaves nothing behind for the next.
    assert!(matches!(
        m.list_with(NS, "/big/f001", 100, None, |_| true),
        Err(MetaError::NotAFolder(_))
    ));
    assert!(matches!(
        m.list_with(NS, "/nope", 100, None, |_| true),
        Err(MetaError::NotFound(_))
    ));
    assert_eq!(names("/small"), small);
}

/// A page whose records would take more than `LIST_COPY_MAX` bytes ends early, with a
/// `next` from which the following pages give every other entry once.
#[test]
fn a_page_of_large_records_ends_at_the_copy_cap_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, m) = store(dir.path());
    m.mkdir(NS, "/big", false, 1).unwrap();
    let record = 1_800;
    let n = tera_engine::meta::LIST_COPY_MAX / record + 100;
    let mime = "m".repeat(record);
    for i in 0..n {
        let u = Upload {
            mime: mime.clone(),
            ..up(i as u64, 1)
        };
        m.upload(NS, &format!("/big/f{i:05}"), &u, &Precondition::None)
            .unwrap();
    }
    let mut names = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let p = m
            .list(NS, "/big", tera_engine::meta::MAX_PAGE, after.as_deref())
            .unwrap();
        pages.push(p.entries.len());
        names.extend(p.entries.into_iter().map(|e| e.name));
        match p.next {
            Some(next) => {
                assert_eq!(Some(&next), names.last());
                after = Some(next);
            }
            None => break,
        }
        assert!(pages.len() < 10, "pages never end: {pages:?}");
    }
    assert!(pages.len() >= 2 && pages[0] < n, "{pages:?}");
    let want: Vec<String> = (0..n).map(|i| format!("f{i:05}")).collect();
    assert_eq!(names, want);
}

/// A namespace header that does not decode is damage, reported as `Corrupt`, not as a
/// missing namespace (which a caller might create again over what is left of it).
#[test]
fn a_damaged_namespace_header_is_corrupt_not_missing() {
    let dir = tempfile::tempdir().unwrap();
    let (db, m) = store(dir.path());
    m.mkdir(NS, "/kept", false, 1).unwrap();
    let mut header = NS.to_be_bytes().to_vec();
    header.push(0); // the header's kind
    let raw = db.get_keyspace("meta").unwrap();
    assert!(raw.get(&header).unwrap().is_some(), "the header's key");
    raw.put(&header, b"short").unwrap();
    match m.stat(NS, "/kept") {
        Err(MetaError::Engine(tera_engine::Error::Corrupt { reason, .. })) => {
            assert!(reason.contains("counters"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(m.stat(NS + 1, "/"), Err(MetaError::NotFound(_))));
}

/// `delete_deferred` ends after the delete's visible part: it says whether the trash queue
/// holds work (only for a non-empty folder), the entries are out of reach at once by path and
/// by id, and `reclaim` removes them later.
#[test]
fn a_deferred_delete_leaves_the_reclaim_to_the_caller() {
    let dir = tempfile::tempdir().unwrap();
    let (db, m) = store(dir.path());
    let keys = || db.get_keyspace("meta").unwrap().len();
    m.mkdir(NS, "/empty", false, 1).unwrap();
    let file = m
        .upload(NS, "/file", &up(1, 1), &Precondition::None)
        .unwrap();
    let before = keys();
    let ids = big_tree(&m);
    assert!(!m.delete_deferred(NS, "/empty", false, None, 2).unwrap());
    assert!(!m.delete_deferred(NS, "/file", false, None, 2).unwrap());
    assert!(matches!(
        m.stat_id(NS, file.id),
        Err(MetaError::NotFound(_))
    ));
    assert!(m.delete_deferred(NS, "/big", true, None, 2).unwrap());
    assert!(matches!(m.stat(NS, "/big"), Err(MetaError::NotFound(_))));
    for &id in &ids {
        assert!(
            matches!(m.stat_id(NS, id), Err(MetaError::NotFound(_))),
            "{id}"
        );
    }
    assert!(keys() > before, "the folder's entries are still stored");
    let done = m.reclaim(NS).unwrap();
    assert_eq!(
        done.entries,
        ids.len() as u64 - 1,
        "everything below the folder"
    );
    // The empty folder, the file and their names are gone too.
    assert!(keys() < before, "{} against {before}", keys());
    assert_eq!(m.reclaim(NS).unwrap().entries, 0, "nothing left");
}
