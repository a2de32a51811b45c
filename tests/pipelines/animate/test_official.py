"""The official AnimateDiff repository's prompt configs, unchanged, through --official-config.

The configs under tests/fixtures/official/ are written here in the official format (configs/prompts/*.yaml
and configs/inference/*.yaml of guoyww/AnimateDiff), naming the tiny stand-ins `jobs.tiny_models` writes in
the official files' layouts; a root folder laid out like the official repository holds them."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from animatediff_core.errors import ConfigError
from pipelines.animate.official import check_modules, translate

ROOT = Path(__file__).parents[3]
FIXTURES = ROOT / "tests" / "fixtures" / "official"


@pytest.fixture(scope="module")
def official_root(tiny_models, tmp_path_factory):
    """The official repository's layout: configs/, models/ (the stand-ins) and the condition images."""
    root = tmp_path_factory.mktemp("AnimateDiff")
    shutil.copytree(FIXTURES / "configs", root / "configs")
    (root / "models").symlink_to(tiny_models / "official")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    for name in ("first", "last"):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(root / "images" / f"{name}.png")
    return root


def _translate(root, **over):
    return translate(str(root / "configs" / "prompts" / "every_form.yaml"), str(root), **over)


def test_every_form_becomes_rows_stacks_and_modules(official_root):
    job = _translate(official_root)
    rows = job.rows.set_index("id")
    assert len(rows) == 8 and set(job.motions) == {"motion_module_v2", "motion_module_v3"}
    assert rows.loc["b01-01", "seed"] == str(2**64 - 1) and rows.loc["b05-01", "seed"] == "-1"
    assert rows.loc["b02-01", "seed"] == rows.loc["b02-02", "seed"] == "43242532350557906"  # one seed for every prompt
    assert rows.loc["b01-02", "negative_prompt"] == "semi-realistic, cgi, 3d, render"  # one n_prompt for every prompt
    assert rows.loc["b02-02", "negative_prompt"] == "blur, haze, deformed iris"
    assert (rows.loc["b01-01", ["num_frames", "height", "width", "steps", "guidance_scale", "sampler"]].tolist()
            == ["16", "512", "512", "25", "8", "ddim"])
    keys = json.loads(rows.loc["b04-01", "keyframes"])
    assert list(keys) == ["0", "-1"] and keys["-1"].endswith("images/last.png") and rows.loc["b04-01", "height"] == "256"
    assert rows.loc["b05-01", "keyframe_normalize"] == "True" and rows.loc["b03-01", "motion_lora"].endswith("motion_lora.ckpt")
    stacks = {s.name: s for s in job.checkpoints.values()}
    assert len(stacks) == 4  # blocks 1 and 2 share their stack: its DreamBooth loads once
    lora = stacks[rows.loc["b01-01", "checkpoint"]]
    assert lora.loras[0].scale == 0.6 and lora.loras[0].alpha == "ignore" and lora.uri.endswith("dreambooth.safetensors")
    assert stacks[rows.loc["b04-01", "checkpoint"]].uri is None and stacks[rows.loc["b04-01", "checkpoint"]].adapter.endswith("v3_adapter.ckpt")
    assert job.inflated == {"motion_module_v3": True, "motion_module_v2": True}
    assert "steps" not in _translate(official_root, overridden=frozenset({"steps"})).rows.columns  # the command line wins


@pytest.mark.parametrize("change, message", [
    ({"guidance": 8}, r"key\(s\) guidance are not keys the official scripts/animate.py reads"),
    ({"motion_module_lora_configs": [{"path": "a.ckpt", "alpha": 1}, {"path": "b.ckpt", "alpha": 1}]}, "has 2 MotionLoRAs"),
    ({"seed": [1, 2, 3]}, "2 prompts, 1 n_prompt and 3 seeds"),
    ({"inference_config": "configs/inference/odd.yaml"}, "noise_scheduler_kwargs .* cannot be honoured"),
    ({"motion_module": ""}, "motion_module is empty"),
])
def test_what_cannot_be_honoured_fails_at_start_naming_it(official_root, tmp_path, change, message):
    blocks = yaml.safe_load((official_root / "configs" / "prompts" / "every_form.yaml").read_text())
    odd = yaml.safe_load((official_root / "configs" / "inference" / "inference-v3.yaml").read_text())
    odd["noise_scheduler_kwargs"]["beta_schedule"] = "scaled_linear"
    (official_root / "configs" / "inference" / "odd.yaml").write_text(yaml.safe_dump(odd))
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump([{**blocks[0], **change}]))
    with pytest.raises(ConfigError, match=f"block 1: .*{message}"):
        translate(str(config), str(official_root))
    with pytest.raises(ConfigError, match="is AnimateDiff v1, but its inference_config says use_inflated_groupnorm: true"):
        check_modules(_translate(official_root), {"motion_module_v3": "v1"})


@pytest.mark.slow
def test_official_config_runs_unchanged_through_the_cli_and_resumes(tiny_models, official_root, tmp_path):
    out = tmp_path / "out"
    args = [sys.executable, "-m", "jobs.animate", "--official-config", str(official_root / "configs" / "prompts" / "every_form.yaml"),
            "--official-root", str(official_root), "--base", str(tiny_models / "base"), "--out", str(out),
            "--num-frames", "8", "--height", "32", "--width", "32", "--steps", "2", "--no-gif", "--log-level", "WARNING"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-3000:]
    from pipelines.animate.report import read_metadata

    meta = read_metadata(str(out)).set_index("id")
    assert len(meta) == 8 and meta.status.eq("ok").all(), meta.error.to_dict()
    assert int(meta.loc["b01-01", "seed"]) == 2**64 - 1 and meta.loc["b01-01", "vae"].endswith("dreambooth.safetensors")
    assert meta.loc["b04-01", "vae"] == "base" and "v3_adapter.ckpt" in meta.loc["b04-01", "checkpoint_stack"]
    assert (meta.num_frames == 8).all() and (meta.steps == 2).all()  # the flags won over the config's L and steps
    picked = int(meta.loc["b05-01", "seed"])  # seed -1: one picked from the row and recorded
    again = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    meta2 = read_metadata(str(out)).set_index("id")
    assert meta2.skipped.all() and int(meta2.loc["b05-01", "seed"]) == picked  # a rerun resumes instead of redrawing
    saved = yaml.safe_load((out / "job.yaml").read_text())
    assert saved["official_config"].endswith("every_form.yaml") and set(saved["official_overrides"]) == {"num_frames", "height", "width", "steps"}
