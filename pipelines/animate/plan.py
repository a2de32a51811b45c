"""Planning the batch job: checkpoint and motion-module sets, the sweep, ids, seeds, per-row settings.

Pure pandas (no Ray), so the stages that call these stay thin and the logic is tested directly.
A row that cannot run becomes `status="error"` with a message saying what to fix; planning never
raises on a cell, whatever it holds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import uuid
from dataclasses import dataclass
from pathlib import PurePosixPath

import pandas as pd

from animatediff_core import hub, storage
from animatediff_core.errors import ConfigError
from animatediff_core.settings import KINDS, CheckpointSpec, GenerationSettings, validate_settings
from pipelines import tables
from pipelines.animate import schema
from pipelines.animate.layout import NAME_RULE, check_name, is_safe_name

log = logging.getLogger(__name__)
ID_NAMESPACE = uuid.UUID("6b1d6a4e-3f0e-4d59-9c57-5a1d0e5f2a10")
BASE_NAME = "base"
MOTION_EXTS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


@dataclass(frozen=True)
class MotionSpec:
    """One motion module of the sweep: a MotionAdapter folder or an original-format file."""

    name: str
    uri: str
    max_frames: int = 32  # its position-encoding length, read at preflight
    norm: str | None = None  # --motion-norm (animatediff_core/numerics.py); None: what the module records, else official


def read_checkpoint_set(uri: str | None) -> dict[str, CheckpointSpec]:
    """Checkpoints by name, from a folder of .safetensors files or a table (name, uri, [kind], [scale]).

    No set: the base model alone, under the name "base". Names become folder names, so a name that
    breaks the file-name rule fails the job here, with one line.
    """
    if not uri:
        return {BASE_NAME: CheckpointSpec(BASE_NAME)}
    uri = hub.resolve(uri)
    if not storage.exists(uri):
        raise ConfigError(f"--checkpoints {uri}: not found (expected a folder of .safetensors files or a {tables.KINDS_TEXT} table)")
    if storage.isdir(uri) and not [f for f in tables.list_files(uri) if tables.is_table(f)]:
        fs, path = storage.fs_and_path(uri)
        files = sorted(p for p in fs.ls(path, detail=False) if p.endswith(".safetensors"))
        if not files:
            raise ConfigError(f"--checkpoints {uri}: folder holds no .safetensors files")
        names = [PurePosixPath(p).stem for p in files]
        for n in names:
            check_name(n, f"--checkpoints {uri}: checkpoint")
        return {n: CheckpointSpec(n, storage.join(uri, PurePosixPath(p).name)) for n, p in zip(names, files)}
    table = tables.read_pandas(uri, strings=("name", "uri", "kind"), flag="--checkpoints")
    missing = {"name", "uri"} - set(table.columns)
    if missing:
        raise ConfigError(f"--checkpoints {uri}: table needs columns name, uri (optional kind, scale); missing {sorted(missing)}")
    specs = {}
    for r in table.to_dict("records"):
        name = check_name(str(_plain(r["name"]) or ""), f"--checkpoints {uri}: checkpoint")
        if name in specs:
            raise ConfigError(f"--checkpoints {uri}: checkpoint name {name!r} appears twice; names must be unique")
        kind = r.get("kind") if isinstance(r.get("kind"), str) and r.get("kind") else None
        if kind is not None and kind not in KINDS:
            raise ConfigError(f"--checkpoints {uri}: checkpoint {name!r} has kind {kind!r}; expected one of {KINDS}")
        scale = _plain(r.get("scale"))
        try:
            scale = 1.0 if scale is None else float(scale)
        except (TypeError, ValueError):
            scale = float("nan")
        if not math.isfinite(scale):
            raise ConfigError(f"--checkpoints {uri}: checkpoint {name!r} has scale {r.get('scale')!r}; expected a finite number")
        specs[name] = CheckpointSpec(name, _plain(r["uri"]) or None, kind, scale)
    return specs


def read_motion_set(uris: list[str]) -> dict[str, MotionSpec]:
    """Motion modules by name, from files, MotionAdapter folders, folders of them, or `jobs.train` run
    folders (each `checkpoint-NNNNNN/` becomes `RUN-NNNNNN`, in step order: a learning curve)."""
    specs: dict[str, MotionSpec] = {}

    def add(name: str, uri: str) -> None:
        name = check_name(name, "--motion-module: motion module name")
        if name in specs:
            raise ConfigError(f"--motion-module: two modules are named {name!r} ({specs[name].uri}, {uri}); rename one")
        specs[name] = MotionSpec(name, uri)

    for ref in uris:
        uri = hub.resolve(ref)  # a Hub id is kept as the module's uri: every node resolves it into its own cache
        if not storage.exists(uri):
            raise ConfigError(f"--motion-module {ref}: not found (expected a MotionAdapter folder or a .safetensors/.ckpt file)")
        label = PurePosixPath(str(ref).rstrip("/")).name
        if not storage.isdir(uri):
            add(PurePosixPath(label).stem, ref)
        elif storage.exists(storage.join(uri, "config.json")):
            add(label, ref)
        else:
            found = _modules_in_folder(uri, label)
            if not found:
                raise ConfigError(f"--motion-module {uri}: the folder holds no motion module (MotionAdapter folders, "
                                  f"{', '.join(MOTION_EXTS)} files, or jobs.train checkpoint-NNNNNN/ folders)")
            for name, u in found:
                add(name, u)
    return specs


def _modules_in_folder(uri: str, label: str) -> list[tuple[str, str]]:
    """(name, uri) of the motion modules in a folder: a jobs.train run's complete checkpoints in step
    order (`RUN-stepNNNNNN`; motion-LoRA checkpoints hold none), else its module files and folders."""
    from pipelines import run_folder

    steps = run_folder.list_checkpoints(uri)
    if steps:
        found = [(f"{label}-step{step:06d}", run_folder.motion_module_in(ckpt)) for step, ckpt in sorted(steps.items())]
        return [(name, m) for name, m in found if m is not None]
    fs, path = storage.fs_and_path(uri)
    found = []
    for entry in sorted(fs.ls(path, detail=False)):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        child = storage.join(uri, name)
        if name.endswith(MOTION_EXTS):
            found.append((PurePosixPath(name).stem, child))
        elif storage.isdir(child) and storage.exists(storage.join(child, "config.json")):
            found.append((name, child))
    return found


def _plain(v):
    """Python scalar or None (None, NaN and pandas/Arrow NA all mean "not given")."""
    if v is None or (not isinstance(v, (str, bytes)) and pd.isna(v)):
        return None
    return v.item() if hasattr(v, "item") else v


# Settings of the first release: always part of a row's key. Settings added later join the key only
# when a row gives a value other than their default, so the ids of rows that do not use them stay.
KEYED = ("num_frames", "height", "width", "steps", "guidance_scale")
_DEFAULTS = GenerationSettings()


def _added(k: str, v) -> bool:
    """Whether the later-added setting `k` holds a value that changes the video (not empty, not its default)."""
    return k not in KEYED and k != "fps" and v not in (None, "") and v != getattr(_DEFAULTS, k)


def row_key(row: dict) -> str:
    """Hash of what defines a row's video, checkpoint and motion module excluded (so a sweep shares seeds)."""
    content = {k: _plain(row.get(k)) for k in ("prompt", "negative_prompt", "seed", *KEYED)}
    content.update({k: v for k in schema.SETTINGS if _added(k, v := _plain(row.get(k)))})
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def _as_int(name: str, v) -> int | None:
    v = _plain(v)
    if v is None:
        return None
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v.strip())
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name} must be an integer, got {_short(v)}") from None
    if not math.isfinite(f) or not f.is_integer():
        raise ConfigError(f"{name} must be an integer, got {_short(v)}")
    return int(f)


def _as_float(name: str, v) -> float | None:
    v = _plain(v)
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name} must be a number, got {_short(v)}") from None
    if not math.isfinite(f):
        raise ConfigError(f"{name} must be a finite number, got {_short(v)}")
    return f


TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _as_bool(name: str, v) -> bool | None:
    v = _plain(v)
    if v is None or isinstance(v, bool):
        return v
    text = str(v).strip().lower()
    if text == "":
        return None
    if text in TRUE or text in FALSE:
        return text in TRUE
    raise ConfigError(f"{name} must be true or false, got {_short(v)}")


def _short(v) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def _settings(row: dict, defaults: GenerationSettings) -> GenerationSettings:
    """The row's settings over the job defaults, each cell parsed by its schema type (empty: the default)."""
    over = {}
    for k in schema.SETTINGS:
        kind = _TYPES[k]
        if kind == "int64":
            over[k] = _as_int(k, row.get(k))
        elif kind == "float64":
            over[k] = _as_float(k, row.get(k))
        elif kind == "bool":
            over[k] = _as_bool(k, row.get(k))
        else:
            v = _plain(row.get(k))
            over[k] = str(v).strip() or None if v is not None else None
    return defaults.updated(**over).effective()


_TYPES = {c.name: c.type for c in schema.COLUMNS}


@dataclass(frozen=True)
class Plan:
    """What every planning task needs: the sets and the job defaults (small; shipped to each task)."""

    checkpoints: tuple[str, ...]
    motions: dict[str, int]  # name -> most frames it supports
    defaults: GenerationSettings


class _Checked:
    """Per-task memo of parsed and validated settings: rows of a table mostly share them, so each
    distinct combination of setting cells is parsed and checked once, not once per row."""

    def __init__(self, plan: Plan):
        self.plan, self.parsed, self.valid = plan, {}, {}

    def settings(self, row: dict) -> GenerationSettings | ConfigError:
        cells = tuple(_plain(row.get(k)) for k in schema.SETTINGS)
        if cells not in self.parsed:
            try:
                self.parsed[cells] = _settings(row, self.plan.defaults)
            except ConfigError as e:
                self.parsed[cells] = e
        return self.parsed[cells]

    def error(self, s: GenerationSettings, motion: str) -> str:
        key = (s, motion)
        if key not in self.valid:
            try:
                validate_settings(s, max_frames=self.plan.motions[motion], vae_scale=8)
                self.valid[key] = ""
            except ConfigError as e:
                self.valid[key] = str(e)
        return self.valid[key]


def expand_rows(batch: pd.DataFrame, plan: Plan) -> pd.DataFrame:
    """The sweep: one row per (prompt row, motion module, checkpoint), ids, seeds and settings resolved.

    A row's `checkpoint` (`motion_module`) names one of the set; empty means every one. Ids: the
    table's `id`, else a uuid5 of the row content and checkpoint. Seeds: the table's `seed`, else
    derived from the row content, so every checkpoint of a sweep starts from the same noise. Rows come
    out ordered by checkpoint and shape, so actors see long runs of one checkpoint without a global sort.
    """
    out, checked = [], _Checked(plan)
    columns = [c for c in schema.READ if c in batch.columns]
    for values in zip(*(batch[c].tolist() for c in columns)):
        row = dict(zip(columns, values))
        key = row_key(row)
        ckpt, motion = _plain(row.get("checkpoint")), _plain(row.get("motion_module"))
        for m in (list(plan.motions) if motion in (None, "") else [str(motion)]):
            for c in (list(plan.checkpoints) if ckpt in (None, "") else [str(ckpt)]):
                out.append(_resolve(row, key, c, m, plan, checked))
    frame = schema.typed(pd.DataFrame(out)) if out else schema.empty()
    return frame.sort_values(schema.GROUP, kind="stable", ignore_index=True)


def _resolve(row: dict, key: str, checkpoint: str, motion: str, plan: Plan, checked: _Checked) -> dict:
    d = plan.defaults
    given_id = _plain(row.get("id"))
    prompt = _plain(row.get("prompt"))
    out = {"id": str(given_id) if given_id not in (None, "") else str(uuid.uuid5(ID_NAMESPACE, f"{key}/{checkpoint}")),
           "prompt": "" if prompt is None else str(prompt),
           "negative_prompt": str(_plain(row.get("negative_prompt")) or ""), "checkpoint": checkpoint,
           "motion_module": motion, "seed": int(key[:15], 16) % 2**31, "status": "pending", "error": "",
           **{k: getattr(d, k) for k in schema.SETTINGS}}
    try:
        if not is_safe_name(out["id"]):
            raise ConfigError(f"id {_short(out['id'])} is not a safe file name: use {NAME_RULE}")
        seed = _as_int("seed", row.get("seed"))
        if seed is not None:
            if not 0 <= seed < 2**63:
                raise ConfigError(f"seed must be an integer in [0, 2**63), got {_short(seed)}")
            out["seed"] = seed
        s = checked.settings(row)
        if isinstance(s, ConfigError):
            raise s
        out.update({k: getattr(s, k) for k in schema.SETTINGS})
        if not out["prompt"].strip():
            raise ConfigError("prompt is empty; give a text prompt")
        if checkpoint not in plan.checkpoints:
            raise ConfigError(f"unknown checkpoint {_short(checkpoint)}; the set has {', '.join(plan.checkpoints)}")
        if motion not in plan.motions:
            raise ConfigError(f"unknown motion module {_short(motion)}; the set has {', '.join(plan.motions)}")
        problem = checked.error(s, motion)
        if problem:
            raise ConfigError(problem)
    except ConfigError as e:
        out.update(status="error", error=str(e))
    return out


def settings_of(row: dict) -> GenerationSettings:
    kinds = {c.name: c.type for c in schema.COLUMNS}
    cast = {"int64": int, "float64": float, "string": str, "bool": bool}
    return GenerationSettings(**{k: cast[kinds[k]](row[k]) for k in schema.SETTINGS})


def fingerprint(row: dict, motion: MotionSpec, spec: CheckpointSpec) -> dict:
    """What must match for an existing video to be reused on a rerun."""
    return {"prompt": row["prompt"], "negative_prompt": row["negative_prompt"], "seed": int(row["seed"]),
            "checkpoint": row["checkpoint"], "checkpoint_uri": spec.uri or "", "scale": spec.scale,
            "motion_module": motion.uri, "motion_norm": motion.norm,
            **{k: _plain(row[k]) for k in schema.SETTINGS if k in KEYED or k == "fps" or _added(k, _plain(row[k]))}}


def content_hash(batch: pd.DataFrame) -> pd.Series:
    """Per row, a 63-bit hash of everything that defines its video: equal rows, equal hashes."""
    cols = ["prompt", "negative_prompt", "seed", *schema.SETTINGS]
    return pd.util.hash_pandas_object(batch[cols], index=False).astype("int64")


def slot_hash(batch: pd.DataFrame) -> pd.Series:
    """Per row, a hash of where its video goes (motion module, checkpoint, id)."""
    return pd.util.hash_pandas_object(batch[["motion_module", "checkpoint", "id"]], index=False).astype("int64")


def plan_block(batch: pd.DataFrame, plan: Plan, finished, layout, motions, specs) -> pd.DataFrame:
    """One planning task: expand the sweep, mark finished rows, add the slot and content hashes."""
    from pipelines.animate.resume import mark_finished

    rows = mark_finished(expand_rows(batch, plan), finished, layout, motions, specs)
    errors = rows.loc[rows["status"] == "error", "error"]
    if len(errors):  # per block, not per row: a million error rows must not be a million log lines
        top = "; ".join(f"{n} x {msg[:120]}" for msg, n in errors.value_counts().head(3).items())
        log.info("planned %d rows: %d error rows (%s)", len(rows), len(errors), top)
    for rid, msg in zip(rows.loc[errors.index, "id"], errors):
        log.debug("error row %s: %s", rid, msg)
    return rows.assign(_slot=slot_hash(rows), _content=content_hash(rows), _pending=rows["status"] == "pending")


def mark_conflicts(batch: pd.DataFrame, conflicts: dict) -> pd.DataFrame:
    """Rows whose slot other rows claim with different content (see `job.find_conflicts`) -> error rows."""
    hit = batch["_slot"].isin(list(conflicts)) & (batch["status"] != "error")
    if not hit.any():
        return batch
    # Finished ("skipped") rows in a conflicting slot are conflicts too: the video can belong to one of them only.
    batch = batch.copy()
    for i in batch.index[hit]:
        r = batch.loc[i]
        others = [p for c, p in conflicts[int(r["_slot"])].items() if c != int(r["_content"])]
        batch.loc[i, ["status", "error", "skipped", "video_uri", "gif_uri", "sha256"]] = [
            "error", f"duplicate id {r['id']!r} for checkpoint {r['checkpoint']!r}: another row with different content "
            f"uses it (prompt {others[0]!r}); give each row its own id", False, "", "", ""]
    return batch


def is_pending(batch: pd.DataFrame) -> pd.DataFrame:
    """Rows that need generation (the only rows the actors see)."""
    return batch[batch["status"] == "pending"]


def is_done(batch: pd.DataFrame) -> pd.DataFrame:
    """Rows that need no generation: error rows from planning and rows found finished."""
    return batch[batch["status"] != "pending"]
