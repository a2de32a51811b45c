"""A training run's folder, one function per path: nothing else spells these names.

    STORAGE/NAME/checkpoint-000500/         one checkpoint (its files: animatediff_core/training/trainer.py)
    STORAGE/NAME/validation/step-000500/    validation GIFs
    STORAGE/NAME/metrics.jsonl              one object per step
    STORAGE/NAME/skipped.parquet            each video (or span) skipped and why (source, start, end, reason)
    STORAGE/NAME/job.yaml                   the resolved job config
    STORAGE/NAME/checkpoint_manager_snapshot.json   Ray Train's own record of committed checkpoints

Light (no Ray, no torch): the batch and evaluation jobs read run folders too.
"""

from __future__ import annotations

import re

from animatediff_core.io import storage

METRICS_FILE = "metrics.jsonl"
SKIPPED_FILE = "skipped.parquet"  # also in a jobs.ingest folder
VALIDATION_DIR = "validation"
JOB_CONFIG = "job.yaml"
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"
STATE_FILE = "training_state.pt"  # written last into a checkpoint: its presence means the checkpoint is complete
MOTION_FILES = ("motion_module.safetensors", "motion_adapter")  # the motion module in a checkpoint, either format
_CHECKPOINT = re.compile(r"checkpoint-(\d{6,})$")


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:06d}"


def step_of(name: str) -> int | None:
    """The step of a `checkpoint-NNNNNN` folder name (or a URI ending in one), else None."""
    m = _CHECKPOINT.search(name.rstrip("/"))
    return int(m.group(1)) if m else None


def metrics(run_dir: str) -> str:
    return storage.join(run_dir, METRICS_FILE)


def skipped(run_dir: str) -> str:
    return storage.join(run_dir, SKIPPED_FILE)


def validation(run_dir: str, step: int) -> str:
    return storage.join(run_dir, VALIDATION_DIR, f"step-{step:06d}")


def job_config(run_dir: str) -> str:
    return storage.join(run_dir, JOB_CONFIG)


def snapshot(run_dir: str) -> str:
    return storage.join(run_dir, SNAPSHOT_FILE)


def list_checkpoints(run_dir: str) -> dict[int, str]:
    """{step: uri} of the complete checkpoint folders of a run (training_state.pt present)."""
    if not storage.exists(run_dir):
        return {}
    fs, path = storage.fs_and_path(run_dir)
    found = {}
    for entry in fs.ls(path, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        step = step_of(name)
        uri = storage.join(run_dir, name)
        if step is not None and storage.exists(storage.join(uri, STATE_FILE)):
            found[step] = uri
    return found


def motion_module_in(checkpoint: str) -> str | None:
    """The motion module a checkpoint holds (original-format file first), None for motion-LoRA checkpoints."""
    for name in MOTION_FILES:
        if storage.exists(storage.join(checkpoint, name)):
            return storage.join(checkpoint, name)
    return None
