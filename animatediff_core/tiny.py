"""Tiny models in the real file formats, for tests, the demo and CPU smoke runs of every job.

`write_tiny_models(out)` writes, deterministically from a seed:
  out/base/                        SD-1.x-shaped base in diffusers layout (unet, vae, text_encoder,
                                   a real CLIP BPE tokenizer, AnimateDiff's DDIM scheduler)
  out/motion_adapter/              a random (not zero-initialized) motion module, diffusers layout
  out/motion_module.safetensors    the same module in the original AnimateDiff layout
  out/checkpoints/                 personalized checkpoints: a DreamBooth-style single-file LDM
                                   .safetensors, a kohya LoRA and a diffusers/peft LoRA
  out/clip/                        a random CLIP (transformers CLIPModel folder with tokenizer and
                                   image-processor config) for the evaluation metrics
  out/motion_loras/                one random motion LoRA twice: zoom.safetensors in diffusers/peft keys
                                   (as jobs.train --motion-lora writes) and zoom_original.safetensors in the
                                   official v2 MotionLoRA layout (written last, from their own seed)
  out/raft_small.pth               a random RAFT (small) in torchvision's state-dict keys, for motion_flow
  out/vbench/                      VBench's model cache layout (`--vbench-models`) with random stand-ins:
                                   dino_model/dino_vitbase16_pretrain.pth (a small DINO ViT),
                                   clip_model/ViT-B-32.pt and ViT-L-14.pt (small CLIP image towers, OpenAI's
                                   keys), aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth (a linear head)
                                   and raft_model/models/raft-things.pth (a full-size RAFT-large in the original
                                   RAFT's DataParallel keys)
  out/i3d_pretrained_400.pt        an I3D at 1/8 of the real widths in VideoGPT's keys, for FVD (`--i3d`)
  out/control/                     control models (tiny preset only): controlnet/ (a random SD-1.x
                                   ControlNet, diffusers folder), controlnet.safetensors and
                                   controlnet_original.safetensors (the same weights in one file, diffusers
                                   keys and the original control_model.* layout), sparsectrl_rgb/ and sparsectrl_scribble/ (random SparseCtrl
                                   models: RGB keyframes go through the VAE, scribbles do not)
  out/official/                    stand-ins for the official repository's files in their released layouts
                                   (tiny preset only; write_official_models): dreambooth.safetensors (with a
                                   VAE), lora.safetensors, motion_module_v2.ckpt, motion_module_v3.ckpt,
                                   motion_lora.ckpt, v3_adapter.ckpt, sparsectrl_rgb.ckpt, sparsectrl_scribble.ckpt
  out/ip_adapter/                  image prompts (tiny preset only; write_ip_adapters), h94/IP-Adapter's layout:
                                   image_encoder/ (a random CLIPVisionModelWithProjection folder),
                                   ip-adapter_sd15.safetensors (base variant), ip-adapter-plus_sd15.safetensors
                                   (plus: a perceiver over the encoder's hidden states) and ip-adapter_sd15.bin
                                   (the base weights as the released .bin: nested dicts of tensors); the toy SDXL
                                   set has its own under sdxl/ip_adapter/ (ip-adapter_sdxl.safetensors, image_encoder/)
  out/videos/                      4 short synthetic clips (moving color patterns, 32 frames 64x64) and
                                   captions.csv (file, caption): training data for CPU smoke runs of
                                   jobs.train and jobs.ingest (tiny preset only)
The shapes follow SD-1.x (cross-attention UNet, 4-channel latents, CLIP text encoder) at toy width.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ControlNetModel, MotionAdapter, SparseControlNetModel, UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
)
from transformers.utils import logging as transformers_logging

from animatediff_core.io.checkpoints import save_state_dict
from animatediff_core.metrics.clip_vision import ClipVision
from animatediff_core.metrics.dino import DinoViT
from animatediff_core.metrics.flow import LARGE, SMALL, raft_state, to_original
from animatediff_core.metrics.i3d import random_state as i3d_random_state
from animatediff_core.models.inflate import new_motion_adapter
from animatediff_core.models.ldm_keys import (
    CLIP_PREFIX,
    SDXL_CLIP_PREFIX,
    controlnet_to_ldm,
    open_clip_to_ldm,
    text_encoder_to_ldm,
    unet_to_ldm,
    vae_to_ldm,
)
from animatediff_core.models.motion_config import MotionModuleConfig
from animatediff_core.models.motion_formats import diffusers_to_original, save_motion_adapter
from animatediff_core.models.motion_lora import TARGET_RE
from animatediff_core.models.tokenizer import write_clip_tokenizer
from animatediff_core.settings.schedule import ScheduleConfig

diffusers_logging.disable_progress_bar()
transformers_logging.disable_progress_bar()

TINY_UNET = dict(
    block_out_channels=(32, 64),
    layers_per_block=2,
    sample_size=32,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    norm_num_groups=2,
    attention_head_dim=8,
)
TINY_VAE = dict(
    block_out_channels=(32, 64),
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    latent_channels=4,
    norm_num_groups=2,
    sample_size=64,
)
TINY_TEXT = dict(
    hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=5,
    vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    projection_dim=32,
)
# A toy SDXL: three levels like SDXL's (so its motion modules fit no SD-1.x toy), SDXL's size and pooled-text conditioning (addition_time_embed_dim x 6 + the second
# text encoder's projection, 8 x 6 + 32), cross-attention over both text encoders (32 + 48). Its second
# encoder is wider than the first and has ten layers, as diffusers' from_single_file tells an SDXL file by them.
TINY_XL_UNET = dict(
    block_out_channels=(32, 64, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(2, 4, 4), use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
    transformer_layers_per_block=(1, 1, 2), projection_class_embeddings_input_dim=80, cross_attention_dim=80, norm_num_groups=32,
)
TINY_XL_TEXT_2 = dict(TINY_TEXT, hidden_size=48, num_hidden_layers=10, projection_dim=32)
# SD-1.5's shapes (random weights): for benchmarks that need realistic sizes, never for tests.
SD15_UNET = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
SD15_VAE = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=512)
SD15_TEXT = dict(TINY_TEXT, hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                 projection_dim=768)
PRESETS = {"tiny": (TINY_UNET, TINY_VAE, TINY_TEXT), "sd15": (SD15_UNET, SD15_VAE, SD15_TEXT)}
# The evaluation CLIP: a 32-px toy, or OpenAI CLIP ViT-L/14's shapes for benchmarks.
CLIP_PRESETS = {
    "tiny": dict(text_config=dict(TINY_TEXT, num_hidden_layers=2), projection_dim=32, vision_config=dict(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=32, patch_size=8)),
    "sd15": dict(text_config=SD15_TEXT, projection_dim=768, vision_config=dict(
        hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24, image_size=224, patch_size=14)),
}
# IP-Adapters' image encoders: hidden width (what plus adapters read) and projection width (what base adapters read) differ.
TINY_IMAGE_ENCODER = dict(hidden_size=48, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=32,
                          patch_size=8, projection_dim=24)
TINY_XL_IMAGE_ENCODER = dict(TINY_IMAGE_ENCODER, hidden_size=40, projection_dim=20)
LORA_TARGETS_UNET = ("to_q", "to_k", "to_v", "to_out.0")
LORA_TARGETS_TEXT = ("q_proj", "k_proj", "v_proj", "out_proj")


def tiny_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(**TINY_UNET)


def tiny_motion_adapter(zero_init: bool = False) -> MotionAdapter:
    """Random motion module for the tiny UNet. Not zero-initialized: frames differ as a trained module's would."""
    adapter = new_motion_adapter(TINY_UNET, MotionModuleConfig.tiny(), zero_init=zero_init)
    if not zero_init:
        with torch.no_grad():  # larger outputs than default init, so motion is visible in 2-step samples
            for name, p in adapter.named_parameters():
                if "proj_out" in name and name.endswith("weight"):
                    p.normal_(0.0, 0.2)
    return adapter


def write_tiny_models(out: str | Path, seed: int = 0, preset: str = "tiny") -> Path:
    """Write the whole model set under `out` (see module docstring). Deterministic for a seed.

    `preset="sd15"` writes the same files at SD-1.5's shapes (random weights, ~6 GB) for benchmarks.
    """
    out = Path(out)
    torch.manual_seed(seed)
    unet_cfg, vae_cfg, text_cfg = PRESETS[preset]
    unet = UNet2DConditionModel(**unet_cfg)
    vae = AutoencoderKL(**vae_cfg)
    text = CLIPTextModel(CLIPTextConfig(**text_cfg))
    base = out / "base"
    unet.save_pretrained(base / "unet")
    vae.save_pretrained(base / "vae")
    text.save_pretrained(base / "text_encoder")
    write_clip_tokenizer(base / "tokenizer")
    ScheduleConfig().inference_scheduler().save_pretrained(base / "scheduler")
    (base / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }, indent=2))

    adapter = tiny_motion_adapter() if preset == "tiny" else new_motion_adapter(dict(unet.config), MotionModuleConfig(), zero_init=False)
    save_motion_adapter(adapter, str(out / "motion_adapter"), fmt="diffusers")
    save_motion_adapter(adapter, str(out / "motion_module.safetensors"), fmt="original")

    ckpts = out / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed + 1)
    save_state_dict(_dreambooth_state(unet, text, g), str(ckpts / "dreamy.safetensors"))
    rank = 4 if preset == "tiny" else 32
    save_state_dict(_kohya_lora_state(unet, text, g, rank=rank, alpha=rank / 2), str(ckpts / "toon_lora.safetensors"))
    save_state_dict(_peft_lora_state(unet, g, rank=rank), str(ckpts / "film_peft_lora.safetensors"))
    loras = out / "motion_loras"
    loras.mkdir(exist_ok=True)
    for original, name in ((False, "zoom.safetensors"), (True, "zoom_original.safetensors")):
        g = torch.Generator().manual_seed(seed + 2)  # the same weights in both layouts
        save_state_dict(motion_lora_state(adapter, g, rank=2 if preset == "tiny" else 32, original=original), str(loras / name))

    torch.manual_seed(seed + 2)  # the CLIP is written last, from its own seed: the files above do not depend on it
    write_clip(out / "clip", preset)
    save_state_dict(raft_state(SMALL, seed=seed + 3), str(out / "raft_small.pth"))  # after the CLIP, from its own seed
    write_vbench_models(out / "vbench", seed=seed + 4)
    save_state_dict(i3d_random_state(1 / 8, seed=seed + 5), str(out / "i3d_pretrained_400.pt"))
    if preset == "tiny":  # SD-1.5-sized control models would add ~4 GB that no benchmark reads
        torch.manual_seed(seed + 3)
        write_control_models(out / "control", unet, adapter, vae_scale=2 ** (len(vae.config.block_out_channels) - 1))
        torch.manual_seed(seed + 4)
        write_official_models(out / "official", unet, vae, text, out / "control", torch.Generator().manual_seed(seed + 4))
        torch.manual_seed(seed + 5)
        write_sdxl_models(out / "sdxl", torch.Generator().manual_seed(seed + 5))
        write_ip_adapters(out / "ip_adapter", unet, seed + 6)
        write_tiny_videos(out / "videos")
    return out


def write_sdxl_models(out: Path, g: torch.Generator) -> None:
    """A toy SDXL set: `base/` (a diffusers SDXL folder: two text encoders and tokenizers), `motion_module.ckpt`
    (an AnimateDiff-SDXL module in the original layout, as mm_sdxl_v10_beta.ckpt), `hsxl_temporal_layers.safetensors`
    (a Hotshot-XL-layout module, 24 positions), `checkpoints/dreambooth_xl.safetensors` (SDXL's single-file layout:
    both text encoders and a VAE) and `checkpoints/lora_xl.safetensors` (kohya keys on the UNet and both encoders)."""
    unet = UNet2DConditionModel(**TINY_XL_UNET)
    vae = AutoencoderKL(**TINY_VAE)
    text = CLIPTextModel(CLIPTextConfig(**TINY_TEXT))
    text_2 = CLIPTextModelWithProjection(CLIPTextConfig(**TINY_XL_TEXT_2))
    base = out / "base"
    for part, model in (("unet", unet), ("vae", vae), ("text_encoder", text), ("text_encoder_2", text_2)):
        model.save_pretrained(base / part)
    for part in ("tokenizer", "tokenizer_2"):
        write_clip_tokenizer(base / part)
    ScheduleConfig().inference_scheduler().save_pretrained(base / "scheduler")
    (base / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.42.1", "force_zeros_for_empty_prompt": True,
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }, indent=2))
    # Released modules carry no config: loaders assume the official 8 heads and 32 groups, so these use them too.
    adapter = new_motion_adapter(dict(unet.config), MotionModuleConfig(use_mid_block=False), zero_init=False)
    save_state_dict(diffusers_to_original(adapter.state_dict()), str(out / "motion_module.ckpt"))
    hotshot = new_motion_adapter(dict(unet.config), MotionModuleConfig(use_mid_block=False, max_seq_length=24), zero_init=False)
    save_state_dict(original_to_hotshot(diffusers_to_original(hotshot.state_dict())), str(out / "hsxl_temporal_layers.safetensors"))
    ckpts = out / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    state = _dreambooth_state(unet, text, g, vae, text_prefix=SDXL_CLIP_PREFIX)
    state.update(open_clip_to_ldm(_perturb(text_2.state_dict(), g)))
    save_state_dict(state, str(ckpts / "dreambooth_xl.safetensors"))
    save_state_dict(_kohya_lora_state(unet, text, g, rank=4, alpha=2.0, text_2=text_2), str(ckpts / "lora_xl.safetensors"))
    write_ip_adapters(out / "ip_adapter", unet, 7, encoder=TINY_XL_IMAGE_ENCODER, name="ip-adapter_sdxl", plus=False)


def original_to_hotshot(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original AnimateDiff motion-module keys -> Hotshot-XL's names for the same modules."""
    out = {}
    for k, v in state.items():
        k = re.sub(r"\.motion_modules\.(\d+)\.temporal_transformer\.", r".temporal_attentions.\1.", k)
        out[k.replace("pos_encoder.pe", "pos_encoder.positional_encoding")] = v
    return out


def write_vbench_models(out: Path, seed: int = 0) -> Path:
    """Random stand-ins in VBench's cache layout (see the module docstring), each from its own seed. The
    networks whose widths VBench's code reads from the weights are small; RAFT-large's are fixed."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vit = DinoViT(dim=64, depth=2, patch=16, grid=14, hidden=128)
        with torch.no_grad():
            vit.cls_token.normal_(0.0, 0.02)
            vit.pos_embed.normal_(0.0, 0.02)  # DINO's init (zeros would leave positions out)
        save_state_dict(vit.state_dict(), str(out / "dino_model" / "dino_vitbase16_pretrain.pth"))
        for name, patch, grid in (("ViT-B-32", 32, 7), ("ViT-L-14", 14, 16)):
            tower = ClipVision(width=64, layers=2, patch=patch, grid=grid, output_dim=32)
            with torch.no_grad():
                for p in (tower.class_embedding, tower.positional_embedding, tower.proj):
                    p.normal_(0.0, 64 ** -0.5)  # OpenAI's init scale (zeros would make every frame alike)
            save_state_dict({f"visual.{k}": v for k, v in tower.state_dict().items()}, str(out / "clip_model" / f"{name}.pt"))
        save_state_dict(torch.nn.Linear(32, 1).state_dict(), str(out / "aesthetic_model" / "emb_reader" / "sa_0_4_vit_l_14_linear.pth"))
    original = {f"module.{k}": v for k, v in to_original(raft_state(LARGE, seed=seed + 1)).items()}  # a DataParallel save
    save_state_dict(original, str(out / "raft_model" / "models" / "raft-things.pth"))
    return out


TINY_CAPTIONS = ("a red square drifting right", "a green stripe moving down", "a blue ball bouncing", "a gray fade")


def write_tiny_videos(out: Path, frames: int = 32, size: int = 64) -> None:
    """`out/clip_N.mp4` (`frames` frames, `size` x `size`, moving color patterns, no randomness) and
    `out/captions.csv` naming them: a training folder for smoke runs."""
    import numpy as np

    from animatediff_core.io.video_io import write_video

    out.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:size, 0:size]
    rows = ["file,caption"]
    for i, caption in enumerate(TINY_CAPTIONS):
        video = np.zeros((frames, size, size, 3), np.uint8)
        for t in range(frames):
            phase = (x + y * (i % 2) + 3 * t * (i + 1)) % size
            video[t, ..., i % 3] = (255 * phase / size).astype(np.uint8)
            video[t, ..., (i + 1) % 3] = (4 * t + 40 * i) % 256
        write_video(str(out / f"clip_{i}.mp4"), video, fps=8)
        rows.append(f"clip_{i}.mp4,{caption}")
    (out / "captions.csv").write_text("\n".join(rows) + "\n")


def write_control_models(out: Path, unet: UNet2DConditionModel, adapter: MotionAdapter, vae_scale: int = 8) -> None:
    """Under `out`: `controlnet/` (a diffusers ControlNetModel folder), `controlnet.safetensors` and
    `controlnet_original.safetensors` (the same weights in one file: diffusers keys, original layout), `sparsectrl_rgb/` and `sparsectrl_scribble/` (SparseControlNetModel folders).
    Random weights, the zero-initialized output convolutions included, so each changes the video."""
    # The control-image encoder downsamples to the latent size: once per VAE level past the first.
    embedding = (16, 32, 96, 256)[: vae_scale.bit_length()]  # 8 -> 4 widths (SD), 2 -> 2 (the tiny VAE)
    control = ControlNetModel.from_unet(unet, conditioning_channels=3, conditioning_embedding_out_channels=embedding)
    _shake_zero_convs(control)
    control.save_pretrained(out / "controlnet")
    save_state_dict(control.state_dict(), str(out / "controlnet.safetensors"))
    save_state_dict(controlnet_to_ldm(control.state_dict(), dict(unet.config)), str(out / "controlnet_original.safetensors"))
    cfg, motion = dict(unet.config), adapter.config
    for name, simplified, channels in (("sparsectrl_rgb", True, 4), ("sparsectrl_scribble", False, 3)):
        sparse = SparseControlNetModel(
            in_channels=cfg["in_channels"], conditioning_channels=channels,
            down_block_types=tuple(t.replace("2D", "Motion") for t in cfg["down_block_types"]),
            block_out_channels=cfg["block_out_channels"], layers_per_block=cfg["layers_per_block"],
            norm_num_groups=cfg["norm_num_groups"], cross_attention_dim=cfg["cross_attention_dim"],
            attention_head_dim=cfg["attention_head_dim"], motion_max_seq_length=motion["motion_max_seq_length"],
            motion_num_attention_heads=motion["motion_num_attention_heads"],
            use_simplified_condition_embedding=simplified, conditioning_embedding_out_channels=embedding)
        _shake_zero_convs(sparse)
        sparse.save_pretrained(out / name)


def write_official_models(out: Path, unet, vae, text, control: Path, g: torch.Generator) -> None:
    """Stand-ins for the files the official AnimateDiff repository's configs name, in their released layouts:
    `dreambooth.safetensors` (LDM keys with a baked-in VAE), `lora.safetensors` (kohya, alpha != rank),
    `motion_module_v2.ckpt` (mid block) and `motion_module_v3.ckpt` (original keys, torch pickles of tensors),
    `motion_lora.ckpt` (a v2 MotionLoRA), `v3_adapter.ckpt` (the domain adapter: LoRA on the image model's
    attention), `sparsectrl_rgb.ckpt` and `sparsectrl_scribble.ckpt` (the control/ SparseCtrl models' weights
    with their motion modules in the original layout)."""
    out.mkdir(parents=True, exist_ok=True)
    save_state_dict(_dreambooth_state(unet, text, g, vae), str(out / "dreambooth.safetensors"))
    save_state_dict(_kohya_lora_state(unet, text, g, rank=4, alpha=3.0), str(out / "lora.safetensors"))
    # Released modules carry no config: loaders assume the official 8 heads and 32 groups, so these use them too.
    v2 = new_motion_adapter(dict(unet.config), MotionModuleConfig(), zero_init=False)
    v3 = new_motion_adapter(dict(unet.config), MotionModuleConfig(use_mid_block=False), zero_init=False)
    for adapter, name in ((v2, "motion_module_v2.ckpt"), (v3, "motion_module_v3.ckpt")):
        save_state_dict(diffusers_to_original(adapter.state_dict()), str(out / name))
    save_state_dict(motion_lora_state(v2, g, rank=2, original=True), str(out / "motion_lora.ckpt"))
    save_state_dict(_domain_adapter_state(unet, g, rank=4), str(out / "v3_adapter.ckpt"))
    for name in ("sparsectrl_rgb", "sparsectrl_scribble"):
        sparse = SparseControlNetModel.from_pretrained(control / name).state_dict()
        motion = {k: v for k, v in sparse.items() if ".motion_modules." in k}
        state = {**{k: v for k, v in sparse.items() if ".motion_modules." not in k}, **diffusers_to_original(motion)}
        save_state_dict(state, str(out / f"{name}.ckpt"))


def _domain_adapter_state(unet, g, rank: int) -> dict[str, torch.Tensor]:
    """The v3 domain adapter's layout: `<attention>.processor.to_q_lora.down.weight` on the image model's attention."""
    state = {}
    for name, lin in _lora_pairs(unet, LORA_TARGETS_UNET):
        stem = name.replace(".to_out.0", ".to_out").rsplit(".", 1)
        key = f"{stem[0]}.processor.{stem[1]}_lora"
        state[f"{key}.down.weight"] = 0.3 * torch.randn(rank, lin.in_features, generator=g)
        state[f"{key}.up.weight"] = 0.3 * torch.randn(lin.out_features, rank, generator=g)
    return state


def _shake_zero_convs(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1 and not p.any():  # the zero-initialized convolutions (outputs, simplified embedding)
                p.normal_(0.0, 0.2)


def write_clip(out: str | Path, preset: str = "tiny") -> Path:
    """A random CLIPModel folder with CLIP's BPE tokenizer and image-processor config (OpenAI's mean/std,
    bicubic resize of the short side and center crop to the vision model's size), loadable offline."""
    out = Path(out)
    model = CLIPModel(CLIPConfig(**CLIP_PRESETS[preset]))
    model.save_pretrained(out)
    write_clip_tokenizer(out)
    side = model.config.vision_config.image_size
    CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side}).save_pretrained(out)
    return out


def motion_lora_state(adapter: MotionAdapter, g: torch.Generator, rank: int, original: bool = False) -> dict[str, torch.Tensor]:
    """Random LoRA weights on every motion-module attention projection of `adapter`, in diffusers/peft
    keys (`unet.<module>.lora_A.weight`) or the original layout
    (`<...>.temporal_transformer.transformer_blocks.0.attention_blocks.0.processor.to_q_lora.down.weight`)."""
    state = {}
    for name, mod in adapter.named_modules():
        if not re.fullmatch(TARGET_RE, name):
            continue
        down = 0.5 * torch.randn(rank, mod.in_features, generator=g)
        up = 0.5 * torch.randn(mod.out_features, rank, generator=g)
        if original:
            head, block, attn, proj = re.fullmatch(r"(.*motion_modules\.\d+\.)(transformer_blocks\.\d+\.)attn([12])\.(.*)", name).groups()
            stem = f"{head}temporal_transformer.{block}attention_blocks.{int(attn) - 1}.processor.{proj.removesuffix('.0')}_lora"
            state[f"{stem}.down.weight"], state[f"{stem}.up.weight"] = down, up
        else:
            state[f"unet.{name}.lora_A.weight"], state[f"unet.{name}.lora_B.weight"] = down, up
    return state


def _perturb(sd: dict[str, torch.Tensor], g: torch.Generator) -> dict[str, torch.Tensor]:
    """Every weight moved by ~10% noise. The mean in float64: a float32 reduction's last bit depends on the
    thread count, and the files must not."""
    return {k: v + 0.1 * v.abs().double().mean().float() * torch.randn(v.shape, generator=g) for k, v in sd.items()}


def _dreambooth_state(unet, text, g, vae=None, text_prefix: str = CLIP_PREFIX) -> dict[str, torch.Tensor]:
    """Full fine-tune stand-in: every base weight moved, saved with LDM single-file keys (with a baked-in VAE
    when `vae` is given)."""
    state = unet_to_ldm(_perturb(unet.state_dict(), g), dict(unet.config))
    state.update(text_encoder_to_ldm(_perturb(text.state_dict(), g), text_prefix))
    if vae is not None:
        state.update(vae_to_ldm(_perturb(vae.state_dict(), g), dict(vae.config)))
    return state


def _lora_pairs(module: torch.nn.Module, targets: tuple[str, ...]):
    for name, mod in module.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.endswith(targets):
            yield name, mod


def _kohya_lora_state(unet, text, g, rank: int, alpha: float, text_2=None) -> dict[str, torch.Tensor]:
    """kohya-ss / A1111 keys: lora_unet_<module_with_underscores>.lora_down/.lora_up/.alpha (SDXL's: lora_te1_, lora_te2_)."""
    state = {}
    models = [("lora_unet", unet, LORA_TARGETS_UNET), ("lora_te1" if text_2 is not None else "lora_te", text, LORA_TARGETS_TEXT)]
    models += [("lora_te2", text_2, LORA_TARGETS_TEXT)] if text_2 is not None else []
    for prefix, model, targets in models:
        for name, lin in _lora_pairs(model, targets):
            key = f"{prefix}_{name.replace('.', '_')}"
            state[f"{key}.lora_down.weight"] = 0.3 * torch.randn(rank, lin.in_features, generator=g)
            state[f"{key}.lora_up.weight"] = 0.3 * torch.randn(lin.out_features, rank, generator=g)
            state[f"{key}.alpha"] = torch.tensor(alpha)
    return state


def _peft_lora_state(unet, g, rank: int) -> dict[str, torch.Tensor]:
    """diffusers/peft keys: unet.<module>.lora_A.weight / lora_B.weight (alpha = rank)."""
    state = {}
    for name, lin in _lora_pairs(unet, LORA_TARGETS_UNET):
        state[f"unet.{name}.lora_A.weight"] = 0.3 * torch.randn(rank, lin.in_features, generator=g)
        state[f"unet.{name}.lora_B.weight"] = 0.3 * torch.randn(lin.out_features, rank, generator=g)
    return state


def write_ip_adapters(out: Path, unet: UNet2DConditionModel, seed: int, encoder: dict = TINY_IMAGE_ENCODER,
                      name: str = "ip-adapter_sd15", plus: bool = True) -> None:
    """Random IP-Adapters for `unet` in h94/IP-Adapter's released layout (tencent-ailab/IP-Adapter's modules):
    `image_encoder/` (a CLIPVisionModelWithProjection folder), `NAME.safetensors` (`ImageProjModel`: 4 tokens from
    the projected image embedding), `NAME.bin` (the same weights as the released .bin, nested dicts) and, with
    `plus`, `ip-adapter-plus_sd15.safetensors` (`Resampler`: 16 tokens from the penultimate hidden states, width
    cross_attention_dim, 64-wide heads, depth 4, ff x4). Each adapter has `to_k_ip`/`to_v_ip` for every cross-attention."""
    import io

    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from animatediff_core.io.storage import write_bytes_atomic
    from animatediff_core.models.image_prompt import expected_layers

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        CLIPVisionModelWithProjection(CLIPVisionConfig(**encoder)).save_pretrained(out / "image_encoder")
    g = torch.Generator().manual_seed(seed)
    cross = unet.config.cross_attention_dim

    def linear(rows: int, cols: int) -> torch.Tensor:
        return torch.randn(rows, cols, generator=g) * cols ** -0.5

    def norm(width: int, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": 1 + 0.1 * torch.randn(width, generator=g), f"{prefix}.bias": 0.1 * torch.randn(width, generator=g)}

    layers = {k: linear(*shape) for k, shape in expected_layers(unet).items()}
    base = {"image_proj.proj.weight": linear(4 * cross, encoder["projection_dim"]),
            "image_proj.proj.bias": 0.1 * torch.randn(4 * cross, generator=g), **norm(cross, "image_proj.norm"), **layers}
    save_state_dict(base, str(out / f"{name}.safetensors"))
    nested = {part: {k[len(part) + 1:]: v for k, v in base.items() if k.startswith(part + ".")} for part in ("image_proj", "ip_adapter")}
    buf = io.BytesIO()
    torch.save(nested, buf)
    write_bytes_atomic(str(out / f"{name}.bin"), buf.getvalue())
    if not plus:
        return
    inner, p = 64, "image_proj"  # one 64-wide head (diffusers reads heads as to_q rows // 64)
    resampler = {f"{p}.latents": torch.randn(1, 16, cross, generator=g) / cross ** 0.5,
                 f"{p}.proj_in.weight": linear(cross, encoder["hidden_size"]), f"{p}.proj_in.bias": torch.zeros(cross),
                 f"{p}.proj_out.weight": linear(cross, cross), f"{p}.proj_out.bias": torch.zeros(cross), **norm(cross, f"{p}.norm_out")}
    for i in range(4):
        q = f"{p}.layers.{i}"
        resampler.update({**norm(cross, f"{q}.0.norm1"), **norm(cross, f"{q}.0.norm2"), f"{q}.0.to_q.weight": linear(inner, cross),
                          f"{q}.0.to_kv.weight": linear(2 * inner, cross), f"{q}.0.to_out.weight": linear(cross, inner),
                          **norm(cross, f"{q}.1.0"), f"{q}.1.1.weight": linear(4 * cross, cross), f"{q}.1.3.weight": linear(cross, 4 * cross)})
    save_state_dict({**resampler, **{k: linear(*v.shape) for k, v in layers.items()}}, str(out / "ip-adapter-plus_sd15.safetensors"))
