"""The batch job submitted through Ray's Jobs API to a real Ray head on 127.0.0.1 (`ray start --head`
with the dashboard and job server on free ports) with cluster/runtime_env.yaml and a working_dir,
outputs on the local S3 server; a local --out refused; a rerun from the saved job.yaml.

Own module: the head is a separate cluster started by `ray start` in subprocesses; this test never
calls `ray.init`, so the session's shared Ray (`ray_session`) is left alone."""

import io
import os
import sys
import time

import pandas as pd
import yaml

from helpers_cluster import RayHead

import pytest

pytestmark = pytest.mark.slow  # a Ray head and the Jobs API

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = "--num-frames 4 --height 32 --width 32 --steps 1 --cpus-per-worker 0.5 --torch-threads 1 --workers 1-2"


def _wait(client, job_id, timeout=300):
    from ray.job_submission import JobStatus

    deadline = time.time() + timeout
    while time.time() < deadline:
        status = client.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return status
        time.sleep(1)
    client.stop_job(job_id)
    return "TIMEOUT"


def test_submit_through_the_jobs_api_and_rerun_from_saved_config(tiny_models, s3_server, s3_env, tmp_path):
    import s3fs
    from ray.job_submission import JobStatus, JobSubmissionClient

    fs = s3fs.S3FileSystem()
    fs.mkdir("jobs-api")
    fs.pipe_file("jobs-api/prompts.csv", b"prompt\na cat\na dog\na bird\n")
    out = "s3://jobs-api/run"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(s3_server, PYTHONPATH=ROOT, HF_HUB_OFFLINE="1", RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0",
               PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))  # `python` = this venv's
    with open(os.path.join(ROOT, "cluster", "runtime_env.yaml")) as f:
        runtime_env = {**yaml.safe_load(f), "working_dir": ROOT}  # = ray job submit --working-dir . --runtime-env ...
    models = f"--base {tiny_models / 'base'} --motion-module {tiny_models / 'motion_adapter'}"
    with RayHead(env) as head:
        client = JobSubmissionClient(head.dashboard, headers=head.headers)
        local = client.submit_job(entrypoint=f"python -m jobs.animate --prompts s3://jobs-api/prompts.csv {models} "
                                             f"--out {tmp_path / 'local'} {SMALL}", runtime_env=runtime_env)
        job = client.submit_job(entrypoint=f"python -m jobs.animate --prompts s3://jobs-api/prompts.csv {models} "
                                           f"--out {out} {SMALL}", runtime_env=runtime_env)
        assert _wait(client, local) == JobStatus.FAILED  # an autoscaling cluster: outputs must be shared
        assert f"--out {tmp_path / 'local'}: a local path on a cluster of 1 node(s) (autoscaling" in client.get_job_logs(local)
        status, logs = _wait(client, job), client.get_job_logs(job)
        assert status == JobStatus.SUCCEEDED, logs[-4000:]
        assert f"(submission {job}) on 1 node(s); dashboard: http://127.0.0.1:" in logs and "ray job " in logs
        meta = _metadata(fs)
        assert len(meta) == 3 and (meta.status == "ok").all() and meta.id.is_unique
        saved = yaml.safe_load(fs.cat_file("jobs-api/run/job.yaml"))
        assert saved["steps"] == 1 and saved["workers"] == "1-2"  # an autoscaling pool, saved as given
        assert fs.glob("jobs-api/run/.staging/*-base")  # the driver's local models went through S3
        before = {v: fs.info(v)["LastModified"] for v in meta.video_uri}

        again = client.submit_job(entrypoint=f"python -m jobs.animate --config {out}/job.yaml", runtime_env=runtime_env)
        assert _wait(client, again) == JobStatus.SUCCEEDED, client.get_job_logs(again)[-4000:]
    fs.invalidate_cache()
    meta = _metadata(fs)
    assert len(meta) == 3 and meta.skipped.all() and (meta.status == "ok").all()  # every row reused
    assert {v: fs.info(v)["LastModified"] for v in meta.video_uri} == before
    assert not [p for p in fs.find("jobs-api/run") if ".tmp" in p or ".partial" in p]


def _metadata(fs):
    fs.invalidate_cache()
    return pd.concat(pd.read_parquet(io.BytesIO(fs.cat_file(p))) for p in fs.glob("jobs-api/run/metadata/*.parquet"))
