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

from animatediff_core import storage
from animatediff_core.errors import ConfigError
from animatediff_core.personalize import CheckpointSpec
from pipelines.evaluate.modules import describe
from pipelines.evaluate.stage import MetricsStage
from pipelines.evaluate.stills import STILL_KEYS, StillStage, still_key
from pipelines.report import read_metadata

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


def find_runs(uris: list[str]) -> list[str]:
    """Batch-job output folders: each URI that has metadata/, else its subfolders that do."""
    runs = []
    for uri in uris:
        if storage.exists(storage.join(uri, "metadata")):
            runs.append(uri)
            continue
        subs = []
        if storage.isdir(uri):
            fs, path = storage.fs_and_path(uri)
            names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
            subs = [storage.join(uri, n) for n in names if storage.exists(storage.join(uri, n, "metadata"))]
        if not subs:
            raise ConfigError(f"{uri}: not a batch-job output folder (no metadata/ in it or in its subfolders)")
        runs += subs
    return runs


def read_runs(uris: list[str]) -> pd.DataFrame:
    """The metadata rows of every run, with `run`, `motion_module_label` and `step` (None outside training runs)."""
    parts = []
    for run in find_runs(uris):
        meta = read_metadata(run)
        meta["run"] = run
        parts.append(meta)
    rows = pd.concat(parts, ignore_index=True)
    for col in ("checkpoint_uri", "gif_uri", "motion_module", "negative_prompt"):  # older tables may lack them
        rows[col] = rows[col].fillna("").astype(str) if col in rows.columns else ""
    described = {u: describe(u) for u in rows["motion_module"].unique()}
    labels = [m.label for m in described.values()]
    rows["motion_module_label"] = [described[u].label if labels.count(described[u].label) == 1 else u for u in rows["motion_module"]]
    rows["step"] = [float("nan") if described[u].step is None else float(described[u].step) for u in rows["motion_module"]]
    log.info("%d videos from %d folder(s): %d failed to generate (counted as errors, not scored)",
             len(rows), len(parts), int((rows["status"] != "ok").sum()))
    return rows


def add_categories(rows: pd.DataFrame, tables: list[pd.DataFrame]) -> pd.DataFrame:
    """`category` from prompt tables that have one, matched on the prompt text ("" where none matches)."""
    cats = {}
    for t in tables:
        if "category" in t.columns:
            cats.update(dict(zip(t["prompt"].astype(str), t["category"].fillna("").astype(str))))
    return rows.assign(category=[cats.get(p, "") for p in rows["prompt"]])


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
