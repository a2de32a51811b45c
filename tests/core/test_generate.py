import numpy as np
import pytest

from animatediff_core.errors import ConfigError
from animatediff_core.models.pipeline import load_pipeline, max_frames
from animatediff_core.sampling.generate import GenerationSettings, Request, generate, validate_request

TINY = GenerationSettings(num_frames=16, height=64, width=64, steps=2, guidance_scale=7.5)


@pytest.fixture(scope="module")
def pipe(tiny_models):
    return load_pipeline(str(tiny_models / "base"), str(tiny_models / "motion_module.safetensors"))


def test_frames_shape_and_determinism(pipe):
    s = TINY
    reqs = [Request("a photo of a cat", "blurry", seed=7, settings=s)]
    a = generate(pipe, reqs)[0]
    b = generate(pipe, reqs)[0]
    assert a.shape == (16, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    c = generate(pipe, [Request("a photo of a cat", "blurry", seed=8, settings=s)])[0]
    assert not np.array_equal(a, c)
    # frames differ from each other: the motion module animates
    assert np.abs(a[0].astype(int) - a[-1].astype(int)).mean() > 1.0


def test_pipeline_uses_animatediff_sampler(pipe):
    c = pipe.scheduler.config
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert c.beta_schedule == "linear" and c.steps_offset == 1 and not c.clip_sample and c.timestep_spacing == "leading"


def test_identical_prompts_encoded_once(pipe, monkeypatch):
    seen = []
    original = pipe.encode_prompt

    def spy(prompt, *a, **k):
        if prompt is not None:  # the pipeline's own call gets embeddings, not text
            seen.append(list(prompt))
        return original(prompt, *a, **k)

    monkeypatch.setattr(pipe, "encode_prompt", spy)
    s = GenerationSettings(num_frames=4, height=32, width=32, steps=1)
    generate(pipe, [Request("a cat", seed=i, settings=s) for i in range(3)] + [Request("a dog", seed=9, settings=s)])
    assert seen[0] == ["a cat", "a dog"]  # positives, once each
    assert seen[1] == [""]  # shared negative


def test_validation_messages(pipe):
    limit = max_frames(pipe)
    ok = TINY
    own_rules = [  # a value's own type, choice and range: refused when the settings are built (configs.check_fields)
        (dict(num_frames=1025), "num_frames must be an integer from 1 to 1024"),
        (dict(context_weighting="cosine"), "context_weighting must be one of"),
        (dict(free_init_iterations=9), "free_init_iterations must be an integer from 0 to 8"),
        (dict(steps=0), "steps must be an integer from 1 to 1000"),
        (dict(height=-64), "height must be an integer from 1 to 2048"),
        (dict(width=100000), "from 1 to 2048"),
        (dict(guidance_scale=1e9), "guidance_scale"),
        (dict(steps=2.5), "steps must be an integer, got 2.5"),
    ]
    for over, msg in own_rules:
        with pytest.raises(ConfigError, match=msg):
            ok.updated(**over)
    cases = [  # rules between settings, and those that depend on the motion module and VAE
        (Request("", settings=ok), "prompt is empty"),
        (Request("x", settings=ok.updated(context_length=limit + 1)), f"use at most {limit}"),
        (Request("x", settings=ok.updated(num_frames=64, context_length=8, context_stride=9)), "larger than the context window"),
        (Request("x", settings=ok.updated(prompt_schedule="{0: x}")), "not valid JSON"),
        (Request("x", settings=ok.updated(width=61)), "multiple of"),
        (Request("x", seed=-1, settings=ok), "seed"),
    ]
    for req, msg in cases:
        with pytest.raises(ConfigError, match=msg):
            validate_request(req, limit, pipe.vae_scale_factor)
    validate_request(Request("x", settings=ok), limit, pipe.vae_scale_factor)
    validate_request(Request("x", settings=ok.updated(num_frames=4 * limit)), limit, pipe.vae_scale_factor)


def test_incomplete_base_folder_names_what_is_missing(tiny_models, tmp_path):
    import shutil

    from animatediff_core.errors import CheckpointError

    partial = tmp_path / "base"
    shutil.copytree(tiny_models / "base", partial, ignore=shutil.ignore_patterns("vae"))
    with pytest.raises(CheckpointError, match="missing vae/"):
        load_pipeline(str(partial), str(tiny_models / "motion_adapter"))
    with pytest.raises(CheckpointError, match="base model folder not found"):
        load_pipeline(str(tmp_path / "nowhere"), str(tiny_models / "motion_adapter"))


@pytest.mark.parametrize("sampler", ["euler_trailing", "lcm"])
def test_few_step_samplers_run_and_differ_from_ddim(pipe, sampler):
    s = GenerationSettings(num_frames=8, height=32, width=32, steps=4, guidance_scale=1.0)
    ddim = generate(pipe, [Request("a cat", seed=3, settings=s)])[0]
    other = generate(pipe, [Request("a cat", seed=3, settings=s.updated(sampler=sampler))])[0]
    assert other.shape == (8, 32, 32, 3) and not np.array_equal(ddim, other)
    assert type(pipe.scheduler).__name__ == {"euler_trailing": "EulerDiscreteScheduler", "lcm": "LCMScheduler"}[sampler]
    again = generate(pipe, [Request("a cat", seed=3, settings=s)])[0]
    assert np.array_equal(ddim, again)  # back on DDIM exactly
    with pytest.raises(ConfigError, match="sampler must be one of ddim, ddim_linspace, euler_trailing, lcm, sdxl_beta"):
        s.updated(sampler="dpm")


# The ComfyUI/A1111 samplers as diffusers' schedulers overview maps them, written out here independently of
# animatediff_core/settings/schedule.py: the same betas (AnimateDiff's linear 0.00085-0.012), the documented options.
COMFY = {
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", dict(algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True)),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
}


@pytest.mark.parametrize("sampler", sorted(COMFY))
def test_comfyui_samplers_give_diffusers_own_frames(pipe, sampler):
    """Our rows with `sampler` give exactly the frames of diffusers' own AnimateDiffPipeline with that
    scheduler, the same modules, prompt and seed; an ancestral sampler's per-step noise comes from the
    row's generator, so a row gives the same frames alone and in a batch (up to batched rounding)."""
    import diffusers
    import torch

    cls, options = COMFY[sampler]
    s = GenerationSettings(num_frames=8, height=32, width=32, steps=4, guidance_scale=7.5, sampler=sampler)
    ours = generate(pipe, [Request("a cat", seed=3, settings=s)])[0]
    assert type(pipe.scheduler).__name__ == cls
    scheduler = getattr(diffusers, cls)(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", **options)
    theirs = diffusers.AnimateDiffPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                           unet=pipe.unet, motion_adapter=pipe.motion_adapter, scheduler=scheduler)
    theirs.set_progress_bar_config(disable=True)
    frames = theirs("a cat", num_frames=8, height=32, width=32, num_inference_steps=4, guidance_scale=7.5,
                    generator=torch.Generator().manual_seed(3), output_type="np").frames[0]
    assert np.array_equal(ours, np.clip(frames * 255.0 + 0.5, 0, 255).astype(np.uint8))
    batched = generate(pipe, [Request("a dog", seed=9, settings=s), Request("a cat", seed=3, settings=s)])
    assert np.abs(batched[1].astype(int) - ours).max() <= 1  # batched convolutions round differently in a few pixels
    assert np.abs(batched[0].astype(int) - ours).mean() > 5  # another row's noise would move every pixel
    ddim = generate(pipe, [Request("a cat", seed=3, settings=s.updated(sampler="ddim"))])[0]
    assert not np.array_equal(ddim, ours)
