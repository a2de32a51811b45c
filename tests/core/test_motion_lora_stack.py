"""Motion LoRAs stacked on a personalized checkpoint: both formats, switching, exact restore."""

import numpy as np
import pytest
import torch

from animatediff_core.errors import CheckpointError
from animatediff_core.models.personalize import Personalizer
from animatediff_core.models.pipeline import load_pipeline
from animatediff_core.sampling.generate import GenerationSettings, Request, generate
from animatediff_core.settings.generation import CheckpointSpec

S = GenerationSettings(num_frames=8, height=32, width=32, steps=2, guidance_scale=2.0)


@pytest.fixture(scope="module")
def pipe(tiny_models, one_thread):
    return load_pipeline(str(tiny_models / "base"), str(tiny_models / "motion_module.safetensors"))


def _video(pipe):
    return generate(pipe, [Request("a cat", seed=1, settings=S)])[0]


def test_motion_lora_stacks_on_a_personalized_lora_and_unloads_exactly(pipe, tiny_models):
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    base = _video(pipe)
    p = Personalizer(pipe)
    p.apply(CheckpointSpec("toon", str(tiny_models / "checkpoints" / "toon_lora.safetensors")))
    personalized = _video(pipe)
    peft_file = str(tiny_models / "motion_loras" / "zoom.safetensors")
    p.apply_motion_lora(peft_file, 1.0)
    stacked = _video(pipe)
    assert not np.array_equal(personalized, stacked) and not np.array_equal(base, personalized)
    active = set(pipe.get_active_adapters())
    assert "motion_lora" in active and len(active) == 2 and any(a.startswith("lora_") for a in active)
    # The same weights in the official MotionLoRA layout give the same video.
    p.apply_motion_lora(str(tiny_models / "motion_loras" / "zoom_original.safetensors"), 1.0)
    assert np.abs(_video(pipe).astype(int) - stacked.astype(int)).max() <= 1
    p.apply_motion_lora(None)
    assert np.array_equal(_video(pipe), personalized)  # the personalized LoRA stays
    p.apply_motion_lora(peft_file, 0.0)
    assert np.array_equal(_video(pipe), personalized)  # weight 0: no effect
    p.apply_motion_lora(peft_file, 1.0)
    p.reset()
    after = pipe.unet.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert np.array_equal(_video(pipe), base)


def test_files_that_are_not_motion_loras_are_refused(pipe, tiny_models):
    p = Personalizer(pipe)
    with pytest.raises(CheckpointError, match="not a motion LoRA"):
        p.apply_motion_lora(str(tiny_models / "checkpoints" / "film_peft_lora.safetensors"))
    assert p.motion_lora is None and not pipe.get_list_adapters().get("unet")


def test_leaving_one_of_two_loras_leaves_plain_layers_for_the_next_switch(pipe, tiny_models):
    """A LoRA checkpoint under a motion LoRA, then a DreamBooth: the checkpoint LoRA's layers must go back to
    plain modules (a strict DreamBooth load sees no peft wrappers), and the motion LoRA stays on; the other
    way round, a new motion module loads after a motion LoRA left."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    p = Personalizer(pipe)
    zoom = str(tiny_models / "motion_loras" / "zoom.safetensors")
    p.apply(CheckpointSpec("toon", str(tiny_models / "checkpoints" / "toon_lora.safetensors")))
    p.apply_motion_lora(zoom, 1.0)
    p.apply(CheckpointSpec("dreamy", str(tiny_models / "checkpoints" / "dreamy.safetensors")))
    assert set(pipe.get_active_adapters()) == {"motion_lora"}
    wrapped = [n for n, m in pipe.unet.named_modules() if isinstance(m, BaseTunerLayer)]
    assert wrapped and all("motion_modules" in n for n in wrapped)
    assert not any(isinstance(m, BaseTunerLayer) for m in pipe.text_encoder.modules())
    dreamy_zoom = _video(pipe)
    p.apply(CheckpointSpec("toon", str(tiny_models / "checkpoints" / "toon_lora.safetensors")))
    p.apply(CheckpointSpec("dreamy", str(tiny_models / "checkpoints" / "dreamy.safetensors")))
    assert np.array_equal(_video(pipe), dreamy_zoom)
    # A motion LoRA leaving from over a LoRA checkpoint (what the actor does before a motion-module swap).
    p.apply(CheckpointSpec("toon", str(tiny_models / "checkpoints" / "toon_lora.safetensors")))
    p.apply_motion_lora(None)
    assert len(pipe.get_active_adapters()) == 1 and pipe.get_active_adapters()[0].startswith("lora_")
    from animatediff_core.models.motion_formats import load_motion_adapter

    pipe.unet.load_motion_modules(load_motion_adapter(str(tiny_models / "motion_module.safetensors")))  # strict: no wrappers
    p.reset()
    assert not any(isinstance(m, BaseTunerLayer) for m in pipe.unet.modules())
