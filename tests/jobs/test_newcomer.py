"""What a new user meets first: instant `--help` naming `python -m jobs.X`, paths that mean what they mean
in the shell, `--prompt` without a table, one line for a missing object store, a readable progress line,
and Ctrl-C that stops a job and keeps what is finished."""

import io
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
JOBS = ("animate", "train", "evaluate", "ingest", "demo", "tiny_models")
SMALL = ["--num-frames", "4", "--height", "32", "--width", "32", "--steps", "1", "--cpus-per-worker", "0.5"]


def _python(code: str, cwd=ROOT, env=None, timeout=120):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": ROOT, **(env or {})})


@pytest.mark.parametrize("job", JOBS)
def test_help_names_the_module_and_loads_neither_torch_nor_ray(job):
    done = _python(f"import runpy, sys\nsys.argv = ['x', '--help']\ntry:\n    runpy.run_module('jobs.{job}', run_name='__main__', alter_sys=True)\n"
                   "except SystemExit as e:\n    assert e.code == 0, e.code\n"
                   "print('HEAVY', sorted(m for m in ('torch', 'ray', 'diffusers', 'transformers') if m in sys.modules))")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith(f"usage: python -m jobs.{job} ") and "HEAVY []" in done.stdout


def test_paths_are_absolute_after_parsing_and_hub_ids_stay(tmp_path, monkeypatch):
    from animatediff_core.training.recipe import TrainConfig
    from jobs.config import parse_config
    from pipelines.animate.config import AnimateConfig
    from pipelines.train.config import TrainRun

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "base").mkdir(parents=True)
    (tmp_path / "p.csv").write_text("prompt\na cat\n")
    cfg, _ = parse_config(AnimateConfig, ["--prompts", "p.csv", "s3://b/q.csv", "--base", "models/base",
                                          "--motion-module", "guoyww/animatediff-motion-adapter-v1-5-2",
                                          "--out", "outputs/run", "--control-video", "missing.mp4"])
    assert cfg.prompts == [str(tmp_path / "p.csv"), "s3://b/q.csv"] and cfg.base == str(tmp_path / "models" / "base")
    assert cfg.motion_module == ["guoyww/animatediff-motion-adapter-v1-5-2"]  # not a local path: a Hub id
    assert cfg.out == str(tmp_path / "outputs" / "run") and cfg.generation.control_video == "missing.mp4"
    (run, _), _ = parse_config((TrainRun, TrainConfig), ["--data", "p.csv", "--base", "models/base", "--storage", "runs"])
    assert run.storage == str(tmp_path / "runs") and run.run_dir == str(tmp_path / "runs" / "motion-module")


def test_repeated_list_flags_add_up():
    from jobs.config import parse_config
    from pipelines.animate.config import AnimateConfig

    cfg, _ = parse_config(AnimateConfig, ["--prompt", "a cat", "--prompt", "a dog, running", "--base", "b",
                                          "--motion-module", "m1", "m2", "--motion-module", "m3"])
    assert cfg.prompt == ["a cat", "a dog, running"] and cfg.motion_module == ["m1", "m2", "m3"] and not cfg.prompts


def test_progress_line_reads_like_a_sentence():
    from pipelines.progress import REFRESH, Progress, duration

    p = Progress("generation", 48, stream=io.StringIO())
    p.start -= 50.0
    p.add(ok=10, error=1, skipped=1)
    assert p.line() == "12/48 rows (ok 10, error 1, skipped 1), 0.22 videos/s, 2m43s left"
    assert duration(5) == "5s" and duration(3725) == "1h02m"
    with Progress("scoring", 2, stream=io.StringIO()) as q:  # not a terminal: plain lines, a last one at the end
        q.add(ok=2)
    assert q.stream.getvalue().splitlines()[-1].startswith("scoring: 2/2 rows")
    with Progress("training", 4, unit="steps", noun="steps", stream=io.StringIO(), interval=0) as t:
        t.add(ok=4)
        time.sleep(3 * REFRESH)  # the loop prints the last state before the end: the end does not repeat it
    assert [ln.split(",")[0] for ln in t.stream.getvalue().splitlines()].count("training: 4/4 steps") == 1


def test_missing_object_store_is_one_line(tiny_models, s3_server, tmp_path):
    base = ["-m", "jobs.animate", "--base", str(tiny_models / "base"), "--motion-module", str(tiny_models / "motion_adapter"),
            "--out", str(tmp_path / "out")]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env = {**clean, "PYTHONPATH": ROOT, "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull,
           "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    for extra, message in (({}, "error: no credentials for the object store: set AWS_ACCESS_KEY_ID"),
                           (s3_server, "error: --prompts s3://no-such-bucket/p.csv: not found")):  # credentials, no such bucket
        done = subprocess.run([sys.executable, *base, "--prompts", "s3://no-such-bucket/p.csv"], capture_output=True,
                              text=True, timeout=120, cwd=ROOT, env={**env, **extra})
        assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_ctrl_c_stops_the_job_within_seconds_and_keeps_what_is_finished(tiny_models, tmp_path):
    """SIGINT to the job's process group (what a terminal's Ctrl-C sends): exit 130 within seconds, every
    finished video has its metadata, and the rerun of the same command completes the rest."""
    from pipelines.animate.report import read_metadata

    out = tmp_path / "out"
    args = [sys.executable, "-m", "jobs.animate", *(a for i in range(8) for a in ("--prompt", f"prompt {i}")),
            "--base", str(tiny_models / "base"), "--motion-module", str(tiny_models / "motion_adapter"),
            "--out", str(out), *SMALL, "--batch-size", "1"]
    proc = subprocess.Popen(args, env={**os.environ, "PYTHONPATH": ROOT}, cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(list(out.glob("videos/*/*.json"))) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    stopped = time.time()
    assert proc.wait(timeout=30) == 130
    assert time.time() - stopped < 15
    assert "interrupted: stopping" in proc.stderr.read()
    finished = {p.stem for p in out.glob("videos/*/*.json")}
    assert 2 <= len(finished) < 8, "the job was not interrupted mid-way"
    ok = read_metadata(str(out))
    assert finished <= set(ok[ok.status == "ok"].id)
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 0, done.stderr[-2000:]
    meta = read_metadata(str(out))
    assert len(meta) == 8 and (meta.status == "ok").all() and set(meta[meta.skipped].id) >= finished
    assert pd.read_csv(out / "prompts.csv").prompt.tolist() == [f"prompt {i}" for i in range(8)]
