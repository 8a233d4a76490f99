#!/usr/bin/env bash
# Socket.IO side by side: fanfare's WebSocket, fanfare's Socket.IO (over WebSocket) and
# the Node socket.io server (4.x, fed by NATS, io.emit), with fanfare-bench: RSS per
# idle connection and server CPU per delivery at N subscribers, in one run. Servers on
# core 0, fanfare-bench on core 1. Installs socket.io and nats (npm) into
# target/bench-node. Prints one JSON line per measurement.
# usage: bench/socketio.sh [N=10000] [MESSAGES=100]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}; MESSAGES=${2:-100}
export PATH="$PATH:/usr/sbin"
cargo build --release --quiet --workspace --bins
nm=target/bench-node
if [ ! -d "$nm/node_modules/socket.io" ]; then
  mkdir -p "$nm" && (cd "$nm" && echo '{"private":true}' > package.json && npm install --no-audit --no-fund --silent socket.io@4 nats@2)
fi
work=$(mktemp -d); pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"' EXIT
. bench/lib.sh
BENCH="taskset -c 1 target/release/fanfare-bench --json --timeout 180"
NP=$(free_port)
taskset -c 0 nats-server -a 127.0.0.1 -p "$NP" >/dev/null 2>&1 & pids+=($!)
wait_port "$NP"

measure() { # LABEL PID TRANSPORT URL
  $BENCH --label "$1" --server-pid "$2" --transport "$3" --url "$4" --subject feed \
    --publish "nats://127.0.0.1:$NP" --scenario idle --connections "$N"
  $BENCH --label "$1" --server-pid "$2" --transport "$3" --url "$4" --subject feed \
    --publish "nats://127.0.0.1:$NP" --scenario fanout --connections "$N" --messages "$MESSAGES"
}

for mode in ws socketio; do
  EP=$(free_port); AP=$(free_port)
  cat > "$work/f.yaml" <<YAML
listen: 127.0.0.1:$EP
upstream: http://127.0.0.1:1
admin: { listen: 127.0.0.1:$AP }
nats: { url: "nats://127.0.0.1:$NP" }
log: { level: warn }
limits: { max_connections: 100000, max_connections_per_ip: 100000, max_pending_per_ip: 100000 }
routes:
  - path: /feed
    transports: [ws]
    subjects: [feed]
    auth: { mode: none }
    history: { ring: 0 }
  - path: /socket.io/
    transports: [socketio]
    auth: { mode: none }
    history: { ring: 0 }
    socketio: { ping_interval: 300s, ping_timeout: 60s, namespaces: { "/": { subjects: [feed] } } }
YAML
  taskset -c 0 target/release/fanfare --config "$work/f.yaml" 2>/dev/null & FF=$!; pids+=($FF)
  wait_port "$EP"
  if [ "$mode" = ws ]; then
    measure fanfare-ws "$FF" ws "ws://127.0.0.1:$EP/feed"
  else
    measure fanfare-socketio "$FF" socketio "ws://127.0.0.1:$EP/socket.io/?EIO=4&transport=websocket"
  fi
  kill "$FF"; wait "$FF" 2>/dev/null || true
done

SP=$(free_port)
NODE_PATH="$nm/node_modules" taskset -c 0 node bench/peers/socketio-server.js "$SP" "nats://127.0.0.1:$NP" feed & NS=$!; pids+=($NS)
wait_port "$SP"
measure node-socket.io "$NS" socketio "ws://127.0.0.1:$SP/socket.io/?EIO=4&transport=websocket"
