"""The metrics actor: one loaded CLIP, many videos per call, all their frames through CLIP in batches.

`__init__` loads CLIP (and RAFT, when given) once per actor (on the GPU where the actor has one);
`__call__(batch)` decodes the batch's videos (and stills), calls `metrics.score_videos` once, and returns
the rows with the metric columns. A video that failed to generate keeps NaN metrics; one that cannot be
decoded gets a `metrics_error` and NaN metrics. Every row given comes back.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from animatediff_core import flow, metrics
from animatediff_core.errors import AnimateDiffError
from animatediff_core.video_io import read_video
from pipelines.evaluate.stills import read_still
from pipelines.animate.stage import DTYPES, quiet_model_libraries

SCORE_COLUMNS = [*metrics.METRICS, "prompt_tokens", "prompt_truncated", "metrics_error"]


class MetricsStage:
    def __init__(self, clip: str, precision: str = "auto", threads: int = 1, frame_batch: int = 64,
                 raft: str | None = None, raft_iters: int = flow.ITERS, flow_batch: int = flow.PAIR_BATCH):
        quiet_model_libraries()
        cuda = torch.cuda.is_available()
        torch.set_num_threads(threads)
        dt = DTYPES.get(precision) or (torch.float16 if cuda else torch.float32)  # auto: fp16 on GPU
        self.clip = metrics.load_clip(clip, device="cuda" if cuda else "cpu", dtype=dt)
        self.frame_batch = frame_batch
        # RAFT runs in float32 whatever `precision` says: its correlations are dot products of 128-256 channels
        self.raft = flow.load_raft(raft, "cuda" if cuda else "cpu", raft_iters, flow_batch) if raft else None

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        batch = batch.reset_index(drop=True)
        for col in metrics.METRICS:
            batch[col] = np.nan
        batch["prompt_tokens"], batch["prompt_truncated"], batch["metrics_error"] = -1, False, ""
        ready, videos, stills = [], [], []
        for i, row in batch.iterrows():
            if row["status"] != "ok":
                continue
            try:
                videos.append(read_video(row["video_uri"], num_threads=1))
            except AnimateDiffError as e:
                batch.at[i, "metrics_error"] = f"cannot score: {e}"
                continue
            ready.append(i)
            stills.append(self._still(row))
        if ready:
            scores = metrics.score_videos(self.clip, videos, [batch.at[i, "prompt"] for i in ready], stills, self.frame_batch,
                                          self.raft)
            for i, score in zip(ready, scores):
                for k, v in score.items():
                    batch.at[i, k] = v
        batch["prompt_tokens"] = batch["prompt_tokens"].astype("int64")
        batch["prompt_truncated"] = batch["prompt_truncated"].astype(bool)
        return batch

    @staticmethod
    def _still(row) -> np.ndarray | None:
        uri = row.get("still_uri") or ""
        if not uri:
            return None
        try:
            return read_still(uri)
        except (OSError, ValueError):  # a missing or unreadable still leaves domain similarity NaN
            return None
