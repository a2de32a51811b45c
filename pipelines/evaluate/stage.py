"""The metrics actor: one loaded CLIP, many videos per call, all their frames through CLIP in batches.

`__init__` loads CLIP (and RAFT, VBench's networks and I3D, when given) once per actor (on the GPU where
the actor has one); `__call__(batch)` decodes each of the batch's videos once (and its still), calls
`metrics.score_videos` once (with the reference images of rows with an image prompt), `vbench.score_video` per video and I3D on the videos long enough for FVD,
and returns the rows with the metric columns (and, with I3D, `i3d_features`: the FVD features, a list
of floats, empty where none). A video that failed to generate keeps NaN metrics; one that cannot be decoded gets a
`metrics_error` and NaN metrics. Every row given comes back.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from animatediff_core.device import setup_actor
from animatediff_core.errors import AnimateDiffError
from animatediff_core.io import bounded
from animatediff_core.io.bounded import ReadLimits
from animatediff_core.io.video_io import read_video
from animatediff_core.metrics import flow, fvd, vbench
from animatediff_core.metrics import i3d as i3d_net
from animatediff_core.metrics import scores as metrics
from animatediff_core.models import image_prompt
from pipelines.evaluate.runs import verified_video
from pipelines.evaluate.stills import read_still
from pipelines.ray_session import ActorOptions

FEATURES = "i3d_features"
SCORE_COLUMNS = [*metrics.METRICS, "prompt_tokens", "prompt_truncated", "metrics_error"]


class MetricsStage:
    def __init__(self, clip: str, actors: ActorOptions = ActorOptions(), frame_batch: int = 64,
                 raft: str | None = None, raft_iters: int | None = None, flow_batch: int | None = None,
                 vbench_models: str | None = None, vbench_dimensions: tuple[str, ...] = metrics.VBENCH_DIMENSIONS,
                 i3d: str | None = None, fvd_frames: int = fvd.FRAMES, reads: ReadLimits = ReadLimits()):
        bounded.configure(reads)
        placement = setup_actor(actors.precision, actors.threads)
        self.clip = metrics.load_clip(clip, device=placement.device, dtype=placement.dtype)
        self.frame_batch = frame_batch
        # RAFT runs in float32 whatever `precision` says: its correlations are dot products of 128-256 channels
        self.raft = flow.load_raft(raft, placement.device, raft_iters or flow.ITERS, flow_batch or flow.PAIR_BATCH) if raft else None
        self.vbench = vbench.load_models(vbench_models, tuple(vbench_dimensions), placement.device, placement.dtype,
                                         flow_batch or flow.PAIR_BATCH) if vbench_models else None
        self.i3d = i3d_net.load(i3d, placement.device) if i3d else None  # float32 whatever `precision` says
        self.fvd_frames = fvd_frames

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        batch = batch.reset_index(drop=True)
        for col in metrics.METRICS:
            batch[col] = np.nan
        batch["prompt_tokens"], batch["prompt_truncated"], batch["metrics_error"] = -1, False, ""
        if self.i3d is not None:
            batch[FEATURES] = [[] for _ in range(len(batch))]
        ready, videos, stills, references = [], [], [], []
        for i, row in batch.iterrows():
            if row["status"] != "ok":
                continue
            try:  # the bytes its metadata vouches for (sha256), within --max-video-mb: a scored folder is untrusted
                videos.append(read_video(verified_video(row), num_threads=1, name=row["video_uri"]))
            except AnimateDiffError as e:
                batch.at[i, "metrics_error"] = f"cannot score: {e}"
                continue
            ready.append(i)
            stills.append(self._still(row))
            references.append(self._references(row))
        if ready:
            scores = metrics.score_videos(self.clip, videos, [batch.at[i, "prompt"] for i in ready], stills, self.frame_batch,
                                          self.raft, references)
            for i, score in zip(ready, scores):
                for k, v in score.items():
                    batch.at[i, k] = v
            self._vbench_and_fvd(batch, ready, videos)
        batch["prompt_tokens"] = batch["prompt_tokens"].astype("int64")
        batch["prompt_truncated"] = batch["prompt_truncated"].astype(bool)
        return batch

    def _vbench_and_fvd(self, batch: pd.DataFrame, ready: list[int], videos: list[np.ndarray]) -> None:
        """VBench's columns per video and I3D features of the videos with at least `fvd_frames` frames."""
        if self.vbench is not None:
            for i, video in zip(ready, videos):
                fps = float(batch.at[i, "fps"]) if "fps" in batch and pd.notna(batch.at[i, "fps"]) else 8.0
                for k, v in vbench.score_video(self.vbench, video, fps, self.frame_batch).items():
                    batch.at[i, k] = v
        if self.i3d is not None:
            long_enough = [(i, v) for i, v in zip(ready, videos) if len(v) >= self.fvd_frames]
            feats = fvd.features(self.i3d, [v for _, v in long_enough], self.fvd_frames)
            for (i, _), f in zip(long_enough, feats):
                batch.at[i, FEATURES] = f.astype(np.float32).tolist()

    @staticmethod
    def _references(row) -> list[np.ndarray] | None:
        """The images of the row's image prompt (read within --max-image-mb); None without one, or when one
        cannot be read (image alignment stays NaN, as the generation of such a row failed)."""
        text = row.get("ip_adapter_image") or ""
        if not isinstance(text, str) or not text:
            return None
        try:
            return image_prompt.read_images(text)
        except AnimateDiffError:
            return None

    @staticmethod
    def _still(row) -> np.ndarray | None:
        uri = row.get("still_uri") or ""
        if not uri:
            return None
        try:
            return read_still(uri)
        except (OSError, ValueError):  # a missing or unreadable still leaves domain similarity NaN
            return None
