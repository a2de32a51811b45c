"""What defines a video, written once: ids, seeds, the resume fingerprint, duplicate checks and still keys.

Every list of settings here is read off the tags of `GenerationSettings`' fields (animatediff_core/settings/generation.py):
- `key="always"` settings (the first release's) are in every row's key; `key="changed"` settings join it
  only when a row gives a value other than the default, so the ids and seeds of rows that do not use a
  newer setting never change; `key="file"` settings (fps) change the file, not the frames: they are in
  the fingerprint, not in the key;
- `still=True` settings change a still (evaluation's 1-frame image without the motion modules).
Light (no torch, no Ray): planning tasks call these for every row.
"""

from __future__ import annotations

import hashlib
import json

import pandas as pd

from animatediff_core.configs import tag
from animatediff_core.settings.generation import FIELDS, STILL_SETTINGS, CheckpointSpec, GenerationSettings
from animatediff_core.settings.schedule import SAMPLERS
from pipelines.animate import schema
from pipelines.animate.sets import MotionSpec
from pipelines.cells import plain

ALWAYS = tuple(n for n, f in FIELDS.items() if tag(f, "key") == "always")
FILE = tuple(n for n, f in FIELDS.items() if tag(f, "key") == "file")
_DEFAULTS = GenerationSettings()
# What a still depends on besides its settings (evaluation's domain similarity).
STILL_KEYS = ("checkpoint", "checkpoint_uri", "checkpoint_stack", "prompt", "negative_prompt", "seed", *STILL_SETTINGS)


def _changed(k: str, v) -> bool:
    """Whether the `key="changed"` setting `k` holds a value that changes the video (not empty, not its default)."""
    return k not in ALWAYS and k not in FILE and v not in (None, "") and v != getattr(_DEFAULTS, k)


def _digest(content: dict) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def row_key(row: dict) -> str:
    """Hash of what defines a row's video, checkpoint and motion module excluded (so a sweep shares seeds)."""
    content = {k: plain(row.get(k)) for k in ("prompt", "negative_prompt", "seed", *ALWAYS)}
    content.update({k: v for k in schema.SETTINGS if _changed(k, v := plain(row.get(k)))})
    return _digest(content)


def fingerprint(row: dict, motion: MotionSpec, spec: CheckpointSpec, image_prompt: str = "") -> dict:
    """What must match for an existing video to be reused on a rerun: the row's content, the checkpoint,
    the motion module with the numerics it runs with, what the row's sampler means and, for a row with an
    image prompt, the job's IP-Adapter and image encoder (`image_prompt`)."""
    return {**({"ip_adapter": image_prompt} if row.get("ip_adapter_image") else {}),"prompt": row["prompt"], "negative_prompt": row["negative_prompt"], "seed": int(row["seed"]),
            "checkpoint": row["checkpoint"], "checkpoint_stack": spec.identity,
            "motion_module": motion.uri, "motion_norm": motion.numerics or motion.norm,
            "sampler_definition": SAMPLERS[row["sampler"]].definition,
            **{k: plain(row[k]) for k in schema.SETTINGS if k in ALWAYS or k in FILE or _changed(k, plain(row[k]))}}


def image_prompt_id(image_prompt: tuple[str, str] | None) -> str:
    """The job's (IP-Adapter, image encoder) as the fingerprint of a row with an image prompt holds them."""
    return " ".join(image_prompt) if image_prompt else ""


def content_hash(batch: pd.DataFrame) -> pd.Series:
    """Per row, a 63-bit hash of everything that defines its video: equal rows, equal hashes."""
    cols = ["prompt", "negative_prompt", "seed", *schema.SETTINGS]
    return pd.util.hash_pandas_object(batch[cols], index=False).astype("int64")


def slot_hash(batch: pd.DataFrame) -> pd.Series:
    """Per row, a hash of where its video goes (motion module, checkpoint, id)."""
    return pd.util.hash_pandas_object(batch[["motion_module", "checkpoint", "id"]], index=False).astype("int64")


def still_key(row: dict) -> str:
    """Everything that defines a still: the checkpoint, the row's text and seed, and every `still` setting."""
    return _digest({k: plain(row[k]) for k in STILL_KEYS})[:24]


def still_settings(row: dict) -> GenerationSettings:
    """The settings a still renders with: one frame, the row's `still` settings, defaults for the rest."""
    return GenerationSettings(num_frames=1, **schema.settings_of(row, STILL_SETTINGS))
