"""VBench's dimensions: VBench's own numbers reproduced from a fixture, its rules transcribed, and the
weight files of its cache layout (and the Hub's copies) loaded safely.

tests/fixtures/vbench_reference.npz holds what VBench's code returned for `reference_videos()` on DINO's,
OpenAI CLIP's and the original RAFT's classes filled by `reference_weights` (written by
tests/fixtures/make_vbench_reference.py); here our networks get the same weights in the same (original)
keys, through the loaders a real file goes through.
"""

import dataclasses
import hashlib
import json
import math
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from animatediff_core.errors import CheckpointError, ConfigError
from animatediff_core.io.checkpoints import load_state_dict, save_state_dict
from animatediff_core.metrics import clip_vision, dino, flow, vbench
from animatediff_core.metrics import scores as metrics

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
from make_raft_reference import reference_weights  # noqa: E402
from make_vbench_reference import reference_videos  # noqa: E402

REFERENCE = np.load(Path(__file__).resolve().parents[1] / "fixtures" / "vbench_reference.npz")
META = json.loads(REFERENCE["meta"].tobytes())
TOLERANCE = 1e-5  # VBench's scores are cosines and shares in [0, 1]; ours agree to ~1e-7 on one thread


def _weights(keys: dict, strip: str = "") -> dict[str, torch.Tensor]:
    shapes = {k.removeprefix(strip): tuple(s) for k, s in keys.items()}
    return {k: torch.from_numpy(np.asarray(v)) for k, v in reference_weights(shapes).items()}


def _shapes(state: dict) -> dict:
    return {k: list(v.shape) for k, v in state.items()}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """VBench's networks with the fixture's weights, each written to a file in its original layout and
    loaded back through `vbench.load_models` (VBench's cache layout)."""
    root = tmp_path_factory.mktemp("vbench")
    save_state_dict(_weights(META["dino_small_keys"]), str(root / "dino_model" / "dino_vitbase16_pretrain.pth"))
    save_state_dict(_weights(META["clip_b32_keys"]), str(root / "clip_model" / "ViT-B-32.pt"))
    save_state_dict(_weights(META["clip_l14_keys"]), str(root / "clip_model" / "ViT-L-14.pt"))
    save_state_dict(_weights(META["aesthetic_keys"]), str(root / "aesthetic_model" / "emb_reader" / "sa_0_4_vit_l_14_linear.pth"))
    things = {f"module.{k}": v for k, v in _weights(META["raft_things_keys"]).items()}  # as DataParallel saved it
    save_state_dict(things, str(root / "raft_model" / "models" / "raft-things.pth"))
    return vbench.load_models(str(root))


def test_frames_are_the_ones_vbench_saw():
    frames = b"".join(v.tobytes() for v, _ in reference_videos())
    assert REFERENCE["frames_sha256"].tobytes() == hashlib.sha256(frames).digest()


@pytest.mark.parametrize("column", ["subject_consistency", "background_consistency", "aesthetic_quality"])
def test_model_dimensions_match_vbench(models, column, one_thread):
    """DINO (frames 128x150 and 136x128: DINO's position-embedding interpolation), CLIP ViT-B/32 (bicubic
    resize, center crop) and the LAION head on CLIP ViT-L/14, through VBench's own functions."""
    only = dataclasses.replace(models, dimensions=(column,), raft=None)
    for k, (frames, fps) in enumerate(reference_videos()):
        assert vbench.score_video(only, frames, fps)[column] == pytest.approx(REFERENCE[column][k], abs=TOLERANCE)


def test_temporal_flickering_matches_vbench():
    for k, (frames, _) in enumerate(reference_videos()):
        assert metrics.temporal_flicker(frames) == pytest.approx(REFERENCE["temporal_flickering"][k], abs=1e-6)


def test_raft_things_flows_match_vbench(models, one_thread, monkeypatch):
    """The original RAFT's keys (raft-things.pth, DataParallel) through flow.py's key map: each pair's top-5%
    (dynamic degree, every round(fps / 8)-th frame) and top-2% (static filter) flow means, and the verdicts."""
    assert models.raft.net.spec is flow.LARGE and models.raft.iters == 20
    seen, flows_between = [], flow.flows_between
    monkeypatch.setattr(flow, "flows_between", lambda *a: seen.append((a[2], flows_between(*a)[0])) or (seen[-1][1], a[1].shape[1:3]))
    only = dataclasses.replace(models, dimensions=("dynamic_degree", "temporal_flickering"))
    for k, (frames, fps) in enumerate(reference_videos()):
        scores = vbench.score_video(only, frames, fps)
        assert scores["dynamic_degree"] == float(REFERENCE["dynamic_degree"][k])
        assert scores["static_filter"] == float(REFERENCE["static_filter"][k])
        pairs, flows = seen[-1]  # every pair's flow, computed once for both
        n, kept = len(frames), list(range(0, len(frames), max(1, round(fps / 8))))
        wanted = {"dynamic_degree": list(zip(kept[:-1], kept[1:])),
                  "static_filter": [(i, i + 1) for i in range(n - 1)] + [(0, n - 1), (n - 1, 0)]}
        for column, share in (("dynamic_degree", 0.05), ("static_filter", 0.02)):
            picked = flows[[pairs.index(p) for p in wanted[column]]]
            np.testing.assert_allclose(vbench.top_share_mean(picked, share), REFERENCE[f"{column}_scores_{k}"], rtol=0, atol=1e-4)


def test_full_size_keys_are_the_originals():
    """Our networks at the real sizes have the official classes' key names and shapes: DINO ViT-B/16 (and timm's
    copy of it on the Hub), CLIP ViT-B/32 and ViT-L/14, RAFT-large and -small in the original RAFT's keys."""
    vit = dino.DinoViT(dim=768, depth=12, patch=16, grid=14, hidden=3072)
    assert _shapes(vit.state_dict()) == META["dino_vitb16_keys"] == META["timm_dino_keys"]
    for name, (width, layers, patch, out) in {"vitb32": (768, 12, 32, 512), "vitl14": (1024, 24, 14, 768)}.items():
        tower = clip_vision.ClipVision(width, layers, patch, 224 // patch, out)
        assert {f"visual.{k}": s for k, s in _shapes(tower.state_dict()).items()} == META[f"clip_{name}_visual_keys"]
    for spec, key in ((flow.LARGE, "raft_things_keys"), (flow.SMALL, "raft_small_original_keys")):
        original = {k.removeprefix("module."): s for k, s in META[key].items()}
        assert _shapes(flow.to_original(flow.raft_state(spec))) == original
        mapped = flow.from_original({k: torch.zeros(s) for k, s in original.items()})
        assert _shapes(mapped) == _shapes(flow.raft_state(spec))


def _vbench_consistency(feats: torch.Tensor) -> float:
    """vbench/subject_consistency.py's loop, transcribed (background_consistency.py's is the same)."""
    video_sim, former, first = 0.0, None, None
    for i in range(len(feats)):
        image_features = feats[i].unsqueeze(0)
        if i == 0:
            first = image_features
        else:
            sim_pre = max(0.0, F.cosine_similarity(former, image_features).item())
            sim_fir = max(0.0, F.cosine_similarity(first, image_features).item())
            video_sim += (sim_pre + sim_fir) / 2
        former = image_features
    return video_sim / (len(feats) - 1)


def _vbench_check_move(score_list, side, count):
    """vbench/dynamic_degree.py: set_params then check_move, transcribed."""
    thres, count_num = 6.0 * (side / 256.0), round(4 * (count / 16.0))
    n = 0
    for score in score_list:
        if score > thres:
            n += 1
        if n >= count_num:
            return True
    return False


def _vbench_check_static(score_list, side, count):
    """vbench/cli/static_filter.py: set_params then check_static, transcribed."""
    thres, count_num = 3.0 * (side / 256.0), round(2 * (count / 16.0))
    n = 0
    for score in score_list[:-2]:
        if score > thres:
            n += 1
        if n > count_num:
            return False
    for score in score_list[-2:]:
        if score > thres * count_num * 2:
            return False
    return True


def test_rules_match_vbench_transcribed():
    rng = np.random.default_rng(0)
    for _ in range(300):
        frames = int(rng.integers(2, 40))  # 2, 6, 10, 18, ...: round() at .5 goes to even, in both
        side = int(rng.choice([128, 256, 320, 512]))
        scale = float(rng.choice([0.5, 3.0, 8.0, 20.0]))
        dyn = rng.random(frames - 1) * scale
        assert vbench.moving(dyn, side, frames) == _vbench_check_move(list(dyn), side, frames)
        stat = rng.random(frames + 1) * scale
        assert vbench.static(stat[:-2], stat[-2:], side, frames) == _vbench_check_static(list(stat), side, frames)
    assert not vbench.moving(np.zeros(0), 256, 1)  # no pair: not dynamic, as check_move on an empty list
    for f in (2, 5):
        feats = F.normalize(torch.from_numpy(rng.standard_normal((f, 16))).float(), dim=-1)
        feats[-1] = -feats[0]  # a negative cosine: clamped at 0
        assert vbench.consistency(feats) == pytest.approx(_vbench_consistency(feats), abs=1e-6)
    assert math.isnan(vbench.consistency(feats[:1]))


def test_clip_tower_loads_transformers_weights(tiny_models):
    """The Hub's openai/clip-vit-* are transformers CLIPModel folders: the same tower after `from_transformers`."""
    from transformers import CLIPModel

    folder = tiny_models / "clip"
    state = load_state_dict(str(folder / "model.safetensors"))
    reference = CLIPModel.from_pretrained(str(folder)).eval()
    tower = clip_vision.build(state, str(folder), heads=reference.config.vision_config.num_attention_heads)  # a toy: not width / 64
    pixels = torch.randn(3, 3, tower.resolution, tower.resolution)
    with torch.no_grad():
        expected = reference.visual_projection(reference.vision_model(pixel_values=pixels).pooler_output)
        torch.testing.assert_close(tower(pixels), expected, rtol=1e-4, atol=1e-5)


def test_openai_torchscript_archives_are_read_as_data(tmp_path):
    """OpenAI's ViT-*.pt are TorchScript archives: their tensors are read, their code never runs, and an
    archive whose pickle names any other global is refused in one line."""
    tower = clip_vision.ClipVision(width=64, layers=1, patch=32, grid=7, output_dim=16).eval()

    class Clip(torch.nn.Module):  # OpenAI's archive holds the whole model, the image tower under `visual`
        def __init__(self):
            super().__init__()
            self.visual = tower
            self.logit_scale = torch.nn.Parameter(torch.ones([]))

        def forward(self, x):
            return self.visual(x) * self.logit_scale

    path = tmp_path / "ViT-B-32.pt"
    with pytest.warns(torch.jit.TracerWarning):
        torch.jit.trace(Clip().eval(), torch.randn(1, 3, 224, 224)).half().save(str(path))  # OpenAI's files are fp16
    state = load_state_dict(str(path))
    assert {k for k in state if k.startswith("visual.")} == {f"visual.{k}" for k in tower.state_dict()}
    assert state["visual.proj"].dtype == torch.float16 and torch.equal(state["visual.proj"], tower.proj.half())
    assert clip_vision.build(state, str(path)).proj.dtype == torch.float32

    with zipfile.ZipFile(path) as z:
        files = {n: z.read(n) for n in z.namelist()}
    top = next(n for n in files if n.endswith("/data.pkl")).split("/")[0]
    marker = tmp_path / "ran"
    files[f"{top}/data.pkl"] = pickle.dumps(_Evil(str(marker)), protocol=2)
    bad = tmp_path / "evil.pt"
    with zipfile.ZipFile(bad, "w") as z:
        for n, data in files.items():
            z.writestr(n, data)
    with pytest.raises(CheckpointError, match=r"evil.pt: refused to load: a TorchScript archive .*global posix.system is not allowed"):
        load_state_dict(str(bad))
    assert not marker.exists()


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.path}",)


def test_vbench_layout_errors(tiny_models, tmp_path):
    root = tiny_models / "vbench"
    models = vbench.load_models(str(root), ("subject_consistency",))
    assert models.dino is not None and models.raft is None and models.clip_b32 is None
    with pytest.raises(ConfigError, match=r"--vbench-models .*: no RAFT \(raft-things\) \(looked for raft_model/models/raft-things.pth"):
        vbench.load_models(str(tmp_path), ("dynamic_degree",))
    with pytest.raises(ConfigError, match=r"--vbench-models hub: no DINO ViT-B/16 \(looked for Hub id timm/vit_base_patch16_224.dino"):
        vbench.load_models("hub", ("subject_consistency",))  # the Hub cache only, and nothing cached: never downloaded
    save_state_dict({"weight": torch.zeros(2, 3)}, str(tmp_path / "aesthetic_model" / "emb_reader" / "sa_0_4_vit_l_14_linear.pth"))
    with pytest.raises(ConfigError, match=r"not LAION's linear aesthetic predictor \(expected weight \(1, d\) and bias"):
        vbench.load_models(str(tmp_path), ("aesthetic_quality",))
    save_state_dict(flow.raft_state(flow.SMALL), str(tmp_path / "raft_model" / "models" / "raft-things.pth"))
    with pytest.raises(ConfigError, match="a raft_small network; VBench's raft-things.pth is RAFT-large"):
        vbench.load_models(str(tmp_path), ("dynamic_degree",))


def test_one_frame_and_tiny_videos(tiny_models, one_thread):
    models = vbench.load_models(str(tiny_models / "vbench"), ("subject_consistency", "background_consistency", "aesthetic_quality"))
    frames = np.random.default_rng(0).integers(0, 256, (3, 40, 56, 3), dtype=np.uint8)
    scores = vbench.score_video(models, frames, 8.0)
    assert 0 <= scores["subject_consistency"] <= 1 and 0 <= scores["background_consistency"] <= 1
    assert math.isnan(scores["dynamic_degree"]) and math.isnan(scores["temporal_flickering"])  # not asked for
    assert all(math.isnan(v) for v in vbench.score_video(models, frames[:1], 8.0).values())
