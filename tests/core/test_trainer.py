import subprocess
import sys

import pytest
import torch

from animatediff_core.errors import ConfigError
from animatediff_core.io.checkpoints import load_state_dict
from animatediff_core.models.inflate import is_motion_param
from animatediff_core.models.motion_formats import load_motion_adapter
from animatediff_core.models.motion_lora import add_motion_lora
from animatediff_core.models.personalize import CheckpointSpec, Personalizer
from animatediff_core.models.pipeline import load_base, load_pipeline
from animatediff_core.sampling.generate import GenerationSettings, Request, generate
from animatediff_core.training.trainer import (
    ADAPTER_DIR,
    LORA_FILE,
    ORIGINAL_FILE,
    Batch,
    MotionTrainer,
    TrainConfig,
    drop_captions,
    read_training_state,
    step_generator,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(**kw):
    return TrainConfig.tiny(**{"num_frames": 4, "size": 32, **kw})


def _trainer(tiny_models, cfg=None, adapter=None):
    torch.manual_seed(0)
    return MotionTrainer(load_base(str(tiny_models / "base")), cfg or _cfg(), adapter)


def _batch(i: int, n: int = 1, f: int = 4, size: int = 32) -> Batch:
    g = torch.Generator().manual_seed(100 + i)
    frames = torch.randint(0, 256, (n, f, size, size, 3), generator=g, dtype=torch.uint8)
    return Batch(captions=[f"a clip number {i}", "waves on a beach"][:n], frames=frames)


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _run(trainer, steps, start=0):
    return [trainer.train_step(_batch(s), step_generator(0, 0, s)).loss for s in range(start, start + steps)]


def test_trainer_does_not_import_ray():
    code = "import sys, animatediff_core.models.motion_lora, animatediff_core.training.trainer; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_steps_change_motion_weights_only(tiny_models):
    t = _trainer(tiny_models)
    before, vae, text = _snapshot(t.unet), _snapshot(t.vae), _snapshot(t.text_encoder)
    losses = _run(t, 2)
    assert t.step == 2 and all(l == l and l > 0 for l in losses)
    after = _snapshot(t.unet)
    base_keys = [k for k in before if not is_motion_param(k)]
    assert base_keys and all(torch.equal(before[k], after[k]) for k in base_keys)
    proj_out = [k for k in before if is_motion_param(k) and "proj_out.weight" in k]
    assert proj_out and all(torch.count_nonzero(before[k]) == 0 for k in proj_out)  # fresh: zero-initialized
    assert all(torch.count_nonzero(after[k]) > 0 for k in proj_out)
    assert all(torch.equal(v, t.vae.state_dict()[k]) for k, v in vae.items())
    assert all(torch.equal(v, t.text_encoder.state_dict()[k]) for k, v in text.items())
    assert all(is_motion_param(n) for n, p in t.unet.named_parameters() if p.requires_grad)


def test_caption_dropout_replaces_text_with_empty_prompt(tiny_models):
    t = _trainer(tiny_models, _cfg(caption_dropout=0.5))
    n = 16
    batch = Batch(latents=torch.randn(n, 4, 4, 4, 4), text_embeddings=torch.randn(n, 77, 32))
    _, text = t.condition(batch, torch.Generator().manual_seed(7))
    dropped = drop_captions(n, 0.5, torch.Generator().manual_seed(7))
    assert 0 < int(dropped.sum()) < n
    for i in range(n):
        expected = t.null_text()[0] if dropped[i] else batch.text_embeddings[i]
        assert torch.equal(text[i], expected)
    rate = drop_captions(20_000, 0.1, torch.Generator().manual_seed(1)).float().mean().item()
    assert abs(rate - 0.1) < 0.01
    assert not drop_captions(100, 0.0, torch.Generator().manual_seed(1)).any()


def test_checkpoint_roundtrip_continues_exactly(tiny_models, tmp_path):
    straight = _trainer(tiny_models)
    _run(straight, 3)
    first = _trainer(tiny_models)
    _run(first, 2)
    first.save_checkpoint(str(tmp_path / "ckpt"), extra={"skipped": {"corrupt": 2}})
    resumed = _trainer(tiny_models)
    extra = resumed.load_checkpoint(str(tmp_path / "ckpt"))
    assert resumed.step == 2 and extra == {"skipped": {"corrupt": 2}}
    _run(resumed, 1, start=2)
    assert resumed.step == 3
    a, b = straight.unet.state_dict(), resumed.unet.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)
    adam = resumed.optimizer.state_dict()["state"]
    assert adam and all(int(s["step"]) == 3 for s in adam.values())
    # both formats hold the same weights
    diffusers_fmt = load_motion_adapter(str(tmp_path / "ckpt" / ADAPTER_DIR)).state_dict()
    original_fmt = load_motion_adapter(str(tmp_path / "ckpt" / ORIGINAL_FILE)).state_dict()
    assert diffusers_fmt.keys() == original_fmt.keys()
    assert all(torch.equal(diffusers_fmt[k], original_fmt[k]) for k in diffusers_fmt)
    assert read_training_state(str(tmp_path / "ckpt"))["step"] == 2


@pytest.mark.slow
def test_precision_and_gradient_checkpointing(tiny_models):
    plain, ckpt = _trainer(tiny_models), _trainer(tiny_models, _cfg(gradient_checkpointing=True))
    assert _run(plain, 1) == pytest.approx(_run(ckpt, 1), abs=1e-6)
    p, c = plain.unet.state_dict(), ckpt.unet.state_dict()
    assert all(torch.allclose(p[k], c[k], atol=1e-6) for k in p)
    for mode in ("bf16", "fp16"):
        loss = _run(_trainer(tiny_models, _cfg(precision=mode)), 1)[0]
        assert loss == loss and 0 < loss < 10


@pytest.mark.slow
def test_motion_lora_trains_only_lora_and_loads_in_batch_job(tiny_models, tmp_path):
    mm = str(tiny_models / "motion_adapter")
    t = _trainer(tiny_models, _cfg(motion_lora_rank=4, lr=5e-2), load_motion_adapter(mm))
    trainable = [n for n, p in t.unet.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and is_motion_param(n) for n in trainable)
    before = {k: v for k, v in _snapshot(t.unet).items() if "lora_" not in k}
    _run(t, 2)
    after = _snapshot(t.unet)
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    t.save_checkpoint(str(tmp_path / "ckpt"))
    lora = load_state_dict(str(tmp_path / "ckpt" / LORA_FILE))
    assert lora and all(k.startswith("unet.") and "motion_modules." in k and (".lora_A." in k or ".lora_B." in k) for k in lora)
    assert any(torch.count_nonzero(v) > 0 for k, v in lora.items() if ".lora_B." in k)
    assert not (tmp_path / "ckpt" / ADAPTER_DIR).exists()

    # resume: the LoRA weights come back into a fresh adapter
    again = _trainer(tiny_models, _cfg(motion_lora_rank=4, lr=5e-2), load_motion_adapter(mm))
    assert again.load_checkpoint(str(tmp_path / "ckpt")) == {} and again.step == 2
    assert all(torch.equal(v, again.unet.state_dict()[k]) for k, v in after.items())

    # the batch animation job loads it like any diffusers/peft LoRA
    pipe = load_pipeline(str(tiny_models / "base"), mm)
    req = [Request("waves", seed=3, settings=GenerationSettings(num_frames=4, height=32, width=32, steps=2))]
    plain = generate(pipe, req)[0]
    Personalizer(pipe).apply(CheckpointSpec("motion-lora", str(tmp_path / "ckpt" / LORA_FILE)))
    styled = generate(pipe, req)[0]
    assert plain.shape == styled.shape and (plain != styled).any()


def test_fresh_lora_is_a_no_op_and_configs_are_checked(tiny_models):
    unet = _trainer(tiny_models, adapter=load_motion_adapter(str(tiny_models / "motion_adapter"))).unet
    x, t, text = torch.randn(1, 4, 4, 4, 4), torch.tensor([10]), torch.randn(4, 77, 32)
    with torch.no_grad():
        ref = unet(x, t, encoder_hidden_states=text).sample
        assert add_motion_lora(unet, 2) > 0
        assert torch.equal(ref, unet(x, t, encoder_hidden_states=text).sample)
    with pytest.raises(ConfigError, match="motion LoRA adapts an existing motion module"):
        _trainer(tiny_models, _cfg(motion_lora_rank=4))
    for bad in (dict(lr=0), dict(caption_dropout=1.0), dict(size=60), dict(precision="fp8"),
                dict(num_frames=0), dict(motion_lora_rank=0)):
        with pytest.raises(ConfigError):
            _cfg(**bad).validate()
    with pytest.raises(ConfigError, match="exceeds what the motion module supports"):
        _trainer(tiny_models, _cfg(num_frames=40))
    with pytest.raises(ConfigError, match="unknown training setting"):
        TrainConfig().updated(learning_rate=1)
