"""The Ray Train worker loop: one `MotionTrainer` per worker, batches from this worker's dataset shard.

Ray Train V2 restarts the whole worker group after a failure and runs `train_worker` again from the
top, so it always starts by loading `ray.train.get_checkpoint()` (the latest committed checkpoint of
this run, also after a driver restart with the same storage path and run name).

Per step, every worker pulls rows from its shard until it holds `batch_size` clips (bad videos were
dropped and counted before the split, see `pipelines/train/decode.py`). One small all-reduce then agrees
whether any worker ran out of rows; if one did, all start the next epoch together, because a new
epoch of a streaming split starts only when every worker asks for it (and the others would
otherwise wait for it in the gradient all-reduce).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from ray.train import Checkpoint, CheckpointUploadMode

from animatediff_core.device import quiet_model_libraries
from animatediff_core.errors import CheckpointError, ConfigError
from animatediff_core.io import storage
from animatediff_core.io.video_io import write_gif
from animatediff_core.models.motion_formats import load_motion_adapter
from animatediff_core.models.pipeline import load_base
from animatediff_core.training.trainer import Batch, MotionTrainer, TrainConfig, step_generator
from pipelines import run_folder
from pipelines.run_folder import checkpoint_name
from pipelines.train.config import TrainRun
from pipelines.train.decode import clip_array, write_skipped


class ClipStream:
    """This worker's dataset shard as lists of `batch_size` rows.

    Rows left over when an epoch ends are kept for the next, so a dataset smaller than one global
    batch still trains (its clips come back with new random offsets each epoch).
    """

    def __init__(self, shard, batch_size: int):
        self.shard, self.batch_size = shard, batch_size
        self.rows_in_epoch, self.epoch = 0, 0
        self._rows, self._ready, self._joined = None, [], False

    def _iter_rows(self):
        for batch in self.shard.iter_batches(batch_size=self.batch_size, batch_format="numpy", prefetch_batches=2):
            for i in range(len(next(iter(batch.values())))):
                yield {k: v[i] for k, v in batch.items()}

    def fill(self) -> bool:
        """Pull rows until `batch_size` are held; False when this epoch's shard ran out first.

        Pulls at least one row per epoch even when already full: an epoch of a streaming split starts
        only once every worker has asked for it.
        """
        while len(self._ready) < self.batch_size or not self._joined:
            if self._rows is None:
                self._rows = self._iter_rows()
            row, self._joined = next(self._rows, None), True
            if row is None:
                return len(self._ready) >= self.batch_size
            self._ready.append(row)
            self.rows_in_epoch += 1
        return True

    def take(self) -> list[dict]:
        rows, self._ready = self._ready[: self.batch_size], self._ready[self.batch_size:]
        return rows

    def next_epoch(self) -> None:
        if self._rows is not None:
            self._rows.close()
        self._rows, self._joined = None, False
        self.rows_in_epoch, self.epoch = 0, self.epoch + 1


@dataclass(frozen=True)
class WorkerPlan:
    """What every training worker is given (Ray Train's `train_loop_config` is `{"plan": WorkerPlan}`)."""

    run: "TrainRun"
    cfg: TrainConfig
    kind: str  # "clips" (decoded by the ClipDecoder stage) or "latents" (a jobs.ingest folder)
    meta: dict | None = None  # jobs.ingest metadata (shapes) for kind "latents"
    tally: object = None  # the SkipTally actor, or None
    progress: object = None  # the driver's progress tally (pipelines/progress.py), or None


class NoUsableClips(Exception):
    """A whole pass over the data gave no clip on any worker: a data problem, which restarts cannot fix."""


def next_rows(stream: ClipStream) -> list[dict]:
    """The next batch of rows for this worker, in step with the other workers (see module doc)."""
    while True:
        ready = stream.fill()
        vec = torch.tensor([0.0 if ready else 1.0, float(stream.rows_in_epoch)])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(vec)
        if vec[0] == 0:
            return stream.take()
        if vec[1] == 0:  # every worker sees the same sums: all stop together
            raise NoUsableClips()
        stream.next_epoch()


def rows_to_batch(rows: list[dict], cfg: TrainConfig, kind: str, meta: dict | None) -> Batch:
    """Rows from the decode stage (`clip` bytes) or from jobs.ingest (`latents`, `text_embedding`) -> Batch."""
    if kind == "latents":
        lat = [np.frombuffer(r["latents"], np.float16).reshape(meta["latent_shape"]) for r in rows]
        txt = [np.frombuffer(r["text_embedding"], np.float16).reshape(meta["text_shape"]) for r in rows]
        return Batch(latents=torch.from_numpy(np.stack(lat)).float(), text_embeddings=torch.from_numpy(np.stack(txt)).float())
    clip_cfg = cfg.clip_config()
    frames = np.stack([clip_array(r["clip"], clip_cfg) for r in rows])
    return Batch(captions=[str(r["caption"]) for r in rows], frames=torch.from_numpy(frames))


class MetricsLog:
    """`metrics.jsonl` in the run folder, one object per step. A local file is appended line by line;
    on object stores (no append) the whole file is rewritten at each `flush` (checkpoints, end)."""

    def __init__(self, uri: str, keep_until_step: int):
        self.uri, self.local = uri, storage.is_local(uri)
        old = storage.read_bytes(uri).decode().splitlines() if storage.exists(uri) else []
        # Steps after the checkpoint being resumed were lost with the failed attempt: they run again.
        self.lines = [ln for ln in old if ln.strip() and json.loads(ln)["step"] <= keep_until_step]
        storage.write_text_atomic(uri, "".join(ln + "\n" for ln in self.lines))

    def append(self, record: dict) -> None:
        line = json.dumps(record)
        self.lines.append(line)
        if self.local:
            with open(storage.fs_and_path(self.uri)[1], "a") as f:
                f.write(line + "\n")

    def flush(self) -> None:
        if not self.local:
            storage.write_text_atomic(self.uri, "".join(ln + "\n" for ln in self.lines))


def build(plan: WorkerPlan, device: torch.device) -> MotionTrainer:
    """The trainer, restored from the run's latest checkpoint when there is one."""
    run, cfg = plan.run, plan.cfg
    adapter = load_motion_adapter(run.motion_module) if run.motion_module else None
    trainer = MotionTrainer(load_base(run.base), cfg, adapter, device=device)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as local:
            trainer.load_checkpoint(local)
    return trainer


def validate(trainer: MotionTrainer, run_dir: str) -> None:
    """GIFs of the fixed prompt list from the current weights, beside the checkpoints."""
    folder = run_folder.validation(run_dir, trainer.step)
    prompts = list(trainer.cfg.validation_prompts)
    for i, frames in enumerate(trainer.sample(prompts, seed=trainer.cfg.seed)):
        write_gif(storage.join(folder, f"{i:02d}.gif"), frames, fps=8)
    storage.write_text_atomic(storage.join(folder, "prompts.json"), json.dumps(prompts, indent=2))


def report_checkpoint(trainer: MotionTrainer, metrics: dict, extra: dict, rank: int) -> None:
    """ray.train.report on every worker (it is a barrier); rank 0 attaches the checkpoint, uploaded
    asynchronously so training goes on while it is copied to storage."""
    ckpt = None
    if rank == 0:
        local = tempfile.mkdtemp(prefix="animatediff-ckpt-")  # Ray deletes it after the upload
        trainer.save_checkpoint(local, extra)
        ckpt = Checkpoint.from_directory(local)
    ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=checkpoint_name(trainer.step),
                     checkpoint_upload_mode=CheckpointUploadMode.ASYNC)


def mean_over_workers(value: float) -> float:
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / dist.get_world_size()


def _data_counts(tally) -> dict:
    """The run's skip counts (and `--where`'s kept and dropped rows); empty (with a warning) if the tally is
    gone: counts are metrics, not training."""
    if tally is None:
        return {"skipped_videos": {}}
    try:
        return ray.get(tally.summary.remote())
    except ray.exceptions.RayActorError as e:
        _say(f"skip counts unavailable: {type(e).__name__}")
        return {"skipped_videos": {}}


CONFIG_ERROR = "config_error"  # the metric a worker reports instead of raising a configuration error


def train_worker(config: dict) -> None:
    """`train_loop_per_worker` of the TorchTrainer; `config` is `{"plan": WorkerPlan}`.

    A configuration error (a setting the model cannot take, a checkpoint that does not load) fails the
    same way on every attempt, so it is reported (`CONFIG_ERROR`, read by the driver after `fit`) and the
    worker ends normally: Ray Train restarts the worker group (`--max-failures`) only for what a restart
    can fix (a lost node, a killed worker)."""
    try:
        _train(config["plan"])
    except (ConfigError, CheckpointError) as e:
        ray.train.report({CONFIG_ERROR: str(e)[:500]})


def _train(plan: WorkerPlan) -> None:
    run, cfg = plan.run, plan.cfg
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    quiet_model_libraries()
    if os.environ.get("ANIMATEDIFF_LOG_LEVEL") != "DEBUG":  # Ray Train logs each report at INFO on the console
        for name in ("ray.train", ""):
            logging.getLogger(name).setLevel(logging.WARNING)
    if device.type == "cpu":
        torch.set_num_threads(run.torch_threads)
    trainer = build(plan, device)
    if world > 1:
        trainer.model = ray.train.torch.prepare_model(trainer.unet, move_to_device=False)
    tally = plan.tally
    log = MetricsLog(run_folder.metrics(run.run_dir), trainer.step) if rank == 0 else None
    if rank == 0 and trainer.step:
        _say(f"resuming from {checkpoint_name(trainer.step)} (step {trainer.step})")
    stream = ClipStream(ray.train.get_dataset_shard("train"), cfg.batch_size)
    while trainer.step < cfg.max_steps:
        t0 = time.perf_counter()
        try:
            rows = next_rows(stream)
        except NoUsableClips:
            # End normally, so Ray Train does not restart the workers for a data error: the driver sees
            # the run stopped short of max_steps and reports it with the skip counts.
            if rank == 0:
                _say(f"stopping at step {trainer.step}: a whole pass over the data gave no usable clip")
            return
        waited = time.perf_counter() - t0
        result = trainer.train_step(rows_to_batch(rows, cfg, plan.kind, plan.meta),
                                    step_generator(cfg.seed, rank, trainer.step))
        loss = mean_over_workers(result.loss)
        elapsed = time.perf_counter() - t0
        counts = _data_counts(tally) if rank == 0 else {"skipped_videos": {}}
        record = {"step": trainer.step, "loss": loss, "lr": result.lr, "grad_norm": result.grad_norm,
                  "clips_per_s": cfg.batch_size * world / elapsed, "data_wait_fraction": waited / elapsed,
                  **counts, "epoch": stream.epoch, "time": time.time()}
        if rank == 0:
            log.append(record)
            if plan.progress is not None:  # the driver prints the progress line (fire and forget)
                plan.progress.add.remote({"ok": 1}, "", progress_note(record))
            if cfg.validate_every and trainer.step % cfg.validate_every == 0:
                validate(trainer, run.run_dir)
        if trainer.step % cfg.checkpoint_every == 0 or trainer.step == cfg.max_steps:
            if rank == 0:
                log.flush()
                _write_skipped(tally, run.run_dir)
            report_checkpoint(trainer, {k: v for k, v in record.items() if k not in ("skipped_videos", "where")},
                              {"skipped_videos": record["skipped_videos"]}, rank)


def _write_skipped(tally, run_dir: str) -> None:
    """skipped.parquet beside the checkpoints: a resumed run neither fetches nor counts these again."""
    if tally is None:
        return
    try:
        write_skipped(tally, run_folder.skipped(run_dir))
    except ray.exceptions.RayActorError as e:
        _say(f"skipped videos unavailable: {type(e).__name__}")


def _say(line: str) -> None:
    """One line to the driver's console. Not print(): Ray Train reroutes print through logging."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def progress_note(r: dict) -> str:
    """What the driver's progress line adds after steps done / total and time left."""
    skipped = sum(r["skipped_videos"].values())
    return (f"loss {r['loss']:.4f}, lr {r['lr']:.1e}, {r['clips_per_s']:.2f} clips/s, "
            f"data wait {100 * r['data_wait_fraction']:.0f}%, skipped videos {skipped}")
