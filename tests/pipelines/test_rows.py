"""Sweep expansion, ids, seeds and bad rows: pure pandas, no Ray."""

import pandas as pd
import pytest

from animatediff_core.errors import ConfigError
from animatediff_core.generate import GenerationSettings
from pipelines.rows import expand_rows, read_checkpoint_set

CKPTS = ["dreamy", "toon"]
DEFAULTS = GenerationSettings.tiny()


def _expand(rows):
    return expand_rows(pd.DataFrame(rows), CKPTS, DEFAULTS)


def test_empty_checkpoint_sweeps_every_checkpoint_with_shared_seed():
    out = _expand([{"prompt": "a cat", "checkpoint": None}, {"prompt": "a dog", "checkpoint": "toon"}])
    assert list(zip(out.prompt, out.checkpoint)) == [("a cat", "dreamy"), ("a cat", "toon"), ("a dog", "toon")]
    cat = out[out.prompt == "a cat"]
    assert cat.seed.nunique() == 1 and cat.id.nunique() == 2  # same noise across the sweep, distinct videos
    assert (out.status == "pending").all()


def test_ids_and_seeds_are_deterministic_and_given_values_win():
    a = _expand([{"prompt": "a cat"}])
    b = _expand([{"prompt": "a cat"}])
    assert a.id.tolist() == b.id.tolist() and a.seed.tolist() == b.seed.tolist()
    c = _expand([{"prompt": "a cat", "negative_prompt": "blurry"}])
    assert set(c.id) .isdisjoint(a.id)
    given = _expand([{"prompt": "a cat", "id": "cat-1", "seed": "42", "checkpoint": "dreamy"}])
    assert given.id.tolist() == ["cat-1"] and given.seed.tolist() == [42]


def test_per_row_overrides_and_defaults():
    out = _expand([{"prompt": "x", "checkpoint": "dreamy", "num_frames": "8", "steps": 3.0, "guidance_scale": "5.5"},
                   {"prompt": "y", "checkpoint": "dreamy"}])
    assert out.iloc[0][["num_frames", "steps", "guidance_scale", "height"]].tolist() == [8, 3, 5.5, DEFAULTS.height]
    assert out.iloc[1][["num_frames", "steps", "guidance_scale"]].tolist() == [DEFAULTS.num_frames, DEFAULTS.steps, DEFAULTS.guidance_scale]


@pytest.mark.parametrize("row,message", [
    ({"prompt": "  "}, "prompt is empty"),
    ({"prompt": None}, "prompt is empty"),
    ({"prompt": "x", "num_frames": "-4"}, "num_frames must be a positive integer"),
    ({"prompt": "x", "steps": "2.5"}, "steps must be an integer"),
    ({"prompt": "x", "height": "abc"}, "height must be an integer"),
    ({"prompt": "x", "width": "100000"}, "larger than"),
    ({"prompt": "x", "guidance_scale": "lots"}, "guidance_scale must be a number"),
    ({"prompt": "x", "seed": "-3"}, "seed must be an integer in"),
    ({"prompt": "x", "checkpoint": "nope"}, "unknown checkpoint 'nope'"),
])
def test_bad_rows_become_error_rows(row, message):
    out = _expand([row, {"prompt": "fine", "checkpoint": "dreamy"}])
    bad, good = out.iloc[0], out.iloc[-1]
    assert bad.status == "error" and message in bad.error
    assert good.status == "pending" and good.error == ""


def test_checkpoint_set_from_folder_and_table(tiny_models, tmp_path):
    folder = read_checkpoint_set(str(tiny_models / "checkpoints"))
    assert sorted(folder) == ["dreamy", "film_peft_lora", "toon_lora"]
    assert folder["dreamy"].uri.endswith("dreamy.safetensors")
    table = tmp_path / "set.csv"
    table.write_text(f"name,uri,kind,scale\nsoft,{tiny_models}/checkpoints/toon_lora.safetensors,lora,0.5\n"
                     f"db,{tiny_models}/checkpoints/dreamy.safetensors,,\n")
    specs = read_checkpoint_set(str(table))
    assert specs["soft"].scale == 0.5 and specs["soft"].kind == "lora" and specs["db"].kind is None and specs["db"].scale == 1.0
    assert list(read_checkpoint_set(None)) == ["base"]
    bad = tmp_path / "bad.csv"
    bad.write_text("name,path\na,b\n")
    with pytest.raises(ConfigError, match="needs columns name, uri"):
        read_checkpoint_set(str(bad))
    with pytest.raises(ConfigError, match="not found"):
        read_checkpoint_set(str(tmp_path / "missing"))
