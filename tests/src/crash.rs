//! The workload of the crash tests, shared by the writer (`src/bin/crash_writer.rs`, the
//! process that is killed) and the checker (`tests/crash.rs`, which reopens what it left), so
//! that both agree on the configuration and on what every batch writes.
//!
//! Batch `i` writes, all in one atomic [`Batch`] under the partition prefix `{i % 97:04}`:
//! - three new keys `{prefix}/b{i:08}/0`, `/1` and `/2`, with values from [`value`] (their
//!   length varies from 10 to 3,000 bytes, and every byte says which batch and slot it is);
//! - the prefix's counter `{prefix}/counter`, set to `i` (so one key is overwritten by every
//!   batch of its prefix, and its version counts them);
//! - if `i` is a modifier ([`target_of`]): batch `t = i - 291` (same prefix, since
//!   291 = 3 × 97) has its key `/1` overwritten with `value(t, REWRITE)` and its key `/2`
//!   deleted (whether or not batch `t` itself was ever committed);
//! - from batch 1,552 (16 × 97) on: batch `i - 1552`'s three keys are deleted, so that the
//!   keyspace stays at about 5,000 keys and 7 MB of values however long the test runs: more
//!   than the 4 MiB DRAM budget (most values live in the far tier), but far from what the
//!   budget's indexes can hold.
//!
//! Until that delete, key `/0` is never touched again, so its presence says that batch `i`
//! committed, and its mod revision is the batch's revision. From the set of committed batches
//! and their revisions, [`expected`] computes the exact contents of the keyspace, revisions
//! and versions included: the checker compares a recovered database to it, which catches a
//! lost or half-applied batch, a torn value, a write replayed twice and wrong revisions.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use tera_engine::{Batch, Config, Durability, KeyspaceOptions};

/// Partition prefixes the batches cycle through.
pub const PREFIXES: u64 = 97;
/// A modifier rewrites the batch this many before it (a multiple of [`PREFIXES`]).
pub const MODIFY_DISTANCE: u64 = 3 * PREFIXES;
/// Batch `i` deletes the keys of batch `i - DELETE_DISTANCE` (a multiple of [`PREFIXES`]).
pub const DELETE_DISTANCE: u64 = 16 * PREFIXES;
/// Slot of the value a modifier writes over its target's key `/1`.
pub const REWRITE: u8 = 3;
/// The keyspace the workload writes.
pub const KEYSPACE: &str = "crash";

/// The keyspace's options: ordered, partitioned by the 4-byte prefix.
pub fn keyspace_options() -> KeyspaceOptions {
    KeyspaceOptions::ordered().partition_prefix(4)
}

/// The configuration both processes open the directory with: a 4 MiB DRAM budget, so that
/// most of the data lives in the far tier, and background checkpoints every 1 MiB of log.
pub fn config(dir: &Path, durability: Durability) -> Config {
    let mut c = Config::new(dir);
    c.dram_budget_bytes = 4 << 20;
    c.page_bytes = 64 << 10;
    c.segment_bytes = 256 << 10;
    c.partitions = 4;
    c.max_key_bytes = 64;
    c.max_value_bytes = 16 << 10;
    c.checkpoint_wal_bytes = 1 << 20;
    c.wal_file_bytes = 1 << 20;
    c.durability = durability;
    c.topology = Some(tera_engine::Topology::simulated(1, 2, 0, 1 << 30));
    c
}

/// Parse a durability mode as the writer takes it: `commit` or `periodic:<ms>`.
pub fn parse_mode(s: &str) -> Option<Durability> {
    match s {
        "commit" => Some(Durability::Commit),
        _ => {
            let ms = s.strip_prefix("periodic:")?.parse().ok()?;
            Some(Durability::Periodic(std::time::Duration::from_millis(ms)))
        }
    }
}

/// The partition prefix of batch `i`.
pub fn prefix_of(i: u64) -> u64 {
    i % PREFIXES
}

pub fn prefix_str(p: u64) -> String {
    format!("{p:04}")
}

/// Key `slot` (0 to 2) of batch `i`.
pub fn batch_key(i: u64, slot: u8) -> Vec<u8> {
    format!("{}/b{i:08}/{slot}", prefix_str(prefix_of(i))).into_bytes()
}

/// The counter key of prefix `p`.
pub fn counter_key(p: u64) -> Vec<u8> {
    format!("{}/counter", prefix_str(p)).into_bytes()
}

/// The batch that batch `m` modifies, if it is a modifier.
pub fn target_of(m: u64) -> Option<u64> {
    (m % 4 == 0 && m >= MODIFY_DISTANCE).then(|| m - MODIFY_DISTANCE)
}

/// The batch that modifies batch `t`, if there is one.
pub fn modifier_of(t: u64) -> u64 {
    t + MODIFY_DISTANCE
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The value of slot `slot` of batch `i`: 10 to 3,000 bytes, starting with `i` and `slot`,
/// every other byte a function of them and its position.
pub fn value(i: u64, slot: u8) -> Vec<u8> {
    let h = mix(i.wrapping_mul(8).wrapping_add(u64::from(slot)));
    let len = 10 + (h % 2991) as usize;
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&i.to_le_bytes());
    v.push(slot);
    v.push(0xa5);
    v.extend((10..len).map(|k| (h >> ((k % 7) * 8)) as u8 ^ k as u8));
    v
}

/// The batch `i` as the writer commits it.
pub fn batch(i: u64) -> Batch {
    let mut b = Batch::new();
    for slot in 0..3 {
        b.put(batch_key(i, slot), value(i, slot));
    }
    b.put(counter_key(prefix_of(i)), i.to_string().into_bytes());
    if let Some(t) = target_of(i) {
        b.put(batch_key(t, 1), value(t, REWRITE));
        b.delete(batch_key(t, 2));
    }
    if let Some(d) = i.checked_sub(DELETE_DISTANCE) {
        for slot in 0..3 {
            b.delete(batch_key(d, slot));
        }
    }
    b
}

/// A key's expected state: value, create revision, mod revision, version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    pub value: Vec<u8>,
    pub create: u64,
    pub modified: u64,
    pub version: u64,
}

/// The exact contents of the keyspace (the workload's keys) after the batches in `committed`
/// (batch number to its revision) and no others.
pub fn expected(committed: &BTreeMap<u64, u64>) -> BTreeMap<Vec<u8>, Expect> {
    let mut out = BTreeMap::new();
    let one = |value, rev| Expect {
        value,
        create: rev,
        modified: rev,
        version: 1,
    };
    let rev = |i: u64| committed.get(&i).copied();
    // Batches whose keys may exist: the committed ones and the targets of committed
    // modifiers, unless deleted since.
    let mut touched: BTreeSet<u64> = committed.keys().copied().collect();
    touched.extend(committed.keys().filter_map(|m| target_of(*m)));
    for t in touched {
        if rev(t + DELETE_DISTANCE).is_some() {
            continue;
        }
        let own = rev(t);
        if let Some(r) = own {
            out.insert(batch_key(t, 0), one(value(t, 0), r));
        }
        let m = modifier_of(t);
        match (own, rev(m).filter(|_| target_of(m) == Some(t))) {
            (own, Some(rm)) => {
                out.insert(
                    batch_key(t, 1),
                    Expect {
                        value: value(t, REWRITE),
                        create: own.unwrap_or(rm),
                        modified: rm,
                        version: if own.is_some() { 2 } else { 1 },
                    },
                );
            }
            (Some(r), None) => {
                out.insert(batch_key(t, 1), one(value(t, 1), r));
                out.insert(batch_key(t, 2), one(value(t, 2), r));
            }
            (None, None) => unreachable!("batch {t} is neither committed nor modified"),
        }
    }
    // Counters: the last batch of each prefix, created by its first, versions counting all.
    let mut counters: BTreeMap<u64, (u64, u64, u64, u64)> = BTreeMap::new();
    for (&i, &r) in committed {
        let c = counters.entry(prefix_of(i)).or_insert((i, r, r, 0));
        *c = (i, c.1, r, c.3 + 1);
    }
    for (p, (last, create, modified, version)) in counters {
        out.insert(
            counter_key(p),
            Expect {
                value: last.to_string().into_bytes(),
                create,
                modified,
                version,
            },
        );
    }
    out
}

/// The batch number of a key `{prefix}/b{i:08}/0`, if it is one.
pub fn parse_first_key(key: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(key).ok()?;
    let rest = s.get(5..)?.strip_prefix('b')?.strip_suffix("/0")?;
    let i: u64 = rest.parse().ok()?;
    (batch_key(i, 0) == key).then_some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_back_and_batches_stay_in_one_prefix() {
        for i in [0, 1, 96, 97, 291, 292, 12_345_678] {
            assert_eq!(parse_first_key(&batch_key(i, 0)), Some(i));
            assert_eq!(parse_first_key(&batch_key(i, 1)), None);
            let b = batch(i);
            assert!(b.ops.iter().all(|op| op.key()[..4] == batch_key(i, 0)[..4]));
            let v = value(i, 2);
            assert!((10..=3000).contains(&v.len()));
            assert_eq!(v[..8], i.to_le_bytes());
        }
        assert_eq!(target_of(292), Some(1));
        assert_eq!(target_of(293), None);
    }

    #[test]
    fn expected_state_follows_the_batches() {
        let committed: BTreeMap<u64, u64> =
            [(1, 10), (292, 20), (389 + 291, 30)].into_iter().collect();
        let e = expected(&committed);
        assert_eq!(e[&batch_key(1, 1)].version, 2);
        assert!(!e.contains_key(&batch_key(1, 2)));
        // 680 modifies 389, which never committed: only its key /1 exists.
        assert!(!e.contains_key(&batch_key(389, 0)));
        assert_eq!(e[&batch_key(389, 1)].create, 30);
        assert_eq!(e[&counter_key(1)].value, b"680");
        assert_eq!(e[&counter_key(1)].version, 3);
        assert_eq!(e[&counter_key(1)].create, 10);
        // Batch 1 + 1552 deletes batch 1 whole.
        let mut later = committed.clone();
        later.insert(1 + DELETE_DISTANCE, 40);
        let e = expected(&later);
        assert!((0..3).all(|s| !e.contains_key(&batch_key(1, s))));
        assert_eq!(e[&counter_key(1)].version, 4);
    }
}
