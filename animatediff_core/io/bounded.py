"""Bounded reads of the URIs that table cells, checkpoint tables and scored folders name: the one place
every such read goes through.

- **Where** (`check_uri`): local paths, object stores (s3, gs, az, ...), Hub ids and http(s) to public
  addresses. http(s) to loopback, link-local, private or other non-global addresses, and every other
  protocol (ftp, sftp, chained `a::b` URLs, ...), only under a prefix the operator lists in
  `--allow-uri` (`*`: anything). Each redirect is checked again, and a connection goes to the address
  that was checked (a name that resolves elsewhere later is never followed there).
- **What**: regular files only (no FIFOs, devices, /proc or /sys), at most `--max-<kind>-mb` per file,
  and a folder at most that much in all (kinds: image, video, lora, model, table: a scored folder's metadata).
- **How long**: a remote read connects within `--connect-timeout` and ends within `--read-timeout`
  seconds; object-store reads are abandoned past it.

Exceeding a limit raises InputError naming the URI, the limit and the flag that raises it. Remote files
and folders that loaders need on disk go through the private model cache (`cache.py`). The job sets the
limits once per process (`configure`); without that, the defaults hold. HTTP proxies ($HTTP_PROXY) are not
used: connections go straight to the checked address.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import os
import posixpath
import socket
import ssl
import stat
import threading
import time
import urllib.parse
from dataclasses import dataclass

from animatediff_core.io import storage
from animatediff_core.configs import check_fields, need, option
from animatediff_core.errors import ConfigError
from animatediff_core.redact import redact_uri

MB = 1 << 20
KINDS = ("image", "video", "lora", "model", "table")
# Object stores and the Hub: reads there are bounded in size and time, and may be named by any cell.
STORES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "memory", "hf")
SPECIAL = ("/proc", "/sys", "/dev")  # never read as a file, whatever the link says
MAX_REDIRECTS = 5
MAX_FOLDER_FILES = 10_000
MAX_FOLDER_DEPTH = 8


class InputError(ConfigError):
    """A URI a cell names may not or could not be read: the message names the URI and the limit."""


@dataclass(frozen=True, kw_only=True)
class ReadLimits:
    """What a cell may name and how much of it is read (`animatediff_core/io/bounded.py`)."""

    max_image_mb: int = option(64, low=1, help="largest image a cell may name (keyframes, ip_adapter_image, control image folders), MiB")
    max_video_mb: int = option(1024, low=1, help="largest video a cell may name (control_video, init_video), MiB")
    max_lora_mb: int = option(2048, low=1, help="largest motion LoRA file a cell may name, MiB")
    max_model_mb: int = option(16384, low=1, help="largest model file or folder a cell or checkpoint table may name "
                                                  "(checkpoints, control models), MiB; also caps each remote copy")
    max_table_mb: int = option(4096, low=1, help="largest metadata shard read from a folder given to --score-only, MiB")
    max_cache_mb: int = option(65536, low=1, help="the private model cache ($ANIMATEDIFF_CACHE) is kept under this, MiB")
    connect_timeout: float = option(10.0, low=0.1, high=600, help="seconds a remote read may take to connect")
    read_timeout: float = option(600.0, low=1, help="seconds a whole remote read may take")
    allow_uri: list[str] = option([], help="URI prefixes cells may name beyond local paths, object stores, Hub ids and "
                                           "public http(s) (e.g. http://10.0.0.5:8000/ or ftp://); '*' allows anything, "
                                           "private addresses included")

    def __post_init__(self):
        check_fields(self)

    def cap(self, kind: str) -> tuple[int, str]:
        """(bytes, flag) of the size limit for `kind`."""
        need(kind in KINDS, f"read kind must be one of {', '.join(KINDS)}, got {kind!r}")
        return getattr(self, f"max_{kind}_mb") * MB, f"--max-{kind}-mb"


_current = ReadLimits()


def configure(limits: ReadLimits) -> None:
    """Set this process's limits (the job's flags): each actor and the driver call it once."""
    global _current
    _current = limits


def current() -> ReadLimits:
    return _current


def _what(uri: str, what: str) -> str:
    shown = uri if len(uri) <= 200 else uri[:197] + "..."
    return f"{what} {shown}" if what else shown


def _url_parts(uri: str) -> tuple[str, str, str, int | None, str] | None:
    """(scheme, user-info, host, port, normalized path) of an http(s) URL, parsed as the connection will be
    made (the host is what follows any `user:password@`); the port is None where none is written. None when
    `uri` is not http(s) or does not parse."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme.lower() not in ("http", "https"):
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
    path = posixpath.normpath("/" + urllib.parse.unquote(parts.path)) if parts.path else "/"
    return parts.scheme.lower(), userinfo, (parts.hostname or "").lower(), port, path


def _allowed_by_prefix(uri: str, prefixes) -> bool:
    url = _url_parts(uri)
    for p in prefixes:
        if p == "*":
            return True
        allowed = _url_parts(p)
        if url or allowed:
            # http(s): compared parsed, never as text: `http://10.0.0.5:x@169.254.169.254/` connects to the host
            # after the `@`, so a prefix's text must not admit it. Scheme, user-info and host must be equal, the
            # port too where the prefix writes one, and the normalized path must lie under the prefix's.
            if not (url and allowed) or url[:3] != allowed[:3]:
                continue
            default = 443 if url[0] == "https" else 80
            if allowed[3] is not None and (url[3] or default) != allowed[3]:
                continue
            base = allowed[4].rstrip("/")
            if url[4] == allowed[4] or url[4].startswith(base + "/") or not base:
                return True
            continue
        # A prefix ends at a path, port or query boundary: s3://bucket must not admit s3://bucket2.
        if uri == p or (uri.startswith(p) and (p.endswith(("/", ":")) or uri[len(p)] in "/:?#")):
            return True
    return False


def scheme(uri: str) -> str:
    """The protocol of `uri` ("" for a plain path); a chained URL (`a::b`, fsspec's) reports "::"."""
    uri = str(uri)
    head, sep, _ = uri.partition("://")
    if sep and head.lower() in ("http", "https"):
        return head.lower()  # our own client reads these: "::" is only an IPv6 host here
    if "::" in uri:
        return "::"
    return head.lower() if sep else ""


def check_uri(uri: str, what: str = "", limits: ReadLimits | None = None) -> tuple[str, int] | None:
    """Raise InputError unless a cell may name `uri`; for http(s), return the (address, port) that was
    checked (connect there, not to a fresh lookup). Resolves names; reads nothing."""
    limits = limits or _current
    uri = str(uri)
    if _allowed_by_prefix(uri, limits.allow_uri):
        return _address(uri, what) if scheme(uri) in ("http", "https") else None
    kind = scheme(uri)
    if kind in ("", "file"):
        return None
    if kind in STORES:
        return None
    if kind in ("http", "https"):
        if "@" in urllib.parse.urlsplit(uri).netloc:
            raise InputError(f"{_what(redact_uri(uri), what)}: a URL with user-info (`user:password@` before the host) "
                             "may not be read; list its prefix, user-info included, in --allow-uri to permit it")
        address = _address(uri, what)
        ip = ipaddress.ip_address(address[0])
        if not ip.is_global or ip.is_multicast:
            raise InputError(f"{_what(uri, what)}: an http(s) address that is not public ({address[0]}: loopback, "
                             "link-local or private) may not be read; list its prefix in --allow-uri to permit it")
        return address
    raise InputError(f"{_what(uri, what)}: the protocol {kind!r} may not be read (local paths, object stores, Hub ids "
                     "and public http(s) may); list its prefix in --allow-uri to permit it")


def _address(uri: str, what: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(uri)
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        raise InputError(f"{_what(uri, what)}: not a valid URL (bad port)") from None
    if not parts.hostname:
        raise InputError(f"{_what(uri, what)}: not a valid URL (no host)")
    try:
        found = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise InputError(f"{_what(uri, what)}: cannot resolve host {parts.hostname[:100]!r} ({type(e).__name__})") from None
    addresses = [ipaddress.ip_address(a[4][0].split("%")[0]) for a in found]
    mapped = [a.ipv4_mapped or a if isinstance(a, ipaddress.IPv6Address) else a for a in addresses]
    # Every address the name has must pass: a name that answers public and private alike is refused.
    worst = next((a for a in mapped if not a.is_global or a.is_multicast), mapped[0])
    return str(worst), port


# --- local files -------------------------------------------------------------------------------------

def _special(real: str) -> bool:
    return any(real == s or real.startswith(s + "/") for s in SPECIAL)


def _open_regular(path: str, cap: int, flag: str, what: str) -> tuple[int, int]:
    """(fd, size) of a local regular file of at most `cap` bytes; InputError otherwise. Never blocks:
    a FIFO is opened non-blocking and refused."""
    real = os.path.realpath(path)
    if _special(real):
        raise InputError(f"{what}: not a regular file ({real} is a system path)")
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise InputError(f"{what}: not found") from None
    except OSError as e:
        raise InputError(f"{what}: cannot open it ({type(e).__name__}: {e.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else \
            "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file"
        raise InputError(f"{what}: not a regular file ({kind})")
    if st.st_size > cap:
        os.close(fd)
        raise InputError(f"{what}: {st.st_size / MB:.1f} MiB is over the limit of {cap // MB} MiB (raise {flag})")
    return fd, st.st_size


def _read_fd(fd: int, cap: int, flag: str, what: str) -> bytes:
    chunks, total = [], 0
    try:
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > cap:  # the file grew after the size check
                raise InputError(f"{what}: more than the limit of {cap // MB} MiB (raise {flag})")
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def _check_folder(path: str, cap: int, flag: str, what: str) -> None:
    """Every file under a local folder is a regular file (links followed, loops refused), and all of
    them together stay within `cap` bytes and MAX_FOLDER_FILES files."""
    total, count, seen = 0, 0, set()
    stack = [(os.path.realpath(path), 0)]
    while stack:
        folder, depth = stack.pop()
        if folder in seen or depth > MAX_FOLDER_DEPTH:
            raise InputError(f"{what}: folders nested deeper than {MAX_FOLDER_DEPTH} levels or linked in a loop")
        seen.add(folder)
        with os.scandir(folder) as entries:
            for e in entries:
                real = os.path.realpath(e.path)
                if _special(real):
                    raise InputError(f"{what}: {e.name} is not a regular file ({real} is a system path)")
                try:
                    st = os.stat(real)
                except OSError:
                    raise InputError(f"{what}: {e.name} cannot be read (a broken link?)") from None
                if stat.S_ISDIR(st.st_mode):
                    stack.append((real, depth + 1))
                    continue
                if not stat.S_ISREG(st.st_mode):
                    raise InputError(f"{what}: {e.name} is not a regular file")
                total, count = total + st.st_size, count + 1
                if total > cap or count > MAX_FOLDER_FILES:
                    raise InputError(f"{what}: the folder holds more than {cap // MB} MiB or {MAX_FOLDER_FILES} files "
                                     f"(raise {flag})")


# --- remote reads --------------------------------------------------------------------------------------

class _Pinned(http.client.HTTPSConnection):
    """An HTTP(S) connection to a checked address, with the URL's host name for TLS and the Host header."""

    def __init__(self, host: str, address: tuple[str, int], https: bool, timeout: float):
        super().__init__(host, address[1], timeout=timeout, context=ssl.create_default_context() if https else None)
        self.address, self.https = address, https

    def connect(self):
        sock = socket.create_connection(self.address, self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host) if self.https else sock


def _http_get(uri: str, cap: int, flag: str, what: str, limits: ReadLimits, sink) -> None:
    """GET `uri` into `sink(chunk)`, following up to MAX_REDIRECTS redirects (each checked again), within
    `limits.read_timeout` seconds in all and `cap` bytes."""
    deadline = time.monotonic() + limits.read_timeout
    for _ in range(MAX_REDIRECTS + 1):
        address = check_uri(uri, what, limits)
        parts = urllib.parse.urlsplit(uri)
        conn = _Pinned(parts.hostname, address, parts.scheme.lower() == "https", limits.connect_timeout)
        try:
            conn.request("GET", urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, "")),
                         headers={"Accept-Encoding": "identity", "User-Agent": "animatediff-ray"})
            _remaining(conn, deadline, limits, what)
            resp = conn.getresponse()
            if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
                uri = urllib.parse.urljoin(uri, resp.getheader("Location"))
                continue
            if resp.status == 404:
                raise InputError(f"{what}: not found (HTTP 404)")
            if resp.status != 200:
                raise InputError(f"{what}: HTTP {resp.status} {resp.reason[:60]}")
            length = resp.getheader("Content-Length")
            if length and length.isdigit() and int(length) > cap:
                raise InputError(f"{what}: {int(length) / MB:.1f} MiB is over the limit of {cap // MB} MiB (raise {flag})")
            total = 0
            while True:
                _remaining(conn, deadline, limits, what)
                chunk = resp.read1(1 << 16)  # what one receive gives: a slow server cannot hold a read past the deadline
                if not chunk:
                    return
                total += len(chunk)
                if total > cap:
                    raise InputError(f"{what}: more than the limit of {cap // MB} MiB (raise {flag})")
                sink(chunk)
        except (OSError, http.client.HTTPException) as e:
            if isinstance(e, (socket.timeout, TimeoutError)):
                raise _late(what, limits) from None
            raise InputError(f"{what}: the read failed ({type(e).__name__}: {str(e)[:200]})") from None
        finally:
            conn.close()
    raise InputError(f"{what}: more than {MAX_REDIRECTS} redirects")


def _late(what: str, limits: ReadLimits) -> InputError:
    return InputError(f"{what}: the read took longer than {limits.read_timeout:g} s (raise --read-timeout) or did not "
                      f"connect within {limits.connect_timeout:g} s (--connect-timeout)")


def _remaining(conn, deadline: float, limits: ReadLimits, what: str) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _late(what, limits)
    if conn.sock is not None:
        conn.sock.settimeout(left)


def within(seconds: float, fn, what: str, limits: ReadLimits | None = None):
    """`fn()`, abandoned (its thread left to finish or hang on its own) when it takes longer than `seconds`:
    for filesystems whose clients have no total time-out of their own."""
    box: dict = {}

    def work():
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    thread = threading.Thread(target=work, daemon=True, name="bounded-read")
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise _late(what, limits or _current)
    if "error" in box:
        raise box["error"]
    return box["value"]


def _store_call(fn, what: str, limits: ReadLimits):
    """`fn()` (a read from an object store or other filesystem) within the read time-out; the store's own
    errors (`OSError`) as one line that names the input."""
    try:
        return within(limits.read_timeout, fn, what, limits)
    except InputError:
        raise
    except OSError as e:
        raise InputError(f"{what}: the read failed ({type(e).__name__}: {str(e)[:200]})") from None


def _store_read(uri: str, cap: int, flag: str, what: str, limits: ReadLimits) -> bytes:
    fs, path = storage.fs_and_path(uri)

    def work():
        try:
            info = fs.info(path)
        except FileNotFoundError:
            raise InputError(f"{what}: not found") from None
        if info.get("type") == "directory":
            raise InputError(f"{what}: a folder, not a file")
        size = info.get("size")
        if size is None or int(size) > cap:
            raise InputError(f"{what}: {'an unknown size' if size is None else f'{int(size) / MB:.1f} MiB'} is over "
                             f"the limit of {cap // MB} MiB (raise {flag})")
        data = fs.cat_file(path)
        if len(data) > cap:
            raise InputError(f"{what}: more than the limit of {cap // MB} MiB (raise {flag})")
        return data

    return _store_call(work, what, limits)


# --- the API -----------------------------------------------------------------------------------------

def read_bytes(uri: str, kind: str, what: str = "", limits: ReadLimits | None = None) -> bytes:
    """The whole file at `uri`, within the limits for `kind` (image, video, lora, model)."""
    limits = limits or _current
    uri, label = str(uri), _what(str(uri), what)
    cap, flag = limits.cap(kind)
    check_uri(uri, what, limits)
    if scheme(uri) in ("http", "https"):
        chunks: list[bytes] = []
        _http_get(uri, cap, flag, label, limits, chunks.append)
        return b"".join(chunks)
    if storage.is_local(uri):
        fd, _ = _open_regular(storage.fs_and_path(uri)[1], cap, flag, label)
        return _read_fd(fd, cap, flag, label)
    return _store_read(uri, cap, flag, label, limits)


def is_folder(uri: str, what: str = "", limits: ReadLimits | None = None) -> bool:
    """Whether `uri` names a folder (http(s) never does); checks the URI first, reads nothing."""
    limits = limits or _current
    check_uri(uri, what, limits)
    if scheme(uri) in ("http", "https"):
        return False
    if storage.is_local(uri):
        return os.path.isdir(storage.fs_and_path(uri)[1])
    fs, path = storage.fs_and_path(uri)
    return bool(within(limits.read_timeout, lambda: fs.isdir(path), _what(uri, what), limits))


def source(uri: str, kind: str, what: str = "", limits: ReadLimits | None = None) -> str | bytes:
    """A checked local path (decoders stream it from disk) or, for a remote URI, its bytes."""
    limits = limits or _current
    check_uri(uri, what, limits)
    if scheme(uri) not in ("http", "https") and storage.is_local(uri):
        path = storage.fs_and_path(uri)[1]
        cap, flag = limits.cap(kind)
        os.close(_open_regular(path, cap, flag, _what(uri, what))[0])
        return path
    return read_bytes(uri, kind, what, limits)


def checked_local(uri: str, kind: str, what: str = "", limits: ReadLimits | None = None) -> str | None:
    """The checked local path of the file or folder `uri` (regular files within the `kind` limit, a folder
    within its file count and depth), or None when `uri` is remote (`cache.local_path` then copies it)."""
    limits = limits or _current
    check_uri(uri, what, limits)
    if scheme(uri) in ("http", "https") or not storage.is_local(uri):
        return None
    label = _what(str(uri), what)
    cap, flag = limits.cap(kind)
    path = storage.fs_and_path(uri)[1]
    if os.path.isdir(path):
        _check_folder(path, cap, flag, label)
    else:
        os.close(_open_regular(path, cap, flag, label)[0])
    return path


def label(uri: str, what: str = "") -> str:
    """How an error names `uri`: `what` and the URI with secrets hidden."""
    return _what(str(uri), what)


def fetch_into(uri: str, cap: int, flag: str, what: str, limits: ReadLimits, dest: str) -> bool:
    """Copy the remote file or folder `uri` to the local path `dest` within `cap` bytes in all; True when
    it was a folder. (For `cache.py`: callers use `cache.local_path`.)"""
    if scheme(uri) in ("http", "https"):
        with open(dest, "wb") as f:
            _http_get(uri, cap, flag, what, limits, f.write)
        return False
    fs, path = storage.fs_and_path(uri)

    def work():
        if not fs.isdir(path):
            data = _store_read(uri, cap, flag, what, limits)
            with open(dest, "wb") as f:
                f.write(data)
            return False
        found = fs.find(path.rstrip("/"), detail=True)
        sizes = [int(v.get("size") or 0) for v in found.values() if v.get("type") != "directory"]
        if sum(sizes) > cap or len(sizes) > MAX_FOLDER_FILES:
            raise InputError(f"{what}: the folder holds more than {cap // MB} MiB or {MAX_FOLDER_FILES} files (raise {flag})")
        fs.get(path.rstrip("/") + "/", dest + "/", recursive=True)
        return True

    return _store_call(work, what, limits)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
