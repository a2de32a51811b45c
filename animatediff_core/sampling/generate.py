"""Text-to-video generation: one function from (pipeline, requests) to uint8 frames.

Requests that share a shape run as one batched pipeline call. Each request gets its own seeded
generator, so its initial noise does not depend on what else is in the batch. Identical prompts in
a batch are encoded once. Requests longer than a context window, looping or with a prompt schedule
run one at a time through diffusers' FreeNoise path (long_video.py, prompt_travel.py); requests with
control inputs (ControlNet, SparseCtrl keyframes, video-to-video) run one at a time through diffusers'
matching AnimateDiff pipeline, built around the same loaded modules (no weight is copied). FreeInit
wraps any of them. Requests with an image prompt (IP-Adapter, image_prompt.py) run batched (they share
the image and scale: both are in the shape); on a pipeline with an adapter, requests without one run
with the adapter taken out (`image_prompt.text_only`): the text-only video.
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import (
    AnimateDiffControlNetPipeline,
    AnimateDiffPipeline,
    AnimateDiffSDXLPipeline,
    AnimateDiffSparseControlNetPipeline,
    AnimateDiffVideoToVideoControlNetPipeline,
    AnimateDiffVideoToVideoPipeline,
)
from PIL import Image

from animatediff_core.sampling import long_video
from animatediff_core.sampling.conditioning import Inputs
from animatediff_core.models.image_prompt import ImageEmbeds, has_adapter, text_only
from animatediff_core.models.pipeline import max_frames as module_frames
from animatediff_core.configs import need
from animatediff_core.errors import AnimateDiffError
from animatediff_core.settings.prompt_travel import parse_schedule
from animatediff_core.settings.schedule import DEFAULT_SAMPLER, SAMPLERS
from animatediff_core.settings.generation import SEED_RANGE, GenerationSettings, validate_settings  # noqa: F401  (the settings a Request carries)
from animatediff_core.models.speed import decode_kwargs, options_of


@dataclass(frozen=True)
class Conditioning:
    """Optional extra inputs. `latents`: initial noise `(c, f, h/8, w/8)` instead of the seeded draw.
    `inputs`: the row's control frames, keyframes and init video (conditioning.read_inputs), with the
    loaded models they need (`controlnet` for control frames, `keyframe_model` for keyframes).
    `image`: the row's image prompt, encoded (`ImagePrompt.embeds`; the pipeline must hold that adapter)."""

    latents: torch.Tensor | None = None
    inputs: Inputs | None = None
    controlnet: torch.nn.Module | None = None
    keyframe_model: torch.nn.Module | None = None
    image: ImageEmbeds | None = None


@dataclass(frozen=True)
class Request:
    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    settings: GenerationSettings = GenerationSettings()
    conditioning: Conditioning | None = None


def validate_request(r: Request, max_frames: int, vae_scale: int = 8, family: str = "sd1") -> None:
    need(isinstance(r.prompt, str) and r.prompt.strip(), "prompt is empty; give a text prompt")
    need(isinstance(r.seed, (int, np.integer)) and not isinstance(r.seed, bool) and 0 <= r.seed < SEED_RANGE,
         f"seed must be an integer in [0, 2**64), got {r.seed!r}")
    validate_settings(r.settings, max_frames, vae_scale, family)


@torch.no_grad()
def _encode_unique(pipe: AnimateDiffPipeline, texts: list[str], device) -> torch.Tensor:
    """`(len(texts), seq, d)` embeddings, each distinct text encoded once."""
    unique = list(dict.fromkeys(texts))
    embeds, _ = pipe.encode_prompt(unique, device, 1, False)
    index = torch.tensor([unique.index(t) for t in texts], device=embeds.device)
    return embeds.index_select(0, index)


class TimeUp(AnimateDiffError):
    """Sampling ran past its deadline (`generate(..., deadline=)`); raised between sampler steps."""


def _stop_at(deadline: float | None) -> dict:
    """Pipeline kwargs that end sampling with TimeUp once `time.monotonic()` passes `deadline` (checked
    after every sampler step: a step itself is never cut)."""
    if deadline is None:
        return {}

    def check(pipe, step, timestep, kwargs):
        if time.monotonic() > deadline:
            raise TimeUp(f"stopped after sampler step {step + 1} of {getattr(pipe, '_num_timesteps', '?')}")
        return kwargs

    return {"callback_on_step_end": check}


@torch.no_grad()
def generate(pipe: AnimateDiffPipeline, requests: list[Request], deadline: float | None = None) -> list[np.ndarray]:
    """Generate one video per request; returns `(f, h, w, 3) uint8` arrays in request order.

    Requests must share `settings.shape` (group them first); validate them with `validate_request`.
    `settings.motion_lora` is weights, not sampling: the caller applies it (`Personalizer.apply_motion_lora`).
    `deadline` (a `time.monotonic()` value): TimeUp is raised at the first sampler step that ends past it.
    """
    if not requests:
        return []
    s = requests[0].settings
    need(not any(r.settings.shape != s.shape for r in requests), "generate() needs requests of one shape; group by GenerationSettings.shape first")
    _use_sampler(pipe, s.sampler)
    stop = _stop_at(deadline)
    if any(_image(r) is not None for r in requests):  # validate_settings keeps these to the plain SD-1.x path
        return _generate_image_prompted(pipe, requests, stop)
    with text_only(pipe):
        return _generate_text(pipe, requests, stop)


def shareable(pipe: AnimateDiffPipeline, requests: list[Request]) -> bool:
    """Whether `requests` (one shape) may be sampled at once on views of `pipe` that share its modules
    (streams.py): the plain text path, whose per-call state is the pipeline object's own. Not context
    windows or prompt travel (FreeNoise rewires the motion modules), control inputs or an image prompt,
    FreeInit, a pipeline holding an IP-Adapter (text rows take it out of the UNet), or a compiled UNet."""
    s = requests[0].settings
    return (not uses_windows(s, module_frames(pipe)) and s.free_init_iterations <= 1 and not has_adapter(pipe)
            and not options_of(pipe).compile and all(r.conditioning is None for r in requests))


def _generate_text(pipe: AnimateDiffPipeline, requests: list[Request], stop: dict) -> list[np.ndarray]:
    s = requests[0].settings
    if any(r.conditioning is not None and r.conditioning.inputs is not None for r in requests):
        return [_generate_conditioned(pipe, r, stop) for r in requests]
    with _free_init(pipe, s.free_init_iterations):
        if uses_windows(s, module_frames(pipe)):
            return [_generate_windowed(pipe, r, stop) for r in requests]
        if isinstance(pipe, AnimateDiffSDXLPipeline):
            return _generate_batch_xl(pipe, requests, stop)
        return _generate_batch(pipe, requests, stop)


def _image(r: Request) -> ImageEmbeds | None:
    return r.conditioning.image if r.conditioning is not None else None


def _generate_image_prompted(pipe: AnimateDiffPipeline, requests: list[Request], stop: dict) -> list[np.ndarray]:
    """One batched call: requests of one shape share their image prompt cell and scale (both are in
    `settings.shape`), and diffusers' pipeline repeats the one encoded prompt for every row."""
    s, image = requests[0].settings, _image(requests[0])
    need(bool(s.ip_adapter_image) and all(_image(r) is not None for r in requests),
         "requests with an image prompt need ip_adapter_image and their encoding (Conditioning.image) on every request")
    pipe.set_ip_adapter_scale(s.ip_adapter_scale)
    return _generate_batch(pipe, requests, stop, image)


def uses_windows(s: GenerationSettings, module_len: int) -> bool:
    """Whether `s` runs on the FreeNoise path: clips longer than a window, or a prompt schedule."""
    return s.window(module_len) < s.num_frames or bool(s.prompt_schedule) or s.context_loop


@torch.no_grad()
def _generate_batch(pipe: AnimateDiffPipeline, requests: list[Request], stop: dict,
                    image: ImageEmbeds | None = None) -> list[np.ndarray]:
    """One pipeline call for `requests` (one shape); `image`: the image prompt they all share."""
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
        generator=generators, latents=latents, output_type="np", **decode_kwargs(pipe), **stop,
        **({"ip_adapter_image_embeds": image.pipeline_input(s.guidance_scale > 1)} if image is not None else {}),
    )
    return _to_uint8(out.frames)


@torch.no_grad()
def _generate_batch_xl(pipe: AnimateDiffSDXLPipeline, requests: list[Request], stop: dict) -> list[np.ndarray]:
    """SDXL: diffusers encodes the prompts with both text encoders and sets SDXL's size conditioning
    (original and target size = the video's, crop at 0, 0) and its empty-negative rule, as its pipeline does."""
    s = requests[0].settings
    generators = [torch.Generator("cpu").manual_seed(int(r.seed)) for r in requests]
    latents = _initial_latents(pipe, requests, generators, pipe._execution_device)
    out = pipe(
        prompt=[r.prompt for r in requests], negative_prompt=[r.negative_prompt or "" for r in requests],
        num_frames=s.num_frames, height=s.height, width=s.width,
        num_inference_steps=s.steps, guidance_scale=s.guidance_scale,
        generator=generators, latents=latents, output_type="np", **stop,
    )
    return _to_uint8(out.frames)


@torch.no_grad()
def _generate_windowed(pipe: AnimateDiffPipeline, r: Request, stop: dict) -> np.ndarray:
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
    with long_video.windows(pipe, window, s.context_stride, s.context_weighting, split=window < s.num_frames,
                            loop=s.context_loop):
        out = pipe(
            prompt=prompt, negative_prompt=r.negative_prompt or "",
            num_frames=s.num_frames, height=s.height, width=s.width,
            num_inference_steps=s.steps, guidance_scale=s.guidance_scale,
            generator=g, latents=latents, output_type="np", **decode_kwargs(pipe), **stop,
        )
    return _to_uint8(out.frames)[0]


PARTS = ("vae", "text_encoder", "tokenizer", "unet", "motion_adapter", "scheduler")


@torch.no_grad()
def _generate_conditioned(pipe: AnimateDiffPipeline, r: Request, stop: dict) -> np.ndarray:
    """One request with control inputs, through the diffusers pipeline for them, built over `pipe`'s
    modules: ControlNet (per-frame control images), SparseCtrl (keyframes), video-to-video (an input
    video and `strength`), or video-to-video with ControlNet. Context windows and prompt travel apply
    where the pipeline has FreeNoise (all but SparseCtrl, which settings.py keeps to one window)."""
    s, c = r.settings, r.conditioning
    inputs = c.inputs
    parts = {name: getattr(pipe, name) for name in PARTS}
    common = dict(negative_prompt=r.negative_prompt or "", height=s.height, width=s.width,
                  num_inference_steps=s.steps, guidance_scale=s.guidance_scale,
                  generator=torch.Generator("cpu").manual_seed(int(r.seed)), output_type="np")
    control = dict(conditioning_frames=_images(inputs.control), controlnet_conditioning_scale=s.control_scale) \
        if inputs.control is not None else {}
    if inputs.init is not None:
        if s.strength == 0:
            return vae_round_trip(pipe, inputs.init)
        run = (AnimateDiffVideoToVideoControlNetPipeline(**parts, controlnet=c.controlnet) if control
               else AnimateDiffVideoToVideoPipeline(**parts))
        kwargs = dict(video=_images(inputs.init), strength=s.strength, **control, **decode_kwargs(pipe))
    elif inputs.keyframes:
        run = AnimateDiffSparseControlNetPipeline(**parts, controlnet=c.keyframe_model)  # no decode_chunk_size
        kwargs = dict(num_frames=s.num_frames, conditioning_frames=_images([im for _, im in inputs.keyframes]),
                      controlnet_frame_indices=[i for i, _ in inputs.keyframes],
                      controlnet_conditioning_scale=s.control_scale)
    else:
        run = AnimateDiffControlNetPipeline(**parts, controlnet=c.controlnet)
        kwargs = dict(num_frames=s.num_frames, **control, **decode_kwargs(pipe))
    run.set_progress_bar_config(disable=True)
    prompt = parse_schedule(s.prompt_schedule, s.num_frames, r.prompt) if s.prompt_schedule else r.prompt
    window = s.window(module_frames(pipe))
    windows = long_video.windows(run, window, s.context_stride, s.context_weighting, split=window < s.num_frames,
                                 loop=s.context_loop) if uses_windows(s, module_frames(pipe)) else nullcontext()
    with _free_init(run, s.free_init_iterations), windows:
        out = run(prompt=prompt, **common, **kwargs, **stop)
    return _to_uint8(out.frames)[0]


@torch.no_grad()
def vae_round_trip(pipe: AnimateDiffPipeline, frames: np.ndarray) -> np.ndarray:
    """`(f, h, w, 3) uint8` frames through the VAE and back (the latents' mode, no noise): what
    video-to-video gives at strength 0."""
    vae = pipe.vae
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    x = x.to(device=vae.device, dtype=vae.dtype)
    latents = torch.cat([vae.encode(chunk).latent_dist.mode() for chunk in x.split(8)])
    decoded = torch.cat([vae.decode(chunk).sample for chunk in latents.split(8)])
    video = (decoded.float().clamp(-1, 1) / 2 + 0.5).permute(0, 2, 3, 1).cpu().numpy()
    return _to_uint8(video[None])[0]


def _images(frames) -> list[Image.Image]:
    return [Image.fromarray(f) for f in frames]


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
    if getattr(pipe.scheduler, "_animatediff_sampler", DEFAULT_SAMPLER) != name:
        pipe.scheduler = SAMPLERS[name].build()
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
        if given is not None:
            need(tuple(given.shape) == shape, f"conditioning latents must have shape {shape}, got {tuple(given.shape)}")
        rows.append(given if given is not None else torch.randn(shape, generator=g, dtype=torch.float32))
    return torch.stack(rows).to(device=device, dtype=dtype)  # the pipeline applies init_noise_sigma
