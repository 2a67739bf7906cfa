"""Snakemake adapter: generate one built-in source, or one draw of a benchmark (endofm.tasks.benchmarks.synthesize_raw)."""

from pathlib import Path

from endofm.config import from_dict
from endofm.data.synthetic import SynthConfig
from endofm.logs import job_log
from endofm.tasks.benchmarks import synthesize_raw

with job_log(snakemake.log[0]):  # noqa: F821 (snakemake is injected)
    cfg = from_dict(SynthConfig, snakemake.params.synthetic, "synthetic")  # noqa: F821
    synthesize_raw(snakemake.params.generator, Path(snakemake.output[0]), cfg)  # noqa: F821
