"""Training-clip sampling: which frames to take, at what decode size, and the center crop.

AnimateDiff's WebVid recipe (Guo et al. 2023, ``animatediff/data/dataset.py``): 16 frames
at stride 4, shorter side resized to 256, center-cropped to 256x256. The index and size
helpers are pure numpy; :func:`load_clip` adds decoding via :mod:`animatediff_core.io.video_io`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from animatediff_core.configs import check_fields, need
from animatediff_core.io.video_io import Source, fetch, probe_video, read_video, video_error


@dataclass
class ClipConfig:
    """``num_frames`` frames ``stride`` apart, center-cropped to ``size`` x ``size`` pixels.

    ``num_threads`` is passed to the decoder: 0 lets FFmpeg use all cores, 1 suits many
    decoders sharing one machine.
    """

    num_frames: int = 16
    stride: int = 4
    size: int = 256
    num_threads: int = 0

    def __post_init__(self):
        check_fields(self)
        for field in ("num_frames", "stride", "size"):
            need(getattr(self, field) >= 1, f"ClipConfig.{field} must be an int >= 1, found {getattr(self, field)!r}")


class ClipIndices(NamedTuple):
    indices: list[int]
    stride: int  # the stride actually used (may be below the requested one)


def sample_indices(
    total_frames: int, num_frames: int, stride: int, rng: np.random.Generator | None = None
) -> ClipIndices | None:
    """Pick ``num_frames`` frame indices ``stride`` apart from a video of ``total_frames``.

    If the clip spans more than the video, the largest stride that fits is used instead;
    returns None if even stride 1 does not fit. The start is uniform over the valid range
    when ``rng`` is given, else 0.
    """
    need(num_frames >= 1 and stride >= 1, f"expected num_frames >= 1 and stride >= 1, found {num_frames}, {stride}")
    if total_frames < num_frames:
        return None
    if num_frames > 1:
        stride = min(stride, (total_frames - 1) // (num_frames - 1))
    span = (num_frames - 1) * stride + 1
    start = int(rng.integers(0, total_frames - span + 1)) if rng is not None else 0
    return ClipIndices([start + i * stride for i in range(num_frames)], stride)


def decode_size(src_h: int, src_w: int, size: int) -> tuple[int, int]:
    """Decoder output ``(h, w)`` whose shorter side equals ``size``, keeping the aspect ratio.

    The longer side is rounded and never below ``size``, so a ``size`` x ``size`` center crop
    always fits. Small sources are upscaled.
    """
    need(min(src_h, src_w, size) >= 1, f"expected positive sizes, found source {src_h}x{src_w}, target {size}")
    if src_h <= src_w:
        return size, max(size, round(src_w * size / src_h))
    return max(size, round(src_h * size / src_w)), size


def center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """Crop ``(f, h, w, 3)`` frames to ``(f, size, size, 3)`` around the center (a view)."""
    _, h, w, _ = frames.shape
    if h < size or w < size:
        raise video_error(f"cannot crop {h}x{w} frames to {size}x{size}", "bad_frames")
    top, left = (h - size) // 2, (w - size) // 2
    return frames[:, top:top + size, left:left + size]


def load_clip(src: Source, cfg: ClipConfig, rng: np.random.Generator | None = None) -> np.ndarray:
    """Load one training clip ``(cfg.num_frames, cfg.size, cfg.size, 3) uint8`` from a URI or bytes.

    Reads the header, samples indices, decodes only those frames already resized by the
    decoder, then center-crops. Raises VideoError with ``reason`` ``"too_short"``,
    ``"corrupt"``, ``"empty"`` or ``"unreadable"`` so callers can count skips.
    """
    name = src if isinstance(src, str) else None
    data = fetch(src)  # remote objects are read once, for both probe and decode
    info = probe_video(data, name=name)
    clip = sample_indices(info.num_frames, cfg.num_frames, cfg.stride, rng)
    if clip is None:
        label = repr(name) if name else f"<{len(data)} bytes in memory>"
        raise video_error(f"video {label} has {info.num_frames} frames; a clip needs at least "
                          f"{cfg.num_frames}", "too_short")
    frames = read_video(data, clip.indices, decode_size(info.height, info.width, cfg.size),
                        num_threads=cfg.num_threads, name=name)
    return np.ascontiguousarray(center_crop(frames, cfg.size))
