#!/usr/bin/env python3
"""Memory per held connection: opens N idle SSE (or WebSocket) connections to a running
fanfare, waits until its connection gauge shows them all, and reports fanfare's VmRSS
before and after. Loopback only; bounded; closes everything it opened.

usage: bench/idle_rss.py --edge 127.0.0.1:8080 --admin 127.0.0.1:9090 --pid PID \
         --path /orders/1/events [--n 10000] [--transport sse|ws]
"""
import argparse, asyncio, base64, os, re, resource, sys, time, urllib.request


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def gauge(admin, transport):
    body = urllib.request.urlopen(f"http://{admin}/metrics", timeout=5).read().decode()
    m = re.search(r'^fanfare_connections\{transport="%s"\} (\S+)$' % transport, body, re.M)
    return float(m.group(1)) if m else 0.0


async def open_one(host, port, path, transport, source):
    r, w = await asyncio.open_connection(host, port, local_addr=(source, 0))
    if transport == "ws":
        key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
    else:
        req = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n"
    w.write(req.encode())
    await w.drain()
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
    want = b" 101 " if transport == "ws" else b" 200 "
    if want not in head.split(b"\r\n")[0] + b" ":
        raise RuntimeError(f"unexpected response: {head[:80]!r}")
    return r, w


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--edge", required=True)
    ap.add_argument("--admin", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--path", required=True)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--transport", choices=["sse", "ws"], default="sse")
    ap.add_argument("--batch", type=int, default=500)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    host, port = a.edge.rsplit(":", 1)
    before = rss_kib(a.pid)
    conns = []
    t0 = time.time()
    for i in range(0, a.n, a.batch):
        k = min(a.batch, a.n - i)
        # Spread over 127.0.0.x sources so ephemeral ports never run out.
        conns += await asyncio.gather(*[
            open_one(host, int(port), a.path, a.transport, f"127.0.0.{2 + (i + j) // 20000}")
            for j in range(k)])
    connect_s = time.time() - t0
    deadline = time.time() + 60
    while gauge(a.admin, a.transport) < a.n:
        if time.time() > deadline:
            sys.exit(f"gauge never reached {a.n}: {gauge(a.admin, a.transport)}")
        await asyncio.sleep(0.2)
    await asyncio.sleep(1)  # let allocator settle before reading RSS
    after = rss_kib(a.pid)
    per = (after - before) * 1024 / a.n
    print(f"transport={a.transport} connections={a.n} connect_time={connect_s:.1f}s")
    print(f"VmRSS before={before} KiB after={after} KiB delta={after - before} KiB")
    print(f"per connection: {per:.0f} bytes ({per / 1024:.2f} KiB)")
    for _, w in conns:
        w.close()


asyncio.run(main())
