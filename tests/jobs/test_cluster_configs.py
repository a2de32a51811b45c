"""The shipped cluster configs parse, and their job config has only keys the job knows."""

import os

import yaml

from jobs.config import build_parser, load_yaml
from pipelines.animate.job import AnimateConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_example_job_config_keys_are_known():
    parser = build_parser(AnimateConfig, "")
    data = load_yaml(os.path.join(ROOT, "cluster", "animate-sd15.yaml"), [a.dest for a in parser._actions], parser)
    assert data["num_gpus_per_worker"] == 1 and data["out"].startswith("s3://")


def test_rayjob_manifest_runs_the_entrypoint():
    with open(os.path.join(ROOT, "cluster", "rayjob-animate.yaml")) as f:
        job = yaml.safe_load(f)
    assert job["kind"] == "RayJob" and job["spec"]["entrypoint"].startswith("python -m jobs.animate")
