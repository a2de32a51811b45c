"""Job configuration: flags and YAML keys generated from a config dataclass, and the job's logging.

A job's config dataclass (e.g. `pipelines.animate.config.AnimateConfig`) is the one place its keys,
types, defaults and help live (`animatediff_core/configs.py`). `parse_config` turns its keys into flags
(`num_frames` -> `--num-frames`; sections such as `generation: GenerationSettings` are flattened, so a
setting's flag is its own name; booleans get `--x/--no-x`; lists take several values), reads
`--config YAML` with the same keys (dashes or underscores; a section's keys flat or nested under its
name), rejects unknown keys by name, and builds the dataclass: defaults < YAML < flags. Types, choices
and ranges are checked by the dataclasses themselves (`check_fields`); any ConfigError while parsing
exits 2 with one line naming the key.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import os
import sys
from typing import Callable

import yaml

from animatediff_core.configs import build, field_types, flatten, is_section, leaves, need
from animatediff_core.errors import AnimateDiffError, ConfigError
from animatediff_core.redact import redact_text, redact_value

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Libraries whose INFO/WARNING chatter (progress bars, optional-dependency notices) is not for operators.
NOISY_LOGGERS = ("diffusers", "transformers", "huggingface_hub", "urllib3", "botocore", "s3fs", "fsspec", "py.warnings")


def _leaves(classes) -> list:
    return [leaf for cls in classes for leaf in leaves(cls)]


def _flag(leaf) -> str:
    return (leaf.field.metadata or {}).get("flag") or "--" + leaf.name.replace("_", "-")


def _aliases(classes) -> dict[str, str]:
    """YAML key -> key name: the key's name, its flag's spelling where that differs, and each section's name."""
    out = {}
    for leaf in _leaves(classes):
        out[leaf.name] = leaf.name
        out[_flag(leaf).lstrip("-").replace("-", "_")] = leaf.name
    for cls in classes:
        out.update({f.name: f.name for f in dataclasses.fields(cls) if is_section(f)})
    return out


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def build_parser(classes, description: str) -> argparse.ArgumentParser:
    classes = classes if isinstance(classes, tuple) else (classes,)
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML file with the same keys as the flags (flags win)")
    p.add_argument("--log-level", default="INFO", choices=LOG_LEVELS, help="job log level (default %(default)s)")
    for leaf in _leaves(classes):
        f = leaf.field
        tp, optional, elem = field_types(leaf.cls)[f.name]
        default = _default(f)
        shown = " (required)" if _required(f) else f" (default: {default})" if default not in (None, "", []) else ""
        kw = dict(dest=leaf.name, default=argparse.SUPPRESS, help=leaf.help + shown)
        if tp is bool:
            p.add_argument(_flag(leaf), action=argparse.BooleanOptionalAction, **kw)
        elif tp in (list, tuple):
            p.add_argument(_flag(leaf), nargs="+", type=elem, **kw)
        else:
            # a union (`int | str`: a count or a range) arrives as text; the dataclass parses it
            p.add_argument(_flag(leaf), type=tp if isinstance(tp, type) else str, choices=f.metadata.get("choices"), **kw)
    return p


def parse_config(classes, argv: list[str] | None, description: str = ""):
    """(config instance, parsed args) from flags over `--config` YAML over the dataclass defaults.
    `classes` may be a tuple of dataclasses whose keys together make the job's flags; then the first
    item is a tuple of instances."""
    many = isinstance(classes, tuple)
    classes = classes if many else (classes,)
    parser = build_parser(classes, description)
    args = parser.parse_args(argv)
    aliases = _aliases(classes)
    try:
        values = {aliases[k]: v for k, v in load_yaml(args.config, list(aliases)).items()} if args.config else {}
        values.update({k: v for k, v in vars(args).items() if k in aliases.values()})
        values = _flat(values)
        missing = [_flag(leaf) for leaf in _leaves(classes) if leaf.name not in values and _required(leaf.field)]
        need(not missing, f"missing {', '.join(missing)} (give it as a flag or a key in --config)")
        built = tuple(build(cls, {k: v for k, v in values.items() if k in {leaf.name for leaf in leaves(cls)}})
                      for cls in classes)
    except ConfigError as e:
        parser.error(str(e))
    return (built if many else built[0]), args


def _flat(values: dict) -> dict:
    """A section given nested in YAML (`generation: {num_frames: 8}`) -> its flat keys."""
    out = {}
    for k, v in values.items():
        out.update({str(kk).replace("-", "_"): vv for kk, vv in v.items()} if isinstance(v, dict) else {k: v})
    return out


def load_yaml(path: str, known: list[str]) -> dict:
    from animatediff_core import storage  # here: storage imports fsspec, which --help never needs

    try:
        data = yaml.safe_load(storage.read_bytes(path)) or {}
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    need(isinstance(data, dict), f"--config {path}: expected a mapping of keys to values, found {type(data).__name__}")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - set(known))
    need(not unknown, f"--config {path}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
    return data


def dump_config(*configs) -> str:
    """The resolved config(s) as YAML, one flat key per flag: `--config` on this file repeats the run.
    Secrets are redacted (animatediff_core/redact.py): credentials in URLs and secret-named keys never reach the file."""
    data = {}
    for cfg in configs:
        data.update({k: redact_value(k, v) for k, v in flatten(cfg).items()})
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
    """Run a job's main: project errors, and a full disk, become one line on stderr and exit code 1, not a traceback."""
    try:
        code = main(None)
    except AnimateDiffError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 1
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        print(f"error: {e.strerror} ({e.filename or 'an output'}); free space or fix the output and run again: "
              "finished outputs are kept", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    raise SystemExit(code)
