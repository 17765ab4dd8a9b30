#!/bin/bash
# redis-server behind one agent, a `--tcp` listener on another, and
# redis-benchmark GET at concurrency 32, direct then through the mesh;
# prints the ratio and each agent's CPU per GET (from /proc).
#   redis-through-mesh.sh [GOSSAMER_BIN] [THREADS] [ROUNDS]
# Needs redis-server and redis-tools (Debian). Loopback only.
set -uo pipefail
BIN=${1:-target/release/gossamer} THREADS=${2:-1} ROUNDS=${3:-2}
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/lib.sh"
redis-server --port 16379 --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" >/dev/null 2>&1 &
pids+=($!)
start_two_agents redis "--service redis=16379" "--tcp redis=127.0.0.1:16380"
for _ in $(seq 1 100); do
  [ "$(redis-cli -p 16380 PING 2>/dev/null)" = PONG ] && break
  sleep 0.2
done
redis-cli -p 16380 SET key:__rand_int__ value >/dev/null
rate() { redis-benchmark -p "$1" -t get -c 32 -n "$2" -q | grep -oE '[0-9.]+ requests per second' | awk '{print $1}'; }
n=100000
for _ in $(seq 1 "$ROUNDS"); do
  direct=$(rate 16379 200000)
  a0=$(ticks $CALLER) b0=$(ticks $CALLEE)
  mesh=$(rate 16380 $n)
  a1=$(ticks $CALLER) b1=$(ticks $CALLEE)
  python3 -c "print(f'direct={$direct:.0f}/s mesh={$mesh:.0f}/s ratio={$mesh/$direct:.2f} caller={($a1-$a0)/$hz*1e6/$n:.1f}us callee={($b1-$b0)/$hz*1e6/$n:.1f}us per GET')"
done
