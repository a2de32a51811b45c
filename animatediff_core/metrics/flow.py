"""Optical flow with RAFT (Teed & Deng, "RAFT: Recurrent All-Pairs Field Transforms for Optical Flow",
ECCV 2020), for the ``motion_flow`` metric: mean flow magnitude between consecutive frames, in pixels.

Our own plain-torch implementation, whose module tree follows torchvision's
``torchvision/models/optical_flow/raft.py`` so that its ``raft_small`` and ``raft_large`` weight files
(``.pth`` state dicts, or ``.safetensors`` with the same keys) load without renaming. The original
princeton-vl/RAFT files (``raft-things.pth``, ``raft-small.pth``: ``fnet.*``, ``cnet.*``, ``update_block.*``,
saved from a DataParallel wrapper; VBench's dynamic degree and static filter use ``raft-things.pth``) load
through `from_original`, a declarative key map onto the same network; `load_raft` then checks every key and
shape strictly. torchvision itself is not a dependency. The reference tests fill torchvision's model
(tests/core/test_flow.py) and the original code (tests/core/test_vbench.py) and ours by one rule and
compare their flows.

Layouts: frames are ``(f, h, w, 3) uint8`` RGB; images into the network ``(b, 3, h, w)`` float32 in
[-1, 1] (torchvision's ``OpticalFlow`` preset); flows ``(b, 2, h, w)`` in pixels, channel 0 along x
(width), channel 1 along y (height). The network always runs in float32, in eval mode.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from animatediff_core.io.checkpoints import check_keys, load_state_dict
from animatediff_core.errors import CheckpointError, ConfigError

ITERS = 12  # refinement iterations: torchvision's default and the paper's evaluation setting
PAIR_BATCH = 8  # consecutive-frame pairs per forward pass


@dataclass(frozen=True)
class RaftSpec:
    """The widths of one RAFT variant (torchvision's `raft_small` / `raft_large` arguments)."""

    name: str
    block: str  # "residual" or "bottleneck" encoder blocks
    feature_layers: tuple[int, ...]
    context_layers: tuple[int, ...]
    context_norm: bool  # BatchNorm in the context encoder (the feature encoder's InstanceNorm has no weights)
    corr_radius: int
    corr_layers: tuple[int, ...]
    flow_layers: tuple[int, int]
    motion_channels: int
    hidden: int
    gru_kernels: tuple[tuple[int, int], ...]
    head_hidden: int
    mask: bool  # learned convex upsampling (large) or bilinear (small)
    corr_levels: int = 4

    @property
    def min_side(self) -> int:
        """Smallest input side: the coarsest correlation level needs 2 cells of a 1/8-resolution feature map."""
        return 8 * 2 * 2 ** (self.corr_levels - 1)


SMALL = RaftSpec("raft_small", "bottleneck", (32, 32, 64, 96, 128), (32, 32, 64, 96, 160), False, 3, (96,), (64, 32),
                 82, 96, ((3, 3),), 128, False)
LARGE = RaftSpec("raft_large", "residual", (64, 64, 96, 128, 256), (64, 64, 96, 128, 256), True, 4, (256, 192), (128, 64),
                 128, 128, ((1, 5), (5, 1)), 256, True)
SPECS = {s.name: s for s in (SMALL, LARGE)}


def conv(cin: int, cout: int, k: int | tuple[int, int], stride: int = 1, norm: str | None = None, relu: bool = True) -> nn.Sequential:
    """Conv (with bias), optional norm, optional ReLU: torchvision's Conv2dNormActivation keys (`.0` conv, `.1` norm)."""
    k = (k, k) if isinstance(k, int) else k
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, padding=(k[0] // 2, k[1] // 2))]
    if norm == "instance":
        layers.append(nn.InstanceNorm2d(cout))
    elif norm == "batch":
        layers.append(nn.BatchNorm2d(cout))
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Block(nn.Module):
    """RAFT's encoder block: residual (two 3x3) or bottleneck (1x1, 3x3, 1x1), with a projected shortcut
    where it strides; ReLU after the sum."""

    def __init__(self, kind: str, cin: int, cout: int, norm: str | None, stride: int):
        super().__init__()
        if kind == "residual":
            self.convnormrelu1 = conv(cin, cout, 3, stride, norm)
            self.convnormrelu2 = conv(cout, cout, 3, 1, norm)
            self.convs = [self.convnormrelu1, self.convnormrelu2]
        else:
            self.convnormrelu1 = conv(cin, cout // 4, 1, 1, norm)
            self.convnormrelu2 = conv(cout // 4, cout // 4, 3, stride, norm)
            self.convnormrelu3 = conv(cout // 4, cout, 1, 1, norm)
            self.convs = [self.convnormrelu1, self.convnormrelu2, self.convnormrelu3]
        self.downsample = conv(cin, cout, 1, stride, norm, relu=False) if stride != 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for layer in self.convs:
            y = layer(y)
        return F.relu(self.downsample(x) + y)


class Encoder(nn.Module):
    """``(b, 3, h, w)`` -> ``(b, layers[4], h/8, w/8)``: a 7x7 stride-2 stem, three pairs of blocks
    (strides 1, 2, 2), a 1x1 projection. Used as the feature and as the context encoder."""

    def __init__(self, kind: str, layers: tuple[int, ...], norm: str | None):
        super().__init__()
        self.convnormrelu = conv(3, layers[0], 7, 2, norm)
        for i, stride in enumerate((1, 2, 2), start=1):
            pair = nn.Sequential(Block(kind, layers[i - 1], layers[i], norm, stride), Block(kind, layers[i], layers[i], norm, 1))
            setattr(self, f"layer{i}", pair)
        self.conv = nn.Conv2d(layers[3], layers[4], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.layer3(self.layer2(self.layer1(self.convnormrelu(x)))))


class MotionEncoder(nn.Module):
    """Correlation features and the current flow -> motion features (the flow itself appended last)."""

    def __init__(self, spec: RaftSpec, corr_channels: int):
        super().__init__()
        c = spec.corr_layers
        self.convcorr1 = conv(corr_channels, c[0], 1)
        self.convcorr2 = conv(c[0], c[1], 3) if len(c) == 2 else nn.Identity()
        self.convflow1 = conv(2, spec.flow_layers[0], 7)
        self.convflow2 = conv(spec.flow_layers[0], spec.flow_layers[1], 3)
        self.conv = conv(c[-1] + spec.flow_layers[1], spec.motion_channels - 2, 3)

    def forward(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        corr = self.convcorr2(self.convcorr1(corr))
        motion = self.conv(torch.cat([corr, self.convflow2(self.convflow1(flow))], dim=1))
        return torch.cat([motion, flow], dim=1)


class ConvGRU(nn.Module):
    def __init__(self, inputs: int, hidden: int, kernel: tuple[int, int]):
        super().__init__()
        pad = (kernel[0] // 2, kernel[1] // 2)
        self.convz, self.convr, self.convq = (nn.Conv2d(hidden + inputs, hidden, kernel, padding=pad) for _ in range(3))

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        hx = torch.cat([h, x], dim=1)
        z = torch.sigmoid(self.convz(hx))
        r = torch.sigmoid(self.convr(hx))
        q = torch.tanh(self.convq(torch.cat([r * h, x], dim=1)))
        return (1 - z) * h + z * q


class RecurrentBlock(nn.Module):
    """One ConvGRU (small: 3x3) or two separable ones (large: 1x5 then 5x1)."""

    def __init__(self, inputs: int, hidden: int, kernels: tuple[tuple[int, int], ...]):
        super().__init__()
        for i, kernel in enumerate(kernels, start=1):
            setattr(self, f"convgru{i}", ConvGRU(inputs, hidden, kernel))
        self.grus = [getattr(self, f"convgru{i}") for i in range(1, len(kernels) + 1)]

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        for gru in self.grus:
            h = gru(h, x)
        return h


class FlowHead(nn.Module):
    def __init__(self, hidden: int, head_hidden: int):
        super().__init__()
        self.conv1 = nn.Conv2d(hidden, head_hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(head_hidden, 2, 3, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(h)))


class UpdateBlock(nn.Module):
    def __init__(self, spec: RaftSpec):
        super().__init__()
        corr_channels = spec.corr_levels * (2 * spec.corr_radius + 1) ** 2
        self.motion_encoder = MotionEncoder(spec, corr_channels)
        context = spec.context_layers[-1] - spec.hidden
        self.recurrent_block = RecurrentBlock(spec.motion_channels + context, spec.hidden, spec.gru_kernels)
        self.flow_head = FlowHead(spec.hidden, spec.head_hidden)

    def forward(self, h: torch.Tensor, context: torch.Tensor, corr: torch.Tensor, flow: torch.Tensor):
        x = torch.cat([context, self.motion_encoder(flow, corr)], dim=1)
        h = self.recurrent_block(h, x)
        return h, self.flow_head(h)


class MaskPredictor(nn.Module):
    """Hidden state -> ``(b, 9 * 8 * 8, h/8, w/8)`` logits of the convex upsampling weights (large only)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.convrelu = conv(hidden, 256, 3)
        self.conv = nn.Conv2d(256, 8 * 8 * 9, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return 0.25 * self.conv(self.convrelu(h))  # the paper's gradient down-weighting, kept for its weights


def coords_grid(b: int, h: int, w: int, device: torch.device) -> torch.Tensor:
    """``(b, 2, h, w)`` pixel coordinates, channel 0 = x, channel 1 = y."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([xs, ys]).float()[None].expand(b, 2, h, w)


def corr_pyramid(fmap1: torch.Tensor, fmap2: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """All-pairs correlation of ``(b, c, h, w)`` features, ``(b*h*w, 1, h, w)``, average-pooled ``levels - 1`` times."""
    b, c, h, w = fmap1.shape
    corr = torch.matmul(fmap1.reshape(b, c, h * w).transpose(1, 2), fmap2.reshape(b, c, h * w))
    corr = (corr / torch.sqrt(torch.tensor(float(c)))).reshape(b * h * w, 1, h, w)
    pyramid = [corr]
    for _ in range(levels - 1):
        pyramid.append(F.avg_pool2d(pyramid[-1], 2, stride=2))
    return pyramid


def corr_lookup(pyramid: list[torch.Tensor], coords: torch.Tensor, radius: int) -> torch.Tensor:
    """Bilinear samples of each level in a ``(2r+1)^2`` window around ``coords`` ``(b, 2, h, w)``, halved per
    level -> ``(b, levels * (2r+1)^2, h, w)``. As in the original RAFT, the window's first axis offsets x."""
    b, _, h, w = coords.shape
    side = 2 * radius + 1
    offsets = torch.linspace(-radius, radius, side, device=coords.device)
    window = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij"), dim=-1).view(1, side, side, 2)
    centers = coords.permute(0, 2, 3, 1).reshape(b * h * w, 1, 1, 2)
    out = []
    for corr in pyramid:
        ch, cw = corr.shape[-2:]
        x, y = (centers + window).split(1, dim=-1)
        grid = torch.cat([2 * x / (cw - 1) - 1, 2 * y / (ch - 1) - 1], dim=-1)  # absolute pixels -> [-1, 1]
        out.append(F.grid_sample(corr, grid, mode="bilinear", align_corners=True).view(b, h, w, -1))
        centers = centers / 2
    return torch.cat(out, dim=-1).permute(0, 3, 1, 2).contiguous()


def upsample_flow(flow: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``(b, 2, h, w)`` flow at 1/8 resolution -> ``(b, 2, 8h, 8w)``: bilinear, or the convex combination of
    each cell's 3x3 neighbours weighted by ``softmax(mask)`` (paper sec. 3.3)."""
    b, _, h, w = flow.shape
    if mask is None:
        return 8 * F.interpolate(flow, size=(8 * h, 8 * w), mode="bilinear", align_corners=True)
    weights = torch.softmax(mask.view(b, 1, 9, 8, 8, h, w), dim=2)
    neighbours = F.unfold(8 * flow, kernel_size=3, padding=1).view(b, 2, 9, 1, 1, h, w)
    up = (weights * neighbours).sum(dim=2)  # (b, 2, 8, 8, h, w)
    return up.permute(0, 1, 4, 2, 5, 3).reshape(b, 2, 8 * h, 8 * w)


class RaftNet(nn.Module):
    """RAFT with torchvision's module tree (and so its state-dict keys)."""

    def __init__(self, spec: RaftSpec = SMALL):
        super().__init__()
        self.spec = spec
        self.feature_encoder = Encoder(spec.block, spec.feature_layers, "instance")
        self.context_encoder = Encoder(spec.block, spec.context_layers, "batch" if spec.context_norm else None)
        self.update_block = UpdateBlock(spec)
        self.mask_predictor = MaskPredictor(spec.hidden) if spec.mask else None

    def forward(self, image1: torch.Tensor, image2: torch.Tensor, iters: int = ITERS) -> torch.Tensor:
        """``(b, 3, h, w)`` pairs in [-1, 1], h and w multiples of 8 -> ``(b, 2, h, w)`` flow from image1 to image2."""
        fmap1, fmap2 = self.feature_encoder(torch.cat([image1, image2])).chunk(2)
        return self.refine(fmap1, fmap2, self.context_encoder(image1), iters)

    def refine(self, fmap1: torch.Tensor, fmap2: torch.Tensor, context: torch.Tensor, iters: int) -> torch.Tensor:
        """Features of both images and the context of the first -> the flow after ``iters`` GRU updates."""
        spec = self.spec
        pyramid = corr_pyramid(fmap1, fmap2, spec.corr_levels)
        hidden, context = context.split([spec.hidden, context.shape[1] - spec.hidden], dim=1)
        hidden, context = torch.tanh(hidden), F.relu(context)
        b, _, h, w = fmap1.shape
        coords0 = coords_grid(b, h, w, fmap1.device)
        coords1 = coords0
        for _ in range(iters):
            corr = corr_lookup(pyramid, coords1, spec.corr_radius)
            hidden, delta = self.update_block(hidden, context, corr, coords1 - coords0)
            coords1 = coords1 + delta
        mask = self.mask_predictor(hidden) if self.mask_predictor is not None else None
        return upsample_flow(coords1 - coords0, mask)


# The original RAFT's names -> torchvision's (regex, replacement), applied in order to each key. The original
# blocks register their shortcut's norm twice (`normN` and `downsample.1`): `original_key` drops the first.
_ORIGINAL_RULES = (
    (r"^fnet\.", "feature_encoder."), (r"^cnet\.", "context_encoder."),
    (r"^(\w+_encoder)\.conv1\.", r"\1.convnormrelu.0."), (r"^(\w+_encoder)\.norm1\.", r"\1.convnormrelu.1."),
    (r"^(\w+_encoder)\.conv2\.", r"\1.conv."),
    (r"\.(layer\d\.\d)\.conv(\d)\.", r".\1.convnormrelu\2.0."), (r"\.(layer\d\.\d)\.norm(\d)\.", r".\1.convnormrelu\2.1."),
    (r"^update_block\.encoder\.convc(\d)\.", r"update_block.motion_encoder.convcorr\1.0."),
    (r"^update_block\.encoder\.convf(\d)\.", r"update_block.motion_encoder.convflow\1.0."),
    (r"^update_block\.encoder\.conv\.", "update_block.motion_encoder.conv.0."),
    (r"^update_block\.gru\.conv([zrq])([12])\.", r"update_block.recurrent_block.convgru\2.conv\1."),  # large: 1x5, 5x1
    (r"^update_block\.gru\.conv([zrq])\.", r"update_block.recurrent_block.convgru1.conv\1."),  # small: one 3x3
    (r"^update_block\.mask\.0\.", "mask_predictor.convrelu.0."), (r"^update_block\.mask\.2\.", "mask_predictor.conv."),
)


def is_original(state: dict[str, torch.Tensor]) -> bool:
    """princeton-vl/RAFT keys (`fnet.*`, `cnet.*`), as in raft-things.pth (its `module.` prefix already stripped)."""
    return any(k.startswith("fnet.") for k in state)


def original_key(key: str, state: dict[str, torch.Tensor]) -> str | None:
    """torchvision's name for one original key; None for a block's duplicate of its shortcut norm."""
    m = re.match(r"^([fc]net\.layer\d\.\d)\.norm(\d)\.", key)
    if m and not any(k.startswith(f"{m[1]}.conv{m[2]}.") for k in state):
        return None  # normN without a convN is downsample.1, which the state also holds under that name
    for pattern, repl in _ORIGINAL_RULES:
        key = re.sub(pattern, repl, key)
    return key


def from_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An original RAFT state dict in torchvision's keys (the same tensors)."""
    out = {}
    for k, v in state.items():
        new = original_key(k, state)
        if new is not None:
            out[new] = v
    return out


def to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision's keys -> the original RAFT's (shortcut norms under both of their names): for stand-ins
    written in VBench's layout. The inverse of `from_original`."""
    large = any(".convgru2." in k for k in state)
    rules = ((r"^feature_encoder\.", "fnet."), (r"^context_encoder\.", "cnet."),
             (r"^([fc]net)\.convnormrelu\.0\.", r"\1.conv1."), (r"^([fc]net)\.convnormrelu\.1\.", r"\1.norm1."),
             (r"^([fc]net)\.conv\.", r"\1.conv2."),
             (r"\.(layer\d\.\d)\.convnormrelu(\d)\.0\.", r".\1.conv\2."), (r"\.(layer\d\.\d)\.convnormrelu(\d)\.1\.", r".\1.norm\2."),
             (r"^update_block\.motion_encoder\.convcorr(\d)\.0\.", r"update_block.encoder.convc\1."),
             (r"^update_block\.motion_encoder\.convflow(\d)\.0\.", r"update_block.encoder.convf\1."),
             (r"^update_block\.motion_encoder\.conv\.0\.", "update_block.encoder.conv."),
             (r"^update_block\.recurrent_block\.convgru(\d)\.conv([zrq])\.", r"update_block.gru.conv\2\1." if large else r"update_block.gru.conv\2."),
             (r"^mask_predictor\.convrelu\.0\.", "update_block.mask.0."), (r"^mask_predictor\.conv\.", "update_block.mask.2."))
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        out[key] = value
    for key, value in list(out.items()):
        m = re.match(r"^([fc]net\.layer\d\.\d)\.downsample\.1\.(.*)$", key)
        if m:
            convs = len({k.split(".")[3] for k in out if k.startswith(f"{m[1]}.conv")})
            out[f"{m[1]}.norm{convs + 1}.{m[2]}"] = value
    return out


def detect_spec(state: dict[str, torch.Tensor], uri: str, flag: str = "--raft") -> RaftSpec:
    """raft_large has the convex-upsampling mask predictor, raft_small has not; anything else is not RAFT."""
    if any(k.startswith("mask_predictor.") for k in state):
        return LARGE
    if any(k.startswith("feature_encoder.") for k in state):
        return SMALL
    found = ", ".join(sorted(state)[:3])
    raise ConfigError(f"{flag} {uri}: not a torchvision RAFT state dict: expected raft_small or raft_large keys "
                      f"(feature_encoder.*, context_encoder.*, update_block.*, mask_predictor.* for raft_large) "
                      f"or the original RAFT's (fnet.*, cnet.*, update_block.*), found {found}, ...")


def load_raft_state(uri: str, flag: str = "--raft") -> tuple[RaftSpec, dict[str, torch.Tensor]]:
    """Read and strictly check a RAFT state dict (torchvision's or the original's keys, returned in
    torchvision's); ConfigError names what is wrong, after `flag`."""
    try:
        state = load_state_dict(uri)
        state = from_original(state) if is_original(state) else state
        spec = detect_spec(state, uri, flag)
        expected = {k: tuple(v.shape) for k, v in RaftNet(spec).state_dict().items()}
        check_keys(expected, state, f"torchvision {spec.name} state dict", uri)
    except CheckpointError as e:  # a wrong --raft file is a configuration error of this job
        raise ConfigError(f"{flag} {e}") from None
    return spec, state


@dataclass(frozen=True)
class Raft:
    """A loaded RAFT network (float32, eval mode) and how it is run."""

    net: RaftNet
    iters: int = ITERS
    pair_batch: int = PAIR_BATCH

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device


def load_raft(uri: str, device: str | torch.device = "cpu", iters: int = ITERS, pair_batch: int = PAIR_BATCH,
              flag: str = "--raft") -> Raft:
    """Load RAFT weights (`.pth` or `.safetensors`; torchvision's raft_small/raft_large or the original RAFT's
    keys), the variant read from the keys."""
    spec, state = load_raft_state(uri, flag)
    net = RaftNet(spec)
    net.load_state_dict(state)
    return Raft(net.to(device).eval(), iters, pair_batch)


def raft_state(spec: RaftSpec = SMALL, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in torchvision's keys (for the tiny model set): PyTorch's default init from `seed`."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return RaftNet(spec).state_dict()


def to_network(frames: np.ndarray, min_side: int) -> tuple[torch.Tensor, tuple[float, float], tuple[int, int]]:
    """``(f, h, w, 3) uint8`` -> ``(f, 3, H, W)`` in [-1, 1], with H, W multiples of 8 and at least `min_side`.

    Frames smaller than `min_side` are upscaled (bilinear) first; returns the (y, x) scale to divide flows
    by, and the (H', W') of the frames before the replicate padding to a multiple of 8 (split as evenly as
    possible, as the original RAFT's evaluation pads)."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255
    x = (x - 0.5) / 0.5  # torchvision's OpticalFlow preset: normalize(mean=0.5, std=0.5)
    h, w = x.shape[-2:]
    scale = max(1.0, min_side / min(h, w))
    if scale > 1:
        x = F.interpolate(x, size=(math.ceil(h * scale), math.ceil(w * scale)), mode="bilinear", align_corners=False)
    sh, sw = x.shape[-2:]
    ph, pw = -sh % 8, -sw % 8
    if ph or pw:
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="replicate")
    return x, (sh / h, sw / w), (sh, sw)


@torch.no_grad()
def chunk_flows(raft: Raft, frames: np.ndarray):
    """Yields ``(n, 2, h', w')`` float32 flows of `raft.pair_batch` consecutive pairs at a time (see `pair_flows`).

    Frames are converted a chunk at a time, so a long video never sits in memory as float. Each frame of a
    chunk is encoded once (the encoders normalize each image on its own: its features do not depend on
    its batch)."""
    for start in range(0, len(frames) - 1, raft.pair_batch):
        x, (sy, sx), (sh, sw) = to_network(frames[start : start + raft.pair_batch + 1], raft.net.spec.min_side)
        top, left = (x.shape[-2] - sh) // 2, (x.shape[-1] - sw) // 2
        x = x.to(raft.device)
        fmaps = raft.net.feature_encoder(x)
        flow = raft.net.refine(fmaps[:-1], fmaps[1:], raft.net.context_encoder(x[:-1]), raft.iters)
        flow = flow[:, :, top : top + sh, left : left + sw].float().cpu()
        if (sy, sx) != (1.0, 1.0):
            flow = flow / torch.tensor([sx, sy]).view(1, 2, 1, 1)  # upscaled frames' pixels -> the given frames'
        yield flow


def pair_flows(raft: Raft, frames: np.ndarray) -> torch.Tensor:
    """``(f, h, w, 3) uint8`` -> ``(f - 1, 2, h', w')`` float32 flow from each frame to the next, in pixels of
    the given frames, on the network's grid: ``(h', w') = (h, w)`` unless the frames were upscaled to
    RAFT's minimum side (the padding is cropped off)."""
    return torch.cat(list(chunk_flows(raft, frames)))


def pair_magnitudes(raft: Raft, frames: np.ndarray) -> np.ndarray:
    """``(f - 1,)`` float64: each consecutive pair's mean optical-flow magnitude, in pixels."""
    return np.concatenate([f.norm(dim=1).mean(dim=(1, 2)).double().numpy() for f in chunk_flows(raft, frames)] or [np.zeros(0)])


def motion_flow(raft: Raft, frames: np.ndarray) -> float:
    """Mean optical-flow magnitude between consecutive frames, in pixels; NaN for one frame."""
    if len(frames) < 2:
        return float("nan")
    return float(pair_magnitudes(raft, frames).mean())


@torch.no_grad()
def flows_between(raft: Raft, frames: np.ndarray, pairs: list[tuple[int, int]]) -> tuple[torch.Tensor, tuple[int, int]]:
    """``(f, h, w, 3) uint8`` and index pairs ``(i, j)`` -> ``(len(pairs), 2, H, W)`` float32 flows from frame i to
    frame j on the network's padded grid, in its pixels, uncropped (VBench measures its flows there), and the
    (H', W') of the frames before padding (``(h, w)`` unless upscaled to RAFT's minimum side).

    Frames are encoded once per chunk of `raft.pair_batch` pairs; the original RAFT, like ours, normalizes each
    image on its own, so features do not depend on the batch."""
    x, _, size = to_network(frames, raft.net.spec.min_side)
    out = []
    for start in range(0, len(pairs), raft.pair_batch):
        chunk = pairs[start : start + raft.pair_batch]
        used = sorted({k for pair in chunk for k in pair})
        at = {k: n for n, k in enumerate(used)}
        xs = x[used].to(raft.device)
        fmaps = raft.net.feature_encoder(xs)
        first, second = [at[i] for i, _ in chunk], [at[j] for _, j in chunk]
        out.append(raft.net.refine(fmaps[first], fmaps[second], raft.net.context_encoder(xs[first]), raft.iters).float().cpu())
    return (torch.cat(out) if out else torch.zeros(0, 2, *x.shape[-2:])), size
