//! The key hash. One 64-bit hash per key serves three purposes, each from its own bits so they
//! stay independent: bits 0..32 pick the index bucket, bits 32..48 the partition, and bits
//! 48..64 are the tag stored beside the address in the index.
//!
//! The function is a folded-multiply hash in the style of wyhash, written here so that the
//! engine's placement does not change when a dependency updates its algorithm.

const P0: u64 = 0xa076_1d64_78bd_642f;
const P1: u64 = 0xe703_7ed1_a0b4_28db;
const P2: u64 = 0x8ebc_6af0_9c88_c6e3;

#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let r = u128::from(a).wrapping_mul(u128::from(b));
    (r as u64) ^ ((r >> 64) as u64)
}

#[inline]
fn read8(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w[..b.len()].copy_from_slice(b);
    u64::from_le_bytes(w)
}

/// Hash a key.
#[inline]
pub fn hash_key(key: &[u8]) -> u64 {
    let mut h = P0 ^ (key.len() as u64).wrapping_mul(P1);
    let mut chunks = key.chunks_exact(16);
    for c in &mut chunks {
        let a = read8(&c[..8]);
        let b = read8(&c[8..]);
        h = fold(a ^ P1, b ^ h);
    }
    let rest = chunks.remainder();
    let (a, b) = if rest.len() > 8 {
        (read8(&rest[..8]), read8(&rest[8..]))
    } else {
        (read8(rest), 0)
    };
    h = fold(a ^ P2 ^ h, b ^ P1);
    fold(h ^ P0, h ^ P2)
}

/// The tag kept in the index beside the address: the top 16 bits, never zero (zero marks an
/// empty slot's tag).
#[inline]
pub(crate) fn tag_of(hash: u64) -> u16 {
    ((hash >> 48) as u16).max(1)
}

/// Which of `n` partitions a hash belongs to.
#[inline]
pub(crate) fn partition_of(hash: u64, n: usize) -> usize {
    ((((hash >> 32) & 0xffff) * n as u64) >> 16) as usize
}

/// Which of `n` index buckets a hash belongs to.
#[inline]
pub(crate) fn bucket_of(hash: u64, n: usize) -> usize {
    (((hash & 0xffff_ffff) * n as u64) >> 32) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_sequential_keys_over_partitions_and_buckets() {
        let mut parts = [0u32; 8];
        let mut buckets = vec![0u32; 1000];
        for i in 0..80_000u64 {
            let h = hash_key(&i.to_be_bytes());
            parts[partition_of(h, 8)] += 1;
            buckets[bucket_of(h, 1000)] += 1;
        }
        for p in parts {
            assert!(
                (9_000..11_000).contains(&p),
                "partition share {p} of 80000 over 8"
            );
        }
        let max = *buckets.iter().max().unwrap();
        let min = *buckets.iter().min().unwrap();
        assert!(min > 40 && max < 130, "bucket spread {min}..{max}, mean 80");
    }

    #[test]
    fn length_is_part_of_the_hash() {
        assert_ne!(hash_key(b""), hash_key(b"\0"));
        assert_ne!(hash_key(b"a"), hash_key(b"a\0"));
        assert_ne!(hash_key(&[0u8; 16]), hash_key(&[0u8; 17]));
    }
}
