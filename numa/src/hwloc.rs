//! The only module that speaks hwlocality: it loads the system's hwloc topology and turns its
//! NUMA node objects into plain data (OS index, CPUs, local memory) for
//! [`Topology::detect`](crate::Topology::detect).
//!
//! hwloc restricts its topology to what this process may use (its cgroup cpuset and the online
//! CPUs), so the CPUs reported are the ones a thread can actually be pinned to.

use hwlocality::object::attributes::ObjectAttributes;
use hwlocality::object::types::ObjectType;

/// One NUMA node as hwloc reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HwlocNode {
    /// OS index of the node (`/sys/devices/system/node/node<id>`).
    pub(crate) id: u32,
    /// OS indices of the node's usable CPUs, sorted.
    pub(crate) cpus: Vec<u32>,
    /// Local memory in bytes, 0 when hwloc does not know it.
    pub(crate) memory_bytes: u64,
}

/// Loads the topology and lists its NUMA nodes, sorted by id. The error is a sentence for the
/// log.
pub(crate) fn discover() -> Result<Vec<HwlocNode>, String> {
    let topology = hwlocality::Topology::new()
        .map_err(|e| format!("hwloc could not load this machine's topology: {e}"))?;
    let mut nodes = Vec::new();
    for object in topology.objects_with_type(ObjectType::NUMANode) {
        let id = object
            .os_index()
            .ok_or_else(|| "hwloc reported a NUMA node without an OS index".to_owned())?;
        let id = u32::try_from(id).map_err(|_| format!("NUMA node index {id} is out of range"))?;
        let cpus = match object.cpuset() {
            None => Vec::new(),
            Some(cpuset) => {
                // An infinite set would never end the iteration below.
                if cpuset.weight().is_none() {
                    return Err(format!("hwloc reported an infinite CPU set for node {id}"));
                }
                let mut cpus = cpuset
                    .iter_set()
                    .map(u32::try_from)
                    .collect::<Result<Vec<u32>, _>>()
                    .map_err(|_| format!("node {id} has a CPU index out of range"))?;
                cpus.sort_unstable();
                cpus
            }
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
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovers_nodes_with_cpus_and_memory() {
        let nodes = discover().unwrap();
        assert!(!nodes.is_empty());
        assert!(nodes.iter().any(|node| !node.cpus.is_empty()));
        assert!(nodes.windows(2).all(|w| w[0].id < w[1].id));
        for node in &nodes {
            assert!(node.cpus.windows(2).all(|w| w[0] < w[1]), "{node:?}");
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
