//! Helpers shared by the engine's integration tests: small configurations in which every
//! tiering mechanism runs within a few hundred operations.

#![allow(dead_code)] // each test file uses its own subset

use std::sync::Arc;
use tera_engine::{Config, Db, HeatPolicy};

/// A configuration with 4 KiB pages, 16 KiB segments and a DRAM budget of `budget` bytes
/// over two partitions, with background maintenance off (tests call `maintain`).
pub fn tiny(dir: &std::path::Path, budget: u64) -> Config {
    let mut c = Config::new(dir);
    c.dram_budget_bytes = budget;
    c.partitions = 2;
    c.page_bytes = 4096;
    c.segment_bytes = 16 * 1024;
    c.max_key_bytes = 256;
    c.max_value_bytes = 1024;
    c.background_maintenance = false;
    c.topology = Some(tera_engine::Topology::simulated(1, 2, 0, 1 << 30));
    c
}

pub fn with_policy(mut c: Config, p: Arc<dyn HeatPolicy>) -> Config {
    c.policy = Some(p);
    c
}

pub fn open(c: Config) -> Db {
    Db::open(c).expect("open")
}

/// A value that says which key and version it is, and whose every byte can be checked, so
/// a torn or misplaced value cannot pass for a good one.
pub fn value_for(key: u32, version: u32, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len.max(8));
    v.extend_from_slice(&key.to_le_bytes());
    v.extend_from_slice(&version.to_le_bytes());
    let seed = key.wrapping_mul(2_654_435_761) ^ version.wrapping_mul(40_503);
    v.extend((8..len.max(8)).map(|i| (seed.wrapping_add(i as u32 * 7) >> 3) as u8));
    v
}

/// Check a value made by [`value_for`]; returns (key, version).
pub fn check_value(v: &[u8]) -> (u32, u32) {
    assert!(v.len() >= 8, "value too short: {} bytes", v.len());
    let key = u32::from_le_bytes(v[..4].try_into().unwrap());
    let version = u32::from_le_bytes(v[4..8].try_into().unwrap());
    assert_eq!(v, value_for(key, version, v.len()), "torn or foreign value");
    (key, version)
}

pub fn key(k: u32) -> Vec<u8> {
    format!("key-{k:06}").into_bytes()
}
