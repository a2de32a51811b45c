"""Evaluation metrics on the tiny random CLIP: invariants, and agreement with torchmetrics' CLIPScore."""

import math

import numpy as np
import pytest
import torch

from animatediff_core.metrics import scores as metrics
from animatediff_core.metrics.stills import generate_stills, motion_modules_disabled
from animatediff_core.models.pipeline import load_pipeline
from animatediff_core.sampling.generate import GenerationSettings, Request


@pytest.fixture(scope="module")
def clip(tiny_models):
    return metrics.load_clip(str(tiny_models / "clip"))


def _crossfade(f=8, h=40, w=48, seed=0):
    """A smooth video: frame t blends three random images, so neighbours are alike and far frames are not."""
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 256, (3, h, w, 3)).astype(np.float32)
    frames = []
    for t in np.linspace(0, 2, f):
        i = min(int(t), 1)
        frames.append((1 - (t - i)) * keys[i] + (t - i) * keys[i + 1])
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def _score(clip, video, prompt="a cat", still=None):
    return metrics.score_videos(clip, [video], [prompt], [still])[0]


def test_identical_frames(clip):
    frame = _crossfade()[0]
    video = np.repeat(frame[None], 6, axis=0)
    s = _score(clip, video, still=frame)
    assert s["frame_consistency"] == pytest.approx(1.0, abs=1e-5)
    assert s["frame_consistency_all_pairs"] == pytest.approx(1.0, abs=1e-5)
    assert s["temporal_flicker"] == 1.0 and s["motion_pixel"] == 0.0
    assert s["domain_similarity"] == pytest.approx(1.0, abs=1e-5)  # the still is the frame itself


def test_order_invariants(clip):
    video = _crossfade()
    base = _score(clip, video)
    rev = _score(clip, video[::-1].copy())
    shuffled = _score(clip, video[[0, 7, 1, 6, 2, 5, 3, 4]])
    assert rev["frame_consistency"] == pytest.approx(base["frame_consistency"], abs=1e-5)
    assert shuffled["frame_consistency"] < base["frame_consistency"]
    # all-pairs and text alignment do not depend on order at all
    for key in ("frame_consistency_all_pairs", "text_alignment"):
        assert shuffled[key] == pytest.approx(base[key], abs=1e-4) and rev[key] == pytest.approx(base[key], abs=1e-4)
    assert shuffled["motion_pixel"] > base["motion_pixel"] and shuffled["temporal_flicker"] < base["temporal_flicker"]


def test_pixel_metrics_definition():
    video = np.zeros((3, 4, 4, 3), np.uint8)
    video[1] = 10
    video[2] = 40
    assert metrics.motion_pixel(video) == pytest.approx(20.0)  # (10 + 30) / 2
    assert metrics.temporal_flicker(video) == pytest.approx(1 - 20 / 255)
    assert math.isnan(metrics.motion_pixel(video[:1])) and math.isnan(metrics.frame_consistency(torch.ones(1, 4)))


def test_text_alignment_matches_torchmetrics_clipscore(clip, tiny_models):
    from torchmetrics.multimodal.clip_score import CLIPScore
    from transformers import CLIPModel, CLIPProcessor

    class Features(torch.nn.Module):
        """transformers 5 returns model outputs from get_*_features; torchmetrics 1.9 expects tensors."""

        def __init__(self, model):
            super().__init__()
            self.model, self.config = model, model.config

        def get_image_features(self, *a, **k):
            return self.model.get_image_features(*a, **k).pooler_output

        def get_text_features(self, *a, **k):
            return self.model.get_text_features(*a, **k).pooler_output

    folder = str(tiny_models / "clip")
    reference = CLIPScore(model_name_or_path=lambda: (Features(CLIPModel.from_pretrained(folder)), CLIPProcessor.from_pretrained(folder)))
    for seed, prompt in ((0, "a red sports car drifting"), (1, "a corgi running on the beach at sunset")):
        video = _crossfade(f=5, h=36, w=52, seed=seed)
        expected = float(reference(torch.from_numpy(video).permute(0, 3, 1, 2), [prompt] * len(video)).detach())
        reference.reset()
        assert _score(clip, video, prompt)["text_alignment"] == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_long_prompts_are_truncated_like_clip_and_counted(clip):
    long = " ".join(["cat"] * 120)
    emb, counts = metrics.embed_texts(clip, [long, "a cat"])
    assert counts == [122, 4]
    ids = clip.tokenizer(long)["input_ids"]
    cut = clip.tokenizer.decode(ids[1:76])  # the 75 tokens CLIP keeps between its start and end tokens
    assert torch.allclose(emb[0], metrics.embed_texts(clip, [cut])[0][0], atol=1e-5)
    s = _score(clip, _crossfade(f=2), long)
    assert s["prompt_truncated"] and s["prompt_tokens"] == 122 and 0 <= s["text_alignment"] <= 100


def test_batched_scoring_equals_one_at_a_time(clip):
    videos = [_crossfade(seed=i, f=3 + i) for i in range(3)]
    prompts = ["a cat", "a dog", "a cat"]
    together = metrics.score_videos(clip, videos, prompts, [None, videos[1][0], None], batch_size=4)
    for i in range(3):
        alone = _score(clip, videos[i], prompts[i], videos[1][0] if i == 1 else None)
        for k, v in alone.items():
            assert (math.isnan(v) and math.isnan(together[i][k])) if isinstance(v, float) and math.isnan(v) else together[i][k] == pytest.approx(v, abs=1e-5)


def test_bypassed_motion_modules_give_the_image_unet(tiny_models):
    from diffusers import UNet2DConditionModel

    pipe = load_pipeline(str(tiny_models / "base"), str(tiny_models / "motion_module.safetensors"))
    image_unet = UNet2DConditionModel.from_pretrained(str(tiny_models / "base"), subfolder="unet")
    torch.manual_seed(0)
    x, t, text = torch.randn(1, 4, 1, 4, 4), torch.tensor(10), torch.randn(1, 77, 32)
    with torch.no_grad():
        with_motion = pipe.unet(x, t, encoder_hidden_states=text).sample
        with motion_modules_disabled(pipe.unet) as n:
            bypassed = pipe.unet(x, t, encoder_hidden_states=text).sample
        after = pipe.unet(x, t, encoder_hidden_states=text).sample
        image = image_unet(x[:, :, 0], t, encoder_hidden_states=text).sample
    assert n > 0
    assert torch.allclose(bypassed[:, :, 0], image, atol=1e-5)
    assert not torch.allclose(with_motion, bypassed, atol=1e-3) and torch.equal(after, with_motion)
    s = GenerationSettings(num_frames=4, height=32, width=32, steps=1)
    stills = generate_stills(pipe, [Request("a cat", seed=3, settings=s)] * 2)
    assert stills[0].shape == (32, 32, 3) and stills[0].dtype == np.uint8 and np.array_equal(stills[0], stills[1])
