"""One live run per output folder.

A run claims `--out` before it writes anything there (`OUT/.runs/RUN.json`: run id, host, pid, start,
last heartbeat), refreshes the claim every `HEARTBEAT` seconds while it runs, and removes it at the end.
A second run on a live `--out` refuses with one line naming the running one, so no run ever removes
another live run's metadata shards. A claim is stale (its run was killed) when its process is gone
(same host) or its heartbeat is older than `STALE` seconds (any host, object stores included); a
stale claim never blocks. Two runs started at the same instant both write their claims, then both
look again: the later claim (by start time, then run id) withdraws.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from contextlib import contextmanager

from animatediff_core.errors import ConfigError
from animatediff_core.io import storage
from pipelines.animate.layout import OutputLayout

log = logging.getLogger(__name__)
HEARTBEAT = 30.0
STALE = 150.0


def _alive(claim: dict, now: float) -> bool:
    if claim.get("host") == socket.gethostname():
        try:
            os.kill(int(claim.get("pid", -1)), 0)
        except (ProcessLookupError, ValueError, OverflowError):
            return False
        except PermissionError:  # someone else's process: alive
            pass
    return now - float(claim.get("heartbeat", 0)) < STALE


def live_claims(layout: OutputLayout) -> list[dict]:
    """The claims of runs that are alive now, oldest first."""
    fs, path = storage.fs_and_path(layout.runs)
    try:
        names = [n for n in fs.ls(path, detail=False) if n.endswith(".json")]
    except (FileNotFoundError, NotADirectoryError):
        return []
    now, found = time.time(), []
    for name in names:
        try:
            claim = json.loads(storage.read_small(storage.join(layout.runs, name.rstrip("/").rsplit("/", 1)[-1])))
        except (OSError, ValueError):
            continue  # removed meanwhile, or half-written by a dying process
        if isinstance(claim, dict) and _alive(claim, now):
            found.append(claim)
    return sorted(found, key=lambda c: (float(c.get("started", 0)), str(c.get("run", ""))))


def describe(claim: dict) -> str:
    seen = time.time() - float(claim.get("heartbeat", 0))
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(claim.get("started", 0))))
    return (f"run {claim.get('run')} (pid {claim.get('pid')} on {claim.get('host')}, started {started} UTC, "
            f"last seen {seen:.0f}s ago)")


def refuse_if_live(layout: OutputLayout, exclude: str = "") -> None:
    """ConfigError (one line) when another run holds `--out`."""
    others = [c for c in live_claims(layout) if c.get("run") != exclude]
    if others:
        raise ConfigError(f"--out {layout.out} is in use by {describe(others[0])}; wait for it to finish or use "
                          f"another --out (a killed run's claim expires {STALE:.0f}s after its last heartbeat: "
                          f"{layout.run_claim(str(others[0].get('run')))})")


@contextmanager
def claim(layout: OutputLayout, run_id: str):
    """Hold `--out` for run `run_id` while the block runs (see the module docstring)."""
    refuse_if_live(layout)
    uri = layout.run_claim(run_id)
    record = {"run": run_id, "host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}

    def beat():
        storage.write_text_atomic(uri, json.dumps({**record, "heartbeat": time.time()}))

    beat()
    try:
        first = live_claims(layout)
        if first and first[0].get("run") != run_id:  # a run that started first, claimed at the same instant
            raise ConfigError(f"--out {layout.out} is in use by {describe(first[0])}; wait for it to finish or use another --out")
        stop = threading.Event()

        def loop():
            while not stop.wait(HEARTBEAT):
                try:
                    beat()
                except OSError as e:  # a full disk must not end the run here; the claim just ages
                    log.warning("could not refresh the run's claim %s: %s", uri, e)

        thread = threading.Thread(target=loop, daemon=True, name="run-claim")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(5)
    finally:
        try:
            fs, path = storage.fs_and_path(uri)
            fs.rm(path)
        except OSError as e:
            log.warning("could not remove the run's claim %s: %s", uri, e)


def is_live(layout: OutputLayout, run_id: str) -> bool:
    return any(c.get("run") == run_id for c in live_claims(layout))
