#!/usr/bin/env python3
"""The origin pushpin holds streams for: every GET answers an SSE stream held open on
channel `feed` (GRIP `Grip-Hold: stream`). usage: grip_origin.py PORT"""
import http.server, sys

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Grip-Hold", "stream")
        self.send_header("Grip-Channel", "feed")
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass

class Server(http.server.ThreadingHTTPServer):
    # socketserver's default backlog of 5 turns a connect burst into 502s from pushpin.
    request_queue_size = 4096
    daemon_threads = True

Server(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
