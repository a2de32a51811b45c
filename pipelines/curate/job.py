"""Curate a generated set: a batch job's rows (with an evaluation's scores) -> the kept subset as a dataset.

    runs' metadata (+ EVAL/metrics.parquet) --status ok, --where--> kept rows --Ray Data--> OUT/ in --format

Output folder `OUT/`:
  webdataset   shards/NNNNNN_NNNNNN.tar of KEY.mp4, KEY.json (the row: metadata and scores), KEY.txt (the prompt);
               KEY is the kept row's number (`000000123`), the same in manifest.parquet
  videofolder  videos/KEY.mp4 and metadata.jsonl (Hugging Face's videofolder: `file_name` relative, `caption`,
               every metadata and score column)
  parquet      manifest.parquet alone: the kept rows, `video_uri` naming each video where it is
  manifest.parquet   every kept row, with its `key` (and `shard` for webdataset)
  filtered.parquet   every dropped row and why (`reason`: "status: ...", "where", "duplicate: of KEY (cosine c)",
                     "video: ...")
  summary.json       the counts; the same lines are printed

Every kept video is read within the bounded reader's video limit and checked against its metadata's sha256 (the evaluation's
rule for folders that may come from someone else); one that fails is dropped with its reason, not copied.
`--dedup COS` embeds each kept video with CLIP (the mean of 4 frames' image embeddings) and, in order of
`--dedup-by` (highest first), drops a video whose cosine with an already kept one is above COS.
`jobs.train --data OUT` trains on any of the three (`pipelines/train/formats.py`).
"""

from __future__ import annotations

import io
import json
import logging
import time

import numpy as np
import pandas as pd
import ray

from animatediff_core.errors import VideoError
from animatediff_core.io import storage
from pipelines.curate.config import CurateRun
from pipelines.evaluate.runs import read_runs, verified_video
from pipelines.where import parse_where

log = logging.getLogger(__name__)
SHARDS, VIDEOS = "shards", "videos"


def select(run: CurateRun) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept, dropped) rows of the runs: error rows and rows `--where` does not select are dropped, with `reason`."""
    rows = read_runs(run.run)
    if run.scores:
        rows = join_scores(rows, run.scores)
    ok = rows["status"] == "ok"
    dropped = [rows[~ok].assign(reason="status: " + rows.loc[~ok, "error"].fillna("").astype(str).str.slice(0, 200))]
    kept = rows[ok]
    if run.where:
        where = parse_where(run.where, list(rows.columns))
        keep = where.mask(kept)
        dropped.append(kept[~keep].assign(reason="where"))
        kept = kept[keep]
    kept = kept.reset_index(drop=True)
    return kept.assign(key=[f"{i:09d}" for i in range(len(kept))]), pd.concat(dropped, ignore_index=True)


def join_scores(rows: pd.DataFrame, scores: str) -> pd.DataFrame:
    """Each row with its video's scores from an evaluation's metrics.parquet (joined on `video_uri`)."""
    table = pd.read_parquet(io.BytesIO(storage.read_bytes(storage.join(scores, "metrics.parquet"))))
    extra = [c for c in table.columns if c not in rows.columns or c == "video_uri"]
    table = table[extra].drop_duplicates("video_uri")
    return rows.merge(table[table["video_uri"] != ""], on="video_uri", how="left")


def records(frame: pd.DataFrame) -> list[dict]:
    """Rows as JSON-safe dicts (NaN as null, numpy scalars as Python)."""
    return json.loads(frame.to_json(orient="records", date_format="iso"))


DEDUP_FRAMES = 4  # frames per video, evenly spaced, whose CLIP embeddings are averaged
CHUNK = 1024  # rows compared at once in dedup


class EmbedVideos:
    """Ray Data stage (`--dedup`): kept rows -> `key`, `embedding` (normalized mean CLIP image embedding of
    `DEDUP_FRAMES` frames; empty when the video cannot be read) and `problem`."""

    def __init__(self, clip_uri: str):
        from animatediff_core.metrics.scores import load_clip  # here: torch only in the actors that need it

        self.clip = load_clip(clip_uri)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        from animatediff_core.io.video_io import probe_video, read_video
        from animatediff_core.metrics.scores import embed_pixels, pixel_values

        out, problems = [], []
        for row in batch.to_dict("records"):
            try:
                data = verified_video(row)
                total = probe_video(data).num_frames
                frames = read_video(data, sorted({int(i) for i in np.linspace(0, total - 1, DEDUP_FRAMES)}))
                emb = embed_pixels(self.clip, pixel_values(self.clip, frames)).mean(0)
                out.append((emb / emb.norm()).numpy().astype(np.float32))
                problems.append("")
            except (VideoError, OSError) as e:
                out.append(np.zeros(0, np.float32))
                problems.append(f"video: {str(e)[:200]}")
        return pd.DataFrame({"key": batch["key"].to_numpy(), "embedding": out, "problem": problems})


def near_duplicates(kept: pd.DataFrame, embeddings: dict, threshold: float, rank_by: str) -> dict:
    """{key: reason} of the rows to drop: in order of `rank_by` (highest first), a row whose embedding has a
    cosine above `threshold` with an earlier kept row's is a duplicate of it."""
    order = kept.sort_values(rank_by, ascending=False, na_position="last", kind="stable") if rank_by in kept else kept
    keys = [k for k in order["key"] if len(embeddings.get(k, ()))]
    if not keys:
        return {}
    matrix = np.stack([embeddings[k] for k in keys])
    chosen: list[int] = []
    drop = {}
    for start in range(0, len(keys), CHUNK):
        block = matrix[start:start + CHUNK]
        best_prior = (block @ matrix[chosen].T) if chosen else np.full((len(block), 0), -2.0)
        for i in range(len(block)):
            sims = list(best_prior[i]) + [float(block[i] @ matrix[j]) for j in chosen[len(best_prior[i]):]]
            j = int(np.argmax(sims)) if sims else -1
            if j >= 0 and sims[j] > threshold:
                drop[keys[start + i]] = f"duplicate: of {keys[chosen[j]]} (cosine {sims[j]:.4f})"
            else:
                chosen.append(start + i)
    return drop


def dedup(run: CurateRun, kept: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept, dropped): near-duplicates removed (`--dedup`), unreadable videos dropped with their reason."""
    if run.dedup is None or not len(kept):
        return kept, kept.iloc[:0].assign(reason="")
    found = ray.data.from_pandas(kept).repartition(max(1, min(len(kept), 64))).map_batches(
        EmbedVideos, fn_constructor_args=(run.clip,), batch_format="pandas", num_cpus=0.5,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=2)).to_pandas()
    embeddings = dict(zip(found["key"], found["embedding"]))
    reasons = {k: p for k, p in zip(found["key"], found["problem"]) if p}
    reasons.update(near_duplicates(kept, embeddings, run.dedup, run.dedup_by))
    drop = kept["key"].isin(reasons)
    log.info("--dedup %s: %d near-duplicate(s) dropped", run.dedup, sum(r.startswith("duplicate") for r in reasons.values()))
    return kept[~drop].reset_index(drop=True), kept[drop].assign(reason=kept.loc[drop, "key"].map(reasons))


class ReadVideos:
    """Ray Data stage: kept rows -> the same rows with `mp4` (the verified bytes) and `problem` ("" when read)."""

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        data, problems = [], []
        for row in batch.to_dict("records"):
            try:
                data.append(verified_video(row))
                problems.append("")
            except (VideoError, OSError) as e:
                data.append(b"")
                problems.append(f"video: {str(e)[:200]}")
        return batch.assign(mp4=data, problem=problems)


def write_sample(batch: pd.DataFrame, out: str) -> pd.DataFrame:
    """Ray Data stage for videofolder: each video to OUT/videos/KEY.mp4 (atomic); the batch without its bytes."""
    for key, data in zip(batch["key"], batch["mp4"]):
        if len(data):
            storage.write_bytes_atomic(storage.join(out, VIDEOS, f"{key}.mp4"), bytes(data))
    return batch.drop(columns=["mp4"])


def to_samples(batch: pd.DataFrame) -> pd.DataFrame:
    """Kept rows with their bytes -> WebDataset samples (`__key__`, `mp4`, `json`, `txt`)."""
    batch = batch[batch["problem"] == ""]
    meta = records(batch.drop(columns=["mp4", "problem"]))
    return pd.DataFrame({"__key__": batch["key"].to_numpy(), "mp4": batch["mp4"].to_numpy(),
                         "json": [json.dumps(m).encode() for m in meta], "txt": [str(p).encode() for p in batch["prompt"]]})


def write_dataset(run: CurateRun, kept: pd.DataFrame) -> pd.DataFrame:
    """Write the kept rows in `run.format`; returns the rows whose video could not be read (with `reason`)."""
    if run.format == "parquet" or not len(kept):
        return kept.iloc[:0].assign(reason="")
    blocks = max(1, min(len(kept), 64))
    read = ray.data.from_pandas(kept).repartition(blocks).map_batches(ReadVideos, batch_format="pandas", num_cpus=0.5,
                                                                      compute=ray.data.ActorPoolStrategy(min_size=1, max_size=4))
    if run.format == "videofolder":
        done = read.map_batches(write_sample, fn_kwargs={"out": run.out}, batch_format="pandas", num_cpus=0.5).to_pandas()
    else:
        mean_mb = max(float(kept["bytes"].mean()) / 2**20, 1e-3) if "bytes" in kept else 1.0
        path, fs = storage.arrow_location(storage.join(run.out, SHARDS))
        materialized = read.materialize()
        materialized.map_batches(to_samples, batch_format="pandas").write_webdataset(
            path, filesystem=fs, min_rows_per_file=max(1, int(run.shard_mb / mean_mb)), encoder=None)  # bytes as given
        done = materialized.drop_columns(["mp4"]).to_pandas()
    bad = done[done["problem"] != ""]
    return bad.drop(columns=["problem"]).assign(reason=bad["problem"])


def curate(run: CurateRun, selected: tuple[pd.DataFrame, pd.DataFrame] | None = None) -> dict:
    """Select (or take `select(run)`'s result, already made), write, and record what was kept and dropped;
    returns the summary."""
    start = time.time()
    kept, dropped = selected if selected is not None else select(run)
    kept, duplicates = dedup(run, kept)
    dropped = pd.concat([dropped, duplicates.drop(columns=["key"])], ignore_index=True)
    unreadable = write_dataset(run, kept)
    if len(unreadable):
        kept = kept[~kept["key"].isin(unreadable["key"])]
        dropped = pd.concat([dropped, unreadable.drop(columns=["key"])], ignore_index=True)
    kept = kept.reset_index(drop=True)
    if run.format == "webdataset":
        kept = kept.assign(shard=_shard_names(run.out, kept["key"]))
    if run.format == "videofolder":
        lines = [json.dumps({"file_name": f"{VIDEOS}/{r['key']}.mp4", "caption": r["prompt"], **r})
                 for r in records(kept)]
        storage.write_text_atomic(storage.join(run.out, "metadata.jsonl"), "\n".join(lines) + ("\n" if lines else ""))
    for name, table in (("manifest.parquet", kept), ("filtered.parquet", dropped)):
        buf = io.BytesIO()
        table.to_parquet(buf, index=False)
        storage.write_bytes_atomic(storage.join(run.out, name), buf.getvalue())
    reasons = dropped["reason"].str.split(":").str[0].value_counts().to_dict() if len(dropped) else {}
    summary = {"rows": int(len(kept) + len(dropped)), "kept": int(len(kept)), "dropped": int(len(dropped)),
               "dropped_by_reason": {str(k): int(v) for k, v in reasons.items()}, "format": run.format,
               "where": run.where, "out": run.out, "seconds": round(time.time() - start, 2)}
    storage.write_text_atomic(storage.join(run.out, "summary.json"), json.dumps(summary, indent=2))
    return summary


def _shard_names(out: str, keys: pd.Series) -> list[str]:
    """Each kept key's shard (relative to OUT), read back from the tars' member names."""
    import tarfile

    where = {}
    fs, root = storage.fs_and_path(storage.join(out, SHARDS))
    for path in sorted(p for p in fs.find(root) if p.endswith(".tar")):
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for member in tar:
                where.setdefault(member.name.split(".", 1)[0], f"{SHARDS}/{path.rsplit('/', 1)[-1]}")
    return [where.get(k, "") for k in keys]


def summary_text(s: dict) -> str:
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(s["dropped_by_reason"].items())) or "none"
    return (f"kept {s['kept']} of {s['rows']} videos ({s['format']}) in {s['seconds']:.0f} s; dropped {s['dropped']}: "
            f"{reasons}\nout: {s['out']} (manifest.parquet, filtered.parquet, summary.json)")



