"""One way to declare and check a configuration: a dataclass whose fields carry their own help.

A job's config dataclass is the only place its keys, types, defaults and help are written; the
command-line flags and YAML keys are generated from it (`jobs/config.py`), and `check_fields` (called
from `__post_init__`) checks every value against its declared type, naming the key, so YAML, flags
and Python callers are held to the same rules.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing

from .errors import ConfigError


def option(default=dataclasses.MISSING, help: str = "", choices: tuple | None = None, flag: str | None = None, **kw):
    """A dataclass field with its flag's help text (and optional choices / flag spelling)."""
    meta = {"help": help, "choices": choices, "flag": flag}
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta, **kw)
    return dataclasses.field(default=default, metadata=meta, **kw)


def need(ok: bool, message: str) -> None:
    """Raise ConfigError(message) unless `ok`: the one validation helper of the project."""
    if not ok:
        raise ConfigError(message)


def _base_type(tp):
    """(type, optional, element type) for int, float | None, list[str], tuple[str, ...], Literal..."""
    optional = False
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0] if len(args) == 1 else tp
        origin = typing.get_origin(tp)
    if origin in (list, tuple):
        return origin, optional, typing.get_args(tp)[0]
    return tp, optional, None


def field_types(cls) -> dict[str, tuple]:
    hints = typing.get_type_hints(cls)
    return {f.name: _base_type(hints[f.name]) for f in dataclasses.fields(cls)}


def _ok(value, tp) -> bool:
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is bool:
        return isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    return True  # nested dataclasses and other types check themselves


def check_fields(obj) -> None:
    """Check every field of dataclass `obj` against its annotation and declared choices; ConfigError
    names the key, what was expected and what was found. Lists given as tuples are accepted."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        tp, optional, elem = field_types(type(obj))[f.name]
        if value is None:
            need(optional, f"{f.name}: a value is required")
            continue
        if tp in (list, tuple):
            need(isinstance(value, (list, tuple)) and all(_ok(v, elem) for v in value),
                 f"{f.name}: expected a list of {elem.__name__}, found {value!r}")
        else:
            need(_ok(value, tp), f"{f.name}: expected {getattr(tp, '__name__', tp)}, found {value!r} ({type(value).__name__})")
        choices = f.metadata.get("choices") if f.metadata else None
        if choices:
            need(value in choices, f"{f.name}: expected one of {', '.join(map(str, choices))}, found {value!r}")
