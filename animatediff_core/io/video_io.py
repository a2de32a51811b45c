"""Encode frames to MP4/GIF and decode videos from any URI or from bytes.

Frames are always ``(f, h, w, 3) uint8`` RGB numpy arrays. Encoding uses PyAV (libx264);
decoding uses decord, which resizes inside the decoder and decodes only the requested frames.

Every :class:`VideoError` raised here carries a ``reason`` attribute so callers can count
skips: ``"unreadable"`` (storage read failed or file missing), ``"empty"`` (zero bytes),
``"corrupt"`` (container or decoder failure), ``"too_short"`` (requested frames not in the
video), ``"bad_frames"`` (an array given to an encoder has the wrong layout).
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from fractions import Fraction
from typing import NamedTuple, Sequence

import av
import numpy as np
from PIL import Image

from animatediff_core.io import storage
from animatediff_core.errors import VideoError

Source = str | bytes


class VideoInfo(NamedTuple):
    num_frames: int
    fps: float
    height: int
    width: int


def video_error(message: str, reason: str) -> VideoError:
    """Build a VideoError with a machine-readable ``reason`` (see module docstring)."""
    err = VideoError(message)
    err.reason = reason
    return err


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise video_error(
            f"expected frames of layout (f, h, w, 3) uint8 with f >= 1, "
            f"found shape {frames.shape} dtype {frames.dtype}", "bad_frames")
    return frames


def encode_mp4(frames: np.ndarray, fps: float = 8, crf: int = 18) -> bytes:
    """Encode ``(f, h, w, 3) uint8`` RGB frames as H.264 (libx264, yuv420p) in an MP4.

    yuv420p needs even height and width: an odd dimension is padded by one pixel at the
    bottom/right by edge replication, so the decoded video may be 1 px larger than the input.
    The file is faststart: its index (``moov``) comes before the media (``mdat``), so streaming
    readers start without seeking to the end. FFmpeg moves the index in a second pass over a
    seekable file, so the MP4 is written to a temporary file and read back.
    """
    frames = _check_frames(frames)
    _, h, w, _ = frames.shape
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    with tempfile.NamedTemporaryFile(suffix=".mp4") as tmp:
        with av.open(tmp.name, mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream = container.add_stream(
                "libx264", rate=Fraction(fps).limit_denominator(1001), options={"crf": str(crf)})
            stream.width, stream.height, stream.pix_fmt = w + pad_w, h + pad_h, "yuv420p"
            for frame in frames:
                video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                container.mux(stream.encode(video_frame))
            container.mux(stream.encode())  # flush delayed frames
        with open(tmp.name, "rb") as f:
            return f.read()


def top_level_boxes(data: bytes | str) -> list[tuple[str, int]]:
    """``(type, size)`` of an MP4's top-level boxes (ISO BMFF), read from their headers alone.

    Raises VideoError ``"corrupt"`` when a box claims more bytes than the file holds: a truncated
    download. A faststart file keeps its index in front, so without this check a cut one would open
    and decode its first frames as if whole."""
    f = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else open(data, "rb")
    with f:
        total = f.seek(0, io.SEEK_END)
        boxes, at = [], 0
        while at + 8 <= total:
            f.seek(at)
            head = f.read(16)
            size, kind = int.from_bytes(head[:4], "big"), head[4:8].decode("latin-1")
            if size == 1 and len(head) == 16:
                size = int.from_bytes(head[8:16], "big")
            elif size == 0:  # the last box, to the end of the file
                size = total - at
            if size < 8 or at + size > total:
                raise video_error(f"MP4 box {kind!r} at byte {at} claims {size} bytes, but only {total - at} "
                                  f"remain: the file is truncated", "corrupt")
            boxes.append((kind, size))
            at += size
    return boxes


def _check_complete(data: bytes | str, label: str) -> None:
    """A truncated MP4/MOV (its first box `ftyp`) is corrupt; other containers are left to the decoder."""
    with (io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else open(data, "rb")) as f:
        is_mp4 = f.read(8)[4:8] == b"ftyp"
    if is_mp4:
        try:
            top_level_boxes(data)
        except VideoError as e:
            raise video_error(f"video {label}: {e}", "corrupt") from None


def encode_gif(frames: np.ndarray, fps: float = 8, max_size: int = 256) -> bytes:
    """Encode ``(f, h, w, 3) uint8`` frames as a looping GIF preview, downscaled so the
    longer side is at most ``max_size`` (never upscaled). GIF timing is in 1/100 s steps."""
    frames = _check_frames(frames)
    _, h, w, _ = frames.shape
    scale = min(1.0, max_size / max(h, w))
    new_size = (max(1, round(w * scale)), max(1, round(h * scale)))
    images = [Image.fromarray(f) for f in frames]
    if new_size != (w, h):
        images = [im.resize(new_size, Image.Resampling.BILINEAR) for im in images]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:],
                   duration=round(1000 / fps), loop=0)
    return buf.getvalue()


def _write(uri: str, data: bytes) -> tuple[int, str]:
    storage.write_bytes_atomic(uri, data)
    return len(data), hashlib.sha256(data).hexdigest()


def write_video(uri: str, frames: np.ndarray, fps: float = 8, crf: int = 18) -> tuple[int, str]:
    """Encode with :func:`encode_mp4` and write atomically; return ``(num_bytes, sha256_hex)``."""
    return _write(uri, encode_mp4(frames, fps=fps, crf=crf))


def write_gif(uri: str, frames: np.ndarray, fps: float = 8, max_size: int = 256) -> tuple[int, str]:
    """Encode with :func:`encode_gif` and write atomically; return ``(num_bytes, sha256_hex)``."""
    return _write(uri, encode_gif(frames, fps=fps, max_size=max_size))


def write_png_frames(folder: str, frames: np.ndarray) -> int:
    """Each frame of ``(f, h, w, 3) uint8`` as ``folder/NNNN.png`` (lossless, each write atomic);
    returns the bytes written."""
    frames = _check_frames(frames)
    total = 0
    for i, frame in enumerate(frames):
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="PNG")
        total += _write(storage.join(folder, f"{i:04d}.png"), buf.getvalue())[0]
    return total


def fetch(src: Source) -> Source:
    """Make ``src`` readable by the decoders without reading it twice.

    Returns a local path unchanged (decoders stream from disk), the bytes of a remote URI,
    or ``src`` itself if it is already bytes. Raises VideoError if missing, unreadable or empty.
    """
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
    else:
        try:
            if storage.is_local(src):
                path = storage.fs_and_path(src)[1]
                data = path if storage.size(path) else b""
            else:
                data = storage.read_bytes(src)
        except OSError as e:
            raise video_error(f"cannot read video {src!r}: {type(e).__name__}: {e}",
                              "unreadable") from e
    if not data:
        raise video_error(f"video {_name(src)} is empty (0 bytes)", "empty")
    return data


def _name(src: Source, name: str | None = None) -> str:
    if name is not None:
        return repr(name)
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"<{len(src)} bytes in memory>"
    return repr(src)


def probe_video(src: Source, *, name: str | None = None) -> VideoInfo:
    """Read ``(num_frames, fps, height, width)`` from the container header (PyAV; no decoding).

    ``num_frames`` comes from the container; when it does not record one (e.g. some WebM/MKV)
    it is estimated from duration * fps. ``name`` labels in-memory bytes in error messages.
    """
    label, data = _name(src, name), fetch(src)
    _check_complete(data, label)
    try:
        with av.open(io.BytesIO(data) if isinstance(data, bytes) else data) as container:
            if not container.streams.video:
                raise video_error(f"video {label} has no video stream", "corrupt")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            num_frames = stream.frames
            if not num_frames and container.duration and fps:
                num_frames = round(container.duration / av.time_base * fps)
            height, width = stream.codec_context.height, stream.codec_context.width
    except (av.FFmpegError, OSError, ValueError) as e:
        raise video_error(f"cannot open video {label}: {e}", "corrupt") from e
    if not (num_frames and height and width):
        raise video_error(f"video {label} reports {num_frames} frames of {height}x{width}; "
                          "expected a non-empty video stream", "corrupt")
    return VideoInfo(int(num_frames), fps, int(height), int(width))


def _decode_with_pyav(data: str | bytes, indices: list[int], size: tuple[int, int] | None,
                      label: str, transform=None) -> np.ndarray:
    """Decode ``indices`` by reading frames in order with PyAV: slower, but not width-limited.
    ``transform`` (an ``(h, w, 3) uint8`` frame -> frame) is applied to each frame as it is decoded."""
    height, width = size if size is not None else (None, None)
    wanted, found = set(indices), {}
    try:
        with av.open(io.BytesIO(data) if isinstance(data, bytes) else data) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in wanted:
                    found[i] = frame.to_ndarray(format="rgb24", width=width, height=height)
                    if transform is not None:
                        found[i] = transform(found[i])
                if len(found) == len(wanted):
                    break
    except (av.FFmpegError, OSError, ValueError) as e:
        raise video_error(f"cannot decode video {label}: {e}", "corrupt") from e
    missing = sorted(wanted - found.keys())
    if missing:
        raise video_error(f"video {label} ended before frame(s) {missing[:5]}", "too_short")
    return np.stack([found[i] for i in indices])


def decode_frames(src: Source, indices: Sequence[int], *, name: str | None = None, transform=None) -> np.ndarray:
    """Decode frames ``indices`` (repeats allowed) with PyAV, at the video's own size (or through
    ``transform``, frame by frame): for a few inputs per row (control and init videos), where decord's
    random access does not pay."""
    label, data = _name(src, name), fetch(src)
    _check_complete(data, label)
    unique = sorted(set(int(i) for i in indices))
    frames = _decode_with_pyav(data, unique, None, label, transform)
    at = {i: k for k, i in enumerate(unique)}
    return frames[[at[int(i)] for i in indices]]


def read_video(
    src: Source,
    indices: Sequence[int] | None = None,
    size: tuple[int, int] | None = None,
    *,
    num_threads: int = 0,
    name: str | None = None,
) -> np.ndarray:
    """Decode frames ``indices`` (all if None) of a video URI or bytes as ``(f, h, w, 3) uint8``.

    ``size=(h, w)`` makes the decoder resize (no aspect handling: see ``clips.decode_size``).
    Only the requested frames are decoded. ``num_threads=0`` lets FFmpeg pick (all cores);
    use 1 when many decoders share a machine. ``name`` labels in-memory bytes in errors.

    decord 0.6 fails for a few output widths (2, 3, 4, 6, 8, 12, 16, 24, 48, 72 px: it reads
    the padded RGB rows as 4 channels, dmlc/decord#336); those fall back to PyAV.
    """
    import decord  # here: generation-only installs (no decoding) can leave it out

    label, data = _name(src, name), fetch(src)
    _check_complete(data, label)
    height, width = size if size is not None else (-1, -1)
    try:
        reader = decord.VideoReader(io.BytesIO(data) if isinstance(data, bytes) else data,
                                    ctx=decord.cpu(0), width=width, height=height,
                                    num_threads=num_threads)
        total = len(reader)
        indices = list(range(total)) if indices is None else [int(i) for i in indices]
        bad = [i for i in indices if not 0 <= i < total]
        if bad:  # decord would wrap negative indices silently
            raise video_error(f"video {label} has {total} frames; requested frame(s) {bad[:5]} "
                              "are out of range", "too_short")
        if not indices:
            raise video_error(f"no frames requested from video {label}", "too_short")
        return reader.get_batch(indices).asnumpy()
    except decord.DECORDError as e:
        if "DECORDArrayCopyFromTo" in str(e) and indices is not None:
            return _decode_with_pyav(data, indices, size, label)
        raise video_error(f"cannot decode video {label}: {str(e).strip()[:300]}", "corrupt") from e
    except RuntimeError as e:
        raise video_error(f"cannot decode video {label}: {str(e).strip()[:300]}", "corrupt") from e
