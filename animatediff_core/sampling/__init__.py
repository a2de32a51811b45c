"""Generation from a built pipeline.

- `generate.py`: requests to uint8 frames, batched where shapes match
- `long_video.py`: context windows over the frame axis
- `conditioning.py`: ControlNet, SparseCtrl and video-to-video inputs
- `streams.py`: several rows at once on one CPU process

Imports `models/`, `settings/`, `io/` and the foundation.
"""
