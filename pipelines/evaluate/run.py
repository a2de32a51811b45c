"""Evaluation on Ray Data: batch-job output folders -> one metrics row per video.

    metadata of every folder (driver) -> [stills: StillStage actor pool, when a base is given]
        -> MetricsStage actor pool (CLIP, and RAFT when given, loaded once per actor, GPU-pinned where GPUs exist) -> rows

Only paths and metadata travel through the object store: actors read the videos and stills themselves.
Nothing here writes a video: scoring an existing folder regenerates nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from animatediff_core.configs import need, option
from animatediff_core.flow import ITERS, PAIR_BATCH
from animatediff_core.settings import CheckpointSpec
from pipelines.animate.job import GenerationFlags
from pipelines.evaluate.runs import add_categories, read_runs
from pipelines.evaluate.stage import MetricsStage
from pipelines.evaluate.stills import STILL_KEYS, StillStage, still_key

log = logging.getLogger(__name__)


SUITE = str(Path(__file__).resolve().parents[2] / "jobs" / "data" / "eval_prompts.csv")


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig(GenerationFlags):
    """The evaluation job's settings (its generation flags are the batch job's, `GenerationFlags`)."""

    clip: str = option(help="transformers CLIPModel folder for the metrics (nothing is downloaded)")
    prompts: list[str] = option([SUITE], help="prompt tables (default: the shipped 48-prompt suite)")
    seeds_per_prompt: int = option(2, help="seeds per prompt: its seed, seed+1, ...")
    base: str | None = option(None, help="diffusers SD-1.x folder (to generate; with --score-only: for domain similarity)")
    motion_module: list[str] = option([], help="motion modules, folders of them or jobs.train run folders")
    checkpoints: str | None = option(None, help="personalized checkpoints, as in jobs.animate")
    out: str = option("outputs/evaluate", help="output folder or URI")
    score_only: list[str] = option([], help="batch-job output folders to score instead of generating")
    domain_similarity: bool = option(True, help="render stills without the motion module to compare styles (needs --base)")
    videos_per_call: int = option(16, help="videos per metrics-actor call")
    frame_batch: int = option(64, help="frames per CLIP forward pass")
    raft: str | None = option(None, help="torchvision raft_small/raft_large weights (.pth or .safetensors) for motion_flow")
    raft_iters: int = option(ITERS, help="RAFT refinement iterations per frame pair")
    flow_batch: int = option(PAIR_BATCH, help="consecutive frame pairs per RAFT forward pass")

    def __post_init__(self):
        super().__post_init__()
        need(bool(self.score_only) or bool(self.base and self.motion_module),
             "give --base and --motion-module to generate, or --score-only FOLDER to score existing videos")
        need(self.seeds_per_prompt >= 1, f"seeds_per_prompt must be at least 1, got {self.seeds_per_prompt}")
        need(self.raft_iters >= 1 and self.flow_batch >= 1,
             f"raft_iters and flow_batch must be at least 1, got {self.raft_iters} and {self.flow_batch}")


@dataclass
class ScoreSettings:
    """What the scoring stages need, resolved from an EvaluateConfig (and the cluster)."""

    clip: str
    out: str
    base: str | None = None  # with a base: domain-similarity stills
    checkpoints: dict[str, CheckpointSpec] | None = None  # default: the checkpoint_uri of each metadata row
    workers: int | str = 1  # a count or a range (2-16): an autoscaling pool
    num_gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    videos_per_call: int = 16  # videos per metrics-actor call; their frames share CLIP batches
    frame_batch: int = 64  # frames per CLIP forward pass
    precision: str = "auto"
    torch_threads: int | None = None
    raft: str | None = None  # with RAFT weights: motion_flow
    raft_iters: int = ITERS
    flow_batch: int = PAIR_BATCH  # consecutive frame pairs per RAFT forward pass

    @classmethod
    def of(cls, cfg: EvaluateConfig, checkpoints: dict[str, CheckpointSpec] | None) -> "ScoreSettings":
        from pipelines.ray_session import has_gpus

        gpus = cfg.num_gpus_per_worker if cfg.num_gpus_per_worker is not None else (1.0 if has_gpus() else 0.0)
        return cls(cfg.clip, cfg.out, cfg.base if cfg.domain_similarity else None, checkpoints, cfg.workers, gpus,
                   cfg.cpus_per_worker, cfg.videos_per_call, cfg.frame_batch, cfg.precision, cfg.torch_threads,
                   cfg.raft, cfg.raft_iters, cfg.flow_batch)


def _pool(cfg: ScoreSettings) -> dict:
    import ray.data

    gpu = cfg.num_gpus_per_worker > 0
    from pipelines.ray_session import worker_range

    low, high = worker_range(cfg.workers)
    return dict(compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high), batch_format="pandas",
                num_gpus=cfg.num_gpus_per_worker if gpu else None, num_cpus=1 if gpu else cfg.cpus_per_worker)


def render_stills(rows: pd.DataFrame, cfg: ScoreSettings) -> pd.DataFrame:
    """Adds still_uri ("" where none): one still per distinct STILL_KEYS among the rows that generated."""
    import ray.data

    rows = rows.copy()
    rows["still_key"] = [still_key(r) for r in rows[list(STILL_KEYS)].to_dict("records")]
    wanted = rows[rows["status"] == "ok"].drop_duplicates("still_key")[[*STILL_KEYS, "still_key"]]
    specs = {n: CheckpointSpec(n, u or None) for n, u in zip(wanted["checkpoint"], wanted["checkpoint_uri"])}
    specs.update(cfg.checkpoints or {})
    log.info("domain similarity: %d stills (checkpoint x prompt x seed x shape), motion modules bypassed", len(wanted))
    if wanted.empty:
        return rows.assign(still_uri="")
    threads = cfg.torch_threads or max(1, int(cfg.cpus_per_worker))
    ds = ray.data.from_pandas(wanted.sort_values("checkpoint")).map_batches(
        StillStage, fn_constructor_kwargs=dict(base=cfg.base, motion_module=rows["motion_module_uri"].iloc[0], specs=specs,
                                               out=cfg.out, precision=cfg.precision, threads=threads),
        batch_size=cfg.videos_per_call, **_pool(cfg))
    done = ds.to_pandas()
    for err in done.loc[done["still_error"] != "", "still_error"].unique()[:5]:
        log.warning("still not rendered (domain similarity left empty): %s", err)
    return rows.merge(done[["still_key", "still_uri"]], on="still_key", how="left").fillna({"still_uri": ""})


def score(rows: pd.DataFrame, cfg: ScoreSettings) -> pd.DataFrame:
    """The metrics stage over `rows` (metadata plus optional still_uri); returns them with metric columns."""
    import ray.data

    if "still_uri" not in rows.columns:
        rows = rows.assign(still_uri="")
    threads = cfg.torch_threads or max(1, int(cfg.cpus_per_worker))
    log.info("motion_flow: %s", f"RAFT {cfg.raft}, {cfg.raft_iters} updates per frame pair" if cfg.raft else "no --raft weights, left empty")
    ds = ray.data.from_pandas(rows).map_batches(
        MetricsStage, fn_constructor_kwargs=dict(clip=cfg.clip, precision=cfg.precision, threads=threads, frame_batch=cfg.frame_batch,
                                                 raft=cfg.raft, raft_iters=cfg.raft_iters, flow_batch=cfg.flow_batch),
        batch_size=cfg.videos_per_call, **_pool(cfg))
    scored = ds.to_pandas()
    return scored.sort_values(["motion_module_label", "checkpoint", "prompt", "seed"], kind="stable").reset_index(drop=True)


def evaluate(uris: list[str], cfg: ScoreSettings, prompt_tables: list[pd.DataFrame] = ()) -> pd.DataFrame:
    """Score every video of the batch-job folders `uris`: one row per video, every setting and metric."""
    rows = add_categories(read_runs(uris), list(prompt_tables))
    if cfg.base:
        rows = render_stills(rows, cfg)
    return score(rows, cfg)
