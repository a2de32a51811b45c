import hashlib
import subprocess
import sys

import pytest

from animatediff_core.metrics.flow import SMALL, load_raft
from animatediff_core.tiny import write_tiny_models


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_tiny_models_are_deterministic_and_complete(tmp_path, tiny_models):
    again = write_tiny_models(tmp_path / "again", seed=0)
    assert _digest(again) == _digest(tiny_models)
    for rel in ("base/unet/config.json", "base/vae/config.json", "base/text_encoder/config.json",
                "base/tokenizer/vocab.json", "base/tokenizer/merges.txt", "base/scheduler/scheduler_config.json",
                "motion_adapter/config.json", "motion_module.safetensors",
                "checkpoints/dreamy.safetensors", "checkpoints/toon_lora.safetensors",
                "clip/config.json", "clip/preprocessor_config.json", "clip/vocab.json", "clip/merges.txt", "raft_small.pth"):
        assert (tiny_models / rel).is_file(), rel
    assert load_raft(str(tiny_models / "raft_small.pth")).net.spec == SMALL  # torchvision's raft_small keys
    other = write_tiny_models(tmp_path / "other", seed=1)
    assert (other / "motion_module.safetensors").read_bytes() != (tiny_models / "motion_module.safetensors").read_bytes()


def test_tokenizer_is_real_clip_bpe(tiny_models):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(tiny_models / "base" / "tokenizer"))
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok.model_max_length == 77


@pytest.mark.slow
def test_cli_writes_models(tmp_path):
    out = subprocess.run([sys.executable, "-m", "jobs.tiny_models", "--out", str(tmp_path / "m")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "tiny models written" in out.stdout
    assert (tmp_path / "m" / "motion_module.safetensors").is_file()
