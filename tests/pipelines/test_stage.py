"""The actor's logic, called in-process: grouping, bad rows, broken checkpoints, outputs."""

import json

import pandas as pd
import pytest

import pipelines.stage as stage_mod
from animatediff_core.generate import GenerationSettings
from animatediff_core.personalize import CheckpointSpec
from pipelines.animate import mark_finished
from pipelines.rows import expand_rows, read_checkpoint_set

SMALL = GenerationSettings(num_frames=4, height=32, width=32, steps=1, guidance_scale=2.0)


@pytest.fixture(scope="module")
def specs(tiny_models, tmp_path_factory):
    s = read_checkpoint_set(str(tiny_models / "checkpoints"))
    broken = tmp_path_factory.mktemp("broken") / "broken.safetensors"
    broken.write_bytes(b"\x00" * 100)
    s["broken"] = CheckpointSpec("broken", str(broken))
    return s


@pytest.fixture(scope="module")
def stage(tiny_models, specs, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    return stage_mod.AnimateStage(str(tiny_models / "base"), str(tiny_models / "motion_module.safetensors"), specs, str(out))


def _batch(stage, specs, rows):
    b = expand_rows(pd.DataFrame(rows), list(specs), SMALL)
    return mark_finished(b, stage.out, stage.motion_module, specs)


def test_groups_run_as_one_call_per_checkpoint_and_shape(stage, specs, monkeypatch):
    calls, applied = [], []
    real_generate, real_apply = stage_mod.generate, stage.personalizer.apply
    monkeypatch.setattr(stage_mod, "generate", lambda pipe, reqs: calls.append(len(reqs)) or real_generate(pipe, reqs))
    monkeypatch.setattr(stage.personalizer, "apply", lambda spec: applied.append(spec.name) or real_apply(spec))
    rows = [{"prompt": f"p{i}", "checkpoint": c} for i, c in enumerate(["dreamy", "dreamy", "toon_lora", "dreamy", "toon_lora"])]
    rows.append({"prompt": "tall", "checkpoint": "dreamy", "height": "64"})
    out = stage(_batch(stage, specs, rows))
    assert (out.status == "ok").all(), out.error.tolist()
    assert sorted(calls) == [1, 2, 3]  # dreamy 32x32 (3 rows), toon_lora (2), dreamy 64x32 (1)
    assert applied.count("toon_lora") == 1
    for r in out.itertuples():
        side = json.loads(open(r.video_uri[:-4] + ".json").read())
        assert side["sha256"] == r.sha256 and side["bytes"] == r.bytes > 0
        assert open(r.video_uri, "rb").read()[4:8] == b"ftyp" and open(r.gif_uri, "rb").read()[:4] == b"GIF8"


def test_bad_rows_and_broken_checkpoint_do_not_stop_the_batch(stage, specs):
    rows = [
        {"prompt": "ok", "checkpoint": "dreamy"},
        {"prompt": "", "checkpoint": "dreamy"},
        {"prompt": "too long", "checkpoint": "dreamy", "num_frames": "64"},
        {"prompt": "odd", "checkpoint": "dreamy", "width": "33"},
        {"prompt": "lost", "checkpoint": "nope"},
        {"prompt": "broken", "checkpoint": "broken"},
        {"prompt": "after", "checkpoint": "toon_lora"},
    ]
    out = stage(_batch(stage, specs, rows)).set_index("prompt")
    assert out.loc["ok", "status"] == "ok" and out.loc["after", "status"] == "ok"
    assert "prompt is empty" in out.loc["", "error"]
    assert "at most 32" in out.loc["too long", "error"]
    assert "multiple of" in out.loc["odd", "error"]
    assert "unknown checkpoint 'nope'" in out.loc["lost", "error"]
    assert "failed to load" in out.loc["broken", "error"] and "broken.safetensors" in out.loc["broken", "error"]
    assert set(out.status) == {"ok", "error"} and (out.loc[out.status == "error", "video_uri"] == "").all()


def test_finished_rows_are_marked_skipped(stage, specs):
    rows = [{"prompt": "again", "checkpoint": "dreamy"}]
    first = stage(_batch(stage, specs, rows))
    second = _batch(stage, specs, rows)
    assert second.status.tolist() == ["ok"] and bool(second.skipped.iloc[0])
    assert second.sha256.iloc[0] == first.sha256.iloc[0]
    changed = _batch(stage, specs, [{"prompt": "again", "checkpoint": "dreamy", "steps": "2"}])
    assert changed.status.tolist() == ["pending"]  # other settings: a new id, not a reuse
