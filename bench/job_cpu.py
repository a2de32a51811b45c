"""Where the CPU goes while `jobs.animate` generates on a small machine, against a plain in-process loop.

    python bench/job_cpu.py [--models DIR] [--rows 20] [--window 30] [--deprioritize none,nice19,idle] [--pieces 3]

For each `--deprioritize` mode it runs `python -m jobs.animate` (a fresh embedded Ray, one actor, 2 torch
threads in one stream: `--streams 1`, the layout this bench studies; 16 frames 64x64, 2 steps, no GIFs)
and, once the actor generates steadily, samples for `--window` seconds: the CPU each process of the job
uses (the driver, the actor, Ray's own processes), and the actor's threads' time running and waiting in the
run queue (/proc/PID/task/*/schedstat: waiting means runnable while another task had the CPU). Then the
same for a plain diffusers loop in this process (2 threads). A 2-thread actor that waits in the run queue
loses that CPU to the job's other processes.

`--deprioritize` shows what lowering the rest of the job would recover (an experiment, not something the
job does): `nice19` sets every other process of the job (driver, Ray's services and helper actors, idle
workers) to niceness 19; `idle` puts the same, except the GCS and the raylet, under SCHED_IDLE.
`--pieces R` first times the job's pieces one by one against the same plain diffusers call, R rounds,
alternating, in one Ray: the call in this process, in a bare Ray actor (2 threads), in a Ray Data
actor pool (`map_batches`, one row per batch), and the project's `AnimateStage` called in this process
(a batch of 3 rows, its writer threads). Seconds per video, median.
Linux only. Prints one table per mode; record the figures in bench/README.md with the machine.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")


def processes() -> dict[int, tuple[str, float]]:
    """pid -> (command line, CPU seconds so far) for every process."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline") as f:
                name = f.read().replace("\0", " ").strip()
        except OSError:
            continue
        out[int(pid)] = (name, (int(fields[11]) + int(fields[12])) / TICK)
    return out


def run_and_wait(pid: int) -> tuple[float, float]:
    """(seconds running, seconds waiting in the run queue) summed over the threads of `pid`."""
    run = wait = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as f:
                a, b, _ = f.read().split()
        except (OSError, ValueError):
            continue
        run, wait = run + int(a), wait + int(b)
    return run / 1e9, wait / 1e9


def label(cmd: str, driver: int, pid: int) -> str:
    if pid == driver:
        return "driver (python -m jobs.animate)"
    if "MapWorker" in cmd:
        return "generation actor"
    for key, name in (("gcs_server", "GCS"), ("raylet/raylet", "raylet"), ("log_monitor", "log monitor"),
                      ("monitor.py", "autoscaler monitor"), ("dashboard/dashboard.py", "dashboard")):
        if key in cmd:
            return name
    return cmd.split("  ")[0][:40] if cmd.startswith("ray::") else cmd[:40]


def deprioritize(mode: str, keep: int) -> None:
    """Every process of the job's Ray (and the driver) but `keep`, at niceness 19 or under SCHED_IDLE."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if proc.pid == keep or not ("ray" in cmd or "jobs.animate" in cmd):
            continue
        if mode == "idle" and ("gcs_server" in cmd or "raylet/raylet" in cmd):
            continue
        try:
            for t in proc.threads():
                if mode == "nice19":
                    os.setpriority(os.PRIO_PROCESS, t.id, 19)
                else:
                    os.sched_setscheduler(t.id, os.SCHED_IDLE, os.sched_param(0))
        except (OSError, psutil.Error):
            pass


def job(models: str, rows: int, window: float, mode: str, tmp: str) -> None:
    table = os.path.join(tmp, "prompts.csv")
    with open(table, "w") as f:
        f.write("prompt,seed\n" + "".join(f"a photo of subject {i},{i}\n" for i in range(rows)))
    out = os.path.join(tmp, f"out-{mode}")
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "jobs.animate", "--prompts", table, "--base", f"{models}/base", "--motion-module",
           f"{models}/motion_adapter", "--out", out, "--num-frames", "16", "--height", "64", "--width", "64", "--steps", "2",
           "--no-gif", "--torch-threads", "2", "--streams", "1"]  # one 2-thread stream: the layout this bench studies
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        actor = None
        while actor is None and proc.poll() is None:  # the actor exists once the plan is done
            time.sleep(1)
            actor = next((p for p, (c, _) in processes().items() if "MapWorker" in c and "AnimateStage" in c), None)
        while proc.poll() is None and not glob.glob(os.path.join(out, "videos", "**", "*.mp4"), recursive=True):
            time.sleep(1)  # steady once the first video is written
        if mode != "none":
            deprioritize(mode, actor)
        before, (r0, w0), t0 = processes(), run_and_wait(actor), time.time()
        time.sleep(window)
        after, (r1, w1), t1 = processes(), run_and_wait(actor), time.time()
        if proc.poll() is not None:
            print(f"the job ended inside the window: use more --rows (exit {proc.returncode})")
            return
    finally:  # the figures are taken: stop the job (SIGTERM: it stops within seconds)
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    seconds = t1 - t0
    use = collections.Counter()
    for pid, (cmd, cpu) in after.items():
        if pid in before and before[pid][0] == cmd and ("ray" in cmd or "jobs.animate" in cmd):
            use[label(cmd, proc.pid, pid)] += cpu - before[pid][1]
    print(f"\njobs.animate, deprioritize={mode}: {seconds:.0f} s window once the first video was written")
    print(f"  generation actor: runs {100 * (r1 - r0) / seconds:.0f}% of a core, waits in the run queue "
          f"{100 * (w1 - w0) / seconds:.0f}% (its threads summed)")
    rest = sum(v for k, v in use.items() if k != "generation actor")
    print(f"  the job's other processes: {100 * rest / seconds:.1f}% of a core")
    for name, cpu in use.most_common():
        if name != "generation actor" and cpu / seconds >= 0.002:
            print(f"    {100 * cpu / seconds:5.1f}%  {name}")


PROMPT = "a photo of subject {}, cinematic lighting"


def _pipeline(models: str):
    import torch

    from animatediff_core.models.pipeline import load_pipeline

    torch.set_num_threads(2)
    pipe = load_pipeline(os.path.join(models, "base"), os.path.join(models, "motion_adapter"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _call(pipe, i: int) -> float:
    import torch

    start = time.time()
    pipe(PROMPT.format(i), num_frames=16, height=64, width=64, num_inference_steps=2, guidance_scale=7.5,
         generator=torch.Generator().manual_seed(i), output_type="np")
    return time.time() - start


def loop(models: str, window: float) -> None:
    pipe = _pipeline(models)
    stop = threading.Event()

    def work():
        i = 0
        while not stop.is_set():
            _call(pipe, i)
            i += 1

    thread = threading.Thread(target=work)
    thread.start()
    time.sleep(8)  # past the first call
    (r0, w0), t0 = run_and_wait(os.getpid()), time.time()
    time.sleep(window)
    (r1, w1), t1 = run_and_wait(os.getpid()), time.time()
    stop.set()
    thread.join()
    print(f"\nplain diffusers loop in this process (2 threads): runs {100 * (r1 - r0) / (t1 - t0):.0f}% of a core, "
          f"waits in the run queue {100 * (w1 - w0) / (t1 - t0):.0f}%")


class _Caller:
    """A pipeline in an actor: the bare Ray actor and the Ray Data actor pool's UDF."""

    def __init__(self, models: str):
        self.pipe = _pipeline(models)
        _call(self.pipe, 0)

    def calls(self, ids: list[int]) -> list[float]:
        return [_call(self.pipe, i) for i in ids]

    def __call__(self, batch):
        import pandas as pd

        return pd.DataFrame({"seconds": self.calls([int(i) for i in batch["id"]])})


def pieces(models: str, rounds: int, tmp: str) -> None:
    import statistics

    import pandas as pd
    import ray
    import ray.data

    from animatediff_core.settings.generation import CheckpointSpec, GenerationSettings
    from pipelines.animate.layout import OutputLayout
    from pipelines.animate.plan import Plan, expand_rows, normalize
    from pipelines.animate.resume import list_finished, mark_finished
    from pipelines.animate.sets import MotionSpec
    from pipelines.animate.stage import AnimateStage
    from pipelines.ray_session import ActorOptions, init_ray

    init_ray(num_cpus=os.cpu_count(), log_to_driver=False)
    pipe = _pipeline(models)
    _call(pipe, 0)
    bare = ray.remote(num_cpus=0)(_Caller).remote(models)  # no CPU reserved: the pool below needs one, its reads the other
    specs = {"base": CheckpointSpec("base", None)}
    motions = {"motion_adapter": MotionSpec("motion_adapter", os.path.join(models, "motion_adapter"), 32)}
    layout = OutputLayout(os.path.join(tmp, "pieces"))
    stage = AnimateStage(os.path.join(models, "base"), motions, specs, layout, "20260101T000000-aaaaaa", gif=False,
                         actors=ActorOptions(torch_threads=2), streams=1)
    plan = Plan(tuple(specs), {"motion_adapter": 32}, GenerationSettings(num_frames=16, height=64, width=64, steps=2))

    def stage_rows(ids):
        rows = expand_rows(normalize(pd.DataFrame({"prompt": [PROMPT.format(i) for i in ids], "seed": ids})), plan)
        return mark_finished(rows, list_finished(layout, list(motions), list(specs)), layout, motions, specs)

    stage(stage_rows([1000]))  # its first call
    times: dict[str, list[float]] = {k: [] for k in ("this process", "bare Ray actor", "Ray Data actor pool", "AnimateStage")}
    for r in range(rounds):
        ids = [3 * r + k for k in range(3)]
        times["this process"] += [_call(pipe, i) for i in ids]
        start = time.time()
        stage(stage_rows(ids))
        times["AnimateStage"] += [(time.time() - start) / len(ids)] * len(ids)
        times["bare Ray actor"] += ray.get(bare.calls.remote(ids))
        ds = ray.data.range(4, override_num_blocks=4).map_batches(
            _Caller, fn_constructor_args=(models,), batch_format="pandas", batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)
        times["Ray Data actor pool"] += ds.to_pandas()["seconds"].tolist()[1:]  # its first row warms the pool
    ray.kill(bare)
    print(f"\nthe same plain call, {rounds} rounds alternating (seconds per video, median):")
    base = statistics.median(times["this process"])
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {name:22s} {med:6.2f} s  ({med / base:.2f}x this process)")
    ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", help="a tiny model set (default: written to a temporary folder)")
    ap.add_argument("--rows", type=int, default=20)
    ap.add_argument("--window", type=float, default=30.0)
    ap.add_argument("--deprioritize", default="none", help="comma-separated: none, nice19, idle")
    ap.add_argument("--pieces", type=int, default=0, help="rounds of the piece-by-piece timing (0: leave it out)")
    args = ap.parse_args()
    sys.path.insert(0, ROOT)
    from jobs.config import setup_logging

    setup_logging("WARNING")
    tmp = tempfile.mkdtemp(prefix="bench-job-cpu-")
    try:
        models = args.models
        if not models:
            from animatediff_core.tiny import write_tiny_models

            models = str(write_tiny_models(os.path.join(tmp, "models")))
        print(f"{os.cpu_count()} CPUs; one actor, 2 torch threads; {args.rows} rows of 16 frames 64x64, 2 steps")
        if args.pieces:
            pieces(models, args.pieces, tmp)
        for mode in filter(None, args.deprioritize.split(",")):
            job(models, args.rows, args.window, mode, tmp)
        loop(models, args.window)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
