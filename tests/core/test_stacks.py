"""Checkpoint stacks as the official AnimateDiff and diffusers build them: DreamBooth (with its own VAE),
LoRAs at their weights, the v3 domain adapter; switched in place and restored exactly."""

import copy

import numpy as np
import pytest
import torch

from animatediff_core.errors import CheckpointError
from animatediff_core.io.checkpoints import load_state_dict
from animatediff_core.models.control_models import load_sparsectrl
from animatediff_core.models.inflate import is_motion_param
from animatediff_core.models.personalize import Personalizer
from animatediff_core.models.pipeline import load_pipeline, read_unet_config
from animatediff_core.sampling.generate import GenerationSettings, Request, generate
from animatediff_core.settings.generation import CheckpointSpec, LoraSpec

S = GenerationSettings(num_frames=4, height=32, width=32, steps=2, guidance_scale=7.5)


@pytest.fixture(scope="module")
def official(tiny_models):
    return tiny_models / "official"


@pytest.fixture(scope="module")
def pipe(tiny_models, one_thread):
    return load_pipeline(str(tiny_models / "base"), str(tiny_models / "official" / "motion_module_v3.ckpt"))


def _video(pipe):
    return generate(pipe, [Request("a cat", "blurry", seed=3, settings=S)])[0]


def _effective(pipe) -> dict[str, dict[str, torch.Tensor]]:
    """The weights a pipeline computes with: LoRAs merged into a copy (diffusers' fuse_lora), motion modules left out."""
    fused = copy.deepcopy(pipe)
    if fused.get_list_adapters():
        fused.fuse_lora(lora_scale=1.0)
        fused.unload_lora_weights()
    return {part: {k: v for k, v in getattr(fused, part).state_dict().items() if not is_motion_param(k)}
            for part in ("unet", "text_encoder", "vae")}


def test_dreambooth_and_lora_stack_equals_diffusers_own_loaders(pipe, tiny_models, official):
    """Outside reference: diffusers' `from_single_file` (which takes the file's VAE) + `load_lora_weights`."""
    from diffusers import StableDiffusionPipeline

    p = Personalizer(pipe)
    p.apply(CheckpointSpec("stack", str(official / "dreambooth.safetensors"), loras=(LoraSpec(str(official / "lora.safetensors"), 0.6),)))
    ours = _effective(pipe)
    ref = StableDiffusionPipeline.from_single_file(str(official / "dreambooth.safetensors"), config=str(tiny_models / "base"),
                                                   local_files_only=True, safety_checker=None, requires_safety_checker=False)
    ref.load_lora_weights(str(official / "lora.safetensors"), adapter_name="lora")
    ref.set_adapters(["lora"], adapter_weights=[0.6])
    ref.fuse_lora(lora_scale=1.0)
    ref.unload_lora_weights()
    for part in ("unet", "text_encoder", "vae"):
        theirs = getattr(ref, part).state_dict()
        shared = [k for k in theirs if k in ours[part]]
        assert len(shared) == len(theirs) or part == "text_encoder", part
        for k in shared:
            assert torch.allclose(ours[part][k], theirs[k], atol=1e-6), (part, k)
    assert p.vae == str(official / "dreambooth.safetensors")  # the file's own VAE, as the official loader takes it
    p.reset()


def test_lora_alpha_is_the_official_convert_lora_merge(pipe, tiny_models, official):
    """The official `convert_lora` adds lora_alpha * up @ down and ignores the file's alpha (here 3 at rank 4)."""
    lora = load_state_dict(str(official / "lora.safetensors"))
    p = Personalizer(pipe)
    before = _effective(pipe)
    p.apply(CheckpointSpec("official", None, loras=(LoraSpec(str(official / "lora.safetensors"), 0.6, "ignore"),)))
    after = _effective(pipe)
    checked = 0
    for key in (k for k in lora if k.endswith(".lora_down.weight") and k.startswith("lora_unet_")):
        up = lora[key.replace("lora_down", "lora_up")]
        module = key[len("lora_unet_"):].split(".")[0]
        target = next(k for k in before["unet"] if k.endswith(".weight") and k[:-len(".weight")].replace(".", "_") == module)
        expected = before["unet"][target] + 0.6 * up.float() @ lora[key].float()  # the official formula
        assert torch.allclose(after["unet"][target], expected, atol=1e-5), target
        checked += 1
    assert checked >= 8 and float(lora[next(k for k in lora if k.endswith(".alpha"))]) != 4  # alpha != rank: the modes differ
    p.apply(CheckpointSpec("kohya", None, loras=(LoraSpec(str(official / "lora.safetensors"), 0.6, "file"),)))
    assert not torch.allclose(_effective(pipe)["unet"][target], after["unet"][target])  # kohya's 0.6 is 0.45 official
    p.reset()


def test_own_vae_base_vae_and_exact_restore(pipe, official, tiny_models):
    p = Personalizer(pipe)
    base = _effective(pipe)
    plain = _video(pipe)
    own = CheckpointSpec("own", str(official / "dreambooth.safetensors"))
    p.apply(own)
    with_vae = _video(pipe)
    assert p.vae.endswith("dreambooth.safetensors")
    p.apply(CheckpointSpec("base-vae", str(official / "dreambooth.safetensors"), vae="base"))
    assert p.vae == "base" and not np.array_equal(_video(pipe), with_vae)  # only the VAE differs: other colours
    p.apply(CheckpointSpec("no-vae-file", str(tiny_models / "checkpoints" / "dreamy.safetensors")))
    assert p.vae == "base"  # a DreamBooth file without a VAE keeps the base's
    p.apply(CheckpointSpec("vae-from-file", None, vae=str(official / "dreambooth.safetensors")))
    assert p.vae.endswith("dreambooth.safetensors")
    p.reset()
    restored = _effective(pipe)
    for part in base:
        assert all(torch.equal(base[part][k], restored[part][k]) for k in base[part]), part
    assert np.array_equal(_video(pipe), plain)


def test_stacks_switch_incrementally_and_the_adapter_loads_as_released(pipe, official, monkeypatch):
    import animatediff_core.models.personalize as personalize

    reads = []
    real = personalize.load_state_dict
    monkeypatch.setattr(personalize, "load_state_dict", lambda uri, **kw: reads.append(uri.rsplit("/", 1)[-1]) or real(uri, **kw))
    p = Personalizer(pipe)
    db, lora, adapter = (str(official / n) for n in ("dreambooth.safetensors", "lora.safetensors", "v3_adapter.ckpt"))
    p.apply(CheckpointSpec("a", db, loras=(LoraSpec(lora, 0.6, "ignore"),)))
    a = _video(pipe)
    p.apply(CheckpointSpec("b", db, adapter=adapter))
    b = _video(pipe)
    p.apply(CheckpointSpec("c", db, adapter=adapter, adapter_scale=0.0))
    assert reads.count("dreambooth.safetensors") == 1 and reads.count("v3_adapter.ckpt") == 1  # switches load only what changes
    zero = _video(pipe)
    p.apply(CheckpointSpec("d", db))
    assert np.array_equal(zero, _video(pipe)) and not np.array_equal(a, b) and not np.array_equal(b, zero)
    p.apply(CheckpointSpec("a", db, loras=(LoraSpec(lora, 0.6, "ignore"),)))
    assert np.array_equal(_video(pipe), a)
    p.reset()


def test_a_lora_that_touches_nothing_is_a_load_error_naming_the_file(pipe, tmp_path):
    from animatediff_core.io.checkpoints import save_state_dict

    junk = tmp_path / "junk_lora.safetensors"
    save_state_dict({"lora_unet_nowhere_to_q.lora_down.weight": torch.zeros(2, 4),
                     "lora_unet_nowhere_to_q.lora_up.weight": torch.zeros(4, 2)}, str(junk))
    p = Personalizer(pipe)
    with pytest.raises(CheckpointError, match="junk_lora.safetensors"):
        p.apply(CheckpointSpec("junk", None, loras=(LoraSpec(str(junk)),)))
    assert p.current is None and not pipe.get_list_adapters().get("unet")


def test_official_sparsectrl_files_load_as_released(tiny_models, pipe):
    from diffusers import SparseControlNetModel

    for name in ("sparsectrl_rgb", "sparsectrl_scribble"):
        released = load_sparsectrl(str(tiny_models / "official" / f"{name}.ckpt"), read_unet_config(str(tiny_models / "base")),
                                   dict(pipe.unet.config))
        folder = SparseControlNetModel.from_pretrained(tiny_models / "control" / name)
        assert released.config.use_simplified_condition_embedding == folder.config.use_simplified_condition_embedding
        theirs = folder.state_dict()
        assert all(torch.equal(v, theirs[k]) for k, v in released.state_dict().items() if not k.endswith("pos_embed.pe"))
