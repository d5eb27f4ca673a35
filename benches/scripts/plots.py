#!/usr/bin/env python3
"""Tables and plots for docs/benchmarks.md from tierbench's JSON lines.

    python3 benches/scripts/plots.py OUT_DIR RESULTS.jsonl [MORE.jsonl ...]

For every group of runs from the same file with the same workload, distribution, record
count and mode (in memory or memory-bounded), it prints a Markdown table (engines by DRAM
fraction: ops/s, p50/p99/p99.9, DRAM hit ratio where the engine has one, ratios to
Teraservices) and writes two SVG files into OUT_DIR:

  <group>-throughput.svg   ops/s against DRAM fraction, one line per engine
  <group>-latency.svg      p50, p99 and p99.9 per engine at the smallest fraction (log scale)

Lines of different files never share a table, a ratio or a plot: each file is one
invocation (or set of rounds) measured together, and figures of different invocations are not
comparable on this machine. <group> is named from the workload, distribution, records and mode
(e.g. ycsbb-zipf0.99-16m-bounded); when several of the files given have a group of that name,
each one's is prefixed with its file's name (e.g. issue6-bounded-16m--ycsbb-...).

Lines from a run with `--rounds` (each with its `round`) get one row per engine and fraction:
every round's ops/s, the median, and the ratios to Teraservices per round and of the medians;
the plots then show each engine's median run.

A run that failed (tierbench's error line for a child that was killed or failed, which names
only the engine and DRAM fraction) is shown as "failed: <error>" in every table of its file
and mode where that engine has no figure for that fraction and round; a file whose runs all
failed gets a table of its failures.

Only the standard library is used, so the script runs wherever tierbench does. Probe lines
({"probe": ...}) are printed as a machine table per file first. Runs with emulated far latency
are labelled so in every title. Self-test: python3 benches/scripts/test_scripts.py
"""

import json
import math
import os
import sys
from collections import OrderedDict

ENGINE_ORDER = ["tera", "dram", "lmdb", "rocksdb", "redb", "fjall"]
COLOURS = {
    "tera": "#d62728",
    "dram": "#7f7f7f",
    "lmdb": "#1f77b4",
    "rocksdb": "#2ca02c",
    "redb": "#9467bd",
    "fjall": "#ff7f0e",
}


def load(paths):
    """tierbench's run lines and probe lines of every file, each tagged with its file
    (`_file`). Lines of other tools (no `engine`) are left out."""
    runs, probes = [], []
    for p in paths:
        with open(p) as f:
            for line in f:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                v = json.loads(line)
                v["_file"] = p
                if "probe" in v:
                    probes.append(v)
                elif "engine" in v and ("error" in v or "ops_per_sec" in v):
                    runs.append(v)
    return runs, probes


def mode(r):
    return "bounded" if r.get("memory_limit_bytes") else "inmem"


def group_key(r):
    """(file, workload, distribution, records, mode, far latency): one table and one pair of
    plots each. An error line has no workload; see `make_groups`."""
    return (r["_file"], r.get("workload"), r.get("dist"), r.get("records", 0), mode(r), r.get("far_latency", "none"))


def group_name(k):
    _, w, d, n, mode, far = k
    return f"ycsb{w.lower()}-{d.replace(':', '')}-{n // 1_000_000}m-{mode}" + ("-emulated" if far == "emulated" else "")


def title(k):
    _, w, d, n, mode, far = k
    m = "memory-bounded (cgroup)" if mode == "bounded" else "in memory, no limit"
    if w is None:
        return f"runs that failed, {m}"
    t = f"YCSB-{w}, {d}, {n / 1e6:g}M records, {m}"
    if far == "emulated":
        t += ", far latency EMULATED"
    return t


def same_run(a, b):
    return (a["engine"], a.get("dram_fraction"), a.get("round", 0)) == (b["engine"], b.get("dram_fraction"), b.get("round", 0))


def make_groups(runs):
    """Runs grouped by `group_key`, in the order first seen. A failed child's error line names
    only its engine and DRAM fraction (and round): it goes into every group of its file and
    mode where that engine has no figure for that fraction and round (the child may have
    finished some workloads before it failed); with no such group, into a group of its
    file's failures."""
    groups = OrderedDict()
    for r in runs:
        if "error" not in r:
            groups.setdefault(group_key(r), []).append(r)
    for e in (r for r in runs if "error" in r):
        homes = [k for k in groups if k[1] is not None and k[0] == e["_file"] and k[4] == mode(e)]
        if not homes:
            groups.setdefault((e["_file"], None, None, 0, mode(e), "none"), []).append(e)
        for k in homes:
            if not any(same_run(r, e) for r in groups[k]):
                groups[k].append(e)
    return groups


def fmt_ns(v):
    if v is None:
        return "-"
    if v >= 1_000_000:
        return f"{v / 1e6:.1f} ms"
    if v >= 10_000:
        return f"{v / 1e3:.0f} µs"
    if v >= 1_000:
        return f"{v / 1e3:.1f} µs"
    return f"{v} ns"


def engines_in(rs):
    seen = {r["engine"] for r in rs}
    return [e for e in ENGINE_ORDER if e in seen] + sorted(seen - set(ENGINE_ORDER))


def table(k, rs, src=""):
    """One row per engine and DRAM fraction; `src` ends the heading (the file, when several
    are shown)."""
    out = [f"#### {title(k)}{src}", ""]
    # Lines from before tierbench counted device reads have no such column.
    dev = any(r.get("device_reads_per_op") is not None for r in rs)
    out.append("| engine | DRAM fraction | ops/s | ÷ tera | p50 | p99 | p99.9 | DRAM hit | peak memory |"
               + (" device reads / op | bytes read / op |" if dev else ""))
    out.append("|---|---|---|---|---|---|---|---|---|" + ("---|---|" if dev else ""))
    tera = {r["dram_fraction"]: r["ops_per_sec"] for r in rs if r["engine"] == "tera" and "ops_per_sec" in r}
    for e in engines_in(rs):
        for r in sorted((r for r in rs if r["engine"] == e), key=lambda r: r["dram_fraction"]):
            if "error" in r:
                out.append(f"| {e} | {r['dram_fraction']:g} | failed: {r['error']} | | | | | | |" + (" | |" if dev else ""))
                continue
            ratio = ""
            t = tera.get(r["dram_fraction"])
            if t:
                ratio = f"{r['ops_per_sec'] / t:.2f}"
            hit = r.get("dram_hit_ratio")
            peak = r.get("cgroup_peak_bytes") or r.get("rss_anon_bytes")
            peak_s = f"{peak / 2**20:.0f} MiB" + (" (cgroup)" if r.get("cgroup_peak_bytes") else " (RssAnon)") if peak else "-"
            out.append(
                f"| {e} | {r['dram_fraction']:g} | {r['ops_per_sec']:,.0f} | {ratio} | {fmt_ns(r['p50_ns'])} | "
                f"{fmt_ns(r['p99_ns'])} | {fmt_ns(r['p999_ns'])} | {'-' if hit is None else f'{hit:.3f}'} | {peak_s} |"
                + (f" {opt3(r.get('device_reads_per_op'))} | {opt0(r.get('device_read_bytes_per_op'))} |" if dev else "")
            )
    out.append("")
    return "\n".join(out)


def opt3(x):
    return "-" if x is None else f"{x:.3f}"


def opt0(x):
    return "-" if x is None else f"{x:,.0f}"


def median_rows(rs):
    """Per engine and DRAM fraction, the run with the median ops/s (the lower middle one for
    an even count): what the plots show when tierbench ran several `--rounds`."""
    by = OrderedDict()
    for r in rs:
        if "ops_per_sec" in r:
            by.setdefault((r["engine"], r["dram_fraction"]), []).append(r)
    return [sorted(v, key=lambda r: r["ops_per_sec"])[(len(v) - 1) // 2] for v in by.values()]


def rounds_table(k, rs, src=""):
    """Runs repeated over `--rounds`: each round's ops/s, the median, and the ratios to
    Teraservices' figure of the same round and of the medians."""
    out = [f"#### {title(k)}, {1 + max(r.get('round', 0) for r in rs)} rounds{src}", ""]
    out.append("| engine | DRAM fraction | ops/s per round | median | ÷ tera, per round | ÷ tera, medians | DRAM hit | device reads / op |")
    out.append("|---|---|---|---|---|---|---|---|")
    ok = [r for r in rs if "ops_per_sec" in r]
    tera = {(r["dram_fraction"], r.get("round", 0)): r["ops_per_sec"] for r in ok if r["engine"] == "tera"}
    med = {(r["engine"], r["dram_fraction"]): r for r in median_rows(ok)}
    for e in engines_in(rs):
        for f in sorted({r["dram_fraction"] for r in rs if r["engine"] == e}):
            runs = sorted((r for r in ok if r["engine"] == e and r["dram_fraction"] == f), key=lambda r: r.get("round", 0))
            failed = [r for r in rs if r["engine"] == e and r["dram_fraction"] == f and "error" in r]
            if not runs:
                out.append(f"| {e} | {f:g} | failed: {failed[0]['error']} | | | | | |")
                continue
            m = med[(e, f)]
            per = " / ".join(f"{r['ops_per_sec']:,.0f}" for r in runs)
            ratios = " / ".join(
                f"{r['ops_per_sec'] / tera[(f, r.get('round', 0))]:.2f}" if tera.get((f, r.get("round", 0))) else "-" for r in runs
            )
            tm = med.get(("tera", f))
            mratio = f"{m['ops_per_sec'] / tm['ops_per_sec']:.2f}" if tm else "-"
            hits = " / ".join(f"{r['dram_hit_ratio']:.3f}" for r in runs if r.get("dram_hit_ratio") is not None) or "-"
            dev = " / ".join(opt3(r.get("device_reads_per_op")) for r in runs)
            note = f" ({len(failed)} failed: {failed[0]['error']})" if failed else ""
            out.append(f"| {e} | {f:g} | {per}{note} | {m['ops_per_sec']:,.0f} | {ratios} | {mratio} | {hits} | {dev} |")
    out.append("")
    return "\n".join(out)


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def svg(width, height, body):
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">\n'
        f'<rect width="{width}" height="{height}" fill="white"/>\n' + "\n".join(body) + "\n</svg>\n"
    )


def nice_max(v):
    if v <= 0:
        return 1
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * e:
            return m * e
    return 10 * e


def throughput_svg(k, rs):
    W, H, L, R, T, B = 640, 400, 80, 130, 40, 50
    ok = [r for r in rs if "ops_per_sec" in r]
    fracs = sorted({r["dram_fraction"] for r in ok})
    if not ok:
        return None
    ymax = nice_max(max(r["ops_per_sec"] for r in ok))
    lx = lambda f: math.log2(f)
    x0, x1 = lx(fracs[0]), lx(fracs[-1])
    if x0 == x1:
        x0, x1 = x0 - 1, x1 + 1
    X = lambda f: L + (lx(f) - x0) / (x1 - x0) * (W - L - R)
    Y = lambda v: H - B - v / ymax * (H - T - B)
    body = [f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="13">{esc(title(k))}: throughput</text>']
    for i in range(6):
        v = ymax * i / 5
        body.append(f'<line x1="{L}" x2="{W - R}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" stroke="#ddd"/>')
        body.append(f'<text x="{L - 6}" y="{Y(v) + 4:.1f}" text-anchor="end">{v / 1e3:,.0f}k</text>')
    for f in fracs:
        body.append(f'<text x="{X(f):.1f}" y="{H - B + 18}" text-anchor="middle">{f:g}</text>')
    body.append(f'<text x="{(L + W - R) / 2}" y="{H - 10}" text-anchor="middle">DRAM fraction of the data (log scale)</text>')
    body.append(f'<text x="16" y="{(T + H - B) / 2}" transform="rotate(-90 16 {(T + H - B) / 2})" text-anchor="middle">ops/s</text>')
    body.append(f'<line x1="{L}" x2="{L}" y1="{T}" y2="{H - B}" stroke="black"/>')
    body.append(f'<line x1="{L}" x2="{W - R}" y1="{H - B}" y2="{H - B}" stroke="black"/>')
    for n, e in enumerate(engines_in(ok)):
        pts = sorted((r["dram_fraction"], r["ops_per_sec"]) for r in ok if r["engine"] == e)
        c = COLOURS.get(e, "black")
        if len(pts) > 1:
            d = " ".join(f"{X(f):.1f},{Y(v):.1f}" for f, v in pts)
            body.append(f'<polyline points="{d}" fill="none" stroke="{c}" stroke-width="2"/>')
        for f, v in pts:
            body.append(f'<circle cx="{X(f):.1f}" cy="{Y(v):.1f}" r="4" fill="{c}"/>')
        ly = T + 10 + 18 * n
        body.append(f'<rect x="{W - R + 12}" y="{ly - 9}" width="12" height="12" fill="{c}"/>')
        body.append(f'<text x="{W - R + 30}" y="{ly + 1}">{esc(e)}</text>')
    return svg(W, H, body)


def latency_svg(k, rs):
    ok = [r for r in rs if "p50_ns" in r]
    if not ok:
        return None
    f = min(r["dram_fraction"] for r in ok)
    ok = [r for r in ok if r["dram_fraction"] == f]
    es = engines_in(ok)
    W, H, L, R, T, B = 640, 400, 80, 130, 40, 50
    qs = [("p50_ns", "p50", 1.0), ("p99_ns", "p99", 0.65), ("p999_ns", "p99.9", 0.35)]
    vals = [r[q] for r in ok for q, _, _ in qs]
    lo = 10 ** math.floor(math.log10(max(1, min(vals))))
    hi = 10 ** math.ceil(math.log10(max(vals)))
    Y = lambda v: H - B - (math.log10(max(v, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * (H - T - B)
    body = [f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="13">{esc(title(k))}: latency at fraction {f:g}</text>']
    d = lo
    while d <= hi:
        body.append(f'<line x1="{L}" x2="{W - R}" y1="{Y(d):.1f}" y2="{Y(d):.1f}" stroke="#ddd"/>')
        body.append(f'<text x="{L - 6}" y="{Y(d) + 4:.1f}" text-anchor="end">{fmt_ns(int(d))}</text>')
        d *= 10
    slot = (W - L - R) / max(1, len(es))
    bw = slot / 4
    for i, e in enumerate(es):
        r = next(r for r in ok if r["engine"] == e)
        c = COLOURS.get(e, "black")
        for j, (q, _, op) in enumerate(qs):
            x = L + i * slot + bw * (j + 0.5)
            body.append(f'<rect x="{x:.1f}" y="{Y(r[q]):.1f}" width="{bw:.1f}" height="{H - B - Y(r[q]):.1f}" fill="{c}" fill-opacity="{op}"/>')
        body.append(f'<text x="{L + i * slot + slot / 2 - bw / 2:.1f}" y="{H - B + 18}" text-anchor="middle">{esc(e)}</text>')
    for j, (_, name, op) in enumerate(qs):
        ly = T + 10 + 18 * j
        body.append(f'<rect x="{W - R + 12}" y="{ly - 9}" width="12" height="12" fill="black" fill-opacity="{op}"/>')
        body.append(f'<text x="{W - R + 30}" y="{ly + 1}">{name}</text>')
    body.append(f'<line x1="{L}" x2="{L}" y1="{T}" y2="{H - B}" stroke="black"/>')
    body.append(f'<line x1="{L}" x2="{W - R}" y1="{H - B}" y2="{H - B}" stroke="black"/>')
    body.append(f'<text x="16" y="{(T + H - B) / 2}" transform="rotate(-90 16 {(T + H - B) / 2})" text-anchor="middle">latency (log scale)</text>')
    return svg(W, H, body)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out_dir, paths = sys.argv[1], sys.argv[2:]
    os.makedirs(out_dir, exist_ok=True)
    runs, probes = load(paths)
    # With several files, every table says which one it is from.
    several = len(set(paths)) > 1
    for p in paths:
        mine = [v for v in probes if v["_file"] == p]
        if not mine:
            continue
        if several:
            print(f"Machine probes of {p}:\n")
        print("| probe | value |\n|---|---|")
        for v in mine:
            name = v["probe"] + (f" (queue depth {v['queue_depth']})" if "queue_depth" in v else "")
            print(f"| {name} | {v.get('value', v.get('error'))} |")
        print()
    groups = make_groups(runs)
    # A plot's name is its group's, prefixed with its file's name where several files have a
    # group of that name (so that no file's plot overwrites another's).
    files_of = {}
    for k in groups:
        if k[1] is not None:
            files_of.setdefault(group_name(k), set()).add(k[0])
    for k, rs in groups.items():
        src = f" ({k[0]})" if several or k[1] is None else ""
        rounds = any("round" in r for r in rs)
        print(rounds_table(k, rs, src) if rounds else table(k, rs, src))
        if k[1] is None:
            continue
        name = group_name(k)
        if len(files_of[name]) > 1:
            stem = os.path.basename(k[0])
            stem = stem[: -len(".jsonl")] if stem.endswith(".jsonl") else stem
            name = f"{stem}--{name}"
        shown = median_rows(rs) if rounds else rs
        for kind, fn in (("throughput", throughput_svg), ("latency", latency_svg)):
            s = fn(k, shown)
            if s:
                path = os.path.join(out_dir, f"{name}-{kind}.svg")
                with open(path, "w") as f:
                    f.write(s)
                print(f"![{kind}]({os.path.relpath(path, 'docs')})\n")


if __name__ == "__main__":
    main()
