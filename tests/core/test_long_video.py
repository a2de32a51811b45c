"""Long videos (context windows), prompt travel and FreeInit on the tiny model set."""

import numpy as np
import pytest
import torch
from diffusers.models.attention import BasicTransformerBlock
from diffusers.pipelines.free_noise_utils import SplitInferenceModule

from animatediff_core.errors import ConfigError
from animatediff_core.models.pipeline import load_pipeline, max_frames
from animatediff_core.sampling import long_video
from animatediff_core.sampling.generate import GenerationSettings, Request, generate
from animatediff_core.settings.prompt_travel import parse_schedule

S = GenerationSettings(num_frames=8, height=32, width=32, steps=2, guidance_scale=7.5)


@pytest.fixture(scope="module")
def pipe(tiny_models, one_thread):
    return load_pipeline(str(tiny_models / "base"), str(tiny_models / "motion_module.safetensors"))


def _plain_again(pipe):
    assert all(isinstance(t, BasicTransformerBlock) and type(t) is BasicTransformerBlock
               for t in long_video._motion_blocks(pipe))
    assert not any(isinstance(m, SplitInferenceModule) for m in pipe.unet.modules())
    assert not pipe.free_noise_enabled and not pipe.free_init_enabled


@pytest.mark.slow
def test_clip_longer_than_the_module_runs_in_windows(pipe):
    limit = max_frames(pipe)
    s = S.updated(num_frames=64)
    assert limit < 64
    video = generate(pipe, [Request("a cat", seed=1, settings=s)])[0]
    assert video.shape == (64, 32, 32, 3) and video.dtype == np.uint8
    assert np.abs(video[0].astype(int) - video[-1].astype(int)).mean() > 0.5  # animated, not one frame repeated
    _plain_again(pipe)
    again = generate(pipe, [Request("a cat", seed=1, settings=s)])[0]
    assert np.array_equal(video, again)  # seeded: the window noise and its shuffle are the row's


def test_one_window_covering_the_clip_equals_the_plain_path(pipe):
    plain = generate(pipe, [Request("a cat", "blurry", seed=2, settings=S)])[0]
    # A schedule with one key takes the FreeNoise path with one window of all 8 frames.
    one_window = generate(pipe, [Request("a cat", "blurry", seed=2, settings=S.updated(prompt_schedule='{"0": "a cat"}'))])[0]
    assert np.abs(plain.astype(int) - one_window.astype(int)).max() <= 1
    _plain_again(pipe)
    assert np.array_equal(plain, generate(pipe, [Request("a cat", "blurry", seed=2, settings=S)])[0])


def test_window_settings_change_the_video(pipe):
    s = S.updated(num_frames=16, context_length=8)
    pyramid = generate(pipe, [Request("a cat", seed=3, settings=s)])[0]
    flat = generate(pipe, [Request("a cat", seed=3, settings=s.updated(context_weighting="flat"))])[0]
    assert pyramid.shape == flat.shape == (16, 32, 32, 3) and not np.array_equal(pyramid, flat)
    assert long_video.window_starts(16, 8, 4) == [0, 4, 8] and long_video.window_starts(18, 8, 4) == [0, 4, 8, 10]


def test_prompt_travel_interpolates_embeddings_between_keys(pipe):
    schedule = parse_schedule('{"0": "a caterpillar on a leaf", "8": "a butterfly on a leaf"}', 16)
    with long_video.windows(pipe, 16, split=False):
        embeds, _ = pipe._encode_prompt_free_noise(schedule, 16, "cpu", 1, False)
    a, _ = pipe.encode_prompt("a caterpillar on a leaf", "cpu", 1, False)
    b, _ = pipe.encode_prompt("a butterfly on a leaf", "cpu", 1, False)
    assert embeds.shape[0] == 16
    torch.testing.assert_close(embeds[0], a[0])
    torch.testing.assert_close(embeds[8], b[0])
    torch.testing.assert_close(embeds[4], (a[0] + b[0]) / 2)
    torch.testing.assert_close(embeds[15], b[0])  # after the last key: its prompt
    s = S.updated(num_frames=16)
    travel = generate(pipe, [Request("a caterpillar on a leaf", seed=4, settings=s.updated(
        prompt_schedule='{"8": "a butterfly on a leaf"}'))])[0]
    still = generate(pipe, [Request("a caterpillar on a leaf", seed=4, settings=s)])[0]
    assert not np.array_equal(travel[8:], still[8:])


@pytest.mark.parametrize("text, message", [
    ('{"0": "a", "16": "b"}', "past the last frame"),
    ("{0: 'a'}", "not valid JSON"),
    ('["a"]', "JSON object"),
    ('{"x": "a"}', "not a frame index"),
    ('{"0": ""}', "non-empty text prompt"),
])
def test_bad_schedules_say_what_to_fix(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_schedule(text, 16, "a prompt")


def test_free_init_resamples_and_switches_off(pipe):
    base = generate(pipe, [Request("a cat", seed=5, settings=S)])[0]
    free = generate(pipe, [Request("a cat", seed=5, settings=S.updated(free_init_iterations=2))])[0]
    assert free.shape == base.shape and not np.array_equal(base, free)
    _plain_again(pipe)
    assert np.array_equal(base, generate(pipe, [Request("a cat", seed=5, settings=S)])[0])


def test_looping_windows_wrap_around_the_clip(pipe):
    """A looping block's windows run around a ring of frames: with flat weighting it commutes with a
    circular shift by the stride (a plain block cannot: its first and last frames never share a window)."""
    block = long_video._motion_blocks(pipe)[0]
    x = torch.randn(3, 12, block.norm1.normalized_shape[0], generator=torch.Generator().manual_seed(0))
    try:
        block.__class__ = long_video.LoopingWindowBlock
        block.set_free_noise_properties(8, 4, "flat")
        with torch.no_grad():
            out, shifted = block(x), block(torch.roll(x, 4, dims=1))
        assert torch.allclose(torch.roll(out, 4, dims=1), shifted, atol=1e-5)
        block.__class__ = long_video.FreeNoiseTransformerBlock
        with torch.no_grad():
            plain_out, plain_shifted = block(x), block(torch.roll(x, 4, dims=1))
        assert not torch.allclose(torch.roll(plain_out, 4, dims=1), plain_shifted, atol=1e-3)
    finally:
        block.__class__ = BasicTransformerBlock
    assert long_video.ring_starts(12, 8, 4) == [0, 4, 8]


@pytest.mark.slow
def test_looping_clip_is_generated_and_the_pipeline_comes_back(pipe):
    s = S.updated(num_frames=16, context_length=8, context_weighting="flat")
    loop = generate(pipe, [Request("a cat", seed=5, settings=s.updated(context_loop=True))])[0]
    open_ended = generate(pipe, [Request("a cat", seed=5, settings=s)])[0]
    assert loop.shape == (16, 32, 32, 3) and not np.array_equal(loop, open_ended)
    _plain_again(pipe)
    assert np.array_equal(loop, generate(pipe, [Request("a cat", seed=5, settings=s.updated(context_loop=True))])[0])
