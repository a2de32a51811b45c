"""What to generate and with which weights: per-video settings, personalized-checkpoint specs, and
their validation. Plain Python (no torch, no diffusers), so planning tasks that only check rows
start in milliseconds instead of importing the model stack.

`GenerationSettings` is the one declaration of a generation setting: each field carries its default,
help, choices, range and tags. Everything else is derived from it: the job flags and YAML keys
(`jobs/config.py` flattens it into `--num-frames` ...), the prompt table's setting columns
(`pipelines/animate/schema.py`), what defines a video (`pipelines/animate/identity.py`: ids, seeds,
the resume fingerprint, still keys) and the settings table in docs/settings.md (a test holds them together).
Adding a setting is one field here, plus its cross-field rule in `validate_settings` if it has one.

Tags (`configs.option(..., tag=value)`):
- `key`: how the setting takes part in a video's identity. "always": in every row's id, seed and
  fingerprint (the first release's settings); "changed" (the default): only when a row gives a value
  other than the default, so adding a setting keeps every existing id; "file": changes the file but
  not the frames (fingerprint only).
- `still`: changes a still (a 1-frame image with the motion modules bypassed: evaluation's domain similarity).
- `card`: shown on the index page's preview cards.
- `uri`: the cell names files to read (bounded, allow-listed reads).
- `needs`: the setting only acts when one of these settings is set; otherwise it is put back to its
  default (`effective`), so a job-wide value does not touch the identity of rows that do not use it.
- `families`: the model families whose pipelines have the feature (default: all); a row of another
  family that sets it is an error row naming the feature and the family (diffusers' SDXL AnimateDiff
  pipeline has no FreeNoise, ControlNet, SparseCtrl or video-to-video).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields, replace

from animatediff_core.configs import check_fields, need, option, short, tag
from animatediff_core.errors import ConfigError
from animatediff_core.settings.prompt_travel import parse_schedule
from animatediff_core.settings.schedule import DEFAULT_SAMPLER, SAMPLERS

MAX_SIDE = 2048
SEED_RANGE = 2**64  # what torch.Generator.manual_seed takes; the official configs use seeds up to 2**64 - 1
ANY_SEED = -1  # the official configs' "any seed": the job picks one from the row's key and records it
MAX_STEPS = 1000
MAX_GUIDANCE = 50.0
MAX_FRAMES = 1024  # longer clips run in context windows; this bounds a row's memory and time
MAX_FREE_INIT = 8
MAX_LORA_SCALE = 10.0
MAX_CONTROL_SCALE = 10.0
MAX_IMAGE_PROMPT_SCALE = 10.0
MAX_PROMPT_IMAGES = 8  # images of one image prompt (IP-Adapter): each adds its tokens to every cross-attention
KINDS = ("dreambooth", "lora")
WEIGHT_EXTS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")  # files that hold weights (modules, LoRAs)
WEIGHTINGS = ("pyramid", "flat", "delayed_reverse_sawtooth")  # diffusers' FreeNoise weighting schemes
PREPROCESSORS = ("canny", "none")  # how control_video frames become ControlNet inputs (conditioning.py)
MOTION_NORMS = ("official", "diffusers")  # motion-module numerics (numerics.py)
FAMILIES = ("sd1", "sdxl")  # the base a checkpoint and a motion module are made for: SD-1.x, SDXL
FAMILY_NAMES = {"sd1": "SD-1.x", "sdxl": "SDXL"}


def family_of(unet_config: dict) -> str:
    """`sdxl` for an SDXL UNet config (its size and pooled-text conditioning), else `sd1`."""
    return "sdxl" if unet_config.get("addition_embed_type") == "text_time" else "sd1"


@dataclass(frozen=True)
class GenerationSettings:
    """Per-video generation settings. Defaults: AnimateDiff's inference recipe for SD-1.5."""

    num_frames: int = option(16, low=1, high=MAX_FRAMES, key="always", card=True, help="frames per video",
                             hint="clips longer than the motion module run in context windows")
    height: int = option(512, low=1, high=MAX_SIDE, key="always", still=True, card=True, help="pixels (a multiple of 8)")
    width: int = option(512, low=1, high=MAX_SIDE, key="always", still=True, card=True, help="pixels (a multiple of 8)")
    steps: int = option(25, low=1, high=MAX_STEPS, key="always", still=True, card=True, help="sampler steps")
    guidance_scale: float = option(7.5, low=0, high=MAX_GUIDANCE, key="always", still=True, card=True,
                                   help="classifier-free guidance")
    fps: int = option(8, low=1, high=240, key="file", help="frames per second of the mp4/GIF")
    sampler: str = option(DEFAULT_SAMPLER, choices=tuple(SAMPLERS), still=True, card=True,
                          help="; ".join(f"{s.name}: {s.help}" for s in SAMPLERS.values()))
    # Long videos (long_video.py): more frames than the module's length run in sliding context windows.
    context_length: int = option(0, low=0, help="frames per context window for long clips; 0: the motion module's length")
    context_stride: int = option(4, low=1, help="frames between context-window starts")
    context_weighting: str = option("pyramid", choices=WEIGHTINGS, help="how overlapping windows are averaged")
    prompt_schedule: str = option("", families=("sd1",), help='prompt travel: JSON {"frame": "prompt", ...}; empty: the row\'s prompt on every frame')
    free_init_iterations: int = option(0, low=0, high=MAX_FREE_INIT, help="FreeInit sampling passes (0: off); each costs a full sampling")
    # A motion LoRA stacked on the checkpoint; weights, so the caller applies it (Personalizer.apply_motion_lora).
    motion_lora: str = option("", uri=True, card=True, families=("sd1",), help="a motion LoRA file stacked on the checkpoint "
                              "(official v2 camera-motion .ckpt, or a jobs.train --motion-lora file)")
    motion_lora_scale: float = option(1.0, low=-MAX_LORA_SCALE, high=MAX_LORA_SCALE, help="the motion LoRA's weight")
    context_loop: bool = option(False, families=("sd1",), help="a looping clip: context windows wrap from the last frame to the first")
    # Control beyond text (conditioning.py); URIs of any fsspec store. One ControlNet video, or keyframes.
    control_video: str = option("", uri=True, card=True, families=("sd1",), help="ControlNet reference: a video or a folder of images (any fsspec URI)")
    control_model: str = option("", uri=True, needs=("control_video",),
                                help="the SD-1.x ControlNet: diffusers folder, single file or Hub id")
    control_scale: float = option(1.0, low=0, high=MAX_CONTROL_SCALE, needs=("control_video", "keyframes"),
                                  help="ControlNet / SparseCtrl conditioning scale (0: the text-only video)")
    control_preprocess: str = option("canny", choices=PREPROCESSORS, needs=("control_video",),
                                     help="canny: edges of the reference frames; none: they already are control images")
    keyframes: str = option("", uri=True, card=True, families=("sd1",),
                            help='SparseCtrl: one image URI (image-to-video) or JSON {"frame": "image URI"}; -1 is the last frame')
    keyframe_model: str = option("", uri=True, needs=("keyframes",),
                                 help="the SparseCtrl model (RGB or scribble): an official .ckpt, a diffusers folder or a Hub id")
    keyframe_normalize: bool = option(False, needs=("keyframes",), help="keyframes to gray, stretched to the full range "
                                      "(the official normalize_condition_images, for scribbles)")
    init_video: str = option("", uri=True, card=True, families=("sd1",), help="video-to-video: the input video (any fsspec URI)")
    strength: float = option(0.8, low=0, high=1, needs=("init_video",),
                             help="video-to-video: 0 keeps the input (its VAE round trip), 1 ignores it")
    # Image prompts (image_prompt.py): IP-Adapter's decoupled cross-attention, the adapter a job-wide --ip-adapter.
    ip_adapter_image: str = option("", uri=True, card=True, help="image prompt (IP-Adapter, needs --ip-adapter): an image URI, "
                                   'or a JSON list ["a.png", "b.png"] of up to 8 images prompting together, as diffusers takes a list')
    ip_adapter_scale: float = option(1.0, low=0, high=MAX_IMAGE_PROMPT_SCALE, needs=("ip_adapter_image",),
                                     help="the image prompt's weight (0: the text-only video)")

    def __post_init__(self):
        check_fields(self)

    def updated(self, **overrides) -> "GenerationSettings":
        """A copy with the non-None overrides applied (per-row values over job defaults); unknown keys are an error."""
        unknown = sorted(set(overrides) - set(NAMES))
        need(not unknown, f"unknown generation setting(s) {', '.join(unknown)}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def effective(self) -> "GenerationSettings":
        """A copy with the settings no input uses (tag `needs`) put back to their defaults: a job-wide
        --control-model does not touch rows without a control_video, neither their settings nor their resume."""
        unused = {f.name: f.default for f in fields(self)
                  if tag(f, "needs") and not any(getattr(self, other) for other in tag(f, "needs"))}
        return replace(self, **unused) if unused else self

    @property
    def shape(self) -> tuple:
        """Everything one pipeline call shares: every setting that changes the frames (not fps)."""
        return tuple(float(getattr(self, n)) if n == "guidance_scale" else getattr(self, n) for n in FRAME_SETTINGS)

    def window(self, module_frames: int) -> int:
        """Frames per context window for a motion module of `module_frames`; equals num_frames when one
        window covers the clip (then the plain, all-frames-at-once path runs)."""
        return min(self.num_frames, self.context_length or module_frames)


FIELDS = {f.name: f for f in fields(GenerationSettings)}
NAMES = tuple(FIELDS)
FRAME_SETTINGS = tuple(n for n, f in FIELDS.items() if tag(f, "key", "changed") != "file")
STILL_SETTINGS = tuple(n for n, f in FIELDS.items() if tag(f, "still"))
URI_SETTINGS = tuple(n for n, f in FIELDS.items() if tag(f, "uri"))


LORA_ALPHAS = ("file", "ignore")
VAE_SOURCES = ("own", "base")  # or the URI of a VAE


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA of a checkpoint stack, with its weight."""

    uri: str
    scale: float = 1.0
    # file: W += scale * alpha / rank * up @ down with the file's alpha (kohya, A1111, ComfyUI; rank when it has none);
    # ignore: W += scale * up @ down, the file's alpha ignored (the official AnimateDiff's convert_lora / lora_alpha)
    alpha: str = "file"


@dataclass(frozen=True)
class CheckpointSpec:
    """One personalized checkpoint: a stack, as the official AnimateDiff's `load_weights` and ComfyUI build it.

    `uri`: a DreamBooth single file, or a LoRA file (the stack's first LoRA, at `scale`); None: the base.
    `loras`: more LoRAs over it, each with its weight. `adapter`: the v3 domain adapter LoRA (official
    layout, `v3_sd15_adapter.ckpt`) at `adapter_scale`. `vae`: `own` (the DreamBooth file's VAE when it has
    one, else the base's), `base`, or the URI of a VAE (a diffusers AutoencoderKL folder or a single file)."""

    name: str
    uri: str | None = None
    kind: str | None = None  # dreambooth | lora | None (detect from keys)
    scale: float = 1.0
    loras: tuple[LoraSpec, ...] = ()
    adapter: str | None = None
    adapter_scale: float = 1.0
    vae: str = "own"
    base: str | None = None  # the base it runs on (a diffusers folder or Hub id); None: the job's --base

    @property
    def identity(self) -> dict:
        """What defines its weights (resume fingerprints): everything but the name."""
        return {"uri": self.uri or "", "kind": self.kind, "scale": self.scale,
                "loras": [[lo.uri, lo.scale, lo.alpha] for lo in self.loras],
                "adapter": self.adapter or "", "adapter_scale": self.adapter_scale, "vae": self.vae,
                **({"base": self.base} if self.base else {})}

    @property
    def stack(self) -> str:
        """The stack beyond `uri` as JSON (metadata's `checkpoint_stack`; "" for a plain file or the base)."""
        extra = {k: v for k, v in self.identity.items() if k not in ("uri", "kind", "scale")}
        plain = not self.loras and not self.adapter and self.vae == "own" and not self.base
        return "" if plain else json.dumps({**extra, "scale": self.scale}, sort_keys=True)

    @classmethod
    def from_metadata(cls, name: str, uri: str, stack: str) -> "CheckpointSpec":
        """The spec a metadata row's `checkpoint_uri` and `checkpoint_stack` describe (evaluation's stills)."""
        if not stack:
            return cls(name, uri or None)
        d = json.loads(stack)
        return cls(name, uri or None, None, d.get("scale", 1.0), tuple(LoraSpec(*lo) for lo in d.get("loras", [])),
                   d.get("adapter") or None, d.get("adapter_scale", 1.0), d.get("vae", "own"), d.get("base") or None)


def parse_loras(text: str) -> tuple[LoraSpec, ...]:
    """A checkpoint table's `loras` cell: a JSON list of `{"uri": ..., "scale": 0.8, "alpha": "file"}` (scale
    and alpha optional) or of plain URIs; empty: none."""
    text = (text or "").strip()
    if not text:
        return ()
    try:
        items = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"loras is not valid JSON ({getattr(e, 'msg', e)}); expected "
                          '[{"uri": "a.safetensors", "scale": 0.8}, ...]') from None
    need(isinstance(items, list), f'loras must be a JSON list like [{{"uri": "a.safetensors", "scale": 0.8}}], got {text[:60]!r}')
    out = []
    for item in items:
        item = {"uri": item} if isinstance(item, str) else item
        need(isinstance(item, dict) and isinstance(item.get("uri"), str) and item["uri"].strip(),
             f"each of loras needs a \"uri\", got {str(item)[:60]!r}")
        unknown = sorted(set(item) - {"uri", "scale", "alpha"})
        need(not unknown, f"loras entry {item['uri'][:60]!r}: unknown key(s) {', '.join(unknown)} (known: uri, scale, alpha)")
        scale, alpha = item.get("scale", 1.0), item.get("alpha", "file")
        need(isinstance(scale, (int, float)) and not isinstance(scale, bool) and math.isfinite(scale),
             f"loras entry {item['uri'][:60]!r}: scale must be a finite number, got {scale!r}")
        need(alpha in LORA_ALPHAS, f"loras entry {item['uri'][:60]!r}: alpha must be one of {', '.join(LORA_ALPHAS)}, got {alpha!r}")
        out.append(LoraSpec(item["uri"].strip(), float(scale), alpha))
    return tuple(out)


def validate_settings(s: GenerationSettings, max_frames: int, vae_scale: int = 8, family: str = "sd1") -> None:
    """The rules between settings and those that depend on the motion module (`max_frames`: its length,
    a context window's limit), the VAE and the model family; each value's own type, choices and range were
    checked when `s` was built. Raises ConfigError saying what to fix."""
    for name, f in FIELDS.items():
        families = tag(f, "families") or FAMILIES
        if family not in families and getattr(s, name) != f.default:
            raise ConfigError(f"{name} is not available for {FAMILY_NAMES[family]} checkpoints (only "
                              f"{', '.join(FAMILY_NAMES[x] for x in families)}): diffusers' {FAMILY_NAMES[family]} "
                              "AnimateDiff pipeline has no such input")
    need(family == "sd1" or s.window(max_frames) >= s.num_frames,
         f"num_frames={s.num_frames} is longer than the motion module ({max_frames} frames): context windows (long clips) "
         f"are SD-1.x only; use at most {max_frames} frames for {FAMILY_NAMES[family]} checkpoints")
    c = s.context_length
    need(c <= max_frames, f"context_length={c} exceeds the motion module's length ({max_frames} frames); "
         f"use at most {max_frames}, or 0 for the module's length")
    need(s.context_stride <= s.window(max_frames) or s.window(max_frames) == s.num_frames,
         f"context_stride={s.context_stride} is larger than the context window ({s.window(max_frames)} frames): "
         "frames between windows would never be denoised; use a stride up to the window length")
    need(not s.motion_lora or s.motion_lora.lower().endswith(WEIGHT_EXTS),
         f"motion_lora must be the URI of a {'/'.join(WEIGHT_EXTS)} file, got {s.motion_lora[:80]!r}")
    _validate_control(s, max_frames)
    _validate_image_prompt(s, max_frames, family)
    if s.prompt_schedule:
        parse_schedule(s.prompt_schedule, s.num_frames, prompt="-")  # the row's prompt is checked on its own
    for name in ("height", "width"):
        v = getattr(s, name)
        need(v % vae_scale == 0, f"{name}={v} must be a multiple of {vae_scale}")


def _validate_control(s: GenerationSettings, max_frames: int) -> None:
    """ControlNet, SparseCtrl and video-to-video: which inputs go together (each combination is one of
    diffusers' AnimateDiff pipelines)."""
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
    """`{frame: image URI}` from a JSON object `{"0": "a.png", "-1": "b.png"}` (negative: from the end) or one URI (frame 0)."""
    text = text.strip()
    if not text.startswith("{"):
        need(bool(text), "keyframes is empty; give an image URI or a JSON {\"frame\": \"image URI\"} map")
        return {0: text}
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ConfigError(f"keyframes is not valid JSON ({getattr(e, 'msg', e)}); expected "
                          '{"0": "first.png", "15": "last.png"} or one image URI') from None
    need(isinstance(obj, dict) and obj, 'keyframes must be a non-empty JSON object {"frame": "image URI"}')
    out = {}
    for key, uri in obj.items():
        try:
            frame = int(str(key).strip())
        except ValueError:
            raise ConfigError(f"keyframes key {str(key)[:40]!r} is not a frame number; keys are frame indices") from None
        need(-num_frames <= frame < num_frames, f"keyframes frame {frame} is outside the clip's frames 0-{num_frames - 1} "
             f"(or -1 to -{num_frames}, counted from the end)")
        frame %= num_frames  # -1: the last frame, as the official controlnet_image_indexs count
        need(frame not in out, f"keyframes names frame {frame} twice")
        need(isinstance(uri, str) and uri.strip(), f"keyframes frame {frame} needs an image URI, got {str(uri)[:60]!r}")
        out[frame] = uri.strip()
    return dict(sorted(out.items()))


def _validate_image_prompt(s: GenerationSettings, max_frames: int, family: str) -> None:
    """An image prompt runs on the plain text-to-video path only: the combinations below are untested here
    (several run in diffusers' pipelines), so a row asking for one is refused by name rather than guessed at."""
    if not s.ip_adapter_image:
        return
    parse_image_prompt(s.ip_adapter_image)
    others = [("SDXL checkpoints", family != "sd1"),
              ("context windows (num_frames longer than the context window, context_loop)",
               s.window(max_frames) < s.num_frames or s.context_loop),
              ("prompt_schedule (prompt travel)", bool(s.prompt_schedule)),
              ("free_init_iterations (FreeInit)", s.free_init_iterations > 1),
              ("control_video (ControlNet)", bool(s.control_video)), ("keyframes (SparseCtrl)", bool(s.keyframes)),
              ("init_video (video-to-video)", bool(s.init_video))]
    found = [name for name, used in others if used]
    need(not found, f"ip_adapter_image (IP-Adapter) is not supported with {', '.join(found)} yet: only plain SD-1.x "
         "text-to-video within one context window; drop one of them")


def parse_image_prompt(text: str) -> tuple[str, ...]:
    """The image URIs of an `ip_adapter_image` cell: one URI, or a JSON list of 1 to MAX_PROMPT_IMAGES URIs."""
    text = (text or "").strip()
    if not text.startswith("["):
        need(bool(text), 'ip_adapter_image is empty; give an image URI or a JSON list ["a.png", "b.png"]')
        return (text,)
    try:
        items = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"ip_adapter_image is not valid JSON ({getattr(e, 'msg', e)}); expected one image URI "
                          'or a list ["a.png", "b.png"]') from None
    need(isinstance(items, list) and 1 <= len(items) <= MAX_PROMPT_IMAGES,
         f"ip_adapter_image must list 1 to {MAX_PROMPT_IMAGES} image URIs, got {short(items)}")
    for uri in items:
        need(isinstance(uri, str) and uri.strip(), f"ip_adapter_image entries must be image URIs, got {short(uri)}")
    return tuple(uri.strip() for uri in items)
