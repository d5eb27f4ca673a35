//! The far tier: the far log's pages, appended sequentially to segment files under the far
//! directory and read in place through read-only shared mappings.
//!
//! A partition's far log address space is cut into segments of `segment_bytes`; segment `s`
//! of partition `p` is the file `p{p:03}-{s:010}.seg`, created at full length (sparse) when the
//! far log first writes into it, and removed when compaction has moved its live records away.
//! Files are written through the [`Storage`] seam (plain `pwrite` by default) so that tests can
//! fail I/O without any `cfg` in the engine.
//!
//! A reader finds a segment through [`SegTable`], an array of pointers swapped whole when it
//! grows; both tables and segments are retired through the epoch (see `epoch.rs`).

use crate::error::{Error, Result};
use crate::sync::AtomicPtr;
use memmap2::Mmap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

/// All file I/O that changes files goes through this trait: far-tier segments, the write-ahead
/// log and checkpoints. It is the one seam for fault injection: a test wraps [`OsStorage`]
/// and fails the Nth write or sync, cuts a write short, or returns `ENOSPC`.
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// Create (or truncate) a segment file of `len` bytes, readable and writable.
    fn create(&self, path: &Path, len: u64) -> std::io::Result<File> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        f.set_len(len)?;
        Ok(f)
    }
    /// Write all of `buf` at `offset`.
    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> std::io::Result<()> {
        file.write_all_at(buf, offset)
    }
    /// Remove a file.
    fn remove(&self, path: &Path) -> std::io::Result<()> {
        std::fs::remove_file(path)
    }
    /// Open a file for reading and writing, creating it empty if missing, keeping its bytes.
    fn open(&self, path: &Path) -> std::io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
    }
    /// Make a file's data durable (`fdatasync`).
    fn sync(&self, file: &File) -> std::io::Result<()> {
        file.sync_data()
    }
    /// Cut or extend a file to `len` bytes.
    fn set_len(&self, file: &File, len: u64) -> std::io::Result<()> {
        file.set_len(len)
    }
    /// Rename a file (atomically, within one directory).
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        std::fs::rename(from, to)
    }
    /// Make a directory's entries (created, renamed and removed files) durable.
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        File::open(dir)?.sync_all()
    }
    /// Bytes an unprivileged writer can still write to the file system holding `dir`
    /// (`statvfs`: available blocks times the fragment size).
    fn available_bytes(&self, dir: &Path) -> std::io::Result<u64> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        // SAFETY: an all-zero `statvfs` is a valid value of the plain C struct, which the
        // call overwrites.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a NUL-terminated path that outlives the call, and `st` a valid,
        // writable `statvfs`.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // Both are u64 on the 64-bit targets, narrower on some others.
        #[allow(clippy::useless_conversion)]
        Ok(u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize)))
    }
}

/// The operating system's files, unchanged.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsStorage;
impl Storage for OsStorage {}

/// One far segment file and its mapping.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) path: PathBuf,
    file: File,
    map: Mmap,
}

impl Segment {
    pub(crate) fn create(storage: &dyn Storage, path: PathBuf, len: usize) -> Result<Segment> {
        let io = |op, source| Error::Io {
            op,
            path: path.clone(),
            source,
        };
        let file = storage
            .create(&path, len as u64)
            .map_err(|e| io("create", e))?;
        // SAFETY: the engine owns the file; if someone truncates it anyway, loads past the end
        // are caught by `sigbus::guarded` and reported as corruption, not undefined values.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| io("mmap", e))?;
        // A far read is a point read of one record. Left to itself, the kernel reads around
        // every fault (`read_ahead_kb`: 8 MiB on this project's virtio disk), so one record
        // read from disk costs megabytes and, where the page cache is bounded, evicts the
        // pages other reads need. The advice is a hint: failing to give it loses nothing.
        let _ = map.advise(memmap2::Advice::Random);
        Ok(Segment { path, file, map })
    }

    /// Ask the kernel to read `len` bytes at `offset` in now, in one go: for compaction,
    /// which reads a whole page of records where reads fault in one 4 KiB page at a time.
    pub(crate) fn will_need(&self, offset: usize, len: usize) {
        let _ = self
            .map
            .advise_range(memmap2::Advice::WillNeed, offset, len);
    }

    pub(crate) fn write(&self, storage: &dyn Storage, buf: &[u8], offset: usize) -> Result<()> {
        storage
            .write_at(&self.file, buf, offset as u64)
            .map_err(|source| Error::Io {
                op: "write",
                path: self.path.clone(),
                source,
            })
    }

    /// Why a read at `offset` found `what` instead of a record: if the file is now shorter
    /// than that, it was truncated under us (and the mapping reads zeros there).
    pub(crate) fn damage(&self, offset: usize, what: &str) -> String {
        match self.file.metadata() {
            Ok(m) if m.len() <= offset as u64 => format!(
                "the file is {} bytes, shorter than what was written to it (truncated?)",
                m.len()
            ),
            _ => what.to_string(),
        }
    }

    pub(crate) fn base(&self) -> *const u8 {
        self.map.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// Segment pointers by segment number, from `first` on.
pub(crate) struct SegTable {
    first: u64,
    slots: Box<[AtomicPtr<Segment>]>,
}

impl std::fmt::Debug for SegTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegTable")
            .field("first", &self.first)
            .field("len", &self.slots.len())
            .finish()
    }
}

impl SegTable {
    pub(crate) fn new(first: u64, len: usize) -> Box<SegTable> {
        Box::new(SegTable {
            first,
            slots: (0..len.max(1))
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect(),
        })
    }

    /// The segment, if mapped. The reference lives as long as the caller is pinned or holds
    /// the partition lock (segments are retired through the epoch).
    #[inline]
    pub(crate) fn get(&self, seg: u64) -> Option<&Segment> {
        let i = seg.checked_sub(self.first)? as usize;
        let p = self.slots.get(i)?.load(Acquire);
        // SAFETY: non-null slots hold pointers from Box::into_raw, freed only after being
        // cleared and retired past every pinned reader.
        (!p.is_null()).then(|| unsafe { &*p })
    }

    pub(crate) fn covers(&self, seg: u64) -> bool {
        seg >= self.first && ((seg - self.first) as usize) < self.slots.len()
    }

    /// Store a segment; `covers(seg)` must hold. The table takes ownership.
    pub(crate) fn set(&self, seg: u64, s: Box<Segment>) {
        let i = (seg - self.first) as usize;
        self.slots[i].store(Box::into_raw(s), Release);
    }

    /// Clear a segment's slot and hand back ownership (to retire it).
    pub(crate) fn take(&self, seg: u64) -> Option<Box<Segment>> {
        let i = seg.checked_sub(self.first)? as usize;
        let p = self.slots.get(i)?.swap(std::ptr::null_mut(), Relaxed);
        // SAFETY: the pointer came from Box::into_raw in `set` and is no longer reachable.
        (!p.is_null()).then(|| unsafe { Box::from_raw(p) })
    }

    /// A larger table holding the same segments (ownership moves to it; this one must then be
    /// retired without freeing segments, which its Drop does not do).
    pub(crate) fn grown(&self, first: u64, len: usize) -> Box<SegTable> {
        let t = SegTable::new(first, len);
        for (i, s) in self.slots.iter().enumerate() {
            let p = s.load(Relaxed);
            if !p.is_null() {
                let seg = self.first + i as u64;
                t.slots[(seg - first) as usize].store(p, Relaxed);
            }
        }
        t
    }

    /// The lowest segment number present.
    pub(crate) fn min_present(&self) -> Option<u64> {
        self.slots
            .iter()
            .position(|s| !s.load(Relaxed).is_null())
            .map(|i| self.first + i as u64)
    }

    /// Drop every segment still in the table (at close).
    pub(crate) fn drain(&self) -> Vec<Segment> {
        (0..self.slots.len())
            .filter_map(|i| self.take(self.first + i as u64))
            .map(|b| *b)
            .collect()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<usize>()
    }
}

/// The file name of a segment.
pub(crate) fn segment_path(dir: &Path, partition: usize, seg: u64) -> PathBuf {
    dir.join(format!("p{partition:03}-{seg:010}.seg"))
}

/// True for names the engine creates in the far directory ([`segment_path`]): `p` + the
/// partition in 3 to 5 digits (partitions go up to 65,536) + `-` + 10 digits + `.seg`.
pub(crate) fn is_segment_name(name: &str) -> bool {
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let Some(stem) = name.strip_prefix('p').and_then(|n| n.strip_suffix(".seg")) else {
        return false;
    };
    match stem.split_once('-') {
        Some((p, seg)) => (3..=5).contains(&p.len()) && digits(p) && seg.len() == 10 && digits(seg),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every partition's segment names are recognised (at open, stale segments of a crashed
    /// run are found by name), and nothing else is.
    #[test]
    fn segment_names_of_every_partition_are_recognised() {
        let dir = Path::new("/far");
        for p in [0, 7, 999, 1000, 12_345, 65_535] {
            for seg in [0, 1, 9_999_999_999] {
                let path = segment_path(dir, p, seg);
                let name = path.file_name().unwrap().to_str().unwrap();
                assert!(is_segment_name(name), "{name}");
            }
        }
        for other in [
            "p12-0000000001.seg",
            "p123456-0000000001.seg",
            "p001-000000001.seg",
            "p001-0000000001.se",
            "q001-0000000001.seg",
            "p0a1-0000000001.seg",
            "p001_0000000001.seg",
            "p001-0000000001.seg.tmp",
            "LOCK",
            "",
        ] {
            assert!(!is_segment_name(other), "{other}");
        }
    }

    #[test]
    fn available_bytes_reads_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let free = OsStorage.available_bytes(dir.path()).unwrap();
        assert!(
            free > 0,
            "a file system with room for a temporary directory"
        );
        // The same file system, give or take what others wrote meanwhile.
        let again = OsStorage.available_bytes(dir.path()).unwrap();
        assert!(free.abs_diff(again) < 1 << 30, "{free} then {again}");
        let e = OsStorage
            .available_bytes(&dir.path().join("missing"))
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }
}
