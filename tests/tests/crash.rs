//! Crash recovery of a real process: a child process (`crash_writer`) commits atomic batches
//! to a database with tiering active and checkpoints running, and is killed with SIGKILL at a
//! random moment, again and again on the same data directory. After every kill the test
//! reopens the directory itself and checks what recovery gives back against what the child
//! acknowledged before it died:
//!
//! - every acknowledged batch (durability `commit`) is there, at the revision it was
//!   acknowledged with, and what was there after earlier kills is still there;
//! - every batch is all or nothing, and the recovered contents are exactly those of the
//!   committed batches (values byte for byte, create and mod revisions, versions, counts);
//! - the committed batches are a prefix of the ones the child started (the log is
//!   sequential), their revisions rise with their batch numbers, the keyspace's revision is
//!   at least every revision seen, and a new write gets a higher one.
//!
//! In-process tests (engine/tests/durability.rs) cannot show this: there a "crash" is a
//! `drop`, which flushes, while here the background flusher and checkpointer, group commit
//! and the log file switch are cut off wherever the kill lands. With durability
//! `periodic:<ms>`, the second test checks that a kill loses only what was acknowledged within
//! the last interval (plus a margin for one flush), still all or nothing.
//!
//! `CRASH_ROUNDS` and `CRASH_PERIODIC_ROUNDS` set the number of kills of the two tests (20
//! and 5 by default) and `CRASH_SEED` the random seed (printed: it fixes the kill delays,
//! though not where in the writer's work they land). On failure the data directory is kept
//! and its path printed.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tera_engine::{Db, Durability, Range};
use tera_tests::crash;

/// xorshift64*: enough randomness for kill times, and no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `lo..hi` (near enough).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64
}

fn seed() -> u64 {
    match std::env::var("CRASH_SEED") {
        Ok(s) => s.parse().expect("CRASH_SEED: a number"),
        Err(_) => now_micros(),
    }
}

/// The number of rounds: the environment variable `var`, or `default`.
fn rounds(var: &str, default: usize) -> usize {
    std::env::var(var).map_or(default, |s| {
        s.parse()
            .unwrap_or_else(|_| panic!("{var}: a number, not {s:?}"))
    })
}

/// A temporary data directory, kept (and its path printed) if the test fails.
struct Workdir(Option<tempfile::TempDir>);

impl Workdir {
    fn new() -> Workdir {
        Workdir(Some(tempfile::tempdir().expect("temp dir")))
    }
    fn path(&self) -> &Path {
        self.0.as_ref().expect("present").path()
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(d) = self.0.take() {
                eprintln!("data directory kept for inspection: {}", d.keep().display());
            }
        }
    }
}

/// When to kill the writer.
#[derive(Debug, Clone, Copy)]
enum Kill {
    /// This long after it said the database is open (in the middle of its writes).
    AfterReady(Duration),
    /// This long after it was started (often while it is still recovering).
    AfterSpawn(Duration),
    /// This long after it said it starts a checkpoint of its own (or, if none comes within
    /// a few seconds, then).
    InCheckpoint(Duration),
}

/// What one writer process said before it was killed.
#[derive(Debug, Default)]
struct Run {
    /// The keyspace's revision when it had opened the database.
    ready: Option<u64>,
    /// The last batch it started.
    last_started: Option<u64>,
    /// Acknowledged batches: batch number, revision, time (micros since the epoch).
    acks: Vec<(u64, u64, u64)>,
    /// Checkpoints it started and finished.
    checkpoints: (u64, u64),
    /// When the kill was sent (micros since the epoch; taken just before it, so the last ack
    /// may carry a slightly later time).
    killed_at: u64,
}

impl Run {
    fn take(&mut self, line: &str) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let n = |s: &str| -> u64 { s.parse().unwrap_or_else(|_| panic!("writer said {line:?}")) };
        match f[..] {
            ["ready", r] => self.ready = Some(n(r)),
            ["checkpoint", _] => self.checkpoints.0 += 1,
            ["checkpointed", _] => self.checkpoints.1 += 1,
            ["start", i] => self.last_started = Some(n(i)),
            ["ack", i, r, t] => {
                assert_eq!(self.last_started, Some(n(i)), "ack without start: {line}");
                self.acks.push((n(i), n(r), n(t)));
            }
            _ => panic!("writer said {line:?}"),
        }
    }
}

/// Run the writer on `dir` from batch `start` and SIGKILL it as `kill` says.
fn run_writer(dir: &Path, mode: &str, start: u64, seed: u64, kill: Kill) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_crash_writer"))
        .arg(dir)
        .arg(mode)
        .arg(start.to_string())
        .arg(seed.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start crash_writer");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut run = Run::default();
    // Read what the writer says until `until` holds or `secs` pass; false if they passed.
    let mut read_until = |run: &mut Run, secs: u64, until: &dyn Fn(&Run) -> bool| -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !until(run) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => run.take(&line),
                Err(mpsc::RecvTimeoutError::Timeout) => return false,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().expect("wait");
                    panic!("the writer exited on its own ({status}): see its stderr above");
                }
            }
        }
        true
    };
    let ready = |r: &Run| r.ready.is_some();
    let wait = match kill {
        Kill::AfterSpawn(d) => d,
        Kill::AfterReady(d) | Kill::InCheckpoint(d) => {
            // Recovery of a large directory in a debug build takes a while: be generous.
            assert!(
                read_until(&mut run, 120, &ready),
                "the writer never said ready"
            );
            if let Kill::InCheckpoint(_) = kill {
                read_until(&mut run, 5, &|r: &Run| r.checkpoints.0 > 0);
            }
            d
        }
    };
    std::thread::sleep(wait);
    run.killed_at = now_micros();
    child.kill().expect("SIGKILL the writer");
    let status = child.wait().expect("wait for the writer");
    reader.join().expect("stdout reader");
    for line in rx.try_iter() {
        run.take(&line);
    }
    assert_eq!(
        status.signal(),
        Some(9),
        "the writer died before it was killed ({status}): see its stderr above"
    );
    run
}

/// What the test knows across rounds.
#[derive(Debug, Default)]
struct Model {
    /// Batches committed as of the last check (deleted since or not): batch number to
    /// revision.
    committed: BTreeMap<u64, u64>,
    /// Every revision seen so far: acknowledged, recovered, or given to a probe write.
    max_rev_seen: u64,
    /// Probe keys written by the checks (one per round), all durable.
    probes: u64,
    /// The first batch number of the next round.
    next_batch: u64,
}

fn probe_key(n: u64) -> Vec<u8> {
    format!("prob/{n:06}").into_bytes()
}

/// A short description of a value for failure messages.
fn describe(v: &[u8]) -> String {
    if v.len() >= 10 {
        let i = u64::from_le_bytes(v[..8].try_into().expect("8 bytes"));
        let slot = v[8];
        if slot <= crash::REWRITE && crash::value(i, slot) == v {
            return format!("value({i}, {slot})");
        }
    }
    if v.len() <= 24 {
        return format!("{:?}", String::from_utf8_lossy(v));
    }
    format!("{} bytes starting {:02x?}", v.len(), &v[..16])
}

fn show(e: Option<&crash::Expect>) -> String {
    match e {
        None => "absent".into(),
        Some(e) => format!(
            "{} create={} mod={} version={}",
            describe(&e.value),
            e.create,
            e.modified,
            e.version
        ),
    }
}

/// What one check found.
#[derive(Debug)]
struct Checked {
    /// Batches of this round that are committed.
    new: usize,
    /// Acknowledged batches of this round that are missing (periodic mode only).
    lost: Vec<(u64, u64, u64)>,
    /// The kill interrupted a checkpoint.
    mid_checkpoint: bool,
    /// Whether recovery cut a torn tail off the log.
    torn: bool,
    /// Whether a lost acknowledged batch's revision was given to a new write.
    reused: bool,
    checkpoint_records: u64,
    far_records: u64,
}

/// Reopen `dir` and check it against `model` and what the round's writer said; then write a
/// probe and close. `commit` says whether every acknowledged batch must be there.
fn check(
    dir: &Path,
    model: &mut Model,
    round: usize,
    start: u64,
    run: &Run,
    commit: bool,
) -> Checked {
    let ctx = format!(
        "round {round} (batches from {start}, last started {:?}, {} acknowledged)",
        run.last_started,
        run.acks.len()
    );
    // A checkpoint the kill interrupted leaves its temporary file behind.
    let mid_checkpoint = std::fs::read_dir(dir)
        .expect("list the data directory")
        .flatten()
        .any(|e| e.file_name().to_string_lossy().ends_with(".tmp"));
    let (db, info) = Db::open_with_info(crash::config(dir, Durability::Commit))
        .unwrap_or_else(|e| panic!("{ctx}: recovery failed: {e}"));
    let far_records = db.stats().far.records;
    let ks = match db.get_keyspace(crash::KEYSPACE) {
        Some(ks) => ks,
        None => {
            // Killed before it created the keyspace: nothing can have been written.
            assert!(
                model.committed.is_empty() && run.acks.is_empty() && model.probes == 0,
                "{ctx}: the keyspace is gone"
            );
            db.keyspace(crash::KEYSPACE, crash::keyspace_options())
                .expect("create keyspace")
        }
    };
    // Read everything back, prefix by prefix.
    let mut observed: BTreeMap<Vec<u8>, crash::Expect> = BTreeMap::new();
    for p in 0..crash::PREFIXES {
        let range = Range::prefix(format!("{}/", crash::prefix_str(p)).as_bytes());
        let got = ks
            .range(&range)
            .unwrap_or_else(|e| panic!("{ctx}: range of prefix {p}: {e}"));
        for e in got.entries {
            let x = crash::Expect {
                value: e.value,
                create: e.create_revision,
                modified: e.mod_revision,
                version: e.version,
            };
            observed.insert(e.key, x);
        }
    }
    // The writer recovered what the last check left: the revision of its probe.
    if let Some(ready) = run.ready {
        assert_eq!(
            ready, model.max_rev_seen,
            "{ctx}: the writer recovered revision {ready}, but the last write before it (the \
             previous check's probe) had revision {}",
            model.max_rev_seen
        );
    }
    // This round's committed batches: those up to the newest whose key /0 is there (no later
    // batch can have deleted it). One writer commits them one at a time, so their revisions
    // follow each other from the one after the revision the writer recovered.
    let newest = observed
        .iter()
        .filter_map(|(k, e)| Some((crash::parse_first_key(k)?, e.modified)))
        .filter(|(i, _)| *i >= start)
        .max();
    let mut committed = model.committed.clone();
    if let Some((c, rev_c)) = newest {
        assert!(
            run.last_started.is_some_and(|s| c <= s),
            "{ctx}: batch {c} is there but was never started"
        );
        let ready = run
            .ready
            .unwrap_or_else(|| panic!("{ctx}: batch {c} is there but the writer never opened"));
        assert_eq!(
            rev_c - (c - start),
            ready + 1,
            "{ctx}: batch {c} has revision {rev_c}, but the round's batches {start}..={c} \
             should have taken the revisions after {ready}, the one the writer recovered"
        );
        committed.extend((start..=c).map(|i| (i, rev_c - (c - i))));
    }
    let new = newest.map_or(0, |(c, _)| c + 1 - start);
    // The recovered contents are exactly those of the committed batches: whole batches, none
    // lost from earlier rounds, values, revisions and versions as written.
    let want = crash::expected(&committed);
    let mut diffs = Vec::new();
    let keys: std::collections::BTreeSet<&Vec<u8>> = want.keys().chain(observed.keys()).collect();
    for k in keys {
        let (w, g) = (want.get(k), observed.get(k));
        if w != g && diffs.len() < 20 {
            diffs.push(format!(
                "  {}: recovered {}, expected {}",
                String::from_utf8_lossy(k),
                show(g),
                show(w)
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "{ctx}: the recovered keyspace is not the state of batches {}, with this round's \
         {start}..{} (a lost or half-applied batch, a torn or stale value, or wrong \
         revisions):\n{}",
        describe_ranges(&committed),
        start + new,
        diffs.join("\n")
    );
    // Acknowledged batches.
    let mut lost = Vec::new();
    for &(i, r, t) in &run.acks {
        match committed.get(&i) {
            Some(&got) => assert_eq!(
                got, r,
                "{ctx}: batch {i} was acknowledged at revision {r} but recovered at {got}"
            ),
            None if commit => panic!(
                "{ctx}: batch {i}, acknowledged at revision {r} with durability commit, is \
                 lost (the kill came {} µs after the ack)",
                run.killed_at.saturating_sub(t)
            ),
            None => lost.push((i, r, t)),
        }
    }
    // The probes of earlier rounds, and the counts.
    for n in 0..model.probes {
        let e = ks.get(&probe_key(n)).expect("get probe");
        assert_eq!(
            e.map(|e| e.value),
            Some(n.to_string().into_bytes()),
            "{ctx}: probe {n} (written with durability commit by an earlier check) is lost"
        );
    }
    let keys = observed.len() as u64 + model.probes;
    assert_eq!(ks.len(), keys, "{ctx}: the keyspace's key count is off");
    assert_eq!(
        ks.count(&Range::prefix(b"")).expect("count"),
        keys,
        "{ctx}: the ordered index's count is off"
    );
    // Revisions: the keyspace's is at least every one that is durable, and a new write goes
    // above everything seen (in periodic mode a lost acknowledged batch's revision may be
    // given out again: that is the loss the mode allows, so those are left out).
    let recovered = ks.revision();
    let top = committed
        .values()
        .copied()
        .chain(run.ready)
        .max()
        .unwrap_or(0)
        .max(model.max_rev_seen);
    assert!(
        recovered >= top,
        "{ctx}: the keyspace's revision after recovery is {recovered}, below revision {top} \
         seen before"
    );
    let r = ks
        .put(
            &probe_key(model.probes),
            model.probes.to_string().as_bytes(),
        )
        .expect("probe write");
    assert!(
        r > top && r > recovered,
        "{ctx}: a new write got revision {r}, not above {top} seen before"
    );
    let reused = lost.iter().any(|a| a.1 >= r);
    drop(ks);
    drop(db);
    model.max_rev_seen = r;
    model.probes += 1;
    model.next_batch = run.last_started.map_or(start, |s| s + 1);
    model.committed = committed;
    Checked {
        new: new as usize,
        lost,
        mid_checkpoint,
        torn: info.torn_bytes > 0,
        reused,
        checkpoint_records: info.checkpoint_records,
        far_records,
    }
}

/// The batch numbers of a set as ranges: "0..=99, 120..=130".
fn describe_ranges(set: &BTreeMap<u64, u64>) -> String {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &i in set.keys() {
        match out.last_mut() {
            Some(last) if last.1 + 1 == i => last.1 = i,
            _ => out.push((i, i)),
        }
    }
    let parts: Vec<String> = out.iter().map(|(a, b)| format!("{a}..={b}")).collect();
    if parts.is_empty() {
        "(none)".into()
    } else {
        parts.join(", ")
    }
}

#[test]
fn sigkill_during_commits_loses_no_acknowledged_batch() {
    let rounds = rounds("CRASH_ROUNDS", 20);
    let seed = seed();
    eprintln!("crash test (commit): {rounds} rounds, CRASH_SEED={seed}");
    let mut rng = Rng::new(seed);
    let dir = Workdir::new();
    let mut model = Model::default();
    let began = Instant::now();
    let (mut acks, mut acked_rounds, mut late_rounds) = (0, 0, 0);
    let (mut from_checkpoint, mut mid_checkpoint, mut torn) = (0, 0, 0);
    let mut far = 0;
    for round in 0..rounds {
        // One round in five is killed soon after it starts, often while it is still
        // recovering; one in five while it writes a checkpoint of its own; the others at a
        // random moment of their writes (during background checkpoints, log file switches
        // and group commits, wherever the kill lands).
        let ms = |rng: &mut Rng, lo, hi| Duration::from_millis(rng.range(lo, hi));
        let kill = match round % 5 {
            4 => Kill::AfterSpawn(ms(&mut rng, 5, 80)),
            2 => Kill::InCheckpoint(ms(&mut rng, 0, 30)),
            _ => Kill::AfterReady(ms(&mut rng, 50, 400)),
        };
        late_rounds += usize::from(!matches!(kill, Kill::AfterSpawn(_)));
        let start = model.next_batch;
        let run = run_writer(dir.path(), "commit", start, rng.next(), kill);
        let c = check(dir.path(), &mut model, round, start, &run, true);
        eprintln!(
            "round {round}: {kill:?}, batches {start}..{:?}: {} acknowledged, {} committed; \
             recovered {} checkpoint records, {} far records; checkpoints begun/done {:?}{}{}",
            run.last_started,
            run.acks.len(),
            c.new,
            c.checkpoint_records,
            c.far_records,
            run.checkpoints,
            if c.mid_checkpoint {
                "; killed mid-checkpoint"
            } else {
                ""
            },
            if c.torn { "; cut a torn log tail" } else { "" },
        );
        acks += run.acks.len();
        if !run.acks.is_empty() && !matches!(kill, Kill::AfterSpawn(_)) {
            acked_rounds += 1;
        }
        from_checkpoint += usize::from(c.checkpoint_records > 0);
        mid_checkpoint += usize::from(c.mid_checkpoint);
        torn += usize::from(c.torn);
        far = far.max(c.far_records);
    }
    eprintln!(
        "crash test (commit): {rounds} kills, {acks} acknowledged batches, {} committed in \
         all, {from_checkpoint} recoveries from a checkpoint, {mid_checkpoint} kills in the \
         middle of one, {torn} torn log tails, up to {far} records in the far tier, {:.1} s",
        model.committed.len(),
        began.elapsed().as_secs_f64()
    );
    assert!(acks > 0, "no batch was ever acknowledged");
    assert!(
        acked_rounds * 2 > late_rounds,
        "only {acked_rounds} of {late_rounds} rounds killed mid-write acknowledged anything"
    );
}

#[test]
fn sigkill_with_periodic_durability_loses_at_most_the_interval() {
    const INTERVAL_MS: u64 = 50;
    const MARGIN_MS: u64 = 200;
    let rounds = rounds("CRASH_PERIODIC_ROUNDS", 5);
    let seed = seed();
    eprintln!("crash test (periodic): {rounds} rounds, CRASH_SEED={seed}");
    let mut rng = Rng::new(seed ^ 0x5eed);
    let dir = Workdir::new();
    let mut model = Model::default();
    let mode = format!("periodic:{INTERVAL_MS}");
    let (mut acks, mut reused) = (0, 0);
    // Of the kills that lost acknowledged batches: the age at the kill of the oldest lost
    // acknowledgement (what the mode bounds) and of the newest.
    let mut worst_oldest: Option<u64> = None;
    let mut worst_newest: Option<u64> = None;
    for round in 0..rounds {
        let kill = Kill::AfterReady(Duration::from_millis(rng.range(50, 400)));
        let start = model.next_batch;
        let run = run_writer(dir.path(), &mode, start, rng.next(), kill);
        let c = check(dir.path(), &mut model, round, start, &run, false);
        acks += run.acks.len();
        reused += usize::from(c.reused);
        let oldest = c
            .lost
            .iter()
            .map(|a| run.killed_at.saturating_sub(a.2))
            .max();
        let newest = c
            .lost
            .iter()
            .map(|a| run.killed_at.saturating_sub(a.2))
            .min();
        eprintln!(
            "round {round}: {kill:?}: {} acknowledged, {} committed, {} acknowledged and lost \
             (ages at the kill: oldest {oldest:?} µs, newest {newest:?} µs)",
            run.acks.len(),
            c.new,
            c.lost.len()
        );
        if let Some(o) = oldest {
            assert!(
                o <= (INTERVAL_MS + MARGIN_MS) * 1000,
                "round {round}: a batch acknowledged {o} µs before the kill is lost; \
                 periodic:{INTERVAL_MS} may lose only the last {INTERVAL_MS} ms plus a flush \
                 (margin {MARGIN_MS} ms)"
            );
        }
        worst_oldest = worst_oldest.max(oldest);
        worst_newest = worst_newest.max(newest);
    }
    eprintln!(
        "crash test (periodic): {acks} acknowledged; largest loss window (kill time minus the \
         ack time of the oldest lost batch): {:?} µs; of the newest lost batch: {:?} µs; \
         {reused} recoveries gave a lost acknowledged batch's revision to a new write",
        worst_oldest, worst_newest
    );
    assert!(acks > 0, "no batch was ever acknowledged");
}
