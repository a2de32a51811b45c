"""Batch animation: prompt tables x personalized checkpoints -> videos + metadata + index.html.

    python -m jobs.animate --prompts prompts.parquet --base SD15_DIR --motion-module mm.ckpt \
        --checkpoints ckpts/ --out s3://bucket/run [--config job.yaml]
"""

from __future__ import annotations

import argparse
import os
import time

from jobs.config import parse, quiet_libraries, run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", nargs="+", help="prompt tables (.parquet or .csv), any fsspec URI")
    p.add_argument("--base", help="diffusers SD-1.x folder")
    p.add_argument("--motion-module", help="MotionAdapter folder or original AnimateDiff .safetensors/.ckpt")
    p.add_argument("--checkpoints", help="folder of .safetensors or a table (name, uri, [kind], [scale]); default: the base alone")
    p.add_argument("--out", default="outputs/animate", help="output folder or URI (default %(default)s)")
    p.add_argument("--num-frames", type=int, default=16)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument("--fps", type=int, default=8)
    p.add_argument("--workers", type=int, default=1, help="actors, each holding one loaded pipeline")
    p.add_argument("--num-gpus-per-worker", type=float, default=None, help="default: 1 if the cluster has GPUs, else 0")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPU actors only; leave a CPU for reading")
    p.add_argument("--torch-threads", type=int, default=None, help="CPU actors: torch threads (default: --cpus-per-worker)")
    p.add_argument("--batch-size", type=int, default=8, help="rows per actor call")
    p.add_argument("--max-batch", type=int, default=None, help="rows per pipeline call (default 8 on GPU, 1 on CPU)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float16", "bfloat16", "float32"])
    p.add_argument("--no-gif", dest="gif", action="store_false", help="skip GIF previews")
    p.add_argument("--motion-norm", choices=["official", "diffusers"], help="default: what the module records, else official")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv, required=("prompts", "base", "motion_module"))
    quiet_libraries()
    import ray

    from animatediff_core.generate import GenerationSettings
    from pipelines.animate import AnimateConfig, preflight, run_animate
    from pipelines.report import summarize, write_index, write_metadata
    from pipelines.rows import read_checkpoint_set

    checkpoints = read_checkpoint_set(args.checkpoints)
    preflight(args.prompts, args.base, args.motion_module, args.out)
    ray.init() if os.environ.get("RAY_ADDRESS") else ray.init(include_dashboard=False)
    gpus = args.num_gpus_per_worker
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    defaults = GenerationSettings(args.num_frames, args.height, args.width, args.steps, args.guidance_scale, args.fps)
    cfg = AnimateConfig(args.prompts, args.base, args.motion_module, args.out, checkpoints, defaults, args.workers,
                        gpus, args.cpus_per_worker, args.batch_size, args.gif, args.dtype, args.torch_threads, args.max_batch,
                        motion_norm=args.motion_norm)
    start = time.time()
    results = run_animate(cfg)
    write_metadata(results, args.out)
    index = write_index(results, args.out)
    print(summarize(results, time.time() - start))
    print(f"videos: {os.path.join(args.out, 'videos')}\nmetadata: {os.path.join(args.out, 'metadata')}\nindex: {index}")
    return 0


if __name__ == "__main__":
    run(main)
