import os
import pickle

import pytest
import torch

from animatediff_core.errors import AnimateDiffError, CheckpointError
from animatediff_core.io.checkpoints import load_state_dict, save_state_dict


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    for name in ("evil.ckpt", "evil.pt", "evil.bin"):
        path = tmp_path / name
        torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _RunsCode(marker)}, path)
        with pytest.raises(CheckpointError, match=f"{name}.*refused"):
            load_state_dict(str(path))
        assert not marker.exists()
    raw = tmp_path / "raw.ckpt"
    raw.write_bytes(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(CheckpointError, match="raw.ckpt"):
        load_state_dict(str(raw))
    assert not marker.exists()


def test_plain_tensor_pickle_loads(tmp_path):
    torch.save({"state_dict": {"module.a": torch.ones(2)}, "epoch": 3}, tmp_path / "ok.ckpt")
    sd = load_state_dict(str(tmp_path / "ok.ckpt"))
    assert list(sd) == ["a"] and torch.equal(sd["a"], torch.ones(2))


@pytest.mark.parametrize("ext", [".safetensors", ".ckpt"])
def test_missing_truncated_empty_unrecognized(tmp_path, ext):
    good = tmp_path / f"good{ext}"
    save_state_dict({"w": torch.randn(64, 64)}, str(good))
    data = good.read_bytes()
    cases = {
        "missing": (None, "not found"),
        "truncated": (data[: len(data) // 2], "truncated or corrupt"),
        "empty": (b"", "empty"),
    }
    for label, (content, message) in cases.items():
        path = tmp_path / f"{label}{ext}"
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(CheckpointError, match=message) as err:
            load_state_dict(str(path))
        assert str(path) in str(err.value)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello world, not a checkpoint")
    with pytest.raises(AnimateDiffError, match="junk.bin.*unrecognized"):
        load_state_dict(str(junk))
