"""What to generate and with which weights: per-video settings, personalized-checkpoint specs, and
their validation. Plain Python (no torch, no diffusers), so planning tasks that only check rows
start in milliseconds instead of importing the model stack.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, replace

from .configs import need
from .errors import ConfigError

MAX_SIDE = 2048
MAX_STEPS = 1000
MAX_GUIDANCE = 50.0
KINDS = ("dreambooth", "lora")
SAMPLERS = ("ddim", "euler_trailing", "lcm")  # see schedule.ScheduleConfig.sampler
MAX_FRAMES = 1024  # longer clips run in context windows; this bounds a row's memory and time
WEIGHTINGS = ("pyramid", "flat", "delayed_reverse_sawtooth")  # diffusers' FreeNoise weighting schemes
MAX_FREE_INIT = 8
MAX_LORA_SCALE = 10.0
LORA_EXTS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
PREPROCESSORS = ("canny", "none")  # how control_video frames become ControlNet inputs (conditioning.py)
MAX_CONTROL_SCALE = 10.0


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
    # Long videos (long_video.py): more frames than the module's length run in sliding context windows.
    context_length: int = 0  # frames per window; 0: the motion module's length
    context_stride: int = 4  # frames between window starts
    context_weighting: str = "pyramid"  # how overlapping windows are averaged
    prompt_schedule: str = ""  # JSON {frame: prompt} (prompt_travel.py); "" = the row's prompt on every frame
    free_init_iterations: int = 0  # FreeInit sampling passes (0 or 1: off); each pass costs a full sampling
    # A motion LoRA stacked on the checkpoint; weights, so the caller applies it (Personalizer.apply_motion_lora).
    motion_lora: str = ""  # URI of a motion LoRA file; "" = none
    motion_lora_scale: float = 1.0
    context_loop: bool = False  # looping clip: context windows wrap around the last frame to the first
    # Control beyond text (conditioning.py); URIs of any fsspec store. One ControlNet video, or keyframes.
    control_video: str = ""  # reference video (or folder of images): per-frame ControlNet conditioning
    control_model: str = ""  # SD-1.x ControlNet: diffusers folder, single file or Hub id
    control_scale: float = 1.0
    control_preprocess: str = "canny"  # canny: edges of the reference frames; none: frames are control images already
    keyframes: str = ""  # SparseCtrl: JSON {"frame": "image URI"}, or one image URI (frame 0: image-to-video)
    keyframe_model: str = ""  # SparseCtrl model (RGB or scribble): diffusers folder or Hub id
    init_video: str = ""  # video-to-video: the input video, re-rendered with this row's checkpoint
    strength: float = 0.8  # video-to-video: how far from the input (0: its VAE round trip, 1: pure noise)

    def updated(self, **overrides) -> "GenerationSettings":
        """A copy with the non-None overrides applied (per-row values over job defaults); unknown keys are an error."""
        unknown = sorted(set(overrides) - {f.name for f in fields(self)})
        need(not unknown, f"unknown generation setting(s) {', '.join(unknown)}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def effective(self) -> "GenerationSettings":
        """A copy with the control settings no input uses put back to their defaults (a job-wide
        --control-model does not touch rows without a control_video: not their settings, nor their resume)."""
        d = GenerationSettings()
        unused = {}
        if not self.control_video:
            unused.update(control_model=d.control_model, control_preprocess=d.control_preprocess)
        if not self.keyframes:
            unused.update(keyframe_model=d.keyframe_model)
        if not self.control_video and not self.keyframes:
            unused.update(control_scale=d.control_scale)
        if not self.init_video:
            unused.update(strength=d.strength)
        return replace(self, **unused)

    @property
    def shape(self) -> tuple:
        """Everything one pipeline call shares (all but fps, which only the writer reads)."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "fps"}
        values["guidance_scale"] = float(values["guidance_scale"])
        return tuple(values.values())

    def window(self, module_frames: int) -> int:
        """Frames per context window for a motion module of `module_frames`; equals num_frames when one
        window covers the clip (then the plain, all-frames-at-once path runs)."""
        return min(self.num_frames, self.context_length or module_frames)


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
    in messages are the real ones. `max_frames`: the motion module's length (a context window's limit)."""
    for name in ("num_frames", "height", "width", "steps", "fps", "context_stride"):
        v = getattr(s, name)
        need(_positive_int(v), f"{name} must be a positive integer, got {v!r}")
    need(s.num_frames <= MAX_FRAMES, f"num_frames={s.num_frames} is larger than {MAX_FRAMES}; use at most {MAX_FRAMES} "
         f"(clips longer than the motion module's {max_frames} frames run in context windows)")
    c = s.context_length
    need(_positive_int(c) or c == 0, f"context_length must be 0 (the motion module's length) or a positive integer, got {c!r}")
    need(c <= max_frames, f"context_length={c} exceeds the motion module's length ({max_frames} frames); "
         f"use at most {max_frames}, or 0 for the module's length")
    need(s.context_stride <= s.window(max_frames) or s.window(max_frames) == s.num_frames,
         f"context_stride={s.context_stride} is larger than the context window ({s.window(max_frames)} frames): "
         "frames between windows would never be denoised; use a stride up to the window length")
    need(s.context_weighting in WEIGHTINGS, f"context_weighting must be one of {', '.join(WEIGHTINGS)}, got {s.context_weighting!r}")
    f = s.free_init_iterations
    need((_positive_int(f) or f == 0) and f <= MAX_FREE_INIT,
         f"free_init_iterations must be an integer from 0 to {MAX_FREE_INIT}, got {f!r}")
    m = s.motion_lora_scale
    need(isinstance(m, (int, float)) and not isinstance(m, bool) and math.isfinite(m) and abs(m) <= MAX_LORA_SCALE,
         f"motion_lora_scale must be a number in [-{MAX_LORA_SCALE}, {MAX_LORA_SCALE}], got {m!r}")
    need(not s.motion_lora or s.motion_lora.lower().endswith(LORA_EXTS),
         f"motion_lora must be the URI of a {'/'.join(LORA_EXTS)} file, got {s.motion_lora[:80]!r}")
    _validate_control(s, max_frames)
    if s.prompt_schedule:
        from .prompt_travel import parse_schedule

        parse_schedule(s.prompt_schedule, s.num_frames, prompt="-")  # the row's prompt is checked on its own
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


def _number_in(v, low: float, high: float) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and low <= v <= high


def _validate_control(s: GenerationSettings, max_frames: int) -> None:
    """ControlNet, SparseCtrl, video-to-video and looping settings: values, and which go together
    (each combination is one of diffusers' AnimateDiff pipelines)."""
    need(isinstance(s.context_loop, bool), f"context_loop must be true or false, got {s.context_loop!r}")
    need(s.control_preprocess in PREPROCESSORS,
         f"control_preprocess must be one of {', '.join(PREPROCESSORS)}, got {s.control_preprocess!r}")
    need(_number_in(s.control_scale, 0.0, MAX_CONTROL_SCALE),
         f"control_scale must be a number in [0, {MAX_CONTROL_SCALE}], got {s.control_scale!r}")
    need(_number_in(s.strength, 0.0, 1.0), f"strength must be a number in [0, 1], got {s.strength!r}")
    need(not s.control_video or s.control_model,
         "control_video needs a control_model (an SD-1.x ControlNet: diffusers folder, single file or Hub id)")
    need(not s.keyframes or s.keyframe_model,
         "keyframes need a keyframe_model (a SparseCtrl RGB or scribble model: diffusers folder or Hub id)")
    if s.keyframes:
        parse_keyframes(s.keyframes, s.num_frames)
        need(not s.control_video and not s.init_video,
             "keyframes (SparseCtrl) cannot be combined with control_video or init_video in one row; use one of them")
        windowed = s.window(max_frames) < s.num_frames or s.context_loop or s.prompt_schedule
        need(not windowed, f"keyframes (SparseCtrl) run in one context window: use at most {max_frames} frames, "
             "no context_loop and no prompt_schedule (diffusers' SparseCtrl pipeline has no context windows)")


def parse_keyframes(text: str, num_frames: int) -> dict[int, str]:
    """`{frame: image URI}` from a JSON object `{"0": "a.png", "15": "b.png"}` or one URI (frame 0)."""
    text = text.strip()
    if not text.startswith("{"):
        need(bool(text), "keyframes is empty; give an image URI or a JSON {\"frame\": \"image URI\"} map")
        return {0: text}
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"keyframes is not valid JSON ({getattr(e, 'msg', e)}); expected "
                          '{"0": "first.png", "15": "last.png"} or one image URI') from None
    need(isinstance(obj, dict) and obj, 'keyframes must be a non-empty JSON object {"frame": "image URI"}')
    out = {}
    for key, uri in obj.items():
        try:
            frame = int(str(key).strip())
        except ValueError:
            raise ConfigError(f"keyframes key {str(key)[:40]!r} is not a frame number; keys are frame indices") from None
        need(0 <= frame < num_frames, f"keyframes frame {frame} is outside the clip's frames 0-{num_frames - 1}")
        need(frame not in out, f"keyframes names frame {frame} twice")
        need(isinstance(uri, str) and uri.strip(), f"keyframes frame {frame} needs an image URI, got {str(uri)[:60]!r}")
        out[frame] = uri.strip()
    return dict(sorted(out.items()))
