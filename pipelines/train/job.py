"""Data-parallel motion-module training on Ray: Ray Data decodes clips, Ray Train's TorchTrainer trains.

    table or shards (any fsspec URI) --read, spans, --where--> clip rows --ClipDecoder actors (CPU)--> small uint8 clips
        --streaming_split--> N TorchTrainer workers (one per GPU; gloo on CPU) --> checkpoints, metrics

Run folder `{storage}/{name}/`:
  checkpoint-000500/   motion_adapter/ (diffusers), motion_module.safetensors (original keys) or, in
                       motion LoRA mode, motion_lora.safetensors; training_state.pt; train_config.json
  validation/step-000500/NN.gif   the fixed prompt list sampled from the weights at that step
  metrics.jsonl        one object per step (step, loss, lr, clips_per_s, data_wait_fraction, skipped_videos,
                       and `where` {kept, dropped} under --where)
  skipped.parquet      each skipped video or span by name and reason (a resumed run does not fetch them again)
Rerunning with the same storage and name resumes from the latest checkpoint (`resume=True`);
without it an existing run is refused rather than silently continued.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace

import ray
import ray.train
from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from animatediff_core.configs import need
from animatediff_core.errors import AnimateDiffError
from animatediff_core.io import storage
from animatediff_core.models.pipeline import check_base_folder, read_unet_config
from animatediff_core.training.trainer import TrainConfig
from pipelines import progress, run_folder
from pipelines.ray_session import has_gpus
from pipelines.run_folder import list_checkpoints
from pipelines.train.config import TrainRun
from pipelines.train.decode import ClipDecoder, read_skipped, start_tally, write_skipped
from pipelines.train.loop import CONFIG_ERROR, WorkerPlan, train_worker
from pipelines.train.sources import DataSource, check_tables, describe, find_source, read_rows


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSummary:
    steps: int
    loss: float | None
    checkpoint: str | None
    run_dir: str
    skipped_videos: dict
    seconds: float
    resumed_from: int | None


@dataclass(frozen=True)
class TrainPlan:
    """What `check_run` established: the data, the final config, the step resumed from (None: fresh)."""

    source: DataSource
    cfg: TrainConfig
    resumed_from: int | None


def check_run(run: TrainRun, cfg: TrainConfig) -> TrainPlan:
    """Validate everything the driver can see before Ray or any worker starts: one clear error each.

    Precomputed latents (jobs.ingest) fix num_frames, size and stride: the plan's config takes theirs.
    """
    cfg.validate()
    check_base_folder(run.base)
    need(not run.motion_module or storage.exists(run.motion_module), f"--motion-module {run.motion_module}: not found")
    need(not cfg.motion_lora_rank or run.motion_module, "--motion-lora trains LoRA adapters on an existing motion module: give --motion-module")
    source = find_source(run.data, run.source)
    if source.kind == "latents":
        cfg = latents_config(source, cfg, run.base)
    else:
        check_tables(source)
    storage.check_writable(run.storage, "--storage")
    done = list_checkpoints(run.run_dir)
    need(not done or run.resume, f"run folder {run.run_dir} already has checkpoints (latest {max(done or [0])}); "
                                 "pass --resume to continue it or choose another --name")
    need(done or not run.resume, f"--resume: no checkpoint in {run.run_dir} to resume from")
    need(not done or max(done) < cfg.max_steps, f"--max-steps {cfg.max_steps}: {run.run_dir} is already at step "
                                                f"{max(done or [0])}; raise --max-steps to train further")
    return TrainPlan(source, cfg, max(done) if done else None)


def latents_config(source: DataSource, cfg: TrainConfig, base: str) -> TrainConfig:
    """Precomputed latents fix the clip shape: take num_frames/size/stride from the ingest metadata."""
    meta = source.meta
    for key in ("latent_shape", "text_shape", "num_frames", "size", "stride"):
        need(key in meta, f"--data {source.uri}: ingest metadata lacks {key!r}; re-run jobs.ingest")
    unet = read_unet_config(base)
    found = (meta["latent_shape"][0], meta["text_shape"][-1])
    need(found == (unet["in_channels"], unet["cross_attention_dim"]), f"--data {source.uri}: latents/text embeddings of {found[0]} channels / {found[1]} dims do not "
                          f"fit this base's UNet ({unet['in_channels']} / {unet['cross_attention_dim']}); ingest with this --base")
    return replace(cfg, num_frames=int(meta["num_frames"]), size=int(meta["size"]), stride=int(meta["stride"]))


def build_dataset(source: DataSource, cfg: TrainConfig, run: TrainRun, tally=None) -> "ray.data.Dataset":
    """Rows for the trainer: decoded clips of usable videos (skips counted in `tally`) or precomputed
    latents (jobs.ingest output)."""
    if source.kind == "latents":
        path, arrow_fs = storage.arrow_location(source.uri)
        # `_`-named files (`_skipped.parquet`) are the ingest's records, not rows: Ray's path filter leaves them out.
        return ray.data.read_parquet(path, filesystem=arrow_fs, file_extensions=["parquet"],
                                     columns=["videoid", "caption", "latents", "text_embedding"],
                                     num_cpus=run.decode_cpus)
    rows = read_rows(source, num_cpus=run.decode_cpus, tally=tally)
    return rows.map_batches(ClipDecoder, fn_constructor_args=(cfg.clip_config(num_threads=1), tally),
                            batch_format="pandas", batch_size=4, num_cpus=run.decode_cpus,
                            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=run.decoders))


def build_trainer(run: TrainRun, cfg: TrainConfig, source: DataSource, tally=None, progress=None) -> TorchTrainer:
    use_gpu = has_gpus()
    cpus = run.cpus_per_worker or (1.0 if use_gpu else 0.5)
    run = replace(run, cpus_per_worker=cpus)
    path, arrow_fs = storage.arrow_location(run.storage)
    return TorchTrainer(
        train_worker,
        train_loop_config={"plan": WorkerPlan(run, cfg, "latents" if source.kind == "latents" else "clips", source.meta, tally,
                                              progress)},
        scaling_config=ScalingConfig(num_workers=run.workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpus, **({"GPU": 1} if use_gpu else {})}),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        datasets={"train": build_dataset(source, cfg, run, tally)},
        run_config=RunConfig(
            name=run.name,
            storage_path=path,
            storage_filesystem=arrow_fs,
            checkpoint_config=CheckpointConfig(num_to_keep=None),
            failure_config=FailureConfig(max_failures=run.max_failures),
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )


def train(run: TrainRun, plan: TrainPlan) -> TrainSummary:
    """Train as planned by `check_run`, then summarize. Ray must be initialized (the job does it).

    A run that still fails after `max_failures` worker-group restarts raises AnimateDiffError with
    the causing worker's error in one line (`_worker_error`); so does, at once and without restarts, a run whose data
    gave no usable clip in a whole pass (with the skip counts by reason).
    """
    start = time.time()
    known = read_skipped(run_folder.skipped(run.run_dir)) if plan.resumed_from is not None else []
    tally = start_tally({} if known else _skips_at(run.run_dir, plan.resumed_from), known)
    counter = progress.tally()
    if plan.source.kind != "latents":
        log.info(describe(plan.source))
    try:
        with progress.Progress("training", plan.cfg.max_steps, unit="steps", noun="steps", tally=counter,
                               done=plan.resumed_from or 0):
            result = build_trainer(run, plan.cfg, plan.source, tally, counter).fit()
    except ray.train.TrainingFailedError as e:
        raise AnimateDiffError(f"training failed after {run.max_failures} restart(s): {_worker_error(e)}") from None
    if (result.metrics or {}).get(CONFIG_ERROR):  # never retried: a restart would fail the same way
        raise AnimateDiffError(result.metrics[CONFIG_ERROR])
    named = write_skipped(tally, run_folder.skipped(run.run_dir))
    where = ray.get(tally.where_counts.remote())
    if plan.source.where is not None:
        log.info("--where %r kept %d and dropped %d rows (clips) of the last pass", plan.source.where.text,
                 where["kept"], where["dropped"])
    if named:
        log.info("skipped %d videos or spans, each named with its reason in %s", named, run_folder.skipped(run.run_dir))
    done = list_checkpoints(run.run_dir)
    last = _last_metrics(run_folder.metrics(run.run_dir))
    if int(last.get("step", 0)) < plan.cfg.max_steps:  # the workers stop short only when the data gave no clip
        counts = ", ".join(f"{k} {v}" for k, v in sorted(ray.get(tally.totals.remote()).items())) or "none counted"
        raise AnimateDiffError(f"--data {run.data}: a whole pass over the data gave no usable clip "
                               f"(skipped videos by reason: {counts}); fix the table or the videos it names")
    return TrainSummary(steps=int(last.get("step", 0)), loss=last.get("loss"),
                        checkpoint=done[max(done)] if done else None, run_dir=run.run_dir,
                        skipped_videos=last.get("skipped_videos", {}), seconds=time.time() - start,
                        resumed_from=plan.resumed_from)


# A collective (gloo, NCCL) whose peer died fails with one of these on every surviving worker: the
# peer's own error is the cause an operator needs, so it is reported first.
_PEER_LOST = ("closed by peer", "reset by peer", "broken pipe", "remote process exited", "communicator was aborted")


def _worker_error(e: Exception) -> str:
    """The last line of one worker's error (its exception type and message), else of `e`: the lowest rank
    whose error is not a collective losing its peer, else the lowest rank's; with how many workers failed."""
    failures = getattr(e, "worker_failures", None) or {}
    last = {rank: _last_line(failures[rank]) for rank in sorted(failures)} or {None: _last_line(e)}
    rank = next((r for r, line in last.items() if not any(k in line.lower() for k in _PEER_LOST)), next(iter(last)))
    if len(last) < 2:
        return last[rank]
    return f"worker {rank}: {last[rank]} ({len(last)} workers failed; the others: {_others(last, rank)})"


def _last_line(cause: BaseException) -> str:
    lines = [ln.strip() for ln in str(cause).splitlines() if ln.strip()]
    return lines[-1][:500] if lines else type(cause).__name__


def _others(last: dict, rank) -> str:
    return "; ".join(f"worker {r}: {line[:120]}" for r, line in last.items() if r != rank)


def _skips_at(run_dir: str, step: int | None) -> dict:
    """Skip counts recorded in a checkpoint's train_config.json, so resumed runs keep counting."""
    if step is None:
        return {}
    info = json.loads(storage.read_bytes(storage.join(list_checkpoints(run_dir)[step], "train_config.json")))
    return dict(info.get("extra", {}).get("skipped_videos", {}))


def _last_metrics(uri: str) -> dict:
    if not storage.exists(uri):
        return {}
    lines = [ln for ln in storage.read_bytes(uri).decode().splitlines() if ln.strip()]
    return json.loads(lines[-1]) if lines else {}
