"""Single-device motion-module training: AnimateDiff's recipe on a frozen SD-1.x base.

Source: guoyww/AnimateDiff `train.py` and `configs/training/v1/training.yaml`: frozen UNet, VAE and
text encoder; only the motion modules train; linear betas 0.00085 -> 0.012; L2 on the predicted
noise; AdamW lr 1e-4, weight decay 1e-2; gradient clipping at 1.0; 10% of captions replaced by the
empty prompt (`cfg_random_null_text_ratio`) so the module works under classifier-free guidance;
16 frames at stride 4, 256x256. Motion LoRA mode (AnimateDiff v2) trains only LoRA adapters on the
motion modules' attention.

Nothing here knows about distribution: `pipelines/` wraps `MotionTrainer.model` in DDP and feeds
batches. Every step draws its randomness (caption dropout, VAE posterior sample, noise, timesteps)
from the generator it is given, so a step depends only on (weights, optimizer state, batch, seed):
a run resumed from a checkpoint continues exactly where the interrupted one would have gone.
"""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from diffusers import AnimateDiffPipeline, MotionAdapter

from animatediff_core.io import storage
from animatediff_core.configs import need
from animatediff_core.device import dtype_of
from animatediff_core.errors import CheckpointError, ConfigError
from animatediff_core.sampling.generate import GenerationSettings, Request, generate
from animatediff_core.models.inflate import extract_motion_adapter, freeze_base, inflate_unet, is_motion_param
from animatediff_core.models.motion_formats import load_motion_adapter, save_motion_adapter
from animatediff_core.models.motion_lora import add_motion_lora, load_motion_lora_into, save_motion_lora
from animatediff_core.models.numerics import apply_motion_norm, record, resolve
from animatediff_core.training.objective import diffusion_loss, encode_frames, encode_text
from animatediff_core.models.pipeline import Base
from animatediff_core.settings.schedule import ScheduleConfig
from animatediff_core.training.recipe import TRAIN_PRECISIONS, VALIDATION_PROMPTS, TrainConfig  # noqa: F401  (the recipe, declared torch-free)

# Files inside one checkpoint folder.
ADAPTER_DIR = "motion_adapter"  # diffusers MotionAdapter folder
ORIGINAL_FILE = "motion_module.safetensors"  # original AnimateDiff keys
LORA_FILE = "motion_lora.safetensors"  # motion LoRA mode: only the LoRA weights
STATE_FILE = "training_state.pt"  # step, optimizer, grad scaler, caller's extras (tensors and plain data only)
CONFIG_FILE = "train_config.json"


@dataclass
class Batch:
    """One step's clips: decoded `frames` `(b, f, h, w, 3) uint8` with `captions`, or precomputed
    (by `jobs.ingest`) `latents` `(b, c, f, h/8, w/8)`, already scaled, with `text_embeddings` `(b, 77, d)`."""

    captions: list[str] | None = None
    frames: torch.Tensor | None = None
    latents: torch.Tensor | None = None
    text_embeddings: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.captions) if self.captions is not None else len(self.latents)


class StepResult(NamedTuple):
    loss: float
    grad_norm: float
    lr: float


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The randomness of one worker's step: a function of (seed, rank, step) only, so resuming repeats it."""
    return torch.Generator().manual_seed((seed * 1_000_003 + rank) * 1_000_003 + step)


def drop_captions(n: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """`(n,)` bool: True where the caption is replaced by the empty prompt (classifier-free guidance)."""
    return torch.rand(n, generator=generator) < p


class MotionTrainer:
    """Training state on one device: frozen base, trainable motion modules (or motion LoRA), AdamW.

    `model` is what the forward pass calls: the video UNet itself, or a wrapper around it (DDP)
    that a caller puts there. `unet` is always the bare video UNet.
    """

    def __init__(self, base: Base, cfg: TrainConfig, motion_adapter: MotionAdapter | None = None,
                 device: str | torch.device = "cpu"):
        cfg.validate()
        if cfg.motion_lora_rank and motion_adapter is None:
            raise ConfigError("motion LoRA adapts an existing motion module: give one to start from (--motion-module)")
        self.cfg, self.device = cfg, torch.device(device)
        unet, adapter = inflate_unet(base.unet, motion_adapter, cfg.motion_config)
        # What the module is trained with is recorded in what save_checkpoint writes, so it reloads the same way.
        wanted = resolve(cfg.motion_norm, adapter.config)
        self.numerics = apply_motion_norm(unet, wanted.mode, wanted.version)
        limit = int(unet.config["motion_max_seq_length"])
        need(cfg.num_frames <= limit, f"num_frames={cfg.num_frames} exceeds what the motion module supports ({limit})")
        if cfg.motion_lora_rank:
            add_motion_lora(unet, cfg.motion_lora_rank)
        freeze_base(unet, lora_only=bool(cfg.motion_lora_rank))
        if cfg.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        self.unet = unet.to(self.device).train()
        self.model: torch.nn.Module = self.unet
        self.vae = base.vae.to(self.device).eval().requires_grad_(False)
        self.text_encoder = base.text_encoder.to(self.device).eval().requires_grad_(False)
        self.tokenizer = base.tokenizer
        self.scheduler = ScheduleConfig().training_scheduler()
        self.params = [p for p in self.unet.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, betas=tuple(cfg.adam_betas),
                                           eps=cfg.adam_epsilon, weight_decay=cfg.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        self.step = 0
        self._null_text: torch.Tensor | None = None

    def autocast(self):
        if self.cfg.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype_of(self.cfg.precision, self.device.type == "cuda"))

    def train_step(self, batch: Batch, generator: torch.Generator) -> StepResult:
        """One optimizer step on `batch`: caption dropout, encode, L2 on noise, backward, clip, AdamW."""
        latents, text = self.condition(batch, generator)
        with self.autocast():
            loss = diffusion_loss(self.model, self.scheduler, latents, text, generator)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return StepResult(float(loss.detach()), float(grad_norm), float(self.optimizer.param_groups[0]["lr"]))

    @torch.no_grad()
    def condition(self, batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """`(b, c, f, h/8, w/8)` float32 latents and `(b, 77, d)` text embeddings, captions dropped at random."""
        drop = drop_captions(len(batch), self.cfg.caption_dropout, generator)
        if batch.latents is not None:
            text = batch.text_embeddings.to(self.device, torch.float32)
            text = torch.where(drop.to(self.device)[:, None, None], self.null_text().to(text), text)
            return batch.latents.to(self.device, torch.float32), text
        captions = ["" if d else c for c, d in zip(batch.captions, drop.tolist())]
        with self.autocast():
            latents = encode_frames(self.vae, batch.frames.to(self.device), generator=generator)
            text = encode_text(self.tokenizer, self.text_encoder, captions)
        return latents.float(), text.float()

    def null_text(self) -> torch.Tensor:
        """`(1, 77, d)` embedding of the empty prompt (what dropped captions become)."""
        if self._null_text is None:
            self._null_text = encode_text(self.tokenizer, self.text_encoder, [""]).float()
        return self._null_text

    @torch.no_grad()
    def sample(self, prompts: list[str], seed: int = 0) -> list[np.ndarray]:
        """Validation clips from the current weights: `(f, size, size, 3) uint8` per prompt."""
        pipe = AnimateDiffPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                   unet=self.unet, motion_adapter=None, scheduler=ScheduleConfig().inference_scheduler())
        pipe.set_progress_bar_config(disable=True)
        settings = GenerationSettings(num_frames=self.cfg.num_frames, height=self.cfg.size, width=self.cfg.size,
                                      steps=self.cfg.validation_steps, guidance_scale=self.cfg.validation_guidance)
        was_training = self.unet.training
        self.unet.eval()
        try:
            with self.autocast():
                return generate(pipe, [Request(p, seed=seed + i, settings=settings) for i, p in enumerate(prompts)])
        finally:
            self.unet.train(was_training)

    def motion_adapter(self) -> MotionAdapter:
        """The trained motion modules as a standalone MotionAdapter (full mode only)."""
        need(not self.cfg.motion_lora_rank, "in motion LoRA mode only the LoRA weights are trained; save them with save_checkpoint")
        adapter = extract_motion_adapter(self.unet)
        record(adapter, self.numerics)
        return adapter

    def save_checkpoint(self, uri: str, extra: dict | None = None) -> None:
        """Write a checkpoint folder (local or any fsspec URI): weights, optimizer and step state.

        Full mode: the motion module as a diffusers MotionAdapter folder and as an original-format file.
        Motion LoRA mode: only the LoRA weights. `extra` (plain data) comes back from `load_checkpoint`.
        """
        if self.cfg.motion_lora_rank:
            save_motion_lora(self.unet, storage.join(uri, LORA_FILE))
        else:
            adapter = self.motion_adapter()
            save_motion_adapter(adapter, storage.join(uri, ADAPTER_DIR), fmt="diffusers")
            save_motion_adapter(adapter, storage.join(uri, ORIGINAL_FILE), fmt="original")
        state = {"step": self.step, "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict(), "extra": extra or {}}
        buf = io.BytesIO()
        torch.save(state, buf)
        storage.write_bytes_atomic(storage.join(uri, STATE_FILE), buf.getvalue())
        info = {"step": self.step, "mode": "motion_lora" if self.cfg.motion_lora_rank else "motion_module",
                "config": self.cfg.to_json(), "extra": extra or {},
                "numerics": {"motion_norm": self.numerics.mode, "motion_version": self.numerics.version}}
        storage.write_text_atomic(storage.join(uri, CONFIG_FILE), json.dumps(info, indent=2))

    def load_checkpoint(self, uri: str) -> dict:
        """Restore weights, optimizer, scaler and step from a folder `save_checkpoint` wrote; returns `extra`."""
        if self.cfg.motion_lora_rank:
            load_motion_lora_into(self.unet, storage.join(uri, LORA_FILE))
        else:
            self._load_motion_weights(storage.join(uri, ADAPTER_DIR))
        self._continue_numerics(uri)
        state = read_training_state(uri)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        return dict(state.get("extra") or {})

    def _continue_numerics(self, uri: str) -> None:
        """A resumed run computes what the checkpoint was trained with; an explicit other motion_norm is refused."""
        path = storage.join(uri, CONFIG_FILE)
        saved = json.loads(storage.read_bytes(path)).get("numerics") if storage.exists(path) else None
        if not saved or saved["motion_norm"] == self.numerics.mode:
            return
        need(self.cfg.motion_norm is None, f"{uri} was trained with motion_norm={saved['motion_norm']!r}; "
                              f"this run asks for {self.cfg.motion_norm!r} (resume with the same --motion-norm)")
        self.numerics = apply_motion_norm(self.unet, saved["motion_norm"], saved["motion_version"])

    def _load_motion_weights(self, uri: str) -> None:
        adapter_state = load_motion_adapter(uri).state_dict()
        motion_keys = {k for k in self.unet.state_dict() if is_motion_param(k)}
        if set(adapter_state) != motion_keys:
            missing, unexpected = sorted(motion_keys - set(adapter_state)), sorted(set(adapter_state) - motion_keys)
            raise CheckpointError(f"{uri}: motion module does not match the one being trained "
                                  f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        self.unet.load_state_dict(adapter_state, strict=False)


def read_training_state(uri: str) -> dict:
    """The `training_state.pt` of a checkpoint folder (step, optimizer, scaler, extra); tensors and plain data only."""
    path = storage.join(uri, STATE_FILE)
    if not storage.exists(path):
        raise CheckpointError(f"{uri}: not a training checkpoint (no {STATE_FILE})")
    try:
        return torch.load(io.BytesIO(storage.read_bytes(path)), map_location="cpu", weights_only=True)
    except Exception as e:  # truncated upload, foreign pickle: one message either way
        raise CheckpointError(f"{path}: unreadable training state ({type(e).__name__}: {str(e)[:200]})") from None
