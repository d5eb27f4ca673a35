#!/usr/bin/env python3
"""Hit-ratio bounds for a cache of N records under Zipf reads (issue 6's analysis).

For each capacity: the best any cache can do (holding the N hottest keys), and LRU's hit
ratio by Che's approximation (find T with sum(1 - exp(-p_i T)) = N; the hit ratio is
sum(p_i (1 - exp(-p_i T)))), with T, the requests it takes LRU to settle.

    python3 benches/scripts/cache_bounds.py [--keys 16000000] [--theta 0.99] N [N ...]

Needs numpy.
"""
import argparse

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=16_000_000)
    ap.add_argument("--theta", type=float, default=0.99)
    ap.add_argument("capacity", type=int, nargs="+")
    a = ap.parse_args()
    p = np.arange(1, a.keys + 1, dtype=np.float64) ** -a.theta
    p /= p.sum()
    best = np.cumsum(p)
    print("| records in the cache | best possible hit ratio | LRU's hit ratio | requests for LRU to settle |")
    print("|---|---|---|---|")
    for n in a.capacity:
        lo, hi = 1.0, 1e15
        for _ in range(200):
            t = (lo * hi) ** 0.5
            if np.sum(-np.expm1(-p * t)) < n:
                lo = t
            else:
                hi = t
        lru = np.sum(p * -np.expm1(-p * t))
        print(f"| {n:,} | {best[min(n, a.keys) - 1]:.3f} | {lru:.3f} | {t / 1e6:.1f}M |")


if __name__ == "__main__":
    main()
