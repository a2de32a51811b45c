"""Untrusted cells at planning (no Ray, no models): row budgets, where URIs may point, bytes and sizes of
cells, CSV files no cell can break, bounded summaries, one live run per --out, a shard that cannot be written,
what a writer killed mid-write leaves."""

import errno
import io
import os

import pandas as pd
import pyarrow as pa
import pytest

from animatediff_core.io.bounded import ReadLimits
from animatediff_core.settings.generation import GenerationSettings
from pipelines import cells, csv_cells
from pipelines.animate import lease, schema
from pipelines.animate.job import exit_code
from pipelines.animate.layout import OutputLayout
from pipelines.animate.limits import RowLimits, row_cost
from pipelines.animate.plan import Plan, expand_rows, normalize
from pipelines.animate.report import MAX_GROUPS, SHOWN, Summary, write_index, write_shard

PLAN = Plan(("base",), {"mm": 32}, GenerationSettings(num_frames=16, height=64, width=64, steps=2))


def _expand(rows, plan=PLAN):
    return expand_rows(normalize(pd.DataFrame(rows)), plan).set_index("id")


def test_a_row_over_the_cost_limit_is_an_error_row_naming_the_flag():
    plan = Plan(("base",), {"mm": 32}, PLAN.defaults, limits=RowLimits(max_row_cost=1e8))
    out = _expand([{"id": "small", "prompt": "x"}, {"id": "huge", "prompt": "x", "num_frames": "1024", "height": "512",
                                                    "width": "512", "steps": "1000"},
                   {"id": "passes", "prompt": "x", "height": "2048", "width": "2048", "free_init_iterations": "8"}], plan)
    assert out.loc["small", "status"] == "pending"
    assert "row cost 2.68e+11 pixel-steps (1024 frames x 512x512 x 1000 steps x 1 pass) is over --max-row-cost 1e+08" \
        in out.loc["huge", "error"] and "raise --max-row-cost" in out.loc["huge", "error"]
    assert "x 8 passes" in out.loc["passes", "error"]
    assert row_cost(GenerationSettings()) == 16 * 512 * 512 * 25  # the default row: 1.05e8, well under the default 1e10


def test_cells_may_name_only_what_the_operator_allows():
    rows = [{"id": "lora", "prompt": "x", "motion_lora": "http://127.0.0.1:9/m.safetensors"},
            {"id": "meta", "prompt": "x", "init_video": "http://169.254.169.254/latest/v.mp4"},
            {"id": "key", "prompt": "x", "keyframes": '{"0": "ftp://host/a.png"}', "keyframe_model": "org/sparse"},
            {"id": "chain", "prompt": "x", "control_video": "simplecache::s3://b/v.mp4", "control_model": "org/cn"},
            {"id": "local", "prompt": "x", "init_video": "/data/v.mp4"}]
    out = _expand(rows)
    assert "motion_lora http://127.0.0.1:9/m.safetensors: an http(s) address that is not public" in out.loc["lora", "error"]
    assert "--allow-uri" in out.loc["meta", "error"] and "protocol 'ftp'" in out.loc["key", "error"]
    assert "protocol '::'" in out.loc["chain", "error"] and out.loc["local", "status"] == "pending"
    allowed = Plan(("base",), {"mm": 32}, PLAN.defaults, reads=ReadLimits(allow_uri=["http://127.0.0.1:9/"]))
    assert _expand(rows[:1], allowed).loc["lora", "status"] == "pending"


def test_cells_of_any_size_bytes_or_digits_become_error_rows():
    big = "9" * 5000
    table = pa.table({"id": ["ok", "utf", "huge", "digits", "key", "deep"],
                      "prompt": [b"a cat", b"a \xed\xa0\x80 cat", b"p" * 20_000, b"x", b"x", b"x"],
                      "seed": [None, None, None, big.encode(), None, None],
                      "prompt_schedule": [None, None, None, None, f'{{"{big}": "y"}}'.encode(), b"[" * 5000]})
    out = expand_rows(normalize(table), PLAN).set_index("id")
    assert out.loc["ok", "status"] == "pending"
    assert "column prompt is not valid UTF-8 (byte 0xed at byte 2)" in out.loc["utf", "error"]
    assert "column prompt holds 20,000 characters; a cell holds at most 10,000" in out.loc["huge", "error"]
    assert len(out.loc["huge", "prompt"]) == cells.MAX_CELL_CHARS + 1  # kept cut, not 20 KB per row
    assert "seed must be an integer, got a number of 5000 digits" in out.loc["digits", "error"]
    assert "is not a frame index" in out.loc["key", "error"] and "not valid JSON" in out.loc["deep", "error"]
    text, problem = cells.cell("a \ud800 b")  # a Python str no file format can store
    assert "lone surrogate" in problem and "\ud800" not in text


def _planned(stream, name: str) -> pd.DataFrame:
    """The plan of one CSV read through csv_cells (rows, or error rows naming file and row)."""
    return expand_rows(normalize(pa.concat_tables(list(csv_cells.stream(stream, name, schema.READ)))), PLAN)


def test_csv_cells_name_bad_rows_and_a_broken_file_is_one_row(tmp_path):
    data = b"id,prompt,extra\nr1,a cat,\xff\xfe\nr2,a \xed\xa0\x80 dog,x\nr3,\"a\nbird\",y\n"
    out = _planned(pa.BufferReader(data), "p.csv").set_index("id")
    assert out.loc["r1", "status"] == "pending" and out.loc["r3", "prompt"] == "a\nbird"  # bad bytes in an unread column
    assert out.loc["r2", "error"].startswith("p.csv row 3: column prompt is not valid UTF-8")
    fields = b"id,prompt\nr1,a cat\nr2,x,y,z\nr3,\"two\nlines\"\nr4,z,z\nr5,ok\n"  # rows as a spreadsheet counts them
    out = _planned(pa.BufferReader(fields), "f.csv")
    assert sorted(out.id[out.status == "pending"]) == ["r1", "r3", "r5"]
    assert sorted(out.error[out.status == "error"]) == ["f.csv row 3 has 4 fields where the header has 2",
                                                        "f.csv row 5 has 3 fields where the header has 2"]
    every_bad, last_bad = (_planned(pa.BufferReader(t), "g.csv") for t in (b"id,prompt\nr1,a, cat\nr2,b, dog\n",
                                                                             b"id,prompt\nr1,a cat\nr2,b, dog\n"))
    for out in (every_bad, last_bad):  # malformed rows after the last parsed one are error rows too
        assert "g.csv row 3 has 3 fields where the header has 2" in set(out.error[out.status == "error"])
    summary = Summary()
    summary.add(schema.typed(every_bad))
    code, line = exit_code(summary, 1.0)  # the one line names a row with its values, not only the grouped reason
    assert code == 1 and line.startswith("every row failed (2 rows)") and "g.csv row 2 has 3 fields" in line
    import gzip

    broken = gzip.compress(b"id,prompt\n" + b"r,x\n" * 10)[:-12]  # a truncated .csv.gz
    rows = _planned(pa.CompressedInputStream(pa.BufferReader(broken), "gzip"), "b.csv.gz")
    failed = rows[rows.error.str.startswith(cells.UNREADABLE)]
    assert len(failed) == 1 and "b.csv.gz could not be read as CSV from row" in failed.error.iloc[0]
    summary = Summary()
    summary.add(schema.typed(rows))
    code, line = exit_code(summary, 1.0)
    assert code == 1 and line.startswith("b.csv.gz could not be read as CSV") and "\n" not in line


def test_index_is_small_and_lists_the_largest_groups(tmp_path):
    n = MAX_GROUPS * 3
    rows = pd.DataFrame({"id": [f"r{i}" for i in range(n + 5)], "motion_module": "mm", "status": "ok",
                         "checkpoint": [f"c{i}" for i in range(n)] + ["big"] * 5,
                         "prompt": ["<b>" + "long " * 2000] * (n + 5),
                         "video_uri": [f"{tmp_path}/videos/x/r{i}.mp4" for i in range(n + 5)]})
    summary = Summary()
    summary.add(schema.typed(rows))
    page = open(write_index(summary, OutputLayout(str(tmp_path)))).read()
    assert page.count("<h2>") == MAX_GROUPS + 2 and f"{n + 1 - MAX_GROUPS} more checkpoint(s)" in page  # + the grid
    assert page.index("<h2>big</h2>") < page.index("<h2>c0</h2>")  # largest first
    assert "<b>long" not in page and "&lt;b&gt;long" in page and ("long " * (SHOWN // 5)) not in page
    assert len(page) < 400_000 and "more checkpoint(s)" in summary.text(1.0)


def test_a_second_run_on_a_live_out_refuses_and_a_killed_ones_claim_does_not_block(tmp_path):
    layout = OutputLayout(str(tmp_path))
    with lease.claim(layout, "20260101T000000-aaaaaa"):
        with pytest.raises(Exception, match="is in use by run 20260101T000000-aaaaaa \\(pid"):
            with lease.claim(layout, "20260101T000001-bbbbbb"):
                pass
        assert lease.is_live(layout, "20260101T000000-aaaaaa")
    assert not os.listdir(layout.runs)  # released
    dead = {"run": "20260101T000002-cccccc", "host": os.uname().nodename, "pid": 2**22 + 12345, "started": 0, "heartbeat": 9e12}
    os.makedirs(layout.runs, exist_ok=True)
    open(layout.run_claim(dead["run"]), "w").write(__import__("json").dumps(dead))
    with lease.claim(layout, "20260101T000003-dddddd"):  # its process is gone: not live
        pass


def test_a_shard_that_cannot_be_written_is_one_line_and_no_crash(tmp_path, monkeypatch):
    from animatediff_core.io import storage

    def full(uri, data, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage, "write_bytes_atomic", full)
    rows = schema.typed(pd.DataFrame({"id": ["a", "b"], "prompt": "x", "checkpoint": "base", "motion_module": "mm",
                                      "status": "ok"}))
    out = write_shard(rows, OutputLayout(str(tmp_path)), "20260101T000000-aaaaaa")
    summary = Summary()
    summary.add(out)
    code, line = exit_code(summary, 1.0)
    assert code == 1 and "the metadata of 2 row(s) could not be written (OSError: [Errno 28] No space left" in line
    assert io.StringIO(line).read().count("\n") == 0


def test_a_run_removes_what_a_writer_killed_mid_write_left(tmp_path):
    import subprocess
    import sys

    layout = OutputLayout(str(tmp_path))
    video, shard = layout.video("mm", "base", "r0"), layout.shard("20260101T000000-aaaaaa", "k")
    for uri in (video, shard, layout.index):  # each write dies after its bytes are out, before the rename (SIGKILL)
        subprocess.run([sys.executable, "-c", "import os, signal, sys; from animatediff_core.io import storage; "
                        "os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL); storage.write_bytes_atomic(sys.argv[1], b'x')",
                        uri], check=False, timeout=60)
    left = sorted(p.name for p in tmp_path.rglob("*.tmp"))
    assert len(left) == 3 and all(n.startswith((".r0.mp4.", ".20260101T000000-aaaaaa-k.parquet.", ".index.html.")) for n in left)
    mine = [tmp_path / "notes.tmp", tmp_path / ".runs" / ".x.json.abcd1234.tmp", tmp_path / "other" / ".y.mp4.abcd1234.tmp"]
    for p in mine:  # not the job's temp files, or not in its folders (.runs: the live claim's heartbeat)
        p.parent.mkdir(exist_ok=True)
        p.write_text("keep")
    assert layout.remove_leftover_temps() == 3
    assert sorted(p for p in tmp_path.rglob("*.tmp")) == sorted(mine)
    assert not os.path.exists(video)  # nothing else touched
