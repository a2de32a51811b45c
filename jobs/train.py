"""Train an AnimateDiff motion module (or a motion LoRA) data-parallel on video tables or WebDataset shards.

    python -m jobs.train --data webvid.csv --base SD15_DIR --storage s3://bucket/train [--config train.yaml]
    python -m jobs.train ... --motion-module mm_sd_v15_v2.ckpt --motion-lora 8     # motion LoRA
    python -m jobs.train ... --resume                                              # continue the run

Flags: where and how the run executes (pipelines/train/job.py TrainRun) and the recipe
(animatediff_core/training/recipe.py TrainConfig: AnimateDiff's defaults).
"""

from __future__ import annotations

from dataclasses import replace

from animatediff_core.training.recipe import TrainConfig
from jobs.config import dump_config, parse_config, run, setup_logging
from pipelines.train.config import TrainRun


def main(argv: list[str] | None = None) -> int:
    (job, cfg), args = parse_config((TrainRun, TrainConfig), argv, __doc__)
    setup_logging(args.log_level)
    # Imported after parsing: --help and a bad flag answer without loading torch or Ray.
    from animatediff_core.io import storage
    from pipelines.ray_session import init_ray, require_shared, stage
    from pipelines.train.job import check_run, train
    plan = check_run(job, cfg)
    if plan.source.kind == "latents":
        print(f"training on precomputed latents: {plan.cfg.num_frames} frames at {plan.cfg.size}x{plan.cfg.size} (set by jobs.ingest)")
    cluster = init_ray(include_dashboard=True)  # Ray Train queries the dashboard; RAY_ADDRESS (ray job submit) joins a cluster
    if cluster.job_id:
        print(cluster.banner(), flush=True)
    for flag, uri in (("--storage", job.storage), ("--data", job.data)):
        require_shared(uri, flag, cluster.nodes)
    storage.write_text_atomic(storage.join(job.run_dir, "job.yaml"), dump_config(job, cfg))
    job = replace(job, base=stage(job.base, "--base", job.run_dir, cluster.nodes),  # driver-only model files
                  motion_module=stage(job.motion_module, "--motion-module", job.run_dir, cluster.nodes))
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
