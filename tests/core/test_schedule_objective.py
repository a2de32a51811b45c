import json
from pathlib import Path

import pytest
import torch

from animatediff_core.models.inflate import freeze_base, inflate_unet
from animatediff_core.models.motion_config import MotionModuleConfig
from animatediff_core.settings.schedule import SAMPLERS, ScheduleConfig
from animatediff_core.tiny import tiny_unet
from animatediff_core.training.objective import diffusion_loss, encode_frames


def test_training_schedule_is_animatediff_linear():
    s = ScheduleConfig().training_scheduler()
    assert s.config.num_train_timesteps == 1000
    assert s.config.beta_schedule == "linear" and s.config.prediction_type == "epsilon"
    assert abs(s.betas[0].item() - 0.00085) < 1e-8 and abs(s.betas[-1].item() - 0.012) < 1e-8
    diffs = s.betas[1:] - s.betas[:-1]
    assert torch.allclose(diffs, diffs.mean().expand_as(diffs), atol=1e-9)  # linear, not scaled_linear


def _official_ddim() -> dict:
    """The official AnimateDiff's DDIM as its own diffusers 0.11.1 runs it (tests/fixtures/make_official_ddim_reference.py)."""
    path = Path(__file__).parents[1] / "fixtures" / "official_ddim.json"
    return json.loads(path.read_text())


@pytest.mark.parametrize("steps", ["25", "8", "4", "2"])
def test_ddim_samples_as_the_official_repository_does(steps):
    ref = _official_ddim()
    assert ref["diffusers"] == "0.11.1"
    s = SAMPLERS["ddim"].build()
    s.set_timesteps(int(steps))
    assert s.timesteps.tolist() == ref["runs"][steps]["timesteps"]  # 961, 921, ..., 41, 1 at 25 steps
    assert float(s.final_alpha_cumprod) == ref["runs"][steps]["final_alpha_cumprod"] == 1.0
    x = torch.linspace(-1.5, 1.5, 72, dtype=torch.float64).reshape(1, 4, 2, 3, 3)  # the reference's loop, step for step
    for t in s.timesteps:
        x = s.step(torch.sin(x * 3.0 + float(t) / 100.0), t, x, eta=0.0).prev_sample
    assert torch.allclose(x.flatten(), torch.tensor(ref["runs"][steps]["sample"], dtype=torch.float64), atol=1e-6)


def test_ddim_linspace_is_diffusers_documented_recipe_and_differs():
    s = SAMPLERS["ddim_linspace"].build()
    c = s.config
    assert (c.beta_start, c.beta_end, c.beta_schedule) == (0.00085, 0.012, "linear")
    assert c.steps_offset == 1 and c.clip_sample is False and c.timestep_spacing == "linspace"
    s.set_timesteps(25)
    assert s.timesteps[:2].tolist() == [999, 957] and s.timesteps[-1] == 0 and float(s.final_alpha_cumprod) < 1.0
    assert SAMPLERS["ddim"].definition != SAMPLERS["ddim_linspace"].definition  # reruns know they differ
    assert type(ScheduleConfig().inference_scheduler()).__name__ == "DDIMScheduler"  # the default sampler: ddim


def test_loss_is_l2_on_noise_and_reaches_only_motion_params():
    torch.manual_seed(0)
    unet, _ = inflate_unet(tiny_unet(), cfg=MotionModuleConfig.tiny())
    freeze_base(unet)
    sched = ScheduleConfig().training_scheduler()
    latents = torch.randn(2, 4, 16, 8, 8)
    text = torch.randn(2, 77, 32)
    loss = diffusion_loss(unet, sched, latents, text, generator=torch.Generator().manual_seed(3))
    # recompute by hand with the same draws
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(latents.shape, generator=g)
    t = torch.randint(0, 1000, (2,), generator=g)
    with torch.no_grad():
        pred = unet(sched.add_noise(latents, noise, t), t, encoder_hidden_states=text.repeat_interleave(16, 0)).sample
    assert torch.allclose(loss.detach(), ((pred - noise) ** 2).mean(), atol=1e-6)
    loss.backward()
    grads = [n for n, p in unet.named_parameters() if p.grad is not None]
    assert grads and all("motion_modules" in n for n in grads)


def test_encode_frames_layout():
    from diffusers import AutoencoderKL

    from animatediff_core.tiny import TINY_VAE

    vae = AutoencoderKL(**TINY_VAE)
    frames = torch.randint(0, 255, (2, 3, 32, 32, 3), dtype=torch.uint8)
    z = encode_frames(vae, frames)
    assert z.shape == (2, 4, 3, 16, 16)
