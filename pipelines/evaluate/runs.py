"""Batch-job output folders as evaluation input: which folders, their metadata rows, prompt categories.

A scored folder may come from someone else, so its metadata is untrusted (`untrusted_rows`): a row whose
video or GIF lies outside its folder, or whose checkpoint or motion-module name breaks the file-name rule
(`pipelines/animate/layout.py`), is an error row, never a path; each video is read within --max-video-mb
and must match the sha256 its metadata gives (`verified_video`), else it is an error, not a score.
Light on imports (no torch, no Ray), so the job can check its inputs before loading anything.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import urllib.parse

import pandas as pd

from animatediff_core.configs import need, short
from animatediff_core.errors import VideoError
from animatediff_core.io import bounded, storage
from animatediff_core.settings.generation import STILL_SETTINGS, GenerationSettings
from pipelines.animate.layout import NAME_RULE, is_safe_name
from pipelines.animate.report import read_metadata
from pipelines.evaluate.modules import describe

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
    rows = untrusted_rows(rows)
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


def _under(uri: str, folder: str) -> bool:
    """Whether `uri` names something inside `folder` (links resolved locally; `..` and other stores refused)."""
    if not uri:
        return False
    if storage.is_local(folder):
        if "://" in uri and not uri.startswith("file://"):
            return False
        path, root = os.path.realpath(storage.fs_and_path(uri)[1]), os.path.realpath(storage.fs_and_path(folder)[1])
        return path.startswith(root.rstrip("/") + "/")
    u, f = urllib.parse.urlsplit(uri), urllib.parse.urlsplit(folder.rstrip("/"))
    path = posixpath.normpath(u.path)
    return (u.scheme, u.netloc) == (f.scheme, f.netloc) and not u.query and not u.fragment and \
        path.startswith(f.path.rstrip("/") + "/") and ".." not in u.path.split("/")


def untrusted_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows of a scored folder that could lead outside it become error rows (see the module docstring)."""
    rows = rows.copy()
    why = []
    for r in rows[["checkpoint", "motion_module", "video_uri", "gif_uri", "status", "run"]].to_dict("records"):
        problem = ""
        for what in ("checkpoint", "motion_module"):
            if r[what] and not is_safe_name(str(r[what])):
                problem = f"{what} name {short(str(r[what]))} in the metadata is not a safe file name ({NAME_RULE})"
        if not problem and r["status"] == "ok":
            for what in ("video_uri", "gif_uri"):
                if (r[what] or what == "video_uri") and not _under(str(r[what]), str(r["run"])):
                    problem = f"{what} {short(str(r[what]))} lies outside the scored folder {short(str(r['run']))}"
                    break
        why.append(problem)
    bad = pd.Series(why, index=rows.index) != ""
    if bad.any():
        log.warning("%d row(s) of the scored folder(s) point outside them or name unsafe files: error rows, not scored "
                    "(e.g. %s)", int(bad.sum()), next(w for w in why if w))
        rows.loc[bad, "status"] = "error"
        rows.loc[bad, "error"] = [w for w in why if w]
        rows.loc[bad, ["video_uri", "gif_uri"]] = ""
    return rows


def verified_video(row) -> bytes:
    """The video's bytes (within --max-video-mb), checked against the sha256 in its metadata row;
    VideoError ("corrupt") when they differ or the metadata gives none."""
    data = bounded.read_bytes(str(row["video_uri"]), "video", "video_uri")
    want = str(row.get("sha256") or "")
    found = hashlib.sha256(data).hexdigest()
    if found != want:
        err = VideoError(f"video {short(str(row['video_uri']))}: its sha256 {found[:16]}... does not match the metadata's "
                         f"{short(want, 24) if want else '(none)'}: a changed or swapped file is not scored")
        err.reason = "corrupt"
        raise err
    return data
