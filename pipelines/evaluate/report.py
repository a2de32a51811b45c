"""Evaluation outputs under `--out`: metrics and leaderboard tables, plots, and an offline report.html.

    metrics.parquet                 one row per video: every setting, status, error and metric
    leaderboard.parquet, .csv       one row per (checkpoint, motion module): means, 95% intervals, n, errors
    plots/<metric>.png              mean and interval per entry (matplotlib)
    plots/<metric>_curve.png        the same against training step, when the modules come from a training run
    plots/radar_<k>.png             VBench's dimensions of leaderboard entry k as a radar chart (with --vbench-models)
    plots/fvd.png, fvd_curve.png    FVD per entry, and against training step (with --fvd-reference)
    report.html                     the leaderboard (click a header to sort), the plots, and a grid of
                                    previews: prompts as rows, checkpoints (x motion modules) as columns

Links are relative, so the folder can be copied and opened anywhere without a network. Scored folders
may come from others: every value placed in the page is escaped (attributes included), only relative
links and http(s)/object-store URIs become links, shown text is cut to `SHOWN` characters, the grid shows
at most `GRID_PROMPTS` prompts x `GRID_ENTRIES` entries, and leaderboard.csv neutralizes cells a
spreadsheet would run as formulas (a leading `=`, `+`, `-`, `@`, tab or CR gets a `'`).
"""

from __future__ import annotations

import html
import io
import os
import urllib.parse

import numpy as np
import pandas as pd

from animatediff_core.io import storage
from animatediff_core.metrics.scores import METRICS

SHOWN = 300  # characters of a value shown in the page
GRID_PROMPTS, GRID_ENTRIES = 200, 60  # the preview grid's most rows and columns
PLOT_ENTRIES = 60  # entries drawn in a plot (best first)
SUMMARY_ROWS = 30  # leaderboard rows printed at the end of the job
FORMULA = ("=", "+", "-", "@", "\t", "\r")

TITLES = {"text_alignment": "text alignment (CLIPScore, 0-100)", "frame_consistency": "frame consistency (consecutive)",
          "frame_consistency_all_pairs": "frame consistency (all pairs)", "temporal_flicker": "temporal flicker (1 = still)",
          "motion_pixel": "motion: mean abs. pixel change (0-255)", "motion_flow": "motion: optical flow (RAFT), pixels",
          "domain_similarity": "domain similarity to the still", "image_alignment": "image alignment to the image prompt (CLIP)",
          "subject_consistency": "VBench subject consistency (DINO)",
          "background_consistency": "VBench background consistency (CLIP)", "temporal_flickering": "VBench temporal flickering (static videos)",
          "dynamic_degree": "VBench dynamic degree (share dynamic)", "aesthetic_quality": "VBench aesthetic quality (LAION)",
          "static_filter": "VBench static filter (share static)"}
RADAR = ("subject_consistency", "background_consistency", "temporal_flickering", "dynamic_degree", "aesthetic_quality")


def write_tables(scored: pd.DataFrame, board: pd.DataFrame, out: str) -> None:
    for name, table in (("metrics.parquet", scored), ("leaderboard.parquet", board)):
        buf = io.BytesIO()
        table.to_parquet(buf, index=False)
        storage.write_bytes_atomic(storage.join(out, name), buf.getvalue())
    storage.write_text_atomic(storage.join(out, "leaderboard.csv"), spreadsheet_safe(board).to_csv(index=False))


def spreadsheet_safe(table: pd.DataFrame) -> pd.DataFrame:
    """Text cells that a spreadsheet would run as a formula get a leading `'` (OWASP's CSV-injection advice);
    numbers stay numbers."""
    table = table.copy()
    for c in table.columns:
        if table[c].dtype == object or pd.api.types.is_string_dtype(table[c]):
            table[c] = table[c].map(lambda v: "'" + v if isinstance(v, str) and v.startswith(FORMULA) else v)
    return table


def _e(value) -> str:
    """A value as page text or an attribute: cut to SHOWN characters, escaped (quotes too)."""
    text = str(value)
    return html.escape(text if len(text) <= SHOWN else text[: SHOWN - 1] + "…", quote=True)


def entry_name(checkpoint: str, module: str, several_modules: bool) -> str:
    return f"{checkpoint} · {module}" if several_modules else str(checkpoint)


def write_plots(board: pd.DataFrame, out: str) -> list[str]:
    """One PNG per metric (plus a learning curve per metric when entries have training steps); relative paths."""
    import matplotlib  # here: only plotting needs it (seconds of import)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    board = board.head(PLOT_ENTRIES)  # best first: a plot of thousands of entries is unreadable and huge
    several = board["motion_module_label"].nunique() > 1
    names = [entry_name(str(c)[:40], str(m)[:40], several) for c, m in zip(board["checkpoint"], board["motion_module_label"])]
    curve = board["step"].notna().any() and board["step"].nunique() > 1
    paths = []
    for m in METRICS:
        mean, low, high = (board[f"{m}_{k}"].to_numpy(float) for k in ("mean", "ci_low", "ci_high"))
        if np.isnan(mean).all():
            continue
        fig, ax = plt.subplots(figsize=(7, 1.2 + 0.32 * len(board)))
        err = np.nan_to_num(np.vstack([mean - low, high - mean]))
        ax.barh(range(len(board)), np.nan_to_num(mean), xerr=err, color="#4c72b0", capsize=3)
        ax.set_yticks(range(len(board)), names)
        ax.invert_yaxis()
        ax.set_title(f"{TITLES[m]}\nmean, 95% CI", fontsize=10)
        paths.append(_save(fig, out, f"plots/{m}.png"))
        if curve:
            fig, ax = plt.subplots(figsize=(7, 4))
            for ckpt, g in board[board["step"].notna()].groupby("checkpoint"):
                g = g.sort_values("step")
                steps = g["step"].to_numpy(float)
                ax.plot(steps, g[f"{m}_mean"], marker="o", label=str(ckpt))
                ax.fill_between(steps, g[f"{m}_ci_low"].to_numpy(float), g[f"{m}_ci_high"].to_numpy(float), alpha=0.2)
            ax.set_xlabel("training step")
            ax.set_title(f"{TITLES[m]} over training", fontsize=10)
            ax.legend(fontsize=8)
            paths.append(_save(fig, out, f"plots/{m}_curve.png"))
    return paths


def write_vbench_plots(board: pd.DataFrame, out: str) -> list[str]:
    """A radar chart of VBench's dimensions per entry (VBench's own figure: one axis per dimension, 0 to 1) and
    FVD per entry and against training step; relative paths, none for what was not computed."""
    import matplotlib.pyplot as plt

    several = board["motion_module_label"].nunique() > 1
    names = [entry_name(c, m, several) for c, m in zip(board["checkpoint"], board["motion_module_label"])]
    paths = []
    dims = [d for d in RADAR if f"{d}_mean" in board and board[f"{d}_mean"].notna().any()]
    if len(dims) >= 3:  # fewer axes make no polygon
        angles = np.linspace(0, 2 * np.pi, len(dims), endpoint=False)
        for k, (name, r) in enumerate(zip(names, board.to_dict("records"))):
            values = np.clip(np.nan_to_num([r[f"{d}_mean"] for d in dims]), 0, 1)
            fig, ax = plt.subplots(figsize=(4, 4), subplot_kw={"projection": "polar"})
            ax.plot(np.append(angles, angles[0]), np.append(values, values[0]), color="#4c72b0")
            ax.fill(angles, values, color="#4c72b0", alpha=0.25)
            ax.set_xticks(angles, [d.replace("_", "\n") for d in dims], fontsize=7)
            ax.set_ylim(0, 1)
            ax.set_title(name, fontsize=9)
            paths.append(_save(fig, out, f"plots/radar_{k}.png"))
    if "fvd" in board and board["fvd"].notna().any():
        fig, ax = plt.subplots(figsize=(7, 1.2 + 0.32 * len(board)))
        ax.barh(range(len(board)), np.nan_to_num(board["fvd"].to_numpy(float)), color="#c44e52")
        ax.set_yticks(range(len(board)), names)
        ax.invert_yaxis()
        ax.set_title("FVD against the reference (lower is closer)", fontsize=10)
        paths.append(_save(fig, out, "plots/fvd.png"))
        trained = board[board["step"].notna() & board["fvd"].notna()]
        if trained["step"].nunique() > 1:
            fig, ax = plt.subplots(figsize=(7, 4))
            for ckpt, g in trained.groupby("checkpoint"):
                g = g.sort_values("step")
                ax.plot(g["step"].to_numpy(float), g["fvd"].to_numpy(float), marker="o", label=str(ckpt))
            ax.set_xlabel("training step")
            ax.set_title("FVD over training", fontsize=10)
            ax.legend(fontsize=8)
            paths.append(_save(fig, out, "plots/fvd_curve.png"))
    return paths


def _save(fig, out: str, rel: str) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    storage.write_bytes_atomic(storage.join(out, rel), buf.getvalue())
    return rel


def _href(uri: str, out: str) -> str:
    """A link from out/report.html, escaped for an attribute: relative for local files, the URI itself for
    http(s) and object stores, nothing for anything else (`javascript:`, `data:`, ...)."""
    if uri and storage.is_local(uri) and storage.is_local(out) and "://" not in uri.replace("file://", "", 1):
        rel = os.path.relpath(storage.fs_and_path(uri)[1], storage.fs_and_path(out)[1])
        return html.escape(urllib.parse.quote(rel.replace(os.sep, "/")), quote=True)
    scheme = str(uri).partition("://")[0].lower()
    return html.escape(uri, quote=True) if scheme in ("http", "https", "s3", "gs", "gcs", "az", "abfs") else ""


def _leaderboard_html(board: pd.DataFrame) -> str:
    shown = [m for m in METRICS if f"{m}_mean" in board and board[f"{m}_mean"].notna().any()]  # no motion_flow without --raft
    fvd = "fvd" in board and board["fvd"].notna().any()
    head = ["rank", "checkpoint", "motion module", "step", "videos", "n", "errors", *[TITLES[m] for m in shown],
            *(["FVD (lower is closer)"] if fvd else [])]
    body = []
    for r in board.to_dict("records"):
        cells = [f'<td data-v="{r["rank"]}">{r["rank"]}</td>', f"<td>{_e(r['checkpoint'])}</td>",
                 f"<td>{_e(r['motion_module_label'])}</td>",
                 f'<td data-v="{"" if pd.isna(r["step"]) else int(r["step"])}">{"" if pd.isna(r["step"]) else int(r["step"])}</td>',
                 *[f'<td data-v="{r[k]}">{r[k]}</td>' for k in ("videos", "n", "errors")]]
        for m in shown:
            mean, low, high = r[f"{m}_mean"], r[f"{m}_ci_low"], r[f"{m}_ci_high"]
            text = "–" if pd.isna(mean) else f"{mean:.3f}" + ("" if pd.isna(low) else f" <small>[{low:.3f}, {high:.3f}]</small>")
            cells.append(f'<td data-v="{"" if pd.isna(mean) else mean}">{text}</td>')
        if fvd:
            value = r["fvd"]
            cells.append(f'<td data-v="{"" if pd.isna(value) else value}">{"–" if pd.isna(value) else f"{value:.2f}"}'
                         f' <small>n={r["fvd_videos"]}</small></td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (f'<table class="sortable"><thead><tr>{"".join(f"<th>{html.escape(h)}</th>" for h in head)}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def _grid_html(scored: pd.DataFrame, board: pd.DataFrame, out: str) -> str:
    """Prompts (each at its first seed) as rows, entries in leaderboard order as columns."""
    several = board["motion_module_label"].nunique() > 1
    entries = list(zip(board["checkpoint"], board["motion_module_label"]))[:GRID_ENTRIES]
    first = scored.sort_values("seed").drop_duplicates(["prompt", "checkpoint", "motion_module_label"])
    cells = {(r["prompt"], r["checkpoint"], r["motion_module_label"]): r for r in first.to_dict("records")}
    prompts = first.sort_values(["category", "prompt"])[["prompt", "category", "seed"]].drop_duplicates("prompt")
    note = ""
    if len(prompts) > GRID_PROMPTS or len(board) > GRID_ENTRIES:
        note = (f"<p>The grid shows {min(len(prompts), GRID_PROMPTS)} of {len(prompts)} prompts and "
                f"{len(entries)} of {len(board)} entries (the best); metrics.parquet has every video.</p>")
    head = "".join(f"<th>{_e(entry_name(c, m, several))}</th>" for c, m in entries)
    rows = []
    for p in prompts.head(GRID_PROMPTS).to_dict("records"):
        tds = [f'<th class="prompt">{_e(p["prompt"])}<br><small>{_e(p["category"])} seed {_e(p["seed"])}</small></th>']
        for c, m in entries:
            r = cells.get((p["prompt"], c, m))
            tds.append(f'<td class="cell">{_cell(r, out)}</td>')
        rows.append(f"<tr>{''.join(tds)}</tr>")
    return f'{note}<table class="grid"><thead><tr><th>prompt</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _cell(r: dict | None, out: str) -> str:
    if r is None:
        return '<span class="err">not in this run</span>'
    if r["status"] != "ok":
        return f'<span class="err" title="{_e(r["error"])}">generation failed</span>'
    tip = _e(" ".join(f"{m}={r[m]:.3f}" for m in METRICS if not pd.isna(r.get(m))) or str(r.get("metrics_error", "")))
    video = _href(r["video_uri"], out)
    media = (f'<img loading="lazy" src="{_href(r["gif_uri"], out)}" alt="preview">' if r.get("gif_uri")
             else f'<video src="{video}" autoplay loop muted></video>')
    return f'<a href="{video}" title="{tip}">{media}</a>'


SORT_JS = """document.querySelectorAll('table.sortable th').forEach((th, col) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0], asc = th.dataset.dir !== 'asc';
  th.dataset.dir = asc ? 'asc' : 'desc';
  const key = td => { const v = td.dataset.v ?? td.textContent, x = parseFloat(v); return isNaN(x) ? (asc ? Infinity : -Infinity) : x; };
  const text = td => td.dataset.v === undefined ? td.textContent : '';
  [...body.rows].sort((a, b) => (key(a.cells[col]) - key(b.cells[col]) || text(a.cells[col]).localeCompare(text(b.cells[col]))) * (asc ? 1 : -1))
    .forEach(r => body.appendChild(r));
}));"""


def write_report(scored: pd.DataFrame, board: pd.DataFrame, out: str) -> str:
    """Write the plots and `out/report.html`; returns the report's URI."""
    plots = write_plots(board, out) + write_vbench_plots(board, out)
    errors = int(board["errors"].sum()) if len(board) else 0
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>animatediff-ray evaluation</title>
<style>body{{font-family:sans-serif;margin:1em}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}}table.sortable th{{cursor:pointer;background:#eef}}
.plots img{{max-width:640px;margin:4px}}.grid img,.grid video{{width:128px;image-rendering:pixelated}}
.grid th.prompt{{max-width:220px;font-weight:normal}}.err{{color:#a00}}small{{color:#666}}</style></head><body>
<h1>Checkpoint evaluation: {len(scored)} videos, {len(board)} entries, {errors} errors</h1>
<p>Means with 95% Student-t intervals over videos (kept inside each metric's range; Wilson intervals for the
0/1 VBench columns). Failed generations and unreadable videos count as errors.
Click a column header to sort.</p>
<h2>Leaderboard</h2>{_leaderboard_html(board)}
<h2>Metrics</h2><div class="plots">{"".join(f'<img src="{_e(p)}" alt="{_e(p)}">' for p in plots)}</div>
<h2>Previews</h2><p>Prompts (first seed) as rows; columns in leaderboard order. Hover a preview for its metrics.</p>
{_grid_html(scored, board, out)}
<script>{SORT_JS}</script></body></html>"""
    uri = storage.join(out, "report.html")
    storage.write_text_atomic(uri, page)
    return uri


def summary(scored: pd.DataFrame, board: pd.DataFrame, seconds: float, report_uri: str) -> str:
    """The job's closing lines: the leaderboard's main columns and where the outputs are."""
    optional = [c for c in ("motion_flow_mean", *(f"{d}_mean" for d in RADAR), "fvd", "image_alignment_mean")  # with --raft,
                # --vbench-models, --fvd-reference, image prompts
                if c in board and board[c].notna().any()]
    cols = ["rank", "checkpoint", "motion_module_label", "n", "errors", "text_alignment_mean",
            "frame_consistency_mean", "motion_pixel_mean", *optional, "domain_similarity_mean"]
    out = report_uri[: -len("report.html")].rstrip("/")
    more = [f"... and {len(board) - SUMMARY_ROWS} more entries (leaderboard.csv)"] if len(board) > SUMMARY_ROWS else []
    return "\n".join([board[cols].head(SUMMARY_ROWS).to_string(index=False, float_format="%.3f"), *more,
                      f"{len(scored)} videos ({int(board['errors'].sum())} errors) evaluated in {seconds:.1f}s; "
                      f"{int(board['truncated_prompts'].sum())} videos had prompts past CLIP's 77 tokens (truncated)",
                      f"leaderboard: {storage.join(out, 'leaderboard.csv')}", f"report: {report_uri}"])
