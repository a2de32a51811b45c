"""Opt-in speed options for generation, applied once to a loaded pipeline; all off by default.

- `fuse_qkv`: each attention's query/key/value projections as one matmul (key/value for cross-attention),
  diffusers' `Attention.fuse_projections` with its `FusedAttnProcessor2_0`, on the UNet (spatial and motion
  attention) and the VAE. The fused weights are a copy, so anything that rewrites weights or adds adapters
  (personalized checkpoints, motion-module swaps, motion LoRAs) runs inside `weights_change(pipe)`: the
  fused layers are taken out before (strict state-dict loads and key checks see the plain model) and
  refilled in place from the new weights after (the same module objects, so a compiled UNet is not
  retraced). An attention whose projections carry a peft LoRA stays unfused while the LoRA is loaded: a
  fused copy would silently drop the LoRA.
- `channels_last`: UNet and VAE convolution weights in NHWC memory layout (cuDNN's fast path for fp16).
- `compile`: `torch.compile` of the UNet in place (`nn.Module.compile`: the module, its state dict and the
  pipeline stay as they are). `compile_cache`: a local folder for inductor's caches (TORCHINDUCTOR_CACHE_DIR:
  its FX graph cache and Triton kernels), so later actors and runs on the machine reuse compiled artifacts.
- `vae_chunk`: decode latents N frames at a time (diffusers' `decode_chunk_size`; 0: diffusers' 16).

What each pays on a GPU is measured by `bench/gpu_job.py`. Frames match the plain path within fp
rounding; the resume fingerprint ignores these options, as it ignores batch composition.

Planning imports this module for `SpeedOptions` only, so torch and diffusers are imported inside the functions.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, fields

from animatediff_core.configs import check_fields, need, option

FLAGS = ("fuse_qkv", "channels_last", "compile", "compile_cache", "vae_chunk")  # the job flags (bench/tests also set the backend)
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")  # eager/aot_eager: tracing without code generation (tests)


@dataclass(frozen=True, kw_only=True)
class SpeedOptions:
    fuse_qkv: bool = option(False, help="fuse each attention's q/k/v projections into one matmul (UNet, VAE); "
                                        "attentions under a LoRA stay unfused while it is loaded")
    channels_last: bool = option(False, help="UNet and VAE weights in channels-last (NHWC) memory layout")
    compile: bool = option(False, help="torch.compile the UNet once per actor (warm-up: the first calls of "
                                       "each new shape or adapter set compile)")
    compile_cache: str = option("", help="local folder for torch.compile's caches (TORCHINDUCTOR_CACHE_DIR), "
                                         "reused by later actors and runs on the machine", path="out")
    vae_chunk: int = option(0, low=0, help="decode latents this many frames at a time (0: diffusers' 16); more is "
                                    "faster on a GPU with memory to spare, fewer saves memory")
    compile_backend: str = option("inductor", choices=COMPILE_BACKENDS, help="torch.compile backend")

    def __post_init__(self):
        check_fields(self)
        need(not self.compile_cache or self.compile,
             f"compile_cache {self.compile_cache!r} is set but compile is off: add --compile or drop --compile-cache")
        need("://" not in self.compile_cache,
             f"compile_cache must be a local folder (inductor writes files there), found {self.compile_cache!r}")

    @property
    def any(self) -> bool:
        return any(getattr(self, f.name) != f.default for f in fields(self) if f.name != "compile_backend")


OFF = SpeedOptions()


def options_of(pipe) -> SpeedOptions:
    """The options `apply_speed` put on `pipe` (OFF for a plain pipeline)."""
    return getattr(pipe, "_animatediff_speed", OFF)


def apply_speed(pipe, options: SpeedOptions) -> None:
    """Apply `options` to a loaded pipeline on its device, once (after `load_pipeline`, before generating)."""
    if options_of(pipe).any:
        raise RuntimeError("apply_speed: this pipeline already has speed options; build a new pipeline to change them")
    pipe._animatediff_speed = options
    pipe._animatediff_speed_depth = 0
    _refit(pipe)
    if options.compile:
        if options.compile_cache:  # read by inductor when it compiles, i.e. at the first call
            os.makedirs(options.compile_cache, exist_ok=True)
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.abspath(options.compile_cache)
        pipe.unet.compile(backend=options.compile_backend)


def decode_kwargs(pipe) -> dict:
    """Keyword arguments for diffusers' pipeline call that carry `vae_chunk` (none when it is 0)."""
    n = options_of(pipe).vae_chunk
    return {"decode_chunk_size": n} if n else {}


@contextmanager
def weights_change(pipe):
    """Around anything that rewrites `pipe`'s weights or adds/removes adapters: the plain model inside,
    the options re-applied to the new weights after. Reentrant; a no-op without fuse_qkv/channels_last."""
    o = options_of(pipe)
    if not (o.fuse_qkv or o.channels_last):
        yield
        return
    depth = pipe._animatediff_speed_depth
    if depth == 0 and o.fuse_qkv:
        for model in (pipe.unet, pipe.vae):
            _unfuse(model)
    pipe._animatediff_speed_depth = depth + 1
    try:
        yield
    finally:
        pipe._animatediff_speed_depth = depth
        if depth == 0:
            _refit(pipe)


def _refit(pipe) -> None:
    import torch

    o = options_of(pipe)
    for model in (pipe.unet, pipe.vae):
        if o.fuse_qkv:
            _fuse(model)
        if o.channels_last:  # new layers (a LoRA's) arrive contiguous; a no-op for weights already NHWC
            model.to(memory_format=torch.channels_last)


def _attentions(model):
    from diffusers.models.attention_processor import Attention

    return [m for m in model.modules() if isinstance(m, Attention)]


def _fuse(model) -> int:
    """Fuse every attention of `model` whose projections are plain Linear layers; returns how many are fused."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor2_0, FusedAttnProcessor2_0

    count = 0
    for m in _attentions(model):
        names = ("to_k", "to_v") if m.is_cross_attention else ("to_q", "to_k", "to_v")
        if m.fused_projections or any(type(getattr(m, n)) is not torch.nn.Linear for n in names):
            count += m.fused_projections
            continue  # a peft LoRA wraps its projections: fusing would drop the LoRA
        stash = getattr(m, "_animatediff_fused", None)
        if stash is None:
            if type(m.processor) is not AttnProcessor2_0:  # only the processor whose fused twin diffusers has
                continue
            m.fuse_projections()
            fused = "to_kv" if m.is_cross_attention else "to_qkv"
            m._animatediff_fused = (fused, getattr(m, fused), m.processor, FusedAttnProcessor2_0())
        else:  # refill the same fused layer in place from the current weights
            fused, layer, _, _ = stash
            m.add_module(fused, layer)
            with torch.no_grad():
                layer.weight.copy_(torch.cat([getattr(m, n).weight for n in names]))
                if layer.bias is not None:
                    layer.bias.copy_(torch.cat([getattr(m, n).bias for n in names]))
            m.fused_projections = True
        m.set_processor(m._animatediff_fused[3])
        count += 1
    return count


def _unfuse(model) -> None:
    """The plain attentions back: fused layers out of the module tree (kept for `_fuse`), plain processors."""
    for m in _attentions(model):
        if m.fused_projections:
            fused, _, plain, _ = m._animatediff_fused
            m._modules.pop(fused)
            m.set_processor(plain)
            m.fused_projections = False


def fused_count(pipe) -> int:
    """Attentions of the UNet and VAE running fused projections now."""
    return sum(m.fused_projections for model in (pipe.unet, pipe.vae) for m in _attentions(model))
