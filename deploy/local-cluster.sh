#!/usr/bin/env bash
# Start an N-node Gossamer mesh on this machine's loopback, with an echo
# service behind every agent, and stop it all on Ctrl-C.
#
#   cargo build --release -p sidecar
#   deploy/local-cluster.sh 3
#
# Port scheme: node i (1..N) owns the ten ports from BASE + 10*i, of which it
# uses six (BASE defaults to 20000, below Linux's ephemeral range):
#   BASE+10*i+0  QUIC (UDP)   --bind, the address the other nodes --join
#   BASE+10*i+1  admin API    --admin-listen
#   BASE+10*i+2  proxy        --proxy-listen
#   BASE+10*i+3  metrics      --metrics-listen
#   BASE+10*i+4  echo service `gossamer echo`, registered as --service echo=PORT
#   BASE+10*i+5  DNS (UDP and TCP) --dns-listen
# so node-3 uses 20030 (QUIC), 20031 (admin), 20032 (proxy), 20033 (metrics),
# 20034 (echo) and 20035 (DNS: dig @127.0.0.1 -p 20035 echo.service.gossamer). Every node joins node-1.
#
# Environment:
#   GOSSAMER_BIN        the binary (default: $CARGO_TARGET_DIR or target/ of
#                       this repository, then release/gossamer)
#   GOSSAMER_PORT_BASE  BASE above (default 20000)
#   GOSSAMER_KEEP_DATA  set to 1 to keep the data and log directory on exit
set -euo pipefail

readonly MAX_NODES=50
readonly PSK=local-cluster-demo

usage() {
    cat >&2 <<USAGE
usage: $(basename "$0") N

Starts N Gossamer agents (1 to $MAX_NODES) on 127.0.0.1, each with an echo
service, all joined through node-1. Ctrl-C stops them and removes their data.
Environment: GOSSAMER_BIN, GOSSAMER_PORT_BASE (default 20000), GOSSAMER_KEEP_DATA=1.
USAGE
    exit 2
}

[[ $# -eq 1 ]] || usage
n=$1
if ! [[ $n =~ ^[0-9]+$ ]] || ((10#$n < 1 || 10#$n > MAX_NODES)); then
    echo "error: N must be a whole number from 1 to $MAX_NODES, got '$n'" >&2
    usage
fi
n=$((10#$n))

base=${GOSSAMER_PORT_BASE:-20000}
if ! [[ $base =~ ^[0-9]+$ ]] || ((base < 1024 || base + 10 * n + 4 > 65535)); then
    echo "error: GOSSAMER_PORT_BASE=$base leaves no room for $n nodes (needs 1024 <= BASE and BASE + 10*N + 4 <= 65535)" >&2
    exit 2
fi

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${GOSSAMER_BIN:-${CARGO_TARGET_DIR:-$repo/target}/release/gossamer}
if [[ ! -x $bin ]]; then
    echo "error: no gossamer binary at $bin" >&2
    echo "build it with: cargo build --release -p sidecar   (or set GOSSAMER_BIN)" >&2
    exit 1
fi

quic_port() { echo $((base + 10 * $1)); }
admin_port() { echo $((base + 10 * $1 + 1)); }
proxy_port() { echo $((base + 10 * $1 + 2)); }
metrics_port() { echo $((base + 10 * $1 + 3)); }
echo_port() { echo $((base + 10 * $1 + 4)); }
dns_port() { echo $((base + 10 * $1 + 5)); }

tcp_port_in_use() { (: >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

for ((i = 1; i <= n; i++)); do
    for port in $(admin_port "$i") $(proxy_port "$i") $(metrics_port "$i") $(echo_port "$i"); do
        if tcp_port_in_use "$port"; then
            echo "error: 127.0.0.1:$port (node-$i) is already in use; pick another GOSSAMER_PORT_BASE" >&2
            exit 1
        fi
    done
done

dir=$(mktemp -d "${TMPDIR:-/tmp}/gossamer-local.XXXXXX")
agent_pids=()
echo_pids=()

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    # Agents first: on SIGTERM each one leaves the cluster and deregisters its
    # echo instance, so the others see a clean departure, not a failure.
    if ((${#agent_pids[@]})); then kill -TERM "${agent_pids[@]}" 2>/dev/null || true; fi
    local deadline=$((SECONDS + 15))
    for pid in "${agent_pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    if ((${#echo_pids[@]})); then kill -TERM "${echo_pids[@]}" 2>/dev/null || true; fi
    wait 2>/dev/null || true
    if [[ ${GOSSAMER_KEEP_DATA:-0} == 1 ]]; then
        echo "kept data and logs in $dir" >&2
    else
        rm -rf "$dir"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

seed=127.0.0.1:$(quic_port 1)
for ((i = 1; i <= n; i++)); do
    mkdir -p "$dir/node-$i"
    "$bin" echo --listen "127.0.0.1:$(echo_port "$i")" >"$dir/echo-$i.log" 2>&1 &
    echo_pids+=($!)

    join=()
    ((i == 1)) || join=(--join "$seed")
    "$bin" agent \
        --node-id "node-$i" \
        --bind "127.0.0.1:$(quic_port "$i")" \
        "${join[@]}" \
        --psk "$PSK" \
        --admin-listen "127.0.0.1:$(admin_port "$i")" \
        --proxy-listen "127.0.0.1:$(proxy_port "$i")" \
        --metrics-listen "127.0.0.1:$(metrics_port "$i")" \
        --dns-listen "127.0.0.1:$(dns_port "$i")" \
        --data-dir "$dir/node-$i" \
        --profile local \
        --service "echo=$(echo_port "$i")" \
        >"$dir/node-$i.log" 2>&1 &
    agent_pids+=($!)
done

# Wait until every agent answers /v1/health, or report the one that did not.
if command -v curl >/dev/null; then
    deadline=$((SECONDS + 30))
    for ((i = 1; i <= n; i++)); do
        until curl -fsS -o /dev/null "http://127.0.0.1:$(admin_port "$i")/v1/health" 2>/dev/null; do
            if ! kill -0 "${agent_pids[i - 1]}" 2>/dev/null; then
                echo "error: node-$i exited; last lines of $dir/node-$i.log:" >&2
                tail -n 20 "$dir/node-$i.log" >&2 || true
                exit 1
            fi
            if ((SECONDS >= deadline)); then
                echo "error: node-$i not healthy after 30 s; last lines of $dir/node-$i.log:" >&2
                tail -n 20 "$dir/node-$i.log" >&2 || true
                exit 1
            fi
            sleep 0.2
        done
    done
else
    echo "note: curl not found, not waiting for /v1/health" >&2
fi

printf '%-8s %-16s %-28s %-28s %-36s\n' NODE QUIC ADMIN PROXY METRICS
for ((i = 1; i <= n; i++)); do
    printf '%-8s %-16s %-28s %-28s %-36s\n' "node-$i" \
        "127.0.0.1:$(quic_port "$i")" \
        "http://127.0.0.1:$(admin_port "$i")" \
        "http://127.0.0.1:$(proxy_port "$i")" \
        "http://127.0.0.1:$(metrics_port "$i")/metrics"
done
cat <<INFO

Try:
  curl -H 'Host: echo.localhost' http://127.0.0.1:$(proxy_port 1)/
  $bin members --agent http://127.0.0.1:$(admin_port 1)
  curl http://127.0.0.1:$(admin_port 1)/v1/services/echo/instances
Logs and data: $dir
Ctrl-C stops all $n nodes.
INFO

# Run until Ctrl-C, or until any agent or echo server exits on its own.
set +e
wait -n
status=$?
set -e
echo "error: a process exited (status $status); stopping the cluster. See the logs in $dir" >&2
GOSSAMER_KEEP_DATA=1
exit 1
