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

from animatediff_core import hub, storage
from animatediff_core.configs import check_fields, need, option
from animatediff_core.errors import CheckpointError
from animatediff_core.settings import PREPROCESSORS, SAMPLERS, WEIGHTINGS, CheckpointSpec, GenerationSettings
from animatediff_core.speed import FLAGS as SPEED_FLAGS, SpeedOptions
from pipelines import tables
from pipelines.ray_session import count_nodes, has_gpus, stage, worker_range
from pipelines.animate import schema
from pipelines.animate.layout import OutputLayout, new_run_id
from pipelines.animate.plan import MotionSpec, Plan, is_done, is_pending, mark_conflicts, plan_block, read_checkpoint_set, read_motion_set
from pipelines.animate.report import SHARD, Summary, drop_older_shards, write_index, write_shard
from pipelines.animate.resume import list_finished

log = logging.getLogger(__name__)
_GEN = GenerationSettings()
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
MOTION_NORMS = ("official", "diffusers")  # animatediff_core/numerics.py MODES (that module imports torch)
_SPEED = {f.name: f for f in dataclasses.fields(SpeedOptions)}


def _speed_option(name: str):
    """A job field for the speed option `name`: its default and help are SpeedOptions' (animatediff_core/speed.py)."""
    f = _SPEED[name]
    return option(f.default, **f.metadata)


@dataclass(frozen=True, kw_only=True)
class GenerationFlags:
    """How videos are generated and on what: the settings every job that generates shares (the batch
    job, the evaluation job), written once."""

    num_frames: int = option(_GEN.num_frames, help="frames per video (rows may override)")
    height: int = option(_GEN.height, help="pixels (rows may override)")
    width: int = option(_GEN.width, help="pixels (rows may override)")
    steps: int = option(_GEN.steps, help="sampler steps (rows may override)")
    guidance_scale: float = option(_GEN.guidance_scale, help="classifier-free guidance (rows may override)")
    fps: int = option(_GEN.fps, help="frames per second of the mp4/GIF (rows may override)")
    sampler: str = option(_GEN.sampler, choices=SAMPLERS, help="ddim: AnimateDiff's DDIM; euler_trailing: AnimateDiff-Lightning "
                          "(2/4/8 steps, guidance 1.0); lcm: AnimateLCM (4-8 steps, guidance 1-2) (rows may override)")
    context_length: int = option(_GEN.context_length, help="frames per context window when a clip is longer than the "
                                 "motion module (0: the module's length) (rows may override)")
    context_stride: int = option(_GEN.context_stride, help="frames between context-window starts (rows may override)")
    context_weighting: str = option(_GEN.context_weighting, choices=WEIGHTINGS, help="how overlapping windows are "
                                    "averaged (rows may override)")
    prompt_schedule: str = option(_GEN.prompt_schedule, help='prompt travel for every row: JSON {"frame": "prompt"} '
                                  "(rows may override)")
    free_init_iterations: int = option(_GEN.free_init_iterations, help="FreeInit sampling passes, 0: off; each pass "
                                       "costs one full sampling (rows may override)")
    motion_lora: str = option(_GEN.motion_lora, help="a motion LoRA file (official v2 camera-motion .ckpt or a jobs.train "
                              "--motion-lora file) stacked on every checkpoint (rows may override)")
    motion_lora_scale: float = option(_GEN.motion_lora_scale, help="the motion LoRA's weight (rows may override)")
    context_loop: bool = option(_GEN.context_loop, help="looping clips: context windows wrap from the last frame to the "
                                "first (rows may override)")
    control_video: str = option(_GEN.control_video, help="ControlNet reference video or image folder for every row "
                                "(rows may override)")
    control_model: str = option(_GEN.control_model, help="SD-1.x ControlNet (diffusers folder, single file or Hub id) "
                                "for rows with a control_video (rows may override)")
    control_scale: float = option(_GEN.control_scale, help="ControlNet / SparseCtrl conditioning scale (rows may override)")
    control_preprocess: str = option(_GEN.control_preprocess, choices=PREPROCESSORS, help="canny: Canny edges of the "
                                     "reference frames; none: they already are control images (rows may override)")
    keyframes: str = option(_GEN.keyframes, help='SparseCtrl keyframes for every row: an image URI or JSON {"frame": '
                            '"image URI"} (rows may override)')
    keyframe_model: str = option(_GEN.keyframe_model, help="SparseCtrl model (RGB or scribble; diffusers folder or Hub "
                                 "id) for rows with keyframes (rows may override)")
    init_video: str = option(_GEN.init_video, help="video-to-video input for every row (rows may override)")
    strength: float = option(_GEN.strength, help="video-to-video strength: 0 keeps the input, 1 ignores it (rows may override)")
    workers: int | str = option(1, help="actors, each holding one loaded pipeline: a count (4) or a range (2-16) "
                                        "for an autoscaling pool that grows with the queue")
    num_gpus_per_worker: float | None = option(None, help="default: 1 if the cluster has GPUs, else 0")
    cpus_per_worker: float = option(1.0, help="CPU actors only; leave a CPU for reading")
    torch_threads: int | None = option(None, help="CPU actors: torch threads (default: cpus_per_worker)")
    batch_size: int = option(8, help="rows per actor call")
    max_batch: int | None = option(None, help="rows per pipeline call (default 8 on GPU, 1 on CPU)")
    precision: str = option("auto", help="weights' precision (auto: fp16 on GPU, fp32 on CPU)", choices=PRECISIONS)
    gif: bool = option(True, help="write GIF previews beside the mp4s")
    motion_norm: str | None = option(None, choices=MOTION_NORMS, help="motion-module numerics: official (AnimateDiff's own "
                                     "function for the module's version) or diffusers; default: what the module records, else official")
    # Speed options (off by default; bench/gpu_job.py measures each on a GPU), applied once per actor.
    fuse_qkv: bool = _speed_option("fuse_qkv")
    channels_last: bool = _speed_option("channels_last")
    compile: bool = _speed_option("compile")
    compile_cache: str = _speed_option("compile_cache")
    vae_chunk: int = _speed_option("vae_chunk")

    def __post_init__(self):
        check_fields(self)
        self.speed  # noqa: B018  (checks the speed options' values: SpeedOptions.__post_init__)
        worker_range(self.workers)
        need(self.batch_size >= 1, f"batch_size must be >= 1, found {self.batch_size}")
        need(self.max_batch is None or self.max_batch >= 1, f"max_batch must be >= 1, found {self.max_batch}")
        need(self.cpus_per_worker > 0, f"cpus_per_worker must be > 0, found {self.cpus_per_worker}")

    @property
    def defaults(self) -> GenerationSettings:
        return GenerationSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(GenerationSettings)})

    @property
    def speed(self) -> SpeedOptions:
        return SpeedOptions(**{name: getattr(self, name) for name in SPEED_FLAGS})

    def generation_flags(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(GenerationFlags)}


@dataclass(frozen=True, kw_only=True)
class AnimateConfig(GenerationFlags):
    """The batch job's settings: the only place their names, types, defaults and help are written."""

    prompts: list[str] = option(help="prompt tables (.csv, .csv.gz, .parquet, or folders of them), any fsspec URI")
    base: str = option(help="diffusers SD-1.x folder or Hub id")
    motion_module: list[str] = option(help="motion module(s): MotionAdapter folders or original .safetensors/.ckpt "
                                           "files, folders of them, or a jobs.train run folder; several = a sweep")
    checkpoints: str | None = option(None, help="folder of .safetensors or a table (name, uri, [kind], [scale]); default: the base alone")
    out: str = option("outputs/animate", help="output folder or URI")
    max_error_fraction: float = option(1.0, help="exit non-zero when more than this fraction of rows failed "
                                                 "(1.0: only when every row failed)")

    def __post_init__(self):
        super().__post_init__()
        need(bool(self.prompts), "prompts: give at least one prompt table")
        need(bool(self.motion_module), "motion_module: give at least one motion module")
        need(0.0 <= self.max_error_fraction <= 1.0, f"max_error_fraction must be in [0, 1], found {self.max_error_fraction}")


@dataclass(frozen=True)
class Prepared:
    """What preflight established: every input exists and fits; the sets, the layout, the table files."""

    cfg: AnimateConfig
    files: list[str]
    checkpoints: dict[str, CheckpointSpec]
    motions: dict[str, MotionSpec]
    layout: OutputLayout


def preflight(cfg: AnimateConfig) -> Prepared:
    """Fail fast, with one line, when nothing can run: missing or unfit inputs, an unwritable output."""
    from animatediff_core.motion_formats import inspect_motion_module
    from animatediff_core.pipeline import read_unet_config

    files = [f for uri in cfg.prompts for f in tables.list_tables(uri, "--prompts")]
    has_rows = False
    for f in files:
        columns, rows = tables.header(f, "--prompts")
        need("prompt" in columns, f"--prompts {f}: no 'prompt' column (found {', '.join(columns) or 'none'})")
        has_rows = has_rows or rows
    need(has_rows, f"--prompts {' '.join(cfg.prompts)}: the table has no rows")
    checkpoints = read_checkpoint_set(cfg.checkpoints)
    try:
        unet_config = read_unet_config(cfg.base)
    except CheckpointError as e:
        raise CheckpointError(f"--base {e}") from None
    motions = {}
    for name, spec in read_motion_set(cfg.motion_module).items():
        try:
            frames = inspect_motion_module(spec.uri, unet_config)
        except CheckpointError as e:
            raise CheckpointError(f"--motion-module {e}") from None
        motions[name] = dataclasses.replace(spec, max_frames=frames, norm=cfg.motion_norm)
    for flag in ("control_video", "control_model", "keyframe_model", "init_video"):  # job-wide inputs: checked once here
        uri = getattr(cfg, flag)
        need(not uri or storage.exists(hub.resolve(uri)), f"--{flag.replace('_', '-')} {uri}: not found")
    layout = OutputLayout(cfg.out, by_motion=len(motions) > 1)
    storage.check_writable(cfg.out, "--out")
    log.info("planned: %d prompt table file(s), %d checkpoint(s) (%s), %d motion module(s) (%s)", len(files),
             len(checkpoints), ", ".join(checkpoints), len(motions), ", ".join(motions))
    return Prepared(cfg, files, checkpoints, motions, layout)


def _cell(v, nan_is_missing: bool = False):
    """Any cell -> text or None: prompt tables differ in types, and a hostile cell must not fail a block.
    NaN and inf stay visible ("nan"), so a row asking for them fails with a message instead of
    silently getting the default; only a missing cell (Arrow null) means "use the default"."""
    if v is None:
        return None
    if isinstance(v, float):
        if v != v:
            return None if nan_is_missing else "nan"
        return str(int(v)) if v.is_integer() and abs(v) < 2**63 else repr(v)
    if isinstance(v, (np.integer, np.floating, np.bool_)):
        return _cell(v.item(), nan_is_missing)
    if isinstance(v, (str, int, bool)):
        return str(v)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    try:
        return None if pd.isna(v) else str(v)
    except (TypeError, ValueError):  # lists, arrays: not a scalar cell
        return str(v)


def normalize(batch) -> pd.DataFrame:
    """A prompt-table block -> the schema's readable columns, all text (rows parse them later).

    From Arrow (the job), nulls are missing and NaN is a value; from pandas (which cannot tell them
    apart), NaN is missing."""
    import pyarrow as pa

    if isinstance(batch, pa.Table):
        names, n = batch.column_names, batch.num_rows
        return pd.DataFrame({c: [_cell(v) for v in batch.column(c).to_pylist()] if c in names else [None] * n
                             for c in schema.READ})
    n = len(batch)
    return pd.DataFrame({c: [_cell(v, True) for v in batch[c]] if c in batch.columns else [None] * n for c in schema.READ})


PLAN_BLOCK_ROWS = 20_000  # rows per planning task: a big single-file table still plans on every core


def read_prompts(files: list[str]):
    ds = tables.read_ray(files, strings=tuple(schema.READ))
    return ds.repartition(target_num_rows_per_block=PLAN_BLOCK_ROWS).map_batches(normalize, batch_format="pyarrow")


def find_conflicts(planned) -> tuple[dict[int, dict[int, str]], int]:
    """Output slots (motion module, checkpoint, id) that rows with different content claim, with the
    prompts that claim each (their rows become error rows naming the other row), and the number of
    rows to generate. One pass over three small columns of the plan (~17 bytes a row), and a second
    over the plan only when conflicts exist."""
    slots, contents, pending = [], [], 0
    for b in planned.select_columns(["_slot", "_content", "_pending"]).iter_batches(batch_format="numpy", batch_size=100_000):
        slots.append(b["_slot"])
        contents.append(b["_content"])
        pending += int(b["_pending"].sum())
    if not slots:
        return {}, 0
    pairs = np.unique(np.stack([np.concatenate(slots), np.concatenate(contents)], axis=1), axis=0)
    slot_values, counts = np.unique(pairs[:, 0], return_counts=True)
    bad = set(slot_values[counts > 1].tolist())
    if not bad:
        return {}, pending
    claims: dict[int, dict[int, str]] = {}
    hits = planned.map_batches(lambda b: b[b["_slot"].isin(bad)][["_slot", "_content", "prompt"]], batch_format="pandas")
    for b in hits.iter_batches(batch_format="pandas", batch_size=None):
        for slot, content, prompt in zip(b["_slot"], b["_content"], b["prompt"]):
            claims.setdefault(int(slot), {}).setdefault(int(content), str(prompt)[:60])
    return claims, pending


@dataclass
class Result:
    summary: Summary
    seconds: float
    index: str
    run_id: str


def run_animate(prep: Prepared) -> Result:
    """Run the planned job; metadata is written as it is produced. Ray must be initialized."""
    prep = stage_models(prep, count_nodes())
    cfg, layout = prep.cfg, prep.layout
    start, run_id = time.time(), new_run_id()
    plan = Plan(tuple(prep.checkpoints), {n: m.max_frames for n, m in prep.motions.items()}, cfg.defaults)
    finished = list_finished(layout, list(prep.motions), list(prep.checkpoints))
    planned = read_prompts(prep.files).map_batches(
        plan_block, batch_format="pandas",
        fn_kwargs=dict(plan=plan, finished=finished, layout=layout, motions=prep.motions, specs=prep.checkpoints),
    ).materialize()
    conflicts, pending = find_conflicts(planned)
    if conflicts:
        log.warning("%d output slot(s) claimed by rows with different content: those rows become error rows", len(conflicts))
        planned = planned.map_batches(mark_conflicts, batch_format="pandas", fn_kwargs={"conflicts": conflicts})
    planned = planned.drop_columns(["_slot", "_content", "_pending"])
    done = planned.map_batches(is_done, batch_format="pandas").map_batches(
        write_shard, batch_format="pandas", fn_kwargs={"layout": layout, "run_id": run_id})
    log.info("%d row(s) to generate", pending)
    if pending:  # no actor (and no model load) for a plan with nothing to generate
        done = done.union(_generation(planned, prep, layout, run_id))
    summary, received = Summary(), set()
    for batch in done.iter_batches(batch_format="pandas", batch_size=None):
        summary.add(batch)
        received.update(batch[SHARD].unique())
    seconds = time.time() - start
    index = write_index(summary, layout)
    dropped = drop_older_shards(layout, run_id, received)
    log.info("run %s: %d rows, %d ok, %d error, %d skipped in %.1fs%s", run_id, summary.rows, summary.total("ok"),
             summary.total("error"), summary.total("skipped"), seconds,
             f"; {dropped} metadata shard(s) of earlier runs (or of batches retried after an actor died) removed" if dropped else "")
    return Result(summary, seconds, index, run_id)


def _generation(planned, prep: Prepared, layout: OutputLayout, run_id: str):
    """The pending rows through the actor pool (one loaded pipeline per actor, GPU-pinned where GPUs exist)."""
    import ray

    cfg = prep.cfg
    todo = planned.map_batches(is_pending, batch_format="pandas")
    low, high = worker_range(cfg.workers)
    gpu = cfg.num_gpus_per_worker if cfg.num_gpus_per_worker is not None else (1.0 if has_gpus() else 0.0)
    from pipelines.animate.stage import AnimateStage  # the model stack: imported by the actors, not the planners

    return todo.map_batches(
        AnimateStage,
        fn_constructor_kwargs=dict(base=cfg.base, motions=prep.motions, checkpoints=prep.checkpoints, layout=layout,
                                   run_id=run_id, gif=cfg.gif, precision=cfg.precision, max_batch=cfg.max_batch,
                                   threads=cfg.torch_threads or max(1, int(cfg.cpus_per_worker)), speed=cfg.speed),
        batch_format="pandas",
        batch_size=cfg.batch_size,
        compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high),
        num_gpus=gpu or None,
        num_cpus=1 if gpu else cfg.cpus_per_worker,
        # Ray Data's actor pools default to max_restarts=-1 and max_task_retries=-1: a dead actor (node lost,
        # OOM-killed) is restarted and its in-flight batch retried; its shard name makes the retry idempotent.
    )


def stage_models(prep: Prepared, nodes: int) -> Prepared:
    """`prep` with base, motion modules and checkpoints at URIs every node can read: driver-local files
    on a multi-node cluster are staged under `--out` (pipelines/ray_session.py). Rows' fingerprints then
    name the staged copies, whose names are stable for unchanged files, so a rerun skips finished rows."""
    root = prep.cfg.out
    motions = {n: dataclasses.replace(m, uri=stage(m.uri, "--motion-module", root, nodes)) for n, m in prep.motions.items()}
    checkpoints = {n: dataclasses.replace(c, uri=stage(c.uri, "--checkpoints", root, nodes)) for n, c in prep.checkpoints.items()}
    cfg = dataclasses.replace(prep.cfg, base=stage(prep.cfg.base, "--base", root, nodes))
    return dataclasses.replace(prep, cfg=cfg, motions=motions, checkpoints=checkpoints)


def exit_code(summary: Summary, max_error_fraction: float) -> tuple[int, str]:
    """0 when the failures are within `max_error_fraction`; 1 with one line when every row failed or
    more than that fraction did."""
    errors, rows = summary.total("error"), summary.rows
    if rows and errors == rows:
        return 1, f"every row failed ({errors} rows); the commonest reason: {summary.reasons.most_common(1)[0][0]}"
    if rows and errors / rows > max_error_fraction:
        return 1, f"{errors} of {rows} rows failed ({errors / rows:.1%}), more than --max-error-fraction {max_error_fraction}"
    return 0, ""
