"""Text-to-video generation: one function from (pipeline, requests) to uint8 frames.

Requests that share a shape run as one batched pipeline call. Each request gets its own seeded
generator, so its initial noise does not depend on what else is in the batch. Identical prompts in
a batch are encoded once. Requests longer than a context window or with a prompt schedule run one at
a time through diffusers' FreeNoise path (long_video.py, prompt_travel.py); FreeInit wraps either.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import AnimateDiffPipeline

from . import long_video
from .pipeline import max_frames as module_frames
from .errors import ConfigError
from .prompt_travel import parse_schedule
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
    `settings.motion_lora` is weights, not sampling: the caller applies it (`Personalizer.apply_motion_lora`).
    """
    if not requests:
        return []
    s = requests[0].settings
    if any(r.settings.shape != s.shape for r in requests):
        raise ConfigError("generate() needs requests of one shape; group by GenerationSettings.shape first")
    _use_sampler(pipe, s.sampler)
    with _free_init(pipe, s.free_init_iterations):
        if uses_windows(s, module_frames(pipe)):
            return [_generate_windowed(pipe, r) for r in requests]
        return _generate_batch(pipe, requests)


def uses_windows(s: GenerationSettings, module_len: int) -> bool:
    """Whether `s` runs on the FreeNoise path: clips longer than a window, or a prompt schedule."""
    return s.window(module_len) < s.num_frames or bool(s.prompt_schedule)


@torch.no_grad()
def _generate_batch(pipe: AnimateDiffPipeline, requests: list[Request]) -> list[np.ndarray]:
    s = requests[0].settings
    device = pipe._execution_device
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
    return _to_uint8(out.frames)


@torch.no_grad()
def _generate_windowed(pipe: AnimateDiffPipeline, r: Request) -> np.ndarray:
    """One request in context windows: FreeNoise's windowed motion attention, rescheduled noise and
    per-frame (travelling) prompt embeddings. One window covering the clip gives the plain result."""
    s = r.settings
    window = s.window(module_frames(pipe))
    g = torch.Generator("cpu").manual_seed(int(r.seed))
    # No conditioning latents: diffusers draws the row's noise from `g` (the plain path's draw) and
    # reschedules it, each window past the first a shuffle of the one before (FreeNoise, eq. 7).
    given = r.conditioning is not None and r.conditioning.latents is not None
    latents = _initial_latents(pipe, [r], [g], pipe._execution_device) if given else None
    prompt = parse_schedule(s.prompt_schedule, s.num_frames, r.prompt) if s.prompt_schedule else r.prompt
    with long_video.windows(pipe, window, s.context_stride, s.context_weighting, split=window < s.num_frames):
        out = pipe(
            prompt=prompt, negative_prompt=r.negative_prompt or "",
            num_frames=s.num_frames, height=s.height, width=s.width,
            num_inference_steps=s.steps, guidance_scale=s.guidance_scale,
            generator=g, latents=latents, output_type="np",
        )
    return _to_uint8(out.frames)[0]


def _to_uint8(frames) -> list[np.ndarray]:
    frames = np.asarray(frames)  # (b, f, h, w, 3) float in [0, 1]
    return [np.clip(v * 255.0 + 0.5, 0, 255).astype(np.uint8) for v in frames]


@contextmanager
def _free_init(pipe: AnimateDiffPipeline, iterations: int):
    """FreeInit (Wu et al. 2023, diffusers' FreeInitMixin) for `iterations` sampling passes, off again on exit.

    Each pass after the first re-noises the result at the last timestep, keeping its low spatio-temporal
    frequencies (Butterworth filter) and drawing fresh high ones, then samples again: `iterations` times
    the sampling cost."""
    if iterations <= 1:
        yield
        return
    pipe.enable_free_init(num_iters=iterations, use_fast_sampling=False, method="butterworth")
    try:
        yield
    finally:
        pipe.disable_free_init()
        pipe._free_init_initial_noise = None  # a clip's worth of latents, not kept between calls


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
