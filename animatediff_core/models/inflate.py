"""Inflation: turn a frozen SD-1.x image UNet into a video UNet by inserting motion modules.

A motion module is a temporal transformer (diffusers' `AnimateDiffTransformer3D`): spatial positions
are folded into the batch, so self-attention runs across frames only, with sinusoidal frame
positions. One is inserted after every resnet/attention pair at every resolution level (down, mid,
up). Fresh modules get a zero-initialized output projection (AnimateDiff, following ControlNet), so
a freshly inflated UNet returns, frame by frame, exactly what the image UNet returns.
"""

from __future__ import annotations

import torch
from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

from animatediff_core.errors import CheckpointError
from animatediff_core.models.motion_config import MotionModuleConfig  # declared torch-free


def new_motion_adapter(unet_config: dict, cfg: MotionModuleConfig = MotionModuleConfig(), zero_init: bool = True) -> MotionAdapter:
    """A fresh MotionAdapter shaped for `unet_config` (a UNet2DConditionModel config)."""
    adapter = MotionAdapter(
        block_out_channels=tuple(unet_config["block_out_channels"]),
        motion_layers_per_block=unet_config["layers_per_block"],
        motion_transformer_layers_per_block=cfg.transformer_layers_per_block,
        motion_num_attention_heads=cfg.num_attention_heads,
        motion_norm_num_groups=cfg.norm_num_groups,
        motion_max_seq_length=cfg.max_seq_length,
        use_motion_mid_block=cfg.use_mid_block,
    )
    if zero_init:
        zero_init_motion_outputs(adapter)
    return adapter


@torch.no_grad()
def zero_init_motion_outputs(model: torch.nn.Module) -> int:
    """Zero the output projection of every temporal transformer in `model`; returns how many."""
    n = 0
    for name, module in model.named_modules():
        if name.endswith("proj_out") and "motion_modules" in name:
            module.weight.zero_()
            module.bias.zero_()
            n += 1
    return n


def check_adapter_fits(unet_config: dict, adapter: MotionAdapter) -> None:
    """Raise CheckpointError when the adapter was made for a UNet of another shape."""
    expected = list(unet_config["block_out_channels"])
    found = list(adapter.config["block_out_channels"])
    if expected != found:
        raise CheckpointError(
            f"motion module does not fit this base UNet: base block_out_channels {expected}, "
            f"motion module {found} (an SD-1.x motion module needs an SD-1.x base)"
        )
    lpb = adapter.config["motion_layers_per_block"]
    if isinstance(lpb, int) and lpb != unet_config["layers_per_block"]:
        raise CheckpointError(
            f"motion module does not fit this base UNet: base layers_per_block {unet_config['layers_per_block']}, "
            f"motion module {lpb}"
        )


def inflate_unet(
    unet: UNet2DConditionModel,
    motion_adapter: MotionAdapter | None = None,
    cfg: MotionModuleConfig = MotionModuleConfig(),
) -> tuple[UNetMotionModel, MotionAdapter]:
    """Insert motion modules into `unet` (not modified). Fresh, zero-initialized ones when no adapter is given.

    Returns the video UNet (input `(b, c, f, h, w)` latents, `encoder_hidden_states` repeated per frame:
    `(b*f, seq, d)`) and the adapter whose weights it holds.
    """
    if motion_adapter is None:
        motion_adapter = new_motion_adapter(dict(unet.config), cfg)
    check_adapter_fits(dict(unet.config), motion_adapter)
    video_unet = UNetMotionModel.from_unet2d(unet, motion_adapter)
    # diffusers' from_unet2d leaves SDXL's size and pooled-text embedding at its random init (it copies the time
    # embedding only; huggingface/diffusers#6721 left it for later): the base's weights belong there.
    if getattr(unet, "add_embedding", None) is not None and getattr(video_unet, "add_embedding", None) is not None:
        video_unet.add_embedding.load_state_dict(unet.add_embedding.state_dict())
    return video_unet, motion_adapter


def extract_motion_adapter(unet: UNetMotionModel) -> MotionAdapter:
    """The motion modules of a video UNet, as a standalone MotionAdapter (weights copied)."""
    c = unet.config
    adapter = MotionAdapter(
        block_out_channels=tuple(c["block_out_channels"]),
        motion_layers_per_block=c["layers_per_block"],
        motion_transformer_layers_per_block=c.get("temporal_transformer_layers_per_block", 1),
        motion_transformer_layers_per_mid_block=c.get("temporal_transformer_layers_per_mid_block", 1),
        motion_num_attention_heads=c["motion_num_attention_heads"],
        motion_norm_num_groups=c["norm_num_groups"],
        motion_max_seq_length=c["motion_max_seq_length"],
        use_motion_mid_block=c["use_motion_mid_block"],
    )
    state = {k: v for k, v in unet.state_dict().items() if "motion_modules." in k}
    adapter.load_state_dict(state, strict=True)
    return adapter.to(dtype=next(unet.parameters()).dtype)


def is_motion_param(name: str) -> bool:
    return "motion_modules." in name


def freeze_base(unet: UNetMotionModel, lora_only: bool = False) -> list[str]:
    """Mark only motion-module parameters trainable (or only motion LoRA parameters when `lora_only`).

    Everything else (the image UNet) gets requires_grad=False. Returns the trainable names.
    """
    trainable = []
    for name, p in unet.named_parameters():
        wanted = is_motion_param(name) and (not lora_only or "lora_" in name)
        p.requires_grad_(wanted)
        if wanted:
            trainable.append(name)
    if not trainable:
        raise CheckpointError("no trainable parameters: the UNet has no motion modules" + (" with LoRA adapters" if lora_only else ""))
    return trainable
