from pathlib import Path

import numpy as np
import pytest
from helpers_video import real_video, real_video_paths  # tests/ is on sys.path via conftest.py
from PIL import Image

from animatediff_core.errors import ConfigError, VideoError
from animatediff_core.io.video_io import encode_mp4, probe_video, read_video
from animatediff_core.training.clips import ClipConfig, center_crop, decode_size, load_clip, sample_indices


def test_sample_indices_recipe_stride():
    clip = sample_indices(100, num_frames=16, stride=4)
    assert clip.indices == list(range(0, 61, 4)) and clip.stride == 4


def test_sample_indices_falls_back_to_largest_stride_that_fits():
    clip = sample_indices(40, num_frames=16, stride=4)  # needs 61 frames at stride 4
    assert clip.stride == 2 and clip.indices == list(range(0, 31, 2))
    assert sample_indices(16, 16, 4).stride == 1
    assert sample_indices(5, 1, 4).indices == [0]


def test_sample_indices_too_short_is_none():
    assert sample_indices(15, 16, 4) is None
    assert sample_indices(0, 1, 1) is None
    with pytest.raises(ConfigError):
        sample_indices(10, 0, 1)


def test_sample_indices_random_start_covers_valid_range():
    rng = np.random.default_rng(0)
    starts = {sample_indices(20, 4, 4, rng).indices[0] for _ in range(200)}
    assert starts == set(range(0, 20 - 13 + 1))  # span (4-1)*4+1 = 13
    a = sample_indices(1000, 16, 4, np.random.default_rng(1))
    b = sample_indices(1000, 16, 4, np.random.default_rng(1))
    assert a == b and np.all(np.diff(a.indices) == 4)


def test_decode_size_shorter_side_matches():
    assert decode_size(272, 640, 64) == (64, 151)
    assert decode_size(720, 1280, 256) == (256, 455)
    assert decode_size(640, 360, 64) == (114, 64)
    assert decode_size(100, 100, 256) == (256, 256)  # small sources are upscaled
    assert decode_size(100, 101, 100) == (100, 101)


def test_center_crop_takes_the_middle():
    frames = np.arange(2 * 6 * 8 * 3, dtype=np.uint8).reshape(2, 6, 8, 3)
    out = center_crop(frames, 4)
    assert out.shape == (2, 4, 4, 3) and np.array_equal(out, frames[:, 1:5, 2:6])


def test_clip_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="num_frames"):
        ClipConfig(num_frames=0)


def test_real_videos_are_found():
    names = {Path(p).name for p in real_video_paths()}
    assert {"bikes.mp4", "bigbuckbunny.mp4"} <= names


def test_load_clip_real_video_matches_reference():
    path = real_video("bikes.mp4")
    info = probe_video(path)
    h, w = decode_size(info.height, info.width, 64)
    assert h * w * 10 < info.height * info.width  # the decoder does the heavy downscaling
    cfg = ClipConfig(num_frames=8, stride=4, size=64)
    clip = load_clip(path, cfg, np.random.default_rng(0))
    assert clip.shape == (8, 64, 64, 3) and clip.dtype == np.uint8
    assert np.array_equal(clip, load_clip(path, cfg, np.random.default_rng(0)))
    # Reference: same frames decoded at full size, resized by Pillow, center-cropped.
    indices = sample_indices(info.num_frames, 8, 4, np.random.default_rng(0)).indices
    full = read_video(path, indices)
    ref = np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.Resampling.BILINEAR))
                    for f in full])
    assert np.abs(clip.astype(int) - center_crop(ref, 64)).mean() < 5  # off-by-2-frames gives ~14


def test_load_clip_short_video_uses_smaller_stride_then_skips():
    data = encode_mp4(np.random.default_rng(0).integers(0, 255, (10, 32, 48, 3), np.uint8))
    assert load_clip(data, ClipConfig(num_frames=4, stride=4, size=16)).shape == (4, 16, 16, 3)
    with pytest.raises(VideoError, match="10 frames") as info:
        load_clip(data, ClipConfig(num_frames=16, stride=4, size=16))
    assert info.value.reason == "too_short"


def test_load_clip_corrupt_names_source(tmp_path):
    path = tmp_path / "broken.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(100))
    with pytest.raises(VideoError, match="broken.mp4") as info:
        load_clip(str(path), ClipConfig(num_frames=4, stride=1, size=16))
    assert info.value.reason == "corrupt"
