"""`python -m jobs.ingest` and `python -m jobs.train` end to end through the CLI."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml
from helpers_video import real_video

from animatediff_core.models.personalize import CheckpointSpec, Personalizer
from animatediff_core.models.pipeline import load_pipeline
from animatediff_core.sampling.generate import GenerationSettings, Request, generate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


def _run(module, args, env=None, timeout=300):
    full_env = {**os.environ, **(env or {}), "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=ROOT)


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory):
    """A folder of real videos with a captions table naming them by file, plus one that is missing."""
    folder = tmp_path_factory.mktemp("videos")
    for name in ("bikes.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4"):
        shutil.copy(real_video(name), folder / name)
    (folder / "captions.csv").write_text("file,caption\nbikes.mp4,bicycles on a street\n"
                                         "carphone_pristine.mp4,a man on the phone in a car\n"
                                         "carphone_distorted.mp4,a blurry man in a car\nmissing.mp4,a lost video\n")
    return folder


def test_ingest_then_motion_lora_from_yaml_to_s3(tiny_models, video_folder, s3_env, tmp_path):
    """A WebVid table and its videos on S3 -> jobs.ingest -> jobs.train (motion LoRA, YAML) -> runs on S3."""
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.mkdir("train-bucket")
    rows = ["videoid,contentUrl,name,duration,page_dir"]
    for i, name in enumerate(["bikes.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4", "missing.mp4"]):
        if (video_folder / name).exists():
            fs.put_file(str(video_folder / name), f"train-bucket/videos/{name}")
        rows.append(f'{i},s3://train-bucket/videos/{name},"clip {i}: {name}",PT00H00M10S,misc')
    fs.pipe_file("train-bucket/webvid.csv", ("\n".join(rows) + "\n").encode())
    latents = tmp_path / "latents"
    done = _run("jobs.ingest", ["--data", "s3://train-bucket/webvid.csv", "--base", str(tiny_models / "base"),
                                "--out", str(latents), "--num-frames", "8", "--size", "32", "--decode-cpus", "0.25"],
                env=s3_env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ingested 3 clips" in done.stdout and "not_found 1" in done.stdout
    meta = json.loads((latents / "_ingest.json").read_text())
    assert meta["latent_shape"] == [4, 8, 16, 16] and meta["text_shape"] == [77, 32] and meta["rows"] == 3

    config = {"data": str(latents), "base": str(tiny_models / "base"), "storage": "s3://train-bucket/runs",
              "name": "lora", "motion_module": str(tiny_models / "motion_adapter"), "motion_lora": 4,
              "max_steps": 2, "checkpoint_every": 1, "validate_every": 2, "batch_size": 2, "lr": 1e-2,
              "validation_prompts": ["waves"], "decode_cpus": 0.25, "motion_norm": "diffusers"}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    done = _run("jobs.train", ["--config", str(tmp_path / "train.yaml")], env=s3_env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained 2 steps" in done.stdout and "checkpoint: s3://train-bucket/runs/lora/checkpoint-000002" in done.stdout
    run = "train-bucket/runs/lora"
    lines = [json.loads(x) for x in fs.cat_file(f"{run}/metrics.jsonl").decode().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    assert fs.exists(f"{run}/validation/step-000002/00.gif")
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{run}/checkpoint-000002")) == [
        "motion_lora.safetensors", "train_config.json", "training_state.pt"]
    recorded = json.loads(fs.cat_file(f"{run}/checkpoint-000002/train_config.json"))["numerics"]
    assert recorded == {"motion_norm": "diffusers", "motion_version": "v2"}

    # the batch animation job loads the motion LoRA straight from S3
    pipe = load_pipeline(str(tiny_models / "base"), str(tiny_models / "motion_adapter"))
    req = [Request("waves", seed=2, settings=GenerationSettings(num_frames=8, height=32, width=32, steps=2))]
    plain = generate(pipe, req)[0]
    Personalizer(pipe).apply(CheckpointSpec("motion-lora", f"s3://{run}/checkpoint-000002/motion_lora.safetensors"))
    assert (generate(pipe, req)[0] != plain).any()

    again = _run("jobs.train", ["--config", str(tmp_path / "train.yaml")], env=s3_env)
    assert again.returncode == 1 and "already has checkpoints" in again.stderr and "--resume" in again.stderr


def _config(tiny_models, video_folder, tmp_path, **change) -> str:
    config = {"data": str(video_folder), "base": str(tiny_models / "base"), "storage": str(tmp_path / "runs"),
              "max_steps": 1, **change}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(config))
    return str(tmp_path / "job.yaml")


@pytest.mark.parametrize("change,message", [
    ({"data": "/nonexistent/webvid.csv"}, "--data /nonexistent/webvid.csv: not found"),
    ({"storage": "/dev/null/runs"}, "--storage /dev/null/runs: not writable"),
    ({"motion_lora": 4}, "--motion-lora trains LoRA adapters on an existing motion module"),
    ({"resume": True}, "--resume: no checkpoint in"),
])
def test_config_checked_before_ray_starts(tiny_models, video_folder, tmp_path, change, message):
    from animatediff_core.errors import AnimateDiffError
    from jobs.train import main

    with pytest.raises(AnimateDiffError, match=re.escape(message)):
        main(["--config", _config(tiny_models, video_folder, tmp_path, **change)])


@pytest.mark.parametrize("change,code,message", [
    ({"base": "/nonexistent/base"}, 1, "error: /nonexistent/base: base model folder not found"),
    ({"learning_rate": 1}, 2, "unknown key(s) learning_rate"),
    ({"num_frames": 0}, 2, "num_frames must be an integer >= 1"),
    ({"lr": "fast"}, 2, "lr must be a finite number, got 'fast'"),
])
def test_one_clear_line_when_nothing_can_run(tiny_models, video_folder, tmp_path, change, code, message):
    done = _run("jobs.train", ["--config", _config(tiny_models, video_folder, tmp_path, **change)])
    assert done.returncode == code and message in done.stderr, done.stderr[-2000:]
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:") or ": error:" in ln]
    assert len(errors) == 1 and "Traceback" not in done.stderr
