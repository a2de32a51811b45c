"""jobs.curate's work: a generated set -> the subset an expression keeps, in formats other tools read."""

import json
import os

import numpy as np
import pandas as pd
import pytest
import webdataset as wds
from helpers_runs import batch_output

from pipelines.curate.config import CurateRun
from pipelines.curate.job import curate, select
from pipelines.train.sources import find_source


@pytest.fixture()
def generated(tmp_path):
    out = batch_output(tmp_path / "gen")
    meta = pd.read_parquet(os.path.join(out, "metadata"))
    scores = meta[meta["status"] == "ok"][["video_uri"]].assign(text_alignment=[30.0, 20.0, 27.5])
    os.makedirs(tmp_path / "eval")
    scores.to_parquet(tmp_path / "eval" / "metrics.parquet")
    return out, str(tmp_path / "eval")


def test_kept_rows_are_the_expressions_and_the_dropped_say_why(generated, tmp_path):
    out, scores = generated
    run = CurateRun(run=[out], scores=scores, where="text_alignment > 25 and checkpoint != 'nope'", format="parquet",
                    out=str(tmp_path / "cur"))
    kept, dropped = select(run)
    joined = pd.read_parquet(os.path.join(out, "metadata")).merge(pd.read_parquet(os.path.join(scores, "metrics.parquet")),
                                                                  on="video_uri", how="left")
    expected = joined[joined["status"] == "ok"].query("text_alignment > 25 and checkpoint != 'nope'")
    assert sorted(kept["video_uri"]) == sorted(expected["video_uri"])
    assert sorted(dropped["reason"].str.split(":").str[0]) == ["status", "where"]
    summary = curate(run)
    assert (summary["kept"], summary["dropped"]) == (2, 2)
    manifest = pd.read_parquet(tmp_path / "cur" / "manifest.parquet")
    assert find_source(str(tmp_path / "cur" / "manifest.parquet")).fmt.name == "batchrun" and len(manifest) == 2


@pytest.mark.usefixtures("ray_session")
def test_webdataset_shards_read_back_by_ray_and_the_webdataset_package(generated, tmp_path):
    import ray

    out, scores = generated
    with open(os.path.join(out, "videos", "real", "p3.mp4"), "ab") as f:
        f.write(b"changed")  # no longer the bytes its sha256 names: dropped, never copied
    summary = curate(CurateRun(run=[out], scores=scores, format="webdataset", out=str(tmp_path / "wds"), shard_mb=1))
    assert (summary["kept"], summary["dropped_by_reason"]) == (2, {"status": 1, "video": 1})
    manifest = pd.read_parquet(tmp_path / "wds" / "manifest.parquet")
    shards = sorted(str(p) for p in (tmp_path / "wds" / "shards").glob("*.tar"))
    samples = list(wds.WebDataset(shards, shardshuffle=False))
    assert sorted(s["__key__"] for s in samples) == sorted(manifest["key"])
    for s in samples:
        meta = json.loads(s["json"])
        row = manifest[manifest["key"] == s["__key__"]].iloc[0]
        assert s["txt"].decode() == meta["prompt"] == row["prompt"] and meta["text_alignment"] == row["text_alignment"]
        assert open(row["video_uri"], "rb").read() == s["mp4"]
        assert row["shard"].startswith("shards/") and os.path.exists(tmp_path / "wds" / row["shard"])
    assert ray.data.read_webdataset(shards).count() == 2
    assert find_source(str(tmp_path / "wds")).kind == "webdataset"


@pytest.mark.usefixtures("ray_session")
def test_videofolder_is_hugging_faces_layout(generated, tmp_path):
    out, _ = generated
    curate(CurateRun(run=[out], where="checkpoint == 'real'", format="videofolder", out=str(tmp_path / "hf")))
    lines = [json.loads(x) for x in (tmp_path / "hf" / "metadata.jsonl").read_text().splitlines()]
    assert [x["caption"] for x in lines] == ["a cat", "waves"]
    assert all((tmp_path / "hf" / x["file_name"]).exists() and not os.path.isabs(x["file_name"]) for x in lines)
    source = find_source(str(tmp_path / "hf"))
    assert (source.kind, source.fmt.name) == ("folder", "videofolder")


@pytest.mark.usefixtures("ray_session")
def test_dedup_keeps_the_higher_scoring_of_identical_videos(generated, tiny_models, tmp_path):
    from animatediff_core.errors import ConfigError
    from pipelines.curate.job import near_duplicates

    out, scores = generated  # its three ok videos have the same frames; text_alignment 30, 20, 27.5
    summary = curate(CurateRun(run=[out], scores=scores, dedup=0.99, clip=str(tiny_models / "clip"), format="parquet",
                               out=str(tmp_path / "dd")))
    kept = pd.read_parquet(tmp_path / "dd" / "manifest.parquet")
    assert kept["text_alignment"].tolist() == [30.0] and summary["dropped_by_reason"] == {"duplicate": 2, "status": 1}
    dropped = pd.read_parquet(tmp_path / "dd" / "filtered.parquet")
    assert dropped["reason"].str.startswith(f"duplicate: of {kept['key'][0]}").sum() == 2
    unit = np.eye(3, dtype=np.float32)  # orthogonal embeddings are never duplicates, whatever their order
    rows = pd.DataFrame({"key": ["a", "b", "c"], "s": [1.0, 3.0, 2.0]})
    assert near_duplicates(rows, dict(zip("abc", unit)), 0.5, "s") == {}
    assert near_duplicates(rows, {"a": unit[0], "b": unit[0], "c": unit[1]}, 0.5, "s") == {"a": "duplicate: of b (cosine 1.0000)"}
    with pytest.raises(ConfigError, match="--clip"):
        CurateRun(run=[out], dedup=0.9, out=str(tmp_path / "x"))
