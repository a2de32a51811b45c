"""The tensors of a TorchScript archive, read as data: its code never runs.

OpenAI's CLIP files (``ViT-B-32.pt``, ``ViT-L-14.pt``, which VBench keeps under ``clip_model/``) are TorchScript
archives. ``torch.load(weights_only=True)`` refuses them, and ``torch.jit.load`` would compile and run the
code inside. Here the archive's ``data.pkl`` goes through a restricted unpickler (Python's own recipe for
untrusted pickles: ``find_class`` decides every global): TorchScript's classes become inert attribute holders,
tensors are rebuilt from the archive's storages, and any other global refuses the file. The result is the
module's parameters and buffers under their attribute paths, the names ``module.state_dict()`` gives.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict

import torch

_DTYPES = {"FloatStorage": torch.float32, "HalfStorage": torch.float16, "DoubleStorage": torch.float64,
           "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
           "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool}


class _Object:
    """Stands for every TorchScript class: keeps the attributes it was pickled with, defines no behaviour."""

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.__dict__.update(state)


class _Storage:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


def _rebuild_tensor(storage: torch.Tensor, offset: int, size, stride, *_ignored) -> torch.Tensor:
    return torch.as_strided(storage, tuple(size), tuple(stride), offset)


def _passthrough(value, *_ignored):
    return value


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str):
        if module.startswith("__torch__"):
            return _Object
        if module == "torch" and name in _DTYPES:
            return _Storage(_DTYPES[name])
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch.jit._pickle" and (name.startswith("build_") or name == "restore_type_tag"):
            return _passthrough  # typed lists and type tags: the value itself
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")

    def persistent_load(self, pid):
        kind, storage, key, _location, _numel = pid
        if kind != "storage" or not isinstance(storage, _Storage):
            raise pickle.UnpicklingError(f"unexpected persistent id {kind!r}")
        raw = self.archive.read(f"{self.prefix}/data/{key}")
        return torch.frombuffer(bytearray(raw), dtype=storage.dtype) if raw else torch.zeros(0, dtype=storage.dtype)


def is_archive(data: bytes) -> bool:
    """A zip with TorchScript's code and constants beside its data.pkl."""
    if data[:2] != b"PK":
        return False
    try:
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    except zipfile.BadZipFile:
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def read_tensors(data: bytes) -> dict[str, torch.Tensor]:
    """``{attribute.path: tensor}`` for every tensor attribute of the archived module tree.

    Raises ``pickle.UnpicklingError`` for anything but TorchScript objects, tensors and their containers."""
    archive = zipfile.ZipFile(io.BytesIO(data))
    tops = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(tops) != 1:
        raise pickle.UnpicklingError("no single data.pkl at the archive's top")
    prefix = tops[0].split("/", 1)[0]
    order = f"{prefix}/byteorder"
    if order in archive.namelist() and archive.read(order).strip() not in (b"", b"little"):
        raise pickle.UnpicklingError("a big-endian archive")
    root = _Unpickler(archive.read(tops[0]), archive, prefix).load()
    out: dict[str, torch.Tensor] = {}
    _collect(root, "", out, set())
    return out


def _collect(obj, prefix: str, out: dict, seen: set) -> None:
    if id(obj) in seen or not isinstance(obj, _Object):
        return
    seen.add(id(obj))
    for name, value in vars(obj).items():
        if isinstance(value, torch.Tensor):
            out[prefix + name] = value
        else:
            _collect(value, f"{prefix}{name}.", out, seen)
