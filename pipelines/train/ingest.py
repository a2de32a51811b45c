"""Precompute training inputs once: video rows -> VAE latents + text embeddings in Parquet shards.

    rows --ClipDecoder (CPU actors)--> clips --LatentEncoder (GPU or CPU actors)--> Parquet shards + _ingest.json

Each output row: `videoid`, `caption`, `latents` (float16 bytes of `(c, f, h/s, w/s)`, already scaled
by the VAE's scaling factor: one draw from the VAE posterior), `text_embedding` (float16 bytes of
`(77, d)`) and the clip's provenance: `source` (its video), `start`/`end` (its span in seconds; NaN end:
the whole video) and `frame_indices` (the source frames). `_skipped.parquet` names each skipped video
or span with its reason. `_ingest.json`, written last, records the shapes, the clip settings, the base,
the skip counts and `--where`'s kept and dropped rows; `jobs.train --data` on the folder then trains from
these rows without decoding or encoding. Caption dropout still happens at training time (the empty
prompt's embedding replaces a row's); clips are not flipped here (the latents are fixed once).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pyarrow as pa
import ray
import torch

from animatediff_core.configs import need
from animatediff_core.device import setup_actor
from animatediff_core.errors import ConfigError
from animatediff_core.io import storage
from animatediff_core.models.pipeline import check_base_folder, load_base
from animatediff_core.training.clips import ClipConfig
from animatediff_core.training.objective import encode_frames, encode_text
from pipelines.ray_session import has_gpus
from pipelines.train.config import IngestRun
from pipelines.train.decode import ClipDecoder, clip_array, start_tally, write_skipped
from pipelines.train.sources import INGEST_META, INGEST_SKIPPED, DataSource, check_tables, describe, find_source, read_rows


log = logging.getLogger(__name__)
PROVENANCE = ("source", "start", "end", "frame_indices")
OUTPUT_COLUMNS = ("videoid", "caption", "latents", "text_embedding") + PROVENANCE


class LatentEncoder:
    """Ray Data stage: `videoid, caption, clip` rows -> `videoid, caption, latents, text_embedding` rows."""

    def __init__(self, base: str, clip: ClipConfig, threads: int = 1):
        self.device = setup_actor("fp32", threads).device
        parts = load_base(base)
        self.vae = parts.vae.to(self.device).eval()
        self.text_encoder = parts.text_encoder.to(self.device).eval()
        self.tokenizer, self.clip = parts.tokenizer, clip

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        if not len(batch):
            return pd.DataFrame({c: pd.Series(dtype=object) for c in OUTPUT_COLUMNS})
        frames = torch.from_numpy(np.stack([clip_array(c, self.clip) for c in batch["clip"]]))
        latents = encode_frames(self.vae, frames.to(self.device)).half().cpu().numpy()
        text = encode_text(self.tokenizer, self.text_encoder, batch["caption"].tolist()).half().cpu().numpy()
        # Arrow, typed here: Ray would store equal-length index lists as its own tensor type, which
        # other Parquet readers cannot read.
        return pa.table({
            "videoid": pa.array(batch["videoid"].astype(str).tolist(), pa.string()),
            "caption": pa.array(batch["caption"].astype(str).tolist(), pa.string()),
            "latents": pa.array([x.tobytes() for x in latents], pa.binary()),
            "text_embedding": pa.array([x.tobytes() for x in text], pa.binary()),
            "source": pa.array(batch["source"].astype(str).tolist(), pa.string()),
            "start": pa.array(batch["start"].astype(float).tolist(), pa.float64()),
            "end": pa.array(batch["end"].astype(float).tolist(), pa.float64()),
            "frame_indices": pa.array([[int(i) for i in x] for x in batch["frame_indices"]], pa.list_(pa.int32())),
        })


def check_ingest(run: IngestRun) -> DataSource:
    """Fail fast (one line) when the base, the data or the output folder cannot work."""
    check_base_folder(run.base)
    source = find_source(run.data, run.source)
    need(source.kind != "latents", f"--data {run.data}: already a jobs.ingest folder; point --data at the video table")
    check_tables(source)
    need(not storage.exists(storage.join(run.out, INGEST_META)), f"--out {run.out}: already holds an ingest ({INGEST_META}); choose another folder")
    return source


def shapes(base: str, clip: ClipConfig) -> tuple[list[int], list[int]]:
    """(latent shape `(c, f, h/s, w/s)`, text shape `(77, d)`) from the base's config files alone."""
    vae = json.loads(storage.read_bytes(storage.join(base, "vae", "config.json")))
    text = json.loads(storage.read_bytes(storage.join(base, "text_encoder", "config.json")))
    scale = 2 ** (len(vae["block_out_channels"]) - 1)
    return ([vae["latent_channels"], clip.num_frames, clip.size // scale, clip.size // scale],
            [text.get("max_position_embeddings", 77), text["hidden_size"]])


def run_ingest(run: IngestRun, source: DataSource) -> dict:
    """Decode, encode and write the shards, then `_ingest.json`; returns that metadata."""
    use_gpu = has_gpus()
    tally = start_tally()
    if source.kind != "latents":
        log.info(describe(source))
    clips = read_rows(source, num_cpus=run.decode_cpus, tally=tally).map_batches(
        ClipDecoder, fn_constructor_args=(run.clip, tally), batch_format="pandas", batch_size=4,
        num_cpus=run.decode_cpus, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=run.decoders))
    encoded = clips.map_batches(
        LatentEncoder, fn_constructor_args=(run.base, run.clip), batch_format="pandas", batch_size=run.encode_batch,
        num_gpus=1 if use_gpu else 0, num_cpus=1 if use_gpu else run.decode_cpus,
        compute=ray.data.ActorPoolStrategy(size=run.encoders))
    path, arrow_fs = storage.arrow_location(run.out)
    encoded.write_parquet(path, filesystem=arrow_fs)
    try:
        written = ray.data.read_parquet(path, filesystem=arrow_fs, columns=["videoid"], file_extensions=["parquet"]).count()
    except (OSError, ValueError):  # no shard written: every video was skipped
        written = 0
    named = write_skipped(tally, storage.join(run.out, INGEST_SKIPPED))
    where = ray.get(tally.where_counts.remote())
    if source.where is not None:
        log.info("--where %r kept %d and dropped %d rows (clips)", source.where.text, where["kept"], where["dropped"])
    if named:
        log.info("skipped %d videos or spans, each named with its reason in %s", named, storage.join(run.out, INGEST_SKIPPED))
    if not written:
        raise ConfigError(f"--data {run.data}: no usable videos (skipped: {ray.get(tally.totals.remote()) or 'none'}; "
                          f"see {storage.join(run.out, INGEST_SKIPPED)})")
    latent_shape, text_shape = shapes(run.base, run.clip)
    meta = {"base": run.base, "data": run.data, "num_frames": run.clip.num_frames, "stride": run.clip.stride,
            "sample_fps": run.clip.sample_fps, "size": run.clip.size, "latent_shape": latent_shape,
            "text_shape": text_shape, "dtype": "float16", "rows": written, "format": source.fmt.name if source.fmt else None,
            "skipped_videos": ray.get(tally.totals.remote()),
            **({"where": {"expression": source.where.text, **where}} if source.where is not None else {})}
    storage.write_text_atomic(storage.join(run.out, INGEST_META), json.dumps(meta, indent=2))
    return meta
