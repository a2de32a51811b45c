"""Curate a generated set into a dataset: keep the rows an expression selects, write them as others load them.

    python -m jobs.curate --run OUT [--scores EVAL_OUT] --where "text_alignment > 25" --format webdataset --out DIR
    python -m jobs.train --data DIR --base SD15_DIR --storage runs        # train on the curated set

Flags: pipelines/curate/config.py (CurateRun). Formats: webdataset (tar shards), videofolder (Hugging
Face's metadata.jsonl layout), parquet (a manifest naming the videos where they are).
"""

from __future__ import annotations

from jobs.config import dump_config, parse_config, run, setup_logging
from pipelines.curate.config import CurateRun


def main(argv: list[str] | None = None) -> int:
    job, args = parse_config(CurateRun, argv, __doc__)
    setup_logging(args.log_level)
    # Imported after parsing: --help and a bad flag answer without loading torch or Ray.
    from animatediff_core.io import storage
    from pipelines.curate.job import curate, select, summary_text
    from pipelines.ray_session import init_ray

    selected = select(job)  # a bad --run, --scores or --where fails here, in one line, before Ray starts
    init_ray(include_dashboard=False)
    storage.write_text_atomic(storage.join(job.out, "job.yaml"), dump_config(job))
    print(summary_text(curate(job, selected)))
    return 0


if __name__ == "__main__":
    run(main)
