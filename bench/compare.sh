#!/usr/bin/env bash
# Side-by-side: fanfare, nats-server's websocket listener, nginx + nchan, and pushpin,
# the same scenarios with fanfare-bench, in one run on this machine. Prints a markdown
# table. Installs the Debian packages it needs when run as root.
#
# usage: bench/compare.sh [IDLE_N=10000] [FANOUT_N=10000] [MESSAGES=100]
#   ONLY="fanfare nats nchan pushpin" (the default) picks which servers run.
#   LOCKSTEP_MESSAGES=100 (the default; 0 skips it): a fan-out at FANOUT_N where each
#   message is published only once every subscriber got the previous one (no batching:
#   the cost of one message at a time, chat's and dashboards' common case).
#   DEFLATE_MESSAGES=100 (the default; 0 skips it): for the WebSocket servers, two
#   fan-outs at FANOUT_N of ~1 KB JSON messages (`--body json --payload 1000`), with
#   and without permessage-deflate offered: bytes on the wire and CPU per delivery.
# Loopback only; every process it starts is stopped by PID at the end.
# Servers run on core 0, fanfare-bench on core 1 (taskset).
set -euo pipefail
cd "$(dirname "$0")/.."
IDLE_N=${1:-10000}
FANOUT_N=${2:-10000}
MESSAGES=${3:-100}
LOCKSTEP_MESSAGES=${LOCKSTEP_MESSAGES:-100}
DEFLATE_MESSAGES=${DEFLATE_MESSAGES:-100}
export PATH="$PATH:/usr/sbin"

need=()
command -v nats-server >/dev/null || need+=(nats-server)
command -v nginx >/dev/null || need+=(nginx-light)
[ -e /usr/lib/nginx/modules/ngx_nchan_module.so ] || need+=(libnginx-mod-nchan)
command -v pushpin >/dev/null || need+=(pushpin)
command -v zurl >/dev/null || need+=(zurl)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing: ${need[*]} (sudo apt-get install ${need[*]})" >&2; exit 1
  fi
fi
cargo build --release --quiet --workspace --bins
BENCH="taskset -c 1 target/release/fanfare-bench --json --timeout 120"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
. bench/lib.sh
results="$work/results.jsonl"
ONLY=${ONLY:-fanfare nats nchan pushpin}
want() { [[ " $ONLY " == *" $1 "* ]]; }

# run NAME PIDS TRANSPORT SUB_URL PUBLISH [PUBLISH_FORMAT] [EXTRA_BENCH_ARGS]
run() {
  local name=$1 pid=$2 transport=$3 url=$4 publish=$5 format=${6:-raw} extra=${7:-}
  local common="--label $name --transport $transport --url $url --subject feed --publish $publish --publish-format $format --server-pid $pid $extra"
  $BENCH $common --scenario idle --connections "$IDLE_N" >> "$results" || echo "{\"label\":\"$name\",\"scenario\":\"idle\",\"error\":true}" >> "$results"
  $BENCH $common --scenario fanout --connections "$FANOUT_N" --messages "$MESSAGES" >> "$results" || echo "{\"label\":\"$name\",\"scenario\":\"fanout\",\"error\":true}" >> "$results"
  $BENCH $common --scenario fanout --connections 1000 --messages 300 --rate 100 | sed 's/"scenario":"fanout"/"scenario":"latency"/' >> "$results" || true
  if [ "$LOCKSTEP_MESSAGES" -gt 0 ]; then
    $BENCH $common --scenario fanout --lockstep --connections "$FANOUT_N" --messages "$LOCKSTEP_MESSAGES" | sed 's/"scenario":"fanout"/"scenario":"lockstep"/' >> "$results" || true
  fi
  if [ "$DEFLATE_MESSAGES" -gt 0 ] && [[ $transport == *ws ]]; then
    local json="--scenario fanout --body json --payload 1000 --connections $FANOUT_N --messages $DEFLATE_MESSAGES"
    $BENCH $common $json | sed 's/"scenario":"fanout"/"scenario":"json"/' >> "$results" || true
    $BENCH $common $json --deflate | sed 's/"scenario":"fanout"/"scenario":"json-deflate"/' >> "$results" || true
  fi
}

if want fanfare; then
# --- fanfare (WebSocket), on its own nats-server, both on core 0 ---
NP=$(free_port); EP=$(free_port); AP=$(free_port)
taskset -c 0 nats-server -a 127.0.0.1 -p "$NP" >/dev/null 2>&1 & pids+=($!)
wait_port "$NP"
sed -e "s/EDGE_PORT/$EP/; s/ADMIN_PORT/$AP/; s/NATS_PORT/$NP/" bench/peers/fanfare.yaml > "$work/fanfare.yaml"
taskset -c 0 target/release/fanfare --config "$work/fanfare.yaml" 2>"$work/fanfare.log" & FF=$!; pids+=($FF)
wait_port "$EP"
run fanfare-ws "$FF" ws "ws://127.0.0.1:$EP/feed" "nats://127.0.0.1:$NP"
kill "$FF"; wait "$FF" 2>/dev/null || true
# A fresh process for SSE, so its idle memory is not hidden by the WebSocket run's heap.
taskset -c 0 target/release/fanfare --config "$work/fanfare.yaml" 2>>"$work/fanfare.log" & FF=$!; pids+=($FF)
wait_port "$EP"
run fanfare-sse "$FF" sse "http://127.0.0.1:$EP/feed" "nats://127.0.0.1:$NP"
# fanfare's own delivery lag (arrival to socket write), from its histogram.
curl -s "http://127.0.0.1:$AP/metrics" | grep -E '^fanfare_delivery_lag_seconds_(bucket|count)' > "$work/lag.txt" || true
kill "$FF"; wait "$FF" 2>/dev/null || true
fi

if want nats; then
# --- nats-server websocket listener ---
NP2=$(free_port); WP=$(free_port)
sed -e "s/NATS_PORT/$NP2/; s/WS_PORT/$WP/" bench/peers/nats-ws.conf > "$work/nats-ws.conf"
taskset -c 0 nats-server -c "$work/nats-ws.conf" >/dev/null 2>&1 & NW=$!; pids+=($NW)
wait_port "$WP"
run nats-server-ws "$NW" nats-ws "ws://127.0.0.1:$WP/" "nats://127.0.0.1:$NP2"
kill "$NW"
fi

if want nchan; then
# --- nginx + nchan ---
XP=$(free_port)
sed -e "s#PORT#$XP#; s#WORKDIR#$work#g; s#MODULE#/usr/lib/nginx/modules/ngx_nchan_module.so#" bench/peers/nchan.conf > "$work/nchan.conf"
taskset -c 0 nginx -c "$work/nchan.conf" -g 'daemon off;' & NX=$!; pids+=($NX)
wait_port "$XP"
# The worker process holds the connections; measure its PID.
sleep 0.5
NXW=$(pgrep -P "$NX" | head -1)
run nchan-ws "$NXW" ws "ws://127.0.0.1:$XP/sub/feed" "http://127.0.0.1:$XP/pub/{subject}"
kill "$NX"
fi

if want pushpin; then
# --- pushpin (SSE through GRIP) ---
# pushpin is several processes: condure holds client connections, pushpin-proxy asks the
# origin through zurl, pushpin-handler holds the subscriptions. All run on core 0 and
# their RSS and CPU are summed.
OP=$(free_port); HP=$(free_port); PP=$(free_port)
taskset -c 0 python3 bench/peers/grip_origin.py "$OP" & pids+=($!)
mkdir -p "$work/run" "$work/log"
echo "* 127.0.0.1:$OP" > "$work/routes"
sed -e "s#WORKDIR#$work#g" bench/peers/zurl.conf > "$work/zurl.conf"
sed -e "s#HTTP_PORT#$HP#; s#PUBLISH_PORT#$PP#; s#WORKDIR#$work#g" bench/peers/pushpin.conf > "$work/pushpin.conf"
taskset -c 0 zurl --config="$work/zurl.conf" >"$work/zurl.out" 2>&1 & ZU=$!; pids+=($ZU)
taskset -c 0 pushpin --config "$work/pushpin.conf" >"$work/pushpin.out" 2>&1 & PU=$!; pids+=($PU)
if wait_port "$HP" && wait_port "$PP" && wait_port "$OP"; then
  # The runner's children: condure, pushpin-proxy, pushpin-handler.
  for _ in $(seq 100); do [ "$(pgrep -P "$PU" | wc -l)" -ge 3 ] && break; sleep 0.05; done
  PUSHPIN_PIDS=$(echo $(pgrep -P "$PU") "$ZU" | tr ' ' ',')
  # pushpin-proxy fails a request with 502 when more than about 100 wait on zurl, so
  # the bench opens 64 at a time here (256 for the others).
  run pushpin-sse "$PUSHPIN_PIDS" sse "http://127.0.0.1:$HP/feed" "http://127.0.0.1:$PP/publish/" pushpin "--concurrency 64"
else
  echo "pushpin did not start; its output:" >&2; cat "$work/pushpin.out" >&2
fi
kill "$PU" "$ZU" 2>/dev/null || true
fi

mkdir -p target/bench-results
saved="target/bench-results/compare-$(date +%Y%m%d-%H%M%S).jsonl"
cp "$results" "$saved"
python3 - "$results" <<'PY'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    line = line.strip()
    if not line:
        continue
    r = json.loads(line)
    rows.setdefault(r["label"], {})[r["scenario"]] = r
def kib(r):
    v = r.get("rss_per_connection_bytes")
    return f"{v/1024:.1f}" if v else "n/a"
print("| server | idle KiB/conn | fan-out deliveries/s | server CPU µs/delivery (bursts) | server CPU µs/delivery (lockstep) | lost / dup | p99 ms (1k subs, 100 msg/s) | connects/s |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for name, s in rows.items():
    i, f, l, k = s.get("idle", {}), s.get("fanout", {}), s.get("latency", {}), s.get("lockstep", {})
    lcpu = k.get("server_cpu_us_per_delivery")
    lcpu = f"{lcpu:.2f}" if lcpu is not None else "n/a"
    cpu = f.get("server_cpu_us_per_delivery")
    cpu = f"{cpu:.2f}" if cpu is not None else "n/a"
    p99 = l.get("latency_ms", {}).get("p99")
    p99 = f"{p99:.2f}" if p99 is not None else "n/a"
    dps = f.get("deliveries_per_second")
    dps = f"{dps:,.0f}" if dps else "n/a"
    print(f"| {name} | {kib(i)} | {dps} | {cpu} | {lcpu} | {f.get('lost','?')} / {f.get('duplicated','?')} | {p99} | {i.get('connections_per_second', 0):,.0f} |")
deflated = [(n, s["json"], s["json-deflate"]) for n, s in rows.items() if "json" in s and "json-deflate" in s]
if deflated:
    print()
    print("~1 KB JSON messages in bursts, without and with permessage-deflate offered:")
    print()
    print("| server | bytes on the wire per delivery | with deflate | share | server CPU µs/delivery | with deflate | ratio | lost (deflate) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, p, d in deflated:
        pw, dw = p.get("wire_bytes_per_delivery"), d.get("wire_bytes_per_delivery")
        pc, dc = p.get("server_cpu_us_per_delivery"), d.get("server_cpu_us_per_delivery")
        share = f"{100*dw/pw:.0f}%" if pw and dw else "n/a"
        ratio = f"{dc/pc:.2f}x" if pc and dc else "n/a"
        f = lambda v, spec: format(v, spec) if v is not None else "n/a"
        print(f"| {name} | {f(pw, '.0f')} | {f(dw, '.0f')} | {share} | {f(pc, '.2f')} | {f(dc, '.2f')} | {ratio} | {d.get('lost', '?')} |")
PY
echo
echo "raw results (one JSON object per run): $saved; rerun with: bench/compare.sh $IDLE_N $FANOUT_N $MESSAGES"
