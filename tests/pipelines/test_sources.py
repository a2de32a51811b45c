"""Video tables -> clip rows, and the decode stage's skip reasons (pure functions: no Ray cluster)."""

import shutil

import numpy as np
import pandas as pd
import pytest
from helpers_video import real_video

from animatediff_core.errors import ConfigError
from animatediff_core.training.clips import ClipConfig
from pipelines.train.decode import ClipDecoder, clip_array, decode_row
from pipelines.train.formats import FORMATS, clip_rows, explode
from pipelines.train.sources import INGEST_META, check_tables, find_source, folder_rows

CLIP = ClipConfig(num_frames=8, stride=4, size=32, num_threads=1)


def test_clip_rows_keep_webvid_columns_as_strings_and_resolve_relative_paths():
    batch = pd.DataFrame({"videoid": [1, 2, 3, 4, 5], "page_dir": ["a"] * 5, "duration": ["PT00H00M10S"] * 5,
                          "contentUrl": ["https://x.org/a.mp4", "s3://b/c.mp4", "/abs/d.mp4", "sub/e.mp4", "f00"],
                          "name": [" a caption ", None, "c", "d", "e"]})
    webvid = next(f for f in FORMATS if f.name == "webvid")
    rows = clip_rows(explode(batch, webvid), webvid, "s3://bucket/tables")
    assert list(rows.columns) == ["videoid", "video_uri", "video", "caption", "start", "end", "problem"]
    assert rows["videoid"].tolist() == ["1", "2", "3", "4", "5"]
    assert rows["video_uri"].tolist() == ["https://x.org/a.mp4", "s3://b/c.mp4", "/abs/d.mp4",
                                          "s3://bucket/tables/sub/e.mp4", "s3://bucket/tables/f00.mp4"]  # a bare id
    assert rows["caption"].tolist() == ["a caption", "", "c", "d", "e"]


def test_find_source_tells_tables_folders_and_ingests_apart(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        find_source(str(tmp_path / "nope.csv"))
    table = tmp_path / "webvid.csv"
    table.write_text("videoid,contentUrl,name,duration,page_dir\n1,a.mp4,cap,PT1S,x\n")
    assert find_source(str(table)).kind == "table"
    shards = tmp_path / "shards"
    shards.mkdir()
    pd.DataFrame({"videoid": [1], "contentUrl": ["a.mp4"], "name": ["x"]}).to_parquet(shards / "part-0.parquet")
    src = find_source(str(shards))
    assert src.kind == "table" and len(src.tables) == 1
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(real_video("carphone_pristine.mp4"), videos / "1.mp4")
    with pytest.raises(ConfigError, match="needs one captions table"):
        find_source(str(videos))
    (videos / "captions.csv").write_text("videoid,caption\n1,a man in a car\n2,missing\n")
    src = find_source(str(videos))
    assert src.kind == "folder"
    rows = clip_rows(explode(folder_rows(src), src.fmt), src.fmt, src.root)
    assert rows["video_uri"].tolist() == [str(videos / "1.mp4"), str(videos / "2.mp4")]
    (tmp_path / "lat").mkdir()
    (tmp_path / "lat" / INGEST_META).write_text('{"num_frames": 8}')
    assert find_source(str(tmp_path / "lat")).kind == "latents"


def test_tables_without_webvid_columns_or_rows_are_refused(tmp_path):
    (tmp_path / "bad.csv").write_text("url,text\na.mp4,cap\n")
    with pytest.raises(ConfigError, match="match no known table format .*--video-col and --caption-col"):
        check_tables(find_source(str(tmp_path / "bad.csv")))
    (tmp_path / "empty.csv").write_text("videoid,contentUrl,name\n")
    with pytest.raises(ConfigError, match="no rows"):
        check_tables(find_source(str(tmp_path / "empty.csv")))
    pd.DataFrame({"videoid": [], "contentUrl": [], "name": []}).to_parquet(tmp_path / "empty.parquet")
    with pytest.raises(ConfigError, match="no rows"):
        check_tables(find_source(str(tmp_path / "empty.parquet")))


def test_decode_row_turns_bad_videos_into_reasons(tmp_path):
    rng = np.random.default_rng(0)
    good = real_video("carphone_pristine.mp4")
    clip, reason = decode_row(good, "a man in a car", CLIP, rng)
    assert reason == "" and clip_array(clip.frames.tobytes(), CLIP).shape == (8, 32, 32, 3)
    (tmp_path / "zero.mp4").write_bytes(b"")
    (tmp_path / "cut.mp4").write_bytes(open(real_video("bikes.mp4"), "rb").read()[:20_000])
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(1).bytes(50_000))
    cases = {(good, ""): "empty_caption", (str(tmp_path / "missing.mp4"), "x"): "not_found",
             (str(tmp_path / "zero.mp4"), "x"): "empty", (str(tmp_path / "cut.mp4"), "x"): "corrupt",
             (str(tmp_path / "noise.mp4"), "x"): "corrupt",
             (good, "x"): "too_short"}
    long_clip = ClipConfig(num_frames=200, stride=1, size=32, num_threads=1)  # carphone has 120 frames
    for (uri, caption), expected in cases.items():
        cfg = long_clip if expected == "too_short" else CLIP
        assert decode_row(uri, caption, cfg, rng) == (None, expected), (uri, caption)


def test_clip_decoder_drops_and_counts_bad_rows():
    decoder = ClipDecoder(CLIP)
    batch = pd.DataFrame({"videoid": ["1", "2", "3"], "caption": ["a", "", "c"],
                          "video_uri": [real_video("bikes.mp4"), real_video("bikes.mp4"), "/nonexistent.mp4"]})
    out = decoder(batch)
    assert out["videoid"].tolist() == ["1"] and len(out["clip"][0]) == 8 * 32 * 32 * 3
    assert dict(decoder.skipped) == {"empty_caption": 1, "not_found": 1}
    assert len(decoder(batch.iloc[1:])) == 0
