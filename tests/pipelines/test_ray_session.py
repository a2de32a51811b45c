"""Multi-node rules without a cluster: worker ranges, shared-storage checks, staging decisions, redaction."""

import os

import pytest
import yaml

from animatediff_core.errors import ConfigError
from animatediff_core.redact import redact_text, redact_uri, redact_value
from pipelines import ray_session
from pipelines.ray_session import is_shared, require_shared, stage, worker_range


def test_worker_range():
    assert worker_range(4) == (4, 4) and worker_range("4") == (4, 4) and worker_range("2-16") == (2, 16)
    for bad in ("0", "8-2", "two", "2-", "-3"):
        with pytest.raises(ConfigError, match="workers"):
            worker_range(bad)


def test_workers_flag_and_yaml_take_a_range(tmp_path):
    from jobs.config import dump_config, parse_config
    from pipelines.animate.config import AnimateConfig

    args = ["--prompts", "p.csv", "--base", "b", "--motion-module", "m"]
    cfg, _ = parse_config(AnimateConfig, [*args, "--workers", "2-16"])
    assert cfg.actors.workers == "2-16" and yaml.safe_load(dump_config(cfg))["workers"] == "2-16"
    (tmp_path / "j.yaml").write_text("workers: 3\n")
    cfg, _ = parse_config(AnimateConfig, [*args, "--config", str(tmp_path / "j.yaml")])
    assert worker_range(cfg.actors.workers) == (3, 3)
    with pytest.raises(SystemExit):
        parse_config(AnimateConfig, [*args, "--workers", "16-2"])


def test_local_outputs_refused_on_multi_node(tmp_path, monkeypatch):
    monkeypatch.delenv("ANIMATEDIFF_SHARED_PATHS", raising=False)
    local = str(tmp_path / "out")
    require_shared(local, "--out", nodes=1)  # one node: a local folder is fine
    require_shared("s3://bucket/out", "--out", nodes=3)
    with pytest.raises(ConfigError, match=r"^--out .*: a local path on a cluster of 3 node\(s\);.*object store"):
        require_shared(local, "--out", nodes=3)
    monkeypatch.setenv("ANIMATEDIFF_AUTOSCALING", "1")  # one node now, GPU nodes later
    with pytest.raises(ConfigError, match="autoscaling"):
        require_shared(local, "--out", nodes=1)
    monkeypatch.delenv("ANIMATEDIFF_AUTOSCALING")
    monkeypatch.setenv("ANIMATEDIFF_SHARED_PATHS", f"/nonexistent:{tmp_path}")
    assert is_shared(local)
    monkeypatch.setattr(ray_session, "_mount_type", lambda path: "nfs4")
    monkeypatch.delenv("ANIMATEDIFF_SHARED_PATHS")
    assert is_shared(local)


def test_driver_only_models_are_staged_once(tiny_models, s3_env, monkeypatch):
    import s3fs

    monkeypatch.delenv("ANIMATEDIFF_SHARED_PATHS", raising=False)
    monkeypatch.delenv("ANIMATEDIFF_AUTOSCALING", raising=False)
    s3fs.S3FileSystem().mkdir("stage-bucket")
    base, mm = str(tiny_models / "base"), str(tiny_models / "motion_module.safetensors")
    assert stage(base, "--base", "s3://stage-bucket/run", nodes=1) == base
    assert stage("s3://x/base", "--base", "s3://stage-bucket/run", nodes=4) == "s3://x/base"
    assert stage("org/model", "--base", "s3://stage-bucket/run", nodes=4) == "org/model"  # a Hub id
    staged = stage(base, "--base", "s3://stage-bucket/run", nodes=2)
    assert staged.startswith("s3://stage-bucket/run/.staging/") and staged.endswith("-base")
    from animatediff_core.models.pipeline import read_unet_config

    assert read_unet_config(staged) == read_unet_config(base)
    copied = stage(mm, "--motion-module", "s3://stage-bucket/run", nodes=2)
    assert s3fs.S3FileSystem().size(copied[5:]) == os.path.getsize(mm)
    calls = []
    monkeypatch.setattr("animatediff_core.io.storage.upload_dir", lambda *a: calls.append(a))
    assert stage(base, "--base", "s3://stage-bucket/run", nodes=2) == staged and not calls  # staged once


def test_redaction():
    assert redact_uri("s3://AKIA:secret@bucket/x.mp4") == "s3://bucket/x.mp4"
    assert redact_uri("https://h/x.ckpt?X-Amz-Signature=abc&X-Amz-Credential=k&v=2") == "https://h/x.ckpt?v=2"
    assert redact_uri("https://h/x?token=t&sig=s") == "https://h/x"
    assert redact_uri("/plain/path") == "/plain/path"
    assert redact_text("loading https://u:p@host/m?token=1 now") == "loading https://host/m now"
    assert redact_value("hf_token", "hf_abc") == "***" and redact_value("out", ["s3://a:b@c/d"]) == ["s3://c/d"]
    assert redact_value("aws_secret_access_key", "x") == "***" and redact_value("tokenizer", "clip") == "clip"


def test_saved_config_and_logs_hold_no_secrets(capsys):
    import logging

    from jobs.config import dump_config, setup_logging
    from pipelines.animate.config import AnimateConfig

    cfg = AnimateConfig(prompts=["https://h/p.csv?token=SECRET1"], base="b", motion_module=["m"], out="s3://KEY:SECRET2@bucket/run")
    saved = dump_config(cfg)
    assert "SECRET" not in saved and "s3://bucket/run" in saved
    setup_logging("INFO")
    logging.getLogger("jobs.test").info("config: %s", cfg)
    assert "SECRET" not in capsys.readouterr().err


def test_metadata_uris_hold_no_secrets(tmp_path):
    import pandas as pd

    from pipelines.animate.layout import OutputLayout, new_run_id
    from pipelines.animate.report import write_shard

    layout = OutputLayout(str(tmp_path))
    row = {"id": "a", "prompt": "p", "status": "ok", "video_uri": "s3://KEY:SECRET@bucket/v.mp4",
           "checkpoint_uri": "https://host/c.safetensors?X-Amz-Signature=SECRET&X-Amz-Credential=SECRET"}
    write_shard(pd.DataFrame([row]), layout, new_run_id())
    meta = pd.concat(pd.read_parquet(p) for p in (tmp_path / "metadata").glob("*.parquet"))
    assert meta.video_uri.tolist() == ["s3://bucket/v.mp4"] and meta.checkpoint_uri.tolist() == ["https://host/c.safetensors"]


def test_a_clusters_workers_get_the_drivers_logging_environment_less_what_the_job_sets(monkeypatch):
    from jobs.config import setup_logging

    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    for name in ray_session.log_env("INFO"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "warning")  # the user's own setting wins, and travels
    setup_logging("INFO")
    env = ray_session.worker_env()
    assert env["ANIMATEDIFF_LOG_LEVEL"] == "INFO" and env["RAY_DATA_LOG_LEVEL"] == "WARNING"
    assert env["TRANSFORMERS_VERBOSITY"] == "warning" and env["TOKENIZERS_PARALLELISM"] == "false"
    # a job submitted with cluster/runtime_env.yaml sets TOKENIZERS_PARALLELISM itself: Ray refuses it twice
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", '{"runtime_env": {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}}')
    assert "TOKENIZERS_PARALLELISM" not in ray_session.worker_env() and "RAY_DATA_LOG_LEVEL" in ray_session.worker_env()
    monkeypatch.setenv("ANIMATEDIFF_LOG_LEVEL", "DEBUG")  # --log-level DEBUG: Ray Data's lines are not held back
    assert ray_session.worker_env()["ANIMATEDIFF_LOG_LEVEL"] == "DEBUG" and "RAY_DATA_LOG_LEVEL" not in ray_session.worker_env()


def test_every_actor_of_a_pool_gets_rows_of_a_single_block(ray_session):
    """A one-file table or a from_pandas frame is one block, and Ray Data never cuts a block for an actor pool:
    before ActorOptions.map cut it (into an even share per actor where the rows are fewer than actors x
    batch size), one actor ran every row however many `--workers` asked for."""
    import pandas as pd
    import ray.data

    from pipelines.ray_session import ActorOptions

    class Where:  # which actor ran each row, slowly enough (0.3 s a row) that both actors are up before the rows run out
        def __call__(self, batch):
            import time

            time.sleep(0.3 * len(batch))
            return batch.assign(pid=os.getpid())

    rows = ray.data.from_pandas(pd.DataFrame({"x": range(12)}))
    assert rows.num_blocks() == 1
    done = ActorOptions(workers=2, cpus_per_worker=0.5).map(rows, Where, {}, batch_size=8, rows=12).to_pandas()
    assert sorted(done["x"]) == list(range(12))
    assert sorted(done.groupby("pid").size()) == [6, 6]
