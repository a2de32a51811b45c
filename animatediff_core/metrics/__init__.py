"""Scoring videos.

- `scores.py`: per-video CLIP and motion scores; `columns.py`: the metric columns (plain Python)
- `vbench.py`: VBench dimensions, as VBench computes them
- `fvd.py`, `i3d.py`: Frechet Video Distance and its I3D network
- `dino.py`, `clip_vision.py`, `flow.py`: DINO ViT, CLIP image towers, RAFT optical flow
- `stills.py`: what the image model alone makes for a request

Imports `sampling/` (stills), `io/` and the foundation.
"""
