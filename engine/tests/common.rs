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

/// What the metadata store holds for one namespace, read from the keyspace's records (their
/// layout is in the module docs of `meta` and `meta::dir`).
#[derive(Debug)]
pub struct MetaRecords {
    /// Ids of the entry records.
    pub entries: std::collections::HashSet<u64>,
    /// Each folder with directory nodes: the names and ids in its leaves, in tree order.
    pub dirs: std::collections::HashMap<u64, Vec<(String, u64)>>,
}

/// Read namespace `ns`'s records, checking that each folder's directory nodes are all
/// reached exactly once from its node 0, and that none is empty.
pub fn meta_records(db: &Db, ns: u64) -> MetaRecords {
    use std::collections::{HashMap, HashSet};
    let ks = db
        .keyspace(
            "meta",
            tera_engine::KeyspaceOptions::hash().partition_prefix(8),
        )
        .unwrap();
    let (found, _) = ks
        .scan_parallel(Vec::new, |out: &mut Vec<(Vec<u8>, Vec<u8>)>, k, v, _| {
            if k.starts_with(&ns.to_be_bytes()) {
                out.push((k.to_vec(), v.to_vec()));
            }
        })
        .unwrap();
    let u64_at = |b: &[u8], at: usize| u64::from_be_bytes(b[at..at + 8].try_into().unwrap());
    let mut entries = HashSet::new();
    let mut nodes: HashMap<(u64, u32), Vec<u8>> = HashMap::new();
    for (k, v) in found.into_iter().flatten() {
        match k[8] {
            0 => {}
            1 => {
                entries.insert(u64_at(&k, 9));
            }
            2 => {
                let no = u32::from_be_bytes(k[17..21].try_into().unwrap());
                nodes.insert((u64_at(&k, 9), no), v);
            }
            t => panic!("a record of kind {t} in namespace {ns}"),
        }
    }

    /// Take node `no` of `folder` and the nodes below it out of `nodes`, the leaves' items
    /// into `out`. A node: kind `u8` (1 inner), next number `u32`, count `u16`, an offset
    /// `u16` per item, each item a name length `u8`, the name and a value `u64`.
    fn visit(
        nodes: &mut HashMap<(u64, u32), Vec<u8>>,
        folder: u64,
        no: u32,
        out: &mut Vec<(String, u64)>,
    ) {
        let b = nodes
            .remove(&(folder, no))
            .unwrap_or_else(|| panic!("node {no} of folder {folder}: missing or reached twice"));
        let n = usize::from(u16::from_le_bytes([b[5], b[6]]));
        assert!(n > 0, "node {no} of folder {folder} is empty");
        for i in 0..n {
            let off = usize::from(u16::from_le_bytes([b[7 + 2 * i], b[8 + 2 * i]]));
            let len = usize::from(b[off]);
            let name = String::from_utf8(b[off + 1..off + 1 + len].to_vec()).unwrap();
            let at = off + 1 + len;
            let v = u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
            if b[0] == 1 {
                visit(nodes, folder, v as u32, out);
            } else {
                out.push((name, v));
            }
        }
    }
    let roots: Vec<u64> = nodes
        .keys()
        .filter(|(_, no)| *no == 0)
        .map(|(f, _)| *f)
        .collect();
    let mut dirs = HashMap::new();
    for folder in roots {
        let mut leaves = Vec::new();
        visit(&mut nodes, folder, 0, &mut leaves);
        dirs.insert(folder, leaves);
    }
    let mut left: Vec<_> = nodes.keys().collect();
    left.sort();
    assert!(left.is_empty(), "directory nodes no root reaches: {left:?}");
    MetaRecords { entries, dirs }
}
