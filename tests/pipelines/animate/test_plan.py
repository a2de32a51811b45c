"""Sweep expansion, ids, seeds and bad rows: pure pandas, no Ray."""

import pandas as pd
import pytest

from animatediff_core.errors import ConfigError
from animatediff_core.settings.generation import GenerationSettings
from pipelines.animate import schema
from pipelines.animate.plan import Plan, expand_rows, normalize
from pipelines.animate.sets import MotionSpec, read_checkpoint_set, read_motion_set

CKPTS = ("dreamy", "toon")
DEFAULTS = GenerationSettings(num_frames=16, height=64, width=64, steps=2, guidance_scale=7.5)
PLAN = Plan(CKPTS, {"mm": 32}, DEFAULTS)


def _expand(rows, plan=PLAN):
    return expand_rows(normalize(pd.DataFrame(rows)), plan)


def test_empty_checkpoint_sweeps_every_checkpoint_with_shared_seed():
    out = _expand([{"prompt": "a cat", "checkpoint": None}, {"prompt": "a dog", "checkpoint": "toon"}])
    assert list(zip(out.prompt, out.checkpoint)) == [("a cat", "dreamy"), ("a cat", "toon"), ("a dog", "toon")]
    cat = out[out.prompt == "a cat"]
    assert cat.seed.nunique() == 1 and cat.id.nunique() == 2  # same noise across the sweep, distinct videos
    assert (out.status == "pending").all()


def test_seeds_take_the_whole_torch_range_and_minus_one_picks_one_from_the_row():
    """The official configs use seeds up to 2**64 - 1 and -1 ("any seed")."""
    out = _expand([{"prompt": "a", "seed": str(2**64 - 1), "checkpoint": "dreamy"}, {"prompt": "b", "seed": "-1", "checkpoint": "dreamy"},
                   {"prompt": "b", "seed": "-1", "checkpoint": "dreamy", "id": "again"}, {"prompt": "c", "seed": str(2**64), "checkpoint": "dreamy"}])
    top, picked, again, over = (out[out.prompt == p] for p in ("a", "b", "b", "c"))
    assert top.seed.tolist() == [2**64 - 1] and top.status.tolist() == ["pending"]
    assert picked.status.eq("pending").all() and picked.seed.nunique() == 1  # -1: the same seed for the same row, every run
    assert 0 <= int(picked.seed.iloc[0]) < 2**64 and int(picked.seed.iloc[0]) != 2**64 - 1
    assert over.status.tolist() == ["error"] and "[0, 2**64) or -1" in over.error.iloc[0]


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
    ({"prompt": "x", "num_frames": "-4"}, "num_frames must be an integer from 1 to 1024, got -4"),
    ({"prompt": "x", "steps": "2.5"}, "steps must be an integer"),
    ({"prompt": "x", "height": "abc"}, "height must be an integer"),
    ({"prompt": "x", "width": "100000"}, "width must be an integer from 1 to 2048"),
    ({"prompt": "x", "guidance_scale": "lots"}, "guidance_scale must be a number"),
    ({"prompt": "x", "seed": "-3"}, "seed must be an integer in"),
    ({"prompt": "x", "checkpoint": "nope"}, "unknown checkpoint 'nope'"),
    ({"prompt": "x", "motion_module": "nope"}, "unknown motion module 'nope'"),
    ({"prompt": "x", "guidance_scale": "nan"}, "guidance_scale must be a finite number"),
    ({"prompt": "x", "guidance_scale": float("inf")}, "guidance_scale must be a finite number"),
    ({"prompt": "x", "seed": str(2**70)}, "seed must be an integer in [0, 2**64)"),
    ({"prompt": "x", "num_frames": "1000000000000"}, "num_frames must be an integer from 1 to 1024, got 1000000000000"),
    ({"prompt": "x", "context_length": "48"}, "exceeds the motion module's length (32 frames); use at most 32"),
    ({"prompt": "x", "context_stride": "0"}, "context_stride must be an integer >= 1, got 0"),
    ({"prompt": "x", "context_weighting": "cosine"}, "context_weighting must be one of pyramid, flat"),
    ({"prompt": "x", "prompt_schedule": '{"0": "a", "16": "b"}'}, "key 16 is past the last frame (15)"),
    ({"prompt": "x", "prompt_schedule": "{0: a}"}, "prompt_schedule is not valid JSON"),
    ({"prompt": "x", "free_init_iterations": "20"}, "free_init_iterations must be an integer from 0 to 8"),
    ({"prompt": "x", "motion_lora_scale": "inf"}, "motion_lora_scale must be a finite number"),
    ({"prompt": "x", "motion_lora_scale": "50"}, "motion_lora_scale must be a number from -10 to 10"),
    ({"prompt": "x", "id": "../../escape"}, "is not a safe file name"),
    ({"prompt": "x", "id": "/abs/path"}, "is not a safe file name"),
    ({"prompt": "x", "id": "a" * 300}, "is not a safe file name"),
    ({"prompt": "x", "id": ".."}, "is not a safe file name"),
    ({"prompt": "x", "sampler": "dpm"}, "sampler must be one of ddim, ddim_linspace, euler_trailing, lcm, sdxl_beta, dpmpp_2m_karras, euler_ancestral, got 'dpm'"),
])
def test_bad_rows_become_error_rows(row, message):
    out = _expand([row, {"prompt": "fine", "checkpoint": "dreamy"}])
    bad, good = out[out.prompt != "fine"].iloc[0], out[out.prompt == "fine"].iloc[0]
    assert bad.status == "error" and message in bad.error
    assert good.status == "pending" and good.error == ""


def test_checkpoint_set_from_folder_and_table(tiny_models, tmp_path):
    folder = read_checkpoint_set(str(tiny_models / "checkpoints"))
    assert sorted(folder) == ["dreamy", "film_peft_lora", "toon_lora"]
    assert read_checkpoint_set(str(tiny_models / "checkpoints"))["toon_lora"].kind is None
    assert folder["dreamy"].uri.endswith("dreamy.safetensors")
    table = tmp_path / "set.csv"
    table.write_text(f"name,uri,kind,scale\nsoft,{tiny_models}/checkpoints/toon_lora.safetensors,lora,0.5\n"
                     f"db,{tiny_models}/checkpoints/dreamy.safetensors,,\n")
    specs = read_checkpoint_set(str(table))
    assert specs["soft"].scale == 0.5 and specs["soft"].kind == "lora" and specs["db"].kind is None and specs["db"].scale == 1.0
    assert list(read_checkpoint_set(None)) == ["base"]
    bad = tmp_path / "bad.csv"
    bad.write_text("name,path\na,b\n")
    with pytest.raises(ConfigError, match="needs columns name and uri"):
        read_checkpoint_set(str(bad))
    with pytest.raises(ConfigError, match="not found"):
        read_checkpoint_set(str(tmp_path / "missing"))


def test_checkpoint_table_rows_are_stacks(tmp_path):
    from animatediff_core.settings.generation import LoraSpec

    table = tmp_path / "stacks.csv"
    pd.DataFrame({"name": ["toon_on_db", "loras_on_base", "db_base_vae"],
                  "uri": ["/m/db.safetensors", "", "/m/db.safetensors"],
                  "loras": ['[{"uri": "/m/a.safetensors", "scale": 0.6, "alpha": "ignore"}, "/m/b.safetensors"]', '["/m/a.safetensors"]', ""],
                  "adapter": ["/m/v3_adapter.ckpt", "", ""], "adapter_scale": ["0.5", "", ""], "vae": ["", "", "base"]}).to_csv(table, index=False)
    specs = read_checkpoint_set(str(table))
    s = specs["toon_on_db"]
    assert s.uri == "/m/db.safetensors" and s.loras == (LoraSpec("/m/a.safetensors", 0.6, "ignore"), LoraSpec("/m/b.safetensors"))
    assert (s.adapter, s.adapter_scale, s.vae) == ("/m/v3_adapter.ckpt", 0.5, "own")
    assert specs["loras_on_base"].uri is None and specs["db_base_vae"].vae == "base"
    for cell, message in (("[{", "loras is not valid JSON"), ('[{"uri": "a", "weight": 1}]', "unknown key"),
                          ('[{"uri": "a", "alpha": "half"}]', "alpha must be one of file, ignore")):
        pd.DataFrame({"name": ["x"], "uri": ["/m/db.safetensors"], "loras": [cell]}).to_csv(table, index=False)
        with pytest.raises(ConfigError, match=f"checkpoint 'x': .*{message}"):
            read_checkpoint_set(str(table))


@pytest.mark.parametrize("name", ["../evil", "x/y", "", "a b", ".."])
def test_unsafe_checkpoint_names_fail_the_job_with_the_rule(tmp_path, name):
    table = tmp_path / "set.csv"
    table.write_text(f"name,uri\n\"{name}\",/models/x.safetensors\n")
    with pytest.raises(ConfigError, match="not a safe file name: use 1 to 128 characters"):
        read_checkpoint_set(str(table))


def test_gzipped_csv_and_folders_of_tables_read_by_one_rule(tmp_path):
    import gzip

    from pipelines import tables

    (tmp_path / "t").mkdir()
    with gzip.open(tmp_path / "t" / "a.csv.gz", "wt") as f:
        f.write("prompt,seed\na cat,007\n")
    pd.DataFrame({"prompt": ["a dog"]}).to_parquet(tmp_path / "t" / "b.parquet")
    files = tables.list_tables(str(tmp_path / "t"), "--prompts")
    assert [f.rsplit("/", 1)[-1] for f in files] == ["a.csv.gz", "b.parquet"]
    assert tables.header(files[0], "--prompts") == (["prompt", "seed"], True)
    both = tables.read_pandas(str(tmp_path / "t"), strings=("seed",))
    assert both.prompt.tolist() == ["a cat", "a dog"] and both.seed.tolist()[0] == "007"


def test_motion_module_set_from_files_folders_and_a_training_run(tiny_models, tmp_path):
    one = read_motion_set([str(tiny_models / "motion_module.safetensors"), str(tiny_models / "motion_adapter")])
    assert list(one) == ["motion_module", "motion_adapter"]
    run = tmp_path / "mm-run"
    for step in ("000004", "000002", "000006"):
        (run / f"checkpoint-{step}").mkdir(parents=True)
        (run / f"checkpoint-{step}" / "motion_module.safetensors").write_bytes(b"x")
        if step != "000006":  # incomplete: no training_state.pt yet
            (run / f"checkpoint-{step}" / "training_state.pt").write_bytes(b"x")
    curve = read_motion_set([str(run)])
    assert list(curve) == ["mm-run-step000002", "mm-run-step000004"]
    folder = read_motion_set([str(tiny_models)])  # a folder holding a module file and a MotionAdapter folder
    assert {"motion_module", "motion_adapter"} <= set(folder)
    with pytest.raises(ConfigError, match="two modules are named"):
        read_motion_set([str(tiny_models / "motion_module.safetensors")] * 2)


def test_sweep_over_motion_modules_and_checkpoints():
    plan = Plan(CKPTS, {"v2": 32, "v1": 24}, DEFAULTS)
    out = _expand([{"prompt": "a cat"}, {"prompt": "a dog", "motion_module": "v1", "checkpoint": "toon"},
                   {"prompt": "long", "num_frames": "28", "context_length": "28", "checkpoint": "toon"}], plan)
    assert len(out) == 4 + 1 + 2
    long = out[out.prompt == "long"].set_index("motion_module")
    assert long.loc["v2", "status"] == "pending" and long.loc["v1", "status"] == "error"
    assert "motion module's length (24 frames)" in long.loc["v1", "error"]
    cat = out[out.prompt == "a cat"]
    assert cat.seed.nunique() == 1 and cat.groupby("motion_module").id.nunique().tolist() == [2, 2]


def test_expanded_rows_carry_the_declared_schema():
    out = _expand([{"prompt": "a", "seed": 2**70}, {"prompt": "b", "id": object()}, {"prompt": ["a", "list"]}])
    assert list(out.columns) == schema.NAMES
    assert str(out.seed.dtype) == "uint64" and str(out.guidance_scale.dtype) == "float64"


def test_new_settings_keep_old_ids_and_key_rows_that_use_them():
    from animatediff_core.settings.generation import CheckpointSpec
    from pipelines.animate.identity import fingerprint, row_key

    old = {"prompt": "a cat", "num_frames": 16}
    # The id of a row without the new columns is the one earlier releases gave it.
    assert row_key(old) == row_key({**old, "context_length": None, "prompt_schedule": "", "free_init_iterations": 0})
    for k, v in (("context_length", 8), ("context_stride", 2), ("context_weighting", "flat"),
                 ("prompt_schedule", '{"8": "a dog"}'), ("free_init_iterations", 3), ("motion_lora", "zoom.ckpt"),
                 ("motion_lora_scale", 0.5)):
        assert row_key({**old, k: v}) != row_key(old), k
    out = _expand([{"prompt": "a cat", "num_frames": "64", "context_stride": "8"}, {"prompt": "a cat"}])
    assert out.status.tolist() == ["pending"] * 4  # 64 frames from a 32-frame module: windows, not an error
    long, plain = (out[out.num_frames == n].iloc[0].to_dict() for n in (64, 16))
    spec = CheckpointSpec(long["checkpoint"])
    mm = MotionSpec("mm", "mm")
    assert "context_stride" in fingerprint(long, mm, spec) and "context_stride" not in fingerprint(plain, mm, spec)


def test_docs_list_the_metadata_columns_the_schema_declares():
    from pathlib import Path

    page = (Path(__file__).parents[3] / "docs" / "batch-animation.md").read_text()
    assert ", ".join(schema.NAMES) in page  # docs/batch-animation.md's output table names every column, in order


def test_a_sweep_pairs_each_checkpoint_with_modules_of_its_family():
    plan = Plan(("sd", "xl"), {"mm": 32, "mm_xl": 32}, DEFAULTS, {"sd": "sd1", "mm": "sd1", "xl": "sdxl", "mm_xl": "sdxl"})
    out = expand_rows(normalize(pd.DataFrame({"prompt": ["a cat", "a dog"], "checkpoint": [None, "xl"],
                                              "motion_module": [None, "mm"], "prompt_schedule": [None, None]})), plan)
    pairs = set(zip(out.motion_module, out.checkpoint, out.status))
    assert {("mm", "sd", "pending"), ("mm_xl", "xl", "pending")} <= pairs and out.attrs["left_out"] == 2  # a cat: 2 of 4 kept
    bad = out[out.prompt == "a dog"].iloc[0]  # named explicitly: an error row, not left out
    assert bad.status == "error" and "motion module 'mm' is for SD-1.x bases and checkpoint 'xl' runs on an SDXL base" in bad.error
    sd_only = expand_rows(normalize(pd.DataFrame({"prompt": ["a cat"], "prompt_schedule": ['{"0": "a cat", "8": "a dog"}']})), plan)
    xl_row = sd_only[sd_only.checkpoint == "xl"].iloc[0]
    assert xl_row.status == "error" and "prompt_schedule is not available for SDXL checkpoints" in xl_row.error
    assert sd_only[sd_only.checkpoint == "sd"].status.tolist() == ["pending"]
