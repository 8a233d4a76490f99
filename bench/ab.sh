#!/usr/bin/env bash
# A/B: the same fan-out scenarios against two fanfare binaries, alternating ROUNDS
# times so drift between runs shows up as spread instead of as a difference (each
# binary with its own fresh nats-server, both on core 0; fanfare-bench on core 1).
# Keeps one JSON line per run and prints a table of the server's CPU time per delivery
# and its RSS per held connection. Build the "before" binary from an older commit
# first, e.g.
#   git worktree add /tmp/before <commit> && (cd /tmp/before && cargo build --release)
#
# usage: bench/ab.sh BIN_A BIN_B [TRANSPORT=sse] [N=10000] [MESSAGES=200] [ROUNDS=1]
# Three scenarios per binary and round: bursts (MESSAGES published as fast as
# possible), one message at a time (20 msg/s, so each message is written to each
# client alone) and lockstep (each message published once every client got the one
# before). Each scenario runs on a fresh process, so "idle" RSS is a fresh process's.
# SCENARIOS="burst rate lockstep" (the default) picks some of them.
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1; B=$2; T=${3:-sse}; N=${4:-10000}; M=${5:-200}; ROUNDS=${6:-1}
export PATH="$PATH:/usr/sbin"
cargo build --release --quiet --workspace --bins
work=$(mktemp -d); pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"' EXIT
. bench/lib.sh
scheme=ws; [ "$T" = sse ] && scheme=http
mkdir -p target/bench-results
out=target/bench-results/ab-$(date +%Y%m%d-%H%M%S).jsonl
run() { # BIN NAME SCENARIO-ARGS...
  local bin=$1 name=$2; shift 2
  NP=$(free_port); EP=$(free_port); AP=$(free_port)
  taskset -c 0 nats-server -a 127.0.0.1 -p "$NP" >/dev/null 2>&1 & NS=$!; pids+=($NS)
  wait_port "$NP"
  sed -e "s/EDGE_PORT/$EP/; s/ADMIN_PORT/$AP/; s/NATS_PORT/$NP/" bench/peers/fanfare.yaml > "$work/f.yaml"
  taskset -c 0 "$bin" --config "$work/f.yaml" 2>/dev/null & FF=$!; pids+=($FF)
  wait_port "$EP"
  taskset -c 1 target/release/fanfare-bench --json --timeout 120 --transport "$T" \
    --url "$scheme://127.0.0.1:$EP/feed" --subject feed --publish "nats://127.0.0.1:$NP" \
    --server-pid "$FF" --connections "$N" --scenario fanout --label "$name" "$@" | tee -a "$out"
  kill "$FF" "$NS"; wait "$FF" "$NS" 2>/dev/null || true
}
for r in $(seq "$ROUNDS"); do
  for bin in "$A" "$B"; do
    for s in ${SCENARIOS:-burst rate lockstep}; do
      case $s in
        burst) run "$bin" "$bin burst" --messages "$M" ;;
        rate) run "$bin" "$bin one-at-a-time" --messages 60 --rate 20 ;;
        lockstep) run "$bin" "$bin lockstep" --messages 100 --lockstep ;;
        *) echo "unknown scenario $s" >&2; exit 2 ;;
      esac
    done
  done
done
python3 - "$out" <<'PY'
import json, sys
runs = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    runs.setdefault(r["label"], []).append(r)
def col(rs, key, fmt):
    return ", ".join(fmt.format(r[key]) if r.get(key) is not None else "-" for r in rs)
print("| run | µs CPU per delivery (each round) | idle bytes per connection | bytes per connection after the messages | lost |")
print("| --- | --- | --- | --- | --- |")
for name, rs in runs.items():
    print(f'| {name} | {col(rs, "server_cpu_us_per_delivery", "{:.2f}")} | '
          f'{col(rs, "rss_per_connection_bytes", "{:.0f}")} | '
          f'{col(rs, "rss_per_connection_after_messages_bytes", "{:.0f}")} | '
          f'{sum(r["lost"] for r in rs)} |')
PY
echo "results: $out"
