"""Fréchet Video Distance (Unterthiner et al., "Towards Accurate Generative Models of Video", 2018), computed
as VideoGPT's ``videogpt/fvd/fvd.py`` (Yan et al. 2021; also TATS's and common_metrics_on_video_quality's
"videogpt" FVD) computes it:

- frames: the first `FRAMES` (16) of each video;
- resolution: the short side resized to 224 (bilinear, ``align_corners=False``, no antialiasing; the long
  side rounded up), then a 224 x 224 center crop, values scaled to [-1, 1];
- features: the 400 Kinetics logits of I3D (`i3d.py`, ``i3d_pretrained_400.pt``), averaged over time;
- distance: ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1^1/2 S2 S1^1/2)``, with unbiased covariances
  (``n - 1``) and symmetric square roots from eigendecompositions in float64 (VideoGPT: TF-GAN's SVD form;
  StyleGAN-V: ``scipy.linalg.sqrtm(S1 S2)``; all equal for covariance matrices).

FVD is biased at small sample sizes: the published numbers use 2,048 videos or more per set; entries with
fewer videos are comparable with each other, not with papers. Frames are ``(f, h, w, 3) uint8``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from animatediff_core.metrics.i3d import I3D

FRAMES = 16
RESOLUTION = 224
PROTOCOL = "videogpt-fvd-v1"  # names the preprocessing and features in cache keys: change it if they change


def preprocess(frames: np.ndarray, num_frames: int = FRAMES, resolution: int = RESOLUTION) -> torch.Tensor:
    """``(f, h, w, 3) uint8`` (f >= num_frames) -> ``(3, num_frames, 224, 224)`` float32 in [-1, 1]
    (VideoGPT's ``data.preprocess`` followed by its ``* 2``, operation for operation)."""
    video = torch.from_numpy(np.ascontiguousarray(frames[:num_frames])).permute(0, 3, 1, 2).float() / 255.0
    h, w = video.shape[-2:]
    scale = resolution / min(h, w)
    size = (resolution, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), resolution)
    video = F.interpolate(video, size=size, mode="bilinear", align_corners=False)
    top, left = (video.shape[-2] - resolution) // 2, (video.shape[-1] - resolution) // 2
    video = video[:, :, top : top + resolution, left : left + resolution].permute(1, 0, 2, 3).contiguous()
    return (video - 0.5) * 2


@torch.no_grad()
def features(i3d: I3D, videos: list[np.ndarray], num_frames: int = FRAMES, batch: int = 8) -> np.ndarray:
    """``(n, classes)`` float64 I3D logits of `videos` (each with at least `num_frames` frames), `batch` per pass."""
    device = next(i3d.parameters()).device
    out = []
    for start in range(0, len(videos), batch):
        x = torch.stack([preprocess(v, num_frames) for v in videos[start : start + batch]]).to(device)
        out.append(i3d(x).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, i3d.logits.conv3d.out_channels))


def statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(d,)`` and unbiased covariance ``(d, d)`` of ``(n, d)`` features (n >= 2), float64."""
    feats = np.asarray(feats, dtype=np.float64)
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def _sqrt_psd(mat: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (rounding negatives to 0)."""
    vals, vecs = np.linalg.eigh((mat + mat.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between the Gaussians ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``."""
    root = _sqrt_psd(sigma1)
    cross = np.trace(_sqrt_psd(root @ sigma2 @ root))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * cross)


def fvd(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """FVD between two ``(n, d)`` feature sets (each n >= 2)."""
    return frechet_distance(*statistics(feats1), *statistics(feats2))
