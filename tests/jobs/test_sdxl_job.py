"""A mixed sweep through the CLI: SD-1.x and SDXL checkpoints in one job, each paired only with the motion
modules of its base's family; actors per base."""

import os
import subprocess
import sys

import pandas as pd
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.slow  # two bases loaded by two actor pools


def test_mixed_sd_and_sdxl_sweep_pairs_each_family(tiny_models, tmp_path):
    from pipelines.animate.report import read_metadata

    xl = tiny_models / "sdxl"
    table = tmp_path / "checkpoints.csv"
    pd.DataFrame({"name": ["dreamy", "xl_db", "xl_lora"],
                  "uri": [tiny_models / "checkpoints" / "dreamy.safetensors", xl / "checkpoints" / "dreambooth_xl.safetensors",
                          xl / "checkpoints" / "lora_xl.safetensors"],
                  "base": ["", xl / "base", xl / "base"]}).to_csv(table, index=False)
    prompts = tmp_path / "prompts.csv"
    pd.DataFrame({"prompt": ["a cat in the snow", "a dog"], "checkpoint": ["", "xl_db"],
                  "prompt_schedule": ["", '{"0": "a dog", "2": "a wolf"}']}).to_csv(prompts, index=False)
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "jobs.animate", "--prompts", str(prompts), "--base", str(tiny_models / "base"),
         "--motion-module", str(tiny_models / "motion_adapter"), str(xl / "motion_module.ckpt"),
         "--checkpoints", str(table), "--out", str(out), "--num-frames", "4", "--height", "32", "--width", "32",
         "--steps", "1", "--cpus-per-worker", "0.5", "--no-gif", "--log-level", "WARNING"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": ROOT}, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    # left out: dreamy x the SDXL module, both SDXL checkpoints x the SD one, and "a dog" (on xl_db) x the SD one
    assert "4 sweep pair(s) left out" in done.stdout
    meta = read_metadata(str(out))
    ok = meta[meta.status == "ok"]
    assert sorted(zip(ok.motion_module, ok.checkpoint)) == [("motion_adapter", "dreamy"), ("motion_module", "xl_db"),
                                                            ("motion_module", "xl_lora")]
    err = meta[meta.status == "error"]
    assert len(err) == 1 and "prompt_schedule is not available for SDXL checkpoints" in err.error.iloc[0]
    assert ok.set_index("checkpoint").loc["xl_db", "vae"].endswith("dreambooth_xl.safetensors")
