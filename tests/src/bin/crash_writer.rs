//! The process the crash tests kill. It opens (and so recovers) the database in a data
//! directory with the crash tests' configuration (a 4 MiB DRAM budget, so much of the data is
//! in the far tier, and background checkpoints every 1 MiB of log), then commits the workload's
//! batches (see `tera_tests::crash`) one after another from a starting batch number until it
//! is killed, taking a checkpoint of its own every 500 batches. It says on stdout what it did,
//! one flushed line at a time, so that the test knows what was acknowledged before the kill:
//!
//! - `ready <revision>` once the database is open, with the keyspace's recovered revision;
//! - `start <i>` before batch `i` is submitted (it may or may not be committed at a kill);
//! - `ack <i> <revision> <micros since the UNIX epoch>` once `write` returned `Ok`;
//! - `checkpoint <i>` and `checkpointed <i>` around a checkpoint it takes after batch `i`.
//!
//! `tests/tests/crash.rs` runs it and checks recovery after each kill.
//!
//! Usage: `crash_writer DIR MODE START SEED`, MODE being `commit` or `periodic:<ms>`.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};
use tera_engine::Db;
use tera_tests::crash;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, mode, start, seed] = &args[..] else {
        eprintln!("usage: crash_writer DIR MODE START SEED");
        std::process::exit(2);
    };
    let mode = crash::parse_mode(mode).expect("MODE: commit or periodic:<ms>");
    let start: u64 = start.parse().expect("START: a batch number");
    let seed: u64 = seed.parse().expect("SEED: a number");
    let db = Db::open(crash::config(std::path::Path::new(dir), mode)).expect("open");
    let ks = db
        .keyspace(crash::KEYSPACE, crash::keyspace_options())
        .expect("keyspace");
    let out = std::io::stdout();
    let mut out = out.lock();
    writeln!(out, "ready {}", ks.revision()).expect("stdout");
    out.flush().expect("stdout");
    // Where in the cycle of 500 the explicit checkpoints fall differs from run to run.
    let phase = seed % 500;
    for i in start.. {
        let batch = crash::batch(i);
        writeln!(out, "start {i}").expect("stdout");
        out.flush().expect("stdout");
        let rev = ks
            .write(&batch)
            .unwrap_or_else(|e| panic!("batch {i}: {e}"))
            .expect("a batch of puts always writes");
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_micros();
        writeln!(out, "ack {i} {rev} {micros}").expect("stdout");
        out.flush().expect("stdout");
        if (i + phase) % 500 == 0 {
            writeln!(out, "checkpoint {i}").expect("stdout");
            out.flush().expect("stdout");
            db.checkpoint().expect("checkpoint");
            writeln!(out, "checkpointed {i}").expect("stdout");
            out.flush().expect("stdout");
        }
    }
}
