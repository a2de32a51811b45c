"""Evaluation on Ray Data: batch-job output folders -> one metrics row per video.

    metadata of every folder (driver) -> [stills: StillStage actor pool, when a base is given]
        -> MetricsStage actor pool (CLIP, and RAFT, VBench's networks and I3D when given, loaded once per actor,
           GPU-pinned where GPUs exist; each video decoded once for all of them) -> rows
    [FVD reference: its videos -> I3DStage actor pool -> statistics, cached (`fvd.py`)]

Only paths and metadata travel through the object store: actors read the videos and stills themselves.
Nothing here writes a video: scoring an existing folder regenerates nothing.
"""

from __future__ import annotations

import logging

import pandas as pd
import ray.data

from animatediff_core.settings.generation import CheckpointSpec
from pipelines.animate.identity import STILL_KEYS, still_key
from pipelines.evaluate.config import EvaluateConfig
from pipelines.evaluate.runs import add_categories, read_runs
from pipelines.evaluate.stage import MetricsStage
from pipelines.evaluate.stills import StillStage
from pipelines.progress import Progress

log = logging.getLogger(__name__)


def render_stills(rows: pd.DataFrame, cfg: EvaluateConfig, specs: dict[str, CheckpointSpec] | None = None) -> pd.DataFrame:
    """Adds still_uri ("" where none): one still per distinct STILL_KEYS among the rows that generated."""
    rows = rows.copy()
    rows["still_key"] = [still_key(r) for r in rows[list(STILL_KEYS)].to_dict("records")]
    wanted = rows[rows["status"] == "ok"].drop_duplicates("still_key")[[*STILL_KEYS, "still_key"]]
    specs = {**{n: CheckpointSpec.from_metadata(n, u, s) for n, u, s in zip(wanted["checkpoint"], wanted["checkpoint_uri"],
                                                                                wanted["checkpoint_stack"])}, **(specs or {})}
    log.info("domain similarity: %d stills (checkpoint x prompt x seed x shape), motion modules bypassed", len(wanted))
    if wanted.empty:
        return rows.assign(still_uri="")
    base_of = {n: s.base or cfg.base for n, s in specs.items()}
    parts = []
    for base in dict.fromkeys(base_of[c] for c in wanted["checkpoint"]):  # one pool per base (SD-1.x, SDXL)
        mine = wanted[wanted["checkpoint"].map(base_of) == base]
        # No motion module file: stills bypass it, and a scored folder's module URIs are untrusted (stills.py).
        kwargs = dict(base=base, motion_module=None, specs=specs, out=cfg.out, actors=cfg.actors, reads=cfg.reads)
        rows_of_base = ray.data.from_pandas(mine.sort_values("checkpoint"))
        parts.append(cfg.actors.map(rows_of_base, StillStage, kwargs, cfg.videos_per_call, len(mine)))
    done = (parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]).to_pandas()
    for err in done.loc[done["still_error"] != "", "still_error"].unique()[:5]:
        log.warning("still not rendered (domain similarity left empty): %s", err)
    return rows.merge(done[["still_key", "still_uri"]], on="still_key", how="left").fillna({"still_uri": ""})


def score(rows: pd.DataFrame, cfg: EvaluateConfig) -> pd.DataFrame:
    """The metrics stage over `rows` (metadata plus optional still_uri); returns them with metric columns."""
    if "still_uri" not in rows.columns:
        rows = rows.assign(still_uri="")
    log.info("motion_flow: %s", f"RAFT {cfg.raft}, {cfg.raft_iters or 'default'} updates per frame pair" if cfg.raft else "no --raft weights, left empty")
    log.info("VBench: %s", f"{', '.join(cfg.vbench_dimensions)} from {cfg.vbench_models}" if cfg.vbench_models else "no --vbench-models, left empty")
    kwargs = dict(clip=cfg.clip, actors=cfg.actors, frame_batch=cfg.frame_batch, raft=cfg.raft, raft_iters=cfg.raft_iters,
                  flow_batch=cfg.flow_batch, vbench_models=cfg.vbench_models, vbench_dimensions=tuple(cfg.vbench_dimensions),
                  i3d=cfg.i3d, fvd_frames=cfg.fvd_frames, reads=cfg.reads)
    ds = cfg.actors.map(ray.data.from_pandas(rows), MetricsStage, kwargs, cfg.videos_per_call, len(rows))
    parts = []
    with Progress("scoring", len(rows)) as progress:  # the project's own progress line (pipelines/progress.py)
        for batch in ds.iter_batches(batch_format="pandas", batch_size=None):
            parts.append(batch)
            failed = int((batch["metrics_error"].astype(str) != "").sum()) if "metrics_error" in batch else 0
            progress.add(ok=len(batch) - failed, error=failed)
    scored = pd.concat(parts, ignore_index=True) if parts else rows.iloc[:0]
    return scored.sort_values(["motion_module_label", "checkpoint", "prompt", "seed"], kind="stable").reset_index(drop=True)


def evaluate(uris: list[str], cfg: EvaluateConfig, prompt_tables: list[pd.DataFrame] = (),
             specs: dict[str, CheckpointSpec] | None = None) -> pd.DataFrame:
    """Score every video of the batch-job folders `uris`: one row per video, every setting and metric.
    `specs`: the checkpoints to render stills with (default: each metadata row's checkpoint_uri)."""
    rows = add_categories(read_runs(uris), list(prompt_tables))
    if cfg.stills:
        rows = render_stills(rows, cfg, specs)
    return score(rows, cfg)
