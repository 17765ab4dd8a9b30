# Sourced by the comparison scripts, right after they set BIN, THREADS
# and HERE: a work dir ($WORK) removed on exit with every process started
# (each script adds its pids to the array `pids`), and the agents:
#   start_agent NAME INDEX FLAGS...     one agent; ports 1410/1420/1430/1440 + INDEX
#   start_two_agents PREFIX "CALLEE FLAGS" "CALLER FLAGS"
#   start_nginx                         nginx `return 200` on 127.0.0.1:18090
#   wait_proxied PORT                   until ng.localhost answers 200 through PORT
#   start_agent_and_haproxy             nginx, HAProxy on :18091 and one agent on
#                                       :14101 in front of it, both warmed up;
#                                       sets AGENT and HAPROXY to their pids
#   ticks PID                           CPU ticks PID has used (user + system; $hz a second)
# start_two_agents sets CALLEE and CALLER to the pids; the caller's proxy is
# 127.0.0.1:14102.
WORK=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
start_agent() { # NAME INDEX FLAGS...
  local name=$1 index=$2
  shift 2
  GOSSAMER_LOG=${GOSSAMER_LOG:-warn} "$BIN" agent --node-id "$name" --bind "127.0.0.1:1430$index" \
    --admin-listen "127.0.0.1:1420$index" --proxy-listen "127.0.0.1:1410$index" \
    --metrics-listen "127.0.0.1:1440$index" --data-dir "$WORK/$name" \
    --psk bench-passphrase --profile lan --dns-listen off --threads "$THREADS" \
    "$@" >"$WORK/$name.log" 2>&1 &
  pids+=($!)
}
start_two_agents() {
  local prefix=$1
  # Word splitting of the flag strings is intended: they hold plain flags.
  # shellcheck disable=SC2086
  start_agent "$prefix-callee" 1 $2
  CALLEE=$!
  sleep 0.5
  # shellcheck disable=SC2086
  start_agent "$prefix-caller" 2 --join 127.0.0.1:14301 $3
  CALLER=$!
}
start_nginx() {
  nginx -c "$HERE/nginx-return-200.conf" -p "$WORK" &
  pids+=($!)
}
wait_proxied() { # PORT
  for _ in $(seq 1 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: ng.localhost' "http://127.0.0.1:$1/")" = 200 ] && return 0
    sleep 0.2
  done
  echo "nothing answered through 127.0.0.1:$1 within 20 s" >&2
  return 1
}
start_agent_and_haproxy() {
  start_nginx
  haproxy -f "$HERE/haproxy-one-thread.cfg" -db >/dev/null 2>&1 &
  HAPROXY=$!
  pids+=($HAPROXY)
  start_agent one 1 --service ng=18090
  AGENT=$!
  wait_proxied 14101 || return 1
  wrk -t1 -c32 -d1s -H 'Host: ng.localhost' http://127.0.0.1:14101/ >/dev/null
  wrk -t1 -c32 -d1s http://127.0.0.1:18091/ >/dev/null
}
