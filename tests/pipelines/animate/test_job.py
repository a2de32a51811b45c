"""The Ray Data job in-process on the shared local cluster: sweep, resume, determinism, a killed
actor, duplicate ids, a table of 200,000 rows that needs almost no generation."""

import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from animatediff_core.configs import build
from pipelines.animate.config import AnimateConfig
from pipelines.animate.job import exit_code, preflight, run_animate
from pipelines.animate.report import list_shards, read_metadata

SMALL = dict(num_frames=4, height=32, width=32, steps=1, guidance_scale=2.0)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.parquet"
    pd.DataFrame({
        "prompt": ["a cat", "a dog", "a bird", "", "a fish"],
        "checkpoint": [None, None, "dreamy", None, "missing"],
        "num_frames": [None, None, None, None, None],
    }).to_parquet(path)
    return str(path)


def _prep(tiny_models, prompts, out, checkpoints=None, **kw):
    table = Path(out).parent / f"{Path(out).name}-set.csv"
    names = checkpoints or ("dreamy", "toon_lora")
    table.write_text("name,uri\n" + "".join(f"{n},{tiny_models}/checkpoints/{n}.safetensors\n" for n in names))
    base = dict(prompts=[prompts], base=str(tiny_models / "base"), motion_module=[str(tiny_models / "motion_adapter")],
                out=str(out), checkpoints=str(table), workers=1, cpus_per_worker=0.5, batch_size=2, **SMALL)
    return preflight(build(AnimateConfig, {**base, **kw}))


def _videos(out):
    return sorted(p.relative_to(out) for p in Path(out, "videos").rglob("*.mp4"))


@pytest.mark.slow
def test_sweep_resume_and_determinism(ray_session, tiny_models, prompts, tmp_path):
    out = tmp_path / "run"
    first = run_animate(_prep(tiny_models, prompts, out))
    results = read_metadata(str(out))
    # (cat, dog, empty prompt) x 2 checkpoints + bird on dreamy + fish on an unknown checkpoint = 8 rows
    assert len(results) == 8 and results.id.is_unique and first.summary.rows == 8
    assert (results.status == "ok").sum() == 5
    errors = results[results.status == "error"].error.tolist()
    assert sum("prompt is empty" in e for e in errors) == 2 and sum("unknown checkpoint 'missing'" in e for e in errors) == 1
    assert len(_videos(out)) == 5
    assert {"video_uri", "sha256", "bytes", "seconds", "status", "error", "motion_module", "prompt_truncated"} <= set(results.columns)
    page = (out / "index.html").read_text()
    assert page.count('alt="preview"') == 5 and "unknown checkpoint" in page
    assert exit_code(first.summary, 1.0) == (0, "") and exit_code(first.summary, 0.1)[0] == 1

    # Resume: lose two videos (one only half-written: no sidecar), rerun, only those are regenerated.
    ok = results[results.status == "ok"].sort_values("id")
    gone = [Path(u) for u in ok.video_uri.iloc[:2]]
    gone[0].unlink()
    Path(str(gone[1])[:-4] + ".json").unlink()
    run_animate(_prep(tiny_models, prompts, out))
    again = read_metadata(str(out))
    assert len(again) == 8 and again.id.is_unique
    regenerated = again[(again.status == "ok") & ~again.skipped]
    assert sorted(regenerated.video_uri) == sorted(str(p) for p in gone)
    assert int(again.skipped.sum()) == 3
    assert len(_videos(out)) == 5
    assert len({Path(s).name.rsplit("-", 1)[0] for s in list_shards_of(out)}) == 1  # earlier run's shards replaced

    # Determinism: the same job into another folder, two actors, gives byte-identical videos.
    run_animate(_prep(tiny_models, prompts, tmp_path / "other", workers=2))
    other = read_metadata(str(tmp_path / "other"))
    a = results.set_index("id").sha256
    b = other.set_index("id").sha256
    assert a.sort_index().equals(b.sort_index())


def list_shards_of(out):
    from pipelines.animate.layout import OutputLayout

    return list_shards(OutputLayout(str(out)))


@pytest.mark.slow
def test_a_small_sweep_reaches_the_actors_one_checkpoint_at_a_time(ray_session, tiny_models, tmp_path):
    """Ray Data reads a small file as blocks of a row; planned block by block, a sweep would reach an actor
    one prompt at a time across every checkpoint (a switch per row, no GPU batch, no CPU streams)."""
    table = tmp_path / "few.csv"
    table.write_text("prompt\n" + "".join(f"prompt {i}\n" for i in range(4)))
    out = tmp_path / "run"
    run_animate(_prep(tiny_models, str(table), out, batch_size=4))
    calls = [pd.read_parquet(s) for s in list_shards_of(out) if "-actor_" in s]
    assert sorted(c.checkpoint.tolist() for c in calls) == [["dreamy"] * 4, ["toon_lora"] * 4]


@pytest.mark.slow
def test_duplicate_ids(ray_session, tiny_models, tmp_path):
    table = tmp_path / "dups.csv"
    table.write_text("id,prompt,checkpoint\nsame,a cat,dreamy\nsame,a dog,dreamy\ntwin,a bird,dreamy\ntwin,a bird,dreamy\n")
    out = tmp_path / "run"
    run_animate(_prep(tiny_models, str(table), out))
    meta = read_metadata(str(out))
    assert len(meta) == 4
    same = meta[meta.id == "same"].set_index("prompt")
    assert (same.status == "error").all()
    assert "another row with different content uses it (prompt 'a dog')" in same.loc["a cat", "error"]
    assert "(prompt 'a cat')" in same.loc["a dog", "error"]
    twin = meta[meta.id == "twin"]
    assert (twin.status == "ok").all() and twin.sha256.nunique() == 1
    assert [p.name for p in Path(out, "videos", "dreamy").glob("*.mp4")] == ["twin.mp4"]


def _actor_pids():
    pids = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "MapWorker(MapBatches(AnimateStage))" in cmd:
            pids.append(p.info["pid"])
    return pids


@pytest.mark.slow
def test_killed_actor_loses_no_rows(ray_session, tiny_models, tmp_path):
    prompts = tmp_path / "many.csv"
    pd.DataFrame({"prompt": [f"prompt number {i}" for i in range(12)], "checkpoint": "dreamy"}).to_csv(prompts, index=False)
    out = tmp_path / "run"
    (out / "videos" / "dreamy").mkdir(parents=True)  # what an earlier run's writer, killed mid-write, left
    (out / "videos" / "dreamy" / ".old.mp4.abcd1234.tmp").write_bytes(b"partial")
    killed = []

    def killer():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            if list(Path(out).rglob("*.mp4")) and _actor_pids():
                pid = _actor_pids()[0]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.2)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    run_animate(_prep(tiny_models, str(prompts), out))
    t.join(timeout=5)
    assert killed, "the actor was never killed; the test did not exercise a failure"
    results = read_metadata(str(out))
    assert len(results) == 12 and results.id.is_unique
    assert (results.status == "ok").all(), results.error.tolist()
    assert len(_videos(out)) == 12
    assert not [p for p in Path(out).rglob("*") if ".tmp" in p.name]  # no partial files left, this run's or before


@pytest.mark.slow
def test_rows_that_need_no_generation_never_reach_the_actors(ray_session, tiny_models, tmp_path):
    n = 200_000
    table = pd.DataFrame({"prompt": [""] * n})
    table.loc[[7, 150_001], "prompt"] = ["a cat", "a dog"]
    path = tmp_path / "big.parquet"
    table.to_parquet(path)
    out = tmp_path / "run"
    result = run_animate(_prep(tiny_models, str(path), out, checkpoints=("dreamy",)))
    assert result.summary.rows == n and result.summary.total("ok") == 2
    assert len(_videos(out)) == 2
    meta = read_metadata(str(out))
    assert len(meta) == n and (meta.status == "ok").sum() == 2
    actor_shards = [s for s in list_shards_of(out) if "-actor_" in s]
    assert sum(len(pd.read_parquet(s)) for s in actor_shards) == 2  # the actors saw the 2 rows and nothing else
    assert os.path.getsize(out / "index.html") < 200_000
    assert "error x199998: prompt is empty" in result.summary.text(1.0)
