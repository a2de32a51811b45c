"""Prompt travel: a prompt per keyframe, text embeddings interpolated between keys.

A schedule is JSON text mapping frame indices to prompts, e.g.
`{"0": "a caterpillar on a leaf", "32": "a butterfly on a leaf"}`. Parsing is plain Python (planning
checks schedules without torch). The interpolation itself is diffusers' FreeNoise prompt encoding
(`AnimateDiffFreeNoiseMixin._encode_prompt_free_noise`): every key's prompt is encoded once, frames
between two keys get the linear interpolation of their embeddings, frames after the last key keep it.
"""

from __future__ import annotations

import json

from animatediff_core.configs import need
from animatediff_core.errors import ConfigError


def parse_schedule(text: str, num_frames: int, prompt: str = "") -> dict[int, str]:
    """`{frame: prompt}` sorted by frame, from JSON `text`; frame 0 falls back to `prompt` when not given.

    Raises ConfigError saying what to fix: unparsable JSON, a key that is not a frame index, a key past
    the last frame, an empty prompt.
    """
    try:
        raw = json.loads(text)
    except (TypeError, ValueError, RecursionError) as e:
        raise ConfigError(f"prompt_schedule is not valid JSON ({e}); write it as "
                          '{"0": "a prompt", "32": "another prompt"}') from None
    need(isinstance(raw, dict) and raw, "prompt_schedule must be a non-empty JSON object of frame index -> prompt, "
         f"e.g. {{\"0\": \"a caterpillar\", \"32\": \"a butterfly\"}}; got {_short(text)}")
    out: dict[int, str] = {}
    for key, value in raw.items():
        k = key.strip()
        need(k.isascii() and k.isdigit() and len(k) <= 9, f"prompt_schedule key {_short(key)} is not a frame index "
             "(a non-negative integer under 10^9)")
        frame = int(k)
        need(frame < num_frames, f"prompt_schedule key {frame} is past the last frame ({num_frames - 1}); "
             f"use keys from 0 to {num_frames - 1} or raise num_frames")
        need(frame not in out, f"prompt_schedule gives frame {frame} twice")
        need(isinstance(value, str) and value.strip(), f"prompt_schedule frame {frame} needs a non-empty text prompt, got {_short(value)}")
        out[frame] = value
    if 0 not in out:
        need(bool(prompt and prompt.strip()), "prompt_schedule has no key 0 and the row has no prompt for frame 0")
        out[0] = prompt
    return dict(sorted(out.items()))


def _short(v) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."
