"""RAFT optical flow: torchvision's flows reproduced from a fixture, and what holds for any weights."""

import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from animatediff_core.errors import ConfigError
from animatediff_core.io.checkpoints import save_state_dict
from animatediff_core.metrics import flow

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
from make_raft_reference import SUBSAMPLE, reference_frames, reference_weights  # noqa: E402

REFERENCE = np.load(Path(__file__).resolve().parents[1] / "fixtures" / "raft_reference.npz")
META = json.loads(REFERENCE["meta"].tobytes())
TOLERANCE = 1e-4  # pixels; torchvision's and our flows (|flow| up to ~17 px) agree to the bit on one thread


def _reference_raft(spec: flow.RaftSpec, **kw) -> flow.Raft:
    net = flow.RaftNet(spec)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    net.load_state_dict({k: torch.from_numpy(v) for k, v in reference_weights(shapes).items()})
    return flow.Raft(net.eval(), **kw)


@pytest.mark.parametrize("spec", [flow.SMALL, flow.LARGE], ids=lambda s: s.name)
def test_matches_torchvision(spec, one_thread):
    ours = {k: list(v.shape) for k, v in flow.RaftNet(spec).state_dict().items()}
    assert ours == META[f"{spec.name}_keys"]  # torchvision's key names and shapes, in its order
    frames = reference_frames()
    assert REFERENCE["frames_sha256"].tobytes() == hashlib.sha256(frames.tobytes()).digest()  # the frames torchvision saw
    raft = _reference_raft(spec)
    flows = flow.pair_flows(raft, frames)
    assert flows.shape == (3, 2, *frames.shape[1:3])
    expected = REFERENCE[f"{spec.name}_flow"]
    assert np.abs(expected).max() > 1.0  # a real flow field, not zeros
    np.testing.assert_allclose(flows[:, :, ::SUBSAMPLE, ::SUBSAMPLE].numpy(), expected, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(flow.pair_magnitudes(raft, frames), REFERENCE[f"{spec.name}_magnitude"], rtol=0, atol=TOLERANCE)


def test_batched_pairs_equal_one_pair_at_a_time(one_thread):
    frames = reference_frames()
    together = flow.pair_flows(_reference_raft(flow.SMALL, iters=4), frames)
    alone = flow.pair_flows(_reference_raft(flow.SMALL, iters=4, pair_batch=1), frames)
    two = flow.pair_flows(_reference_raft(flow.SMALL, iters=4, pair_batch=2), frames)  # a chunk of 2 pairs, then 1
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-4)
    torch.testing.assert_close(two, alone, rtol=0, atol=1e-4)
    net = _reference_raft(flow.SMALL).net  # the network's own two-image forward agrees with the video path
    x, _, _ = flow.to_network(frames[1:3], 128)
    with torch.no_grad():
        torch.testing.assert_close(net(x[:1], x[1:], iters=4), alone[1:2], rtol=0, atol=1e-4)


def test_sizes_that_are_not_multiples_of_8(one_thread):
    raft = _reference_raft(flow.SMALL, iters=2)
    frames = np.roll(reference_frames(), 1, axis=0)
    big = np.concatenate([frames, frames[:, :10]], axis=1)[:, :133, :141]  # padded to 136 x 144, then cropped back
    flows = flow.pair_flows(raft, big)
    assert flows.shape == (3, 2, 133, 141) and torch.isfinite(flows).all()
    small = big[:, :40, :52]  # below RAFT's 128-pixel minimum: upscaled by 128 / 40, flows scaled back
    flows = flow.pair_flows(raft, small)
    assert flows.shape == (3, 2, 128, math.ceil(52 * 128 / 40)) and torch.isfinite(flows).all()
    mags = flow.pair_magnitudes(raft, small)
    assert mags.shape == (3,) and np.isfinite(mags).all()
    assert flow.motion_flow(raft, small) == pytest.approx(mags.mean())
    assert math.isnan(flow.motion_flow(raft, small[:1]))


def test_loads_torchvision_files_in_both_formats(tmp_path, one_thread):
    frames = reference_frames()[:2]
    for spec in (flow.SMALL, flow.LARGE):
        net = _reference_raft(spec).net
        for name in (f"{spec.name}.pth", f"{spec.name}.safetensors"):
            save_state_dict(net.state_dict(), str(tmp_path / name))
            raft = flow.load_raft(str(tmp_path / name), iters=3)
            assert raft.net.spec == spec and not raft.net.training and raft.iters == 3
            torch.testing.assert_close(flow.pair_flows(raft, frames), flow.pair_flows(_reference_raft(spec, iters=3), frames))


def test_bad_files_are_config_errors(tmp_path):
    state = flow.raft_state(flow.SMALL)
    save_state_dict({"text_model.embeddings.weight": torch.zeros(2, 2)}, str(tmp_path / "clip.pth"))
    with pytest.raises(ConfigError, match=r"--raft .*clip.pth: not a torchvision RAFT state dict: expected raft_small or raft_large"):
        flow.load_raft(str(tmp_path / "clip.pth"))
    del state["update_block.flow_head.conv2.bias"]
    state["feature_encoder.conv.weight"] = torch.zeros(3, 3, 1, 1)
    save_state_dict(state, str(tmp_path / "broken.safetensors"))
    with pytest.raises(ConfigError, match=r"not a valid torchvision raft_small state dict; missing: update_block.flow_head.conv2.bias; "
                                          r"wrong shape: feature_encoder.conv.weight: expected \(128, 96, 1, 1\), found \(3, 3, 1, 1\)"):
        flow.load_raft(str(tmp_path / "broken.safetensors"))
    with pytest.raises(ConfigError, match="--raft .*nothing.pth: checkpoint not found"):
        flow.load_raft(str(tmp_path / "nothing.pth"))
