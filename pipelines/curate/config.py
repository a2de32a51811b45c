"""The curation job's settings: the only place their names, types, defaults and help are written.
Light (no torch, no Ray): `--help` imports only this."""

from __future__ import annotations

from dataclasses import dataclass

from animatediff_core.configs import check_fields, need, option

FORMATS = ("webdataset", "videofolder", "parquet")


@dataclass(frozen=True, kw_only=True)
class CurateRun:
    """Which generated videos to keep, and how to write them."""

    run: list[str] = option(help="batch-job output folder(s) (jobs.animate --out; jobs.evaluate's generated/), any fsspec URI", path="in")
    scores: str | None = option(None, help="an evaluation's output folder (jobs.evaluate --out): its metrics.parquet "
                                           "columns join each video's row, for --where", path="in")
    where: str | None = option(None, help="keep the rows this expression selects (pandas query syntax over the metadata "
                                          "and score columns, as jobs.train's --where), e.g. \"text_alignment > 25\"")
    format: str = option("webdataset", choices=FORMATS, help="webdataset: tar shards of KEY.mp4/.json/.txt; videofolder: "
                         "Hugging Face's layout (videos + metadata.jsonl with file_name); parquet: a manifest of the kept "
                         "rows naming the videos where they are")
    out: str = option(help="output folder (local or fsspec URI)", path="out")
    shard_mb: int = option(1024, help="about this many MB of video per WebDataset shard")
    dedup: float | None = option(None, low=-1, high=1, help="drop near-duplicates: a video whose CLIP image embedding "
                                 "(mean of 4 frames) has a cosine above this with a kept one (needs --clip)")
    dedup_by: str = option("text_alignment", help="of near-duplicates, keep the row highest in this column (rows "
                           "without it rank last, then by order)")
    clip: str | None = option(None, help="transformers CLIPModel folder for --dedup", path="in")

    def __post_init__(self):
        check_fields(self)
        need(self.run, "--run: give at least one batch-job output folder")
        need(self.shard_mb >= 1, f"--shard-mb must be >= 1, found {self.shard_mb}")
        need(self.dedup is None or self.clip, "--dedup compares CLIP image embeddings: give --clip CLIP_DIR")
