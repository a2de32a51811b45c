"""Batch animation on Ray Data: prompt tables -> videos across many personalized checkpoints.

    read tables -> expand the sweep (tasks) -> mark finished rows (tasks) -> sort by checkpoint and
    shape -> AnimateStage actor pool (one loaded pipeline per actor, GPU-pinned where GPUs exist)
    -> metadata rows streamed back to the driver.

Actors encode the mp4 themselves: only paths and metadata travel through the object store.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pandas as pd

from animatediff_core import storage
from animatediff_core.generate import GenerationSettings
from animatediff_core.numerics import check_mode
from animatediff_core.personalize import CheckpointSpec
from pipelines.rows import ROW_COLUMNS, SETTING_COLUMNS, expand_rows, fingerprint, video_uri
from pipelines.stage import AnimateStage, METADATA_COLUMNS

SORT_KEYS = ["checkpoint", *SETTING_COLUMNS]


@dataclass
class AnimateConfig:
    prompts: list[str]
    base: str
    motion_module: str
    out: str
    checkpoints: dict[str, CheckpointSpec] = field(default_factory=dict)
    defaults: GenerationSettings = field(default_factory=GenerationSettings)
    workers: int = 1
    num_gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    batch_size: int = 8  # rows per actor call; rows of one checkpoint and shape inside run as one pipeline call
    gif: bool = True
    dtype: str = "auto"  # float16 on GPU, float32 on CPU
    torch_threads: int | None = None  # CPU actors; default: cpus_per_worker
    max_batch: int | None = None  # rows per pipeline call; default 8 on GPU, 1 on CPU
    motion_norm: str | None = None  # "official" | "diffusers" (animatediff_core/numerics.py); None: the module's recorded, else official

    def __post_init__(self):
        if self.motion_norm is not None:
            check_mode(self.motion_norm)  # a ConfigError naming the choices, before any actor starts


def read_prompts(uris: list[str]):
    """Union of prompt tables (Parquet or CSV, any fsspec URI), each normalized to the same columns."""
    import ray.data

    datasets = []
    for uri in uris:
        path, pa_fs = storage.arrow_location(uri)
        reader = ray.data.read_csv if uri.endswith(".csv") else ray.data.read_parquet
        kwargs = {"convert_options": _csv_as_strings()} if uri.endswith(".csv") else {}
        ds = reader(path, filesystem=pa_fs, **kwargs)
        datasets.append(ds.map_batches(_normalize, batch_format="pandas", fn_kwargs={"source": uri}))
    return datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]


def _csv_as_strings():
    import pyarrow.csv as pacsv

    return pacsv.ConvertOptions(strings_can_be_null=True)


PROMPT_COLUMNS = ["id", "prompt", "negative_prompt", "seed", "checkpoint", *SETTING_COLUMNS]


def _normalize(batch: pd.DataFrame, source: str) -> pd.DataFrame:
    """Every table to the same all-string columns (tables differ in types); rows parse them later."""
    if "prompt" not in batch.columns:
        raise ValueError(f"prompt table {source} has no 'prompt' column; found {list(batch.columns)}")
    n = len(batch)
    return pd.DataFrame({c: [_cell(v) for v in batch[c]] if c in batch.columns else [None] * n for c in PROMPT_COLUMNS})


def _cell(v):
    if v is None or (not isinstance(v, (str, bytes)) and pd.isna(v)):
        return None
    if isinstance(v, float) and v.is_integer():
        return str(int(v))  # pandas turns int columns with gaps into floats
    return str(v.item() if hasattr(v, "item") else v)


def mark_finished(batch: pd.DataFrame, out: str, motion_module: str, specs: dict[str, CheckpointSpec],
                  motion_norm: str | None = None) -> pd.DataFrame:
    """Rows whose video exists and whose sidecar matches become ok/skipped: resume without regenerating."""
    batch = batch.copy()
    for col in METADATA_COLUMNS:
        if col not in batch.columns:
            batch[col] = None
    for i, row in batch.iterrows():
        if row["status"] != "pending":
            continue
        side = video_uri(out, row["checkpoint"], row["id"], "json")
        if not storage.exists(side):
            continue
        meta = json.loads(storage.read_bytes(side))
        mp4 = video_uri(out, row["checkpoint"], row["id"])
        same = meta.get("fingerprint") == fingerprint(row.to_dict(), motion_module, specs[row["checkpoint"]], motion_norm)
        if same and storage.exists(mp4) and storage.size(mp4) == meta.get("bytes"):
            for k in ("video_uri", "gif_uri", "seconds", "bytes", "sha256"):
                batch.at[i, k] = meta.get(k)
            batch.at[i, "status"], batch.at[i, "skipped"] = "ok", True
    return batch


def build_dataset(cfg: AnimateConfig):
    """The whole lazy pipeline; nothing runs until it is iterated."""
    import ray.data

    names = list(cfg.checkpoints)
    ds = read_prompts(cfg.prompts)
    ds = ds.map_batches(expand_rows, batch_format="pandas", fn_kwargs={"checkpoints": names, "defaults": cfg.defaults})
    ds = ds.map_batches(mark_finished, batch_format="pandas",
                        fn_kwargs={"out": cfg.out, "motion_module": cfg.motion_module, "specs": cfg.checkpoints,
                                   "motion_norm": cfg.motion_norm})
    # Sorted rows, cut into actor-sized blocks: one actor sees one checkpoint for long stretches.
    ds = ds.sort(SORT_KEYS).repartition(target_num_rows_per_block=cfg.batch_size)
    gpu = cfg.num_gpus_per_worker > 0
    return ds.map_batches(
        AnimateStage,
        fn_constructor_kwargs=dict(base=cfg.base, motion_module=cfg.motion_module, checkpoints=cfg.checkpoints,
                                   out=cfg.out, gif=cfg.gif, dtype=cfg.dtype, threads=cfg.torch_threads or max(1, int(cfg.cpus_per_worker)),
                                   max_batch=cfg.max_batch, motion_norm=cfg.motion_norm),
        batch_format="pandas",
        batch_size=cfg.batch_size,
        compute=ray.data.ActorPoolStrategy(size=cfg.workers),
        num_gpus=cfg.num_gpus_per_worker if gpu else None,
        num_cpus=1 if gpu else cfg.cpus_per_worker,
        # Ray Data's actor pools default to max_restarts=-1 and max_task_retries=-1: a dead actor (node lost,
        # OOM-killed) is restarted and its in-flight batch retried (tests/pipelines/test_animate.py kills one).
    )


def run_animate(cfg: AnimateConfig, on_batch=None) -> pd.DataFrame:
    """Run the job; returns one metadata row per (prompt row, checkpoint)."""
    parts = []
    for batch in build_dataset(cfg).iter_batches(batch_format="pandas", batch_size=None):
        parts.append(batch)
        if on_batch is not None:
            on_batch(batch)
    if not parts:
        return pd.DataFrame(columns=[*ROW_COLUMNS, *METADATA_COLUMNS])
    return pd.concat(parts, ignore_index=True)


def _table_shape(uri: str) -> tuple[list[str], int]:
    """Column names and row count of a prompt table, reading only what that takes."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    fs, path = storage.fs_and_path(uri)
    try:
        with fs.open(path, "rb") as f:
            if uri.endswith(".csv"):
                table = pacsv.read_csv(f)
                return table.column_names, table.num_rows
            meta = pq.ParquetFile(f).metadata
            return list(meta.schema.names), meta.num_rows
    except Exception as e:
        from animatediff_core.errors import ConfigError

        raise ConfigError(f"--prompts {uri}: not a readable {'CSV' if uri.endswith('.csv') else 'Parquet'} table ({str(e)[:200]})") from None


def preflight(prompts: list[str], base: str, motion_module: str, out: str) -> None:
    """Fail fast, with one line, when nothing can run: missing inputs or an unwritable output."""
    from animatediff_core.errors import CheckpointError, ConfigError
    from animatediff_core.pipeline import check_base_folder

    for uri in prompts:
        if not storage.exists(uri):
            raise ConfigError(f"--prompts {uri}: not found (expected a .parquet or .csv table)")
        columns, rows = _table_shape(uri)
        if "prompt" not in columns:
            raise ConfigError(f"--prompts {uri}: no 'prompt' column (found {', '.join(columns) or 'none'})")
        if rows == 0:
            raise ConfigError(f"--prompts {uri}: the table has no rows")
    try:
        check_base_folder(base)
    except CheckpointError as e:
        raise CheckpointError(f"--base {e}") from None
    if not storage.exists(motion_module):
        raise CheckpointError(f"--motion-module {motion_module}: not found (expected a MotionAdapter folder or .safetensors/.ckpt)")
    probe = storage.join(out, ".write-test")
    try:
        storage.write_bytes_atomic(probe, b"ok")
        storage.fs_and_path(probe)[0].rm(storage.fs_and_path(probe)[1])
    except Exception as e:
        raise ConfigError(f"--out {out}: not writable ({type(e).__name__}: {e})") from None
