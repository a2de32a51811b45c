"""What `torch.inference_mode` saves per video against `torch.no_grad` (diffusers' own pipelines run under no_grad).

    python bench/grad_mode.py [--models DIR] [--threads 1,2] [--rounds 6] [--frames 16] [--size 64] [--steps 2]

One process, one loaded pipeline (the tiny models unless --models), the same seeded call timed three ways,
alternating round by round so a change of load lands on all of them: diffusers' `AnimateDiffPipeline` call
as it is (no_grad), the same call inside `torch.inference_mode()`, and the project's `generate()` inside
`torch.inference_mode()`. Prints the median seconds per video of each for every --threads value, and whether
inference_mode changes the frames. Record the figures in bench/README.md with the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from animate import plain_call  # noqa: E402  (bench/animate.py: the plain loop's own call)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", help="a tiny model set (default: written to a temporary folder)")
    ap.add_argument("--threads", default="1,2", help="torch threads, comma-separated: one table row each")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args()
    from animatediff_core.models.pipeline import load_pipeline
    from animatediff_core.sampling.generate import GenerationSettings, Request, generate
    from animatediff_core.tiny import write_tiny_models
    from jobs.config import setup_logging

    setup_logging("WARNING")
    models = args.models or str(write_tiny_models(os.path.join(tempfile.mkdtemp(prefix="bench-grad-"), "models")))
    pipe = load_pipeline(os.path.join(models, "base"), os.path.join(models, "motion_adapter"))
    pipe.set_progress_bar_config(disable=True)
    settings = GenerationSettings(num_frames=args.frames, height=args.size, width=args.size, steps=args.steps, guidance_scale=7.5)
    prompt = "a photo of a cat, cinematic lighting"

    def plain() -> np.ndarray:
        return plain_call(pipe, prompt, args, seed=0)

    def inference() -> np.ndarray:
        with torch.inference_mode():
            return plain()

    def project() -> np.ndarray:
        return generate(pipe, [Request(prompt, seed=0, settings=settings)])[0]

    def project_inference() -> np.ndarray:
        with torch.inference_mode():
            return project()

    ways = {"diffusers call (no_grad)": plain, "same call in inference_mode": inference, "generate() (no_grad)": project,
            "generate() in inference_mode": project_inference}
    print(f"{args.frames} frames {args.size}x{args.size}, {args.steps} steps, CFG 7.5, {args.rounds} rounds, "
          f"cpus={os.cpu_count()}, torch {torch.__version__}")
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        out = {name: way() for name, way in ways.items()}  # warm-up, and the frames to compare
        same = (np.array_equal(out["diffusers call (no_grad)"], out["same call in inference_mode"])
                and np.array_equal(out["generate() (no_grad)"], out["generate() in inference_mode"]))
        seconds: dict[str, list[float]] = {n: [] for n in ways}
        for _ in range(args.rounds):
            for name, way in ways.items():
                t = time.perf_counter()
                way()
                seconds[name].append(time.perf_counter() - t)
        base = statistics.median(seconds["diffusers call (no_grad)"])
        print(f"{threads} thread(s); inference_mode gives the same frames: {same}")
        for name, s in seconds.items():
            m = statistics.median(s)
            print(f"  {name:32s} {m:6.3f} s per video (median; {min(s):.3f}-{max(s):.3f}), {m / base:.3f}x the no_grad call")


if __name__ == "__main__":
    main()
