"""Starting or joining Ray, and what the cluster has: one place for every job."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def init_ray(**kwargs) -> None:
    """Join the cluster named by RAY_ADDRESS (`ray job submit` sets it), else start an embedded one
    (`kwargs` go to `ray.init`, e.g. include_dashboard=False where nothing needs it)."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**kwargs)
        log.info("joined Ray cluster at %s", os.environ["RAY_ADDRESS"])
    else:
        ray.init(address="local", **kwargs)  # "local": never join a `ray start` cluster left on this machine
        log.info("started an embedded Ray (%s CPUs, %s GPUs)", *(ray.cluster_resources().get(k, 0) for k in ("CPU", "GPU")))


def gpu_count() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def has_gpus() -> bool:
    """True when the cluster has at least one whole GPU (a worker asks for one each)."""
    return gpu_count() >= 1
