"""Speed options (animatediff_core/models/speed.py): each gives the plain path's frames, and fused projections
follow personalized checkpoints, motion LoRAs and motion-module swaps."""

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention

from animatediff_core.errors import ConfigError
from animatediff_core.models.motion_formats import load_motion_adapter
from animatediff_core.models.personalize import CheckpointSpec, Personalizer
from animatediff_core.models.pipeline import load_pipeline
from animatediff_core.models.speed import SpeedOptions, apply_speed, fused_count, weights_change
from animatediff_core.sampling.generate import GenerationSettings, Request, generate

SMALL = GenerationSettings(num_frames=4, height=32, width=32, steps=2, guidance_scale=2.0)
REQUESTS = [Request("a cat", "blurry", 1, SMALL), Request("a dog", "", 2, SMALL)]


def _load(tiny_models, options=None):
    pipe = load_pipeline(str(tiny_models / "base"), str(tiny_models / "motion_adapter"))
    if options is not None:
        apply_speed(pipe, options)
    return pipe


def _max_diff(a, b) -> int:
    return max(int(np.abs(x.astype(int) - y.astype(int)).max()) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def plain(tiny_models, one_thread):
    pipe = _load(tiny_models)
    return pipe, Personalizer(pipe)


@pytest.fixture(scope="module")
def plain_frames(plain):
    return generate(plain[0], REQUESTS)


@pytest.mark.parametrize("options", [SpeedOptions(fuse_qkv=True), SpeedOptions(channels_last=True),
                                     SpeedOptions(vae_chunk=3)], ids=["fuse_qkv", "channels_last", "vae_chunk"])
def test_each_option_gives_the_plain_frames(tiny_models, plain_frames, options):
    pipe = _load(tiny_models, options)
    if options.fuse_qkv:
        attentions = [m for model in (pipe.unet, pipe.vae) for m in model.modules() if isinstance(m, Attention)]
        assert fused_count(pipe) == len(attentions) > 0
    if options.channels_last:
        conv = pipe.unet.conv_in.weight
        assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert _max_diff(generate(pipe, REQUESTS), plain_frames) <= 1


def _shaken_adapter(tiny_models):
    adapter = load_motion_adapter(str(tiny_models / "motion_module.safetensors"))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return adapter


@pytest.mark.slow
def test_fused_projections_follow_checkpoint_and_motion_switches(tiny_models, plain):
    base, base_personalizer = plain
    pipe = _load(tiny_models, SpeedOptions(fuse_qkv=True, channels_last=True))
    p = Personalizer(pipe)
    full = fused_count(pipe)
    keys = set(pipe.unet.state_dict())
    assert any(k.endswith("to_qkv.weight") for k in keys)
    lora = str(tiny_models / "motion_loras" / "zoom.safetensors")
    steps = [("dreamy", None), ("toon_lora", None), ("film_peft_lora", lora), ("toon_lora", None), ("dreamy", None),
             ("dreamy", lora)]
    try:
        for name, motion_lora in steps:
            spec = CheckpointSpec(name, str(tiny_models / "checkpoints" / f"{name}.safetensors"))
            for personalizer in (p, base_personalizer):
                personalizer.apply(spec)
                personalizer.apply_motion_lora(motion_lora)
            under_lora = name != "dreamy" or motion_lora is not None
            # attentions under a peft LoRA run unfused (a fused copy would drop the LoRA); the rest stay fused
            assert (0 < fused_count(pipe) < full) if under_lora else fused_count(pipe) == full, (name, motion_lora)
            assert _max_diff(generate(pipe, REQUESTS), generate(base, REQUESTS)) <= 1, (name, motion_lora)
        for personalizer in (p, base_personalizer):  # as the actor does: a motion LoRA belongs to its module
            personalizer.apply_motion_lora(None)
        adapter = _shaken_adapter(tiny_models)  # a motion-module swap: a strict load into the plain modules
        with weights_change(pipe):
            assert fused_count(pipe) == 0 and set(pipe.unet.state_dict()) == {k for k in keys if "to_qkv" not in k and "to_kv" not in k}
            pipe.unet.load_motion_modules(adapter)
        base.unet.load_motion_modules(adapter)
        assert fused_count(pipe) == full and set(pipe.unet.state_dict()) == keys
        assert _max_diff(generate(pipe, REQUESTS), generate(base, REQUESTS)) <= 1
    finally:
        base_personalizer.reset()
        base.unet.load_motion_modules(load_motion_adapter(str(tiny_models / "motion_adapter")))
    p.reset()
    assert fused_count(pipe) == full


@pytest.mark.slow
def test_compiled_unet_gives_plain_frames_across_a_switch(tiny_models, plain, plain_frames):
    """The wiring of --compile, traced with the eager backend (inductor's code generation is for GPUs)."""
    base, base_personalizer = plain
    pipe = _load(tiny_models, SpeedOptions(compile=True, compile_backend="eager", fuse_qkv=True))
    keys = set(pipe.unet.state_dict())
    assert type(pipe.unet).__name__ == "UNetMotionModel"  # compiled in place: the pipeline's module is unchanged
    assert _max_diff(generate(pipe, REQUESTS), plain_frames) <= 1
    spec = CheckpointSpec("dreamy", str(tiny_models / "checkpoints" / "dreamy.safetensors"))
    Personalizer(pipe).apply(spec)
    base_personalizer.apply(spec)
    try:
        assert set(pipe.unet.state_dict()) == keys
        assert _max_diff(generate(pipe, REQUESTS), generate(base, REQUESTS)) <= 1
    finally:
        base_personalizer.reset()


def test_options_are_checked_with_what_to_fix(tmp_path):
    with pytest.raises(ConfigError, match="vae_chunk must be an integer >= 0"):
        SpeedOptions(vae_chunk=-2)
    with pytest.raises(ConfigError, match="add --compile or drop --compile-cache"):
        SpeedOptions(compile_cache=str(tmp_path))
    with pytest.raises(ConfigError, match="must be a local folder"):
        SpeedOptions(compile=True, compile_cache="s3://bucket/cache")
    with pytest.raises(ConfigError, match="compile_backend must be one of"):
        SpeedOptions(compile=True, compile_backend="tvm")
    assert not SpeedOptions().any and SpeedOptions(vae_chunk=8).any
