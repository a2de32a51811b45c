"""The curation job (`jobs.curate`): a batch job's output, joined with its evaluation's scores, filtered by
`--where`, written as a dataset others load (`config.py` its settings, `job.py` the work)."""
