#!/usr/bin/env bash
# terad's RssAnon against the engine's own accounting (terad_dram_used_bytes) under teractl
# bench's mixed load at concurrency 200, sampled every 10 s, with the index size, the largest
# partition share and the key count. Starts terad on a fresh data directory with its metrics
# on 127.0.0.1:7599 (free that port first).
#
#   benches/scripts/rss_vs_budget.sh BIN_DIR [SECONDS] [BUDGET_MIB]
#   defaults: 300 s, 128 MiB. TERAD_ENV="NAME=value ..." sets terad's environment (for
#   example GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1048576).
#
# Needs curl and a release build: cargo build --release -p tera-server
set -euo pipefail
bin=${1:?usage: rss_vs_budget.sh BIN_DIR [SECONDS] [BUDGET_MIB]}
secs=${2:-300}
budget=${3:-128}
data=$(mktemp -d /tmp/terad-mem.XXXXXX)
# shellcheck disable=SC2086 # TERAD_ENV is a list of assignments
env ${TERAD_ENV:-} "$bin/terad" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:7599 \
  --data-dir "$data/d" --dram-budget-mib "$budget" >"$data/out" 2>"$data/log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  grep -q "listening on" "$data/out" 2>/dev/null && break
  sleep 0.1
done
addr=$(sed -n 's/^terad: listening on //p' "$data/out")
[ -n "$addr" ] || { echo "terad did not start:" >&2; cat "$data/out" "$data/log" >&2; exit 1; }
export TERACTL_SERVER="http://$addr" TERACTL_TOKEN_FILE="$data/token"
TERACTL_PASSWORD=$(cat "$data/d/admin-password") "$bin/teractl" login admin >/dev/null
(
  t=0
  while kill -0 $pid 2>/dev/null; do
    m=$(curl -s http://127.0.0.1:7599/metrics || true)
    g() { echo "$m" | awk -v n="$1" '$1==n {printf "%.1f", $2/1048576}'; }
    k=$(echo "$m" | awk '$1=="terad_keys" {print $2}')
    echo "$t rss_anon_mib=$(awk '/^RssAnon/ {printf "%.1f", $2/1024}' /proc/$pid/status) dram_used_mib=$(g terad_dram_used_bytes) index_mib=$(g terad_dram_index_bytes) largest_share_mib=$(g terad_dram_largest_share_bytes) heap_in_use_mib=$(g terad_heap_in_use_bytes) heap_free_mib=$(g terad_heap_free_bytes) keys=$k"
    sleep 10
    t=$((t + 10))
  done
) &
sampler=$!
"$bin/teractl" bench --concurrency 200 --duration "$secs" --warmup 0 --mix stat=40,list=20,mkdir=10,upload=30
kill $sampler 2>/dev/null || true
