#!/usr/bin/env python3
"""Render tierbench JSON lines (stdin or files) as the Markdown tables in docs/benchmarks.md.

Usage: benches/scripts/table.py docs/results/issue2-ycsb-cb-4m.jsonl [MORE.jsonl ...]

One table per file (each headed by its file's name when there are several): lines of
different files, which are different invocations, never share a table or a ratio. Each run
gets the ratio of its ops/s to the fraction-1 run of the same engine, workload, distribution,
records, value size, threads, far latency, huge pages and round in the same file (the nearest
one before it, as tierbench runs fraction 1 first; else the first after it).

Figures an engine does not report (the peers have no DRAM budget, hit ratio or index) are
shown as "-"; an engine column appears when any run is not Teraservices'. A failed run
(tierbench's error line for a child that was killed or failed) is a row saying so. Lines of
other tools (metabench, durabench: no `engine`) are left out. Self-test:
python3 benches/scripts/test_scripts.py
"""
import json
import sys

COLUMNS = (
    "workload | dist | records | value B | threads | DRAM fraction | far ns | ops/s | "
    "ratio to fraction 1 | DRAM hit ratio | p50 ns | p99 ns | p99.9 ns | budget MiB | "
    "DRAM used MiB | RSS anon MiB | index MiB | index B/key | promotions | warm-up s | "
    "huge pages"
)


def rows(lines):
    """The probe lines (in order) and tierbench's run lines of one source."""
    probes, runs = [], []
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        d = json.loads(line)
        if "probe" in d:
            probes.append(d)
        elif "engine" in d and ("error" in d or "ops_per_sec" in d):
            runs.append(d)
    return probes, runs


def key(r):
    """What a run's ratio to fraction 1 holds equal."""
    return (r.get("engine"), r.get("workload"), r.get("dist"), r.get("theta"), r.get("records"),
            r.get("value_bytes"), r.get("threads"), r.get("far_ns"), r.get("huge_pages", False),
            r.get("round"))


def bases(runs):
    """For each run (by index), the ops/s of its fraction-1 run: the nearest one before it
    with the same key, else the first after it."""
    ones = {}
    for i, r in enumerate(runs):
        if r.get("dram_fraction") == 1 and "ops_per_sec" in r:
            ones.setdefault(key(r), []).append(i)
    out = {}
    for i, r in enumerate(runs):
        cand = ones.get(key(r), [])
        before = [j for j in cand if j <= i]
        j = before[-1] if before else (cand[0] if cand else None)
        if j is not None:
            out[i] = runs[j]["ops_per_sec"]
    return out


def fmt(v, f="{}"):
    return "-" if v is None else f.format(v)


def mib(b):
    return "-" if b is None else f"{b / 2**20:.1f}"


def table(probes, runs):
    out = []
    if probes:
        out.append("| probe | value |\n|---|---|")
        for p in probes:
            name = p["probe"] + (f" (queue depth {p['queue_depth']})" if "queue_depth" in p else "")
            out.append(f"| {name} | {p.get('value', p.get('error'))} |")
        out.append("")
    if not runs:
        return "\n".join(out)
    engines = any(r.get("engine", "tera") != "tera" for r in runs)
    out.append("| " + ("engine | " if engines else "") + COLUMNS + " |")
    out.append("|" + "---|" * (21 + engines))
    base = bases(runs)
    for i, r in enumerate(runs):
        e = f"{r.get('engine', '-')} | " if engines else ""
        if "error" in r:
            rnd = f", round {r['round']}" if r.get("round") is not None else ""
            out.append(f"| {e}failed at DRAM fraction {r.get('dram_fraction')}{rnd}: {r['error']} |"
                       + " |" * 20)
            continue
        b = base.get(i)
        ratio = f"{r['ops_per_sec'] / b:.3f}" if b else "-"
        far = f"{r['far_ns']} (emulated)" if r.get("far_ns") else "0"
        # Older lines say `zipf` and give the exponent apart; newer ones say `zipf:<exponent>`.
        theta = f" {r['theta']}" if r.get("theta") is not None and r.get("dist") == "zipf" else ""
        warm = r.get("warmup_seconds")
        out.append(
            f"| {e}{r.get('workload', '-')} | {r.get('dist', '-')}{theta} | {fmt(r.get('records'))} | "
            f"{fmt(r.get('value_bytes'))} | {fmt(r.get('threads'))} | {fmt(r.get('dram_fraction'))} | "
            f"{far} | {r['ops_per_sec']:.0f} | {ratio} | {fmt(r.get('dram_hit_ratio'), '{:.4f}')} | "
            f"{fmt(r.get('p50_ns'))} | {fmt(r.get('p99_ns'))} | {fmt(r.get('p999_ns'))} | "
            f"{mib(r.get('dram_budget_bytes'))} | {mib(r.get('dram_used_bytes'))} | "
            f"{mib(r.get('rss_anon_bytes'))} | {mib(r.get('index_bytes'))} | "
            f"{fmt(r.get('index_bytes_per_key'))} | {fmt(r.get('promotions'))} | "
            f"{fmt(warm, '{:.0f}')} | {'yes' if r.get('huge_pages') else 'no'} |")
    return "\n".join(out)


def main():
    paths = sys.argv[1:] or ["-"]
    for n, path in enumerate(paths):
        if path == "-":
            lines = sys.stdin.readlines()
        else:
            with open(path) as f:
                lines = f.readlines()
        probes, runs = rows(lines)
        if len(paths) > 1:
            print(("\n" if n else "") + f"{'stdin' if path == '-' else path}:\n")
        print(table(probes, runs))


if __name__ == "__main__":
    main()
