"""Where and how a training run executes: `TrainRun`, the only place its keys, defaults and help are written
(the recipe itself is `animatediff_core.trainer.TrainConfig`). Light (no torch, no Ray).
"""

from __future__ import annotations

from dataclasses import dataclass

from animatediff_core import storage
from animatediff_core.configs import check_fields, option


@dataclass(frozen=True, kw_only=True)
class TrainRun:
    """Where and how a training run executes (the recipe itself is a TrainConfig)."""

    data: str = option(help="WebVid-format table (CSV/Parquet), a folder of them, a folder of videos with "
                            "captions.csv, or a jobs.ingest folder; any fsspec URI")
    base: str = option(help="diffusers SD-1.x folder or Hub id (frozen)")
    storage: str = option(help="where runs go (local folder or fsspec URI); the run is STORAGE/NAME")
    name: str = option("motion-module", help="run name")
    motion_module: str | None = option(None, help="start from this motion module (required for --motion-lora)")
    workers: int = option(1, low=1, help="training workers (one GPU each when the cluster has GPUs)")
    cpus_per_worker: float | None = option(None, help="default: 1 with GPUs, 0.5 on CPU (leaves cores to decoding)")
    decoders: int = option(4, low=1, help="most video-decoding actors")
    decode_cpus: float = option(0.5, help="CPUs per decoding actor")
    max_failures: int = option(2, low=0, help="worker-group restarts from the latest checkpoint")
    resume: bool = option(False, help="continue the run STORAGE/NAME from its latest checkpoint")

    def __post_init__(self):
        check_fields(self)

    @property
    def run_dir(self) -> str:
        return storage.join(self.storage, self.name)

    @property
    def torch_threads(self) -> int:
        return max(1, int(self.cpus_per_worker or 1))
