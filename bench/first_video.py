"""Time to the first video: `python -m jobs.animate` on a 2-row table, as a user runs it, with what each
phase costs.

    python bench/first_video.py [--models DIR] [--runs 2] [--busy K] [--code CHECKOUT] [-- extra job flags]

Runs the job as a subprocess (a fresh Python, a fresh embedded Ray: what a user waits for) on the tiny
models, 8 frames 64x64, 2 steps, and stamps each line the job prints with the seconds since launch:
the first line, preflight done ("planned: ..."), Ray started, plan done ("N row(s), M to
generate"), the first video on disk ("first video: ..."), the end. `--help` of every job is timed too.
Prints one table per run; record the figures in bench/README.md with the machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOBS = ("animate", "train", "evaluate", "ingest", "demo", "tiny_models")
# (label, text that marks the phase's end in the job's output)
MILESTONES = (("preflight done", "planned: "), ("ray started", "started an embedded Ray"),
              ("plan done", "to generate"), ("first video printed", "first video: "), ("summary", "rows in "))


def timed(cmd: list[str], env: dict, watch: str | None = None, cwd: str = ROOT) -> tuple[float, list[tuple[float, str]], int, float | None]:
    """Run `cmd`; (seconds, [(seconds since launch, line)], exit code, seconds until the first .mp4 appeared
    under `watch`), stdout and stderr merged. The file is watched, not read off the job's output, so any
    version of the job can be timed (PYTHONPATH=another checkout)."""
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd, bufsize=1)
    lines, first = [], []

    def read():
        for line in proc.stdout:
            lines.append((time.time() - start, line.rstrip()))

    def look():
        while proc.poll() is None and not first:
            if watch and any(f.endswith(".mp4") for _, _, fs in os.walk(watch) for f in fs):
                first.append(time.time() - start)
            time.sleep(0.1)

    threads = [threading.Thread(target=f, daemon=True) for f in (read, look)]
    for t in threads:
        t.start()
    code = proc.wait()
    for t in threads:
        t.join(timeout=5)
    return time.time() - start, lines, code, (first or [None])[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", help="a tiny model set (default: written to a temporary folder)")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--busy", type=int, default=0, help="busy-looping processes at normal priority during the runs "
                                                         "(a machine shared with other work)")
    ap.add_argument("--code", default=ROOT, help="the checkout whose jobs run (PYTHONPATH), to compare versions")
    ap.add_argument("extra", nargs="*", help="more flags for the job")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": args.code}
    env.pop("RAY_ADDRESS", None)
    for job in JOBS:
        seconds, _, _, _ = timed([sys.executable, "-m", f"jobs.{job}", "--help"], env, cwd=args.code)
        print(f"python -m jobs.{job} --help: {seconds:.2f} s")
    tmp = tempfile.mkdtemp(prefix="bench-first-")
    models = args.models or os.path.join(tmp, "models")
    if not args.models:
        timed([sys.executable, "-m", "jobs.tiny_models", "--out", models], {**env, "PYTHONPATH": ROOT})
    table = os.path.join(tmp, "two.csv")
    with open(table, "w") as f:
        f.write("prompt\na corgi running on the beach\nwaves crashing on rocks\n")
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        for run in range(args.runs):
            one_run(run, tmp, models, table, args, env)
    finally:
        for p in busy:
            p.kill()


def one_run(run: int, tmp: str, models: str, table: str, args, env: dict) -> None:
    """One timed run of the job on the 2-row table, printed as a table of milestones."""
    out = os.path.join(tmp, f"out{run}")
    cmd = [sys.executable, "-m", "jobs.animate", "--prompts", table, "--base", os.path.join(models, "base"),
           "--motion-module", os.path.join(models, "motion_module.safetensors"), "--out", out,
           "--num-frames", "8", "--height", "64", "--width", "64", "--steps", "2", *args.extra]
    seconds, lines, code, first = timed(cmd, env, watch=out, cwd=args.code)
    shown = f"first mp4 on disk after {first:.1f} s" if first else "no mp4"
    print(f"run {run + 1}: exit {code}, {seconds:.1f} s, {len(lines)} lines printed; {shown}")
    first_line = lines[0][0] if lines else float("nan")
    print(f"  {first_line:6.1f} s  first line (flags parsed, imports done)")
    for label, mark in MILESTONES:
        at = next((t for t, line in lines if mark in line), None)
        print(f"  {at:6.1f} s  {label}" if at is not None else f"     n/a  {label}")
    if code:
        print("\n".join(line for _, line in lines[-20:]))


if __name__ == "__main__":
    main()
