"""Build a diffusers AnimateDiffPipeline from a base SD-1.x folder and a motion module.

Components are loaded with `local_files_only=True`: nothing is fetched from a hub. Remote base
folders (s3://, gs://, ...) are copied to a local cache first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from diffusers import AnimateDiffPipeline, AutoencoderKL, MotionAdapter, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from . import hub, storage
from .errors import CheckpointError
from .inflate import MotionModuleConfig, inflate_unet
from .motion_formats import load_motion_adapter
from .numerics import apply_motion_norm, check_mode, resolve
from .schedule import ScheduleConfig

BASE_PARTS = ("unet", "vae", "text_encoder", "tokenizer")
# What a base model needs from a Hub repo (not its .bin duplicates, fp16/EMA variants or safety checker).
BASE_FILES = [f"{part}/{pattern}" for part in (*BASE_PARTS, "scheduler") for pattern in ("*.json", "*.txt", "*.safetensors")]
BASE_CONFIGS = [f"{part}/*.json" for part in (*BASE_PARTS, "scheduler")]


@dataclass(frozen=True)
class Base:
    """The frozen SD-1.x parts, loaded once."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer


def check_base_folder(uri: str) -> str:
    """Raise CheckpointError unless `uri` is a diffusers SD-1.x folder (reads no weights); returns
    where its files are (a Hub id resolves to its cached snapshot, configs only)."""
    uri = hub.resolve(uri, BASE_CONFIGS)
    if not storage.exists(uri) or not storage.isdir(uri):
        raise CheckpointError(f"{uri}: base model folder not found (expected a diffusers SD-1.x folder with {', '.join(BASE_PARTS)})")
    missing = [p for p in BASE_PARTS if not storage.exists(storage.join(uri, p))]
    if missing:
        raise CheckpointError(f"{uri}: not a diffusers SD-1.x folder: missing {', '.join(missing)}/ (expected {', '.join(BASE_PARTS)})")
    return uri


def read_unet_config(base: str) -> dict:
    """The base UNet's config.json (for checks that need shapes, not weights)."""
    return json.loads(storage.read_bytes(storage.join(check_base_folder(base), "unet", "config.json")))


def load_base(uri: str, dtype: torch.dtype = torch.float32) -> Base:
    check_base_folder(uri)
    local = storage.localize(hub.resolve(uri, BASE_FILES))
    try:
        return Base(
            unet=UNet2DConditionModel.from_pretrained(local, subfolder="unet", torch_dtype=dtype, local_files_only=True),
            vae=AutoencoderKL.from_pretrained(local, subfolder="vae", torch_dtype=dtype, local_files_only=True),
            text_encoder=CLIPTextModel.from_pretrained(local, subfolder="text_encoder", torch_dtype=dtype, local_files_only=True),
            tokenizer=CLIPTokenizer.from_pretrained(local, subfolder="tokenizer", local_files_only=True),
        )
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{uri}: could not load base model ({str(e).splitlines()[0][:300]})") from None


def build_pipeline(base: Base, adapter: MotionAdapter, schedule: ScheduleConfig = ScheduleConfig(),
                   motion_norm: str | None = None) -> AnimateDiffPipeline:
    """AnimateDiffPipeline over the inflated UNet, with AnimateDiff's DDIM sampler.

    `motion_norm` (official|diffusers; numerics.py): None takes the one the module records, else official.
    """
    numerics = resolve(motion_norm, adapter.config)
    video_unet, adapter = inflate_unet(base.unet, adapter)
    apply_motion_norm(video_unet, numerics.mode, numerics.version)
    pipe = AnimateDiffPipeline(
        vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
        unet=video_unet, motion_adapter=adapter, scheduler=schedule.inference_scheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_pipeline(
    base: str,
    motion_module: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    motion_config: MotionModuleConfig | None = None,
    motion_norm: str | None = None,
) -> AnimateDiffPipeline:
    """Load base + motion module (diffusers folder or original-format file) into a ready pipeline.

    `motion_norm`: "official" (the official AnimateDiff's function for the module's version) or "diffusers"
    (diffusers' classes as they are); None: what the module records (modules we train), else official.
    """
    if motion_norm is not None:
        check_mode(motion_norm)  # before seconds of loading
    parts = load_base(base, dtype)
    adapter = load_motion_adapter(motion_module, motion_config)
    if adapter.dtype != dtype:
        adapter = adapter.to(dtype=dtype)
    return build_pipeline(parts, adapter, motion_norm=motion_norm).to(device)


def max_frames(pipe: AnimateDiffPipeline) -> int:
    """Longest clip the motion module's position encoding supports."""
    return int(pipe.unet.config["motion_max_seq_length"])
