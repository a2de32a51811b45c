"""WebVid-format video tables as Ray Data rows `(videoid, video_uri, caption)`.

Accepted `--data` (any fsspec URI):
- a table file, CSV (`.csv`, `.csv.gz`) or Parquet, with WebVid's columns `videoid`, `contentUrl`,
  `name` (the caption), `duration`, `page_dir` (the last two are read and ignored);
- a folder of such tables (e.g. WebVid's `results_10M_train.csv` split into Parquet shards);
- a folder of videos with one captions table beside them (`captions.csv` or any single .csv/.parquet):
  its rows name the video by `contentUrl` or `file` (relative to the folder) or by `videoid`
  (the video whose file name without extension is that id), and the caption by `name` or `caption`;
- a folder written by `jobs.ingest` (precomputed latents; see `pipelines/train/ingest.py`).
`contentUrl` may be http(s)://, s3://, gs://, file:// or a path; relative paths are resolved against
the folder of the table. Rows are only normalized here: fetching and decoding is `pipelines/train/decode.py`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd
import ray

from animatediff_core.configs import need
from animatediff_core.io import storage
from pipelines import tables as table_files

REQUIRED = ("videoid", "contentUrl", "name")
STRING_COLUMNS = ("videoid", "contentUrl", "name", "duration", "page_dir", "file", "caption")
ROW_COLUMNS = ["videoid", "video_uri", "caption"]
VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v")
INGEST_META = "_ingest.json"  # marks a folder written by jobs.ingest


@dataclass(frozen=True)
class DataSource:
    """What `--data` points at. kind: "table" (WebVid tables), "folder" (videos + captions), "latents"."""

    uri: str
    kind: str
    tables: tuple[str, ...]
    root: str  # relative video paths are resolved against this
    meta: dict | None = None  # jobs.ingest metadata for kind "latents"


def find_source(uri: str) -> DataSource:
    """Classify `--data`; raise ConfigError (one line) when it is missing or holds nothing usable."""
    expected = ("expected a WebVid-format CSV/Parquet table, a folder of such tables, a folder of videos "
                "with a captions table, or a folder written by jobs.ingest")
    need(storage.exists(uri), f"--data {uri}: not found ({expected})")
    if not storage.isdir(uri):
        need(table_files.is_table(uri), f"--data {uri}: not a .csv or .parquet table ({expected})")
        return DataSource(uri, "table", (uri,), _parent(uri))
    if storage.exists(storage.join(uri, INGEST_META)):
        meta = json.loads(storage.read_bytes(storage.join(uri, INGEST_META)))
        return DataSource(uri, "latents", (), uri, meta)
    files = table_files.list_files(uri)
    tables = tuple(f for f in files if table_files.is_table(f))
    videos = [f for f in files if f.lower().endswith(VIDEO_EXTS)]
    if videos:
        if len(tables) != 1:
            names = [t for t in tables if t.rsplit("/", 1)[-1].startswith("captions.")]
            need(len(names) == 1, f"--data {uri}: a folder of videos needs one captions table beside them "
                                  f"(captions.csv or captions.parquet), found {len(tables)} tables")
            tables = tuple(names)
        return DataSource(uri, "folder", tables, uri)
    need(tables, f"--data {uri}: folder holds no .csv/.parquet table and no videos ({expected})")
    return DataSource(uri, "table", tables, uri)


def _parent(uri: str) -> str:
    return uri.rsplit("/", 1)[0] if "/" in uri else "."


def check_tables(source: DataSource) -> None:
    """Fail fast when the tables lack WebVid's columns or are all empty."""
    nonempty = False
    for uri in source.tables:
        names, rows = table_files.header(uri, "--data")
        if source.kind == "table":
            missing = [c for c in REQUIRED if c not in names]
        else:
            missing = [] if {"name", "caption"} & set(names) and {"contentUrl", "file", "videoid"} & set(names) \
                else ["name or caption, and contentUrl, file or videoid"]
        need(not missing, f"--data {uri}: table has columns {names}; expected WebVid's {', '.join(REQUIRED)} "
                              f"(missing {', '.join(missing)})")
        nonempty = nonempty or rows
        if nonempty:
            break
    need(nonempty, f"--data {source.uri}: the table has no rows")


def resolve_uri(value: str, root: str) -> str:
    """An absolute URI or path for a `contentUrl`/`file` value; relative ones are taken under `root`."""
    value = value.strip()
    if not value or "://" in value or value.startswith("/"):
        return value
    return storage.join(root, value)


def normalize(batch: pd.DataFrame, root: str) -> pd.DataFrame:
    """WebVid columns -> `videoid, video_uri, caption` strings (missing values become "")."""
    def col(name: str) -> pd.Series:
        if name not in batch:
            return pd.Series([""] * len(batch), index=batch.index, dtype=object)
        return batch[name].fillna("").astype(str)

    caption = col("name") if "name" in batch else col("caption")
    where = col("contentUrl") if "contentUrl" in batch else col("file")
    return pd.DataFrame({
        "videoid": col("videoid").to_numpy(),
        "video_uri": [resolve_uri(v, root) for v in where],
        "caption": caption.str.strip().to_numpy(),
    })


def folder_rows(source: DataSource) -> pd.DataFrame:
    """Rows for a folder of videos: the captions table joined to the files (driver side; small datasets)."""
    table = table_files.read_pandas(source.tables[0], strings=STRING_COLUMNS, flag="--data")
    if "contentUrl" in table or "file" in table:
        return normalize(table, source.root)
    by_stem = {}
    for uri in table_files.list_files(source.uri):
        if uri.lower().endswith(VIDEO_EXTS):
            by_stem[uri.rsplit("/", 1)[-1].rsplit(".", 1)[0]] = uri
    rows = normalize(table, source.root)
    rows["video_uri"] = [by_stem.get(v, storage.join(source.root, f"{v}.mp4")) for v in rows["videoid"]]
    return rows


def read_rows(source: DataSource, num_cpus: float = 1.0) -> "ray.data.Dataset":
    """A Ray Dataset of `videoid, video_uri, caption` rows (tables are read by Ray Data, streaming;
    `num_cpus` per read task)."""
    if source.kind == "folder":
        return ray.data.from_pandas(folder_rows(source))  # a driver-side table: no read tasks
    ds = table_files.read_ray(list(source.tables), strings=STRING_COLUMNS, num_cpus=num_cpus)
    return ds.map_batches(normalize, fn_kwargs={"root": source.root}, batch_format="pandas", num_cpus=num_cpus)
