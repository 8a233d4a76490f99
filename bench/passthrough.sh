#!/usr/bin/env bash
# Pass-through cost: wrk straight at an app vs. wrk through fanfare (its fast path, and
# pingora alone with `proxy.fast_path: false`), in one run, with nginx as a reverse
# proxy (keep-alive upstream) in the same place as a reference for what any proxy costs
# here. The app is nginx serving a 1 KiB static file (Python's
# http.server is too slow to show a proxy's cost). Loopback only; bounded by DURATION;
# stops what it started.
#
# usage: bench/passthrough.sh [DURATION_S=10] [CONNECTIONS=50] [APP=static|python]
#   static: nginx serving the file (the proxy's cost shows most; the default)
#   python: bench/peers/app.py, a stand-in for a framework app at a few thousand req/s
# Pinning: app + proxy on core 0 (they share a pod's CPU), wrk on core 1.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
CONNS=${2:-50}
KIND=${3:-static}
for bin in nginx wrk; do
  command -v $bin >/dev/null 2>&1 || [ -x /usr/sbin/$bin ] || {
    echo "missing $bin: apt-get install nginx-light wrk" >&2; exit 1; }
done
export PATH="$PATH:/usr/sbin"
cargo build --release --quiet
work=$(mktemp -d)
. bench/lib.sh
APP=$(free_port); EDGE=$(free_port); ADMIN=$(free_port); NPROXY=$(free_port)
EDGE2=$(free_port); ADMIN2=$(free_port)
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
cat > "$work/proxy.conf" <<NGX
worker_processes 1;
pid $work/proxy.pid;
error_log $work/proxy-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  upstream app { server 127.0.0.1:$APP; keepalive 64; }
  server {
    listen 127.0.0.1:$NPROXY; keepalive_requests 100000;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGX
cat > "$work/fanfare.yaml" <<YML
listen: 127.0.0.1:$EDGE
upstream: http://127.0.0.1:$APP
admin: { listen: 127.0.0.1:$ADMIN }
log: { level: warn }
YML
cat > "$work/pingora.yaml" <<YML
listen: 127.0.0.1:$EDGE2
upstream: http://127.0.0.1:$APP
admin: { listen: 127.0.0.1:$ADMIN2 }
proxy: { fast_path: false }
log: { level: warn }
YML
if [ "$KIND" = python ]; then
  taskset -c 0 python3 bench/peers/app.py "$APP" "$work/index.html" & NGINX_PID=$!
else
  taskset -c 0 nginx -c "$work/nginx.conf" -g 'daemon off;' & NGINX_PID=$!
fi
taskset -c 0 target/release/fanfare --config "$work/fanfare.yaml" 2>"$work/fanfare.log" & FF_PID=$!
taskset -c 0 target/release/fanfare --config "$work/pingora.yaml" 2>"$work/pingora.log" & PG_PID=$!
taskset -c 0 nginx -c "$work/proxy.conf" -g 'daemon off;' & PROXY_PID=$!
trap 'kill $NGINX_PID $FF_PID $PG_PID $PROXY_PID 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
for port in $EDGE $EDGE2 $NPROXY; do
  for i in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/index.html" >/dev/null 2>&1 && break; sleep 0.1
  done
done
# nginx's worker handles the requests; the master only supervises.
PROXY_WORKER=$(pgrep -P $PROXY_PID | head -1)
run() { taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" "$1" | awk '/Requests\/sec/ {print $2} /Latency/ {lat=$2} END {}'; }
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
direct=$(run "http://127.0.0.1:$APP/index.html")
c0=$(cpu $FF_PID)
through=$(run "http://127.0.0.1:$EDGE/index.html")
c1=$(cpu $FF_PID)
p0=$(cpu $PG_PID)
pingora=$(run "http://127.0.0.1:$EDGE2/index.html")
p1=$(cpu $PG_PID)
n0=$(cpu $PROXY_WORKER)
nginx_proxy=$(run "http://127.0.0.1:$NPROXY/index.html")
n1=$(cpu $PROXY_WORKER)
ticks=$(getconf CLK_TCK)
python3 - "$direct" "$through" "$c0" "$c1" "$nginx_proxy" "$n0" "$n1" "$ticks" "$DURATION" "$pingora" "$p0" "$p1" <<'PY'
import sys
d, t, c0, c1, n, n0, n1, hz, dur, p, p0, p1 = (float(x) for x in sys.argv[1:])
print(f"direct to app:       {d:10.0f} req/s")
print(f"through fanfare:     {t:10.0f} req/s  ({100*t/d:.1f}% of direct), "
      f"{1e6*(c1-c0)/hz/(t*dur):.1f} us CPU per request")
print(f"fanfare, pingora only: {p:8.0f} req/s  ({100*p/d:.1f}% of direct), "
      f"{1e6*(p1-p0)/hz/(p*dur):.1f} us CPU per request  (proxy.fast_path: false)")
print(f"through nginx proxy: {n:10.0f} req/s  ({100*n/d:.1f}% of direct), "
      f"{1e6*(n1-n0)/hz/(n*dur):.1f} us CPU per request  (reference)")
PY
