#!/usr/bin/env bash
# Soak test of terad (issue 5): start terad on a fresh data directory, run `teractl bench` with
# a mixed load at one concurrency level for a fixed time, and sample terad's RSS every 10 s.
# Prints the bench report, then the RSS samples and their min and max; fails if the bench
# saw an error other than overload (terad's RESOURCE_EXHAUSTED for its request limits). The
# engine's DRAM budget refusing writes is RESOURCE_EXHAUSTED on the wire too, but teractl
# bench counts it apart, as RESOURCE_EXHAUSTED(budget) (server/src/bench.rs, error_label),
# and it fails the soak: a partition that refuses every write is not a passing run.
#
#   benches/scripts/soak.sh [SECONDS] [CONCURRENCY] [MIX] [BUDGET_MIB]
#   defaults: 600 s, concurrency 200, mix stat=40,list=20,mkdir=10,upload=30, terad's default
#   DRAM budget (512 MiB)
#
# Needs a release build: cargo build --release -p tera-server
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
secs=${1:-600}
conc=${2:-200}
mix=${3:-stat=40,list=20,mkdir=10,upload=30}
budget=()
if [ -n "${4:-}" ]; then budget=(--dram-budget-mib "$4"); fi
bin=${TERAD_BIN_DIR:-target/release}
data=$(mktemp -d /tmp/terad-soak.XXXXXX)
out=$data/terad.out
"$bin/terad" --listen 127.0.0.1:0 --metrics-listen off --data-dir "$data/d" "${budget[@]}" >"$out" 2>"$data/terad.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  grep -q "listening on" "$out" 2>/dev/null && break
  kill -0 $pid 2>/dev/null || break
  sleep 0.1
done
addr=$(sed -n 's/^terad: listening on //p' "$out")
if [ -z "$addr" ]; then
  echo "soak.sh: terad did not start (binary $bin/terad); its output:" >&2
  cat "$out" "$data/terad.log" >&2
  exit 1
fi
export TERACTL_SERVER="http://$addr" TERACTL_TOKEN_FILE="$data/token"
TERACTL_PASSWORD=$(cat "$data/d/admin-password") "$bin/teractl" login admin >/dev/null
rss_log=$data/rss.txt
(
  t=0
  while kill -0 $pid 2>/dev/null; do
    echo "$t $(awk '/^VmRSS/ {print $2}' /proc/$pid/status) $(awk '/^RssAnon/ {print $2}' /proc/$pid/status)" >>"$rss_log"
    sleep 10
    t=$((t + 10))
  done
) &
sampler=$!
"$bin/teractl" bench --concurrency "$conc" --duration "$secs" --warmup 0 --mix "$mix" | tee "$data/bench.txt"
kill $sampler 2>/dev/null || true
echo "# terad RSS (KiB) every 10 s: seconds VmRSS RssAnon"
cat "$rss_log"
awk 'NR==2 {min=$2; max=$2; amin=$3; amax=$3} NR>=2 {if ($2<min) min=$2; if ($2>max) max=$2; if ($3<amin) amin=$3; if ($3>amax) amax=$3} END {printf "# from 10 s on: VmRSS min %.1f MiB, max %.1f MiB; RssAnon min %.1f MiB, max %.1f MiB (%d samples)\n", min/1024, max/1024, amin/1024, amax/1024, NR-1}' "$rss_log"
echo "# data directory: $data"
# The errors column lists LABEL=count per operation; anything but plain RESOURCE_EXHAUSTED
# (overload) fails, RESOURCE_EXHAUSTED(budget) included.
bad=$(awk '$1 ~ /^[0-9]+$/ && NF >= 8 && $8 != "-" {n = split($8, e, ","); for (i = 1; i <= n; i++) if (e[i] !~ /^RESOURCE_EXHAUSTED=/) print $2 ": " e[i]}' "$data/bench.txt")
if [ -n "$bad" ]; then
  if echo "$bad" | grep -q 'RESOURCE_EXHAUSTED(budget)='; then
    echo "# the DRAM budget refused writes (RESOURCE_EXHAUSTED(budget)): raise BUDGET_MIB or look at terad.log"
  fi
  echo "# errors other than overload:"; echo "$bad"; exit 1
fi
echo "# no errors other than overload"
