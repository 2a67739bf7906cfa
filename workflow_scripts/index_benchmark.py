"""Snakemake adapter: index one downstream benchmark's official layout (endofm.tasks.benchmarks)."""

from pathlib import Path

from endofm.logs import job_log
from endofm.tasks.benchmarks import get_benchmark

with job_log(snakemake.log[0]):  # noqa: F821 (snakemake is injected)
    get_benchmark(snakemake.params.benchmark).index(  # noqa: F821
        raw_dir=Path(snakemake.input[0]),  # noqa: F821
        out_dir=Path(snakemake.output[0]).parent,  # noqa: F821
        options=snakemake.params.options,  # noqa: F821
    )
