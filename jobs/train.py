"""Train an AnimateDiff motion module (or a motion LoRA) data-parallel on WebVid-format video tables.

    python -m jobs.train --data webvid.csv --base SD15_DIR --storage s3://bucket/train [--config train.yaml]
    python -m jobs.train ... --motion-module mm_sd_v15_v2.ckpt --motion-lora 8     # motion LoRA
    python -m jobs.train ... --resume                                              # continue the run
"""

from __future__ import annotations

import argparse

from jobs.config import parse, quiet_libraries, run

RECIPE = ("max_steps", "checkpoint_every", "validate_every", "batch_size", "lr", "weight_decay", "caption_dropout",
          "num_frames", "stride", "size", "mixed_precision", "gradient_checkpointing", "seed", "validation_prompts",
          "motion_norm")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="WebVid-format table (CSV/Parquet), a folder of them, a folder of videos with "
                                   "captions.csv, or a jobs.ingest folder; any fsspec URI")
    p.add_argument("--base", help="diffusers SD-1.x folder (frozen)")
    p.add_argument("--storage", help="where runs go (local folder or fsspec URI); the run is STORAGE/NAME")
    p.add_argument("--name", default="motion-module", help="run name (default %(default)s)")
    p.add_argument("--motion-module", help="start from this motion module instead of a fresh zero-initialized one")
    p.add_argument("--motion-lora", type=int, metavar="RANK", help="train only LoRA adapters of this rank on the motion module")
    p.add_argument("--resume", action="store_true", help="continue the run STORAGE/NAME from its latest checkpoint")
    p.add_argument("--workers", type=int, default=1, help="training workers (one GPU each when the cluster has GPUs)")
    p.add_argument("--cpus-per-worker", type=float, help="default: 1 with GPUs, 0.5 on CPU")
    p.add_argument("--decoders", type=int, default=4, help="most video-decoding actors (default %(default)s)")
    p.add_argument("--decode-cpus", type=float, default=0.5, help="CPUs per decoding actor (default %(default)s)")
    p.add_argument("--max-failures", type=int, default=2, help="worker-group restarts from the last checkpoint")
    for flag, kind in (("max-steps", int), ("checkpoint-every", int), ("validate-every", int), ("batch-size", int),
                       ("lr", float), ("weight-decay", float), ("caption-dropout", float), ("num-frames", int),
                       ("stride", int), ("size", int), ("seed", int)):
        p.add_argument(f"--{flag}", type=kind, help="default: AnimateDiff's recipe (see animatediff_core/trainer.py)")
    p.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"])
    p.add_argument("--gradient-checkpointing", action="store_true", default=None)
    p.add_argument("--validation-prompts", nargs="+", help="prompts sampled to GIFs at each validation")
    p.add_argument("--motion-norm", choices=["official", "diffusers"], help="default: what --motion-module records, else official")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv, required=("data", "base", "storage"))
    quiet_libraries()
    import ray

    from animatediff_core import storage
    from animatediff_core.trainer import TrainConfig
    from pipelines.train import TrainRun, check_run, train

    overrides = {k: getattr(args, k) for k in RECIPE}
    overrides["validation_prompts"] = tuple(args.validation_prompts) if args.validation_prompts else None
    cfg = TrainConfig().updated(motion_lora_rank=args.motion_lora, **overrides)
    job = TrainRun(data=args.data, base=args.base, storage=args.storage, name=args.name,
                   motion_module=args.motion_module, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                   decoders=args.decoders, decode_cpus=args.decode_cpus, max_failures=args.max_failures,
                   resume=args.resume)
    plan = check_run(job, cfg)
    if plan.source.kind == "latents":
        print(f"training on precomputed latents: {plan.cfg.num_frames} frames at {plan.cfg.size}x{plan.cfg.size} (set by jobs.ingest)")
    ray.init()  # RAY_ADDRESS (ray job submit) joins a cluster; else a local one, with the dashboard Ray Train queries
    ray.data.DataContext.get_current().enable_progress_bars = False
    if plan.resumed_from is not None:
        print(f"resuming {job.run_dir} from step {plan.resumed_from}")
    s = train(job, plan)
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(s.skipped_videos.items())) or "none"
    loss = f"{s.loss:.4f}" if s.loss is not None else "n/a"
    print(f"trained {s.steps} steps in {s.seconds:.0f} s; last loss {loss}; skipped videos: {skipped}")
    print(f"run: {s.run_dir}\ncheckpoint: {s.checkpoint}\nmetrics: {storage.join(s.run_dir, 'metrics.jsonl')}")
    return 0


if __name__ == "__main__":
    run(main)
