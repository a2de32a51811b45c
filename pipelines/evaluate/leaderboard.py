"""The leaderboard: per (checkpoint, motion module), each metric's mean and 95% confidence interval.

Intervals are Student-t intervals over videos, `mean +- t(0.975, n-1) * sd / sqrt(n)`, with `n` the
videos that have a value for that metric (NaN below 2 values: no interval from one sample), clipped to
the metric's range where it has one (`metric_columns.RANGES`); for the 0/1 columns (`dynamic_degree`,
`static_filter`) Wilson score intervals of the share, which stay in [0, 1] and exist even when every video
agrees. Videos are treated as independent draws of (prompt, seed); the suite's prompts are shared by every
entry, so two entries whose intervals overlap may still differ in a paired comparison. Failed generations
and videos that could not be scored are counted in `errors`, never dropped from `videos`. A metric the
scored table lacks (`motion_flow` from tables written before it existed) gets NaN columns.
`temporal_flickering_n` counts the videos VBench's static filter kept (the only ones it scores);
`image_alignment_n` the videos with an image prompt (the only ones it scores).
With an FVD reference, `fvd` is each entry's FVD against it over `fvd_videos` videos (no interval: FVD
is a distance between two sets, not a mean over videos).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from animatediff_core.metrics.columns import BINARY, METRICS, RANGES

ENTRY = ["checkpoint", "motion_module_label"]
CONFIDENCE = 0.95


def mean_ci(values: np.ndarray, confidence: float = CONFIDENCE, bounds: tuple[float | None, float | None] = (None, None),
            binary: bool = False) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of the finite values; NaN where undefined. The interval is clipped to `bounds`;
    `binary` values (0/1) get a Wilson score interval instead."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    n = len(v)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    mean = float(v.mean())
    if binary:
        low, high = wilson(mean, n, confidence)
        return mean, low, high, n
    if n < 2:
        return mean, float("nan"), float("nan"), n
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1) * v.std(ddof=1) / np.sqrt(n))
    low, high = mean - half, mean + half
    if bounds[0] is not None:
        low = max(low, bounds[0])
    if bounds[1] is not None:
        high = min(high, bounds[1])
    return mean, low, high, n


def wilson(share: float, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a proportion `share` of `n` trials: inside [0, 1], non-empty at 0 and 1."""
    z = float(stats.norm.ppf((1 + confidence) / 2))
    center = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, center - half), min(1.0, center + half)


def leaderboard(scored: pd.DataFrame, reference=None) -> pd.DataFrame:
    """One row per entry, best text alignment first: checkpoint, motion_module_label, step, videos,
    n (scored videos), errors, truncated_prompts, and `<metric>_mean/_ci_low/_ci_high` per metric; with an
    FVD `reference` (`pipelines.evaluate.fvd.Reference`), `fvd` and `fvd_videos`."""
    rows = []
    for (checkpoint, module), g in scored.groupby(ENTRY, sort=False, dropna=False):
        failed = (g["status"] != "ok") | (g["metrics_error"].fillna("") != "")
        row = {"checkpoint": checkpoint, "motion_module_label": module, "step": g["step"].iloc[0],
               "videos": len(g), "n": int((~failed).sum()), "errors": int(failed.sum()),
               "truncated_prompts": int(g.loc[~failed, "prompt_truncated"].astype(bool).sum())}
        for m in METRICS:
            values = g.loc[~failed, m].to_numpy() if m in g else np.array([])
            mean, low, high, n = mean_ci(values, bounds=RANGES[m], binary=m in BINARY)
            row.update({f"{m}_mean": mean, f"{m}_ci_low": low, f"{m}_ci_high": high})
            if m in ("domain_similarity", "temporal_flickering", "image_alignment"):
                row[f"{m}_n"] = n  # stills can be missing where videos are not; flickering counts static videos only;
                # image alignment counts the rows with an image prompt
        if reference is not None:
            from pipelines.evaluate.fvd import entry_fvd  # here: only FVD needs it (and Ray Data through it)

            row["fvd"], row["fvd_videos"] = entry_fvd(g[~failed], reference)
        rows.append(row)
    board = pd.DataFrame(rows)
    if board.empty:
        return board
    board["step"] = pd.array(board["step"], dtype="Int64")
    board = board.sort_values(["text_alignment_mean", "checkpoint"], ascending=[False, True], na_position="last")
    board.insert(0, "rank", range(1, len(board) + 1))
    return board.reset_index(drop=True)
