//! `tera-benches`: the `tierbench` macro benchmark (YCSB-style workloads over Teraservices and
//! the engines people would pick instead, at several DRAM budgets) and the pieces it shares
//! with the criterion benches: key and value generation, the seeded operation stream, the
//! stores behind one trait, memory cgroups for memory-bounded runs, and the machine probes
//! that put the figures next to physical limits.

pub mod cgroup;
pub mod keys;
#[cfg(feature = "peers")]
pub mod peers;
pub mod probe;
pub mod store;
pub mod sysinfo;
pub mod workload;
