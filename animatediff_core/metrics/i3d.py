"""Inflated 3D ConvNet (Carreira & Zisserman, "Quo Vadis, Action Recognition?", CVPR 2017), the Kinetics-400
video classifier whose logits FVD compares (Unterthiner et al. 2018).

Our own plain-torch implementation of the Inception-v1 I3D as VideoGPT's ``videogpt/fvd/pytorch_i3d.py``
has it (itself from piergiaj/pytorch-i3d), with its state-dict keys: ``Conv3d_1a_7x7.conv3d.weight``,
``Conv3d_1a_7x7.bn.*``, ``Mixed_3b.b0.conv3d.weight``, ..., ``logits.conv3d.{weight,bias}``. Its weight file is
``i3d_pretrained_400.pt``: DeepMind's TF-Hub ``i3d-kinetics-400`` (the network of the original FVD code),
converted by VideoGPT and used as is by TATS and common_metrics_on_video_quality; piergiaj's
``rgb_imagenet.pt`` has the same keys. Layer widths are read from the weights, so a narrow stand-in loads the
same way. Like VideoGPT's: "same" padding computed per input (zeros, before convolutions and max pools),
BatchNorm eps 1e-5 in eval mode, and the logits (a 1x1x1 convolution after a 2x7x7 average pool) averaged
over the remaining time steps. tests/core/test_fvd.py compares ours with VideoGPT's class on the same weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from animatediff_core.io.checkpoints import check_keys, load_state_dict
from animatediff_core.errors import CheckpointError, ConfigError

# (name, kind, kernel, stride): the network in order; "unit" a conv-BN-ReLU, "pool" a max pool, "mixed" an
# Inception block (branches b0 1x1 | b1a 1x1 -> b1b 3x3x3 | b2a 1x1 -> b2b 3x3x3 | 3x3x3 max pool -> b3b 1x1).
LAYERS = (("Conv3d_1a_7x7", "unit", (7, 7, 7), (2, 2, 2)), ("MaxPool3d_2a_3x3", "pool", (1, 3, 3), (1, 2, 2)),
          ("Conv3d_2b_1x1", "unit", (1, 1, 1), (1, 1, 1)), ("Conv3d_2c_3x3", "unit", (3, 3, 3), (1, 1, 1)),
          ("MaxPool3d_3a_3x3", "pool", (1, 3, 3), (1, 2, 2)), ("Mixed_3b", "mixed", None, None), ("Mixed_3c", "mixed", None, None),
          ("MaxPool3d_4a_3x3", "pool", (3, 3, 3), (2, 2, 2)), *((f"Mixed_4{c}", "mixed", None, None) for c in "bcdef"),
          ("MaxPool3d_5a_2x2", "pool", (2, 2, 2), (2, 2, 2)), ("Mixed_5b", "mixed", None, None), ("Mixed_5c", "mixed", None, None))
BRANCHES = (("b0", (1, 1, 1)), ("b1a", (1, 1, 1)), ("b1b", (3, 3, 3)), ("b2a", (1, 1, 1)), ("b2b", (3, 3, 3)), ("b3b", (1, 1, 1)))
MIN_FRAMES = 9  # the 2x7x7 average pool needs two time steps after three temporal halvings


def same_pad(x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor:
    """TensorFlow's "same" padding of ``(b, c, t, h, w)`` (the extra cell after, not before), with zeros."""
    pads = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class Unit3D(nn.Module):
    """Convolution (no bias) -> BatchNorm -> ReLU, or a plain convolution with bias (the logits)."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int], stride=(1, 1, 1), logits: bool = False):
        super().__init__()
        self.kernel, self.stride, self.logits = kernel, stride, logits
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride, bias=logits)
        if not logits:
            self.bn = nn.BatchNorm3d(cout, eps=1e-5, momentum=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(same_pad(x, self.kernel, self.stride))
        return x if self.logits else F.relu(self.bn(x))


class Mixed(nn.Module):
    def __init__(self, cin: int, widths: dict[str, int]):
        super().__init__()
        inputs = {"b0": cin, "b1a": cin, "b1b": widths["b1a"], "b2a": cin, "b2b": widths["b2a"], "b3b": cin}
        for name, kernel in BRANCHES:
            setattr(self, name, Unit3D(inputs[name], widths[name], kernel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.max_pool3d(same_pad(x, (3, 3, 3), (1, 1, 1)), (3, 3, 3), (1, 1, 1))
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(pooled)], dim=1)


class I3D(nn.Module):
    def __init__(self, widths: dict[str, int], classes: int):
        """`widths`: output channels of every unit, ``{"Conv3d_1a_7x7": 64, "Mixed_3b.b0": 64, ...}``."""
        super().__init__()
        channels = 3
        for name, kind, kernel, stride in LAYERS:
            if kind == "unit":
                setattr(self, name, Unit3D(channels, widths[name], kernel, stride))
                channels = widths[name]
            elif kind == "mixed":
                setattr(self, name, Mixed(channels, {b: widths[f"{name}.{b}"] for b, _ in BRANCHES}))
                channels = sum(widths[f"{name}.{b}"] for b in ("b0", "b1b", "b2b", "b3b"))
        self.logits = Unit3D(channels, classes, (1, 1, 1), logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, 3, t, 224, 224)`` in [-1, 1], t >= MIN_FRAMES -> ``(b, classes)`` logits, averaged over time."""
        for name, kind, kernel, stride in LAYERS:
            x = F.max_pool3d(same_pad(x, kernel, stride), kernel, stride) if kind == "pool" else getattr(self, name)(x)
        x = self.logits(F.avg_pool3d(x, (2, 7, 7), (1, 1, 1)))
        return x.squeeze(4).squeeze(3).mean(dim=2)


def build(state: dict[str, torch.Tensor], uri: str) -> I3D:
    """An I3D shaped by `state` (VideoGPT's / piergiaj's keys), strictly checked; BatchNorm's batch counters
    are optional (VideoGPT's converted file has none)."""
    if "Conv3d_1a_7x7.conv3d.weight" not in state or "logits.conv3d.weight" not in state:
        raise CheckpointError(f"{uri}: not an I3D state dict (expected VideoGPT's or piergiaj's keys: "
                              f"Conv3d_1a_7x7.conv3d.weight, Mixed_3b.b0.conv3d.weight, ..., logits.conv3d.weight; "
                              f"found {', '.join(sorted(state)[:3])}, ...)")
    widths = {k[: -len(".conv3d.weight")]: v.shape[0] for k, v in state.items() if k.endswith(".conv3d.weight")}
    try:
        net = I3D(widths, widths["logits"])
    except KeyError as e:
        raise CheckpointError(f"{uri}: not a complete I3D state dict (no {e.args[0]}.conv3d.weight)") from None
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    check_keys(expected, state, "I3D state dict", uri)
    net.load_state_dict(state, strict=False)
    return net.eval()


def load(uri: str, device: str | torch.device = "cpu", flag: str = "--i3d") -> I3D:
    """I3D weights from a file (any format `checkpoints.load_state_dict` reads safely), in float32 as VideoGPT
    runs it; a wrong file is a ConfigError naming `flag`."""
    try:
        return build(load_state_dict(uri), uri).to(device)
    except CheckpointError as e:
        raise ConfigError(f"{flag} {e}") from None


def random_state(widths_scale: float = 1.0, classes: int = 400, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in VideoGPT's keys at `widths_scale` times I3D's widths (PyTorch's default init): the
    tiny model set's stand-in."""
    full = {"Conv3d_1a_7x7": 64, "Conv3d_2b_1x1": 64, "Conv3d_2c_3x3": 192}
    mixed = {"3b": (64, 96, 128, 16, 32, 32), "3c": (128, 128, 192, 32, 96, 64), "4b": (192, 96, 208, 16, 48, 64),
             "4c": (160, 112, 224, 24, 64, 64), "4d": (128, 128, 256, 24, 64, 64), "4e": (112, 144, 288, 32, 64, 64),
             "4f": (256, 160, 320, 32, 128, 128), "5b": (256, 160, 320, 32, 128, 128), "5c": (384, 192, 384, 48, 128, 128)}
    for m, ws in mixed.items():
        full.update({f"Mixed_{m}.{b}": w for (b, _), w in zip(BRANCHES, ws)})
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = I3D({k: max(1, round(v * widths_scale)) for k, v in full.items()}, classes)
        return {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
