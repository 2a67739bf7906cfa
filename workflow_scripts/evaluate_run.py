"""Snakemake adapter: metrics of one fine-tuning run (endofm.tasks.benchmarks.evaluate_run: imports no torch)."""

from pathlib import Path

from endofm.logs import job_log
from endofm.tasks.benchmarks import evaluate_run

smk = snakemake  # noqa: F821 (snakemake is injected)
with job_log(smk.log[0]):
    evaluate_run(
        Path(smk.input.run).parent,
        smk.input.manifest,
        smk.params.raw_dir,
        smk.output[0],
        synthetic=smk.params.synthetic,
    )
