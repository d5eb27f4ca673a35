//! Keys and values as YCSB makes them: record `i` has the key `user` + 16 hex digits of a
//! bijective 64-bit mix of `i`, so keys are distinct and hot records are scattered over the
//! key space and over the load order; the value of record `i` is a deterministic byte pattern
//! that a reader can check.

/// The splitmix64 finaliser: a bijection on u64.
#[inline]
pub fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Length of every key.
pub const KEY_LEN: usize = 20;

/// Write the key of record `i` into `out`.
#[inline]
pub fn key_into(i: u64, out: &mut [u8; KEY_LEN]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out[..4].copy_from_slice(b"user");
    let h = mix(i);
    for (j, b) in out[4..].iter_mut().enumerate() {
        *b = HEX[((h >> (60 - 4 * j)) & 0xf) as usize];
    }
}

/// The key of record `i`.
pub fn key(i: u64) -> [u8; KEY_LEN] {
    let mut k = [0u8; KEY_LEN];
    key_into(i, &mut k);
    k
}

/// Fill `out` with the value of record `i`, version `v`.
pub fn value_into(i: u64, v: u32, out: &mut Vec<u8>, len: usize) {
    out.clear();
    out.resize(len, 0);
    let seed = mix(i ^ (u64::from(v) << 40));
    let mut chunks = out.chunks_exact_mut(8);
    for (j, c) in (&mut chunks).enumerate() {
        c.copy_from_slice(
            &seed
                .wrapping_add(j as u64)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .to_le_bytes(),
        );
    }
    for (j, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b = (seed >> (j * 8)) as u8;
    }
}

/// Which record the `rank`-th most popular is: a bijection on `0..n` (multiplication by a
/// prime larger than any `n`, modulo `n`), so popularity does not follow load order.
#[inline]
pub fn scatter(rank: u64, n: u64) -> u64 {
    const P: u128 = (1 << 61) - 1;
    ((u128::from(rank) * P) % u128::from(n)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_distinct_and_scatter_is_a_bijection() {
        let n = 10_007u64;
        let mut seen = std::collections::HashSet::new();
        for r in 0..n {
            assert!(seen.insert(scatter(r, n)));
        }
        let keys: std::collections::HashSet<_> = (0..50_000).map(key).collect();
        assert_eq!(keys.len(), 50_000);
        assert_eq!(&key(0)[..4], b"user");
    }

    #[test]
    fn values_differ_by_record_and_version() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        value_into(1, 0, &mut a, 100);
        value_into(2, 0, &mut b, 100);
        assert_ne!(a, b);
        value_into(1, 1, &mut b, 100);
        assert_ne!(a, b);
        assert_eq!(a.len(), 100);
    }
}
