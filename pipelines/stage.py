"""The batch-animation actor: one loaded AnimateDiff pipeline, many personalized checkpoints.

`__init__` loads the base, the motion module, VAE and tokenizer once per actor; `__call__(batch)`
runs each group of rows that share checkpoint and shape as one `generate` call, encodes the mp4 (and
GIF preview) itself and returns only metadata. Bad rows and checkpoints that fail to load become
`status="error"` rows; the batch always returns every row it was given.
"""

from __future__ import annotations

import json
import time

import pandas as pd
import torch

from animatediff_core.errors import AnimateDiffError
from animatediff_core.generate import Request, generate, validate_request
from animatediff_core.personalize import CheckpointSpec, Personalizer
from animatediff_core.pipeline import load_pipeline, max_frames
from animatediff_core import storage
from animatediff_core.video_io import write_gif, write_video
from pipelines.rows import SETTING_COLUMNS, fingerprint, settings_of, video_uri

METADATA_COLUMNS = ["motion_module", "checkpoint_uri", "video_uri", "gif_uri", "seconds", "bytes", "sha256", "skipped"]


def quiet_model_libraries() -> None:
    """No per-actor progress bars or optional-dependency notices in the job log."""
    from diffusers.utils import logging as dl
    from transformers.utils import logging as tl

    for lib in (dl, tl):
        lib.set_verbosity_error()
        lib.disable_progress_bar()


def with_types(batch: pd.DataFrame) -> pd.DataFrame:
    """Fixed column types, so blocks from different actors concatenate into one metadata table."""
    for col in ("video_uri", "gif_uri", "sha256", "error", "checkpoint_uri", "motion_module"):
        batch[col] = batch[col].fillna("").astype(str)
    batch["seconds"] = pd.to_numeric(batch["seconds"], errors="coerce").astype(float)
    batch["bytes"] = pd.to_numeric(batch["bytes"], errors="coerce").fillna(0).astype("int64")
    for col in ("seed", "num_frames", "height", "width", "steps", "fps"):
        batch[col] = pd.to_numeric(batch[col], errors="coerce").fillna(-1).astype("int64")
    batch["guidance_scale"] = pd.to_numeric(batch["guidance_scale"], errors="coerce").astype(float)
    batch["skipped"] = batch["skipped"].fillna(False).astype(bool)
    return batch


class AnimateStage:
    def __init__(self, base: str, motion_module: str, checkpoints: dict[str, CheckpointSpec], out: str,
                 gif: bool = True, dtype: str = "auto", threads: int = 1, max_batch: int | None = 8,
                 motion_norm: str | None = None):
        quiet_model_libraries()
        cuda = torch.cuda.is_available()
        torch.set_num_threads(threads)
        self.device = "cuda" if cuda else "cpu"
        dt = {"auto": torch.float16 if cuda else torch.float32, "float16": torch.float16,
              "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
        self.pipe = load_pipeline(base, motion_module, device=self.device, dtype=dt, motion_norm=motion_norm)
        self.motion_norm = motion_norm
        self.personalizer = Personalizer(self.pipe)
        self.limit = max_frames(self.pipe)
        # Rows per pipeline call. On CPU a batch of 8 measured 19% slower per video than one at a time
        # (bench/README.md), so CPU actors default to 1; GPUs gain from batching.
        max_batch = max_batch or (8 if cuda else 1)
        self.specs, self.out, self.gif, self.motion_module, self.max_batch = checkpoints, out, gif, motion_module, max_batch
        self.failed: dict[str, str] = {}  # checkpoint name -> why it could not load

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        batch = batch.reset_index(drop=True)
        batch["motion_module"] = self.motion_module
        batch["checkpoint_uri"] = [self.specs[c].uri or "" if c in self.specs else "" for c in batch["checkpoint"]]
        batch["skipped"] = batch["skipped"].fillna(False).astype(bool)
        pending = batch.index[batch["status"] == "pending"]
        for _, group in batch.loc[pending].groupby(["checkpoint", *SETTING_COLUMNS], sort=False):
            self._run_group(batch, group)
        return with_types(batch)

    def _run_group(self, batch: pd.DataFrame, group: pd.DataFrame) -> None:
        name = group["checkpoint"].iloc[0]
        if not self._activate(name):
            batch.loc[group.index, ["status", "error"]] = ["error", f"checkpoint {name!r} failed to load: {self.failed[name]}"]
            return
        ready = []
        for i, row in group.iterrows():
            req = Request(row["prompt"], row["negative_prompt"], int(row["seed"]), settings_of(row))
            try:
                validate_request(req, self.limit, self.pipe.vae_scale_factor)
                ready.append((i, req))
            except AnimateDiffError as e:
                batch.loc[i, ["status", "error"]] = ["error", str(e)]
        for start in range(0, len(ready), self.max_batch):
            chunk = ready[start : start + self.max_batch]
            t0 = time.time()
            try:
                videos = generate(self.pipe, [r for _, r in chunk])
            except Exception as e:  # one failed call (e.g. out of memory) fails its rows, not the job
                batch.loc[[i for i, _ in chunk], ["status", "error"]] = ["error", f"generation failed: {type(e).__name__}: {e}"]
                continue
            per_video = (time.time() - t0) / len(chunk)
            for (i, _), frames in zip(chunk, videos):
                self._write(batch, i, frames, per_video)

    def _activate(self, name: str) -> bool:
        if name in self.failed:
            return False
        try:
            self.personalizer.apply(self.specs[name])
            return True
        except AnimateDiffError as e:
            self.failed[name] = str(e)
            return False

    def _write(self, batch: pd.DataFrame, i: int, frames, gen_seconds: float) -> None:
        row = batch.loc[i].to_dict()
        t0 = time.time()
        uri = video_uri(self.out, row["checkpoint"], row["id"])
        num_bytes, sha256 = write_video(uri, frames, fps=int(row["fps"]))
        gif_uri = ""
        if self.gif:
            gif_uri = video_uri(self.out, row["checkpoint"], row["id"], "gif")
            write_gif(gif_uri, frames, fps=int(row["fps"]))
        meta = {"video_uri": uri, "gif_uri": gif_uri, "seconds": round(gen_seconds + time.time() - t0, 4),
                "bytes": num_bytes, "sha256": sha256}
        # The sidecar goes last: its presence means the video is complete and matches these settings.
        sidecar = {**meta, "fingerprint": fingerprint(row, self.motion_module, self.specs[row["checkpoint"]], self.motion_norm)}
        storage.write_bytes_atomic(video_uri(self.out, row["checkpoint"], row["id"], "json"), json.dumps(sidecar).encode())
        for k, v in meta.items():
            batch.at[i, k] = v
        batch.at[i, "status"] = "ok"
