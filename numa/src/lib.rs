//! `tera-numa` tells the engine where memory and CPUs are, and puts threads and pages there.
//!
//! It owns four things: the machine's NUMA [`Topology`] (discovered with hwloc through the
//! `hwlocality` crate, each node's CPUs taken from the kernel's
//! `/sys/devices/system/node/node<id>/cpulist`, or simulated for tests), the Linux memory tiers
//! that mark a node as a far-tier candidate, pinning a thread to a node's CPUs
//! ([`pin_current_thread`]) and binding a range of memory to a node ([`bind_memory`]).
//! Everything here degrades instead of failing: a machine where hwloc does not work still gets
//! a one-node topology, and pinning or binding report an error that callers log before going on
//! unpinned.
//!
//! Architecture invariant: this crate depends on no other Teraservices crate, and all use of
//! hwlocality stays in the private `hwloc` module, so that the rest of the crate (and every
//! caller) sees plain Rust types.
//!
//! ```
//! use tera_numa::{Topology, TopologySource};
//!
//! // Two sockets of four CPUs each and one CPU-less (far) node, 16 GiB each.
//! let topology = Topology::simulated(2, 4, 1, 16 << 30);
//! assert_eq!(topology.source(), TopologySource::Simulated);
//! assert_eq!(topology.cpu_nodes(), vec![0, 1]);
//! assert_eq!(topology.far_nodes(), vec![2]);
//! assert_eq!(topology.node_of_cpu(5), Some(1));
//! println!("{topology}");
//! ```

mod affinity;
mod cpulist;
mod error;
mod hwloc;
mod os;
mod tiers;
mod topology;

pub use affinity::{bind_memory, bind_memory_or_log, pin_current_thread};
pub use cpulist::parse_cpu_list;
pub use error::NumaError;
pub use topology::{Node, Topology, TopologySource};
