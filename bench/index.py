"""How long the batch job's summary takes to build and write as distinct checkpoints grow (issue 20).

Rows with distinct checkpoint names (one row each, ok and error mixed, 10 KB prompts on some) stream into
`report.Summary` in batches of 10,000, then `write_index` writes index.html. Prints seconds and the page
size per count: both should grow linearly in the groups (time) and not at all (size).

    python bench/index.py [--counts 5000 10000 20000 100000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipelines.animate import schema  # noqa: E402
from pipelines.animate.layout import OutputLayout  # noqa: E402
from pipelines.animate.report import Summary, write_index  # noqa: E402


def rows(n: int, start: int) -> pd.DataFrame:
    ids = range(start, start + n)
    ok = [i % 2 == 0 for i in ids]
    return schema.typed(pd.DataFrame({
        "id": [f"r{i}" for i in ids], "prompt": [("long " * 2000) if i % 100 == 0 else f"prompt {i}" for i in ids],
        "checkpoint": [f"ckpt-{i}" for i in ids], "motion_module": "mm", "status": ["ok" if k else "error" for k in ok],
        "error": ["" if k else f"unknown checkpoint 'ckpt-{i}'" for i, k in zip(ids, ok)],
        "video_uri": [f"/out/videos/ckpt-{i}/r{i}.mp4" if k else "" for i, k in zip(ids, ok)],
        "gif_uri": [f"/out/videos/ckpt-{i}/r{i}.gif" if k else "" for i, k in zip(ids, ok)]}))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--counts", type=int, nargs="+", default=[5000, 10000, 20000, 100000])
    args = p.parse_args()
    for count in args.counts:
        summary, start = Summary(), time.perf_counter()
        for first in range(0, count, 10_000):
            summary.add(rows(min(10_000, count - first), first))
        built = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            path = write_index(summary, OutputLayout(out))
            wrote = time.perf_counter() - start
            size = os.path.getsize(path)
        text = summary.text(1.0)
        print(f"{count:>7} checkpoints: summary {built:6.2f}s, index.html {wrote:5.2f}s, {size / 1024:6.0f} KiB, "
              f"printed summary {len(text.splitlines())} lines")


if __name__ == "__main__":
    main()
