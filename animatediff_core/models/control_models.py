"""ControlNet and SparseCtrl models by URI, loaded beside one pipeline and kept in a small cache.

A row names its control model (`control_model`, `keyframe_model`): a diffusers folder, a Hub id found
in the local cache, or a single file whose config comes from the base UNet (an SD-1.x ControlNet copies
the UNet's encoder): for ControlNets the original `control_*.pth/.safetensors` layout or diffusers keys,
for SparseCtrl the official `v3_sd15_sparsectrl_*.ckpt` files as released (loaded safely) or diffusers keys. Models run in the pipeline's dtype on its device; the cache holds the last few, so a
table that alternates two control models does not reload them for every row.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from pathlib import Path

import torch
from diffusers import ControlNetModel, SparseControlNetModel
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

from animatediff_core.io import bounded, cache, hub
from animatediff_core.io.checkpoints import check_keys, load_state_dict
from animatediff_core.errors import CheckpointError
from animatediff_core.models.motion_formats import original_to_diffusers

SINGLE_FILE_EXTS = (".safetensors", ".pth", ".ckpt", ".pt", ".bin")


def controlnet_config(unet_config: dict) -> dict:
    """An SD-1.x ControlNet's config from its base UNet's: the encoder settings, RGB conditioning."""
    accepted = set(inspect.signature(ControlNetModel.__init__).parameters) - {"self"}
    cfg = {k: v for k, v in unet_config.items() if k in accepted}
    cfg["conditioning_channels"] = 3
    return cfg


def _local(uri: str, what: str) -> str:
    """A checked local copy of a control model (a Hub id, a path or any URI), through the bounded reader."""
    try:
        return cache.local_path(hub.resolve(uri), "model", what)
    except (bounded.InputError, CheckpointError) as e:
        raise CheckpointError(str(e) if str(e).startswith(what) else f"{what} {uri}: {e}") from None


def load_controlnet(uri: str, unet_config: dict, dtype: torch.dtype = torch.float32) -> ControlNetModel:
    try:
        local = _local(uri, "control_model")
    except CheckpointError as e:
        if str(e).endswith(": not found"):
            raise CheckpointError(f"{e} (expected a diffusers ControlNet folder, a single file or a Hub id)") from None
        raise
    try:
        if Path(local).is_dir():
            return ControlNetModel.from_pretrained(local, torch_dtype=dtype, local_files_only=True).eval()
        if not local.lower().endswith(SINGLE_FILE_EXTS):
            raise CheckpointError(f"control_model {uri}: expected a folder or a {'/'.join(SINGLE_FILE_EXTS)} file")
        return _controlnet_from_file(local, unet_config, dtype).eval()
    except CheckpointError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"control_model {uri}: could not load an SD-1.x ControlNet for this base "
                              f"({' '.join(str(e).split())[:300]})") from None


def _hint_convs(state: dict) -> tuple[str, list[int]] | None:
    """The original layout's control-image encoder: its key prefix and conv indices (`input_hint_block.N`)."""
    for prefix in ("control_model.input_hint_block.", "input_hint_block."):
        convs = sorted({int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix) and k.endswith(".weight")})
        if convs:
            return prefix, convs
    return None


def _embedding_channels(state: dict) -> tuple[int, ...] | None:
    """The control-image encoder's widths, read off the file (diffusers or original keys), if present:
    conv_in, then pairs of convs (the second of each pair widens and downsamples), then the zero conv."""
    p = "controlnet_cond_embedding."
    if f"{p}conv_in.weight" in state:
        widths, i = [state[f"{p}conv_in.weight"].shape[0]], 1
        while f"{p}blocks.{i}.weight" in state:
            widths.append(state[f"{p}blocks.{i}.weight"].shape[0])
            i += 2
        return tuple(widths)
    hint = _hint_convs(state)
    if hint is None:
        return None
    prefix, convs = hint
    return tuple(state[f"{prefix}{c}.weight"].shape[0] for c in [convs[0], *convs[2:-1:2]])


def _controlnet_from_file(path: str, unet_config: dict, dtype: torch.dtype) -> ControlNetModel:
    """One file, diffusers keys or the original `control_model.*` layout (converted by diffusers; the
    control-image encoder mapped here, whatever its depth: diffusers' converter assumes SD's four widths)."""

    cfg = controlnet_config(unet_config)
    state = load_state_dict(path)
    widths = _embedding_channels(state)
    if widths:
        cfg["conditioning_embedding_out_channels"] = widths
    hint = _hint_convs(state)
    if hint is not None:
        prefix, convs = hint
        names = ["conv_in", *(f"blocks.{i}" for i in range(len(convs) - 2)), "conv_out"]
        embedding = {f"controlnet_cond_embedding.{n}.{p}": state[f"{prefix}{c}.{p}"]
                     for n, c in zip(names, convs) for p in ("weight", "bias")}
        converted = convert_controlnet_checkpoint(state, cfg)
        state = {**{k: v for k, v in converted.items() if not k.startswith("controlnet_cond_embedding.")}, **embedding}
    model = ControlNetModel.from_config(cfg)
    model.load_state_dict(state, strict=True)
    return model.to(dtype=dtype)


def sparsectrl_config(unet_config: dict, motion_config: dict, state: dict) -> dict:
    """A SparseCtrl model's config for one file: the base UNet's encoder, the motion module's heads and
    length, and the conditioning read off the weights (RGB: VAE latents through a simplified embedding;
    scribble: 3-channel images through the control-image encoder; both concatenate a mask channel)."""
    embedding = "controlnet_cond_embedding."
    simplified = f"{embedding}weight" in state
    first = state[f"{embedding}weight" if simplified else f"{embedding}conv_in.weight"]
    cfg = {k: unet_config[k] for k in ("in_channels", "block_out_channels", "layers_per_block", "norm_num_groups",
                                       "cross_attention_dim", "attention_head_dim") if k in unet_config}
    cfg["down_block_types"] = tuple(t.replace("2D", "Motion") for t in unet_config["down_block_types"])
    cfg.update(conditioning_channels=int(first.shape[1]) - 1, use_simplified_condition_embedding=simplified,
               motion_max_seq_length=int(motion_config.get("motion_max_seq_length", 32)),
               motion_num_attention_heads=motion_config.get("motion_num_attention_heads", 8))
    widths = _embedding_channels(state)
    if widths:
        cfg["conditioning_embedding_out_channels"] = widths
    return cfg


def sparsectrl_to_diffusers(state: dict) -> dict:
    """An official SparseCtrl checkpoint (`v3_sd15_sparsectrl_rgb.ckpt`, `..._scribble.ckpt`; optionally under
    a `controlnet` key) in diffusers' SparseControlNetModel keys: its motion modules use the original motion
    module layout (renamed as motion_formats does; position-encoding buffers dropped), the rest is diffusers'."""
    state = state.get("controlnet", state) if isinstance(state.get("controlnet"), dict) else state
    motion, _ = original_to_diffusers({k: v for k, v in state.items() if ".motion_modules." in k})
    return {**{k: v for k, v in state.items() if ".motion_modules." not in k}, **motion}


def load_sparsectrl(uri: str, unet_config: dict, motion_config: dict, dtype: torch.dtype = torch.float32) -> SparseControlNetModel:
    """A SparseCtrl model from a diffusers folder, a Hub id, or one file as released (the official `.ckpt`
    layout, loaded safely) or with diffusers keys; a file's config comes from the base UNet and motion module.
    Read through the bounded reader (`_local`)."""
    try:
        local = _local(uri, "keyframe_model")
    except CheckpointError as e:
        if str(e).endswith(": not found"):
            raise CheckpointError(f"{e} (expected a SparseCtrl file such as v3_sd15_sparsectrl_rgb.ckpt, "
                                  "a diffusers SparseControlNetModel folder or a Hub id)") from None
        raise
    try:
        if Path(local).is_dir():
            return SparseControlNetModel.from_pretrained(local, torch_dtype=dtype, local_files_only=True).eval()
        state = sparsectrl_to_diffusers(load_state_dict(local))
        model = SparseControlNetModel.from_config(sparsectrl_config(unet_config, motion_config, state))
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("pos_embed.pe")}
        check_keys(expected, state, "SparseCtrl model for this base and motion module", f"keyframe_model {uri}")
        model.load_state_dict(state, strict=False)  # the position encodings are recomputed, the same formula
        return model.to(dtype=dtype).eval()
    except CheckpointError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"keyframe_model {uri}: could not load a SparseCtrl model ({str(e).splitlines()[0][:300]})") from None


class ControlModels:
    """The last `size` control models used, by (kind, URI), on `device` in `dtype`; failures remembered."""

    def __init__(self, unet_config: dict, device, dtype: torch.dtype, size: int = 2, motion_config: dict | None = None):
        self.unet_config, self.device, self.dtype, self.size = unet_config, device, dtype, size
        self.motion_config = motion_config or {}  # the loaded motion module's: SparseCtrl files share its shape
        self.models: OrderedDict[tuple[str, str], torch.nn.Module] = OrderedDict()
        self.failed: dict[tuple[str, str], str] = {}

    def get(self, kind: str, uri: str) -> torch.nn.Module:
        key = (kind, uri)
        if key in self.failed:
            raise CheckpointError(self.failed[key])
        if key not in self.models:
            try:
                model = (load_controlnet(uri, self.unet_config, self.dtype) if kind == "controlnet"
                         else load_sparsectrl(uri, self.unet_config, self.motion_config, self.dtype))
            except CheckpointError as e:
                self.failed[key] = str(e)
                raise
            while len(self.models) >= self.size:
                self.models.popitem(last=False)
            self.models[key] = model.to(self.device)
        self.models.move_to_end(key)
        return self.models[key]
