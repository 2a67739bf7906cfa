"""Scoring a fine-tuning run's saved test predictions; imports neither torch nor a model.

:func:`endofm.tasks.benchmarks.evaluate_run` reads the run record (:func:`read_run`) and the manifest rows
of the run's test split and calls its benchmark's evaluator, one of:

- ``polypdiag``: :func:`evaluate_classification` (``predictions.csv``, and a frozen run's other read-outs);
- ``cvc12k``: :func:`evaluate_segmentation` (``masks.npz`` against the masks under the raw folder);
- ``kumc``: :func:`evaluate_detection` (``detections.json``, COCO results, via :func:`detection_metrics`).

The file names the tasks write (:mod:`endofm.tasks.classify`, :mod:`~endofm.tasks.segment`,
:mod:`~endofm.tasks.detect` import them from here) are defined here, once.

Layer: tasks (docs/architecture.md). May import: foundation, data, models, engine, metrics, pretraining, methods and the other tasks modules.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from endofm.data.cvc import polyp_values, read_mask
from endofm.data.kumc import to_coco
from endofm.metrics import (
    classification_metrics,
    coco_ap,
    detection_f1_iou,
    detection_f1_paper,
    segmentation_metrics,
)

#: The run record every fine-tuning run writes last (:func:`endofm.tasks.finetune.run_finetune`).
RUN_NAME = "run.json"
#: Classification predictions (one row per test video: ``sample_id``, ``prob_0``, ``prob_1``).
PREDICTIONS = "predictions.csv"
#: Frozen read-outs: file name per read-out; ``predictions.csv`` is the headline (pooled linear probe).
READOUTS = {"linear_pooled": PREDICTIONS, "linear_cls": "predictions_linear_cls.csv", "knn": "predictions_knn.csv"}
#: Segmentation predictions: one uint8 (T, H, W) array per sequence name.
MASKS = "masks.npz"
#: Detection predictions: COCO results list.
DETECTIONS = "detections.json"
#: Counts and sizes in a metrics file: not metrics to average.
COUNT_KEYS = frozenset({"n", "n_positive", "tp", "fp", "fn", "tn", "frames", "n_sequences", "n_frames"})
#: Metrics of the extra read-outs of a frozen run (PolypDiag probes) that tables and sweeps keep.
READOUT_KEYS = ("f1", "auroc", "accuracy")
SYNTHETIC_NOTE = "built-in synthetic corpus: these numbers test the machinery, not clinical accuracy"


# ----------------------------------------------------------------------------------------------------
# Classification (PolypDiag)


def _read_predictions(path: Path, truth: pd.Series) -> dict[str, float]:
    try:
        frame = pd.read_csv(path, dtype={"sample_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a predictions CSV ({str(exc).splitlines()[0]})") from None
    need = ["sample_id", "prob_0", "prob_1"]
    if not set(need) <= set(frame.columns):
        raise ValueError(f"{path}: expected the columns {', '.join(need)}, got {', '.join(map(str, frame.columns))}")
    probs = frame[["prob_0", "prob_1"]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    bad = ~(np.isfinite(probs) & (probs >= 0) & (probs <= 1))
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise ValueError(
            f"{path}: probabilities must be numbers in [0, 1]; line {row + 2} ({frame['sample_id'].iloc[row]}) has "
            f"prob_{col} = {frame.iloc[row][f'prob_{col}']!r}"
        )
    missing = sorted(set(truth.index) - set(frame["sample_id"]))
    extra = sorted(set(frame["sample_id"]) - set(truth.index))
    if missing or extra:
        raise ValueError(f"{path}: predictions do not match the test split (missing {missing[:5]}, extra {extra[:5]})")
    return classification_metrics(truth.loc[frame["sample_id"]].to_numpy(), probs)


def evaluate_classification(run_dir: str | Path, test_rows: pd.DataFrame, **_: Any) -> dict[str, Any]:
    """Metrics of a run's ``predictions.csv`` against ``test_rows`` (the manifest rows of its test
    split) as ``metrics``; a frozen run's read-outs (:data:`READOUTS`) also as ``readouts``."""
    run_dir = Path(run_dir)
    truth = test_rows.set_index(test_rows["sample_id"].astype(str))["label"].astype(int)
    if not (run_dir / PREDICTIONS).exists():
        raise FileNotFoundError(f"{run_dir / PREDICTIONS}: no predictions")
    out: dict[str, Any] = {"metrics": _read_predictions(run_dir / PREDICTIONS, truth)}
    extra = {name: file for name, file in READOUTS.items() if file != PREDICTIONS and (run_dir / file).exists()}
    if extra:
        out["readouts"] = {
            name: out["metrics"] if file == PREDICTIONS else _read_predictions(run_dir / file, truth)
            for name, file in READOUTS.items()
        }
    return out


# ----------------------------------------------------------------------------------------------------
# Segmentation (CVC-12k)


def without_per_sequence(metrics: dict[str, Any]) -> dict[str, float]:
    """Segmentation ``metrics`` without their ``per_sequence`` breakdown."""
    return {k: v for k, v in metrics.items() if k != "per_sequence"}


def evaluate_segmentation(
    run_dir: str | Path,
    test_rows: pd.DataFrame,
    *,
    raw_dir: str | Path,
    benchmark_dir: str | Path | None = None,
    **_: Any,
) -> dict[str, Any]:
    """Metrics of a run's ``masks.npz`` against the ground truth of ``test_rows`` (manifest rows of its test
    split; masks read from ``raw_dir``): ``metrics`` (``dice``, ``frame_dice``, ``frame_iou``, counts) and
    ``per_sequence``, from :func:`endofm.metrics.segmentation_metrics`.

    Every test sequence needs an array of its native (T, H, W) shape, and no other array may be present.
    The original computes Dice on 224×224 masks (docs/original.md §4.2); we compute it at native resolution.
    """
    path = Path(run_dir) / MASKS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no predictions")
    rows = test_rows.assign(sequence=test_rows["sequence"].astype(str))
    names = list(dict.fromkeys(rows["sequence"]))
    with np.load(path) as saved:
        missing = [n for n in names if n not in saved.files]
        extra = sorted(set(saved.files) - set(names))
        if missing or extra:
            raise ValueError(
                f"{path}: predictions do not match the test split (missing sequences {missing[:5]}, extra {extra[:5]})"
            )
        preds = {n: saved[n] for n in names}
    targets = []
    for name in names:
        frames = rows[rows["sequence"] == name].sort_values("frame_index")
        target = np.stack(
            [read_mask(Path(raw_dir) / p, v) for p, v in zip(frames["mask"], polyp_values(frames), strict=True)]
        )
        if preds[name].shape != target.shape:
            raise ValueError(
                f"{path}: sequence {name!r} has masks of shape {preds[name].shape}, expected {target.shape} (T, H, W)"
            )
        targets.append(target)
    metrics = segmentation_metrics([preds[n] for n in names], targets, names)
    return {"metrics": without_per_sequence(metrics), "per_sequence": metrics["per_sequence"]}


# ----------------------------------------------------------------------------------------------------
# Detection (KUMC)


def _xyxy(bbox: Sequence[float]) -> list[float]:
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w, y + h]


def detection_metrics(
    coco_gt: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    score_threshold: float = 0.5,
    iou_threshold: float = 0.5,
) -> dict[str, float]:
    """Every KUMC metric (:mod:`endofm.tasks.detect`) of COCO ``results`` against the COCO dict ``coco_gt``;
    one frame per GT image, with the results of its ``image_id``."""
    gt: dict[int, list[tuple[list[float], int]]] = defaultdict(list)
    for ann in coco_gt["annotations"]:
        gt[int(ann["image_id"])].append((_xyxy(ann["bbox"]), int(ann["category_id"])))
    dt: dict[int, list[tuple[list[float], float, int]]] = defaultdict(list)
    for det in results:
        dt[int(det["image_id"])].append((_xyxy(det["bbox"]), float(det["score"]), int(det["category_id"])))
    frames = []
    for image in coco_gt["images"]:
        g, d = gt.get(int(image["id"]), []), dt.get(int(image["id"]), [])
        frames.append(
            {
                "gt_boxes": np.array([b for b, _ in g], dtype=np.float64).reshape(-1, 4),
                "gt_labels": np.array([c for _, c in g], dtype=np.int64),
                "boxes": np.array([b for b, _, _ in d], dtype=np.float64).reshape(-1, 4),
                "scores": np.array([s for _, s, _ in d], dtype=np.float64),
                "labels": np.array([c for _, _, c in d], dtype=np.int64),
            }
        )
    paper = detection_f1_paper(frames, score_threshold)
    box = detection_f1_iou(frames, iou_threshold, score_threshold)
    ap = coco_ap(coco_gt, results)
    return {
        "f1_paper": paper["f1"],
        "precision_paper": paper["precision"],
        "recall_paper": paper["recall"],
        "f1_iou": box["f1"],
        "precision_iou": box["precision"],
        "recall_iou": box["recall"],
        "AP": ap["AP"],
        "AP50": ap["AP50"],
        "AP75": ap["AP75"],
        **{f"AP50_{name}": value for name, value in ap["AP50_per_category"].items()},
        "frames": len(frames),
    }


def evaluate_detection(
    run_dir: str | Path,
    test_rows: pd.DataFrame,
    *,
    raw_dir: str | Path | None = None,
    benchmark_dir: str | Path | None = None,
    task_settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Metrics (:func:`detection_metrics`) of a run's ``detections.json`` against the annotated frames of
    ``test_rows`` (the manifest rows of its test split, exported with :func:`~endofm.data.kumc.to_coco`:
    the same image ids as the indexer's ``coco_<split>.json``), at the run's own ``score_threshold`` and
    ``iou_threshold`` (``task_settings``, the run's DetectConfig as a dict; :func:`detection_metrics`'
    defaults, which are DetectConfig's, when absent). ``raw_dir`` and ``benchmark_dir`` are not needed."""
    thresholds = {k: float(v) for k, v in (task_settings or {}).items() if k in ("score_threshold", "iou_threshold")}
    path = Path(run_dir) / DETECTIONS
    if not path.exists():
        raise FileNotFoundError(f"{path}: no detections")
    splits = sorted(set(test_rows["split"].astype(str)))
    if len(splits) != 1:
        raise ValueError(f"test_rows must hold one split, got {splits}")
    coco_gt = to_coco(test_rows, splits[0])
    results = json.loads(path.read_text())
    if not isinstance(results, list):
        raise ValueError(f"{path}: expected a COCO results list, got {type(results).__name__}")
    known = {int(image["id"]) for image in coco_gt["images"]}
    unknown = sorted({int(r["image_id"]) for r in results} - known)
    if unknown:
        raise ValueError(
            f"{path}: detections for image ids {unknown[:5]} that are not annotated frames of the {splits[0]} split"
        )
    return {"metrics": detection_metrics(coco_gt, results, **thresholds)}


# ----------------------------------------------------------------------------------------------------
# A run


def metric_number(value: Any) -> float | None:
    """``value`` as a float when it is a number (NaN allowed; None -> NaN), else None."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def flat_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """The metrics of a metrics-file record by name: ``metrics`` without counts, and the frozen
    read-outs' F1, AUROC and accuracy as ``<key>[<readout>]`` (the report's and the sweeps' view)."""
    out = {k: float(metric_number(v)) for k, v in record["metrics"].items() if k not in COUNT_KEYS}
    for name, values in (record.get("readouts") or {}).items():
        if isinstance(values, dict):
            for key in READOUT_KEYS:
                value = metric_number(values.get(key))
                if key in values and value is not None:
                    out[f"{key}[{name}]"] = value
    return out


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """The run record ``run_dir/run.json``; a missing or unreadable one is an error naming it."""
    run_file = Path(run_dir) / RUN_NAME
    if not run_file.exists():
        raise FileNotFoundError(f"{run_file}: no run record; the fine-tuning job did not finish")
    try:
        run = json.loads(run_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{run_file}: not a readable run record ({exc}); rerun the fine-tuning job") from None
    missing = [k for k in ("benchmark", "test_split", "selection") if not isinstance(run, dict) or k not in run]
    if missing:
        raise ValueError(f"{run_file}: not a run record (no {', '.join(missing)})")
    return run
