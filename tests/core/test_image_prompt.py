"""Image prompts (IP-Adapter): frames equal diffusers' own `load_ip_adapter` path on the same tiny files and seed;
the adapter at scale 0 and rows without an image give the text-only video; the adapter survives checkpoint
switches, base restores and motion-module swaps; bad files and images are refused by name."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from animatediff_core.errors import CheckpointError, ConfigError
from animatediff_core.models.image_prompt import ImagePrompt, check_fits, has_adapter, match, read_adapter, read_images
from animatediff_core.models.motion_formats import load_motion_adapter
from animatediff_core.models.numerics import apply_motion_norm, resolve
from animatediff_core.models.personalize import Personalizer
from animatediff_core.models.pipeline import load_pipeline, read_unet_config
from animatediff_core.sampling.generate import Conditioning, GenerationSettings, Request, generate, validate_request
from animatediff_core.settings.generation import CheckpointSpec

S = dict(num_frames=4, height=32, width=32, steps=2, guidance_scale=5.0)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two small RGB images of other sizes than the encoder's (the processor resizes and crops them)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i, shape in enumerate([(40, 48, 3), (36, 30, 3)]):
        paths.append(str(folder / f"ref{i}.png"))
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def ip(tiny_models):
    return ImagePrompt(str(tiny_models / "ip_adapter" / "ip-adapter_sd15.safetensors"), str(tiny_models / "ip_adapter" / "image_encoder"))


def _pipe(tiny_models, motion="motion_adapter", ip=None, norm="diffusers"):
    pipe = load_pipeline(str(tiny_models / "base"), str(tiny_models / motion), motion_norm=norm)
    if ip is not None:
        ip.attach(pipe)
    return pipe


def _row(pipe, ip, image: str, scale: float = 1.0, seed: int = 3) -> np.ndarray:
    s = GenerationSettings(**S, ip_adapter_image=image, ip_adapter_scale=scale)
    r = Request("a cat", "blurry", seed, s, Conditioning(image=ip.embeds(pipe, image)) if image else None)
    validate_request(r, 32)
    return generate(pipe, [r])[0]


@pytest.mark.parametrize("weight", ["ip-adapter_sd15.safetensors", "ip-adapter-plus_sd15.safetensors"])
def test_frames_equal_diffusers_load_ip_adapter(tiny_models, images, weight):
    """Outside reference: diffusers' AnimateDiffPipeline with its own load_ip_adapter (folder + weight_name +
    image_encoder_folder) and ip_adapter_image, same motion module, scheduler, seed and scale. The plus
    variant takes two images as one prompt (diffusers: a list of images for the one adapter)."""
    from diffusers import AnimateDiffPipeline, MotionAdapter

    folder = tiny_models / "ip_adapter"
    ours_ip = ImagePrompt(str(folder / weight), str(folder / "image_encoder"))
    pipe = _pipe(tiny_models, ip=ours_ip)
    cell = images[0] if "plus" not in weight else json.dumps(images)
    ours = _row(pipe, ours_ip, cell, scale=0.7)
    ref = AnimateDiffPipeline.from_pretrained(str(tiny_models / "base"), motion_adapter=MotionAdapter.from_pretrained(
        str(tiny_models / "motion_adapter")), scheduler=pipe.scheduler, local_files_only=True)
    ref.set_progress_bar_config(disable=True)
    ref.load_ip_adapter(str(folder), subfolder="", weight_name=weight, image_encoder_folder="image_encoder")
    ref.set_ip_adapter_scale(0.7)
    pil = [Image.open(p) for p in images]
    out = ref(prompt="a cat", negative_prompt="blurry", ip_adapter_image=pil[0] if "plus" not in weight else [pil],
              num_frames=4, height=32, width=32, num_inference_steps=2, guidance_scale=5.0,
              generator=torch.Generator("cpu").manual_seed(3), output_type="np").frames[0]
    theirs = np.clip(np.asarray(out) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    assert ours.shape == theirs.shape == (4, 32, 32, 3)
    assert np.abs(ours.astype(int) - theirs).max() <= 1  # fp32, same ops: equal in practice
    assert np.abs(ours.astype(int) - _row(pipe, ours_ip, "")).mean() > 1.0  # the image prompt changes the video


def test_scale_zero_and_rows_without_an_image_are_the_text_only_video(tiny_models, ip, images):
    plain = _row(_pipe(tiny_models), ip, "")
    pipe = _pipe(tiny_models, ip=ip)
    assert has_adapter(pipe)
    assert np.array_equal(_row(pipe, ip, images[0], scale=0.0), plain)
    assert np.array_equal(_row(pipe, ip, ""), plain)
    assert has_adapter(pipe)  # text_only put the adapter back


def test_adapter_survives_dreambooth_switch_restore_motion_lora_and_motion_module_swap(tiny_models, ip, images):
    """Frames after each switch equal a fresh pipeline with that checkpoint (or module) and the adapter."""
    dreamy = CheckpointSpec("dreamy", str(tiny_models / "checkpoints" / "dreamy.safetensors"))
    pipe = _pipe(tiny_models, "motion_module.safetensors", ip, norm=None)
    personalizer = Personalizer(pipe)
    on_base = _row(pipe, ip, images[0])
    key = next(k for k in pipe.unet.state_dict() if ".to_k_ip." in k)
    kept = pipe.unet.state_dict()[key].clone()
    personalizer.apply(dreamy)
    on_dreamy = _row(pipe, ip, images[0])
    fresh = _pipe(tiny_models, "motion_module.safetensors", norm=None)
    Personalizer(fresh).apply(dreamy)
    ip.attach(fresh)
    assert np.array_equal(on_dreamy, _row(fresh, ip, images[0])) and not np.array_equal(on_dreamy, on_base)
    personalizer.apply(CheckpointSpec("base"))  # back to the base: exactly, the adapter still in place
    assert torch.equal(pipe.unet.state_dict()[key], kept) and np.array_equal(_row(pipe, ip, images[0]), on_base)
    zoom = str(tiny_models / "motion_loras" / "zoom.safetensors")  # a motion LoRA on and off again
    personalizer.apply_motion_lora(zoom, 0.8)
    with_lora = _row(pipe, ip, images[0])
    fresh = _pipe(tiny_models, "motion_module.safetensors", norm=None)
    Personalizer(fresh).apply_motion_lora(zoom, 0.8)
    ip.attach(fresh)
    assert np.array_equal(with_lora, _row(fresh, ip, images[0])) and not np.array_equal(with_lora, on_base)
    personalizer.apply_motion_lora(None)
    assert np.array_equal(_row(pipe, ip, images[0]), on_base)
    # A motion module of the same shape swapped in place, as the actor does (stage.AnimateStage._motion), equals the
    # same swap on a pipeline that gets the adapter after it. (Not a fresh load of that module: an in-place swap
    # differs from one by a few levels on these tiny models with or without an adapter, with equal state dicts.)
    def swap(p):
        v2 = load_motion_adapter(str(tiny_models / "official" / "motion_module_v2.ckpt"))
        p.unet.load_motion_modules(v2)
        numerics = resolve(None, v2.config, "sd1")
        apply_motion_norm(p.unet, numerics.mode, numerics.version)

    swap(pipe)
    later = _pipe(tiny_models, "motion_module.safetensors", norm=None)
    swap(later)
    ip.attach(later)
    assert np.array_equal(_row(pipe, ip, images[0]), _row(later, ip, images[0]))


def test_bin_file_is_read_safely_and_equals_the_safetensors(tiny_models):
    folder = tiny_models / "ip_adapter"
    a, b = read_adapter(str(folder / "ip-adapter_sd15.bin")), read_adapter(str(folder / "ip-adapter_sd15.safetensors"))
    assert a.variant == b.variant == "base" and read_adapter(str(folder / "ip-adapter-plus_sd15.safetensors")).variant == "plus"
    for part in ("image_proj", "layers"):
        x, y = getattr(a, part), getattr(b, part)
        assert set(x) == set(y) and all(torch.equal(x[k], y[k]) for k in x)


def test_unfit_adapters_encoders_and_images_are_refused_by_name(tiny_models, images, tmp_path):
    sd15 = str(tiny_models / "ip_adapter" / "ip-adapter_sd15.safetensors")
    xl = str(tiny_models / "sdxl" / "ip_adapter" / "ip-adapter_sdxl.safetensors")
    config = read_unet_config(str(tiny_models / "base"))
    assert match([sd15], [], {"sd1": config})["sd1"] == (sd15, str(tiny_models / "ip_adapter" / "image_encoder"))
    with pytest.raises(CheckpointError, match="does not fit this SD-1.x base"):
        match([xl], [], {"sd1": config})
    with pytest.raises(CheckpointError, match="no image encoder for it"):  # the SDXL encoder's widths differ
        match([sd15], [str(tiny_models / "sdxl" / "ip_adapter" / "image_encoder")], {"sd1": config})
    with pytest.raises(CheckpointError, match="not an IP-Adapter"):
        match([str(tiny_models / "checkpoints" / "toon_lora.safetensors")], [], {"sd1": config})
    with pytest.raises(CheckpointError, match="not found"):
        match([str(tmp_path / "nope.safetensors")], [], {"sd1": config})
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ConfigError, match="not a readable image"):
        read_images(str(bad))
    with pytest.raises(ConfigError, match="not found"):
        read_images(json.dumps([images[0], str(tmp_path / "gone.png")]))
    assert [im.shape for im in read_images(json.dumps(images))] == [(40, 48, 3), (36, 30, 3)]
    with pytest.raises(CheckpointError, match="does not fit"):
        check_fits(ImagePrompt(xl, str(tiny_models / "sdxl" / "ip_adapter" / "image_encoder")).shapes,
                   _pipe(tiny_models).unet, xl)


@pytest.mark.parametrize("extra, named", [
    (dict(prompt_schedule='{"0": "a", "2": "b"}'), "prompt_schedule"), (dict(num_frames=40), "context windows"),
    (dict(context_loop=True), "context windows"), (dict(free_init_iterations=2), "FreeInit"),
    (dict(init_video="v.mp4"), "video-to-video"), (dict(keyframes="k.png", keyframe_model="m"), "SparseCtrl"),
    (dict(control_video="c.mp4", control_model="m"), "ControlNet")])
def test_unsupported_combinations_are_refused_by_name(extra, named):
    s = GenerationSettings(**{**S, **extra}, ip_adapter_image="a.png")
    with pytest.raises(ConfigError, match=f"ip_adapter_image .IP-Adapter. is not supported with .*{named}"):
        validate_request(Request("a cat", settings=s), 32)
    with pytest.raises(ConfigError, match="SDXL"):
        validate_request(Request("a cat", settings=GenerationSettings(**S, ip_adapter_image="a.png")), 32, family="sdxl")


def test_image_alignment_is_the_mean_cosine_of_references_and_frames(tiny_models):
    from animatediff_core.metrics import scores as metrics

    clip = metrics.load_clip(str(tiny_models / "clip"))
    rng = np.random.default_rng(3)
    video = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    refs = [rng.integers(0, 256, (40, 24, 3), dtype=np.uint8), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)]
    with_refs, without = metrics.score_videos(clip, [video, video], ["a cat", "a cat"], references=[refs, None])
    frames = metrics.embed_pixels(clip, metrics.pixel_values(clip, video))
    ref_emb = torch.cat([metrics.embed_pixels(clip, metrics.pixel_values(clip, r[None])) for r in refs])
    want = float(np.mean([[float(f @ r) for f in frames] for r in ref_emb]))
    assert with_refs["image_alignment"] == pytest.approx(want, abs=1e-5) and -1 <= want <= 1
    assert np.isnan(without["image_alignment"])  # no image prompt: no value, not 0
    assert with_refs["text_alignment"] == pytest.approx(without["text_alignment"])
