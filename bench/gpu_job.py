"""Issue 9 on one GPU, in one run: the batch job (`python -m jobs.animate`) against a plain diffusers loop,
and where the GPU's time goes.

    python bench/gpu_job.py [--quick] [--shape sd15|tiny] [--prompts 32] [--frames 16] [--size 512]
                            [--steps 25] [--peak-tflops 989] [--skip job,loop,unet,four_step,options,fp8]

Writes random weights at SD-1.5's shapes (`write_tiny_models(preset="sd15")`; `--shape tiny` for a CPU
dry run), then measures:
- the real job as a subprocess (Ray Data, one GPU actor, mp4s written, fp16, DDIM, CFG 7.5) and a plain
  loop of diffusers `AnimateDiffPipeline` calls writing the same mp4s (bench/animate.py's `plain_loop`):
  videos/s of each end to end (start to last mp4: Ray start and model loads included) and their ratio,
  time to the first mp4 on disk, and the GPU's busy fraction between the first and last mp4
  (nvidia-smi sampled every 0.2 s);
- the UNet alone: FLOPs of one call with the CFG batch (torch.utils.flop_counter), seconds per call,
  TFLOP/s and MFU against `--peak-tflops` (989: H200 dense fp16; 989 for H100 SXM too);
- the 4-step sampler (euler_trailing, guidance 1.0: `--sampler euler_trailing`) per video vs the loop's;
- each speed option of animatediff_core/models/speed.py on a copy of one loaded pipeline: first-call seconds
  (compile's warm-up), seconds per video of a batched call, PSNR and max |diff| of frames vs plain fp16;
- FP8 (torchao float8 dynamic quantization of the UNet's linear layers) if torchao is importable.
Prints a JSON summary and writes it to bench/results/gpu_job_DEVICE.json (and to $OUT when set).
`--quick` cuts steps and option videos so the run fits about 8 minutes on an H200 (estimated, not measured).
Needs Ray, diffusers and PyAV besides torch (on a lent GPU: `source .whl/unpack.sh`, see bench/README.md).
"""

from __future__ import annotations

import argparse
import copy
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pandas as pd
import torch
from gpu_common import device_and_dtype, save_report, sync, timed  # bench/ is on sys.path when this script runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's packages, not an installed copy
PARTS = ("job", "loop", "unet", "four_step", "options", "fp8")


class Watch:
    """Polls a folder for mp4s and samples GPU utilization every 0.2 s, in a thread, until stopped."""

    def __init__(self, folder: str, start: float):
        self.folder, self.start, self.samples, self.first, self.last, self.count = folder, start, [], None, None, 0
        self._stop = threading.Event()
        self._smi = shutil.which("nvidia-smi") if torch.cuda.is_available() else None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            now = time.time()
            n = len(glob.glob(os.path.join(self.folder, "**", "*.mp4"), recursive=True))
            if n and self.first is None:
                self.first = now
            if n > self.count:
                self.count, self.last = n, now
            util = self._utilization()
            if util is not None:
                self.samples.append((now, util))
            self._stop.wait(0.2)

    def _utilization(self) -> float | None:
        if self._smi:
            try:
                out = subprocess.run([self._smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"],
                                     capture_output=True, text=True, timeout=2).stdout
                return float(out.split()[0])
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return None
        if torch.cuda.is_available():
            try:
                return float(torch.cuda.utilization())
            except Exception:  # no pynvml
                return None
        return None

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        n = len(glob.glob(os.path.join(self.folder, "**", "*.mp4"), recursive=True))  # what the last 0.2 s wrote
        if n > self.count:
            self.count, self.last = n, time.time()
            self.first = self.first or self.last
        busy = [u for t, u in self.samples if self.first is not None and self.first <= t <= self.last]
        return {"videos": self.count, "first_video_s": _round(self.first - self.start if self.first else None),
                "first_to_last_s": _round(self.last - self.first if self.first else None),
                "gpu_busy_first_to_last": round(sum(busy) / len(busy) / 100, 3) if busy else "n/a",
                "gpu_samples": len(busy)}


def _round(x, n: int = 2):
    return None if x is None else round(float(x), n)


def run_job(models: str, table: str, args, out: str, precision: str) -> dict:
    """`python -m jobs.animate` as a user runs it: a fresh process, its own embedded Ray, one actor."""
    cmd = [sys.executable, "-m", "jobs.animate", "--prompts", table, "--base", os.path.join(models, "base"),
           "--motion-module", os.path.join(models, "motion_module.safetensors"), "--out", out,
           "--num-frames", str(args.frames), "--height", str(args.size), "--width", str(args.size),
           "--steps", str(args.steps), "--guidance-scale", "7.5", "--no-gif", "--precision", precision,
           "--workers", "1", "--log-level", "WARNING", *args.job_args]
    if not torch.cuda.is_available():
        cmd += ["--cpus-per-worker", "1", "--torch-threads", str(torch.get_num_threads())]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])}
    start = time.time()
    watch = Watch(os.path.join(out, "videos"), start)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.time() - start
    report = {"seconds": round(seconds, 2), "exit_code": proc.returncode, **watch.stop()}
    report["videos_per_s"] = round(report["videos"] / seconds, 4)
    if proc.returncode:
        report["stderr_tail"] = proc.stderr[-2000:]
    print(f"job: {report}", flush=True)
    return report


def run_loop(models: str, prompts: list[str], args, out: str, device: str, dtype) -> dict:
    from animate import plain_loop  # bench/animate.py

    marks, start = [], time.time()
    watch = Watch(out, start)
    seconds = plain_loop(models, prompts, args, out, device=device, dtype=dtype, marks=marks)
    report = {"seconds": round(seconds, 2), **watch.stop()}
    loaded = next(t for what, t in marks if what == "loaded")
    videos = [t for what, t in marks if what == "video"]
    report.update(videos_per_s=round(len(videos) / seconds, 4), load_s=round(loaded - start, 2),
                  seconds_per_video=round((videos[-1] - loaded) / len(videos), 3))
    print(f"loop: {report}", flush=True)
    return report


def unet_figures(pipe, args, peak_tflops: float, reps: int = 5) -> dict:
    """One UNet call with the CFG batch of one video: FLOPs counted, seconds measured, TFLOP/s and MFU."""
    from torch.utils.flop_counter import FlopCounterMode

    unet, lat = pipe.unet, args.size // pipe.vae_scale_factor
    dev, dt = unet.device, unet.dtype
    sample = torch.randn(2, unet.config.in_channels, args.frames, lat, lat, device=dev, dtype=dt)
    # diffusers' AnimateDiffPipeline repeats the text embeddings per frame before the UNet: (b f, 77, d)
    text = torch.randn(2 * args.frames, 77, unet.config.cross_attention_dim, device=dev, dtype=dt)
    t = torch.tensor(500, device=dev)
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            unet(sample, t, encoder_hidden_states=text)
        for _ in range(2):
            unet(sample, t, encoder_hidden_states=text)
        _, seconds = timed(lambda: [unet(sample, t, encoder_hidden_states=text) for _ in range(reps)])
    flops = counter.get_total_flops()
    tflops = flops / (seconds / reps) / 1e12
    report = {"tflop_per_call": round(flops / 1e12, 3), "seconds_per_call": round(seconds / reps, 4),
              "tflop_per_s": round(tflops, 2), "peak_tflops": peak_tflops, "mfu": round(tflops / peak_tflops, 4)}
    print(f"unet: {report}", flush=True)
    return report


def requests(n: int, args, **settings):
    from animatediff_core.sampling.generate import GenerationSettings, Request

    s = GenerationSettings(**{"num_frames": args.frames, "height": args.size, "width": args.size, "steps": args.steps,
                              "guidance_scale": 7.5, **settings})
    return [Request(f"a photo of subject {i}, cinematic lighting", "blurry", seed=i, settings=s) for i in range(n)]


def four_step(pipe, args, loop: dict | None) -> dict:
    """AnimateDiff-Lightning's sampler as the job runs it (euler_trailing, 4 steps, guidance 1.0), one video per call."""
    from animatediff_core.sampling.generate import generate

    reqs = requests(args.option_videos, args, sampler="euler_trailing", steps=4, guidance_scale=1.0)
    generate(pipe, reqs[:1])  # warm-up
    _, seconds = timed(lambda: [generate(pipe, [r]) for r in reqs])
    per_video = seconds / len(reqs)
    report = {"seconds_per_video": round(per_video, 3)}
    if loop:
        report["speedup_vs_loop_per_video"] = round(loop["seconds_per_video"] / per_video, 2)
    generate(pipe, requests(1, args))  # back to the DDIM sampler for what follows
    print(f"four_step: {report}", flush=True)
    return report


def compare(frames, reference) -> dict:
    a = np.stack(frames).astype(np.float64)
    b = np.stack(reference).astype(np.float64)
    mse = float(((a - b) ** 2).mean())
    return {"psnr_db": round(float(10 * np.log10(255**2 / mse)), 2) if mse else "inf", "max_abs_diff": int(np.abs(a - b).max())}


def option_runs(pipe, args, fp8: bool) -> dict:
    """Each speed option on a copy of the loaded pipeline: first call (compile's warm-up), then a timed batched call."""
    from animatediff_core.models.speed import SpeedOptions, apply_speed
    from animatediff_core.sampling.generate import generate

    reqs = requests(args.option_videos, args)
    chunk = args.option_videos * args.frames  # every frame of the batch in one decode
    backend = args.compile_backend or ("inductor" if torch.cuda.is_available() else "eager")
    configs = {"plain": SpeedOptions(), "fuse_qkv": SpeedOptions(fuse_qkv=True),
               "channels_last": SpeedOptions(channels_last=True), f"vae_chunk_{chunk}": SpeedOptions(vae_chunk=chunk),
               "compile": SpeedOptions(compile=True, compile_backend=backend),
               "all": SpeedOptions(fuse_qkv=True, channels_last=True, compile=True, compile_backend=backend, vae_chunk=chunk)}
    out, reference = {}, None
    for name, options in configs.items():
        if "options" in args.skip:
            break
        copy_ = copy.deepcopy(pipe)
        try:
            apply_speed(copy_, options)
            _, first = timed(generate, copy_, reqs)
            frames, seconds = timed(generate, copy_, reqs)
            reference = frames if reference is None else reference
            out[name] = {"first_call_s": round(first, 2), "seconds_per_video": round(seconds / len(reqs), 3),
                         **compare(frames, reference)}
        except Exception as e:  # one option failing (a compiler error) must not lose the others' figures
            out[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        if "seconds_per_video" in out[name] and "seconds_per_video" in out.get("plain", {}):
            out[name]["speedup_vs_plain"] = round(out["plain"]["seconds_per_video"] / out[name]["seconds_per_video"], 3)
        print(f"option {name}: {out[name]}", flush=True)
        del copy_
        torch._dynamo.reset()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if fp8:
        out["fp8"] = fp8_run(pipe, reqs, reference)
        print(f"option fp8: {out['fp8']}", flush=True)
    return out


def fp8_run(pipe, reqs, reference) -> dict | str:
    try:
        import torchao
    except ImportError:
        return "torchao not installed"
    if not torch.cuda.is_available():
        return f"torchao {torchao.__version__}: FP8 needs a CUDA GPU"
    from animatediff_core.sampling.generate import generate

    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, quantize_

        copy_ = copy.deepcopy(pipe)
        quantize_(copy_.unet, Float8DynamicActivationFloat8WeightConfig())
        _, first = timed(generate, copy_, reqs)
        frames, seconds = timed(generate, copy_, reqs)
        return {"first_call_s": round(first, 2), "seconds_per_video": round(seconds / len(reqs), 3),
                **(compare(frames, reference) if reference is not None else {})}
    except Exception as e:
        return f"failed: {type(e).__name__}: {str(e)[:300]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="sd15", choices=["sd15", "tiny"])
    ap.add_argument("--quick", action="store_true", help="8 sampler steps and 2 videos per option (~8 minutes on an H200)")
    ap.add_argument("--prompts", type=int, default=32, help="videos for the job and the loop")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=None, help="DDIM steps (default 25; 8 with --quick)")
    ap.add_argument("--option-videos", type=int, default=None, help="videos per timed call of each option (default 4; 2 with --quick)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="the device's dense fp16 peak (H200 and H100 SXM: 989)")
    ap.add_argument("--compile-backend", default=None, help="default: inductor on a GPU, eager on CPU")
    ap.add_argument("--skip", default="", help=f"comma-separated parts to leave out: {','.join(PARTS)}")
    ap.add_argument("--job-args", nargs=argparse.REMAINDER, default=[], help="more flags for jobs.animate (last)")
    ap.add_argument("--results", default=os.path.join(ROOT, "bench", "results"))
    args = ap.parse_args()
    args.steps = args.steps or (8 if args.quick else 25)
    args.option_videos = args.option_videos or (2 if args.quick else 4)
    args.skip = {s for s in args.skip.split(",") if s}
    unknown = args.skip - set(PARTS)
    if unknown:
        ap.error(f"--skip: unknown part(s) {', '.join(sorted(unknown))}; known: {', '.join(PARTS)}")
    tmp = tempfile.mkdtemp(prefix="gpu-job-")
    try:
        report = run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the sd15 model set is ~6 GB
    import json

    print(json.dumps(report, indent=1))
    job, loop, unet = report.get("job", {}), report.get("loop", {}), report.get("unet", {})
    print(f"summary ({report['device']}): job {job.get('videos_per_s')} videos/s, loop {loop.get('videos_per_s')} videos/s, "
          f"ratio {report.get('throughput_ratio_job_over_loop')}; first video: job {job.get('first_video_s')} s, loop "
          f"{loop.get('first_video_s')} s; GPU busy first->last: job {job.get('gpu_busy_first_to_last')}, loop "
          f"{loop.get('gpu_busy_first_to_last')}; UNet {unet.get('tflop_per_s')} TFLOP/s, MFU {unet.get('mfu')}")
    print("written:", ", ".join(save_report(report, f"gpu_job_{args.shape}", args.results)))


def run(args, tmp: str) -> dict:
    from animatediff_core.models.pipeline import load_pipeline
    from animatediff_core.tiny import write_tiny_models
    from jobs.config import setup_logging

    setup_logging("WARNING")
    device, dtype, name = device_and_dtype()
    report = {"device": name, "torch": torch.__version__, "shape": args.shape, "quick": args.quick,
              "settings": {k: v for k, v in vars(args).items() if k != "skip"} | {"skip": sorted(args.skip)}}
    t = time.time()
    models = str(write_tiny_models(os.path.join(tmp, "models"), preset=args.shape))
    report["models_written_s"] = round(time.time() - t, 1)
    print(f"{args.shape} models written in {report['models_written_s']}s", flush=True)
    prompts = [f"a photo of subject {i}, cinematic lighting" for i in range(args.prompts)]
    table = os.path.join(tmp, "prompts.csv")
    pd.DataFrame({"prompt": prompts, "seed": list(range(args.prompts))}).to_csv(table, index=False)
    if "job" not in args.skip:
        report["job"] = run_job(models, table, args, os.path.join(tmp, "job"), "fp16" if device == "cuda" else "fp32")
    if "loop" not in args.skip:
        report["loop"] = run_loop(models, prompts, args, os.path.join(tmp, "loop"), device, dtype)
    if "job" in report and "loop" in report:
        report["throughput_ratio_job_over_loop"] = round(report["job"]["videos_per_s"] / report["loop"]["videos_per_s"], 3)
    if args.skip >= {"unet", "four_step", "options", "fp8"}:
        return report
    pipe, report["core_load_s"] = timed(load_pipeline, os.path.join(models, "base"),
                                        os.path.join(models, "motion_module.safetensors"), device, dtype)
    if "unet" not in args.skip:
        report["unet"] = unet_figures(pipe, args, args.peak_tflops)
    if "four_step" not in args.skip:
        report["four_step"] = four_step(pipe, args, report.get("loop"))
    report["options"] = option_runs(pipe, args, fp8="fp8" not in args.skip)
    sync()
    if device == "cuda":
        report["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return report


if __name__ == "__main__":
    main()
