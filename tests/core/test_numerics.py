import copy
import json

import pytest
import torch

from animatediff_core.errors import ConfigError
from animatediff_core.models.inflate import inflate_unet, new_motion_adapter
from animatediff_core.models.motion_config import MotionModuleConfig
from animatediff_core.models.motion_formats import load_motion_adapter, save_motion_adapter
from animatediff_core.models.motion_lora import add_motion_lora
from animatediff_core.models.numerics import (
    AcrossFramesGroupNorm,
    FrameCount,
    PerFrameGroupNorm,
    apply_motion_norm,
    detect_version,
    numerics_of,
    resolve,
)
from animatediff_core.models.pipeline import load_base, load_pipeline
from animatediff_core.tiny import TINY_UNET, tiny_unet
from animatediff_core.training.trainer import ADAPTER_DIR, CONFIG_FILE, ORIGINAL_FILE, Batch, MotionTrainer, TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
V1 = MotionModuleConfig(max_seq_length=24, use_mid_block=False, num_attention_heads=4, norm_num_groups=2)
F = 8  # frames


def _video_unet(cfg=MotionModuleConfig.tiny(), zero_init=False):
    """Tiny video UNet; motion modules zero-initialized (identities) or with random outputs."""
    torch.manual_seed(0)
    adapter = new_motion_adapter(TINY_UNET, cfg, zero_init=zero_init)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if not zero_init and "proj_out" in name and name.endswith("weight"):
                p.normal_(0.0, 0.2)
    unet, _ = inflate_unet(tiny_unet(), adapter)
    return unet.eval()


def _run(unet, latents):
    f = latents.shape[2]
    text = torch.randn(latents.shape[0], 77, 32, generator=torch.Generator().manual_seed(2)).repeat_interleave(f, 0)
    with torch.no_grad():
        return unet(latents, torch.tensor([500]), encoder_hidden_states=text).sample


def _latents(b=1, f=F, size=16):
    return torch.randn(b, 4, f, size, size, generator=torch.Generator().manual_seed(1))


def _frames_differ(a, b, frames):
    return [(a[:, :, i] - b[:, :, i]).abs().max().item() for i in frames]


def test_per_frame_norm_ignores_other_frames_while_attention_mixes_them():
    unet = _video_unet()
    module = unet.down_blocks[0].motion_modules[0]  # AnimateDiffTransformer3D, input (b*f, c, h, w)
    x = torch.randn(F, module.in_channels, 8, 8, generator=torch.Generator().manual_seed(3))
    scaled, replaced = x.clone(), x.clone()
    scaled[3] *= 5
    replaced[3] = torch.randn(replaced[3].shape, generator=torch.Generator().manual_seed(4))
    others = [i for i in range(F) if i != 3]

    def out(inp):
        with torch.no_grad():
            return module(inp, num_frames=F)[others]

    apply_motion_norm(unet, "official", "v2")
    assert isinstance(module.norm, PerFrameGroupNorm)
    assert (out(scaled) - out(x)).abs().max() < 1e-5  # frame 3's scale no longer reaches the statistics
    assert (out(replaced) - out(x)).abs().max() > 1e-2  # but attention still carries its content to the others
    apply_motion_norm(unet, "diffusers", "v2")
    assert type(module.norm) is torch.nn.GroupNorm
    assert (out(scaled) - out(x)).abs().max() > 1e-2  # diffusers: statistics span all frames


def test_per_frame_norm_is_group_norm_of_each_frame():
    norm = PerFrameGroupNorm(2, 8, eps=1e-6)
    torch.nn.init.normal_(norm.weight)
    frames = torch.randn(2 * 4, 8, 3, 3)  # (b f) c h w, as diffusers' motion module holds it
    video = frames.reshape(2, 4, 8, 3, 3).permute(0, 2, 1, 3, 4)  # what AnimateDiffTransformer3D gives its norm
    expected = torch.cat([torch.nn.functional.group_norm(fr[None], 2, norm.weight, norm.bias, 1e-6) for fr in frames])
    got = norm(video).permute(0, 2, 1, 3, 4).reshape(8, 8, 3, 3)
    assert torch.allclose(got, expected, atol=1e-6)


def test_across_frames_norm_is_group_norm_of_the_clip():
    count = FrameCount()
    count.frames = 4
    norm = AcrossFramesGroupNorm(2, 8, count=count)
    clip = torch.randn(2, 8, 4, 3, 3)  # (b, c, f, h, w)
    frames = clip.permute(0, 2, 1, 3, 4).reshape(8, 8, 3, 3)
    got = norm(frames).reshape(2, 4, 8, 3, 3).permute(0, 2, 1, 3, 4)
    assert torch.allclose(got, torch.nn.functional.group_norm(clip, 2), atol=1e-6)


def test_v1_module_normalizes_spatial_layers_across_frames_v2_does_not():
    """Zero-initialized motion modules are identities: only the spatial norms can mix frames."""
    changed = {}
    for cfg, version in ((V1, "v1"), (MotionModuleConfig.tiny(), "v2")):
        unet = _video_unet(cfg, zero_init=True)
        assert detect_version(unet.config) == version
        apply_motion_norm(unet, "official", detect_version(unet.config))
        spatial = [unet.conv_norm_out] + [r.norm1 for b in unet.down_blocks for r in b.resnets]
        assert all(isinstance(n, AcrossFramesGroupNorm) == (version == "v1") for n in spatial)
        x = _latents()
        y = x.clone()
        y[:, :, 3] *= 3
        changed[version] = max(_frames_differ(_run(unet, x), _run(unet, y), [0, 1, 2, 4]))
    assert changed["v1"] > 1e-3 and changed["v2"] < 1e-4


def test_diffusers_numerics_match_diffusers_bit_for_bit():
    unet = _video_unet(V1)
    plain = copy.deepcopy(unet)
    keys = {k: v.data_ptr() for k, v in unet.state_dict().items()}
    x = _latents()
    apply_motion_norm(unet, "official", "v1")
    official = _run(unet, x)
    assert {k: v.data_ptr() for k, v in unet.state_dict().items()} == keys  # same keys, the very same tensors
    apply_motion_norm(unet, "diffusers", "v1")
    assert torch.equal(_run(unet, x), _run(plain, x))
    assert (official - _run(plain, x)).abs().max() > 1e-3
    assert all(type(m) is torch.nn.GroupNorm for m in unet.modules() if isinstance(m, torch.nn.GroupNorm))
    assert not unet._forward_pre_hooks


def test_official_numerics_keep_loading_and_lora_working():
    unet = _video_unet()
    apply_motion_norm(unet, "official", "v1")
    state = {k: v.clone() for k, v in unet.state_dict().items()}
    fresh = _video_unet()
    fresh.load_state_dict(state, strict=True)
    assert add_motion_lora(unet, 4) > 0
    assert _run(unet, _latents(f=4)).shape == (1, 4, 4, 16, 16)


def test_mode_is_validated_with_the_choices():
    with pytest.raises(ConfigError, match="official, diffusers.*'offical'"):
        apply_motion_norm(_video_unet(), "offical", "v2")
    with pytest.raises(ConfigError, match="official, diffusers"):
        load_pipeline("/nonexistent", "/nonexistent", motion_norm="fast")
    with pytest.raises(ConfigError, match="motion_norm"):
        TrainConfig.tiny(motion_norm="exact").validate()


def test_version_from_shape_or_record():
    assert detect_version({"motion_max_seq_length": 24, "use_motion_mid_block": False}) == "v1"
    assert detect_version({"motion_max_seq_length": 32, "use_motion_mid_block": True}) == "v2"
    assert detect_version({"motion_max_seq_length": 32, "use_motion_mid_block": False}) == "v3"
    v3 = {"motion_max_seq_length": 32, "use_motion_mid_block": False}
    assert resolve(None, v3) == resolve("official", v3) and resolve(None, v3).version == "v3"
    recorded = {**v3, "_motion_norm": "diffusers", "_motion_version": "v1"}
    assert (resolve(None, recorded).mode, resolve(None, recorded).version) == ("diffusers", "v1")
    assert resolve("official", recorded).mode == "official"  # the user's choice wins over the record


def test_pipeline_defaults_to_official_and_takes_the_override(tiny_models, tmp_path):
    base = str(tiny_models / "base")
    pipe = load_pipeline(base, str(tiny_models / "motion_module.safetensors"))
    assert (numerics_of(pipe.unet).mode, numerics_of(pipe.unet).version) == ("official", "v2")
    assert numerics_of(load_pipeline(base, str(tiny_models / "motion_adapter"), motion_norm="diffusers").unet).mode == "diffusers"
    v1 = new_motion_adapter(TINY_UNET, V1)
    save_motion_adapter(v1, str(tmp_path / "v1.safetensors"), fmt="original")
    assert numerics_of(load_pipeline(base, str(tmp_path / "v1.safetensors")).unet).version == "v1"


def test_trained_module_reloads_with_the_numerics_it_was_trained_with(tiny_models, tmp_path):
    torch.manual_seed(0)
    cfg = TrainConfig.tiny(num_frames=4, size=32, motion_norm="diffusers")
    trainer = MotionTrainer(load_base(str(tiny_models / "base")), cfg)
    frames = torch.randint(0, 256, (1, 4, 32, 32, 3), generator=torch.Generator().manual_seed(5), dtype=torch.uint8)
    trainer.train_step(Batch(captions=["waves"], frames=frames), torch.Generator().manual_seed(6))
    trainer.save_checkpoint(str(tmp_path / "ckpt"))
    trained = trainer.unet.eval()
    x = _latents(f=4, size=8)
    info = json.loads((tmp_path / "ckpt" / CONFIG_FILE).read_text())
    assert info["numerics"] == {"motion_norm": "diffusers", "motion_version": "v2"}
    for fmt in (ADAPTER_DIR, ORIGINAL_FILE):
        uri = str(tmp_path / "ckpt" / fmt)
        assert load_motion_adapter(uri).config["_motion_norm"] == "diffusers"
        pipe = load_pipeline(str(tiny_models / "base"), uri)
        assert numerics_of(pipe.unet).mode == "diffusers"
        assert torch.equal(_run(pipe.unet, x), _run(trained, x))
    official = load_pipeline(str(tiny_models / "base"), str(tmp_path / "ckpt" / ADAPTER_DIR), motion_norm="official")
    assert not torch.equal(_run(official.unet, x), _run(trained, x))


def test_resumed_training_keeps_the_checkpoints_numerics(tiny_models, tmp_path):
    base = load_base(str(tiny_models / "base"))
    MotionTrainer(base, TrainConfig.tiny(motion_norm="diffusers")).save_checkpoint(str(tmp_path / "ckpt"))
    resumed = MotionTrainer(base, TrainConfig.tiny())
    resumed.load_checkpoint(str(tmp_path / "ckpt"))
    assert numerics_of(resumed.unet).mode == resumed.numerics.mode == "diffusers"
    with pytest.raises(ConfigError, match="trained with motion_norm='diffusers'"):
        MotionTrainer(base, TrainConfig.tiny(motion_norm="official")).load_checkpoint(str(tmp_path / "ckpt"))
