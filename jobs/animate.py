"""Batch animation: prompt tables x personalized checkpoints (x motion modules) -> videos + metadata + index.html.

    python -m jobs.animate --prompts prompts.parquet --base SD15_DIR --motion-module mm.ckpt \\
        --checkpoints ckpts/ --out s3://bucket/run [--config job.yaml]

Exit code: 0 when every row is ok or skipped (or the failures are within --max-error-fraction);
1 with one line when nothing could run or every row failed (or more than --max-error-fraction did).
"""

from __future__ import annotations

import dataclasses
import logging
import sys

from jobs.config import dump_config, parse_config, run, setup_logging
from pipelines.animate.config import AnimateConfig

log = logging.getLogger("jobs.animate")


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_config(AnimateConfig, argv, __doc__)
    setup_logging(args.log_level)
    # Imported after parsing: --help and a bad flag answer without loading torch or Ray.
    from animatediff_core.io import storage
    from animatediff_core.settings.generation import NAMES as SETTING_NAMES
    from pipelines.animate.job import exit_code, preflight, run_animate
    from pipelines.ray_session import init_ray, require_shared

    if cfg.official_config and not cfg.official_overrides:  # settings given as flags win over the official config's
        cfg = dataclasses.replace(cfg, official_overrides=sorted(set(vars(args)) & set(SETTING_NAMES)))
    prep = preflight(cfg)
    cluster = init_ray()
    if cluster.job_id:
        print(cluster.banner(), flush=True)
    for flag, uri in (("--out", cfg.out), *(("--prompts", p) for p in cfg.prompts)):
        require_shared(uri, flag, cluster.nodes)
    result = run_animate(prep, config_text=dump_config(cfg))  # job.yaml once the run holds --out
    print(result.summary.text(result.seconds))
    print(f"videos: {storage.join(cfg.out, 'videos')}\nmetadata: {prep.layout.metadata}\nindex: {result.index or 'not written'}")
    code, why = exit_code(result.summary, cfg.max_error_fraction)
    if code:
        print(f"error: {why}", file=sys.stderr)
    return code


if __name__ == "__main__":
    run(main)
