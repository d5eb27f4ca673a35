#!/usr/bin/env python3
"""Self-test of plots.py and table.py on tiny tierbench outputs written to a temp dir:

    python3 benches/scripts/test_scripts.py

Two files with runs of the same workload, distribution, records and mode make two tables
(never one "rounds" table, never a ratio across files); a failed child's error line (which
names only its engine and DRAM fraction) shows up as "failed: ..." in its file's tables;
table.py takes peers' lines (no hit ratio, budget or index) and error lines without failing.
cachesim.rs (compiled with rustc into the temp dir) agrees with Che's approximation of LRU,
never has an infinite cache hit less often than a finite one on the same requests, and ranks
W-TinyLFU above LRU once settled. Only the standard library is used (and rustc).
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import unittest

import math
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
PLOTS = os.path.join(HERE, "plots.py")
TABLE = os.path.join(HERE, "table.py")
CACHESIM = os.path.join(HERE, "cachesim.rs")


def run_line(engine, ops, fraction=1.0, **extra):
    """One tierbench run line, as `--json` prints it (Teraservices' tier fields included)."""
    r = {
        "engine": engine, "workload": "C", "dist": "zipf:0.99", "theta": 0.99,
        "records": 20000, "value_bytes": 100, "threads": 2, "dram_fraction": fraction,
        "far_ns": 0, "far_latency": "none", "ops_per_sec": float(ops),
        "p50_ns": 500, "p99_ns": 1500, "p999_ns": 4000, "rss_anon_bytes": 50 << 20,
        "seconds": 0.3, "warmup_seconds": 0.0, "load_seconds": 0.1, "seed": 42, "pid": 1,
        "memory_limit_bytes": None, "cgroup": None, "cgroup_peak_bytes": None,
        "device_read_bytes_per_op": 0.0, "device_reads_per_op": 0.0,
    }
    if engine == "tera":
        r.update({
            "dram_hit_ratio": 0.99, "dram_budget_bytes": 8 << 20, "dram_used_bytes": 6 << 20,
            "index_bytes": 1 << 20, "index_bytes_per_key": 10.1, "promotions": 7,
            "huge_pages": False,
        })
    r.update(extra)
    return r


def error_line(engine, fraction, why, **extra):
    """The line tierbench's parent emits for a child that failed."""
    r = {"engine": engine, "dram_fraction": fraction, "memory_limit_bytes": None, "error": why}
    r.update(extra)
    return r


def write(dir, name, lines):
    path = os.path.join(dir, name)
    with open(path, "w") as f:
        for v in lines:
            f.write(json.dumps(v) + "\n")
    return path


def run(args):
    p = subprocess.run([sys.executable] + args, capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError(f"{args} failed:\n{p.stderr}")
    return p.stdout


def tables(md):
    """{heading: [table lines]} of a Markdown output."""
    out, cur = {}, None
    for line in md.splitlines():
        if line.startswith("#### "):
            cur = line[5:]
            out[cur] = []
        elif cur is not None and line.startswith("|"):
            out[cur].append(line)
    return out


class Plots(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name
        probe = {"probe": "dram_random_load_ns", "value": 300.0}
        self.a = write(self.dir, "first.jsonl", [probe, run_line("tera", 2000), run_line("dram", 1000)])
        self.b = write(self.dir, "second.jsonl", [
            probe, run_line("tera", 1000), run_line("dram", 2000),
            error_line("lmdb", 1.0, "killed (SIGKILL): most likely the cgroup's OOM killer"),
        ])

    def tearDown(self):
        self.tmp.cleanup()

    def test_two_files_make_two_tables(self):
        out_dir = os.path.join(self.dir, "plots")
        md = run([PLOTS, out_dir, self.a, self.b])
        t = tables(md)
        self.assertEqual(len(t), 2, md)
        ta = next(v for k, v in t.items() if k.endswith(f"({self.a})"))
        tb = next(v for k, v in t.items() if k.endswith(f"({self.b})"))
        for k in t:
            self.assertTrue(k.startswith("YCSB-C, zipf:0.99"), k)
            self.assertNotIn("rounds", k)
            self.assertNotIn("?", k)
        # Ratios to Teraservices are taken within each file.
        self.assertTrue(any(re.match(r"\| dram \| 1 \| 1,000 \| 0\.50 \|", l) for l in ta), ta)
        self.assertTrue(any(re.match(r"\| dram \| 1 \| 2,000 \| 2\.00 \|", l) for l in tb), tb)
        # The failed engine is in its own file's table, and only there.
        self.assertTrue(any(l.startswith("| lmdb | 1 | failed: killed (SIGKILL)") for l in tb), tb)
        self.assertFalse(any("lmdb" in l for l in ta), ta)
        # One pair of plots per file, named apart.
        self.assertEqual(sorted(os.listdir(out_dir)), [
            "first--ycsbc-zipf0.99-0m-inmem-latency.svg",
            "first--ycsbc-zipf0.99-0m-inmem-throughput.svg",
            "second--ycsbc-zipf0.99-0m-inmem-latency.svg",
            "second--ycsbc-zipf0.99-0m-inmem-throughput.svg",
        ])
        # Machine probes per file.
        self.assertIn(f"Machine probes of {self.a}", md)
        self.assertIn(f"Machine probes of {self.b}", md)

    def test_one_file_keeps_the_plain_names(self):
        out_dir = os.path.join(self.dir, "one")
        md = run([PLOTS, out_dir, self.b])
        self.assertEqual(list(tables(md)), ["YCSB-C, zipf:0.99, 0.02M records, in memory, no limit"], md)
        self.assertEqual(sorted(os.listdir(out_dir)), [
            "ycsbc-zipf0.99-0m-inmem-latency.svg",
            "ycsbc-zipf0.99-0m-inmem-throughput.svg",
        ])

    def test_failures_are_shown_not_dropped(self):
        # Every child failed: a table of the failures.
        only = write(self.dir, "failed.jsonl", [error_line("tera", 0.125, "exit status: 1")])
        t = tables(run([PLOTS, os.path.join(self.dir, "f"), only]))
        self.assertEqual(len(t), 1, t)
        (k, rows), = t.items()
        self.assertIn("runs that failed", k)
        self.assertTrue(any("failed: exit status: 1" in l for l in rows), rows)
        # A round that failed among rounds that ran: counted, with its error.
        rounds = write(self.dir, "rounds.jsonl", [
            run_line("tera", 1000, round=0), run_line("dram", 900, round=0),
            run_line("tera", 1100, round=1),
            error_line("dram", 1.0, "killed by signal 9", round=1),
        ])
        t = tables(run([PLOTS, os.path.join(self.dir, "r"), rounds]))
        self.assertEqual(len(t), 1, t)
        (k, rows), = t.items()
        self.assertIn("2 rounds", k)
        self.assertTrue(any(l.startswith("| dram | 1 | 900 (1 failed: killed by signal 9)") for l in rows), rows)
        # A child that failed after some of its workloads ran: not shown as failed where it ran.
        partial = write(self.dir, "partial.jsonl", [
            run_line("tera", 1000), run_line("dram", 900),
            run_line("tera", 800, workload="A"),
            error_line("dram", 1.0, "killed by signal 9"),
        ])
        t = tables(run([PLOTS, os.path.join(self.dir, "p"), partial]))
        c = next(v for k, v in t.items() if k.startswith("YCSB-C"))
        a = next(v for k, v in t.items() if k.startswith("YCSB-A"))
        self.assertFalse(any("failed" in l for l in c), c)
        self.assertTrue(any(l.startswith("| dram | 1 | failed: killed by signal 9") for l in a), a)


class Table(unittest.TestCase):
    def test_peers_errors_and_files(self):
        with tempfile.TemporaryDirectory() as d:
            a = write(d, "a.jsonl", [
                {"probe": "disk_4k_random_read_iops", "queue_depth": 1, "value": 1000.0},
                {"probe": "disk_4k_random_read_iops", "error": "no O_DIRECT"},
                run_line("tera", 2000), run_line("tera", 1000, fraction=0.125),
                run_line("lmdb", 500), run_line("lmdb", 250, fraction=0.125),
                error_line("rocksdb", 0.125, "killed (SIGKILL)"),
                {"bench": "meta-throughput", "op": "stat", "ops_per_sec": 5.0},
            ])
            b = write(d, "b.jsonl", [run_line("tera", 4000, fraction=0.125)])
            out = run([TABLE, a, b])
        parts = out.split(f"{b}:")
        self.assertEqual(len(parts), 2, out)
        first, second = parts
        self.assertIn(f"{a}:", first)
        self.assertIn("| disk_4k_random_read_iops (queue depth 1) | 1000.0 |", first)
        self.assertIn("| disk_4k_random_read_iops | no O_DIRECT |", first)
        rows = [l for l in first.splitlines() if l.startswith("| tera") or l.startswith("| lmdb")
                or l.startswith("| rocksdb")]
        self.assertEqual(len(rows), 5, first)
        # Each engine's ratio is to its own fraction-1 run.
        self.assertIn("| 1000 | 0.500 |", rows[1])
        self.assertIn("| 250 | 0.500 |", rows[3])
        self.assertIn("| - | - |", rows[2])  # the peer has no DRAM figures
        self.assertIn("failed at DRAM fraction 0.125: killed (SIGKILL)", rows[4])
        self.assertNotIn("meta-throughput", out)
        # The second file has no fraction-1 run: no ratio, and none from the first file.
        row = next(l for l in second.splitlines() if l.startswith("| C"))
        self.assertIn("| 4000 | - |", row)


def che_lru(keys, theta, capacity):
    """LRU's hit ratio by Che's approximation (as cache_bounds.py, without numpy)."""
    p = [i ** -theta for i in range(1, keys + 1)]
    total = sum(p)
    p = [x / total for x in p]
    lo, hi = 1.0, 1e12
    for _ in range(60):
        t = math.sqrt(lo * hi)
        if sum(-math.expm1(-x * t) for x in p) < capacity:
            lo = t
        else:
            hi = t
    return sum(x * -math.expm1(-x * t) for x in p)


@unittest.skipUnless(shutil.which("rustc"), "rustc is not installed")
class CacheSim(unittest.TestCase):
    KEYS, CAPACITY = 50_000, 5_000

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.TemporaryDirectory()
        cls.bin = os.path.join(cls.dir.name, "cachesim")
        subprocess.run(["rustc", "-O", "--edition", "2021", "-o", cls.bin, CACHESIM], check=True)

    @classmethod
    def tearDownClass(cls):
        cls.dir.cleanup()

    def sim(self, policy, requests=2_000_000, every=250_000, prefill=0):
        out = subprocess.run(
            [self.bin, "--keys", str(self.KEYS), "--zipf", "0.99", "--capacity",
             str(self.CAPACITY), "--requests", str(requests), "--every", str(every),
             "--policy", policy, "--prefill", str(prefill)],
            check=True, capture_output=True, text=True).stdout
        header = out.splitlines()[0]
        best = float(header.rsplit(" ", 1)[1])
        rows = [l.split() for l in out.splitlines() if not l.startswith("#")]
        self.assertEqual([int(r[0]) for r in rows], list(range(every, requests + 1, every)))
        return best, [float(r[1]) for r in rows]

    def test_lru_settles_at_ches_approximation(self):
        best, lru = self.sim("lru")
        settled = sum(lru[-4:]) / 4
        che = che_lru(self.KEYS, 0.99, self.CAPACITY)
        self.assertAlmostEqual(settled, che, delta=0.01, msg=(settled, che))
        self.assertLess(settled, best)

    def test_policies_rank_as_they_must(self):
        best, lru = self.sim("lru")
        _, tiny = self.sim("wtinylfu")
        _, inf = self.sim("infinite")
        # The same requests, both caches starting empty: the infinite cache holds every key
        # the finite ones hold, so it hits at least as often in every stretch.
        for i, (a, b, c) in enumerate(zip(inf, lru, tiny)):
            self.assertGreaterEqual(a, b, i)
            self.assertGreaterEqual(a, c, i)
            self.assertLessEqual(a, 1.0)
        # Once settled, frequency beats recency under Zipf, and neither beats the hottest N.
        self.assertGreater(sum(tiny[-4:]) / 4, sum(lru[-4:]) / 4 + 0.01, (tiny, lru))
        self.assertLess(sum(tiny[-4:]) / 4, best + 0.005)

    def test_prefill(self):
        out = subprocess.run([self.bin, "--capacity", "10", "--keys", "100", "--requests", "10",
                              "--every", "10", "--prefill", "7"],
                             check=True, capture_output=True, text=True).stdout
        self.assertIn("prefill 7:", out)
        # Every key in from the start: nothing ever misses.
        _, full = self.sim("infinite", requests=200_000, every=50_000, prefill=self.KEYS)
        self.assertEqual(full, [1.0] * 4)
        # Prefilled with a random tenth of the keys, the first 1,000 reads hit more often than
        # from empty (those keys draw about a tenth of the reads, some of which an empty cache
        # misses).
        _, empty = self.sim("lru", requests=1_000, every=1_000)
        _, filled = self.sim("lru", requests=1_000, every=1_000, prefill=self.CAPACITY)
        self.assertGreater(filled[0], empty[0] + 0.02, (filled, empty))

    def test_bad_arguments(self):
        for args in (["--capacity", "0", "--requests", "1"], ["--policy", "fifo"],
                     ["--capacity", "5", "--requests", "1", "--keys", "4"], ["--zipf"],
                     ["--capacity", "5", "--requests", "1", "--zipf", "nan"],
                     ["--capacity", "5", "--requests", "1", "--zipf", "-1"],
                     ["--capacity", "1", "--requests", "1", "--policy", "wtinylfu"]):
            r = subprocess.run([self.bin, *args], capture_output=True, text=True)
            self.assertEqual(r.returncode, 2, (args, r.stderr))
            self.assertIn("usage:", r.stderr)


if __name__ == "__main__":
    unittest.main()
