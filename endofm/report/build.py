"""The report stage's logic: the paper's tables, figures and an HTML page from a workflow's outputs.

:func:`build_report` reads the metrics files of the runs (:mod:`~endofm.report.collect`), summarises them
over seeds with paired tests (:mod:`~endofm.report.stats`), builds the tables (:mod:`~endofm.report.tables`)
and figures (:mod:`~endofm.report.figures`) and writes, under ``out_dir``: ``tables.md``, ``tables.tex``,
``tables.csv`` and (``html=True``) ``index.html`` with every figure embedded, plus ``figures/*.png``.
:mod:`endofm.report` re-exports its public names.

Layer: report (docs/architecture.md). May import: every layer below it (tasks for run records and the
detection threshold, data for the benchmark indexes) and the other report modules.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from endofm import paths
from endofm.config import ConfigError, check_fields, setting
from endofm.data.benchmarks import read_manifest
from endofm.io import atomic_path, write_csv, write_text
from endofm.report.collect import (
    ReportError,
    collect_metrics,
    collect_robustness,
    git_commit,
    hardware,
    read_paper_results,
    read_pretraining,
    read_timings,
    run_dir_of,
    versions,
)
from endofm.report.stats import TESTS
from endofm.report.tables import (
    CURVE_AXES,
    DASH,
    Table,
    ablation_tables,
    add_significance,
    benchmarks_of,
    curve_runs,
    draw_gap_table,
    headline,
    label_efficiency_table,
    long_table,
    method_rows,
    paper_table,
    per_seed,
    pretraining_curve_table,
    robustness_tables,
    row_label,
    secondary_tables,
    summarise,
    table1,
    to_latex,
    to_markdown,
)
from endofm.tasks.benchmarks import BENCHMARKS

log = logging.getLogger(__name__)

__all__ = ["ReportConfig", "ReportError", "ReportInputs", "build_ablation_table", "build_report"]


@dataclass
class ReportConfig:
    """How the report compares methods: the reference row of the paired tests (``reference_method`` with
    its ``main_variant``, which is also the variant Table 1 shows for methods that have it), the test
    (``ttest``: paired t-test; ``permutation``: exact sign-flip test) and its threshold ``alpha``;
    ``ablations``: the named ablations whose tables join the main report (their runs become its inputs).
    """

    reference_method: str = setting(
        "endofm", "Method every other row is compared with (paired by seed); listed first in Table 1"
    )
    main_variant: str = setting(
        "default", "Variant Table 1 shows for a method that ran several (the others belong to ablation tables)"
    )
    test: Literal["ttest", "permutation"] = setting(
        "ttest",
        "Paired test across seeds: ttest (scipy.stats.ttest_rel) or permutation (exact sign-flip; needs >= 6 seeds "
        "for p < 0.05)",
    )
    one_sided: bool = setting(
        False,
        "Test the paper's directional claim: the alternative is that the reference method is ahead of the row "
        "(one-sided); false: that they differ (two-sided)",
    )
    alpha: float = setting(
        0.05,
        "A difference is marked significant when the test's p-value is below this",
        exclusive_minimum=0,
        exclusive_maximum=1,
    )
    ablations: list[str] = setting(
        description="Named ablations whose tables join the main report (their runs become its inputs, so `report` "
        "runs them); every ablation also has its own table from `ablation_<name>`",
        factory=list,
    )

    def __post_init__(self) -> None:
        check_fields(self, "report")
        if self.test not in TESTS:
            raise ConfigError(f"report.test must be one of {', '.join(TESTS)}, got {self.test!r}")


@dataclass
class ReportInputs:
    """What the report reads: metrics files; pretraining ``metrics.csv`` files; the folder of Snakemake
    benchmark files; ``config/paper_results.yaml``; the benchmark indexes and raw data (example frames);
    robustness metrics files (:mod:`endofm.tasks.robustness`). A run's folder is its metrics path with
    ``metrics_root`` replaced by ``runs_root``."""

    metrics: Sequence[str]
    pretrain: Sequence[str] = ()
    timings_dir: str | None = None
    paper_results: str | None = None
    benchmarks_dir: str | None = None
    raw_dir: str | None = None
    metrics_root: str = paths.METRICS
    runs_root: str = paths.FINETUNE
    robustness: Sequence[str] = ()


@dataclass
class Collected:
    """The runs from finished pretrainings (``long``, ``records``, ``summary``) and, apart, the
    pretraining-steps axis (``curve``: :func:`~endofm.report.tables.curve_runs` summarised over seeds)."""

    long: pd.DataFrame
    records: list[dict[str, Any]]
    summary: pd.DataFrame
    pretraining: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    timings: pd.DataFrame = field(default_factory=pd.DataFrame)
    paper: dict[str, Any] = field(default_factory=dict)
    curve: pd.DataFrame = field(default_factory=pd.DataFrame)
    snapshot_runs: int = 0  # metrics files of runs from pretraining snapshots (in ``curve`` only)
    robust: pd.DataFrame = field(default_factory=pd.DataFrame)  # collect_robustness: runs under corruptions


def collect_inputs(inputs: ReportInputs, cfg: ReportConfig, n_seeds: int | None) -> Collected:
    """Read every input and summarise the metrics over seeds, each row compared to the reference."""
    long, records = collect_metrics(inputs.metrics)
    curve = summarise(curve_runs(long), n_seeds, axes=CURVE_AXES)
    long = long[long["pretrain_fraction"] == 1.0].drop(columns="pretrain_fraction")
    snapshot_runs = sum(r["pretrain_fraction"] < 1 for r in records)
    records = [r for r in records if r["pretrain_fraction"] == 1.0]
    if not records:
        raise ReportError("no metrics files of runs from a finished pretraining (only pretraining snapshots)")
    summary = summarise(long, n_seeds)
    reference = (cfg.reference_method, cfg.main_variant)
    summary = add_significance(summary, per_seed(long), reference, cfg.test, cfg.alpha, cfg.one_sided)
    return Collected(
        long=long,
        records=records,
        summary=summary,
        pretraining=read_pretraining(inputs.pretrain),
        timings=read_timings(inputs.timings_dir),
        paper=read_paper_results(inputs.paper_results),
        curve=curve,
        snapshot_runs=snapshot_runs,
        robust=collect_robustness(inputs.robustness),
    )


def _duration(seconds: float) -> str:
    if not pd.notna(seconds):
        return DASH
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 2 * 3600 else f"{seconds / 3600:.1f} h"


def pretraining_costs(data: Collected) -> dict[tuple[str, str], str]:
    """Per (method, variant): wall and CPU time of its pretraining job and its parameter count; methods
    without a pretraining job of this workflow (scratch, external checkpoints) say so."""
    costs = {}
    jobs = data.timings.set_index("job") if not data.timings.empty else pd.DataFrame()
    for (method, variant), info in data.pretraining.items():
        parts = []
        job = f"pretrain/{method}/{variant}"
        if job in jobs.index:
            parts.append(f"{_duration(jobs.loc[job, 'wall_s'])} wall, {_duration(jobs.loc[job, 'cpu_s'])} CPU")
        if info.get("parameters"):
            parts.append(f"{info['parameters'] / 1e6:.2f} M params")
        costs[(method, variant)] = "; ".join(parts) or DASH
    for method, variant in {(r["method"], r["variant"]) for r in data.records}:
        costs.setdefault((method, variant), "no pretraining job")
    return costs


def _start_label(init: str | None) -> str:
    if init is None:
        return DASH
    return "random" if init == "random" else "/".join(Path(init).parts[-2:])


def pretraining_starts(data: Collected) -> dict[tuple[str, str], str]:
    """Per (method, variant): the weights it starts from, ``random`` or the file (its folder and name): the
    ``init`` of its pretraining job, or for runs without one the checkpoint they load (an adapted weights
    file such as ST-Adapter's CLIP) or ``random`` (scratch)."""
    starts = {key: _start_label(info.get("init")) for key, info in data.pretraining.items()}
    for r in data.records:
        key = (r["method"], r["variant"])
        if key not in data.pretraining:
            checkpoint = (r.get("settings") or {}).get("checkpoint")
            starts.setdefault(key, _start_label(checkpoint or "random"))
    return starts


def timing_table(timings: pd.DataFrame) -> Table | None:
    """Wall time per rule (stage): jobs, total and longest wall time, total CPU time, peak memory."""
    if timings.empty:
        return None
    rows = []
    for stage, g in timings.groupby("stage", sort=True):
        rows.append(
            [stage, str(len(g)), _duration(g["wall_s"].sum()), _duration(g["wall_s"].max()),
             _duration(g["cpu_s"].sum()), DASH if g["max_rss_mb"].isna().all() else f"{g['max_rss_mb'].max():.0f} MB"]
        )  # fmt: skip
    caption = (
        "From the rules' Snakemake benchmark files (results/benchmarks/): wall and CPU time per job, summed per stage."
    )
    columns = ["Stage", "Jobs", "Wall (sum)", "Wall (longest job)", "CPU (sum)", "Peak RSS"]
    return Table("timings", "Wall time per rule", caption, columns, [("", rows)])


def make_tables(
    data: Collected, cfg: ReportConfig, ablations: Mapping[str, Mapping[str, str]], synthetic: bool
) -> list[Table]:
    """Table 1, the paper's reported numbers, secondary metrics, ablations and label efficiency."""
    s, paper = data.summary, data.paper
    ref_label = row_label(cfg.reference_method, cfg.main_variant, paper, False)
    common = {"test": cfg.test, "alpha": cfg.alpha, "reference_label": ref_label, "one_sided": cfg.one_sided}
    tables = [
        table1(
            s, paper=paper, costs=pretraining_costs(data), starts=pretraining_starts(data), reference=cfg.reference_method,
            main_variant=cfg.main_variant, synthetic=synthetic, test=cfg.test, alpha=cfg.alpha, one_sided=cfg.one_sided,
        )
    ]  # fmt: skip
    reported = paper_table(paper, benchmarks_of(s), synthetic)
    tables += [reported] if reported else []
    tables += secondary_tables(s, paper=paper, **common)
    tables += ablation_tables(s, ablations, method=cfg.reference_method, **common)
    efficiency = label_efficiency_table(s, paper=paper, reference=cfg.reference_method, main_variant=cfg.main_variant)
    curve = pretraining_curve_table(data.curve, pretraining=data.pretraining, paper=paper, synthetic=synthetic)
    gaps = draw_gap_table(
        data.long, paper=paper, reference=cfg.reference_method, main_variant=cfg.main_variant, test=cfg.test,
        alpha=cfg.alpha, one_sided=cfg.one_sided, synthetic=synthetic,
    )  # fmt: skip
    tables += [t for t in (efficiency, curve, gaps) if t]
    return tables + robustness_tables(
        data.long, data.robust, paper=paper, reference=cfg.reference_method, main_variant=cfg.main_variant, **common
    )


def write_tables(
    out_dir: Path, tables: Sequence[Table], summary: pd.DataFrame, curve: pd.DataFrame | None = None
) -> list[Path]:
    """tables.md, tables.tex and tables.csv (``summary``, then the snapshot rows of ``curve``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if curve is not None and not curve.empty:
        summary = pd.concat([summary.assign(pretrain_fraction=1.0), curve[curve["pretrain_fraction"] < 1]])
    return [
        write_text(out_dir / "tables.md", "# endofm result tables\n\n" + to_markdown(tables)),
        write_text(out_dir / "tables.tex", to_latex(tables)),
        write_csv(out_dir / "tables.csv", long_table(summary)),
    ]


def _example_run(data: Collected, cfg: ReportConfig, benchmark: str) -> dict[str, Any] | None:
    """The run whose predictions illustrate ``benchmark``: the reference method, full fine-tuning,
    clean before paper protocol, full label fraction, main benchmark draw (the report reads its index),
    lowest seed."""
    candidates = [
        r for r in data.records if r["benchmark"] == benchmark and r["label_fraction"] == 1.0 and r.get("draw", 0) == 0
    ]
    if not candidates:
        return None
    return min(
        candidates,
        key=lambda r: (
            (r["method"], r["variant"]) != (cfg.reference_method, cfg.main_variant),
            r["mode"] != "full",
            r["protocol"] != "clean",
            r["seed"],
        ),
    )


def make_figures(data: Collected, inputs: ReportInputs, cfg: ReportConfig) -> dict[str, tuple[str, bytes]]:
    """Every figure there is data for: {file stem: (title, PNG bytes)}."""
    from endofm.report import figures  # here: matplotlib loads only when figures are drawn

    rows = method_rows(data.summary, cfg.reference_method, cfg.main_variant)
    labels = {r: row_label(*r, data.paper, False) for r in rows}
    out: dict[str, tuple[str, Any]] = {
        "pretraining_curves": ("Pretraining: loss terms and entropies per epoch", figures.pretraining_curves(data.pretraining)),
        "seed_bars": ("Table 1 metric per benchmark: bars are means over seeds, points are seeds", figures.seed_bars(data.long, rows, labels)),
        "label_efficiency": ("Table 1 metric versus fraction of labelled training data", figures.label_efficiency(data.summary, rows, labels)),
        "pretrain_curve": ("Read-outs versus pretraining steps (mean ± std over seeds)", figures.pretraining_efficiency(data.curve, data.pretraining, data.paper)),
    }  # fmt: skip
    histories: dict[str, list[tuple[str, pd.DataFrame]]] = {}
    for rec in data.records:
        if (rec["method"], rec["variant"]) not in rows or rec["label_fraction"] != 1.0:
            continue
        path = run_dir_of(rec["path"], inputs.metrics_root, inputs.runs_root) / "history.csv"
        if path.is_file():
            frame = pd.read_csv(path)
            if {"epoch", "loss"} <= set(frame.columns) and not frame.empty:
                label = f"{labels[(rec['method'], rec['variant'])]}, {rec['protocol']}, {rec['mode']}"
                histories.setdefault(rec["benchmark"], []).append((label, frame))
    out["finetuning_curves"] = (
        "Fine-tuning: training loss and selection metric per epoch (mean over seeds)",
        figures.finetuning_curves(histories),
    )
    if not data.robust.empty:
        out["robustness_curves"] = (
            "Robustness: Table 1 metric versus corruption severity (0: clean; mean ± std over seeds)",
            figures.robustness_curves(data.long, data.robust, rows, labels),
        )
        out["robustness_preview"] = robustness_preview(data, inputs)
    if inputs.benchmarks_dir and inputs.raw_dir:
        for bench, entry in BENCHMARKS.items():
            rec = _example_run(data, cfg, bench) if entry.examples else None
            manifest = Path(inputs.benchmarks_dir) / bench / "manifest.csv"
            if rec is None or not manifest.is_file():
                continue
            run_dir = run_dir_of(rec["path"], inputs.metrics_root, inputs.runs_root)
            run = run_dir / "run.json"
            task = json.loads(run.read_text()).get("settings", {}).get("task", {}) if run.is_file() else {}
            fig = entry.examples(
                run_dir, read_manifest(manifest), Path(inputs.raw_dir) / bench, rec.get("test_split", "test"), task
            )
            title = f"{headline(bench).label} test frames of {rec['method']}/{rec['variant']}, {rec['protocol']}, {rec['mode']}, seed {rec['seed']}"
            out[f"{bench}_examples"] = (title, fig)
    return {k: (title, figures.png(fig)) for k, (title, fig) in out.items() if fig is not None}


def robustness_preview(data: Collected, inputs: ReportInputs) -> tuple[str, Any]:
    """(title, Figure or None): one test frame of the first benchmark that has a preview clip (CVC-12k, then
    KUMC) clean and under each corruption and severity of the robustness runs, labels moved with the pixels."""
    from endofm.tasks.robustness import preview_clip, preview_figure  # here: torch loads only when drawn

    if not (inputs.benchmarks_dir and inputs.raw_dir):
        return "", None
    corruptions = {
        name: sorted(int(s) for s in g["severity"].unique())
        for name, g in data.robust.groupby("corruption", sort=False)
    }
    for bench in ("cvc12k", "kumc"):
        manifest = Path(inputs.benchmarks_dir) / bench / "manifest.csv"
        splits = [r["test_split"] for r in data.records if r["benchmark"] == bench and "test_split" in r]
        if not manifest.is_file() or not splits:
            continue
        clip = preview_clip(bench, read_manifest(manifest), Path(inputs.raw_dir) / bench, splits[0])
        if clip is not None:
            title = (
                f"What the corruptions look like: {headline(bench).label} test clip {clip['key']}, one frame clean and "
                "at each severity, with the true labels (green) moved as the pixels"
            )
            return title, preview_figure(clip, corruptions)
    return "", None


def provenance(data: Collected, settings_hash: str | None) -> list[tuple[str, str]]:
    devices = sorted({str(r.get("device")) for r in data.records if r.get("device")})
    hashes = sorted({str(r.get("config_hash")) for r in data.records if r.get("config_hash")})
    items = [
        ("commit", git_commit()),
        ("config hash", settings_hash or "unknown"),
        ("generated", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("data", ", ".join(sorted({str(r.get("data", "unknown")) for r in data.records}))),
        ("runs", f"{len(data.records)} metrics files, {len(hashes)} distinct run settings hashes"),
        ("run devices", ", ".join(devices) or "unknown"),
    ]
    items += [(f"version: {k}", v) for k, v in versions().items()]
    items += [(f"hardware: {k}", ", ".join(v) if isinstance(v, list) else str(v)) for k, v in hardware().items()]
    return items


def build_report(
    inputs: ReportInputs,
    out_dir: str | Path,
    cfg: ReportConfig | None = None,
    *,
    n_seeds: int | None = None,
    synthetic: bool = False,
    ablations: Mapping[str, Mapping[str, str]] | None = None,
    settings_hash: str | None = None,
    parts: Sequence[str] = ("tables", "html"),
) -> list[Path]:
    """Collect ``inputs`` and write under ``out_dir`` the ``parts``: ``tables`` (tables.md, .tex, .csv) and
    ``html`` (index.html and figures/*.png).

    ``n_seeds``: seeds configured per cell (cells with fewer say so); ``synthetic``: the data is the built-in
    corpus (banner, and the paper's column labelled as real-data figures; also when a metrics file says so); ``ablations``: name -> {variant:
    row label}, one table each. Returns the written paths.
    """
    cfg = cfg or ReportConfig()
    out_dir = Path(out_dir)
    data = collect_inputs(inputs, cfg, n_seeds)
    synthetic = synthetic or any(r.get("data") == "synthetic" for r in data.records)
    tables = make_tables(data, cfg, ablations or {}, synthetic)
    timing = timing_table(data.timings)
    unknown = set(parts) - {"tables", "html"}
    if unknown:
        raise ValueError(f"build_report: unknown parts {sorted(unknown)}; expected tables and/or html")
    tables_out = tables + ([timing] if timing else [])
    written = write_tables(out_dir, tables_out, data.summary, data.curve) if "tables" in parts else []
    if "html" not in parts:
        return written
    figures = make_figures(data, inputs, cfg)
    with atomic_path(out_dir / "figures", directory=True) as tmp:
        tmp.mkdir(parents=True, exist_ok=True)
        for name, (_, data_png) in figures.items():
            (tmp / f"{name}.png").write_bytes(data_png)
    written += [out_dir / "figures" / f"{name}.png" for name in figures]
    from endofm.report import html  # here: jinja2 loads only when the page is written

    by_name = {t.key: t for t in tables}
    fig = lambda *names: {figures[n][0]: figures[n][1] for n in names if n in figures}  # noqa: E731
    sections = [
        html.section("table1", "Main results", [by_name["table1"]] + ([by_name["paper"]] if "paper" in by_name else []),
                  fig("seed_bars")),
        html.section("secondary", "Secondary metrics", [t for t in tables if t.key.startswith("secondary_")]),
    ]  # fmt: skip
    ablation = [t for t in tables if t.key.startswith("ablation_")]
    if ablation:
        sections.append(html.section("ablations", "Ablations", ablation))
    if "label_efficiency" in by_name or "label_efficiency" in figures:
        sections.append(
            html.section(
                "labels",
                "Label efficiency",
                [by_name["label_efficiency"]] if "label_efficiency" in by_name else [],
                fig("label_efficiency"),
            )
        )
    if "pretrain_curve" in by_name:
        sections.append(
            html.section(
                "pretraining_steps",
                "Pretraining steps",
                [by_name["pretrain_curve"]],
                fig("pretrain_curve"),
            )
        )
    robustness = [t for t in tables if t.key.startswith("robustness_")]
    if robustness:
        sections.append(
            html.section("robustness", "Robustness", robustness, fig("robustness_curves", "robustness_preview"))
        )
    sections += [
        html.section("curves", "Training curves", figures=fig("pretraining_curves", "finetuning_curves")),
        html.section("examples", "Example predictions", figures=fig("cvc12k_examples", "kumc_examples")),
        html.section("provenance", "Provenance", [timing] if timing else [], items=provenance(data, settings_hash)),
    ]
    r = data.records
    summary = (
        f"{len(r)} fine-tuning runs: methods {', '.join(sorted({x['method'] for x in r}))}; benchmarks "
        f"{', '.join(benchmarks_of(data.summary))}; protocols {', '.join(sorted({x['protocol'] for x in r}))}; "
        f"modes {', '.join(sorted({x['mode'] for x in r}))}; seeds {', '.join(map(str, sorted({x['seed'] for x in r})))}."
    )
    if data.snapshot_runs:
        summary += f" {data.snapshot_runs} more runs start from pretraining snapshots (section Pretraining steps)."
    written.append(write_text(out_dir / "index.html", html.render(sections, synthetic=synthetic, summary=summary)))
    return written


def build_ablation_table(
    metrics: Sequence[str],
    out_path: str | Path,
    name: str,
    variants: Mapping[str, str],
    cfg: ReportConfig | None = None,
    *,
    n_seeds: int | None = None,
) -> Path:
    """One ablation's table alone (Markdown, as in tables.md) from the metrics files of its runs: the
    output of an ``ablation_<name>`` target. ``variants``: {pretraining variant: row label}."""
    cfg = cfg or ReportConfig()
    data = collect_inputs(ReportInputs(metrics=metrics), cfg, n_seeds)
    label = row_label(cfg.reference_method, cfg.main_variant, data.paper, False)
    tables = ablation_tables(
        data.summary, {name: variants}, method=cfg.reference_method, test=cfg.test, alpha=cfg.alpha,
        one_sided=cfg.one_sided,
        reference_label=label,
    )  # fmt: skip
    return write_text(out_path, to_markdown(tables))
