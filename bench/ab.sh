#!/usr/bin/env bash
# A/B: the same fan-out scenarios against two fanfare binaries, one after the other on
# this machine (each with its own nats-server, both on core 0; fanfare-bench on core 1).
# Prints one JSON line per run with deliveries/s, latency and the server's CPU time per
# delivery. Build the "before" binary from an older commit first, e.g.
#   git worktree add /tmp/before <commit> && (cd /tmp/before && cargo build --release)
#
# usage: bench/ab.sh BIN_A BIN_B [TRANSPORT=sse] [N=10000] [MESSAGES=200]
# Two scenarios per binary: bursts (MESSAGES published as fast as possible) and one
# message at a time (20 msg/s, so each message is written to each client alone).
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1; B=$2; T=${3:-sse}; N=${4:-10000}; M=${5:-200}
export PATH="$PATH:/usr/sbin"
cargo build --release --quiet --workspace --bins
work=$(mktemp -d); pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"' EXIT
. bench/lib.sh
scheme=ws; [ "$T" = sse ] && scheme=http
for bin in "$A" "$B"; do
  NP=$(free_port); EP=$(free_port); AP=$(free_port)
  taskset -c 0 nats-server -a 127.0.0.1 -p "$NP" >/dev/null 2>&1 & NS=$!; pids+=($NS)
  wait_port "$NP"
  sed -e "s/EDGE_PORT/$EP/; s/ADMIN_PORT/$AP/; s/NATS_PORT/$NP/" bench/peers/fanfare.yaml > "$work/f.yaml"
  taskset -c 0 "$bin" --config "$work/f.yaml" 2>/dev/null & FF=$!; pids+=($FF)
  wait_port "$EP"
  common="--json --timeout 120 --transport $T --url $scheme://127.0.0.1:$EP/feed --subject feed --publish nats://127.0.0.1:$NP --server-pid $FF --connections $N"
  taskset -c 1 target/release/fanfare-bench $common --label "$bin burst" --scenario fanout --messages "$M"
  taskset -c 1 target/release/fanfare-bench $common --label "$bin one-at-a-time" --scenario fanout --messages 60 --rate 20
  kill "$FF" "$NS"; wait "$FF" "$NS" 2>/dev/null || true
done
