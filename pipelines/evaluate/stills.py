"""Domain-similarity stills: one image per (checkpoint, prompt, seed, shape), without the motion module.

`StillStage` is an actor: it loads the base once (with any motion module: they are bypassed), switches
personalized checkpoints in place like the batch job's actor, and writes
`OUT/stills/<checkpoint>/<key>.png`. A still that exists is not rendered again (the key hashes everything
that defines it), so reruns resume. A checkpoint that fails to load fails its stills, not the job.
"""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pandas as pd
import torch
from PIL import Image

from animatediff_core import storage
from animatediff_core.errors import AnimateDiffError
from animatediff_core.generate import GenerationSettings, Request, validate_request
from animatediff_core.personalize import CheckpointSpec, Personalizer
from animatediff_core.pipeline import load_pipeline
from animatediff_core.stills import generate_stills
from pipelines.animate.stage import DTYPES, quiet_model_libraries

STILL_KEYS = ("checkpoint", "checkpoint_uri", "prompt", "negative_prompt", "seed", "height", "width", "steps", "guidance_scale")


def still_key(row: dict) -> str:
    content = {k: row[k].item() if hasattr(row[k], "item") else row[k] for k in STILL_KEYS}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:24]


def still_uri(out: str, checkpoint: str, key: str) -> str:
    return storage.join(out, "stills", checkpoint, f"{key}.png")


def read_still(uri: str) -> np.ndarray:
    """`(h, w, 3) uint8`."""
    return np.asarray(Image.open(io.BytesIO(storage.read_bytes(uri))).convert("RGB"))


class StillStage:
    """Batch columns: STILL_KEYS + still_key. Adds still_uri and still_error ("" when rendered)."""

    def __init__(self, base: str, motion_module: str, specs: dict[str, CheckpointSpec], out: str,
                 precision: str = "auto", threads: int = 1, max_batch: int | None = None):
        quiet_model_libraries()
        cuda = torch.cuda.is_available()
        torch.set_num_threads(threads)
        dt = DTYPES.get(precision) or (torch.float16 if cuda else torch.float32)  # auto: fp16 on GPU
        self.pipe = load_pipeline(base, motion_module, device="cuda" if cuda else "cpu", dtype=dt)
        self.personalizer = Personalizer(self.pipe)
        self.specs, self.out = specs, out
        self.max_batch = max_batch or (8 if cuda else 1)

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
            for _, same in group.groupby(["height", "width", "steps", "guidance_scale"], sort=False):
                for start in range(0, len(same), self.max_batch):
                    self._render(batch, same.iloc[start : start + self.max_batch])
        batch.loc[batch["still_error"] != "", "still_uri"] = ""
        return batch

    def _render(self, batch: pd.DataFrame, rows: pd.DataFrame) -> None:
        reqs = []
        for _, r in rows.iterrows():
            s = GenerationSettings(num_frames=1, height=int(r["height"]), width=int(r["width"]), steps=int(r["steps"]),
                                   guidance_scale=float(r["guidance_scale"]))
            reqs.append(Request(r["prompt"], r["negative_prompt"] or "", int(r["seed"]), s))
        try:
            for req in reqs:
                validate_request(req, max_frames=1, vae_scale=self.pipe.vae_scale_factor)
            images = generate_stills(self.pipe, reqs)
        except Exception as e:  # one failed call (bad row, out of memory) fails its stills, not the job
            batch.loc[rows.index, "still_error"] = f"still failed: {type(e).__name__}: {e}"
            return
        for i, image in zip(rows.index, images):
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format="PNG")
            storage.write_bytes_atomic(batch.at[i, "still_uri"], buf.getvalue())
