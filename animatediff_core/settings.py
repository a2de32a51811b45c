"""What to generate and with which weights: per-video settings, personalized-checkpoint specs, and
their validation. Plain Python (no torch, no diffusers), so planning tasks that only check rows
start in milliseconds instead of importing the model stack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from .configs import need

MAX_SIDE = 2048
MAX_STEPS = 1000
MAX_GUIDANCE = 50.0
KINDS = ("dreambooth", "lora")
SAMPLERS = ("ddim", "euler_trailing", "lcm")  # see schedule.ScheduleConfig.sampler


@dataclass(frozen=True)
class GenerationSettings:
    """Per-video generation settings. Defaults: AnimateDiff's inference recipe for SD-1.5."""

    num_frames: int = 16
    height: int = 512
    width: int = 512
    steps: int = 25
    guidance_scale: float = 7.5
    fps: int = 8
    sampler: str = "ddim"  # ddim (AnimateDiff), euler_trailing (AnimateDiff-Lightning), lcm (AnimateLCM)

    def updated(self, **overrides) -> "GenerationSettings":
        """A copy with the non-None overrides applied (per-row values over job defaults); unknown keys are an error."""
        unknown = sorted(set(overrides) - {f.name for f in fields(self)})
        need(not unknown, f"unknown generation setting(s) {', '.join(unknown)}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @property
    def shape(self) -> tuple:
        return (self.num_frames, self.height, self.width, self.steps, float(self.guidance_scale), self.sampler)


@dataclass(frozen=True)
class CheckpointSpec:
    """One personalized checkpoint: `uri` None means the base model itself."""

    name: str
    uri: str | None = None
    kind: str | None = None  # dreambooth | lora | None (detect from keys)
    scale: float = 1.0


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0 or (hasattr(v, "dtype") and v.dtype.kind == "i" and v > 0)


def validate_settings(s: GenerationSettings, max_frames: int, vae_scale: int = 8) -> None:
    """Raise ConfigError saying what to fix when a value is non-positive, absurd or unsupported; limits
    in messages are the real ones."""
    for name in ("num_frames", "height", "width", "steps", "fps"):
        v = getattr(s, name)
        need(_positive_int(v), f"{name} must be a positive integer, got {v!r}")
    need(s.num_frames <= max_frames,
         f"num_frames={s.num_frames} exceeds what the motion module supports ({max_frames} frames); use at most {max_frames}")
    for name in ("height", "width"):
        v = getattr(s, name)
        need(v <= MAX_SIDE, f"{name}={v} is larger than {MAX_SIDE}")
        need(v % vae_scale == 0, f"{name}={v} must be a multiple of {vae_scale}")
    need(s.steps <= MAX_STEPS, f"steps={s.steps} is larger than {MAX_STEPS}")
    need(s.fps <= 240, f"fps={s.fps} is larger than 240")
    need(s.sampler in SAMPLERS, f"sampler must be one of {', '.join(SAMPLERS)}, got {s.sampler!r}")
    g = s.guidance_scale
    need(isinstance(g, (int, float)) and not isinstance(g, bool) and math.isfinite(g) and 0 <= g <= MAX_GUIDANCE,
         f"guidance_scale must be a number in [0, {MAX_GUIDANCE}], got {g!r}")
