#!/bin/bash
# A byte sink behind one agent, a `--tcp` listener on another, and one bulk
# transfer (default 1 GiB) direct, then through the mesh; prints MB/s, the
# ratio and each agent's CPU per MB (from /proc). Issue 15's TCP goal.
#   tcp-bulk-through-mesh.sh [GOSSAMER_BIN] [THREADS] [ROUNDS] [MIB]
# Loopback only.
set -uo pipefail
BIN=${1:-target/release/gossamer} THREADS=${2:-1} ROUNDS=${3:-2} MIB=${4:-1024}
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/lib.sh"
# The sink reads until EOF, answers the byte count, and closes.
python3 - <<'PY' &
import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 16390)); s.listen(16)
def serve(c):
    total, buf = 0, bytearray(1 << 20)
    while True:
        n = c.recv_into(buf)
        if n == 0: break
        total += n
    c.sendall(str(total).encode()); c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
pids+=($!)
start_two_agents bulk "--service sink=16390" "--tcp sink=127.0.0.1:16391"
send() { # PORT -> seconds
  python3 - "$1" "$MIB" <<'PY'
import socket, sys, time
port, mib = int(sys.argv[1]), int(sys.argv[2])
for _ in range(100):
    try:
        c = socket.create_connection(("127.0.0.1", port)); break
    except OSError: time.sleep(0.2)
chunk = b"x" * (1 << 20)
t0 = time.monotonic()
for _ in range(mib): c.sendall(chunk)
c.shutdown(socket.SHUT_WR)
got = int(c.recv(64) or b"0")
dt = time.monotonic() - t0
assert got == mib << 20, f"sink got {got} bytes of {mib << 20}"
print(f"{dt:.4f}")
PY
}
send 16391 >/dev/null 2>&1 || true # waits for the mesh to be ready
for _ in $(seq 1 "$ROUNDS"); do
  direct=$(send 16390)
  a0=$(ticks $CALLER) b0=$(ticks $CALLEE)
  mesh=$(send 16391)
  a1=$(ticks $CALLER) b1=$(ticks $CALLEE)
  python3 -c "
m=$MIB*1.048576
print(f'direct={m/$direct:.0f} MB/s mesh={m/$mesh:.0f} MB/s ratio={$direct/$mesh:.3f} caller={($a1-$a0)/$hz*1e3/m:.2f} ms/MB callee={($b1-$b0)/$hz*1e3/m:.2f} ms/MB')"
done
