"""The batch job's configuration: the only place its names, types, defaults and help are written.

`GenerationFlags` is what every job that generates shares (the batch job, the evaluation job): the
generation settings (`GenerationSettings`, each a job default that rows may override), the actor pool
(`ActorOptions`), the speed options (`SpeedOptions`), the per-row limits (`RowLimits`), the limits on
what cells may read (`ReadLimits`) and how rows reach the actors. Sections are
flattened into flags and YAML keys (`--num-frames`, `num_frames:`) by `jobs/config.py`; Python callers
build with `animatediff_core.configs.build(AnimateConfig, num_frames=8, ...)`.
Light (no torch, no Ray, no pandas): `--help` and config checks import only this.
"""

from __future__ import annotations

from dataclasses import dataclass

from animatediff_core.configs import check_fields, need, option, section
from animatediff_core.io.bounded import ReadLimits
from animatediff_core.models.speed import SpeedOptions
from animatediff_core.settings.generation import MOTION_NORMS, GenerationSettings
from animatediff_core.settings.generation import NAMES as SETTING_NAMES
from pipelines.animate.limits import RowLimits
from pipelines.ray_session import ActorOptions


@dataclass(frozen=True, kw_only=True)
class GenerationFlags:
    """How videos are generated and on what."""

    generation: GenerationSettings = section(GenerationSettings, help="(rows may override)")
    actors: ActorOptions = section(ActorOptions)
    batch_size: int = option(8, low=1, help="rows per actor call")
    max_batch: int | None = option(None, low=1, help="rows per pipeline call on GPUs (default 8); CPU actors run one "
                                   "row per call (faster there, and a row's bytes never depend on its neighbours)")
    streams: int | None = option(None, low=1, help="CPU actors: rows sampled at once, on threads that share the actor's "
                                 "models, its torch threads shared evenly between them (default: one single-thread stream "
                                 "per torch thread, up to 4; each holds one call's activations; GPU actors run one, their "
                                 "rows batch instead)")
    gif: bool = option(True, help="write GIF previews beside the mp4s")
    frames_png: bool = option(False, help="also write each video's frames as PNGs (videos/.../ID_frames/0000.png)")
    motion_norm: str | None = option(None, choices=MOTION_NORMS, help="motion-module numerics: official (AnimateDiff's own "
                                     "function for the module's version) or diffusers; default: what the module records, else official")
    # Image prompts (animatediff_core/models/image_prompt.py): loaded once per actor, for rows with ip_adapter_image.
    ip_adapter: str | None = option(None, help="IP-Adapter weights for rows with an image prompt (ip_adapter_image): "
                                    "an ip-adapter(-plus)_sd15 .safetensors/.bin file, a folder holding one, or a Hub id "
                                    "of the file; SD-1.x bases")
    image_encoder: str | None = option(None, help="the CLIP vision encoder the adapter reads (a CLIPVisionModelWithProjection "
                                       "folder or Hub id); default: image_encoder/ beside the adapter file")
    # Speed options (off by default; bench/gpu_job.py measures each on a GPU), applied once per actor.
    speed: SpeedOptions = section(SpeedOptions)
    # Untrusted cells: what a row may cost and run (limits.py), what and where its URIs may read (bounded.py).
    limits: RowLimits = section(RowLimits)
    reads: ReadLimits = section(ReadLimits)

    def __post_init__(self):
        check_fields(self)
        need(self.streams is None or self.actors.threads % self.streams == 0,
             f"streams {self.streams}: must divide an actor's torch threads ({self.actors.threads}), each stream taking an "
             "equal share; set --torch-threads to a multiple of --streams")
        need(not self.image_encoder or bool(self.ip_adapter), "image_encoder: give --ip-adapter too (the encoder is its input)")
        need(not (self.ip_adapter and self.speed.fuse_qkv), "ip_adapter: not supported with --fuse-qkv (the fused "
             "cross-attention would drop the adapter's image attention); leave one out")

    def generation_flags(self) -> dict:
        """This section's values, to build another config that generates (evaluation -> the batch job)."""
        return {name: getattr(self, name) for name in GenerationFlags.__dataclass_fields__}


@dataclass(frozen=True, kw_only=True)
class AnimateConfig(GenerationFlags):
    """The batch job's settings."""

    prompt: list[str] = option([], help="a prompt, without a table (repeatable: --prompt \"a cat\" --prompt \"a dog\"); "
                                      "with --prompts too, both run")
    prompts: list[str] = option([], help="prompt tables (.csv, .csv.gz, .parquet, or folders of them), any fsspec URI", path="in")
    base: str = option(help="diffusers SD-1.x folder or Hub id", path="in")
    motion_module: list[str] = option([], help="motion module(s): MotionAdapter folders or original .safetensors/.ckpt "
                                               "files, folders of them, or a jobs.train run folder; several = a sweep", path="in")
    checkpoints: str | None = option(None, help="folder of .safetensors or a table (name, uri, [kind], [scale], [loras], "
                                                "[adapter], [adapter_scale], [vae]); default: the base alone", path="in")
    official_config: str | None = option(None, help="an official AnimateDiff prompt config (configs/prompts/*.yaml), run "
                                                     "unchanged: it gives the prompts, checkpoints and motion modules", path="in")
    official_root: str = option(".", help="the official repository's root, against which the config's relative paths resolve",
                                path="in")
    official_overrides: list[str] = option([], help="generation settings whose job values win over the official config's "
                                                    "(default: those given as flags)")
    out: str = option("outputs/animate", help="output folder or URI", path="out")
    max_error_fraction: float = option(1.0, low=0, high=1, help="exit non-zero when more than this fraction of rows "
                                                                "failed (1.0: only when every row failed)")

    def __post_init__(self):
        super().__post_init__()
        unknown = sorted(set(self.official_overrides) - set(SETTING_NAMES))
        need(not unknown, f"official_overrides: {', '.join(unknown)} are not generation settings")
        if self.official_config:
            need(not (self.prompts or self.prompt or self.motion_module or self.checkpoints),
                 "--official-config names the prompts, checkpoints and motion modules: leave out --prompts, --prompt, "
                 "--motion-module and --checkpoints")
            return
        need(bool(self.prompts or self.prompt), "prompts: give --prompt TEXT or at least one prompt table (or --official-config)")
        need(all(p.strip() for p in self.prompt), "prompt: an empty --prompt; give the text to animate")
        need(bool(self.motion_module), "motion_module: give at least one motion module")
