"""What a person sees in the terminal: lines printed by `make demo` (python -m jobs.demo: 4 prompts x 3
checkpoints, 16 frames) and by the README's first-run sweep shape (4 prompts x 3 checkpoints, 8 frames, 2 steps),
and how many of them are the project's.

    python bench/terminal.py [--models DIR]

Each job runs as a subprocess (a fresh Python, a fresh embedded Ray), stdout and stderr merged, not on a
terminal (so progress is plain lines, as in a CI log or `ray job logs`). A line is Ray's when Ray's log
forwarding or its C++ logging wrote it (`(raylet)`, `(pid=...)`, `(SomeActor pid=...)`, `file.cc:NNN:`);
every other line is the project's (its log lines, progress lines, the summary table).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAY = re.compile(r"^\s*(\x1b\[[0-9;]*m)*\((raylet|pid=\d+|[\w.()>\- ]+ pid=\d+)\)|\.cc:\d+:|^\[\d{4}-\d\d-\d\d .*\] ")


def lines_of(cmd: list[str], cwd: str) -> tuple[int, int, float, int]:
    """(lines printed, the project's, seconds, exit code)."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("RAY_ADDRESS", None)
    start = time.time()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    out = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
    ours = [ln for ln in out if not RAY.search(ln)]
    return len(out), len(ours), time.time() - start, done.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", help="a tiny model set (default: written to a temporary folder)")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-terminal-")
    models = args.models or os.path.join(tmp, "models")
    if not args.models:
        subprocess.run([sys.executable, "-m", "jobs.tiny_models", "--out", models], cwd=ROOT, check=True,
                       env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True)
    table = os.path.join(tmp, "sweep.csv")
    with open(table, "w") as f:
        f.write("prompt\na corgi running on the beach\nwaves crashing on rocks\na red car at night\nfireworks over a city\n")
    runs = {
        "make demo (python -m jobs.demo)": [sys.executable, "-m", "jobs.demo", "--out", os.path.join(tmp, "demo")],
        "12-row sweep (4 prompts x 3 checkpoints)": [
            sys.executable, "-m", "jobs.animate", "--prompts", table, "--base", os.path.join(models, "base"),
            "--motion-module", os.path.join(models, "motion_module.safetensors"), "--checkpoints", os.path.join(models, "checkpoints"),
            "--out", os.path.join(tmp, "sweep"), "--num-frames", "8", "--height", "64", "--width", "64", "--steps", "2"],
    }
    print("| run | lines printed | the project's | seconds | exit |\n|---|---:|---:|---:|---:|")
    for name, cmd in runs.items():
        total, ours, seconds, code = lines_of(cmd, tmp)
        print(f"| {name} | {total} | {ours} | {seconds:.1f} | {code} |", flush=True)


if __name__ == "__main__":
    main()
