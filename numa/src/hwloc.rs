//! The only module that speaks hwlocality: it loads the system's hwloc topology and turns its
//! NUMA node objects into plain data (OS index, hwloc's CPU set, local memory) and the CPUs this
//! process may use, for [`Topology::detect`](crate::Topology::detect).
//!
//! hwloc restricts its topology to what this process may use (its cgroup cpuset and the online
//! CPUs), so the allowed CPUs reported are the ones a thread can actually be pinned to.
//!
//! A node's CPUs as hwloc reports them are not the node's own: in hwloc 2 a NUMA node object's
//! CPU set is its parent's, and on Linux hwloc gives a CPU-less node (CXL, persistent memory,
//! HBM) the CPUs of its initiators or nearest node. The topology therefore takes each node's
//! CPUs from the kernel (`/sys/devices/system/node/node<id>/cpulist`) and keeps hwloc's set only
//! as a fallback; see `Topology::from_hwloc`.

use hwlocality::cpu::cpuset::CpuSet;
use hwlocality::object::attributes::ObjectAttributes;
use hwlocality::object::types::ObjectType;

/// What hwloc found: the NUMA nodes, and the CPUs this process may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Discovered {
    /// The NUMA nodes, sorted by id.
    pub(crate) nodes: Vec<HwlocNode>,
    /// OS indices of the CPUs hwloc allows this process (its allowed CPU set), sorted.
    pub(crate) allowed_cpus: Vec<u32>,
}

/// One NUMA node as hwloc reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HwlocNode {
    /// OS index of the node (`/sys/devices/system/node/node<id>`).
    pub(crate) id: u32,
    /// OS indices of the CPUs in hwloc's CPU set for the node, sorted. Not the node's own CPUs:
    /// in hwloc 2 this is the set of the node's parent object, so a CPU-less node has the CPUs
    /// near it (see the module documentation). Only a fallback for the kernel's list.
    pub(crate) cpus: Vec<u32>,
    /// Local memory in bytes, 0 when hwloc does not know it.
    pub(crate) memory_bytes: u64,
}

/// Loads the topology and lists its NUMA nodes, sorted by id, with the CPUs this process may
/// use. The error is a sentence for the log.
pub(crate) fn discover() -> Result<Discovered, String> {
    let topology = hwlocality::Topology::new()
        .map_err(|e| format!("hwloc could not load this machine's topology: {e}"))?;
    let allowed_cpus = cpu_indices(&topology.allowed_cpuset(), "the allowed CPU set")?;
    let mut nodes = Vec::new();
    for object in topology.objects_with_type(ObjectType::NUMANode) {
        let id = object
            .os_index()
            .ok_or_else(|| "hwloc reported a NUMA node without an OS index".to_owned())?;
        let id = u32::try_from(id).map_err(|_| format!("NUMA node index {id} is out of range"))?;
        let cpus = match object.cpuset() {
            None => Vec::new(),
            Some(cpuset) => cpu_indices(&cpuset, &format!("the CPU set of node {id}"))?,
        };
        let memory_bytes = match object.attributes() {
            Some(ObjectAttributes::NUMANode(attributes)) => attributes
                .local_memory()
                .map_or(0, std::num::NonZeroU64::get),
            _ => 0,
        };
        nodes.push(HwlocNode {
            id,
            cpus,
            memory_bytes,
        });
    }
    nodes.sort_by_key(|node| node.id);
    nodes.dedup_by_key(|node| node.id);
    Ok(Discovered {
        nodes,
        allowed_cpus,
    })
}

/// The OS indices in `cpuset`, sorted; `what` names the set in the error.
fn cpu_indices(cpuset: &CpuSet, what: &str) -> Result<Vec<u32>, String> {
    // An infinite set would never end the iteration below.
    if cpuset.weight().is_none() {
        return Err(format!("hwloc reported an infinite CPU set for {what}"));
    }
    let mut cpus = cpuset
        .iter_set()
        .map(u32::try_from)
        .collect::<Result<Vec<u32>, _>>()
        .map_err(|_| format!("{what} has a CPU index out of range"))?;
    cpus.sort_unstable();
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovers_nodes_with_cpus_and_memory() {
        let found = discover().unwrap();
        let nodes = &found.nodes;
        assert!(!nodes.is_empty());
        assert!(nodes.iter().any(|node| !node.cpus.is_empty()));
        assert!(nodes.windows(2).all(|w| w[0].id < w[1].id));
        assert!(!found.allowed_cpus.is_empty());
        assert!(found.allowed_cpus.windows(2).all(|w| w[0] < w[1]));
        for node in nodes {
            assert!(node.cpus.windows(2).all(|w| w[0] < w[1]), "{node:?}");
            // hwloc restricts every set to what this process may use.
            assert!(
                node.cpus
                    .iter()
                    .all(|cpu| found.allowed_cpus.binary_search(cpu).is_ok()),
                "{node:?} has CPUs outside {:?}",
                found.allowed_cpus
            );
            assert!(
                std::path::Path::new(&format!("/sys/devices/system/node/node{}", node.id)).exists()
                    || node.id == 0,
                "{node:?} is not a node the kernel knows"
            );
        }
        // Linux (and so hwloc) knows how much memory a node with memory has.
        assert!(nodes.iter().any(|node| node.memory_bytes > 0));
    }
}
