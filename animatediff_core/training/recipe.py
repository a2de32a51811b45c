"""AnimateDiff's motion-module training recipe (`TrainConfig`): plain Python, no torch, so
`python -m jobs.train --help` and config checks answer without loading the model stack. The training
itself is `training/trainer.py`; the shape of a fresh motion module is `models/motion_config.py`.

Source: guoyww/AnimateDiff `train.py` and `configs/training/v1/training.yaml`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace

from animatediff_core.configs import check_fields, need, option
from animatediff_core.device import PRECISIONS
from animatediff_core.models.motion_config import MotionModuleConfig
from animatediff_core.settings.generation import MOTION_NORMS as MODES


# AnimateDiff's own validation prompts (configs/training/v1/training.yaml).
VALIDATION_PROMPTS = (
    "Snow rocky mountains peaks canyon. Snow blanketed rocky mountains surround and shadow deep canyons.",
    "A drone view of celebration with Christmas tree and fireworks, starry sky - background.",
    "Robot dancing in times square.",
    "Pacific coast, carmel by the sea ocean and waves.",
)
TRAIN_PRECISIONS = tuple(p for p in PRECISIONS if p != "auto")  # autocast dtypes (fp32: no autocast)


@dataclass(frozen=True)
class TrainConfig:
    """AnimateDiff's motion-module training recipe. `batch_size` is clips per worker per step.

    The only place the recipe's keys, defaults and help are written: `jobs.train` makes its flags and
    YAML keys from these fields, and `__post_init__` checks every value."""

    lr: float = option(1e-4, help="AdamW learning rate")
    weight_decay: float = option(1e-2, low=0, help="AdamW weight decay")
    adam_betas: tuple[float, ...] = option((0.9, 0.999), help="AdamW betas")
    adam_epsilon: float = option(1e-8, help="AdamW epsilon")
    max_grad_norm: float = option(1.0, help="gradient clipping")
    caption_dropout: float = option(0.1, help="fraction of captions replaced by the empty prompt")
    num_frames: int = option(16, low=1, help="frames per clip")
    stride: int = option(4, low=1, help="frame stride of a clip")
    sample_fps: float | None = option(None, help="sample a clip's frames at this rate from each video's own fps "
                                      "(the stride becomes fps / sample_fps); default: every --stride frames")
    flip: float = option(0.5, low=0, high=1, help="probability of mirroring a clip left-right (the official "
                         "recipe's RandomHorizontalFlip); 0: never")
    size: int = option(256, low=8, help="clip side after resize and center crop (a multiple of 8)")
    batch_size: int = option(4, low=1, help="clips per worker per step")
    max_steps: int = option(10_000, low=1, help="train up to this step")
    checkpoint_every: int = option(1_000, low=1, help="steps between checkpoints")
    validate_every: int = option(1_000, low=0, help="steps between validation GIFs (0: none)")
    precision: str = option("fp32", choices=TRAIN_PRECISIONS, help="autocast precision (fp16 adds a gradient scaler)")
    gradient_checkpointing: bool = option(False, help="recompute activations in the backward pass (less memory)")
    motion_lora_rank: int | None = option(None, low=1, flag="--motion-lora", help="train only LoRA adapters of this rank on the motion module")
    motion_config: MotionModuleConfig = MotionModuleConfig()  # shape of a fresh motion module (Python only)
    motion_norm: str | None = option(None, choices=MODES, help="official (AnimateDiff's own: per-frame GroupNorm) or "
                                     "diffusers numerics; default: what the module records, else official")
    seed: int = option(0, help="seed of every step's randomness")
    validation_prompts: tuple[str, ...] = option(VALIDATION_PROMPTS, help="prompts sampled to GIFs at each validation")
    validation_steps: int = option(25, low=1, help="sampler steps of the validation GIFs")
    validation_guidance: float = option(7.5, help="guidance of the validation GIFs")

    def __post_init__(self):
        self.validate()

    @classmethod
    def tiny(cls, **overrides) -> "TrainConfig":
        """For the tiny models: CPU smoke runs and tests."""
        preset = dict(num_frames=8, stride=2, size=64, batch_size=1, max_steps=4, checkpoint_every=2,
                      validate_every=2, motion_config=MotionModuleConfig.tiny(),
                      validation_prompts=VALIDATION_PROMPTS[:2], validation_steps=2)
        return cls(**{**preset, **overrides})

    def updated(self, **overrides) -> "TrainConfig":
        """A copy with the non-None overrides applied (job flags over the recipe)."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - names)
        need(not unknown, f"unknown training setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def clip_config(self, num_threads: int = 1):
        from animatediff_core.training.clips import ClipConfig  # here: the config stays importable without the video stack

        return ClipConfig(num_frames=self.num_frames, stride=self.stride, size=self.size, num_threads=num_threads,
                          sample_fps=self.sample_fps, flip=self.flip)

    def validate(self) -> None:
        """Raise ConfigError naming the first value of the wrong type, choice or range, then the rules between keys."""
        check_fields(self)
        need(self.size % 8 == 0, f"size must be a multiple of 8 (the VAE downsamples by 8), found {self.size}")
        need(self.lr > 0, f"lr must be > 0, found {self.lr}")
        need(self.sample_fps is None or self.sample_fps > 0, f"sample_fps must be > 0, found {self.sample_fps}")
        need(self.max_grad_norm > 0, f"max_grad_norm must be > 0, found {self.max_grad_norm}")
        need(0 <= self.caption_dropout < 1, f"caption_dropout must be in [0, 1), found {self.caption_dropout}")
        need(len(self.adam_betas) == 2, f"adam_betas must be two numbers, found {self.adam_betas!r}")
        need(bool(self.validation_prompts) or self.validate_every == 0, "validation needs at least one prompt")

    def to_json(self) -> dict:
        return json.loads(json.dumps(asdict(self)))
