"""The batch-animation row: every column, its type and its role, declared once.

Roles: `input` columns are read from prompt tables (as text, parsed by `plan.py`); `setting` columns
are per-row overrides of the job's generation defaults (also read from prompt tables); `result`
columns are filled by planning, the resume check or the actor. Reading, expansion, the actor, the
metadata shards and the index all take their column lists from here: a new column is one line.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pyarrow as pa


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # "string" | "int64" | "float64" | "bool"
    role: str  # "input" | "setting" | "result"
    card: bool = False  # shown on the index page's preview cards
    help: str = ""


COLUMNS = (
    Column("id", "string", "input", help="the table's id, else a uuid5 of the row content and checkpoint"),
    Column("prompt", "string", "input", card=True),
    Column("negative_prompt", "string", "input", card=True),
    Column("seed", "int64", "input", card=True, help="the table's seed, else a hash of the row content"),
    Column("checkpoint", "string", "input", card=True, help="a name from the checkpoint set; empty: every one"),
    Column("motion_module", "string", "input", card=True, help="a name from the motion-module set; empty: every one"),
    Column("num_frames", "int64", "setting", card=True),
    Column("height", "int64", "setting", card=True),
    Column("width", "int64", "setting", card=True),
    Column("steps", "int64", "setting", card=True),
    Column("guidance_scale", "float64", "setting", card=True),
    Column("fps", "int64", "setting"),
    Column("sampler", "string", "setting", card=True, help="ddim (default), euler_trailing (Lightning) or lcm (AnimateLCM)"),
    Column("context_length", "int64", "setting", help="frames per context window for long clips; 0: the motion module's length"),
    Column("context_stride", "int64", "setting", help="frames between context-window starts"),
    Column("context_weighting", "string", "setting", help="pyramid (default), flat or delayed_reverse_sawtooth"),
    Column("prompt_schedule", "string", "setting", help='prompt travel: JSON {"frame": "prompt", ...}'),
    Column("free_init_iterations", "int64", "setting", help="FreeInit sampling passes (0: off); each costs a full sampling"),
    Column("motion_lora", "string", "setting", card=True, help="a motion LoRA file stacked on the checkpoint (camera motion, jobs.train --motion-lora)"),
    Column("motion_lora_scale", "float64", "setting", help="the motion LoRA's weight (default 1.0)"),
    Column("context_loop", "bool", "setting", help="a looping clip: context windows wrap from the last frame to the first"),
    Column("control_video", "string", "setting", card=True, help="ControlNet reference: a video or a folder of images (any fsspec URI)"),
    Column("control_model", "string", "setting", help="the SD-1.x ControlNet: diffusers folder, single file or Hub id"),
    Column("control_scale", "float64", "setting", help="ControlNet / SparseCtrl conditioning scale (default 1.0)"),
    Column("control_preprocess", "string", "setting", help="canny (default: edges of the reference) or none (already control images)"),
    Column("keyframes", "string", "setting", card=True, help='SparseCtrl: one image URI (image-to-video) or JSON {"frame": "image URI"}'),
    Column("keyframe_model", "string", "setting", help="the SparseCtrl model (RGB or scribble): diffusers folder or Hub id"),
    Column("init_video", "string", "setting", card=True, help="video-to-video: the input video (any fsspec URI)"),
    Column("strength", "float64", "setting", help="video-to-video: 0 keeps the input, 1 ignores it (default 0.8)"),
    Column("status", "string", "result", card=True, help="pending (planning only), ok or error"),
    Column("error", "string", "result", card=True, help="why the row failed, saying what to fix"),
    Column("skipped", "bool", "result", help="ok from an earlier run: found finished, not regenerated"),
    Column("windows", "int64", "result", help="context windows the motion modules ran in (1: all frames at once)"),
    Column("prompt_truncated", "bool", "result", help="the prompt is longer than the text encoder reads (77 tokens)"),
    Column("checkpoint_uri", "string", "result"),
    Column("motion_module_uri", "string", "result"),
    Column("video_uri", "string", "result"),
    Column("gif_uri", "string", "result"),
    Column("seconds", "float64", "result", card=True, help="generation and writing time of this video"),
    Column("bytes", "int64", "result"),
    Column("sha256", "string", "result"),
)

NAMES = [c.name for c in COLUMNS]
INPUTS = [c.name for c in COLUMNS if c.role == "input"]
SETTINGS = [c.name for c in COLUMNS if c.role == "setting"]
READ = INPUTS + SETTINGS  # what a prompt table may hold
CARD = [c.name for c in COLUMNS if c.card]
# Rows that share these run as one batched pipeline call on one loaded checkpoint and motion module.
GROUP = ["motion_module", "checkpoint", *SETTINGS]

_PA = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}
ARROW_SCHEMA = pa.schema([(c.name, _PA[c.type]) for c in COLUMNS])
_EMPTY = {"string": "", "int64": -1, "float64": float("nan"), "bool": False}


def typed(batch: pd.DataFrame) -> pd.DataFrame:
    """Every column of the schema, in order, with its declared type (missing values: "", -1, NaN, False).

    Blocks from different tasks and actors then concatenate into one metadata table, whatever a
    hostile cell held: a value that does not convert becomes the column's empty value, never an error.
    """
    n = len(batch)
    out = {}
    for c in COLUMNS:
        col = batch[c.name] if c.name in batch.columns else pd.Series([None] * n, index=batch.index, dtype=object)
        if c.type == "string":
            if col.dtype != object or not col.map(type).eq(str).all():
                col = col.map(lambda v: "" if v is None or (isinstance(v, float) and v != v) else str(v))
            out[c.name] = col.astype(object)
        elif c.type == "bool":
            out[c.name] = col.map(lambda v: v is True or (hasattr(v, "item") and bool(v.item()) is True)).astype(bool) \
                if col.dtype != bool else col
        else:
            num = pd.to_numeric(col.map(_small_number) if col.dtype == object else col, errors="coerce")
            out[c.name] = num.fillna(_EMPTY[c.type]).astype(c.type) if c.type == "int64" else num.astype("float64")
    return pd.DataFrame(out, index=batch.index)


def _small_number(v):
    """A number that fits int64/float64 columns, else None (an overflowing seed must not fail the block)."""
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        return None
    return v if abs(f) < 2**63 else None


def empty() -> pd.DataFrame:
    return typed(pd.DataFrame())
