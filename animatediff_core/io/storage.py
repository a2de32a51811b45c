"""Thin helpers over fsspec so every module accepts any URI.

A URI is a local path, ``file://``, ``s3://``, ``gs://``, ``memory://`` or (for reading)
``http(s)://``. Credentials come from ``**storage_options`` or the usual environment
(``AWS_*``, ``AWS_ENDPOINT_URL``, fsspec config).
"""

from __future__ import annotations

import os
import re
import tempfile
import time

import fsspec
from fsspec.implementations.local import LocalFileSystem

from animatediff_core.errors import ConfigError


def fs_and_path(uri: str, **storage_options) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return the filesystem for ``uri`` and the path inside it (protocol stripped)."""
    return fsspec.core.url_to_fs(str(uri), **storage_options)


def is_local(uri: str) -> bool:
    """True when ``uri`` is a plain path or ``file://`` URI."""
    return isinstance(fs_and_path(uri)[0], LocalFileSystem)


def join(base_uri: str, *parts: str) -> str:
    """Join path parts onto a URI, keeping its scheme (``s3://b/x`` + ``a.mp4`` -> ``s3://b/x/a.mp4``)."""
    base_uri = str(base_uri)
    if "://" not in base_uri:
        return os.path.join(base_uri, *parts)
    clean = [p.strip("/") for p in parts if p.strip("/")]
    return "/".join([base_uri.rstrip("/"), *clean])


def read_bytes(uri: str, **storage_options) -> bytes:
    """Read a whole object or file."""
    fs, path = fs_and_path(uri, **storage_options)
    return fs.cat_file(path)


def read_small(uri: str, **storage_options) -> bytes:
    """Read a whole small file (a sidecar, a config) in one request: an open range (`start=0`) keeps
    object stores from asking for its size first (s3fs would send a HEAD before the GET)."""
    fs, path = fs_and_path(uri, **storage_options)
    return fs.cat_file(path, start=0)


def exists(uri: str, **storage_options) -> bool:
    fs, path = fs_and_path(uri, **storage_options)
    return fs.exists(path)


def size(uri: str, **storage_options) -> int:
    """Size in bytes of a file or object."""
    fs, path = fs_and_path(uri, **storage_options)
    return int(fs.size(path))


def makedirs(uri: str, **storage_options) -> None:
    """Create a local directory (and parents); a no-op on object stores, which have no directories."""
    fs, path = fs_and_path(uri, **storage_options)
    if isinstance(fs, LocalFileSystem):
        os.makedirs(path, exist_ok=True)


# A local atomic write's temp file: `.NAME.XXXXXXXX.tmp` beside NAME (mkstemp's 8 random characters).
_TEMP_SUFFIX = ".tmp"
_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}" + re.escape(_TEMP_SUFFIX))


def write_bytes_atomic(uri: str, data: bytes, **storage_options) -> None:
    """Write ``data`` so that no partial file is ever visible under ``uri``.

    Local: temp file in the same directory, fsync, ``os.replace`` (atomic on POSIX), mode 0644.
    Other filesystems (s3, gcs, memory, ...): one ``pipe_file`` call; a single PUT is atomic there.
    """
    fs, path = fs_and_path(uri, **storage_options)
    if not isinstance(fs, LocalFileSystem):
        fs.pipe_file(path, bytes(data))
        return
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=_TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs should be readable like normal files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def remove_leftover_temps(uri: str, recursive: bool = True) -> int:
    """Remove the temp files of `write_bytes_atomic` calls that never finished in the local folder `uri`
    (and its subfolders when `recursive`), and return how many: a writer killed mid-write (SIGKILL, the OOM
    killer, a lost node) leaves its `.NAME.XXXXXXXX.tmp`, and nothing else removes it. Call it only on
    folders the caller owns, while no write there is in flight. Object stores have none (a write there is
    one PUT): 0."""
    fs, path = fs_and_path(uri)
    if not isinstance(fs, LocalFileSystem) or not os.path.isdir(path):
        return 0
    removed = 0
    for root, dirs, files in os.walk(path):  # symlinked folders are not followed
        if not recursive:
            dirs.clear()
        for name in files:
            if _TEMP_NAME.fullmatch(name):
                try:
                    os.remove(os.path.join(root, name))
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed


def check_writable(uri: str, flag: str) -> None:
    """Raise ConfigError naming `flag` unless a file can be written (and removed again) under `uri`."""
    probe = join(uri, f".write-test-{os.getpid()}-{time.time_ns()}")
    try:
        write_bytes_atomic(probe, b"")
        fs, path = fs_and_path(probe)
        fs.rm(path)
    except Exception as e:  # any backend's permission, missing bucket or network error
        raise ConfigError(f"{flag} {uri}: not writable ({type(e).__name__}: {str(e)[:200]})") from None


def write_text_atomic(uri: str, text: str, **storage_options) -> None:
    """UTF-8 text version of :func:`write_bytes_atomic`."""
    write_bytes_atomic(uri, text.encode("utf-8"), **storage_options)


def arrow_location(uri: str, **storage_options):
    """``(path, pyarrow filesystem or None)`` for Ray Data's and pyarrow's readers and writers: local
    paths as they are (None: pyarrow's own local filesystem), anything else through fsspec, so s3://,
    gs:// and memory:// behave as everywhere else in the project."""
    from pyarrow.fs import FSSpecHandler, PyFileSystem  # here: planning needs pyarrow's filesystems only for Ray Data

    fs, path = fs_and_path(uri, **storage_options)
    if isinstance(fs, LocalFileSystem):
        return os.path.abspath(path), None
    return path, PyFileSystem(FSSpecHandler(fs))


def isdir(uri: str, **storage_options) -> bool:
    fs, path = fs_and_path(uri, **storage_options)
    return fs.isdir(path)


def upload_dir(local_dir: str, uri: str, **storage_options) -> None:
    """Copy a local folder to ``uri`` (any filesystem), file by file, each write atomic."""
    for root, _, files in os.walk(local_dir):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), local_dir)
            with open(os.path.join(root, name), "rb") as f:
                write_bytes_atomic(join(uri, *rel.split(os.sep)), f.read(), **storage_options)
