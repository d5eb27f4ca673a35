//! Linux memory cgroups for `tierbench --memory-limit`: each engine runs in a child process
//! inside a memory cgroup of its own, so that its heap, its caches and the page cache of
//! its files all count against the same limit.
//!
//! Both hierarchies are handled: cgroup v2 (`memory.max`, `memory.peak`) when the unified
//! hierarchy has the memory controller, otherwise v1 (`memory.limit_in_bytes`,
//! `memory.max_usage_in_bytes`). On v1 the group is made under the cgroup this process is
//! in; on v2 under the hierarchy's root, since v2 lets no group with processes in it (such
//! as this process's own) hand the memory controller to its children, and the root is the
//! one group exempt from that rule. A v2 peak reset holds only for reads through the file descriptor it was written to, so
//! the group keeps that descriptor and reads the peak through it.
//! Where neither can be made (not root, no controller, a v2 parent that cannot delegate),
//! [`Hierarchy::detect`] or [`Group::create`] says why, and the caller skips the mode.

use parking_lot::Mutex;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Which cgroup hierarchy holds the memory controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    pub fn name(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }
}

/// Where memory groups can be made.
#[derive(Debug, Clone)]
pub struct Hierarchy {
    pub version: Version,
    /// The directory the groups are made in: v1, this process's own memory cgroup; v2, the
    /// hierarchy's root (see the module's note).
    pub parent: PathBuf,
}

/// This process's path in a hierarchy, from a /proc/self/cgroup text: the v2 line
/// (`0::/path`) or the v1 line whose controller list holds `memory`.
fn own_path(proc_cgroup: &str, version: Version) -> Option<String> {
    proc_cgroup.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctrl, path) = (f.next()?, f.next()?, f.next()?);
        let hit = match version {
            Version::V2 => ctrl.is_empty(),
            Version::V1 => ctrl.split(',').any(|c| c == "memory"),
        };
        hit.then(|| path.to_string())
    })
}

impl Hierarchy {
    /// Find the memory controller under `root` (normally /sys/fs/cgroup).
    pub fn detect_at(root: &Path, proc_cgroup: &str) -> Result<Hierarchy, String> {
        let v2_root = if root.join("cgroup.controllers").exists() {
            Some(root.to_path_buf())
        } else if root.join("unified/cgroup.controllers").exists() {
            Some(root.join("unified"))
        } else {
            None
        };
        if let Some(v2) = &v2_root {
            let controllers =
                std::fs::read_to_string(v2.join("cgroup.controllers")).unwrap_or_default();
            if controllers.split_whitespace().any(|c| c == "memory") {
                return Ok(Hierarchy {
                    version: Version::V2,
                    parent: v2.clone(),
                });
            }
        }
        let v1 = root.join("memory");
        if v1.join("memory.limit_in_bytes").exists() {
            let own = own_path(proc_cgroup, Version::V1).unwrap_or_else(|| "/".into());
            return Ok(Hierarchy {
                version: Version::V1,
                parent: v1.join(own.trim_start_matches('/')),
            });
        }
        Err(format!(
            "no cgroup memory controller under {} (neither v2 with `memory` in \
             cgroup.controllers nor a v1 memory hierarchy)",
            root.display()
        ))
    }

    /// Find the memory controller of this machine (under `TIERBENCH_CGROUP_ROOT` if set,
    /// which tests use to stand for a machine without one).
    pub fn detect() -> Result<Hierarchy, String> {
        let proc = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let root = std::env::var_os("TIERBENCH_CGROUP_ROOT")
            .map_or_else(|| PathBuf::from("/sys/fs/cgroup"), PathBuf::from);
        Hierarchy::detect_at(&root, &proc)
    }
}

/// The name of the file system `path` is on (or would be, for a path not made yet: its
/// nearest existing ancestor's) if that file system keeps its files in memory (tmpfs,
/// ramfs): a far tier there would be charged to a memory cgroup as memory, not read from a
/// device. `None` for any other file system, or if no ancestor can be examined.
pub fn memory_backed_fs(path: &Path) -> Option<&'static str> {
    use std::os::unix::ffi::OsStrExt;
    const TMPFS_MAGIC: u32 = 0x0102_1994;
    const RAMFS_MAGIC: u32 = 0x8584_58f6;
    let path = path.ancestors().find(|p| p.exists())?;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `st` is a writable `statfs` the call fills
    // in full when it returns 0; it is read only then.
    let st = unsafe {
        if libc::statfs(c.as_ptr(), st.as_mut_ptr()) != 0 {
            return None;
        }
        st.assume_init()
    };
    // f_type's width and sign differ between targets; the magic numbers are 32 bits.
    match st.f_type as u32 {
        TMPFS_MAGIC => Some("tmpfs"),
        RAMFS_MAGIC => Some("ramfs"),
        _ => None,
    }
}

/// One memory cgroup. Removed when dropped (once its processes have exited).
#[derive(Debug)]
pub struct Group {
    pub version: Version,
    pub path: PathBuf,
    /// v2: `memory.peak` opened for reading and writing by the last [`Group::reset_peak`],
    /// whose reset holds for reads through this descriptor only.
    peak_file: Mutex<Option<File>>,
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("writing {value:?} to {}: {e}", path.display()))
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl Group {
    /// Make the group `name` under the hierarchy's parent, with no limit yet.
    pub fn create(h: &Hierarchy, name: &str) -> Result<Group, String> {
        if h.version == Version::V2 {
            // Children get the memory controller only if the parent delegates it.
            let sub = h.parent.join("cgroup.subtree_control");
            let on = std::fs::read_to_string(&sub).unwrap_or_default();
            if !on.split_whitespace().any(|c| c == "memory") {
                write(&sub, "+memory").map_err(|e| {
                    format!(
                        "{e} (in cgroup v2 only the root, or a group with no processes in \
                         it, can give its children the memory controller: inside a container \
                         with a cgroup namespace, {} is not the machine's root; run tierbench \
                         on the host, or as root where the hierarchy's root is the machine's)",
                        h.parent.display()
                    )
                })?;
            }
        }
        let path = h.parent.join(name);
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(format!(
                    "cannot make the cgroup {}: {e} (memory-bounded runs need root)",
                    path.display()
                ))
            }
        }
        Ok(Group {
            version: h.version,
            path,
            peak_file: Mutex::new(None),
        })
    }

    /// Remove the groups earlier tierbench runs left under the hierarchy's parent: those named
    /// `tierbench-<pid>-...` whose process is gone (a parent killed with SIGKILL never runs
    /// its cleanup) and that hold no process. Returns how many it removed. Best effort.
    pub fn remove_stale(h: &Hierarchy) -> usize {
        let Ok(dir) = std::fs::read_dir(&h.parent) else {
            return 0;
        };
        let mut removed = 0;
        for e in dir.flatten() {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix("tierbench-"))
                .and_then(|n| n.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let alive = Path::new("/proc").join(pid.to_string()).exists();
            let busy = std::fs::read_to_string(e.path().join("cgroup.procs"))
                .map(|p| !p.trim().is_empty())
                .unwrap_or(false);
            if !alive && !busy && std::fs::remove_dir(e.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Open an existing group (in the child process).
    pub fn open(version: Version, path: PathBuf) -> Group {
        Group {
            version,
            path,
            peak_file: Mutex::new(None),
        }
    }

    /// Move the calling process into the group.
    pub fn join(&self) -> Result<(), String> {
        write(
            &self.path.join("cgroup.procs"),
            &std::process::id().to_string(),
        )
    }

    /// Limit the group's memory (heap, page cache and kernel memory charged to it) to
    /// `bytes`, with no swap. Lowering the limit below the current use makes the kernel
    /// reclaim page cache first; it fails if the rest cannot be reclaimed.
    pub fn set_limit(&self, bytes: u64) -> Result<(), String> {
        match self.version {
            Version::V1 => {
                let mem = self.path.join("memory.limit_in_bytes");
                let memsw = self.path.join("memory.memsw.limit_in_bytes");
                // memsw must stay >= the plain limit: lower the plain one first.
                let mut last = Err(String::new());
                for _ in 0..10 {
                    last = write(&mem, &bytes.to_string());
                    if last.is_ok() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                last?;
                if memsw.exists() {
                    write(&memsw, &bytes.to_string())?;
                }
                Ok(())
            }
            Version::V2 => {
                write(&self.path.join("memory.max"), &bytes.to_string())?;
                let swap = self.path.join("memory.swap.max");
                if swap.exists() {
                    write(&swap, "0")?;
                }
                Ok(())
            }
        }
    }

    /// Current use, in bytes.
    pub fn usage(&self) -> Option<u64> {
        match self.version {
            Version::V1 => read_u64(&self.path.join("memory.usage_in_bytes")),
            Version::V2 => read_u64(&self.path.join("memory.current")),
        }
    }

    /// Highest use since creation or the last [`Group::reset_peak`] (v2 needs Linux 5.19; on
    /// v2 a reset counts only through the descriptor it was written to, so after one the peak
    /// is read again through that descriptor).
    pub fn peak(&self) -> Option<u64> {
        match self.version {
            Version::V1 => read_u64(&self.path.join("memory.max_usage_in_bytes")),
            Version::V2 => {
                let mut kept = self.peak_file.lock();
                match kept.as_mut() {
                    Some(f) => {
                        let mut s = String::new();
                        f.seek(SeekFrom::Start(0)).ok()?;
                        f.read_to_string(&mut s).ok()?;
                        s.trim().parse().ok()
                    }
                    None => read_u64(&self.path.join("memory.peak")),
                }
            }
        }
    }

    /// Start the peak over (v1; v2 from Linux 6.12). Best effort. On v2 the reset is written
    /// to a descriptor of `memory.peak` opened for reading and writing, which the group keeps
    /// for [`Group::peak`]: the kernel applies a v2 reset to reads through that descriptor
    /// only (a reset through a descriptor then closed is lost).
    pub fn reset_peak(&self) {
        match self.version {
            Version::V1 => {
                let _ = std::fs::write(self.path.join("memory.max_usage_in_bytes"), "0");
            }
            Version::V2 => {
                let opened = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(self.path.join("memory.peak"))
                    .and_then(|mut f| {
                        f.write_all(b"0")?;
                        Ok(f)
                    });
                // Without a reset (a kernel before 6.12) the peak is the one since creation,
                // read by path as before.
                *self.peak_file.lock() = opened.ok();
            }
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_PROC: &str = "9:name=systemd:/\n4:memory:/process_api/abc\n1:cpu:/\n0::/\n";

    #[test]
    fn finds_own_path_per_hierarchy() {
        assert_eq!(
            own_path(V1_PROC, Version::V1).as_deref(),
            Some("/process_api/abc")
        );
        assert_eq!(own_path(V1_PROC, Version::V2).as_deref(), Some("/"));
        assert_eq!(
            own_path("5:cpuacct,memory:/x\n", Version::V1).as_deref(),
            Some("/x")
        );
        assert_eq!(own_path("1:cpu:/\n", Version::V1), None);
    }

    #[test]
    fn removes_only_groups_of_dead_tierbench_processes() {
        let d = tempfile::tempdir().unwrap();
        let h = Hierarchy {
            version: Version::V1,
            parent: d.path().to_path_buf(),
        };
        let me = std::process::id();
        // 999999999 is above any pid_max, so no such process exists.
        for n in [
            "tierbench-999999999-tera".to_string(),
            format!("tierbench-{me}-lmdb"),
            "tierbench-999999999-busy".into(),
            "other".into(),
        ] {
            std::fs::create_dir(d.path().join(n)).unwrap();
        }
        std::fs::write(
            d.path().join("tierbench-999999999-busy/cgroup.procs"),
            "42\n",
        )
        .unwrap();
        assert_eq!(Group::remove_stale(&h), 1);
        assert!(!d.path().join("tierbench-999999999-tera").exists());
        assert!(
            d.path().join(format!("tierbench-{me}-lmdb")).exists(),
            "a live run's group"
        );
        assert!(
            d.path().join("tierbench-999999999-busy").exists(),
            "a group with processes"
        );
        assert!(d.path().join("other").exists());
    }

    /// tmpfs is told from a disk's file system, as /proc/mounts names them.
    #[test]
    fn a_memory_backed_file_system_is_recognised() {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let fstype = |dir: &str| {
            mounts.lines().rev().find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() > 2 && f[1] == dir).then(|| f[2].to_string())
            })
        };
        for dir in ["/dev/shm", "/"] {
            let Some(t) = fstype(dir) else { continue };
            let want = matches!(t.as_str(), "tmpfs" | "ramfs").then_some(t.as_str());
            assert_eq!(memory_backed_fs(Path::new(dir)), want, "{dir} is {t}");
        }
        // A directory not made yet is judged by where it would be made.
        if fstype("/dev/shm").as_deref() == Some("tmpfs") {
            assert_eq!(
                memory_backed_fs(Path::new("/dev/shm/not/made/yet")),
                Some("tmpfs")
            );
        }
    }

    #[test]
    fn detects_v1_and_v2_layouts() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        // Nothing: a clear error.
        let e = Hierarchy::detect_at(root, V1_PROC).unwrap_err();
        assert!(e.contains("no cgroup memory controller"), "{e}");
        // v1 with a unified hierarchy that has no memory controller.
        std::fs::create_dir_all(root.join("memory")).unwrap();
        std::fs::write(
            root.join("memory/memory.limit_in_bytes"),
            "9223372036854771712",
        )
        .unwrap();
        std::fs::create_dir_all(root.join("unified")).unwrap();
        std::fs::write(root.join("unified/cgroup.controllers"), "").unwrap();
        let h = Hierarchy::detect_at(root, V1_PROC).unwrap();
        assert_eq!(h.version, Version::V1);
        assert_eq!(h.parent, root.join("memory/process_api/abc"));
        // v2 with the memory controller wins, and its groups are made at the root: the
        // process's own group holds a process, so v2 would not let it delegate memory.
        std::fs::write(root.join("cgroup.controllers"), "cpu io memory pids").unwrap();
        let h = Hierarchy::detect_at(root, "0::/user.slice/x\n").unwrap();
        assert_eq!(h.version, Version::V2);
        assert_eq!(h.parent, root);
    }

    #[test]
    fn v1_group_files_are_written_and_read() {
        // A fake v1 group directory: the limit goes where the kernel reads it.
        let d = tempfile::tempdir().unwrap();
        let h = Hierarchy {
            version: Version::V1,
            parent: d.path().to_path_buf(),
        };
        let g = Group::create(&h, "tb").unwrap();
        g.set_limit(123 << 20).unwrap();
        assert_eq!(
            std::fs::read_to_string(g.path.join("memory.limit_in_bytes")).unwrap(),
            (123u64 << 20).to_string()
        );
        std::fs::write(g.path.join("memory.max_usage_in_bytes"), "4096").unwrap();
        assert_eq!(g.peak(), Some(4096));
        assert_eq!(g.usage(), None);
        // v1 resets by writing 0 where the peak is read.
        g.reset_peak();
        assert_eq!(g.peak(), Some(0));
    }

    #[test]
    fn v2_peak_is_read_through_the_descriptor_of_its_reset() {
        // A fake v2 group: a plain file stands for memory.peak. The kernel's file keeps a
        // reset per descriptor, which a plain file cannot show; what this checks is that the
        // reset is written, its descriptor kept, and every read after it goes from the start
        // of that descriptor (a second read without a seek would see nothing).
        let d = tempfile::tempdir().unwrap();
        let g = Group::open(Version::V2, d.path().to_path_buf());
        let peak = d.path().join("memory.peak");
        std::fs::write(&peak, "").unwrap();
        assert_eq!(g.peak(), None, "empty: no figure");
        g.reset_peak();
        assert!(
            g.peak_file.lock().is_some(),
            "the reset's descriptor is kept"
        );
        assert_eq!(std::fs::read_to_string(&peak).unwrap(), "0");
        assert_eq!(g.peak(), Some(0));
        std::fs::write(&peak, "8192").unwrap();
        assert_eq!(g.peak(), Some(8192));
        assert_eq!(g.peak(), Some(8192), "read again from the start");
        // No memory.peak (a kernel before 5.19): no descriptor, no figure.
        std::fs::remove_file(&peak).unwrap();
        g.reset_peak();
        assert!(g.peak_file.lock().is_none());
        assert_eq!(g.peak(), None);
    }
}
