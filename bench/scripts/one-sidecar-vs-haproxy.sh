#!/bin/bash
# nginx `return 200` behind one `gossamer agent` (its own instance) and
# behind HAProxy with one thread; wrk -t1 -c32 through each in alternating
# rounds; prints req/s, p99 and each proxy's CPU per request (from /proc).
# With PERF_OUT set, records the agent with perf during its last round.
#   one-sidecar-vs-haproxy.sh [GOSSAMER_BIN] [THREADS] [SECONDS] [ROUNDS]
# Needs nginx, haproxy and wrk (Debian packages). Loopback only.
set -uo pipefail
BIN=${1:-target/release/gossamer} THREADS=${2:-1} DUR=${3:-4} ROUNDS=${4:-3}
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/lib.sh"
start_agent_and_haproxy || exit 1
for round in $(seq 1 "$ROUNDS"); do
  if [ -n "${PERF_OUT:-}" ] && [ "$round" = "$ROUNDS" ]; then
    perf record -F 4999 -g -o "$PERF_OUT" -p "$AGENT" -- sleep "$DUR" 2>/dev/null &
    PERF_PID=$!
  fi
  echo "agent   $("$HERE/cpu-per-request.sh" "$AGENT" http://127.0.0.1:14101/ ng.localhost "$DUR")"
  echo "haproxy $("$HERE/cpu-per-request.sh" "$HAPROXY" http://127.0.0.1:18091/ ng.localhost "$DUR")"
done
[ -n "${PERF_PID:-}" ] && wait "$PERF_PID"
echo "direct  req/s=$(wrk -t1 -c32 -d"${DUR}s" http://127.0.0.1:18090/ | awk '/Requests\/sec/ {print $2}')"
