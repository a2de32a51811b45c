"""Motion-module checkpoint formats: the original AnimateDiff layout and diffusers' MotionAdapter.

Original keys (guoyww/AnimateDiff `motion_module.py`), e.g.
  down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.to_q.weight
  ...attention_blocks.0.pos_encoder.pe   (1, max_len, c) buffer: 24 in v1, 32 in v2/v3
  mid_block.motion_modules.0...          (v2 only)
diffusers keys drop `temporal_transformer.` and rename attention_blocks.{0,1} -> attn{1,2},
norms.{0,1} -> norm{1,2}, ff_norm -> norm3, with one `pos_embed.pe` per transformer block.
The rename table below is the inverse-able form of diffusers'
`convert_animatediff_checkpoint_to_diffusers` (loaders/single_file_utils.py).

Head count and GroupNorm groups leave no trace in tensor shapes; files we write record them in the
safetensors metadata, and other files get the official values (8 heads, 32 groups) unless overridden.
The numerics a module was trained with (`numerics.py`: mode and version) are recorded the same way
when known, and carried in memory, and in a MotionAdapter folder's config.json, as `_motion_*` config keys.
"""

from __future__ import annotations

import json
import os
import re
import struct
import tempfile

import torch
from diffusers import MotionAdapter

from animatediff_core.io import cache, hub, storage
from animatediff_core.io.checkpoints import check_keys, load_state_dict, read_safetensors_metadata, save_state_dict
from animatediff_core.errors import CheckpointError
from animatediff_core.models.inflate import check_adapter_fits
from animatediff_core.models.motion_config import MotionModuleConfig
from animatediff_core.models.numerics import CONFIG_KEYS, METADATA_KEYS, MODES, VERSIONS

# (original, diffusers) substrings; applied left-to-right original->diffusers, right-to-left back.
_RENAMES = [
    (".temporal_transformer.", "."),
    (".attention_blocks.0.", ".attn1."),
    (".attention_blocks.1.", ".attn2."),
    (".norms.0.", ".norm1."),
    (".norms.1.", ".norm2."),
    (".ff_norm.", ".norm3."),
]
_MM = re.compile(r"^(?P<block>(down_blocks|up_blocks)\.\d+|mid_block)\.motion_modules\.(?P<idx>\d+)\.")


_HOTSHOT = re.compile(r"\.temporal_attentions\.(\d+)\.")


def is_hotshot(state: dict) -> bool:
    """Hotshot-XL's temporal layers (hotshotco/Hotshot-XL, `hotshot_xl/models/transformer_temporal.py`): the
    motion module's architecture under other names (`temporal_attentions.N`, `pos_encoder.positional_encoding`)."""
    return any(".temporal_attentions." in k for k in state)


def original_to_diffusers(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int | None]:
    """Rename original-layout motion keys to MotionAdapter keys. Returns (state, pe length or None).

    Keys outside motion modules (a whole UNet saved by the original train.py) are dropped. Hotshot-XL's
    temporal layers are the same modules under other names: `down_blocks.0.temporal_attentions.0.*` is
    `down_blocks.0.motion_modules.0.temporal_transformer.*`, `pos_encoder.positional_encoding` is `pos_encoder.pe`.
    """
    out, pe_len = {}, None
    for k, v in state.items():
        k = _HOTSHOT.sub(r".motion_modules.\1.temporal_transformer.", k).replace("pos_encoder.positional_encoding", "pos_encoder.pe")
        if "motion_modules." not in k:
            continue
        if k.endswith("pos_encoder.pe"):
            pe_len = int(v.shape[1])
            continue
        for orig, diff in _RENAMES:
            k = k.replace(orig, diff)
        out[k] = v
    return out, pe_len


def diffusers_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MotionAdapter keys -> original AnimateDiff keys (pos_encoder.pe buffers included)."""
    out = {}
    for k, v in state.items():
        m = _MM.match(k)
        if m is None:
            continue
        head, rest = k[: m.end()], k[m.end():]
        if rest.endswith("pos_embed.pe"):
            block = rest[: -len("pos_embed.pe")]
            for i in (0, 1):
                out[f"{head}temporal_transformer.{block}attention_blocks.{i}.pos_encoder.pe"] = v.clone()
            continue
        rest = "." + rest
        for orig, diff in _RENAMES[1:]:
            rest = rest.replace(diff, orig)
        out[f"{head}temporal_transformer{rest}"] = v
    return out


def infer_adapter_kwargs(state: dict[str, torch.Tensor], pe_len: int | None, cfg: MotionModuleConfig) -> dict:
    """MotionAdapter constructor arguments read off the tensor shapes of a diffusers-keyed state dict."""
    channels, layers = [], []
    i = 0
    while f"down_blocks.{i}.motion_modules.0.proj_in.weight" in state:
        channels.append(int(state[f"down_blocks.{i}.motion_modules.0.proj_in.weight"].shape[1]))
        layers.append(len({k.split(".")[3] for k in state if k.startswith(f"down_blocks.{i}.motion_modules.")}))
        i += 1
    if not channels:
        raise CheckpointError("no motion modules found (expected keys like down_blocks.0.motion_modules.0...)")
    tlayers = len({k.split(".")[5] for k in state if k.startswith("down_blocks.0.motion_modules.0.transformer_blocks.")})
    return dict(
        block_out_channels=tuple(channels),
        motion_layers_per_block=layers[0] if len(set(layers)) == 1 else tuple(layers),
        motion_transformer_layers_per_block=tlayers or 1,
        motion_num_attention_heads=cfg.num_attention_heads,
        motion_norm_num_groups=cfg.norm_num_groups,
        motion_max_seq_length=pe_len or cfg.max_seq_length,
        use_motion_mid_block=any(k.startswith("mid_block.") for k in state),
    )


def _cfg_from_metadata(meta: dict[str, str], cfg: MotionModuleConfig | None) -> MotionModuleConfig:
    if cfg is not None:
        return cfg
    return MotionModuleConfig(
        num_attention_heads=int(meta.get("motion_num_attention_heads", 8)),
        norm_num_groups=int(meta.get("motion_norm_num_groups", 32)),
    )


def load_original_motion_module(uri: str, cfg: MotionModuleConfig | None = None) -> MotionAdapter:
    """Load an original-format motion module (.safetensors or .ckpt; v1, v2, v3, or a train.py UNet dump)."""
    state = load_state_dict(uri)
    meta = read_safetensors_metadata(uri) if uri.endswith(".safetensors") else {}
    converted, pe_len = original_to_diffusers(state)
    if not converted:
        raise CheckpointError(
            f"{uri}: no motion-module weights found (expected keys like "
            "'down_blocks.0.motion_modules.0.temporal_transformer...'); is this a motion module?"
        )
    kwargs = infer_adapter_kwargs(converted, pe_len, _cfg_from_metadata(meta, cfg))
    adapter = MotionAdapter(**kwargs)
    expected = {k: tuple(v.shape) for k, v in adapter.state_dict().items() if not k.endswith("pos_embed.pe")}
    check_keys(expected, converted, "AnimateDiff motion module", uri)
    adapter.load_state_dict(converted, strict=False)  # pos_embed.pe buffers are recomputed, identical formula
    _record_from_metadata(adapter, meta, uri)
    if is_hotshot(state) and not adapter.config.get(CONFIG_KEYS["version"]):
        adapter.register_to_config(**{CONFIG_KEYS["version"]: "hotshot"})  # its numerics: per-frame norms
    return adapter


def _header_shapes(uri: str) -> dict[str, torch.Tensor]:
    """`{key: meta tensor}` of a checkpoint, read without its data where the format allows (a
    safetensors header; a zip pickle memory-mapped), so a preflight check costs no weights in memory."""
    local = cache.localize(uri) if uri.endswith(".safetensors") else None
    if local is not None and os.path.isfile(local):
        with open(local, "rb") as f:
            try:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n)) if 0 < n < 100_000_000 else None
            except (struct.error, ValueError):
                header = None
        if not isinstance(header, dict):
            raise CheckpointError(f"{uri}: not a readable .safetensors file (bad header)")
        return {k: torch.empty(v["shape"], device="meta") for k, v in header.items()
                if k != "__metadata__" and isinstance(v, dict) and "shape" in v}
    return {k: v.to("meta") for k, v in load_state_dict(uri).items()}


def inspect_motion_module(uri: str, unet_config: dict, cfg: MotionModuleConfig | None = None) -> dict:
    """Check, from keys and shapes alone, that `uri` is a motion module that fits a UNet with
    `unet_config`; returns its MotionAdapter config with the numerics it records (`numerics.resolve`
    reads it; `motion_max_seq_length`: the most frames it supports). CheckpointError (one line) otherwise."""
    uri = hub.resolve(uri)
    if not storage.exists(uri):
        raise CheckpointError(f"{uri}: motion module not found (expected a MotionAdapter folder or a .safetensors/.ckpt file)")
    if storage.isdir(uri):
        try:
            config = json.loads(storage.read_bytes(storage.join(uri, "config.json")))
            weights = storage.join(uri, "diffusion_pytorch_model.safetensors")
            found = _header_shapes(weights) if storage.exists(weights) else None
        except (FileNotFoundError, ValueError) as e:
            raise CheckpointError(f"{uri}: not a diffusers MotionAdapter folder ({type(e).__name__}: {e})") from None
        with torch.device("meta"):
            try:
                adapter = MotionAdapter(**{k: v for k, v in config.items() if not k.startswith("_")})
            except TypeError as e:
                raise CheckpointError(f"{uri}: config.json is not a MotionAdapter config ({e})") from None
        if found is not None:
            check_keys({k: tuple(v.shape) for k, v in adapter.state_dict().items()}, found, "AnimateDiff motion module", uri)
        adapter.register_to_config(**{k: v for k, v in config.items() if k in CONFIG_KEYS.values()})
    else:
        meta = read_safetensors_metadata(uri) if uri.endswith(".safetensors") else {}
        shapes = _header_shapes(uri)
        converted, pe_len = original_to_diffusers(shapes)
        if not converted:
            raise CheckpointError(f"{uri}: no motion-module weights found (expected keys like "
                                  "'down_blocks.0.motion_modules.0.temporal_transformer...'); is this a motion module?")
        with torch.device("meta"):
            try:
                adapter = MotionAdapter(**infer_adapter_kwargs(converted, pe_len, _cfg_from_metadata(meta, cfg)))
            except (ValueError, TypeError, RuntimeError) as e:
                raise CheckpointError(f"{uri}: not a valid AnimateDiff motion module: its shapes make none "
                                      f"({str(e).splitlines()[0][:200]})") from None
        expected = {k: tuple(v.shape) for k, v in adapter.state_dict().items() if not k.endswith("pos_embed.pe")}
        check_keys(expected, converted, "AnimateDiff motion module", uri)
        _record_from_metadata(adapter, meta, uri)
        if is_hotshot(shapes) and not adapter.config.get(CONFIG_KEYS["version"]):
            adapter.register_to_config(**{CONFIG_KEYS["version"]: "hotshot"})
    try:
        check_adapter_fits(unet_config, adapter)
    except CheckpointError as e:
        raise CheckpointError(f"{uri}: {e}") from None
    return dict(adapter.config)


def _record_from_metadata(adapter: MotionAdapter, meta: dict[str, str], uri: str) -> None:
    """Carry a file's recorded numerics (mode, version) into the adapter's config."""
    for field, allowed in (("mode", MODES), ("version", VERSIONS)):
        value = meta.get(METADATA_KEYS[field])
        if value is None:
            continue
        if value not in allowed:
            raise CheckpointError(f"{uri}: metadata {METADATA_KEYS[field]}={value!r}; expected one of {', '.join(allowed)}")
        adapter.register_to_config(**{CONFIG_KEYS[field]: value})


def load_motion_adapter(uri: str, cfg: MotionModuleConfig | None = None) -> MotionAdapter:
    """Load a motion module from a diffusers MotionAdapter folder or an original-format file (any fsspec
    URI or Hub id)."""
    uri = hub.resolve(uri)
    if not storage.exists(uri):
        raise CheckpointError(f"{uri}: motion module not found (expected a MotionAdapter folder or a .safetensors/.ckpt file)")
    if storage.isdir(uri):
        if not storage.exists(storage.join(uri, "config.json")):
            raise CheckpointError(f"{uri}: folder has no config.json; expected a diffusers MotionAdapter folder")
        local = cache.localize(uri)
        try:
            return MotionAdapter.from_pretrained(local, local_files_only=True)
        except (OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{uri}: could not load MotionAdapter folder ({str(e)[:300]})") from None
    return load_original_motion_module(uri, cfg)


def save_motion_adapter(adapter: MotionAdapter, uri: str, fmt: str = "diffusers") -> None:
    """Save as a diffusers folder (`fmt="diffusers"`) or an original-layout file (`fmt="original"`)."""
    if fmt == "original":
        meta = {
            "format": "animatediff-original",
            "motion_num_attention_heads": str(_first(adapter.config["motion_num_attention_heads"])),
            "motion_norm_num_groups": str(adapter.config["motion_norm_num_groups"]),
            "motion_max_seq_length": str(adapter.config["motion_max_seq_length"]),
            **{METADATA_KEYS[f]: adapter.config[k] for f, k in CONFIG_KEYS.items() if adapter.config.get(k)},
        }
        save_state_dict(diffusers_to_original(adapter.state_dict()), uri, metadata=meta if uri.endswith(".safetensors") else None)
    elif fmt == "diffusers":
        with tempfile.TemporaryDirectory() as tmp:
            adapter.save_pretrained(tmp, safe_serialization=True)
            storage.upload_dir(tmp, uri)
    else:
        raise CheckpointError(f"unknown motion module format {fmt!r}; expected 'diffusers' or 'original'")


def _first(x):
    return x[0] if isinstance(x, (list, tuple)) else x
