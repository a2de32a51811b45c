"""Training data as datasets publish it: layouts, spans, --where, WebDataset shards, skips by name.

Tables are built in each published layout (WebVid, Panda-70M, OpenVid-1M, InternVid, HD-VILA) around a
counter video whose frame i is gray level 5 + 4 i, so a decoded clip tells which source frames it holds.
"""

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import webdataset as wds
from helpers_runs import batch_output
from helpers_video import real_video

from animatediff_core.errors import ConfigError
from animatediff_core.io import video_io
from animatediff_core.io.video_io import encode_mp4
from animatediff_core.training.clips import ClipConfig, Span, sample_clip
from pipelines import tables
from pipelines.train import decode
from pipelines.train.config import DataOptions
from pipelines.train.decode import ClipDecoder
from pipelines.train.sources import find_source, prepare

FPS, FRAMES = 10, 60  # the counter video: 6 s
CLIP = ClipConfig(num_frames=4, stride=2, size=32, num_threads=1)


def counter_video(frames: int = FRAMES) -> bytes:
    levels = 5 + 4 * np.arange(frames)
    return encode_mp4(np.broadcast_to(levels[:, None, None, None], (frames, 48, 64, 3)).astype(np.uint8), fps=FPS)


def frame_numbers(clip: np.ndarray) -> list[int]:
    """The source frame each decoded frame shows (from its gray level)."""
    return [int(round((f.mean() - 5) / 4)) for f in clip]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    (root / "abc.mp4").write_bytes(counter_video())
    (root / "def.mp4").write_bytes(counter_video())
    return root


def _rows(source, frame=None):
    frame = frame if frame is not None else tables.read_pandas(source.tables[0], data=True)
    return prepare(frame, source)


def test_published_layouts_are_detected_and_give_one_clip_row_a_span(videos):
    ts = "[['0:00:00.500', '0:00:02.000'], ['0:00:03.000', '0:00:05.500']]"
    layouts = {
        "panda.csv": ("panda70m", pd.DataFrame({"videoID": ["abc"], "url": ["abc.mp4"], "timestamp": [ts],
                                                "caption": ["['a first span', \"a second one's\"]"],
                                                "matching_score": ["[0.5, 0.4]"]})),
        "openvid.csv": ("openvid", pd.DataFrame({"video": ["abc.mp4"], "caption": ["a clip"], "aesthetic score": [5.1],
                                                 "motion score": [2.0], "fps": [10.0], "seconds": [6.0]})),
        "internvid.jsonl": ("internvid", pd.DataFrame({"YoutubeID": ["abc"], "Start_timestamp": ["00:00:01.000"],
                                                       "End_timestamp": ["00:00:04.000"], "Caption": ["a span"],
                                                       "Aesthetic_Score": [4.5], "UMT_Score": [0.4]})),
        "hdvila.jsonl": ("hdvila", pd.DataFrame({"video_id": ["abc"], "url": ["abc.mp4"], "clip": [[
            {"clip_id": "abc.0.mp4", "span": ["00:00:00.000", "00:00:02.000"], "caption": "one"},
            {"clip_id": "abc.1.mp4", "span": ["00:00:02.000", "00:00:04.000"], "caption": "two"}]]})),
        "webvid.parquet": ("webvid", pd.DataFrame({"videoid": ["007"], "contentUrl": ["abc.mp4"], "name": ["w"]})),
        "spans.tsv": ("spans", pd.DataFrame({"file": ["abc.mp4"], "caption": ["t"], "start": [1.5], "end": ["0:04"]})),
    }
    expected_spans = {"panda70m": [(0.5, 2.0), (3.0, 5.5)], "openvid": [(0.0, None)], "internvid": [(1.0, 4.0)],
                      "hdvila": [(0.0, 2.0), (2.0, 4.0)], "webvid": [(0.0, None)], "spans": [(1.5, 4.0)]}
    for name, (fmt, frame) in layouts.items():
        path = videos / name
        if name.endswith(".jsonl"):
            frame.to_json(path, orient="records", lines=True)
        elif name.endswith(".parquet"):
            frame.to_parquet(path)
        else:
            frame.to_csv(path, index=False, sep="\t" if name.endswith(".tsv") else ",")
        source = find_source(str(path))
        assert source.fmt.name == fmt, name
        rows = _rows(source)
        spans = [(s, None if np.isnan(e) else e) for s, e in zip(rows["start"], rows["end"])]
        assert spans == expected_spans[fmt], name
        assert set(rows["video_uri"]) == {str(videos / "abc.mp4")}, name  # relative paths and bare ids alike
        assert (rows["problem"] == "").all() and (rows["caption"] != "").all(), name
    panda = _rows(find_source(str(videos / "panda.csv")))
    assert panda["caption"].tolist() == ["a first span", "a second one's"]  # one caption a span
    assert _rows(find_source(str(videos / "webvid.parquet")))["videoid"].tolist() == ["007"]


def test_columns_can_be_named_and_unknown_ones_are_one_line(videos):
    table = videos / "mine.csv"
    pd.DataFrame({"path": ["abc.mp4"], "text": ["a clip"], "t0": ["0:01"], "t1": ["0:03"]}).to_csv(table, index=False)
    with pytest.raises(ConfigError, match="match no known table format.*--video-col and --caption-col"):
        find_source(str(table))
    source = find_source(str(table), DataOptions(video_col="path", caption_col="text", start_col="t0", end_col="t1"))
    rows = _rows(source)
    assert (rows["start"].tolist(), rows["end"].tolist(), rows["caption"].tolist()) == ([1.0], [3.0], ["a clip"])
    with pytest.raises(ConfigError, match="no column 'nope'"):
        find_source(str(table), DataOptions(video_col="nope", caption_col="text"))
    with pytest.raises(ConfigError, match="unknown column 'score'"):
        find_source(str(table), DataOptions(video_col="path", caption_col="text", where="score > 1"))
    with pytest.raises(ConfigError, match="a call"):
        find_source(str(table), DataOptions(video_col="path", caption_col="text", where="__import__('os') == 1"))


def test_span_clips_hold_only_frames_of_their_span_frame_by_frame(videos):
    data = (videos / "abc.mp4").read_bytes()
    rng = np.random.default_rng(0)
    for span, (first, stop) in {Span(0.5, 2.0): (5, 20), Span(3.0, 5.5): (30, 55), Span(4.2, None): (42, 60)}.items():
        starts = set()
        for _ in range(20):  # random inside the span, drawn again each call
            clip = sample_clip(data, CLIP, rng, span)
            assert frame_numbers(clip.frames) == clip.indices, span
            assert all(first <= i < stop for i in clip.indices), (span, clip.indices)
            starts.add(clip.indices[0])
        assert len(starts) > 1, span


def test_spans_past_the_end_or_too_short_are_named_skips(videos):
    frame = pd.DataFrame({"file": ["abc.mp4"] * 4, "caption": ["c"] * 4,
                          "start": ["0:00:07", "0:00:01", "0:00:05.0", "soon"], "end": ["0:00:09", "0:00:01.2", "0:00:08", "1"]})
    frame.to_csv(videos / "bad_spans.csv", index=False)
    rows = _rows(find_source(str(videos / "bad_spans.csv")))
    decoder = ClipDecoder(CLIP, seed=0)
    assert len(decoder(rows)) == 0
    assert dict(decoder.skipped) == {"span_past_end": 2, "span_too_short": 1, "bad_span": 1}


def test_hostile_span_cells_are_bad_span_rows_and_the_rest_go_on(videos):
    ts = "[['0:00:00.500', '0:00:02.000']]"
    cells = ["[" * 50_000 + "]" * 50_000, "[['1e400', '2']]", "[['0:00:01', 'nan']]", "[['x']]", "not a list", ts]
    frame = pd.DataFrame({"videoID": ["abc"] * len(cells), "url": ["abc.mp4"] * len(cells), "timestamp": cells,
                          "caption": ["['c']"] * len(cells)})
    frame.to_csv(videos / "hostile.csv", index=False)
    rows = _rows(find_source(str(videos / "hostile.csv")))
    assert [p.split(":")[0] for p in rows["problem"]] == ["bad_span"] * 5 + [""]
    assert rows["start"].tolist()[-1] == 0.5


def test_sample_fps_sets_the_stride_from_each_videos_fps_and_flip_mirrors(videos):
    data = (videos / "abc.mp4").read_bytes()
    clip = sample_clip(data, ClipConfig(num_frames=4, stride=1, size=32, sample_fps=2.5, num_threads=1),
                       np.random.default_rng(0))
    assert np.diff(clip.indices).tolist() == [4, 4, 4]  # 10 fps sampled at 2.5 fps
    bikes = real_video("bikes.mp4")
    plain = sample_clip(bikes, ClipConfig(num_frames=2, stride=1, size=32, num_threads=1), np.random.default_rng(3))
    flipped = sample_clip(bikes, ClipConfig(num_frames=2, stride=1, size=32, flip=1.0, num_threads=1),
                          np.random.default_rng(3))
    assert flipped.flipped and flipped.indices == plain.indices
    assert np.array_equal(flipped.frames, plain.frames[:, :, ::-1])


def test_where_keeps_what_the_expression_selects_after_spans_are_exploded(videos):
    ts = "[['0:00:00', '0:00:01'], ['0:00:01', '0:00:02'], ['0:00:02', '0:00:03']]"
    frame = pd.DataFrame({"videoID": ["abc", "def"], "url": ["abc.mp4", "def.mp4"], "timestamp": [ts, ts],
                          "caption": ["['a', 'b', 'c']", "['d', 'e', 'f']"],
                          "matching_score": ["[0.5, 0.4, 0.44]", "[0.1, 0.9, 0.43]"]})
    frame.to_csv(videos / "panda_where.csv", index=False)
    source = find_source(str(videos / "panda_where.csv"), DataOptions(where="matching_score > 0.43 and start < 2"))
    seen = []

    class Tally:  # the SkipTally's `filtered` as a plain recorder
        class filtered:
            @staticmethod
            def remote(block, kept, dropped):
                seen.append((kept, dropped))

    rows = prepare(tables.read_pandas(source.tables[0], data=True), source, Tally)
    assert rows["caption"].tolist() == ["a", "e"] and seen == [(2, 4)]


def test_a_bad_video_is_named_and_not_fetched_again(videos, monkeypatch):
    fetched = []
    real_fetch = video_io.fetch

    def counting_fetch(src):
        fetched.append(src)
        return real_fetch(src)

    monkeypatch.setattr(decode, "fetch", counting_fetch)
    (videos / "cut.mp4").write_bytes((videos / "abc.mp4").read_bytes()[:3000])
    rows = pd.DataFrame({"videoid": ["cut", "cut", "abc"], "video_uri": [str(videos / "cut.mp4")] * 2 + [str(videos / "abc.mp4")],
                         "video": [b""] * 3, "caption": ["x"] * 3, "start": [0.0, 1.0, 0.0],
                         "end": [np.nan, 2.0, np.nan], "problem": [""] * 3})
    decoder = ClipDecoder(CLIP, seed=0)
    assert decoder(rows)["videoid"].tolist() == ["abc"]
    assert decoder(rows)["videoid"].tolist() == ["abc"]  # a second pass
    assert fetched.count(str(videos / "cut.mp4")) == 1 and dict(decoder.skipped) == {"corrupt": 1}
    out = decoder(rows.iloc[2:])
    assert set(out.columns) >= {"source", "start", "end", "frame_indices"} and out["source"][0] == str(videos / "abc.mp4")


def write_shards(folder, n_shards=2, per_shard=2, panda=False) -> list[str]:
    """video2dataset's output layout: NNNNN.tar of KEY.mp4 + KEY.txt + KEY.json, with NNNNN.parquet and stats."""
    os.makedirs(folder, exist_ok=True)
    video = counter_video()
    paths = []
    for s in range(n_shards):
        path = os.path.join(folder, f"{s:05d}.tar")
        keys = []
        with wds.TarWriter(path) as sink:
            for i in range(per_shard):
                key = f"{s:05d}{i:04d}"
                meta = {"key": key, "url": f"https://example.org/{key}", "status": "success", "caption": f"clip {key}"}
                if panda:
                    meta.update(timestamp=[["0:00:00.000", "0:00:02.000"], ["0:00:03.000", "0:00:05.000"]],
                                caption=[f"{key} first", f"{key} second"], matching_score=[0.5, 0.3])
                sink.write({"__key__": key, "mp4": video, "txt": f"clip {key}", "json": meta})
                keys.append(key)
        pd.DataFrame({"key": keys, "status": ["success"] * len(keys)}).to_parquet(os.path.join(folder, f"{s:05d}.parquet"))
        with open(os.path.join(folder, f"{s:05d}_stats.json"), "w") as f:
            json.dump({"count": len(keys), "successes": len(keys)}, f)
        paths.append(path)
    return paths


def test_webdataset_shards_are_found_as_a_folder_a_pattern_or_a_list(tmp_path):
    paths = write_shards(str(tmp_path / "v2d"))
    for data in (str(tmp_path / "v2d"), str(tmp_path / "v2d" / "{00000..00001}.tar"), ",".join(paths), paths[0]):
        source = find_source(data)
        assert source.kind == "webdataset" and source.fmt.video == "video", data
    assert find_source(paths[0]).tables == (paths[0],)
    assert len(find_source(str(tmp_path / "v2d")).tables) == 2
    with pytest.raises(ConfigError, match="not found"):
        find_source(str(tmp_path / "v2d" / "{00000..00003}.tar"))
    panda = write_shards(str(tmp_path / "panda"), n_shards=1, panda=True)
    source = find_source(panda[0], DataOptions(where="matching_score > 0.43"))
    assert source.fmt.spans == "timestamp" and source.fmt.caption == "caption"


@pytest.mark.usefixtures("one_thread")
def test_ingest_records_spans_provenance_where_counts_and_skips_by_name(ray_session, tiny_models, videos, tmp_path):
    from pipelines.train.config import IngestRun
    from pipelines.train.ingest import check_ingest, run_ingest

    ts = "[['0:00:00.500', '0:00:02.500'], ['0:00:03.000', '0:00:05.500'], ['0:00:09.000', '0:00:12.000']]"
    pd.DataFrame({"videoID": ["abc", "def"], "url": ["abc.mp4", "def.mp4"], "timestamp": [ts, ts],
                  "caption": ["['a', 'b', 'c']", "['d', 'e', 'f']"],
                  "matching_score": ["[0.5, 0.2, 0.9]", "[0.6, 0.7, 0.1]"]}).to_csv(videos / "panda_ingest.csv", index=False)
    run = IngestRun(data=str(videos / "panda_ingest.csv"), base=str(tiny_models / "base"), out=str(tmp_path / "lat"),
                    num_frames=4, stride=2, size=32, decoders=1, decode_cpus=0.25,
                    source=DataOptions(where="matching_score > 0.43"))
    meta = run_ingest(run, check_ingest(run))
    assert meta["where"] == {"expression": "matching_score > 0.43", "kept": 4, "dropped": 2}
    assert meta["rows"] == 3 and meta["skipped_videos"] == {"span_past_end": 1} and meta["format"] == "panda70m"
    shards = pd.read_parquet(tmp_path / "lat", columns=["caption", "source", "start", "end", "frame_indices"])
    for row in shards.to_dict("records"):
        assert all(row["start"] * FPS <= i < row["end"] * FPS for i in row["frame_indices"]), row
    assert sorted(shards["caption"]) == ["a", "d", "e"]
    skipped = pd.read_parquet(tmp_path / "lat" / "_skipped.parquet")
    assert skipped[["source", "start", "end", "reason"]].values.tolist() == [[str(videos / "abc.mp4"), 9.0, 12.0, "span_past_end"]]


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_trains_two_steps_on_video2dataset_shards_with_spans(ray_session, tiny_models, tmp_path):
    from animatediff_core.training.trainer import TrainConfig
    from pipelines.train.config import TrainRun
    from pipelines.train.job import check_run, train

    write_shards(str(tmp_path / "v2d"), n_shards=2, panda=True)
    run = TrainRun(data=str(tmp_path / "v2d"), base=str(tiny_models / "base"), storage=str(tmp_path / "runs"), name="mm",
                   source=DataOptions(where="matching_score > 0.43"))
    cfg = TrainConfig.tiny(num_frames=4, stride=2, size=32, max_steps=2, checkpoint_every=2, validate_every=0)
    summary = train(run, check_run(run, cfg))
    assert summary.steps == 2
    with open(os.path.join(run.run_dir, "metrics.jsonl")) as f:
        last = [json.loads(line) for line in f][-1]
    assert last["where"]["kept"] == 4 and last["where"]["dropped"] == 4  # 4 samples x 2 spans, half kept


def test_a_batch_jobs_output_and_a_videofolder_are_training_data(tmp_path):
    out = batch_output(tmp_path / "gen")
    source = find_source(out, DataOptions(where="checkpoint == 'real'"))
    assert source.kind == "run" and source.fmt.name == "batchrun"
    from pipelines.train.sources import run_rows

    rows = prepare(run_rows(out), source)
    assert rows["caption"].tolist() == ["a cat", "waves"] and rows["videoid"].tolist() == ["real/p2", "real/p3"]
    folder = tmp_path / "curated"
    folder.mkdir()
    shutil.copy(os.path.join(out, "videos", "toon", "p0.mp4"), folder / "a.mp4")
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "a.mp4", "caption": "a cat"}) + "\n")
    source = find_source(str(folder))
    assert (source.kind, source.fmt.name) == ("folder", "videofolder")


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_trains_two_steps_on_its_own_generated_output(ray_session, tiny_models, tmp_path):
    from animatediff_core.training.trainer import TrainConfig
    from pipelines.train.config import TrainRun
    from pipelines.train.job import check_run, train

    run = TrainRun(data=batch_output(tmp_path / "gen"), base=str(tiny_models / "base"), storage=str(tmp_path / "runs"),
                   name="mm", decoders=1, decode_cpus=0.25, max_failures=0)
    cfg = TrainConfig.tiny(num_frames=4, stride=2, size=32, max_steps=2, checkpoint_every=2, validate_every=0)
    assert train(run, check_run(run, cfg)).steps == 2


def test_skipped_parquet_round_trips_to_the_names_a_resumed_run_skips(tmp_path):
    from pipelines.train.decode import clip_key, read_skipped, skipped_frame

    items = [{"key": "/v/a.mp4", "source": "/v/a.mp4", "start": 0.0, "end": float("nan"), "reason": "corrupt"},
             {"key": clip_key("/v/b.mp4", 1.5, 3.0), "source": "/v/b.mp4", "start": 1.5, "end": 3.0, "reason": "span_past_end"}]
    skipped_frame(items).to_parquet(tmp_path / "skipped.parquet")
    assert [i["key"] for i in read_skipped(str(tmp_path / "skipped.parquet"))] == [i["key"] for i in items]
    assert read_skipped(str(tmp_path / "none.parquet")) == []


def test_an_internal_error_is_counted_but_never_named_as_a_bad_video(ray_session, videos, monkeypatch):
    import ray

    from pipelines.train.decode import start_tally

    def bug(*args, **kwargs):
        raise KeyError("a bug in the stage")

    monkeypatch.setattr(decode, "sample_clip", bug)
    tally = start_tally()
    rows = pd.DataFrame({"videoid": ["abc", "gone"], "video_uri": [str(videos / "abc.mp4"), str(videos / "gone.mp4")],
                         "video": [b""] * 2, "caption": ["x"] * 2, "start": [0.0] * 2, "end": [np.nan] * 2,
                         "problem": [""] * 2})
    decoder = ClipDecoder(CLIP, tally)
    assert len(decoder(rows)) == 0 and len(decoder(rows)) == 0  # tried again: a bug is not a bad video
    assert dict(decoder.skipped) == {"internal_error": 2, "not_found": 1}
    named = ray.get(tally.skipped.remote())  # the missing video beside it is still named, the bug is not
    assert [(i["source"], i["reason"]) for i in named] == [(str(videos / "gone.mp4"), "not_found")]
