"""Batch-animation throughput: this Ray job end to end vs a plain loop over diffusers' AnimateDiffPipeline.

    python bench/animate.py [--n 32] [--frames 16] [--size 64] [--steps 2] [--batch-size 8] [--busy 0]
                            [--workers 1 --cpus-per-worker 1 --torch-threads 2 --streams S]

Same N prompts, same tiny models, same settings, one process run; both write mp4 files. The loop runs
half its prompts before the job and half after (A-B-A), so a change of load on a shared machine during
the run does not land on one side only. Besides end-to-end throughput it prints seconds per video inside
the job's actor (the metadata's `seconds`: generation + writing) against the loop's, which separates the
per-video path from the job's fixed start-up. `--workers W --cpus-per-worker C --torch-threads T` lay the job
out (default one actor of 2 threads, as the loop: 2 single-thread streams, the job's default; `--streams 1` runs one
2-thread stream); with W > 1 the loop also runs as W processes at once, each
with its share of the prompts (the job's layout without the job). `--busy K` runs K busy-looping processes at normal priority
throughout (a machine shared with other work).
Also times switching personalized checkpoints against loading a full pipeline from disk, at SD-1.5's
shapes by default (random weights written by `write_tiny_models(preset="sd15")`): at tiny shapes both are
a few hundred ms of fixed overhead and the ratio says nothing.
Prints figures and ratios; record them in bench/README.md with the machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pandas as pd
import torch

LOOP_THREADS = 2  # torch threads of the plain loop (one process); split_loop divides them between its processes


def plain_loop(models: str, prompts: list[str], args, out: str, device: str = "cpu", dtype: torch.dtype = torch.float32,
               marks: list | None = None) -> float:
    """The baseline a user would write: one AnimateDiffPipeline, one call per prompt, each video written as an mp4.
    `marks` (if given) gets ("loaded", time) and then ("video", time) after each mp4 (bench/gpu_job.py)."""
    from diffusers import AnimateDiffPipeline, AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from animatediff_core.io.video_io import write_video

    start = time.time()
    b = os.path.join(models, "base")
    pipe = AnimateDiffPipeline(
        vae=AutoencoderKL.from_pretrained(b, subfolder="vae"), text_encoder=CLIPTextModel.from_pretrained(b, subfolder="text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(b, subfolder="tokenizer"), unet=UNet2DConditionModel.from_pretrained(b, subfolder="unet"),
        motion_adapter=MotionAdapter.from_pretrained(os.path.join(models, "motion_adapter")),
        scheduler=DDIMScheduler.from_pretrained(b, subfolder="scheduler")).to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    _mark(marks, "loaded")
    for i, prompt in enumerate(prompts):
        write_video(os.path.join(out, f"{i}.mp4"), plain_call(pipe, prompt, args, seed=i), fps=8)
        _mark(marks, "video")
    return time.time() - start


def plain_call(pipe, prompt: str, args, seed: int):
    """One diffusers call as a user writes it (`args.frames`, `args.size`, `args.steps`, CFG 7.5): uint8 frames."""
    frames = pipe(prompt, num_frames=args.frames, height=args.size, width=args.size, num_inference_steps=args.steps,
                  guidance_scale=7.5, generator=torch.Generator().manual_seed(seed), output_type="np").frames[0]
    return (frames * 255).round().astype("uint8")


def split_loop(models: str, prompts: list[str], args, out: str, processes: int) -> float:
    """The plain loop laid out as the job's actors are: `processes` processes started at once, each with
    LOOP_THREADS // processes torch threads and its share of the prompts. Seconds from the first process's pipeline
    load to the last one's final mp4 (their imports left out, as the loop's are)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    spans = ctx.Queue()
    procs = [ctx.Process(target=_loop_part, args=(models, prompts[i::processes], args, os.path.join(out, str(i)),
                                                  split_threads(processes), spans)) for i in range(processes)]
    for p in procs:
        p.start()
    got = [spans.get() for _ in procs]
    for p in procs:
        p.join()
    return max(end for _, end in got) - min(start for start, _ in got)


def split_threads(processes: int) -> int:
    return max(1, LOOP_THREADS // processes)


def _loop_part(models: str, prompts: list[str], args, out: str, threads: int, spans) -> None:
    torch.set_num_threads(threads)
    os.makedirs(out, exist_ok=True)
    start = time.time()
    spans.put((start, start + plain_loop(models, prompts, args, out)))


def _mark(marks: list | None, what: str) -> None:
    if marks is not None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        marks.append((what, time.time()))


def ray_job(models: str, table: str, args, out: str) -> tuple[float, int, float]:
    """(seconds end to end, rows ok, mean seconds per video inside the actor)."""
    from animatediff_core.configs import build
    from pipelines.animate.config import AnimateConfig
    from pipelines.animate.job import preflight, run_animate
    from pipelines.animate.report import read_metadata

    cfg = build(AnimateConfig, prompts=[table], base=os.path.join(models, "base"), motion_module=[os.path.join(models, "motion_adapter")],
                        out=out, num_frames=args.frames, height=args.size, width=args.size, steps=args.steps,
                        workers=args.workers, cpus_per_worker=args.cpus_per_worker, batch_size=args.batch_size, gif=False,
                        torch_threads=args.torch_threads, streams=args.streams,
                        max_batch=args.max_batch)
    start = time.time()
    result = run_animate(preflight(cfg))
    seconds = time.time() - start
    return seconds, result.summary.total("ok"), float(read_metadata(out)["seconds"].mean())


def switch_vs_load(models: str, repeats: int = 2) -> dict[str, float]:
    """Seconds for a full pipeline load from disk, and for each checkpoint switch an actor makes in a sweep."""
    from animatediff_core.models.personalize import CheckpointSpec, Personalizer
    from animatediff_core.models.pipeline import load_pipeline

    t = time.time()
    for _ in range(repeats):
        pipe = load_pipeline(os.path.join(models, "base"), os.path.join(models, "motion_adapter"))
    figures = {"full_load": (time.time() - t) / repeats}
    p = Personalizer(pipe)
    order = ["toon_lora", "film_peft_lora", "dreamy", "toon_lora", "dreamy"]  # LoRA->LoRA, LoRA->DB, DB->LoRA, LoRA->DB
    specs = {n: CheckpointSpec(n, os.path.join(models, "checkpoints", f"{n}.safetensors")) for n in set(order)}
    for _ in range(repeats):
        p.reset()
        prev = "base"
        for name in order:
            t = time.time()
            p.apply(specs[name])
            key = f"switch {prev} -> {name}"
            figures[key] = figures.get(key, 0.0) + (time.time() - t) / repeats
            prev = name
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-batch", type=int, default=None, help="rows per pipeline call in the job (default: 1 on CPU)")
    ap.add_argument("--workers", type=int, default=1, help="the job's actors")
    ap.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs Ray reserves per actor")
    ap.add_argument("--torch-threads", type=int, default=LOOP_THREADS, help=f"torch threads per actor (the loop runs {LOOP_THREADS})")
    ap.add_argument("--streams", type=int, default=None, help="generation streams per actor (default: the job's)")
    ap.add_argument("--busy", type=int, default=0, help="busy-looping processes at normal priority during the run")
    ap.add_argument("--switch-preset", default="sd15", choices=["sd15", "tiny"],
                    help="model shapes for the switch-vs-load timing (sd15: random weights at SD-1.5 size, ~12 GB on disk)")
    args = ap.parse_args()
    from jobs.config import setup_logging

    setup_logging("WARNING")
    torch.set_num_threads(LOOP_THREADS)
    tmp = tempfile.mkdtemp(prefix="bench-animate-")
    try:
        run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the sd15 model set is ~12 GB


def run(args, tmp: str) -> None:
    from animatediff_core.tiny import write_tiny_models

    models = str(write_tiny_models(os.path.join(tmp, "models")))
    prompts = [f"a photo of subject {i}, cinematic lighting" for i in range(args.n)]
    table = os.path.join(tmp, "prompts.parquet")
    pd.DataFrame({"prompt": prompts, "seed": list(range(args.n))}).to_parquet(table)
    from pipelines.ray_session import init_ray

    init_ray(num_cpus=os.cpu_count(), log_to_driver=False)  # as the job starts it (its workers' priority included)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        half = args.n // 2
        marks: list = []
        loop_s = plain_loop(models, prompts[:half], args, os.path.join(tmp, "loop"), marks=marks)
        job_s, ok, actor_video_s = ray_job(models, table, args, os.path.join(tmp, "job"))
        loop_s += plain_loop(models, prompts[half:], args, os.path.join(tmp, "loop2"), marks=marks)
        split_s = split_loop(models, prompts, args, os.path.join(tmp, "split"), args.workers) if args.workers > 1 else None
    finally:
        for p in busy:
            p.kill()
    starts = [i for i, (what, _) in enumerate(marks) if what == "loaded"]
    per_video = [t - marks[i - 1][1] for i, (what, t) in enumerate(marks) if what == "video" and i not in (s + 1 for s in starts)]
    loop_video_s = sum(per_video) / max(1, len(per_video))
    switch_models = models if args.switch_preset == "tiny" else str(write_tiny_models(os.path.join(tmp, "sd15"), preset="sd15"))
    sw = switch_vs_load(switch_models)
    from animatediff_core.sampling.streams import count

    streams = count(args.streams, args.torch_threads, "cuda" if torch.cuda.is_available() else "cpu")  # what the actor runs
    print(f"N={args.n} prompts, {args.frames} frames {args.size}x{args.size}, {args.steps} steps, CFG 7.5, "
          f"cpus={os.cpu_count()}, busy processes={args.busy}, job: {args.workers} actor(s), {args.cpus_per_worker} CPU and "
          f"{args.torch_threads} torch thread(s) each, in {streams} stream(s)")
    print(f"ray job (end to end, {ok} ok): {job_s:.1f}s  {args.n / job_s:.3f} videos/s")
    print(f"plain diffusers loop (A-B-A):  {loop_s:.1f}s  {args.n / loop_s:.3f} videos/s")
    print(f"throughput ratio job/loop: {loop_s / job_s:.2f}  (goal >= 0.9)")
    if split_s is not None:
        print(f"the loop as {args.workers} processes of {split_threads(args.workers)} thread(s) (the job's layout, after the A-B-A): "
              f"{split_s:.1f}s  {args.n / split_s:.3f} videos/s; job / that: {split_s / job_s:.2f}")
    print(f"seconds per video: actor stream {actor_video_s:.2f} (generate + write; {args.workers} actor(s) x {streams} "
          f"stream(s)), loop {loop_video_s:.2f} (call + write, {LOOP_THREADS} threads, first call of each half left out): "
          f"{loop_video_s * args.workers * streams / actor_video_s:.2f}x")
    print(f"[{args.switch_preset} shapes] full pipeline load from disk: {sw['full_load'] * 1000:.0f} ms")
    for k, v in sw.items():
        if k.startswith("switch"):
            print(f"{k}: {v * 1000:.0f} ms = {100 * v / sw['full_load']:.1f}% of a full load (goal < 10%)")


if __name__ == "__main__":
    main()
