"""Evaluation on Ray Data: batch-job output folders -> one metrics row per video.

    metadata of every folder (driver) -> [stills: StillStage actor pool, when a base is given]
        -> MetricsStage actor pool (CLIP loaded once per actor, GPU-pinned where GPUs exist) -> rows

Only paths and metadata travel through the object store: actors read the videos and stills themselves.
Nothing here writes a video: scoring an existing folder regenerates nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

from animatediff_core.personalize import CheckpointSpec
from pipelines.evaluate.runs import add_categories, read_runs
from pipelines.evaluate.stage import MetricsStage
from pipelines.evaluate.stills import STILL_KEYS, StillStage, still_key

log = logging.getLogger(__name__)


@dataclass
class EvaluateConfig:
    clip: str
    out: str
    base: str | None = None  # with a base: domain-similarity stills
    checkpoints: dict[str, CheckpointSpec] | None = None  # default: the checkpoint_uri of each metadata row
    workers: int = 1
    num_gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    videos_per_call: int = 16  # videos per metrics-actor call; their frames share CLIP batches
    frame_batch: int = 64  # frames per CLIP forward pass
    dtype: str = "auto"
    torch_threads: int | None = None


def connect(num_gpus_per_worker: float | None) -> float:
    """Join the cluster at RAY_ADDRESS (or start a local one) unless connected; GPUs per actor (default:
    1 where the cluster has GPUs, else 0)."""
    import os

    import ray

    if not ray.is_initialized():
        ray.init() if os.environ.get("RAY_ADDRESS") else ray.init(include_dashboard=False)
    if num_gpus_per_worker is not None:
        return num_gpus_per_worker
    return 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def _pool(cfg: EvaluateConfig) -> dict:
    import ray.data

    gpu = cfg.num_gpus_per_worker > 0
    return dict(compute=ray.data.ActorPoolStrategy(size=cfg.workers), batch_format="pandas",
                num_gpus=cfg.num_gpus_per_worker if gpu else None, num_cpus=1 if gpu else cfg.cpus_per_worker)


def render_stills(rows: pd.DataFrame, cfg: EvaluateConfig) -> pd.DataFrame:
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
        StillStage, fn_constructor_kwargs=dict(base=cfg.base, motion_module=rows["motion_module"].iloc[0], specs=specs,
                                               out=cfg.out, dtype=cfg.dtype, threads=threads),
        batch_size=cfg.videos_per_call, **_pool(cfg))
    done = ds.to_pandas()
    for err in done.loc[done["still_error"] != "", "still_error"].unique()[:5]:
        log.warning("still not rendered (domain similarity left empty): %s", err)
    return rows.merge(done[["still_key", "still_uri"]], on="still_key", how="left").fillna({"still_uri": ""})


def score(rows: pd.DataFrame, cfg: EvaluateConfig) -> pd.DataFrame:
    """The metrics stage over `rows` (metadata plus optional still_uri); returns them with metric columns."""
    import ray.data

    if "still_uri" not in rows.columns:
        rows = rows.assign(still_uri="")
    threads = cfg.torch_threads or max(1, int(cfg.cpus_per_worker))
    ds = ray.data.from_pandas(rows).map_batches(
        MetricsStage, fn_constructor_kwargs=dict(clip=cfg.clip, dtype=cfg.dtype, threads=threads, frame_batch=cfg.frame_batch),
        batch_size=cfg.videos_per_call, **_pool(cfg))
    scored = ds.to_pandas()
    return scored.sort_values(["motion_module_label", "checkpoint", "prompt", "seed"], kind="stable").reset_index(drop=True)


def evaluate(uris: list[str], cfg: EvaluateConfig, prompt_tables: list[pd.DataFrame] = ()) -> pd.DataFrame:
    """Score every video of the batch-job folders `uris`: one row per video, every setting and metric."""
    rows = add_categories(read_runs(uris), list(prompt_tables))
    if cfg.base:
        rows = render_stills(rows, cfg)
    return score(rows, cfg)
