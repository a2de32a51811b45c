"""Evaluation prompts: the shipped suite or the user's tables, each prompt at several fixed seeds.

The suite (`jobs/data/eval_prompts.csv`): id, category (people, animals, nature, vehicles, camera,
styles), prompt, negative_prompt, seed. A table without seeds gets one derived from the prompt text, so
reruns and other checkpoints see the same noise; the k-th extra seed of a prompt is its seed + k.
Tables are read by the batch job's cell rules (`pipelines/cells.py`): a seed that is not an integer
("abc", 1.5) is passed on as written, and the batch job makes its rows error rows saying why; a cell that
is not valid UTF-8 or is too long fails the job with one line naming its file and row (a suite is the
benchmark: fix it rather than score part of it).
"""

from __future__ import annotations

import hashlib

import pandas as pd

from animatediff_core.configs import need
from animatediff_core.errors import ConfigError
from animatediff_core.io import storage
from pipelines import cells
from pipelines import tables as table_files


def read_prompt_tables(uris: list[str]) -> list[pd.DataFrame]:
    """Each table's cells as text (None: empty), by the batch job's rules."""
    tables = []
    for uri in uris:
        t = table_files.read_cells(uri, flag="--prompts")
        need("prompt" in t.columns and not t.empty, f"--prompts {uri}: needs a 'prompt' column and at least one row "
             f"(found {[c for c in t.columns if c != cells.PROBLEM]}, {len(t)} rows)")
        bad = t[t[cells.PROBLEM] != ""]
        need(bad.empty, f"--prompts {uri}: {bad[cells.PROBLEM].iloc[0] if len(bad) else ''}")
        tables.append(t.drop(columns=cells.PROBLEM))
    return tables


def _text(v) -> str:
    return "" if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v)


def _seed_of(prompt: str) -> int:
    return int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) % 2**31


def _seed(cell, prompt: str) -> int | str:
    """The row's seed by the batch job's rule (`cells.as_int`); a cell that breaks it is passed on as written,
    for the batch job to make an error row of (never truncated, never a crash here)."""
    try:
        seed = cells.as_int("seed", cell)
    except ConfigError:
        return str(cell)
    return _seed_of(prompt) if seed is None else seed


IMAGE_COLUMNS = ("ip_adapter_image", "ip_adapter_scale")  # a suite's image prompts, passed on when its tables have them


def expand_seeds(tables: list[pd.DataFrame], seeds_per_prompt: int) -> pd.DataFrame:
    """One row per (prompt row, seed): columns id (when the tables have ids), category, prompt,
    negative_prompt, seed, and the image-prompt columns of tables that have them. Ids get a `-s<k>` suffix
    when there are several seeds."""
    need(seeds_per_prompt >= 1, f"--seeds-per-prompt must be at least 1, got {seeds_per_prompt}")
    rows = []
    for table in tables:
        for r in table.to_dict("records"):
            prompt = _text(r.get("prompt"))
            seed = _seed(r.get("seed"), prompt)
            for k in range(seeds_per_prompt):
                rid = r.get("id")
                rid = None if rid is None or pd.isna(rid) else (f"{rid}-s{k}" if seeds_per_prompt > 1 else str(rid))
                rows.append({"id": rid, "category": _text(r.get("category")), "prompt": prompt,
                             "negative_prompt": _text(r.get("negative_prompt")), "seed": seed + k if isinstance(seed, int) else seed,
                             **{c: _text(r.get(c)) for c in IMAGE_COLUMNS if c in table.columns}})
    out = pd.DataFrame(rows)
    if out["id"].isna().all():
        out = out.drop(columns="id")
    return out


def write_seeded(tables: list[pd.DataFrame], seeds_per_prompt: int, out: str) -> str:
    """`out/prompts.csv`: the batch job's prompt table for this evaluation; returns its URI."""
    uri = storage.join(out, "prompts.csv")
    storage.write_text_atomic(uri, expand_seeds(tables, seeds_per_prompt).to_csv(index=False))
    return uri
