"""FVD at dataset scale: the reference set's I3D statistics in one Ray Data pass, cached; FVD per entry.

`--fvd-reference` is a folder of videos, a batch-job output folder (its videos that generated), or a
WebVid-format table as `jobs.train` reads it (a table, a folder of tables, or videos with a captions table).
Its first `--fvd-reference-videos` videos (in the reference's order) go through `I3DStage` actors (I3D loaded
once per actor), which read only the frames FVD uses (every `--fvd-reference-stride`-th, the first
`--fvd-frames` of those). The statistics are written to `OUT/fvd_reference/<key>.npz`, the key hashing the
video URIs, the I3D file's bytes, the frames, the stride and the protocol (`animatediff_core.metrics.fvd.PROTOCOL`):
every entry and every rerun with the same reference and settings reuses them. A file changed in place under
the same URI is not noticed: delete the folder to recompute. Generated videos' features come from the metrics
stage (`stage.FEATURES`); `entry_fvd` compares each entry's with the reference's.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import ray.data

from animatediff_core.configs import need
from animatediff_core.device import setup_actor
from animatediff_core.errors import AnimateDiffError, ConfigError
from animatediff_core.io import storage
from animatediff_core.io.video_io import read_video
from animatediff_core.metrics import fvd
from animatediff_core.metrics import i3d as i3d_net
from pipelines import tables as table_files
from pipelines.evaluate.config import EvaluateConfig
from pipelines.evaluate.runs import read_runs
from pipelines.evaluate.stage import FEATURES
from pipelines.ray_session import ActorOptions
from pipelines.train import sources as webvid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reference:
    """The reference set's feature statistics: mean ``(d,)``, covariance ``(d, d)``, videos used."""

    mu: np.ndarray
    sigma: np.ndarray
    videos: int
    uri: str  # where they are cached


def reference_uris(uri: str, limit: int, num_cpus: float = 1.0) -> list[str]:
    """The first `limit` video URIs of `--fvd-reference` (see the module docstring)."""
    need(storage.exists(uri), f"--fvd-reference {uri}: not found (expected a folder of videos, a batch-job output folder "
                              "or a WebVid-format table)")
    if storage.isdir(uri) and storage.exists(storage.join(uri, "metadata")):
        rows = read_runs([uri])
        return rows.loc[rows["status"] == "ok", "video_uri"].head(limit).tolist()
    if storage.isdir(uri):
        files = table_files.list_files(uri)
        videos = sorted(f for f in files if f.lower().endswith(webvid.VIDEO_EXTS))
        if videos and not any(table_files.is_table(f) for f in files):
            return videos[:limit]
    try:
        source = webvid.find_source(uri)
        need(source.kind != "latents", f"--data {uri}: a folder of precomputed latents (jobs.ingest), not videos")
        webvid.check_tables(source)
    except ConfigError as e:  # webvid's messages name jobs.train's flag
        raise ConfigError(str(e).replace("--data", "--fvd-reference", 1)) from None
    rows = webvid.read_rows(source, num_cpus).limit(limit).to_pandas()
    return [u for u in rows["video_uri"].tolist() if u]


class I3DStage:
    """Batch column `video_uri`; adds `i3d_features` (list of floats, empty when unreadable) and `fvd_error`."""

    def __init__(self, i3d: str, actors: ActorOptions = ActorOptions(), frames: int = fvd.FRAMES, stride: int = 1):
        placement = setup_actor(actors.precision, actors.threads)
        self.net, self.frames, self.stride = i3d_net.load(i3d, placement.device), frames, stride

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        batch = batch.reset_index(drop=True)
        batch[FEATURES], batch["fvd_error"] = [[] for _ in range(len(batch))], ""
        ready, videos = [], []
        for i, uri in enumerate(batch["video_uri"]):
            try:
                videos.append(read_video(uri, indices=range(0, self.frames * self.stride, self.stride), num_threads=1))
                ready.append(i)
            except AnimateDiffError as e:  # too short or unreadable: left out of the reference, counted
                batch.at[i, "fvd_error"] = str(e)[:300]
        for i, f in zip(ready, fvd.features(self.net, videos, self.frames)):
            batch.at[i, FEATURES] = f.astype(np.float32).tolist()
        return batch


def _key(uris: list[str], cfg: EvaluateConfig) -> str:
    weights = hashlib.sha256(storage.read_bytes(cfg.i3d)).hexdigest()
    spec = {"protocol": fvd.PROTOCOL, "frames": cfg.fvd_frames, "stride": cfg.fvd_reference_stride, "i3d": weights, "videos": uris}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def reference_statistics(cfg: EvaluateConfig) -> Reference:
    """The reference's statistics: from the cache under `--out` when there, else one Ray Data pass of I3D actors."""
    uris = reference_uris(cfg.fvd_reference, cfg.fvd_reference_videos, cfg.actors.cpus_per_worker)
    need(len(uris) >= 2, f"--fvd-reference {cfg.fvd_reference}: FVD needs at least 2 reference videos, found {len(uris)}")
    cache = storage.join(cfg.out, "fvd_reference", f"{_key(uris, cfg)}.npz")
    if storage.exists(cache):
        with np.load(io.BytesIO(storage.read_bytes(cache))) as z:
            log.info("FVD reference: %d videos' statistics reused from %s", int(z["videos"]), cache)
            return Reference(z["mu"], z["sigma"], int(z["videos"]), cache)
    log.info("FVD reference: I3D features of %d videos from %s (%d frames, stride %d)", len(uris), cfg.fvd_reference,
             cfg.fvd_frames, cfg.fvd_reference_stride)
    kwargs = dict(i3d=cfg.i3d, actors=cfg.actors, frames=cfg.fvd_frames, stride=cfg.fvd_reference_stride)
    videos = ray.data.from_pandas(pd.DataFrame({"video_uri": uris}))
    done = cfg.actors.map(videos, I3DStage, kwargs, cfg.videos_per_call, len(uris)).to_pandas()
    failed = done[done["fvd_error"] != ""]
    for err in failed["fvd_error"].unique()[:3]:
        log.warning("FVD reference video left out: %s", err)
    feats = np.array([f for f in done[FEATURES] if len(f)], dtype=np.float64)
    need(len(feats) >= 2, f"--fvd-reference {cfg.fvd_reference}: fewer than 2 of its videos have {cfg.fvd_frames} readable frames "
                          f"({len(failed)} of {len(done)} left out)")
    mu, sigma = fvd.statistics(feats)
    buf = io.BytesIO()
    np.savez(buf, mu=mu, sigma=sigma, videos=len(feats), uris=np.array(uris))
    storage.write_bytes_atomic(cache, buf.getvalue())
    log.info("FVD reference: %d videos (%d left out); statistics cached at %s", len(feats), len(failed), cache)
    return Reference(mu, sigma, len(feats), cache)


def entry_fvd(group: pd.DataFrame, reference: Reference) -> tuple[float, int]:
    """(FVD, videos used) of one entry's scored rows against the reference; NaN below 2 videos with features."""
    feats = [f for f in group[FEATURES] if f is not None and len(f)] if FEATURES in group else []
    if len(feats) < 2:
        return float("nan"), len(feats)
    mu, sigma = fvd.statistics(np.asarray(feats, dtype=np.float64))
    return fvd.frechet_distance(mu, sigma, reference.mu, reference.sigma), len(feats)
