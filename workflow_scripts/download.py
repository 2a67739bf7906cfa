"""Snakemake adapter: download and unpack one open source (endofm.data.download)."""

from pathlib import Path

from endofm.config import from_dict
from endofm.data.download import fetch_source
from endofm.data.sources import Download
from endofm.logs import job_log

with job_log(snakemake.log[0]):  # noqa: F821 (snakemake is injected)
    overrides = snakemake.params.overrides  # noqa: F821
    fetch_source(
        snakemake.params.source,  # noqa: F821
        raw_dir=Path(snakemake.output[0]),  # noqa: F821
        downloads_dir=Path(snakemake.params.downloads_dir),  # noqa: F821
        overrides=[from_dict(Download, o, "data.download_overrides") for o in overrides] if overrides else None,
    )
