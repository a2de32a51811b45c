"""Batch animation on Ray Data: prompt tables -> videos across checkpoints and motion modules.

    read tables (tasks) -> expand the sweep + resume check (tasks) -> materialized plan
        -> rows that need no generation (error rows, finished rows): metadata shards (tasks)
        -> pending rows: AnimateStage actor pool (one loaded pipeline per actor) -> videos + shards
        -> metadata rows stream past the driver into a bounded summary

Planning never funnels rows through the driver: tables are read by Ray Data tasks, the resume check
lists each output folder once, and metadata is written by the tasks and actors that produce it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from animatediff_core.configs import need
from animatediff_core.errors import CheckpointError
from animatediff_core.io import bounded, hub, storage
from animatediff_core.models import image_prompt
from animatediff_core.models.motion_formats import inspect_motion_module
from animatediff_core.models.numerics import resolve
from animatediff_core.models.pipeline import read_unet_config
from animatediff_core.settings.generation import (
    FAMILY_NAMES,
    URI_SETTINGS,
    CheckpointSpec,
    family_of,
    parse_image_prompt,
)
from pipelines import tables
from pipelines.animate import official, schema
from pipelines.animate.config import AnimateConfig
from pipelines.animate.identity import image_prompt_id
from pipelines.animate.layout import OutputLayout, new_run_id
from pipelines.animate.lease import claim, refuse_if_live
from pipelines.animate.plan import Plan, is_done, is_pending, mark_conflicts, normalize, plan_block
from pipelines.animate.report import SHARD, Summary, drop_older_shards, write_index, write_shard
from pipelines.animate.resume import list_finished
from pipelines.animate.sets import MotionSpec, read_checkpoint_set, read_motion_set
from pipelines.progress import Progress, tally
from pipelines.ray_session import count_nodes, stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """What preflight established: every input exists and fits; the sets, the layout, the table files."""

    cfg: AnimateConfig
    files: list[str]
    checkpoints: dict[str, CheckpointSpec]
    motions: dict[str, MotionSpec]
    layout: OutputLayout
    families: dict[str, str] = dataclasses.field(default_factory=dict)  # checkpoint name -> its base's family
    image_prompt: tuple[str, str] | None = None  # (IP-Adapter, image encoder) for the SD-1.x bases, --ip-adapter

    def base_of(self, checkpoint: str) -> str:
        return self.checkpoints[checkpoint].base or self.cfg.base


def preflight(cfg: AnimateConfig) -> Prepared:
    """Fail fast, with one line, when nothing can run: missing or unfit inputs, an unwritable output,
    another run live on the same output. Sets this process's read limits (`--max-*-mb`, `--allow-uri`, ...);
    with an official config, its translation first."""
    bounded.configure(cfg.reads)
    translated = None
    if cfg.official_config:
        cfg, translated = official.prepare(cfg, frozenset(cfg.official_overrides))
    layout = OutputLayout(cfg.out)
    storage.check_writable(cfg.out, "--out")
    refuse_if_live(layout)  # one line now, before Ray starts (and before --prompt's table is written); run_animate claims --out
    files = [f for uri in cfg.prompts for f in tables.list_tables(uri, "--prompts")]
    if cfg.prompt:  # --prompt TEXT: a table of its own in the output folder (a rerun reads the same rows)
        storage.write_text_atomic(layout.prompt_table, pd.DataFrame({"prompt": cfg.prompt}).to_csv(index=False))
        files.append(layout.prompt_table)
    has_rows = False
    for f in files:
        columns, rows = tables.header(f, "--prompts")
        need("prompt" in columns, f"--prompts {f}: no 'prompt' column (found {', '.join(columns) or 'none'})")
        has_rows = has_rows or rows
    need(has_rows, f"--prompts {' '.join(cfg.prompts)}: the table has no rows")  # --prompt gives one at least
    checkpoints = read_checkpoint_set(cfg.checkpoints)
    bases = _families(cfg, checkpoints)
    motions = _inspect_motions(cfg, read_motion_set(cfg.motion_module), bases)
    for name, spec in checkpoints.items():  # every checkpoint needs a module of its family
        family = bases[spec.base or cfg.base][0]
        need(any(m.family == family for m in motions.values()),
             f"checkpoint {name!r} runs on an {FAMILY_NAMES[family]} base, but no motion module given is for {FAMILY_NAMES[family]}")
    if translated is not None:
        official.check_modules(translated, {n: m.numerics.split("/")[1] for n, m in motions.items()})
    for flag in (n for n in URI_SETTINGS if n != "keyframes"):  # job-wide inputs (keyframes: JSON, read per row)
        value = getattr(cfg.generation, flag)
        for uri in (parse_image_prompt(value) if flag == "ip_adapter_image" and value else [value] if value else []):
            bounded.check_uri(uri, f"--{flag.replace('_', '-')}")  # where it may point, before anything reads it
            need(storage.exists(hub.resolve(uri)), f"--{flag.replace('_', '-')} {uri}: not found")
    image_prompt = _image_prompt(cfg, bases)
    layout = OutputLayout(cfg.out, by_motion=len(motions) > 1)
    log.info("planned: %d prompt table file(s), %d checkpoint(s) (%s), %d motion module(s) (%s)", len(files),
             len(checkpoints), ", ".join(checkpoints), len(motions), ", ".join(motions))
    return Prepared(cfg, files, checkpoints, motions, layout, {n: bases[s.base or cfg.base][0] for n, s in checkpoints.items()},
                    image_prompt)


def _image_prompt(cfg: AnimateConfig, bases: dict) -> tuple[str, str] | None:
    """(adapter, encoder) when --ip-adapter is given: it must fit the job's SD-1.x base (read from headers and
    configs) and have an encoder whose features it takes. One line (CheckpointError) otherwise."""
    if not cfg.ip_adapter:
        return None
    sd1 = {f: c for f, c in bases.values() if f == "sd1"}
    need(bool(sd1), f"--ip-adapter {cfg.ip_adapter}: image prompts run on SD-1.x bases only, and the job has none")
    adapter, encoder = image_prompt.match([cfg.ip_adapter], [cfg.image_encoder] if cfg.image_encoder else [], sd1)["sd1"]
    log.info("image prompts: IP-Adapter %s with the image encoder %s", adapter, encoder)
    return adapter, encoder


def _families(cfg: AnimateConfig, checkpoints: dict[str, CheckpointSpec]) -> dict[str, tuple[str, dict]]:
    """Every base the job runs on (--base and the checkpoint table's `base` column): its family and UNet config."""
    out = {}
    for uri, flag in [(cfg.base, "--base"), *((s.base, f"--checkpoints: checkpoint {n!r}'s base") for n, s in checkpoints.items() if s.base)]:
        if uri not in out:
            try:
                config = read_unet_config(uri)
            except CheckpointError as e:
                raise CheckpointError(f"{flag} {e}") from None
            out[uri] = (family_of(config), config)
    return out


def _inspect_motions(cfg: AnimateConfig, specs: dict[str, MotionSpec], bases: dict) -> dict[str, MotionSpec]:
    """Each motion module's length, family (the bases it fits) and numerics, from its keys and shapes."""
    motions = {}
    for name, spec in specs.items():
        fits, problems = None, []
        for family, unet_config in {f: c for f, c in bases.values()}.items():  # one base of each family
            try:
                fits = (family, inspect_motion_module(spec.uri, unet_config))
                break
            except CheckpointError as e:
                problems.append(str(e))
        if fits is None:
            raise CheckpointError(f"--motion-module {problems[0] if len(problems) == 1 else spec.uri + ': fits none of the bases (' + '; '.join(problems) + ')'}")
        family, config = fits
        try:
            numerics = resolve(cfg.motion_norm, config, family)
        except CheckpointError as e:
            raise CheckpointError(f"--motion-module {spec.uri}: {e}") from None
        motions[name] = dataclasses.replace(spec, max_frames=int(config["motion_max_seq_length"]), norm=cfg.motion_norm,
                                            numerics=numerics.label, family=family)
    return motions


PLAN_BLOCK_ROWS = 20_000  # rows per planning task: a big single-file table still plans on every core


def read_prompts(files: list[str]):
    """The prompt tables as text cells (`plan.normalize`): no cell, byte or malformed CSV row fails the read.

    In blocks of PLAN_BLOCK_ROWS rows, small ones joined (`strict`): Ray Data splits a small file's read into
    blocks of a row or two, and planning orders rows by checkpoint and shape within a block only, so a sweep
    planned block by block would reach the actors one prompt at a time across every checkpoint (a switch per
    row, no batch on a GPU, no streams on a CPU)."""
    ds = tables.read_ray_cells(files, schema.READ, normalize)
    return ds.repartition(target_num_rows_per_block=PLAN_BLOCK_ROWS, strict=True)


def find_conflicts(planned) -> tuple[dict[int, dict[int, str]], int, int]:
    """Output slots (motion module, checkpoint, id) that rows with different content claim, with the
    prompts that claim each (their rows become error rows naming the other row), the number of rows to
    generate and the number of sweep pairs left out (families). One pass over four small columns of the
    plan (~25 bytes a row), and a second over the plan only when conflicts exist."""
    slots, contents, pending, left_out = [], [], 0, 0
    for b in planned.select_columns(["_slot", "_content", "_pending", "_left_out"]).iter_batches(batch_format="numpy", batch_size=100_000):
        slots.append(b["_slot"])
        contents.append(b["_content"])
        pending += int(b["_pending"].sum())
        left_out += int(b["_left_out"].sum())
    if left_out:
        log.info("%d sweep pair(s) left out: a motion module and a checkpoint of different families (SD-1.x, SDXL)", left_out)
    if not slots:
        return {}, 0, left_out
    pairs = np.unique(np.stack([np.concatenate(slots), np.concatenate(contents)], axis=1), axis=0)
    slot_values, counts = np.unique(pairs[:, 0], return_counts=True)
    bad = set(slot_values[counts > 1].tolist())
    if not bad:
        return {}, pending, left_out
    claims: dict[int, dict[int, str]] = {}
    hits = planned.map_batches(lambda b: b[b["_slot"].isin(bad)][["_slot", "_content", "prompt"]], batch_format="pandas")
    for b in hits.iter_batches(batch_format="pandas", batch_size=None):
        for slot, content, prompt in zip(b["_slot"], b["_content"], b["prompt"]):
            claims.setdefault(int(slot), {}).setdefault(int(content), str(prompt)[:60])
    return claims, pending, left_out


@dataclass
class Result:
    summary: Summary
    seconds: float
    index: str
    run_id: str


def run_animate(prep: Prepared, config_text: str | None = None) -> Result:
    """Run the planned job; metadata is written as it is produced. Ray must be initialized. The run claims
    `--out` first (lease.py: a second run on a live folder refuses), then writes `config_text` to job.yaml."""
    prep = stage_models(prep, count_nodes())
    layout = prep.layout
    start, run_id = time.time(), new_run_id()
    with claim(layout, run_id):
        if config_text is not None:
            storage.write_text_atomic(layout.job_config, config_text)
        summary, received = _run(prep, run_id)
        seconds = time.time() - start
        try:
            index = write_index(summary, layout)
        except OSError as e:  # a full disk: the run's line says so (exit_code); the metadata is what counts
            log.error("index.html not written: %s: %s", type(e).__name__, e)
            index = ""
        # Earlier runs' shards go only when every row of this run has its own (a shard that failed to be
        # written leaves the older ones as the rows' only metadata).
        dropped = drop_older_shards(layout, run_id, received) if not summary.unwritten else 0
        # Every write of this run has finished (the actors return a batch once its files are written) and no
        # other run writes here (the claim): a temp file left now is one a killed writer never finished.
        leftovers = layout.remove_leftover_temps()
    log.info("run %s: %d rows, %d ok, %d error, %d skipped in %.1fs%s%s", run_id, summary.rows, summary.total("ok"),
             summary.total("error"), summary.total("skipped"), seconds,
             f"; {dropped} metadata shard(s) of earlier runs (or of batches retried after an actor died) removed" if dropped else "",
             f"; {leftovers} temp file(s) of writes a killed worker never finished removed" if leftovers else "")
    return Result(summary, seconds, index, run_id)


def _run(prep: Prepared, run_id: str) -> tuple[Summary, set[str]]:
    """Plan, write the rows that need no generation, generate the rest; the summary and the shards received."""
    cfg, layout = prep.cfg, prep.layout
    families = {**{n: m.family for n, m in prep.motions.items()}, **prep.families}
    plan = Plan(tuple(prep.checkpoints), {n: m.max_frames for n, m in prep.motions.items()}, cfg.generation, families,
                limits=cfg.limits, reads=cfg.reads)
    finished = list_finished(layout, list(prep.motions), list(prep.checkpoints))
    planned = read_prompts(prep.files).map_batches(
        plan_block, batch_format="pandas",
        fn_kwargs=dict(plan=plan, finished=finished, layout=layout, motions=prep.motions, specs=prep.checkpoints,
                       image_prompt=image_prompt_id(prep.image_prompt)),
    ).materialize()
    total = planned.count()  # materialized: counted from its block metadata
    conflicts, pending, left_out = find_conflicts(planned)
    if conflicts:
        log.warning("%d output slot(s) claimed by rows with different content: those rows become error rows", len(conflicts))
        planned = planned.map_batches(mark_conflicts, batch_format="pandas", fn_kwargs={"conflicts": conflicts})
    planned = planned.drop_columns(["_slot", "_content", "_pending", "_left_out"])
    done = planned.map_batches(is_done, batch_format="pandas").map_batches(
        write_shard, batch_format="pandas", fn_kwargs={"layout": layout, "run_id": run_id})
    log.info("%d row(s), %d to generate", total, pending)
    counter = tally() if pending else None
    if pending:  # no actor (and no model load) for a plan with nothing to generate
        done = done.union(_generation(planned, pending, prep, layout, run_id, counter))
    summary, received = Summary(), set()
    summary.left_out = left_out
    with Progress("generation", total, tally=counter) as progress:
        for batch in done.iter_batches(batch_format="pandas", batch_size=None):
            summary.add(batch)
            received.update(batch[SHARD].unique())
            if len(batch) and str(batch[SHARD].iloc[0]).startswith("plan_"):  # the actors' rows come through the tally
                progress.add(**outcomes(batch))
    return summary, received


def outcomes(batch) -> dict[str, int]:
    """Rows of a metadata batch by outcome: ok, error, skipped."""
    kind = batch["status"].where(~batch["skipped"].astype(bool), "skipped")
    return {k: int(n) for k, n in kind.value_counts().items()}


def _generation(planned, pending_rows: int, prep: Prepared, layout: OutputLayout, run_id: str, counter=None):
    """The `pending_rows` rows to generate through the actor pool (one loaded pipeline per actor, GPU-pinned where GPUs exist)."""
    from pipelines.animate.stage import AnimateStage  # here: the model stack is the actors' import, not the planners'

    cfg = prep.cfg
    pending = planned.map_batches(is_pending, batch_format="pandas")
    pools = []
    for base in dict.fromkeys(prep.base_of(c) for c in prep.checkpoints):  # one pool per base: no actor holds two
        checkpoints = {n: s for n, s in prep.checkpoints.items() if prep.base_of(n) == base}
        family = prep.families[next(iter(checkpoints))]
        kwargs = dict(base=base, motions={n: m for n, m in prep.motions.items() if m.family == family},
                      checkpoints=checkpoints, layout=layout, run_id=run_id, gif=cfg.gif, actors=cfg.actors,
                      max_batch=cfg.max_batch, streams=cfg.streams, speed=cfg.speed, limits=cfg.limits, reads=cfg.reads,
                      frames_png=cfg.frames_png, progress=counter,
                      image_prompt=prep.image_prompt if family == "sd1" else None)
        rows = pending if len(prep.checkpoints) == len(checkpoints) else pending.map_batches(
            _on, batch_format="pandas", fn_kwargs={"checkpoints": list(checkpoints)})
        pools.append(cfg.actors.map(rows, AnimateStage, kwargs, cfg.batch_size, pending_rows))
    return pools[0].union(*pools[1:]) if len(pools) > 1 else pools[0]


def _on(batch, checkpoints: list[str]):
    """The rows of `checkpoints` (those of one base)."""
    return batch[batch["checkpoint"].isin(checkpoints)]


def stage_models(prep: Prepared, nodes: int) -> Prepared:
    """`prep` with base, motion modules and checkpoints at URIs every node can read: driver-local files
    on a multi-node cluster are staged under `--out` (pipelines/ray_session.py). Rows' fingerprints then
    name the staged copies, whose names are stable for unchanged files, so a rerun skips finished rows."""
    root = prep.cfg.out
    motions = {n: dataclasses.replace(m, uri=stage(m.uri, "--motion-module", root, nodes)) for n, m in prep.motions.items()}
    checkpoints = {n: dataclasses.replace(c, uri=stage(c.uri, "--checkpoints", root, nodes), base=stage(c.base, "--checkpoints base", root, nodes))
                   for n, c in prep.checkpoints.items()}
    cfg = dataclasses.replace(prep.cfg, base=stage(prep.cfg.base, "--base", root, nodes))
    image = prep.image_prompt and (stage(prep.image_prompt[0], "--ip-adapter", root, nodes),
                                   stage(prep.image_prompt[1], "--image-encoder", root, nodes))
    return dataclasses.replace(prep, cfg=cfg, motions=motions, checkpoints=checkpoints, image_prompt=image or None)


def exit_code(summary: Summary, max_error_fraction: float) -> tuple[int, str]:
    """0 when the failures are within `max_error_fraction`; 1 with one line when a table could not be
    read to its end, when metadata could not be written (a full disk), when every row failed or more
    than that fraction did."""
    if summary.unreadable:
        return 1, summary.unreadable[0] + (f" (and {len(summary.unreadable) - 1} more)" if len(summary.unreadable) > 1 else "")
    if summary.unwritten:
        return 1, (f"the metadata of {summary.unwritten} row(s) could not be written ({summary.unwritten_why}); free space "
                   "or fix access to --out and run again: finished rows are kept and skipped")
    errors, rows = summary.total("error"), summary.rows
    if rows and errors == rows:
        return 1, f"every row failed ({errors} rows); the commonest reason: {summary.example(summary.reasons.most_common(1)[0][0])}"
    if rows and errors / rows > max_error_fraction:
        return 1, f"{errors} of {rows} rows failed ({errors / rows:.1%}), more than --max-error-fraction {max_error_fraction}"
    return 0, ""
