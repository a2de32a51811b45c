"""Prompt rows for batch animation: checkpoint sets, the sweep, ids, seeds, per-row settings.

Pure pandas (no Ray), so the stages that call these stay thin and the logic is tested directly.
A row that cannot run becomes `status="error"` with a message saying what to fix; it never raises.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from pathlib import PurePosixPath

import pandas as pd

from animatediff_core import storage
from animatediff_core.errors import ConfigError
from animatediff_core.generate import GenerationSettings, validate_settings
from animatediff_core.personalize import KINDS, CheckpointSpec

SETTING_COLUMNS = ("num_frames", "height", "width", "steps", "guidance_scale")
ID_NAMESPACE = uuid.UUID("6b1d6a4e-3f0e-4d59-9c57-5a1d0e5f2a10")
BASE_NAME = "base"
# Columns every expanded row carries, in this order (metadata adds the output columns).
ROW_COLUMNS = ["id", "prompt", "negative_prompt", "seed", "checkpoint", *SETTING_COLUMNS, "fps", "status", "error"]


def read_checkpoint_set(uri: str | None) -> dict[str, CheckpointSpec]:
    """Checkpoints by name, from a folder of .safetensors files or a table (name, uri, [kind], [scale]).

    No set: the base model alone, under the name "base".
    """
    if not uri:
        return {BASE_NAME: CheckpointSpec(BASE_NAME)}
    if not storage.exists(uri):
        raise ConfigError(f"--checkpoints {uri}: not found (expected a folder of .safetensors files or a .parquet/.csv table)")
    if storage.isdir(uri):
        fs, path = storage.fs_and_path(uri)
        files = sorted(p for p in fs.ls(path, detail=False) if p.endswith(".safetensors"))
        if not files:
            raise ConfigError(f"--checkpoints {uri}: folder holds no .safetensors files")
        return {PurePosixPath(p).stem: CheckpointSpec(PurePosixPath(p).stem, storage.join(uri, PurePosixPath(p).name)) for p in files}
    table = read_table(uri)
    missing = {"name", "uri"} - set(table.columns)
    if missing:
        raise ConfigError(f"--checkpoints {uri}: table needs columns name, uri (optional kind, scale); missing {sorted(missing)}")
    specs = {}
    for r in table.to_dict("records"):
        kind = r.get("kind") if isinstance(r.get("kind"), str) and r.get("kind") else None
        if kind is not None and kind not in KINDS:
            raise ConfigError(f"--checkpoints {uri}: checkpoint {r['name']!r} has kind {kind!r}; expected one of {KINDS}")
        scale = r.get("scale")
        scale = 1.0 if scale is None or (isinstance(scale, float) and math.isnan(scale)) else float(scale)
        specs[str(r["name"])] = CheckpointSpec(str(r["name"]), r["uri"] or None, kind, scale)
    return specs


def read_table(uri: str) -> pd.DataFrame:
    """A small table (Parquet or CSV by extension) from any fsspec URI."""
    import io

    data = storage.read_bytes(uri)
    if uri.endswith(".csv"):
        return pd.read_csv(io.BytesIO(data), keep_default_na=False, na_values=[""])
    return pd.read_parquet(io.BytesIO(data))


def _row_key(row: dict) -> str:
    """Hash of what defines a row's video, checkpoint excluded (so a sweep shares seeds)."""
    content = {k: _plain(row.get(k)) for k in ("prompt", "negative_prompt", "seed", *SETTING_COLUMNS)}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def _plain(v):
    """Python scalar or None (None, NaN and pandas/Arrow NA all mean "not given")."""
    if v is None or (not isinstance(v, (str, bytes)) and pd.isna(v)):
        return None
    return v.item() if hasattr(v, "item") else v


def _as_int(name: str, v):
    v = _plain(v)
    if v is None:
        return None
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be an integer, got {v!r}") from None
    if not f.is_integer():
        raise ConfigError(f"{name} must be an integer, got {v!r}")
    return int(f)


def _settings(row: dict, defaults: GenerationSettings) -> GenerationSettings:
    over = {k: _as_int(k, row.get(k)) for k in ("num_frames", "height", "width", "steps")}
    g = _plain(row.get("guidance_scale"))
    if g is not None:
        try:
            g = float(g)
        except (TypeError, ValueError):
            raise ConfigError(f"guidance_scale must be a number, got {g!r}") from None
    return defaults.updated(**over, guidance_scale=g)


def expand_rows(batch: pd.DataFrame, checkpoints: list[str], defaults: GenerationSettings) -> pd.DataFrame:
    """The sweep: one output row per (prompt row, checkpoint), with ids, seeds and settings resolved.

    A row's `checkpoint` names one checkpoint of the set; empty means every checkpoint in the set.
    Ids: the table's `id`, else a uuid5 of the row content and checkpoint. Seeds: the table's `seed`,
    else derived from the row content, so every checkpoint of a sweep starts from the same noise.
    """
    out = []
    for row in batch.to_dict("records"):
        wanted = _plain(row.get("checkpoint"))
        names = checkpoints if wanted in (None, "") else [str(wanted)]
        for name in names:
            out.append(_resolve(row, name, checkpoints, defaults))
    return pd.DataFrame(out, columns=ROW_COLUMNS)


def _resolve(row: dict, checkpoint: str, known: list[str], defaults: GenerationSettings) -> dict:
    key = _row_key(row)
    given_id = _plain(row.get("id"))
    rid = str(given_id) if given_id not in (None, "") else str(uuid.uuid5(ID_NAMESPACE, f"{key}/{checkpoint}"))
    prompt = _plain(row.get("prompt"))
    out = {"id": rid, "prompt": "" if prompt is None else str(prompt),
           "negative_prompt": str(_plain(row.get("negative_prompt")) or ""), "checkpoint": checkpoint,
           "seed": int(key[:15], 16) % 2**31, "fps": defaults.fps, "status": "pending", "error": ""}
    out.update({k: getattr(defaults, k) for k in SETTING_COLUMNS})
    try:
        seed = _as_int("seed", row.get("seed"))
        if seed is not None:
            out["seed"] = seed
        s = _settings(row, defaults)
        out.update({k: getattr(s, k) for k in SETTING_COLUMNS})
        if not out["prompt"].strip():
            raise ConfigError("prompt is empty; give a text prompt")
        if not 0 <= out["seed"] < 2**63:
            raise ConfigError(f"seed must be an integer in [0, 2**63), got {out['seed']}")
        if checkpoint not in known:
            raise ConfigError(f"unknown checkpoint {checkpoint!r}; the set has {', '.join(known)}")
        validate_settings(s, max_frames=10**6, vae_scale=1)  # frame limit and multiples: checked by the actor
    except ConfigError as e:
        out.update(status="error", error=str(e))
    return out


def settings_of(row: dict) -> GenerationSettings:
    return GenerationSettings(**{k: row[k] for k in (*SETTING_COLUMNS, "fps")})


def video_uri(out: str, checkpoint: str, rid: str, ext: str = "mp4") -> str:
    return storage.join(out, "videos", checkpoint, f"{rid}.{ext}")


def fingerprint(row: dict, motion_module: str, spec: CheckpointSpec, motion_norm: str | None = None) -> dict:
    """What must match for an existing video to be reused on a rerun."""
    return {"prompt": row["prompt"], "negative_prompt": row["negative_prompt"], "seed": int(row["seed"]),
            "checkpoint": row["checkpoint"], "checkpoint_uri": spec.uri or "", "scale": spec.scale,
            "motion_module": motion_module, "motion_norm": motion_norm,
            **{k: _plain(row[k]) for k in (*SETTING_COLUMNS, "fps")}}


