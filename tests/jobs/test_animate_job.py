"""`python -m jobs.animate` end to end through the CLI, with outputs on a real local S3 server."""

import io
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(args, env=None, timeout=300):
    full_env = {**os.environ, **(env or {}), "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", "jobs.animate", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=ROOT)


def test_yaml_config_and_s3_output(tiny_models, s3_env, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.mkdir("animate-bucket")
    table = pd.DataFrame({"prompt": ["a cat", "a dog", "a bird"], "seed": [1, 2, None], "checkpoint": [None, None, "dreamy"]})
    buf = io.BytesIO()
    table.to_parquet(buf)
    fs.pipe_file("animate-bucket/prompts/p.parquet", buf.getvalue())
    config = {
        "prompts": ["s3://animate-bucket/prompts/p.parquet"],
        "base": str(tiny_models / "base"),
        "motion_module": str(tiny_models / "motion_module.safetensors"),
        "checkpoints": str(tiny_models / "checkpoints"),
        "out": "s3://animate-bucket/run",
        "num_frames": 4, "height": 32, "width": 32, "steps": 1,
        "cpus_per_worker": 0.5,
    }
    cfg = tmp_path / "job.yaml"
    cfg.write_text(yaml.safe_dump(config))
    done = _run(["--config", str(cfg)], env=s3_env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "total" in done.stdout and "videos/s" in done.stdout
    videos = fs.glob("animate-bucket/run/videos/*/*.mp4")
    assert len(videos) == 7  # (cat, dog) x 3 checkpoints + bird on dreamy
    assert not fs.glob("animate-bucket/run/**/*.tmp")
    meta = pd.concat(pd.read_parquet(io.BytesIO(fs.cat_file(p))) for p in fs.glob("animate-bucket/run/metadata/*.parquet"))
    assert len(meta) == 7 and (meta.status == "ok").all()
    assert set(meta.video_uri) == {f"s3://{v}" for v in videos}
    assert fs.cat_file("animate-bucket/run/index.html").count(b"<img") == 7


@pytest.mark.parametrize("args,code,message", [
    (["--base", "/nonexistent/base"], 1, "--base /nonexistent/base: base model folder not found"),
    (["--out", "/dev/null/cannot"], 1, "--out /dev/null/cannot: not writable"),
    (["--prompts", "/nonexistent.parquet"], 1, "--prompts /nonexistent.parquet: not found"),
])
def test_clear_one_line_errors_when_nothing_can_run(tiny_models, tmp_path, args, code, message):
    defaults = {"--prompts": os.path.join(ROOT, "jobs", "data", "demo_prompts.csv"), "--base": str(tiny_models / "base"),
                "--motion-module": str(tiny_models / "motion_adapter"), "--out": str(tmp_path / "out")}
    defaults.update(dict(zip(args[::2], args[1::2])))
    done = _run([x for kv in defaults.items() for x in kv], timeout=120)
    assert done.returncode == code
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_prompt_tables_without_prompts_or_rows_are_refused(tiny_models, tmp_path):
    empty, wrong = tmp_path / "empty.parquet", tmp_path / "wrong.csv"
    pd.DataFrame({"prompt": pd.Series([], dtype=str)}).to_parquet(empty)
    wrong.write_text("text,seed\na cat,1\n")
    for table, message in ((empty, "the table has no rows"), (wrong, "no 'prompt' column (found text, seed)")):
        done = _run(["--prompts", str(table), "--base", str(tiny_models / "base"), "--motion-module",
                     str(tiny_models / "motion_adapter"), "--out", str(tmp_path / "out")], timeout=120)
        assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stderr


def test_unknown_yaml_key_is_named(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("prompts: [a.csv]\nnum_framez: 8\n")
    done = _run(["--config", str(cfg)], timeout=60)
    assert done.returncode == 2 and "unknown key(s) num_framez" in done.stderr
