#!/usr/bin/env bash
# terad's RSS through a large recursive delete (issue 5, soak run 13): a mixed `teractl bench`
# at concurrency 200 for SECS against a fresh terad (default 512 MiB budget), then RssAnon
# before teractl's cleanup (the recursive delete of everything the load made) and its peak,
# sampled every 0.1 s, until 2 s after the bench ends. Uses ports 7540 and 7541.
#
#   benches/scripts/delete_rss.sh BIN_DIR SECS      (BIN_DIR holds terad and teractl)
set -uo pipefail
bin=$(cd "$1" && pwd) secs=$2
w=$(mktemp -d /tmp/delchk.XXXX); cd $w
$bin/terad --listen 127.0.0.1:7540 --metrics-listen 127.0.0.1:7541 --data-dir $w/d > out.txt 2> log.txt &
tpid=$!
for i in $(seq 50); do $bin/teractl --server http://127.0.0.1:7540 health >/dev/null 2>&1 && break; sleep 0.2; done
TERACTL_PASSWORD=$(cat d/admin-password) $bin/teractl --server http://127.0.0.1:7540 --token-file tok login admin >/dev/null
$bin/teractl --server http://127.0.0.1:7540 --token-file tok bench --mix stat=40,list=20,mkdir=10,upload=30 --concurrency 200 --duration $secs --warmup 0 > b.txt 2>&1 &
bpid=$!
sleep $((secs - 3))
peak=0; pre=$(grep RssAnon /proc/$tpid/status | awk '{print $2}')
while kill -0 $bpid 2>/dev/null; do a=$(grep RssAnon /proc/$tpid/status | awk '{print $2}'); [ $a -gt $peak ] && peak=$a; sleep 0.1; done
for i in $(seq 20); do a=$(grep RssAnon /proc/$tpid/status | awk '{print $2}'); [ $a -gt $peak ] && peak=$a; sleep 0.1; done
echo "$bin: before cleanup ${pre} KiB, peak during/after cleanup ${peak} KiB; $(grep -E 'mkdir|upload' b.txt | awk '{n+=$7} END {print n" entries"}')"
curl -s 127.0.0.1:7541/metrics | grep -E '^terad_(heap_in_use_bytes|heap_free_bytes|dram_used_bytes)' | tr '\n' ' '; echo
kill $tpid; wait $tpid 2>/dev/null; cd /; rm -rf $w
