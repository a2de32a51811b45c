"""Curation at dataset scale: `jobs.curate` on 10^5 rows of batch-job metadata + evaluation scores.

    python bench/curate.py [--rows 100000] [--json FILE]

Writes a batch job's metadata shard of `--rows` rows (every 20th an error row; videos are not written:
the parquet format copies none) and an evaluation's metrics.parquet for the ok rows, then times
`pipelines.curate.job.curate` with `--where "text_alignment > 25 and checkpoint != 'c0'" --format parquet`:
reading and checking the metadata, joining the scores, filtering, and writing manifest.parquet,
filtered.parquet and summary.json. One run, printed and saved as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT]


def write_run(out: str, rows: int) -> None:
    from pipelines.animate.layout import OutputLayout
    from pipelines.animate.report import write_shard

    rng = np.random.default_rng(0)
    ckpt = [f"c{i % 8}" for i in range(rows)]
    ok = np.arange(rows) % 20 != 0
    uris = [os.path.join(out, "videos", c, f"r{i:07d}.mp4") if k else "" for i, (c, k) in enumerate(zip(ckpt, ok))]
    meta = pd.DataFrame(dict(id=[f"r{i:07d}" for i in range(rows)], prompt=[f"prompt {i % 997}" for i in range(rows)],
                             negative_prompt="", seed=np.arange(rows), checkpoint=ckpt, num_frames=16, height=512, width=512,
                             steps=25, guidance_scale=7.5, fps=8, status=np.where(ok, "ok", "error"),
                             error=np.where(ok, "", "boom"), motion_module="mm", video_uri=uris, gif_uri="",
                             seconds=1.0, bytes=1000, sha256="", skipped=False))
    write_shard(meta, OutputLayout(out), "20260101T000000-abcdef")
    scores = pd.DataFrame({"video_uri": [u for u in uris if u], "text_alignment": rng.normal(25, 3, int(ok.sum()))})
    os.makedirs(os.path.join(out, "eval"), exist_ok=True)
    scores.to_parquet(os.path.join(out, "eval", "metrics.parquet"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--json", default=os.path.join(ROOT, "bench", "results", "curate.json"))
    args = p.parse_args()
    import ray

    from pipelines.curate.config import CurateRun
    from pipelines.curate.job import curate

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        gen = os.path.join(tmp, "gen")
        write_run(gen, args.rows)
        run = CurateRun(run=[gen], scores=os.path.join(gen, "eval"), where="text_alignment > 25 and checkpoint != 'c0'",
                        format="parquet", out=os.path.join(tmp, "cur"))
        start = time.perf_counter()
        summary = curate(run)
        seconds = time.perf_counter() - start
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {round(psutil.virtual_memory().total / 2**30)} GiB",
              "rows": args.rows, "kept": summary["kept"], "dropped_by_reason": summary["dropped_by_reason"],
              "seconds": round(seconds, 2), "rows_per_s": round(args.rows / seconds)}
    print(json.dumps(result, indent=2))
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
