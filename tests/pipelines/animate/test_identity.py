"""What defines a video, read off the settings' declaration: ids, fingerprints, still keys (no Ray, no torch)."""

import dataclasses
from pathlib import Path

from animatediff_core.configs import build
from animatediff_core.settings.generation import FIELDS, STILL_SETTINGS, CheckpointSpec, GenerationSettings
from pipelines.animate import schema
from pipelines.animate.config import AnimateConfig
from pipelines.animate.identity import STILL_KEYS, fingerprint, row_key, still_key, still_settings
from pipelines.animate.sets import MotionSpec

ROOT = Path(__file__).parents[3]


def test_ids_of_earlier_releases_are_kept():
    # Values the release before this restructure gave (pipelines/animate/plan.py row_key at d3242ca).
    assert row_key({"prompt": "a cat", "num_frames": 16}) == "72aca061ced1023fe523f1f3d52f237362f4f586fe92bc62686f598a121aa549"
    row = {"prompt": "a cat", "negative_prompt": "blurry", "seed": 3, "num_frames": 16, "height": 64, "width": 64,
           "steps": 2, "guidance_scale": 7.5, "sampler": "lcm", "context_length": 8}
    assert row_key(row) == "af70e410b5b06cec99d9031aa6e5944ca315562c58b45033b1ef895caddca6fb"


def test_every_setting_is_a_column_a_flag_and_a_docs_settings_row():
    assert schema.SETTINGS == list(FIELDS)
    assert schema.GROUP == ["motion_module", "checkpoint", *FIELDS]
    page = (ROOT / "docs" / "settings.md").read_text()
    assert schema.settings_table() in page, "paste `python -m pipelines.animate.schema` into docs/settings.md"
    from jobs.config import build_parser

    flags = {a.dest for a in build_parser(AnimateConfig, "")._actions}
    assert set(FIELDS) <= flags


def test_stills_are_keyed_by_every_setting_that_changes_a_still():
    """Before this, a still's key left out `sampler`: a 4-step LCM video was compared with a DDIM still."""
    row = {"checkpoint": "toon", "checkpoint_uri": "/m/toon.safetensors", "prompt": "a cat", "negative_prompt": "",
           "seed": 1, "height": 64, "width": 64, "steps": 4, "guidance_scale": 1.5, "sampler": "ddim", "checkpoint_stack": ""}
    assert "sampler" in STILL_KEYS
    assert still_key(row) != still_key({**row, "sampler": "lcm"})
    assert still_settings({**row, "sampler": "lcm"}).sampler == "lcm" and still_settings(row).num_frames == 1
    for name in STILL_SETTINGS:  # every still setting changes the key
        other = {**row, name: "euler_trailing" if name == "sampler" else row[name] + 8}
        assert still_key(other) != still_key(row), name


def test_fingerprint_records_the_numerics_a_module_runs_with(tiny_models, tmp_path):
    """Before this, the fingerprint held the requested --motion-norm (None by default), so a module whose
    recorded numerics changed kept its old videos."""
    from animatediff_core.io.checkpoints import load_state_dict, save_state_dict
    from pipelines.animate.job import preflight

    state = load_state_dict(str(tiny_models / "motion_module.safetensors"))
    row = dict(prompt="a cat", negative_prompt="", seed=1, checkpoint="base", **dataclasses.asdict(GenerationSettings()))
    prints = {}
    for norm in ("official", "diffusers"):
        save_state_dict(state, str(tmp_path / "mm.safetensors"), metadata={"motion_norm": norm})
        table = tmp_path / "p.csv"
        table.write_text("prompt\na cat\n")
        prep = preflight(build(AnimateConfig, prompts=[str(table)], base=str(tiny_models / "base"),
                               motion_module=[str(tmp_path / "mm.safetensors")], out=str(tmp_path / "out")))
        motion = prep.motions["mm"]
        assert motion.norm is None and motion.numerics.startswith(norm + "/")
        prints[norm] = fingerprint(row, motion, CheckpointSpec("base"))
    assert prints["official"] != prints["diffusers"]


def test_fingerprint_knows_what_a_sampler_means():
    row = dict(prompt="a cat", negative_prompt="", seed=1, checkpoint="base", **dataclasses.asdict(GenerationSettings()))
    mm = MotionSpec("mm", "mm.ckpt", numerics="official/v2")
    print_ = fingerprint(row, mm, CheckpointSpec("base"))
    assert print_["sampler_definition"]["scheduler"] == "DDIMScheduler"
    assert fingerprint({**row, "sampler": "lcm"}, mm, CheckpointSpec("base"))["sampler_definition"] != print_["sampler_definition"]
