"""Long videos: peak memory and seconds against frame count, context windows versus all frames at once.

    python bench/long_video.py [--shape tiny|sd15] [--frames 16 32 64 128 256] [--size 64] [--steps 2]

One motion module whose position encoding covers the longest clip (so "all frames at once" is possible
for the comparison) runs every clip twice: with FreeNoise context windows of 16 frames, stride 4, and
split inference (`long_video.windows`), and with all frames in one attention window (the plain path).
Each point runs in a fresh process: peak memory is the GPU allocator's peak, or on CPU the process's
peak RSS above its RSS after loading. Prints each curve's growth exponent (the slope of log memory and
log seconds against log frames: 1.0 is linear, 2.0 quadratic). Random weights; no Ray.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def point(models: str, frames: int, windowed: bool, size: int, steps: int) -> dict:
    """One measurement in this process: a fresh pipeline, one clip."""
    import torch

    from animatediff_core.models.pipeline import load_pipeline
    from animatediff_core.sampling.generate import GenerationSettings, Request, generate

    cuda = torch.cuda.is_available()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))  # CPU: one core, steadier on a shared machine
    pipe = load_pipeline(os.path.join(models, "base"), os.path.join(models, "motion_long"),
                         device="cuda" if cuda else "cpu", dtype=torch.float16 if cuda else torch.float32)
    s = GenerationSettings(num_frames=frames, height=size, width=size, steps=steps, guidance_scale=7.5,
                           context_length=16 if windowed else 0)
    base = _rss_mib()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.time()
    generate(pipe, [Request("a long video of a cat", seed=0, settings=s)])
    if cuda:
        torch.cuda.synchronize()
    secs = time.time() - t
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    return {"frames": frames, "windowed": windowed, "seconds": round(secs, 3), "peak_mib": round(peak, 1)}


def write_models(out: str, shape: str, max_frames: int) -> None:
    from animatediff_core.models.inflate import new_motion_adapter
    from animatediff_core.models.motion_config import MotionModuleConfig
    from animatediff_core.models.motion_formats import save_motion_adapter
    from animatediff_core.models.pipeline import read_unet_config
    from animatediff_core.tiny import write_tiny_models

    write_tiny_models(out, preset=shape)
    cfg = MotionModuleConfig.tiny() if shape == "tiny" else MotionModuleConfig.sd15()
    cfg = MotionModuleConfig(**{**cfg.__dict__, "max_seq_length": max_frames})
    adapter = new_motion_adapter(read_unet_config(os.path.join(out, "base")), cfg, zero_init=False)
    save_motion_adapter(adapter, os.path.join(out, "motion_long"), fmt="diffusers")


def exponent(xs, ys) -> float:
    return float(np.polyfit(np.log(xs), np.log(np.maximum(ys, 1e-9)), 1)[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=("tiny", "sd15"), default="tiny")
    p.add_argument("--frames", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--plain-up-to", type=int, default=128, help="longest clip to run with all frames at once")
    p.add_argument("--point", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.point:  # child process: one measurement
        models, frames, windowed = args.point.split(",")
        print(json.dumps(point(models, int(frames), windowed == "1", args.size, args.steps)))
        return
    with tempfile.TemporaryDirectory() as models:
        write_models(models, args.shape, max(args.frames))
        results = []
        for windowed in (True, False):
            for f in args.frames:
                if not windowed and f > args.plain_up_to:
                    continue
                cmd = [sys.executable, __file__, "--point", f"{models},{f},{int(windowed)}", "--size", str(args.size),
                       "--steps", str(args.steps)]
                run = subprocess.run(cmd, capture_output=True, text=True)
                if run.returncode != 0:
                    print(f"{'windowed' if windowed else 'all at once'} {f} frames failed: {run.stderr.strip().splitlines()[-1:]}")
                    continue
                results.append(json.loads(run.stdout.strip().splitlines()[-1]))
                print(json.dumps(results[-1]), flush=True)
    for windowed, label in ((True, "context windows (16, stride 4, split inference)"), (False, "all frames at once")):
        rows = [r for r in results if r["windowed"] == windowed]
        if len(rows) >= 2:
            xs, mem, secs = [r["frames"] for r in rows], [r["peak_mib"] for r in rows], [r["seconds"] for r in rows]
            # Over all points, and over the last doubling (where fixed costs weigh least).
            print(f"{label}: memory exponent {exponent(xs, mem):.2f} (last doubling {exponent(xs[-2:], mem[-2:]):.2f}), "
                  f"seconds exponent {exponent(xs, secs):.2f} (last doubling {exponent(xs[-2:], secs[-2:]):.2f})")


if __name__ == "__main__":
    main()
