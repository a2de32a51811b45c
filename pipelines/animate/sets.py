"""What a batch job sweeps: its set of personalized checkpoints and its set of motion modules, by name.

Names become folder names, so a name that breaks the file-name rule fails the job here, with one line.
Light (no torch, no Ray): preflight and planning tasks read these.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from animatediff_core.configs import need
from animatediff_core.errors import ConfigError
from animatediff_core.io import hub, storage
from animatediff_core.settings.generation import KINDS, WEIGHT_EXTS, CheckpointSpec, parse_loras
from pipelines import run_folder, tables
from pipelines.animate.layout import check_name
from pipelines.cells import as_float, as_text, plain

BASE_NAME = "base"


@dataclass(frozen=True)
class MotionSpec:
    """One motion module of the sweep: a MotionAdapter folder or an original-format file."""

    name: str
    uri: str
    max_frames: int = 32  # its position-encoding length, read at preflight
    norm: str | None = None  # --motion-norm (animatediff_core/models/numerics.py); None: what the module records, else official
    numerics: str = ""  # the numerics it runs with, resolved at preflight ("official/v2"): part of its videos' identity
    family: str = "sd1"  # the base family it fits (sd1, sdxl), found at preflight


def read_checkpoint_set(uri: str | None) -> dict[str, CheckpointSpec]:
    """Checkpoints by name, from a folder of .safetensors files or a table: `name`, `uri` (a DreamBooth or LoRA
    file), optional `kind`, `scale` (the LoRA's weight), `loras` (JSON list of more LoRAs with their weights),
    `adapter` and `adapter_scale` (the v3 domain adapter), `vae` (own, base or a URI), `base` (the base it
    runs on, SD-1.x or SDXL; default: the job's --base): one stack per row.

    No set: the base model alone, under the name "base".
    """
    if not uri:
        return {BASE_NAME: CheckpointSpec(BASE_NAME)}
    uri = hub.resolve(uri)
    need(storage.exists(uri), f"--checkpoints {uri}: not found (expected a folder of .safetensors files or a {tables.KINDS_TEXT} table)")
    if storage.isdir(uri) and not [f for f in tables.list_files(uri) if tables.is_table(f)]:
        fs, path = storage.fs_and_path(uri)
        files = sorted(p for p in fs.ls(path, detail=False) if p.endswith(".safetensors"))
        need(bool(files), f"--checkpoints {uri}: folder holds no .safetensors files")
        names = [PurePosixPath(p).stem for p in files]
        for n in names:
            check_name(n, f"--checkpoints {uri}: checkpoint")
        return {n: CheckpointSpec(n, storage.join(uri, PurePosixPath(p).name)) for n, p in zip(names, files)}
    table = tables.read_pandas(uri, strings=("name", "uri", "kind", "loras", "adapter", "vae", "base"), flag="--checkpoints")
    need("name" in table.columns and {"uri", "loras", "adapter"} & set(table.columns),
         f"--checkpoints {uri}: table needs columns name and uri (optional kind, scale, loras, adapter, adapter_scale, vae, base); "
         f"found {', '.join(map(str, table.columns)) or 'none'}")
    specs = {}
    for r in table.to_dict("records"):
        name = check_name(str(plain(r["name"]) or ""), f"--checkpoints {uri}: checkpoint")
        need(name not in specs, f"--checkpoints {uri}: checkpoint name {name!r} appears twice; names must be unique")
        try:
            specs[name] = checkpoint_spec(name, r)
        except ConfigError as e:
            raise ConfigError(f"--checkpoints {uri}: checkpoint {name!r}: {e}") from None
    return specs


def checkpoint_spec(name: str, cells_: dict) -> CheckpointSpec:
    """One checkpoint table row (`uri`, `kind`, `scale`, `loras`, `adapter`, `adapter_scale`, `vae`, `base`) as a stack."""
    kind = as_text("kind", cells_.get("kind"))
    need(kind is None or kind in KINDS, f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    vae = as_text("vae", cells_.get("vae")) or "own"
    spec = CheckpointSpec(name, as_text("uri", cells_.get("uri")), kind, _number("scale", cells_.get("scale")),
                          parse_loras(as_text("loras", cells_.get("loras")) or ""), as_text("adapter", cells_.get("adapter")),
                          _number("adapter_scale", cells_.get("adapter_scale")), vae, as_text("base", cells_.get("base")))
    need(spec.uri or spec.loras or spec.adapter or spec.vae != "own",
         "give a uri (a DreamBooth or LoRA file), loras or an adapter (an empty row would be the base: leave it out)")
    return spec


def _number(name: str, value) -> float:
    parsed = as_float(name, value)
    return 1.0 if parsed is None else parsed


def read_motion_set(uris: list[str]) -> dict[str, MotionSpec]:
    """Motion modules by name, from files, MotionAdapter folders, folders of them, or `jobs.train` run
    folders (each `checkpoint-NNNNNN/` becomes `RUN-stepNNNNNN`, in step order: a learning curve)."""
    specs: dict[str, MotionSpec] = {}

    def add(name: str, uri: str) -> None:
        name = check_name(name, "--motion-module: motion module name")
        need(name not in specs, f"--motion-module: two modules are named {name!r} ({specs[name].uri if name in specs else ''}, {uri}); rename one")
        specs[name] = MotionSpec(name, uri)

    for ref in uris:
        uri = hub.resolve(ref)  # a Hub id is kept as the module's uri: every node resolves it into its own cache
        need(storage.exists(uri), f"--motion-module {ref}: not found (expected a MotionAdapter folder or a .safetensors/.ckpt file)")
        label = PurePosixPath(str(ref).rstrip("/")).name
        if not storage.isdir(uri):
            add(PurePosixPath(label).stem, ref)
        elif storage.exists(storage.join(uri, "config.json")):
            add(label, ref)
        else:
            found = _modules_in_folder(uri, label)
            need(bool(found), f"--motion-module {uri}: the folder holds no motion module (MotionAdapter folders, "
                              f"{', '.join(WEIGHT_EXTS)} files, or jobs.train checkpoint-NNNNNN/ folders)")
            for name, u in found:
                add(name, u)
    return specs


def _modules_in_folder(uri: str, label: str) -> list[tuple[str, str]]:
    """(name, uri) of the motion modules in a folder: a jobs.train run's complete checkpoints in step
    order (`RUN-stepNNNNNN`; motion-LoRA checkpoints hold none), else its module files and folders."""
    steps = run_folder.list_checkpoints(uri)
    if steps:
        found = [(f"{label}-step{step:06d}", run_folder.motion_module_in(ckpt)) for step, ckpt in sorted(steps.items())]
        return [(name, m) for name, m in found if m is not None]
    fs, path = storage.fs_and_path(uri)
    found = []
    for entry in sorted(fs.ls(path, detail=False)):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        child = storage.join(uri, name)
        if name.endswith(WEIGHT_EXTS):
            found.append((PurePosixPath(name).stem, child))
        elif storage.isdir(child) and storage.exists(storage.join(child, "config.json")):
            found.append((name, child))
    return found
