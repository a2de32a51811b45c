"""The batch-animation actor: one loaded AnimateDiff pipeline, many personalized checkpoints and
motion modules, switched in place.

`__init__` loads the base, a motion module, VAE and tokenizer (and the IP-Adapter with its image encoder,
given --ip-adapter) once per actor; `__call__(batch)` runs each group of rows that share motion module,
checkpoint and shape as batched `generate` calls (on a CPU, one row per call, several calls at once on the
actor's streams: animatediff_core/sampling/streams.py), hands each video to a small writer pool (mp4, GIF, sidecar:
off the generation path), writes the batch's metadata shard, and returns the metadata rows. Nothing in one
row can fail another row or the actor: every exception becomes error rows for the rows it touched; bugs are
logged with their traceback.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import pandas as pd

from animatediff_core.device import setup_actor
from animatediff_core.errors import AnimateDiffError, CheckpointError, ConfigError
from animatediff_core.io import bounded, storage
from animatediff_core.io.bounded import ReadLimits
from animatediff_core.io.video_io import write_gif, write_png_frames, write_video
from animatediff_core.models.control_models import ControlModels
from animatediff_core.models.image_prompt import ImagePrompt
from animatediff_core.models.motion_formats import load_motion_adapter
from animatediff_core.models.numerics import apply_motion_norm, resolve
from animatediff_core.models.personalize import CheckpointSpec, Personalizer
from animatediff_core.models.pipeline import family, load_pipeline, read_unet_config
from animatediff_core.models.speed import OFF, SpeedOptions, apply_speed, weights_change
from animatediff_core.sampling.conditioning import read_inputs
from animatediff_core.sampling.generate import (
    Conditioning,
    GenerationSettings,
    Request,
    TimeUp,
    generate,
    shareable,
    uses_windows,
    validate_request,
)
from animatediff_core.sampling.long_video import ring_starts, window_starts
from animatediff_core.sampling.streams import Streams
from animatediff_core.sampling.streams import count as stream_count
from pipelines.animate import schema
from pipelines.animate.identity import fingerprint, image_prompt_id
from pipelines.animate.layout import OutputLayout
from pipelines.animate.limits import RowLimits
from pipelines.animate.report import shard_failed, write_shard
from pipelines.animate.sets import MotionSpec
from pipelines.ray_session import ActorOptions

log = logging.getLogger(__name__)


def _shape(config) -> tuple[bool, int]:
    """What a UNet's motion modules must share with a module swapped in: a mid block, the positions."""
    return bool(config.get("use_motion_mid_block")), int(config.get("motion_max_seq_length") or 0)


def batch_size(max_batch: int | None, cuda: bool) -> int:
    """Rows per pipeline call: `--max-batch` (default 8) on GPUs; 1 on CPU, where batching is slower and
    a row's frames must not depend on what else is in its call (byte-identical videos on CPU)."""
    if not cuda:
        if max_batch and max_batch > 1:
            log.info("--max-batch %d applies on GPUs; CPU actors run one row per call", max_batch)
        return 1
    return max_batch or 8


class AnimateStage:
    def __init__(self, base: str, motions: dict[str, MotionSpec], checkpoints: dict[str, CheckpointSpec],
                 layout: OutputLayout, run_id: str, gif: bool = True, frames_png: bool = False,
                 actors: ActorOptions = ActorOptions(), max_batch: int | None = None, streams: int | None = None,
                 writers: int = 2,
                 speed: SpeedOptions = OFF, limits: RowLimits = RowLimits(), reads: ReadLimits = ReadLimits(), progress=None,
                 image_prompt: tuple[str, str] | None = None):
        bounded.configure(reads)  # every read a row's cells cause, in this actor, within the job's limits
        self.row_timeout = limits.row_timeout
        placement = setup_actor(actors.precision, actors.threads)
        self.device, dtype = placement.device, placement.dtype
        cuda = self.device == "cuda"
        self.motions, self.specs, self.layout, self.run_id, self.gif = motions, checkpoints, layout, run_id, gif
        self.frames_png = frames_png
        self.base, self.dtype, self.speed = base, dtype, speed
        self.progress = progress  # the driver's progress tally (pipelines/progress.py), or None
        if speed.any:
            log.info("speed options: %s", speed)
        # The IP-Adapter and its encoder: read once, put into every pipeline _build makes (preflight checked the fit).
        self.image_prompt = ImagePrompt(*image_prompt, device=self.device, dtype=dtype) if image_prompt else None
        self.image_prompt_id = image_prompt_id(image_prompt)
        self._build(next(iter(motions.values())))
        # Rows per pipeline call: GPUs batch up to 8. CPU actors run one row per call: a batch of 8 measured 19%
        # slower per video (bench/README.md), and alone a row's bytes never depend on its neighbours.
        self.max_batch = batch_size(max_batch, cuda)
        self.streams = Streams(stream_count(streams, actors.threads, self.device), actors.threads)
        self.failed: dict[tuple[str, str], str] = {}  # (kind, name) -> why it could not load
        self.writers = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="animate-writer")
        self.text_limit = int(self.pipe.tokenizer.model_max_length)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        batch = schema.typed(batch.reset_index(drop=True))
        batch["checkpoint_uri"] = [self.specs[c].uri or "" if c in self.specs else "" for c in batch["checkpoint"]]
        batch["checkpoint_stack"] = [self.specs[c].stack if c in self.specs else "" for c in batch["checkpoint"]]
        batch["motion_module_uri"] = [self.motions[m].uri if m in self.motions else "" for m in batch["motion_module"]]
        pending = batch.index[batch["status"] == "pending"]
        writes = []
        for _, group in batch.loc[pending].groupby(schema.GROUP, sort=False):
            try:
                writes += self._run_group(batch, group)
            except Exception as e:  # a bug, not bad data: keep the traceback for whoever runs the job
                log.exception("internal error on %d row(s) of checkpoint %r", len(group), group["checkpoint"].iloc[0])
                self._fail(batch, group.index, f"internal error: {type(e).__name__}: {e}")
        sidecars = []
        for i, future in writes:
            try:
                meta, sidecar = future.result()
                for k, v in meta.items():
                    batch.at[i, k] = v
                batch.at[i, "status"] = "ok"
                sidecars.append((i, sidecar))
            except Exception as e:
                log.warning("writing row %s failed: %s: %s", batch.at[i, "id"], type(e).__name__, e)
                self._fail(batch, [i], f"writing the video failed: {type(e).__name__}: {str(e)[:300]}")
        batch.loc[batch["status"] == "pending", ["status", "error"]] = ["error", "internal error: row was not generated"]
        out = write_shard(batch, self.layout, self.run_id, source="actor")
        if shard_failed(out):  # no metadata on disk (a full disk): no sidecar either, so a rerun generates these rows
            return out
        # Sidecars go last, after the metadata: a sidecar means "finished" to reruns, so a process killed in
        # between leaves metadata without a sidecar (regenerated next run), never a finished row without metadata.
        for (i, _), done in zip(sidecars, self.writers.map(lambda item: self._write_sidecar(*item[1]), sidecars)):
            if done is not None:
                log.warning("sidecar of row %s not written (%s): a rerun regenerates it", batch.at[i, "id"], done)
        return out

    def _fail(self, batch: pd.DataFrame, index, message: str) -> None:
        log.info("error row(s) %s: %s", ", ".join(map(str, batch.loc[index, "id"][:5])), message)
        self._report({"error": len(index)})
        batch.loc[index, ["status", "error"]] = ["error", message]
        batch.loc[index, ["video_uri", "gif_uri", "sha256"]] = ""

    def _run_group(self, batch: pd.DataFrame, group: pd.DataFrame) -> list:
        first = group.iloc[0]
        lora_scale = float(first["motion_lora_scale"])
        for kind, name, activate in (("motion module", first["motion_module"], self._motion),
                                     ("checkpoint", first["checkpoint"], self._checkpoint),
                                     ("motion LoRA", first["motion_lora"],
                                      lambda uri: self.personalizer.apply_motion_lora(uri or None, lora_scale))):
            if not self._activate(kind, name, activate):
                self._fail(batch, group.index, f"{kind} {name!r} failed to load: {self.failed[(kind, name)]}")
                return []
        batch.loc[group.index, "vae"] = self.personalizer.vae
        ready = []
        for i, row in group.iterrows():
            req = Request(row["prompt"], row["negative_prompt"], int(row["seed"]), GenerationSettings(**schema.settings_of(row)))
            try:
                validate_request(req, self.limit, self.pipe.vae_scale_factor, family(self.pipe))
                ready.append((i, req))
                batch.at[i, "windows"] = self._windows(req.settings)
                batch.at[i, "prompt_truncated"] = self._too_long(req.prompt) or self._too_long(req.negative_prompt)
            except AnimateDiffError as e:
                self._fail(batch, [i], str(e))
        if ready:
            try:  # the group's rows share their control settings: read the inputs and load the models once
                conditioning = self._conditioning(ready[0][1].settings)
            except AnimateDiffError as e:
                self._fail(batch, [i for i, _ in ready], str(e))
                return []
            if conditioning is not None:
                ready = [(i, dataclasses.replace(r, conditioning=conditioning)) for i, r in ready]
        writes = []
        chunks = [ready[start : start + self.max_batch] for start in range(0, len(ready), self.max_batch)]
        shared = shareable(self.pipe, [r for _, r in ready])
        for chunk, (done, e) in zip(chunks, self.streams.map(self.pipe, self._sample, chunks, shared)):
            if isinstance(e, TimeUp):
                log.warning("%d row(s) ran past --row-timeout %gs: %s", len(chunk), self.row_timeout, e)
                self._fail(batch, [i for i, _ in chunk], f"the row ran past --row-timeout {self.row_timeout:g}s ({e}); "
                           "raise --row-timeout, or lower its frames, size or steps")
            elif e is not None:  # one failed call (e.g. out of memory) fails its rows, not the batch
                log.warning("generation failed for %d row(s): %s: %s", len(chunk), type(e).__name__, e)
                self._fail(batch, [i for i, _ in chunk], f"generation failed: {type(e).__name__}: {str(e)[:300]}")
            else:
                videos, seconds = done
                for (i, _), frames in zip(chunk, videos):
                    writes.append((i, self.writers.submit(self._write, batch.loc[i].to_dict(), frames, seconds / len(chunk))))
        return writes

    def _sample(self, pipe, chunk: list) -> tuple[list, float]:
        """One pipeline call for `chunk` on `pipe` (the actor's pipeline or a stream's view of it): the videos, and
        its seconds. Each row of the call gets --row-timeout seconds of sampling; past that the call stops."""
        t0 = time.time()
        videos = generate(pipe, [r for _, r in chunk], deadline=time.monotonic() + self.row_timeout * len(chunk))
        return videos, time.time() - t0

    def _conditioning(self, s) -> Conditioning | None:
        """The control inputs `s` names (ControlNet frames, keyframes, init video) with their models, and its
        image prompt encoded (once per actor while cached); None if none."""
        if s.ip_adapter_image and self.image_prompt is None:
            raise ConfigError("ip_adapter_image needs an IP-Adapter: run the job with --ip-adapter (and --image-encoder "
                              "unless image_encoder/ sits beside the adapter)")
        image = self.image_prompt.embeds(self.pipe, s.ip_adapter_image) if s.ip_adapter_image else None
        inputs = read_inputs(s)
        if inputs is None and image is None:
            return None
        return Conditioning(
            inputs=inputs, image=image,
            controlnet=self.controls.get("controlnet", s.control_model) if s.control_video else None,
            keyframe_model=self.controls.get("sparsectrl", s.keyframe_model) if s.keyframes else None)

    @property
    def limit(self) -> int:
        return int(self.pipe.unet.config["motion_max_seq_length"])

    def _windows(self, s) -> int:
        if not uses_windows(s, self.limit):
            return 1
        if s.context_loop:
            return len(ring_starts(s.num_frames, s.window(self.limit), s.context_stride))
        return len(window_starts(s.num_frames, s.window(self.limit), s.context_stride))

    def _too_long(self, text: str) -> bool:
        return bool(text) and len(text) >= self.text_limit - 2 and len(self.pipe.tokenizer(text).input_ids) > self.text_limit

    def _activate(self, kind: str, name: str, activate) -> bool:
        if (kind, name) in self.failed:
            return False
        try:
            activate(name)
            return True
        except AnimateDiffError as e:
            self.failed[(kind, name)] = str(e)
            log.warning("%s %r failed to load: %s", kind, name, e)
            return False

    def _checkpoint(self, name: str) -> None:
        self.personalizer.apply(self.specs[name])

    def _build(self, spec: MotionSpec) -> None:
        """Load the base with the motion module `spec`: the pipeline, its speed options, its personalizer."""
        self.pipe = load_pipeline(self.base, spec.uri, device=self.device, dtype=self.dtype, motion_norm=spec.norm)
        if self.image_prompt is not None:  # before the personalizer: its base copy leaves the adapter's layers out
            self.image_prompt.attach(self.pipe)
        apply_speed(self.pipe, self.speed)  # opt-in (--fuse-qkv, --channels-last, --compile, --vae-chunk): once per pipeline
        self.personalizer = Personalizer(self.pipe)
        self.motion = spec.name
        self.controls = ControlModels(read_unet_config(self.base), self.device, self.dtype,  # ControlNet / SparseCtrl, by URI
                                      motion_config=dict(self.pipe.unet.config))  # SparseCtrl files take its motion shape

    def _motion(self, name: str) -> None:
        """Swap the motion-module weights in place (the base stays loaded; personalization is kept). A module of
        another shape (v2's mid block against v1/v3, another length) needs another UNet: the pipeline is rebuilt."""
        if name == self.motion:
            return
        spec = self.motions[name]
        self.personalizer.apply_motion_lora(None)  # a motion LoRA belongs to the module it was trained on
        adapter = load_motion_adapter(spec.uri).to(dtype=self.pipe.unet.dtype)
        if _shape(adapter.config) != _shape(self.pipe.unet.config):
            log.info("motion module %r has another shape than %r (mid block, length): reloading the base for it", name, self.motion)
            self._build(spec)
            return
        with weights_change(self.pipe):  # the plain modules for the strict load; fused projections refilled after
            try:
                self.pipe.unet.load_motion_modules(adapter)
            except RuntimeError as e:
                raise CheckpointError(f"{spec.uri}: does not have the shape of the motion module loaded first "
                                      f"({str(e).splitlines()[0][:200]}); sweep modules of one version per job") from None
        numerics = resolve(spec.norm, adapter.config, family(self.pipe))  # what it records, or --motion-norm
        apply_motion_norm(self.pipe.unet, numerics.mode, numerics.version)
        self.motion = name
        log.info("motion module %r active", name)

    def _write(self, row: dict, frames, gen_seconds: float) -> dict:
        t0 = time.time()
        motion, ckpt, rid = row["motion_module"], row["checkpoint"], row["id"]
        uri = self.layout.video(motion, ckpt, rid)
        num_bytes, sha256 = write_video(uri, frames, fps=int(row["fps"]))
        gif_uri = ""
        if self.gif:
            gif_uri = self.layout.video(motion, ckpt, rid, "gif")
            write_gif(gif_uri, frames, fps=int(row["fps"]))
        if self.frames_png:
            write_png_frames(self.layout.frames(motion, ckpt, rid), frames)
        meta = {"video_uri": uri, "gif_uri": gif_uri, "seconds": round(gen_seconds + time.time() - t0, 4),
                "bytes": num_bytes, "sha256": sha256}
        # The sidecar is written after the batch's metadata shard: its presence means the video is complete,
        # matches these settings and has its metadata row.
        sidecar = {**meta, "fingerprint": fingerprint(row, self.motions[motion], self.specs[ckpt], self.image_prompt_id)}
        self._report({"ok": 1}, uri)
        return meta, (self.layout.sidecar(motion, ckpt, rid), json.dumps(sidecar).encode())

    def _report(self, counts: dict, first: str = "") -> None:
        if self.progress is not None:
            self.progress.add.remote(counts, first)  # fire and forget: display only

    @staticmethod
    def _write_sidecar(uri: str, data: bytes) -> str | None:
        try:
            storage.write_bytes_atomic(uri, data)
            return None
        except Exception as e:  # the row is in the metadata; without its sidecar a rerun regenerates it
            return f"{type(e).__name__}: {str(e)[:200]}"
