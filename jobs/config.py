"""Job configuration: flags and YAML keys generated from a config dataclass, and the job's logging.

A job's config dataclass (e.g. `pipelines.animate.job.AnimateConfig`) is the one place its keys,
types, defaults and help live. `parse_config` turns its fields into flags (`num_frames` ->
`--num-frames`; booleans get `--x/--no-x`; lists take several values), reads `--config YAML` with
the same keys (dashes or underscores), rejects unknown keys by name, and builds the dataclass:
defaults < YAML < flags. Types and values are checked by the dataclass itself (`__post_init__`).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from typing import Callable

import yaml

from animatediff_core.configs import field_types
from animatediff_core.errors import AnimateDiffError, ConfigError
from animatediff_core.redact import redact_text, redact_value

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Libraries whose INFO/WARNING chatter (progress bars, optional-dependency notices) is not for operators.
NOISY_LOGGERS = ("diffusers", "transformers", "huggingface_hub", "urllib3", "botocore", "s3fs", "fsspec", "py.warnings")


def _fields(classes) -> list[tuple[type, dataclasses.Field]]:
    """(class, field) of every configurable field: nested dataclasses (Python-only settings) have no flag."""
    out = []
    for cls in classes:
        types_ = field_types(cls)
        out += [(cls, f) for f in dataclasses.fields(cls) if not dataclasses.is_dataclass(types_[f.name][0])]
    return out


def _aliases(classes) -> dict[str, str]:
    """YAML key -> field name: the field's name, and the name of its flag where that differs."""
    out = {}
    for _, f in _fields(classes):
        out[f.name] = f.name
        flag = (f.metadata or {}).get("flag")
        if flag:
            out[flag.lstrip("-").replace("-", "_")] = f.name
    return out


def build_parser(classes, description: str) -> argparse.ArgumentParser:
    classes = classes if isinstance(classes, tuple) else (classes,)
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML file with the same keys as the flags (flags win)")
    p.add_argument("--log-level", default="INFO", choices=LOG_LEVELS, help="job log level (default %(default)s)")
    for cls, f in _fields(classes):
        tp, optional, elem = field_types(cls)[f.name]
        meta = f.metadata or {}
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        help_ = meta.get("help", "") + (" (required)" if required else f" (default: {default})" if default not in (None, "", []) else "")
        kw = dict(dest=f.name, default=argparse.SUPPRESS, help=help_)
        if tp is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif tp in (list, tuple):
            p.add_argument(flag, nargs="+", type=elem, **kw)
        else:
            # a union (`int | str`: a count or a range) arrives as text; the dataclass parses it
            p.add_argument(flag, type=tp if isinstance(tp, type) else str, choices=meta.get("choices"), **kw)
    return p


def parse_config(classes, argv: list[str] | None, description: str = ""):
    """(config instance, parsed args) from flags over `--config` YAML over the dataclass defaults.
    `classes` may be a tuple of dataclasses whose fields together make the job's flags; then the first
    item is a tuple of instances."""
    many = isinstance(classes, tuple)
    classes = classes if many else (classes,)
    parser = build_parser(classes, description)
    args = parser.parse_args(argv)
    aliases = _aliases(classes)
    values = load_yaml(args.config, list(aliases), parser) if args.config else {}
    values = {aliases[k]: v for k, v in values.items()}
    values.update({k: v for k, v in vars(args).items() if k in aliases.values()})
    missing = [(f.metadata or {}).get("flag") or f"--{f.name.replace('_', '-')}" for _, f in _fields(classes)
               if f.name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        parser.error(f"missing {', '.join(missing)} (give it as a flag or a key in --config)")
    try:
        built = tuple(cls(**_coerce(cls, {f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values}))
                      for cls in classes)
    except ConfigError as e:
        parser.error(str(e))
    return (built if many else built[0]), args


def _coerce(cls, values: dict) -> dict:
    """YAML conveniences: a single value for a list key, an int for a float key."""
    types_ = field_types(cls)
    out = dict(values)
    for k, v in values.items():
        tp = types_[k][0]
        if tp in (list, tuple) and isinstance(v, (str, int, float)):
            out[k] = tp([v])
        elif tp in (list, tuple) and isinstance(v, list):
            out[k] = tp(v)
        elif tp is float and isinstance(v, int) and not isinstance(v, bool):
            out[k] = float(v)
    return out


def load_yaml(path: str, known: list[str], parser: argparse.ArgumentParser) -> dict:
    from animatediff_core import storage

    try:
        data = yaml.safe_load(storage.read_bytes(path)) or {}
    except FileNotFoundError:
        parser.error(f"--config {path}: file not found")
    except yaml.YAMLError as e:
        parser.error(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})")
    if not isinstance(data, dict):
        parser.error(f"--config {path}: expected a mapping of keys to values, found {type(data).__name__}")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - set(known))
    if unknown:
        parser.error(f"--config {path}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
    return data


def dump_config(*configs) -> str:
    """The resolved config(s) as YAML: `--config` on this file repeats the run. Secrets are redacted
    (animatediff_core/redact.py): credentials in URLs and secret-named keys never reach the file."""
    data = {}
    for cfg in configs:
        types_ = field_types(type(cfg))
        for f in dataclasses.fields(cfg):
            if not dataclasses.is_dataclass(types_[f.name][0]):
                data[f.name] = redact_value(f.name, getattr(cfg, f.name))
    return yaml.safe_dump(data, sort_keys=False)


class RedactingFilter(logging.Filter):
    """Log records with credentials in URLs removed (a config or URI logged by any module)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def setup_logging(level: str = "INFO") -> None:
    """The job's own loggers at `level`, on stderr; library chatter turned down by logger, not by
    process-wide warning filters (warnings go to the `py.warnings` logger)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for lib in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):  # their own handlers, set from these at import
        os.environ.setdefault(lib, "debug" if level == "DEBUG" else "error")
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", force=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    logging.captureWarnings(True)
    quiet = logging.DEBUG if level == "DEBUG" else logging.ERROR
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(quiet)


def run(main: Callable[[list[str] | None], int]) -> None:
    """Run a job's main: project errors become one line on stderr and exit code 1, not a traceback."""
    try:
        code = main(None)
    except AnimateDiffError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    raise SystemExit(code)
