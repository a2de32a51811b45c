"""Precompute VAE latents and text embeddings of a video table (or WebDataset shards) into Parquet shards, once.

    python -m jobs.ingest --data webvid.csv --base SD15_DIR --out s3://bucket/latents [--config ingest.yaml]
    python -m jobs.train --data s3://bucket/latents --base SD15_DIR --storage s3://bucket/train

Training on the output skips fetching, decoding and the VAE; the clip settings (frames, stride,
size) are fixed here.
"""

from __future__ import annotations

import time
from dataclasses import replace

from jobs.config import dump_config, parse_config, run, setup_logging
from pipelines.train.config import IngestRun


def main(argv: list[str] | None = None) -> int:
    job, args = parse_config(IngestRun, argv, __doc__)
    setup_logging(args.log_level)
    # Imported after parsing: --help and a bad flag answer without loading torch or Ray.
    from animatediff_core.io import storage
    from pipelines.ray_session import init_ray, require_shared, stage
    from pipelines.train.ingest import check_ingest, run_ingest
    source = check_ingest(job)
    cluster = init_ray()
    if cluster.job_id:
        print(cluster.banner(), flush=True)
    for flag, uri in (("--out", job.out), ("--data", job.data)):
        require_shared(uri, flag, cluster.nodes)
    storage.write_text_atomic(storage.join(job.out, "job.yaml"), dump_config(job))
    job = replace(job, base=stage(job.base, "--base", job.out, cluster.nodes))
    start = time.time()
    meta = run_ingest(job, source)
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(meta["skipped_videos"].items())) or "none"
    print(f"ingested {meta['rows']} clips in {time.time() - start:.0f} s; skipped videos: {skipped}")
    print(f"latents: {job.out} (latents {meta['latent_shape']}, text {meta['text_shape']}, float16)")
    return 0


if __name__ == "__main__":
    run(main)
