"""The report's figures (matplotlib, Agg): pretraining curves, fine-tuning curves, per-benchmark bars with
the seeds as points, label-efficiency curves, read-outs versus pretraining steps, and example test frames with predicted and true masks/boxes.

Each function returns a Figure (or None when there is nothing to draw) with a panel only for what was run:
no empty axes; :func:`png` turns it into bytes.

Layer: report (docs/architecture.md). May import: every layer below it (tasks included) and the other report modules.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from endofm.report.tables import (  # noqa: E402
    MODE_LABELS,
    benchmarks_of,
    blocks_of,
    curve_metrics,
    headline,
    metric_label,
    pretrain_step,
    row_label,
)

COLORS = plt.get_cmap("tab10").colors


def png(fig: Figure, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def pretraining_curves(pretraining: Mapping[tuple[str, str], Mapping[str, Any]]) -> Figure | None:
    """Loss terms and entropies per epoch of every pretraining run (whatever columns its metrics.csv has)."""
    runs = {f"{m}/{v}": p["curves"] for (m, v), p in sorted(pretraining.items()) if not p["curves"].empty}
    if not runs:
        return None
    loss_cols = ["loss", "cv", "dm"]
    panels = {
        "loss": [(name, [c for c in loss_cols if c in frame], ("-", "--", ":")) for name, frame in runs.items()],
        "entropy": [(name, sorted(c for c in frame if "entropy" in c), ("-", "--", ":", "-.")) for name, frame in runs.items()],
    }  # fmt: skip
    panels = {k: v for k, v in panels.items() if any(cols for _, cols, _ in v)}
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (kind, curves) in zip(axes[0], panels.items(), strict=True):
        for i, (name, cols, styles) in enumerate(curves):
            frame = runs[name]
            x = frame["epoch"] if "epoch" in frame else np.arange(len(frame))
            for col, style in zip(cols, styles, strict=False):
                ax.plot(x, frame[col], style, color=COLORS[i % 10], label=f"{name} {col}")
        if kind == "loss":
            ax.set(title="pretraining loss", xlabel="epoch", ylabel="loss")
        else:
            ax.set(title="teacher and batch entropy", xlabel="epoch", ylabel="nats")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return fig


def finetuning_curves(histories: Mapping[str, Sequence[tuple[str, pd.DataFrame]]]) -> Figure | None:
    """Per benchmark: training loss and the selection metric per epoch, mean over seeds of each
    (method, variant, protocol, mode); ``histories`` maps a benchmark to (label, history.csv frame) pairs.
    The selection row only when some history records its benchmark's selection metric."""
    benches = [b for b in histories if histories[b]]
    if not benches:
        return None
    select = {b: f"select_{headline(b).metric}" for b in benches}
    selected = {b for b in benches if any(select[b] in f and f[select[b]].notna().any() for _, f in histories[b])}
    n_rows = 2 if selected else 1
    fig, axes = plt.subplots(n_rows, len(benches), figsize=(4.2 * len(benches), 3.2 * n_rows), squeeze=False)
    for j, bench in enumerate(benches):
        grouped: dict[str, list[pd.DataFrame]] = {}
        for label, frame in histories[bench]:
            grouped.setdefault(label, []).append(frame)
        for i, (label, frames) in enumerate(sorted(grouped.items())):
            both = pd.concat(frames).groupby("epoch").mean(numeric_only=True)
            style = "-" if "full" in label else "--"
            axes[0, j].plot(both.index, both["loss"], style, color=COLORS[i % 10], label=label)
            if bench in selected and select[bench] in both:
                sel = both[select[bench]].dropna()
                axes[1, j].plot(sel.index, sel, style, marker="o", ms=3, color=COLORS[i % 10], label=label)
        axes[0, j].set(title=f"{headline(bench).label}: training loss", xlabel="epoch")
        axes[0, j].legend(fontsize=6)
        if n_rows == 2:
            axes[1, j].set(title=f"{headline(bench).label}: selection {headline(bench).metric}", xlabel="epoch")
            axes[1, j].set_visible(bench in selected)
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def seed_bars(
    long: pd.DataFrame, rows: Sequence[tuple[str, str]], labels: Mapping[tuple[str, str], str]
) -> Figure | None:
    """Per benchmark: the Table 1 metric as bars (mean over seeds) per method and (protocol, mode) block,
    each seed a point."""
    fraction = long["label_fraction"].max()
    data = long[long["label_fraction"] == fraction]
    data = data[pd.to_numeric(data["value"], errors="coerce").notna()]
    keys = set(zip(data["benchmark"], data["method"], data["variant"], data["metric"], strict=True))
    benches = [
        b for b in benchmarks_of(data) if any((b, m, v, headline(b).metric) in keys for m, v in rows)
    ]  # fmt: skip
    if not benches:
        return None
    fig, axes = plt.subplots(1, len(benches), figsize=(4.6 * len(benches), 3.8), squeeze=False)
    for j, bench in enumerate(benches):
        ax = axes[0, j]
        sub = data[(data["benchmark"] == bench) & (data["metric"] == headline(bench).metric)]
        blocks = blocks_of(sub)
        width = 0.8 / max(len(rows), 1)
        for i, (method, variant) in enumerate(rows):
            for k, (protocol, mode) in enumerate(blocks):
                vals = sub[
                    (sub["method"] == method) & (sub["variant"] == variant)
                    & (sub["protocol"] == protocol) & (sub["mode"] == mode)
                ]["value"].to_numpy(float) * 100  # fmt: skip
                vals = vals[np.isfinite(vals)]
                if not vals.size:
                    continue
                x = k + (i - (len(rows) - 1) / 2) * width
                ax.bar(
                    x,
                    vals.mean(),
                    width * 0.9,
                    color=COLORS[i % 10],
                    alpha=0.6,
                    label=labels[(method, variant)] if k == 0 else None,
                )
                jitter = np.linspace(-width * 0.25, width * 0.25, vals.size) if vals.size > 1 else np.zeros(1)
                ax.scatter(x + jitter, vals, s=12, color="black", zorder=3)
        ax.set_xticks(range(len(blocks)), [f"{p}\n{MODE_LABELS.get(m, m)}" for p, m in blocks], fontsize=7)
        ax.set(title=f"{headline(bench).label} {headline(bench).metric_label} (×100)", ylim=(0, 100))
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def label_efficiency(
    summary: pd.DataFrame, rows: Sequence[tuple[str, str]], labels: Mapping[tuple[str, str], str]
) -> Figure | None:
    """Table 1 metric versus label fraction per method (mean ± std over seeds), per benchmark, for the
    first two (protocol, mode) blocks with runs at several fractions; a panel per benchmark that has such a
    curve, None without one."""
    if summary["label_fraction"].nunique() < 2:
        return None
    curves: dict[str, list[tuple[str, str, int, pd.DataFrame]]] = {}
    for bench in benchmarks_of(summary):
        sub = summary[(summary["benchmark"] == bench) & (summary["metric"] == headline(bench).metric)]
        sub = sub[sub["n"] > 0]
        for protocol, mode in blocks_of(sub)[:2]:
            for i, (method, variant) in enumerate(rows):
                line = sub[
                    (sub["method"] == method) & (sub["variant"] == variant)
                    & (sub["protocol"] == protocol) & (sub["mode"] == mode)
                ].sort_values("label_fraction")  # fmt: skip
                if line["label_fraction"].nunique() >= 2:  # a curve needs the method to have run several fractions
                    curves.setdefault(bench, []).append((protocol, mode, i, line))
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(curves), figsize=(4.4 * len(curves), 3.6), squeeze=False)
    for j, (bench, lines) in enumerate(curves.items()):
        ax = axes[0, j]
        for protocol, mode, i, line in lines:
            style = "-" if mode == "full" else "--"
            ax.errorbar(
                line["label_fraction"], line["mean"] * 100, yerr=line["std"].fillna(0) * 100, fmt=style + "o",
                ms=4, capsize=3, color=COLORS[i % 10], label=f"{labels[rows[i]]}, {protocol}, {mode}",
            )  # fmt: skip
        ax.set(
            title=f"{headline(bench).label} {headline(bench).metric_label} (×100)",
            xlabel="fraction of labelled training data",
        )
        ax.set_xscale("log")
        fractions = sorted({f for *_, line in lines for f in line["label_fraction"]})
        ax.set_xticks(fractions, [f"{100 * f:g} %" for f in fractions])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def pretraining_efficiency(
    curve: pd.DataFrame, pretraining: Mapping[tuple[str, str], Mapping[str, Any]], paper: Mapping[str, Any]
) -> Figure | None:
    """One panel per read-out (:func:`~endofm.report.tables.curve_metrics`): its value versus the optimiser
    steps behind the backbone (the fraction of the pretraining when the steps are not recorded), a line
    per method, variant, protocol and mode, error bars the std over seeds; None without snapshot runs."""
    curve = curve[curve["n"] > 0] if "n" in curve else curve
    if curve.empty:
        return None
    panels = [(b, m) for b in benchmarks_of(curve) for m in curve_metrics(curve, b)]
    pairs = list(dict.fromkeys(zip(curve["method"], curve["variant"], strict=True)))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for j, (bench, metric) in enumerate(panels):
        ax = axes[0, j]
        sub = curve[(curve["benchmark"] == bench) & (curve["metric"] == metric)]
        ticks: dict[float, str] = {}
        for protocol, mode in blocks_of(sub):
            for i, (method, variant) in enumerate(pairs):
                line = sub[
                    (sub["method"] == method) & (sub["variant"] == variant)
                    & (sub["protocol"] == protocol) & (sub["mode"] == mode)
                ].sort_values("pretrain_fraction")  # fmt: skip
                if line.empty:
                    continue
                fractions = line["pretrain_fraction"].tolist()
                steps = [pretrain_step(pretraining, method, variant, f) for f in fractions]
                x = fractions if None in steps else steps
                for v, f in zip(x, fractions, strict=True):
                    ticks[float(v)] = f"{f:g}" if None in steps else f"{v:g}\n({f:g})"
                label = f"{row_label(method, variant, paper, len(pairs) > 1)}, {protocol}, {mode}"
                ax.errorbar(
                    x, line["mean"] * 100, yerr=line["std"].fillna(0) * 100, fmt="-o", ms=4, capsize=3,
                    color=COLORS[i % 10], label=label,
                )  # fmt: skip
        ax.set(title=f"{metric_label(bench, metric)} (×100)", xlabel="pretraining steps (fraction of the run)")
        ax.set_xticks(list(ticks), list(ticks.values()), fontsize=7)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def robustness_curves(
    long: pd.DataFrame, robust: pd.DataFrame, rows: Sequence[tuple[str, str]], labels: Mapping[tuple[str, str], str]
) -> Figure | None:
    """One panel per benchmark (a row) and corruption (a column): the Table 1 metric (×100, mean ± std over
    seeds) versus the severity, 0 being the clean test split (the runs' own metrics files), a line per method
    and (protocol, mode) block (full: solid, frozen: dashed), one legend below; None without robustness runs."""
    if robust.empty:
        return None
    benches = benchmarks_of(robust)
    corruptions = {b: list(dict.fromkeys(robust.loc[robust["benchmark"] == b, "corruption"])) for b in benches}
    ncols = max(len(c) for c in corruptions.values())
    fig, axes = plt.subplots(len(benches), ncols, figsize=(3.6 * ncols, 3.0 * len(benches) + 0.6), squeeze=False)
    panels = [(r, c, b, name) for r, b in enumerate(benches) for c, name in enumerate(corruptions[b])]
    for r, b in enumerate(benches):
        for c in range(len(corruptions[b]), ncols):
            axes[r][c].set_visible(False)
    cell = ["method", "variant", "protocol", "mode"]
    legend: dict[str, Any] = {}
    for r, c, bench, corruption in panels:
        ax = axes[r][c]
        metric = headline(bench).metric
        sub = robust[
            (robust["benchmark"] == bench) & (robust["corruption"] == corruption) & (robust["metric"] == metric)
        ]
        clean = long[(long["benchmark"] == bench) & (long["metric"] == metric) & (long["label_fraction"] == 1.0)]
        for protocol, mode in blocks_of(sub):
            for i, (method, variant) in enumerate(rows):
                key = (method, variant, protocol, mode)
                runs = sub[(sub[cell] == list(key)).all(axis=1)]
                if runs.empty:
                    continue
                base = clean[(clean[cell] == list(key)).all(axis=1)].assign(severity=0)
                points = pd.concat([base, runs])[["severity", "value"]].astype(float).dropna()
                stats = points.groupby("severity")["value"].agg(["mean", "std"]).sort_index()
                ax.errorbar(
                    stats.index, stats["mean"] * 100, yerr=stats["std"].fillna(0) * 100,
                    fmt=("-" if mode == "full" else "--") + "o", ms=4, capsize=3, color=COLORS[i % 10],
                    label=f"{labels.get((method, variant), method)}, {protocol}, {MODE_LABELS.get(mode, mode)}",
                )  # fmt: skip
        ax.set(title=f"{headline(bench).label}: {corruption}", xlabel="severity (0: clean)",
               ylabel=f"{headline(bench).metric_label} (×100)")  # fmt: skip
        ax.set_xticks(sorted({0, *sub["severity"].astype(int)}))
        ax.grid(alpha=0.3)
        legend.update({label: handle for handle, label in zip(*ax.get_legend_handles_labels(), strict=True)})
    fig.tight_layout(rect=(0, 0.6 / fig.get_figheight(), 1, 1))
    if legend:
        fig.legend(
            legend.values(), legend.keys(), loc="lower center", ncol=min(len(legend), 4), fontsize=8, frameon=False
        )
    return fig
