"""The report stage: the paper's tables, figures and an HTML page from a workflow's outputs.

The logic is in :mod:`endofm.report.build` (collect the runs' metrics, summarise, tables, figures, page),
:mod:`~endofm.report.collect` (reading inputs), :mod:`~endofm.report.stats` (paired tests),
:mod:`~endofm.report.tables`, :mod:`~endofm.report.figures` and :mod:`~endofm.report.html`; this package
re-exports what the workflow and the CLI call.

Layer: report (docs/architecture.md). May import: every layer below it and its own modules.
"""

from endofm.report.build import ReportConfig, ReportError, ReportInputs, build_ablation_table, build_report

__all__ = ["ReportConfig", "ReportError", "ReportInputs", "build_ablation_table", "build_report"]
