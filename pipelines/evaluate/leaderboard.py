"""The leaderboard: per (checkpoint, motion module), each metric's mean and 95% confidence interval.

Intervals are Student-t intervals over videos, `mean +- t(0.975, n-1) * sd / sqrt(n)`, with `n` the
videos that have a value for that metric (NaN below 2 values: no interval from one sample). Videos are
treated as independent draws of (prompt, seed); the suite's prompts are shared by every entry, so two
entries whose intervals overlap may still differ in a paired comparison. Failed generations and
videos that could not be scored are counted in `errors`, never dropped from `videos`. A metric the
scored table lacks (`motion_flow` from tables written before it existed) gets NaN columns.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from animatediff_core.metrics import METRICS

ENTRY = ["checkpoint", "motion_module_label"]
CONFIDENCE = 0.95


def mean_ci(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of the finite values; NaN where undefined."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    n = len(v)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    mean = float(v.mean())
    if n < 2:
        return mean, float("nan"), float("nan"), n
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1) * v.std(ddof=1) / np.sqrt(n))
    return mean, mean - half, mean + half, n


def leaderboard(scored: pd.DataFrame) -> pd.DataFrame:
    """One row per entry, best text alignment first: checkpoint, motion_module_label, step, videos,
    n (scored videos), errors, truncated_prompts, and `<metric>_mean/_ci_low/_ci_high` per metric."""
    rows = []
    for (checkpoint, module), g in scored.groupby(ENTRY, sort=False, dropna=False):
        failed = (g["status"] != "ok") | (g["metrics_error"].fillna("") != "")
        row = {"checkpoint": checkpoint, "motion_module_label": module, "step": g["step"].iloc[0],
               "videos": len(g), "n": int((~failed).sum()), "errors": int(failed.sum()),
               "truncated_prompts": int(g.loc[~failed, "prompt_truncated"].astype(bool).sum())}
        for m in METRICS:
            mean, low, high, n = mean_ci(g.loc[~failed, m].to_numpy() if m in g else np.array([]))
            row.update({f"{m}_mean": mean, f"{m}_ci_low": low, f"{m}_ci_high": high})
            if m == "domain_similarity":
                row["domain_similarity_n"] = n  # stills can be missing where videos are not
        rows.append(row)
    board = pd.DataFrame(rows)
    if board.empty:
        return board
    board["step"] = pd.array(board["step"], dtype="Int64")
    board = board.sort_values(["text_alignment_mean", "checkpoint"], ascending=[False, True], na_position="last")
    board.insert(0, "rank", range(1, len(board) + 1))
    return board.reset_index(drop=True)
