"""Job configuration: flags, optionally from a YAML file (`--config`), with unknown keys rejected.

Flags given on the command line win over the YAML file; YAML keys use the flag names with
underscores or dashes (`num_frames` or `num-frames`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from typing import Callable

import yaml

from animatediff_core.errors import AnimateDiffError


def parse(parser: argparse.ArgumentParser, argv: list[str] | None, required: tuple[str, ...] = ()) -> argparse.Namespace:
    parser.add_argument("--config", help="YAML file with the same keys as the flags")
    first, _ = parser.parse_known_args(argv)
    if first.config:
        parser.set_defaults(**load_yaml(first.config, parser))
    args = parser.parse_args(argv)
    missing = [f"--{n.replace('_', '-')}" for n in required if getattr(args, n) in (None, "", [])]
    if missing:
        parser.error(f"missing {', '.join(missing)} (give it as a flag or a key in --config)")
    return args


def load_yaml(path: str, parser: argparse.ArgumentParser) -> dict:
    from animatediff_core import storage

    try:
        data = yaml.safe_load(storage.read_bytes(path)) or {}
    except FileNotFoundError:
        parser.error(f"--config {path}: file not found")
    except yaml.YAMLError as e:
        parser.error(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})")
    if not isinstance(data, dict):
        parser.error(f"--config {path}: expected a mapping of flag names to values, found {type(data).__name__}")
    known = {a.dest for a in parser._actions} - {"help", "config"}
    data = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - known)
    if unknown:
        parser.error(f"--config {path}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
    return data


def quiet_libraries() -> None:
    """Keep library chatter (progress bars, optional-dependency notices) out of job output."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    logging.getLogger("transformers").setLevel(logging.ERROR)


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
