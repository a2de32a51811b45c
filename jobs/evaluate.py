"""Evaluate checkpoints: generate through the batch job (or score its output), metrics, leaderboard, report.

    python -m jobs.evaluate --base SD15_DIR --motion-module mm.ckpt [more.ckpt | folder | train-run] \
        --checkpoints ckpts/ --clip CLIP_DIR --out OUT [--prompts table.csv] [--seeds-per-prompt 2]
    python -m jobs.evaluate --score-only BATCH_OUT --clip CLIP_DIR --out OUT   # regenerates nothing

Other flags (--num-frames, --steps, --workers, ...) are the batch job's and go to it unchanged.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from jobs import animate
from jobs.config import parse, quiet_libraries, run

SUITE = str(Path(__file__).parent / "data" / "eval_prompts.csv")
OWN = {"help", "prompts", "base", "motion_module", "checkpoints", "out"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                parents=[animate.build_parser()], conflict_handler="resolve")
    p.add_argument("--prompts", nargs="+", default=[SUITE], help="prompt tables (default: the shipped 48-prompt suite)")
    p.add_argument("--seeds-per-prompt", type=int, default=2)
    p.add_argument("--base", help="diffusers SD-1.x folder (to generate; with --score-only: for domain similarity)")
    p.add_argument("--motion-module", nargs="+", help="motion modules, folders of them or jobs.train run folders")
    p.add_argument("--checkpoints", help="personalized checkpoints, as in jobs.animate")
    p.add_argument("--clip", help="transformers CLIPModel folder for the metrics (nothing is downloaded)")
    p.add_argument("--out", default="outputs/evaluate")
    p.add_argument("--score-only", nargs="+", help="batch-job output folders to score instead of generating")
    p.add_argument("--no-domain-similarity", dest="domain_similarity", action="store_false", help="skip the stills")
    p.add_argument("--videos-per-call", type=int, default=16, help="videos per metrics-actor call")
    p.add_argument("--frame-batch", type=int, default=64, help="frames per CLIP forward pass")
    return p


def _forwarded(args) -> list[str]:
    """The batch job's own flags, as given (its defaults are its own)."""
    argv = []
    for a in animate.build_parser()._actions:
        value = getattr(args, a.dest, None)
        if a.dest in OWN or value is None or value == a.default:
            continue
        argv += [a.option_strings[0]] if a.nargs == 0 else [a.option_strings[0], str(value)]
    return argv


def _generate(args, prompts_csv: str) -> list[str]:
    """Generate through jobs.animate (same resume, same error rows); returns the folders to score.
    One call per motion module into OUT/generated/<label>/ until jobs.animate sweeps modules itself."""
    import ray

    from animatediff_core import storage
    from pipelines.evaluate.modules import find_motion_modules

    folders = []
    for m in find_motion_modules(args.motion_module):
        if ray.is_initialized():
            ray.shutdown()  # each jobs.animate call starts its own Ray
        folders.append(storage.join(args.out, "generated", m.label))
        animate.main(["--prompts", prompts_csv, "--base", args.base, "--motion-module", m.uri, "--out", folders[-1],
                      *(["--checkpoints", args.checkpoints] if args.checkpoints else []), *_forwarded(args)])
    return folders


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv, required=("clip",))
    if not args.score_only and not (args.base and args.motion_module):
        parser.error("give --base and --motion-module to generate, or --score-only FOLDER to score existing videos")
    quiet_libraries()
    from pipelines.evaluate import runs

    folders = runs.find_runs(args.score_only) if args.score_only else None  # checked before the heavy imports
    from animatediff_core.metrics import check_clip_folder
    from pipelines.evaluate import leaderboard, prompts, report, run as ev
    from pipelines.rows import read_checkpoint_set

    check_clip_folder(args.clip)
    tables, start = prompts.read_prompt_tables(args.prompts), time.time()
    folders = folders or _generate(args, prompts.write_seeded(tables, args.seeds_per_prompt, args.out))
    cfg = ev.EvaluateConfig(args.clip, args.out, args.base if args.domain_similarity else None,
                            read_checkpoint_set(args.checkpoints) if args.checkpoints else None, args.workers,
                            ev.connect(args.num_gpus_per_worker), args.cpus_per_worker, args.videos_per_call,
                            args.frame_batch, args.dtype, args.torch_threads)
    scored = ev.evaluate(folders, cfg, tables)
    board = leaderboard.leaderboard(scored)
    report.write_tables(scored, board, args.out)
    print(report.summary(scored, board, time.time() - start, report.write_report(scored, board, args.out)))
    return 0


if __name__ == "__main__":
    run(main)
