"""Snakemake adapter: generate one built-in source or benchmark (endofm.data.synthetic)."""

from pathlib import Path

from endofm.config import from_dict
from endofm.data.synthetic import SynthConfig, synthesize
from endofm.logs import job_log

with job_log(snakemake.log[0]):  # noqa: F821 (snakemake is injected)
    cfg = from_dict(SynthConfig, snakemake.params.synthetic, "synthetic")  # noqa: F821
    synthesize(snakemake.wildcards.name, Path(snakemake.output[0]), cfg)  # noqa: F821
