//! `tera-benches`: the `tierbench` macro benchmark (YCSB-style workloads over a tiered
//! database at several DRAM budgets) and the pieces it shares with the criterion benches:
//! key and value generation, the seeded operation stream, and the machine probes that put
//! the figures next to physical limits.

pub mod keys;
pub mod probe;
pub mod sysinfo;
pub mod workload;
