"""Checkpoint evaluation: batch-job outputs -> per-video metrics (Ray Data) -> leaderboard -> report.

`modules.py` (which motion modules), `stills.py` and `stage.py` (the actors), `run.py` (the pipeline),
`leaderboard.py` (means and intervals), `report.py` (tables, plots, report.html).
"""
