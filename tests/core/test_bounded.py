"""Bounded reads of what cells name: regular files only, size caps, where URIs may point, time-outs, the cache."""

import http.server
import os
import threading
import time

import fsspec
import pytest

from animatediff_core.io import bounded, cache
from animatediff_core.io.bounded import InputError, ReadLimits, check_uri, read_bytes
from animatediff_core.io.cache import local_path

MB = 1 << 20


@pytest.fixture()
def server():
    """A loopback HTTP server: /ok (10 bytes), /big (2 MiB, chunked: no Content-Length), /slow (a byte every
    0.3 s), /redirect?to=URL; every request recorded."""
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            hits.append(self.path)
            if self.path.startswith("/redirect"):
                self.send_response(302)
                self.send_header("Location", self.path.split("to=", 1)[1])
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif self.path == "/big":
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for _ in range(32):
                    chunk = b"x" * (64 << 10)
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            elif self.path == "/slow":
                self.send_response(200)
                self.send_header("Content-Length", "1000")
                self.end_headers()
                for _ in range(1000):
                    try:
                        self.wfile.write(b"x")
                        self.wfile.flush()
                    except OSError:
                        return
                    time.sleep(0.3)
            else:
                self.send_response(200)
                self.send_header("Content-Length", "10")
                self.end_headers()
                self.wfile.write(b"0123456789")

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", hits
    srv.shutdown()


def test_only_regular_files_within_their_cap(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    start = time.monotonic()
    with pytest.raises(InputError, match="not a regular file \\(a FIFO\\)"):
        read_bytes(str(fifo), "image")
    assert time.monotonic() - start < 5  # refused, never waited on
    zero = tmp_path / "zero.safetensors"
    zero.symlink_to("/dev/zero")
    with pytest.raises(InputError, match="system path"):
        local_path(str(zero), "lora")
    with pytest.raises(InputError, match="system path"):
        read_bytes("/proc/self/environ", "image")
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (2 * MB))
    with pytest.raises(InputError, match="over the limit of 1 MiB \\(raise --max-image-mb\\)"):
        read_bytes(str(big), "image", "keyframe 0", ReadLimits(max_image_mb=1))
    assert len(read_bytes(str(big), "image")) == 2 * MB
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"\0" * MB)
    (folder / "b.bin").write_bytes(b"\0" * MB)
    with pytest.raises(InputError, match="more than 1 MiB .*--max-model-mb"):
        local_path(str(folder), "model", limits=ReadLimits(max_model_mb=1))
    (folder / "loop").symlink_to(folder)
    with pytest.raises(InputError, match="loop"):
        local_path(str(folder), "model")
    with pytest.raises(InputError, match="not found"):
        read_bytes(str(tmp_path / "missing.png"), "image")


def test_where_cells_may_point():
    for uri in ("/data/x.png", "file:///data/x.png", "s3://b/x.png", "gs://b/x", "memory://x", "org/name", "hf://org/n"):
        assert check_uri(uri) is None
    for uri, why in (("ftp://example.com/x", "protocol 'ftp'"), ("simplecache::s3://b/x", "protocol '::'"),
                     ("sftp://h/x", "protocol 'sftp'"), ("http://localhost:1/x", "not public"),
                     ("http://169.254.169.254/latest/meta-data", "not public"), ("https://10.1.2.3/x", "not public"),
                     ("http://[::1]:80/x", "not public"), ("http://0.0.0.0/x", "not public")):
        with pytest.raises(InputError, match=why):
            check_uri(uri, "control_video")
    allow = ReadLimits(allow_uri=["http://10.1.2.3", "ftp://mirror/"])
    assert check_uri("http://10.1.2.3:8000/x", limits=allow) == ("10.1.2.3", 8000)
    assert check_uri("ftp://mirror/a", limits=allow) is None
    with pytest.raises(InputError, match="not public"):  # a prefix ends at a boundary
        check_uri("http://10.1.2.30/x", limits=allow)
    assert check_uri("http://127.0.0.1/x", limits=ReadLimits(allow_uri=["*"])) == ("127.0.0.1", 80)


def test_remote_reads_are_checked_capped_and_timed(server, tmp_path):
    base, hits = server
    with pytest.raises(InputError, match="not public"):
        read_bytes(f"{base}/ok", "image")
    assert hits == []  # refused before any request
    allow = ReadLimits(allow_uri=[base], max_image_mb=1, read_timeout=1.5)
    assert read_bytes(f"{base}/ok", "image", limits=allow) == b"0123456789"
    with pytest.raises(InputError, match="more than the limit of 1 MiB \\(raise --max-image-mb\\)"):
        read_bytes(f"{base}/big", "image", limits=allow)
    start = time.monotonic()
    with pytest.raises(InputError, match="longer than 1.5 s \\(raise --read-timeout\\)"):
        read_bytes(f"{base}/slow", "image", limits=allow)
    assert time.monotonic() - start < 10
    other = "http://127.0.0.2:9/x"  # a redirect is checked again: not under the allowed prefix
    hits.clear()
    with pytest.raises(InputError, match="127.0.0.2.*not public"):
        read_bytes(f"{base}/redirect?to={other}", "image", limits=allow)
    assert hits == ["/redirect?to=http://127.0.0.2:9/x"]


def test_object_store_reads_are_capped():
    fs = fsspec.filesystem("memory")
    fs.pipe_file("/bounded/a.png", b"\0" * (2 * MB))
    with pytest.raises(InputError, match="over the limit of 1 MiB"):
        read_bytes("memory://bounded/a.png", "image", limits=ReadLimits(max_image_mb=1))
    assert len(read_bytes("memory://bounded/a.png", "image")) == 2 * MB
    with pytest.raises(InputError, match="longer than"):
        bounded.within(0.2, lambda: time.sleep(5), "a hung store")


def test_model_cache_is_private_hash_named_atomic_and_bounded(server, tmp_path, monkeypatch):
    base, hits = server
    root = tmp_path / "cache"
    monkeypatch.setenv("ANIMATEDIFF_CACHE", str(root))
    allow = ReadLimits(allow_uri=[base], max_cache_mb=1)
    query = f"{base}/ok?delete=1&x=.safetensors"
    path = local_path(query, "model", limits=allow)
    assert os.path.isfile(path) and open(path, "rb").read() == b"0123456789"
    assert os.path.basename(path) == cache.entry_name(query, False) and "?" not in path and "delete" not in path
    assert root.stat().st_mode & 0o777 == 0o700 and os.stat(path).st_mode & 0o777 == 0o600
    assert local_path(query, "model", limits=allow) == path and len(hits) == 1  # reused
    # A directory where the file belongs is replaced, not used.
    os.remove(path)
    os.mkdir(path)
    assert os.path.isfile(local_path(query, "model", limits=allow)) and len(hits) == 2
    # Bounded: the least recently used copies go once the cache holds more than --max-cache-mb.
    fs = fsspec.filesystem("memory")
    for i in range(3):
        fs.pipe_file(f"/cachebound/{i}.bin", b"\0" * (MB // 2))
        local_path(f"memory://cachebound/{i}.bin", "model", limits=allow)
        time.sleep(0.01)
    names = set(os.listdir(root))
    assert cache.entry_name("memory://cachebound/2.bin", False) in names
    assert cache.entry_name("memory://cachebound/0.bin", False) not in names
    assert sum(os.path.getsize(root / n) for n in names) <= MB
    os.chmod(root, 0o755)  # a folder of ours made wider is narrowed again
    cache.root()
    assert root.stat().st_mode & 0o777 == 0o700


def test_allow_uri_compares_the_parsed_url_never_its_text(server):
    """Round 4: `--allow-uri http://127.0.0.1:PORT` admitted `http://127.0.0.1:PORT:x@127.0.0.2:9/` (the text
    starts with the prefix; the connection goes to the host after the `@`), directly and through a redirect."""
    base, hits = server
    allow = ReadLimits(allow_uri=[base])
    port = base.rsplit(":", 1)[1]
    for uri in (f"{base}:x@127.0.0.2:9/img.png", f"{base}@127.0.0.2:9/img.png", f"http://u:p@127.0.0.1:{port}/ok"):
        with pytest.raises(InputError, match="user-info"):
            check_uri(uri, "image_prompt", allow)
    hits.clear()
    with pytest.raises(InputError, match="user-info"):  # the same check on a redirect from the allowed server
        read_bytes(f"{base}/redirect?to=http://127.0.0.1:{port}:x@127.0.0.2:9/x", "image", limits=allow)
    assert hits == [f"/redirect?to=http://127.0.0.1:{port}:x@127.0.0.2:9/x"]
    assert read_bytes(f"{base}/ok", "image", limits=allow) == b"0123456789"  # the allowed server itself still reads
    # host, port and path compared parsed: case and default ports normalized, `..` cannot climb out of the prefix
    paths = ReadLimits(allow_uri=["http://10.1.2.3:8000/models/"])
    assert check_uri("HTTP://10.1.2.3:8000/models/a.safetensors", limits=paths) == ("10.1.2.3", 8000)
    for uri in ("http://10.1.2.3:8000/models/../secret", "http://10.1.2.3:8001/models/a", "http://10.1.2.3:8000/modelsx",
                "https://10.1.2.3:8000/models/a"):
        with pytest.raises(InputError, match="not public"):
            check_uri(uri, limits=paths)
    with_user = ReadLimits(allow_uri=["http://reader:pw@10.1.2.3/"])  # user-info admitted where the prefix has it
    assert check_uri("http://reader:pw@10.1.2.3/x", limits=with_user) == ("10.1.2.3", 80)
