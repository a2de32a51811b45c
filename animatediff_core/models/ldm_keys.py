"""diffusers -> original LDM (CompVis / A1111) key names for SD-1.x UNet and CLIP text encoder.

Loading LDM checkpoints uses diffusers' own converters (`convert_ldm_unet_checkpoint`,
`convert_ldm_clip_checkpoint`); this is the other direction, needed to export personalized
checkpoints in the single-file format DreamBooth tools write. Generalized from diffusers'
`scripts/convert_diffusers_to_original_stable_diffusion.py` (hard-coded there to 4 levels and 2
layers per block) to any level count and layers_per_block.
"""

from __future__ import annotations

import torch

UNET_PREFIX = "model.diffusion_model."
CLIP_PREFIX = "cond_stage_model.transformer."

_TOP = [
    ("time_embed.0.", "time_embedding.linear_1."),
    ("time_embed.2.", "time_embedding.linear_2."),
    ("input_blocks.0.0.", "conv_in."),
    ("out.0.", "conv_norm_out."),
    ("out.2.", "conv_out."),
    ("label_emb.0.0.", "add_embedding.linear_1."),  # SDXL's size and pooled-text conditioning
    ("label_emb.0.2.", "add_embedding.linear_2."),
]
_RESNET = [
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("emb_layers.1", "time_emb_proj"),
    ("skip_connection", "conv_shortcut"),
]


def _layer_map(config: dict) -> list[tuple[str, str]]:
    levels = len(config["block_out_channels"])
    per = config["layers_per_block"]
    down_attn = ["CrossAttn" in t for t in config["down_block_types"]]
    up_attn = ["CrossAttn" in t for t in config["up_block_types"]]
    pairs = []
    for i in range(levels):
        for j in range(per):
            pairs.append((f"input_blocks.{(per + 1) * i + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."))
            if down_attn[i]:
                pairs.append((f"input_blocks.{(per + 1) * i + j + 1}.1.", f"down_blocks.{i}.attentions.{j}."))
        for j in range(per + 1):
            pairs.append((f"output_blocks.{(per + 1) * i + j}.0.", f"up_blocks.{i}.resnets.{j}."))
            if up_attn[i]:
                pairs.append((f"output_blocks.{(per + 1) * i + j}.1.", f"up_blocks.{i}.attentions.{j}."))
        if i < levels - 1:
            pairs.append((f"input_blocks.{(per + 1) * (i + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
            pairs.append((f"output_blocks.{(per + 1) * i + per}.{2 if up_attn[i] else 1}.", f"up_blocks.{i}.upsamplers.0."))
    pairs.append(("middle_block.1.", "mid_block.attentions.0."))
    for j in range(2):
        pairs.append((f"middle_block.{2 * j}.", f"mid_block.resnets.{j}."))
    return pairs


def unet_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """UNet2DConditionModel state dict -> `model.diffusion_model.*` keys."""
    layer_map = _layer_map(config)
    out = {}
    for key, v in state.items():
        new = key
        for ldm, hf in _TOP:
            if new.startswith(hf):
                new = ldm + new[len(hf):]
        if "resnets" in new:
            for ldm, hf in _RESNET:
                new = new.replace(hf, ldm)
        for ldm, hf in layer_map:
            if new.startswith(hf):
                new = ldm + new[len(hf):]
                break
        out[UNET_PREFIX + new] = v
    return out


def text_encoder_to_ldm(state: dict[str, torch.Tensor], prefix: str = CLIP_PREFIX) -> dict[str, torch.Tensor]:
    """CLIPTextModel state dict -> `cond_stage_model.transformer.text_model.*` keys (SD-1.x files; SDXL files
    hold their first text encoder under `SDXL_CLIP_PREFIX`).

    transformers >= 5 names the parameters without the `text_model.` level; SD-1.x files have it.
    """
    return {prefix + _with_text_model(k): v for k, v in state.items()}


def _with_text_model(key: str) -> str:
    return key if key.startswith(("text_model.", "text_projection.")) else "text_model." + key


SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."


def open_clip_to_ldm(state: dict[str, torch.Tensor], prefix: str = SDXL_OPEN_CLIP_PREFIX) -> dict[str, torch.Tensor]:
    """CLIPTextModelWithProjection state dict -> the OpenCLIP layout SDXL files hold their second text encoder
    in (`conditioner.embedders.1.model.*`): the inverse of diffusers' `convert_open_clip_checkpoint`, from its
    own key tables (query, key and value projections joined into `in_proj`, the projection transposed)."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING  # its tables, read, not copied

    tables = DIFFUSERS_TO_LDM_MAPPING["openclip"]
    state = {_with_text_model(k): v for k, v in state.items()}
    out = {}
    for hf, ldm in tables["layers"].items():
        if hf in state:
            out[prefix + ldm] = state[hf].T.contiguous() if ldm == "text_projection" else state[hf]
    for key, v in state.items():
        if not key.startswith("text_model.encoder.layers.") or key.rsplit(".", 2)[-2] in ("q_proj", "k_proj", "v_proj"):
            continue  # outside the layers (above), or a projection joined into in_proj (below)
        new = key
        for hf, ldm in tables["transformer"].items():
            new = new.replace(hf, ldm)
        out[prefix + "transformer." + new] = v
    layers = sorted({int(k.split(".")[3]) for k in state if k.startswith("text_model.encoder.layers.")})
    for i in layers:
        attn = f"text_model.encoder.layers.{i}.self_attn."
        for p in ("weight", "bias"):
            out[f"{prefix}transformer.resblocks.{i}.attn.in_proj_{p}"] = torch.cat([state[f"{attn}{x}_proj.{p}"] for x in "qkv"])
    return out


def align_text_keys(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Add or drop the `text_model.` level so converted keys match the installed transformers' naming."""
    if any(k.startswith("text_model.") for k in expected):
        return state
    return {k[len("text_model."):] if k.startswith("text_model.") else k: v for k, v in state.items()}


def controlnet_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """ControlNetModel state dict -> the original `control_model.*` layout (lllyasviel's ControlNet files):
    the UNet-encoder keys as `unet_to_ldm` names them, `zero_convs.N.0`, `middle_block_out.0`, and the
    control-image encoder as `input_hint_block.{0, 2, ...}` (convs between SiLUs)."""
    cn = "controlnet_cond_embedding."
    shared = {k: v for k, v in state.items() if not k.startswith(("controlnet_down_blocks.", "controlnet_mid_block.", cn))}
    out = {"control_model." + k[len(UNET_PREFIX):]: v for k, v in unet_to_ldm(shared, config).items()}
    blocks = sorted({int(k[len(cn) + 7:].split(".")[0]) for k in state if k.startswith(cn + "blocks.")})
    hint = ["conv_in", *(f"blocks.{i}" for i in blocks), "conv_out"]
    for p in ("weight", "bias"):
        out[f"control_model.middle_block_out.0.{p}"] = state[f"controlnet_mid_block.{p}"]
        for i in range(sum(k.startswith("controlnet_down_blocks.") and k.endswith(".weight") for k in state)):
            out[f"control_model.zero_convs.{i}.0.{p}"] = state[f"controlnet_down_blocks.{i}.{p}"]
        for j, name in enumerate(hint):
            out[f"control_model.input_hint_block.{2 * j}.{p}"] = state[f"{cn}{name}.{p}"]
    return out


VAE_PREFIX = "first_stage_model."
_VAE_ATTN = (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out."))


def vae_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """AutoencoderKL state dict -> `first_stage_model.*` keys, as DreamBooth files with a baked-in VAE hold it
    (the inverse of diffusers' `convert_ldm_vae_checkpoint`): `down.I.block.J`, `mid.block_1/2`, `mid.attn_1`
    with 1x1-conv attention weights, and the decoder's `up.I` numbered from the lowest resolution."""
    levels = len(config["up_block_types"])
    out = {}
    for key, v in state.items():
        new = key.replace("conv_norm_out.", "norm_out.").replace("conv_shortcut.", "nin_shortcut.")
        parts = new.split(".")
        if parts[1] == "down_blocks":  # encoder.down_blocks.I.{resnets.J|downsamplers.0}.* -> encoder.down.I.{block.J|downsample}.*
            rest = ".".join(parts[3:]).replace("resnets.", "block.", 1).replace("downsamplers.0.", "downsample.", 1)
            new = f"{parts[0]}.down.{parts[2]}.{rest}"
        elif parts[1] == "up_blocks":  # the decoder counts its levels from the lowest resolution in LDM files
            rest = ".".join(parts[3:]).replace("resnets.", "block.", 1).replace("upsamplers.0.", "upsample.", 1)
            new = f"{parts[0]}.up.{levels - 1 - int(parts[2])}.{rest}"
        elif parts[1] == "mid_block":
            rest = ".".join(parts[2:])
            if rest.startswith("resnets."):
                j, tail = rest[len("resnets."):].split(".", 1)
                rest = f"block_{int(j) + 1}.{tail}"
            else:
                rest = "attn_1." + rest[len("attentions.0."):]
                for hf, ldm in _VAE_ATTN:
                    rest = rest.replace("attn_1." + hf, "attn_1." + ldm)
                if v.ndim == 2:  # linear -> 1x1 conv, as LDM stores attention projections
                    v = v[:, :, None, None]
            new = f"{parts[0]}.mid.{rest}"
        out[VAE_PREFIX + new] = v
    return out
