import pytest
import torch
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

from animatediff_core.errors import CheckpointError
from animatediff_core.io.checkpoints import load_state_dict, save_state_dict
from animatediff_core.models.ldm_keys import align_text_keys, unet_to_ldm
from animatediff_core.models.personalize import CheckpointSpec, Personalizer, detect_kind
from animatediff_core.models.pipeline import load_pipeline
from animatediff_core.tiny import tiny_unet


@pytest.fixture(scope="module")
def pipe(tiny_models):
    return load_pipeline(str(tiny_models / "base"), str(tiny_models / "motion_adapter"))


@pytest.fixture()
def p(pipe):
    """One Personalizer owns the pipeline, as in an actor; every test starts and ends on the base."""
    if not hasattr(pipe, "_test_personalizer"):
        pipe._test_personalizer = Personalizer(pipe)
    pipe._test_personalizer.reset()
    yield pipe._test_personalizer
    pipe._test_personalizer.reset()


def _spec(tiny_models, name, **kw):
    return CheckpointSpec(name, str(tiny_models / "checkpoints" / f"{name}.safetensors"), **kw)


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_ldm_export_roundtrips_through_diffusers_converter():
    unet = tiny_unet()
    ldm = unet_to_ldm(unet.state_dict(), dict(unet.config))
    assert all(k.startswith("model.diffusion_model.") for k in ldm)
    back = convert_ldm_unet_checkpoint(ldm, dict(unet.config))
    sd = unet.state_dict()
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)


def test_dreambooth_file_has_sd1_text_keys(tiny_models):
    state = load_state_dict(str(tiny_models / "checkpoints" / "dreamy.safetensors"))
    assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in state


def test_kinds_detected(tiny_models):
    kinds = {n: detect_kind(load_state_dict(str(tiny_models / "checkpoints" / f"{n}.safetensors")))
             for n in ("dreamy", "toon_lora", "film_peft_lora")}
    assert kinds == {"dreamy": "dreambooth", "toon_lora": "lora", "film_peft_lora": "lora"}


def test_dreambooth_replaces_base_and_reset_restores(pipe, p, tiny_models):
    base_unet, base_text = _snapshot(pipe.unet), _snapshot(pipe.text_encoder)
    motion = {k: v for k, v in base_unet.items() if "motion_modules" in k}
    vae, tok, mm_ptr = pipe.vae, pipe.tokenizer, pipe.unet.down_blocks[0].motion_modules[0].proj_in.weight.data_ptr()
    p.apply(_spec(tiny_models, "dreamy"))
    state = load_state_dict(str(tiny_models / "checkpoints" / "dreamy.safetensors"))
    expected = convert_ldm_unet_checkpoint(state, dict(pipe.unet.config))
    now = pipe.unet.state_dict()
    assert all(torch.equal(now[k], v) for k, v in expected.items())
    assert all(torch.equal(now[k], v) for k, v in motion.items())  # motion modules untouched
    assert pipe.vae is vae and pipe.tokenizer is tok
    assert pipe.unet.down_blocks[0].motion_modules[0].proj_in.weight.data_ptr() == mm_ptr
    prefix = "cond_stage_model.transformer.text_model."
    from_file = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    text_now = pipe.text_encoder.state_dict()
    from_file = align_text_keys(from_file, set(text_now))
    assert from_file.keys() == text_now.keys() and all(torch.equal(text_now[k], v) for k, v in from_file.items())
    assert not torch.equal(text_now["final_layer_norm.weight"], base_text["final_layer_norm.weight"])
    p.reset()
    assert all(torch.equal(v, base_unet[k]) for k, v in pipe.unet.state_dict().items())
    assert all(torch.equal(v, base_text[k]) for k, v in pipe.text_encoder.state_dict().items())


def test_kohya_lora_alpha_over_rank_and_scale(pipe, p, tiny_models):
    lora = load_state_dict(str(tiny_models / "checkpoints" / "toon_lora.safetensors"))
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    down, up, alpha = lora[f"{key}.lora_down.weight"], lora[f"{key}.lora_up.weight"], lora[f"{key}.alpha"]
    layer = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    x = torch.randn(3, layer.in_features)
    with torch.no_grad():
        base_out = layer(x)
    scale = 0.7
    p.apply(_spec(tiny_models, "toon_lora", scale=scale))
    layer = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    with torch.no_grad():
        got = layer(x)
    want = base_out + scale * (alpha / down.shape[0]) * (x @ down.T @ up.T)
    assert torch.allclose(got, want, atol=1e-5)
    assert alpha / down.shape[0] != 1.0  # the file's alpha is not the rank, so the test can tell


def test_switching_loras_does_not_touch_base_weights(pipe, p, tiny_models):
    p.reset()
    base = _snapshot(pipe.unet)
    for name in ("toon_lora", "film_peft_lora", "toon_lora"):
        p.apply(_spec(tiny_models, name))
        assert p.current.name == name
        for k, v in pipe.unet.state_dict().items():
            plain = k.replace(".base_layer", "")
            if "lora_" not in k and plain in base:
                assert torch.equal(v, base[plain]), k
    p.reset()
    assert all(torch.equal(v, base[k]) for k, v in pipe.unet.state_dict().items())


def test_bad_checkpoint_leaves_pipeline_on_base(pipe, p, tiny_models, tmp_path):
    p.apply(_spec(tiny_models, "toon_lora"))
    save_state_dict({"some.weight": torch.zeros(2)}, str(tmp_path / "weird.safetensors"))
    with pytest.raises(CheckpointError, match="weird.safetensors.*not a recognized"):
        p.apply(CheckpointSpec("weird", str(tmp_path / "weird.safetensors")))
    with pytest.raises(CheckpointError, match="declared kind"):
        p.apply(_spec(tiny_models, "dreamy", kind="lora"))
    p.apply(_spec(tiny_models, "film_peft_lora"))
    assert p.current.name == "film_peft_lora"
    p.reset()


def test_dreambooth_to_dreambooth_and_to_lora(pipe, p, tiny_models, tmp_path):
    base_unet, base_text = _snapshot(pipe.unet), _snapshot(pipe.text_encoder)
    full = load_state_dict(str(tiny_models / "checkpoints" / "dreamy.safetensors"))
    unet_only = {k: v * 1.01 for k, v in full.items() if k.startswith("model.diffusion_model.")}
    save_state_dict(unet_only, str(tmp_path / "unet_only.safetensors"))
    p.apply(_spec(tiny_models, "dreamy"))
    p.apply(CheckpointSpec("unet_only", str(tmp_path / "unet_only.safetensors")))
    expected = convert_ldm_unet_checkpoint(unet_only, dict(pipe.unet.config))
    now = pipe.unet.state_dict()
    assert all(torch.equal(now[k], v) for k, v in expected.items())
    # the second file has no text encoder: the base's is back, not the first file's
    assert all(torch.equal(v, base_text[k]) for k, v in pipe.text_encoder.state_dict().items())
    p.apply(_spec(tiny_models, "toon_lora"))  # a LoRA goes on the base, not on the last DreamBooth
    for k, v in pipe.unet.state_dict().items():
        plain = k.replace(".base_layer", "")
        if "lora_" not in k and plain in base_unet:
            assert torch.equal(v, base_unet[plain]), k
