"""DINO's ViT (Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021), for
VBench's ``subject_consistency``: the [CLS] feature of each frame.

Our own plain-torch implementation of facebookresearch/dino's ``vision_transformer.py`` (``vit_base``,
patch 16, no head: the ``dino_vitb16`` that VBench loads through torch.hub), with its state-dict keys:
``cls_token``, ``pos_embed``, ``patch_embed.proj.*``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*``,
``norm.*``. ``dino_vitbase16_pretrain.pth`` loads as it is, and so does timm's ``vit_base_patch16_224.dino``
(the same weights under the same names). The widths are read from the weights (heads: width / 64, as every
DINO ViT has them), so a small stand-in loads the same way. Like DINO, inputs of any size multiple-ish of the
patch are accepted: the position embedding is resized with DINO's bicubic rule (``interpolate_pos_encoding``,
its ``+ 0.1`` included), which VBench relies on (it resizes frames' short side to 224 and does not crop).
tests/core/test_vbench.py compares ours with DINO's own class on the same weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from animatediff_core.io.checkpoints import check_keys

HEAD_WIDTH = 64


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))`` (GELU, LayerNorm eps 1e-6)."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(dim, 3 * dim)
        self.attn.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(dim, hidden)
        self.mlp.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.attn.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        x = x + self.attn.proj(attn)
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class DinoViT(nn.Module):
    def __init__(self, dim: int, depth: int, patch: int, grid: int, hidden: int):
        super().__init__()
        self.patch = patch
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.blocks = nn.ModuleList(Block(dim, max(1, dim // HEAD_WIDTH), hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def position(self, h: int, w: int) -> torch.Tensor:
        """``(1, 1 + (h // p) * (w // p), dim)``: the embedding for an ``h x w`` input, resized as DINO does."""
        n = self.pos_embed.shape[1] - 1
        hp, wp = h // self.patch, w // self.patch
        if hp * wp == n and h == w:
            return self.pos_embed
        side = math.sqrt(n)
        grid = self.pos_embed[:, 1:].reshape(1, int(side), int(side), -1).permute(0, 3, 1, 2)
        # DINO passes scale factors (not a size), nudged by 0.1 so that floor() lands on the patch count
        grid = F.interpolate(grid, scale_factor=((hp + 0.1) / side, (wp + 0.1) / side), mode="bicubic")
        return torch.cat([self.pos_embed[:, :1], grid.permute(0, 2, 3, 1).reshape(1, hp * wp, -1)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, 3, h, w)`` normalized images -> ``(b, dim)`` [CLS] features after the final norm."""
        tokens = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1) + self.position(*x.shape[-2:])
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 0]


def build(state: dict[str, torch.Tensor], uri: str) -> DinoViT:
    """A DinoViT shaped by `state` (DINO's keys), loaded and strictly checked; CheckpointError names what is wrong."""
    from animatediff_core.errors import CheckpointError

    if "cls_token" not in state or "patch_embed.proj.weight" not in state:
        raise CheckpointError(f"{uri}: not a DINO ViT state dict (expected cls_token, pos_embed, patch_embed.proj.*, "
                              f"blocks.*; found {', '.join(sorted(state)[:3])}, ...)")
    dim, patch = state["cls_token"].shape[-1], state["patch_embed.proj.weight"].shape[-1]
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    grid = round(math.sqrt(state["pos_embed"].shape[1] - 1))
    hidden = state["blocks.0.mlp.fc1.weight"].shape[0] if "blocks.0.mlp.fc1.weight" in state else 4 * dim
    net = DinoViT(dim, depth, patch, grid, hidden)
    check_keys({k: tuple(v.shape) for k, v in net.state_dict().items()}, state, "DINO ViT state dict", uri)
    net.load_state_dict(state)
    return net.eval()
