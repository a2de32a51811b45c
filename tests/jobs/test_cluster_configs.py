"""The shipped cluster files and example job configs: they parse, name modules that exist, ask for
GPUs where GPU work runs, agree on one image and one runtime environment, and hold only known keys."""

import glob
import importlib.util
import os

import pytest
import yaml

from jobs.config import build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
JOBS = ("animate", "train", "evaluate", "ingest")


def _load(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return yaml.safe_load(f)


def _job_classes(job):
    if job == "animate":
        from pipelines.animate.config import AnimateConfig
        return AnimateConfig
    if job == "train":
        from animatediff_core.training.recipe import TrainConfig
        from pipelines.train.config import TrainRun
        return (TrainRun, TrainConfig)
    if job == "ingest":
        from pipelines.train.config import IngestRun
        return IngestRun
    if job == "evaluate":
        from pipelines.evaluate.config import EvaluateConfig
        return EvaluateConfig
    raise KeyError(job)


def _known_keys(job):
    parser = build_parser(_job_classes(job), "")
    return {a.dest for a in parser._actions}, parser


@pytest.mark.parametrize("job", JOBS)
def test_example_job_config_keys_are_known(job):
    known, parser = _known_keys(job)
    data = _load("jobs", "configs", f"{job}.yaml")
    if known is not None:
        assert set(data) <= known, set(data) - known
    shared = data.get("out") or data.get("storage")
    assert shared.startswith("s3://")  # multi-node: outputs on shared storage


def test_example_configs_are_installed_with_the_package():
    py = _load_toml()
    assert "configs/*" in py["tool"]["setuptools"]["package-data"]["jobs"]


def _load_toml():
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_rayjob_manifests():
    runtime_env = _load("cluster", "runtime_env.yaml")
    launcher = _load("cluster", "launcher-aws.yaml")
    image = launcher["docker"]["image"]
    found = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(ROOT, "cluster", "k8s", "*.yaml")))
    assert found == sorted(JOBS)
    for job in JOBS:
        m = _load("cluster", "k8s", f"{job}.yaml")
        spec = m["spec"]
        assert m["kind"] == "RayJob" and spec["rayClusterSpec"]["rayVersion"] == "2.60.0"
        module = spec["entrypoint"].split()[2]
        assert spec["entrypoint"] == f"python -m jobs.{job} --config /config/job.yaml"
        assert importlib.util.find_spec(module) is not None, module
        assert yaml.safe_load(spec["runtimeEnvYAML"]) == runtime_env, job
        head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
        assert head["volumes"][0]["configMap"]["name"] == m["metadata"]["name"]
        assert head["containers"][0]["volumeMounts"][0]["mountPath"] == "/config"
        groups = spec["rayClusterSpec"]["workerGroupSpecs"]
        containers = [c for g in groups for c in g["template"]["spec"]["containers"]] + head["containers"]
        assert {c["image"] for c in containers} == {image}, job
        for g in groups:
            assert g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
            assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    assert spec["rayClusterSpec"]["enableInTreeAutoscaling"] is True


def test_local_runtime_env_is_the_cluster_one_without_autoscaling():
    cluster, local = _load("cluster", "runtime_env.yaml"), _load("cluster", "runtime_env_local.yaml")
    assert cluster["env_vars"].pop("ANIMATEDIFF_AUTOSCALING") == "1" and "ANIMATEDIFF_AUTOSCALING" not in local["env_vars"]
    assert local == cluster


def test_launcher_has_a_cpu_head_and_autoscaling_gpu_workers():
    launcher = _load("cluster", "launcher-aws.yaml")
    types_ = launcher["available_node_types"]
    assert "GPU" not in types_[launcher["head_node_type"]]["resources"]
    gpu = types_["gpu_worker"]
    assert gpu["resources"]["GPU"] >= 1 and gpu["min_workers"] == 0 < gpu["max_workers"]
    with open(os.path.join(ROOT, "cluster", "Dockerfile")) as f:
        assert launcher["docker"]["image"] in f.read()


@pytest.mark.parametrize("job", ["animate", "train", "ingest"])
def test_misspelled_key_fails_before_ray(job, tmp_path, capsys, monkeypatch):
    import importlib

    import pipelines.ray_session

    monkeypatch.setattr(pipelines.ray_session, "init_ray", lambda **kw: pytest.fail("Ray started"))
    data = _load("jobs", "configs", f"{job}.yaml")
    data["nmu_frames"] = 8
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(SystemExit) as e:
        importlib.import_module(f"jobs.{job}").main(["--config", str(tmp_path / "bad.yaml")])
    assert e.value.code == 2 and "unknown key(s) nmu_frames" in capsys.readouterr().err


def test_wrong_type_fails_naming_the_key(tmp_path, capsys):
    from jobs.animate import main

    data = {**_load("jobs", "configs", "animate.yaml"), "steps": "many"}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(SystemExit) as e:
        main(["--config", str(tmp_path / "bad.yaml")])
    assert e.value.code == 2 and "steps" in capsys.readouterr().err


def test_speed_flags_become_the_actors_options_and_bad_values_name_the_fix(capsys):
    from animatediff_core.models.speed import SpeedOptions
    from jobs.animate import main
    from jobs.config import parse_config
    from pipelines.animate.config import AnimateConfig

    need = ["--prompts", "p.csv", "--base", "b", "--motion-module", "m"]
    cfg, _ = parse_config(AnimateConfig, need + ["--fuse-qkv", "--channels-last", "--vae-chunk", "64"])
    assert cfg.speed == SpeedOptions(fuse_qkv=True, channels_last=True, vae_chunk=64)
    assert parse_config(AnimateConfig, need)[0].speed == SpeedOptions()  # all off by default
    with pytest.raises(SystemExit) as e:
        main(need + ["--compile-cache", "/tmp/cache"])
    assert e.value.code == 2 and "add --compile or drop --compile-cache" in capsys.readouterr().err
    assert parse_config(AnimateConfig, need + ["--torch-threads", "2", "--streams", "2"])[0].streams == 2
    with pytest.raises(SystemExit) as e:
        main(need + ["--torch-threads", "2", "--streams", "3"])
    assert e.value.code == 2 and "set --torch-threads to a multiple of --streams" in capsys.readouterr().err
