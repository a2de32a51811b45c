"""Motion-module numerics: where the official AnimateDiff and diffusers compute different functions.

The weights convert exactly between the two codebases, but two GroupNorms differ:

* Temporal: the official `TemporalTransformer3DModel` (guoyww/AnimateDiff `animatediff/models/motion_module.py`)
  rearranges `b c f h w -> (b f) c h w` before its GroupNorm, so each frame is normalized on its own;
  diffusers' `AnimateDiffTransformer3D` (0.42, `models/unets/unet_motion_model.py`) applies the same
  GroupNorm to the `(b, c, f, h, w)` tensor, so its statistics span all frames. Every official module
  (v1, v2, v3) was trained per frame.
* Spatial: the official UNet's ResnetBlock3D norms and `conv_norm_out` (`animatediff/models/resnet.py`,
  `unet.py`) normalize the whole `(b, c, f, h, w)` clip unless `use_inflated_groupnorm` is set, which
  `configs/inference/inference-v2.yaml` and `-v3.yaml` set and `-v1.yaml` (mm_sd_v14, mm_sd_v15) and
  `configs/training/v1/training.yaml` do not. diffusers always normalizes spatial layers per frame.

`apply_motion_norm(unet, mode, version)` swaps only those GroupNorm modules of a `UNetMotionModel` for
thin subclasses that share the original parameters: state-dict keys, loading, LoRA and attention
processors are untouched, and `mode="diffusers"` restores the plain modules (diffusers' own function).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import UNetMotionModel
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

from animatediff_core.configs import need
from animatediff_core.errors import CheckpointError
from animatediff_core.settings.generation import MOTION_NORMS as MODES
# SD-1.x: v1, v2, v3. SDXL: sdxl (the AnimateDiff-SDXL beta, guoyww/AnimateDiff's sdxl-beta branch, whose
# motion module normalizes the (b, c, f, h, w) clip as a whole: its official function is diffusers' own) and
# hotshot (Hotshot-XL's temporal layers, which normalize each frame, like v2/v3).
VERSIONS = ("v1", "v2", "v3", "sdxl", "hotshot")
# What a module records about its numerics: keys of a MotionAdapter's config (diffusers saves and
# loads `_`-prefixed keys without complaint) and of an original-layout file's safetensors metadata.
CONFIG_KEYS = {"mode": "_motion_norm", "version": "_motion_version"}
METADATA_KEYS = {"mode": "motion_norm", "version": "motion_version"}


@dataclass(frozen=True)
class Numerics:
    """How a video UNet normalizes: `mode` official|diffusers; `version` of the motion module (VERSIONS)."""

    mode: str = "official"
    version: str = "v2"

    @property
    def label(self) -> str:
        """"official/v2": how the numerics are recorded where a video's identity needs them."""
        return f"{self.mode}/{self.version}"

    @property
    def temporal_per_frame(self) -> bool:
        return self.mode == "official" and self.version != "sdxl"

    @property
    def spatial_across_frames(self) -> bool:
        return self.mode == "official" and self.version == "v1"


def check_mode(mode: str) -> str:
    need(mode in MODES, f"motion_norm must be one of {', '.join(MODES)}, found {mode!r}")
    return mode


def check_version(version: str) -> str:
    need(version in VERSIONS, f"motion module version must be one of {', '.join(VERSIONS)}, found {version!r}")
    return version


def detect_version(config: Mapping) -> str:
    """The AnimateDiff version a MotionAdapter or UNetMotionModel config has the shape of.

    v1 (mm_sd_v14/v15): 24 positions, no mid block; v2: a mid block; v3: 32 positions, no mid block.
    diffusers' own conversion script gives every module 32 positions, so a v1 module converted by it
    looks like v3: record `_motion_version: v1` in its config.json.
    """
    if config.get("use_motion_mid_block"):
        return "v2"
    return "v1" if int(config["motion_max_seq_length"]) == 24 else "v3"


def resolve(mode: str | None, config: Mapping, family: str = "sd1") -> Numerics:
    """The numerics to run a module with: `mode` when given, else the one the module records, else official;
    the version the module records, else the one its shape says (`sdxl` for a module of an SDXL base, whose
    shapes alone do not tell). `config`: a MotionAdapter's config."""
    if mode is not None:
        check_mode(mode)
    recorded = {field: config.get(key) for field, key in CONFIG_KEYS.items()}
    for field, allowed in (("mode", MODES), ("version", VERSIONS)):
        if recorded[field] is not None and recorded[field] not in allowed:
            raise CheckpointError(f"motion module records {CONFIG_KEYS[field]}={recorded[field]!r}; "
                                  f"expected one of {', '.join(allowed)}")
    version = recorded["version"] or ("sdxl" if family == "sdxl" else detect_version(config))
    return Numerics(mode or recorded["mode"] or "official", version)


def record(adapter, numerics: Numerics) -> None:
    """Write `numerics` into a MotionAdapter's config: saved with it, read back by `resolve`."""
    adapter.register_to_config(**{CONFIG_KEYS["mode"]: numerics.mode, CONFIG_KEYS["version"]: numerics.version})


class PerFrameGroupNorm(torch.nn.GroupNorm):
    """The motion module's GroupNorm, applied to each frame on its own, as the official module does.

    Input and output `(b, c, f, h, w)`: the layout `AnimateDiffTransformer3D.forward` hands its norm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = x.shape
        # The input is a permuted view of a `(b f) c h w` tensor: back to that layout costs no copy.
        frames = x.transpose(1, 2).reshape(b * f, c, h, w)
        out = F.group_norm(frames, self.num_groups, self.weight, self.bias, self.eps)
        return out.reshape(b, f, c, h, w).transpose(1, 2)


class FrameCount:
    """Frames per clip of the UNet call in progress, set by a forward pre-hook on the UNet."""

    def __init__(self):
        self.frames: int | None = None

    def __call__(self, module, args, kwargs) -> None:
        sample = args[0] if args else kwargs["sample"]
        self.frames = int(sample.shape[2])  # `(b, c, f, h, w)` latents


class AcrossFramesGroupNorm(torch.nn.GroupNorm):
    """A spatial GroupNorm whose statistics span all frames of a clip, as the official v1 UNet's do.

    Input and output `(b*f, c, h, w)`, the layout of diffusers' spatial layers; `f` comes from `count`.
    """

    def __init__(self, *args, count: FrameCount, **kwargs):
        super().__init__(*args, **kwargs)
        self.count = count

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.count.frames
        bf, c, h, w = x.shape
        if f is None or bf % f:
            raise RuntimeError(f"cross-frame GroupNorm needs whole clips of the UNet's frame count (found {bf} frames, "
                               f"clip length {f}); it runs only inside UNetMotionModel.forward")
        clips = x.reshape(bf // f, f, c, h, w).transpose(1, 2)  # (b, c, f, h, w)
        out = F.group_norm(clips, self.num_groups, self.weight, self.bias, self.eps)
        return out.transpose(1, 2).reshape(bf, c, h, w)


def _swap(parent: torch.nn.Module, name: str, cls: type, **kwargs) -> None:
    """Replace `parent.<name>` (a GroupNorm) by a `cls` sharing its parameters (same keys, same tensors)."""
    old = getattr(parent, name)
    if type(old) is cls and not kwargs:
        return
    new = cls(old.num_groups, old.num_channels, old.eps, affine=False, **kwargs)
    new.affine, new.weight, new.bias = old.affine, old.weight, old.bias
    new.train(old.training)
    setattr(parent, name, new)


def apply_motion_norm(unet: UNetMotionModel, mode: str, version: str) -> Numerics:
    """Make `unet` compute `mode`'s numerics for a motion module of `version`; returns them.

    official: per-frame GroupNorm in every motion module, plus cross-frame spatial norms for v1.
    diffusers: diffusers' classes as they are. Reapplying with another mode switches in place.
    """
    numerics = Numerics(check_mode(mode), check_version(version))
    temporal = PerFrameGroupNorm if numerics.temporal_per_frame else torch.nn.GroupNorm
    for module in unet.modules():
        if isinstance(module, AnimateDiffTransformer3D):
            _swap(module, "norm", temporal)
    hook = getattr(unet, "_frame_count_hook", None)
    if hook is not None:
        hook.remove()
    count = FrameCount() if numerics.spatial_across_frames else None
    spatial = dict(cls=AcrossFramesGroupNorm, count=count) if count else dict(cls=torch.nn.GroupNorm)
    for name, module in unet.named_modules():
        if isinstance(module, ResnetBlock2D) and "motion_modules" not in name:
            _swap(module, "norm1", **spatial)
            _swap(module, "norm2", **spatial)
    if unet.conv_norm_out is not None:
        _swap(unet, "conv_norm_out", **spatial)
    unet._frame_count_hook = unet.register_forward_pre_hook(count, with_kwargs=True) if count else None
    unet._numerics = numerics
    return numerics


def numerics_of(unet: UNetMotionModel) -> Numerics | None:
    """What `apply_motion_norm` last set on `unet`; None: diffusers' classes untouched."""
    return getattr(unet, "_numerics", None)
