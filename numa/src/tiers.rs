//! Linux memory tiers: which tier each NUMA node's memory is in, read from
//! `/sys/devices/virtual/memory_tiering/memory_tier<N>/nodelist`.
//!
//! The kernel (5.19 and later) groups nodes by abstract distance into tiers; `N` is the distance
//! divided by the chunk size, so a larger `N` is slower memory. DRAM is normally in tier 4, CXL
//! and persistent memory above it. A node in a tier larger than the smallest tier present is a
//! far-tier candidate. Older kernels have no such directory, and every node is then untiered.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;

use crate::parse_cpu_list;

/// Where the kernel publishes memory tiers.
pub(crate) const SYSFS_MEMORY_TIERING: &str = "/sys/devices/virtual/memory_tiering";

/// Node id to tier number, for every node listed in a tier under `root`.
///
/// A missing `root` is an empty map (a kernel without memory tiering); other read errors, and
/// unparsable node lists, are returned so the caller can log them.
pub(crate) fn read_memory_tiers(root: &Path) -> io::Result<BTreeMap<u32, u32>> {
    let mut tiers = BTreeMap::new();
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(tiers),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(tier) = name
            .to_str()
            .and_then(|n| n.strip_prefix("memory_tier"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue; // `power`, `uevent` and other attributes.
        };
        let text = match std::fs::read_to_string(entry.path().join("nodelist")) {
            Ok(text) => text,
            // A tier without a nodelist (being torn down, or an unexpected kernel) has no nodes.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let nodes = parse_cpu_list(&text)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        for node in nodes {
            // A node is in one tier; should two lists disagree, keep the slower tier.
            let slot = tiers.entry(node).or_insert(tier);
            *slot = (*slot).max(tier);
        }
    }
    Ok(tiers)
}

/// Whether a node in `tier` is a far-tier candidate, given every node's tier: it is if some
/// node is in a faster (smaller) tier.
pub(crate) fn is_slower_tier(tier: Option<u32>, tiers: &BTreeMap<u32, u32>) -> bool {
    match (tier, tiers.values().min()) {
        (Some(tier), Some(&fastest)) => tier > fastest,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_tier(root: &Path, dir: &str, nodelist: &str) {
        let dir = root.join(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("nodelist"), nodelist).unwrap();
    }

    #[test]
    fn reads_tiers_and_ignores_other_entries() {
        let root = tempfile::tempdir().unwrap();
        write_tier(root.path(), "memory_tier4", "0-1\n");
        write_tier(root.path(), "memory_tier22", "2\n");
        std::fs::write(root.path().join("uevent"), "").unwrap();
        std::fs::create_dir(root.path().join("power")).unwrap();

        let tiers = read_memory_tiers(root.path()).unwrap();
        assert_eq!(tiers, BTreeMap::from([(0, 4), (1, 4), (2, 22)]));
        assert!(!is_slower_tier(Some(4), &tiers));
        assert!(is_slower_tier(Some(22), &tiers));
        assert!(!is_slower_tier(None, &tiers));
    }

    #[test]
    fn one_tier_makes_nothing_far() {
        let root = tempfile::tempdir().unwrap();
        write_tier(root.path(), "memory_tier4", "0\n");
        let tiers = read_memory_tiers(root.path()).unwrap();
        assert_eq!(tiers, BTreeMap::from([(0, 4)]));
        assert!(!is_slower_tier(Some(4), &tiers));
    }

    #[test]
    fn missing_directory_means_no_tiers() {
        let root = tempfile::tempdir().unwrap();
        let tiers = read_memory_tiers(&root.path().join("absent")).unwrap();
        assert!(tiers.is_empty());
        assert!(!is_slower_tier(None, &tiers));
    }

    #[test]
    fn bad_nodelist_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        write_tier(root.path(), "memory_tier4", "zero\n");
        let err = read_memory_tiers(root.path()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn this_machine_tiers_parse() {
        // Whatever this kernel publishes must parse; a missing directory is an empty map.
        read_memory_tiers(Path::new(SYSFS_MEMORY_TIERING)).unwrap();
    }
}
