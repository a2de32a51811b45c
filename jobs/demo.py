"""The demo: tiny models written by the project, the shipped prompt table, outputs on local disk.

    python -m jobs.demo --out outputs/demo
Single-process generation with the core (the Ray batch job replaces this once it lands).
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

from animatediff_core import storage
from animatediff_core.generate import GenerationSettings, Request, generate
from animatediff_core.pipeline import load_pipeline
from animatediff_core.tiny import write_tiny_models
from animatediff_core.video_io import write_gif, write_video

DEMO_PROMPTS = Path(__file__).parent / "data" / "demo_prompts.csv"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/demo")
    args = p.parse_args(argv)
    models = Path(args.out) / "models"
    if not (models / "motion_module.safetensors").exists():
        write_tiny_models(models)
    pipe = load_pipeline(str(models / "base"), str(models / "motion_module.safetensors"))
    with open(DEMO_PROMPTS) as f:
        rows = list(csv.DictReader(f))
    settings = GenerationSettings.tiny()
    start = time.time()
    for i, row in enumerate(rows):
        req = Request(row["prompt"], row["negative_prompt"], int(row["seed"]), settings)
        frames = generate(pipe, [req])[0]
        uri = storage.join(args.out, "videos", f"{i:04d}.mp4")
        write_video(uri, frames, settings.fps)
        write_gif(uri[:-4] + ".gif", frames, settings.fps)
        print(f"  {uri}  ({frames.shape[0]} frames, {frames.shape[2]}x{frames.shape[1]})")
    print(f"{len(rows)} videos in {time.time() - start:.1f}s -> {os.path.abspath(args.out)}/videos")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
