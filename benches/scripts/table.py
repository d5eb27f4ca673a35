#!/usr/bin/env python3
"""Render tierbench JSON lines (stdin or files) as the Markdown tables in docs/benchmarks.md.

Usage: benches/scripts/table.py docs/results/issue2-ycsb-cb-4m.jsonl
Each group of runs that share workload, distribution, records and value size gets the ratio
of each run's ops/s to the fraction-1 run of the same group (measured in the same invocation).
"""
import json
import sys


def rows(lines):
    probes, runs = {}, []
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        d = json.loads(line)
        if "probe" in d:
            probes[d["probe"]] = d["value"]
        else:
            runs.append(d)
    return probes, runs


def main():
    lines = []
    for path in sys.argv[1:] or ["-"]:
        lines += (sys.stdin if path == "-" else open(path)).readlines()
    probes, runs = rows(lines)
    if probes:
        print("| probe | value |\n|---|---|")
        for k, v in probes.items():
            print(f"| {k} | {v} |")
        print()
    print("| workload | dist | records | value B | threads | DRAM fraction | far ns | ops/s | "
          "ratio to fraction 1 | DRAM hit ratio | p50 ns | p99 ns | p99.9 ns | budget MiB | "
          "DRAM used MiB | RSS anon MiB | index MiB | index B/key | promotions | warm-up s | "
          "huge pages |")
    print("|" + "---|" * 21)
    base = {}
    key = lambda r: (r["workload"], r["dist"], r["records"], r["value_bytes"],
                     r.get("huge_pages", False))
    for r in runs:
        if r["dram_fraction"] == 1:
            base[key(r)] = r["ops_per_sec"]
    mib = lambda b: f"{b / 2**20:.1f}"
    for r in runs:
        b = base.get(key(r))
        ratio = f"{r['ops_per_sec'] / b:.3f}" if b else "-"
        far = f"{r['far_ns']} (emulated)" if r["far_ns"] else "0"
        theta = f" {r['theta']}" if r.get("theta") is not None else ""
        print(f"| {r['workload']} | {r['dist']}{theta} | {r['records']} | {r['value_bytes']} | "
              f"{r['threads']} | {r['dram_fraction']} | {far} | {r['ops_per_sec']:.0f} | {ratio} | "
              f"{r['dram_hit_ratio']:.4f} | {r['p50_ns']} | {r['p99_ns']} | {r['p999_ns']} | "
              f"{mib(r['dram_budget_bytes'])} | {mib(r['dram_used_bytes'])} | "
              f"{mib(r['rss_anon_bytes'])} | {mib(r['index_bytes'])} | "
              f"{r['index_bytes_per_key']} | {r['promotions']} | {r['warmup_seconds']:.0f} | "
              f"{'yes' if r.get('huge_pages') else 'no'} |")


if __name__ == "__main__":
    main()
