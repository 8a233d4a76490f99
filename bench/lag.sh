#!/usr/bin/env bash
# Latency at a fixed rate: N subscribers (default 1000) over WebSocket, 100 msg/s for
# 30 s, fanfare and its nats-server on core 0, fanfare-bench on core 1. Prints the
# bench's end-to-end percentiles and fanfare's own delivery lag (arrival at fanfare to
# the socket write) from its fanfare_delivery_lag_seconds histogram, for each path.
# SERVER=floor runs the bench crate's `floor` instead (WebSocket only: one write per
# socket from one loop, nothing else) and prints its arrival-to-last-write times: the
# least own lag any server can have for this fan-out on this machine.
# usage: bench/lag.sh [N=1000] [TRANSPORT=ws]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}; T=${2:-ws}
export PATH="$PATH:/usr/sbin"
cargo build --release --quiet --workspace --bins
work=$(mktemp -d); pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"' EXIT
. bench/lib.sh
NP=$(free_port); EP=$(free_port); AP=$(free_port)
taskset -c 0 nats-server -a 127.0.0.1 -p "$NP" >/dev/null 2>&1 & pids+=($!)
wait_port "$NP"
if [ "${SERVER:-fanfare}" = floor ]; then
  [ "$T" = ws ] || { echo "the floor speaks WebSocket only" >&2; exit 2; }
  taskset -c 0 target/release/floor "127.0.0.1:$EP" "nats://127.0.0.1:$NP" feed 2>"$work/floor.log" & FF=$!; pids+=($FF)
  wait_port "$EP"
  taskset -c 1 target/release/fanfare-bench --scenario fanout --transport ws --url "ws://127.0.0.1:$EP/" \
    --subject feed --publish "nats://127.0.0.1:$NP" --connections "$N" --messages 3000 --rate 100 --server-pid "$FF"
  echo "  floor: $(tail -n 1 "$work/floor.log" | sed 's/^floor: //')"
  exit 0
fi
sed -e "s/EDGE_PORT/$EP/; s/ADMIN_PORT/$AP/; s/NATS_PORT/$NP/" bench/peers/fanfare.yaml > "$work/f.yaml"
taskset -c 0 target/release/fanfare --config "$work/f.yaml" 2>/dev/null & FF=$!; pids+=($FF)
wait_port "$EP"
scheme=ws; [ "$T" = sse ] && scheme=http
taskset -c 1 target/release/fanfare-bench --scenario fanout --transport "$T" --url "$scheme://127.0.0.1:$EP/feed" \
  --subject feed --publish "nats://127.0.0.1:$NP" --connections "$N" --messages 3000 --rate 100 --server-pid "$FF"
curl -s "http://127.0.0.1:$AP/metrics" | python3 -c '
import sys, re
series = {}
for l in sys.stdin:
    m = re.match(r"fanfare_delivery_lag_seconds_bucket\{path=\"(\w+)\",le=\"([^\"]+)\"\} (\S+)", l)
    if m:
        le = float("inf") if m.group(2) == "+Inf" else float(m.group(2))
        series.setdefault(m.group(1), []).append((le, float(m.group(3))))
what = {"fanout": "the fan-out'"'"'s own writes, at each message'"'"'s last socket",
        "queue": "clients'"'"' tasks, per batch"}
for path, b in sorted(series.items()):
    total = b[-1][1]
    if total == 0:
        continue
    q = lambda p: next(le for le, c in b if c >= p * total)
    print(f"  fanfare delivery lag, {what.get(path, path)} ({int(total)} observations): "
          f"p50 <= {q(0.5)*1000:g} ms, p99 <= {q(0.99)*1000:g} ms (histogram bucket bounds)")'
