"""A counting reverse proxy in front of the local S3 server: tests (and bench/plan.py) see every
request a job makes, to check that work scales with folders and finished videos, not with rows."""

from __future__ import annotations

import http.client
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class CountingProxy:
    """`with CountingProxy(endpoint) as proxy:` point clients at `proxy.endpoint`; `proxy.requests`
    lists (method, path, query) of every request forwarded."""

    def __init__(self, target: str):
        self.target = urlsplit(target)
        self.requests: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # answers botocore's "Expect: 100-continue" before reading the body

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                url = urlsplit(self.path)
                with proxy.lock:
                    proxy.requests.append((self.command, url.path, url.query))
                conn = http.client.HTTPConnection(proxy.target.hostname, proxy.target.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "expect")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()

    def count(self, method: str | None = None, suffix: str = "", query: str | None = None) -> int:
        with self.lock:
            return sum(1 for m, p, q in self.requests if (method is None or m == method) and p.endswith(suffix)
                       and (query is None or query in q))

    def summary(self) -> Counter:
        with self.lock:
            return Counter((m, p.rsplit(".", 1)[-1] if "." in p.rsplit("/", 1)[-1] else "folder") for m, p, _ in self.requests)


def write_finished(out: str, prompts: list[str], motion_uri: str, defaults=None) -> int:
    """Outputs as a finished run of the batch job leaves them, without generating: for each prompt
    (checkpoint "base", the job's settings `defaults`, else its default ones) a 1-byte mp4 and a sidecar
    whose fingerprint matches the row. Returns how many."""
    import json

    import pandas as pd

    from animatediff_core.io import storage
    from animatediff_core.models.motion_formats import inspect_motion_module
    from animatediff_core.models.numerics import resolve
    from animatediff_core.models.pipeline import read_unet_config
    from animatediff_core.settings.generation import CheckpointSpec, GenerationSettings
    from pipelines.animate.identity import fingerprint
    from pipelines.animate.layout import OutputLayout
    from pipelines.animate.plan import Plan, expand_rows, normalize
    from pipelines.animate.sets import MotionSpec

    layout = OutputLayout(out)
    name = motion_uri.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0] if motion_uri.endswith(".safetensors") else motion_uri.rstrip("/").rsplit("/", 1)[-1]
    tiny_base = motion_uri.rstrip("/").rsplit("/", 1)[0] + "/base"  # the tiny model set's base, beside its modules
    motion = MotionSpec(name, motion_uri, numerics=resolve(None, inspect_motion_module(motion_uri, read_unet_config(tiny_base))).label)
    rows = expand_rows(normalize(pd.DataFrame({"prompt": prompts})), Plan(("base",), {name: 32}, defaults or GenerationSettings()))
    for r in rows.to_dict("records"):
        video = layout.video(r["motion_module"], "base", r["id"])
        storage.write_bytes_atomic(video, b"x")
        side = {"video_uri": video, "gif_uri": "", "seconds": 0.0, "bytes": 1, "sha256": "-",
                "fingerprint": fingerprint(r, motion, CheckpointSpec("base"))}
        storage.write_bytes_atomic(layout.sidecar(r["motion_module"], "base", r["id"]), json.dumps(side).encode())
    return len(rows)
