//! Placing work and memory on a node: [`pin_current_thread`] restricts the calling thread to a
//! node's CPUs (`sched_setaffinity`), and [`bind_memory`] sets a range's placement policy to
//! the node (`mbind` with `MPOL_BIND`).
//!
//! Both are optimisations: they return an error that callers log (once, see
//! [`bind_memory_or_log`]) before going on with default placement. Neither can cause undefined
//! behaviour, whatever the arguments.

use std::ffi::c_ulong;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::cpulist::MAX_INDEX;
use crate::topology::{Topology, TopologySource, SYSFS_NODES};
use crate::{os, parse_cpu_list, NumaError};

/// `MPOL_MF_MOVE` from `<linux/mempolicy.h>`: also migrate pages already placed elsewhere
/// (those mapped only by this process); pages that cannot move are left where they are. The
/// libc crate does not define it.
const MPOL_MF_MOVE: libc::c_uint = 1 << 1;

/// Restricts the calling thread to the CPUs of `node` in `topology`.
///
/// # Errors
///
/// Callers log these and run unpinned: [`NumaError::Simulated`] when the
/// topology is simulated (its CPUs are not this machine's), [`NumaError::NoSuchNode`] when the
/// topology has no such node, [`NumaError::NoCpus`] for a CPU-less node,
/// [`NumaError::NoSuchCpu`] for a CPU index above 2^20 (more than any Linux machine has), and
/// [`NumaError::Os`] when the kernel refuses (for instance when none of the node's CPUs is
/// online, exists or is allowed to this process any more).
///
/// The mask given to the kernel is as long as the node's largest CPU needs, not a fixed
/// 1024-CPU `cpu_set_t`, so CPUs from 1024 up can be pinned to. The kernel ignores CPUs it
/// does not have, as it does offline ones, and pins to the others.
pub fn pin_current_thread(topology: &Topology, node: u32) -> Result<(), NumaError> {
    if topology.source() == TopologySource::Simulated {
        return Err(NumaError::Simulated { node });
    }
    let cpus = &topology
        .node(node)
        .ok_or(NumaError::NoSuchNode { node })?
        .cpus;
    if cpus.is_empty() {
        return Err(NumaError::NoCpus { node });
    }
    if let Some(&cpu) = cpus.iter().find(|&&cpu| cpu > MAX_INDEX) {
        return Err(NumaError::NoSuchCpu { cpu });
    }
    // The kernel's layout (what CPU_SET writes in a cpu_set_t): CPU i is bit i % BITS of word
    // i / BITS, as many words as the largest CPU needs (at most 2^20 / BITS + 1, as checked
    // above).
    let bits = c_ulong::BITS;
    let mut mask: Vec<c_ulong> = Vec::new();
    for &cpu in cpus {
        let word = usize::try_from(cpu / bits).map_err(|_| NumaError::NoSuchCpu { cpu })?;
        if mask.len() <= word {
            mask.resize(word + 1, 0);
        }
        let bit: c_ulong = 1 << (cpu % bits);
        mask[word] |= bit;
    }
    let this_thread: libc::pid_t = 0;
    // SAFETY: sched_setaffinity(2) reads `size_of_val(mask)` bytes from `mask`, which is alive
    // and exactly that long, and does not keep the pointer; it writes no memory of ours. pid 0
    // means the calling thread.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_setaffinity,
            this_thread,
            std::mem::size_of_val(mask.as_slice()),
            mask.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(NumaError::last_os_error("sched_setaffinity"));
    }
    Ok(())
}

/// Binds the pages of `[ptr, ptr + len)` to `node`: pages not yet touched will be allocated
/// there, and pages already placed elsewhere are moved where the kernel can (`mbind(2)` with
/// `MPOL_BIND` and `MPOL_MF_MOVE`). A `len` that does not end a page is rounded up to one.
///
/// # Errors
///
/// [`NumaError::Unaligned`] when `ptr` is not page aligned, [`NumaError::NoSuchNode`]
/// for a node that is not in `/sys/devices/system/node`, [`NumaError::NoMemory`] for a node
/// without memory of its own, and [`NumaError::Os`] when the kernel refuses (`EFAULT` or
/// `ENOMEM` for a range that is not mapped, `EPERM`/`EINVAL` where policies are not allowed).
///
/// # Why this is a safe function
///
/// `mbind` changes only the placement policy of the pages in the range: their contents, their
/// addresses and their protection stay the same, and a page that moves is copied by the kernel
/// behind the same virtual address. Neither this function nor the kernel dereferences `ptr` as
/// a Rust reference; the kernel checks the range against the process's mappings and fails on
/// anything that is not mapped. So no pointer, even a dangling one, can cause undefined
/// behaviour. The worst a wrong range can do is change where some other memory of this process
/// lives, a performance effect. As with any strict binding, if the node runs out of memory a
/// page fault in the range is served by the OOM killer rather than by another node.
pub fn bind_memory(ptr: *const u8, len: usize, node: u32) -> Result<(), NumaError> {
    let page_size = os::page_size();
    let addr = ptr as usize;
    if addr % page_size != 0 {
        return Err(NumaError::Unaligned {
            ptr: addr,
            page_size,
        });
    }
    check_memory_node(Path::new(SYSFS_NODES), node)?;

    let bits = c_ulong::BITS;
    let word = usize::try_from(node / bits).map_err(|_| NumaError::NoSuchNode { node })?;
    let mut mask: Vec<c_ulong> = vec![0; word + 1];
    mask[word] = 1 << (node % bits);
    // The kernel reads `maxnode - 1` bits (a historical off-by-one that libnuma also works
    // around), so pass one more than the mask holds.
    let maxnode = (mask.len() as c_ulong) * c_ulong::from(bits) + 1;
    // SAFETY: mbind(2) reads `mask.len()` words from `mask`, which is alive and that long
    // (`maxnode - 1` bits), and does not keep the pointer. It does not access the memory at
    // `ptr`: it validates the range against this process's mappings and changes only its
    // placement policy (see "Why this is a safe function" above).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            ptr.cast::<libc::c_void>(),
            len as c_ulong,
            libc::MPOL_BIND,
            mask.as_ptr(),
            maxnode,
            MPOL_MF_MOVE,
        )
    };
    if rc != 0 {
        return Err(NumaError::last_os_error("mbind"));
    }
    Ok(())
}

/// Whether the first bind failure has been logged already.
static BIND_FAILURE_LOGGED: AtomicBool = AtomicBool::new(false);

/// [`bind_memory`], logging the first failure of the process at `debug` level and the later
/// ones not at all (on a machine where binding fails, it fails for every frame). Returns
/// whether the range is now bound to `node`.
pub fn bind_memory_or_log(ptr: *const u8, len: usize, node: u32) -> bool {
    match bind_memory(ptr, len, node) {
        Ok(()) => true,
        Err(e) => {
            if !BIND_FAILURE_LOGGED.swap(true, Ordering::Relaxed) {
                tracing::debug!(
                    "memory stays under the default NUMA policy: {e} \
                     (later binding failures are not logged)"
                );
            }
            false
        }
    }
}

/// Checks that `node` is a node of this machine with memory, looking under `sysfs_nodes`
/// (normally `/sys/devices/system/node`).
fn check_memory_node(sysfs_nodes: &Path, node: u32) -> Result<(), NumaError> {
    if !sysfs_nodes.exists() {
        // A kernel without NUMA support has exactly one node, 0.
        return if node == 0 {
            Ok(())
        } else {
            Err(NumaError::NoSuchNode { node })
        };
    }
    if !sysfs_nodes.join(format!("node{node}")).exists() {
        return Err(NumaError::NoSuchNode { node });
    }
    // Where the list cannot be read or parsed, let the kernel be the judge.
    if let Ok(text) = std::fs::read_to_string(sysfs_nodes.join("has_memory")) {
        if let Ok(with_memory) = parse_cpu_list(&text) {
            if with_memory.binary_search(&node).is_err() {
                return Err(NumaError::NoMemory { node });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;

    use super::*;
    use crate::Node;

    fn node(id: u32, cpus: Vec<u32>) -> Node {
        Node {
            id,
            cpus,
            memory_bytes: 1 << 30,
            far_candidate: false,
            memory_tier: None,
        }
    }

    #[test]
    fn pinning_to_a_node_without_cpus_is_refused() {
        let t = Topology::from_nodes(
            TopologySource::Hwloc,
            vec![node(0, vec![0]), node(1, vec![])],
        );
        assert!(matches!(
            pin_current_thread(&t, 1),
            Err(NumaError::NoCpus { node: 1 })
        ));
        assert!(matches!(
            pin_current_thread(&t, 7),
            Err(NumaError::NoSuchNode { node: 7 })
        ));
    }

    #[test]
    fn pinning_to_a_cpu_beyond_any_machine_is_refused() {
        for huge in [MAX_INDEX + 1, u32::MAX] {
            let t = Topology::from_nodes(TopologySource::Hwloc, vec![node(0, vec![0, huge])]);
            let before = current_thread_cpus();
            let (err, after) = std::thread::spawn(move || {
                let err = pin_current_thread(&t, 0).unwrap_err();
                (err, current_thread_cpus())
            })
            .join()
            .unwrap();
            assert!(
                matches!(err, NumaError::NoSuchCpu { cpu } if cpu == huge),
                "{err:?}"
            );
            assert_eq!(
                err.to_string(),
                format!("cannot pin to CPU {huge}: this machine has no such CPU")
            );
            // Refused before the kernel was asked: the thread kept its affinity.
            assert_eq!(after, before);
        }
    }

    #[test]
    fn cpus_from_1024_up_reach_the_kernel() {
        // A cpu_set_t stops at CPU 1023. CPU 5000 is not this machine's, so the kernel ignores
        // it and pins to the one CPU that is; alone, it leaves the kernel nothing to pin to.
        let last = *current_thread_cpus().last().unwrap();
        let t = Topology::from_nodes(
            TopologySource::Hwloc,
            vec![node(0, vec![last, 5000]), node(1, vec![5000])],
        );
        let (pinned, alone) = std::thread::spawn(move || {
            let pinned = pin_current_thread(&t, 0).map(|()| current_thread_cpus());
            (pinned, pin_current_thread(&t, 1))
        })
        .join()
        .unwrap();
        assert_eq!(pinned.unwrap(), [last]);
        match alone {
            Err(NumaError::Os { op, ref source }) => {
                assert_eq!(op, "sched_setaffinity");
                assert_eq!(source.raw_os_error(), Some(libc::EINVAL));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn kernel_refusal_is_an_os_error() {
        // No CPU of the set exists here (the machine has fewer than 1001), so the kernel says no.
        let t = Topology::from_nodes(TopologySource::Hwloc, vec![node(0, vec![1000])]);
        let err = std::thread::spawn(move || pin_current_thread(&t, 0))
            .join()
            .unwrap()
            .unwrap_err();
        match err {
            NumaError::Os { op, ref source } => {
                assert_eq!(op, "sched_setaffinity");
                assert_eq!(source.raw_os_error(), Some(libc::EINVAL));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn node_checks_follow_sysfs() {
        let root = tempfile::tempdir().unwrap();
        let nodes = root.path();
        std::fs::create_dir(nodes.join("node0")).unwrap();
        std::fs::create_dir(nodes.join("node1")).unwrap();
        std::fs::write(nodes.join("has_memory"), "0\n").unwrap();
        assert!(check_memory_node(nodes, 0).is_ok());
        assert!(matches!(
            check_memory_node(nodes, 1),
            Err(NumaError::NoMemory { node: 1 })
        ));
        assert!(matches!(
            check_memory_node(nodes, 2),
            Err(NumaError::NoSuchNode { node: 2 })
        ));
        // Without a node directory at all (no NUMA in the kernel) only node 0 exists.
        let absent = nodes.join("absent");
        assert!(check_memory_node(&absent, 0).is_ok());
        assert!(matches!(
            check_memory_node(&absent, 1),
            Err(NumaError::NoSuchNode { node: 1 })
        ));
    }

    /// CPUs the calling thread may run on.
    fn current_thread_cpus() -> Vec<u32> {
        // SAFETY: all-zero is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a live cpu_set_t and the size is its own; pid 0 is this thread.
        let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        (0..8 * size_of::<libc::cpu_set_t>())
            // SAFETY: `cpu` is below the set's capacity in bits.
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
            .map(|cpu| u32::try_from(cpu).unwrap())
            .collect()
    }

    #[test]
    fn pinning_narrows_the_thread_to_the_node_cpus() {
        // A node holding only the last CPU this thread may use: pinning must narrow the
        // affinity to exactly that CPU (on a one-CPU machine it stays the same CPU).
        let last = *current_thread_cpus().last().unwrap();
        let t = Topology::from_nodes(TopologySource::Hwloc, vec![node(0, vec![last])]);
        let after = std::thread::spawn(move || {
            pin_current_thread(&t, 0).unwrap();
            current_thread_cpus()
        })
        .join()
        .unwrap();
        assert_eq!(after, [last]);
    }

    /// A `tracing` writer that appends to a shared buffer.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn failed_binds_report_false_and_log_once() {
        // The only test in this binary that makes bind_memory_or_log fail, so the first failure
        // of the process is one of these.
        let log = Captured::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            assert!(!bind_memory_or_log(
                std::ptr::without_provenance(1),
                4096,
                0
            ));
            assert!(!bind_memory_or_log(std::ptr::null(), 4096, 4096));
            assert!(!bind_memory_or_log(std::ptr::null(), 4096, 4097));
        });
        assert!(BIND_FAILURE_LOGGED.load(Ordering::Relaxed));
        let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("DEBUG"), "{text}");
        assert!(
            text.contains("the address must be a multiple of the page size"),
            "{text}"
        );
    }
}
