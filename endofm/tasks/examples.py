"""Example figures of a run's test predictions, one drawer per benchmark that has one (its
:attr:`~endofm.tasks.benchmarks.Benchmark.examples`): the report shows them beside the tables.

Layer: tasks (docs/architecture.md). May import: foundation and data. Imported only when the report draws an example (matplotlib).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def _outline(ax, mask: np.ndarray, color: str) -> None:
    if mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors=[color], linewidths=1.5)


def segmentation_examples(
    run_dir: Path, manifest: pd.DataFrame, raw_dir: Path, test_split: str, count: int = 3
) -> Figure | None:
    """Test frames of a CVC run with the true (green) and predicted (red) mask outlines: the frames with
    the largest true masks."""
    from endofm.data.cvc import polyp_values, read_image, read_mask

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
    for ax, row, polyp_value in zip(axes[0], picks.itertuples(index=False), polyp_values(picks), strict=True):
        frames = rows[rows["sequence"] == row.sequence].sort_values("frame_index").reset_index(drop=True)
        t = int(np.flatnonzero(frames["frame_index"].to_numpy() == row.frame_index)[0])
        ax.imshow(read_image(raw_dir / row.image))
        _outline(ax, read_mask(raw_dir / row.mask, polyp_value) > 0, "lime")
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
