"""`python -m jobs.evaluate` end to end through the CLI on the tiny models (CLIP included)."""

import hashlib
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow  # evaluation through the CLI

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = ["--num-frames", "4", "--height", "32", "--width", "32", "--steps", "1", "--cpus-per-worker", "0.5"]


def _run(args, timeout=300):
    return subprocess.run([sys.executable, "-m", "jobs.evaluate", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": ROOT}, cwd=ROOT)


@pytest.fixture(scope="module")
def generated(tiny_models, tmp_path_factory):
    """2 checkpoints x 3 prompts x 1 seed, generated through the batch job and scored (with RAFT: motion_flow)."""
    root = tmp_path_factory.mktemp("evaluate")
    ckpts = root / "ckpts"
    ckpts.mkdir()
    for name in ("dreamy", "toon_lora"):
        (ckpts / f"{name}.safetensors").symlink_to(tiny_models / "checkpoints" / f"{name}.safetensors")
    prompts = root / "prompts.csv"
    pd.DataFrame({"id": ["a", "b", "c"], "category": ["animals", "animals", "vehicles"],
                  "prompt": ["a cat", "a dog running", "a red car"], "seed": [1, 2, 3]}).to_csv(prompts, index=False)
    out = root / "out"
    done = _run(["--prompts", str(prompts), "--seeds-per-prompt", "1", "--base", str(tiny_models / "base"),
                 "--motion-module", str(tiny_models / "motion_module.safetensors"), "--checkpoints", str(ckpts),
                 "--clip", str(tiny_models / "clip"), "--raft", str(tiny_models / "raft_small.pth"), "--raft-iters", "4",
                 "--out", str(out), *SMALL])
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout


def test_generate_and_evaluate(generated):
    out, stdout = generated
    assert "report:" in stdout and "text_alignment_mean" in stdout
    scored = pd.read_parquet(out / "metrics.parquet")
    assert len(scored) == 6 and (scored.status == "ok").all() and set(scored.category) == {"animals", "vehicles"}
    assert scored[["text_alignment", "frame_consistency", "temporal_flicker", "motion_pixel", "motion_flow",
                   "domain_similarity"]].notna().all().all()
    assert (scored.motion_flow >= 0).all() and "motion_flow_mean" in stdout
    board = pd.read_csv(out / "leaderboard.csv")
    assert sorted(board.checkpoint) == ["dreamy", "toon_lora"] and board.n.tolist() == [3, 3] and board.errors.tolist() == [0, 0]
    assert {"text_alignment_mean", "frame_consistency_mean", "motion_pixel_mean", "motion_flow_mean", "motion_flow_ci_low",
            "domain_similarity_ci_high"} <= set(board.columns)
    for _, r in board.iterrows():
        assert r.motion_flow_mean == pytest.approx(scored[scored.checkpoint == r.checkpoint].motion_flow.mean())
    assert len(list((out / "generated").rglob("*.mp4"))) == 6 and len(list((out / "stills").rglob("*.png"))) == 6
    assert (board.domain_similarity_ci_low <= board.domain_similarity_mean).all() and (board.domain_similarity_n == 3).all()
    page = (out / "report.html").read_text()
    assert page.count('<td class="cell">') == 3 * 2 and "optical flow (RAFT), pixels" in page
    images = re.findall(r'<img[^>]* src="([^"]+)"', page)
    assert all((out / src).is_file() for src in images) and len(images) == 7 + 6  # a plot per metric, a GIF per video
    assert (out / "plots" / "motion_flow.png").is_file()


def test_score_only_regenerates_nothing(generated, tiny_models, tmp_path):
    out, _ = generated
    files = {p: p.stat().st_mtime_ns for p in (out / "generated").rglob("*") if p.is_file()}
    done = _run(["--score-only", str(out / "generated"), "--clip", str(tiny_models / "clip"), "--out", str(tmp_path / "scores"),
                 "--cpus-per-worker", "0.5"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in (out / "generated").rglob("*") if p.is_file()} == files
    again = pd.read_parquet(tmp_path / "scores" / "metrics.parquet").sort_values(["checkpoint", "id"])
    first = pd.read_parquet(out / "metrics.parquet").sort_values(["checkpoint", "id"])
    assert np.allclose(again.text_alignment, first.text_alignment) and np.allclose(again.frame_consistency, first.frame_consistency)
    assert again.domain_similarity.isna().all()  # no --base: no stills, nothing rendered
    assert again.motion_flow.isna().all() and "motion_flow" not in done.stdout  # no --raft: no optical flow
    assert not (tmp_path / "scores" / "stills").exists() and (tmp_path / "scores" / "report.html").is_file()


@pytest.mark.parametrize("args,message", [
    (["--score-only", "/nonexistent/run"], "/nonexistent/run: not a batch-job output folder"),
    (["--score-only", "GENERATED", "--clip", "/nonexistent/clip"], "--clip /nonexistent/clip: not a transformers CLIPModel folder"),
    (["--base", "/b"], "give --base and --motion-module to generate, or --score-only"),
    (["--score-only", "GENERATED", "--raft", "MODELS/checkpoints/dreamy.safetensors"],
     "dreamy.safetensors: not a torchvision RAFT state dict: expected raft_small or raft_large keys"),
    (["--score-only", "GENERATED", "--vbench-models", "MODELS/checkpoints"], "--vbench-models MODELS/checkpoints: no "),
    (["--score-only", "GENERATED", "--i3d", "MODELS/raft_small.pth"], "FVD needs both --fvd-reference and --i3d, got only --i3d"),
    (["--score-only", "GENERATED", "--i3d", "MODELS/raft_small.pth", "--fvd-reference", "GENERATED"],
     "raft_small.pth: not an I3D state dict"),
])
def test_one_line_errors(generated, tiny_models, tmp_path, args, message):
    args = [str(generated[0] / "generated") if a == "GENERATED" else a.replace("MODELS", str(tiny_models)) for a in args]
    argv = ["--clip", str(tiny_models / "clip"), "--out", str(tmp_path / "o"), *args]
    message = message.replace("MODELS", str(tiny_models))
    done = _run(argv, timeout=120)
    assert done.returncode != 0 and message in done.stderr and "Traceback" not in done.stderr


def _batch_folder(root, tiny_models, frames=9, size=48):
    """A batch-job output folder: 2 checkpoints x 2 prompts of `frames`-frame videos (drifting textures)."""
    from animatediff_core.io.video_io import write_video
    from pipelines.animate.layout import OutputLayout
    from pipelines.animate.report import write_shard

    rows = []
    for c, ckpt in enumerate(("dreamy", "toon_lora")):
        for k, prompt in enumerate(("a cat", "a red car")):
            rng = np.random.default_rng(10 * c + k)
            base = rng.integers(0, 256, (size, size, 3)).astype(np.uint8)
            video = np.stack([np.roll(base, (t * (c + 1), t * k), axis=(0, 1)) for t in range(frames)])
            uri = root / "videos" / ckpt / f"p{k}.mp4"
            write_video(str(uri), video, fps=8)
            rows.append(dict(id=f"p{k}", prompt=prompt, negative_prompt="", seed=k, checkpoint=ckpt, num_frames=frames,
                             height=size, width=size, steps=1, guidance_scale=2.0, fps=8, status="ok", error="",
                             motion_module="motion_module", motion_module_uri=str(tiny_models / "motion_module.safetensors"),
                             checkpoint_uri="", video_uri=str(uri), gif_uri="", seconds=0.1, bytes=0, skipped=False,
                             sha256=hashlib.sha256(uri.read_bytes()).hexdigest()))  # a scored video must match its metadata
    write_shard(pd.DataFrame(rows), OutputLayout(str(root)), "20260101T000000-abcdef")
    return root


def test_vbench_dimensions_and_fvd_through_the_cli(tiny_models, tmp_path):
    """--score-only with VBench's models (the tiny stand-ins in VBench's layout) and FVD against a folder of
    videos (its cache is tested in tests/pipelines/test_evaluate.py)."""
    folder = _batch_folder(tmp_path / "batch", tiny_models)
    reference = tmp_path / "reference"
    reference.mkdir()
    for p in (folder / "videos").rglob("*.mp4"):  # a plain folder of videos: the same four, renamed
        (reference / f"{p.parent.name}-{p.name}").write_bytes(p.read_bytes())
    args = ["--score-only", str(folder), "--clip", str(tiny_models / "clip"), "--vbench-models", str(tiny_models / "vbench"),
            "--fvd-reference", str(reference), "--i3d", str(tiny_models / "i3d_pretrained_400.pt"), "--fvd-frames", "9",
            "--cpus-per-worker", "0.5", "--out", str(tmp_path / "out")]
    done = _run(args, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    scored = pd.read_parquet(tmp_path / "out" / "metrics.parquet")
    assert "i3d_features" not in scored and len(scored) == 4
    for col in ("subject_consistency", "background_consistency", "dynamic_degree", "aesthetic_quality", "static_filter"):
        assert scored[col].notna().all(), col
    assert scored[["subject_consistency", "background_consistency"]].stack().between(0, 1).all()
    assert set(scored.dynamic_degree) <= {0.0, 1.0} and set(scored.static_filter) <= {0.0, 1.0}
    assert (scored.temporal_flickering.notna() == (scored.static_filter == 1)).all()  # scored only where static
    board = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    assert (board.fvd >= 0).all() and (board.fvd_videos == 2).all()
    for m in ("subject_consistency", "dynamic_degree", "static_filter"):
        assert (board[f"{m}_ci_low"] >= 0).all() and (board[f"{m}_ci_high"] <= 1).all()
    assert len(list((tmp_path / "out" / "fvd_reference").glob("*.npz"))) == 1
    page = (tmp_path / "out" / "report.html").read_text()
    assert "plots/radar_0.png" in page and "plots/fvd.png" in page and "FVD (lower is closer)" in page
    assert "fvd" in done.stdout and "subject_consistency_mean" in done.stdout


def _tree(root):
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_score_only_on_a_tampered_folder(generated, tiny_models, tmp_path):
    """Someone else's folder: traversal names, markup in URIs, a swapped video, a formula for a name. Nothing is
    written outside --out, no markup runs in report.html (checked in headless Chromium where installed), the
    swapped video is an error, leaderboard.csv holds no formula."""
    import shutil

    from pipelines.animate.layout import OutputLayout
    from pipelines.animate.report import read_metadata, write_shard

    theirs = tmp_path / "theirs"
    shutil.copytree(generated[0] / "generated", theirs)
    meta = read_metadata(str(theirs))
    for s in (theirs / "metadata").glob("*.parquet"):
        s.unlink()
    for col in ("video_uri", "gif_uri"):
        meta[col] = meta[col].str.replace(str(generated[0] / "generated"), str(theirs))
    markup = 'memory://x"><img src=x onerror="document.title=\'pwned\'">'
    meta.loc[0, "checkpoint"] = f"../../../../{tmp_path}/escaped"
    meta.loc[1, "gif_uri"] = markup
    meta.loc[2, "video_uri"] = markup
    swapped = meta.loc[3, "video_uri"]
    shutil.copy(meta.loc[4, "video_uri"], swapped)
    meta.loc[5, "checkpoint"] = '=HYPERLINK("http://x","y")'
    write_shard(meta, OutputLayout(str(theirs)), "20260101T000001-abcdef")
    before, outside = _tree(theirs), {p for p in tmp_path.rglob("*")}
    out = tmp_path / "eval"
    done = _run(["--score-only", str(theirs), "--base", str(tiny_models / "base"), "--clip", str(tiny_models / "clip"),
                 "--out", str(out), "--cpus-per-worker", "0.5"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert _tree(theirs) == before and {p for p in tmp_path.rglob("*") if out not in (p, *p.parents)} == outside
    scored = pd.read_parquet(out / "metrics.parquet").set_index(["checkpoint", "id"])
    row = [scored.loc[k] for k in zip(meta.checkpoint, meta.id)]
    assert "not a safe file name" in row[0].error and "not a safe file name" in row[5].error
    assert "gif_uri 'memory://x\"><img" in row[1].error and "lies outside the scored folder" in row[2].error
    assert "does not match the metadata's" in row[3].metrics_error and pd.isna(row[3].text_alignment)
    assert row[4].metrics_error == "" and not pd.isna(row[4].text_alignment)
    assert "'=HYPERLINK" in (out / "leaderboard.csv").read_text() and ",=HYPERLINK" not in (out / "leaderboard.csv").read_text()
    page = (out / "report.html").read_text()
    assert "<img src=x" not in page and page.count("<script>") == 1
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium:  # the page as a browser runs it: the title must be ours
        dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=3000",
                              "--dump-dom", (out / "report.html").as_uri()], capture_output=True, text=True, timeout=120).stdout
        assert "<title>animatediff-ray evaluation</title>" in dom and '<img src="x"' not in dom  # no injected element ran
