"""Decode stage: video rows -> training clips, as small as training needs them.

Each row's video is fetched once through fsspec and only the sampled frames are decoded, already
resized by the decoder (`animatediff_core.training.clips.load_clip`); decoded video is ~2000x larger than
H.264, so full-size frames never leave the decoding process. A clip travels as raw
`(f, size, size, 3) uint8` bytes in the `clip` column.

A video that cannot be used is a result, not an exception: its row is dropped here, before the
rows are split between training workers (so every worker gets the same number of usable clips),
and its reason is counted in a `SkipTally` actor that the training loop reads into the metrics.
Reasons:
  empty_caption  the caption is empty
  not_found      HTTP 404 or a missing file/object
  unreadable     any other failure to fetch (HTTP 403/5xx, permissions, network)
  empty          the file has zero bytes
  corrupt        container or decoder failure (truncated file, unreadable codec)
  too_short      fewer frames than num_frames, even at stride 1
  internal_error a bug in this stage (logged with its traceback): never counted as bad data
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pandas as pd
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from animatediff_core.errors import VideoError
from animatediff_core.io.video_io import fetch
from animatediff_core.training.clips import ClipConfig, load_clip

SKIP_REASONS = ("empty_caption", "not_found", "unreadable", "empty", "corrupt", "too_short", "internal_error")
# What decoders (PyAV, decord, PIL) raise on damaged or unsupported streams; anything else is a bug.
DECODER_ERRORS = (RuntimeError, OSError, ValueError, EOFError, MemoryError)
log = logging.getLogger(__name__)


def _reason(err: VideoError) -> str:
    if isinstance(err.__cause__, FileNotFoundError):
        return "not_found"
    reason = getattr(err, "reason", "corrupt")
    return reason if reason in SKIP_REASONS else "corrupt"


def decode_row(uri: str, caption: str, cfg: ClipConfig, rng: np.random.Generator) -> tuple[bytes, str]:
    """(clip bytes, "") for a usable video, else (b"", skip reason). Never raises for a bad video."""
    if not caption.strip():
        return b"", "empty_caption"
    try:
        data = fetch(uri)
    except VideoError as e:
        return b"", _reason(e)
    except Exception as e:  # aiohttp's ClientResponseError for HTTP 403/500, timeouts: any failure to fetch
        log.info("unreadable %s: %s: %s", uri, type(e).__name__, str(e)[:200])
        return b"", "unreadable"
    try:
        clip = load_clip(data, cfg, rng)
    except VideoError as e:
        return b"", _reason(e)
    except DECODER_ERRORS as e:
        log.info("corrupt %s: %s: %s", uri, type(e).__name__, str(e)[:200])
        return b"", "corrupt"
    except Exception:
        log.exception("internal error decoding %s (a bug, not a bad video)", uri)
        return b"", "internal_error"
    return clip.tobytes(), ""


@ray.remote(num_cpus=0)
class SkipTally:
    """Skipped videos by reason, summed over all decoders of a run (each read of a bad row counts once)."""

    def __init__(self, initial: dict | None = None):
        self.counts = Counter(initial or {})

    def add(self, counts: dict) -> None:
        self.counts.update(counts)

    def totals(self) -> dict:
        return dict(self.counts)


def start_tally(initial: dict | None = None):
    """The run's SkipTally, pinned to the driver's node: losing a worker node mid-run must not take the
    counts, and the training loop's reads of them, down with it."""
    here = ray.get_runtime_context().get_node_id()
    return SkipTally.options(scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False)).remote(initial)


class ClipDecoder:
    """Ray Data stage (one per actor): `videoid, video_uri, caption` rows -> `videoid, caption, clip` rows
    of usable videos only; skips are counted in `self.skipped` and, when given, the `tally` actor.

    Clip starts are random (a new draw each epoch). Decoders run single-threaded: many share a node.
    """

    def __init__(self, cfg: ClipConfig, tally=None, seed: int | None = None):
        self.cfg, self.tally = cfg, tally
        self.rng = np.random.default_rng(seed)
        self.skipped: Counter = Counter()

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        out = [decode_row(u, c, self.cfg, self.rng) for u, c in zip(batch["video_uri"], batch["caption"])]
        skipped = Counter(reason for _, reason in out if reason)
        if skipped:
            self.skipped.update(skipped)
            if self.tally is not None:
                self.tally.add.remote(dict(skipped))
        keep = [i for i, (_, reason) in enumerate(out) if not reason]
        return pd.DataFrame({
            "videoid": batch["videoid"].astype(str).to_numpy()[keep],
            "caption": batch["caption"].astype(str).to_numpy()[keep],
            "clip": pd.Series([out[i][0] for i in keep], dtype=object),
        })


def clip_array(data: bytes, cfg: ClipConfig) -> np.ndarray:
    """Raw clip bytes back to `(f, size, size, 3) uint8`."""
    return np.frombuffer(data, dtype=np.uint8).reshape(cfg.num_frames, cfg.size, cfg.size, 3)
