"""Snakemake adapter: one ablation's table (endofm.report.build_ablation_table)."""

from endofm.config import from_dict
from endofm.logs import job_log
from endofm.report import ReportConfig, build_ablation_table

smk = snakemake  # noqa: F821 (snakemake is injected)
with job_log(smk.log[0]):
    build_ablation_table(
        list(smk.input.metrics),
        smk.output[0],
        smk.wildcards.ablation,
        smk.params.variants,
        from_dict(ReportConfig, smk.params.settings, "report"),
        n_seeds=smk.params.n_seeds,
    )
