"""The batch job's output folder, one function per path: nothing else spells these names.

    OUT/videos/[MOTION/]CHECKPOINT/ID.mp4   the video (.gif preview, .json sidecar beside it)
    OUT/videos/[MOTION/]CHECKPOINT/ID_frames/0000.png   its frames as PNGs (--frames-png)
    OUT/prompts.csv                         the --prompt texts, as a prompt table
    OUT/metadata/RUN-KEY.parquet            metadata shards, each written atomically as rows finish
    OUT/index.html                          the summary page
    OUT/job.yaml                            the resolved job config
    OUT/.runs/RUN.json                      the claim of the run that is writing here now (lease.py)

The MOTION level appears only when a job sweeps more than one motion module. Every name that
becomes a path part (ids, checkpoint and motion-module names) passes one rule, and every path is
checked to lie under OUT, locally and on object stores alike.
"""

from __future__ import annotations

import posixpath
import re
import secrets
import time
from dataclasses import dataclass

from animatediff_core.errors import ConfigError
from animatediff_core.io import storage

NAME_RULE = "1 to 128 characters from A-Z a-z 0-9 . _ - (not '.' or '..')"
_SAFE = re.compile(r"[A-Za-z0-9._-]{1,128}")


def is_safe_name(value: str) -> bool:
    return isinstance(value, str) and bool(_SAFE.fullmatch(value)) and value not in (".", "..")


def check_name(value: str, what: str) -> str:
    """`value` if it is safe as one path part, else ConfigError naming the rule."""
    if not is_safe_name(value):
        shown = value if len(str(value)) <= 60 else str(value)[:57] + "..."
        raise ConfigError(f"{what} {shown!r} is not a safe file name: use {NAME_RULE}")
    return value


def new_run_id() -> str:
    """Sorts by start time: later runs' metadata shards win over earlier ones for the same row."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)


@dataclass(frozen=True)
class OutputLayout:
    out: str
    by_motion: bool = False  # several motion modules: one more folder level

    @property
    def videos(self) -> str:
        return self._under("videos")

    def folder(self, motion: str, checkpoint: str) -> str:
        parts = ([check_name(motion, "motion module name")] if self.by_motion else []) + [check_name(checkpoint, "checkpoint name")]
        return storage.join(self.videos, *parts)

    def remove_leftover_temps(self) -> int:
        """Remove what writers killed mid-write left in the folders the job writes (`storage.remove_leftover_temps`):
        OUT itself, videos/ and metadata/ with what is below them; not .runs/, where the live claim's heartbeat writes."""
        return (storage.remove_leftover_temps(self.out, recursive=False) + storage.remove_leftover_temps(self.videos)
                + storage.remove_leftover_temps(self.metadata))

    def video(self, motion: str, checkpoint: str, rid: str, ext: str = "mp4") -> str:
        return storage.join(self.folder(motion, checkpoint), f"{check_name(rid, 'id')}.{ext}")

    def sidecar(self, motion: str, checkpoint: str, rid: str) -> str:
        return self.video(motion, checkpoint, rid, "json")

    def frames(self, motion: str, checkpoint: str, rid: str) -> str:
        """The folder of a video's PNG frames (`0000.png`, ...)."""
        return storage.join(self.folder(motion, checkpoint), f"{check_name(rid, 'id')}_frames")

    @property
    def prompt_table(self) -> str:
        """The prompts given as `--prompt TEXT`, written as a table the job reads like any other."""
        return self._under("prompts.csv")

    @property
    def metadata(self) -> str:
        return self._under("metadata")

    def shard(self, run_id: str, key: str) -> str:
        return storage.join(self.metadata, f"{check_name(run_id, 'run id')}-{check_name(key, 'shard key')}.parquet")

    @property
    def index(self) -> str:
        return self._under("index.html")

    @property
    def job_config(self) -> str:
        return self._under("job.yaml")

    @property
    def runs(self) -> str:
        return self._under(".runs")

    def run_claim(self, run_id: str) -> str:
        return storage.join(self.runs, f"{check_name(run_id, 'run id')}.json")

    def _under(self, *parts: str) -> str:
        rel = posixpath.normpath("/".join(parts))
        if rel.startswith(("..", "/")):  # unreachable with checked names; kept as the last line of defence
            raise ConfigError(f"refusing to write {rel!r}: outside --out {self.out}")
        return storage.join(self.out, *rel.split("/"))


def shard_run_id(name: str) -> str:
    """The run id a shard's file name starts with (`RUN-KEY.parquet`)."""
    base = name.rsplit("/", 1)[-1].removesuffix(".parquet")
    return base.rsplit("-", 1)[0]
