"""The demo: tiny models written by the project, the shipped prompt table, outputs on local disk.

    python -m jobs.demo [--out outputs/demo]

Runs the batch-animation job (`jobs.animate`) on a local single-node Ray: 4 prompts x 3 personalized
checkpoints (a DreamBooth file, a kohya LoRA, a peft LoRA), 16 frames at 64x64, with the index page.
Two actors of one torch thread each, half a CPU apiece in Ray's count (the other CPU of a 2-core machine
stays free for Ray Data's reads): the fastest CPU layout measured, with one actor of two streams
(`--torch-threads 2`) as fast (bench/README.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jobs import animate
from jobs.config import prog, run, setup_logging

DEMO_PROMPTS = Path(__file__).parent / "data" / "demo_prompts.csv"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=prog(), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/demo", help="output folder (default: %(default)s)")
    args = p.parse_args(argv)
    setup_logging("INFO")  # before the model libraries load: their notices stay out of the terminal
    models = Path(args.out) / "models"
    if not (models / "motion_module.safetensors").exists():
        from animatediff_core.tiny import write_tiny_models

        write_tiny_models(models)
        print(f"tiny models written to {models}")
    return animate.main([
        "--prompts", str(DEMO_PROMPTS), "--base", str(models / "base"),
        "--motion-module", str(models / "motion_module.safetensors"), "--checkpoints", str(models / "checkpoints"),
        "--out", args.out, "--num-frames", "16", "--height", "64", "--width", "64", "--steps", "2",
        "--workers", "2", "--cpus-per-worker", "0.5", "--torch-threads", "1",
    ])


if __name__ == "__main__":
    run(main)
