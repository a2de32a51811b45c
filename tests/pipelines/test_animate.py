"""The Ray Data job in-process on the shared local cluster: sweep, resume, determinism, a killed actor."""

import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from animatediff_core.generate import GenerationSettings
from pipelines.animate import AnimateConfig, run_animate
from pipelines.report import read_metadata, write_index, write_metadata
from pipelines.rows import read_checkpoint_set

SMALL = GenerationSettings(num_frames=4, height=32, width=32, steps=1, guidance_scale=2.0)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.parquet"
    pd.DataFrame({
        "prompt": ["a cat", "a dog", "a bird", "", "a fish"],
        "checkpoint": [None, None, "dreamy", None, "missing"],
        "num_frames": [None, None, None, None, None],
    }).to_parquet(path)
    return str(path)


def _cfg(tiny_models, prompts, out, **kw):
    specs = read_checkpoint_set(str(tiny_models / "checkpoints"))
    specs = {k: specs[k] for k in ("dreamy", "toon_lora")}
    base = dict(prompts=[prompts], base=str(tiny_models / "base"), motion_module=str(tiny_models / "motion_adapter"),
                out=str(out), checkpoints=specs, defaults=SMALL, workers=1, cpus_per_worker=0.5, batch_size=2)
    return AnimateConfig(**{**base, **kw})


def _videos(out):
    return sorted(p.relative_to(out) for p in Path(out, "videos").rglob("*.mp4"))


def test_sweep_resume_and_determinism(ray_session, tiny_models, prompts, tmp_path):
    out = tmp_path / "run"
    results = run_animate(_cfg(tiny_models, prompts, out))
    # (cat, dog, empty prompt) x 2 checkpoints + bird on dreamy + fish on an unknown checkpoint = 8 rows
    assert len(results) == 8 and results.id.is_unique
    assert (results.status == "ok").sum() == 5
    errors = results[results.status == "error"].error.tolist()
    assert sum("prompt is empty" in e for e in errors) == 2 and sum("unknown checkpoint 'missing'" in e for e in errors) == 1
    assert len(_videos(out)) == 5
    write_metadata(results, str(out))
    write_index(results, str(out))
    meta = read_metadata(str(out))
    assert len(meta) == 8 and {"video_uri", "sha256", "bytes", "seconds", "status", "error", "motion_module"} <= set(meta.columns)
    page = (out / "index.html").read_text()
    assert page.count("<img") == 5 and "unknown checkpoint" in page

    # Resume: lose two videos (one only half-written: no sidecar), rerun, only those are regenerated.
    ok = results[results.status == "ok"].sort_values("id")
    gone = [Path(u) for u in ok.video_uri.iloc[:2]]
    gone[0].unlink()
    Path(str(gone[1])[:-4] + ".json").unlink()
    again = run_animate(_cfg(tiny_models, prompts, out))
    assert len(again) == 8 and again.id.is_unique
    regenerated = again[(again.status == "ok") & ~again.skipped.astype(bool)]
    assert sorted(regenerated.video_uri) == sorted(str(p) for p in gone)
    assert int(again.skipped.astype(bool).sum()) == 3
    assert len(_videos(out)) == 5

    # Determinism: the same job into another folder gives byte-identical videos.
    other = run_animate(_cfg(tiny_models, prompts, tmp_path / "other"))
    a = results.set_index("id").sha256
    b = other.set_index("id").sha256
    assert a.sort_index().equals(b.sort_index())


def _actor_pids():
    pids = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "MapWorker(MapBatches(AnimateStage))" in cmd:
            pids.append(p.info["pid"])
    return pids


def test_killed_actor_loses_no_rows(ray_session, tiny_models, tmp_path):
    prompts = tmp_path / "many.csv"
    pd.DataFrame({"prompt": [f"prompt number {i}" for i in range(12)], "checkpoint": "dreamy"}).to_csv(prompts, index=False)
    out = tmp_path / "run"
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
    results = run_animate(_cfg(tiny_models, str(prompts), out))
    t.join(timeout=5)
    assert killed, "the actor was never killed; the test did not exercise a failure"
    assert len(results) == 12 and results.id.is_unique
    assert (results.status == "ok").all(), results.error.tolist()
    assert len(_videos(out)) == 12
    assert not [p for p in Path(out).rglob("*") if ".tmp" in p.name]  # no partial files left
