#!/usr/bin/env bash
# Pass-through cost: wrk straight at an app vs. wrk through fanfare, in one run.
# The app is nginx serving a 1 KiB static file (Python's http.server is too slow to
# show a proxy's cost). Loopback only; bounded by DURATION; stops what it started.
#
# usage: bench/passthrough.sh [DURATION_S=10] [CONNECTIONS=50]
# Pinning: app + fanfare on core 0 (they share a pod's CPU), wrk on core 1.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
CONNS=${2:-50}
for bin in nginx wrk; do
  command -v $bin >/dev/null 2>&1 || [ -x /usr/sbin/$bin ] || {
    echo "missing $bin: apt-get install nginx-light wrk" >&2; exit 1; }
done
export PATH="$PATH:/usr/sbin"
cargo build --release --quiet
work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
APP=$(free_port); EDGE=$(free_port); ADMIN=$(free_port)
head -c 1024 /dev/zero | tr '\0' 'x' > "$work/index.html"
cat > "$work/nginx.conf" <<NGX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen 127.0.0.1:$APP; root $work; keepalive_requests 100000; }
}
NGX
cat > "$work/fanfare.yaml" <<YML
listen: 127.0.0.1:$EDGE
upstream: http://127.0.0.1:$APP
admin: { listen: 127.0.0.1:$ADMIN }
log: { level: warn }
YML
taskset -c 0 nginx -c "$work/nginx.conf" -g 'daemon off;' & NGINX_PID=$!
taskset -c 0 target/release/fanfare --config "$work/fanfare.yaml" 2>"$work/fanfare.log" & FF_PID=$!
trap 'kill $NGINX_PID $FF_PID 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
for i in $(seq 100); do
  curl -sf "http://127.0.0.1:$EDGE/index.html" >/dev/null 2>&1 && break; sleep 0.1
done
run() { taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" "$1" | awk '/Requests\/sec/ {print $2} /Latency/ {lat=$2} END {}'; }
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
direct=$(run "http://127.0.0.1:$APP/index.html")
c0=$(cpu $FF_PID)
through=$(run "http://127.0.0.1:$EDGE/index.html")
c1=$(cpu $FF_PID)
ticks=$(getconf CLK_TCK)
python3 - "$direct" "$through" "$c0" "$c1" "$ticks" "$DURATION" <<'PY'
import sys
d, t, c0, c1, hz, dur = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
reqs = t * dur
print(f"direct to app:   {d:10.0f} req/s")
print(f"through fanfare: {t:10.0f} req/s  ({100*t/d:.1f}% of direct)")
print(f"fanfare CPU per proxied request: {1e6*(c1-c0)/hz/reqs:.1f} us")
PY
