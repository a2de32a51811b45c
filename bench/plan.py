"""Planning at dataset scale: 10^6 prompt rows through read, sweep, resume check and metadata, no generation.

    python bench/plan.py [--rows 1000000] [--finished 2000] [--s3-finished 200]

Part 1 (local disk): a table of `--rows` rows, of which `--finished` are rows whose videos already
exist (fake mp4 + matching sidecar, written by this script) and the rest error rows (empty prompt):
nothing is generated, every row goes through planning, the skip path and the metadata shards.
Prints rows/s and the driver's peak resident memory (sampled every 50 ms).
Part 2 (local S3 server, moto on 127.0.0.1 behind a counting proxy): a rerun over `--s3-finished`
finished videos, counting the storage requests it makes, against what a probe-per-row resume makes
(exists + read of the sidecar, exists + size of the video: 4 per row).
Record the figures in bench/README.md with the machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import pandas as pd
import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT]  # the project's packages before tests/ (which has a pipelines/ folder of its own)
sys.path.append(os.path.join(ROOT, "tests"))  # helpers_s3


def _defaults():
    from animatediff_core.settings.generation import GenerationSettings

    return GenerationSettings().updated(**SMALL)


class PeakRSS:
    def __init__(self):
        self.peak, self.stop = 0, False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        while not self.stop:
            self.peak = max(self.peak, me.memory_info().rss)
            time.sleep(0.05)


SMALL = dict(num_frames=4, height=32, width=32, steps=1)  # never generated: every row is finished or an error


def run_job(tmp: str, models: str, table: str, out: str) -> tuple[float, object]:
    from animatediff_core.configs import build
    from pipelines.animate.config import AnimateConfig
    from pipelines.animate.job import preflight, run_animate

    cfg = build(AnimateConfig, prompts=[table], base=os.path.join(models, "base"), motion_module=[os.path.join(models, "motion_module.safetensors")],
                        out=out, cpus_per_worker=0.5, **SMALL)
    t = time.time()
    result = run_animate(preflight(cfg))
    return time.time() - t, result


def part1(tmp: str, models: str, args) -> None:
    from helpers_s3 import write_finished

    valid = pd.DataFrame({"prompt": [f"finished prompt {i}" for i in range(args.finished)]})
    table = pd.concat([valid, pd.DataFrame({"prompt": [""] * (args.rows - args.finished)})], ignore_index=True)
    path = os.path.join(tmp, "rows.parquet")
    table.to_parquet(path)
    out = os.path.join(tmp, "out")
    write_finished(out, valid.prompt.tolist(), os.path.join(models, "motion_module.safetensors"), _defaults())
    mem = PeakRSS()
    base_rss = psutil.Process().memory_info().rss
    mem.thread.start()
    seconds, result = run_job(tmp, models, path, out)
    mem.stop = True
    s = result.summary
    print(f"part 1: {s.rows} rows ({s.total('skipped')} finished, {s.total('error')} error, {s.total('ok')} generated) "
          f"in {seconds:.1f}s = {s.rows / seconds:,.0f} rows/s; driver peak RSS {mem.peak / 2**20:.0f} MiB "
          f"(before the job {base_rss / 2**20:.0f} MiB); index.html {os.path.getsize(os.path.join(out, 'index.html')) / 1024:.0f} KiB")


def part2(tmp: str, models: str, args, proxy) -> None:
    import s3fs
    from helpers_s3 import write_finished

    s3fs.S3FileSystem(skip_instance_cache=True).mkdir("bench-bucket")
    valid = pd.DataFrame({"prompt": [f"finished prompt {i}" for i in range(args.s3_finished)]})
    table = pd.concat([valid, pd.DataFrame({"prompt": [""] * args.s3_finished * 10})], ignore_index=True)
    path = os.path.join(tmp, "s3rows.parquet")
    table.to_parquet(path)
    out = "s3://bench-bucket/run"
    write_finished(out, valid.prompt.tolist(), os.path.join(models, "motion_module.safetensors"), _defaults())
    proxy.reset()
    seconds, result = run_job(tmp, models, path, out)
    n = len(proxy.requests)
    print(f"part 2: rerun of {len(table)} rows ({result.summary.total('skipped')} finished videos) on S3 in {seconds:.1f}s: "
          f"{n} storage requests {dict(proxy.summary())}; a probe-per-row resume: >= {4 * args.s3_finished} "
          f"for the finished rows alone")


def s3_server():
    """moto_server on 127.0.0.1 behind a counting proxy; the environment is set before Ray starts, so
    its workers (the planning tasks read sidecars) reach the same server."""
    import socket

    from helpers_s3 import CountingProxy

    exe = shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(3)
    proxy = CountingProxy(f"http://127.0.0.1:{port}").__enter__()
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL": proxy.endpoint, "AWS_ENDPOINT_URL_S3": proxy.endpoint})
    return server, proxy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--finished", type=int, default=2_000)
    ap.add_argument("--s3-finished", type=int, default=200)
    args = ap.parse_args()
    import ray

    from animatediff_core.tiny import write_tiny_models
    from jobs.config import setup_logging

    setup_logging("WARNING")
    tmp = tempfile.mkdtemp(prefix="bench-plan-")
    try:
        models = str(write_tiny_models(os.path.join(tmp, "models")))
        server, proxy = s3_server()
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        print(f"machine: {os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB")
        part1(tmp, models, args)
        part2(tmp, models, args, proxy)
        proxy.__exit__(None, None, None)
        server.terminate()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
