"""The shape of a fresh motion module (`MotionModuleConfig`): plain Python, no torch, so the training
recipe (`training/recipe.py`) and `python -m jobs.train --help` declare it without loading the model stack.
`inflate.new_motion_adapter` builds a module of this shape.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MotionModuleConfig:
    """Shape of the motion modules. Defaults are AnimateDiff v2/v3 for SD-1.5."""

    max_seq_length: int = 32  # v1 modules use 24
    num_attention_heads: int = 8
    norm_num_groups: int = 32
    transformer_layers_per_block: int = 1
    use_mid_block: bool = True  # v1 has none

    @classmethod
    def tiny(cls) -> "MotionModuleConfig":
        return cls(num_attention_heads=4, norm_num_groups=2)
