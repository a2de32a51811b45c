"""Training data as `--data` names it -> Ray Data clip rows (`formats.CLIP_COLUMNS`), before decoding.

Accepted `--data` (any fsspec URI):
- a video table, CSV, TSV, JSONL or Parquet (each but Parquet also .gz), in a published layout that
  `formats.py` detects from its columns (WebVid, Panda-70M, OpenVid-1M, InternVid, HD-VILA) or mapped
  with `--video-col`/`--caption-col`/`--span-col`/`--start-col`/`--end-col`; or a folder of such tables;
- a folder of videos with one captions table beside them (`captions.csv` or any single table): its rows
  name the video by `contentUrl` or `file` (relative to the folder) or by `videoid` (the video whose
  file name without extension is that id), and the caption by `name` or `caption`;
- WebDataset tar shards: one `.tar`, a folder of them (video2dataset's output: `00000.tar` with
  `00000.parquet` and `00000_stats.json` beside it), a brace pattern `shards/{00000..00009}.tar` or a
  comma-separated list; each sample's video (`KEY.mp4`, .webm, .mkv, .mov, .avi) is read from the tar as
  Ray Data streams it (never unpacked to disk), its caption from `KEY.txt` (or the JSON's caption column),
  and `KEY.json`'s keys are columns (spans and `--where` use them);
- a folder written by `jobs.ingest` (precomputed latents; see `pipelines/train/ingest.py`);
- a batch job's output folder (`jobs.animate --out`): its ok rows, the prompt as the caption, each video
  as written (error rows, and any row whose video lies outside the folder, are left out and counted).

The table is read by Ray Data, then one `map_batches` (`prepare`) explodes spans into clips, applies
`--where` (counted in the run's tally: kept and dropped rows) and writes the clip-row columns; nothing is
fetched or decoded before `pipelines/train/decode.py`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile
from dataclasses import dataclass

import numpy as np
import pandas as pd
import ray
from braceexpand import braceexpand

from animatediff_core.configs import need
from animatediff_core.errors import ConfigError
from animatediff_core.io import storage
from pipelines import tables as table_files
from pipelines.animate.layout import OutputLayout
from pipelines.train.config import DataOptions
from pipelines.train.formats import CLIP_COLUMNS, FORMATS, VIDEO_EXTS, TableFormat, clip_rows, detect, explode
from pipelines.where import Where, parse_where

INGEST_META = "_ingest.json"  # marks a folder written by jobs.ingest
INGEST_SKIPPED = "_skipped.parquet"  # beside it: each skipped video or span and why (`_`: not a shard of rows)
WDS_VIDEO_KEYS = tuple(e.lstrip(".") for e in VIDEO_EXTS)
# Columns kept as text exactly as written (ids like 007, URLs), for every format's video, id and caption.
STRING_COLUMNS = tuple(dict.fromkeys(c for f in FORMATS for c in (f.video, f.id, f.caption) if c))
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataSource:
    """What `--data` points at. kind: "table", "folder" (videos + captions), "webdataset", "latents",
    "run" (a batch job's output folder)."""

    uri: str
    kind: str
    tables: tuple[str, ...]  # table files, or tar shards for "webdataset"
    root: str  # relative video paths and bare ids are resolved against this
    meta: dict | None = None  # jobs.ingest metadata for kind "latents"
    fmt: TableFormat | None = None
    columns: tuple[str, ...] = ()  # what --where may name
    where: Where | None = None


EXPECTED = ("expected a video table (.csv, .tsv, .jsonl, .parquet), a folder of them, a folder of videos with a "
            "captions table, WebDataset .tar shards, or a folder written by jobs.ingest")


def find_source(uri: str, options: DataOptions | None = None) -> DataSource:
    """Classify `--data`, detect its table format and parse `--where`; ConfigError (one line) when it is
    missing, holds nothing usable, or names columns it does not have."""
    options = options or DataOptions()
    shards = _tar_list(uri)
    if shards is not None:
        return _with_format(DataSource(uri, "webdataset", tuple(shards), options.video_root or uri), options)
    need(storage.exists(uri), f"--data {uri}: not found ({EXPECTED})")
    if not storage.isdir(uri):
        need(table_files.is_table(uri, data=True), f"--data {uri}: not a table or a .tar shard ({EXPECTED})")
        return _with_format(DataSource(uri, "table", (uri,), options.video_root or _parent(uri)), options)
    if storage.exists(storage.join(uri, INGEST_META)):
        meta = json.loads(storage.read_bytes(storage.join(uri, INGEST_META)))
        return DataSource(uri, "latents", (), uri, meta)
    if storage.exists(OutputLayout(uri).metadata):  # a batch job's output folder
        return _with_format(DataSource(uri, "run", (OutputLayout(uri).metadata,), uri), options)
    files = table_files.list_files(uri)
    tars = tuple(f for f in files if f.lower().endswith(".tar"))
    if tars:
        return _with_format(DataSource(uri, "webdataset", tars, options.video_root or uri), options)
    tables = tuple(f for f in files if table_files.is_table(f, data=True))
    if any(f.lower().endswith(VIDEO_EXTS) for f in files):
        if len(tables) != 1:
            names = [t for t in tables if t.rsplit("/", 1)[-1].startswith(("captions.", "metadata."))]
            need(len(names) == 1, f"--data {uri}: a folder of videos needs one captions table beside them "
                                  f"(captions.csv, or metadata.jsonl as Hugging Face writes it), found {len(tables)} tables")
            tables = tuple(names)
        return _with_format(DataSource(uri, "folder", tables, options.video_root or uri), options)
    need(tables, f"--data {uri}: folder holds no table, no .tar shard and no videos ({EXPECTED})")
    return _with_format(DataSource(uri, "table", tables, options.video_root or uri), options)


def _tar_list(uri: str) -> list[str] | None:
    """The shards of a `.tar` URI, a brace pattern or a comma list of them; None when `uri` is none of those."""
    parts = [p.strip() for p in uri.split(",") if p.strip()]
    if not parts or not all(p.lower().endswith(".tar") for p in parts):
        return None
    shards = [os.path.abspath(s) if storage.is_local(s) and "://" not in s else s
              for p in parts for s in braceexpand(p)]
    missing = [s for s in shards if not storage.exists(s)]
    need(not missing, f"--data {uri}: shard {missing[0] if missing else ''} not found ({len(missing)} of {len(shards)} missing)")
    return shards


def _parent(uri: str) -> str:
    return uri.rsplit("/", 1)[0] if "/" in uri else "."


def _with_format(source: DataSource, options: DataOptions) -> DataSource:
    """The source with its table format detected from the first table's columns (a shard's first sample)."""
    if source.kind == "webdataset":
        columns = first_sample_columns(source.tables[0])
        fmt = _webdataset_format(columns, options)
    elif source.kind == "run":
        from pipelines.animate import schema  # the batch job's columns, declared once: no read needed here

        columns = list(schema.empty().columns)
        fmt = detect(columns, f"--data {source.uri}", options)
    else:
        columns, _ = table_files.header(source.tables[0], "--data")
        fmt = detect(columns, f"--data {source.tables[0]}", options)
    names = tuple(dict.fromkeys([*columns, "caption", "start", "end", "videoid"]))
    where = parse_where(options.where, names) if options.where else None
    return DataSource(source.uri, source.kind, source.tables, source.root, source.meta, fmt, names, where)


def _webdataset_format(columns: list[str], options: DataOptions) -> TableFormat:
    """A shard's samples: the video from the tar, the caption from the JSON's caption column when its format
    has one (Panda-70M's list of captions, one a span) else from `KEY.txt`, spans from the JSON."""
    json_cols = [c for c in columns if c not in ("video", "txt", "__key__", "clips")]  # video2dataset's own cut
    try:
        found = detect(json_cols + ["video"], "--data", options) if json_cols else None
    except ConfigError:  # the JSON is no known table: the sample is a video and its text
        found = None
    caption = found.caption if found and found.caption and (found.spans or found.clips or found.start) else "txt"
    spans = (found.spans, found.clips, found.start, found.end) if found else (None, None, None, None)
    return TableFormat("webdataset", video="video", caption=options.caption_col or caption, id="__key__",
                       spans=spans[0], clips=spans[1], start=spans[2], end=spans[3])


def first_sample_columns(shard: str) -> list[str]:
    """The columns a shard's samples have: `__key__`, `video`, `txt` when present, and the first JSON's keys
    (read by streaming the tar's first members only)."""
    fs, path = storage.fs_and_path(shard)
    columns, key = ["__key__"], None
    try:
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for member in tar:
                stem, _, ext = member.name.rpartition("/")[2].partition(".")
                if key is not None and stem != key:
                    break
                key = stem
                if ext.lower() in WDS_VIDEO_KEYS:
                    columns.append("video")
                elif ext == "txt":
                    columns.append("txt")
                elif ext == "json" and member.size < (1 << 20):
                    record = json.loads(tar.extractfile(member).read())
                    columns += [str(k) for k in record] if isinstance(record, dict) else []
    except (tarfile.TarError, OSError, ValueError, RecursionError) as e:
        raise ConfigError(f"--data {shard}: not a readable WebDataset tar ({type(e).__name__}: {str(e)[:120]})") from None
    need(key is not None, f"--data {shard}: the tar holds no sample")
    need("video" in columns, f"--data {shard}: sample {key!r} has no video member (.{', .'.join(WDS_VIDEO_KEYS)})")
    return list(dict.fromkeys(columns))


def check_tables(source: DataSource) -> None:
    """Fail fast when a table lacks its format's columns or all are empty (WebDataset shards: nothing to do)."""
    if source.kind == "webdataset":
        return
    if source.kind == "run":
        need(len(run_rows(source.uri)), f"--data {source.uri}: the batch job's output has no ok row to train on")
        return
    nonempty = False
    for uri in source.tables:
        names, rows = table_files.header(uri, "--data")
        missing = [c for c in source.fmt.needs() if c not in names]
        need(not missing, f"--data {uri}: no column {', '.join(map(repr, missing))} (columns: {names[:20]}); "
                          f"the first table is {source.fmt.name}-format and every table must be")
        nonempty = nonempty or rows
    need(nonempty, f"--data {source.uri}: the table has no rows")


def folder_rows(source: DataSource) -> pd.DataFrame:
    """A folder's captions table with its video column resolved to the files (a bare id names the file whose
    name without extension is that id; driver side: small datasets)."""
    table = table_files.read_pandas(source.tables[0], strings=STRING_COLUMNS, flag="--data", data=True)
    by_stem = {uri.rsplit("/", 1)[-1].rsplit(".", 1)[0]: uri
               for uri in table_files.list_files(source.uri) if uri.lower().endswith(VIDEO_EXTS)}
    video = source.fmt.video
    table[video] = [by_stem.get(str(v).strip(), v) if isinstance(v, str) else v for v in table[video]]
    return table


def run_rows(uri: str) -> pd.DataFrame:
    """A batch job's ok rows whose video lies inside its folder (driver side: the metadata is small)."""
    from pipelines.animate.report import read_metadata  # here: the batch job's reader, only for this kind

    rows = read_metadata(uri)
    root = uri.rstrip("/") + "/"
    ok = (rows["status"] == "ok") & rows["video_uri"].astype(str).str.startswith(root) \
        & ~rows["video_uri"].astype(str).str.contains("/../", regex=False)
    if (~ok).any():
        log.info("--data %s: %d of %d rows left out (error rows, or a video outside the folder)", uri, int((~ok).sum()), len(rows))
    rows = rows[ok].reset_index(drop=True)
    rows["id"] = rows["checkpoint"].astype(str) + "/" + rows["id"].astype(str)  # ids repeat across checkpoints
    return rows


def prepare(batch: pd.DataFrame, source: DataSource, tally=None) -> pd.DataFrame:
    """Ray Data stage: a batch of table rows (or WebDataset samples) -> clip rows: spans exploded, `--where`
    applied (its counts sent to `tally`), the clip-row columns `CLIP_COLUMNS` out."""
    if source.kind == "webdataset":
        batch = samples_to_rows(batch)
    frame = explode(batch.reset_index(drop=True), source.fmt)
    rows = clip_rows(frame, source.fmt, source.root)
    if source.where is None or not len(rows):
        return rows
    mask = source.where.mask(frame.assign(caption=rows["caption"], start=rows["start"], end=rows["end"],
                                          videoid=rows["videoid"]))
    if tally is not None:
        tally.filtered.remote(_block_key(rows), int(mask.sum()), int(len(mask) - mask.sum()))
    return rows[mask].reset_index(drop=True)


def _block_key(rows: pd.DataFrame) -> str:
    """A digest of a block's clips: the same block read again (every epoch re-reads the table) gives the same
    key, so its counts replace, never add to, the earlier ones."""
    digest = hashlib.blake2b(digest_size=16)
    for uri, start, end in zip(rows["video_uri"], rows["start"], rows["end"]):
        digest.update(f"{uri}|{start}|{end}\n".encode())
    return digest.hexdigest()


def samples_to_rows(batch: pd.DataFrame) -> pd.DataFrame:
    """WebDataset samples (`__key__`, `mp4`/..., `txt`, `json` bytes) -> rows: `__key__`, `video` (bytes),
    `txt`, and the JSON's keys as columns."""
    video = next((batch[k] for k in WDS_VIDEO_KEYS if k in batch), pd.Series([b""] * len(batch)))
    records = [_json_record(v) for v in (batch["json"] if "json" in batch else [None] * len(batch))]
    out = pd.DataFrame.from_records(records, index=batch.index) if any(records) else pd.DataFrame(index=batch.index)
    out = out.drop(columns=[c for c in ("video", "txt", "__key__") if c in out])
    out["__key__"] = batch["__key__"].astype(str).to_numpy()
    out["video"] = [bytes(v) if v is not None and not (isinstance(v, float)) else b"" for v in video]
    out["txt"] = [_text(t) for t in (batch["txt"] if "txt" in batch else [""] * len(batch))]
    if "__url__" in batch:
        out["__url__"] = batch["__url__"].to_numpy()
    return out


def _json_record(data) -> dict:
    if data is None or (isinstance(data, float) and np.isnan(data)):
        return {}
    try:
        record = json.loads(bytes(data)) if not isinstance(data, dict) else data
    except (ValueError, RecursionError):  # a sample whose JSON cannot be read keeps its video and text
        return {}
    return record if isinstance(record, dict) else {}


def _text(value) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace").strip()
    return "" if value is None or value is pd.NA or isinstance(value, float) else str(value).strip()


def read_rows(source: DataSource, num_cpus: float = 1.0, tally=None) -> "ray.data.Dataset":
    """A Ray Dataset of clip rows (`formats.CLIP_COLUMNS`): tables and shards are read by Ray Data, streaming
    (`num_cpus` per read task); a folder's captions table is joined to its files on the driver."""
    if source.kind == "folder":
        ds = ray.data.from_pandas(folder_rows(source))
    elif source.kind == "run":
        ds = ray.data.from_pandas(run_rows(source.uri))
    elif source.kind == "webdataset":
        fs_path = [storage.arrow_location(s) for s in source.tables]
        ds = ray.data.read_webdataset([p for p, _ in fs_path], filesystem=fs_path[0][1], decoder=None,
                                      include_paths=True, num_cpus=num_cpus)
    else:
        ds = table_files.read_ray(list(source.tables), strings=STRING_COLUMNS, num_cpus=num_cpus)
    return ds.map_batches(prepare, fn_kwargs={"source": source, "tally": tally}, batch_format="pandas",
                          batch_size=None, num_cpus=num_cpus)


def describe(source: DataSource) -> str:
    """One line for the log: what was found and how it is read."""
    spans = source.fmt.spans or source.fmt.clips or (source.fmt.start and f"{source.fmt.start}/{source.fmt.end}")
    return (f"--data {source.uri}: {source.kind} ({len(source.tables)} file(s)), format {source.fmt.name}: "
            f"video {source.fmt.video!r}, caption {source.fmt.caption!r}"
            + (f", spans {spans!r}" if spans else ", whole videos")
            + (f"; --where {source.where.text!r}" if source.where else ""))


__all__ = ["CLIP_COLUMNS", "DataSource", "INGEST_META", "check_tables", "describe", "find_source", "folder_rows",
           "prepare", "read_rows"]
