"""One way to declare and check a configuration: a dataclass whose fields carry their own help and rules.

A config dataclass is the only place its keys, types, defaults, help, choices, ranges and tags are
written. The command-line flags and YAML keys are generated from it (`jobs/config.py`; a field declared
with `section(...)` holds a nested dataclass whose fields are flattened into the same flags and keys),
table columns and fingerprints read its tags (`pipelines/animate/schema.py`, `identity.py`).

The project's one validation style:
- a value's own rules (type, choices, range) are declared on its field with `option(...)` and checked by
  `check_fields`, which every config calls from `__post_init__`: YAML, flags, table cells and Python
  callers are held to the same rules, once;
- rules between fields, and checks at a boundary (a file exists, a table has its columns), are
  `need(ok, message)`;
- every message names the key and says what was expected and what was found ("steps must be an integer
  from 1 to 1000, got 0"). ConfigError is the one exception for user input: jobs turn it into one line
  (exit 2 for flags and YAML keys), planning into an error row.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing

from animatediff_core.errors import ConfigError


def option(default=dataclasses.MISSING, help: str = "", choices: tuple | None = None, flag: str | None = None,
           low: float | None = None, high: float | None = None, hint: str = "", **tags):
    """A dataclass field with its flag's help text and its rules: `choices`, a range `[low, high]` for
    numbers, `hint` (appended to a range message), an explicit `flag` spelling, and free-form `tags` that
    other modules read (e.g. GenerationSettings' `key`, `still`, `card`, `needs`)."""
    meta = {"help": help, "choices": choices, "flag": flag, "low": low, "high": high, "hint": hint, **tags}
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def section(cls, help: str = ""):
    """A field holding the nested config dataclass `cls` (defaults: `cls()`): its fields become flags and
    YAML keys of the enclosing config under their own names (`--num-frames`, not `--generation.num-frames`);
    YAML may also give them nested (`generation: {num_frames: 32}`). `help` is appended to each flag's help."""
    return dataclasses.field(default_factory=cls, metadata={"section": True, "help": help})


def need(ok: bool, message: str) -> None:
    """Raise ConfigError(message) unless `ok`: the one validation helper of the project."""
    if not ok:
        raise ConfigError(message)


def short(value, limit: int = 60) -> str:
    """`repr(value)` cut to `limit` characters: a hostile cell never makes a message huge."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_section(f: dataclasses.Field) -> bool:
    return bool(f.metadata and f.metadata.get("section"))


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


@functools.cache
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
    return True  # unions (`int | str`) and nested dataclasses check themselves


_NAMES = {int: "an integer", float: "a finite number", bool: "true or false", str: "text"}


def _range(tp, low, high) -> str:
    what = "an integer" if tp is int else "a number"
    if low is not None and high is not None:
        return f"{what} from {low:g} to {high:g}"
    return f"{what} >= {low:g}" if low is not None else f"{what} <= {high:g}"


def check_fields(obj) -> None:
    """Check every field of dataclass `obj` against its annotation, choices and range; ConfigError names
    the key, what was expected and what was found. Lists given as tuples are accepted."""
    types_ = field_types(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        tp, optional, elem = types_[f.name]
        meta = f.metadata or {}
        if value is None:
            need(optional, f"{f.name}: a value is required")
            continue
        if is_section(f):
            need(isinstance(value, tp), f"{f.name} must be a {tp.__name__}, got {type(value).__name__}")
            continue
        if tp in (list, tuple):
            need(isinstance(value, (list, tuple)) and all(_ok(v, elem) for v in value),
                 f"{f.name} must be a list of {_NAMES.get(elem, elem.__name__)}, got {short(value)}")
            continue
        need(_ok(value, tp), f"{f.name} must be {_NAMES.get(tp, getattr(tp, '__name__', tp))}, got {short(value)}")
        choices = meta.get("choices")
        if choices:
            need(value in choices, f"{f.name} must be one of {', '.join(map(str, choices))}, got {short(value)}")
        low, high = meta.get("low"), meta.get("high")
        if (low is not None or high is not None) and tp in (int, float):
            ok = (low is None or value >= low) and (high is None or value <= high)
            hint = f" ({meta['hint']})" if meta.get("hint") else ""
            need(ok, f"{f.name} must be {_range(tp, low, high)}, got {short(value)}{hint}")


def tag(f: dataclasses.Field, name: str, default=None):
    """A field's tag (`option(..., name=value)`), or `default`."""
    return (f.metadata or {}).get(name, default)


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One settable key of a config: where it sits (`path`), the class declaring it, its field, and its
    help with the enclosing sections' help appended."""

    path: tuple[str, ...]
    cls: type
    field: dataclasses.Field
    help: str

    @property
    def name(self) -> str:
        return self.path[-1]


def leaves(cls, _path: tuple[str, ...] = (), _suffix: str = "") -> list[Leaf]:
    """Every settable key of config class `cls`, sections flattened (`generation.num_frames` is the key
    `num_frames`). Nested dataclasses that are not sections are Python-only settings and have no key.
    Flat names are unique (checked here)."""
    out, types_ = [], field_types(cls)
    for f in dataclasses.fields(cls):
        if is_section(f):
            more = f.metadata.get("help", "")
            out += leaves(types_[f.name][0], (*_path, f.name), f"{_suffix} {more}".strip())
        elif not dataclasses.is_dataclass(types_[f.name][0]):
            out.append(Leaf((*_path, f.name), cls, f, f"{tag(f, 'help', '')} {_suffix}".strip()))
    if not _path:
        names = [leaf.name for leaf in out]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise TypeError(f"{cls.__name__}: key(s) {', '.join(dup)} declared in two sections")
    return out


def _coerce(tp, value):
    """Conveniences of YAML and Python callers: one value for a list key, an int for a float key."""
    if tp in (list, tuple) and isinstance(value, (str, int, float)):
        return tp([value])
    if tp in (list, tuple) and isinstance(value, list):
        return tp(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def build(cls, values: dict | None = None, **kw):
    """An instance of config class `cls` from flat keys (`num_frames=8`, as flags and YAML give them) or a
    section's keys nested under its name (`generation={"num_frames": 8}`); unknown keys are a ConfigError
    naming them. Each section is built, and checked, by its own class."""
    values = {**(values or {}), **kw}
    flat = {}
    for k, v in values.items():
        f = next((f for f in dataclasses.fields(cls) if f.name == k), None)
        if f is not None and is_section(f) and isinstance(v, dict):
            flat.update(v)
        else:
            flat[k] = v
    known = {leaf.name for leaf in leaves(cls)}
    unknown = sorted(set(flat) - known - {f.name for f in dataclasses.fields(cls)})
    need(not unknown, f"unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
    return _build(cls, flat)


def _build(cls, flat: dict):
    types_, kwargs = field_types(cls), {}
    for f in dataclasses.fields(cls):
        if f.name in flat and not isinstance(flat[f.name], dict):
            kwargs[f.name] = _coerce(types_[f.name][0], flat[f.name])  # a whole section object, or a value
        elif is_section(f):
            kwargs[f.name] = _build(types_[f.name][0], flat)
    return cls(**kwargs)


def flatten(obj) -> dict:
    """`{flat key: value}` of a config instance, sections flattened (what `build` takes back)."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if is_section(f):
            out.update(flatten(value))
        elif not dataclasses.is_dataclass(value):
            out[f.name] = value
    return out
