//! The one error type of this crate, [`NumaError`], with messages written for the person who
//! reads the log: what was asked, what was wrong, and what it means for them.

/// Why a NUMA operation could not be done.
///
/// Pinning and binding are optimisations: callers normally log the error and go on with the
/// thread unpinned or the memory under the default policy.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum NumaError {
    /// The node id is not a NUMA node of this machine (or of the given topology).
    #[error("NUMA node {node} does not exist on this machine")]
    NoSuchNode {
        /// The node that was asked for.
        node: u32,
    },

    /// A pointer given to [`bind_memory`](crate::bind_memory) does not start a page.
    #[error(
        "cannot bind memory at {ptr:#x}: the address must be a multiple of the page size \
         ({page_size} bytes)"
    )]
    Unaligned {
        /// The address that was given.
        ptr: usize,
        /// The system page size it should be a multiple of.
        page_size: usize,
    },

    /// The topology is simulated, so its nodes and CPUs are not this machine's.
    #[error(
        "cannot pin to NUMA node {node}: the topology is simulated, so its CPUs are not this \
         machine's"
    )]
    Simulated {
        /// The node that was asked for.
        node: u32,
    },

    /// The node has no CPUs to run a thread on (a CPU-less memory node).
    #[error("cannot pin to NUMA node {node}: it has no CPUs (a memory-only node)")]
    NoCpus {
        /// The node that was asked for.
        node: u32,
    },

    /// The node has no memory of its own, so no memory can be bound to it.
    #[error("cannot bind memory to NUMA node {node}: it has no memory of its own")]
    NoMemory {
        /// The node that was asked for.
        node: u32,
    },

    /// A CPU index above 2^20, more than any Linux machine has (the kernel caps CPUs at 8192).
    #[error("cannot pin to CPU {cpu}: this machine has no such CPU")]
    NoSuchCpu {
        /// The CPU index that was out of range.
        cpu: u32,
    },

    /// A CPU or node list in Linux list format ("0-3,8") could not be parsed.
    #[error("invalid CPU list {input:?}: {reason}")]
    InvalidCpuList {
        /// The text that was given (trimmed).
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The kernel refused a system call.
    #[error("{op} failed: {source}")]
    Os {
        /// The system call or operation that failed.
        op: &'static str,
        /// The OS error it returned.
        #[source]
        source: std::io::Error,
    },
}

impl NumaError {
    /// An [`NumaError::Os`] from the calling thread's `errno`.
    pub(crate) fn last_os_error(op: &'static str) -> Self {
        Self::Os {
            op,
            source: std::io::Error::last_os_error(),
        }
    }
}
