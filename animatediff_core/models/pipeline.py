"""Build a diffusers AnimateDiff pipeline from a base folder and a motion module.

An SD-1.x base gives an `AnimateDiffPipeline`; an SDXL base (its UNet conditions on sizes and a pooled
text embedding; two text encoders) an `AnimateDiffSDXLPipeline`. Components are loaded with
`local_files_only=True`: nothing is fetched from a hub. Remote base folders (s3://, gs://, ...) are
copied to a local cache first.
"""

from __future__ import annotations

import json
import types
from dataclasses import dataclass

import torch
from diffusers import AnimateDiffPipeline, AnimateDiffSDXLPipeline, AutoencoderKL, MotionAdapter, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from animatediff_core.io import cache, hub, storage
from animatediff_core.errors import CheckpointError
from animatediff_core.models.inflate import inflate_unet
from animatediff_core.models.motion_config import MotionModuleConfig
from animatediff_core.models.motion_formats import load_motion_adapter
from animatediff_core.models.numerics import apply_motion_norm, check_mode, resolve
from animatediff_core.settings.schedule import ScheduleConfig
from animatediff_core.settings.generation import family_of
from animatediff_core.models.speed import options_of

BASE_PARTS = ("unet", "vae", "text_encoder", "tokenizer")
SDXL_PARTS = ("text_encoder_2", "tokenizer_2")  # an SDXL base's second text encoder
# What a base model needs from a Hub repo (not its .bin duplicates, fp16/EMA variants or safety checker).
BASE_FILES = [f"{part}/{pattern}" for part in (*BASE_PARTS, *SDXL_PARTS, "scheduler") for pattern in ("*.json", "*.txt", "*.safetensors")]
BASE_CONFIGS = [f"{part}/*.json" for part in (*BASE_PARTS, *SDXL_PARTS, "scheduler")]


@dataclass(frozen=True)
class Base:
    """The frozen image-model parts, loaded once (`text_encoder_2`, `tokenizer_2`: SDXL only)."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    text_encoder_2: CLIPTextModelWithProjection | None = None
    tokenizer_2: CLIPTokenizer | None = None


def check_base_folder(uri: str) -> str:
    """Raise CheckpointError unless `uri` is a diffusers SD-1.x or SDXL folder (reads no weights); returns
    where its files are (a Hub id resolves to its cached snapshot, configs only)."""
    uri = hub.resolve(uri, BASE_CONFIGS)
    if not storage.exists(uri) or not storage.isdir(uri):
        raise CheckpointError(f"{uri}: base model folder not found (expected a diffusers SD-1.x or SDXL folder with "
                              f"{', '.join(BASE_PARTS)})")
    missing = [p for p in BASE_PARTS if not storage.exists(storage.join(uri, p))]
    if missing:
        raise CheckpointError(f"{uri}: not a diffusers SD-1.x or SDXL folder: missing {', '.join(missing)}/ (expected {', '.join(BASE_PARTS)})")
    if family_of(json.loads(storage.read_bytes(storage.join(uri, "unet", "config.json")))) == "sdxl":
        missing = [p for p in SDXL_PARTS if not storage.exists(storage.join(uri, p))]
        if missing:
            raise CheckpointError(f"{uri}: an SDXL UNet, but not a diffusers SDXL folder: missing {', '.join(missing)}/")
    return uri


def read_unet_config(base: str) -> dict:
    """The base UNet's config.json (for checks that need shapes, not weights)."""
    return json.loads(storage.read_bytes(storage.join(check_base_folder(base), "unet", "config.json")))


def load_base(uri: str, dtype: torch.dtype = torch.float32) -> Base:
    check_base_folder(uri)
    local = cache.localize(hub.resolve(uri, BASE_FILES))
    try:
        unet = UNet2DConditionModel.from_pretrained(local, subfolder="unet", torch_dtype=dtype, local_files_only=True)
        xl = family_of(dict(unet.config)) == "sdxl"
        return Base(
            unet=unet,
            vae=AutoencoderKL.from_pretrained(local, subfolder="vae", torch_dtype=dtype, local_files_only=True),
            text_encoder=CLIPTextModel.from_pretrained(local, subfolder="text_encoder", torch_dtype=dtype, local_files_only=True),
            tokenizer=CLIPTokenizer.from_pretrained(local, subfolder="tokenizer", local_files_only=True),
            text_encoder_2=CLIPTextModelWithProjection.from_pretrained(
                local, subfolder="text_encoder_2", torch_dtype=dtype, local_files_only=True) if xl else None,
            tokenizer_2=CLIPTokenizer.from_pretrained(local, subfolder="tokenizer_2", local_files_only=True) if xl else None,
        )
    except (OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{uri}: could not load base model ({str(e).splitlines()[0][:300]})") from None


def build_pipeline(base: Base, adapter: MotionAdapter, schedule: ScheduleConfig = ScheduleConfig(),
                   motion_norm: str | None = None) -> AnimateDiffPipeline | AnimateDiffSDXLPipeline:
    """An AnimateDiff pipeline over the inflated UNet (SDXL's for an SDXL base), with AnimateDiff's DDIM sampler.

    `motion_norm` (official|diffusers; numerics.py): None takes the one the module records, else official.
    """
    xl = family_of(dict(base.unet.config)) == "sdxl"
    numerics = resolve(motion_norm, adapter.config, "sdxl" if xl else "sd1")
    video_unet, adapter = inflate_unet(base.unet, adapter)
    apply_motion_norm(video_unet, numerics.mode, numerics.version)
    parts = dict(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=video_unet,
                 motion_adapter=adapter, scheduler=schedule.inference_scheduler())
    if xl:
        pipe = AnimateDiffSDXLPipeline(**parts, text_encoder_2=base.text_encoder_2, tokenizer_2=base.tokenizer_2)
        pipe.decode_latents = types.MethodType(_decode_in_chunks, pipe)  # SDXL's pipeline decodes every frame at once
    else:
        pipe = AnimateDiffPipeline(**parts)
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


SDXL_DECODE_CHUNK = 8  # frames per VAE decode on SDXL (--vae-chunk overrides): 16 frames at 1024x1024 at once need ~4x the memory


def _decode_in_chunks(self, latents: torch.Tensor) -> torch.Tensor:
    """`(b, c, f, h, w)` latents -> `(b, 3, f, H, W)` video, decoded a few frames at a time (the diffusers
    SDXL pipeline's `decode_latents` decodes all at once); the pipeline still upcasts the VAE around it."""
    chunk = options_of(self).vae_chunk or SDXL_DECODE_CHUNK
    b, c, f, h, w = latents.shape
    frames = (1 / self.vae.config.scaling_factor * latents).permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)  # diffusers' arithmetic
    image = torch.cat([self.vae.decode(part).sample for part in frames.split(chunk)])
    return image.reshape(b, f, *image.shape[1:]).permute(0, 2, 1, 3, 4).float()


def family(pipe) -> str:
    """The model family a pipeline runs (settings.FAMILIES)."""
    return family_of(dict(pipe.unet.config))


def max_frames(pipe: AnimateDiffPipeline) -> int:
    """Longest clip the motion module's position encoding supports."""
    return int(pipe.unet.config["motion_max_seq_length"])
