#!/usr/bin/env bash
# One `teractl bench` run against a fresh terad, with the CPU time each process spent per
# operation: what the A/B comparisons of docs/benchmarks.md (issue 5) were made with. CPU per
# operation moves far less than ops/s on a shared machine, so alternate builds round by round
# and compare both.
#
#   benches/scripts/terad_run.sh BIN_DIR MIX CONCURRENCY SECONDS [teractl bench flags...]
#   e.g. for r in 1 2 3 4; do for b in /tmp/a /tmp/b; do
#          benches/scripts/terad_run.sh $b list 100 10; done; done
#
# BIN_DIR holds terad and teractl (copy each build's pair out of target/release first). Prints
# the bench's table, then terad's and teractl's CPU microseconds per measured operation (the
# 2 s warm-up's CPU is in the numerator too, so compare runs of the same length). Uses ports
# 7520 and 7521 and a temporary data directory, removed afterwards.
set -euo pipefail
bin=$1 mix=$2 conc=$3 secs=$4
shift 4
work=$(mktemp -d /tmp/terad-run.XXXXXX)
cd "$work"
"$bin/terad" --listen 127.0.0.1:7520 --metrics-listen 127.0.0.1:7521 > terad.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do
  [ -f terad-data/admin-password ] && grep -q 'listening on' terad.log && break
  sleep 0.1
done
# Serving once recovery is done (health answers NOT_SERVING, and `teractl health` fails, before).
for _ in $(seq 100); do
  "$bin/teractl" --server http://127.0.0.1:7520 health > /dev/null 2>&1 && break
  sleep 0.1
done
TERACTL_PASSWORD=$(cat terad-data/admin-password) \
  "$bin/teractl" --server http://127.0.0.1:7520 --token-file tok login admin > /dev/null
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
t0=$(ticks)
TIMEFORMAT='teractl_cpu %U %S'
{ time "$bin/teractl" --server http://127.0.0.1:7520 --token-file tok bench --mix "$mix" \
  --concurrency "$conc" --duration "$secs" --warmup 2 "$@" > bench.out 2>&1 || true; } 2>> bench.out
t1=$(ticks)
grep -v '^#\|teractl_cpu' bench.out
ops=$(awk '$1 ~ /^[0-9]+$/ && $2 != "all" {n += $7} END {print n + 0}' bench.out)
awk -v t0="$t0" -v t1="$t1" -v ops="$ops" -v hz="$(getconf CLK_TCK)" '/teractl_cpu/ && ops > 0 {
  printf "cpu_us_per_op terad %.1f teractl %.1f (%d operations measured)\n",
    (t1 - t0) / hz * 1e6 / ops, ($2 + $3) * 1e6 / ops, ops }' bench.out
