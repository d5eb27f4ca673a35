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

/// Eight bytes, little-endian.
#[inline]
fn read8(b: &[u8; 8]) -> u64 {
    u64::from_le_bytes(*b)
}

/// The last `n` (at most 8) bytes of `key`, little-endian, zero above: what copying them into
/// a zeroed `[u8; 8]` gives. A key of 8 bytes or more gives them by one 8-byte load of its
/// last 8 bytes, shifted (a copy of a length known only at run time is a call to `memcpy`,
/// which was a tenth of a 100-entry listing's time in the engine); shorter keys go byte by
/// byte.
#[inline]
fn read_last(key: &[u8], n: usize) -> u64 {
    debug_assert!(n <= 8 && n <= key.len());
    if n == 0 {
        0
    } else if let Some(last) = key.last_chunk::<8>() {
        read8(last) >> (8 * (8 - n))
    } else {
        key[key.len() - n..]
            .iter()
            .rev()
            .fold(0, |w, &b| (w << 8) | u64::from(b))
    }
}

/// Hash a key.
#[inline]
pub fn hash_key(key: &[u8]) -> u64 {
    let mut h = P0 ^ (key.len() as u64).wrapping_mul(P1);
    let mut chunks = key.chunks_exact(16);
    for c in &mut chunks {
        let (a, b) = c.split_at(8);
        let a = read8(a.try_into().expect("8 bytes"));
        let b = read8(b.try_into().expect("8 bytes"));
        h = fold(a ^ P1, b ^ h);
    }
    let rest = chunks.remainder();
    let (a, b) = if rest.len() > 8 {
        let a = read8(rest[..8].try_into().expect("8 bytes"));
        (a, read_last(key, rest.len() - 8))
    } else {
        (read_last(key, rest.len()), 0)
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

    /// The hash as first written (each tail copied into a zeroed `[u8; 8]`): placement must
    /// not change with how the function is written.
    fn first_version(key: &[u8]) -> u64 {
        fn read8(b: &[u8]) -> u64 {
            let mut w = [0u8; 8];
            w[..b.len()].copy_from_slice(b);
            u64::from_le_bytes(w)
        }
        let mut h = P0 ^ (key.len() as u64).wrapping_mul(P1);
        let mut chunks = key.chunks_exact(16);
        for c in &mut chunks {
            h = fold(read8(&c[..8]) ^ P1, read8(&c[8..]) ^ h);
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

    #[test]
    fn every_length_hashes_as_the_first_version_did() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let bytes: Vec<u8> = (0..300)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for len in 0..=200 {
            for start in [0, 1, 7, 64] {
                let k = &bytes[start..start + len];
                assert_eq!(hash_key(k), first_version(k), "length {len} at {start}");
            }
        }
        // And fixed values, so that a change to both versions shows too.
        for (k, h) in [
            (&b""[..], 0x466b_cae6_8eb2_139c),
            (b"a", 0x75ef_dbf9_de95_7e03),
            (b"abcdefgh", 0x0e7a_dc9c_cbec_7cae),
            (b"abcdefghi", 0x2ff6_704f_3951_ad0e),
            (b"0123456789abcdef", 0x1d62_c547_7b3b_c29d),
            (b"0123456789abcdefg", 0xd1d9_6c40_574e_46a6),
            (b"0123456789abcdef01234567", 0x6460_adc1_f7f1_ef15),
            (b"0123456789abcdef012345678", 0x762a_01e2_68d3_f4d0),
            (b"the quick brown fox jumps over", 0xb828_07ef_f131_ac92),
        ] {
            assert_eq!(hash_key(k), h, "{:?}", std::str::from_utf8(k));
        }
    }

    #[test]
    fn length_is_part_of_the_hash() {
        assert_ne!(hash_key(b""), hash_key(b"\0"));
        assert_ne!(hash_key(b"a"), hash_key(b"a\0"));
        assert_ne!(hash_key(&[0u8; 16]), hash_key(&[0u8; 17]));
    }
}
