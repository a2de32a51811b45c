"""VBench's video-quality dimensions (Huang et al., "VBench: Comprehensive Benchmark Suite for Video
Generative Models", CVPR 2024), per video, computed as Vchitect/VBench's own code computes them.

Frames are ``(f, h, w, 3) uint8`` RGB, all of a video's frames (VBench reads them all). Per dimension, from
VBench's ``vbench/<dimension>.py`` and ``vbench/utils.py``:

- ``subject_consistency``: DINO ViT-B/16 [CLS] features (`dino.py`) of each frame resized so its short side is
  224 (bilinear, no antialiasing, no crop; ImageNet mean/std); per frame t >= 1 the mean of
  ``max(0, cos(t-1, t))`` and ``max(0, cos(0, t))``; the video's score is their mean.
- ``background_consistency``: the same formula on CLIP ViT-B/32 image embeddings (`clip_vision.py`) of frames
  resized to 224 (bicubic, no antialiasing), center-cropped to 224, CLIP mean/std.
- ``aesthetic_quality``: LAION's linear aesthetic predictor (``sa_0_4_vit_l_14_linear.pth``, a 768 -> 1
  linear layer) on L2-normalized CLIP ViT-L/14 embeddings (same preprocessing), divided by 10, averaged
  over frames.
- ``dynamic_degree``: RAFT (``raft-things.pth``, 20 updates) between consecutive frames sampled every
  ``round(fps / 8)``-th; a pair's score is the mean of its largest 5% flow magnitudes on the padded grid; the
  video is dynamic (1.0) when at least ``round(4 * frames / 16)`` pairs score above ``6 * min(h, w) / 256``
  pixels, else 0.0. VBench's dimension score is the share of dynamic videos.
- ``temporal_flickering``: ``(255 - mean over consecutive pairs of mean |x_t+1 - x_t|) / 255``, only for
  videos VBench's static filter (``vbench/cli/static_filter.py``) keeps, NaN for the others: top-2% means on
  every consecutive pair plus (first, last) and (last, first), threshold ``3 * min(h, w) / 256``; static when
  at most ``round(2 * frames / 16)`` consecutive pairs exceed it and both end pairs stay within
  ``threshold * count * 2``. Its verdict is the ``static_filter`` column (1.0 static, 0.0 not).
VBench's aggregate of a dimension is the mean of these per-video values (subject and background
consistency: weighted by frame pairs, the same for equal-length videos); `round` is Python's (half to even),
as in VBench. Videos under RAFT's 128-pixel minimum side (only toy ones) are upscaled before flow, as in
`flow.py`, and the thresholds use the upscaled size; VBench has no rule for them.

Not implemented: ``motion_smoothness`` (AMT-S frame interpolation) and ``imaging_quality`` (MUSIQ): their
networks are large enough to be a port of their own.

Weights come from VBench's own cache layout (``~/.cache/vbench``, `MODELS`), read safely
(`checkpoints.load_state_dict`), or from the local Hugging Face cache for the models the Hub holds in
the same form; nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from animatediff_core.metrics import clip_vision, dino, flow
from animatediff_core.io import hub, storage
from animatediff_core.io.checkpoints import load_state_dict
from animatediff_core.errors import CheckpointError, ConfigError
from animatediff_core.metrics.columns import VBENCH_DIMENSIONS
from animatediff_core.metrics.scores import temporal_flicker

RAFT_ITERS = 20  # DynamicDegree.infer and StaticFilter.infer: iters=20, test_mode=True
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP_STATS = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


@dataclass(frozen=True)
class ModelFile:
    """Where VBench keeps one model (paths under its cache folder, first found wins) and, where the Hub holds
    the same weights, its Hub id."""

    what: str
    paths: tuple[str, ...]
    hub: str | None = None


MODELS = {
    "dino": ModelFile("DINO ViT-B/16", ("dino_model/dino_vitbase16_pretrain.pth", "dino_model/dino_vitbase16_pretrain.safetensors"),
                      "timm/vit_base_patch16_224.dino/model.safetensors"),
    "clip_b32": ModelFile("CLIP ViT-B/32", ("clip_model/ViT-B-32.pt", "clip_model/ViT-B-32.safetensors"), "openai/clip-vit-base-patch32"),
    "clip_l14": ModelFile("CLIP ViT-L/14", ("clip_model/ViT-L-14.pt", "clip_model/ViT-L-14.safetensors"), "openai/clip-vit-large-patch14"),
    "aesthetic": ModelFile("LAION aesthetic predictor (linear, ViT-L/14)", ("aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth",
                                                                           "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.safetensors")),
    "raft": ModelFile("RAFT (raft-things)", ("raft_model/models/raft-things.pth", "raft_model/models/raft-things.safetensors")),
}
NEEDS = {"subject_consistency": ("dino",), "background_consistency": ("clip_b32",), "aesthetic_quality": ("clip_l14", "aesthetic"),
         "dynamic_degree": ("raft",), "temporal_flickering": ("raft",)}
HUB_ONLY = "hub"  # --vbench-models hub: every model from the local Hugging Face cache


def _hub_file(ref: str) -> str | None:
    """A local weight file for a Hub id from the Hugging Face cache only (None when not cached)."""
    try:
        path = hub.resolve(ref, allow_patterns=["model.safetensors", "pytorch_model.bin", "*.json"], local_only=True)
    except CheckpointError:
        return None
    if ref.endswith(hub.FILE_EXTS):
        return path
    for name in ("model.safetensors", "pytorch_model.bin"):
        if storage.exists(storage.join(path, name)):
            return storage.join(path, name)
    return None


def locate(root: str, name: str) -> str:
    """The file for model `name`: under the VBench folder `root` (VBench's layout), else the Hub cache."""
    spec = MODELS[name]
    if root != HUB_ONLY:
        for rel in spec.paths:
            if storage.exists(storage.join(root, rel)):
                return storage.join(root, rel)
    found = _hub_file(spec.hub) if spec.hub else None
    if found:
        return found
    looked = ([] if root == HUB_ONLY else list(spec.paths)) + ([f"Hub id {spec.hub} (local cache)"] if spec.hub else [])
    raise ConfigError(f"--vbench-models {root}: no {spec.what} (looked for {', '.join(looked) or 'nothing: not on the Hub'}); "
                      "download it beforehand (VBench's own download puts it there) or leave its dimension out of --vbench-dimensions")


@dataclass
class VBenchModels:
    """The loaded networks the chosen dimensions need (None where not needed)."""

    dimensions: tuple[str, ...]
    dino: dino.DinoViT | None = None
    clip_b32: clip_vision.ClipVision | None = None
    clip_l14: clip_vision.ClipVision | None = None
    aesthetic: torch.nn.Linear | None = None
    raft: flow.Raft | None = None


def _aesthetic(uri: str) -> torch.nn.Linear:
    state = load_state_dict(uri)
    if set(state) != {"weight", "bias"} or state["weight"].ndim != 2 or state["weight"].shape[0] != 1:
        raise CheckpointError(f"{uri}: not LAION's linear aesthetic predictor (expected weight (1, d) and bias (1,), "
                              f"found {', '.join(f'{k} {tuple(v.shape)}' for k, v in sorted(state.items())[:3])})")
    head = torch.nn.Linear(state["weight"].shape[1], 1)
    head.load_state_dict({k: v.float() for k, v in state.items()})
    return head.eval()


def load_models(root: str, dimensions: tuple[str, ...] = VBENCH_DIMENSIONS, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32, flow_batch: int = flow.PAIR_BATCH) -> VBenchModels:
    """Every network `dimensions` need, once. DINO, RAFT and the aesthetic head run in float32 (VBench's do);
    the CLIPs in `dtype` (VBench's ``clip.load`` gives fp16 on a GPU, fp32 on CPU). ConfigError names a
    missing or unreadable file."""
    names = {n for d in dimensions for n in NEEDS[d]}
    models = VBenchModels(tuple(dimensions))
    for name in sorted(names):
        uri = locate(root, name)
        try:
            if name == "raft":
                models.raft = flow.load_raft(uri, device, RAFT_ITERS, flow_batch, flag="--vbench-models")
                if models.raft.net.spec is not flow.LARGE:
                    raise CheckpointError(f"{uri}: a raft_small network; VBench's raft-things.pth is RAFT-large")
                continue
            state = None if name == "aesthetic" else load_state_dict(uri)
            if name == "dino":
                models.dino = dino.build(state, uri).to(device)
            elif name == "aesthetic":
                models.aesthetic = _aesthetic(uri).to(device)
            else:
                setattr(models, name, clip_vision.build(state, uri).to(device, dtype))
        except CheckpointError as e:
            raise ConfigError(f"--vbench-models {e}") from None
    if models.clip_l14 is not None and models.aesthetic is not None and \
            models.aesthetic.in_features != models.clip_l14.proj.shape[1]:
        raise ConfigError(f"--vbench-models {root}: the aesthetic head takes {models.aesthetic.in_features}-d embeddings, "
                          f"the ViT-L/14 gives {models.clip_l14.proj.shape[1]}-d")
    return models


def _resize_short(x: torch.Tensor, side: int, mode: str) -> torch.Tensor:
    """torchvision's ``Resize(side, antialias=False)`` on a float ``(n, 3, h, w)`` batch: short side to `side`,
    long side ``int(side * long / short)``, unchanged when already that size."""
    h, w = x.shape[-2:]
    short, long = min(h, w), max(h, w)
    size = (side, int(side * long / short)) if h <= w else (int(side * long / short), side)
    if (h, w) == size:
        return x
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=False)


def _normalize(x: torch.Tensor, stats) -> torch.Tensor:
    mean, std = (torch.tensor(s, dtype=x.dtype).view(1, 3, 1, 1) for s in stats)
    return (x / 255.0 - mean) / std


def dino_pixels(frames: np.ndarray) -> torch.Tensor:
    """VBench's ``dino_transform(224)`` on decoded frames: ``(f, 3, 224, w')`` (short side 224, no crop)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    return _normalize(_resize_short(x, 224, "bilinear"), IMAGENET)


def clip_pixels(frames: np.ndarray, side: int = 224) -> torch.Tensor:
    """VBench's ``clip_transform(224)``: bicubic short side to 224, center crop (torchvision's rounding), CLIP stats."""
    x = _resize_short(torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float(), side, "bicubic")
    top, left = int(round((x.shape[-2] - side) / 2.0)), int(round((x.shape[-1] - side) / 2.0))
    return _normalize(x[:, :, top : top + side, left : left + side], CLIP_STATS)


def consistency(feats: torch.Tensor) -> float:
    """VBench's subject/background consistency of ``(f, d)`` L2-normalized features; NaN for one frame."""
    if len(feats) < 2:
        return float("nan")
    previous = (feats[1:] * feats[:-1]).sum(-1).clamp(min=0)
    first = (feats[1:] * feats[:1]).sum(-1).clamp(min=0)
    return float(((previous + first) / 2).double().mean())


@torch.no_grad()
def _features(net, pixels: torch.Tensor, batch: int) -> torch.Tensor:
    device, dtype = next(net.parameters()).device, next(net.parameters()).dtype
    out = [net(pixels[i : i + batch].to(device, dtype)).float().cpu() for i in range(0, len(pixels), batch)]
    return F.normalize(torch.cat(out), dim=-1)


def top_share_mean(flows: torch.Tensor, share: float) -> np.ndarray:
    """Per ``(n, 2, H, W)`` flow: the mean of its largest ``int(H * W * share)`` magnitudes (VBench's get_score)."""
    mags = flows.norm(dim=1).flatten(1)
    k = int(mags.shape[1] * share)
    return mags.topk(k, dim=1).values.double().mean(dim=1).numpy() if k else np.full(len(flows), np.nan)


def moving(scores: np.ndarray, side: int, frames: int) -> bool:
    """VBench's DynamicDegree.check_move: enough pairs above the size-scaled threshold."""
    threshold, needed = 6.0 * side / 256.0, round(4 * frames / 16.0)
    return len(scores) > 0 and int((scores > threshold).sum()) >= needed


def static(consecutive: np.ndarray, ends: np.ndarray, side: int, frames: int) -> bool:
    """VBench's StaticFilter.check_static on consecutive pairs' and the two end pairs' scores."""
    threshold, allowed = 3.0 * side / 256.0, round(2 * frames / 16.0)
    return int((consecutive > threshold).sum()) <= allowed and bool((ends <= threshold * allowed * 2).all())


def motion(raft: flow.Raft, frames: np.ndarray, fps: float) -> tuple[float, float]:
    """(dynamic_degree, static_filter) of one video, 1.0 or 0.0; each pair's flow computed once."""
    n = len(frames)
    kept = list(range(0, n, max(1, round(fps / 8))))
    dyn = list(zip(kept[:-1], kept[1:]))
    stat = [(i, i + 1) for i in range(n - 1)] + [(0, n - 1), (n - 1, 0)]
    pairs = list(dict.fromkeys(dyn + stat))
    flows, (h, w) = flow.flows_between(raft, frames, pairs)
    at = {p: k for k, p in enumerate(pairs)}
    side = min(h, w)
    dyn_scores = top_share_mean(flows[[at[p] for p in dyn]], 0.05) if dyn else np.zeros(0)
    stat_scores = top_share_mean(flows[[at[p] for p in stat]], 0.02)
    return float(moving(dyn_scores, side, len(kept))), float(static(stat_scores[:-2], stat_scores[-2:], side, n))


def score_video(models: VBenchModels, frames: np.ndarray, fps: float, batch: int = 64) -> dict[str, float]:
    """Every VBench column of one video (NaN where its dimension is off, or for a one-frame video)."""
    out = {c: float("nan") for c in (*VBENCH_DIMENSIONS, "static_filter")}
    if len(frames) < 2:
        return out
    dims = models.dimensions
    if "subject_consistency" in dims:
        out["subject_consistency"] = consistency(_features(models.dino, dino_pixels(frames), batch))
    if "background_consistency" in dims or "aesthetic_quality" in dims:
        pixels = clip_pixels(frames)
        if "background_consistency" in dims:
            out["background_consistency"] = consistency(_features(models.clip_b32, pixels, batch))
        if "aesthetic_quality" in dims:
            feats = _features(models.clip_l14, pixels, batch)
            with torch.no_grad():
                scores = models.aesthetic(feats.to(models.aesthetic.weight.device)).squeeze(-1).double().cpu() / 10
            out["aesthetic_quality"] = float(scores.mean())
    if models.raft is not None:
        dynamic, still = motion(models.raft, frames, fps)
        if "dynamic_degree" in dims:
            out["dynamic_degree"] = dynamic
        if "temporal_flickering" in dims:
            out["static_filter"] = still
            out["temporal_flickering"] = temporal_flicker(frames) if still else float("nan")
    return out

