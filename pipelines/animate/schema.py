"""The batch-animation row: every column, its type and its role, declared once.

Roles: `input` columns are read from prompt tables (as text, parsed by `plan.py`); `setting` columns
are per-row overrides of the job's generation defaults (also read from prompt tables); `result`
columns are filled by planning, the resume check or the actor. Reading, expansion, the actor, the
metadata shards and the index all take their column lists from here. The setting columns are not
written here: they are `GenerationSettings`' fields (animatediff_core/settings/generation.py), with their types,
help and card tags, so a new setting is one field there.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

from animatediff_core.configs import field_types, tag
from animatediff_core.settings.generation import FIELDS, GenerationSettings


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # "string" | "int64" | "uint64" (seeds) | "float64" | "bool"
    role: str  # "input" | "setting" | "result"
    card: bool = False  # shown on the index page's preview cards
    help: str = ""


TYPES = {str: "string", int: "int64", float: "float64", bool: "bool"}


def _setting_columns() -> tuple[Column, ...]:
    types_ = field_types(GenerationSettings)
    return tuple(Column(f.name, TYPES[types_[f.name][0]], "setting", card=bool(tag(f, "card")), help=tag(f, "help", ""))
                 for f in FIELDS.values())


COLUMNS = (
    Column("id", "string", "input", help="the table's id, else a uuid5 of the row content and checkpoint"),
    Column("prompt", "string", "input", card=True),
    Column("negative_prompt", "string", "input", card=True),
    Column("seed", "uint64", "input", card=True, help="the table's seed in [0, 2**64), else (empty or -1) one derived from the row content"),
    Column("checkpoint", "string", "input", card=True, help="a name from the checkpoint set; empty: every one"),
    Column("motion_module", "string", "input", card=True, help="a name from the motion-module set; empty: every one"),
    *_setting_columns(),
    Column("status", "string", "result", card=True, help="pending (planning only), ok or error"),
    Column("error", "string", "result", card=True, help="why the row failed, saying what to fix"),
    Column("skipped", "bool", "result", help="ok from an earlier run: found finished, not regenerated"),
    Column("windows", "int64", "result", help="context windows the motion modules ran in (1: all frames at once)"),
    Column("prompt_truncated", "bool", "result", help="the prompt is longer than the text encoder reads (77 tokens)"),
    Column("checkpoint_uri", "string", "result", help="the checkpoint's DreamBooth or LoRA file (empty: the base)"),
    Column("checkpoint_stack", "string", "result", help="the rest of the checkpoint's stack as JSON: loras, adapter, vae (empty: none)"),
    Column("vae", "string", "result", help="where the VAE that decoded the video came from: base, the DreamBooth file, or a VAE's URI"),
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

_PA = {"string": pa.string(), "int64": pa.int64(), "uint64": pa.uint64(), "float64": pa.float64(), "bool": pa.bool_()}
ARROW_SCHEMA = pa.schema([(c.name, _PA[c.type]) for c in COLUMNS])
_EMPTY = {"string": "", "int64": -1, "uint64": 0, "float64": float("nan"), "bool": False}


_CAST = {"int64": int, "uint64": int, "float64": float, "string": str, "bool": bool}
_TYPE_OF = {c.name: c.type for c in COLUMNS}


def settings_of(row, names=None) -> dict:
    """`{setting: value}` of a typed row (all settings, or `names`), as Python values for GenerationSettings."""
    return {k: _CAST[_TYPE_OF[k]](row[k]) for k in (SETTINGS if names is None else names)}


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
        elif c.type == "uint64":  # seeds: [0, 2**64), beyond what int64 or float64 hold exactly
            out[c.name] = pd.Series([_seed(v) for v in col], index=batch.index, dtype="uint64") \
                if col.dtype != "uint64" else col
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


def _seed(v) -> int:
    """A seed cell as a uint64 value (0 where it holds none: such a row is an error row already)."""
    try:
        v = int(v)
    except (TypeError, ValueError, OverflowError):
        return 0
    return v if 0 <= v < 2**64 else 0


def empty() -> pd.DataFrame:
    return typed(pd.DataFrame())


def settings_table() -> str:
    """The table of generation settings in docs/settings.md, from their declaration (a test holds the page
    to it; `python -m pipelines.animate.schema` prints it)."""
    lines = ["| column | flag | default | what |", "|---|---|---|---|"]
    for f in FIELDS.values():
        default = f.default if f.default != "" else "(empty)"
        choices = f" ({', '.join(tag(f, 'choices'))})" if tag(f, "choices") and f.name != "sampler" else ""
        what = tag(f, "help", "").replace("|", "\\|") + choices
        lines.append(f"| `{f.name}` | `--{f.name.replace('_', '-')}` | `{str(default).lower() if isinstance(default, bool) else default}` | {what} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(settings_table(), end="")
