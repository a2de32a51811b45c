"""Helpers shared by the GPU benchmarks (bench/gpu.py, bench/train_gpu.py, bench/gpu_job.py): timing that
waits for the device, the device and precision of a run, where a run's JSON goes."""

from __future__ import annotations

import json
import os
import re
import time

import torch


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, *a, **k):
    """(fn's result, seconds), with the device's queued work finished on both sides."""
    sync()
    start = time.time()
    out = fn(*a, **k)
    sync()
    return out, time.time() - start


def device_and_dtype() -> tuple[str, torch.dtype, str]:
    """("cuda", fp16, GPU name) on a GPU; ("cpu", fp32, "cpu") for a dry run of a script."""
    if torch.cuda.is_available():
        return "cuda", torch.float16, torch.cuda.get_device_name(0)
    return "cpu", torch.float32, "cpu"


def save_report(report: dict, name: str, folder: str) -> list[str]:
    """Write `report` as NAME_DEVICE.json under `folder` and, on a lent machine, under $OUT (what comes back)."""
    slug = re.sub(r"[^a-z0-9]+", "_", str(report.get("device", "cpu")).lower()).strip("_")
    paths = []
    for d in (folder, os.environ.get("OUT")):
        if d:
            os.makedirs(d, exist_ok=True)
            path = os.path.join(d, f"{name}_{slug}.json")
            with open(path, "w") as f:
                json.dump(report, f, indent=1)
            paths.append(path)
    return paths
