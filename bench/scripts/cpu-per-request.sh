#!/bin/bash
# CPU per request of one process under a closed loop of wrk (32 connections),
# read from /proc/PID/stat before and after: what the process costs, which
# holds better than req/s on a machine other work shares.
#   cpu-per-request.sh PID URL HOST [SECONDS]
# Prints req/s, p99 and CPU µs per request of PID. Loopback targets only.
set -euo pipefail
PID=$1 URL=$2 HOST=$3 DUR=${4:-5}
case "$URL" in http://127.*|http://localhost*) ;; *) echo "loopback URLs only" >&2; exit 2;; esac
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
t0=$(ticks "$PID")
out=$(wrk -t1 -c32 -d"${DUR}s" --latency -H "Host: $HOST" "$URL")
t1=$(ticks "$PID")
rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
reqs=$(awk '/requests in/ {print $1}' <<<"$out")
p99=$(awk '$1=="99%" {print $2}' <<<"$out")
hz=$(getconf CLK_TCK)
cpu=$(python3 -c "print(round(($t1-$t0)/$hz*1e6/$reqs,1))")
echo "rps=$rps p99=$p99 cpu_us_per_req=$cpu"
