import subprocess
import sys

import torch
from diffusers import UNetMotionModel

from animatediff_core.models.inflate import freeze_base, inflate_unet, new_motion_adapter
from animatediff_core.models.motion_config import MotionModuleConfig
from animatediff_core.tiny import TINY_UNET, tiny_motion_adapter, tiny_unet


def _unet():
    torch.manual_seed(0)
    return tiny_unet().eval()


def test_core_does_not_import_ray():
    """Every module of animatediff_core imports without Ray (checked in a fresh interpreter)."""
    code = (
        "import importlib, pkgutil, sys, animatediff_core\n"
        "mods = [m.name for m in pkgutil.walk_packages(animatediff_core.__path__, 'animatediff_core.')]\n"
        "[importlib.import_module(m) for m in mods]\n"
        "assert len(mods) >= 15, mods\n"
        "assert 'ray' not in sys.modules, 'animatediff_core imported ray'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_fresh_inflation_matches_image_unet_frame_by_frame():
    unet = _unet()
    video_unet, adapter = inflate_unet(unet, cfg=MotionModuleConfig.tiny())
    video_unet.eval()
    b, f = 1, 16
    torch.manual_seed(1)
    latents = torch.randn(b, 4, f, 16, 16)
    text = torch.randn(b, 77, 32)
    t = torch.tensor([500])
    with torch.no_grad():
        video = video_unet(latents, t, encoder_hidden_states=text.repeat_interleave(f, 0)).sample
        frames = latents.permute(0, 2, 1, 3, 4).reshape(b * f, 4, 16, 16)
        image = unet(frames, t.repeat(f), encoder_hidden_states=text.repeat_interleave(f, 0)).sample
    image = image.reshape(b, f, 4, 16, 16).permute(0, 2, 1, 3, 4)
    assert (video - image).abs().max().item() <= 1e-5


def test_motion_modules_at_every_level_with_zero_init_output():
    video_unet, adapter = inflate_unet(_unet(), cfg=MotionModuleConfig.tiny())
    names = [n for n, _ in video_unet.named_modules() if n.endswith("motion_modules")]
    assert any(n.startswith("down_blocks.") for n in names)
    assert any(n.startswith("mid_block.") for n in names)
    assert any(n.startswith("up_blocks.") for n in names)
    assert len(names) == len(TINY_UNET["block_out_channels"]) * 2 + 1
    proj_out = [m for n, m in video_unet.named_modules() if "motion_modules" in n and n.endswith("proj_out")]
    assert proj_out and all(torch.count_nonzero(m.weight) == 0 and torch.count_nonzero(m.bias) == 0 for m in proj_out)


def test_sinusoidal_positions_length_configurable():
    default = new_motion_adapter(TINY_UNET, MotionModuleConfig.tiny())
    assert default.config["motion_max_seq_length"] == 32
    pe = [b for n, b in default.named_buffers() if n.endswith("pos_embed.pe")]
    assert pe and all(p.shape[1] == 32 for p in pe)
    # sin on even channels, cos on odd: position 0 is (0, 1, 0, 1, ...)
    assert torch.allclose(pe[0][0, 0, 0::2], torch.zeros_like(pe[0][0, 0, 0::2]))
    assert torch.allclose(pe[0][0, 0, 1::2], torch.ones_like(pe[0][0, 0, 1::2]))
    v1 = new_motion_adapter(TINY_UNET, MotionModuleConfig(max_seq_length=24, num_attention_heads=4, norm_num_groups=2))
    unet, _ = inflate_unet(_unet(), v1)
    assert isinstance(unet, UNetMotionModel) and unet.config["motion_max_seq_length"] == 24


def test_inflate_refuses_adapter_of_another_shape():
    import pytest

    from animatediff_core.errors import CheckpointError

    bad = new_motion_adapter({**TINY_UNET, "block_out_channels": (32, 32)}, MotionModuleConfig.tiny())
    with pytest.raises(CheckpointError, match="block_out_channels"):
        inflate_unet(_unet(), bad)


def _train_steps(video_unet, steps=2):
    opt = torch.optim.AdamW([p for p in video_unet.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        x = torch.randn(1, 4, 4, 8, 8)
        out = video_unet(x, torch.tensor([10]), encoder_hidden_states=torch.randn(4, 77, 32)).sample
        out.pow(2).mean().backward()
        opt.step()
        opt.zero_grad()


def test_freeze_base_trains_only_motion_modules():
    video_unet, _ = inflate_unet(_unet(), tiny_motion_adapter())
    trainable = freeze_base(video_unet)
    assert trainable and all("motion_modules" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in video_unet.named_parameters()}
    _train_steps(video_unet)
    for n, p in video_unet.named_parameters():
        if "motion_modules" in n:
            continue
        assert torch.equal(p, before[n]), n
    changed = [n for n, p in video_unet.named_parameters() if "motion_modules" in n and not torch.equal(p, before[n])]
    assert len(changed) > len(trainable) // 2
