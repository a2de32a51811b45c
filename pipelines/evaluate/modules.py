"""The motion modules an evaluation compares: files, MotionAdapter folders, folders of them, training runs.

Each becomes a `MotionModule(label, uri, step)`. A `jobs.train` run folder contributes its complete
`checkpoint-NNNNNN/` entries in step order (`step` set: a learning curve), each as its
`motion_module.safetensors` (or `motion_adapter/`). Labels are short names for tables and plots;
`describe(uri)` gives the same label for a URI found in a batch job's metadata.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from animatediff_core import storage
from animatediff_core.errors import ConfigError

log = logging.getLogger(__name__)
MODULE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")
_CHECKPOINT = re.compile(r"(?:^|/)(?P<run>[^/]+)/checkpoint-(?P<step>\d{6,})(?:/(?:motion_module\.safetensors|motion_adapter))?/?$")


@dataclass(frozen=True)
class MotionModule:
    label: str
    uri: str
    step: int | None = None  # training step, for modules from a jobs.train run


def describe(uri: str) -> MotionModule:
    """Label and step of one motion-module URI: `<run>-step000500` inside a training run, else the file stem
    or folder name."""
    m = _CHECKPOINT.search(str(uri).rstrip("/"))
    if m:
        return MotionModule(f"{m['run']}-step{int(m['step']):06d}", uri, int(m["step"]))
    name = PurePosixPath(str(uri).rstrip("/")).name
    return MotionModule(name[: -len(PurePosixPath(name).suffix)] if name.endswith(MODULE_SUFFIXES) else name, uri)


def find_motion_modules(uris: list[str]) -> list[MotionModule]:
    """Expand `--motion-module` values into modules; ConfigError (one line) when one names nothing usable."""
    found: list[MotionModule] = []
    for uri in uris:
        if not storage.exists(uri):
            raise ConfigError(f"--motion-module {uri}: not found (expected a motion-module file, a MotionAdapter "
                              "folder, a folder of them or a jobs.train run folder)")
        found += _expand(uri)
    labels = [m.label for m in found]
    twice = sorted({l for l in labels if labels.count(l) > 1})
    if twice:
        raise ConfigError(f"--motion-module: several modules are labelled {', '.join(twice)}; rename one of them")
    return found


def _expand(uri: str) -> list[MotionModule]:
    if not storage.isdir(uri) or storage.exists(storage.join(uri, "config.json")):
        return [describe(uri)]  # a file, or a MotionAdapter folder
    from pipelines.train import list_checkpoints

    steps = list_checkpoints(uri)
    if steps:
        modules = []
        for step, ckpt in sorted(steps.items()):
            inner = [storage.join(ckpt, n) for n in ("motion_module.safetensors", "motion_adapter") if storage.exists(storage.join(ckpt, n))]
            if inner:
                modules.append(describe(inner[0]))
            else:  # a motion LoRA run: its files go in a checkpoint set, not here
                log.info("skipping %s: no motion_module.safetensors or motion_adapter/ (a motion LoRA checkpoint?)", ckpt)
        if not modules:
            raise ConfigError(f"--motion-module {uri}: training run has no motion-module checkpoints (motion LoRA runs "
                              "save LoRA files: give those as --checkpoints)")
        log.info("training run %s: %d checkpoints, steps %s", uri, len(modules), [m.step for m in modules])
        return modules
    fs, path = storage.fs_and_path(uri)
    entries = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    modules = [describe(storage.join(uri, e)) for e in entries
               if e.endswith(MODULE_SUFFIXES) or storage.exists(storage.join(uri, e, "config.json"))]
    if not modules:
        raise ConfigError(f"--motion-module {uri}: folder holds no motion modules ({', '.join(MODULE_SUFFIXES)} files, "
                          "MotionAdapter folders or checkpoint-NNNNNN/ entries)")
    return modules
