"""The SDXL family: the AnimateDiff-SDXL module on an SDXL base, SDXL DreamBooth files and LoRAs,
Hotshot-XL's temporal layers, checked against diffusers' own SDXL pipeline and loaders."""

import json

import numpy as np
import pytest
import torch

from animatediff_core.errors import ConfigError
from animatediff_core.models.motion_formats import load_motion_adapter
from animatediff_core.models.personalize import Personalizer
from animatediff_core.models.pipeline import family, load_pipeline
from animatediff_core.sampling.generate import GenerationSettings, Request, generate, validate_request
from animatediff_core.settings.generation import CheckpointSpec, LoraSpec

S = GenerationSettings(num_frames=4, height=32, width=32, steps=2, guidance_scale=5.0, sampler="ddim_linspace")


@pytest.fixture(scope="module")
def xl(tiny_models):
    return tiny_models / "sdxl"


@pytest.fixture(scope="module")
def pipe(xl, one_thread):
    return load_pipeline(str(xl / "base"), str(xl / "motion_module.ckpt"))


def _adapter_config_folder(adapter, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "MotionAdapter",
                                                      **{k: v for k, v in adapter.config.items() if not k.startswith("_")}}))
    return str(tmp_path)


def test_the_sdxl_module_converts_as_diffusers_converts_it(xl, tmp_path):
    from diffusers import MotionAdapter

    ours = load_motion_adapter(str(xl / "motion_module.ckpt"))
    theirs = MotionAdapter.from_single_file(str(xl / "motion_module.ckpt"), config=_adapter_config_folder(ours, tmp_path),
                                            local_files_only=True).state_dict()
    assert set(ours.state_dict()) == set(theirs) and all(torch.equal(v, theirs[k]) for k, v in ours.state_dict().items())


def test_sdxl_frames_equal_diffusers_animatediff_sdxl_pipeline(pipe, xl, tmp_path):
    """Outside reference: diffusers' AnimateDiffSDXLPipeline on the same files, scheduler and seed. The official
    AnimateDiff-SDXL module normalizes the clip as a whole (sdxl-beta branch), which is diffusers' own function."""
    from diffusers import AnimateDiffSDXLPipeline, MotionAdapter

    assert type(pipe).__name__ == "AnimateDiffSDXLPipeline" and family(pipe) == "sdxl"
    assert pipe.unet._numerics.version == "sdxl" and not pipe.unet._numerics.temporal_per_frame
    ours = generate(pipe, [Request("a cat in the snow", "blurry", seed=3, settings=S)])[0]
    adapter = MotionAdapter.from_single_file(str(xl / "motion_module.ckpt"),
                                             config=_adapter_config_folder(load_motion_adapter(str(xl / "motion_module.ckpt")), tmp_path),
                                             local_files_only=True)
    ref = AnimateDiffSDXLPipeline.from_pretrained(str(xl / "base"), motion_adapter=adapter, scheduler=pipe.scheduler,
                                                  local_files_only=True)
    ref.set_progress_bar_config(disable=True)
    # diffusers builds its video UNet with UNetMotionModel.from_unet2d, which leaves SDXL's size and pooled-text
    # embedding (add_embedding) at a random init (huggingface/diffusers#6721); we load the base's, as the
    # official sdxl-beta UNet3D does: give the reference the base's too, else it is another model.
    from diffusers import UNet2DConditionModel

    base_unet = UNet2DConditionModel.from_pretrained(str(xl / "base"), subfolder="unet", local_files_only=True)
    assert not torch.equal(ref.unet.add_embedding.linear_1.weight, base_unet.add_embedding.linear_1.weight)
    ref.unet.add_embedding.load_state_dict(base_unet.add_embedding.state_dict())
    assert torch.equal(pipe.unet.add_embedding.linear_1.weight, base_unet.add_embedding.linear_1.weight)
    out = ref(prompt="a cat in the snow", negative_prompt="blurry", num_frames=4, height=32, width=32, num_inference_steps=2,
              guidance_scale=5.0, generator=torch.Generator("cpu").manual_seed(3), output_type="np").frames[0]
    theirs = np.clip(np.asarray(out) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    assert ours.shape == theirs.shape == (4, 32, 32, 3)
    assert np.array_equal(ours, theirs)


def test_sdxl_dreambooth_and_lora_equal_diffusers_loaders_and_restore_exactly(pipe, xl):
    from diffusers import StableDiffusionXLPipeline

    parts = ("unet", "text_encoder", "text_encoder_2", "vae")
    base = {p: {k: v.clone() for k, v in getattr(pipe, p).state_dict().items()} for p in parts}
    p = Personalizer(pipe)
    p.apply(CheckpointSpec("xl", str(xl / "checkpoints" / "dreambooth_xl.safetensors")))
    ref = StableDiffusionXLPipeline.from_single_file(str(xl / "checkpoints" / "dreambooth_xl.safetensors"),
                                                     config=str(xl / "base"), local_files_only=True)
    for part in parts:
        theirs, ours = getattr(ref, part).state_dict(), getattr(pipe, part).state_dict()
        assert all(torch.equal(ours[k], v) for k, v in theirs.items() if k in ours) and set(theirs) <= set(ours), part
    assert p.vae.endswith("dreambooth_xl.safetensors")
    p.apply(CheckpointSpec("xl+lora", str(xl / "checkpoints" / "dreambooth_xl.safetensors"),
                           loras=(LoraSpec(str(xl / "checkpoints" / "lora_xl.safetensors"), 0.8),)))
    assert set(pipe.get_list_adapters()) == {"unet", "text_encoder", "text_encoder_2"}  # both encoders carry the LoRA
    p.reset()
    for part in parts:
        now = getattr(pipe, part).state_dict()
        assert all(torch.equal(now[k], v) for k, v in base[part].items()), part


def test_sd_files_on_sdxl_and_sd_only_features_say_so(pipe, tiny_models):
    from animatediff_core.errors import CheckpointError

    with pytest.raises(CheckpointError, match="an SD-1.x DreamBooth checkpoint cannot load on an SDXL base"):
        Personalizer(pipe).apply(CheckpointSpec("sd", str(tiny_models / "checkpoints" / "dreamy.safetensors")))
    for over, name in ((dict(prompt_schedule='{"0": "a"}'), "prompt_schedule"), (dict(control_video="v.mp4", control_model="m"), "control_video"),
                       (dict(num_frames=64), "context windows")):
        with pytest.raises(ConfigError, match=f"{name}.*SDXL"):
            validate_request(Request("a cat", settings=S.updated(**over)), 32, 8, "sdxl")


def test_hotshot_xl_temporal_layers_load_as_a_motion_module(xl):
    """Hotshot-XL's temporal layers (its own key names, 24 positions) load as a motion module with its
    numerics (per-frame norms, hotshot_xl/models/transformer_temporal.py)."""
    hotshot = load_pipeline(str(xl / "base"), str(xl / "hsxl_temporal_layers.safetensors"))
    assert hotshot.unet.config["motion_max_seq_length"] == 24
    assert hotshot.unet._numerics.version == "hotshot" and hotshot.unet._numerics.temporal_per_frame
    video = generate(hotshot, [Request("a cat", seed=1, settings=S)])[0]
    assert video.shape == (4, 32, 32, 3) and video.std() > 0
