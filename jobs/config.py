"""Job configuration: flags and YAML keys generated from a config dataclass, and the job's logging.

A job's config dataclass (e.g. `pipelines.animate.config.AnimateConfig`) is the one place its keys,
types, defaults and help live (`animatediff_core/configs.py`). `parse_config` turns its keys into flags
(`num_frames` -> `--num-frames`; sections such as `generation: GenerationSettings` are flattened, so a
setting's flag is its own name; booleans get `--x/--no-x`; lists take several values), reads
`--config YAML` with the same keys (dashes or underscores; a section's keys flat or nested under its
name), rejects unknown keys by name, and builds the dataclass: defaults < YAML < flags. Types, choices
and ranges are checked by the dataclasses themselves (`check_fields`); any ConfigError while parsing
exits 2 with one line naming the key.

Paths mean what they mean in the user's shell: a field tagged `path="in"` (a file or folder to read) or
`path="out"` (a folder to write), and every generation setting tagged `uri`, is made absolute here, once,
when it is local (no `scheme://`) and relative: an output always, an input when it exists (a relative name
that does not exist may be a Hub id, `org/name`). Ray Data tasks and Ray Train workers run in other working
directories, so nothing after parsing ever sees a relative local path. The usage line names the module the
user ran (`python -m jobs.animate`).
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import os
import signal
import sys
import threading
from typing import Callable

import yaml

from animatediff_core.configs import build, field_types, flatten, is_section, leaves, need
from animatediff_core.errors import AnimateDiffError, ConfigError
from animatediff_core.redact import redact_text, redact_value

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# Libraries whose INFO/WARNING chatter (progress bars, optional-dependency notices) is not for operators.
NOISY_LOGGERS = ("diffusers", "transformers", "huggingface_hub", "urllib3", "botocore", "aiobotocore", "s3fs", "fsspec", "py.warnings",
                 "ray.data._internal.progress", "ray._private.authentication")


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


def prog() -> str | None:
    """`python -m jobs.X` for the module the user ran (argparse would say `X.py`); None outside `-m`."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return f"python -m {spec.name}" if spec is not None and spec.name else None


def absolute(value: str, kind: str) -> str:
    """A local relative path made absolute against the current directory (see the module docstring):
    `kind` "out" always, "in" only when it exists; URIs, absolute paths and other values as given."""
    if not isinstance(value, str) or not value or "://" in value:
        return value
    path = os.path.expanduser(value)
    if os.path.isabs(path) or (kind == "in" and not os.path.exists(path)):
        return path if os.path.isabs(path) else value
    return os.path.abspath(path)


def absolute_paths(classes, values: dict) -> dict:
    """`values` (flat keys) with every path-tagged key's local relative paths made absolute."""
    kinds = {leaf.name: (leaf.field.metadata or {}).get("path") or ("in" if (leaf.field.metadata or {}).get("uri") else None)
             for leaf in _leaves(classes)}
    out = dict(values)
    for key, value in values.items():
        if kinds.get(key):
            out[key] = [absolute(v, kinds[key]) for v in value] if isinstance(value, (list, tuple)) else absolute(value, kinds[key])
    return out


def build_parser(classes, description: str) -> argparse.ArgumentParser:
    classes = classes if isinstance(classes, tuple) else (classes,)
    p = argparse.ArgumentParser(prog=prog(), description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
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
            p.add_argument(_flag(leaf), nargs="+", action="extend", type=elem, **kw)  # repeatable: values add up
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
        values = absolute_paths(classes, _flat(values))
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
    from animatediff_core.io import storage  # here: storage imports fsspec, which --help never needs

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
    process-wide warning filters (warnings go to the `py.warnings` logger). Below DEBUG the terminal
    carries only the project's lines: no model-loading bars, no optional-dependency notices, no Ray Data
    progress blocks (pipelines/ray_session.py), no Ray start-up lines. The environment variables set here
    (`log_env`) reach every worker: a local Ray's inherit the driver's environment, a cluster's get them
    through the job's runtime env (`init_ray`); workers read ANIMATEDIFF_LOG_LEVEL in
    `animatediff_core.device.quiet_model_libraries`."""
    from pipelines.ray_session import log_env

    debug = level == "DEBUG"
    for name, value in log_env(level).items():  # what the user set wins, except the job's own level
        os.environ[name] = value if name == "ANIMATEDIFF_LOG_LEVEL" else os.environ.get(name, value)
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", force=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    logging.captureWarnings(True)
    quiet = logging.DEBUG if debug else logging.ERROR
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(quiet)


# Object-store failures the user fixes outside the job (credentials, a bucket, a network), by exception class
# name anywhere in the chain (botocore, s3fs, gcsfs and google-auth are not imported to name them): one line.
STORE_ERRORS = {
    "NoCredentialsError": "no credentials for the object store: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                          "(or AWS_PROFILE; AWS_ENDPOINT_URL for S3-compatible stores)",
    "PartialCredentialsError": "incomplete object-store credentials (AWS_ACCESS_KEY_ID with AWS_SECRET_ACCESS_KEY)",
    "DefaultCredentialsError": "no Google Cloud credentials: set GOOGLE_APPLICATION_CREDENTIALS or run "
                               "`gcloud auth application-default login`",
    "EndpointConnectionError": "cannot reach the object store (check AWS_ENDPOINT_URL and the network)",
    "NoSuchBucket": "bucket not found",
}
GRACE = 5.0  # seconds from Ctrl-C to a forced exit


def store_error(e: BaseException) -> str | None:
    """One line for an object-store failure anywhere in `e`'s chain (see STORE_ERRORS), else None."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e).splitlines()[0][:300] if str(e) else ""
        for name, what in STORE_ERRORS.items():
            if type(e).__name__ == name or name in text:
                return f"{what} ({type(e).__name__}: {text})" if text else what
        if isinstance(e, (FileNotFoundError, PermissionError)) and ("://" in text or "bucket" in text.lower()):
            return f"{type(e).__name__}: {text}"
        e = e.__cause__ or e.__context__
    return None


def _on_interrupt(signum, frame) -> None:
    """Ctrl-C: stop now, keeping what is finished (every file is written atomically, metadata before
    sidecars). The first one raises KeyboardInterrupt in the main thread and gives the job GRACE seconds
    to shut Ray down; after that, or on a second Ctrl-C, the process exits at once (an embedded Ray's
    processes share its fate)."""
    if getattr(_on_interrupt, "armed", False):
        os._exit(130)
    _on_interrupt.armed = True
    print("\ninterrupted: stopping (finished videos and metadata are kept; rerun the same command to resume)",
          file=sys.stderr, flush=True)
    timer = threading.Timer(GRACE, os._exit, args=(130,))
    timer.daemon = True
    timer.start()
    raise KeyboardInterrupt


def run(main: Callable[[list[str] | None], int]) -> None:
    """Run a job's main: project errors, a full disk and object-store failures become one line on stderr
    and exit code 1, not a traceback; Ctrl-C stops the job within GRACE seconds (exit code 130)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_interrupt)
    try:
        code = main(None)
    except AnimateDiffError as e:
        print(f"error: {e}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    except Exception as e:
        disk = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
        line = (f"{e.strerror} ({e.filename or 'an output'}); free space or fix the output and run again: "
                "finished outputs are kept") if disk else store_error(e)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        code = 1
    raise SystemExit(code)
