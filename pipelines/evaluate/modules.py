"""Which motion module a batch-job row used, as evaluation reports it: a label and, for a module from
a `jobs.train` run (`RUN/checkpoint-NNNNNN/...`), its training step, so the leaderboard can draw a
learning curve. Finding the modules themselves is the batch job's (`pipelines/animate/plan.read_motion_set`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

MODULE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")
_CHECKPOINT = re.compile(r"(?:^|/)(?P<run>[^/]+)/checkpoint-(?P<step>\d{6,15})(?:/(?:motion_module\.safetensors|motion_adapter))?/?$")


@dataclass(frozen=True)
class MotionModule:
    label: str
    uri: str
    step: int | None = None  # training step, for modules from a jobs.train run


def describe(uri: str) -> MotionModule:
    """Label and step of one motion-module URI: `<run>-step000500` inside a training run (the batch job
    names them so too), else the file stem or folder name."""
    m = _CHECKPOINT.search(str(uri).rstrip("/"))
    if m:
        return MotionModule(f"{m['run']}-step{int(m['step']):06d}", uri, int(m["step"]))
    name = PurePosixPath(str(uri).rstrip("/")).name
    return MotionModule(name[: -len(PurePosixPath(name).suffix)] if name.endswith(MODULE_SUFFIXES) else name, uri)
