"""AnimateDiff's training objective: epsilon prediction with an L2 loss, base frozen.

Source: guoyww/AnimateDiff `train.py` (noise_scheduler.add_noise, F.mse_loss(model_pred, noise)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNetMotionModel
from transformers import CLIPTextModel, CLIPTokenizer


@torch.no_grad()
def encode_frames(vae: AutoencoderKL, frames: torch.Tensor, chunk: int = 16,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """`(b, f, h, w, 3) uint8` frames -> `(b, c, f, h/8, w/8)` latents, scaled by the VAE's scaling factor.

    Latents are drawn from the VAE's posterior, with `generator` when given (reproducible steps).
    """
    b, f = frames.shape[:2]
    x = frames.reshape(b * f, *frames.shape[2:]).permute(0, 3, 1, 2)
    x = x.to(device=vae.device, dtype=vae.dtype) / 127.5 - 1.0
    parts = [vae.encode(x[i : i + chunk]).latent_dist.sample(generator) for i in range(0, x.shape[0], chunk)]
    z = torch.cat(parts) * vae.config.scaling_factor
    return z.reshape(b, f, *z.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()


@torch.no_grad()
def encode_text(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, prompts: list[str]) -> torch.Tensor:
    """Prompts -> `(b, 77, d)` CLIP last hidden states (what the UNet cross-attends to)."""
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids.to(text_encoder.device))[0]


def diffusion_loss(
    unet: UNetMotionModel,
    scheduler: DDPMScheduler,
    latents: torch.Tensor,
    text_embeddings: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """L2 between the UNet's predicted noise and the true noise at a random timestep per clip.

    latents: `(b, c, f, h, w)` (already scaled); text_embeddings: `(b, seq, d)`. The motion UNet wants
    `encoder_hidden_states` repeated per frame: `(b*f, seq, d)`.
    """
    b, f = latents.shape[0], latents.shape[2]
    noise = torch.randn(latents.shape, generator=generator, device="cpu", dtype=torch.float32).to(latents)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator, device="cpu").to(latents.device)
    noisy = scheduler.add_noise(latents, noise, t)
    context = text_embeddings.repeat_interleave(f, dim=0)
    pred = unet(noisy, t, encoder_hidden_states=context).sample
    return F.mse_loss(pred.float(), noise.float())
