import pytest
import torch
from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers

from animatediff_core.errors import CheckpointError
from animatediff_core.io.checkpoints import save_state_dict
from animatediff_core.models.inflate import inflate_unet, new_motion_adapter
from animatediff_core.models.motion_config import MotionModuleConfig
from animatediff_core.models.motion_formats import (
    diffusers_to_original,
    load_motion_adapter,
    original_to_diffusers,
    save_motion_adapter,
)
from animatediff_core.tiny import TINY_UNET, tiny_motion_adapter, tiny_unet


def _outputs(adapter):
    torch.manual_seed(0)
    unet, _ = inflate_unet(tiny_unet(), adapter)
    unet.eval()
    torch.manual_seed(1)
    x = torch.randn(1, 4, 8, 8, 8)
    with torch.no_grad():
        return unet(x, torch.tensor([100]), encoder_hidden_states=torch.randn(8, 77, 32)).sample


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_original_layout_keys_and_diffusers_converter_agree():
    adapter = tiny_motion_adapter()
    orig = diffusers_to_original(adapter.state_dict())
    assert "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.to_q.weight" in orig
    assert "mid_block.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1.pos_encoder.pe" in orig
    assert any(".ff_norm." in k for k in orig) and any(".norms.1." in k for k in orig)
    ours, pe_len = original_to_diffusers(orig)
    theirs = convert_animatediff_checkpoint_to_diffusers(orig)
    assert ours.keys() == theirs.keys() and pe_len == 32
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize("name,fmt", [("mm.safetensors", "original"), ("mm.ckpt", "original"), ("adapter_dir", "diffusers")])
def test_save_load_roundtrip_identical_outputs(tmp_path, name, fmt):
    adapter = tiny_motion_adapter()
    uri = str(tmp_path / name)
    save_motion_adapter(adapter, uri, fmt=fmt)
    cfg = MotionModuleConfig.tiny() if name.endswith(".ckpt") else None  # .ckpt carries no metadata
    loaded = load_motion_adapter(uri, cfg)
    assert _same(adapter, loaded)
    assert torch.equal(_outputs(adapter), _outputs(loaded))


def test_v1_layout_pe24_no_mid_block(tmp_path):
    cfg = MotionModuleConfig(max_seq_length=24, use_mid_block=False, num_attention_heads=4, norm_num_groups=2)
    adapter = new_motion_adapter(TINY_UNET, cfg, zero_init=False)
    uri = str(tmp_path / "v1.safetensors")
    save_motion_adapter(adapter, uri, fmt="original")
    loaded = load_motion_adapter(uri)
    assert loaded.config["motion_max_seq_length"] == 24 and loaded.config["use_motion_mid_block"] is False
    assert _same(adapter, loaded)


def test_train_py_ddp_checkpoint_with_module_prefix_and_state_dict_key(tmp_path):
    adapter = tiny_motion_adapter()
    orig = diffusers_to_original(adapter.state_dict())
    unet_dump = {f"module.{k}": v for k, v in orig.items()}
    unet_dump["module.conv_in.weight"] = torch.zeros(32, 4, 3, 3)  # the rest of the UNet is ignored
    uri = tmp_path / "checkpoint-step-100.ckpt"
    torch.save({"state_dict": unet_dump, "global_step": 100}, uri)
    loaded = load_motion_adapter(str(uri), MotionModuleConfig.tiny())
    assert _same(adapter, loaded)


def test_wrong_shape_and_non_motion_files_are_rejected(tmp_path):
    orig = diffusers_to_original(tiny_motion_adapter().state_dict())
    key = next(k for k in orig if k.endswith("to_q.weight"))
    orig[key] = torch.zeros(3, 3)
    save_state_dict(orig, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match="bad.safetensors.*wrong shape"):
        load_motion_adapter(str(tmp_path / "bad.safetensors"), MotionModuleConfig.tiny())
    save_state_dict({"conv.weight": torch.zeros(2)}, str(tmp_path / "notmm.safetensors"))
    with pytest.raises(CheckpointError, match="no motion-module weights"):
        load_motion_adapter(str(tmp_path / "notmm.safetensors"))
    with pytest.raises(CheckpointError, match="not found"):
        load_motion_adapter(str(tmp_path / "missing.safetensors"))


def test_tiny_files_hold_the_same_module(tiny_models):
    a = load_motion_adapter(str(tiny_models / "motion_adapter"))
    b = load_motion_adapter(str(tiny_models / "motion_module.safetensors"))
    assert _same(a, b)
    proj_out = [v for k, v in a.state_dict().items() if "proj_out.weight" in k]
    assert all(torch.count_nonzero(v) > 0 for v in proj_out)  # random, not zero-initialized
