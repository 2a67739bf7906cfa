"""Snakemake adapter: write one pretraining variant's resolved settings for the training job."""

import yaml

from endofm.io import write_text
from endofm.logs import job_log

with job_log(snakemake.log[0]):  # noqa: F821 (snakemake is injected)
    write_text(snakemake.output[0], yaml.safe_dump({"pretrain": snakemake.params.settings}, sort_keys=False))  # noqa: F821
