"""Losing a worker node mid-job on a real multi-node Ray (ray.cluster_utils.Cluster: a CPU-less head
and two worker nodes, in a subprocess so the session's shared Ray is left alone), outputs on the
local S3 server: the batch job finishes with every row exactly once and no temp files.

The driver-local tiny models are staged through S3 (the cluster has >1 node), as on a real cluster.
After the kill a replacement node joins, as KubeRay or the cluster launcher would add one."""

import io
import os
import subprocess
import sys
import time

import pandas as pd

from helpers_cluster import MultiNode, token_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = ["--num-frames", "4", "--height", "32", "--width", "32", "--steps", "1", "--torch-threads", "1"]
ROWS = 10


def _env(s3_server):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(s3_server, PYTHONPATH=ROOT, HF_HUB_OFFLINE="1", RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0")
    return token_env(env)


def test_batch_job_survives_losing_a_worker_node(tiny_models, s3_server, s3_env):
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.mkdir("node-loss")
    fs.pipe_file("node-loss/prompts.csv", pd.DataFrame({"prompt": [f"prompt {i}" for i in range(ROWS)]}).to_csv(index=False).encode())
    env = _env(s3_server)
    with MultiNode(env, workers=2, cpus=3) as cluster:
        driver = subprocess.Popen(
            [sys.executable, "-m", "jobs.animate", "--prompts", "s3://node-loss/prompts.csv", "--base", str(tiny_models / "base"),
             "--motion-module", str(tiny_models / "motion_module.safetensors"), "--out", "s3://node-loss/run",
             "--workers", "2", "--cpus-per-worker", "2", "--batch-size", "1", *SMALL],
            env={**env, "RAY_ADDRESS": cluster.address}, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 240
        while not fs.glob("node-loss/run/videos/**/*.mp4") and driver.poll() is None and time.time() < deadline:
            time.sleep(0.5)
            fs.invalidate_cache()
        assert driver.poll() is None, driver.communicate()[1][-3000:]
        cluster.send("kill 0")  # mid-job: the first video written, most rows still queued on both actors
        written_before = len(fs.glob("node-loss/run/videos/**/*.mp4"))
        cluster.send("add")
        try:
            out, err = driver.communicate(timeout=300)
        finally:
            driver.kill()
    assert driver.returncode == 0, err[-4000:]
    assert "on 3 node(s)" in out and written_before < ROWS - 2  # the lost node still had work
    fs.invalidate_cache()
    meta = pd.concat(pd.read_parquet(io.BytesIO(fs.cat_file(p))) for p in fs.glob("node-loss/run/metadata/*.parquet"))
    assert len(meta) == ROWS and meta.id.is_unique and (meta.status == "ok").all(), meta[["id", "status", "error"]]
    assert sorted(meta.prompt) == sorted(f"prompt {i}" for i in range(ROWS))
    assert len(fs.glob("node-loss/run/videos/**/*.mp4")) == ROWS
    assert not [p for p in fs.find("node-loss/run") if ".tmp" in p or ".partial" in p]
    assert fs.glob("node-loss/run/.staging/*-base")  # driver-only models went through shared storage
