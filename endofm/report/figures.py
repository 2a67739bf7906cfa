"""The report's figures (matplotlib, Agg): pretraining curves, fine-tuning curves, per-benchmark bars with
the seeds as points, label-efficiency curves, read-outs versus pretraining steps, and example test frames with predicted and true masks/boxes.

Each function returns a Figure (or None when there is nothing to draw); :func:`png` turns it into bytes.

Layer: report (docs/architecture.md). May import: every layer below it (tasks included) and the other report modules.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
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
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, (name, frame) in enumerate(runs.items()):
        x = frame["epoch"] if "epoch" in frame else np.arange(len(frame))
        for col, style in zip(loss_cols, ("-", "--", ":"), strict=True):
            if col in frame:
                axes[0].plot(x, frame[col], style, color=COLORS[i % 10], label=f"{name} {col}")
        for col, style in zip(sorted(c for c in frame if "entropy" in c), ("-", "--", ":", "-."), strict=False):
            axes[1].plot(x, frame[col], style, color=COLORS[i % 10], label=f"{name} {col}")
    axes[0].set(title="pretraining loss", xlabel="epoch", ylabel="loss")
    axes[1].set(title="teacher and batch entropy", xlabel="epoch", ylabel="nats")
    for ax in axes:
        if ax.lines:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return fig


def finetuning_curves(histories: Mapping[str, Sequence[tuple[str, pd.DataFrame]]]) -> Figure | None:
    """Per benchmark: training loss and the selection metric per epoch, mean over seeds of each
    (method, variant, protocol, mode); ``histories`` maps a benchmark to (label, history.csv frame) pairs."""
    benches = [b for b in histories if histories[b]]
    if not benches:
        return None
    fig, axes = plt.subplots(2, len(benches), figsize=(4.2 * len(benches), 6.4), squeeze=False)
    for j, bench in enumerate(benches):
        grouped: dict[str, list[pd.DataFrame]] = {}
        for label, frame in histories[bench]:
            grouped.setdefault(label, []).append(frame)
        select = f"select_{headline(bench).metric}"
        for i, (label, frames) in enumerate(sorted(grouped.items())):
            both = pd.concat(frames).groupby("epoch").mean(numeric_only=True)
            style = "-" if "full" in label else "--"
            axes[0, j].plot(both.index, both["loss"], style, color=COLORS[i % 10], label=label)
            if select in both:
                sel = both[select].dropna()
                axes[1, j].plot(sel.index, sel, style, marker="o", ms=3, color=COLORS[i % 10], label=label)
        axes[0, j].set(title=f"{headline(bench).label}: training loss", xlabel="epoch")
        axes[1, j].set(title=f"{headline(bench).label}: selection {headline(bench).metric}", xlabel="epoch")
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
        axes[0, j].legend(fontsize=6)
    fig.tight_layout()
    return fig


def seed_bars(
    long: pd.DataFrame, rows: Sequence[tuple[str, str]], labels: Mapping[tuple[str, str], str]
) -> Figure | None:
    """Per benchmark: the Table 1 metric as bars (mean over seeds) per method and (protocol, mode) block,
    each seed a point."""
    fraction = long["label_fraction"].max()
    data = long[long["label_fraction"] == fraction]
    benches = benchmarks_of(data)
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
    first (protocol, mode) block; None with a single fraction."""
    if summary["label_fraction"].nunique() < 2:
        return None
    benches = benchmarks_of(summary)
    fig, axes = plt.subplots(1, len(benches), figsize=(4.4 * len(benches), 3.6), squeeze=False)
    for j, bench in enumerate(benches):
        ax = axes[0, j]
        sub = summary[(summary["benchmark"] == bench) & (summary["metric"] == headline(bench).metric)]
        for protocol, mode in blocks_of(sub)[:2]:
            for i, (method, variant) in enumerate(rows):
                line = sub[
                    (sub["method"] == method) & (sub["variant"] == variant)
                    & (sub["protocol"] == protocol) & (sub["mode"] == mode)
                ].sort_values("label_fraction")  # fmt: skip
                if line["label_fraction"].nunique() < 2:  # a curve needs the method to have run several fractions
                    continue
                style = "-" if mode == "full" else "--"
                ax.errorbar(
                    line["label_fraction"], line["mean"] * 100, yerr=line["std"].fillna(0) * 100, fmt=style + "o",
                    ms=4, capsize=3, color=COLORS[i % 10], label=f"{labels[(method, variant)]}, {protocol}, {mode}",
                )  # fmt: skip
        ax.set(
            title=f"{headline(bench).label} {headline(bench).metric_label} (×100)",
            xlabel="fraction of labelled training data",
        )
        ax.set_xscale("log")
        fractions = sorted(sub["label_fraction"].unique())
        ax.set_xticks(fractions, [f"{100 * f:g} %" for f in fractions])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def pretraining_efficiency(
    curve: pd.DataFrame, pretraining: Mapping[tuple[str, str], Mapping[str, Any]], paper: Mapping[str, Any]
) -> Figure | None:
    """One panel per read-out (:func:`~endofm.report.tables.curve_metrics`): its value versus the optimiser
    steps behind the backbone (the fraction of the pretraining when the steps are not recorded), a line
    per method, variant, protocol and mode, error bars the std over seeds; None without snapshot runs."""
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


def _outline(ax, mask: np.ndarray, color: str) -> None:
    if mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors=[color], linewidths=1.5)


def segmentation_examples(
    run_dir: Path, manifest: pd.DataFrame, raw_dir: Path, test_split: str, count: int = 3
) -> Figure | None:
    """Test frames of a CVC run with the true (green) and predicted (red) mask outlines: the frames with
    the largest true masks."""
    from endofm.data.cvc import read_image, read_mask

    path = run_dir / "masks.npz"
    if not path.is_file():
        return None
    rows = manifest[manifest["split"] == test_split].copy()
    if rows.empty:
        return None
    rows["sequence"] = rows["sequence"].astype(str)
    picks = rows.sort_values("polyp_pixels", ascending=False).head(count)
    with np.load(path) as saved:
        preds = {name: saved[name] for name in saved.files}
    fig, axes = plt.subplots(1, len(picks), figsize=(3.2 * len(picks), 3.0), squeeze=False)
    for ax, row in zip(axes[0], picks.itertuples(index=False), strict=True):
        frames = rows[rows["sequence"] == row.sequence].sort_values("frame_index").reset_index(drop=True)
        t = int(np.flatnonzero(frames["frame_index"].to_numpy() == row.frame_index)[0])
        ax.imshow(read_image(raw_dir / row.image))
        _outline(ax, read_mask(raw_dir / row.mask) > 0, "lime")
        if row.sequence in preds and t < len(preds[row.sequence]):
            _outline(ax, preds[row.sequence][t] > 0, "red")
        ax.set_title(f"seq {row.sequence}, frame {row.frame_index}", fontsize=8)
        ax.axis("off")
    fig.suptitle("CVC-12k: true mask (green) and prediction (red)", fontsize=9)
    fig.tight_layout()
    return fig


def detection_examples(
    run_dir: Path, manifest: pd.DataFrame, raw_dir: Path, test_split: str, score_threshold: float, count: int = 3
) -> Figure | None:
    """Annotated test frames of a KUMC run with true boxes (green) and detections scoring at least the
    run's threshold (red; the best one dashed when none does)."""
    from PIL import Image

    from endofm.data.kumc import annotated_frames

    path = run_dir / "detections.json"
    if not path.is_file():
        return None
    frames = annotated_frames(manifest, test_split)
    frames = frames[[len(json.loads(b)) > 0 for b in frames["boxes"]]]
    if frames.empty:
        return None
    detections: dict[int, list[dict]] = {}
    for det in json.loads(path.read_text()):
        detections.setdefault(int(det["image_id"]), []).append(det)
    picks = frames.iloc[np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)]
    fig, axes = plt.subplots(1, len(picks), figsize=(3.2 * len(picks), 3.0), squeeze=False)
    for ax, row in zip(axes[0], picks.itertuples(index=False), strict=True):
        with Image.open(raw_dir / row.image) as im:
            ax.imshow(np.asarray(im.convert("RGB")))
        for x0, y0, x1, y1 in json.loads(row.boxes):
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="lime", lw=1.5))
        dets = sorted(detections.get(int(row.image_id), []), key=lambda d: -d["score"])
        shown = [d for d in dets if d["score"] >= score_threshold] or dets[:1]
        for d in shown:
            x, y, w, h = d["bbox"]
            dashed = d["score"] < score_threshold
            ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, color="red", lw=1.2, ls="--" if dashed else "-"))
            ax.text(x, y, f"{d['score']:.2f}", color="red", fontsize=6, va="bottom")
        ax.set_title(f"{row.video}, frame {row.frame}", fontsize=8)
        ax.axis("off")
    fig.suptitle(f"KUMC: true boxes (green), detections ≥ {score_threshold:g} (red; dashed: best below)", fontsize=9)
    fig.tight_layout()
    return fig
