"""The evaluation job's configuration: the only place its names, types, defaults and help are written.

Its generation keys are the batch job's (`GenerationFlags`: the generation settings, the actor pool, the
speed options); the scoring stages read this config directly. Light (no torch, no Ray, no pandas).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from animatediff_core.configs import need, option
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

    def __post_init__(self):
        super().__post_init__()
        need(bool(self.score_only) or bool(self.base and self.motion_module),
             "give --base and --motion-module to generate, or --score-only FOLDER to score existing videos")

    @property
    def stills(self) -> bool:
        """Whether domain-similarity stills are rendered (they need the base)."""
        return bool(self.base) and self.domain_similarity
