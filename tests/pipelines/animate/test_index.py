"""index.html and the printed summary as a person reads them (no Ray, no models): error reasons keep one
message with its values, cards list every setting a row moved off its default, the headline counts skipped
rows, and a prompt x checkpoint grid compares the same prompt and seed across checkpoints."""

import html
import re

import pandas as pd

from pipelines.animate import schema
from pipelines.animate.layout import OutputLayout
from pipelines.animate.report import Summary, write_index


def _rows(tmp_path):
    ok = [dict(id=f"p{k}", prompt=f"prompt {k}", seed=k, checkpoint=c, motion_module="mm", status="ok",
               num_frames=16, prompt_schedule='{"0": "a", "8": "b"}' if k == 0 else "", free_init_iterations=2 if k == 1 else 0,
               context_loop=k == 1, windows=3 if k == 1 else 1, video_uri=f"{tmp_path}/videos/{c}/p{k}.mp4")
          for c in ("dreamy", "toon") for k in range(3)]
    bad = [dict(id=f"e{k}", prompt="x", seed=0, checkpoint="toon", motion_module="mm", status="error",
                error=f"prompt_schedule key {40 + k} is past the last frame ({15})") for k in range(3)]
    old = [dict(id="s0", prompt="prompt 0", seed=0, checkpoint="dreamy", motion_module="mm", status="ok", skipped=True,
                video_uri=f"{tmp_path}/videos/dreamy/s0.mp4")]
    return schema.typed(pd.DataFrame(ok + bad + old))


def test_index_shows_values_settings_skipped_rows_and_the_grid(tmp_path):
    summary = Summary()
    summary.add(_rows(tmp_path))
    page = open(write_index(summary, OutputLayout(str(tmp_path)))).read()
    assert "10 rows (6 ok, 3 error, 1 skipped" in page
    # The reason is grouped (3 rows), shown with the first row's values, not blanked.
    assert re.search(r"<td>3</td><td>prompt_schedule key 40 is past the last frame \(15\) \(and rows like it\)</td>", page)
    text = summary.text(1.0)
    assert "error x3: prompt_schedule key 40 is past the last frame (15)" in text
    # Feature settings a row used are on its card; defaults are not.
    cards = page.split('<div class="card">')[1:]
    first = next(c for c in cards if "p0.mp4" in c and "dreamy" in c)
    second = next(c for c in cards if "p1.mp4" in c and "dreamy" in c)
    assert "<th>prompt_schedule</th>" in first and html.escape('{"0": "a", "8": "b"}', quote=True) in first
    assert "<th>free_init_iterations</th><td>2</td>" in second and "<th>context_loop</th>" in second
    assert "<th>windows</th><td>3</td>" in second and "<th>free_init_iterations</th>" not in first
    # The grid: one row per prompt and seed, one column per checkpoint, each cell that pair's video.
    grid = page.split('<table class="pxc">')[1].split("</table>")[0]
    assert grid.count("<tr>") == 4 and "<th>toon</th><th>dreamy</th>" in grid  # largest group first
    row = next(r for r in grid.split("<tr>") if "prompt 2" in r)
    assert "videos/dreamy/p2.mp4" in row and "videos/toon/p2.mp4" in row
    assert "videos/dreamy/p0.mp4" in next(r for r in grid.split("<tr>") if "prompt 0" in r)


def test_index_styles_stay_inside_the_style_element(tmp_path):
    summary = Summary()
    summary.add(_rows(tmp_path))
    page = open(write_index(summary, OutputLayout(str(tmp_path)))).read()
    head, body = page.split("</head>")
    assert "{" not in head.split("</style>")[1] and "{" not in body.split("<h1>")[0]  # no CSS shown as text
