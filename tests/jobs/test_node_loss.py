"""Losing a worker node mid-job on a real multi-node Ray (ray.cluster_utils.Cluster: a CPU-less head
and two worker nodes, in a subprocess so the session's shared Ray is left alone), outputs on the
local S3 server: the batch job finishes with every row exactly once and no temp files; a training
run continues from its last checkpoint. One cluster for the module (each start costs ~20 s).

The driver-local tiny models are staged through S3 (the cluster has >1 node), as on a real cluster.
After each kill a replacement node joins, as KubeRay or the cluster launcher would add one.
Each node has 3 CPUs and an actor or training worker asks for 2: one per node, so a killed node
always takes work with it."""

import io
import os
import subprocess
import sys
import time

import json

import pandas as pd
import pytest

from helpers_cluster import MultiNode, token_env
from helpers_video import real_video

# Each test's own deadlines (cluster start, first video or checkpoint, the rest of the run) add up to less than
# its timeout, so a slow run fails with the driver's story (_why) instead of being cut off by pytest-timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # multi-node clusters

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = ["--num-frames", "4", "--height", "32", "--width", "32", "--steps", "1", "--torch-threads", "1"]
ROWS = 10


def _env(s3_server):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(s3_server, PYTHONPATH=ROOT, HF_HUB_OFFLINE="1", RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0")
    return token_env(env)


@pytest.fixture(scope="module")
def cluster(s3_server):
    env = _env(s3_server)  # one token for the cluster and its drivers
    with MultiNode(env, workers=2, cpus=3) as c:
        c.env, c.alive = env, [0, 1]
        yield c


def _why(err: str) -> str:
    """A failed run's story for the assertion message: every distinct line of the whole stderr that names an
    error, a failure or a restart (Ray's worker tracebacks fill the tail), then the tail itself."""
    keys = ("error", "Error", "failed", "restart", "died", "killed")
    story = list(dict.fromkeys(ln.strip()[:300] for ln in err.splitlines() if any(k in ln for k in keys) and "File \"" not in ln))
    return "\n".join(story[:60]) + "\n--- tail ---\n" + err[-2000:]


def _finish(driver, timeout: float) -> tuple[str, str]:
    """The driver's (stdout, stderr) once it exits; a driver still running after `timeout` s is killed and its
    output kept, so the assertion on its exit code shows why it hung."""
    try:
        return driver.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        driver.kill()
        out, err = driver.communicate()
        return out, f"(still running after {timeout:.0f} s: killed)\n{err}"


def _kill_and_replace(cluster) -> None:
    cluster.send(f"kill {cluster.alive.pop(0)}")
    cluster.send("add")
    cluster.alive.append(max(cluster.alive) + 1)


def test_batch_job_survives_losing_a_worker_node(cluster, tiny_models, s3_env):
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.mkdir("node-loss")
    fs.pipe_file("node-loss/prompts.csv", pd.DataFrame({"prompt": [f"prompt {i}" for i in range(ROWS)]}).to_csv(index=False).encode())
    driver = subprocess.Popen(
        [sys.executable, "-m", "jobs.animate", "--prompts", "s3://node-loss/prompts.csv", "--base", str(tiny_models / "base"),
         "--motion-module", str(tiny_models / "motion_module.safetensors"), "--out", "s3://node-loss/run",
         "--workers", "2", "--cpus-per-worker", "2", "--batch-size", "1", *SMALL],
        env={**cluster.env, "RAY_ADDRESS": cluster.address}, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not fs.glob("node-loss/run/videos/**/*.mp4") and driver.poll() is None and time.time() < deadline:
        time.sleep(0.5)
        fs.invalidate_cache()
    assert driver.poll() is None, driver.communicate()[1][-3000:]
    written_before = len(fs.glob("node-loss/run/videos/**/*.mp4"))
    _kill_and_replace(cluster)  # mid-job: the first video written, most rows still queued on both actors
    try:
        out, err = _finish(driver, 300)
    finally:
        driver.kill()
    assert driver.returncode == 0, _why(err)
    assert "on 3 node(s)" in out and written_before < ROWS - 2  # the lost node still had work
    fs.invalidate_cache()
    meta = pd.concat(pd.read_parquet(io.BytesIO(fs.cat_file(p))) for p in fs.glob("node-loss/run/metadata/*.parquet"))
    assert len(meta) == ROWS and meta.id.is_unique and (meta.status == "ok").all(), meta[["id", "status", "error"]]
    assert sorted(meta.prompt) == sorted(f"prompt {i}" for i in range(ROWS))
    assert len(fs.glob("node-loss/run/videos/**/*.mp4")) == ROWS
    assert not [p for p in fs.find("node-loss/run") if ".tmp" in p or ".partial" in p]
    assert fs.glob("node-loss/run/.staging/*-base")  # driver-only models went through shared storage


def test_training_continues_from_its_checkpoint_after_losing_a_node(cluster, tiny_models, s3_env):
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.mkdir("node-loss-train")
    rows = ["videoid,contentUrl,name,duration,page_dir"]
    for i, name in enumerate(["bikes.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4"]):
        fs.put_file(real_video(name), f"node-loss-train/videos/{name}")
        rows.append(f'{i},s3://node-loss-train/videos/{name},"clip {i}",PT00H00M10S,misc')
    fs.pipe_file("node-loss-train/webvid.csv", ("\n".join(rows) + "\n").encode())
    run = "node-loss-train/runs/mm"
    driver = subprocess.Popen(
        [sys.executable, "-m", "jobs.train", "--data", "s3://node-loss-train/webvid.csv", "--base", str(tiny_models / "base"),
         "--storage", "s3://node-loss-train/runs", "--name", "mm", "--workers", "2", "--cpus-per-worker", "2",
         "--decoders", "1", "--decode-cpus", "0.25", "--max-failures", "2", "--num-frames", "8", "--size", "32",
         "--batch-size", "1", "--max-steps", "4", "--checkpoint-every", "2", "--validate-every", "0"],
        env={**cluster.env, "RAY_ADDRESS": cluster.address}, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while driver.poll() is None and time.time() < deadline:  # committed: listed in Ray Train's snapshot
            fs.invalidate_cache()
            snapshot = f"{run}/checkpoint_manager_snapshot.json"
            if fs.exists(snapshot) and "checkpoint-000002" in fs.cat_file(snapshot).decode():
                break
            time.sleep(0.5)
        assert driver.poll() is None, driver.communicate()[1][-3000:]
        _kill_and_replace(cluster)
        killed_at = time.time()
        out, err = _finish(driver, 300)
    finally:
        driver.kill()
    assert driver.returncode == 0, _why(err)
    assert "trained 4 steps" in out and "on 3 node(s)" in out
    # the cluster's workers got the driver's logging environment (ray_session.worker_env): no Ray Data
    # per-epoch lines from the split coordinator, no optional-dependency notices from transformers
    assert "Starting execution of Dataset" not in err and "torchvision" not in err, _why(err)
    fs.invalidate_cache()
    lines = [json.loads(x) for x in fs.cat_file(f"{run}/metrics.jsonl").decode().splitlines() if x.strip()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]  # every step once: resumed, not restarted
    times = {r["step"]: r["time"] for r in lines}
    assert times[2] < killed_at  # steps 1-2 ran before the loss, and were not run again after it
    assert fs.exists(f"{run}/checkpoint-000004/training_state.pt")
