"""Where and how a training run executes (`TrainRun`) and the ingest job's settings (`IngestRun`): the
only place their keys, defaults and help are written (the recipe itself is
`animatediff_core.training.recipe.TrainConfig`). Light (no torch, no Ray): `--help` imports only this.
"""

from __future__ import annotations

from dataclasses import dataclass

from animatediff_core.configs import check_fields, need, option, section
from animatediff_core.io import storage
from animatediff_core.training.recipe import TrainConfig

_RECIPE = TrainConfig()  # the clip defaults ingest shares with training


@dataclass(frozen=True, kw_only=True)
class DataOptions:
    """How `--data` is read, shared by training and ingest: the columns of a table the formats in
    `pipelines/train/formats.py` do not name, where bare video names live, and which rows to keep."""

    video_col: str | None = option(None, help="the column naming each video (a URI, a path or an id); default: the detected format's")
    caption_col: str | None = option(None, help="the caption column; default: the detected format's")
    span_col: str | None = option(None, help="a column of [start, end] span lists, one clip a span (Panda-70M's timestamp)")
    start_col: str | None = option(None, help="the column of each row's span start (seconds or [H:]MM:SS.mmm); with --end-col")
    end_col: str | None = option(None, help="the column of each row's span end; with --start-col")
    video_root: str | None = option(None, help="folder of the videos a table names by relative path or bare id; default: the table's folder", path="in")
    where: str | None = option(None, help="keep the rows (clips, after spans are exploded) this expression selects, "
                                          "pandas query syntax over the table's columns, e.g. \"`motion score` > 1 and fps >= 24\"")

    def __post_init__(self):
        check_fields(self)


@dataclass(frozen=True, kw_only=True)
class TrainRun:
    """Where and how a training run executes (the recipe itself is a TrainConfig)."""

    data: str = option(help="a video table (WebVid, Panda-70M, OpenVid-1M, InternVid, HD-VILA or mapped with --video-col; "
                            "CSV, TSV, JSONL, Parquet) or a folder of them, a folder of videos with captions.csv, "
                            "WebDataset tar shards (a folder, a .tar, a {000..009} pattern or a comma list), or a "
                            "jobs.ingest folder; any fsspec URI", path="in")
    base: str = option(help="diffusers SD-1.x folder or Hub id (frozen)", path="in")
    storage: str = option(help="where runs go (local folder or fsspec URI); the run is STORAGE/NAME", path="out")
    name: str = option("motion-module", help="run name")
    motion_module: str | None = option(None, help="start from this motion module (required for --motion-lora)", path="in")
    workers: int = option(1, low=1, help="training workers (one GPU each when the cluster has GPUs)")
    cpus_per_worker: float | None = option(None, help="default: 1 with GPUs, 0.5 on CPU (leaves cores to decoding)")
    decoders: int = option(4, low=1, help="most video-decoding actors")
    decode_cpus: float = option(0.5, help="CPUs per decoding actor")
    max_failures: int = option(2, low=0, help="worker-group restarts from the latest checkpoint")
    resume: bool = option(False, help="continue the run STORAGE/NAME from its latest checkpoint")
    source: DataOptions = section(DataOptions)

    def __post_init__(self):
        check_fields(self)

    @property
    def run_dir(self) -> str:
        return storage.join(self.storage, self.name)

    @property
    def torch_threads(self) -> int:
        return max(1, int(self.cpus_per_worker or 1))


@dataclass(frozen=True, kw_only=True)
class IngestRun:
    """The ingest job's settings: the only place their names, types, defaults and help are written."""

    data: str = option(help="a video table, a folder of them, a folder of videos with captions.csv, or WebDataset tar "
                            "shards, as jobs.train reads them; any fsspec URI", path="in")
    base: str = option(help="diffusers SD-1.x folder or Hub id whose VAE and text encoder encode the clips", path="in")
    out: str = option(help="output folder (local or fsspec URI) for the Parquet shards and _ingest.json", path="out")
    num_frames: int = option(_RECIPE.num_frames, help="frames per clip")
    stride: int = option(_RECIPE.stride, help="frame stride of a clip")
    sample_fps: float | None = option(_RECIPE.sample_fps, help=_RECIPE.__dataclass_fields__["sample_fps"].metadata["help"])
    size: int = option(_RECIPE.size, help="clip side after resize and center crop")
    decoders: int = option(4, help="most video-decoding actors")
    decode_cpus: float = option(0.5, help="CPUs per decoding actor")
    encoders: int = option(1, help="VAE/text-encoder actors (one GPU each when there are GPUs)")
    encode_batch: int = option(8, help="clips per encoder call")
    source: DataOptions = section(DataOptions)

    def __post_init__(self):
        check_fields(self)
        for name in ("num_frames", "stride", "size", "decoders", "encoders", "encode_batch"):
            need(getattr(self, name) >= 1, f"{name} must be an integer >= 1, found {getattr(self, name)!r}")

    @property
    def clip(self):
        """The clip settings (`animatediff_core.training.clips.ClipConfig`)."""
        from animatediff_core.training.clips import ClipConfig  # here: the config stays light

        return ClipConfig(num_frames=self.num_frames, stride=self.stride, size=self.size, num_threads=1,
                          sample_fps=self.sample_fps)
