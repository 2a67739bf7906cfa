"""The report's tables from the collected metrics: seed summaries (mean, sample std, n), Table 1 in the
paper's layout, secondary metrics, ablations and label efficiency, each rendered to Markdown, LaTeX
(booktabs) and HTML from one :class:`Table`.

Every number is a mean over the seeds of one cell of the experiment matrix; values are shown ×100 as in
the paper. A cell with fewer seeds than configured says so (``n=2 of 3``); a difference to the reference
row is marked only when the paired test over shared seeds (:mod:`endofm.report.stats`) says so. Tables show
only what was run: no row, block or column of dashes alone.

Layer: report (docs/architecture.md). May import: every layer below it (tasks included) and the other report modules.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from endofm.metrics import mean_std
from endofm.report.collect import AXES
from endofm.report.stats import compare, describe
from endofm.tasks.benchmarks import BENCHMARKS, Headline
from endofm.tasks.evaluation import READOUT_KEYS

PROTOCOL_ORDER = ("paper", "clean")
MODE_LABELS = {"full": "full fine-tuning", "frozen": "frozen backbone"}
DASH = "–"
#: Marks of the paper numbers' tags (docs/original.md): verified numbers carry none.
TAG_MARKS = {"verified": "", "derived": " (d)", "unverified": " (u)"}
TAG_LEGEND = "(d): derived from margins the paper states; (u): unverified (secondary sources); unmarked: verified"


def headline(benchmark: str) -> Headline:
    """The Table 1 column of ``benchmark`` (its registry entry's; a bare name for one not registered)."""
    return BENCHMARKS[benchmark].headline if benchmark in BENCHMARKS else Headline(benchmark, "", "")


@dataclass
class Table:
    """One table: named blocks of rows (a block per protocol and mode, say) under shared columns."""

    key: str
    title: str
    caption: str
    columns: list[str]
    blocks: list[tuple[str, list[list[str]]]] = field(default_factory=list)
    #: leading columns that name the row (HTML row headers)
    labels: int = 1
    #: HTML only: columns shown as a second line in the cells of the column before them (the paper's numbers)
    stacked: tuple[int, ...] = ()


def is_empty(cells: Sequence[str]) -> bool:
    return all(c == DASH for c in cells)


def drop_empty(
    blocks: Sequence[tuple[str, list[list[str]]]], columns: Sequence[str], labels: int = 1
) -> tuple[list[str], list[tuple[str, list[list[str]]]]]:
    """``columns`` and ``blocks`` without the rows whose cells after the ``labels`` row labels are all dashes,
    the blocks left without rows and the columns that are dashes in every remaining row."""
    kept = [(title, [r for r in rows if not is_empty(r[labels:])]) for title, rows in blocks]
    kept = [(title, rows) for title, rows in kept if rows]
    rows = [r for _, rows in kept for r in rows]
    keep = [i for i in range(len(columns)) if i < labels or not is_empty([r[i] for r in rows])]
    pick = lambda row: [row[i] for i in keep]  # noqa: E731
    return pick(columns), [(title, [pick(r) for r in rows]) for title, rows in kept]


# ---------------------------------------------------------------------------------------------- summaries


def summarise(long: pd.DataFrame, n_expected: int | None = None, axes: Sequence[str] = AXES) -> pd.DataFrame:
    """Mean, sample std (ddof 1; NaN for one value) and n over the replicates of every run cell (``axes``) ×
    metric, from :func:`collect_metrics`' frame: its seeds, on every benchmark draw it ran on (pooled).
    ``n`` counts the finite values; ``seeds`` lists their seeds (``seed@draw<k>`` on a draw other than 0);
    ``n_expected`` is ``n_expected`` seeds times the cell's draws."""
    long = _with_replicates(long)
    finite = long[pd.to_numeric(long["value"], errors="coerce").notna()]
    keys = [*axes, "metric"]
    cells = long[keys].drop_duplicates()
    agg = (
        finite.groupby(keys, sort=False)
        .agg(n=("value", "count"), mean=("value", "mean"), std=("value", "std"), seeds=("replicate", _join))
        .reset_index()
    )
    out = cells.merge(agg, on=keys, how="left")
    out["n"] = out["n"].fillna(0).astype(int)
    out["seeds"] = out["seeds"].fillna("")
    expected: Any = pd.NA
    if n_expected:
        draws = long.groupby(keys, sort=False)["draw"].nunique().rename("draws").reset_index()
        expected = out[keys].merge(draws, on=keys, how="left")["draws"].fillna(1).astype(int) * n_expected
    out.insert(out.columns.get_loc("n") + 1, "n_expected", expected)
    return out.reset_index(drop=True)


def _with_replicates(long: pd.DataFrame) -> pd.DataFrame:
    """``long`` with a ``draw`` column (0 when absent) and a ``replicate`` label per row (see :func:`summarise`)."""
    long = long.assign(draw=long["draw"] if "draw" in long else 0)
    labels = [str(s) if d == 0 else f"{s}@draw{d}" for d, s in zip(long["draw"], long["seed"], strict=True)]
    return long.assign(replicate=labels)


def _join(labels: pd.Series) -> str:
    return ";".join(sorted(labels, key=lambda x: (len(x.split("@")), x)))


def per_seed(long: pd.DataFrame) -> dict[tuple, dict[tuple[int, int], float]]:
    """{(AXES..., metric): {(draw, seed): value}} for the paired tests: two runs pair when they share the
    benchmark draw and the seed."""
    out: dict[tuple, dict[tuple[int, int], float]] = {}
    draws = long["draw"] if "draw" in long else [0] * len(long)
    for row, draw in zip(long.itertuples(index=False), draws, strict=True):
        key = (*(getattr(row, a) for a in AXES), row.metric)
        out.setdefault(key, {})[(int(draw), int(row.seed))] = float(row.value)
    return out


def add_significance(
    summary: pd.DataFrame,
    values: Mapping[tuple, Mapping[Any, float]],
    reference: tuple[str, str],
    test: str,
    alpha: float,
    one_sided: bool = False,
) -> pd.DataFrame:
    """``summary`` with the paired comparison of each row to the ``reference`` (method, variant) row of the
    same benchmark, protocol, mode, label fraction and metric: ``n_pairs``, ``p_value``, ``significant``.
    ``one_sided``: the test's alternative is that the reference is ahead (the paper's claim)."""
    out = summary.copy()
    cols = {"reference": [], "n_pairs": [], "p_value": [], "significant": []}
    for row in summary.itertuples(index=False):
        ref_key = (row.benchmark, *reference, row.protocol, row.mode, row.label_fraction, row.metric)
        key = (row.benchmark, row.method, row.variant, row.protocol, row.mode, row.label_fraction, row.metric)
        if (row.method, row.variant) == tuple(reference) or ref_key not in values:
            cols["reference"].append("")
            cols["n_pairs"].append(0)
            cols["p_value"].append(math.nan)
            cols["significant"].append(False)
            continue
        result = compare(values.get(key, {}), values[ref_key], test, alpha, "less" if one_sided else "two-sided")
        cols["reference"].append("/".join(reference))
        cols["n_pairs"].append(result.n_pairs)
        cols["p_value"].append(result.p_value)
        cols["significant"].append(result.significant)
    for name, column in cols.items():
        out[name] = column
    return out


# ---------------------------------------------------------------------------------------------- cells


def fmt_value(x: float, scale: float = 100.0, digits: int = 1) -> str:
    return DASH if x is None or not math.isfinite(float(x)) else f"{float(x) * scale:.{digits}f}"


def fmt_cell(row: Any | None, scale: float = 100.0, digits: int = 1) -> str:
    """``mean ± std (n=k)``; ``(n=k of m)`` when fewer seeds than the m configured; ``*`` when the paired
    test finds a significant difference to the reference row."""
    if row is None or int(row.n) == 0:
        return DASH
    text = fmt_value(row.mean, scale, digits)
    if int(row.n) > 1:
        text += f" ± {fmt_value(row.std, scale, digits)}"
    expected = getattr(row, "n_expected", None)
    short = expected is not None and not pd.isna(expected) and int(row.n) < int(expected)
    text += f" (n={int(row.n)} of {int(expected)})" if short else f" (n={int(row.n)})"
    if bool(getattr(row, "significant", False)):
        text += " *"
    return text


def fmt_seeds(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    """:func:`fmt_cell` of raw per-seed values (mean, sample std, n); a dash when there are none."""
    return fmt_cell(SimpleNamespace(**mean_std(values)), scale, digits) if len(values) else DASH


class Cells:
    """Lookup of summary rows by (benchmark, method, variant, protocol, mode, label_fraction, metric)."""

    def __init__(self, summary: pd.DataFrame):
        self.rows = {(*(getattr(r, a) for a in AXES), r.metric): r for r in summary.itertuples(index=False)}

    def get(self, *key: Any) -> Any | None:
        return self.rows.get(tuple(key))


def blocks_of(summary: pd.DataFrame) -> list[tuple[str, str]]:
    """(protocol, mode) pairs present, paper before clean and full before frozen."""
    present = set(zip(summary["protocol"], summary["mode"], strict=True))
    order = lambda p, values: (values.index(p) if p in values else len(values), p)  # noqa: E731
    return sorted(present, key=lambda pm: (order(pm[0], PROTOCOL_ORDER), order(pm[1], tuple(MODE_LABELS))))


def block_title(protocol: str, mode: str, fraction: float | None = None) -> str:
    text = f"{protocol} protocol, {MODE_LABELS.get(mode, mode)}"
    return text if fraction is None or fraction == 1.0 else f"{text}, {fraction:g} of the labels"


def benchmarks_of(summary: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(summary["benchmark"]))
    return [b for b in BENCHMARKS if b in present] + [b for b in present if b not in BENCHMARKS]


def method_rows(summary: pd.DataFrame, reference: str, main_variant: str) -> list[tuple[str, str]]:
    """The (method, variant) rows of Table 1: each method once, with ``main_variant`` when it has it (its
    other variants belong to the ablation tables), else every variant it ran; ``reference`` first."""
    pairs = list(dict.fromkeys(zip(summary["method"], summary["variant"], strict=True)))
    methods = sorted({m for m, _ in pairs}, key=lambda m: (m != reference, m))
    rows = []
    for method in methods:
        variants = [v for m, v in pairs if m == method]
        rows += [(method, main_variant)] if main_variant in variants else [(method, v) for v in sorted(variants)]
    return rows


def row_label(method: str, variant: str, paper: Mapping[str, Any], several: bool) -> str:
    entry = paper.get("methods", {}).get(method, {})
    label = entry.get("label", method)
    return f"{label} ({variant})" if several else label


def full_fraction(summary: pd.DataFrame) -> float:
    return float(summary["label_fraction"].max())


# ---------------------------------------------------------------------------------------------- tables


def table1(
    summary: pd.DataFrame,
    *,
    paper: Mapping[str, Any],
    costs: Mapping[tuple[str, str], str],
    starts: Mapping[tuple[str, str], str] | None = None,
    reference: str,
    main_variant: str,
    synthetic: bool,
    test: str,
    alpha: float,
    one_sided: bool = False,
) -> Table:
    """Methods × benchmarks (PolypDiag F1, CVC-12k Dice, KUMC F1) at the full label fraction, one block per
    protocol and mode, with each method's pretraining cost and the paper's reported numbers beside ours (in
    HTML, below ours). A method without runs in a block, and a benchmark without runs, are left out."""
    cells, fraction = Cells(summary), full_fraction(summary)
    rows = method_rows(summary, reference, main_variant)
    several = len({m for m, _ in rows}) < len(rows)
    paper_head = "paper (real data)†" if synthetic else "paper†"
    ours = {
        (protocol, mode, method, variant, b): fmt_cell(
            cells.get(b, method, variant, protocol, mode, fraction, headline(b).metric)
        )
        for protocol, mode in blocks_of(summary)
        for method, variant in rows
        for b in benchmarks_of(summary)
    }
    benches = [b for b in benchmarks_of(summary) if not is_empty([v for k, v in ours.items() if k[-1] == b])]
    starts = starts or {}
    columns = ["Method", "Start", "Pretraining cost"]
    for b in benches:
        columns += [f"{headline(b).label} {headline(b).metric_label}", paper_head]
    blocks = []
    for protocol, mode in blocks_of(summary):
        lines = []
        for method, variant in rows:
            results = [ours[(protocol, mode, method, variant, b)] for b in benches]
            if is_empty(results):
                continue
            line = [
                row_label(method, variant, paper, several),
                starts.get((method, variant), DASH),
                costs.get((method, variant), DASH),
            ]
            for b, result in zip(benches, results, strict=True):
                line += [result, paper_cell(paper, method, b)]
            lines.append(line)
        if lines:
            blocks.append((block_title(protocol, mode), lines))
    ref_label = row_label(reference, main_variant, paper, False)
    drawn = "seeds" in summary and summary["seeds"].astype(str).str.contains("@draw").any()
    unit, pairing = ("(draw, seed) pairs", "draw and seed") if drawn else ("seeds", "seed")
    caption = (
        f"Mean ± sample std (×100) over fine-tuning {'seeds on every benchmark draw the cell ran on, pooled' if drawn else 'seeds'}, "
        f"n = {unit}; 'n=k of m' marks a cell with fewer than the m configured. * : differs from {ref_label} at "
        f"p < {alpha:g}, {describe(test, one_sided, ref_label)}, paired by {pairing} "
        f"(no mark: not significant or fewer than 2 shared {unit}). Start: the weights a method starts from (random, "
        f"or the file its pretraining starts from, or that it adapts without pretraining). Pretraining cost: wall and "
        f"CPU time of the pretraining job (Snakemake benchmark file) and parameter count."
    )
    if synthetic:
        caption += (
            " † The paper's real-data figures (Wang et al., MICCAI 2023: paper protocol, full fine-tuning), shown for "
            "reference, not as a target: these runs use the built-in synthetic corpus, whose numbers prove the "
            f"machinery, not clinical accuracy. {TAG_LEGEND}."
        )
    else:
        caption += f" † Numbers reported in the paper (paper protocol, full fine-tuning). {TAG_LEGEND}."
    stacked = tuple(range(4, len(columns), 2))
    return Table("table1", "Table 1: fine-tuning results", caption, columns, blocks, stacked=stacked)


def paper_cell(paper: Mapping[str, Any], method: str, benchmark: str) -> str:
    cell = paper.get("methods", {}).get(method, {}).get("results", {}).get(benchmark)
    if not cell:
        return DASH
    text = f"{float(cell['mean']):.1f}"
    if cell.get("std") is not None:
        text += f" ± {float(cell['std']):.1f}"
    return text + TAG_MARKS[cell["tag"]]


def paper_table(paper: Mapping[str, Any], benches: Sequence[str], synthetic: bool) -> Table | None:
    """Every entry of ``config/paper_results.yaml`` with its tags and source."""
    methods = paper.get("methods", {})
    if not methods:
        return None
    benches = [b for b in BENCHMARKS if b in benches or not benches] or list(BENCHMARKS)
    columns = ["Method", "Pretraining (GPU h)"] + [f"{headline(b).label} {headline(b).metric_label}" for b in benches]
    rows = []
    for name, entry in methods.items():
        hours = entry.get("pretrain_hours")
        hours_text = DASH if not hours else f"{float(hours['value']):.1f}" + TAG_MARKS.get(hours.get("tag"), "")
        rows.append([entry.get("label", name), hours_text] + [paper_cell(paper, name, b) for b in benches])
    caption = (
        f"Source: {paper.get('source', 'unknown')}. Values in percent; {TAG_LEGEND} (read in the paper or the "
        "official README)."
    )
    if synthetic:
        caption += " These are the paper's real-data figures, not targets for the synthetic corpus."
    return Table("paper", "Reported in the paper (real data)", caption, columns, [("", rows)])


def secondary_tables(
    summary: pd.DataFrame,
    *,
    paper: Mapping[str, Any],
    test: str,
    alpha: float,
    reference_label: str,
    one_sided: bool = False,
) -> list[Table]:
    """Per benchmark: every metric the files carry other than the Table 1 one, per method and variant; split
    into tables by the benchmark's ``secondary_groups`` (its registry entry) and one of the frozen read-outs (a row per method and read-out)."""
    cells, fraction = Cells(summary), full_fraction(summary)
    note = f"* : differs from {reference_label} at p < {alpha:g} ({describe(test, one_sided, reference_label)})."
    tables = []
    for b in benchmarks_of(summary):
        sub = summary[(summary["benchmark"] == b) & (summary["label_fraction"] == fraction)]
        present = [m for m in dict.fromkeys(sub["metric"]) if m != headline(b).metric]
        order = list(BENCHMARKS[b].secondary) if b in BENCHMARKS else []
        readouts = [m for m in present if "[" in m]
        metrics = [m for m in order if m in present]
        metrics += sorted(m for m in present if m not in order and m not in readouts)
        pairs = list(dict.fromkeys(zip(sub["method"], sub["variant"], strict=True)))
        counts = pd.Series([m for m, _ in pairs]).value_counts()
        label = {(m, v): row_label(m, v, paper, counts[m] > 1) for m, v in pairs}
        groups = [("", metrics)]
        for suffix, prefix in BENCHMARKS[b].secondary_groups if b in BENCHMARKS else ():
            split = [m for m in groups[0][1] if m.startswith(prefix)]
            groups = [("", [m for m in groups[0][1] if m not in split]), *groups[1:], (suffix, split)]
        for suffix, group in groups:
            blocks = [
                (block_title(protocol, mode),
                 [[label[(method, variant)]] + [fmt_cell(cells.get(b, method, variant, protocol, mode, fraction, m))
                                              for m in group] for method, variant in pairs])
                for protocol, mode in blocks_of(sub)
            ]  # fmt: skip
            columns, blocks = drop_empty(blocks, ["Method", *group])
            if len(columns) < 2:
                continue
            title = f"{headline(b).label}: {suffix or 'secondary metrics'}"
            caption = f"{title}, mean ± sample std (×100) over seeds with n. {note}"
            key = f"secondary_{b}" + (f"_{re.sub(r'[^a-z0-9]+', '_', suffix.lower())}" if suffix else "")
            tables.append(Table(key, title, caption, columns, blocks))
        if readouts:
            names = sorted({m.rstrip("]").split("[", 1)[1] for m in readouts})
            keys = [k for k in READOUT_KEYS if any(m.startswith(f"{k}[") for m in readouts)]
            blocks = [
                (block_title(protocol, mode),
                 [[label[(method, variant)], name]
                  + [fmt_cell(cells.get(b, method, variant, protocol, mode, fraction, f"{k}[{name}]")) for k in keys]
                  for method, variant in pairs for name in names])
                for protocol, mode in blocks_of(sub)
            ]  # fmt: skip
            columns, blocks = drop_empty(blocks, ["Method", "Read-out", *keys], labels=2)
            caption = (
                f"{headline(b).label}: the frozen backbone's read-outs, mean ± sample std (×100) over seeds with n. "
                f"{note}"
            )
            title = f"{headline(b).label}: frozen read-outs"
            tables.append(Table(f"secondary_{b}_readouts", title, caption, columns, blocks, labels=2))
    return tables


def ablation_tables(
    summary: pd.DataFrame,
    ablations: Mapping[str, Mapping[str, str]],
    *,
    method: str = "endofm",
    test: str,
    alpha: float,
    reference_label: str,
    one_sided: bool = False,
) -> list[Table]:
    """One table per ablation (name -> {variant: row label}): the runs of those variants, Table 1 metrics, one
    block per protocol and mode; ``method``'s rows, or with several methods on the variants (an ablation's
    ``methods``) one row per method and variant, ``method`` first. The caption names the rows without runs."""
    cells, fraction = Cells(summary), full_fraction(summary)
    benches = benchmarks_of(summary)
    tables = []
    for name, variants in ablations.items():
        ran_on = summary[summary["variant"].isin(list(variants))]["method"].unique().tolist()
        methods = sorted(set(ran_on) | {method}, key=lambda m: (m != method, m))
        several = len(methods) > 1
        columns = ["Variant"] + [f"{headline(b).label} {headline(b).metric_label}" for b in benches]
        blocks = []
        for protocol, mode in blocks_of(summary[summary["method"].isin(methods)]) or blocks_of(summary):
            lines = [
                [f"{m}: {label}" if several else label]
                + [fmt_cell(cells.get(b, m, v, protocol, mode, fraction, headline(b).metric)) for b in benches]
                for m in methods
                for v, label in variants.items()
            ]
            blocks.append((block_title(protocol, mode), lines))
        shown, blocks = drop_empty(blocks, columns)
        ran = {r[0] for _, rows in blocks for r in rows}
        who = ", ".join(methods)
        caption = (
            f"Ablation '{name}': {who} pretrained with each variant, then fine-tuned; mean ± sample std (×100) "
            f"over seeds with n. * : differs from {reference_label} at p < {alpha:g} ({describe(test, one_sided, reference_label)})."
        )
        expected = [f"{m}: {label}" if several else label for m in methods for label in variants.values()]
        missing = [label for label in expected if label not in ran]
        if missing:
            caption += f" Not run: {', '.join(missing)}."
        tables.append(Table(f"ablation_{name}", f"Ablation: {name}", caption, shown, blocks))
    return tables


def label_efficiency_table(
    summary: pd.DataFrame, *, paper: Mapping[str, Any], reference: str, main_variant: str
) -> Table | None:
    """Table 1 metric per method versus the fraction of labelled training data: the methods, benchmarks,
    protocols and modes with runs at several fractions; None when there are none."""
    fractions = sorted(summary["label_fraction"].unique())
    if len(fractions) < 2:
        return None
    cells = Cells(summary)
    rows = method_rows(summary, reference, main_variant)
    blocks = []
    for b in benchmarks_of(summary):
        for protocol, mode in blocks_of(summary[summary["benchmark"] == b]):
            lines = []
            for m, v in rows:
                line = [fmt_cell(cells.get(b, m, v, protocol, mode, f, headline(b).metric)) for f in fractions]
                if sum(c != DASH for c in line) >= 2:
                    lines.append([row_label(m, v, paper, False), *line])
            blocks.append((f"{headline(b).label} {headline(b).metric_label}, {block_title(protocol, mode)}", lines))
    columns, blocks = drop_empty(blocks, ["Method"] + [f"{f:g}" for f in fractions])
    if not blocks:
        return None
    caption = (
        "Table 1 metric (×100, mean ± sample std over seeds with n) versus the fraction of labelled training data."
    )
    return Table("label_efficiency", "Label efficiency", caption, columns, blocks)


def _gap_metrics(benchmark: str) -> list[tuple[str, str]]:
    """(metric key, row title) of a benchmark in the per-draw gap table: its Table 1 metric, then its
    threshold-free score (:attr:`endofm.tasks.benchmarks.Benchmark.threshold_free`) if it has one."""
    head = headline(benchmark)
    extra = BENCHMARKS[benchmark].threshold_free if benchmark in BENCHMARKS else None
    return [(head.metric, f"{head.label} {head.metric_label}")] + (
        [(extra[0], f"{head.label} {extra[1]}")] if extra else []
    )


def _by_replicate(frame: pd.DataFrame) -> dict[tuple[int, int], float]:
    return {(int(r.draw), int(r.seed)): float(r.value) for r in frame.itertuples(index=False)}


def draw_gap_table(
    long: pd.DataFrame,
    *,
    paper: Mapping[str, Any],
    reference: str,
    main_variant: str,
    test: str,
    alpha: float,
    one_sided: bool = False,
    synthetic: bool = True,
) -> Table | None:
    """How much of a gap is the benchmark draw: for every block (protocol, mode) that ran on several draws,
    per benchmark (Table 1 metric, and its threshold-free score) and method, the gap ``reference - method`` (×100) of the means over seeds on
    each draw with twice the pooled seed std (sqrt of the mean of the two seed variances), the gaps' mean ± std
    across draws, and the paired test over the (draw, seed) pairs. None when no block has several draws."""
    if "draw" not in long or long["draw"].nunique() < 2:
        return None
    data = long[long["label_fraction"] == 1.0]
    draws = sorted(int(d) for d in data["draw"].unique())
    rows = [r for r in method_rows(summarise(data), reference, main_variant) if r[0] != reference]
    blocks = []
    for protocol, mode in blocks_of(data):
        block = data[(data["protocol"] == protocol) & (data["mode"] == mode)]
        if block["draw"].nunique() < 2:
            continue
        lines = []
        for b, metric, title in [(name, m, t) for name in benchmarks_of(block) for m, t in _gap_metrics(name)]:
            cell = block[(block["benchmark"] == b) & (block["metric"] == metric)]
            cell = cell[pd.to_numeric(cell["value"], errors="coerce").notna()]
            ref = cell[(cell["method"] == reference) & (cell["variant"] == main_variant)]
            ref_values = _by_replicate(ref)
            for method, variant in rows:
                own = cell[(cell["method"] == method) & (cell["variant"] == variant)]
                if own.empty or ref.empty:
                    continue
                gaps, texts = [], []
                for d in draws:
                    x, y = ref.loc[ref["draw"] == d, "value"], own.loc[own["draw"] == d, "value"]
                    if x.empty or y.empty:
                        texts.append(DASH)
                        continue
                    gap = float(x.mean() - y.mean())
                    spread = 2 * math.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2) if min(len(x), len(y)) > 1 else math.nan
                    gaps.append(gap)
                    texts.append(f"{gap * 100:+.1f} (2σ {fmt_value(spread)})")
                result = compare(ref_values, _by_replicate(own), test, alpha, "greater" if one_sided else "two-sided")
                across = f"{np.mean(gaps) * 100:+.1f} ± {fmt_value(np.std(gaps, ddof=1)) if len(gaps) > 1 else DASH}"
                p = DASH if not math.isfinite(result.p_value) else f"{result.p_value:.3g} ({result.n_pairs})"
                label = row_label(method, variant, paper, False)
                lines.append([title, label, *texts, across, p])
        if lines:
            blocks.append((block_title(protocol, mode), lines))
    if not blocks:
        return None
    ref_label = row_label(reference, main_variant, paper, False)
    columns = ["Read-out", "Method", *(f"draw {d}" for d in draws), "mean ± std over draws", "p (pairs)"]
    caption = (
        f"Gap of {ref_label} to each method (×100; positive: {ref_label} ahead), per benchmark draw: the difference "
        "of the means over fine-tuning seeds, with twice the pooled seed std (2σ) beside it; then the gaps' mean ± "
        f"sample std across draws, and p of the {describe(test, one_sided, ref_label)}, paired by (draw, seed) "
        "(pairs: their number)."
    )
    if synthetic:
        caption += " On the built-in synthetic corpus these numbers test the machinery, not clinical accuracy."
    return Table("draw_gaps", "Gaps per benchmark draw", caption, columns, blocks, labels=2)


#: Axes of the pretraining-steps summary: a run cell and the share of its pretraining behind the backbone.
CURVE_AXES = (*AXES, "pretrain_fraction")


def curve_runs(long: pd.DataFrame) -> pd.DataFrame:
    """The rows of the pretraining-steps axis: every cell (benchmark, method, variant, protocol, mode) at the
    full label fraction that has runs from a pretraining snapshot, with its runs from the finished pretraining."""
    if "pretrain_fraction" not in long or not (long["pretrain_fraction"] < 1).any():
        return long.iloc[0:0]
    cell = ["benchmark", "method", "variant", "protocol", "mode"]
    data = long[long["label_fraction"] == 1.0]
    cells = data.loc[data["pretrain_fraction"] < 1, cell].drop_duplicates()
    return data.merge(cells, on=cell)


def curve_metrics(summary: pd.DataFrame, benchmark: str) -> list[str]:
    """The read-outs a curve shows for ``benchmark``: its Table 1 metric, then the other read-outs' values
    of it (PolypDiag's ``f1[knn]``, ``f1[linear_cls]``; not ``f1[linear_pooled]``, the headline read-out
    whose predictions are the run's ``predictions.csv``, i.e. the Table 1 metric itself)."""
    from endofm.tasks.evaluation import PREDICTIONS, READOUTS

    metric = headline(benchmark).metric
    present = set(summary.loc[summary["benchmark"] == benchmark, "metric"])
    same = {f"{metric}[{name}]" for name, file in READOUTS.items() if file == PREDICTIONS}
    return [metric] * (metric in present) + sorted(m for m in present if m.startswith(f"{metric}[") and m not in same)


def metric_label(benchmark: str, metric: str) -> str:
    head = headline(benchmark)
    return f"{head.label} {head.metric_label}" + (f" ({metric.split('[', 1)[1].rstrip(']')})" if "[" in metric else "")


def pretrain_step(
    pretraining: Mapping[tuple[str, str], Mapping[str, Any]], method: str, variant: str, fraction: float
) -> int | None:
    """The optimiser step behind the backbone of (method, variant) at ``fraction`` of its pretraining, from the
    pretraining's ``run.json``; None when not recorded."""
    run = (pretraining.get((method, variant)) or {}).get("run") or {}
    if fraction == 1.0:
        return run.get("steps")
    return (run.get("snapshots", {}).get(f"{fraction:g}") or {}).get("step")


def pretraining_curve_table(
    summary: pd.DataFrame,
    *,
    pretraining: Mapping[tuple[str, str], Mapping[str, Any]],
    paper: Mapping[str, Any],
    synthetic: bool,
) -> Table | None:
    """Frozen read-outs (or any mode's) versus the share of the pretraining behind the backbone, from the
    summary over :data:`CURVE_AXES` of :func:`curve_runs`; None without snapshot runs."""
    if summary.empty:
        return None
    fractions = sorted(summary["pretrain_fraction"].unique())
    cells = {(*(getattr(r, a) for a in CURVE_AXES), r.metric): r for r in summary.itertuples(index=False)}
    pairs = list(dict.fromkeys(zip(summary["method"], summary["variant"], strict=True)))
    several = len({m for m, _ in pairs}) < len(pairs)
    blocks = []
    for protocol, mode in blocks_of(summary):
        lines = []
        for method, variant in pairs:
            label = row_label(method, variant, paper, several)
            steps = [pretrain_step(pretraining, method, variant, f) for f in fractions]
            lines.append([label, "pretraining step"] + [DASH if s is None else str(s) for s in steps])
            start = len(lines)
            for b in benchmarks_of(summary):
                for metric in curve_metrics(summary, b):
                    row = [cells.get((b, method, variant, protocol, mode, 1.0, f, metric)) for f in fractions]
                    if any(r is not None for r in row):
                        lines.append([label, metric_label(b, metric)] + [fmt_cell(r) for r in row])
            if len(lines) == start:  # no read-outs: no step numbers either
                lines.pop()
        blocks.append((block_title(protocol, mode), lines))
    caption = (
        "Read-outs (×100, mean ± sample std over fine-tuning seeds with n) of the backbone after a fraction of its "
        "pretraining's optimiser steps (column: fraction; 0 is the initial weights, 1 the finished pretraining; "
        "the 'pretraining step' row gives the step numbers)."
    )
    if synthetic:
        caption += " On the built-in synthetic corpus these numbers test the machinery, not clinical accuracy."
    columns, blocks = drop_empty(blocks, ["Method", "Read-out"] + [f"{f:g}" for f in fractions], labels=2)
    return Table("pretrain_curve", "Frozen read-out vs pretraining steps", caption, columns, blocks, labels=2)


def robustness_seeds(
    long: pd.DataFrame, robust: pd.DataFrame, benchmark: str
) -> dict[tuple[str, str, str, str], dict[str, dict[int, float]]]:
    """Per (method, variant, protocol, mode) of ``benchmark``'s robustness runs, per seed, its Table 1 metric:
    ``clean`` (the run's own metrics file in ``long``, full label fraction), ``corrupted`` (the mean over every
    corruption and severity of ``robust``) and ``relative`` (corrupted / clean; a clean 0 gives none)."""
    metric = headline(benchmark).metric
    cell = ["method", "variant", "protocol", "mode"]
    rob = robust[(robust["benchmark"] == benchmark) & (robust["metric"] == metric)]
    rob = rob[pd.to_numeric(rob["value"], errors="coerce").notna()]
    clean = long[(long["benchmark"] == benchmark) & (long["metric"] == metric) & (long["label_fraction"] == 1.0)]
    if "draw" in clean:  # the read-out scores the main draw's runs
        clean = clean[clean["draw"] == 0]
        rob = rob[rob["draw"] == 0] if "draw" in rob else rob
    clean_of = {(*k, int(s)): float(v) for *k, s, v in clean[[*cell, "seed", "value"]].itertuples(index=False)}
    out: dict[tuple[str, str, str, str], dict[str, dict[int, float]]] = {}
    for key, g in rob.groupby(cell, sort=False):
        values: dict[str, dict[int, float]] = {"clean": {}, "corrupted": {}, "relative": {}}
        for seed, runs in g.groupby("seed"):
            corrupted = float(runs["value"].mean())
            values["corrupted"][int(seed)] = corrupted
            base = clean_of.get((*key, int(seed)))
            if base is not None and math.isfinite(base):
                values["clean"][int(seed)] = base
                if base > 0:
                    values["relative"][int(seed)] = corrupted / base
        out[tuple(key)] = values
    return out


def robustness_tables(
    long: pd.DataFrame,
    robust: pd.DataFrame,
    *,
    paper: Mapping[str, Any],
    reference: str,
    main_variant: str,
    test: str,
    alpha: float,
    reference_label: str,
    one_sided: bool = False,
) -> list[Table]:
    """Per benchmark with robustness runs: per method, its clean Table 1 metric, the mean over the corruptions
    and severities, and that mean relative to clean (:func:`robustness_seeds`), each mean ± sample std over
    seeds with the paired test against the ``reference`` (method, ``main_variant``) of the same block."""
    tables = []
    for b in benchmarks_of(robust):
        seeds = robustness_seeds(long, robust, b)
        sub = robust[robust["benchmark"] == b]
        rows = method_rows(sub, reference, main_variant)
        corruptions = sub[["corruption", "severity"]].drop_duplicates()
        blocks = []
        for protocol, mode in blocks_of(sub):
            ref = seeds.get((reference, main_variant, protocol, mode))
            lines = []
            for method, variant in rows:
                values = seeds.get((method, variant, protocol, mode))
                if values is None:
                    continue
                line = [row_label(method, variant, paper, False)]
                for column in ("clean", "corrupted", "relative"):
                    vals = values[column]
                    if not vals:
                        line.append(DASH)
                        continue
                    mark = ref is not None and (method, variant) != (reference, main_variant)
                    alternative = "less" if one_sided and column != "relative" else "two-sided"
                    significant = mark and compare(vals, ref[column], test, alpha, alternative).significant
                    line.append(fmt_cell(SimpleNamespace(**mean_std(list(vals.values())), significant=significant)))
                lines.append(line)
            blocks.append((block_title(protocol, mode), lines))
        head = headline(b)
        columns, blocks = drop_empty(
            blocks, ["Method", f"Clean {head.metric_label}", "Corrupted (mean)", "Corrupted / clean"]
        )
        if not blocks:
            continue
        names = ", ".join(
            f"{name} ({', '.join(str(s) for s in sorted(g['severity']))})"
            for name, g in corruptions.groupby("corruption", sort=False)
        )
        caption = (
            f"{head.label} {head.metric_label} (×100) on the clean test split and under corruptions (severities): "
            f"{names}. Corrupted: the mean over every corruption and severity; corrupted / clean: that mean over the "
            f"clean value, per seed. Mean ± sample std over seeds with n. * : differs from {reference_label} at "
            f"p < {alpha:g} ({describe(test, one_sided, reference_label)})."
        )
        tables.append(Table(f"robustness_{b}", f"Robustness: {head.label}", caption, columns, blocks))
    return tables


def long_table(summary: pd.DataFrame) -> pd.DataFrame:
    """tables.csv: one row per benchmark × method × variant × protocol × mode × label fraction × metric."""
    cols = [
        *CURVE_AXES,
        "metric",
        "n",
        "n_expected",
        "mean",
        "std",
        "seeds",
        "reference",
        "n_pairs",
        "p_value",
        "significant",
    ]
    return summary[[c for c in cols if c in summary]]


# ---------------------------------------------------------------------------------------------- rendering


def to_markdown(tables: Sequence[Table]) -> str:
    out = []
    for t in tables:
        out.append(f"## {t.title}\n")
        for title, rows in t.blocks:
            if title:
                out.append(f"**{title}**\n")
            out.append("| " + " | ".join(t.columns) + " |")
            out.append("|" + "|".join("---" for _ in t.columns) + "|")
            out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
            out.append("")
        out.append(f"{t.caption}\n")
    return "\n".join(out)


_TEX = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}", "\\": r"\textbackslash{}", "±": r"$\pm$", "†": r"$^\dagger$", "×": r"$\times$",
        "–": "--", "*": r"$^*$", "<": r"$<$", ">": r"$>$", "≥": r"$\geq$", "≤": r"$\leq$"}  # fmt: skip


def tex_escape(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def to_latex(tables: Sequence[Table]) -> str:
    """LaTeX tables with booktabs rules (``\\usepackage{booktabs}``), one ``table`` float each."""
    out = ["% Generated by `endofm report`; needs \\usepackage{booktabs}.", ""]
    for t in tables:
        ncol = len(t.columns)
        out += [
            r"\begin{table}[t]",
            r"\centering",
            r"\small",
            f"\\caption{{{tex_escape(t.title)}. {tex_escape(t.caption)}}}",
        ]
        out += [f"\\label{{tab:{t.key}}}", r"\begin{tabular}{l" + "c" * (ncol - 1) + "}", r"\toprule"]
        out.append(" & ".join(tex_escape(c) for c in t.columns) + r" \\")
        for i, (title, rows) in enumerate(t.blocks):
            out.append(r"\midrule")
            if title:
                out.append(f"\\multicolumn{{{ncol}}}{{l}}{{\\emph{{{tex_escape(title)}}}}} \\\\")
                if i >= 0:
                    out.append(r"\addlinespace[2pt]")
            out += [" & ".join(tex_escape(c) for c in r) + r" \\" for r in rows]
        out += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(out)


#: Spaces inside "mean ± std", "n=k of m" and before the significance mark: a narrow page (print) may wrap
#: a cell only between its number and its "(n=…)".
_GLUE = re.compile(r" (?=± )|(?<= ±) |(?<=\d) of (?=\d)| (?=\*$)")


def _cell(text: str) -> str:
    return html.escape(_GLUE.sub(lambda m: m.group(0).replace(" ", "\u00a0"), text))


def to_html(table: Table) -> str:
    """An HTML ``<table>`` (a ``<tbody>`` per block, row labels as row headers) with its caption; a
    :attr:`Table.stacked` column is a second line (``span.sub``) in the cells of the column before it."""
    esc = html.escape
    shown = [i for i in range(len(table.columns)) if i not in table.stacked]
    below = {i - 1: i for i in table.stacked}

    def cell(row: Sequence[str], i: int, tag: str, scope: str = "") -> str:
        text = _cell(row[i]) + (f'<span class="sub">{_cell(row[below[i]])}</span>' if i in below else "")
        attr = (f' scope="{scope}"' if scope else "") + (' class="label"' if i < table.labels else "")
        return f"<{tag}{attr}>{text}</{tag}>"

    parts = [f'<table id="{esc(table.key)}"><thead><tr>']
    parts += [cell(table.columns, i, "th", "col") for i in shown]
    parts.append("</tr></thead>")
    for title, rows in table.blocks:
        parts.append("<tbody>")
        if title:
            parts.append(f'<tr class="block"><th colspan="{len(shown)}">{esc(title)}</th></tr>')
        for r in rows:
            parts.append(
                "<tr>"
                + "".join(cell(r, i, "th", "row") if i < table.labels else cell(r, i, "td") for i in shown)
                + "</tr>"
            )
        parts.append("</tbody>")
    parts.append(f'</table><p class="caption">{esc(table.caption)}</p>')
    return "".join(parts)
