"""Batch-job output folders as evaluation input: which folders, their metadata rows, prompt categories.

Light on imports (no torch, no Ray), so the job can check its inputs before loading anything.
"""

from __future__ import annotations

import logging

import pandas as pd

from animatediff_core import storage
from animatediff_core.configs import need
from animatediff_core.settings import STILL_SETTINGS, GenerationSettings
from pipelines.evaluate.modules import describe
from pipelines.animate.report import read_metadata

log = logging.getLogger(__name__)


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
        need(subs, f"{uri}: not a batch-job output folder (no metadata/ in it or in its subfolders)")
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
    for col in ("checkpoint_uri", "checkpoint_stack", "gif_uri", "motion_module", "motion_module_uri", "negative_prompt"):  # older tables may lack them
        rows[col] = rows[col].fillna("").astype(str) if col in rows.columns else ""
    for col in STILL_SETTINGS:  # a setting an older folder did not record (its empty value): the default it ran with
        default = getattr(GenerationSettings(), col)
        if col not in rows.columns:
            rows[col] = default
        elif isinstance(default, str):
            rows[col] = rows[col].fillna("").replace("", default)
        else:
            rows[col] = rows[col].where(rows[col].notna() & (rows[col] != -1), default)
    # The module's URI says where it came from (a training run's checkpoint-NNNNNN: a step of a learning curve).
    rows["motion_module_uri"] = rows["motion_module_uri"].where(rows["motion_module_uri"] != "", rows["motion_module"])
    described = {u: describe(u) for u in rows["motion_module_uri"].unique()}
    # The batch job's name for the module, where the table has one (it names training-run modules RUN-stepNNNNNN too).
    rows["motion_module_label"] = [n or described[u].label for n, u in zip(rows["motion_module"], rows["motion_module_uri"])]
    rows["step"] = [float("nan") if described[u].step is None else float(described[u].step) for u in rows["motion_module_uri"]]
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
