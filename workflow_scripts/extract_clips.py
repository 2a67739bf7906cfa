"""Snakemake adapter: cut one pretraining source into clips (endofm.data.clips)."""

from pathlib import Path

from endofm.config import from_dict
from endofm.data.clips import ClipConfig, extract_clips
from endofm.data.sources import list_source_videos
from endofm.logs import job_log

with job_log(snakemake.log[0]):  # noqa: F821 (snakemake is injected)
    raw_dir = Path(snakemake.input[0])  # noqa: F821
    source = snakemake.wildcards.source  # noqa: F821
    extract_clips(
        raw_root=raw_dir,
        videos=list_source_videos(source, raw_dir),
        out_dir=Path(snakemake.output.manifest).parent,  # noqa: F821
        source=source,
        cfg=from_dict(ClipConfig, snakemake.params.clips, "clips"),  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
    )
