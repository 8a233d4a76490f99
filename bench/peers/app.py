#!/usr/bin/env python3
"""A stand-in for a framework app (a few thousand requests/s): Python's threaded
http.server answering every GET with the given file, keep-alive.
usage: app.py PORT FILE"""
import http.server, sys

BODY = open(sys.argv[2], "rb").read()

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)
    def log_message(self, *a):
        pass

class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 1024
    daemon_threads = True

    def handle_error(self, request, client_address):
        # wrk resets its connections at the end of a run; that is not an error here.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

Server(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
