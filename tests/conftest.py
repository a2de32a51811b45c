"""Shared fixtures: one tiny model set per test session, written by the project's own code."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/helpers_*.py

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models in the test process on one torch thread: more only contend with Ray's workers on 2 cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    from animatediff_core.tiny import write_tiny_models

    return write_tiny_models(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray cluster for the whole test session (each start costs seconds)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}})
    yield ray


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto_server) on 127.0.0.1, the way s3fs tests itself.

    Yields the environment a client process needs (endpoint and dummy credentials).
    """
    import shutil
    import socket
    import subprocess
    import time
    import urllib.request

    exe = shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except Exception:
            time.sleep(0.1)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL_S3": endpoint}
    yield env
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture()
def s3_env(s3_server, monkeypatch):
    """s3_server's environment applied to this process too (s3fs/botocore read AWS_ENDPOINT_URL)."""
    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)
    import fsspec
    import s3fs

    fsspec.config.conf.pop("s3", None)
    s3fs.S3FileSystem.clear_instance_cache()  # an instance cached by an earlier test keeps its endpoint
    yield s3_server
    s3fs.S3FileSystem.clear_instance_cache()
