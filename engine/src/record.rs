//! The record format, the same in DRAM pages and far pages (demotion and compaction copy
//! records byte for byte, heat included).
//!
//! ```text
//! offset size field
//!      0    4 crc32c of bytes 8..8+key_len+value_len (little endian)
//!      4    1 heat: access counter, updated atomically by readers while in DRAM; not covered
//!             by the checksum and meaningless in the far tier
//!      5    1 magic 0xA5: a record starts here (anything else ends the page)
//!      6    1 flags: bit 0 = tombstone
//!      7    1 dead: set (under the partition lock) when a newer version or a delete
//!             supersedes the record while it is in DRAM; not covered by the checksum
//!      8    4 key length (u32 LE), at most MAX_KEY
//!     12    4 value length (u32 LE), 0 for a tombstone
//!     16    8 sequence number (u64 LE): the partition's write order, for recovery and revisions
//!     24      key bytes, then value bytes, then zero padding to a multiple of 8
//! ```
//!
//! Invariants: a record never spans pages; records in a page are packed from offset 0 and the
//! first byte position whose magic is not 0xA5 ends the page; a published record's bytes other
//! than `heat` and `dead` never change until its frame is reused (updates append a new record).

use std::sync::atomic::AtomicU8;

pub(crate) const HEADER: usize = 24;

pub(crate) use crate::index::prefetch_line;

pub(crate) const MAGIC: u8 = 0xA5;
pub(crate) const FLAG_TOMBSTONE: u8 = 1;
const OFF_HEAT: usize = 4;
const OFF_MAGIC: usize = 5;
const OFF_FLAGS: usize = 6;
const OFF_DEAD: usize = 7;
const OFF_KLEN: usize = 8;
const OFF_VLEN: usize = 12;
const OFF_SEQ: usize = 16;

/// Bytes a record with these lengths occupies in a page.
#[inline]
pub(crate) fn record_len(key_len: usize, value_len: usize) -> usize {
    (HEADER + key_len + value_len + 7) & !7
}

/// Write a record at the start of `dst`, which must hold `record_len(key, head + value)`
/// bytes. Its value is `head` followed by `value` (a keyspace's revisions and the user's
/// value, written in place without first joining them).
pub(crate) fn encode(
    dst: &mut [u8],
    key: &[u8],
    head: &[u8],
    value: &[u8],
    flags: u8,
    seq: u64,
    heat: u8,
) {
    let vlen = head.len() + value.len();
    let len = record_len(key.len(), vlen);
    let dst = &mut dst[..len];
    dst[OFF_HEAT] = heat;
    dst[OFF_MAGIC] = MAGIC;
    dst[OFF_FLAGS] = flags;
    dst[OFF_DEAD] = 0;
    dst[OFF_KLEN..OFF_KLEN + 4].copy_from_slice(&(key.len() as u32).to_le_bytes());
    dst[OFF_VLEN..OFF_VLEN + 4].copy_from_slice(&(vlen as u32).to_le_bytes());
    dst[OFF_SEQ..OFF_SEQ + 8].copy_from_slice(&seq.to_le_bytes());
    let k_end = HEADER + key.len();
    dst[HEADER..k_end].copy_from_slice(key);
    let h_end = k_end + head.len();
    dst[k_end..h_end].copy_from_slice(head);
    dst[h_end..h_end + value.len()].copy_from_slice(value);
    dst[k_end + vlen..].fill(0);
    let crc = crc32c::crc32c(&dst[8..k_end + vlen]);
    dst[..4].copy_from_slice(&crc.to_le_bytes());
}

/// Why bytes at an address are not a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bad {
    /// No record starts here (zeroed or foreign bytes).
    NoMagic,
    /// The lengths run past the end of the page.
    Overrun,
    /// The checksum does not match.
    Checksum,
}

impl std::fmt::Display for Bad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Bad::NoMagic => "no record header at that address",
            Bad::Overrun => "record lengths run past the end of its page",
            Bad::Checksum => "record checksum mismatch",
        })
    }
}

/// A record in a frame or a far mapping, read through a raw pointer because the heat byte may
/// be written by other threads while the rest is read.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordRef {
    ptr: *const u8,
    key_len: usize,
    value_len: usize,
    flags: u8,
}

impl RecordRef {
    /// Read the header at `ptr`; `room` is the number of bytes from `ptr` to the end of its page.
    ///
    /// # Safety
    /// `ptr..ptr+room` must be readable for as long as the returned value and the slices taken
    /// from it are used, and nothing may write to it then except through [`RecordRef::heat`].
    #[inline]
    pub(crate) unsafe fn parse(ptr: *const u8, room: usize) -> Result<RecordRef, Bad> {
        if room < HEADER {
            return Err(Bad::Overrun);
        }
        // SAFETY: the caller guarantees `room >= HEADER` readable bytes at `ptr`, and these
        // header bytes are never written while the record is published.
        let (magic, flags, klen, vlen) = unsafe {
            (
                *ptr.add(OFF_MAGIC),
                *ptr.add(OFF_FLAGS),
                u32::from_le_bytes(*ptr.add(OFF_KLEN).cast::<[u8; 4]>()) as usize,
                u32::from_le_bytes(*ptr.add(OFF_VLEN).cast::<[u8; 4]>()) as usize,
            )
        };
        if magic != MAGIC {
            return Err(Bad::NoMagic);
        }
        if HEADER + klen + vlen > room {
            return Err(Bad::Overrun);
        }
        Ok(RecordRef {
            ptr,
            key_len: klen,
            value_len: vlen,
            flags,
        })
    }

    /// Ask the CPU to start loading every cache line of the record after the first (which
    /// `parse` has already loaded), so that the reads that follow overlap their misses.
    #[inline]
    pub(crate) fn prefetch(&self) {
        #[cfg(target_arch = "x86_64")]
        {
            let len = HEADER + self.key_len + self.value_len;
            let mut at = 64 - (self.ptr as usize & 63);
            while at < len {
                // SAFETY: a prefetch never faults; the address is inside the record anyway.
                unsafe {
                    core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                        self.ptr.add(at).cast(),
                    );
                }
                at += 64;
            }
        }
    }

    /// Copy the whole record into `dst` (which must be `len()` bytes), reading the heat byte
    /// atomically: readers may be bumping it while a demotion copies the record.
    pub(crate) fn copy_to(&self, dst: &mut [u8]) {
        let len = self.len();
        // SAFETY: `parse` checked that the record's bytes lie within the readable range;
        // every byte but heat is immutable while the record is published.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr, dst.as_mut_ptr(), OFF_HEAT);
            std::ptr::copy_nonoverlapping(
                self.ptr.add(OFF_HEAT + 1),
                dst.as_mut_ptr().add(OFF_HEAT + 1),
                len - OFF_HEAT - 1,
            );
        }
        dst[OFF_HEAT] = self.heat().load(std::sync::atomic::Ordering::Relaxed);
    }

    /// Check the checksum (done on every far read; DRAM records were written by this process).
    pub(crate) fn verify(&self) -> Result<(), Bad> {
        // SAFETY: `parse` checked that the header and payload lie within the readable range.
        let (stored, body) = unsafe {
            (
                u32::from_le_bytes(*self.ptr.cast::<[u8; 4]>()),
                std::slice::from_raw_parts(self.ptr.add(8), 16 + self.key_len + self.value_len),
            )
        };
        if crc32c::crc32c(body) == stored {
            Ok(())
        } else {
            Err(Bad::Checksum)
        }
    }

    #[inline]
    pub(crate) fn key(&self) -> &[u8] {
        // SAFETY: `parse` checked bounds; key bytes are immutable while published.
        unsafe { std::slice::from_raw_parts(self.ptr.add(HEADER), self.key_len) }
    }

    #[inline]
    pub(crate) fn value(&self) -> &[u8] {
        // SAFETY: as for `key`.
        unsafe { std::slice::from_raw_parts(self.ptr.add(HEADER + self.key_len), self.value_len) }
    }

    #[inline]
    pub(crate) fn is_tombstone(&self) -> bool {
        self.flags & FLAG_TOMBSTONE != 0
    }

    #[inline]
    pub(crate) fn seq(&self) -> u64 {
        // SAFETY: within the header checked by `parse`.
        u64::from_le_bytes(unsafe { *self.ptr.add(OFF_SEQ).cast::<[u8; 8]>() })
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        record_len(self.key_len, self.value_len)
    }

    /// The superseded mark; only written while the record is in DRAM.
    #[inline]
    pub(crate) fn dead(&self) -> &AtomicU8 {
        // SAFETY: as for `heat`.
        unsafe { &*self.ptr.add(OFF_DEAD).cast::<AtomicU8>() }
    }

    /// The access counter; only meaningful (and only written) while the record is in DRAM.
    #[inline]
    pub(crate) fn heat(&self) -> &AtomicU8 {
        // SAFETY: the byte is inside the header checked by `parse`, every access to it goes
        // through this atomic view, and AtomicU8 has the size and alignment of u8.
        unsafe { &*self.ptr.add(OFF_HEAT).cast::<AtomicU8>() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checksum() {
        let mut buf = vec![0u8; 128];
        encode(&mut buf, b"key", b"val", b"ue!", 0, 42, 0);
        // SAFETY: buf outlives r and is not written while r is used.
        let r = unsafe { RecordRef::parse(buf.as_ptr(), buf.len()) }.unwrap();
        assert_eq!(r.key(), b"key");
        assert_eq!(r.value(), b"value!");
        assert_eq!(r.seq(), 42);
        assert!(!r.is_tombstone());
        assert_eq!(r.len(), 40);
        r.verify().unwrap();
        buf[HEADER + 4] ^= 1;
        // SAFETY: as above.
        let r = unsafe { RecordRef::parse(buf.as_ptr(), buf.len()) }.unwrap();
        assert_eq!(r.verify(), Err(Bad::Checksum));
    }

    #[test]
    fn zeroes_and_overruns_are_not_records() {
        let buf = [0u8; 64];
        // SAFETY: buf is live and unshared.
        let zero = unsafe { RecordRef::parse(buf.as_ptr(), 64) };
        assert_eq!(zero.unwrap_err(), Bad::NoMagic);
        let mut buf = [0u8; 64];
        encode(&mut buf, b"k", &[], &[7u8; 30], FLAG_TOMBSTONE, 1, 0);
        // SAFETY: buf is live and unshared.
        let short = unsafe { RecordRef::parse(buf.as_ptr(), 40) };
        assert_eq!(short.unwrap_err(), Bad::Overrun);
    }

    #[test]
    fn heat_is_outside_the_checksum() {
        let mut buf = vec![0u8; 64];
        encode(&mut buf, b"k", &[], b"v", 0, 1, 0);
        // SAFETY: buf is live and only written through the atomic heat view, which is derived
        // from a mutable pointer.
        let r = unsafe { RecordRef::parse(buf.as_mut_ptr().cast_const(), 64) }.unwrap();
        r.heat().store(3, std::sync::atomic::Ordering::Relaxed);
        r.verify().unwrap();
    }
}
