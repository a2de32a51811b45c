"""The evaluation pipeline on the shared local Ray: metrics stage, stills, leaderboard, report.

The input is a batch-job output folder made here: real small mp4s and GIFs written with video_io and a
metadata table in the batch job's layout, with one failed generation and one corrupt video in it.
"""

import dataclasses
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from animatediff_core.configs import build
from animatediff_core.errors import ConfigError
from animatediff_core.io.video_io import write_gif, write_video
from animatediff_core.settings.generation import CheckpointSpec
from pipelines.animate.layout import OutputLayout
from pipelines.animate.report import write_shard
from pipelines.evaluate.config import EvaluateConfig
from pipelines.evaluate.leaderboard import leaderboard, mean_ci
from pipelines.evaluate.modules import describe
from pipelines.evaluate.report import write_report, write_tables
from pipelines.evaluate.run import evaluate

PROMPTS = ["a cat", "a dog on a beach", "a red car", "waves on rocks"]


def _video(seed, f=4, size=32):
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 256, (2, size, size, 3)).astype(float)
    return np.stack([(1 - t) * a + t * b for t in np.linspace(0, 1, f)]).astype(np.uint8)


def _sha256(path):
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def batch_out(tmp_path_factory, tiny_models):
    """Batch-job layout: 4 prompts x (dreamy, toon_lora); toon_lora's last row failed, dreamy's last mp4 is corrupt."""
    out = tmp_path_factory.mktemp("batch")
    rows = []
    for ckpt in ("dreamy", "toon_lora"):
        for k, prompt in enumerate(PROMPTS):
            rid = f"p{k}"
            mp4, gif = out / "videos" / ckpt / f"{rid}.mp4", out / "videos" / ckpt / f"{rid}.gif"
            failed = ckpt == "toon_lora" and k == 3
            if not failed:
                frames = _video(10 * len(ckpt) + k)
                write_video(str(mp4), frames, fps=8)
                write_gif(str(gif), frames, fps=8)
            if ckpt == "dreamy" and k == 3:
                mp4.write_bytes(b"not an mp4 at all")
            rows.append(dict(id=rid, prompt=prompt, negative_prompt="", seed=10 + k, checkpoint=ckpt, num_frames=4,
                             height=32, width=32, steps=1, guidance_scale=2.0, fps=8,
                             status="error" if failed else "ok", error="generation failed: boom" if failed else "",
                             motion_module="motion_module", motion_module_uri=str(tiny_models / "motion_module.safetensors"),
                             checkpoint_uri=str(tiny_models / "checkpoints" / f"{ckpt}.safetensors"),
                             video_uri="" if failed else str(mp4), gif_uri="" if failed else str(gif),
                             seconds=0.1, bytes=0, sha256="" if failed else _sha256(mp4), skipped=False))
    write_shard(pd.DataFrame(rows), OutputLayout(str(out)), "20260101T000000-abcdef")
    return out


def _mtimes(folder):
    return {p: p.stat().st_mtime_ns for p in Path(folder, "videos").rglob("*") if p.is_file()}


def _cfg(tiny_models, out, **kw):
    return build(EvaluateConfig, clip=str(tiny_models / "clip"), out=str(out), score_only=["-"], workers=1, cpus_per_worker=0.5,
                 videos_per_call=3, **kw)


def test_scores_leaderboard_and_report(ray_session, tiny_models, batch_out, tmp_path):
    """Without a base: no stills (they go through Ray in tests/jobs/test_evaluate_job.py; one actor pool less here)."""
    before = _mtimes(batch_out)
    scored = evaluate([str(batch_out)], _cfg(tiny_models, tmp_path))
    assert len(scored) == 8 and _mtimes(batch_out) == before  # nothing regenerated or rewritten
    ok = scored[(scored.status == "ok") & (scored.metrics_error == "")]
    assert len(ok) == 6
    assert ok[["text_alignment", "frame_consistency", "temporal_flicker", "motion_pixel"]].notna().all().all()
    assert ok.domain_similarity.isna().all() and not (tmp_path / "stills").exists()
    corrupt = scored[scored.metrics_error != ""]
    assert len(corrupt) == 1 and "cannot score" in corrupt.metrics_error.iloc[0] and corrupt.text_alignment.isna().all()
    assert scored[scored.status == "error"].text_alignment.isna().all()

    board = leaderboard(scored)
    assert list(board.checkpoint.sort_values()) == ["dreamy", "toon_lora"]
    assert board.videos.tolist() == [4, 4] and board.n.tolist() == [3, 3] and board.errors.tolist() == [1, 1]
    for m in ("text_alignment", "frame_consistency", "temporal_flicker", "motion_pixel"):
        assert (board[f"{m}_ci_low"] <= board[f"{m}_mean"]).all() and (board[f"{m}_mean"] <= board[f"{m}_ci_high"]).all()
        for _, r in board.iterrows():
            assert r[f"{m}_mean"] == pytest.approx(ok[ok.checkpoint == r.checkpoint][m].mean())

    write_tables(scored, board, str(tmp_path))
    report = Path(write_report(scored, board, str(tmp_path)))
    assert len(pd.read_parquet(tmp_path / "metrics.parquet")) == 8 and len(pd.read_csv(tmp_path / "leaderboard.csv")) == 2
    page = report.read_text()
    images = re.findall(r'<img[^>]* src="([^"]+)"', page)
    assert images and all((report.parent / src).is_file() for src in images)
    assert sum(src.startswith("plots/") for src in images) == 5  # one per metric (none for domain similarity here)
    assert page.count('<td class="cell">') == len(PROMPTS) * 2  # prompts x checkpoints
    assert page.count(">generation failed<") == 1 and "table.sortable" in page and "<script>" in page


def test_stills_are_rendered_once(tiny_models, batch_out, tmp_path, one_thread):
    from pipelines.animate.identity import STILL_KEYS, still_key
    from pipelines.evaluate.runs import read_runs
    from pipelines.evaluate.stills import StillStage

    rows = read_runs([str(batch_out)])
    rows = rows[rows.status == "ok"].head(2).copy()
    rows["still_key"] = [still_key(r) for r in rows[list(STILL_KEYS)].to_dict("records")]
    specs = {n: CheckpointSpec(n, u) for n, u in zip(rows.checkpoint, rows.checkpoint_uri)}
    stage = StillStage(str(tiny_models / "base"), rows.motion_module_uri.iloc[0], specs, str(tmp_path))
    done = stage(rows[[*STILL_KEYS, "still_key"]])
    assert (done.still_error == "").all() and all(Path(u).is_file() for u in done.still_uri)
    first = {u: Path(u).stat().st_mtime_ns for u in done.still_uri}
    stage.personalizer.apply = None  # a second pass must not even switch checkpoints
    again = stage(rows[[*STILL_KEYS, "still_key"]])
    assert {u: Path(u).stat().st_mtime_ns for u in again.still_uri} == first


def test_intervals():
    mean, low, high, n = mean_ci(np.array([1.0, 2.0, 3.0, np.nan]))
    assert (mean, n) == (2.0, 3) and low < 2.0 < high and high - 2.0 == pytest.approx(2.0 - low)
    assert np.isnan(mean_ci(np.array([5.0]))[1]) and mean_ci(np.array([]))[3] == 0
    # a bounded metric's interval stays in its range; a 0/1 column gets a Wilson interval, even at 0 or 1
    mean, low, high, _ = mean_ci(np.array([0.99, 1.0, 0.97, 1.0]), bounds=(0.0, 1.0))
    assert low < mean < high == 1.0
    for values in ([1.0] * 5, [0.0] * 5, [1.0, 0.0, 1.0]):
        mean, low, high, _ = mean_ci(np.array(values), binary=True)
        assert 0.0 <= low <= mean <= high <= 1.0 and high - low > 0.1


def test_fvd_and_vbench_in_leaderboard_and_report(tmp_path):
    """FVD per entry from the videos' I3D features against reference statistics, its curve over training
    steps, and a VBench radar chart per entry."""
    from animatediff_core.metrics import fvd
    from pipelines.evaluate.fvd import Reference

    rng = np.random.default_rng(0)
    reference = rng.standard_normal((50, 4))
    rows = [dict(checkpoint="a", motion_module_label=f"run-step{s:06d}", step=float(s), status="ok", error="", metrics_error="",
                 prompt=f"p{k}", category="", seed=1, prompt_truncated=False, video_uri="", gif_uri="",
                 i3d_features=list(rng.standard_normal(4) * (1 + s / 100)), subject_consistency=0.9, background_consistency=0.95,
                 temporal_flickering=0.97 if k else np.nan, dynamic_degree=float(k % 2), aesthetic_quality=0.5, static_filter=float(k > 0))
            for s in (100, 200, 300) for k in range(6)]
    scored = pd.DataFrame(rows)
    board = leaderboard(scored, Reference(*fvd.statistics(reference), 50, "cache"))
    assert (board.fvd_videos == 6).all() and board.fvd.is_monotonic_increasing  # farther from the reference with each step
    first = scored[scored.step == 100]
    expected = fvd.fvd(np.array(first.i3d_features.tolist()), reference)
    assert board.loc[board.step == 100, "fvd"].item() == pytest.approx(expected)
    assert (board.temporal_flickering_n == 5).all() and (board.dynamic_degree_ci_high <= 1).all()
    page = Path(write_report(scored, board, str(tmp_path))).read_text()
    for plot in ("plots/radar_0.png", "plots/radar_2.png", "plots/fvd.png", "plots/fvd_curve.png"):
        assert plot in page and (tmp_path / plot).is_file()


def test_modules_from_a_training_run_are_steps_of_a_learning_curve():
    m = describe("/runs/mm-run/checkpoint-000040/motion_module.safetensors")
    assert (m.label, m.step) == ("mm-run-step000040", 40)
    assert describe("s3://b/mm_sd_v15_v2.ckpt") == describe("s3://b/mm_sd_v15_v2.ckpt") and describe("/x/mm_v2.ckpt").label == "mm_v2"


def test_learning_curve_plots(tmp_path):
    rng = np.random.default_rng(0)
    rows = [dict(checkpoint=c, motion_module_label=f"run-step{s:06d}", step=float(s), status="ok", error="", metrics_error="",
                 prompt=p, category="", seed=1, prompt_truncated=False, video_uri="", gif_uri="",
                 **{m: rng.random() for m in ("text_alignment", "frame_consistency", "frame_consistency_all_pairs",
                                              "temporal_flicker", "motion_pixel", "domain_similarity")})
            for c in ("a", "b") for s in (100, 200, 300) for p in ("x", "y", "z")]
    scored = pd.DataFrame(rows)
    board = leaderboard(scored)
    assert len(board) == 6 and board.step.tolist() != [None] * 6
    report = Path(write_report(scored, board, str(tmp_path)))
    curves = re.findall(r'src="(plots/\w+_curve\.png)"', report.read_text())
    assert len(curves) == 6 and all((tmp_path / c).is_file() for c in curves)


def test_prompt_suite_and_seeds(tmp_path):
    from pipelines.evaluate.prompts import expand_seeds, read_prompt_tables

    suite = read_prompt_tables([os.path.join(os.path.dirname(__file__), "..", "..", "jobs", "data", "eval_prompts.csv")])[0]
    assert len(suite) >= 40 and suite.id.is_unique and suite.seed.notna().all()
    assert set(suite.category) == {"people", "animals", "nature", "vehicles", "camera", "styles"}
    rows = expand_seeds([suite], 2)
    assert len(rows) == 2 * len(suite) and rows.id.is_unique and (rows.negative_prompt != "").all()
    assert rows.seed.tolist()[:2] == [int(suite.seed[0]), int(suite.seed[0]) + 1]  # cells are text, parsed by cells.py
    own = pd.DataFrame({"prompt": ["a cat", "a dog"], "negative_prompt": [None, "blurry"]})
    mine = expand_seeds([own], 1)
    assert "id" not in mine and mine.negative_prompt.tolist() == ["", "blurry"] and mine.seed.nunique() == 2
    assert expand_seeds([own], 1).seed.tolist() == mine.seed.tolist()  # derived from the text: stable


@pytest.mark.slow  # ~16 s: an I3D actor pool, twice
def test_fvd_reference_kinds_and_cache(ray_session, tiny_models, batch_out, tmp_path):
    """--fvd-reference as a batch-job folder, a plain folder of videos or a WebVid table: the same videos;
    their statistics are computed once (one Ray Data pass) and read back from the cache on the next run."""
    from pipelines.evaluate.fvd import reference_statistics, reference_uris

    videos = tmp_path / "videos"
    videos.mkdir()
    for k in range(3):
        write_video(str(videos / f"v{k}.mp4"), _video(k, f=9), fps=8)
    table = tmp_path / "webvid.csv"
    pd.DataFrame({"videoid": ["0", "1", "2"], "contentUrl": [f"videos/v{k}.mp4" for k in range(3)],
                  "name": ["a", "b", "c"]}).to_csv(table, index=False)
    assert reference_uris(str(videos), 10) == [str(videos / f"v{k}.mp4") for k in range(3)]
    assert reference_uris(str(table), 2) == [str(videos / f"v{k}.mp4") for k in range(2)]
    assert len(reference_uris(str(batch_out), 100)) == 7  # the ones that generated (one of them unreadable)
    cfg = _cfg(tiny_models, tmp_path / "out", fvd_reference=str(videos), i3d=str(tiny_models / "i3d_pretrained_400.pt"), fvd_frames=9)
    first = reference_statistics(cfg)
    assert first.videos == 3 and first.mu.shape == (400,) and first.sigma.shape == (400, 400)
    cached = list((tmp_path / "out" / "fvd_reference").glob("*.npz"))
    assert len(cached) == 1 and first.uri == str(cached[0])
    before = cached[0].stat().st_mtime_ns
    again = reference_statistics(cfg)
    assert np.array_equal(again.mu, first.mu) and cached[0].stat().st_mtime_ns == before
    with pytest.raises(ConfigError, match=r"fewer than 2 of its videos have 10 readable frames \(3 of 3 left out\)"):
        reference_statistics(dataclasses.replace(cfg, fvd_frames=10))  # another key: computed, and all too short
    one = tmp_path / "one.csv"
    pd.read_csv(table).head(1).to_csv(one, index=False)
    with pytest.raises(ConfigError, match=r"--fvd-reference .*one.csv: FVD needs at least 2 reference videos, found 1"):
        reference_statistics(dataclasses.replace(cfg, fvd_reference=str(one)))
    with pytest.raises(ConfigError, match=r"--fvd-reference .*nowhere: not found"):
        reference_uris(str(tmp_path / "nowhere"), 10)


def test_a_scored_folder_is_untrusted(batch_out, tmp_path):
    """Metadata from someone else: traversal names, markup in URIs, a video from elsewhere, a swapped video, a
    formula for a name: error rows (never paths), an error instead of a score, escaped HTML, a neutralized CSV."""
    import shutil

    from animatediff_core.errors import AnimateDiffError
    from pipelines.animate.report import read_metadata
    from pipelines.evaluate.runs import read_runs, verified_video

    folder = tmp_path / "theirs"
    shutil.copytree(batch_out, folder, symlinks=True)
    meta = read_metadata(str(folder))
    for s in (folder / "metadata").glob("*.parquet"):
        s.unlink()
    meta["video_uri"] = meta.video_uri.str.replace(str(batch_out), str(folder))
    meta["gif_uri"] = meta.gif_uri.str.replace(str(batch_out), str(folder))
    ok = meta.index[meta.status == "ok"]
    markup = 'memory://x"><img src=x onerror="document.title=1">'
    meta.loc[ok[0], "checkpoint"] = "../../../../tmp/X"
    meta.loc[ok[1], "gif_uri"] = markup
    meta.loc[ok[2], "video_uri"] = str(batch_out / "videos" / "dreamy" / "p0.mp4")  # another folder's video
    shutil.copy(folder / "videos" / "toon_lora" / "p1.mp4", folder / "videos" / "toon_lora" / "p0.mp4")  # swapped
    meta.loc[meta.index[meta.checkpoint == "toon_lora"], "checkpoint"] = '=HYPERLINK("http://x","y")'
    write_shard(meta, OutputLayout(str(folder)), "20260101T000001-abcdef")
    rows = read_runs([str(folder)]).set_index("id", drop=False)
    errors = rows[rows.status == "error"].error.tolist()
    assert any("checkpoint name '../../../../tmp/X' in the metadata is not a safe file name" in e for e in errors)
    assert any("gif_uri 'memory://x\"><img" in e and "lies outside the scored folder" in e for e in errors)
    assert any("video_uri" in e and "lies outside the scored folder" in e for e in errors)
    assert sum("HYPERLINK" in e for e in errors) == 4  # every toon_lora row: a name is checked whatever the status
    assert (rows.loc[rows.status == "error", ["video_uri", "gif_uri"]] == "").all().all()
    swapped = {"video_uri": str(folder / "videos" / "dreamy" / "p3.mp4"), "sha256": _sha256(batch_out / "videos" / "dreamy" / "p0.mp4")}
    with pytest.raises(AnimateDiffError, match="does not match the metadata's"):
        verified_video(swapped)
    scored = rows.assign(**{m: np.nan for m in ("text_alignment", "frame_consistency", "frame_consistency_all_pairs",
                                                "temporal_flicker", "motion_pixel", "motion_flow", "domain_similarity")},
                         metrics_error="", prompt_truncated=False, category="<b>cat</b>")
    scored.loc[scored.status == "ok", "gif_uri"] = 'javascript:alert(1)'
    board = leaderboard(scored.reset_index(drop=True))
    write_tables(scored.reset_index(drop=True), board, str(tmp_path / "eval"))
    page = Path(write_report(scored.reset_index(drop=True), board, str(tmp_path / "eval"))).read_text()
    assert "<img src=x" not in page and "javascript:" not in page and "<b>cat" not in page and page.count("<script>") == 1
    csv = (tmp_path / "eval" / "leaderboard.csv").read_text()
    assert "'=HYPERLINK" in csv and ',=HYPERLINK' not in csv
    from animatediff_core.errors import ConfigError

    os.mkfifo(folder / "metadata" / "zz.parquet")  # a shard that is not a file: one line, never a hang
    with pytest.raises(ConfigError, match="zz.parquet: not a regular file \\(a FIFO\\)"):
        read_runs([str(folder)])
    os.remove(folder / "metadata" / "zz.parquet")
    (folder / "metadata" / "zz.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(ConfigError, match="zz.parquet: not a readable Parquet file"):
        read_runs([str(folder)])


def test_prompt_tables_follow_the_batch_jobs_cell_rules(tmp_path):
    from animatediff_core.errors import ConfigError
    from pipelines.evaluate.prompts import expand_seeds, read_prompt_tables

    table = tmp_path / "p.csv"
    table.write_bytes(b"prompt,seed\na cat,abc\na dog,1.5\na bird,7\na fish," + b"9" * 5000 + b"\n")
    rows = expand_seeds(read_prompt_tables([str(table)]), 2)
    # Seeds the batch job refuses are passed on as written (its planner makes them error rows saying why).
    assert rows.seed.tolist()[:6] == ["abc", "abc", "1.5", "1.5", 7, 8] and rows.seed.iloc[6] == "9" * 5000
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"prompt,seed\na cat,1\na \xed\xa0\x80 dog,2\n")
    with pytest.raises(ConfigError, match="bad.csv row 3: column prompt is not valid UTF-8"):
        read_prompt_tables([str(bad)])
