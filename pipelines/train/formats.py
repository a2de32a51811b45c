"""Video tables as their datasets publish them, declared once: which columns hold the video, the caption
and the clip spans, and how one row becomes training clips (`prepare`).

| format    | its columns (the ones read here in bold)                                                   |
|-----------|--------------------------------------------------------------------------------------------|
| webvid    | **videoid, contentUrl, name**, duration, page_dir                                          |
| panda70m  | **videoID, url, timestamp** (a list of `[start, end]`), **caption** (a list, one a span), matching_score (a list) |
| internvid | **YoutubeID, Start_timestamp, End_timestamp, Caption**, Aesthetic_Score, UMT_Score          |
| hdvila    | **video_id, url, clip** (a list of `{clip_id, span: [start, end]}`, a `caption` or `text` key each if present) |
| openvid   | **video, caption**, aesthetic score, motion score, temporal consistency score, camera motion, frame, fps, seconds |
| spans     | **start, end** with a video and a caption column: one span a row                           |
| folder    | **file** or **videoid**, and **caption** or **name** (a folder of videos with a captions table) |
| videofolder | **file_name**, **caption** or **text** (Hugging Face's `metadata.jsonl`/`.csv`; a curated set) |
| batchrun  | **id, video_uri, prompt** (a batch job's `metadata/`, ok rows only: our own output)         |
| webdataset| a tar shard's `KEY.mp4` (or .webm/.mkv/.mov/.avi), `KEY.txt` (the caption) and `KEY.json` (its keys become columns) |

The first format whose columns a table has is used; `--video-col`, `--caption-col`, `--span-col`
(a list of spans a row) or `--start-col`/`--end-col` (one span a row) name any other table's columns,
over the detected format. A video value with a scheme or an extension is a URI or a path (relative
ones under `--video-root`, default the table's folder); a bare value (`abc123`, a YouTube id) names
`VIDEO_ROOT/abc123.mp4`. Timestamps are seconds or `[H:]MM:SS[.mmm]` strings.

`prepare` turns a batch of rows into clip rows: lists of spans are exploded into one row per span
(list columns of the same length, such as Panda-70M's captions and matching scores, go with them),
`--where` keeps the rows it selects, and every row comes out in the clip-row columns `CLIP_COLUMNS`.
A row whose span cannot be read is kept with its `problem` (a named skip downstream, never a crash).
"""

from __future__ import annotations

import ast
import functools
import json
import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from animatediff_core.configs import need
from animatediff_core.io import storage

VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".m4v")
# What a clip row holds between reading and decoding (`video` is the file's bytes for WebDataset samples).
CLIP_COLUMNS = ("videoid", "video_uri", "video", "caption", "start", "end", "problem")
MAX_CELL = 1 << 20  # a list cell longer than this (1 MiB of text) is a bad span, not a parse


@dataclass(frozen=True)
class TableFormat:
    """Which columns of a published table hold what. `spans`: a list of `[start, end]` a row;
    `clips`: a list of `{span: [start, end], caption|text}` a row; `start`/`end`: one span a row."""

    name: str
    video: str
    caption: str | None
    id: str | None = None
    spans: str | None = None
    clips: str | None = None
    start: str | None = None
    end: str | None = None

    def needs(self) -> tuple[str, ...]:
        return tuple(c for c in (self.video, self.caption, self.spans, self.clips, self.start, self.end) if c)


FORMATS = (
    TableFormat("panda70m", video="url", caption="caption", id="videoID", spans="timestamp"),
    TableFormat("internvid", video="YoutubeID", caption="Caption", id="YoutubeID",
                start="Start_timestamp", end="End_timestamp"),
    TableFormat("hdvila", video="url", caption=None, id="video_id", clips="clip"),
    TableFormat("webvid", video="contentUrl", caption="name", id="videoid"),
    TableFormat("spans", video="file", caption="caption", start="start", end="end"),
    TableFormat("videofolder", video="file_name", caption="caption"),
    TableFormat("videofolder", video="file_name", caption="text"),
    TableFormat("batchrun", video="video_uri", caption="prompt", id="id"),
    TableFormat("openvid", video="video", caption="caption"),
    TableFormat("folder", video="file", caption="caption"),
    TableFormat("folder", video="file", caption="name"),
    TableFormat("folder", video="videoid", caption="caption", id="videoid"),
    TableFormat("folder", video="videoid", caption="name", id="videoid"),
    TableFormat("webdataset", video="video", caption="txt", id="__key__"),
)
FORMAT_NAMES = tuple(dict.fromkeys(f.name for f in FORMATS))


def detect(columns: list[str], where: str, options=None) -> TableFormat:
    """The format of a table with `columns`, with the `--*-col` overrides of `options` (a DataOptions) applied.
    ConfigError naming the columns found and the formats known when none fits."""
    fmt = next((f for f in FORMATS if all(c in columns for c in f.needs())), None)
    over = {k: getattr(options, f"{k}_col") for k in ("video", "caption", "span", "start", "end")} if options else {}
    over = {("spans" if k == "span" else k): v for k, v in over.items() if v}
    if over:
        fmt = replace(fmt or TableFormat("custom", video="", caption=None), **over)
        if "spans" in over or "start" in over:
            fmt = replace(fmt, clips=None) if "spans" in over else replace(fmt, spans=None, clips=None)
    need(fmt is not None and fmt.video, f"{where}: columns {columns[:20]} match no known table format "
                                        f"({', '.join(FORMAT_NAMES)}); name yours with --video-col and --caption-col")
    missing = [c for c in fmt.needs() if c not in columns]
    need(not missing, f"{where}: no column {', '.join(map(repr, missing))} (columns: {columns[:20]})")
    need((fmt.start is None) == (fmt.end is None), f"{where}: a span a row needs both --start-col and --end-col")
    return fmt


def seconds(value) -> float:
    """A timestamp as seconds: a number, or `[[H:]MM:]SS[.fff]`. ValueError for anything else."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        out = float(value)
        if not math.isfinite(out) or out < 0:
            raise ValueError(f"not a timestamp: {str(value)[:40]!r}")
        return out
    return _timestamp(str(value)[:64])


@functools.lru_cache(maxsize=1 << 16)
def _timestamp(text: str) -> float:
    """`[[H:]MM:]SS[.fff]` as seconds (cached: a table repeats its span boundaries)."""
    parts = text.strip().split(":")
    if not 1 <= len(parts) <= 3 or not all(p.strip() for p in parts):
        raise ValueError(f"not a timestamp: {text[:40]!r}")
    out = 0.0
    for p in parts:
        out = out * 60 + float(p)
    if not math.isfinite(out) or out < 0:
        raise ValueError(f"not a timestamp: {text[:40]!r}")
    return out


def as_list(cell):
    """A list cell as a Python list: lists/arrays as they are, text written as a Python or JSON literal
    (Panda-70M's CSV: `"[['0:00:00.000', '0:00:05.005']]"`) parsed as a literal, never run."""
    if isinstance(cell, np.ndarray):
        return [as_list(c) if isinstance(c, np.ndarray) else c for c in cell.tolist()]
    if isinstance(cell, (list, tuple)):
        return list(cell)
    text = str(cell)
    if len(text) > MAX_CELL:
        raise ValueError(f"a list cell of {len(text)} characters")
    if '"' not in text and "\\" not in text:  # Python's repr of a list of plain strings: JSON once quotes swap
        text = text.replace("'", '"')
    try:
        value = json.loads(text)
    except RecursionError:  # a hostile cell nested past the parser's depth: not a list of spans
        raise ValueError(f"a list cell nested too deep: {text[:40]!r}") from None
    except ValueError:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError) as e:
            raise ValueError(f"not a list: {text[:40]!r} ({type(e).__name__})") from None
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"not a list: {text[:40]!r}")
    return list(value)


def _spans(row: dict, fmt: TableFormat) -> tuple[list[tuple[float, float]], list[str] | None]:
    """(spans, captions per span or None) of one row; ValueError when they cannot be read."""
    if fmt.start:
        return [(seconds(row[fmt.start]), seconds(row[fmt.end]))], None
    if fmt.clips:
        items = as_list(row[fmt.clips])
        if not all(isinstance(c, dict) for c in items):
            raise ValueError("a clip is not a mapping with a span")
        spans = [tuple(as_list(c.get("span"))) for c in items]
        texts = [str(c.get("caption", c.get("text", "")) or "") for c in items]
        return [_pair(s) for s in spans], texts
    return [_pair(s) for s in as_list(row[fmt.spans])], None


def _pair(span) -> tuple[float, float]:
    if not isinstance(span, (list, tuple)) or len(span) != 2:
        raise ValueError(f"a span is [start, end], found {str(span)[:40]!r}")
    return seconds(span[0]), seconds(span[1])


def explode(frame: pd.DataFrame, fmt: TableFormat) -> pd.DataFrame:
    """One row per span, with `_start`, `_end`, `_problem` columns; list columns as long as a row's spans
    (captions, scores) take the span's element. Rows without spans pass through (`_start` 0, `_end` NaN)."""
    if not (fmt.spans or fmt.clips or fmt.start):
        return frame.assign(_start=0.0, _end=np.nan, _problem="")
    rows = []
    for row in frame.to_dict("records"):
        try:
            spans, texts = _spans(row, fmt)
        except (ValueError, TypeError, KeyError) as e:
            rows.append({**row, "_start": 0.0, "_end": np.nan, "_problem": f"bad_span: {str(e)[:80]}"})
            continue
        lists = _list_columns(row, fmt, len(spans))
        for i, (start, end) in enumerate(spans):
            item = {**row, **{k: v[i] for k, v in lists.items()}, "_start": start, "_end": end, "_problem": ""}
            if texts is not None:
                item[fmt.caption or "_caption"] = texts[i] or str(row.get(fmt.caption, "") if fmt.caption else "")
            rows.append(item)
    out = pd.DataFrame(rows, columns=list(frame.columns) + ["_start", "_end", "_problem", "_caption"])
    return out.drop(columns=[c for c in ("_caption",) if out[c].isna().all()])


def _list_columns(row: dict, fmt: TableFormat, n: int) -> dict:
    """The row's other list cells with exactly `n` items (one per span), parsed; others stay as they are."""
    out = {}
    for k, v in row.items():
        if k in (fmt.spans, fmt.clips, fmt.start, fmt.end):
            continue
        text = v if isinstance(v, str) else None
        if isinstance(v, (list, tuple, np.ndarray)) or (text and text.lstrip().startswith("[")):
            try:
                items = as_list(v)
            except ValueError:
                continue
            if len(items) == n:
                out[k] = items
    return out


def video_uri(value: str, root: str) -> str:
    """A video cell as a URI: a URI or absolute path as it is, a relative path under `root`, a bare id
    (no extension) as `root/ID.mp4`."""
    value = value.strip()
    if not value or "://" in value or value.startswith("/"):
        return value
    if not value.lower().endswith(VIDEO_EXTS):
        value = f"{value}.mp4"
    return storage.join(root, value)


def _missing(value) -> bool:
    """None, NaN or pandas' NA (what Ray's Arrow-backed batches hold for an empty cell)."""
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def clip_rows(frame: pd.DataFrame, fmt: TableFormat, root: str) -> pd.DataFrame:
    """An exploded frame -> the clip-row columns `CLIP_COLUMNS`."""
    def text(name) -> np.ndarray:
        if not name or name not in frame:
            return np.array([""] * len(frame), dtype=object)
        return np.array(["" if _missing(v) else str(v) for v in frame[name]], dtype=object)

    caption_col = "_caption" if "_caption" in frame else fmt.caption
    has_bytes = fmt.name == "webdataset"  # the video is the sample's bytes; its name is SHARD#KEY
    ids = text(fmt.id or fmt.video)
    names = [f"{u}#{k}" for u, k in zip(text("__url__"), ids)] if has_bytes else [video_uri(v, root) for v in text(fmt.video)]
    return pd.DataFrame({
        "videoid": ids,
        "video_uri": names,
        "video": frame["video"].to_numpy() if has_bytes else np.array([b""] * len(frame), dtype=object),
        "caption": np.array([c.strip() for c in text(caption_col)], dtype=object),
        "start": frame["_start"].astype(float).to_numpy(),
        "end": frame["_end"].astype(float).to_numpy(),
        "problem": frame["_problem"].astype(str).to_numpy(),
    })
