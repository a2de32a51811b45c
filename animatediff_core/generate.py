"""Text-to-video generation: one function from (pipeline, requests) to uint8 frames.

Requests that share a shape run as one batched pipeline call. Each request gets its own seeded
generator, so its initial noise does not depend on what else is in the batch. Identical prompts in
a batch are encoded once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import AnimateDiffPipeline

from .errors import ConfigError
from .settings import GenerationSettings, validate_settings  # noqa: F401  (the settings a Request carries)


@dataclass(frozen=True)
class Conditioning:
    """Optional extra inputs. `latents`: initial noise `(c, f, h/8, w/8)` instead of the seeded draw.

    ControlNet / SparseCtrl / video-to-video inputs are added here as fields, so callers and the batch
    job need no new arguments when they land.
    """

    latents: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Request:
    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    settings: GenerationSettings = GenerationSettings()
    conditioning: Conditioning | None = None


def validate_request(r: Request, max_frames: int, vae_scale: int = 8) -> None:
    if not isinstance(r.prompt, str) or not r.prompt.strip():
        raise ConfigError("prompt is empty; give a text prompt")
    if not isinstance(r.seed, (int, np.integer)) or isinstance(r.seed, bool) or not 0 <= r.seed < 2**63:
        raise ConfigError(f"seed must be an integer in [0, 2**63), got {r.seed!r}")
    validate_settings(r.settings, max_frames, vae_scale)


@torch.no_grad()
def _encode_unique(pipe: AnimateDiffPipeline, texts: list[str], device) -> torch.Tensor:
    """`(len(texts), seq, d)` embeddings, each distinct text encoded once."""
    unique = list(dict.fromkeys(texts))
    embeds, _ = pipe.encode_prompt(unique, device, 1, False)
    index = torch.tensor([unique.index(t) for t in texts], device=embeds.device)
    return embeds.index_select(0, index)


@torch.no_grad()
def generate(pipe: AnimateDiffPipeline, requests: list[Request]) -> list[np.ndarray]:
    """Generate one video per request; returns `(f, h, w, 3) uint8` arrays in request order.

    Requests must share `settings.shape` (group them first); validate them with `validate_request`.
    """
    if not requests:
        return []
    s = requests[0].settings
    if any(r.settings.shape != s.shape for r in requests):
        raise ConfigError("generate() needs requests of one shape; group by GenerationSettings.shape first")
    device = pipe._execution_device
    _use_sampler(pipe, s.sampler)
    prompt_embeds = _encode_unique(pipe, [r.prompt for r in requests], device)
    negative_embeds = _encode_unique(pipe, [r.negative_prompt or "" for r in requests], device)
    generators = [torch.Generator("cpu").manual_seed(int(r.seed)) for r in requests]
    latents = _initial_latents(pipe, requests, generators, device)
    out = pipe(
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_embeds if s.guidance_scale > 1 else None,
        num_frames=s.num_frames, height=s.height, width=s.width,
        num_inference_steps=s.steps, guidance_scale=s.guidance_scale,
        generator=generators, latents=latents, output_type="np",
    )
    frames = np.asarray(out.frames)  # (b, f, h, w, 3) float in [0, 1]
    return [np.clip(v * 255.0 + 0.5, 0, 255).astype(np.uint8) for v in frames]


def _use_sampler(pipe: AnimateDiffPipeline, name: str) -> None:
    """Put the sampler `name` on the pipeline (a fresh scheduler when it changes; schedulers keep state)."""
    from .schedule import ScheduleConfig

    if getattr(pipe.scheduler, "_animatediff_sampler", "ddim") != name:
        pipe.scheduler = ScheduleConfig().sampler(name)
        pipe.scheduler._animatediff_sampler = name


def _initial_latents(pipe, requests, generators, device) -> torch.Tensor:
    """`(b, c, f, h/8, w/8)` noise: per request, its conditioning latents or a draw from its own generator."""
    s = requests[0].settings
    scale = pipe.vae_scale_factor
    shape = (pipe.unet.config.in_channels, s.num_frames, s.height // scale, s.width // scale)
    dtype = pipe.unet.dtype
    rows = []
    for r, g in zip(requests, generators):
        given = r.conditioning.latents if r.conditioning is not None else None
        if given is not None and tuple(given.shape) != shape:
            raise ConfigError(f"conditioning latents must have shape {shape}, got {tuple(given.shape)}")
        rows.append(given if given is not None else torch.randn(shape, generator=g, dtype=torch.float32))
    return torch.stack(rows).to(device=device, dtype=dtype)  # the pipeline applies init_noise_sigma
