#!/bin/bash
# Two `gossamer agent` processes on loopback (the callee fronts nginx
# `return 200`, the caller has no instance), wrk -t1 -c32 through the
# caller; prints per round req/s, p50, p99, each agent's CPU per request
# (from /proc) and UDP sends per request (from /proc/net/snmp: fewer means
# requests share datagrams).
#   two-sidecars-wrk.sh [GOSSAMER_BIN] [THREADS] [SECONDS] [ROUNDS]
# Needs nginx and wrk (Debian packages). Loopback only.
set -uo pipefail
BIN=${1:-target/release/gossamer} THREADS=${2:-1} DUR=${3:-4} ROUNDS=${4:-3}
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/lib.sh"
start_nginx
start_two_agents wrk "--service ng=18090" ""
wait_proxied 14102 || exit 1
udp_sends() { awk '/^Udp:/ {n++; if (n == 2) print $5}' /proc/net/snmp; }
wrk -t1 -c32 -d1s -H 'Host: ng.localhost' http://127.0.0.1:14102/ >/dev/null
for _ in $(seq 1 "$ROUNDS"); do
  a0=$(ticks $CALLER) b0=$(ticks $CALLEE) u0=$(udp_sends)
  out=$(wrk -t1 -c32 -d"${DUR}s" --latency -H 'Host: ng.localhost' http://127.0.0.1:14102/)
  a1=$(ticks $CALLER) b1=$(ticks $CALLEE) u1=$(udp_sends)
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  echo "req/s=$(awk '/Requests\/sec/ {print $2}' <<<"$out") p50=$(awk '$1=="50%" {print $2}' <<<"$out") p99=$(awk '$1=="99%" {print $2}' <<<"$out")" \
    "$(python3 -c "r=$reqs; print(f'caller={($a1-$a0)/$hz*1e6/r:.1f}us callee={($b1-$b0)/$hz*1e6/r:.1f}us udp_sends/req={($u1-$u0)/r:.2f}')")"
done
echo "direct req/s=$(wrk -t1 -c32 -d"${DUR}s" http://127.0.0.1:18090/ | awk '/Requests\/sec/ {print $2}')"
