#!/usr/bin/env bash
# One message at a time: fanfare's WebSocket against the floor (bench's `floor`
# binary: one non-blocking write per delivery from a single loop, nothing else), under
# the same `fanfare-bench --lockstep` load, alternating ROUNDS times so drift between
# runs shows up as spread instead of as a difference. Servers and their nats-server on
# core 0, the bench on core 1; server CPU per delivery from /proc (the server alone).
# usage: bench/floor.sh [N=10000] [MESSAGES=100] [ROUNDS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}; M=${2:-100}; ROUNDS=${3:-3}
export PATH="$PATH:/usr/sbin"
cargo build --release --quiet --workspace --bins
work=$(mktemp -d); pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"' EXIT
. bench/lib.sh
NP=$(free_port)
taskset -c 0 nats-server -a 127.0.0.1 -p "$NP" >/dev/null 2>&1 & pids+=($!)
wait_port "$NP"
lockstep() { # LABEL PID PORT PATH
  taskset -c 1 target/release/fanfare-bench --json --scenario fanout --lockstep --transport ws \
    --url "ws://127.0.0.1:$3$4" --subject feed --publish "nats://127.0.0.1:$NP" \
    --connections "$N" --messages "$M" --server-pid "$2" --label "$1" >> "$work/results.jsonl"
}
for r in $(seq "$ROUNDS"); do
  EP=$(free_port); AP=$(free_port)
  sed -e "s/EDGE_PORT/$EP/; s/ADMIN_PORT/$AP/; s/NATS_PORT/$NP/" bench/peers/fanfare.yaml > "$work/f.yaml"
  taskset -c 0 target/release/fanfare --config "$work/f.yaml" 2>/dev/null & FF=$!; pids+=($FF)
  wait_port "$EP"
  lockstep fanfare-ws "$FF" "$EP" /feed
  kill "$FF"; wait "$FF" 2>/dev/null || true
  FP=$(free_port)
  taskset -c 0 target/release/floor "127.0.0.1:$FP" "nats://127.0.0.1:$NP" feed 2>/dev/null & FL=$!; pids+=($FL)
  wait_port "$FP"
  lockstep floor "$FL" "$FP" /
  kill "$FL"; wait "$FL" 2>/dev/null || true
done
python3 - "$work/results.jsonl" <<'PY'
import json, sys
runs = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    runs.setdefault(r["label"], []).append(r)
print("| server | µs CPU per delivery, one message at a time (each round) | lost |")
print("| --- | --- | --- |")
for name, rs in runs.items():
    cpu = ", ".join(f'{r["server_cpu_us_per_delivery"]:.2f}' for r in rs)
    print(f'| {name} | {cpu} | {sum(r["lost"] for r in rs)} |')
PY
echo "rerun with: bench/floor.sh $N $M $ROUNDS"
