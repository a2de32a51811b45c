"""FVD: I3D against VideoGPT's (from the fixture), the Fréchet distance against scipy's and VideoGPT's, and
what holds for any weights (a set against itself ~0; farther sets score higher)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from animatediff_core.errors import ConfigError
from animatediff_core.io.checkpoints import save_state_dict
from animatediff_core.metrics import fvd, i3d

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
from make_raft_reference import reference_weights  # noqa: E402
from make_vbench_reference import FVD_FRAMES, fd_features, fvd_videos  # noqa: E402

REFERENCE = np.load(Path(__file__).resolve().parents[1] / "fixtures" / "vbench_reference.npz")
META = json.loads(REFERENCE["meta"].tobytes())


def _scipy_frechet(x1: np.ndarray, x2: np.ndarray) -> float:
    """The textbook formula with scipy's matrix square root (StyleGAN-V's way)."""
    mu1, mu2 = x1.mean(0), x2.mean(0)
    s1, s2 = np.cov(x1, rowvar=False), np.cov(x2, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


def test_i3d_matches_videogpt(tmp_path, one_thread):
    """Full-size I3D in VideoGPT's keys (written to a file, loaded back), on VideoGPT's preprocessing of
    48x64 videos: the logits VideoGPT's get_fvd_logits gave."""
    state = {k: torch.from_numpy(np.asarray(v)) for k, v in reference_weights({k: tuple(s) for k, s in META["i3d_keys"].items()}).items()}
    assert {k: list(v.shape) for k, v in i3d.random_state(1.0).items()} == {k: s for k, s in META["i3d_keys"].items()
                                                                             if not k.endswith("num_batches_tracked")}
    save_state_dict(state, str(tmp_path / "i3d_pretrained_400.pt"))
    net = i3d.load(str(tmp_path / "i3d_pretrained_400.pt"))
    videos = fvd_videos()
    picked = [0, 7]  # two of the sixteen: I3D at 224 px costs seconds per video on a CPU
    got = fvd.features(net, [videos[k] for k in picked], num_frames=FVD_FRAMES)
    expected = REFERENCE["fvd_logits"][picked]
    assert np.abs(expected).max() > 0.05
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_frechet_distance_matches_scipy_and_videogpt():
    rng = np.random.default_rng(0)
    x1 = rng.standard_normal((200, 8))
    x2 = rng.standard_normal((150, 8)) @ rng.standard_normal((8, 8)) * 0.5 + 1.0
    assert fvd.fvd(x1, x2) == pytest.approx(_scipy_frechet(x1, x2), rel=1e-8)
    a, b = fd_features()
    assert fvd.fvd(a, b) == pytest.approx(float(REFERENCE["fd_videogpt"]), rel=1e-8)  # VideoGPT's, in float64
    # VideoGPT's float32 FVD between the fixture's two halves of I3D logits (16 x 400: rank-deficient covariances)
    logits = REFERENCE["fvd_logits"].astype(np.float64)
    assert fvd.fvd(logits[:8], logits[8:]) == pytest.approx(float(REFERENCE["fvd_halves"]), abs=5e-5)


def test_fvd_of_a_set_against_itself_and_farther_sets():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 16))
    assert abs(fvd.fvd(x, x)) < 1e-8
    near, far = x + 0.1, x * 1.5 + 0.5
    assert 0 < fvd.fvd(x, near) < fvd.fvd(x, far)


def test_preprocess_is_videogpts(one_thread):
    video = np.random.default_rng(0).integers(0, 256, (20, 48, 80, 3), dtype=np.uint8)
    x = fvd.preprocess(video)
    assert x.shape == (3, fvd.FRAMES, 224, 224) and x.min() >= -1 and x.max() <= 1
    # the short side to 224, the long side rounded up (80 * 224 / 48 = 373.3 -> 374), a centered crop
    full = torch.nn.functional.interpolate(torch.from_numpy(video[:16]).permute(0, 3, 1, 2).float() / 255, size=(224, 374),
                                           mode="bilinear", align_corners=False)
    torch.testing.assert_close(x, (full[:, :, :, 75:299].permute(1, 0, 2, 3) - 0.5) * 2)


def test_bad_i3d_files(tmp_path):
    save_state_dict({"fnet.conv1.weight": torch.zeros(1)}, str(tmp_path / "raft.pth"))
    with pytest.raises(ConfigError, match=r"--i3d .*raft.pth: not an I3D state dict \(expected VideoGPT's or piergiaj's keys"):
        i3d.load(str(tmp_path / "raft.pth"))
    state = i3d.random_state(1 / 8)
    del state["Mixed_4c.b1b.conv3d.weight"]
    save_state_dict(state, str(tmp_path / "broken.pt"))
    with pytest.raises(ConfigError, match=r"not a complete I3D state dict \(no Mixed_4c.b1b.conv3d.weight\)"):
        i3d.load(str(tmp_path / "broken.pt"))
