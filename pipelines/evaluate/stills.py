"""Domain-similarity stills: one image per (checkpoint, prompt, seed, shape), without the motion module.

`StillStage` is an actor: it loads the base once (with a fresh motion module, read from no file: stills
bypass it, and a scored folder's module URI is untrusted), switches
personalized checkpoints in place like the batch job's actor, and writes
`OUT/stills/<checkpoint>/<key>.png`. A still that exists is not rendered again (the key hashes everything
that defines it: `identity.still_key`, from the settings tagged `still`), so reruns
resume. A checkpoint that fails to load fails its stills, not the job.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from diffusers import AnimateDiffPipeline
from PIL import Image

from animatediff_core.device import setup_actor
from animatediff_core.errors import AnimateDiffError
from animatediff_core.io import bounded, storage
from animatediff_core.io.bounded import ReadLimits
from animatediff_core.metrics.stills import generate_stills
from animatediff_core.models.inflate import new_motion_adapter
from animatediff_core.models.motion_config import MotionModuleConfig
from animatediff_core.models.personalize import CheckpointSpec, Personalizer
from animatediff_core.models.pipeline import build_pipeline, family, load_base, load_pipeline
from animatediff_core.sampling.generate import Request, validate_request
from animatediff_core.settings.generation import STILL_SETTINGS
from pipelines.animate.identity import still_settings
from pipelines.animate.layout import check_name
from pipelines.ray_session import ActorOptions


def still_uri(out: str, checkpoint: str, key: str) -> str:
    return storage.join(out, "stills", check_name(checkpoint, "checkpoint name"), f"{check_name(key, 'still key')}.png")


def read_still(uri: str) -> np.ndarray:
    """`(h, w, 3) uint8`."""
    return np.asarray(Image.open(io.BytesIO(storage.read_bytes(uri))).convert("RGB"))


def still_pipeline(base: str, device, dtype) -> AnimateDiffPipeline:
    """The base with a fresh (zero-initialized, one-head) motion module: stills bypass motion modules, so
    which one is loaded never changes a still, and none is read from a file."""
    parts = load_base(base, dtype)
    shape = MotionModuleConfig(num_attention_heads=1, norm_num_groups=int(parts.unet.config.norm_num_groups), use_mid_block=False)
    return build_pipeline(parts, new_motion_adapter(dict(parts.unet.config), shape)).to(device)


class StillStage:
    """Batch columns: STILL_KEYS + still_key. Adds still_uri and still_error ("" when rendered)."""

    def __init__(self, base: str, motion_module: str | None, specs: dict[str, CheckpointSpec], out: str,
                 actors: ActorOptions = ActorOptions(), max_batch: int | None = None, reads: ReadLimits = ReadLimits()):
        bounded.configure(reads)  # checkpoint URIs from a scored folder's metadata are untrusted
        placement = setup_actor(actors.precision, actors.threads)
        self.pipe = load_pipeline(base, motion_module, device=placement.device, dtype=placement.dtype) if motion_module \
            else still_pipeline(base, placement.device, placement.dtype)
        self.personalizer = Personalizer(self.pipe)
        self.specs, self.out = specs, out
        self.max_batch = max_batch or (8 if placement.device == "cuda" else 1)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        batch = batch.reset_index(drop=True)
        batch["still_uri"] = [still_uri(self.out, r["checkpoint"], r["still_key"]) for _, r in batch.iterrows()]
        batch["still_error"] = ""
        todo = batch[[not storage.exists(u) for u in batch["still_uri"]]]
        for name, group in todo.groupby("checkpoint", sort=False):
            try:
                self.personalizer.apply(self.specs[name])
            except AnimateDiffError as e:
                batch.loc[group.index, "still_error"] = f"checkpoint {name!r} failed to load: {e}"
                continue
            for _, same in group.groupby(list(STILL_SETTINGS), sort=False):
                for start in range(0, len(same), self.max_batch):
                    self._render(batch, same.iloc[start : start + self.max_batch])
        batch.loc[batch["still_error"] != "", "still_uri"] = ""
        return batch

    def _render(self, batch: pd.DataFrame, rows: pd.DataFrame) -> None:
        reqs = [Request(r["prompt"], r["negative_prompt"] or "", int(r["seed"]), still_settings(r)) for _, r in rows.iterrows()]
        try:
            for req in reqs:
                validate_request(req, max_frames=1, vae_scale=self.pipe.vae_scale_factor, family=family(self.pipe))
            images = generate_stills(self.pipe, reqs)
        except Exception as e:  # one failed call (bad row, out of memory) fails its stills, not the job
            batch.loc[rows.index, "still_error"] = f"still failed: {type(e).__name__}: {e}"
            return
        for i, image in zip(rows.index, images):
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format="PNG")
            storage.write_bytes_atomic(batch.at[i, "still_uri"], buf.getvalue())
