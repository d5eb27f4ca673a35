//! Tests against this machine's kernel: topology detection, thread pinning checked with
//! `sched_getaffinity`, and memory binding checked with `get_mempolicy`.

use std::io;
use std::mem::size_of;

use tera_numa::{bind_memory, pin_current_thread, NumaError, Topology, TopologySource};

/// `get_mempolicy` flags from `<linux/mempolicy.h>`, which the libc crate does not define.
const MPOL_F_NODE: libc::c_ulong = 1 << 0;
const MPOL_F_ADDR: libc::c_ulong = 1 << 1;

/// The CPUs the calling thread may run on.
fn current_thread_cpus() -> Vec<u32> {
    // SAFETY: cpu_set_t is a plain integer array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live cpu_set_t and the size passed is its own; pid 0 is this thread.
    let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
    assert_eq!(rc, 0, "sched_getaffinity: {}", io::Error::last_os_error());
    (0..8 * size_of::<libc::cpu_set_t>())
        // SAFETY: `cpu` is below the set's capacity in bits, so CPU_ISSET reads inside `set`.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .map(|cpu| u32::try_from(cpu).unwrap())
        .collect()
}

fn online_cpus() -> Vec<u32> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    tera_numa::parse_cpu_list(&text).unwrap()
}

#[test]
fn detect_finds_a_node_with_cpus_covering_every_usable_cpu() {
    let topology = Topology::detect();
    assert_eq!(topology.source(), TopologySource::Hwloc, "{topology}");
    assert!(!topology.cpu_nodes().is_empty(), "{topology}");

    let mut covered: Vec<u32> = topology
        .nodes()
        .iter()
        .flat_map(|node| node.cpus.iter().copied())
        .collect();
    covered.sort_unstable();
    let len = covered.len();
    covered.dedup();
    assert_eq!(covered.len(), len, "a CPU is in two nodes: {topology}");

    // hwloc reports the CPUs this process may use: all of them are online, and every CPU this
    // thread may run on belongs to a node.
    let online = online_cpus();
    assert!(covered.iter().all(|cpu| online.contains(cpu)), "{topology}");
    for cpu in current_thread_cpus() {
        assert!(
            covered.contains(&cpu),
            "CPU {cpu} is in no node: {topology}"
        );
        assert!(topology.node_of_cpu(cpu).is_some());
    }
    // Nothing restricts this test process here, so every online CPU is covered.
    if current_thread_cpus() == online {
        assert_eq!(covered, online, "{topology}");
    }

    for node in topology.nodes() {
        assert!(node.cpus.windows(2).all(|w| w[0] < w[1]), "{node:?}");
        assert_eq!(topology.node(node.id), Some(node));
        if node.cpus.is_empty() {
            assert!(topology.far_nodes().contains(&node.id));
        }
    }
    let text = topology.to_string();
    assert!(text.contains("detected by hwloc"), "{text}");
    for node in topology.nodes() {
        assert!(text.contains(&format!("node {}:", node.id)), "{text}");
    }
}

#[test]
fn pinning_to_node_zero_restricts_the_thread_to_its_cpus() {
    let topology = Topology::detect();
    let node0 = topology.node(0).expect("node 0 exists").cpus.clone();
    assert!(!node0.is_empty());
    let affinity = std::thread::spawn(move || {
        pin_current_thread(&topology, 0).map(|()| current_thread_cpus())
    })
    .join()
    .unwrap()
    .unwrap();
    assert_eq!(affinity, node0);
}

#[test]
fn pinning_on_a_simulated_topology_is_an_error() {
    let simulated = Topology::simulated(2, 4, 1, 1 << 30);
    let before = current_thread_cpus();
    for node in 0..3 {
        let err = pin_current_thread(&simulated, node).unwrap_err();
        assert!(
            matches!(err, NumaError::Simulated { node: n } if n == node),
            "{err:?}"
        );
        assert!(err.to_string().contains("simulated"), "{err}");
    }
    assert_eq!(
        current_thread_cpus(),
        before,
        "a refused pin changed the affinity"
    );
}

#[test]
fn pinning_to_a_missing_node_is_an_error() {
    let topology = Topology::detect();
    let err = pin_current_thread(&topology, 4096).unwrap_err();
    assert!(
        matches!(err, NumaError::NoSuchNode { node: 4096 }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "NUMA node 4096 does not exist on this machine"
    );
}

/// An anonymous private mapping, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn anonymous(len: usize) -> Mapping {
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing; it aliases
        // nothing, and the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(
            ptr,
            libc::MAP_FAILED,
            "mmap: {}",
            io::Error::last_os_error()
        );
        Mapping {
            ptr: ptr.cast(),
            len,
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` are exactly what mmap returned and was given, and nothing
        // borrows the mapping any more.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// `get_mempolicy(.., addr, flags)`: the policy mode of the page at `addr`, or with
/// `MPOL_F_NODE` the node it is on.
fn mempolicy_at(addr: *const u8, flags: libc::c_ulong) -> libc::c_int {
    let mut mode: libc::c_int = -1;
    // SAFETY: `mode` is a live c_int the kernel writes; no nodemask is asked for (null, 0);
    // `addr` is only looked up in this process's mappings.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &mut mode as *mut libc::c_int,
            std::ptr::null_mut::<libc::c_ulong>(),
            0 as libc::c_ulong,
            addr,
            flags,
        )
    };
    assert_eq!(rc, 0, "get_mempolicy: {}", io::Error::last_os_error());
    mode
}

fn page_size() -> usize {
    // SAFETY: sysconf reads no memory of ours.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap()
}

#[test]
fn binding_a_page_to_node_zero_sets_the_policy_and_places_it_there() {
    let page = page_size();
    let mapping = Mapping::anonymous(2 * page);
    bind_memory(mapping.ptr, 2 * page, 0).unwrap();
    assert_eq!(mempolicy_at(mapping.ptr, MPOL_F_ADDR), libc::MPOL_BIND);

    // SAFETY: the mapping is readable and writable, `2 * page` long, and only this test uses it.
    unsafe { mapping.ptr.write_volatile(42) };
    assert_eq!(mempolicy_at(mapping.ptr, MPOL_F_NODE | MPOL_F_ADDR), 0);
    // SAFETY: as above; the page was written just before.
    assert_eq!(unsafe { mapping.ptr.read_volatile() }, 42);
}

#[test]
fn binding_to_a_missing_node_is_an_error() {
    let page = page_size();
    let mapping = Mapping::anonymous(page);
    let err = bind_memory(mapping.ptr, page, 4096).unwrap_err();
    assert!(
        matches!(err, NumaError::NoSuchNode { node: 4096 }),
        "{err:?}"
    );
    // The refused bind left the default policy in place.
    assert_eq!(mempolicy_at(mapping.ptr, MPOL_F_ADDR), libc::MPOL_DEFAULT);
}

#[test]
fn binding_an_unaligned_pointer_is_an_error() {
    let page = page_size();
    let mapping = Mapping::anonymous(2 * page);
    let err = bind_memory(mapping.ptr.wrapping_add(1), page, 0).unwrap_err();
    match err {
        NumaError::Unaligned { ptr, page_size } => {
            assert_eq!(ptr, mapping.ptr as usize + 1);
            assert_eq!(page_size, page);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn binding_an_unmapped_range_is_a_kernel_error() {
    // An address in the kernel's half of x86-64 and aarch64 address spaces: page aligned and
    // never mapped for a process, unlike a range this test unmaps itself, which a test running
    // beside it could map again before the call.
    let unmapped = std::ptr::without_provenance::<u8>(0xffff_8880_0000_0000);
    let err = bind_memory(unmapped, page_size(), 0).unwrap_err();
    match err {
        NumaError::Os { op, ref source } => {
            assert_eq!(op, "mbind");
            assert!(
                matches!(source.raw_os_error(), Some(libc::EFAULT | libc::ENOMEM)),
                "{source}"
            );
            assert!(err.to_string().starts_with("mbind failed: "), "{err}");
        }
        other => panic!("{other:?}"),
    }
}
