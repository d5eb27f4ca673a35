//! The machine's NUMA [`Topology`]: its [`Node`]s with their CPUs, memory and far-tier flag,
//! detected with hwloc, simulated for tests, or (when hwloc fails) one node holding every CPU.
//!
//! Invariants every `Topology` keeps, whatever its source: it has at least one node with CPUs
//! (so `cpu_nodes()` is never empty and partitions always have a home), nodes are sorted by id
//! with no duplicates, and each node's CPUs are sorted with no duplicates. No CPU is in two nodes
//! (hwloc and the simulator both guarantee it).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use crate::cpulist::format_cpu_list;
use crate::{hwloc, os, tiers};

/// Where a [`Topology`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TopologySource {
    /// Detected on this machine by hwloc.
    Hwloc,
    /// Made up by [`Topology::simulated`]; its CPUs are not this machine's.
    Simulated,
    /// hwloc failed: one node (0) holding every online CPU, as `sysconf` counts them.
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
    /// OS CPU indices, sorted; empty for CPU-less memory nodes.
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
    /// Discovers this machine's topology with hwloc, and marks far-tier candidates from the
    /// kernel's memory tiers.
    ///
    /// Never panics: if hwloc fails (or finds no node with CPUs), logs a `tracing` warning and
    /// returns a [`TopologySource::Fallback`] topology with one node, 0, holding every online
    /// CPU. Unreadable memory tiers are logged too, and leave nodes untiered.
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
        let reason = match discovered {
            Ok(found) if found.iter().any(|node| !node.cpus.is_empty()) => {
                let nodes = found
                    .into_iter()
                    .map(|node| {
                        let memory_tier = tiers.get(&node.id).copied();
                        Node {
                            id: node.id,
                            far_candidate: node.cpus.is_empty()
                                || tiers::is_slower_tier(memory_tier, &tiers),
                            cpus: node.cpus,
                            memory_bytes: node.memory_bytes,
                            memory_tier,
                        }
                    })
                    .collect();
                return Topology::from_nodes(TopologySource::Hwloc, nodes);
            }
            Ok(_) => "hwloc found no NUMA node with CPUs".to_owned(),
            Err(reason) => reason,
        };
        let topology = Topology::fallback(tiers.get(&0).copied());
        tracing::warn!(
            "{reason}; using one NUMA node with CPUs {} (threads are not placed by node)",
            format_cpu_list(&topology.nodes[0].cpus)
        );
        topology
    }

    /// The topology used when hwloc fails: node 0 with CPUs `0..n` for the `n` online CPUs and
    /// all physical memory.
    fn fallback(memory_tier: Option<u32>) -> Topology {
        let online = os::sysconf(libc::_SC_NPROCESSORS_ONLN).unwrap_or(1);
        let online = u32::try_from(online).unwrap_or(u32::MAX);
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
                cpus: (0..online).collect(),
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
        let t = Topology::fallback(None);
        assert_eq!(t.source(), TopologySource::Fallback);
        assert_eq!(t.nodes().len(), 1);
        let online = os::sysconf(libc::_SC_NPROCESSORS_ONLN).unwrap();
        assert_eq!(t.node(0).unwrap().cpus.len() as u64, online);
        assert_eq!(t.cpu_nodes(), [0]);
        assert!(t.far_nodes().is_empty());
        assert!(t.node(0).unwrap().memory_bytes > 0);
        assert!(t.to_string().contains("fallback"));
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
