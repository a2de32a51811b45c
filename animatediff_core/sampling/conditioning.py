"""Control beyond text: the inputs a row's ControlNet, SparseCtrl and video-to-video settings name.

A row names its inputs by URI (any fsspec store): `control_video` and `init_video` are a video file or
a folder of images, `keyframes` one image or a JSON map from frame index to image. `read_inputs` reads
them, resamples videos to the row's frame count (evenly spaced frames of the whole source) and fits
every frame to the row's size (scale to cover, center crop: no distortion), and turns ControlNet
reference frames into control images (`canny`: edges computed here, no weights; `none`: the frames
already are control images: depth maps, poses, edges). Every failure is a ConfigError naming the
input and what to fix, which the batch job turns into that row's error.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from animatediff_core.io import bounded, storage
from animatediff_core.configs import need
from animatediff_core.errors import ConfigError, VideoError
from animatediff_core.settings.generation import parse_keyframes
from animatediff_core.io.video_io import decode_frames, probe_video

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CANNY_LOW, CANNY_HIGH = 100, 200  # OpenCV Canny's thresholds as diffusers' ControlNet examples use them
MAX_SOURCE_FRAMES = 10_000  # a control or init video longer than this is a mistake, not an input
MAX_SOURCE_PIXELS = 4096 * 4096  # per frame: beyond 16 megapixels a reference frame is a mistake too


@dataclass(frozen=True)
class Inputs:
    """A row's conditioning, read and fitted: `(f, h, w, 3) uint8` arrays and `(frame, image)` pairs."""

    control: np.ndarray | None = None  # ControlNet images, one per frame
    keyframes: tuple[tuple[int, np.ndarray], ...] = ()  # SparseCtrl conditioning frames
    init: np.ndarray | None = None  # video-to-video input frames


def read_inputs(s) -> Inputs | None:
    """The inputs `s` (GenerationSettings) names, read and fitted; None when it names none."""
    if not (s.control_video or s.keyframes or s.init_video):
        return None
    size = (s.height, s.width)
    control = init = None
    if s.control_video:
        control = preprocess(read_frames(s.control_video, s.num_frames, size, "control_video"), s.control_preprocess)
    if s.init_video:
        init = read_frames(s.init_video, s.num_frames, size, "init_video")
    keys = ()
    if s.keyframes:
        keys = tuple((i, read_image(uri, size, f"keyframe {i}")) for i, uri in parse_keyframes(s.keyframes, s.num_frames).items())
        if s.keyframe_normalize:
            keys = tuple((i, normalize_gray(image)) for i, image in keys)
    return Inputs(control, keys, init)


def normalize_gray(image: np.ndarray) -> np.ndarray:
    """`(h, w, 3) uint8` -> its channel mean stretched to 0-255 on all three channels: the official
    `normalize_condition_images` (scripts/animate.py: mean over channels, minus the min, over the max), in 8 bits."""
    gray = image.astype(np.float64).mean(axis=-1)
    gray -= gray.min()
    top = gray.max()
    gray = gray / top if top > 0 else gray
    return np.repeat(np.clip(gray * 255.0 + 0.5, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def preprocess(frames: np.ndarray, how: str) -> np.ndarray:
    if how == "canny":
        return canny(frames)
    need(how == "none", f"control_preprocess must be canny or none, got {how!r}")
    return frames


def read_frames(uri: str, num_frames: int, size: tuple[int, int], what: str) -> np.ndarray:
    """`num_frames` evenly spaced frames of a video file or a folder of images, fitted to `size` (h, w).
    Every read is bounded (`bounded.py`: where the URI may point, regular files, size limits, time-outs)."""
    try:
        if bounded.is_folder(uri, what):
            fs, path = storage.fs_and_path(uri)
            files = sorted(f for f in fs.ls(path, detail=False) if f.lower().endswith(IMAGE_EXTS))
            need(bool(files), f"{what} {uri}: the folder holds no images ({', '.join(IMAGE_EXTS)})")
            picked = _evenly(len(files), num_frames)
            base = uri.rstrip("/")
            frames = [read_image(f"{base}/{PurePosixPath(files[i]).name}", size, what) for i in picked]
            return np.stack(frames)
        data = bounded.source(uri, "video", what)  # a local path stays a path; a remote video is read once
        info = probe_video(data, name=uri)
        need(info.height * info.width <= MAX_SOURCE_PIXELS, f"{what} {uri}: {info.width}x{info.height} frames are more "
             f"than {MAX_SOURCE_PIXELS // 10**6} megapixels; give a smaller video")
        total = min(info.num_frames, MAX_SOURCE_FRAMES)
        # Each frame is fitted as it is decoded: memory holds the row's frames, never the source's.
        return decode_frames(data, _evenly(total, num_frames), name=uri, transform=lambda f: fit(f, size))
    except VideoError as e:
        raise ConfigError(f"{what} {uri}: {e}; give a readable video (mp4, webm, ...) or a folder of images") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{what} {uri}: cannot read it ({type(e).__name__}: {str(e)[:200]})") from None


def read_image(uri: str, size: tuple[int, int], what: str) -> np.ndarray:
    try:
        data = bounded.read_bytes(uri, "image", what)
        with Image.open(io.BytesIO(data)) as im:
            rgb = np.asarray(im.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ConfigError(f"{what} {uri}: not a readable image ({type(e).__name__}: {str(e)[:200]})") from None
    return fit(rgb, size)


def _evenly(total: int, count: int) -> list[int]:
    """`count` frame indices spread evenly over `total` source frames (repeats when the source is shorter)."""
    return np.round(np.linspace(0, total - 1, count)).astype(int).tolist()


def fit(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Scale `(h, w, 3) uint8` to cover `size` (h, w) keeping its aspect, then center-crop to it."""
    h, w = size
    src_h, src_w = frame.shape[:2]
    if (src_h, src_w) == (h, w):
        return frame
    scale = max(h / src_h, w / src_w)
    new_w, new_h = max(w, round(src_w * scale)), max(h, round(src_h * scale))
    im = Image.fromarray(frame).resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - w) // 2, (new_h - h) // 2
    return np.asarray(im.crop((left, top, left + w, top + h)))


def canny(frames: np.ndarray, low: float = CANNY_LOW, high: float = CANNY_HIGH) -> np.ndarray:
    """Canny edges of `(f, h, w, 3) uint8` frames as white-on-black RGB frames, the way ControlNet's Canny
    models were trained (OpenCV's defaults: 3x3 Sobel, L1 gradient magnitude, no blur, thresholds
    100/200 on 8-bit luma): non-maximum suppression along the gradient, then hysteresis (weak edges
    kept where they connect to a strong one)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).float()
    gray = (x * torch.tensor([0.299, 0.587, 0.114])).sum(-1)[:, None]  # (f, 1, h, w)
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    padded = F.pad(gray, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(padded, sobel[None, None])[:, 0]
    gy = F.conv2d(padded, sobel.T[None, None])[:, 0]
    mag = gx.abs() + gy.abs()
    # Quantize the gradient direction to 0, 45, 90, 135 degrees; compare with the two neighbours along it.
    angle = torch.rad2deg(torch.atan2(gy, gx)) % 180
    sector = ((angle + 22.5) // 45).long() % 4
    m = F.pad(mag, (1, 1, 1, 1))
    hh, ww = mag.shape[1:]

    def at(dy, dx):
        return m[:, 1 + dy : 1 + dy + hh, 1 + dx : 1 + dx + ww]

    # (dy, dx) of the neighbour along the gradient for each sector (rows grow downwards).
    steps = {0: (0, 1), 1: (1, 1), 2: (1, 0), 3: (1, -1)}
    keep = torch.zeros_like(mag, dtype=torch.bool)
    for k, (dy, dx) in steps.items():
        local = (mag > at(dy, dx)) & (mag >= at(-dy, -dx))
        keep |= (sector == k) & local
    thin = torch.where(keep, mag, torch.zeros_like(mag)).numpy()
    weak, strong = thin > low, thin > high
    edges = np.zeros_like(weak)
    connect = np.ones((3, 3), dtype=bool)
    for i in range(len(thin)):
        labels, n = ndimage.label(weak[i], structure=connect)
        hit = np.zeros(n + 1, dtype=bool)
        hit[np.unique(labels[strong[i]])] = True
        hit[0] = False
        edges[i] = hit[labels]
    out = edges.astype(np.uint8) * 255
    return np.repeat(out[..., None], 3, axis=-1)
