"""Snakemake adapter: write one pretraining job's method and resolved settings for the training job."""

import yaml

from endofm.io import write_text
from endofm.logs import job_log

with job_log(snakemake.log[0]):  # noqa: F821 (snakemake is injected)
    data = {"method": snakemake.params.method, "pretrain": snakemake.params.settings}  # noqa: F821
    write_text(snakemake.output[0], yaml.safe_dump(data, sort_keys=False))  # noqa: F821
