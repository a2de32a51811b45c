"""OpenAI CLIP's image tower (Radford et al. 2021), for VBench's ``background_consistency`` (ViT-B/32) and
``aesthetic_quality`` (ViT-L/14 under LAION's linear aesthetic head).

Our own plain-torch implementation of openai/CLIP's ``model.py`` ``VisionTransformer`` with its keys under
``visual.``: ``conv1``, ``class_embedding``, ``positional_embedding``, ``ln_pre``,
``transformer.resblocks.N.{attn.in_proj_*,attn.out_proj,ln_1,mlp.c_fc,mlp.c_proj,ln_2}``, ``ln_post``, ``proj``.
It loads OpenAI's own files (``ViT-B-32.pt``, ``ViT-L-14.pt``: TorchScript archives, read as data by
`checkpoints.load_state_dict`), state dicts in those keys, and transformers' ``CLIPModel`` weights (the Hub's
``openai/clip-vit-base-patch32``, ``openai/clip-vit-large-patch14``: the same weights, renamed by
`from_transformers`). Widths come from the weights, heads = width / 64 as OpenAI's ``build_model`` infers
them. As in OpenAI's code, LayerNorm computes in float32 whatever the weights' dtype (``clip.load`` runs
fp16 on a GPU, fp32 on CPU). tests/core/test_vbench.py compares ours with OpenAI's class on the same weights.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from animatediff_core.io.checkpoints import check_keys
from animatediff_core.errors import CheckpointError

HEAD_WIDTH = 64


class LayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """In float32, weights included (OpenAI's fp16 models keep their LayerNorms in float32)."""
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


class ResidualBlock(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1, self.ln_2 = LayerNorm(width), LayerNorm(width)
        self.mlp = nn.Module()
        self.mlp.c_fc, self.mlp.c_proj = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        h = self.mlp.c_fc(self.ln_2(x))
        return x + self.mlp.c_proj(h * torch.sigmoid(1.702 * h))  # QuickGELU


class ClipVision(nn.Module):
    def __init__(self, width: int, layers: int, patch: int, grid: int, output_dim: int, heads: int | None = None,
                 hidden: int | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, width))
        self.ln_pre, self.ln_post = LayerNorm(width), LayerNorm(width)
        self.transformer = nn.Module()
        heads = heads or max(1, width // HEAD_WIDTH)
        self.transformer.resblocks = nn.Sequential(*(ResidualBlock(width, heads, hidden or 4 * width) for _ in range(layers)))
        self.proj = nn.Parameter(torch.zeros(width, output_dim))
        self.resolution = grid * patch

    @property
    def dtype(self) -> torch.dtype:
        return self.conv1.weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, 3, s, s)`` normalized images (s: the training resolution) -> ``(b, output_dim)`` image embeddings
        (not normalized), in the weights' dtype."""
        x = self.conv1(x.to(self.dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype) + torch.zeros(len(x), 1, x.shape[-1], dtype=x.dtype, device=x.device)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype))
        x = self.transformer.resblocks(x)
        return self.ln_post(x[:, 0]) @ self.proj


def from_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' CLIPModel keys (``vision_model.*``, ``visual_projection.weight``) -> OpenAI's (``visual.*``)."""
    out = {}
    rename = ((r"^vision_model\.embeddings\.class_embedding$", "class_embedding"),
              (r"^vision_model\.embeddings\.patch_embedding\.weight$", "conv1.weight"),
              (r"^vision_model\.embeddings\.position_embedding\.weight$", "positional_embedding"),
              (r"^vision_model\.pre_layrnorm\.", "ln_pre."), (r"^vision_model\.post_layernorm\.", "ln_post."),
              (r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"transformer.resblocks.\1.attn.out_proj."),
              (r"^vision_model\.encoder\.layers\.(\d+)\.layer_norm(\d)\.", r"transformer.resblocks.\1.ln_\2."),
              (r"^vision_model\.encoder\.layers\.(\d+)\.mlp\.fc1\.", r"transformer.resblocks.\1.mlp.c_fc."),
              (r"^vision_model\.encoder\.layers\.(\d+)\.mlp\.fc2\.", r"transformer.resblocks.\1.mlp.c_proj."))
    for key, value in state.items():
        for pattern, repl in rename:
            if re.match(pattern, key):
                out["visual." + re.sub(pattern, repl, key)] = value
    for key in state:  # q, k, v projections -> one in_proj, in that order (nn.MultiheadAttention's layout)
        m = re.match(r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)$", key)
        if m:
            parts = [state[key.replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")]
            out[f"visual.transformer.resblocks.{m[1]}.attn.in_proj_{m[2]}"] = torch.cat(parts)
    if "visual_projection.weight" in state:
        out["visual.proj"] = state["visual_projection.weight"].t().contiguous()
    return out


def build(state: dict[str, torch.Tensor], uri: str, heads: int | None = None) -> ClipVision:
    """The image tower of a CLIP state dict (OpenAI's keys, or transformers' CLIPModel keys), strictly checked;
    the text tower's keys are ignored. `heads`: default width / 64, as every OpenAI CLIP has them."""
    if any(k.startswith("vision_model.") for k in state):
        state = from_transformers(state)
    visual = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    if "conv1.weight" not in visual or "proj" not in visual:
        raise CheckpointError(f"{uri}: not a CLIP ViT (expected OpenAI's visual.conv1.weight, visual.proj, ... or "
                              f"transformers' vision_model.*; found {', '.join(sorted(state)[:3])}, ...)")
    width, patch = visual["conv1.weight"].shape[0], visual["conv1.weight"].shape[-1]
    layers = len({k.split(".")[2] for k in visual if k.startswith("transformer.resblocks.")})
    grid = round(math.sqrt(visual["positional_embedding"].shape[0] - 1))
    hidden = visual["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] if layers else None
    net = ClipVision(width, layers, patch, grid, visual["proj"].shape[1], heads, hidden)
    check_keys({k: tuple(v.shape) for k, v in net.state_dict().items()}, visual, "CLIP image tower", uri)
    net.load_state_dict({k: v.float() for k, v in visual.items()})
    return net.eval()


def embed(net: ClipVision, pixels: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """``(n, 3, s, s)`` -> ``(n, d)`` float32 L2-normalized embeddings, `batch` images per forward pass."""
    device = net.conv1.weight.device
    out = [net(pixels[i : i + batch].to(device)).float().cpu() for i in range(0, len(pixels), batch)]
    return F.normalize(torch.cat(out) if out else torch.zeros(0, net.proj.shape[1]), dim=-1)
