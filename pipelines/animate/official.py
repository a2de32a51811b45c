"""The official AnimateDiff repository's prompt configs, run unchanged as the batch job's rows.

guoyww/AnimateDiff runs `python -m scripts.animate --config configs/prompts/X.yaml` from its repository
root: the config is a YAML list of blocks, each one model (DreamBooth, LoRA at `lora_alpha`, the v3
domain adapter, a motion module with its MotionLoRAs, an inference config, SparseCtrl) and its prompts
with their seeds. `translate` reads that format as its `scripts/animate.py` does (the same defaults and
broadcasting: one negative prompt or one seed for every prompt; `seed: -1` for any seed) and gives the
batch job's prompt rows, checkpoint stacks and motion modules; `prepare` writes them under `OUT/official/`
and points the job's config at them, so a run of an official config has the batch job's sweep, resume,
metadata and index. Relative paths resolve against `--official-root` (the official repository's root).

Every key is honoured or refused at start with one line naming it: nothing is dropped silently.
- `lora_alpha` (official default 0.8) is the LoRA's weight in the official merge, W += lora_alpha x up @ down,
  which ignores the file's alpha: the stack's LoRA gets `scale=lora_alpha, alpha="ignore"`, exactly that.
- `inference_config`: its `noise_scheduler_kwargs` must be the official DDIM's (then the rows sample with
  `ddim`, the official sampler); its `use_inflated_groupnorm` and `motion_module_mid_block` must agree with
  the motion module's version, whose official numerics the job then runs (checked in `check_modules`).
Light (no torch, no Ray).
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import pandas as pd
import yaml

from animatediff_core.configs import need
from animatediff_core.errors import ConfigError
from animatediff_core.io import storage
from animatediff_core.settings.generation import CheckpointSpec, LoraSpec

# scripts/animate.py's own defaults (its argparse and its `model_config.get(...)` calls)
DEFAULTS = {"W": 512, "H": 512, "L": 16, "lora_alpha": 0.8, "adapter_lora_scale": 1.0, "seed": [-1],
            "controlnet_image_indexs": [0], "normalize_condition_images": False,
            "inference_config": "configs/inference/inference-v1.yaml"}
BLOCK_KEYS = {"dreambooth_path", "lora_model_path", "lora_alpha", "adapter_lora_path", "adapter_lora_scale", "motion_module",
              "motion_module_lora_configs", "inference_config", "controlnet_path", "controlnet_config", "controlnet_images",
              "controlnet_image_indexs", "normalize_condition_images", "seed", "random_seed", "steps", "guidance_scale",
              "W", "H", "L", "prompt", "n_prompt"}
# What the official configs/inference/*.yaml give DDIMScheduler: the official `ddim` sampler.
OFFICIAL_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "linear", "steps_offset": 1, "clip_sample": False}
MOTION_KWARGS = {"num_attention_heads": 8, "num_transformer_block": 1, "attention_block_types": ["Temporal_Self", "Temporal_Self"],
                 "temporal_position_encoding": True, "temporal_attention_dim_div": 1, "zero_initialize": True}
UNET_KWARGS = {"use_inflated_groupnorm", "use_motion_module", "motion_module_resolutions", "motion_module_mid_block",
               "motion_module_type", "motion_module_kwargs", "unet_use_cross_frame_attention", "unet_use_temporal_attention"}
SPARSECTRL_KWARGS = {"set_noisy_sample_input_to_zero", "use_simplified_condition_embedding", "conditioning_channels",
                     "use_motion_module", "motion_module_resolutions", "motion_module_mid_block", "motion_module_type",
                     "motion_module_kwargs"}
SETTINGS_OF = {"W": "width", "H": "height", "L": "num_frames", "steps": "steps", "guidance_scale": "guidance_scale"}


@dataclass(frozen=True)
class OfficialJob:
    rows: pd.DataFrame  # prompt-table rows: id, prompt, negative_prompt, seed, checkpoint, motion_module, settings
    checkpoints: dict[str, CheckpointSpec]
    motions: dict[str, str]  # motion module name -> URI
    inflated: dict[str, bool] = field(default_factory=dict)  # motion module name -> use_inflated_groupnorm


def translate(path: str, root: str = ".", overridden: frozenset[str] = frozenset()) -> OfficialJob:
    """The batch job's rows, checkpoints and motion modules for the official prompt config at `path`.
    `overridden`: generation settings given on the command line, which win over the config's values."""
    blocks = _yaml(path, "--official-config")
    need(isinstance(blocks, list) and blocks and all(isinstance(b, dict) for b in blocks),
         f"--official-config {path}: expected the official prompt-config format, a YAML list of blocks "
         f"(dreambooth_path, motion_module, prompt, ...), found {type(blocks).__name__}")
    rows, checkpoints, motions, inflated, stacks = [], {}, {}, {}, {}
    for i, block in enumerate(blocks):
        where = f"--official-config {path}, block {i + 1}"
        try:
            unknown = sorted(set(map(str, block)) - BLOCK_KEYS)
            need(not unknown, f"key(s) {', '.join(unknown)} are not keys the official scripts/animate.py reads")
            b = {**DEFAULTS, **block}
            spec = _stack(b, root)
            key = json.dumps(spec.identity, sort_keys=True)
            name = stacks[key] if key in stacks else stacks.setdefault(key, _unique(_stack_name(b), checkpoints))
            checkpoints[name] = CheckpointSpec(name, spec.uri, spec.kind, spec.scale, spec.loras, spec.adapter, spec.adapter_scale)
            motion_uri = _path(b.get("motion_module"), root)
            need(motion_uri, "motion_module is empty: the batch job needs a motion module (the official script would run "
                             "the UNet's untrained motion modules)")
            motion = PurePosixPath(motion_uri).stem  # the name the motion-module set gives a file
            need(motions.get(motion, motion_uri) == motion_uri, f"two motion modules are named {motion!r}; rename one")
            motions[motion] = motion_uri
            inference = _inference(b, root)
            inflated[motion] = bool(inference.get("use_inflated_groupnorm", False))
            settings = {**_settings(b), **_motion_lora(b, root), **_sparsectrl(b, root)}
            rows += _rows(b, i, name, motion, settings)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    table = pd.DataFrame(rows)
    table = table.drop(columns=[c for c in table.columns if c in overridden])  # the command line wins
    return OfficialJob(table, checkpoints, motions, inflated)


def _yaml(path: str, what: str):
    try:
        return yaml.safe_load(storage.read_bytes(path))
    except FileNotFoundError:
        raise ConfigError(f"{what} {path}: file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path}: not valid YAML ({str(e).splitlines()[0]})") from None


def _path(value, root: str) -> str:
    """A config path as the official script opens it: relative to its repository root ("" stays "")."""
    value = "" if value is None else str(value).strip()
    if not value or value.startswith("/") or "://" in value:
        return value
    return storage.join(root, value)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"


def _stack_name(b: dict) -> str:
    parts = [PurePosixPath(str(b.get("dreambooth_path") or "base")).stem]
    if b.get("lora_model_path"):
        parts.append(f"{PurePosixPath(str(b['lora_model_path'])).stem}-{float(b['lora_alpha']):g}")
    if b.get("adapter_lora_path"):
        parts.append(f"adapter-{float(b['adapter_lora_scale']):g}")
    return _safe("+".join(parts))[:100]


def _unique(name: str, taken: dict) -> str:
    k, out = 2, name
    while out in taken:
        out, k = f"{name}-{k}", k + 1
    return out


def _number(b: dict, key: str) -> float:
    v = b.get(key)
    need(isinstance(v, (int, float)) and not isinstance(v, bool), f"{key} must be a number, got {v!r}")
    return float(v)


def _stack(b: dict, root: str) -> CheckpointSpec:
    """The block's image model as a stack: DreamBooth, its LoRA at lora_alpha (the official merge), the adapter."""
    lora = _path(b.get("lora_model_path"), root)
    need(not lora or lora.endswith(".safetensors"), f"lora_model_path must be a .safetensors file (the official loader "
                                                   f"reads only those), got {lora!r}")
    adapter = _path(b.get("adapter_lora_path"), root) or None
    return CheckpointSpec("-", _path(b.get("dreambooth_path"), root) or None, None, 1.0,
                          (LoraSpec(lora, _number(b, "lora_alpha"), "ignore"),) if lora else (),
                          adapter, _number(b, "adapter_lora_scale") if adapter else 1.0)


def _inference(b: dict, root: str) -> dict:
    """The block's inference config, refused unless the job computes what it says; its UNet kwargs."""
    path = _path(b.get("inference_config"), root)
    config = _yaml(path, "inference_config")
    need(isinstance(config, dict), f"inference_config {path}: expected a mapping")
    unknown = sorted(set(config) - {"unet_additional_kwargs", "noise_scheduler_kwargs"})
    need(not unknown, f"inference_config {path}: key(s) {', '.join(unknown)} cannot be honoured")
    scheduler = dict(config.get("noise_scheduler_kwargs") or {})
    need(scheduler == OFFICIAL_SCHEDULER, f"inference_config {path}: noise_scheduler_kwargs {scheduler} cannot be honoured; "
                                          f"the job samples with the official DDIM ({OFFICIAL_SCHEDULER})")
    unet = dict(config.get("unet_additional_kwargs") or {})
    unknown = sorted(set(unet) - UNET_KWARGS)
    need(not unknown, f"inference_config {path}: unet_additional_kwargs {', '.join(unknown)} cannot be honoured")
    need(unet.get("use_motion_module", True) and unet.get("motion_module_type", "Vanilla") == "Vanilla"
         and not unet.get("unet_use_cross_frame_attention") and not unet.get("unet_use_temporal_attention"),
         f"inference_config {path}: only the Vanilla motion module the released modules use can be honoured")
    kwargs = {k: v for k, v in (unet.get("motion_module_kwargs") or {}).items() if k != "temporal_position_encoding_max_len"}
    differ = sorted(k for k, v in kwargs.items() if MOTION_KWARGS.get(k, v) != v or k not in MOTION_KWARGS)
    need(not differ, f"inference_config {path}: motion_module_kwargs {', '.join(differ)} differ from the released modules' "
                     "(8 heads, one block of two temporal self-attentions) and cannot be honoured")
    return unet


def _settings(b: dict) -> dict:
    out = {"sampler": "ddim"}
    for key, setting in SETTINGS_OF.items():
        if key in b:
            v = b[key]
            need(isinstance(v, (int, float)) and not isinstance(v, bool), f"{key} must be a number, got {v!r}")
            out[setting] = v
    return out


def _motion_lora(b: dict, root: str) -> dict:
    configs = b.get("motion_module_lora_configs") or []
    need(isinstance(configs, list), f"motion_module_lora_configs must be a list of {{path, alpha}}, got {configs!r}")
    need(len(configs) <= 1, f"motion_module_lora_configs has {len(configs)} MotionLoRAs; a row takes one (give each its own block)")
    if not configs:
        return {}
    c = configs[0]
    need(isinstance(c, dict) and c.get("path"), f"motion_module_lora_configs entries need a path, got {c!r}")
    return {"motion_lora": _path(c["path"], root), "motion_lora_scale": float(c.get("alpha", 1.0))}


def _sparsectrl(b: dict, root: str) -> dict:
    path = _path(b.get("controlnet_path"), root)
    if not path:
        return {}
    config = _yaml(_path(b.get("controlnet_config"), root), "controlnet_config") if b.get("controlnet_config") else {}
    kwargs = dict((config or {}).get("controlnet_additional_kwargs") or {})
    unknown = sorted(set(kwargs) - SPARSECTRL_KWARGS)
    need(not unknown, f"controlnet_config: controlnet_additional_kwargs {', '.join(unknown)} cannot be honoured")
    need(kwargs.get("set_noisy_sample_input_to_zero", True), "controlnet_config: set_noisy_sample_input_to_zero false cannot be honoured")
    images = b.get("controlnet_images") or []
    images = [images] if isinstance(images, str) else list(images)
    indices = b.get("controlnet_image_indexs")
    indices = [indices] if isinstance(indices, int) else list(indices)
    need(images, "controlnet_path needs controlnet_images")
    need(len(images) >= len(indices), f"controlnet_image_indexs has {len(indices)} entries but controlnet_images only {len(images)}")
    keyframes = {str(int(k)): _path(img, root) for k, img in zip(indices, images)}  # the official pairs them in order
    return {"keyframe_model": path, "keyframes": json.dumps(keyframes),
            "keyframe_normalize": bool(b.get("normalize_condition_images"))}


def _rows(b: dict, i: int, checkpoint: str, motion: str, settings: dict) -> list[dict]:
    prompts = b.get("prompt") or []
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    need(prompts, "prompt is empty; give a list of prompts")
    negatives = b.get("n_prompt") if b.get("n_prompt") is not None else [""]
    negatives = [negatives] if isinstance(negatives, str) else list(negatives)
    seeds = b.get("random_seed") or b.get("seed")  # an official run's saved config records the seeds it drew
    seeds = [seeds] if isinstance(seeds, int) and not isinstance(seeds, bool) else list(seeds)
    need(len(negatives) in (1, len(prompts)) and len(seeds) in (1, len(prompts)),
         f"{len(prompts)} prompts, {len(negatives)} n_prompt and {len(seeds)} seeds: give one for all or one each "
         "(the official script would drop the extra prompts)")
    negatives = negatives * len(prompts) if len(negatives) == 1 else negatives
    seeds = seeds * len(prompts) if len(seeds) == 1 else seeds
    rows = []
    for k, (prompt, negative, seed) in enumerate(zip(prompts, negatives, seeds)):
        need(isinstance(seed, int) and not isinstance(seed, bool), f"seed must be an integer (or -1), got {seed!r}")
        rid = f"b{i + 1:02d}-{k + 1:02d}"  # block and prompt: ids stay unique where blocks share a model
        rows.append({"id": rid, "prompt": str(prompt), "negative_prompt": str(negative or ""), "seed": str(seed),
                     "checkpoint": checkpoint, "motion_module": motion, **{s: str(v) for s, v in settings.items()}})
    return rows


def check_modules(job: OfficialJob, versions: dict[str, str]) -> None:
    """Each block's `use_inflated_groupnorm` against its motion module's version (the module's numerics)."""
    for name, inflated in job.inflated.items():
        version = versions.get(name)
        need(version is None or inflated == (version != "v1"),
             f"--official-config: motion module {name!r} is AnimateDiff {version}, but its inference_config says "
             f"use_inflated_groupnorm: {str(inflated).lower()} (v1 runs without it, v2 and v3 with it); use the "
             "inference config released with the module")


def prepare(cfg, overridden: frozenset[str] = frozenset()):
    """`cfg` (an AnimateConfig with `official_config`) pointed at the translated rows, checkpoints and modules,
    written under OUT/official/ (prompts.parquet, checkpoints.csv), and the translation."""
    job = translate(cfg.official_config, cfg.official_root, overridden)
    folder = storage.join(cfg.out, "official")
    buf = io.BytesIO()
    job.rows.astype(str).to_parquet(buf, index=False)
    storage.write_bytes_atomic(storage.join(folder, "prompts.parquet"), buf.getvalue())
    table = pd.DataFrame([{"name": s.name, "uri": s.uri or "", "loras": json.dumps([dataclasses.asdict(lo) for lo in s.loras]) if s.loras else "",
                           "adapter": s.adapter or "", "adapter_scale": s.adapter_scale} for s in job.checkpoints.values()])
    storage.write_text_atomic(storage.join(folder, "checkpoints.csv"), table.to_csv(index=False))
    return dataclasses.replace(cfg, official_config=None, prompts=[storage.join(folder, "prompts.parquet")],
                               checkpoints=storage.join(folder, "checkpoints.csv"), motion_module=list(job.motions.values())), job
