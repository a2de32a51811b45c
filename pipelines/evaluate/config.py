"""The evaluation job's configuration: the only place its names, types, defaults and help are written.

Its generation keys are the batch job's (`GenerationFlags`: the generation settings, the actor pool, the
speed options); the scoring stages read this config directly. Light (no torch, no Ray, no pandas).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from animatediff_core.configs import need, option
from animatediff_core.metrics.columns import VBENCH_DIMENSIONS
from pipelines.animate.config import GenerationFlags

SUITE = str(Path(__file__).resolve().parents[2] / "jobs" / "data" / "eval_prompts.csv")


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig(GenerationFlags):
    """The evaluation job's settings (its generation keys are the batch job's, `GenerationFlags`)."""

    clip: str = option(help="transformers CLIPModel folder for the metrics (nothing is downloaded)", path="in")
    prompts: list[str] = option([SUITE], help="prompt tables (default: the shipped 48-prompt suite)", path="in")
    seeds_per_prompt: int = option(2, low=1, help="seeds per prompt: its seed, seed+1, ...")
    base: str | None = option(None, help="diffusers SD-1.x folder (to generate; with --score-only: for domain similarity)", path="in")
    motion_module: list[str] = option([], help="motion modules, folders of them or jobs.train run folders", path="in")
    checkpoints: str | None = option(None, help="personalized checkpoints, as in jobs.animate", path="in")
    out: str = option("outputs/evaluate", help="output folder or URI", path="out")
    score_only: list[str] = option([], help="batch-job output folders to score instead of generating", path="in")
    domain_similarity: bool = option(True, help="render stills without the motion module to compare styles (needs --base)")
    videos_per_call: int = option(16, low=1, help="videos per metrics-actor call")
    frame_batch: int = option(64, low=1, help="frames per CLIP forward pass")
    raft: str | None = option(None, help="torchvision raft_small/raft_large weights (.pth or .safetensors) for motion_flow", path="in")
    raft_iters: int | None = option(None, low=1, help="RAFT refinement iterations per frame pair (default: torchvision's)")
    flow_batch: int | None = option(None, low=1, help="consecutive frame pairs per RAFT forward pass (default: flow.py's)")
    vbench_models: str | None = option(None, help="VBench's model folder (its ~/.cache/vbench layout: dino_model/, clip_model/, "
                                       "aesthetic_model/, raft_model/), or 'hub' for the local Hugging Face cache only: "
                                       "adds VBench's dimensions (nothing is downloaded)", path="in")
    vbench_dimensions: list[str] = option(list(VBENCH_DIMENSIONS), help=f"VBench dimensions to compute with --vbench-models "
                                          f"(of {', '.join(VBENCH_DIMENSIONS)})")
    fvd_reference: str | None = option(None, help="reference videos for FVD: a folder of videos, a batch-job output folder, "
                                       "or a WebVid-format table (as jobs.train reads); needs --i3d", path="in")
    i3d: str | None = option(None, help="Kinetics-400 I3D weights for FVD: VideoGPT's i3d_pretrained_400.pt (nothing is downloaded)", path="in")
    fvd_frames: int = option(16, low=9, help="frames per video for FVD: the first N (videos with fewer are left out of FVD)")
    fvd_reference_videos: int = option(2048, low=2, help="reference videos for FVD: at most this many, the first in the reference's order")
    fvd_reference_stride: int = option(1, low=1, help="every N-th frame of a reference video (to match the generated videos' frame rate)")

    def __post_init__(self):
        super().__post_init__()
        need(bool(self.score_only) or bool(self.base and self.motion_module),
             "give --base and --motion-module to generate, or --score-only FOLDER to score existing videos")
        unknown = [d for d in self.vbench_dimensions if d not in VBENCH_DIMENSIONS]
        need(not unknown, f"vbench_dimensions must be of {', '.join(VBENCH_DIMENSIONS)}, got {', '.join(unknown)}")
        need(bool(self.vbench_dimensions), "vbench_dimensions must name at least one dimension, got none")
        need(bool(self.fvd_reference) == bool(self.i3d), "FVD needs both --fvd-reference and --i3d, got "
             + ("only --fvd-reference" if self.fvd_reference else "only --i3d"))

    @property
    def stills(self) -> bool:
        """Whether domain-similarity stills are rendered (they need the base)."""
        return bool(self.base) and self.domain_similarity
