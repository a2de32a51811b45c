"""Precompute VAE latents and text embeddings of a WebVid-format video table into Parquet shards, once.

    python -m jobs.ingest --data webvid.csv --base SD15_DIR --out s3://bucket/latents [--config ingest.yaml]
    python -m jobs.train --data s3://bucket/latents --base SD15_DIR --storage s3://bucket/train

Training on the output skips fetching, decoding and the VAE; the clip settings (frames, stride,
size) are fixed here.
"""

from __future__ import annotations

import argparse
import time

from jobs.config import parse, quiet_libraries, run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="WebVid-format table (CSV/Parquet), a folder of them, or a folder of videos with captions.csv")
    p.add_argument("--base", help="diffusers SD-1.x folder whose VAE and text encoder encode the clips")
    p.add_argument("--out", help="output folder (local or fsspec URI) for the Parquet shards and _ingest.json")
    p.add_argument("--num-frames", type=int, default=16)
    p.add_argument("--stride", type=int, default=4)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--decoders", type=int, default=4, help="most video-decoding actors (default %(default)s)")
    p.add_argument("--decode-cpus", type=float, default=0.5, help="CPUs per decoding actor (default %(default)s)")
    p.add_argument("--encoders", type=int, default=1, help="VAE/text-encoder actors (one GPU each when there are GPUs)")
    p.add_argument("--encode-batch", type=int, default=8, help="clips per encoder call")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv, required=("data", "base", "out"))
    quiet_libraries()
    import ray

    from animatediff_core.clips import ClipConfig
    from pipelines.ingest import IngestRun, check_ingest, run_ingest

    job = IngestRun(data=args.data, base=args.base, out=args.out, decoders=args.decoders, decode_cpus=args.decode_cpus,
                    encoders=args.encoders, encode_batch=args.encode_batch,
                    clip=ClipConfig(num_frames=args.num_frames, stride=args.stride, size=args.size, num_threads=1))
    source = check_ingest(job)
    ray.init()  # RAY_ADDRESS (ray job submit) joins a cluster; else a local one
    ray.data.DataContext.get_current().enable_progress_bars = False
    start = time.time()
    meta = run_ingest(job, source)
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(meta["skipped_videos"].items())) or "none"
    print(f"ingested {meta['rows']} clips in {time.time() - start:.0f} s; skipped videos: {skipped}")
    print(f"latents: {args.out} (latents {meta['latent_shape']}, text {meta['text_shape']}, float16)")
    return 0


if __name__ == "__main__":
    run(main)
