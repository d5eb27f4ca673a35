//! Fault injection on the durable path, through the one I/O seam ([`tera_engine::Storage`]):
//! a write to the write-ahead log or to a checkpoint that fails with `ENOSPC`, one that
//! writes half its buffer and then fails, and an `fsync` that fails with `EIO`, each made to
//! hit the Nth such operation for a range of N so that it lands on keyspace creation, on
//! batches, on single puts and deletes, and on checkpoint writes, with durability `commit`
//! and `periodic`. Every failure is reported clearly (the I/O error names the operation and
//! the file); a failed log write or sync poisons the database, which then refuses writes with
//! the reason while reads go on (a range over a batch the failure left undurable is refused); a failed checkpoint poisons nothing and leaves no temporary
//! file. Once the fault clears, a reopened database holds every acknowledged write, each
//! unacknowledged batch whole or not at all, and takes writes again.
//!
//! Only writes and syncs of `wal-*.log` and `ckpt-*` files are counted and failed: far-tier
//! segments are a cache rebuilt at recovery, and their faults are in `faults.rs`.

mod common;

use common::*;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tera_engine::{
    Batch, Config, Db, Durability, Error, Keyspace, KeyspaceOptions, OsStorage, Range, Storage,
    DEFAULT_KEYSPACE,
};

// ---------------------------------------------------------------------------------------
// The fault-injecting storage.

/// What goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// `write_at` fails with `ENOSPC` and writes nothing.
    Enospc,
    /// `write_at` writes the first half of its buffer, then fails with `ENOSPC` (a disk that
    /// fills up in the middle of a write).
    Short,
    /// `sync` (`fdatasync`) fails with `EIO` (the data was written but is not known durable).
    Eio,
}

impl Fault {
    const ALL: [Fault; 3] = [Fault::Enospc, Fault::Short, Fault::Eio];

    /// The operation the engine names in its error.
    fn op(self) -> &'static str {
        match self {
            Fault::Enospc | Fault::Short => "write",
            Fault::Eio => "fsync",
        }
    }

    /// The operating system's text for the error.
    fn text(self) -> &'static str {
        match self {
            Fault::Enospc | Fault::Short => "No space left on device",
            Fault::Eio => "Input/output error",
        }
    }
}

/// Which files the fault counts and hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Wal,
    Ckpt,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Wal,
    Ckpt,
    Other,
}

#[derive(Debug, Clone, Copy)]
struct Plan {
    fault: Fault,
    target: Target,
    /// The counted operation (from 0, since `arm`) that fails first.
    nth: u64,
    /// Go on failing every later counted operation (a full disk), not just the Nth.
    sticky: bool,
}

/// [`OsStorage`] with one armed fault, switched on by [`Faulty::arm`] and off by
/// [`Faulty::clear`] ("the fault clears"). Files are told apart by inode: `open` and `create`
/// record what each file is from its name (every file the engine writes is opened through the
/// seam), and `write_at` and `sync` look the file up.
#[derive(Debug)]
struct Faulty {
    on: AtomicBool,
    plan: Mutex<Plan>,
    /// Counted operations since `arm` (writes for write faults, syncs for sync faults).
    seen: AtomicU64,
    /// Faults injected since `arm`.
    injected: AtomicU64,
    files: Mutex<HashMap<(u64, u64), Kind>>,
    /// What `available_bytes` reports (`u64::MAX`: the real file system's), once the
    /// figures queued in `free_next` are used up.
    free: AtomicU64,
    free_next: Mutex<std::collections::VecDeque<u64>>,
}

impl Faulty {
    fn new() -> Arc<Faulty> {
        Arc::new(Faulty {
            on: AtomicBool::new(false),
            plan: Mutex::new(Plan {
                fault: Fault::Enospc,
                target: Target::Both,
                nth: u64::MAX,
                sticky: false,
            }),
            seen: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            files: Mutex::new(HashMap::new()),
            free: AtomicU64::new(u64::MAX),
            free_next: Mutex::new(std::collections::VecDeque::new()),
        })
    }

    /// Report `bytes` free on the file system (`u64::MAX`: report the real figure).
    fn set_free(&self, bytes: u64) {
        self.free.store(bytes, SeqCst);
    }

    fn arm(&self, fault: Fault, target: Target, nth: u64, sticky: bool) {
        *self.plan.lock().unwrap() = Plan {
            fault,
            target,
            nth,
            sticky,
        };
        self.seen.store(0, SeqCst);
        self.injected.store(0, SeqCst);
        self.on.store(true, SeqCst);
    }

    fn clear(&self) {
        self.on.store(false, SeqCst);
    }

    fn injected(&self) -> u64 {
        self.injected.load(SeqCst)
    }

    fn note(&self, path: &Path, file: &File) {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let kind = if name.starts_with("wal-") && name.ends_with(".log") {
            Kind::Wal
        } else if name.starts_with("ckpt-") {
            Kind::Ckpt
        } else {
            Kind::Other
        };
        if let Ok(m) = file.metadata() {
            self.files.lock().unwrap().insert((m.dev(), m.ino()), kind);
        }
    }

    /// Whether this write (or sync) of `file` is to fail.
    fn hit(&self, sync: bool, file: &File) -> Option<Fault> {
        if !self.on.load(SeqCst) {
            return None;
        }
        let plan = *self.plan.lock().unwrap();
        if (plan.fault == Fault::Eio) != sync {
            return None;
        }
        let kind = file.metadata().ok().and_then(|m| {
            let files = self.files.lock().unwrap();
            files.get(&(m.dev(), m.ino())).copied()
        });
        let counted = matches!(
            (plan.target, kind),
            (Target::Wal | Target::Both, Some(Kind::Wal))
                | (Target::Ckpt | Target::Both, Some(Kind::Ckpt))
        );
        if !counted {
            return None;
        }
        let n = self.seen.fetch_add(1, SeqCst);
        if n == plan.nth || (plan.sticky && n > plan.nth) {
            self.injected.fetch_add(1, SeqCst);
            return Some(plan.fault);
        }
        None
    }
}

impl Storage for Faulty {
    fn create(&self, path: &Path, len: u64) -> std::io::Result<File> {
        let f = OsStorage.create(path, len)?;
        self.note(path, &f);
        Ok(f)
    }

    fn open(&self, path: &Path) -> std::io::Result<File> {
        let f = OsStorage.open(path)?;
        self.note(path, &f);
        Ok(f)
    }

    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
        match self.hit(false, file) {
            Some(Fault::Short) => {
                OsStorage.write_at(file, &buf[..buf.len() / 2], offset)?;
                Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
            }
            Some(_) => Err(std::io::Error::from_raw_os_error(libc::ENOSPC)),
            None => OsStorage.write_at(file, buf, offset),
        }
    }

    fn sync(&self, file: &File) -> std::io::Result<()> {
        match self.hit(true, file) {
            Some(_) => Err(std::io::Error::from_raw_os_error(libc::EIO)),
            None => OsStorage.sync(file),
        }
    }

    fn available_bytes(&self, dir: &Path) -> std::io::Result<u64> {
        if let Some(n) = self.free_next.lock().unwrap().pop_front() {
            return Ok(n);
        }
        match self.free.load(SeqCst) {
            u64::MAX => OsStorage.available_bytes(dir),
            n => Ok(n),
        }
    }
}

// ---------------------------------------------------------------------------------------
// A model of what the database must hold.

/// Keyspace name -> (key -> value), for every keyspace that exists.
type State = BTreeMap<String, BTreeMap<Vec<u8>, Vec<u8>>>;

/// Writes of one batch: key and value, or `None` to delete.
type Writes = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// Something that changes the state: what a successful step adds to the model.
#[derive(Debug, Clone)]
enum Item {
    Keyspace(&'static str),
    Write(&'static str, Writes),
}

fn apply(state: &mut State, item: &Item) {
    match item {
        Item::Keyspace(name) => {
            state.entry(name.to_string()).or_default();
        }
        Item::Write(ks, writes) => {
            let m = state
                .get_mut(*ks)
                .expect("a write to a keyspace that exists");
            for (k, v) in writes {
                match v {
                    Some(v) => m.insert(k.clone(), v.clone()),
                    None => m.remove(k),
                };
            }
        }
    }
}

/// Everything the database holds, read through scans (and, for ordered keyspaces, checked
/// against a range read of the ordered index and the key count).
fn read_state(db: &Db) -> State {
    let mut s = State::new();
    for name in db.keyspace_names() {
        let ks = db.get_keyspace(&name).expect("a listed keyspace");
        let (accs, _) = ks
            .scan_parallel(Vec::new, |a: &mut Vec<(Vec<u8>, Vec<u8>)>, k, v, _| {
                a.push((k.to_vec(), v.to_vec()))
            })
            .unwrap();
        let m: BTreeMap<_, _> = accs.into_iter().flatten().collect();
        if ks.options().ordered {
            match ks.range(&Range::prefix(b"")) {
                Ok(r) => {
                    let ranged: Vec<_> = r.entries.into_iter().map(|e| (e.key, e.value)).collect();
                    let scanned: Vec<_> = m.clone().into_iter().collect();
                    assert_eq!(
                        ranged, scanned,
                        "{name}: the ordered index agrees with a scan"
                    );
                }
                // A range (it reads under the partitions' locks) refuses to answer with a
                // batch the log failure left undurable; lock-free scans still see it.
                Err(Error::NotDurable(_)) if db.poisoned().is_some() => {}
                Err(e) => panic!("{name}: range: {e}"),
            }
        }
        assert_eq!(ks.len(), m.len() as u64, "{name}: key count");
        s.insert(name, m);
    }
    s
}

fn describe(got: &State, want: &State) -> String {
    let mut out = String::new();
    for name in got
        .keys()
        .chain(want.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        match (got.get(name), want.get(name)) {
            (Some(g), Some(w)) => {
                for k in g
                    .keys()
                    .chain(w.keys())
                    .collect::<std::collections::BTreeSet<_>>()
                {
                    let (a, b) = (g.get(k), w.get(k));
                    if a != b {
                        out += &format!(
                            "  {name}/{}: value of {:?} bytes, acknowledged {:?}\n",
                            String::from_utf8_lossy(k),
                            a.map(|v| v.len()),
                            b.map(|v| v.len())
                        );
                    }
                }
            }
            (g, w) => {
                out += &format!(
                    "  keyspace {name}: present {} vs model {}\n",
                    g.is_some(),
                    w.is_some()
                )
            }
        }
    }
    out
}

/// `got` must be `durable` plus the first k of `pending` (in commit order), for some k:
/// every acknowledged write is there, and each unacknowledged one is there whole or not at
/// all (and not after a later one is lost). Returns k.
fn check_prefix(got: &State, durable: &State, pending: &[Item], what: &str) -> usize {
    let mut cand = durable.clone();
    if *got == cand {
        return 0;
    }
    for (i, item) in pending.iter().enumerate() {
        apply(&mut cand, item);
        if *got == cand {
            return i + 1;
        }
    }
    panic!(
        "{what}: the state is not the acknowledged writes plus a prefix of the {} \
         unacknowledged ones (a lost acknowledged write or a half batch).\n\
         Difference from the acknowledged state:\n{}pending: {pending:?}",
        pending.len(),
        describe(got, durable)
    );
}

fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ckpt-") && n.ends_with(".tmp"))
        .collect()
}

fn config(dir: &Path, storage: &Arc<Faulty>, mode: Durability) -> Config {
    let mut c = tiny(dir, 256 << 10);
    c.durability = mode;
    c.checkpoint_wal_bytes = 0;
    c.storage = storage.clone();
    c
}

fn ns_opts() -> KeyspaceOptions {
    KeyspaceOptions::ordered().partition_prefix(4)
}

fn is_periodic(mode: Durability) -> bool {
    matches!(mode, Durability::Periodic(_))
}

// ---------------------------------------------------------------------------------------
// A schedule of steps, run one at a time with the fault armed.

#[derive(Debug, Clone)]
enum Step {
    Keyspace(&'static str, KeyspaceOptions),
    Write(&'static str, Writes),
    Checkpoint,
    Sync,
}

/// A multi-key batch of group `g` in keyspace `ns` (keys `gNN/x` share the 4-byte partition
/// prefix `gNN/`, so the batch is atomic): the first time puts a, b, c; later puts a and c,
/// deletes b, and puts d.
fn group_batch(g: u32, step: u32, again: bool) -> Writes {
    let k = |x: &str| format!("g{g:02}/{x}").into_bytes();
    let v = |i: u32| Some(value_for(g * 10 + i, step, 60 + (step % 300) as usize));
    if again {
        vec![
            (k("a"), v(0)),
            (k("b"), None),
            (k("c"), v(2)),
            (k("d"), v(3)),
        ]
    } else {
        vec![(k("a"), v(0)), (k("b"), v(1)), (k("c"), v(2))]
    }
}

/// Keyspace creations (first and fourth step), batches, single puts and deletes, and a
/// checkpoint every fourth step; with periodic durability, an explicit sync every third.
/// With commit durability and no fault, the log and checkpoint writes are, in order: 0 `ns`,
/// 1 batch, 2 put, 3 `kv`, 4-5 checkpoint header and trailer, 6 batch, 7 delete, 8 put,
/// 9-10 checkpoint, 11 batch, ... and the syncs one per step.
fn schedule(periodic: bool) -> Vec<Step> {
    let mut v = Vec::new();
    for s in 0..26u32 {
        v.push(match s {
            0 => Step::Keyspace("ns", ns_opts()),
            3 => Step::Keyspace("kv", KeyspaceOptions::hash()),
            _ if s % 4 == 0 => Step::Checkpoint,
            _ if s % 4 == 1 => Step::Write("ns", group_batch((s / 4) % 3, s, s / 4 >= 3)),
            _ if s % 8 == 6 => Step::Write(DEFAULT_KEYSPACE, vec![(key(s - 4), None)]),
            _ if s % 4 == 2 => {
                Step::Write(DEFAULT_KEYSPACE, vec![(key(s), Some(value_for(s, s, 80)))])
            }
            _ => Step::Write("kv", vec![(key(s % 5), Some(value_for(s % 5, s, 120)))]),
        });
        if periodic && s % 3 == 2 {
            v.push(Step::Sync);
        }
    }
    v
}

/// Run a step (its keyspace exists); returns what it adds to the state.
fn exec(db: &Db, step: &Step) -> Result<Option<Item>, Error> {
    match step {
        Step::Keyspace(name, opts) => db.keyspace(name, *opts).map(|_| Some(Item::Keyspace(name))),
        Step::Write(ks_name, writes) => {
            let ks = db.get_keyspace(ks_name).expect("checked by the caller");
            match writes.as_slice() {
                // The single-key calls, through each public entry point.
                [(k, Some(v))] if *ks_name == DEFAULT_KEYSPACE => db.put(k, v)?,
                [(k, Some(v))] => drop(ks.put(k, v)?),
                [(k, None)] if *ks_name == DEFAULT_KEYSPACE => drop(db.delete(k)?),
                [(k, None)] => drop(ks.delete(k)?),
                _ => drop(ks.write(&batch_of(writes))?),
            }
            Ok(Some(Item::Write(ks_name, writes.clone())))
        }
        Step::Checkpoint => db.checkpoint().map(|_| None),
        Step::Sync => db.sync().map(|_| None),
    }
}

/// The text of a poisoned database says that writes are refused, why (the failed operation,
/// its file and the system's error), and what a reopen keeps.
fn assert_poison_text(why: &str, f: Fault) {
    assert!(
        why.contains("could not be made durable")
            && why.contains("refuses writes until it is reopened")
            && why.contains("keeps every write made durable"),
        "the poison text says why writes are refused: {why}"
    );
    assert!(
        why.contains(&format!("I/O failed: {} ", f.op()))
            && why.contains(f.text())
            && why.contains("wal-"),
        "the poison text names the failed operation and file: {why}"
    );
}

/// What a run saw, for the totals the tests check.
#[derive(Debug, Default)]
struct Seen {
    log_failures: usize,
    checkpoint_failures: usize,
    /// Unacknowledged items found after the reopen.
    recovered_unacknowledged: usize,
}

/// Open a database with `fault` armed at the `nth` counted operation on `target` files, run
/// the schedule, checking every outcome and the state after each step; then drop it, clear the
/// fault, reopen, and check the state, that writes work, and that they survive another reopen.
fn run_case(mode: Durability, fault: Fault, target: Target, nth: u64) -> Seen {
    let dir = tempfile::tempdir().unwrap();
    let st = Faulty::new();
    // Armed once open: opening syncs the log it replays, which is not what is counted here
    // (`open_makes_the_replayed_log_durable_first` fails that sync).
    let db = Db::open(config(dir.path(), &st, mode)).expect("open");
    st.arm(fault, target, nth, false);
    let ctx = format!("{mode:?} {fault:?} on {target:?} #{nth}");
    let periodic = is_periodic(mode);
    let mut durable = State::new();
    apply(&mut durable, &Item::Keyspace(DEFAULT_KEYSPACE));
    let mut pending: Vec<Item> = Vec::new();
    let mut seen = Seen::default();
    for (i, step) in schedule(periodic).iter().enumerate() {
        let ctx = format!("{ctx}, step {i} {step:?}");
        let poisoned_before = db.poisoned();
        if let Step::Write(ks, _) = step {
            if db.get_keyspace(ks).is_none() {
                // Its creation was refused after an earlier failure.
                assert!(poisoned_before.is_some(), "{ctx}: keyspace {ks} missing");
                continue;
            }
        }
        let injected_before = st.injected();
        let r = exec(&db, step);
        let fired = st.injected() > injected_before;
        match r {
            Ok(item) => {
                assert!(poisoned_before.is_none(), "{ctx}: succeeded while poisoned");
                assert!(!fired, "{ctx}: a fault was injected but the step succeeded");
                let syncs = matches!(step, Step::Sync | Step::Checkpoint | Step::Keyspace(..));
                if let Some(item) = item {
                    pending.push(item);
                }
                if !periodic || syncs {
                    // Acknowledged durable: with commit durability every commit is; with
                    // periodic, a sync (explicit, a checkpoint's, or a keyspace creation's)
                    // covers everything committed before it.
                    for item in pending.drain(..) {
                        apply(&mut durable, &item);
                    }
                }
            }
            Err(Error::Poisoned(why)) => {
                let before = poisoned_before
                    .unwrap_or_else(|| panic!("{ctx}: refused as poisoned without a failure"));
                assert_eq!(
                    why, before,
                    "{ctx}: the refusal gives the first failure's reason"
                );
                assert_poison_text(&why, fault);
                assert!(
                    Error::Poisoned(why.clone())
                        .to_string()
                        .starts_with("writes are refused: "),
                    "{ctx}"
                );
            }
            Err(e @ Error::Io { .. }) => {
                let Error::Io { op, path, .. } = &e else {
                    unreachable!()
                };
                assert!(fired, "{ctx}: an I/O error without an injected fault: {e}");
                assert_eq!(*op, fault.op(), "{ctx}: {e}");
                let text = e.to_string();
                assert!(
                    text.starts_with(&format!("I/O failed: {op} ")) && text.contains(fault.text()),
                    "{ctx}: the error names the operation and the cause: {text}"
                );
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                if name.starts_with("wal-") && name.ends_with(".log") {
                    seen.log_failures += 1;
                    let why = db
                        .poisoned()
                        .unwrap_or_else(|| panic!("{ctx}: a failed log write must poison"));
                    assert_poison_text(&why, fault);
                    assert!(why.contains(&name), "{ctx}: names the file: {why}");
                    // Not acknowledged, but applied in memory and maybe written: it may or may
                    // not come back, whole.
                    pending.extend(item_of(step));
                } else if name.starts_with("ckpt-") && name.ends_with(".tmp") {
                    seen.checkpoint_failures += 1;
                    assert!(matches!(step, Step::Checkpoint), "{ctx}: {e}");
                    assert_eq!(
                        db.poisoned(),
                        None,
                        "{ctx}: a failed checkpoint does not poison the database"
                    );
                } else {
                    panic!("{ctx}: an error on an unexpected file: {e}");
                }
            }
            Err(e) => panic!("{ctx}: unexpected error: {e}"),
        }
        assert_eq!(
            temporaries(dir.path()),
            Vec::<String>::new(),
            "{ctx}: no checkpoint temporary is left behind"
        );
        // Reads work, and see everything acknowledged (and unacknowledged writes whole).
        check_prefix(
            &read_state(&db),
            &durable,
            &pending,
            &format!("{ctx}: in memory"),
        );
    }
    assert!(st.injected() > 0, "{ctx}: the fault never fired");
    if seen.log_failures > 0 {
        // Every write path refuses, with the reason.
        for r in [
            db.put(b"late", b"x").map(drop),
            db.keyspace("late", KeyspaceOptions::hash()).map(drop),
            db.checkpoint().map(drop),
        ] {
            match r {
                Err(Error::Poisoned(why)) => assert_poison_text(&why, fault),
                other => panic!("{ctx}: a poisoned database took a write: {other:?}"),
            }
        }
    } else {
        assert_eq!(db.poisoned(), None, "{ctx}");
    }
    drop(db);
    assert_eq!(temporaries(dir.path()), Vec::<String>::new(), "{ctx}");

    // The fault clears: reopen through the same storage, faults off.
    st.clear();
    let db = Db::open(config(dir.path(), &st, mode))
        .unwrap_or_else(|e| panic!("{ctx}: reopen after the fault cleared: {e}"));
    let mut state = read_state(&db);
    let k = check_prefix(&state, &durable, &pending, &format!("{ctx}: after reopen"));
    seen.recovered_unacknowledged += k;
    // Writes work again.
    let ns = db.keyspace("ns", ns_opts()).expect("writable after reopen");
    apply(&mut state, &Item::Keyspace("ns"));
    let extra = group_batch(99, 1000, false);
    ns.write(&batch_of(&extra)).expect("a batch after reopen");
    apply(&mut state, &Item::Write("ns", extra));
    db.put(b"after", b"reopen").expect("a put after reopen");
    apply(
        &mut state,
        &Item::Write(
            DEFAULT_KEYSPACE,
            vec![(b"after".to_vec(), Some(b"reopen".to_vec()))],
        ),
    );
    if is_periodic(mode) {
        db.sync().unwrap();
    }
    drop(ns);
    drop(db);
    let db = Db::open(config(dir.path(), &st, mode)).unwrap();
    assert_eq!(
        read_state(&db),
        state,
        "{ctx}: writes after the reopen survive another"
    );
    seen
}

/// The item a step adds, for a step that failed after being applied in memory.
fn item_of(step: &Step) -> Option<Item> {
    match step {
        Step::Keyspace(name, _) => Some(Item::Keyspace(name)),
        Step::Write(ks, w) => Some(Item::Write(ks, w.clone())),
        Step::Checkpoint | Step::Sync => None,
    }
}

/// Batch `i` of a stream of group batches in keyspace `ns` (30 groups, revisited).
fn write_group(ns: &Keyspace, state: &mut State, i: u32) {
    let w = group_batch(i % 30, i, i >= 30);
    ns.write(&batch_of(&w)).expect("commits go on");
    apply(state, &Item::Write("ns", w));
}

fn batch_of(w: &Writes) -> Batch {
    let mut b = Batch::new();
    for (k, v) in w {
        match v {
            Some(v) => b.put(k.clone(), v.clone()),
            None => b.delete(k.clone()),
        };
    }
    b
}

fn sweep(mode: Durability, fault: Fault, ns: std::ops::Range<u64>) -> Seen {
    let mut total = Seen::default();
    for n in ns {
        let s = run_case(mode, fault, Target::Both, n);
        total.log_failures += s.log_failures;
        total.checkpoint_failures += s.checkpoint_failures;
        total.recovered_unacknowledged += s.recovered_unacknowledged;
    }
    total
}

#[test]
fn enospc_on_the_nth_log_or_checkpoint_write_with_commit_durability() {
    let s = sweep(Durability::Commit, Fault::Enospc, 0..14);
    // N = 4, 5, 9, 10 hit checkpoint writes, the others log writes.
    assert_eq!(s.checkpoint_failures, 4, "{s:?}");
    assert_eq!(s.log_failures, 10, "{s:?}");
}

#[test]
fn a_short_log_or_checkpoint_write_with_commit_durability() {
    let s = sweep(Durability::Commit, Fault::Short, 0..14);
    assert_eq!(s.checkpoint_failures, 4, "{s:?}");
    assert_eq!(s.log_failures, 10, "{s:?}");
}

#[test]
fn eio_on_the_nth_log_or_checkpoint_fsync_with_commit_durability() {
    let s = sweep(Durability::Commit, Fault::Eio, 0..14);
    // One sync per step: N = 4, 8, 12 are checkpoints.
    assert_eq!(s.checkpoint_failures, 3, "{s:?}");
    assert_eq!(s.log_failures, 11, "{s:?}");
    // The frame of a commit whose sync failed was written, and may sit in the page cache
    // only: the failed flush is cut off the log, so a reopen (in the same boot) never finds it.
    assert_eq!(s.recovered_unacknowledged, 0, "{s:?}");
}

#[test]
fn every_fault_on_the_nth_operation_with_periodic_durability() {
    // A long interval: the log is written only by explicit syncs, checkpoints and keyspace
    // creation, so N lands deterministically (the background flusher is tested below).
    let mode = Durability::Periodic(Duration::from_secs(3600));
    for fault in Fault::ALL {
        let s = sweep(mode, fault, 0..10);
        assert!(
            s.log_failures > 0 && s.checkpoint_failures > 0,
            "{fault:?}: {s:?}"
        );
    }
}

#[test]
fn the_periodic_flusher_failing_poisons_and_keeps_what_a_sync_acknowledged() {
    for fault in Fault::ALL {
        let dir = tempfile::tempdir().unwrap();
        let st = Faulty::new();
        let mode = Durability::Periodic(Duration::from_millis(2));
        let db = Db::open(config(dir.path(), &st, mode)).unwrap();
        let ns = db.keyspace("ns", ns_opts()).unwrap();
        let mut durable = State::new();
        apply(&mut durable, &Item::Keyspace(DEFAULT_KEYSPACE));
        apply(&mut durable, &Item::Keyspace("ns"));
        for i in 0..20 {
            write_group(&ns, &mut durable, i);
        }
        db.sync().unwrap();
        // From now on every log write (or sync) fails; the flusher thread meets it first.
        st.arm(fault, Target::Wal, 0, true);
        let mut pending = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut i = 20;
        let why = loop {
            assert!(Instant::now() < deadline, "{fault:?}: never poisoned");
            let w = group_batch(i % 30, i, i >= 30);
            i += 1;
            match ns.write(&batch_of(&w)) {
                Ok(_) => pending.push(Item::Write("ns", w)),
                Err(Error::Poisoned(why)) => break why,
                // A writer that outruns the flusher flushes itself.
                Err(e @ Error::Io { .. }) => {
                    assert!(e.to_string().contains(fault.text()), "{e}");
                    pending.push(Item::Write("ns", w));
                }
                Err(e) => panic!("{fault:?}: {e}"),
            }
            if i % 10 == 0 {
                match db.sync() {
                    Ok(()) => {
                        for item in pending.drain(..) {
                            apply(&mut durable, &item);
                        }
                    }
                    Err(Error::Poisoned(_) | Error::Io { .. }) => {}
                    Err(e) => panic!("{fault:?}: {e}"),
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        assert!(st.injected() > 0);
        assert_poison_text(&why, fault);
        assert_eq!(db.poisoned().as_deref(), Some(why.as_str()));
        // Reads go on.
        check_prefix(&read_state(&db), &durable, &pending, "in memory");
        drop(ns);
        drop(db);
        st.clear();
        let db = Db::open(config(dir.path(), &st, mode)).unwrap();
        check_prefix(&read_state(&db), &durable, &pending, "after reopen");
        db.put(b"after", b"reopen").unwrap();
        drop(db);
        let db = Db::open(config(dir.path(), &st, mode)).unwrap();
        assert_eq!(db.get(b"after").unwrap().as_deref(), Some(&b"reopen"[..]));
    }
}

/// Keys `tTgG/x` of committer thread `t`: its own partition keys, so its batches are atomic
/// and no other thread writes them.
fn thread_batch(t: u32, j: u32) -> Writes {
    let g = j % 4;
    let k = |x: &str| format!("t{t}g{g}/{x}").into_bytes();
    let v = |i: u32| Some(value_for(t * 1000 + g * 10 + i, j, 50 + (j % 100) as usize));
    if j < 4 {
        vec![(k("a"), v(0)), (k("b"), v(1)), (k("c"), v(2))]
    } else {
        vec![
            (k("a"), v(0)),
            (k("b"), None),
            (k("c"), v(2)),
            (k("d"), v(3)),
        ]
    }
}

/// The part of `state` that thread `t` wrote.
fn of_thread(state: &State, t: u32) -> State {
    let prefix = format!("t{t}g").into_bytes();
    let mut out = State::new();
    let m = out.entry("ns".to_string()).or_default();
    if let Some(ns) = state.get("ns") {
        m.extend(
            ns.iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .map(|(k, v)| (k.clone(), v.clone())),
        );
    }
    out
}

#[test]
fn concurrent_committers_sharing_a_failed_flush() {
    const THREADS: u32 = 4;
    for fault in Fault::ALL {
        for nth in [3, 17, 40] {
            let ctx = format!("{fault:?} #{nth}");
            let dir = tempfile::tempdir().unwrap();
            let st = Faulty::new();
            let db = Db::open(config(dir.path(), &st, Durability::Commit)).unwrap();
            let ns = db.keyspace("ns", ns_opts()).unwrap();
            // A disk that stays bad from the Nth log write (or sync) on.
            st.arm(fault, Target::Wal, nth, true);
            // Each thread commits until its first error; a committer whose frame rode on a
            // failed flush gets an error too (the leader's I/O error, or Poisoned).
            let per_thread: Vec<(State, Vec<Item>)> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..THREADS)
                    .map(|t| {
                        let (ns, ctx) = (&ns, &ctx);
                        s.spawn(move || {
                            let mut durable = State::new();
                            apply(&mut durable, &Item::Keyspace("ns"));
                            for j in 0..400 {
                                let w = thread_batch(t, j);
                                match ns.write(&batch_of(&w)) {
                                    Ok(_) => apply(&mut durable, &Item::Write("ns", w)),
                                    Err(e @ Error::Io { .. }) => {
                                        assert!(e.to_string().contains(fault.text()), "{e}");
                                        return (durable, vec![Item::Write("ns", w)]);
                                    }
                                    Err(Error::Poisoned(why)) => {
                                        assert_poison_text(&why, fault);
                                        return (durable, vec![Item::Write("ns", w)]);
                                    }
                                    Err(e) => panic!("{ctx}: thread {t}: {e}"),
                                }
                            }
                            panic!("{ctx}: thread {t} never saw the fault");
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert!(st.injected() > 0, "{ctx}");
            assert_poison_text(&db.poisoned().expect("poisoned"), fault);
            let check = |what: &str, db: &Db| {
                let got = read_state(db);
                for (t, (durable, pending)) in per_thread.iter().enumerate() {
                    let what = format!("{ctx}: {what}, thread {t}");
                    check_prefix(&of_thread(&got, t as u32), durable, pending, &what);
                }
            };
            check("in memory", &db);
            drop(ns);
            drop(db);
            st.clear();
            let db = Db::open(config(dir.path(), &st, Durability::Commit)).unwrap();
            check("after reopen", &db);
            db.put(b"after", b"reopen").unwrap();
        }
    }
}

/// A database with `commit` durability and keyspace "ns" holding groups `0..groups`, and the
/// state it must hold.
fn open_with_groups(dir: &Path, st: &Arc<Faulty>, groups: u32) -> (Db, Keyspace, State) {
    let db = Db::open(config(dir, st, Durability::Commit)).unwrap();
    let ns = db.keyspace("ns", ns_opts()).unwrap();
    let mut state = State::new();
    apply(&mut state, &Item::Keyspace(DEFAULT_KEYSPACE));
    apply(&mut state, &Item::Keyspace("ns"));
    for i in 0..groups {
        write_group(&ns, &mut state, i);
    }
    (db, ns, state)
}

#[test]
fn a_failing_checkpoint_poisons_nothing_and_a_later_one_succeeds() {
    for fault in Fault::ALL {
        let dir = tempfile::tempdir().unwrap();
        let st = Faulty::new();
        let (db, ns, mut state) = open_with_groups(dir.path(), &st, 40);
        let first = db.checkpoint().unwrap();
        // The disk is full (or its syncs fail) for checkpoint files only: every attempt fails,
        // cleanly, and commits go on.
        st.arm(fault, Target::Ckpt, 0, true);
        for round in 0..3 {
            for i in 0..10 {
                write_group(&ns, &mut state, 100 + round * 10 + i);
            }
            let e = db.checkpoint().unwrap_err();
            let Error::Io { op, path, .. } = &e else {
                panic!("{fault:?}: {e}")
            };
            assert_eq!(*op, fault.op(), "{e}");
            assert!(path.to_string_lossy().ends_with(".tmp"), "{e}");
            assert!(e.to_string().contains(fault.text()), "{e}");
            assert_eq!(db.poisoned(), None, "{fault:?}: {e}");
            assert_eq!(temporaries(dir.path()), Vec::<String>::new(), "{fault:?}");
            assert_eq!(read_state(&db), state, "{fault:?}");
        }
        assert_eq!(st.injected(), 3);
        assert_eq!(db.stats().checkpoints, 1, "only the first counted");
        // The fault clears.
        st.clear();
        for i in 0..10 {
            write_group(&ns, &mut state, 200 + i);
        }
        let second = db.checkpoint().unwrap();
        assert!(second.lsn > first.lsn);
        for i in 0..10 {
            write_group(&ns, &mut state, 300 + i); // after the checkpoint: replayed from the log
        }
        drop(ns);
        drop(db);
        let (db, info) = Db::open_with_info(config(dir.path(), &st, Durability::Commit)).unwrap();
        assert!(
            info.checkpoint_records > 0 && info.log_frames > 0,
            "{info:?}"
        );
        assert_eq!(read_state(&db), state, "{fault:?}");
    }
}

/// A checkpoint that would leave the log less than two log files of room (64 MiB each here)
/// is not started, and one that finds the room gone while it writes stops: nothing is
/// left behind, nothing is poisoned, commits go on, and once there is room it is written.
/// The disk is shared, so a checkpoint that filled it would make the next log write fail
/// and poison the database.
#[test]
fn a_checkpoint_that_would_fill_the_disk_is_not_started() {
    let dir = tempfile::tempdir().unwrap();
    let st = Faulty::new();
    let (db, ns, mut state) = open_with_groups(dir.path(), &st, 40);
    // Exactly the log's room: the records' estimate does not fit beside it.
    for free in [0, 1 << 20, 128 << 20] {
        st.set_free(free);
        let e = db.checkpoint().unwrap_err();
        let Error::Io { op, source, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(*op, "checkpoint", "{e}");
        assert_eq!(source.kind(), std::io::ErrorKind::StorageFull, "{e}");
        assert!(
            e.to_string().contains(&format!("has {free} bytes free")),
            "{e}"
        );
        assert_eq!(db.poisoned(), None);
        assert_eq!(temporaries(dir.path()), Vec::<String>::new());
        write_group(&ns, &mut state, 100 + (free >> 20) as u32);
        assert_eq!(read_state(&db), state);
    }
    // Room when it starts, but the disk fills while it is written (someone else's files):
    // it stops once less than the log's room is left, and removes its file.
    st.set_free(1 << 20);
    st.free_next.lock().unwrap().push_back(u64::MAX - 1);
    let e = db.checkpoint().unwrap_err();
    let Error::Io { op, source, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(
        (*op, source.kind()),
        ("checkpoint", std::io::ErrorKind::StorageFull)
    );
    assert!(
        e.to_string()
            .contains("stopped: the file system's free space fell to 1048576"),
        "{e}"
    );
    assert_eq!(db.poisoned(), None);
    assert_eq!(temporaries(dir.path()), Vec::<String>::new());
    write_group(&ns, &mut state, 500);
    assert_eq!(read_state(&db), state);
    assert_eq!(db.stats().checkpoints, 0);
    // Room at the start and after the header, gone after the last write: that write
    // completes the checkpoint (finishing frees the older one and the log before it), so it
    // is kept. (This checkpoint is under a megabyte: no chunk is written in between.)
    st.free_next
        .lock()
        .unwrap()
        .extend([u64::MAX - 1, u64::MAX - 1]);
    let info = db.checkpoint().unwrap();
    assert!(info.bytes < 1 << 20, "{info:?}");
    st.set_free(192 << 20);
    db.checkpoint().unwrap();
    st.set_free(u64::MAX);
    db.checkpoint().unwrap();
    assert_eq!(db.stats().checkpoints, 3);
    drop(ns);
    drop(db);
    let (db, info) = Db::open_with_info(config(dir.path(), &st, Durability::Commit)).unwrap();
    assert!(info.checkpoint_records > 0, "{info:?}");
    assert_eq!(read_state(&db), state);
}

#[test]
fn background_checkpoints_that_fail_are_retried_once_the_fault_clears() {
    for fault in Fault::ALL {
        let dir = tempfile::tempdir().unwrap();
        let st = Faulty::new();
        st.arm(fault, Target::Ckpt, 0, true);
        let mut c = config(dir.path(), &st, Durability::Commit);
        c.checkpoint_wal_bytes = 2048;
        let db = Db::open(c.clone()).unwrap();
        let ns = db.keyspace("ns", ns_opts()).unwrap();
        let mut state = State::new();
        apply(&mut state, &Item::Keyspace(DEFAULT_KEYSPACE));
        apply(&mut state, &Item::Keyspace("ns"));
        let mut i = 0u32;
        // Commit until `done`, giving the background thread (a 100 ms tick) time to run.
        let mut until = |what: &str, done: &dyn Fn() -> bool, state: &mut State| {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !done() {
                assert!(Instant::now() < deadline, "{fault:?}: {what}");
                write_group(&ns, state, i);
                i += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        until(
            "two background checkpoints fail",
            &|| st.injected() >= 2,
            &mut state,
        );
        assert_eq!(db.poisoned(), None, "{fault:?}");
        assert_eq!(db.stats().checkpoints, 0, "{fault:?}");
        st.clear();
        until(
            "a background checkpoint succeeds",
            &|| db.stats().checkpoints >= 1,
            &mut state,
        );
        for j in 0..5 {
            write_group(&ns, &mut state, 1000 + j);
        }
        drop(ns);
        drop(db);
        assert_eq!(temporaries(dir.path()), Vec::<String>::new(), "{fault:?}");
        let (db, info) = Db::open_with_info(c).unwrap();
        assert!(info.checkpoint_records > 0, "{fault:?}: {info:?}");
        assert_eq!(read_state(&db), state, "{fault:?}");
    }
}

#[test]
fn enospc_on_the_first_log_write_is_a_clear_error() {
    for first in ["keyspace", "put"] {
        let dir = tempfile::tempdir().unwrap();
        let st = Faulty::new();
        st.arm(Fault::Enospc, Target::Wal, 0, true);
        // Opening an empty directory writes nothing to the log.
        let db =
            Db::open(config(dir.path(), &st, Durability::Commit)).expect("open on a full disk");
        let e = match first {
            "keyspace" => db.keyspace("ns", ns_opts()).map(drop).unwrap_err(),
            _ => db.put(b"a", b"1").unwrap_err(),
        };
        let Error::Io { op, path, .. } = &e else {
            panic!("{first}: {e}")
        };
        assert_eq!(*op, "write");
        assert_eq!(path, &dir.path().join(format!("wal-{:020}.log", 0)), "{e}");
        assert!(e.to_string().contains("No space left on device"), "{e}");
        assert_poison_text(&db.poisoned().expect("poisoned"), Fault::Enospc);
        assert!(matches!(db.put(b"b", b"2"), Err(Error::Poisoned(_))));
        assert!(matches!(
            db.keyspace("other", KeyspaceOptions::hash()),
            Err(Error::Poisoned(_))
        ));
        assert_eq!(db.get(b"b").unwrap(), None, "reads go on");
        drop(db);
        st.clear();
        let db = Db::open(config(dir.path(), &st, Durability::Commit)).unwrap();
        // Nothing reached the log.
        assert!(db.get_keyspace("ns").is_none());
        assert_eq!(db.get(b"a").unwrap(), None);
        db.keyspace("ns", ns_opts())
            .unwrap()
            .put(b"k", b"v")
            .unwrap();
        db.put(b"a", b"1").unwrap();
        drop(db);
        let db = Db::open(config(dir.path(), &st, Durability::Commit)).unwrap();
        let ns = db.get_keyspace("ns").unwrap();
        assert_eq!(ns.get(b"k").unwrap().unwrap().value, b"v");
        assert_eq!(db.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
    }
}

fn wal_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("wal-"))
        .count()
}

#[test]
fn faults_around_a_switch_to_a_new_log_file() {
    // Puts of about 1 KiB into log files of 64 KiB: find the put whose flush starts the second
    // file, then fail the log write (or sync) of that put and of its neighbours.
    let put = |db: &Db, i: u32| db.put(&key(i), &value_for(i, 1, 900));
    let switch = {
        let dir = tempfile::tempdir().unwrap();
        let st = Faulty::new();
        let mut c = config(dir.path(), &st, Durability::Commit);
        c.wal_file_bytes = 1 << 16;
        let db = Db::open(c).unwrap();
        (0..200u32)
            .find(|&i| {
                put(&db, i).unwrap();
                wal_files(dir.path()) == 2
            })
            .expect("a second log file")
    };
    for fault in Fault::ALL {
        for nth in [switch - 1, switch, switch + 1] {
            let ctx = format!("{fault:?} #{nth} (the switch is at #{switch})");
            let dir = tempfile::tempdir().unwrap();
            let st = Faulty::new();
            let mut c = config(dir.path(), &st, Durability::Commit);
            c.wal_file_bytes = 1 << 16;
            let db = Db::open(c.clone()).unwrap();
            st.arm(fault, Target::Wal, u64::from(nth), false);
            let mut durable = State::new();
            apply(&mut durable, &Item::Keyspace(DEFAULT_KEYSPACE));
            let mut pending = Vec::new();
            for i in 0..nth + 5 {
                let item =
                    Item::Write(DEFAULT_KEYSPACE, vec![(key(i), Some(value_for(i, 1, 900)))]);
                match put(&db, i) {
                    Ok(()) => apply(&mut durable, &item),
                    Err(e @ Error::Io { .. }) => {
                        assert_eq!(i, nth, "{ctx}: {e}");
                        assert!(e.to_string().contains(fault.text()), "{ctx}: {e}");
                        pending.push(item);
                    }
                    Err(Error::Poisoned(why)) => {
                        assert!(i > nth, "{ctx}: {why}");
                        assert_poison_text(&why, fault);
                    }
                    Err(e) => panic!("{ctx}: {e}"),
                }
            }
            assert_eq!(pending.len(), 1, "{ctx}");
            drop(db);
            st.clear();
            let db = Db::open(c.clone()).unwrap();
            let mut state = read_state(&db);
            check_prefix(&state, &durable, &pending, &format!("{ctx}: after reopen"));
            // Go on past the switch, checkpoint (removing the first file), and reopen.
            for i in 1000..1080 {
                put(&db, i).unwrap();
                apply(
                    &mut state,
                    &Item::Write(DEFAULT_KEYSPACE, vec![(key(i), Some(value_for(i, 1, 900)))]),
                );
            }
            db.checkpoint().unwrap();
            db.put(b"last", b"1").unwrap();
            apply(
                &mut state,
                &Item::Write(
                    DEFAULT_KEYSPACE,
                    vec![(b"last".to_vec(), Some(b"1".to_vec()))],
                ),
            );
            drop(db);
            let db = Db::open(c).unwrap();
            assert_eq!(
                read_state(&db),
                state,
                "{ctx}: after a checkpoint and reopen"
            );
        }
    }
}

#[test]
fn faults_while_reopening_a_database_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let st = Faulty::new();
    {
        let db = Db::open(config(dir.path(), &st, Durability::Commit)).unwrap();
        for i in 0..20 {
            db.put(&key(i), &value_for(i, 1, 100)).unwrap();
        }
        // The next write stops half way; the failed flush is cut off the log at once.
        st.arm(Fault::Short, Target::Wal, 0, false);
        assert!(matches!(
            db.put(b"torn", b"x"),
            Err(Error::Io { op: "write", .. })
        ));
    }
    // Half a frame, as a process killed during a write leaves: a torn tail for the next open
    // to cut.
    {
        use std::io::Write;
        let wal = dir.path().join(format!("wal-{:020}.log", 0));
        let mut f = std::fs::OpenOptions::new().append(true).open(wal).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7]).unwrap();
    }
    // Cutting the torn tail needs an fsync; when it fails, opening fails and says so.
    st.arm(Fault::Eio, Target::Wal, 0, true);
    let e = Db::open(config(dir.path(), &st, Durability::Commit)).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Io {
                op: "truncate torn tail",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("Input/output error"), "{e}");
    // A full disk does not stop an open (nothing is written) nor reads; the first write fails.
    st.arm(Fault::Enospc, Target::Wal, 0, true);
    // (The failed open had cut the tail already; only its sync failed.)
    let db = Db::open(config(dir.path(), &st, Durability::Commit)).unwrap();
    for i in 0..20 {
        assert_eq!(check_value(&db.get(&key(i)).unwrap().unwrap()), (i, 1));
    }
    assert_eq!(
        db.get(b"torn").unwrap(),
        None,
        "a torn frame is never replayed"
    );
    assert!(matches!(
        db.put(b"x", b"1"),
        Err(Error::Io { op: "write", .. })
    ));
    assert!(matches!(db.put(b"y", b"1"), Err(Error::Poisoned(_))));
    drop(db);
    st.clear();
    let db = Db::open(config(dir.path(), &st, Durability::Commit)).unwrap();
    for i in 0..20 {
        assert_eq!(check_value(&db.get(&key(i)).unwrap().unwrap()), (i, 1));
    }
    db.put(b"z", b"1").unwrap();
}

/// Opening syncs the log file recovery replayed (a process killed between a flush's write
/// and its fsync leaves those frames in the page cache only): an `EIO` on that sync fails the
/// open with the file named, instead of serving changes that may not be durable; once the
/// fault clears, the database opens with every write.
#[test]
fn open_makes_the_replayed_log_durable_first() {
    let dir = tempfile::tempdir().unwrap();
    let st = Faulty::new();
    {
        let db = Db::open(config(dir.path(), &st, Durability::Commit)).unwrap();
        let ns = db.keyspace("ns", ns_opts()).unwrap();
        for i in 0..20u32 {
            ns.put(format!("k{i:04}").as_bytes(), b"v").unwrap();
        }
    }
    st.arm(Fault::Eio, Target::Wal, 0, false);
    let e = Db::open(config(dir.path(), &st, Durability::Commit)).unwrap_err();
    assert_eq!(st.injected(), 1, "the open synced the log");
    assert!(matches!(e, Error::Io { op: "fsync", .. }), "{e}");
    assert!(e.to_string().contains("wal-"), "{e}");
    st.clear();
    let db = Db::open(config(dir.path(), &st, Durability::Commit)).unwrap();
    let ns = db.keyspace("ns", ns_opts()).unwrap();
    for i in 0..20u32 {
        assert!(
            ns.get(format!("k{i:04}").as_bytes()).unwrap().is_some(),
            "k{i:04}"
        );
    }
}

/// A watcher reads every change that became durable before the log failed, then gets
/// `Poisoned` at once instead of empty pages until its timeout (no later change can ever
/// become visible); one already waiting when the log fails is woken with it.
#[test]
fn a_watcher_learns_that_the_log_failed() {
    let dir = tempfile::tempdir().unwrap();
    let st = Faulty::new();
    let db = Db::open(config(dir.path(), &st, Durability::Commit)).unwrap();
    let ns = db.keyspace("ns", ns_opts()).unwrap();
    let start = ns.revision();
    ns.put(b"key/a", b"1").unwrap();
    let mut w = ns.watch(b"", None, start).unwrap();
    let mut waiting = ns.watch(b"", None, ns.revision()).unwrap();
    let waiting = std::thread::spawn(move || {
        let t = Instant::now();
        (waiting.next(Duration::from_secs(60), 10), t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(200));
    st.arm(Fault::Enospc, Target::Wal, 0, true);
    assert!(ns.put(b"key/b", b"2").is_err());
    assert!(db.poisoned().is_some());
    let got = w.next(Duration::from_secs(60), 10).unwrap();
    let keys: Vec<&[u8]> = got.iter().map(|e| e.key.as_slice()).collect();
    assert_eq!(keys, [&b"key/a"[..]], "what was durable comes first");
    let t = Instant::now();
    let e = w.next(Duration::from_secs(60), 10).unwrap_err();
    assert!(matches!(e, Error::Poisoned(_)), "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "waited {:?}",
        t.elapsed()
    );
    let (r, took) = waiting.join().unwrap();
    assert!(matches!(r, Err(Error::Poisoned(_))), "{r:?}");
    assert!(
        took < Duration::from_secs(30),
        "the waiting watcher took {took:?}"
    );
}
