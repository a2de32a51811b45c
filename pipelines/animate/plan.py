"""Planning the batch job: the sweep, ids, seeds, per-row settings.

Pure pandas (no Ray, no torch), so the stages that call these stay thin and the logic is tested
directly. A row that cannot run becomes `status="error"` with a message saying what to fix; planning
never raises on a cell, whatever it holds. Cells are parsed by `pipelines/cells.py`, each setting by
the Python type `GenerationSettings` declares for it; what defines a video is `identity.py`.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

import pandas as pd

from animatediff_core.configs import field_types, need, short
from animatediff_core.errors import ConfigError
from animatediff_core.io.bounded import ReadLimits
from animatediff_core.settings.generation import (
    ANY_SEED,
    FAMILY_NAMES,
    SEED_RANGE,
    GenerationSettings,
    validate_settings,
)
from pipelines import cells
from pipelines.animate import schema
from pipelines.animate.identity import content_hash, row_key, slot_hash
from pipelines.animate.layout import NAME_RULE, is_safe_name
from pipelines.animate.limits import RowLimits, row_problem
from pipelines.animate.resume import mark_finished

log = logging.getLogger(__name__)
ID_NAMESPACE = uuid.UUID("6b1d6a4e-3f0e-4d59-9c57-5a1d0e5f2a10")
_SETTING_TYPES = {k: v[0] for k, v in field_types(GenerationSettings).items()}


def normalize(batch) -> pd.DataFrame:
    """A prompt-table block (Arrow or pandas) -> the schema's readable columns, all text (rows parse them later)."""
    return cells.normalize(batch, schema.READ)


def _settings(row: dict, defaults: GenerationSettings) -> GenerationSettings:
    """The row's settings over the job defaults, each cell parsed by its schema type (empty: the default)."""
    return defaults.updated(**{k: cells.parse(_SETTING_TYPES[k], k, row.get(k)) for k in schema.SETTINGS}).effective()


@dataclass(frozen=True)
class Plan:
    """What every planning task needs: the sets and the job defaults (small; shipped to each task)."""

    checkpoints: tuple[str, ...]
    motions: dict[str, int]  # name -> most frames it supports
    defaults: GenerationSettings
    families: dict[str, str] = field(default_factory=dict)  # checkpoint or motion-module name -> sd1 | sdxl (default sd1)
    limits: RowLimits = RowLimits()  # cost per row (limits.py)
    reads: ReadLimits = ReadLimits()  # where a row's URIs may point (bounded.py)

    def family(self, name: str) -> str:
        return self.families.get(name, "sd1")

    def pairs(self, checkpoint, motion) -> tuple[list[tuple[str, str]], int]:
        """The (motion module, checkpoint) pairs a row asks for (empty: every one) and how many of the sweep's
        were left out because the module and the checkpoint's base are of different families."""
        motions = list(self.motions) if motion in (None, "") else [str(motion)]
        checkpoints = list(self.checkpoints) if checkpoint in (None, "") else [str(checkpoint)]
        every = [(m, c) for m in motions for c in checkpoints]
        swept = motion in (None, "") or checkpoint in (None, "")
        kept = [(m, c) for m, c in every if not swept or self.family(m) == self.family(c)]
        return kept, len(every) - len(kept)


class _Checked:
    """Per-task memo of parsed and validated settings: rows of a table mostly share them, so each
    distinct combination of setting cells is parsed and checked once, not once per row."""

    def __init__(self, plan: Plan):
        self.plan, self.parsed, self.valid = plan, {}, {}

    def settings(self, row: dict) -> GenerationSettings | ConfigError:
        key = tuple(cells.plain(row.get(k)) for k in schema.SETTINGS)
        if key not in self.parsed:
            try:
                self.parsed[key] = _settings(row, self.plan.defaults)
            except ConfigError as e:
                self.parsed[key] = e
            except (ValueError, TypeError, OverflowError, RecursionError) as e:  # a cell no rule foresaw
                self.parsed[key] = ConfigError(f"the row's settings cannot be read ({type(e).__name__}: {str(e)[:200]})")
        return self.parsed[key]

    def error(self, s: GenerationSettings, motion: str, family: str = "sd1") -> str:
        key = (s, motion, family)
        if key not in self.valid:
            try:
                validate_settings(s, max_frames=self.plan.motions[motion], vae_scale=8, family=family)
                self.valid[key] = row_problem(s, self.plan.limits, self.plan.reads)
            except ConfigError as e:
                self.valid[key] = str(e)
            except (ValueError, TypeError, OverflowError, RecursionError) as e:  # a cell no rule foresaw: its row, not the job
                self.valid[key] = f"the row's settings cannot be checked ({type(e).__name__}: {str(e)[:200]})"
        return self.valid[key]


def expand_rows(batch: pd.DataFrame, plan: Plan) -> pd.DataFrame:
    """The sweep: one row per (prompt row, motion module, checkpoint), ids, seeds and settings resolved.

    A row's `checkpoint` (`motion_module`) names one of the set; empty means every one. Ids: the
    table's `id`, else a uuid5 of the row content and checkpoint. Seeds: the table's `seed`, else
    derived from the row content, so every checkpoint of a sweep starts from the same noise. A sweep pairs
    each checkpoint only with the motion modules of its base's family (SD-1.x, SDXL); the pairs left out are
    counted in `frame.attrs["left_out"]`. Rows come out ordered by checkpoint and shape, so actors see long
    runs of one checkpoint without a global sort.
    """
    out, checked, left_out = [], _Checked(plan), 0
    columns = [c for c in (*schema.READ, cells.PROBLEM) if c in batch.columns]
    for values in zip(*(batch[c].tolist() for c in columns)):
        row = dict(zip(columns, values))
        key = row_key(row)
        pairs, skipped = plan.pairs(cells.plain(row.get("checkpoint")), cells.plain(row.get("motion_module")))
        left_out += skipped
        out += [_resolve(row, key, c, m, plan, checked) for m, c in pairs]
    frame = schema.typed(pd.DataFrame(out)) if out else schema.empty()
    frame = frame.sort_values(schema.GROUP, kind="stable", ignore_index=True)
    frame.attrs["left_out"] = left_out  # sweep pairs of different families: counted, not rows
    return frame


def _resolve(row: dict, key: str, checkpoint: str, motion: str, plan: Plan, checked: _Checked) -> dict:
    d = plan.defaults
    given_id = cells.plain(row.get("id"))
    prompt = cells.plain(row.get("prompt"))
    out = {"id": str(given_id) if given_id not in (None, "") else str(uuid.uuid5(ID_NAMESPACE, f"{key}/{checkpoint}")),
           "prompt": "" if prompt is None else str(prompt),
           "negative_prompt": str(cells.plain(row.get("negative_prompt")) or ""), "checkpoint": checkpoint,
           "motion_module": motion, "seed": int(key[:15], 16) % 2**31, "status": "pending", "error": "",
           **{k: getattr(d, k) for k in schema.SETTINGS}}
    try:
        need(not row.get(cells.PROBLEM), str(row.get(cells.PROBLEM)))  # a cell no rule can read (cells.normalize)
        need(is_safe_name(out["id"]), f"id {short(out['id'])} is not a safe file name: use {NAME_RULE}")
        seed = cells.as_int("seed", row.get("seed"))
        if seed is not None and seed != ANY_SEED:  # -1: any seed, the one derived from the row (a rerun resumes)
            need(0 <= seed < SEED_RANGE, f"seed must be an integer in [0, 2**64) or -1 (any seed), got {short(seed)}")
            out["seed"] = seed
        s = checked.settings(row)
        if isinstance(s, ConfigError):
            raise s
        out.update({k: getattr(s, k) for k in schema.SETTINGS})
        need(out["prompt"].strip(), "prompt is empty; give a text prompt")
        need(checkpoint in plan.checkpoints, f"unknown checkpoint {short(checkpoint)}; the set has {_some(plan.checkpoints)}")
        need(motion in plan.motions, f"unknown motion module {short(motion)}; the set has {_some(plan.motions)}")
        family = plan.family(checkpoint)
        need(plan.family(motion) == family, f"motion module {motion!r} is for {FAMILY_NAMES[plan.family(motion)]} bases and "
             f"checkpoint {checkpoint!r} runs on an {FAMILY_NAMES[family]} base; pair each with its own family")
        problem = checked.error(s, motion, family)
        need(not problem, problem)
    except ConfigError as e:
        out.update(status="error", error=str(e))
    return out


def _some(names, shown: int = 10) -> str:
    """Up to `shown` names and how many more: a message stays short whatever the size of the set."""
    names = list(names)
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def plan_block(batch: pd.DataFrame, plan: Plan, finished, layout, motions, specs, image_prompt: str = "") -> pd.DataFrame:
    """One planning task: expand the sweep, mark finished rows, add the slot and content hashes."""
    expanded = expand_rows(batch, plan)
    rows = mark_finished(expanded, finished, layout, motions, specs, image_prompt)
    errors = rows.loc[rows["status"] == "error", "error"]
    if len(errors):  # per block, not per row: a million error rows must not be a million log lines
        top = "; ".join(f"{n} x {msg[:120]}" for msg, n in errors.value_counts().head(3).items())
        log.info("planned %d rows: %d error rows (%s)", len(rows), len(errors), top)
    for rid, msg in zip(rows.loc[errors.index, "id"], errors):
        log.debug("error row %s: %s", rid, msg)
    left_out = [expanded.attrs.get("left_out", 0)] + [0] * (len(rows) - 1)  # the block's count, on its first row
    return rows.assign(_slot=slot_hash(rows), _content=content_hash(rows), _pending=rows["status"] == "pending",
                       _left_out=left_out[: len(rows)])


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
