# Sourced by the two-agent scripts: a callee agent and a caller agent that
# joins it, as processes on fixed loopback ports, logs and data in $WORK.
# Needs BIN, THREADS, WORK and the array pids (each started pid is added).
#   start_two_agents PREFIX "CALLEE FLAGS" "CALLER FLAGS"
# Sets CALLEE and CALLER to the pids; the caller's proxy is 127.0.0.1:14102.
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
