"""What the batch job tells its user: a running summary, `index.html`, and the metadata table.

The summary is built incrementally from the metadata rows as they stream past the driver (counts,
error reasons, the first previews of each checkpoint), so its memory does not grow with the number
of rows, and `index.html` stays small at any size and is written in time linear in the groups: the
`MAX_GROUPS` largest (motion module, checkpoint) groups, each with a count line and its first `PREVIEWS`
previews, a count of the rest, then the error reasons with counts, and links to the metadata shards.
Text shown (prompts and every other value) is cut to `SHOWN` characters; the metadata keeps it whole.
"""

from __future__ import annotations

import hashlib
import html
import io
import logging
import re
from collections import Counter, defaultdict

import pandas as pd
from pyarrow import ArrowException

from animatediff_core.errors import ConfigError
from animatediff_core.io import bounded, storage
from animatediff_core.redact import redact_uri
from animatediff_core.settings.generation import GenerationSettings
from pipelines.animate import schema
from pipelines.animate.layout import OutputLayout, shard_run_id
from pipelines.cells import UNREADABLE

log = logging.getLogger(__name__)
PREVIEWS = 12  # preview cards per checkpoint on index.html
MAX_REASONS = 200  # distinct error reasons kept; the rest are counted as "other"
MAX_GROUPS = 200  # (motion module, checkpoint) sections on index.html, largest first; the rest are counted
MAX_LINES = 20  # checkpoint lines in the printed summary, largest first
SHOWN = 300  # characters of any value shown on index.html (a prompt is whole in the metadata)
GRID_PROMPTS, GRID_COLUMNS = 12, 8  # the prompt x checkpoint grid on index.html: most prompts and groups
# What a preview card shows: the card columns always, every other setting where the row left its default.
_DEFAULTS = {k: getattr(GenerationSettings(), k) for k in schema.SETTINGS}
_KEPT = list(dict.fromkeys([*schema.CARD, *schema.SETTINGS, "windows", "checkpoint_stack", "id", "video_uri", "gif_uri"]))
_VALUES = re.compile(r"'[^']*'|\"[^\"]*\"|-?\d+(\.\d+)?(e[+-]?\d+)?|/[^\s,;)]+")


def reason(message: str) -> str:
    """An error message with its row-specific values (quoted text, numbers, paths) blanked, so
    messages that differ only in the value count as one reason."""
    return _VALUES.sub("…", message)[:200]


_CALLS: Counter = Counter()  # shards written so far by each Ray task (actor task) in this process


def _shard_key(batch: pd.DataFrame, source: str) -> str:
    """A name unique to this batch and stable under retries: the Ray task's id (a retried task keeps
    it), the how-many-th batch of that task this is, and the batch's rows. Two batches with the same
    rows (identical duplicate rows in a table) still get two shards."""
    import ray  # here: evaluation reads metadata and the index without Ray

    task = ""
    if ray.is_initialized():
        ctx = ray.get_runtime_context()
        task = ctx.get_task_id() if ctx.worker.mode == ray.WORKER_MODE else ""  # "" outside Ray tasks
    _CALLS[task] += 1
    ids = "\n".join(batch["motion_module"] + "/" + batch["checkpoint"] + "/" + batch["id"])
    return f"{source}_" + hashlib.sha256(f"{task}/{_CALLS[task]}/{ids}".encode()).hexdigest()[:20]


URI_COLUMNS = ("checkpoint_uri", "motion_module_uri", "video_uri", "gif_uri")


SHARD = "_shard"  # the column that tells the driver which shard holds a returned row (not stored)
SHARD_ERROR = "_shard_error"  # why the shard of a returned row could not be written ("" when it was; not stored)


def write_shard(batch: pd.DataFrame, layout: OutputLayout, run_id: str, source: str = "plan") -> pd.DataFrame:
    """Write `batch` (schema rows) as one metadata shard, atomically; `source` (plan: rows that needed
    no generation; actor: generated rows) starts its key. A retried batch rewrites its own shard. The
    rows come back with the shard's key in `SHARD`, so the driver knows which shards it received, and,
    when the shard could not be written (a full disk, lost access), why in `SHARD_ERROR`: the job then
    ends with one line and a non-zero exit instead of a traceback, and a rerun regenerates those rows."""
    batch = schema.typed(batch)
    for column in URI_COLUMNS:  # metadata is shared widely: no credentials from a URI in it
        batch[column] = batch[column].map(redact_uri)
    key, problem = "", ""
    if len(batch):
        key = _shard_key(batch, source)
        buf = io.BytesIO()
        batch.to_parquet(buf, index=False, schema=schema.ARROW_SCHEMA)
        try:
            storage.write_bytes_atomic(layout.shard(run_id, key), buf.getvalue())
        except OSError as e:
            problem = f"{type(e).__name__}: {str(e)[:200]}"
            log.error("metadata shard of %d row(s) not written to %s: %s", len(batch), layout.metadata, problem)
    return batch.assign(**{SHARD: key, SHARD_ERROR: problem})


def shard_failed(batch: pd.DataFrame) -> bool:
    return SHARD_ERROR in batch.columns and bool((batch[SHARD_ERROR] != "").any())


class Summary:
    """Counts by (motion module, checkpoint) and status, error reasons, the first previews, and what
    could not be read (tables) or written (metadata shards)."""

    def __init__(self):
        self.counts: dict[tuple[str, str], Counter] = defaultdict(Counter)
        self.reasons: Counter = Counter()
        self.examples: dict[str, str] = {}  # reason -> its first message with the values (cut to SHOWN)
        self.previews: dict[tuple[str, str], list[dict]] = defaultdict(list)
        self.rows = 0
        self.truncated = 0
        self.left_out = 0  # sweep pairs of different families (SD-1.x, SDXL): not rows, counted here
        self.unreadable: list[str] = []  # the first few tables that could not be read to the end
        self.unwritten, self.unwritten_why = 0, ""  # rows whose metadata shard could not be written

    def add(self, batch: pd.DataFrame) -> None:
        if batch.empty:
            return
        self.rows += len(batch)
        self.truncated += int(batch["prompt_truncated"].astype(bool).sum())
        if SHARD_ERROR in batch.columns:
            failed = batch[SHARD_ERROR] != ""
            if failed.any():
                self.unwritten += int(failed.sum())
                self.unwritten_why = self.unwritten_why or str(batch.loc[failed, SHARD_ERROR].iloc[0])
        broken = batch["error"].str.startswith(UNREADABLE)
        if broken.any() and len(self.unreadable) < 5:
            self.unreadable += batch.loc[broken, "error"].str[len(UNREADABLE):].str[:400].tolist()[: 5 - len(self.unreadable)]
        skipped = batch["skipped"].astype(bool)
        kind = batch["status"].where(~skipped, "skipped")
        for (m, c, k), n in batch.assign(kind=kind).groupby(["motion_module", "checkpoint", "kind"]).size().items():
            self.counts[(m, c)][k] += int(n)
        errors = batch.loc[batch["status"] == "error", "error"]
        why = errors.map(reason)
        firsts = errors.groupby(why, sort=False).first()  # one message with its values per reason
        for msg, n in why.value_counts().items():
            key = msg if msg in self.reasons or len(self.reasons) < MAX_REASONS else "other"
            self.reasons[key] += int(n)
            if key != "other":
                self.examples.setdefault(key, _cut(str(firsts[msg])))
        # The first PREVIEWS ok rows of each group: one vectorized pass, then at most PREVIEWS records per group.
        ok = batch.loc[batch["status"] == "ok", [c for c in _KEPT if c in batch.columns]]
        for r in ok.groupby(["motion_module", "checkpoint"], sort=False).head(PREVIEWS).to_dict("records"):
            cards = self.previews[(r["motion_module"], r["checkpoint"])]
            if len(cards) < PREVIEWS:
                cards.append({k: v if k.endswith("uri") else _cut(v) for k, v in r.items()})

    def total(self, kind: str) -> int:
        return sum(c[kind] for c in self.counts.values())

    def largest(self, limit: int) -> tuple[list[tuple[tuple[str, str], Counter]], int, int]:
        """The `limit` groups with the most rows (ties by name), and how many groups and rows are left."""
        groups = sorted(self.counts.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
        rest = groups[limit:]
        return groups[:limit], len(rest), sum(sum(n.values()) for _, n in rest)

    def text(self, seconds: float) -> str:
        if not self.rows:
            return "no rows"
        several = len({m for m, _ in self.counts}) > 1
        label = lambda m, c: f"{m}/{c}" if several else c  # noqa: E731
        lines = [f"{'checkpoint':<32}{'ok':>8}{'error':>8}{'skipped':>9}"]
        shown, more, more_rows = self.largest(MAX_LINES)
        for (m, c), n in shown:
            lines.append(f"{_cut(label(m, c), 31):<32}{n['ok']:>8}{n['error']:>8}{n['skipped']:>9}")
        if more:
            lines.append(f"... and {more} more checkpoint(s) with {more_rows} rows (see index.html and the metadata)")
        ok = self.total("ok")
        lines.append(f"{'total':<32}{ok:>8}{self.total('error'):>8}{self.total('skipped'):>9}")
        lines.append(f"{self.rows} rows in {seconds:.1f}s, {ok / max(seconds, 1e-9):.2f} videos/s")
        if self.truncated:
            lines.append(f"{self.truncated} prompt(s) longer than the text encoder reads (77 tokens) were truncated; "
                         "see the prompt_truncated column")
        if self.left_out:
            lines.append(f"{self.left_out} sweep pair(s) left out: motion module and checkpoint of different families (SD-1.x, SDXL)")
        lines += [f"  error x{n}: {self.example(msg)}" for msg, n in self.reasons.most_common(5)]
        return "\n".join(lines)

    def example(self, why: str) -> str:
        """A reason as shown: its first message with the values, and that others differ only in them."""
        first = self.examples.get(why)
        return why if first is None else first + (" (and rows like it)" if self.reasons[why] > 1 and first != why else "")


def _cut(v, limit: int = SHOWN):
    """A value as shown: text cut to `limit` characters (numbers and flags as they are)."""
    return v if not isinstance(v, str) or len(v) <= limit else v[: limit - 1] + "…"


def _rel(uri: str, out: str) -> str:
    return uri[len(out.rstrip("/")) + 1 :] if uri.startswith(out.rstrip("/")) else uri


def card_items(r: dict) -> list[tuple[str, object]]:
    """What a preview card lists: the card columns, then every other setting the row moved off its default
    (prompt travel, FreeInit, looping, control, ...), the context windows it ran in and its checkpoint stack."""
    keys = [k for k in schema.CARD if k not in ("checkpoint", "motion_module", "status", "error")]
    keys += [k for k in schema.SETTINGS if k not in keys and k in r and r[k] != _DEFAULTS[k]]
    items = [(k, r.get(k)) for k in keys if r.get(k) not in ("", None)]
    if int(r.get("windows") or 0) > 1:
        items.append(("windows", r["windows"]))
    if r.get("checkpoint_stack"):
        items.append(("checkpoint_stack", r["checkpoint_stack"]))
    return items


def _grid(summary: Summary, shown, out: str, several: bool) -> str:
    """The prompt x checkpoint grid (as evaluation's report has): the first GRID_PROMPTS prompts (with their
    seeds) of the previews, across the GRID_COLUMNS largest groups; a cell is empty where that group's first
    previews do not hold the prompt. Nothing for one group: its cards are the comparison."""
    groups = [g for g, _ in shown if summary.previews.get(g)][:GRID_COLUMNS]
    if len(groups) < 2:
        return ""
    e = lambda v, n=SHOWN: html.escape(str(_cut(v, n)), quote=True)  # noqa: E731
    a = lambda v: html.escape(str(v), quote=True)  # noqa: E731
    cells: dict = {g: {} for g in groups}
    for g in groups:
        for r in summary.previews[g]:
            cells[g].setdefault((r["prompt"], r["seed"]), r)  # the first: a rerun's skipped twin shows the same video
    keys = list(dict.fromkeys(k for g in groups for k in cells[g]))
    head = "".join(f"<th>{e(f'{m} / {c}' if several else c, 80)}</th>" for m, c in groups)
    body = []
    for prompt, seed in keys[:GRID_PROMPTS]:
        row = []
        for g in groups:
            r = cells[g].get((prompt, seed))
            media = "" if r is None else (f'<img src="{a(_rel(r["gif_uri"], out))}" alt="">' if r.get("gif_uri") else
                                          f'<video src="{a(_rel(r["video_uri"], out))}" autoplay loop muted></video>')
            row.append(f'<td><a href="{a(_rel(r["video_uri"], out))}">{media}</a></td>' if r is not None else "<td></td>")
        body.append(f"<tr><th>{e(prompt, 160)}<br><small>seed {e(seed)}</small></th>{''.join(row)}</tr>")
    more = f" (first {GRID_PROMPTS} of {len(keys)} prompts in the previews)" if len(keys) > GRID_PROMPTS else ""
    return (f"<h2>Prompt x checkpoint</h2><p>The same prompt and seed across the {len(groups)} largest groups{more}.</p>"
            f'<table class="pxc"><tr><th>prompt</th>{head}</tr>{"".join(body)}</table>')


def write_index(summary: Summary, layout: OutputLayout) -> str:
    """`OUT/index.html`: the largest groups with their counts and first previews, a count of the rest;
    error reasons with counts; links to the metadata shards. Relative links, so it opens offline; its
    size does not grow with rows or groups, and it is written in time linear in the groups."""
    out = layout.out
    e = lambda v: html.escape(str(_cut(v)), quote=True)  # noqa: E731  shown text: cut
    a = lambda v: html.escape(str(v), quote=True)  # noqa: E731  links: whole
    several = len({k[0] for k in summary.counts}) > 1
    shown, more, more_rows = summary.largest(MAX_GROUPS)
    sections = []
    for (m, c), n in shown:
        cards = []
        for r in summary.previews.get((m, c), []):
            media = (f'<img src="{a(_rel(r["gif_uri"], out))}" alt="preview">' if r.get("gif_uri") else
                     f'<video src="{a(_rel(r["video_uri"], out))}" autoplay loop muted></video>')
            rows = "".join(f"<tr><th>{k}</th><td>{e(v)}</td></tr>" for k, v in card_items(r))
            cards.append(f'<div class="card"><a href="{a(_rel(r["video_uri"], out))}">{media}</a><table>{rows}</table>'
                         f'<code>{e(r["id"])}</code></div>')
        count = f"first {len(cards)} shown" if cards else "no videos"
        title = f"{e(m)} / {e(c)}" if several else e(c)
        sections.append(f'<h2>{title}</h2><p>{n["ok"]} ok ({n["skipped"]} from earlier runs), {n["error"]} error; {count}</p>'
                        f'<div class="grid">{"".join(cards)}</div>')
    if more:
        sections.append(f"<h2>{more} more</h2><p>{more} more checkpoint(s) with {more_rows} rows in all: "
                        "see the metadata table.</p>")
    reasons = "".join(f"<tr><td>{n}</td><td>{e(summary.example(msg))}</td></tr>" for msg, n in summary.reasons.most_common())
    left_out = (f"<p>{summary.left_out} sweep pair(s) left out: a motion module and a checkpoint of different families "
                "(SD-1.x, SDXL).</p>") if summary.left_out else ""
    errors = f"<h2>Errors</h2><table class='reasons'><tr><th>rows</th><th>reason</th></tr>{reasons}</table>" if reasons else ""
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>animatediff-ray results</title>
<style>body{{font-family:sans-serif;margin:1em}}.grid{{display:flex;flex-wrap:wrap;gap:12px}}
.card{{border:1px solid #ccc;padding:6px;width:280px;font-size:12px;overflow-wrap:anywhere}}.reasons td{{padding:2px 8px;vertical-align:top}}
.card img,.card video{{width:256px;image-rendering:pixelated}}th{{text-align:left;vertical-align:top}}
.pxc td,.pxc th{{vertical-align:top;font-size:12px;max-width:200px;overflow-wrap:anywhere}}.pxc img,.pxc video{{width:128px;image-rendering:pixelated}}</style>
</head><body><h1>animatediff-ray: {summary.rows} rows ({summary.total("ok")} ok, {summary.total("error")} error, {summary.total("skipped")} skipped: finished by an earlier run)</h1>
<p>Every row is in the metadata table: <a href="metadata/">metadata/*.parquet</a> (one row per prompt row x checkpoint;
columns {a(", ".join(schema.NAMES))}).</p>{left_out}{_grid(summary, shown, out, several)}{"".join(sections)}{errors}</body></html>"""
    storage.write_text_atomic(layout.index, page)
    return layout.index


def list_shards(layout: OutputLayout) -> list[str]:
    fs, path = storage.fs_and_path(layout.metadata)
    try:
        names = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    return sorted(storage.join(layout.metadata, p.rstrip("/").rsplit("/", 1)[-1]) for p in names if p.endswith(".parquet"))


def _read_shard(uri: str) -> pd.DataFrame:
    """One shard, through the bounded reader: a folder given to `jobs.evaluate --score-only` may hold anything
    under *.parquet (a FIFO, a huge or corrupt file): ConfigError naming it, never a hang or a traceback."""
    data = bounded.read_bytes(uri, "table", "metadata shard")
    try:
        return pd.read_parquet(io.BytesIO(data))
    except (ValueError, OSError, ArrowException) as e:
        raise ConfigError(f"metadata shard {uri}: not a readable Parquet file ({type(e).__name__}: {str(e)[:200]})") from None


def read_metadata(out: str) -> pd.DataFrame:
    """The job's metadata table: one row per (prompt row, motion module, checkpoint). Where a rerun
    wrote a row again (its shards stay until it completes), the latest run's rows win."""
    shards = list_shards(OutputLayout(out))
    if not shards:
        return schema.empty()
    parts = [_read_shard(s).assign(_run=shard_run_id(s)) for s in shards]
    table = pd.concat(parts, ignore_index=True)
    table = schema.typed(table).assign(_run=table["_run"])  # shards of earlier releases: int64 seeds, fewer columns
    latest = table.groupby(["motion_module", "checkpoint", "id"])["_run"].transform("max")
    return table[table["_run"] == latest].drop(columns="_run").reset_index(drop=True)


def drop_older_shards(layout: OutputLayout, run_id: str, received: set[str] | None = None) -> int:
    """After a run completed: remove the shards of earlier runs (every row of this run has its own) and,
    given the keys of the shards whose rows reached the driver (`received`), this run's orphans: shards
    that an actor wrote before it died, whose batch Ray then ran again elsewhere under another key.
    Shards of later runs, and of any run that is live now (lease.py), are never removed."""
    from pipelines.animate.lease import live_claims  # here: lease imports layout only; keeps report light

    live = {str(c.get("run")) for c in live_claims(layout)} - {run_id}
    old = []
    for s in list_shards(layout):
        run = shard_run_id(s)
        if run in live or run > run_id:
            continue
        if run != run_id or (received is not None and s.rsplit("/", 1)[-1].removesuffix(".parquet")[len(run_id) + 1:] not in received):
            old.append(s)
    for s in old:
        fs, path = storage.fs_and_path(s)
        fs.rm(path)
    return len(old)
