"""Image prompts through the whole batch job on the shared local Ray, then scored: a sweep over two checkpoints
with one image, a missing image an error row while the others finish, image alignment only where a row has an
image prompt. Preflight's one-line refusals need no Ray."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from animatediff_core.configs import build
from animatediff_core.errors import AnimateDiffError
from pipelines.animate.config import AnimateConfig
from pipelines.animate.job import preflight, run_animate
from pipelines.animate.report import read_metadata
from pipelines.evaluate.config import EvaluateConfig
from pipelines.evaluate.leaderboard import leaderboard
from pipelines.evaluate.run import evaluate

SMALL = dict(num_frames=4, height=32, width=32, steps=1, guidance_scale=2.0)


def _job(tiny_models, tmp_path, rows, **kw):
    prompts, table = tmp_path / "prompts.csv", tmp_path / "set.csv"
    pd.DataFrame(rows).to_csv(prompts, index=False)
    table.write_text("name,uri\n" + "".join(f"{n},{tiny_models}/checkpoints/{n}.safetensors\n" for n in ("dreamy", "toon_lora")))
    return build(AnimateConfig, prompts=[str(prompts)], base=str(tiny_models / "base"), motion_module=[str(tiny_models / "motion_adapter")],
                 out=str(tmp_path / "run"), checkpoints=str(table), workers=1, cpus_per_worker=0.5, batch_size=2, **SMALL, **kw)


@pytest.mark.slow  # ~25 s: a generation pool and a metrics pool
def test_sweep_with_one_image_a_missing_image_and_image_alignment(ray_session, tiny_models, tmp_path):
    image = tmp_path / "ref.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(image)
    adapter = str(tiny_models / "ip_adapter" / "ip-adapter_sd15.safetensors")
    rows = [{"prompt": "a cat", "ip_adapter_image": str(image)}, {"prompt": "a dog", "ip_adapter_image": str(tmp_path / "gone.png")},
            {"prompt": "a bird", "ip_adapter_image": ""}]
    prep = preflight(_job(tiny_models, tmp_path, rows, ip_adapter=adapter))
    assert prep.image_prompt == (adapter, str(tiny_models / "ip_adapter" / "image_encoder"))
    run_animate(prep)
    meta = read_metadata(str(tmp_path / "run")).set_index(["prompt", "checkpoint"])
    assert len(meta) == 6
    for ckpt in ("dreamy", "toon_lora"):
        assert meta.loc[("a cat", ckpt), "status"] == "ok" and meta.loc[("a bird", ckpt), "status"] == "ok"
        assert meta.loc[("a cat", ckpt), "ip_adapter_image"] == str(image)
        error = meta.loc[("a dog", ckpt), "error"]
        assert meta.loc[("a dog", ckpt), "status"] == "error" and "ip_adapter_image" in error and "not found" in error
    scored = evaluate([str(tmp_path / "run")], build(EvaluateConfig, clip=str(tiny_models / "clip"), out=str(tmp_path / "eval"),
                                                     score_only=["-"], workers=1, cpus_per_worker=0.5))
    ok = scored[scored.status == "ok"].set_index("prompt")
    assert np.isfinite(ok.loc["a cat", "image_alignment"]).all() and ok.loc["a bird", "image_alignment"].isna().all()
    board = leaderboard(scored)
    assert board.image_alignment_n.tolist() == [1, 1] and board.image_alignment_mean.notna().all()


def test_bad_job_wide_flags_are_one_line_at_start(tiny_models, tmp_path):
    rows = [{"prompt": "a cat"}]
    with pytest.raises(AnimateDiffError, match="does not fit this SD-1.x base"):
        preflight(_job(tiny_models, tmp_path, rows, ip_adapter=str(tiny_models / "sdxl" / "ip_adapter" / "ip-adapter_sdxl.safetensors")))
    with pytest.raises(AnimateDiffError, match="no image encoder for it"):
        preflight(_job(tiny_models, tmp_path, rows, ip_adapter=str(tiny_models / "ip_adapter" / "ip-adapter_sd15.safetensors"),
                       image_encoder=str(tiny_models / "sdxl" / "ip_adapter" / "image_encoder")))
    with pytest.raises(AnimateDiffError, match="image_encoder: give --ip-adapter too"):
        _job(tiny_models, tmp_path, rows, image_encoder=str(tiny_models / "ip_adapter" / "image_encoder"))
    with pytest.raises(AnimateDiffError, match="not supported with --fuse-qkv"):
        _job(tiny_models, tmp_path, rows, ip_adapter="x.safetensors", fuse_qkv=True)
    with pytest.raises(AnimateDiffError, match="ip-adapter-image .*not found"):
        preflight(_job(tiny_models, tmp_path, rows, ip_adapter=str(tiny_models / "ip_adapter" / "ip-adapter_sd15.safetensors"),
                       ip_adapter_image=str(tmp_path / "gone.png")))
    assert Path(tmp_path / "prompts.csv").exists()


def test_resume_fingerprint_names_the_adapter_for_image_rows_only():
    """A rerun with another --ip-adapter regenerates the rows with an image prompt and skips the others."""
    import dataclasses

    from animatediff_core.settings.generation import CheckpointSpec, GenerationSettings
    from pipelines.animate.identity import fingerprint, image_prompt_id
    from pipelines.animate.sets import MotionSpec

    text = {"prompt": "a cat", "negative_prompt": "", "seed": 1, "checkpoint": "c", **dataclasses.asdict(GenerationSettings())}
    image = {**text, "ip_adapter_image": "ref.png"}
    motion, spec = MotionSpec("mm", "mm.safetensors", 32), CheckpointSpec("c")
    a, b = image_prompt_id(("a.safetensors", "enc")), image_prompt_id(("b.safetensors", "enc"))
    assert fingerprint(image, motion, spec, a) != fingerprint(image, motion, spec, b)
    assert fingerprint(text, motion, spec, a) == fingerprint(text, motion, spec, b) == fingerprint(text, motion, spec)
