#!/bin/bash
# Heap allocations per request through one `gossamer agent` (its own
# instance, nginx `return 200`) and through HAProxy with one thread:
# a perf uprobe on glibc's malloc counts each proxy's calls while
# wrk -t1 -c32 runs. Deterministic where CPU time is not, so it shows
# what a change to the request path costs or saves.
#   mallocs-per-request.sh [GOSSAMER_BIN] [SECONDS]
# Needs root, perf (Debian's linux-perf), nginx, haproxy and wrk. Loopback only.
set -uo pipefail
BIN=${1:-target/release/gossamer} DUR=${2:-4} THREADS=1
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/lib.sh"
LIBC=$(ldd "$BIN" | awk '/libc\.so/ {print $3}')
perf probe -q -x "$LIBC" malloc 2>/dev/null
[ "$(perf probe -l 2>/dev/null | grep -c 'probe_libc:malloc')" -gt 0 ] || { echo "no uprobe on $LIBC's malloc (root and perf needed)" >&2; exit 1; }
start_agent_and_haproxy || exit 1
for proxy in "agent $AGENT 14101" "haproxy $HAPROXY 18091"; do
  read -r name pid port <<<"$proxy"
  perf stat -x, -e probe_libc:malloc -p "$pid" -o "$WORK/$name.stat" &
  PERF=$!
  sleep 0.3
  requests=$(wrk -t1 -c32 -d"${DUR}s" -H 'Host: ng.localhost' "http://127.0.0.1:$port/" |
    awk '/requests in/ {print $1}')
  kill -INT "$PERF"
  wait "$PERF" 2>/dev/null
  awk -F, -v name="$name" -v n="$requests" '/probe_libc:malloc/ {
    printf "%-8s requests=%d mallocs_per_req=%.1f\n", name, n, $1 / n }' "$WORK/$name.stat"
done
