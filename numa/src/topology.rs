//! The machine's NUMA [`Topology`]: its [`Node`]s with their CPUs, memory and far-tier flag,
//! detected with hwloc, simulated for tests, or (when hwloc fails) one node holding every CPU.
//!
//! Where a detected node's CPUs come from: hwloc finds the nodes, their memory and the CPUs this
//! process may use, but each node's own CPUs are the kernel's list,
//! `/sys/devices/system/node/node<id>/cpulist`, less the CPUs this process may not use. hwloc's
//! CPU set for a node cannot serve: in hwloc 2 it is the set of the node's parent object, and
//! Linux hwloc gives a CPU-less node (CXL, persistent memory, HBM) the CPUs of its initiators or
//! nearest node, which would make a far node look like a CPU node and put socket 0's CPUs in two
//! nodes. Only for a node whose list cannot be read (a kernel without NUMA, which has no such
//! directory and one node) is hwloc's set used, less the CPUs another node already has.
//!
//! Invariants every `Topology` keeps, whatever its source: it has at least one node with CPUs
//! (so `cpu_nodes()` is never empty and partitions always have a home), nodes are sorted by id
//! with no duplicates, and each node's CPUs are sorted with no duplicates. No CPU is in two nodes
//! (the kernel's lists are disjoint, `Topology::from_hwloc` gives a CPU to at most one node,
//! and the simulator numbers CPUs consecutively).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use crate::cpulist::{format_cpu_list, read_cpu_list};
use crate::{hwloc, os, tiers};

/// Where Linux lists the NUMA nodes (`node<id>/cpulist`, `has_memory`); absent on kernels built
/// without NUMA, where only node 0 exists.
pub(crate) const SYSFS_NODES: &str = "/sys/devices/system/node";
/// Where Linux lists the online CPUs.
const SYSFS_CPUS_ONLINE: &str = "/sys/devices/system/cpu/online";

/// Where a [`Topology`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopologySource {
    /// Detected on this machine by hwloc.
    Hwloc,
    /// Made up by [`Topology::simulated`]; its CPUs are not this machine's.
    Simulated,
    /// hwloc failed: one node (0) holding every online CPU, as
    /// `/sys/devices/system/cpu/online` lists them (or `0..n` for the `n` online CPUs `sysconf`
    /// counts, when that file cannot be read).
    Fallback,
}

impl fmt::Display for TopologySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Hwloc => "detected by hwloc",
            Self::Simulated => "simulated",
            Self::Fallback => "fallback (hwloc failed: one node with every online CPU)",
        })
    }
}

/// One NUMA node: a set of CPUs and the memory local to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// OS NUMA node index (`/sys/devices/system/node/node<id>`).
    pub id: u32,
    /// OS CPU indices, sorted: for a detected topology, the kernel's CPUs of the node that this
    /// process may use. Empty for CPU-less memory nodes, and for nodes none of whose CPUs this
    /// process may use (those are not far candidates for that).
    pub cpus: Vec<u32>,
    /// Local memory of the node in bytes (0 if unknown).
    pub memory_bytes: u64,
    /// A candidate for the far tier: a CPU-less node, or one in a slower Linux memory tier than
    /// the fastest tier present.
    pub far_candidate: bool,
    /// Tier number from `/sys/devices/virtual/memory_tiering/memory_tier<N>`, if the kernel
    /// places this node in one (larger is slower).
    pub memory_tier: Option<u32>,
}

/// The NUMA nodes of a machine, real or simulated. Cheap to clone; it never changes after it
/// is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    source: TopologySource,
    nodes: Vec<Node>,
}

impl Topology {
    /// Discovers this machine's topology with hwloc, takes each node's CPUs from the kernel
    /// (`/sys/devices/system/node/node<id>/cpulist`, see the module documentation), and marks
    /// far-tier candidates: CPU-less nodes and nodes in slower kernel memory tiers.
    ///
    /// Never panics: if hwloc fails (or finds no node with CPUs this process may use), logs a
    /// `tracing` warning and returns a [`TopologySource::Fallback`] topology with one node, 0,
    /// holding every online CPU. Unreadable memory tiers are logged too, and leave nodes
    /// untiered.
    pub fn detect() -> Topology {
        let tiers = match tiers::read_memory_tiers(Path::new(tiers::SYSFS_MEMORY_TIERING)) {
            Ok(tiers) => tiers,
            Err(e) => {
                tracing::warn!(
                    "cannot read Linux memory tiers from {}: {e}; no node is marked far by tier",
                    tiers::SYSFS_MEMORY_TIERING
                );
                BTreeMap::new()
            }
        };
        // hwlocality reports unexpected hwloc states by panicking; a topology is an optimisation
        // hint, so such a panic becomes the fallback rather than taking the process down.
        let discovered = std::panic::catch_unwind(hwloc::discover)
            .unwrap_or_else(|_| Err("hwlocality panicked while loading the topology".to_owned()));
        let detected = discovered
            .and_then(|found| Topology::from_hwloc(found, Path::new(SYSFS_NODES), &tiers));
        let reason = match detected {
            Ok(topology) => return topology,
            Err(reason) => reason,
        };
        let topology = Topology::fallback(tiers.get(&0).copied(), Path::new(SYSFS_CPUS_ONLINE));
        tracing::warn!(
            "{reason}; using one NUMA node with CPUs {} (threads are not placed by node)",
            format_cpu_list(&topology.nodes[0].cpus)
        );
        topology
    }

    /// The topology hwloc found, as plain data: the nodes of `found` with their memory, each
    /// with its CPUs from `node<id>/cpulist` under `sysfs_nodes` (normally
    /// `/sys/devices/system/node`) that are in `found.allowed_cpus`, and far-tier candidates
    /// marked from the kernel's lists and `tiers`.
    ///
    /// A node is CPU-less, and so a far candidate, when the kernel lists no CPU for it at all; a
    /// node whose CPUs this process may not use has no CPUs here but is not far for that. A node
    /// whose list cannot be read or parsed keeps hwloc's CPU set instead (less the CPUs this
    /// process may not use), which in hwloc 2 is its parent's; so that no CPU is in two nodes,
    /// such nodes get only CPUs that no node with a kernel list has, and of those only the ones
    /// no such node with a smaller id took. That is logged (at `debug` level only for a kernel
    /// without NUMA: no `sysfs_nodes` and one node).
    ///
    /// The error, a sentence for the log, is for a topology where no node has a CPU this
    /// process may use.
    pub(crate) fn from_hwloc(
        found: hwloc::Discovered,
        sysfs_nodes: &Path,
        tiers: &BTreeMap<u32, u32>,
    ) -> Result<Topology, String> {
        let hwloc::Discovered {
            mut nodes,
            allowed_cpus,
        } = found;
        nodes.sort_by_key(|node| node.id);
        let allowed = |cpu: &u32| allowed_cpus.binary_search(cpu).is_ok();
        let listed: Vec<Result<Vec<u32>, String>> = nodes
            .iter()
            .map(|node| {
                read_cpu_list(&sysfs_nodes.join(format!("node{}", node.id)).join("cpulist"))
            })
            .collect();
        // CPUs given to a node so far: first those of the kernel's lists, then hwloc's.
        let mut taken = BTreeSet::new();
        let mut cpus: Vec<Vec<u32>> = vec![Vec::new(); nodes.len()];
        let mut cpu_less = vec![false; nodes.len()];
        for (i, list) in listed.iter().enumerate() {
            if let Ok(list) = list {
                cpu_less[i] = list.is_empty();
                cpus[i] = list
                    .iter()
                    .copied()
                    .filter(|cpu| allowed(cpu) && taken.insert(*cpu))
                    .collect();
            }
        }
        let mut unread = Vec::new();
        let mut first_error = None;
        for (i, list) in listed.into_iter().enumerate() {
            if let Err(e) = list {
                unread.push(nodes[i].id);
                if first_error.is_none() {
                    first_error = Some(e);
                }
                cpus[i] = nodes[i]
                    .cpus
                    .iter()
                    .copied()
                    .filter(|cpu| allowed(cpu) && taken.insert(*cpu))
                    .collect();
                cpu_less[i] = cpus[i].is_empty();
            }
        }
        if let Some(error) = first_error {
            if !sysfs_nodes.exists() && nodes.len() == 1 {
                tracing::debug!("this kernel has no NUMA nodes ({error}); node 0 has hwloc's CPUs");
            } else {
                tracing::warn!(
                    "cannot read the CPUs of NUMA node(s) {} from the kernel ({error}); using \
                     hwloc's CPU sets for them, without the CPUs of other nodes, so a CPU-less \
                     node may get CPUs near it",
                    format_cpu_list(&unread)
                );
            }
        }
        if cpus.iter().all(Vec::is_empty) {
            return Err("hwloc found no NUMA node with CPUs this process may use".to_owned());
        }
        let nodes = nodes
            .into_iter()
            .zip(cpus)
            .zip(cpu_less)
            .map(|((node, cpus), cpu_less)| {
                let memory_tier = tiers.get(&node.id).copied();
                Node {
                    id: node.id,
                    cpus,
                    memory_bytes: node.memory_bytes,
                    far_candidate: cpu_less || tiers::is_slower_tier(memory_tier, tiers),
                    memory_tier,
                }
            })
            .collect();
        Ok(Topology::from_nodes(TopologySource::Hwloc, nodes))
    }

    /// The topology used when hwloc fails: node 0 with every online CPU and all physical
    /// memory. The CPUs are those listed in `cpus_online` (normally
    /// `/sys/devices/system/cpu/online`), or `0..n` for the `n` online CPUs `sysconf` counts
    /// when that file cannot be read or lists none.
    fn fallback(memory_tier: Option<u32>, cpus_online: &Path) -> Topology {
        let cpus = match read_cpu_list(cpus_online) {
            Ok(cpus) if !cpus.is_empty() => cpus,
            listed => {
                let online = os::sysconf(libc::_SC_NPROCESSORS_ONLN).unwrap_or(1);
                let online = u32::try_from(online).unwrap_or(u32::MAX);
                let why = listed
                    .err()
                    .unwrap_or_else(|| format!("{} lists none", cpus_online.display()));
                tracing::debug!("online CPUs unknown ({why}); taking the {online} CPUs from 0 up");
                (0..online).collect()
            }
        };
        let memory_bytes = match (
            os::sysconf(libc::_SC_PHYS_PAGES),
            os::sysconf(libc::_SC_PAGESIZE),
        ) {
            (Some(pages), Some(size)) => pages.saturating_mul(size),
            _ => 0,
        };
        Topology::from_nodes(
            TopologySource::Fallback,
            vec![Node {
                id: 0,
                cpus,
                memory_bytes,
                far_candidate: false,
                memory_tier,
            }],
        )
    }

    /// A made-up topology for tests and benchmarks: nodes `0..sockets`, each with
    /// `cpus_per_socket` CPUs numbered consecutively (node 0 has CPUs `0..cpus_per_socket`),
    /// then `far_nodes` CPU-less far-tier candidates with the next ids. Every node has
    /// `memory_per_node` bytes and no memory tier.
    ///
    /// A `sockets` or `cpus_per_socket` of 0 is taken as 1, so that there is always a node to
    /// home partitions on. Pinning to a simulated node fails with [`NumaError::Simulated`].
    ///
    /// # Panics
    ///
    /// If the number of CPUs or nodes does not fit in a `u32`.
    ///
    /// [`NumaError::Simulated`]: crate::NumaError::Simulated
    pub fn simulated(
        sockets: usize,
        cpus_per_socket: usize,
        far_nodes: usize,
        memory_per_node: u64,
    ) -> Topology {
        let sockets = u32::try_from(sockets.max(1)).expect("simulated sockets fit in u32");
        let per_socket =
            u32::try_from(cpus_per_socket.max(1)).expect("simulated CPUs per socket fit in u32");
        let far_nodes = u32::try_from(far_nodes).expect("simulated far nodes fit in u32");
        sockets
            .checked_mul(per_socket)
            .and_then(|_| sockets.checked_add(far_nodes))
            .expect("simulated CPU and node counts fit in u32");
        let mut nodes = Vec::new();
        for socket in 0..sockets {
            nodes.push(Node {
                id: socket,
                cpus: (socket * per_socket..(socket + 1) * per_socket).collect(),
                memory_bytes: memory_per_node,
                far_candidate: false,
                memory_tier: None,
            });
        }
        for far in 0..far_nodes {
            nodes.push(Node {
                id: sockets + far,
                cpus: Vec::new(),
                memory_bytes: memory_per_node,
                far_candidate: true,
                memory_tier: None,
            });
        }
        Topology::from_nodes(TopologySource::Simulated, nodes)
    }

    /// Builds a topology from nodes in any order; the one place where the invariants are set up.
    pub(crate) fn from_nodes(source: TopologySource, mut nodes: Vec<Node>) -> Topology {
        nodes.sort_by_key(|node| node.id);
        for node in &mut nodes {
            node.cpus.sort_unstable();
            node.cpus.dedup();
        }
        debug_assert!(nodes.windows(2).all(|w| w[0].id < w[1].id));
        debug_assert!(nodes.iter().any(|node| !node.cpus.is_empty()));
        Topology { source, nodes }
    }

    /// Where this topology came from.
    pub fn source(&self) -> TopologySource {
        self.source
    }

    /// Every node, sorted by id.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The node with OS index `id`, if there is one.
    pub fn node(&self, id: u32) -> Option<&Node> {
        self.nodes
            .binary_search_by_key(&id, |node| node.id)
            .ok()
            .map(|i| &self.nodes[i])
    }

    /// Ids of the nodes that have CPUs, where partitions are homed; sorted, never empty.
    pub fn cpu_nodes(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter(|node| !node.cpus.is_empty())
            .map(|node| node.id)
            .collect()
    }

    /// Ids of the far-tier candidates (CPU-less nodes and nodes in slower memory tiers), sorted.
    pub fn far_nodes(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter(|node| node.far_candidate)
            .map(|node| node.id)
            .collect()
    }

    /// The node whose CPUs include `cpu`, if any.
    pub fn node_of_cpu(&self, cpu: u32) -> Option<u32> {
        self.nodes
            .iter()
            .find(|node| node.cpus.binary_search(&cpu).is_ok())
            .map(|node| node.id)
    }
}

/// A summary for people, one line per node:
///
/// ```text
/// NUMA topology (simulated): 3 nodes, 8 CPUs
///   node 0: cpus 0-3, 16.0 GiB, near
///   node 1: cpus 4-7, 16.0 GiB, near
///   node 2: no cpus, 16.0 GiB, far candidate
/// ```
impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cpus: usize = self.nodes.iter().map(|node| node.cpus.len()).sum();
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        write!(
            f,
            "NUMA topology ({}): {} node{}, {cpus} CPU{}",
            self.source,
            self.nodes.len(),
            plural(self.nodes.len()),
            plural(cpus),
        )?;
        for node in &self.nodes {
            write!(f, "\n  node {}: ", node.id)?;
            if node.cpus.is_empty() {
                f.write_str("no cpus")?;
            } else {
                write!(f, "cpus {}", format_cpu_list(&node.cpus))?;
            }
            #[allow(clippy::cast_precision_loss)] // one decimal of GiB is all we print
            let gib = node.memory_bytes as f64 / f64::from(1u32 << 30);
            write!(f, ", {gib:.1} GiB")?;
            f.write_str(if node.far_candidate {
                ", far candidate"
            } else {
                ", near"
            })?;
            if let Some(tier) = node.memory_tier {
                write!(f, ", memory tier {tier}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_sockets_one_far() -> Topology {
        Topology::simulated(2, 4, 1, 16 << 30)
    }

    #[test]
    fn simulated_nodes_cpus_and_flags() {
        let t = two_sockets_one_far();
        assert_eq!(t.source(), TopologySource::Simulated);
        let ids: Vec<u32> = t.nodes().iter().map(|n| n.id).collect();
        assert_eq!(ids, [0, 1, 2]);
        assert_eq!(t.node(0).unwrap().cpus, [0, 1, 2, 3]);
        assert_eq!(t.node(1).unwrap().cpus, [4, 5, 6, 7]);
        assert!(t.node(2).unwrap().cpus.is_empty());
        assert_eq!(
            t.nodes()
                .iter()
                .map(|n| n.far_candidate)
                .collect::<Vec<_>>(),
            [false, false, true]
        );
        assert!(t.nodes().iter().all(|n| n.memory_bytes == 16 << 30));
        assert!(t.nodes().iter().all(|n| n.memory_tier.is_none()));
        assert_eq!(t.node(3), None);
        assert_eq!(t.cpu_nodes(), [0, 1]);
        assert_eq!(t.far_nodes(), [2]);
    }

    #[test]
    fn simulated_node_of_cpu() {
        let t = two_sockets_one_far();
        for cpu in 0..4 {
            assert_eq!(t.node_of_cpu(cpu), Some(0));
        }
        for cpu in 4..8 {
            assert_eq!(t.node_of_cpu(cpu), Some(1));
        }
        assert_eq!(t.node_of_cpu(8), None);
        assert_eq!(t.node_of_cpu(u32::MAX), None);
    }

    #[test]
    fn simulated_zero_sizes_still_have_a_home() {
        let t = Topology::simulated(0, 0, 2, 0);
        assert_eq!(t.cpu_nodes(), [0]);
        assert_eq!(t.node(0).unwrap().cpus, [0]);
        assert_eq!(t.far_nodes(), [1, 2]);
    }

    #[test]
    fn display_lists_every_node() {
        let text = two_sockets_one_far().to_string();
        assert!(
            text.starts_with("NUMA topology (simulated): 3 nodes, 8 CPUs"),
            "{text}"
        );
        assert!(text.contains("node 0: cpus 0-3, 16.0 GiB, near"), "{text}");
        assert!(text.contains("node 1: cpus 4-7, 16.0 GiB, near"), "{text}");
        assert!(
            text.contains("node 2: no cpus, 16.0 GiB, far candidate"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 4, "{text}");
    }

    #[test]
    fn display_shows_tiers_and_gaps_in_cpu_ranges() {
        let t = Topology::from_nodes(
            TopologySource::Hwloc,
            vec![
                Node {
                    id: 3,
                    cpus: vec![],
                    memory_bytes: 3 << 29,
                    far_candidate: true,
                    memory_tier: Some(22),
                },
                Node {
                    id: 0,
                    cpus: vec![8, 0, 1, 2, 3],
                    memory_bytes: 1 << 30,
                    far_candidate: false,
                    memory_tier: Some(4),
                },
            ],
        );
        assert_eq!(
            t.to_string(),
            "NUMA topology (detected by hwloc): 2 nodes, 5 CPUs\n  \
             node 0: cpus 0-3,8, 1.0 GiB, near, memory tier 4\n  \
             node 3: no cpus, 1.5 GiB, far candidate, memory tier 22"
        );
        assert_eq!(t.node(3).unwrap().id, 3);
        assert_eq!(t.node(1), None);
    }

    #[test]
    fn fallback_has_every_online_cpu_on_node_zero() {
        let t = Topology::fallback(None, Path::new(SYSFS_CPUS_ONLINE));
        assert_eq!(t.source(), TopologySource::Fallback);
        assert_eq!(t.nodes().len(), 1);
        let online = os::sysconf(libc::_SC_NPROCESSORS_ONLN).unwrap();
        assert_eq!(t.node(0).unwrap().cpus.len() as u64, online);
        assert_eq!(
            t.node(0).unwrap().cpus,
            read_cpu_list(Path::new(SYSFS_CPUS_ONLINE)).unwrap()
        );
        assert_eq!(t.cpu_nodes(), [0]);
        assert!(t.far_nodes().is_empty());
        assert!(t.node(0).unwrap().memory_bytes > 0);
        assert!(t.to_string().contains("fallback"));
    }

    #[test]
    fn fallback_takes_the_online_cpus_listed() {
        let dir = tempfile::tempdir().unwrap();
        let online = dir.path().join("online");
        std::fs::write(&online, "0,2-3\n").unwrap();
        let t = Topology::fallback(Some(4), &online);
        assert_eq!(t.source(), TopologySource::Fallback);
        assert_eq!(t.node(0).unwrap().cpus, [0, 2, 3]);
        assert_eq!(t.node(0).unwrap().memory_tier, Some(4));
        assert_eq!(t.cpu_nodes(), [0]);
    }

    #[test]
    fn fallback_without_an_online_list_counts_cpus_from_zero() {
        let dir = tempfile::tempdir().unwrap();
        let online = os::sysconf(libc::_SC_NPROCESSORS_ONLN).unwrap();
        let expected: Vec<u32> = (0..u32::try_from(online).unwrap()).collect();
        let t = Topology::fallback(None, &dir.path().join("absent"));
        assert_eq!(t.node(0).unwrap().cpus, expected);
        // A list that cannot be parsed, or lists no CPU, is no better.
        for text in ["zero\n", "\n"] {
            let path = dir.path().join("online");
            std::fs::write(&path, text).unwrap();
            let t = Topology::fallback(None, &path);
            assert_eq!(t.node(0).unwrap().cpus, expected, "{text:?}");
        }
    }

    fn hwloc_node(id: u32, cpus: Vec<u32>) -> hwloc::HwlocNode {
        hwloc::HwlocNode {
            id,
            cpus,
            memory_bytes: 1 << 30,
        }
    }

    /// Writes `node<node>/cpulist` under a fake `/sys/devices/system/node`.
    fn write_cpulist(sysfs_nodes: &Path, node: u32, list: &str) {
        let dir = sysfs_nodes.join(format!("node{node}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cpulist"), list).unwrap();
    }

    #[test]
    fn cpu_less_node_gets_no_cpus_whatever_hwloc_says() {
        // Linux hwloc gives a CPU-less (CXL) node 2 the CPUs of node 0, near it; the kernel
        // lists none for it.
        let root = tempfile::tempdir().unwrap();
        write_cpulist(root.path(), 0, "0-3\n");
        write_cpulist(root.path(), 2, "\n");
        let found = hwloc::Discovered {
            nodes: vec![
                hwloc_node(2, vec![0, 1, 2, 3]),
                hwloc_node(0, vec![0, 1, 2, 3]),
            ],
            allowed_cpus: vec![0, 1, 2, 3],
        };
        let t = Topology::from_hwloc(found, root.path(), &BTreeMap::new()).unwrap();
        assert_eq!(t.source(), TopologySource::Hwloc);
        assert_eq!(t.node(0).unwrap().cpus, [0, 1, 2, 3]);
        assert!(t.node(2).unwrap().cpus.is_empty());
        assert!(!t.node(0).unwrap().far_candidate);
        assert!(t.node(2).unwrap().far_candidate);
        assert_eq!(t.far_nodes(), [2]);
        assert_eq!(t.cpu_nodes(), [0]);
        for cpu in 0..4 {
            assert_eq!(t.node_of_cpu(cpu), Some(0));
        }
        assert_eq!(t.node(2).unwrap().memory_bytes, 1 << 30);
    }

    #[test]
    fn node_cpus_are_the_kernel_lists_less_disallowed_cpus() {
        // This process may use CPUs 0-1 and 4 only (a cgroup cpuset): node 1 keeps CPU 4, and
        // node 3, whose CPUs are all disallowed, has none but is not far: it has CPUs.
        let root = tempfile::tempdir().unwrap();
        write_cpulist(root.path(), 0, "0-3\n");
        write_cpulist(root.path(), 1, "4-7\n");
        write_cpulist(root.path(), 3, "8-11\n");
        let found = hwloc::Discovered {
            nodes: vec![
                hwloc_node(0, vec![0, 1]),
                hwloc_node(1, vec![4]),
                hwloc_node(3, vec![0, 1, 4]),
            ],
            allowed_cpus: vec![0, 1, 4],
        };
        let tiers = BTreeMap::from([(0, 4), (1, 22), (3, 4)]);
        let t = Topology::from_hwloc(found, root.path(), &tiers).unwrap();
        assert_eq!(t.node(0).unwrap().cpus, [0, 1]);
        assert_eq!(t.node(1).unwrap().cpus, [4]);
        assert!(t.node(3).unwrap().cpus.is_empty());
        assert_eq!(t.cpu_nodes(), [0, 1]);
        // Node 1 is far by its slower tier alone.
        assert_eq!(t.far_nodes(), [1]);
        assert_eq!(t.node(1).unwrap().memory_tier, Some(22));
    }

    #[test]
    fn unreadable_cpu_lists_fall_back_to_hwloc_without_sharing_cpus() {
        // Node 0's list is readable; node 1's cannot be parsed and node 2 has none, so both
        // fall back to hwloc's sets. Node 2's (node 0's CPUs and one of node 1's) loses every CPU
        // another node has.
        let root = tempfile::tempdir().unwrap();
        write_cpulist(root.path(), 0, "0-3\n");
        write_cpulist(root.path(), 1, "four to seven\n");
        let found = hwloc::Discovered {
            nodes: vec![
                hwloc_node(0, vec![0, 1, 2, 3]),
                hwloc_node(1, vec![4, 5, 6, 7]),
                hwloc_node(2, vec![0, 1, 2, 3, 4]),
            ],
            allowed_cpus: (0..8).collect(),
        };
        let t = Topology::from_hwloc(found, root.path(), &BTreeMap::new()).unwrap();
        assert_eq!(t.node(0).unwrap().cpus, [0, 1, 2, 3]);
        assert_eq!(t.node(1).unwrap().cpus, [4, 5, 6, 7]);
        assert!(t.node(2).unwrap().cpus.is_empty());
        assert_eq!(t.cpu_nodes(), [0, 1]);
        assert_eq!(t.far_nodes(), [2]);
    }

    #[test]
    fn kernel_without_numa_keeps_hwloc_cpus() {
        let root = tempfile::tempdir().unwrap();
        let found = hwloc::Discovered {
            nodes: vec![hwloc_node(0, vec![0, 1, 2])],
            allowed_cpus: vec![0, 2],
        };
        let t = Topology::from_hwloc(found, &root.path().join("absent"), &BTreeMap::new()).unwrap();
        assert_eq!(t.node(0).unwrap().cpus, [0, 2]);
        assert_eq!(t.cpu_nodes(), [0]);
        assert!(t.far_nodes().is_empty());
    }

    #[test]
    fn no_usable_cpu_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        write_cpulist(root.path(), 0, "0-3\n");
        let found = hwloc::Discovered {
            nodes: vec![hwloc_node(0, vec![0, 1, 2, 3])],
            allowed_cpus: vec![8],
        };
        let err = Topology::from_hwloc(found, root.path(), &BTreeMap::new()).unwrap_err();
        assert!(err.contains("no NUMA node with CPUs"), "{err}");
    }

    #[test]
    fn detected_nodes_share_no_cpu_and_have_the_kernel_cpus() {
        let t = Topology::detect();
        let mut all: Vec<u32> = t.nodes().iter().flat_map(|n| n.cpus.clone()).collect();
        let len = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), len, "a CPU is in two nodes: {t}");
        if t.source() == TopologySource::Hwloc {
            for node in t.nodes() {
                let path = Path::new(SYSFS_NODES)
                    .join(format!("node{}", node.id))
                    .join("cpulist");
                if let Ok(kernel) = read_cpu_list(&path) {
                    assert!(
                        node.cpus.iter().all(|cpu| kernel.contains(cpu)),
                        "{node:?} has CPUs the kernel puts elsewhere"
                    );
                    if kernel.is_empty() {
                        assert!(node.far_candidate, "{node:?} is CPU-less but not far");
                    }
                }
            }
        }
    }

    #[test]
    fn detect_marks_cpu_less_nodes_far() {
        let t = Topology::detect();
        for node in t.nodes() {
            if node.cpus.is_empty() {
                assert!(node.far_candidate, "{node:?}");
            }
        }
    }
}
