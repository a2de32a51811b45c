"""One CUDA device: correctness of the core on GPU, and speed at SD-1.5 shape (random weights).

    python bench/gpu.py [--shape sd15|tiny] [--videos 4] [--steps 25] [--frames 16] [--size 512]

Writes SD-1.5-shaped random models in the real file formats (`write_tiny_models(preset="sd15")`:
diffusers base, original-layout motion module, kohya and peft LoRAs, a DreamBooth single file), then measures, in one run: a full pipeline load from
disk, personalized-checkpoint switches, and N videos through `generate` (one batched call) versus a
plain loop of diffusers AnimateDiffPipeline calls. Needs only torch, diffusers, transformers, peft,
safetensors (no Ray, no video codecs), so it runs on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import tempfile
import time

import torch
from gpu_common import timed  # bench/ is on sys.path when this script runs


def train_check(models: str, args, dev: str) -> dict:
    """A few motion-module training steps on the GPU, per precision/checkpointing setting: time, memory, frozen base."""
    from animatediff_core.models.motion_config import MotionModuleConfig
    from animatediff_core.models.pipeline import load_base
    from animatediff_core.training.trainer import Batch, MotionTrainer, TrainConfig, step_generator

    size = 256 if args.shape == "sd15" else 64
    out = {}
    for label, mp, ckpt in (("bf16_gradckpt", "bf16", True), ("bf16", "bf16", False), ("fp16_gradckpt", "fp16", True)):
        if dev == "cpu" and mp != "bf16":
            continue
        base = load_base(os.path.join(models, "base"))
        motion = MotionModuleConfig() if args.shape == "sd15" else MotionModuleConfig.tiny()
        cfg = TrainConfig(num_frames=args.frames, size=size, batch_size=args.train_batch, precision=mp,
                          gradient_checkpointing=ckpt, motion_config=motion)
        trainer = MotionTrainer(base, cfg, device=dev)
        before = {n: p.detach().clone() for n, p in trainer.unet.named_parameters()}
        frames = torch.randint(0, 256, (args.train_batch, args.frames, size, size, 3), dtype=torch.uint8)
        batch = Batch(captions=["a clip"] * args.train_batch, frames=frames)
        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer.train_step(batch, step_generator(0, 0, 0))  # warm-up
        results, secs = timed(lambda: [trainer.train_step(batch, step_generator(0, 0, i)) for i in range(1, 4)])
        losses = [r.loss for r in results]
        changed = {n for n, p in trainer.unet.named_parameters() if not torch.equal(p, before[n])}
        out[label] = {
            "step_s": secs / 3, "clips_per_s": 3 * args.train_batch / secs, "losses": losses,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else 0.0,
            "only_motion_changed": bool(changed) and all("motion_modules" in n for n in changed),
        }
        del trainer, base, before
        if dev == "cuda":
            torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="sd15", choices=["sd15", "tiny"])
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--train-batch", type=int, default=2, help="clips per training step (256x256 at sd15 shape)")
    args = ap.parse_args()
    from diffusers import AnimateDiffPipeline

    from animatediff_core.models.personalize import CheckpointSpec, Personalizer
    from animatediff_core.models.pipeline import load_pipeline
    from animatediff_core.sampling.generate import GenerationSettings, Request, generate
    from animatediff_core.tiny import write_tiny_models

    t = time.time()
    tmp = tempfile.mkdtemp(prefix="gpu-bench-")
    atexit.register(shutil.rmtree, tmp, True)  # the sd15 model set is ~12 GB
    models = str(write_tiny_models(tmp, preset=args.shape))
    print(f"{args.shape} models written in {time.time() - t:.0f}s", flush=True)
    ckpts = {"lora": "toon_lora", "peft_lora": "film_peft_lora", "dreambooth": "dreamy"}
    cuda = torch.cuda.is_available()
    dev, dt = ("cuda", torch.float16) if cuda else ("cpu", torch.float32)  # CPU: a dry run of this script
    report = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__, "shape": args.shape}
    pipe, report["full_load_s"] = timed(load_pipeline, os.path.join(models, "base"), os.path.join(models, "motion_module.safetensors"), dev, dt)
    p = Personalizer(pipe)
    base_unet = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    for kind, name in ckpts.items():
        spec = CheckpointSpec(name, os.path.join(models, "checkpoints", f"{name}.safetensors"))
        _, report[f"switch_{kind}_s"] = timed(p.apply, spec)
        _, report[f"reset_{kind}_s"] = timed(p.reset)
    report["reset_bitwise"] = all(torch.equal(v, base_unet[k]) for k, v in pipe.unet.state_dict().items())
    del base_unet
    s = GenerationSettings(args.frames, args.size, args.size, args.steps, 7.5)
    reqs = [Request(f"a photo of subject {i}", "blurry", seed=i, settings=s) for i in range(args.videos)]
    generate(pipe, reqs[:1])  # warm-up (kernels, allocator)
    videos, report["generate_batched_s"] = timed(generate, pipe, reqs)
    again, _ = timed(generate, pipe, reqs[:1])
    report["finite_frames"] = bool(all(v.std() > 0 for v in videos))
    report["same_seed_same_frames"] = bool((again[0] == videos[0]).mean() > 0.99)

    plain = AnimateDiffPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
                                motion_adapter=pipe.motion_adapter, scheduler=pipe.scheduler)
    plain.set_progress_bar_config(disable=True)

    def loop():
        for r in reqs:
            plain(r.prompt, negative_prompt=r.negative_prompt, num_frames=s.num_frames, height=s.height, width=s.width,
                  num_inference_steps=s.steps, guidance_scale=s.guidance_scale,
                  generator=torch.Generator("cpu").manual_seed(r.seed), output_type="np")

    _, report["diffusers_loop_s"] = timed(loop)
    report["speedup_batched_vs_loop"] = report["diffusers_loop_s"] / report["generate_batched_s"]
    for kind in ckpts:
        report[f"switch_{kind}_pct_of_load"] = 100 * report[f"switch_{kind}_s"] / report["full_load_s"]
    report["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    del plain, pipe, p
    if cuda:
        torch.cuda.empty_cache()
    report["train"] = train_check(models, args, dev)
    report["settings"] = vars(args)
    print(json.dumps(report, indent=1))
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "gpu_bench.json"), "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
