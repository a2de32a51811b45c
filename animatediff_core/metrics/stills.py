"""Stills without motion: what the image model alone makes for a request (domain similarity's reference).

Every motion module is residual (diffusers' `AnimateDiffTransformer3D` returns `input + temporal(input)`),
so bypassing them turns the video UNet back into the image UNet, frame by frame. A still is a 1-frame
generation on the bypassed UNet: the personalized checkpoint's own image for that prompt and seed,
from the same loaded pipeline (no second copy of the base).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import torch
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

from animatediff_core.sampling.generate import Request, generate


def _identity(hidden_states, *args, **kwargs):
    return hidden_states


@contextmanager
def motion_modules_disabled(unet: torch.nn.Module):
    """Bypass every motion module of a `UNetMotionModel` inside the block; yields how many."""
    modules = [m for m in unet.modules() if isinstance(m, AnimateDiffTransformer3D)]
    for m in modules:
        m.forward = _identity  # an instance attribute shadows the class's forward; removed below
    try:
        yield len(modules)
    finally:
        for m in modules:
            del m.forward


def generate_stills(pipe, requests: list[Request]) -> list[np.ndarray]:
    """One `(h, w, 3) uint8` image per request: a 1-frame generation with the motion modules bypassed.

    Requests must share height, width, steps and guidance (as for `generate`); their frame counts and
    conditioning latents are ignored.
    """
    single = [replace(r, settings=r.settings.updated(num_frames=1), conditioning=None) for r in requests]
    with motion_modules_disabled(pipe.unet):
        return [video[0] for video in generate(pipe, single)]
