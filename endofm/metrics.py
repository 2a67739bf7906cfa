"""Metrics of the three downstream benchmarks (docs/original.md §4.1-4.3, §5); every result is JSON-ready.

- Classification (PolypDiag): :func:`classification_metrics`; the paper reports binary F1 of class 1.
- Segmentation (CVC-12k): :func:`dice_paper` (the original's per-sequence volume Dice with its empty-mask
  rules), :func:`frame_dice_iou` (per frame, clean convention) and :func:`segmentation_metrics` over a test set.
- Detection (KUMC): :func:`detection_f1_paper` (the original's frame-presence F1, no localisation),
  :func:`detection_f1_iou` (box-level F1 with IoU matching), :func:`coco_ap` (pycocotools) and the converter
  :func:`detections_to_coco`.
- :func:`mean_std` aggregates one metric over seeds.

Inputs may be numpy arrays, torch tensors or nested lists. Rates whose denominator is zero are 0
(scikit-learn's ``zero_division=0``); undefined quantities (AUROC with one class) are NaN, never an exception.

Layer: engine and metrics (docs/architecture.md). May import: foundation, data, models (it needs none of them).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _numpy(x: Any) -> np.ndarray:
    # torch is not imported here (evaluation jobs run without it); a tensor implies it is already loaded.
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    return np.asarray(x)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


# ---------------------------------------------------------------------------------------------- classification


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve as the Mann-Whitney statistic (tied scores count one half); NaN for one class."""
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # Average 1-based rank of each distinct score: tied scores share the mean of their ranks.
    starts = np.cumsum(counts) - counts
    ranks = (starts + (counts + 1) / 2.0)[inverse]
    u = ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def classification_metrics(labels: Any, probs: Any) -> dict[str, Any]:
    """Binary metrics with class 1 (abnormal) as the positive class.

    ``labels`` (N,) in {0, 1}; ``probs`` (N,) probability of class 1 or (N, 2) class probabilities (scores
    such as logits also work). The prediction is the argmax over the two classes, ties going to class 0 as
    with ``argmax``: for (N,) input that is ``p > 0.5``, so p = 0.5 predicts class 0 (argmax of [1 - p, p]).
    AUROC ranks by the class-1 column. Returns ``f1`` (the paper's number, docs/original.md §4.1), ``precision``,
    ``recall``, ``accuracy``, ``auroc`` (NaN with one class present), ``n``, ``n_positive`` and the
    confusion counts ``tp``, ``fp``, ``fn``, ``tn``; conventions as scikit-learn with ``zero_division=0``.
    """
    y = _numpy(labels)
    p = _numpy(probs).astype(np.float64)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1, got values {np.unique(y)[:8].tolist()}")
    y = y.astype(np.int64)
    if p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)
    if p.ndim != 2 or p.shape != (y.size, 2):
        raise ValueError(f"probs must have shape ({y.size},) or ({y.size}, 2) to match labels, got {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("probs must be finite (found NaN or inf)")
    pred = np.argmax(p, axis=1)  # first maximum: class 0 on a tie
    tp = int(((pred == 1) & (y == 1)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    return {
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "accuracy": _ratio(tp + tn, y.size),
        "auroc": _auroc(y, p[:, 1]),
        "n": int(y.size),
        "n_positive": int(y.sum()),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


# ---------------------------------------------------------------------------------------------- segmentation


def _masks(pred: Any, target: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    # Like the original (``pred[pred > 0] = 1``), any positive value is foreground.
    p, t = _numpy(pred) > 0, _numpy(target) > 0
    if p.shape != t.shape:
        raise ValueError(f"{what}: prediction shape {p.shape} differs from target shape {t.shape}")
    return p, t


def dice_paper(pred: Any, target: Any) -> float:
    """Dice of one sequence volume (T, H, W) by the original CVC rule (docs/original.md §4.2, TransUNet + medpy).

    Both non-empty: ``2|P∩G| / (|P| + |G|)``. Quirks kept on purpose: a non-empty prediction on an empty GT
    scores **1**, and an empty prediction scores **0** even when the GT is empty too (a correct "no polyp"
    sequence counts as a total miss).
    """
    p, t = _masks(pred, target, "dice_paper")
    p_sum, t_sum = int(p.sum()), int(t.sum())
    if p_sum > 0 and t_sum > 0:
        return 2.0 * int((p & t).sum()) / (p_sum + t_sum)
    return 1.0 if p_sum > 0 else 0.0


def _frame_scores(p: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame Dice and IoU of (T, H, W) masks; a frame with both masks empty scores 1 and 1."""
    axes = tuple(range(1, p.ndim))
    inter = (p & t).sum(axis=axes).astype(np.float64)
    total = (p.sum(axis=axes) + t.sum(axis=axes)).astype(np.float64)
    union = total - inter
    empty = total == 0
    dice = np.where(empty, 1.0, 2.0 * inter / np.where(empty, 1.0, total))
    iou = np.where(empty, 1.0, inter / np.where(empty, 1.0, union))
    return dice, iou


def frame_dice_iou(pred: Any, target: Any) -> tuple[float, float]:
    """(Dice, IoU) of one frame (H, W); both masks empty → (1.0, 1.0), exactly one empty → (0.0, 0.0)."""
    p, t = _masks(pred, target, "frame_dice_iou")
    dice, iou = _frame_scores(p[None], t[None])
    return float(dice[0]), float(iou[0])


def segmentation_metrics(preds: Sequence[Any], targets: Sequence[Any], names: Sequence[str] | None = None) -> dict:
    """Segmentation metrics of a test set: one boolean (T, H, W) volume per sequence, T may differ.

    ``dice`` is the mean over sequences of :func:`dice_paper` (the paper's number); ``frame_dice`` and
    ``frame_iou`` are means over all frames of all sequences (:func:`frame_dice_iou` convention).
    Also ``n_sequences``, ``n_frames`` and ``per_sequence``: ``dict(name, frames, dice, frame_dice,
    frame_iou)`` per sequence. ``names`` default to the sequence index as a string.
    """
    if len(preds) != len(targets):
        raise ValueError(f"preds has {len(preds)} sequences but targets has {len(targets)}")
    if len(preds) == 0:
        raise ValueError("segmentation_metrics: expected at least one sequence, got none")
    names = [str(i) for i in range(len(preds))] if names is None else [str(n) for n in names]
    if len(names) != len(preds):
        raise ValueError(f"names has {len(names)} entries but there are {len(preds)} sequences")
    per_sequence, all_dice, all_iou = [], [], []
    for name, pred, target in zip(names, preds, targets, strict=True):
        p, t = _masks(pred, target, f"sequence {name!r}")
        if p.ndim != 3:
            raise ValueError(f"sequence {name!r}: expected (T, H, W) masks, got shape {p.shape}")
        if p.shape[0] == 0:
            raise ValueError(f"sequence {name!r}: has no frames")
        dice, iou = _frame_scores(p, t)
        all_dice.append(dice)
        all_iou.append(iou)
        per_sequence.append(
            {
                "name": name,
                "frames": int(p.shape[0]),
                "dice": dice_paper(p, t),
                "frame_dice": float(dice.mean()),
                "frame_iou": float(iou.mean()),
            }
        )
    return {
        "dice": float(np.mean([s["dice"] for s in per_sequence])),
        "frame_dice": float(np.concatenate(all_dice).mean()),
        "frame_iou": float(np.concatenate(all_iou).mean()),
        "n_sequences": len(per_sequence),
        "n_frames": int(sum(s["frames"] for s in per_sequence)),
        "per_sequence": per_sequence,
    }


# ---------------------------------------------------------------------------------------------- detection


def box_iou(a: Any, b: Any) -> np.ndarray:
    """IoU matrix (N, M) of xyxy boxes (N, 4) and (M, 4) in continuous coordinates; zero-area pairs give 0."""
    a = _numpy(a).astype(np.float64).reshape(-1, 4)
    b = _numpy(b).astype(np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _frame(frame: Mapping[str, Any], i: int, need_labels: bool) -> dict[str, np.ndarray]:
    """Validated arrays of one per-frame dict (see :func:`detection_f1_paper`)."""
    if not isinstance(frame, Mapping):
        raise TypeError(f"frames[{i}] must be a dict, got {type(frame).__name__}")
    keys = ["gt_boxes", "boxes", "scores"] + (["gt_labels", "labels"] if need_labels else [])
    missing = [k for k in keys if k not in frame]
    if missing:
        raise ValueError(f"frames[{i}] is missing {missing}; expected keys {keys}")
    out = {}
    for key in ("gt_boxes", "boxes"):
        arr = _numpy(frame[key]).astype(np.float64)
        if arr.size == 0:
            arr = arr.reshape(0, 4)
        if arr.ndim != 2 or arr.shape[1] != 4:
            raise ValueError(f"frames[{i}]['{key}'] must have shape (N, 4) (xyxy), got {arr.shape}")
        out[key] = arr
    out["scores"] = _numpy(frame["scores"]).astype(np.float64).reshape(-1)
    if out["scores"].size != len(out["boxes"]):
        raise ValueError(f"frames[{i}]: {len(out['boxes'])} boxes but {out['scores'].size} scores")
    if need_labels:
        for key, boxes in (("gt_labels", "gt_boxes"), ("labels", "boxes")):
            out[key] = _numpy(frame[key]).astype(np.int64).reshape(-1)
            if out[key].size != len(out[boxes]):
                raise ValueError(f"frames[{i}]: {len(out[boxes])} {boxes} but {out[key].size} {key}")
    return out


def _check_frames(frames: Sequence[Mapping[str, Any]]) -> None:
    if isinstance(frames, Mapping) or len(frames) == 0:
        raise ValueError("frames must be a non-empty list of per-frame dicts")


def detection_f1_paper(frames: Sequence[Mapping[str, Any]], score_threshold: float = 0.5) -> dict[str, Any]:
    """The original KUMC "detection F1": frame-level presence, no localisation (docs/original.md §4.3, §5 flaw 3).

    ``frames``: one dict per test frame with ``gt_boxes`` (N, 4) xyxy, ``boxes`` (M, 4) xyxy and ``scores``
    (M,) (``gt_labels``/``labels`` are ignored here). A frame with ≥1 GT box and ≥1 box scoring
    ``>= score_threshold`` is a TP **wherever the box is and whatever its class**; GT and no such box → FN;
    such a box on a polyp-free frame → FP; neither → TN. Returns the counts and ``precision``, ``recall``,
    ``f1``, ``accuracy``, ``specificity``, ``f2`` (zero denominators → 0). The original also drops
    predictions that are empty after clipping to the image; do that before calling.
    """
    _check_frames(frames)
    tp = fp = fn = tn = 0
    for i, frame in enumerate(frames):
        f = _frame(frame, i, need_labels=False)
        has_gt, has_det = len(f["gt_boxes"]) > 0, bool((f["scores"] >= score_threshold).any())
        tp += has_gt and has_det
        fn += has_gt and not has_det
        fp += has_det and not has_gt
        tn += not has_gt and not has_det
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
        "specificity": _ratio(tn, tn + fp),
        "f2": _ratio(5 * precision * recall, 4 * precision + recall),
    }


def detection_f1_iou(
    frames: Sequence[Mapping[str, Any]],
    iou_threshold: float = 0.5,
    score_threshold: float = 0.5,
    class_aware: bool = True,
) -> dict[str, Any]:
    """Box-level detection F1 (the ``clean`` protocol, docs/original.md §5).

    Per frame, boxes scoring ``>= score_threshold`` are taken in descending score order (stable on ties);
    each matches the still-unmatched GT box of highest IoU (lowest index on ties) with IoU
    ``>= iou_threshold`` and, when ``class_aware``, the same label → TP, else FP. Unmatched GT boxes are
    FN. Counts are summed over frames; returns ``tp``, ``fp``, ``fn``, ``precision``, ``recall``, ``f1``.
    Frame dicts as in :func:`detection_f1_paper`, plus ``gt_labels`` and ``labels`` when ``class_aware``.
    """
    _check_frames(frames)
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    tp = fp = fn = 0
    for i, frame in enumerate(frames):
        f = _frame(frame, i, need_labels=class_aware)
        keep = np.flatnonzero(f["scores"] >= score_threshold)
        order = keep[np.argsort(-f["scores"][keep], kind="stable")]
        iou = box_iou(f["boxes"][order], f["gt_boxes"])
        if class_aware:
            iou = np.where(f["labels"][order][:, None] == f["gt_labels"][None, :], iou, -1.0)
        matched = np.zeros(len(f["gt_boxes"]), dtype=bool)
        for row in iou:
            candidates = np.where(matched | (row < iou_threshold), -1.0, row)
            if candidates.size and candidates.max() >= iou_threshold:
                matched[int(np.argmax(candidates))] = True
                tp += 1
            else:
                fp += 1
        fn += int((~matched).sum())
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }


def detections_to_coco(frames: Sequence[Mapping[str, Any]], image_ids: Sequence[int] | None = None) -> list[dict]:
    """Per-frame predictions → COCO result list ``dict(image_id, category_id, bbox=[x, y, w, h], score)``.

    Each frame dict needs ``boxes`` (M, 4) xyxy, ``scores`` (M,), ``labels`` (M,) and, unless ``image_ids``
    is given, ``image_id``. Labels are used as COCO category ids unchanged: our class ids (1 adenomatous,
    2 hyperplastic, ``endofm.data.kumc.CLASS_IDS``) are the category ids of ``kumc.to_coco``. All boxes are
    kept (AP needs the low-score ones too).
    """
    if image_ids is not None and len(image_ids) != len(frames):
        raise ValueError(f"image_ids has {len(image_ids)} entries but there are {len(frames)} frames")
    results = []
    for i, frame in enumerate(frames):
        if image_ids is None and "image_id" not in frame:
            raise ValueError(f"frames[{i}] has no 'image_id' and no image_ids were given")
        image_id = int(image_ids[i] if image_ids is not None else frame["image_id"])
        f = _frame({"gt_boxes": np.zeros((0, 4)), "gt_labels": [], **frame}, i, need_labels=True)
        for (x0, y0, x1, y1), score, label in zip(f["boxes"], f["scores"], f["labels"], strict=True):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "score": float(score),
                }
            )
    return results


def coco_ap(coco_gt: Mapping[str, Any], detections: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """COCO box AP with pycocotools (its printing suppressed); neither argument is modified.

    ``coco_gt`` is a COCO dict (``images``, ``annotations``, ``categories``) such as ``kumc.to_coco``'s;
    ``detections`` a COCO result list (see :func:`detections_to_coco`). Returns ``AP`` (IoU .50:.95),
    ``AP50``, ``AP75`` and ``AP50_per_category`` keyed by category name, all at area "all", 100 detections
    per image. No detections → all 0 (pycocotools cannot load an empty result list). A category without
    GT boxes has undefined AP (pycocotools' -1), reported as NaN; so is AP when the GT has no boxes at all.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    for key in ("images", "annotations", "categories"):
        if key not in coco_gt:
            raise ValueError(f"coco_gt is missing {key!r}; expected a COCO detection dict")
    names = {int(c["id"]): str(c["name"]) for c in coco_gt["categories"]}
    image_ids = {int(im["id"]) for im in coco_gt["images"]}
    for i, det in enumerate(detections):
        missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in det]
        if missing:
            raise ValueError(f"detections[{i}] is missing {missing}")
        if int(det["image_id"]) not in image_ids:
            raise ValueError(f"detections[{i}]: image_id {det['image_id']} is not an image of coco_gt")
        if int(det["category_id"]) not in names:
            raise ValueError(f"detections[{i}]: category_id {det['category_id']} not in {sorted(names)}")
    dataset = copy.deepcopy(dict(coco_gt))
    for k, ann in enumerate(dataset["annotations"], start=1):  # fields COCOeval needs but a hand-made dict may lack
        ann.setdefault("id", k)
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(ann["bbox"][2]) * float(ann["bbox"][3]))
    if len(detections) == 0:
        with_gt = {int(ann["category_id"]) for ann in dataset["annotations"]}
        zero = 0.0 if with_gt else math.nan
        per_category = {name: 0.0 if i in with_gt else math.nan for i, name in names.items()}
        return {"AP": zero, "AP50": zero, "AP75": zero, "AP50_per_category": per_category}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = dataset
        gt.createIndex()
        # loadRes only sets top-level keys (id, area, iscrowd, segmentation): shallow copies keep ``detections``
        # intact, and a deep copy of thousands of results cost as much as the evaluation itself.
        dt = gt.loadRes([dict(d) for d in detections])
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()

    def undefined_to_nan(x: float) -> float:
        return math.nan if x < 0 else float(x)

    # precision: [IoU thresholds, recall points, categories, area ranges, max detections]; area "all" is 0,
    # maxDets 100 is the last; -1 marks "no GT".
    precision = ev.eval["precision"][0, :, :, 0, -1]
    per_category = {}
    for k, cat_id in enumerate(ev.params.catIds):
        values = precision[:, k]
        per_category[names[int(cat_id)]] = float(values.mean()) if (values > -1).all() else math.nan
    return {
        "AP": undefined_to_nan(ev.stats[0]),
        "AP50": undefined_to_nan(ev.stats[1]),
        "AP75": undefined_to_nan(ev.stats[2]),
        "AP50_per_category": per_category,
    }


# ---------------------------------------------------------------------------------------------- aggregation


def mean_std(values: Sequence[float] | Any) -> dict[str, Any]:
    """``dict(mean, std, n)`` over seeds: sample std (ddof=1), 0.0 for a single value."""
    v = _numpy(values).astype(np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError("mean_std: values must not be empty")
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}
