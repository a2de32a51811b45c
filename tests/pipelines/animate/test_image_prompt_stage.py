"""Image prompts in the actor, called in-process: one adapter and encoder per actor, kept across checkpoint
switches and attached again when a motion module of another shape rebuilds the pipeline; each image encoded
once; frames equal a fresh pipeline with that checkpoint and the adapter; bad cells are error rows."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import pipelines.animate.stage as stage_mod
from animatediff_core.models.image_prompt import ImagePrompt, has_adapter
from animatediff_core.models.personalize import Personalizer
from animatediff_core.models.pipeline import load_pipeline
from animatediff_core.sampling.generate import Conditioning, GenerationSettings, Request, generate
from pipelines.animate.layout import OutputLayout
from pipelines.animate.plan import Plan, expand_rows, normalize
from pipelines.animate.sets import MotionSpec, read_checkpoint_set

SMALL = GenerationSettings(num_frames=4, height=32, width=32, steps=1, guidance_scale=2.0)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "ref.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
    return str(path)


def test_adapter_loads_once_survives_switches_and_rebuilds(tiny_models, image, tmp_path, monkeypatch):
    folder = tiny_models / "ip_adapter"
    adapter = (str(folder / "ip-adapter_sd15.safetensors"), str(folder / "image_encoder"))
    motions = {"mm": MotionSpec("mm", str(tiny_models / "motion_module.safetensors"), 32),
               "v3": MotionSpec("v3", str(tiny_models / "official" / "motion_module_v3.ckpt"), 32)}  # another shape
    specs = read_checkpoint_set(str(tiny_models / "checkpoints"))
    specs = {n: specs[n] for n in ("dreamy", "toon_lora")}
    made, frames, encoded = [], {}, []
    real_init, real_generate = ImagePrompt.__init__, stage_mod.generate
    monkeypatch.setattr(ImagePrompt, "__init__", lambda self, *a, **k: made.append(a) or real_init(self, *a, **k))

    def spy(pipe, requests, **kw):
        videos = real_generate(pipe, requests, **kw)
        frames.update({(stage.motion, stage.personalizer.current.name, r.prompt): v for r, v in zip(requests, videos)})
        return videos

    monkeypatch.setattr(stage_mod, "generate", spy)
    stage = stage_mod.AnimateStage(str(tiny_models / "base"), motions, specs, OutputLayout(str(tmp_path / "out"), by_motion=True),
                                   "20260101T000000-cccccc", image_prompt=adapter)
    real_encode = stage.pipe.encode_image.__func__
    monkeypatch.setattr(type(stage.pipe), "encode_image", lambda self, *a, **k: encoded.append(1) or real_encode(self, *a, **k))
    rows = [{"prompt": "with image", "ip_adapter_image": image, "ip_adapter_scale": "0.8"}, {"prompt": "text only"},
            {"prompt": "missing", "ip_adapter_image": str(tmp_path / "gone.png")},
            {"prompt": "two at once", "ip_adapter_image": json.dumps([image, str(tmp_path / "gone.png")])},
            {"prompt": "travel", "ip_adapter_image": image, "prompt_schedule": '{"0": "a", "2": "b"}'}]
    plan = Plan(tuple(specs), {"mm": 32, "v3": 32}, SMALL)
    out = stage(expand_rows(normalize(pd.DataFrame(rows)), plan)).set_index(["motion_module", "checkpoint", "prompt"])
    ok = out[out.status == "ok"]
    assert sorted(set(ok.index.get_level_values(2))) == ["text only", "with image"] and len(ok) == 8, out.error.tolist()
    assert "ip_adapter_image" in out.loc[("mm", "dreamy", "missing"), "error"] and "not found" in out.loc[("mm", "dreamy", "missing"), "error"]
    assert "gone.png" in out.loc[("v3", "toon_lora", "two at once"), "error"]
    assert "not supported with prompt_schedule" in out.loc[("mm", "dreamy", "travel"), "error"]
    assert len(made) == 1 and len(encoded) == 1  # one adapter per actor; the image encoded once for 4 (module, checkpoint) pairs
    assert has_adapter(stage.pipe) and stage.motion == "v3"  # attached again after the rebuild for v3
    # The dreamy video with the image equals a fresh pipeline with that checkpoint and the adapter.
    fresh = load_pipeline(str(tiny_models / "base"), str(tiny_models / "motion_module.safetensors"))
    Personalizer(fresh).apply(specs["dreamy"])
    ip = ImagePrompt(*adapter)
    ip.attach(fresh)
    row = out.loc[("mm", "dreamy", "with image")]
    s = GenerationSettings(**{**SMALL.__dict__, "ip_adapter_image": image, "ip_adapter_scale": 0.8})
    want = generate(fresh, [Request("with image", "", int(row["seed"]), s, Conditioning(image=ip.embeds(fresh, image)))])[0]
    assert np.array_equal(frames[("mm", "dreamy", "with image")], want)
    assert not np.array_equal(frames[("mm", "dreamy", "text only")][0], want[0])


def test_image_rows_without_an_adapter_are_error_rows(tiny_models, image, tmp_path):
    stage = stage_mod.AnimateStage(str(tiny_models / "base"), {"mm": MotionSpec("mm", str(tiny_models / "motion_module.safetensors"), 32)},
                                   read_checkpoint_set(None), OutputLayout(str(tmp_path / "out")), "20260101T000000-dddddd")
    plan = Plan(("base",), {"mm": 32}, SMALL)
    out = stage(expand_rows(normalize(pd.DataFrame([{"prompt": "a", "ip_adapter_image": image}, {"prompt": "b"}])), plan)).set_index("prompt")
    assert out.loc["b", "status"] == "ok" and "needs an IP-Adapter: run the job with --ip-adapter" in out.loc["a", "error"]
