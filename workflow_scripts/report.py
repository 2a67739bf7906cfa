"""Snakemake adapter: the report's tables or HTML page (endofm.report.build_report)."""

from pathlib import Path

from endofm.config import from_dict
from endofm.logs import job_log
from endofm.report import ReportConfig, ReportInputs, build_report

smk = snakemake  # noqa: F821 (snakemake is injected)
with job_log(smk.log[0]):
    p = smk.params
    inputs = ReportInputs(
        metrics=list(smk.input.metrics),
        pretrain=list(smk.input.get("pretrain", [])),
        timings_dir=p.timings_dir,
        paper_results=smk.input.paper_results,
        benchmarks_dir=p.benchmarks_dir,
        raw_dir=p.raw_dir,
        robustness=list(smk.input.get("robustness", [])),
    )
    build_report(
        inputs,
        Path(smk.output[0]).parent,
        from_dict(ReportConfig, p.settings, "report"),
        n_seeds=p.n_seeds,
        synthetic=p.synthetic,
        ablations=p.ablations,
        settings_hash=p.config_hash,
        parts=p.parts,
    )
