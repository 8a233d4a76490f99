"""A round-robin TCP balancer for bench/storm.sh: each new connection goes to the next
backend that accepts it (a refused backend is skipped, as a Kubernetes Service skips a
pod that stopped being ready). The backends' ports are read from FILE (one line,
space-separated) at each connection, so they can change under way.
usage: balancer.py LISTEN_PORT FILE"""
import asyncio
import sys


async def main(listen, file):
    turn = 0

    async def pipe(r, w):
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

    async def serve(cr, cw):
        nonlocal turn
        with open(file) as f:
            backends = [int(p) for p in f.read().split()]
        for _ in range(len(backends)):
            port = backends[turn % len(backends)]
            turn += 1
            try:
                br, bw = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            await asyncio.gather(pipe(cr, bw), pipe(br, cw))
            return
        cw.close()

    server = await asyncio.start_server(serve, "127.0.0.1", listen, backlog=4096)
    async with server:
        await server.serve_forever()


asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
