"""The batch job submitted through Ray's Jobs API to a real Ray head on 127.0.0.1 (`ray start --head`
with the dashboard and job server on free ports), then rerun from its saved job.yaml.

Own module: the head is a separate cluster started by `ray start` in subprocesses; this test never
calls `ray.init`, so the session's shared Ray (`ray_session`) is left alone."""

import glob
import os
import sys
import time

import pandas as pd
import yaml

from helpers_cluster import RayHead

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


def _metadata(out):
    return pd.concat(pd.read_parquet(p) for p in glob.glob(os.path.join(out, "metadata", "*.parquet")))


def test_submit_through_the_jobs_api_and_rerun_from_saved_config(tiny_models, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    prompts, out = tmp_path / "prompts.csv", str(tmp_path / "out")
    pd.DataFrame({"prompt": ["a cat", "a dog", "a bird"]}).to_csv(prompts, index=False)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONPATH=ROOT, HF_HUB_OFFLINE="1", RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0",
               PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))  # `python` = this venv's
    with open(os.path.join(ROOT, "cluster", "runtime_env.yaml")) as f:
        runtime_env = {**yaml.safe_load(f), "working_dir": ROOT}  # = ray job submit --working-dir . --runtime-env ...
    with RayHead(env) as head:
        client = JobSubmissionClient(head.dashboard, headers=head.headers)
        job = client.submit_job(
            entrypoint=f"python -m jobs.animate --prompts {prompts} --base {tiny_models / 'base'} "
                       f"--motion-module {tiny_models / 'motion_adapter'} --out {out} {SMALL}",
            runtime_env=runtime_env)
        status, logs = _wait(client, job), client.get_job_logs(job)
        assert status == JobStatus.SUCCEEDED, logs[-4000:]
        assert f"(submission {job}) on 1 node(s); dashboard: http://127.0.0.1:" in logs and "ray job " in logs
        meta = _metadata(out)
        assert len(meta) == 3 and (meta.status == "ok").all() and meta.id.is_unique
        assert all(os.path.getsize(v) > 0 for v in meta.video_uri)
        saved = yaml.safe_load(open(os.path.join(out, "job.yaml")))
        assert saved["steps"] == 1 and saved["prompts"] == [str(prompts)] and saved["workers"] == "1-2"  # an autoscaling pool
        before = {v: os.path.getmtime(v) for v in meta.video_uri}

        again = client.submit_job(entrypoint=f"python -m jobs.animate --config {out}/job.yaml", runtime_env=runtime_env)
        status = _wait(client, again)
        assert status == JobStatus.SUCCEEDED, client.get_job_logs(again)[-4000:]
    meta = _metadata(out)
    assert len(meta) == 3 and meta.skipped.all() and (meta.status == "ok").all()  # every row reused
    assert {v: os.path.getmtime(v) for v in meta.video_uri} == before
    assert not glob.glob(os.path.join(out, "**", "*.tmp*"), recursive=True)
