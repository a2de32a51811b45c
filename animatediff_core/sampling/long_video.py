"""Long videos: sliding context windows over the frame axis (FreeNoise, Qiu et al. 2023, as diffusers ships it).

A motion module attends across at most its trained length (16, 24 or 32 frames: its position
encoding). Longer clips run every motion-module attention in overlapping windows of `context_length`
frames, `context_stride` apart, averaged with a weighting scheme (diffusers' `FreeNoiseTransformerBlock`),
and start from FreeNoise's rescheduled noise (a window of noise, shuffled window by window along the
clip: `_prepare_latents_free_noise`), so distant frames stay correlated. Spatial layers already see
each frame alone, so with windows compute and memory grow linearly with frames; split inference
(diffusers' `SplitInferenceModule`) also runs the spatial layers and motion modules in slices, so the
peak activation does not grow with the clip.

Looping clips (`loop=True`): the windows run around a ring of frames, every `context_stride` frames from
frame 0, the windows near the end wrapping past the last frame to the first (`LoopingWindowBlock`), so the
motion modules see the seam like any other stretch of the clip and the last frame leads into the first.

Why not `pipe.enable_free_noise()`: it builds new transformer blocks and copies the motion weights into
them (`load_state_dict`), and offers no way back from split inference. `windows()` switches the
existing blocks' class in place (same submodules, same parameters, LoRA layers included: no weight is
copied) and unwraps the slices on exit, so an actor goes back to the plain path bit for bit.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from diffusers import AnimateDiffPipeline
from diffusers.models.attention import BasicTransformerBlock, FreeNoiseTransformerBlock
from diffusers.pipelines.free_noise_utils import SplitInferenceModule

SPATIAL_SPLIT = 256  # (b*h*w) rows per motion-module slice
TEMPORAL_SPLIT = 16  # (b*f) frames per spatial-layer slice


def window_starts(num_frames: int, context_length: int, stride: int) -> list[int]:
    """Start frames of the windows diffusers' FreeNoise block uses (the last one flush with the end)."""
    if context_length >= num_frames:
        return [0]
    starts = list(range(0, num_frames - context_length + 1, stride))
    if starts[-1] + context_length < num_frames:
        starts.append(num_frames - context_length)
    return starts


def ring_starts(num_frames: int, context_length: int, stride: int) -> list[int]:
    """Start frames of a looping clip's windows: every `stride` frames around the ring of `num_frames`."""
    return list(range(0, num_frames, stride))


class LoopingWindowBlock(FreeNoiseTransformerBlock):
    """A FreeNoise motion block whose windows wrap around the frame axis (a looping clip).

    Same parameters and weighting schemes as diffusers' block; the windows start every `context_stride`
    frames around the ring, so with flat weighting the block commutes with a circular shift by a
    multiple of the stride (tests/core/test_long_video.py)."""

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                cross_attention_kwargs=None, *args, **kwargs):
        kw = dict(cross_attention_kwargs or {})
        kw.pop("scale", None)
        frames = hidden_states.size(1)  # hidden_states: (b*h*w, f, c)
        length = min(self.context_length, frames)
        weights = torch.tensor(self._get_frame_weights(length, self.weighting_scheme),
                               device=hidden_states.device, dtype=hidden_states.dtype)[None, :, None]
        total = torch.zeros_like(hidden_states)
        count = torch.zeros((1, frames, 1), device=hidden_states.device, dtype=hidden_states.dtype)
        for start in ring_starts(frames, length, self.context_stride):
            idx = (torch.arange(start, start + length, device=hidden_states.device)) % frames
            chunk = self._attend(hidden_states.index_select(1, idx), attention_mask, encoder_hidden_states,
                                 encoder_attention_mask, kw)
            total.index_add_(1, idx, chunk * weights)
            count.index_add_(1, idx, weights.expand(1, length, 1))
        hidden_states = total / count
        norm = self.norm3(hidden_states)
        return self.ff(norm) + hidden_states

    def _attend(self, x, attention_mask, encoder_hidden_states, encoder_attention_mask, kw):
        """One window: self-attention then cross-attention with their norms, as diffusers' block runs them."""
        norm = self.norm1(x)
        if self.pos_embed is not None:
            norm = self.pos_embed(norm)
        x = self.attn1(norm, encoder_hidden_states=encoder_hidden_states if self.only_cross_attention else None,
                       attention_mask=attention_mask, **kw) + x
        if self.attn2 is not None:
            norm = self.norm2(x)
            if self.pos_embed is not None and self.norm_type != "ada_norm_single":
                norm = self.pos_embed(norm)
            x = self.attn2(norm, encoder_hidden_states=encoder_hidden_states, attention_mask=encoder_attention_mask, **kw) + x
        return x


def _blocks(pipe: AnimateDiffPipeline) -> list:
    unet = pipe.unet
    return [b for b in (*unet.down_blocks, unet.mid_block, *unet.up_blocks) if b is not None]


def _motion_blocks(pipe: AnimateDiffPipeline) -> list:
    return [t for b in _blocks(pipe) for m in (getattr(b, "motion_modules", None) or []) for t in m.transformer_blocks]


@contextmanager
def windows(pipe: AnimateDiffPipeline, context_length: int, stride: int = 4, weighting: str = "pyramid",
            split: bool = True, loop: bool = False):
    """Inside: `pipe` samples with FreeNoise context windows (give it `prompt=`, a str or a {frame: str}
    dict, and latents of `context_length` or `num_frames` frames). On exit the plain pipeline is back."""
    blocks = _motion_blocks(pipe)
    for b in blocks:
        if not isinstance(b, BasicTransformerBlock):
            raise TypeError(f"expected plain motion transformer blocks, found {type(b).__name__}")
        b.__class__ = LoopingWindowBlock if loop else FreeNoiseTransformerBlock  # same attributes and submodules; only forward() changes
        b.set_free_noise_properties(context_length, stride, weighting)
    pipe._free_noise_context_length = context_length
    pipe._free_noise_context_stride = stride
    pipe._free_noise_weighting_scheme = weighting
    pipe._free_noise_noise_type = "shuffle_context"
    pipe._free_noise_prompt_interpolation_callback = pipe._lerp
    try:
        if split:
            pipe.enable_free_noise_split_inference(SPATIAL_SPLIT, TEMPORAL_SPLIT)
        yield pipe
    finally:
        _unsplit(pipe)
        pipe._free_noise_context_length = None
        for b in blocks:
            b.__class__ = BasicTransformerBlock


def _unsplit(pipe: AnimateDiffPipeline) -> None:
    """Undo `enable_free_noise_split_inference`: put each wrapped module back where it was."""
    def unwrap(m):
        return m.module if isinstance(m, SplitInferenceModule) else m

    for block in _blocks(pipe):
        for name in ("motion_modules", "attentions", "resnets", "downsamplers", "upsamplers"):
            modules = getattr(block, name, None)
            if modules is None:
                continue
            for i, m in enumerate(modules):
                modules[i] = unwrap(m)
            if name == "motion_modules":
                for mm in modules:
                    mm.proj_in, mm.proj_out = unwrap(mm.proj_in), unwrap(mm.proj_out)
                    for i, t in enumerate(mm.transformer_blocks):
                        mm.transformer_blocks[i] = unwrap(t)
