"""What a failed training run says: the error of the worker that caused it, not a peer's lost connection."""

from ray.train import WorkerGroupError

from pipelines.train.job import _worker_error

GLOO = "Traceback (most recent call last):\n  ...\nRuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:41234"
CAUSE = "Traceback (most recent call last):\n  ...\nOSError: s3://runs/mm/checkpoint-000002/adapter: no such file"


def test_the_worker_whose_error_is_not_a_lost_peer_is_named_first():
    said = _worker_error(WorkerGroupError("2 workers failed", {0: RuntimeError(GLOO), 1: OSError(CAUSE)}))
    assert said.startswith("worker 1: OSError: s3://runs/mm/checkpoint-000002/adapter: no such file")
    assert "2 workers failed" in said and "worker 0: RuntimeError: [../third_party/gloo" in said
    assert "\n" not in said


def test_only_lost_peers_name_the_lowest_rank_and_one_failure_is_its_own_line():
    both = _worker_error(WorkerGroupError("", {1: RuntimeError(GLOO), 0: RuntimeError(GLOO.replace("41234", "5"))}))
    assert both.startswith("worker 0: RuntimeError:") and "[127.0.0.1]:5" in both.split(" (")[0]
    assert _worker_error(WorkerGroupError("", {0: OSError(CAUSE)})) == "OSError: s3://runs/mm/checkpoint-000002/adapter: no such file"
    assert _worker_error(RuntimeError("controller\nValueError: bad")) == "ValueError: bad"
