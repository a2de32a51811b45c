"""Image prompts (IP-Adapter): the image encoder's share of a video's time.

    python bench/image_prompt.py [--models DIR] [--frames 16] [--size 64] [--steps 2] [--vit-h]

Tiny models (`jobs.tiny_models`, random weights): one image prompt encoded (CLIP vision encoder, as the
actor does once per distinct image), a 16-frame video with that image prompt, and the same video text-only
(the adapter's extra attention). `--vit-h` also times one image through a CLIP ViT-H/14 vision encoder at its
real shape (h94/IP-Adapter's `models/image_encoder`, random weights, fp32, 224 px; twice for the plus
variant, which also encodes a black image for guidance). Prints figures measured in this run; no Ray.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np


def _best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def tiny(models: str, frames: int, size: int, steps: int) -> dict:
    from PIL import Image

    from animatediff_core.models.image_prompt import ImagePrompt
    from animatediff_core.models.pipeline import load_pipeline
    from animatediff_core.sampling.generate import Conditioning, GenerationSettings, Request, generate

    image = f"{tempfile.mkdtemp()}/ref.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(image)
    pipe = load_pipeline(f"{models}/base", f"{models}/motion_module.safetensors")
    ip = ImagePrompt(f"{models}/ip_adapter/ip-adapter_sd15.safetensors", f"{models}/ip_adapter/image_encoder")
    t = time.perf_counter()
    ip.attach(pipe)
    attach = time.perf_counter() - t

    def encode():
        ip.cache.clear()
        return ip.embeds(pipe, image)

    seconds_encode = _best(encode)
    s = GenerationSettings(num_frames=frames, height=size, width=size, steps=steps, ip_adapter_image=image)
    row = Request("a cat", "blurry", 0, s, Conditioning(image=encode()))
    text = Request("a cat", "blurry", 0, GenerationSettings(num_frames=frames, height=size, width=size, steps=steps))
    seconds_video = _best(lambda: generate(pipe, [row]), 2)
    seconds_text = _best(lambda: generate(pipe, [text]), 2)
    return {"attach_s": attach, "encode_s": seconds_encode, "video_with_image_s": seconds_video, "video_text_only_s": seconds_text,
            "encoder_share": seconds_encode / (seconds_encode + seconds_video), "adapter_overhead": seconds_video / seconds_text - 1}


def vit_h() -> dict:
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    # h94/IP-Adapter models/image_encoder/config.json (OpenCLIP ViT-H/14, laion2B): 632M parameters.
    config = CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_attention_heads=16, num_hidden_layers=32,
                              image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu")
    t = time.perf_counter()
    model = CLIPVisionModelWithProjection(config).eval()
    build = time.perf_counter() - t
    pixels = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        base = _best(lambda: model(pixels).image_embeds, 2)  # base adapters: the projected embedding
        plus = _best(lambda: model(torch.cat([pixels, torch.zeros_like(pixels)]), output_hidden_states=True).hidden_states[-2], 2)
    return {"vit_h_params_m": sum(p.numel() for p in model.parameters()) / 1e6, "vit_h_build_s": build,
            "vit_h_encode_base_s": base, "vit_h_encode_plus_s": plus}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="a jobs.tiny_models folder (default: written to a temporary folder)")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--vit-h", action="store_true", help="also time the real ViT-H/14 encoder shape (random weights)")
    args = ap.parse_args()
    models = args.models
    if models is None:
        from animatediff_core.tiny import write_tiny_models

        models = str(write_tiny_models(tempfile.mkdtemp()))
    out = tiny(models, args.frames, args.size, args.steps)
    if args.vit_h:
        out.update(vit_h())
    for k, v in out.items():
        print(f"{k:24s} {v:.4f}")


if __name__ == "__main__":
    main()
