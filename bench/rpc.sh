#!/usr/bin/env bash
# What fanfare adds to a client's rpc: fanfare-bench serves the app itself (answering
# after 1 ms) and sends 1,000 rpc/s over 100 WebSocket connections, first straight to
# the app, then through fanfare (app.message). fanfare on core 0 (embedded broker),
# fanfare-bench and its app on core 1. Reports both latencies, the difference and
# fanfare's CPU per rpc.
# usage: bench/rpc.sh [RPCS=20000] [CONNECTIONS=100] [RATE=1000]
set -euo pipefail
cd "$(dirname "$0")/.."
RPCS=${1:-20000}; N=${2:-100}; RATE=${3:-1000}
cargo build --release --quiet --workspace --bins
work=$(mktemp -d); pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"' EXIT
. bench/lib.sh
EP=$(free_port); AP=$(free_port); APP=$(free_port)
cat > "$work/f.yaml" <<YAML
listen: 127.0.0.1:$EP
upstream: http://127.0.0.1:$APP
admin: { listen: 127.0.0.1:$AP }
log: { level: warn }
limits: { max_connections_per_ip: 100000, max_pending_per_ip: 100000 }
routes:
  - path: /rpc
    transports: [ws]
    auth: { mode: none }
    app: { message: /rpc, max_in_flight: 8 }
YAML
taskset -c 0 target/release/fanfare --config "$work/f.yaml" 2>/dev/null & FF=$!; pids+=($FF)
wait_port "$EP"
taskset -c 1 target/release/fanfare-bench --scenario rpc --url "ws://127.0.0.1:$EP/rpc" \
  --app-listen "127.0.0.1:$APP" --app-delay-ms 1 --connections "$N" --messages "$RPCS" \
  --rate "$RATE" --server-pid "$FF" --label fanfare
