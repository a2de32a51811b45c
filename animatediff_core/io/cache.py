"""The private model cache: local copies of remote model files and folders (http(s), s3://, ...).

    $ANIMATEDIFF_CACHE (default ~/.cache/animatediff, or $XDG_CACHE_HOME/animatediff)
        <sha256 of the URI>[.safetensors|.ckpt|...]   a file, mode 0600
        <sha256 of the URI>.dir/                      a folder

- Private: the folder is 0700 and must belong to the user (a folder of someone else's is refused, one of
  ours with wider modes is narrowed); files are 0600.
- Names come from the hash of the URI alone (plus a known file extension, which loaders read), so no URL
  text (`?`, `/`, `..`) ever becomes a path, and a file and a folder never share a name.
- Atomic: a copy is written under a temporary name and renamed into place; a reader never sees a partial one.
- Bounded: each copy within its kind's limit (`bounded.py`), the whole cache within `--max-cache-mb`,
  least recently used copies removed first.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
import urllib.parse

from animatediff_core.io import bounded, storage
from animatediff_core.io.bounded import MB, InputError, ReadLimits, fetch_into

log = logging.getLogger(__name__)
EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".json", ".yaml", ".txt", ".png", ".jpg", ".jpeg",
              ".webp", ".mp4", ".webm", ".gif")
FOLDER = ".dir"


def root() -> str:
    """The cache folder, created private (0700) and checked to be this user's own."""
    base = os.environ.get("ANIMATEDIFF_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "animatediff")
    os.makedirs(base, mode=0o700, exist_ok=True)
    st = os.lstat(base)
    if not os.path.isdir(base) or os.path.islink(base) or st.st_uid != os.getuid():
        raise InputError(f"model cache {base}: not a folder of this user's own (owner uid {st.st_uid}); "
                         "set ANIMATEDIFF_CACHE to a private folder")
    if st.st_mode & 0o077:
        os.chmod(base, 0o700)
    return base


def entry_name(uri: str, folder: bool) -> str:
    """`<sha256>` + a known extension of the URL's path (or `.dir`): nothing else of the URI."""
    digest = hashlib.sha256(uri.encode("utf-8", "surrogatepass")).hexdigest()
    if folder:
        return digest + FOLDER
    path = urllib.parse.urlsplit(uri).path.lower() if "://" in uri else uri.lower()
    ext = next((e for e in EXTENSIONS if path.endswith(e)), "")
    return digest + ext


def local_path(uri: str, kind: str, what: str = "", limits: ReadLimits | None = None) -> str:
    """A local path for the file or folder `uri`, checked (regular files within the `kind` limit): itself
    when local, else a copy in this cache."""
    limits = limits or bounded.current()
    path = bounded.checked_local(uri, kind, what, limits)
    if path is not None:
        return path
    cap, flag = limits.cap(kind)
    return fetch(str(uri), cap, flag, bounded.label(uri, what), limits)


def localize(uri: str, kind: str = "model") -> str:
    """A local path for ``uri``: itself when local (unchecked: the caller's own files), else a copy of the
    file or folder in this cache, fetched within the limits of `kind` (`bounded.py`: where it may point, its
    size, time-outs) and reused by later calls on the same node."""
    if storage.is_local(uri):
        return storage.fs_and_path(uri)[1]
    return local_path(str(uri), kind)


def fetch(uri: str, cap: int, flag: str, what: str, limits: ReadLimits) -> str:
    """The local copy of remote `uri` (fetched into the cache first when absent); see `local_path`."""
    base = root()
    for folder in (False, True):  # a cached copy of either kind
        path = os.path.join(base, entry_name(uri, folder))
        found = os.path.isdir(path) if folder else os.path.isfile(path)
        if found and not os.path.islink(path):
            _touch(path)
            return path
    tmp = tempfile.mkdtemp(dir=base, prefix=".partial-")  # 0700; inside: the file or the folder
    try:
        target = os.path.join(tmp, "copy")
        folder = fetch_into(uri, cap, flag, what, limits, target)
        if not folder:
            os.chmod(target, 0o600)
        size = _size(target)
        if size > limits.max_cache_mb * MB:
            raise InputError(f"{what}: {size / MB:.1f} MiB is more than the whole model cache may hold (raise --max-cache-mb)")
        path = os.path.join(base, entry_name(uri, folder))
        _replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    evict(base, limits.max_cache_mb * MB, keep=path)
    return path


def _replace(src: str, dest: str) -> None:
    """Move `src` to `dest` atomically; whatever stood there of the wrong kind goes first."""
    if os.path.lexists(dest) and (os.path.isdir(dest) != os.path.isdir(src) or os.path.islink(dest)):
        _remove(dest)
    try:
        os.replace(src, dest)
    except OSError:  # another process put the same folder there first: theirs is as good
        if not os.path.isdir(dest):
            raise


def _touch(path: str) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


def _size(path: str) -> int:
    if not os.path.isdir(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def evict(base: str, limit: int, keep: str = "") -> int:
    """Remove the least recently used copies until the cache holds at most `limit` bytes; returns how many.
    Partial copies older than a day (a process killed mid-copy) go too."""
    entries = []
    for name in os.listdir(base):
        path = os.path.join(base, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if name.startswith(".partial-"):
            if time.time() - st.st_mtime > 86400:
                _remove(path)
            continue
        entries.append((st.st_mtime, path, _size(path)))
    total, removed = sum(e[2] for e in entries), 0
    for _, path, size in sorted(entries):
        if total <= limit:
            break
        if path == keep:
            continue
        _remove(path)
        total, removed = total - size, removed + 1
    if removed:
        log.info("model cache %s: removed %d least recently used copies to stay under %d MiB", base, removed, limit // MB)
    return removed
