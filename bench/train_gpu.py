"""Motion-module training on one CUDA device at SD-1.5 shape: the parts bench/gpu.py does not time.

    python bench/train_gpu.py [--shape sd15|tiny] [--frames 16] [--size 256] [--batch 2]

In one run, with random weights at SD-1.5's shapes (`write_tiny_models(preset="sd15")`), bf16 autocast
and gradient checkpointing:
- a step from decoded frames (VAE + text encoder in the step) vs from precomputed latents and text
  embeddings (what `jobs.ingest` writes): time per step and the ratio;
- motion LoRA (rank 8) steps on the given motion module: time, peak memory, only LoRA weights change;
- a checkpoint written from GPU tensors and loaded into a fresh trainer: the next step's loss matches;
- validation sampling (`MotionTrainer.sample`, 2 prompts, CFG): time and frame shape.
Needs torch, diffusers, transformers, peft, safetensors, av and decord (no Ray).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile

import torch
from gpu_common import timed  # bench/ is on sys.path when this script runs


def steps(trainer, batch, n: int, first: int = 1):
    from animatediff_core.training.trainer import step_generator

    return [trainer.train_step(batch, step_generator(0, 0, first + i)).loss for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="sd15", choices=["sd15", "tiny"])
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--validation-steps", type=int, default=25)
    args = ap.parse_args()
    from animatediff_core.models.motion_config import MotionModuleConfig
    from animatediff_core.models.motion_formats import load_motion_adapter
    from animatediff_core.models.pipeline import load_base
    from animatediff_core.tiny import write_tiny_models
    from animatediff_core.training.trainer import VALIDATION_PROMPTS, Batch, MotionTrainer, TrainConfig, step_generator

    cuda = torch.cuda.is_available()  # CPU only for a dry run of the script (--shape tiny)
    dev = "cuda" if cuda else "cpu"
    report = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        models = write_tiny_models(os.path.join(tmp, "m"), preset=args.shape)
        base_uri, mm = os.path.join(models, "base"), os.path.join(models, "motion_module.safetensors")
        motion = MotionModuleConfig() if args.shape == "sd15" else MotionModuleConfig.tiny()
        cfg = TrainConfig(num_frames=args.frames, size=args.size, batch_size=args.batch, precision="bf16",
                          gradient_checkpointing=True, motion_config=motion, validation_steps=args.validation_steps,
                          validation_prompts=VALIDATION_PROMPTS[:2])
        frames = torch.randint(0, 256, (args.batch, args.frames, args.size, args.size, 3), dtype=torch.uint8)
        batch = Batch(captions=["waves on a beach"] * args.batch, frames=frames)

        # frames path vs precomputed latents (full motion-module training)
        t = MotionTrainer(load_base(base_uri), cfg, device=dev)
        latents, text = t.condition(batch, step_generator(0, 0, 0))
        cached = Batch(latents=latents.half().cpu(), text_embeddings=text.half().cpu())
        steps(t, batch, 1, first=0)
        _, secs_frames = timed(lambda: steps(t, batch, 3))
        _, secs_latents = timed(lambda: steps(t, cached, 3, first=4))
        report["step_s_frames"], report["step_s_latents"] = secs_frames / 3, secs_latents / 3
        report["latents_speedup"] = secs_frames / secs_latents
        (frames_out,), report["sample_s"] = timed(lambda: t.sample(["waves on a beach"]))
        report["sample_shape"], report["sample_finite"] = list(frames_out.shape), bool(frames_out.std() > 0)
        del t
        if cuda:
            torch.cuda.empty_cache()

        # motion LoRA: only the adapters move; checkpoint round trip from GPU tensors
        lora_cfg = dataclasses.replace(cfg, motion_lora_rank=8, lr=1e-3)
        t = MotionTrainer(load_base(base_uri), lora_cfg, load_motion_adapter(mm), device=dev)
        before = {n: p.detach().clone() for n, p in t.unet.named_parameters()}
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        steps(t, batch, 1, first=0)
        _, secs_lora = timed(lambda: steps(t, batch, 3))
        changed = {n for n, p in t.unet.named_parameters() if not torch.equal(p, before[n])}
        del before
        report["lora_step_s"], report["lora_peak_gib"] = secs_lora / 3, (torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0)
        report["lora_only_lora_changed"] = bool(changed) and all("lora_" in n for n in changed)
        ckpt = os.path.join(tmp, "ckpt")
        _, report["lora_save_s"] = timed(lambda: t.save_checkpoint(ckpt))
        fresh = MotionTrainer(load_base(base_uri), lora_cfg, load_motion_adapter(mm), device=dev)
        fresh.load_checkpoint(ckpt)
        a, b = steps(t, batch, 1, first=4)[0], steps(fresh, batch, 1, first=4)[0]
        report["resume_next_loss"] = [a, b]
        report["resume_matches"] = bool(fresh.step == t.step and abs(a - b) <= 1e-3 * max(1.0, abs(a)))
    print(json.dumps(report, indent=1))
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "train_gpu.json"), "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
