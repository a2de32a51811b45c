"""Training-clip sampling: which frames to take, at what decode size, the center crop and the flip.

AnimateDiff's WebVid recipe (Guo et al. 2023, ``animatediff/data/dataset.py``): 16 frames
at stride 4, shorter side resized to 256, center-cropped to 256x256, ``RandomHorizontalFlip``.
A clip may be confined to a span of its video (``start``/``end`` seconds, as Panda-70M, InternVid
and HD-VILA publish them): frame ``i`` lies in the span when ``start <= i / fps < end``, and every
sampled frame lies in it. ``sample_fps`` makes the stride follow each video's own frame rate.
The index and size helpers are pure numpy; :func:`sample_clip` adds decoding via
:mod:`animatediff_core.io.video_io`.
"""

from __future__ import annotations

import math
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
    sample_fps: float | None = None  # frames this many per second of video (the stride from each video's fps)
    flip: float = 0.0  # probability of mirroring a clip left-right

    def __post_init__(self):
        check_fields(self)
        for field in ("num_frames", "stride", "size"):
            need(getattr(self, field) >= 1, f"ClipConfig.{field} must be an int >= 1, found {getattr(self, field)!r}")
        need(self.sample_fps is None or self.sample_fps > 0, f"ClipConfig.sample_fps must be > 0, found {self.sample_fps!r}")
        need(0 <= self.flip <= 1, f"ClipConfig.flip is a probability in [0, 1], found {self.flip!r}")

    def stride_at(self, fps: float) -> int:
        """The stride in frames: ``stride``, or the one nearest ``fps / sample_fps`` when ``sample_fps`` is set."""
        if self.sample_fps is None or not fps > 0:
            return self.stride
        return max(1, round(fps / self.sample_fps))


class Span(NamedTuple):
    """A part of a video, in seconds (``end`` None: to the video's end)."""

    start: float = 0.0
    end: float | None = None


class Clip(NamedTuple):
    frames: np.ndarray  # (f, size, size, 3) uint8
    indices: list[int]  # the source frames, in order
    flipped: bool


class ClipIndices(NamedTuple):
    indices: list[int]
    stride: int  # the stride actually used (may be below the requested one)


def sample_indices(
    total_frames: int, num_frames: int, stride: int, rng: np.random.Generator | None = None, first: int = 0
) -> ClipIndices | None:
    """Pick ``num_frames`` frame indices ``stride`` apart from frames ``first .. total_frames - 1``.

    If the clip spans more than those frames, the largest stride that fits is used instead;
    returns None if even stride 1 does not fit. The start is uniform over the valid range
    when ``rng`` is given, else ``first``.
    """
    need(num_frames >= 1 and stride >= 1, f"expected num_frames >= 1 and stride >= 1, found {num_frames}, {stride}")
    available = total_frames - first
    if available < num_frames:
        return None
    if num_frames > 1:
        stride = min(stride, (available - 1) // (num_frames - 1))
    span = (num_frames - 1) * stride + 1
    start = first + (int(rng.integers(0, available - span + 1)) if rng is not None else 0)
    return ClipIndices([start + i * stride for i in range(num_frames)], stride)


# A span's end may pass the last frame by this much (timestamps rounded to milliseconds, containers whose
# duration differs by a frame); further, the span names frames the file does not have.
SPAN_SLACK_S = 0.5


def span_frames(span: Span, fps: float, total_frames: int) -> tuple[int, int]:
    """``(first, stop)``: the frames ``first <= i < stop`` of a video that lie in ``span``.

    Raises VideoError ``span_past_end`` when the span starts at or after the video's end or ends more
    than ``SPAN_SLACK_S`` after it, and ``bad_span`` when it is empty or reversed."""
    end = total_frames / fps if fps > 0 else float("inf")
    stop_s = end if span.end is None else span.end
    if not (0 <= span.start < stop_s):
        raise video_error(f"span {span.start}-{stop_s} s is empty or reversed", "bad_span")
    if span.start >= end or stop_s > end + SPAN_SLACK_S:
        raise video_error(f"span {span.start}-{stop_s} s lies past the video's end ({end:.3f} s)", "span_past_end")
    if not fps > 0:
        return 0, total_frames
    eps = 1e-6  # timestamps written to the millisecond land on frame boundaries up to rounding
    return math.ceil(span.start * fps - eps), min(total_frames, math.ceil(stop_s * fps - eps))


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


def sample_clip(src: Source, cfg: ClipConfig, rng: np.random.Generator | None = None,
                span: Span | None = None) -> Clip:
    """One training clip from a URI or bytes, inside ``span`` when given.

    Reads the header, samples indices (random with ``rng``, drawn again each call), decodes only those
    frames already resized by the decoder, center-crops, then mirrors with probability ``cfg.flip``.
    Raises VideoError with ``reason`` ``"too_short"`` (``"span_too_short"`` inside a span),
    ``"span_past_end"``, ``"bad_span"``, ``"corrupt"``, ``"empty"`` or ``"unreadable"`` so callers
    can name skips.
    """
    name = src if isinstance(src, str) else None
    data = fetch(src)  # remote objects are read once, for both probe and decode
    info = probe_video(data, name=name)
    first, stop = span_frames(span, info.fps, info.num_frames) if span is not None else (0, info.num_frames)
    clip = sample_indices(stop, cfg.num_frames, cfg.stride_at(info.fps), rng, first=first)
    if clip is None:
        label = repr(name) if name else f"<{len(data)} bytes in memory>"
        where = f"span {span.start}-{span.end} s has {stop - first}" if span is not None else f"has {info.num_frames}"
        raise video_error(f"video {label} {where} frames; a clip needs at least {cfg.num_frames}",
                          "span_too_short" if span is not None else "too_short")
    frames = read_video(data, clip.indices, decode_size(info.height, info.width, cfg.size),
                        num_threads=cfg.num_threads, name=name)
    frames = center_crop(frames, cfg.size)
    flipped = bool(cfg.flip and rng is not None and rng.random() < cfg.flip)
    return Clip(np.ascontiguousarray(frames[:, :, ::-1] if flipped else frames), clip.indices, flipped)


def load_clip(src: Source, cfg: ClipConfig, rng: np.random.Generator | None = None) -> np.ndarray:
    """Load one training clip ``(cfg.num_frames, cfg.size, cfg.size, 3) uint8`` from a URI or bytes
    (the whole video; see :func:`sample_clip`)."""
    return sample_clip(src, cfg, rng).frames
