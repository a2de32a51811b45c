"""Motion LoRA: low-rank adapters on the motion modules' attention only.

AnimateDiff (Guo et al. 2023, section 4.3 and the v2 "MotionLoRA" release) adapts a trained motion
module to a new motion pattern or a domain far from WebVid with a few videos by training LoRA
matrices on the temporal attention projections (to_q, to_k, to_v, to_out.0), base and motion
module frozen. The adapters are peft layers added through diffusers' `add_adapter`.

Saved files hold only the LoRA weights, in diffusers/peft keys:
  unet.down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q.lora_A.weight   (r, in)
  unet.down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q.lora_B.weight   (out, r)
with alpha == rank (scale 1), so `pipe.load_lora_weights(state)` (and so the batch animation job's
`Personalizer`) loads them onto an AnimateDiff pipeline whose UNet has the same motion module.

The official v2 MotionLoRA files (camera motions: v2_lora_ZoomIn.ckpt, PanLeft, TiltUp, RollingClockwise,
...) use the original AnimateDiff keys; `to_diffusers_keys` renames them:
  down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.processor.to_q_lora.down.weight
  -> unet.down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q.lora_A.weight
(their LoRA layers have no alpha: scale 1, as here).
"""

from __future__ import annotations

import re

import torch
from diffusers import UNetMotionModel
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from animatediff_core.io.checkpoints import check_keys, load_state_dict, save_state_dict
from animatediff_core.configs import need
from animatediff_core.errors import CheckpointError

ADAPTER = "motion_lora"
# Module names that get adapters: the temporal attention projections of every motion module.
TARGET_RE = r".*motion_modules\.\d+\.transformer_blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)"
PREFIX = "unet."


def add_motion_lora(unet: UNetMotionModel, rank: int, adapter_name: str = ADAPTER) -> int:
    """Add zero-output LoRA adapters (lora_B = 0) of `rank` to the motion attention of `unet`.

    The UNet's output is unchanged until the adapters are trained. Returns how many layers got one.
    """
    need(isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1, f"motion LoRA rank must be an integer >= 1, found {rank!r}")
    targets = [n for n, _ in unet.named_modules() if re.fullmatch(TARGET_RE, n)]
    if not targets:
        raise CheckpointError("no motion-module attention layers to put LoRA adapters on: the UNet has no motion modules")
    cfg = LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGET_RE, init_lora_weights=True)
    unet.add_adapter(cfg, adapter_name=adapter_name)
    return len(targets)


def motion_lora_state_dict(unet: UNetMotionModel, adapter_name: str = ADAPTER) -> dict[str, torch.Tensor]:
    """The adapter's weights in diffusers/peft keys (`unet.<module>.lora_A.weight`), detached on CPU."""
    state = get_peft_model_state_dict(unet, adapter_name=adapter_name)
    if not state:
        raise CheckpointError(f"the UNet has no LoRA adapter named {adapter_name!r}")
    return {PREFIX + k: v.detach().float().cpu().contiguous() for k, v in state.items()}


def lora_rank(state: dict[str, torch.Tensor]) -> int:
    ranks = {int(v.shape[0]) for k, v in state.items() if k.endswith("lora_A.weight")}
    if len(ranks) != 1:
        raise CheckpointError(f"expected one LoRA rank across lora_A weights, found {sorted(ranks) or 'none'}")
    return ranks.pop()


def save_motion_lora(unet: UNetMotionModel, uri: str, adapter_name: str = ADAPTER) -> None:
    """Write only the motion LoRA weights to a .safetensors file (any fsspec URI)."""
    need(uri.endswith(".safetensors"), f"{uri}: motion LoRA files are written as .safetensors")
    state = motion_lora_state_dict(unet, adapter_name)
    meta = {"format": "animatediff-motion-lora", "rank": str(lora_rank(state)), "alpha": str(lora_rank(state))}
    save_state_dict(state, uri, metadata=meta)


def load_motion_lora_into(unet: UNetMotionModel, uri: str, adapter_name: str = ADAPTER) -> None:
    """Load a file written by `save_motion_lora` into the adapter `add_motion_lora` made (strict keys)."""
    state = load_state_dict(uri)
    expected = {k: tuple(v.shape) for k, v in motion_lora_state_dict(unet, adapter_name).items()}
    check_keys(expected, state, "motion LoRA for this motion module", uri)
    peft_state = {k[len(PREFIX):]: v for k, v in state.items()}
    result = set_peft_model_state_dict(unet, peft_state, adapter_name=adapter_name)
    if getattr(result, "unexpected_keys", None):
        raise CheckpointError(f"{uri}: LoRA keys not used by the UNet: {result.unexpected_keys[:5]}")


_ORIGINAL_PARTS = ((".temporal_transformer.", "."), (".attention_blocks.0.", ".attn1."), (".attention_blocks.1.", ".attn2."),
                   (".processor.", "."), ("to_out_lora.", "to_out.0.lora."), ("_lora.", ".lora."),
                   (".lora.down.", ".lora_A."), (".lora.up.", ".lora_B."))


def _renamed(key: str) -> str:
    k = key[len("module."):] if key.startswith("module.") else key
    if "lora_A" not in k and "lora_B" not in k:
        for old, new in _ORIGINAL_PARTS:
            k = k.replace(old, new)
    return k if k.startswith(PREFIX) else PREFIX + k


def to_diffusers_keys(state: dict[str, torch.Tensor], uri: str = "") -> dict[str, torch.Tensor]:
    """A motion LoRA in diffusers/peft keys (`unet.*.lora_A.weight`), from this module's files or the
    official original-format MotionLoRA files; CheckpointError when the keys are neither or touch
    anything but motion modules."""
    return _peft_keys(state, uri, motion=True, what="a motion LoRA", expected="LoRA weights on motion modules "
                      "('*.motion_modules.*.lora_A.weight' or the original '*_lora.down.weight')")


def adapter_to_diffusers_keys(state: dict[str, torch.Tensor], uri: str = "") -> dict[str, torch.Tensor]:
    """The v3 domain adapter (`v3_sd15_adapter.ckpt`: LoRA layers in the original AnimateDiff layout on the
    image model's attention, `*.attn1.processor.to_q_lora.down.weight`) in diffusers/peft keys. The official
    loader adds scale x up @ down: no alpha here either (peft takes alpha = rank)."""
    return _peft_keys(state, uri, motion=False, what="an AnimateDiff domain adapter", expected="LoRA weights on the "
                      "image model's attention ('*.attentions.*.processor.to_q_lora.down.weight')")


def _peft_keys(state: dict[str, torch.Tensor], uri: str, motion: bool, what: str, expected: str) -> dict[str, torch.Tensor]:
    """`state` renamed to peft keys, every key a LoRA weight on the motion modules (`motion`) or on the image
    model's attention; CheckpointError naming the first key that is not."""
    out = {}
    for key, value in state.items():
        k = _renamed(key)
        placed = ".motion_modules." in k if motion else ".attentions." in k and ".motion_modules." not in k
        if not placed or not k.endswith((".lora_A.weight", ".lora_B.weight")):
            raise CheckpointError(f"{uri}: not {what}: expected {expected}, found {key!r}")
        out[k] = value
    if not out:
        raise CheckpointError(f"{uri}: the file holds no weights")
    return out
