#!/usr/bin/env bash
# Reconnect storm: N client sessions on one fanfare route, then a restart. Two shapes:
#   single  - the only instance restarts: SIGTERM, drain (5 s), the new process started
#             as soon as the old one exits (a single replica, or a plain process)
#   rolling - two instances behind a round-robin balancer that skips an instance that
#             refuses (a Kubernetes Service); the one holding the sessions gets SIGTERM
#             and drains (5 s) into the other
# Prints, per shape and client kind, how many sessions came back in each second after
# the SIGTERM, and the largest share any one second holds (the goal: at most 15%).
# Kinds: a browser's EventSource with a fixed retry: (retry_jitter: 0, what every
# client got before), the same with fanfare's jittered retry:, and fanfare's client
# over SSE and over WebSocket (its backoff). fanfare on core 0, Node on core 1.
# Installs the `eventsource` package (npm) into target/bench-node.
# usage: [DRAIN=5s] [SHAPES="single rolling"] bench/storm.sh [N=1000]
#   DRAIN: shutdown.drain of the instance that restarts (fanfare's default is 20s)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
DRAIN=${DRAIN:-5s}
GRACE="$(( ${DRAIN%s} + 3 ))s"
cargo build --release --quiet --bin fanfare
nm=target/bench-node
if [ ! -d "$nm/node_modules/eventsource" ]; then
  mkdir -p "$nm" && (cd "$nm" && { [ -f package.json ] || echo '{"private":true}' > package.json; } && npm install --no-audit --no-fund --silent eventsource@2)
fi
work=$(mktemp -d); pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"' EXIT
. bench/lib.sh

config() { # FILE EDGE_PORT JITTER
  cat > "$1" <<YAML
listen: 127.0.0.1:$2
upstream: http://127.0.0.1:1
admin: { listen: 127.0.0.1:$(free_port) }
log: { level: warn }
shutdown: { grace: $GRACE, drain: $DRAIN }
limits: { max_connections: 100000, max_connections_per_ip: 100000, max_pending_per_ip: 100000 }
routes:
  - path: /storm
    transports: [ws, sse]
    subjects: [storm]
    auth: { mode: none }
    retry: 2s
    retry_jitter: $3
YAML
}

run() { # SHAPE KIND MODE JITTER
  local shape=$1 kind=$2 mode=$3 jitter=$4 ep bp=""
  ep=$(free_port); config "$work/a.yaml" "$ep" "$jitter"
  taskset -c 0 target/release/fanfare --config "$work/a.yaml" 2>/dev/null & local ff=$!; pids+=($ff)
  wait_port "$ep"
  local target=$ep other=""
  if [ "$shape" = rolling ]; then
    local ep2; ep2=$(free_port); config "$work/b.yaml" "$ep2" "$jitter"
    taskset -c 0 target/release/fanfare --config "$work/b.yaml" 2>/dev/null & other=$!; pids+=($other)
    wait_port "$ep2"
    # Until the restart the balancer knows only A, so every session starts there.
    bp=$(free_port); echo "$ep" > "$work/backends"
    taskset -c 0 python3 bench/peers/balancer.py "$bp" "$work/backends" & local lb=$!; pids+=($lb)
    wait_port "$bp"; target=$bp
  fi
  NODE_PATH="$PWD/$nm/node_modules" taskset -c 1 node --experimental-websocket --no-warnings \
    bench/peers/storm.mjs "$mode" "http://127.0.0.1:$target" /storm "$N" > "$work/opens" & local driver=$!; pids+=($driver)
  for _ in $(seq 600); do [ "$(wc -l < "$work/opens")" -ge "$N" ] && break; sleep 0.1; done
  [ "$shape" = rolling ] && echo "$ep $ep2" > "$work/backends"
  local term; term=$(date +%s%3N)
  kill -TERM "$ff"; wait "$ff" 2>/dev/null || true
  if [ "$shape" = single ]; then
    taskset -c 0 target/release/fanfare --config "$work/a.yaml" 2>/dev/null & ff=$!; pids+=($ff)
    wait_port "$ep"
  fi
  local up; up=$(date +%s%3N)
  for _ in $(seq 600); do [ "$(wc -l < "$work/opens")" -ge $((2 * N)) ] && break; sleep 0.1; done
  kill "$driver" "$ff" $other ${lb:-} 2>/dev/null || true; wait "$driver" "$ff" $other ${lb:-} 2>/dev/null || true
  python3 - "$shape" "$kind" "$N" "$term" "$up" "$work/opens" <<'PY'
import collections, json, sys
shape, kind, n, term, up, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
opens = sorted(int(l.split()[1]) for l in open(path) if l.startswith("open "))
back = [t for t in opens if t >= term][: n]
per = collections.Counter((t - term) // 1000 for t in back)
hist = [per.get(s, 0) for s in range(max(per) + 1)] if per else []
print(json.dumps({"shape": shape, "kind": kind, "sessions": n, "reconnected": len(back),
                  "old_process_gone_s": round((up - term) / 1000, 2),
                  "per_second_after_sigterm": hist,
                  "max_share_per_second": round(max(hist) / max(len(back), 1), 3) if hist else None}))
PY
}

for shape in ${SHAPES:-single rolling}; do
  run "$shape" "EventSource, fixed retry: 2000" eventsource 0
  run "$shape" "EventSource, jittered retry: (default)" eventsource 0.5
  run "$shape" "fanfare client, SSE" client-sse 0.5
  run "$shape" "fanfare client, WebSocket" client-ws 0.5
done
