"""Snakemake adapter: index one downstream benchmark's official layout (endofm.data.benchmarks)."""

from pathlib import Path

from endofm.data.benchmarks import build_manifest
from endofm.logs import job_log

with job_log(snakemake.log[0]):  # noqa: F821 (snakemake is injected)
    build_manifest(
        snakemake.params.benchmark,  # noqa: F821
        raw_dir=Path(snakemake.input[0]),  # noqa: F821
        out_dir=Path(snakemake.output[0]).parent,  # noqa: F821
    )
