"""Motion-module training on Ray: 2 TorchTrainer workers (gloo, CPU), real videos served over HTTP."""

import dataclasses
import functools
import http.server
import json
import os
import shutil
import signal
import threading
import time

import psutil
import pytest
import torch
from helpers_video import real_video

from animatediff_core.errors import AnimateDiffError
from animatediff_core.io.video_io import encode_mp4
from animatediff_core.models.inflate import is_motion_param
from animatediff_core.models.motion_formats import load_motion_adapter
from animatediff_core.models.numerics import Numerics, numerics_of
from animatediff_core.models.pipeline import load_pipeline
from animatediff_core.sampling.generate import GenerationSettings, Request, generate
from animatediff_core.training.trainer import ADAPTER_DIR, ORIGINAL_FILE, TrainConfig, read_training_state
from pipelines.train.config import TrainRun
from pipelines.train.job import check_run, list_checkpoints, train

CFG = TrainConfig.tiny(num_frames=8, stride=4, size=32, max_steps=4, checkpoint_every=2, validate_every=4,
                       validation_prompts=("waves on a beach",))
BAD = {"not_found": 1, "corrupt": 1, "too_short": 1, "empty_caption": 1, "empty": 1}


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


@pytest.fixture(scope="module")
def http_root(tmp_path_factory):
    """A threaded HTTP server on 127.0.0.1 serving real mp4s, a truncated one and a 4-frame one."""
    root = tmp_path_factory.mktemp("www")
    for name in ("carphone_pristine.mp4", "bikes.mp4"):
        shutil.copy(real_video(name), root / name)
    (root / "truncated.mp4").write_bytes((root / "bikes.mp4").read_bytes()[:20_000])
    frames = torch.randint(0, 256, (4, 64, 64, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    (root / "short.mp4").write_bytes(encode_mp4(frames.numpy()))
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def table(http_root, tmp_path_factory):
    """WebVid columns; 4 usable rows (HTTP, local path, file://) and one of each kind of bad row."""
    url, root = http_root
    folder = tmp_path_factory.mktemp("data")
    (folder / "zero.mp4").write_bytes(b"")
    rows = [
        (1, f"{url}/carphone_pristine.mp4", "a man talking on the phone in a car"),
        (2, f"{url}/bikes.mp4", "bicycles parked on a street"),
        (3, real_video("carphone_distorted.mp4"), "a blurry man in a car"),
        (4, f"file://{root / 'bikes.mp4'}", "bikes, seen again"),
        (5, f"{url}/missing.mp4", "a video that is gone (HTTP 404)"),
        (6, f"{url}/truncated.mp4", "a truncated download"),
        (7, f"{url}/short.mp4", "four frames only"),
        (8, f"{url}/carphone_pristine.mp4", ""),
        (9, "zero.mp4", "a zero-byte file, relative to the table"),
    ]
    lines = ["videoid,contentUrl,name,duration,page_dir"]
    lines += [f'{i},{u},"{c}",PT00H00M10S,misc' for i, u, c in rows]
    (folder / "webvid.csv").write_text("\n".join(lines) + "\n")
    return str(folder / "webvid.csv")


@pytest.fixture(scope="module")
def first_run(ray_session, tiny_models, table, tmp_path_factory):
    storage = str(tmp_path_factory.mktemp("runs"))
    run = TrainRun(data=table, base=str(tiny_models / "base"), storage=storage, name="mm", workers=2,
                   decoders=1, decode_cpus=0.25, max_failures=0)
    summary = train(run, check_run(run, CFG))
    return run, summary


def _metrics(run):
    with open(os.path.join(run.run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_trains_with_two_workers_and_counts_bad_rows(first_run):
    run, summary = first_run
    assert summary.steps == 4 and summary.loss > 0
    lines = _metrics(run)
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    for r in lines:
        assert {"step", "loss", "lr", "clips_per_s", "data_wait_fraction", "skipped_videos"} <= set(r)
        assert r["lr"] == pytest.approx(1e-4) and r["clips_per_s"] > 0 and 0 <= r["data_wait_fraction"] <= 1
    skipped = lines[-1]["skipped_videos"]
    # each pass over the table reads every bad row once (2 passes for 4 steps at 2 usable clips per worker)
    assert set(skipped) == set(BAD) and all(n >= 1 for n in skipped.values()), skipped
    assert summary.skipped_videos == skipped
    assert sorted(list_checkpoints(run.run_dir)) == [2, 4]
    assert os.path.exists(os.path.join(run.run_dir, "validation", "step-000004", "00.gif"))


def test_base_frozen_motion_trained_and_both_formats_load_in_batch_job(first_run, tiny_models):
    run, summary = first_run
    ckpt = summary.checkpoint
    assert ckpt.endswith("checkpoint-000004") and read_training_state(ckpt)["step"] == 4
    diffusers_fmt = load_motion_adapter(os.path.join(ckpt, ADAPTER_DIR))
    original_fmt = load_motion_adapter(os.path.join(ckpt, ORIGINAL_FILE))
    a, b = diffusers_fmt.state_dict(), original_fmt.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    proj_out = [k for k in a if k.endswith("proj_out.weight")]
    assert proj_out and all(torch.count_nonzero(a[k]) > 0 for k in proj_out)  # fresh modules start at zero
    assert diffusers_fmt.config["_motion_norm"] == original_fmt.config["_motion_norm"] == "official"
    for fmt in (ADAPTER_DIR, ORIGINAL_FILE):
        pipe = load_pipeline(str(tiny_models / "base"), os.path.join(ckpt, fmt))
        base = load_pipeline(str(tiny_models / "base"), str(tiny_models / "motion_adapter")).unet.state_dict()
        trained = pipe.unet.state_dict()
        assert numerics_of(pipe.unet) == Numerics("official", "v2")  # what the workers trained with
        assert all(torch.equal(base[k], trained[k]) for k in base if not is_motion_param(k))
        frames = generate(pipe, [Request("waves", seed=1, settings=GenerationSettings(num_frames=8, height=32, width=32, steps=2))])[0]
        assert frames.shape == (8, 32, 32, 3)


def test_resume_continues_steps_and_survives_a_killed_worker(first_run):
    run, _ = first_run
    again = dataclasses.replace(run, resume=True, max_failures=1)
    cfg = dataclasses.replace(CFG, max_steps=9, validate_every=0)
    killed = {}
    watcher = threading.Thread(target=_kill_a_worker_after, args=(run.run_dir, "checkpoint-000006", killed))
    watcher.start()
    started = time.time()
    plan = check_run(again, cfg)
    assert plan.resumed_from == 4
    summary = train(again, plan)
    watcher.join()
    assert killed.get("pid") and not psutil.pid_exists(killed["pid"]), killed
    assert summary.steps == 9 and sorted(list_checkpoints(run.run_dir)) == [2, 4, 6, 8, 9]
    assert read_training_state(summary.checkpoint)["step"] == 9
    lines = _metrics(run)
    assert [r["step"] for r in lines] == list(range(1, 10))  # steps after the kill's checkpoint ran once, logged once
    times = {r["step"]: r["time"] for r in lines}
    assert max(times[s] for s in range(1, 5)) < started  # the first run's lines kept as they were
    assert times[6] < killed["time"] < times[7]  # restarted from checkpoint 6, not from scratch
    adam = read_training_state(summary.checkpoint)["optimizer"]["state"]
    assert all(int(s["step"]) == 9 for s in adam.values())  # optimizer state carried through both restarts


def _kill_a_worker_after(run_dir: str, checkpoint: str, out: dict, timeout: float = 240) -> None:
    """SIGKILL one Ray Train worker process once `checkpoint` is committed (uploaded and registered:
    Ray Train lists it in its checkpoint-manager snapshot; a checkpoint still uploading is not restored)."""
    snapshot = os.path.join(run_dir, "checkpoint_manager_snapshot.json")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(snapshot) and checkpoint in open(snapshot).read():
            break
        time.sleep(0.1)
    for proc in psutil.Process().children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(proc.cmdline()):
                out["time"], out["pid"] = time.time(), proc.pid
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                return
        except psutil.Error:
            continue


def test_a_pass_without_usable_clips_stops_at_once_with_the_counts(ray_session, tiny_models, http_root, tmp_path):
    url, _ = http_root
    bad = tmp_path / "bad.csv"
    bad.write_text("videoid,contentUrl,name,duration,page_dir\n"
                   f"1,{url}/missing.mp4,gone,PT1S,x\n2,{url}/truncated.mp4,cut,PT1S,x\n3,{url}/short.mp4,,PT1S,x\n")
    run = TrainRun(data=str(bad), base=str(tiny_models / "base"), storage=str(tmp_path / "runs"), name="none", workers=2,
                   decoders=1, max_failures=2)
    with pytest.raises(AnimateDiffError) as err:
        train(run, check_run(run, CFG))
    message = str(err.value)
    assert "a whole pass over the data gave no usable clip" in message and "restart" not in message
    assert "not_found 1" in message and "corrupt 1" in message and "empty_caption 1" in message
