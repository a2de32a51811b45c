"""Starting or joining Ray, and what the cluster has: one place for every job.

Multi-node rules (checked here, after `init_ray`, by every job), on a cluster of more than one node or
one that may add nodes ($ANIMATEDIFF_AUTOSCALING, set by cluster/runtime_env.yaml):
- outputs (`--out`, `--storage`) and data tables must be where every node can reach them: an object
  store URI or a shared mount; a local path on a cluster of more than one node is refused;
- model files (`--base`, `--motion-module`, checkpoints) that are local to the driver are staged:
  copied once to `STAGING/<name>-<hash>` under the (shared) output URI, and workers read that copy.
A local path counts as shared when it lies on a network filesystem (NFS, CIFS, Lustre, CephFS,
FUSE mounts such as gcsfuse or s3fs) or under a prefix listed in $ANIMATEDIFF_SHARED_PATHS
(`:`-separated), for mounts this check cannot recognise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass

from animatediff_core.configs import check_fields, need, option
from animatediff_core.device import PRECISIONS
from animatediff_core.errors import ConfigError
from animatediff_core.io import storage

log = logging.getLogger(__name__)

NETWORK_FS = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "ceph", "glusterfs", "gpfs", "beegfs", "9p", "virtiofs", "fuse")
STAGING = ".staging"


@dataclass(frozen=True)
class ClusterInfo:
    """Where the job runs: `job_id` and `dashboard` are set when it joined a cluster (RAY_ADDRESS)."""

    nodes: int
    job_id: str | None = None
    dashboard: str | None = None
    submission_id: str | None = None  # `ray job submit`'s id (raysubmit_...), for `ray job logs/stop`

    def banner(self) -> str:
        submitted = f" (submission {self.submission_id})" if self.submission_id else ""
        return f"ray job {self.job_id}{submitted} on {self.nodes} node(s); dashboard: {self.dashboard or 'n/a'}"


def debug() -> bool:
    """Whether the job runs at --log-level DEBUG (jobs/config.py setup_logging sets the variable)."""
    return os.environ.get("ANIMATEDIFF_LOG_LEVEL") == "DEBUG"


def log_env(level: str) -> dict[str, str]:
    """The environment that keeps library chatter off the terminal below DEBUG (and lets it through at DEBUG),
    for the driver and every worker of the job (jobs/config.py setup_logging sets it, `init_ray` forwards it)."""
    verbose = level == "DEBUG"
    env = {"ANIMATEDIFF_LOG_LEVEL": level, "TOKENIZERS_PARALLELISM": "false",
           # transformers' and diffusers' own handlers, set from these at import
           "TRANSFORMERS_VERBOSITY": "debug" if verbose else "error", "DIFFUSERS_VERBOSITY": "debug" if verbose else "error"}
    if not verbose:
        env.update(HF_HUB_DISABLE_PROGRESS_BARS="1",  # also transformers' and diffusers' loading bars
                   RAY_DATA_LOG_LEVEL="WARNING",  # Ray Data's per-dataset INFO lines (its log file too)
                   PYTHONWARNINGS="ignore::DeprecationWarning")  # Ray's own, printed by its actors
    return env


def worker_env() -> dict[str, str]:
    """`log_env` as this driver has it, for a cluster's workers (they do not inherit the driver's environment),
    less what the submitted job's runtime env sets already (Ray refuses a variable set twice)."""
    env = {k: os.environ[k] for k in log_env(os.environ.get("ANIMATEDIFF_LOG_LEVEL", "INFO")) if k in os.environ}
    job_env = (_job_config().get("runtime_env") or {}).get("env_vars") or {}
    return {k: v for k, v in env.items() if k not in job_env}


def init_ray(**kwargs) -> ClusterInfo:
    """Join the cluster named by RAY_ADDRESS (`ray job submit` sets it), else start an embedded one.
    Ray's own progress blocks and start-up lines are off below --log-level DEBUG (the job prints its own
    progress: pipelines/progress.py)."""
    import ray
    import ray.data

    # Ray Data's bars off below DEBUG (the job prints its own progress): left on, the actors that run a
    # dataset outside the driver (Ray Train's split coordinator) print ~40 bar lines into a log that is
    # not a terminal; off, they print one line saying so.
    ray.data.DataContext.get_current().enable_progress_bars = debug()
    if ray.is_initialized():
        return ClusterInfo(count_nodes())
    kwargs.setdefault("logging_level", logging.DEBUG if debug() else logging.WARNING)
    if os.environ.get("RAY_ADDRESS"):
        kwargs.pop("include_dashboard", None)
        if env := worker_env():
            kwargs.setdefault("runtime_env", {"env_vars": env})
        ctx = ray.init(**kwargs)
        info = ClusterInfo(count_nodes(), ray.get_runtime_context().get_job_id(), _dashboard_url(ctx), _submission_id())
        log.info("joined Ray cluster at %s: %s", os.environ["RAY_ADDRESS"], info.banner())
        return info
    # Ray starts its workers at niceness 15, so on a machine shared with other work the job's actors lose
    # the CPU to every normal process (bench/README.md: 30% slower per video under one busy process). An
    # embedded Ray's workers are the job itself: they run at the driver's priority.
    os.environ.setdefault("RAY_worker_niceness", "0")
    # "local": a new embedded instance, never a `ray start` cluster left on this machine
    ray.init(address="local", include_dashboard=kwargs.pop("include_dashboard", False), **kwargs)
    log.info("started an embedded Ray (%s CPUs, %s GPUs)", *(ray.cluster_resources().get(k, 0) for k in ("CPU", "GPU")))
    return ClusterInfo(1)


def _dashboard_url(ctx) -> str | None:
    url = getattr(ctx, "dashboard_url", None) or ""
    if not url and os.environ["RAY_ADDRESS"].startswith("http"):
        url = os.environ["RAY_ADDRESS"]
    return (url if url.startswith("http") else f"http://{url}") if url else None


def _submission_id() -> str | None:
    """The Jobs API's id of this driver: in the job config its supervisor hands the entrypoint."""
    return (_job_config().get("metadata") or {}).get("job_submission_id")


def _job_config() -> dict:
    """The job config the Jobs API's supervisor hands its entrypoint (runtime env, metadata); {} elsewhere."""
    try:
        config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))
    except ValueError:
        return {}
    return config if isinstance(config, dict) else {}


def gpu_count() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def has_gpus() -> bool:
    """True when the cluster has at least one whole GPU (a worker asks for one each)."""
    return gpu_count() >= 1


def count_nodes() -> int:
    """Alive nodes of the cluster now (see `multi_node` for the ones it may add)."""
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive"))


def multi_node(nodes: int) -> bool:
    """More than one node now, or later: where $ANIMATEDIFF_AUTOSCALING is set (cluster/runtime_env.yaml
    sets it), a cluster with only its head now may add GPU nodes once the job queues work."""
    return nodes > 1 or os.environ.get("ANIMATEDIFF_AUTOSCALING", "") not in ("", "0")


def worker_range(value: int | str, name: str = "workers") -> tuple[int, int]:
    """`4` -> (4, 4); `"2-16"` -> (2, 16): a fixed or an autoscaling actor pool."""
    text = str(value).strip()
    lo, sep, hi = text.partition("-")
    try:
        low, high = int(lo), int(hi) if sep else int(lo)
    except ValueError:
        raise ConfigError(f"{name}: expected a count (4) or a range (2-16), found {value!r}") from None
    need(1 <= low <= high, f"{name}: expected 1 <= min <= max, found {value!r}")
    return low, high


@dataclass(frozen=True, kw_only=True)
class ActorOptions:
    """How a stage's actor pool is sized and what each actor holds: the options every actor pool shares
    (the batch job's generation, evaluation's stills and metrics). Each actor loads its models once
    (`animatediff_core.device.setup_actor(precision, threads)`), so these are per-actor, not per-row."""

    workers: int | str = option(1, help="actors, each holding one loaded pipeline: a count (4) or a range (2-16) "
                                        "for an autoscaling pool that grows with the queue")
    num_gpus_per_worker: float | None = option(None, low=0, help="default: 1 if the cluster has GPUs, else 0")
    cpus_per_worker: float = option(1.0, help="CPU actors only; leave a CPU for reading")
    torch_threads: int | None = option(None, low=1, help="CPU actors: torch threads (default: cpus_per_worker)")
    precision: str = option("auto", choices=PRECISIONS, help="weights' precision (auto: fp16 on GPU, fp32 on CPU)")

    def __post_init__(self):
        check_fields(self)
        worker_range(self.workers)
        need(self.cpus_per_worker > 0, f"cpus_per_worker must be > 0, got {self.cpus_per_worker}")

    @property
    def threads(self) -> int:
        return self.torch_threads or max(1, int(self.cpus_per_worker))

    def gpus(self) -> float:
        """GPUs per actor: the option, else one where the cluster has GPUs (Ray must be initialized)."""
        return self.num_gpus_per_worker if self.num_gpus_per_worker is not None else (1.0 if has_gpus() else 0.0)

    def map(self, ds, stage, kwargs: dict, batch_size: int, rows: int):
        """`ds` (`rows` rows) through `stage(**kwargs)` in this actor pool, on pandas batches of up to
        `batch_size` rows, one batch per actor call.

        Ray Data hands an actor whole blocks (it joins small ones up to `batch_size` rows, never cuts a big
        one), so a single block (a table read from one file, a `from_pandas` frame) would reach one actor
        however many the pool holds. The rows are cut into blocks of at most `batch_size`, and of at most
        an even share per actor where the rows are fewer than actors x `batch_size`; each actor takes one
        call at a time, so the next block goes to whichever actor is free (none queues a second while
        another idles).

        Ray Data's actor pools default to max_restarts=-1 and max_task_retries=-1: a dead actor (node lost,
        OOM-killed) is restarted and its in-flight batch retried, so stages must be retry-safe."""
        import ray.data

        low, high = worker_range(self.workers)
        per_call = max(1, min(batch_size, -(-rows // high)))
        if high > 1 and per_call < batch_size:
            log.info("%d row(s) over up to %d actor(s): %d per actor call instead of %d, so that every actor gets rows",
                     rows, high, per_call, batch_size)
        gpus = self.gpus()
        return ds.repartition(target_num_rows_per_block=per_call).map_batches(
            stage, fn_constructor_kwargs=kwargs, batch_format="pandas", batch_size=per_call,
            compute=ray.data.ActorPoolStrategy(min_size=low, max_size=high, max_tasks_in_flight_per_actor=1),
            num_gpus=gpus or None, num_cpus=1 if gpus else self.cpus_per_worker)


def _mount_type(path: str) -> str:
    """The filesystem type of the mount holding `path` (Linux /proc/mounts; "" elsewhere)."""
    best, kind = "", ""
    try:
        with open("/proc/mounts") as f:
            for line in f:
                _, mount, fstype, *_ = line.split()
                mount = mount.replace("\\040", " ")
                if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
                    best, kind = mount, fstype
    except OSError:
        pass
    return kind


def is_shared(uri: str) -> bool:
    """True for object-store URIs and for local paths on a shared mount (see the module docstring)."""
    if not storage.is_local(uri):
        return True
    path = os.path.realpath(storage.fs_and_path(uri)[1])
    prefixes = [p for p in os.environ.get("ANIMATEDIFF_SHARED_PATHS", "").split(":") if p]
    if any(path == p.rstrip("/") or path.startswith(p.rstrip("/") + "/") for p in prefixes):
        return True
    kind = _mount_type(path)
    return kind.split(".")[0] in NETWORK_FS


def require_shared(uri: str, flag: str, nodes: int) -> None:
    """Refuse a local output or data path on a multi-node cluster: workers on other nodes cannot reach it."""
    if multi_node(nodes) and not is_shared(uri):
        more = " (autoscaling: it may add more)" if nodes == 1 else ""
        raise ConfigError(f"{flag} {uri}: a local path on a cluster of {nodes} node(s){more}; workers on other nodes "
                          "cannot reach it: use an object store URI (s3://, gs://) or a shared mount "
                          "(or list its prefix in ANIMATEDIFF_SHARED_PATHS)")


def stage(uri: str | None, flag: str, root: str, nodes: int) -> str | None:
    """A URI every node can read for model file(s) `uri`: itself when it is already shared (or the
    cluster has one node), else a copy under `root/.staging/` made once (the name carries the source
    path, size and mtime, so a changed file is staged again)."""
    if uri is None or not multi_node(nodes) or is_shared(uri):
        return uri
    path = storage.fs_and_path(uri)[1]
    if not os.path.exists(path):  # a Hub id (org/name): each node resolves it from the Hub
        return uri
    files = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs] if os.path.isdir(path) else [path]
    stamp = "|".join(f"{os.path.relpath(f, path)}:{os.path.getsize(f)}:{os.path.getmtime(f)}" for f in sorted(files))
    key = hashlib.sha256(f"{os.path.realpath(path)}|{stamp}".encode()).hexdigest()[:12]
    dest = storage.join(root, STAGING, f"{key}-{os.path.basename(path.rstrip('/'))}")
    done = storage.join(root, STAGING, f"{key}.done")
    if not storage.exists(done):
        log.info("staging %s %s to %s (a local path on a multi-node cluster)", flag, uri, dest)
        if os.path.isdir(path):
            storage.upload_dir(path, dest)
        else:
            with open(path, "rb") as f:
                storage.write_bytes_atomic(dest, f.read())
        storage.write_bytes_atomic(done, b"")
    return dest
