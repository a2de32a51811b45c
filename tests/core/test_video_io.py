import hashlib
import io
import os

import av
import fsspec
import numpy as np
import pytest
from PIL import Image

from animatediff_core.errors import VideoError
from animatediff_core.io import storage
from animatediff_core.io.video_io import (
    _decode_with_pyav,
    encode_gif,
    encode_mp4,
    probe_video,
    read_video,
    write_gif,
    write_video,
)


def smooth_frames(f=16, h=64, w=64):
    """(f, h, w, 3) uint8 moving sinusoid gradients: smooth, so H.264 keeps them close."""
    t, y, x = np.meshgrid(np.arange(f), np.arange(h), np.arange(w), indexing="ij")
    channels = [np.sin(2 * np.pi * (x / w + t / f)), np.cos(2 * np.pi * (y / h - t / f)),
                np.sin(2 * np.pi * (x + y) / (h + w))]
    return (127.5 + 100 * np.stack(channels, -1)).astype(np.uint8)


@pytest.fixture(scope="module")
def mp4_bytes():
    return encode_mp4(smooth_frames(), fps=8)


def test_mp4_roundtrip_is_h264_yuv420p(mp4_bytes):
    frames = smooth_frames()
    decoded = read_video(mp4_bytes)
    assert decoded.shape == (16, 64, 64, 3) and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - frames).mean() < 20
    with av.open(io.BytesIO(mp4_bytes)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert stream.average_rate == 8
    assert probe_video(mp4_bytes) == (16, 8.0, 64, 64)


def test_read_subset_resized_in_decoder(mp4_bytes):
    out = read_video(mp4_bytes, indices=[0, 5, 15], size=(32, 48))
    assert out.shape == (3, 32, 48, 3)


def test_odd_size_is_edge_padded():
    frames = smooth_frames(f=4, h=33, w=47)
    decoded = read_video(encode_mp4(frames))
    assert decoded.shape == (4, 34, 48, 3)
    assert np.abs(decoded[:, :33, :47].astype(int) - frames).mean() < 20


def test_decord_bad_widths_fall_back_to_pyav():
    frames = smooth_frames(f=3, h=40, w=72)  # decord 0.6 alone fails at 72 px wide
    decoded = read_video(encode_mp4(frames), indices=[2, 0])
    assert decoded.shape == (2, 40, 72, 3)
    assert np.abs(decoded.astype(int) - frames[[2, 0]]).mean() < 20
    data = encode_mp4(smooth_frames(f=3))
    by_pyav = _decode_with_pyav(data, [1, 2], (32, 64), "test")
    by_decord = read_video(data, [1, 2], (32, 64))
    assert np.abs(by_pyav.astype(int) - by_decord).mean() < 5


def test_gif_preview_is_downscaled():
    data = encode_gif(smooth_frames(f=5, h=100, w=300), fps=8, max_size=64)
    assert data.startswith(b"GIF8")
    with Image.open(io.BytesIO(data)) as im:
        assert im.n_frames == 5 and max(im.size) == 64


def test_write_video_local_is_atomic(tmp_path):
    uri = str(tmp_path / "out" / "a.mp4")  # parent does not exist yet
    num_bytes, sha = write_video(uri, smooth_frames(f=4), fps=8)
    with open(uri, "rb") as f:
        data = f.read()
    assert num_bytes == len(data) and sha == hashlib.sha256(data).hexdigest()
    write_gif(str(tmp_path / "out" / "a.gif"), smooth_frames(f=4))
    assert sorted(os.listdir(tmp_path / "out")) == ["a.gif", "a.mp4"]  # no temp files left
    assert oct(os.stat(uri).st_mode & 0o777) == "0o644"


def test_write_and_read_memory_uri():
    uri = "memory://video-io-test/clips/a.mp4"
    try:
        num_bytes, _ = write_video(uri, smooth_frames(f=4))
        assert storage.exists(uri) and storage.size(uri) == num_bytes
        assert read_video(uri).shape == (4, 64, 64, 3)
    finally:
        fsspec.filesystem("memory").rm("/video-io-test", recursive=True)


def test_storage_join_keeps_scheme():
    assert storage.join("s3://b/x/", "a.mp4") == "s3://b/x/a.mp4"
    assert storage.join("s3://b", "x", "/a.mp4") == "s3://b/x/a.mp4"
    assert storage.join("/tmp/x", "a.mp4") == os.path.join("/tmp/x", "a.mp4")


def test_storage_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    uri = str(tmp_path / "t.txt")
    storage.write_text_atomic(uri, "old")
    def failing_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        storage.write_text_atomic(uri, "new")
    assert open(uri).read() == "old" and os.listdir(tmp_path) == ["t.txt"]


@pytest.mark.parametrize("kind, reason", [
    ("empty", "empty"), ("garbage", "corrupt"), ("truncated", "corrupt"), ("missing", "unreadable"),
])
def test_bad_files_raise_video_error_naming_source(tmp_path, mp4_bytes, kind, reason):
    data = {"empty": b"", "garbage": np.random.default_rng(0).bytes(4096),
            "truncated": mp4_bytes[: len(mp4_bytes) // 2], "missing": None}[kind]
    path = str(tmp_path / f"{kind}.mp4")
    if data is not None:
        with open(path, "wb") as f:
            f.write(data)
    for fn in (read_video, probe_video):
        with pytest.raises(VideoError, match=f"{kind}.mp4") as info:
            fn(path)
        assert info.value.reason == reason
    if data is not None:  # the same bytes in memory fail the same way
        with pytest.raises(VideoError, match="bytes in memory") as info:
            read_video(data)
        assert info.value.reason == reason


def test_out_of_range_indices_are_too_short(mp4_bytes):
    with pytest.raises(VideoError, match="16 frames") as info:
        read_video(mp4_bytes, indices=[0, 16])
    assert info.value.reason == "too_short"
    with pytest.raises(VideoError):
        read_video(mp4_bytes, indices=[-1])  # decord alone would wrap this around


def test_encoders_reject_wrong_layout():
    with pytest.raises(VideoError, match=r"\(f, h, w, 3\) uint8") as info:
        encode_mp4(np.zeros((4, 8, 8, 3), np.float32))
    assert info.value.reason == "bad_frames"
    with pytest.raises(VideoError):
        encode_gif(np.zeros((8, 8, 3), np.uint8))


def test_every_mp4_is_faststart_and_a_cut_one_is_corrupt(tmp_path, mp4_bytes):
    from animatediff_core.io.video_io import top_level_boxes, write_video

    frames = np.random.default_rng(1).integers(0, 256, (6, 32, 48, 3), dtype=np.uint8)
    write_video(str(tmp_path / "w.mp4"), frames)
    for data in (mp4_bytes, (tmp_path / "w.mp4").read_bytes()):
        kinds = [k for k, _ in top_level_boxes(data)]
        assert kinds[0] == "ftyp" and kinds.index("moov") < kinds.index("mdat"), kinds
        # the index sits in the first bytes, as a streaming reader reads them
        assert data.find(b"moov") < data.find(b"mdat")
    for cut in (len(mp4_bytes) - 1, len(mp4_bytes) * 3 // 4, 100):
        (tmp_path / "cut.mp4").write_bytes(mp4_bytes[:cut])
        for fn in (read_video, probe_video):
            with pytest.raises(VideoError, match="truncated") as info:
                fn(str(tmp_path / "cut.mp4"))
            assert info.value.reason == "corrupt"
