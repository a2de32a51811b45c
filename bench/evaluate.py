"""Evaluation throughput: the metrics stage's videos/s next to generation's, on the tiny models (CPU).

    python bench/evaluate.py [--n 32] [--frames 16] [--size 64] [--steps 2] [--vit-l] [--vbench]

One process run: the batch job generates N videos (1 actor, 1 CPU, 2 torch threads, GIFs on); then the
evaluation's stages run on that folder the same way (1 actor): the metrics stage (decode + tiny CLIP) and
the domain-similarity stills (1-frame generations). Also times the core scoring call in-process (no Ray),
without and with motion_flow (the tiny random raft_small, 12 updates).
`--vit-l` adds per-frame CPU timings at real shapes (random weights, in memory): CLIP ViT-L/14 at 224 px
and RAFT-large on a 512x512 frame pair against one SD-1.5 UNet forward at 512x512, from which
generation's cost per video is estimated.
`--vbench` adds scoring with every dimension on: VBench's five (the tiny stand-ins in VBench's layout: small DINO
and CLIPs, a full-size RAFT-large at 20 updates) and FVD's I3D features (the narrow stand-in), through the metrics
stage (Ray Data) and in-process; with `--vit-l`, also the real networks' cost per 16-frame 512x512 video
(DINO ViT-B/16, CLIP ViT-B/32 and ViT-L/14 per frame, RAFT-large on the 17 pairs VBench's two RAFT users need,
I3D on one 16-frame clip), against generation's estimate.
Prints figures and ratios; record them in bench/README.md with the machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np
import pandas as pd
import torch


def generate(models: str, table: str, args, out: str) -> float:
    from animatediff_core.configs import build
    from pipelines.animate.config import AnimateConfig
    from pipelines.animate.job import preflight, run_animate

    cfg = build(AnimateConfig, prompts=[table], base=os.path.join(models, "base"), motion_module=[os.path.join(models, "motion_adapter")],
                        out=out, num_frames=args.frames, height=args.size, width=args.size, steps=args.steps,
                        workers=1, cpus_per_worker=1, batch_size=8, gif=True, torch_threads=2)
    start = time.time()
    run_animate(preflight(cfg))
    return time.time() - start


def stages(models: str, folder: str, out: str, vbench: bool = False) -> dict[str, float]:
    from animatediff_core.configs import build
    from pipelines.evaluate.config import EvaluateConfig
    from pipelines.evaluate.run import render_stills, score
    from pipelines.evaluate.runs import read_runs

    cfg = build(EvaluateConfig, clip=os.path.join(models, "clip"), out=out, base=os.path.join(models, "base"),
                score_only=[folder], workers=1, cpus_per_worker=1, torch_threads=2)
    rows = read_runs([folder])
    t = time.time()
    scored = score(rows, cfg)
    metrics_s = time.time() - t
    assert scored.text_alignment.notna().all()
    t = time.time()
    render_stills(rows, cfg)
    times = {"metrics": metrics_s, "stills": time.time() - t}
    if vbench:
        cfg = build(EvaluateConfig, clip=os.path.join(models, "clip"), out=out, score_only=[folder], workers=1, cpus_per_worker=1,
                    torch_threads=2, vbench_models=os.path.join(models, "vbench"), fvd_reference=folder,
                    i3d=os.path.join(models, "i3d_pretrained_400.pt"))
        t = time.time()
        scored = score(rows, cfg)
        times["metrics_all"] = time.time() - t
        assert scored.subject_consistency.notna().all() and scored.i3d_features.map(len).gt(0).all()
    return times


def core_scoring(models: str, folder: str, raft: bool = False, vbench: bool = False) -> float:
    """Seconds to decode and score every video in-process: the actor's work without Ray (with RAFT: motion_flow
    too; with `vbench`: VBench's five dimensions and FVD's I3D features too)."""
    from animatediff_core.io.video_io import read_video
    from animatediff_core.metrics import flow, fvd, i3d
    from animatediff_core.metrics import scores as metrics
    from animatediff_core.metrics import vbench as vb
    from pipelines.animate.report import read_metadata

    clip = metrics.load_clip(os.path.join(models, "clip"))
    flow_model = flow.load_raft(os.path.join(models, "raft_small.pth")) if raft else None
    bench_models = vb.load_models(os.path.join(models, "vbench")) if vbench else None
    i3d_net = i3d.load(os.path.join(models, "i3d_pretrained_400.pt")) if vbench else None
    meta = read_metadata(folder)
    t = time.time()
    for start in range(0, len(meta), 16):
        chunk = meta.iloc[start : start + 16]
        videos = [read_video(u, num_threads=1) for u in chunk.video_uri]
        metrics.score_videos(clip, videos, list(chunk.prompt), raft=flow_model)
        if vbench:
            for video in videos:
                vb.score_video(bench_models, video, 8.0)
            fvd.features(i3d_net, videos, min(fvd.FRAMES, len(videos[0])))
    return time.time() - t


def vbench_real_shapes(frames: int = 16) -> dict[str, float]:
    """Seconds per 16-frame 512x512 video with VBench's real networks (random weights) and FVD's I3D, on this CPU."""
    from animatediff_core.metrics import dino, flow, fvd, i3d
    from animatediff_core.metrics import vbench as vb
    from animatediff_core.metrics.clip_vision import ClipVision

    video = np.random.default_rng(0).integers(0, 256, (frames, 512, 512, 3), dtype=np.uint8)
    out = {}
    with torch.no_grad():
        for name, net, pixels in (("dino_vitb16", dino.DinoViT(768, 12, 16, 14, 3072).eval(), vb.dino_pixels(video)),
                                  ("clip_vitb32", ClipVision(768, 12, 32, 7, 512).eval(), vb.clip_pixels(video)),
                                  ("clip_vitl14", ClipVision(1024, 24, 14, 16, 768).eval(), vb.clip_pixels(video))):
            t = time.time()
            net(pixels)
            out[name] = time.time() - t
        raft = flow.Raft(flow.RaftNet(flow.LARGE).eval(), vb.RAFT_ITERS, 2)
        t = time.time()
        flow.flows_between(raft, video[:3], [(0, 1), (1, 2)])
        out["raft_things"] = (time.time() - t) / 2 * (frames - 1 + 2)  # VBench's 15 consecutive pairs + 2 end pairs
        net = i3d.I3D({k[: -len(".conv3d.weight")]: v.shape[0] for k, v in i3d.random_state().items()
                       if k.endswith(".conv3d.weight")}, 400).eval()
        t = time.time()
        fvd.features(net, [video])
        out["i3d"] = time.time() - t
    return out


def vit_l_vs_unet(frames: int = 16, steps: int = 25) -> dict[str, float]:
    """Seconds per frame: CLIP ViT-L/14 image tower at 224 px vs one SD-1.5 UNet forward (CFG batch of 2);
    RAFT-large per 512x512 frame pair (12 updates)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPConfig, CLIPModel

    from animatediff_core.metrics import flow
    from animatediff_core.tiny import CLIP_PRESETS, SD15_UNET

    with torch.no_grad():
        clip = CLIPModel(CLIPConfig(**CLIP_PRESETS["sd15"])).eval()
        x = torch.randn(frames, 3, 224, 224)
        clip.visual_projection(clip.vision_model(pixel_values=x[:2]).pooler_output)  # warm-up
        t = time.time()
        clip.visual_projection(clip.vision_model(pixel_values=x).pooler_output)
        clip_s = (time.time() - t) / frames
        del clip
        raft = flow.Raft(flow.RaftNet(flow.LARGE).eval())
        pair = np.random.default_rng(0).integers(0, 256, (2, 512, 512, 3), dtype=np.uint8)
        t = time.time()
        flow.pair_flows(raft, pair)
        raft_s = time.time() - t
        del raft
        unet = UNet2DConditionModel(**SD15_UNET).eval()  # diffusers' defaults are SD-1.x's
        t = time.time()
        unet(torch.randn(2, 4, 64, 64), torch.tensor(500), encoder_hidden_states=torch.randn(2, 77, 768))
        unet_s = time.time() - t
    return {"clip_frame": clip_s, "unet_frame_step": unet_s, "generation_video_estimate": unet_s * frames * steps,
            "clip_video": clip_s * frames, "raft_pair": raft_s, "raft_video": raft_s * (frames - 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--vit-l", action="store_true", help="also time CLIP ViT-L/14 vs an SD-1.5 UNet per frame (CPU, ~3 GB RAM)")
    ap.add_argument("--vbench", action="store_true", help="also time scoring with VBench's dimensions and FVD on")
    args = ap.parse_args()
    from jobs.config import setup_logging

    setup_logging("WARNING")
    torch.set_num_threads(2)
    tmp = tempfile.mkdtemp(prefix="bench-evaluate-")
    try:
        run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args, tmp: str) -> None:
    import ray

    from animatediff_core.tiny import write_tiny_models

    models = str(write_tiny_models(os.path.join(tmp, "models")))
    suite = pd.read_csv(os.path.join(os.path.dirname(__file__), "..", "jobs", "data", "eval_prompts.csv"))
    table = os.path.join(tmp, "prompts.csv")
    pd.concat([suite] * (args.n // len(suite) + 1)).head(args.n).assign(seed=range(args.n)).drop(columns="id").to_csv(table, index=False)
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    folder = os.path.join(tmp, "generated")
    gen_s = generate(models, table, args, folder)
    st = stages(models, folder, os.path.join(tmp, "eval"), vbench=args.vbench)
    core_s = core_scoring(models, folder)
    core_flow_s = core_scoring(models, folder, raft=True)
    core_all_s = core_scoring(models, folder, vbench=True) if args.vbench else None
    n = args.n
    print(f"N={n} videos, {args.frames} frames {args.size}x{args.size}, {args.steps} steps, cpus={os.cpu_count()}")
    print(f"generation (batch job, end to end):        {gen_s:.1f}s  {n / gen_s:.3f} videos/s")
    print(f"metrics stage (Ray Data, decode + CLIP):   {st['metrics']:.1f}s  {n / st['metrics']:.3f} videos/s"
          f"  = {gen_s / st['metrics']:.1f}x generation's rate")
    print(f"metrics, core call in-process (no Ray):    {core_s:.1f}s  {n / core_s:.2f} videos/s  {n * args.frames / core_s:.0f} frames/s")
    print(f"  the same with motion_flow (tiny raft_small): {core_flow_s:.1f}s  {n / core_flow_s:.2f} videos/s"
          f"  ({core_flow_s / core_s:.1f}x the time without)")
    print(f"domain-similarity stills (Ray Data):       {st['stills']:.1f}s  {n / st['stills']:.3f} stills/s")
    if args.vbench:
        print(f"metrics stage, every dimension on (VBench's five + FVD features; Ray Data): {st['metrics_all']:.1f}s  "
              f"{n / st['metrics_all']:.3f} videos/s  = {gen_s / st['metrics_all']:.2f}x generation's rate")
        print(f"  the same in-process (no Ray): {core_all_s:.1f}s  {n / core_all_s:.3f} videos/s")
    if args.vit_l:
        v = vit_l_vs_unet(args.frames)
        print(f"[real shapes, CPU] CLIP ViT-L/14 image tower: {v['clip_frame'] * 1000:.0f} ms/frame, {v['clip_video']:.1f} s/video "
              f"of {args.frames} frames")
        print(f"[real shapes, CPU] SD-1.5 UNet forward, 512x512, CFG batch 2: {v['unet_frame_step']:.2f} s/frame/step; "
              f"generation >= {v['generation_video_estimate']:.0f} s/video at 25 steps (UNet only)")
        print(f"[real shapes, CPU] RAFT-large, 512x512 pair, 12 updates: {v['raft_pair']:.1f} s/pair, "
              f"{v['raft_video']:.0f} s/video of {args.frames} frames")
        print(f"  metrics / generation cost per video <= {v['clip_video'] / v['generation_video_estimate']:.4f}"
              f" (with motion_flow: {(v['clip_video'] + v['raft_video']) / v['generation_video_estimate']:.4f})")
        if args.vbench:
            r = vbench_real_shapes(args.frames)
            total = sum(r.values())
            print("[real shapes, CPU] per 512x512 video of %d frames: " % args.frames
                  + ", ".join(f"{k} {s:.1f}s" for k, s in r.items()) + f"; all {total:.0f}s = "
                  f"{total / v['generation_video_estimate']:.3f} x generation's UNet estimate")


if __name__ == "__main__":
    main()
