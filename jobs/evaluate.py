"""Evaluate checkpoints: generate through the batch job (or score its output), metrics, leaderboard, report.

    python -m jobs.evaluate --base SD15_DIR --motion-module mm.ckpt [more.ckpt | folder | train-run] \\
        --checkpoints ckpts/ --clip CLIP_DIR --out OUT [--prompts table.csv] [--seeds-per-prompt 2]
    python -m jobs.evaluate --score-only BATCH_OUT --clip CLIP_DIR --out OUT   # regenerates nothing
    ... --raft raft_large.pth   # also motion_flow: optical flow from torchvision's RAFT weights (downloaded beforehand)
    ... --vbench-models ~/.cache/vbench   # also VBench's dimensions, from VBench's own model folder
    ... --fvd-reference REF --i3d i3d_pretrained_400.pt   # also FVD per entry against REF's videos

The generation flags (--num-frames, --steps, --workers, ...) are the batch job's (GenerationFlags).
"""

from __future__ import annotations

import time

from jobs.config import dump_config, parse_config, run, setup_logging
from pipelines.evaluate.config import EvaluateConfig


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_config(EvaluateConfig, argv, __doc__)
    setup_logging(args.log_level)
    # Imported after parsing: --help and a bad flag answer without loading torch or Ray.
    from animatediff_core.io import storage
    from pipelines.evaluate import runs

    folders = runs.find_runs(cfg.score_only) if cfg.score_only else None  # checked before the heavy imports
    from animatediff_core.metrics import i3d
    from animatediff_core.metrics.flow import load_raft_state
    from animatediff_core.metrics.scores import check_clip_folder
    from animatediff_core.metrics.vbench import load_models
    from pipelines.animate.config import AnimateConfig
    from pipelines.animate.job import preflight, run_animate
    from pipelines.animate.sets import read_checkpoint_set
    from pipelines.evaluate import leaderboard, prompts, report
    from pipelines.evaluate.fvd import reference_statistics
    from pipelines.evaluate.run import evaluate
    from pipelines.evaluate.stage import FEATURES
    from pipelines.ray_session import init_ray

    check_clip_folder(cfg.clip)
    if cfg.raft:
        load_raft_state(cfg.raft)  # a wrong file fails here, not in every actor
    if cfg.vbench_models:
        load_models(cfg.vbench_models, tuple(cfg.vbench_dimensions))  # so does a missing or wrong VBench model
    if cfg.i3d:
        i3d.load(cfg.i3d)
    tables, start = prompts.read_prompt_tables(cfg.prompts), time.time()
    storage.write_text_atomic(storage.join(cfg.out, "job.yaml"), dump_config(cfg))
    if folders is None:  # generate through the batch job: its resume, its error rows, one sweep over every module
        generated = storage.join(cfg.out, "generated")
        job = AnimateConfig(**cfg.generation_flags(), prompts=[prompts.write_seeded(tables, cfg.seeds_per_prompt, cfg.out)],
                            base=cfg.base, motion_module=cfg.motion_module, checkpoints=cfg.checkpoints, out=generated)
        prep = preflight(job)
        init_ray(include_dashboard=False)
        print(run_animate(prep).summary.text(time.time() - start))
        folders = [generated]
    init_ray(include_dashboard=False)
    reference = reference_statistics(cfg) if cfg.fvd_reference else None  # before scoring: a bad reference fails early
    scored = evaluate(folders, cfg, tables, read_checkpoint_set(cfg.checkpoints) if cfg.checkpoints else None)
    board = leaderboard.leaderboard(scored, reference)
    scored = scored.drop(columns=[FEATURES], errors="ignore")  # FVD's per-video features: used above, not kept
    report.write_tables(scored, board, cfg.out)
    print(report.summary(scored, board, time.time() - start, report.write_report(scored, board, cfg.out)))
    return 0


if __name__ == "__main__":
    run(main)
