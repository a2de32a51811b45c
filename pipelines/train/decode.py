"""Decode stage: clip rows -> training clips, as small as training needs them.

Each row's video is fetched once through fsspec (or taken from the row, for WebDataset samples) and
only the sampled frames are decoded, already resized by the decoder
(`animatediff_core.training.clips.sample_clip`), inside the row's span when it has one; decoded video
is ~2000x larger than H.264, so full-size frames never leave the decoding process. A clip travels as
raw `(f, size, size, 3) uint8` bytes in the `clip` column, with its provenance: `source` (the video),
`start`/`end` (its span in seconds; NaN end: the whole video) and `frame_indices` (the source frames).

A video that cannot be used is a result, not an exception: its row is dropped here, before the
rows are split between training workers (so every worker gets the same number of usable clips),
and named with its reason in a `SkipTally` actor (`skipped.parquet` of the run): a video (or a span)
found bad is not fetched again on a later pass, and counts are of distinct videos and spans.
Reasons:
  empty_caption  the caption is empty
  not_found      HTTP 404 or a missing file/object
  unreadable     any other failure to fetch (HTTP 403/5xx, permissions, network)
  empty          the file has zero bytes
  corrupt        container or decoder failure (truncated file, unreadable codec)
  too_short      fewer frames than num_frames, even at stride 1
  bad_span       the row's span cannot be read (not a timestamp, empty or reversed)
  span_past_end  the span starts after the video ends, or ends well after it
  span_too_short the span holds fewer frames than num_frames, even at stride 1
  internal_error a bug in this stage (logged with its traceback): never counted as bad data
"""

from __future__ import annotations

import io
import logging
from collections import Counter

import numpy as np
import pandas as pd
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from animatediff_core.errors import VideoError
from animatediff_core.io import storage
from animatediff_core.io.video_io import fetch
from animatediff_core.training.clips import Clip, ClipConfig, Span, sample_clip

SKIP_REASONS = ("empty_caption", "not_found", "unreadable", "empty", "corrupt", "too_short", "bad_span",
                "span_past_end", "span_too_short", "internal_error")
VIDEO_REASONS = ("not_found", "unreadable", "empty", "corrupt", "too_short")  # the whole video is bad, any span
SKIPPED_COLUMNS = ("source", "start", "end", "reason")  # skipped.parquet
# What decoders (PyAV, decord, PIL) raise on damaged or unsupported streams; anything else is a bug.
DECODER_ERRORS = (RuntimeError, OSError, ValueError, EOFError, MemoryError)
log = logging.getLogger(__name__)


def _reason(err: VideoError) -> str:
    if isinstance(err.__cause__, FileNotFoundError):
        return "not_found"
    reason = getattr(err, "reason", "corrupt")
    return reason if reason in SKIP_REASONS else "corrupt"


def decode_row(uri, caption: str, cfg: ClipConfig, rng: np.random.Generator, span: Span | None = None
               ) -> tuple[Clip | None, str]:
    """(clip, "") for a usable video (a URI or its bytes), else (None, skip reason). Never raises for a bad video."""
    if not caption.strip():
        return None, "empty_caption"
    try:
        data = fetch(uri)
    except VideoError as e:
        return None, _reason(e)
    except Exception as e:  # aiohttp's ClientResponseError for HTTP 403/500, timeouts: any failure to fetch
        log.info("unreadable %s: %s: %s", uri, type(e).__name__, str(e)[:200])
        return None, "unreadable"
    try:
        return sample_clip(data, cfg, rng, span), ""
    except VideoError as e:
        return None, _reason(e)
    except DECODER_ERRORS as e:
        log.info("corrupt %s: %s: %s", uri if isinstance(uri, str) else "<bytes>", type(e).__name__, str(e)[:200])
        return None, "corrupt"
    except Exception:
        log.exception("internal error decoding %s (a bug, not a bad video)", uri if isinstance(uri, str) else "<bytes>")
        return None, "internal_error"


@ray.remote(num_cpus=0)
class SkipTally:
    """The run's skipped videos and spans by name and reason (each once, however often it is read), and the
    rows `--where` kept and dropped (by block: a block read again on the next pass replaces its counts)."""

    def __init__(self, initial: dict | None = None, skipped: list[dict] | None = None):
        self.base = Counter(initial or {})  # counts carried over from a resumed run that named no videos
        self.bad: dict[str, dict] = {}
        self.order: list[str] = []
        self.blocks: dict[str, tuple[int, int]] = {}
        for item in skipped or ():
            self.mark([item])

    def mark(self, items: list[dict]) -> None:
        for item in items:
            if item["key"] not in self.bad:
                self.bad[item["key"]] = item
                self.order.append(item["key"])

    def known_bad(self, since: int) -> tuple[list[str], int]:
        """The keys found bad after the first `since`, and how many there are now."""
        return self.order[since:], len(self.order)

    def filtered(self, block: str, kept: int, dropped: int) -> None:
        self.blocks[block] = (kept, dropped)

    def where_counts(self) -> dict:
        return {"kept": sum(k for k, _ in self.blocks.values()), "dropped": sum(d for _, d in self.blocks.values())}

    def totals(self) -> dict:
        counts = Counter(self.base)
        counts.update(item["reason"] for item in self.bad.values())
        return dict(counts)

    def summary(self) -> dict:
        """What a metrics line records: skip counts by reason and, under --where, rows kept and dropped."""
        return {"skipped_videos": dict(sorted(self.totals().items())),
                **({"where": self.where_counts()} if self.blocks else {})}

    def skipped(self) -> list[dict]:
        return [self.bad[k] for k in self.order]


def start_tally(initial: dict | None = None, skipped: list[dict] | None = None):
    """The run's SkipTally, pinned to the driver's node: losing a worker node mid-run must not take the
    counts, and the training loop's reads of them, down with it."""
    here = ray.get_runtime_context().get_node_id()
    return SkipTally.options(scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote(initial, skipped)


def write_skipped(tally, uri: str) -> int:
    """Write the tally's skipped videos and spans to `uri` (Parquet, replaced whole); returns how many."""
    items = ray.get(tally.skipped.remote())
    buf = io.BytesIO()
    skipped_frame(items).to_parquet(buf, index=False)
    storage.write_bytes_atomic(uri, buf.getvalue())
    return len(items)


def read_skipped(uri: str) -> list[dict]:
    """A run's skipped.parquet as tally items; empty when there is none."""
    if not storage.exists(uri):
        return []
    return skipped_items(pd.read_parquet(io.BytesIO(storage.read_bytes(uri))))


def skipped_frame(items: list[dict]) -> pd.DataFrame:
    """skipped.parquet's rows: each skipped video (or span) and why."""
    return pd.DataFrame(items, columns=list(SKIPPED_COLUMNS))


class ClipDecoder:
    """Ray Data stage (one per actor): clip rows (`formats.CLIP_COLUMNS`) -> `videoid, caption, clip, source,
    start, end, frame_indices` rows of usable clips only; skips are counted in `self.skipped` and, when given,
    named in the `tally` actor, which also tells every decoder which videos not to fetch again.

    Clip starts are random (a new draw each epoch), and so is the flip. Decoders run single-threaded: many
    share a node.
    """

    def __init__(self, cfg: ClipConfig, tally=None, seed: int | None = None):
        self.cfg, self.tally = cfg, tally
        self.rng = np.random.default_rng(seed)
        self.skipped: Counter = Counter()
        self.bad: set[str] = set()
        self.seen_bad = 0

    def _refresh_bad(self) -> None:
        if self.tally is not None:
            keys, self.seen_bad = ray.get(self.tally.known_bad.remote(self.seen_bad))
            self.bad.update(keys)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        self._refresh_bad()
        out, found = [], []
        for row in batch.to_dict("records"):
            clip, reason, item = self._one(row)
            out.append((row, clip))
            if reason:
                self.skipped[reason] += 1
            if item is not None:  # an internal error is counted here but never named as a bad video
                found.append(item)
        if found and self.tally is not None:
            self.tally.mark.remote(found)
        keep = [(row, clip) for row, clip in out if clip is not None]
        return pd.DataFrame({
            "videoid": pd.Series([str(r.get("videoid", "")) for r, _ in keep], dtype=object),
            "caption": pd.Series([str(r["caption"]) for r, _ in keep], dtype=object),
            "clip": pd.Series([c.frames.tobytes() for _, c in keep], dtype=object),
            "source": pd.Series([_source(r) for r, _ in keep], dtype=object),
            "start": pd.Series([_seconds(r.get("start"), 0.0) for r, _ in keep], dtype=float),
            "end": pd.Series([_seconds(r.get("end"), np.nan) for r, _ in keep], dtype=float),
            "frame_indices": pd.Series([list(c.indices) for _, c in keep], dtype=object),
        })

    def _one(self, row: dict) -> tuple[Clip | None, str, dict | None]:
        """(clip, "", None) or (None, reason, the skipped item); a key known bad is neither fetched nor counted."""
        source, span = _source(row), _span(row)
        video_key, span_key = source, clip_key(source, span.start if span else 0.0, span.end if span else None)
        if video_key in self.bad or span_key in self.bad:
            return None, "", None
        problem = str(row.get("problem") or "")
        if problem:
            clip, reason = None, problem.split(":", 1)[0]
        else:
            video = row.get("video")
            clip, reason = decode_row(video if isinstance(video, (bytes, bytearray)) and video else _source(row),
                                      str(row.get("caption") or ""), self.cfg, self.rng, span)
        if not reason:
            return clip, "", None
        if reason == "internal_error":  # a bug, not bad data: never remembered as a bad video
            return None, reason, None
        key = video_key if reason in VIDEO_REASONS else span_key
        self.bad.add(key)
        return None, reason, {"key": key, "source": source, "start": float(span.start) if span else 0.0,
                              "end": float(span.end) if span and span.end is not None else float("nan"), "reason": reason}


def clip_key(source: str, start: float, end: float | None) -> str:
    """The name a skipped span is remembered by (a skipped video is remembered by `source` alone)."""
    has_end = end is not None and not np.isnan(end)
    return f"{source}@{float(start or 0):g}-{f'{float(end):g}' if has_end else ''}"


def skipped_items(frame: pd.DataFrame) -> list[dict]:
    """skipped.parquet's rows back as the tally's items (a resumed run neither fetches nor counts them again)."""
    return [{"key": r["source"] if r["reason"] in VIDEO_REASONS else clip_key(r["source"], r["start"], r["end"]),
             **{k: r[k] for k in SKIPPED_COLUMNS}} for r in frame.to_dict("records")]


def _source(row: dict) -> str:
    """The row's video by name: its URI, or `SHARD#KEY` of a WebDataset sample."""
    return str(row.get("video_uri") or row.get("videoid") or "")


def _seconds(value, default: float) -> float:
    """A span bound as Ray hands it back: a float, NaN or None (Arrow's null)."""
    return default if value is None or (isinstance(value, float) and np.isnan(value)) else float(value)


def _span(row: dict) -> Span | None:
    start, end = _seconds(row.get("start"), 0.0), _seconds(row.get("end"), np.nan)
    if np.isnan(end) and not start:
        return None
    return Span(start, None if np.isnan(end) else end)


def clip_array(data: bytes, cfg: ClipConfig) -> np.ndarray:
    """Raw clip bytes back to `(f, size, size, 3) uint8`."""
    return np.frombuffer(data, dtype=np.uint8).reshape(cfg.num_frames, cfg.size, cfg.size, 3)
