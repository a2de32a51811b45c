"""A loopback HTTP server that records every request: for tests that a job must never fetch a URL."""

from __future__ import annotations

import http.server
import threading
from contextlib import contextmanager


@contextmanager
def recording_server():
    """`with recording_server() as (base_url, hits):` a server on 127.0.0.1 answering 200 to GET and HEAD;
    `hits` lists the paths requested."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()

        do_HEAD = do_GET

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
