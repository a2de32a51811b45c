"""Safe checkpoint IO and strict key checks.

Community checkpoints are untrusted. Nothing is ever unpickled: `.safetensors` is read as data,
and `.ckpt/.pt/.pth/.bin` only through `torch.load(weights_only=True)`, whose restricted
unpickler refuses any global that is not a tensor type, or, for a TorchScript archive (OpenAI's CLIP
files), through `torchscript_weights`, which reads its tensors and never its code. A pickle that would
run code is refused with a CheckpointError naming the file, and the code never runs.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load, load_file as st_load_file, save as st_save

from animatediff_core.io import bounded, cache, hub, storage, torchscript_weights
from animatediff_core.errors import CheckpointError

SAFETENSORS_EXT = (".safetensors",)


def _sniff(data: bytes) -> str:
    if len(data) >= 10:
        (header_len,) = struct.unpack("<Q", data[:8])
        if 0 < header_len < len(data) and data[8:9] == b"{":
            return "safetensors"
    if data[:2] == b"PK" or data[:1] == b"\x80":
        return "pickle"
    return "unknown"


def read_safetensors_metadata(uri: str) -> dict[str, str]:
    """The `__metadata__` string map of a .safetensors file ({} when absent)."""
    data = _read(uri)
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
    except (struct.error, ValueError, RecursionError) as e:
        raise CheckpointError(f"{uri}: not a readable .safetensors header ({e})") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return dict(meta) if isinstance(meta, dict) else {}


def _read(uri: str, kind: str = "model") -> bytes:
    """The file's bytes through the bounded reader (a regular file, within its kind's size limit)."""
    try:
        data = bounded.read_bytes(uri, kind)
    except bounded.InputError as e:
        if str(e).endswith(": not found"):
            raise CheckpointError(f"{uri}: checkpoint not found (expected a .safetensors, .ckpt, .pt or .bin file)") from None
        raise CheckpointError(str(e)) from None
    if not data:
        raise CheckpointError(f"{uri}: checkpoint file is empty")
    return data


def load_state_dict(uri: str, kind: str = "model", nested: bool = False) -> dict[str, torch.Tensor]:
    """Read a flat `{name: tensor}` state dict from any fsspec URI, safely, through the bounded reader
    (`bounded.py`: where it may point, a regular file, at most the size limit of `kind`: lora or model).

    Unwraps the containers training scripts write (`{"state_dict": ...}`) and strips a DDP `module.`
    prefix. `nested`: one level of dicts of tensors is kept as `outer.inner` keys (IP-Adapter's `.bin`
    files: `{"image_proj": {...}, "ip_adapter": {...}}`), not dropped. Raises CheckpointError for a
    missing, empty, truncated, unsafe or unrecognized file.
    """
    try:
        uri = hub.resolve(uri, kind=kind)  # Hub ids and https:// files: a local cached copy
    except bounded.InputError as e:
        raise CheckpointError(str(e)) from None
    if uri.endswith(SAFETENSORS_EXT) and storage.is_local(uri) and os.path.isfile(storage.fs_and_path(uri)[1]):
        try:
            path = cache.local_path(uri, kind)  # a regular file within the limit (a link to /dev/zero is not)
        except bounded.InputError as e:
            raise CheckpointError(str(e)) from None
        return _unwrap(uri, _load_local_safetensors(path), nested)
    data = _read(uri, kind)
    fmt = _sniff(data)
    if uri.endswith(SAFETENSORS_EXT) or fmt == "safetensors":
        try:
            state = st_load(data)
        except (SafetensorError, Exception) as e:  # safetensors raises several types on truncation
            raise CheckpointError(f"{uri}: truncated or corrupt .safetensors file ({e})") from None
    elif fmt == "pickle":
        state = _load_pickle_safely(uri, data)
    else:
        raise CheckpointError(
            f"{uri}: unrecognized checkpoint format (expected .safetensors, or a torch .ckpt/.pt/.bin zip/pickle)"
        )
    return _unwrap(uri, state, nested)


def _load_local_safetensors(uri: str) -> dict[str, torch.Tensor]:
    """Memory-mapped read of a local .safetensors file (no whole-file copy in RAM first)."""
    path = storage.fs_and_path(uri)[1]
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{uri}: checkpoint file is empty")
    try:
        return st_load_file(path)
    except Exception as e:  # SafetensorError, OSError, ValueError on truncation or a bad header
        raise CheckpointError(f"{uri}: truncated or corrupt .safetensors file ({e})") from None


def _load_pickle_safely(uri: str, data: bytes) -> object:
    if torchscript_weights.is_archive(data):
        try:
            return torchscript_weights.read_tensors(data)
        except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as e:
            raise CheckpointError(f"{uri}: refused to load: a TorchScript archive holding more than modules and tensors "
                                  f"({str(e)[:200]}); its code is never run") from None
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{uri}: refused to load: the pickle holds objects other than tensors ({first[:200]}). "
            "Untrusted pickles are never executed; convert the file to .safetensors with a tool you trust."
        ) from None
    except (EOFError, RuntimeError, ValueError, OSError) as e:
        raise CheckpointError(f"{uri}: truncated or corrupt checkpoint ({type(e).__name__}: {str(e)[:200]})") from None


def _unwrap(uri: str, state: object, nested: bool = False) -> dict[str, torch.Tensor]:
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{uri}: expected a non-empty mapping of tensor names to tensors, found {type(state).__name__}")
    if nested:
        state = {f"{k}.{inner}" if isinstance(v, dict) else k: w
                 for k, v in state.items() for inner, w in (v.items() if isinstance(v, dict) else [(None, v)])}
    out = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            continue  # e.g. "global_step" ints in LDM checkpoints
        out[k[len("module."):] if k.startswith("module.") else k] = v
    if not out:
        raise CheckpointError(f"{uri}: no tensors found in checkpoint")
    return out


def save_state_dict(state: dict[str, torch.Tensor], uri: str, metadata: dict[str, str] | None = None) -> None:
    """Write `state` to `uri` atomically: .safetensors (with string metadata) or a tensors-only torch file."""
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    if uri.endswith(SAFETENSORS_EXT):
        data = _canonical_header(st_save(state, metadata=metadata))
    else:
        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
    storage.write_bytes_atomic(uri, data)


def _canonical_header(data: bytes) -> bytes:
    """Re-serialize the safetensors JSON header with sorted keys so equal inputs give equal bytes
    (safetensors writes `__metadata__` in hash order). Offsets are relative to the body: unchanged."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.dumps(json.loads(data[8 : 8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + data[8 + n :]


def check_keys(expected: dict[str, tuple], found: dict[str, torch.Tensor], what: str, uri: str) -> None:
    """Strict check: raise one CheckpointError listing missing, unexpected and wrong-shape keys."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [f"{k}: expected {tuple(expected[k])}, found {tuple(found[k].shape)}"
             for k in sorted(set(expected) & set(found)) if tuple(found[k].shape) != tuple(expected[k])]
    if not (missing or unexpected or wrong):
        return
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            shown = ", ".join(items[:5]) + (f", ... ({len(items)} in all)" if len(items) > 5 else "")
            parts.append(f"{label}: {shown}")
    raise CheckpointError(f"{uri}: not a valid {what}; " + "; ".join(parts))
