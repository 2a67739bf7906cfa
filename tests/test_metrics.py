"""Downstream metrics (docs/original.md §4.1-4.3, §5) against scikit-learn, pycocotools and hand-computed values."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from sklearn import metrics as skm

from endofm.data.kumc import CLASS_IDS, to_coco
from endofm.metrics import (
    box_iou,
    classification_metrics,
    coco_ap,
    detection_f1_iou,
    detection_f1_paper,
    detections_to_coco,
    dice_paper,
    frame_dice_iou,
    mean_std,
    segmentation_metrics,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------------------------- classification


def random_case(rng: np.random.Generator, two_columns: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, probs and the expected predictions; coarse probabilities make ties and exact 0.5 frequent."""
    n = int(rng.integers(1, 25))
    kind = rng.integers(0, 4)  # balanced, all negative, all positive, mostly one class
    p_pos = {0: 0.5, 1: 0.0, 2: 1.0, 3: 0.9}[int(kind)]
    labels = (rng.random(n) < p_pos).astype(int)
    if two_columns:
        probs = np.round(rng.random((n, 2)), 1)
        expected = (probs[:, 1] > probs[:, 0]).astype(int)
    else:
        probs = np.round(rng.random(n), 1)
        expected = (probs > 0.5).astype(int)
    return labels, probs, expected


@pytest.mark.parametrize("two_columns", [False, True])
def test_classification_matches_sklearn(two_columns):
    rng = np.random.default_rng(0 if two_columns else 1)
    single_class = ties = 0
    for _ in range(60):
        labels, probs, pred = random_case(rng, two_columns)
        got = classification_metrics(labels, probs)
        single_class += labels.min() == labels.max()
        ties += (probs[:, 0] == probs[:, 1]).any() if two_columns else (probs == 0.5).any()
        assert got["f1"] == pytest.approx(skm.f1_score(labels, pred, zero_division=0))
        assert got["precision"] == pytest.approx(skm.precision_score(labels, pred, zero_division=0))
        assert got["recall"] == pytest.approx(skm.recall_score(labels, pred, zero_division=0))
        assert got["accuracy"] == pytest.approx(skm.accuracy_score(labels, pred))
        tn, fp, fn, tp = skm.confusion_matrix(labels, pred, labels=[0, 1]).ravel()
        assert (got["tp"], got["fp"], got["fn"], got["tn"]) == (tp, fp, fn, tn)
        assert (got["n"], got["n_positive"]) == (len(labels), labels.sum())
        score = probs[:, 1] if two_columns else probs
        if 0 < labels.sum() < len(labels):
            assert got["auroc"] == pytest.approx(skm.roc_auc_score(labels, score))
        else:
            assert math.isnan(got["auroc"])
    assert single_class >= 5 and ties >= 5  # the degenerate cases were exercised


def test_classification_ties_go_to_class_0():
    got = classification_metrics([1, 0], [0.5, 0.5])
    assert (got["tp"], got["fp"], got["fn"], got["tn"]) == (0, 0, 1, 1)
    got = classification_metrics([1, 0], [[0.3, 0.3], [0.2, 0.8]])
    assert (got["tp"], got["fp"], got["fn"], got["tn"]) == (0, 1, 1, 0)
    # Just above 0.5 is class 1.
    assert classification_metrics([1], [0.5000001])["tp"] == 1


def test_classification_degenerate_and_hand_values():
    # No positive predictions and no positive labels: every rate with a zero denominator is 0.
    got = classification_metrics([0, 0, 0], [0.1, 0.2, 0.3])
    assert (got["f1"], got["precision"], got["recall"], got["accuracy"]) == (0.0, 0.0, 0.0, 1.0)
    assert math.isnan(got["auroc"])
    # tp=2, fp=1, fn=1, tn=1: P = R = 2/3, F1 = 2/3; AUROC: positives 0.9, 0.8, 0.4 vs negatives 0.7, 0.1 -> 5/6.
    got = classification_metrics([1, 1, 0, 1, 0], [0.9, 0.8, 0.7, 0.4, 0.1])
    assert got["f1"] == pytest.approx(2 / 3)
    assert got["auroc"] == pytest.approx(5 / 6)
    assert got["accuracy"] == pytest.approx(3 / 5)


def test_classification_torch_inputs_and_json():
    rng = np.random.default_rng(3)
    labels, probs = rng.integers(0, 2, 40), rng.integers(0, 9, (40, 2)) / 8  # exact in bfloat16
    expected = classification_metrics(labels, probs)
    assert classification_metrics(torch.from_numpy(labels), torch.from_numpy(probs).to(torch.bfloat16)) == expected
    assert classification_metrics(torch.from_numpy(labels).bool(), torch.from_numpy(probs)) == expected
    assert json.loads(json.dumps(expected)) == expected
    assert all(type(v) in (int, float) for v in expected.values())


@pytest.mark.parametrize(
    ("labels", "probs", "match"),
    [
        ([0, 2], [0.1, 0.9], "labels must be 0 or 1"),
        ([0, 1], [0.1, 0.9, 0.3], "probs must have shape"),
        ([0, 1], np.zeros((2, 3)), "probs must have shape"),
        ([0, 1], [0.1, float("nan")], "finite"),
        ([], [], "non-empty"),
        ([[0, 1]], [0.1, 0.2], "1-D"),
    ],
)
def test_classification_rejects_bad_input(labels, probs, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(labels, probs)


# --------------------------------------------------------------------------------------------- segmentation


def block(shape: tuple[int, ...], y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[..., y0:y1, x0:x1] = True
    return m


def test_frame_dice_iou_hand_values():
    pred, target = block((6, 6), 0, 2, 0, 2), block((6, 6), 0, 2, 1, 3)  # 4 px each, 2 shared
    assert frame_dice_iou(pred, target) == pytest.approx((0.5, 1 / 3))
    assert frame_dice_iou(pred, pred) == (1.0, 1.0)
    empty = np.zeros((6, 6), dtype=bool)
    assert frame_dice_iou(empty, empty) == (1.0, 1.0)  # clean convention: nothing to find, nothing found
    assert frame_dice_iou(empty, target) == (0.0, 0.0)
    assert frame_dice_iou(pred, empty) == (0.0, 0.0)
    assert frame_dice_iou(torch.from_numpy(pred), torch.from_numpy(target).int()) == pytest.approx((0.5, 1 / 3))


def test_frame_dice_iou_matches_sklearn_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(50):
        pred, target = rng.random((8, 8)) < rng.random(), rng.random((8, 8)) < rng.random()
        if not (pred.any() or target.any()):
            continue
        dice, iou = frame_dice_iou(pred, target)
        assert dice == pytest.approx(skm.f1_score(target.ravel(), pred.ravel(), zero_division=0))
        assert iou == pytest.approx(skm.jaccard_score(target.ravel(), pred.ravel(), zero_division=0))


def test_dice_paper_volume_and_quirks():
    shape = (3, 6, 6)
    target = np.zeros(shape, dtype=bool)
    target[0, 0:2, 0:2] = True  # 4 px, frames 1-2 polyp-free
    pred = np.zeros(shape, dtype=bool)
    pred[0, 0:2, 1:3] = True  # 2 px overlap
    pred[2, 4:6, 4:6] = True  # 4 px false positive on a polyp-free frame
    # Whole-volume Dice (medpy dc): 2*2 / (8 + 4).
    assert dice_paper(pred, target) == pytest.approx(4 / 12)
    assert dice_paper(pred, target) == pytest.approx(skm.f1_score(target.ravel(), pred.ravel()))
    empty = np.zeros(shape, dtype=bool)
    # Quirk 1: any prediction on an empty GT volume scores 1.
    assert dice_paper(pred, empty) == 1.0
    # Quirk 2: an empty prediction scores 0, even when the GT is empty too.
    assert dice_paper(empty, empty) == 0.0
    assert dice_paper(empty, target) == 0.0
    # Non-boolean masks: any positive value is foreground (the original binarises with > 0).
    assert dice_paper(pred.astype(np.uint8) * 255, target.astype(np.float32)) == pytest.approx(4 / 12)
    with pytest.raises(ValueError, match="differs from target shape"):
        dice_paper(pred, target[:2])


def test_segmentation_metrics_aggregation():
    a_target = np.zeros((3, 4, 4), dtype=bool)
    a_target[:, 0:2, 0:2] = True
    a_pred = a_target.copy()
    a_pred[2] = False  # frames: 1, 1, 0
    b_target = np.zeros((1, 4, 4), dtype=bool)  # one polyp-free frame, correctly left empty
    b_pred = b_target.copy()
    got = segmentation_metrics([a_pred, torch.from_numpy(b_pred)], [a_target, b_target], names=["a", "b"])
    dice_a = 2 * 8 / (8 + 12)
    assert got["per_sequence"][0] == {
        "name": "a",
        "frames": 3,
        "dice": pytest.approx(dice_a),
        "frame_dice": pytest.approx(2 / 3),
        "frame_iou": pytest.approx(2 / 3),
    }
    # Sequence b: the paper rule gives 0 (empty prediction), the per-frame convention 1.
    assert got["per_sequence"][1] == {"name": "b", "frames": 1, "dice": 0.0, "frame_dice": 1.0, "frame_iou": 1.0}
    assert got["dice"] == pytest.approx((dice_a + 0.0) / 2)
    # Frame means pool all 4 frames (not the mean of the two sequence means, which would be 5/6).
    assert got["frame_dice"] == pytest.approx(3 / 4)
    assert got["frame_iou"] == pytest.approx(3 / 4)
    assert (got["n_sequences"], got["n_frames"]) == (2, 4)
    assert json.loads(json.dumps(got)) == got
    assert [s["name"] for s in segmentation_metrics([a_pred], [a_target])["per_sequence"]] == ["0"]


def test_segmentation_metrics_rejects_bad_input():
    ok = np.zeros((2, 4, 4), dtype=bool)
    with pytest.raises(ValueError, match="sequence 'second'.*differs from target shape"):
        segmentation_metrics([ok, ok], [ok, ok[:1]], names=["first", "second"])
    with pytest.raises(ValueError, match=r"sequence '0'.*\(T, H, W\)"):
        segmentation_metrics([ok[0]], [ok[0]])
    with pytest.raises(ValueError, match="2 sequences"):
        segmentation_metrics([ok, ok], [ok])
    with pytest.raises(ValueError, match="names has 1"):
        segmentation_metrics([ok, ok], [ok, ok], names=["x"])
    with pytest.raises(ValueError, match="at least one"):
        segmentation_metrics([], [])


# --------------------------------------------------------------------------------------------- detection


def scalar_iou(a, b) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def test_box_iou_matches_pairwise_reference():
    rng = np.random.default_rng(0)
    corners = rng.random((2, 7, 2, 2)) * 50
    corners[1, :3] = corners[0, :3] + rng.random((3, 2, 2))  # some heavily overlapping pairs
    a, b = (np.concatenate([c.min(axis=1), c.max(axis=1)], axis=1) for c in corners)
    expected = np.array([[scalar_iou(x, y) for y in b] for x in a])
    assert (expected > 0.5).any() and (expected == 0).any()
    np.testing.assert_allclose(box_iou(a, b), expected, rtol=1e-12)
    np.testing.assert_allclose(box_iou(torch.from_numpy(a).float(), b), expected, rtol=1e-5)
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 7)
    assert box_iou([[0, 0, 0, 0]], [[0, 0, 0, 0]])[0, 0] == 0.0  # zero-area pair, no division by zero
    assert box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10]])[0, 0] == pytest.approx(50 / 150)


GT = [[10, 10, 50, 50]]


def frame(gt_boxes=(), gt_labels=(), boxes=(), scores=(), labels=()) -> dict:
    return {
        "gt_boxes": np.asarray(gt_boxes, dtype=float).reshape(-1, 4),
        "gt_labels": np.asarray(gt_labels, dtype=int),
        "boxes": np.asarray(boxes, dtype=float).reshape(-1, 4),
        "scores": np.asarray(scores, dtype=float),
        "labels": np.asarray(labels, dtype=int),
    }


FRAMES = [
    frame(GT, [1], [[100, 100, 140, 140]], [0.9], [1]),  # box in the wrong place: paper TP; IoU FP + FN
    frame(GT, [1], GT, [0.8], [2]),  # right place, wrong class: paper TP; class-aware FP + FN, agnostic TP
    frame((), (), [[0, 0, 5, 5]], [0.7], [1]),  # box on a polyp-free frame: FP for both
    frame((), (), [[0, 0, 5, 5]], [0.3], [1]),  # low score on a polyp-free frame: paper TN; nothing for IoU
    frame(GT, [1], GT, [0.4], [1]),  # correct but under the score threshold: FN for both
    frame(GT + [[60, 60, 80, 80]], [1, 1], GT, [0.6], [1]),  # one of two polyps found: paper TP; IoU TP + FN
    frame(GT, [1], GT + [[11, 11, 50, 50]], [0.9, 0.95], [1, 1]),  # duplicate: paper TP; IoU TP + FP
    frame(GT, [2], GT, [0.5], [2]),  # score exactly at the threshold counts: TP for both
]


def test_detection_f1_paper_presence_rule():
    got = detection_f1_paper(FRAMES)
    assert (got["tp"], got["fp"], got["fn"], got["tn"]) == (5, 1, 1, 1)
    p, r = 5 / 6, 5 / 6
    assert got["precision"] == pytest.approx(p)
    assert got["recall"] == pytest.approx(r)
    assert got["f1"] == pytest.approx(2 * p * r / (p + r))
    assert got["f2"] == pytest.approx(5 * p * r / (4 * p + r))
    assert got["accuracy"] == pytest.approx(6 / 8)
    assert got["specificity"] == pytest.approx(1 / 2)
    # Labels play no part: dropping them changes nothing.
    unlabelled = [{k: v for k, v in f.items() if k not in ("labels", "gt_labels")} for f in FRAMES]
    assert detection_f1_paper(unlabelled) == got
    # A higher threshold turns the 0.5 frame into an FN and the 0.6 one too.
    higher = detection_f1_paper(FRAMES, score_threshold=0.65)
    assert (higher["tp"], higher["fp"], higher["fn"], higher["tn"]) == (3, 1, 3, 1)


def test_detection_f1_paper_degenerate():
    # Every frame shows a polyp (as after the official kumc.py filter): FP = 0 and F1 = 2R / (1 + R).
    frames = [frame(GT, [1], GT, [0.9], [1]), frame(GT, [1]), frame(GT, [1]), frame(GT, [1], GT, [0.7], [1])]
    got = detection_f1_paper(frames)
    assert (got["fp"], got["tn"], got["specificity"]) == (0, 0, 0.0)
    assert got["f1"] == pytest.approx(2 * 0.5 / 1.5)
    nothing = detection_f1_paper([frame(), frame()])
    assert nothing["tn"] == 2
    assert (nothing["precision"], nothing["recall"], nothing["f1"], nothing["f2"]) == (0.0, 0.0, 0.0, 0.0)
    assert nothing["accuracy"] == 1.0


def test_detection_f1_iou_disagrees_with_paper():
    aware = detection_f1_iou(FRAMES)
    # TP: frames 5, 6, 7 (one each); FP: frames 0, 1, 2, 6; FN: frames 0, 1, 4, 5.
    assert (aware["tp"], aware["fp"], aware["fn"]) == (3, 4, 4)
    assert aware["precision"] == pytest.approx(3 / 7)
    assert aware["recall"] == pytest.approx(3 / 7)
    assert aware["f1"] == pytest.approx(3 / 7)
    assert aware["f1"] < detection_f1_paper(FRAMES)["f1"]
    agnostic = detection_f1_iou(FRAMES, class_aware=False)
    assert (agnostic["tp"], agnostic["fp"], agnostic["fn"]) == (4, 3, 3)
    # Even a loose IoU threshold keeps the wrong-place box (IoU 0), the wrong class and the duplicate (its GT is
    # already taken) as FPs.
    loose = detection_f1_iou(FRAMES, iou_threshold=0.01)
    assert (loose["tp"], loose["fp"], loose["fn"]) == (3, 4, 4)


def test_detection_f1_iou_greedy_by_score():
    # 1-D layout (all boxes span y 0..10): g1 = [0, 10], g2 = [4, 14].
    # a = [3, 13] (score 0.9): IoU 7/13 with g1, 9/11 with g2 -> takes g2.
    # b = [4, 14] (score 0.8): IoU 1 with g2 (taken), 6/14 with g1 (< 0.5) -> FP; g1 stays unmatched.
    f = frame([[0, 0, 10, 10], [4, 0, 14, 10]], [1, 1], [[4, 0, 14, 10], [3, 0, 13, 10]], [0.8, 0.9], [1, 1])
    got = detection_f1_iou([f])
    assert (got["tp"], got["fp"], got["fn"]) == (1, 1, 1)
    # Swapping the scores lets b take g2 and a take g1 (7/13 >= 0.5).
    f["scores"] = np.array([0.9, 0.8])
    got = detection_f1_iou([f])
    assert (got["tp"], got["fp"], got["fn"]) == (2, 0, 0)
    # Without labels only the class-agnostic variant works.
    bare = {k: v for k, v in f.items() if k not in ("labels", "gt_labels")}
    assert detection_f1_iou([bare], class_aware=False)["tp"] == 2
    with pytest.raises(ValueError, match="missing"):
        detection_f1_iou([bare])


def test_detection_rejects_bad_input():
    with pytest.raises(ValueError, match="non-empty list"):
        detection_f1_paper([])
    with pytest.raises(ValueError, match=r"frames\[0\]\['boxes'\] must have shape"):
        detection_f1_paper([{**frame(GT, [1]), "boxes": np.zeros((2, 3))}])
    with pytest.raises(ValueError, match="1 boxes but 2 scores"):
        detection_f1_paper([frame(GT, [1], GT, [0.9, 0.8], [1])])
    with pytest.raises(ValueError, match="iou_threshold"):
        detection_f1_iou([frame(GT, [1])], iou_threshold=0.0)
    with pytest.raises(TypeError, match="must be a dict"):
        detection_f1_paper([GT])


# --------------------------------------------------------------------------------------------- COCO AP


def synthetic_coco() -> tuple[dict, list[dict]]:
    """4 images, 2 categories, 5 GT boxes; detections with hits, misses, wrong classes and duplicates."""
    gt_boxes = {  # image id -> [(category, xyxy)]
        1: [(1, [10, 10, 60, 60])],
        2: [(2, [20, 30, 90, 80]), (1, [100, 100, 140, 150])],
        3: [],
        4: [(2, [0, 0, 40, 40]), (2, [50, 50, 120, 110])],
    }
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 160, "height": 160} for i in gt_boxes]
    annotations = []
    for image_id, objs in gt_boxes.items():
        for cat, (x0, y0, x1, y1) in objs:
            w, h = x1 - x0, y1 - y0
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": [x0, y0, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": 1, "name": "adenomatous"}, {"id": 2, "name": "hyperplastic"}]
    frames = [
        {"image_id": 1, "boxes": [[12, 8, 62, 58], [0, 100, 30, 130]], "scores": [0.9, 0.6], "labels": [1, 1]},
        {"image_id": 2, "boxes": [[25, 30, 88, 85], [100, 100, 140, 150]], "scores": [0.7, 0.3], "labels": [2, 2]},
        {"image_id": 3, "boxes": [[5, 5, 30, 30]], "scores": [0.8], "labels": [2]},
        {
            "image_id": 4,
            "boxes": [[0, 2, 38, 44], [2, 0, 40, 40], [55, 50, 130, 100]],
            "scores": [0.95, 0.5, 0.4],
            "labels": [2, 2, 2],
        },
    ]
    return {"images": images, "annotations": annotations, "categories": categories}, detections_to_coco(frames)


def direct_cocoeval(tmp_path, gt: dict, dets: list[dict], cat_ids: list[int] | None = None) -> np.ndarray:
    """pycocotools the documented way: files on disk, COCO(path), loadRes(path)."""
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(tmp_path / "gt.json"))
        ev = COCOeval(coco, coco.loadRes(str(tmp_path / "dt.json")), "bbox")
        if cat_ids is not None:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_detections_to_coco_format():
    dets = detections_to_coco([{"boxes": [[1, 2, 11, 22]], "scores": [0.5], "labels": [2]}], image_ids=[7])
    assert dets == [{"image_id": 7, "category_id": 2, "bbox": [1.0, 2.0, 10.0, 20.0], "score": 0.5}]
    assert detections_to_coco([{"image_id": 3, "boxes": [], "scores": [], "labels": []}]) == []
    with pytest.raises(ValueError, match="no 'image_id'"):
        detections_to_coco([{"boxes": [], "scores": [], "labels": []}])


def test_coco_ap_matches_pycocotools(tmp_path):
    gt, dets = synthetic_coco()
    gt_before, dets_before = copy.deepcopy(gt), copy.deepcopy(dets)
    got = coco_ap(gt, dets)
    assert (gt, dets) == (gt_before, dets_before)  # pycocotools writes into its inputs; ours must not leak
    stats = direct_cocoeval(tmp_path, gt, dets)
    assert got["AP"] == pytest.approx(stats[0])
    assert got["AP50"] == pytest.approx(stats[1])
    assert got["AP75"] == pytest.approx(stats[2])
    assert 0.0 < got["AP"] < got["AP50"] < 1.0  # a non-trivial case
    for cat_id, name in ((1, "adenomatous"), (2, "hyperplastic")):
        assert got["AP50_per_category"][name] == pytest.approx(direct_cocoeval(tmp_path, gt, dets, [cat_id])[1])
    assert np.mean(list(got["AP50_per_category"].values())) == pytest.approx(got["AP50"])
    assert json.loads(json.dumps(got)) == got


def test_coco_ap_perfect_empty_and_undefined():
    gt, _ = synthetic_coco()
    perfect = [{**a, "score": 1.0} for a in gt["annotations"]]
    got = coco_ap(gt, [{k: a[k] for k in ("image_id", "category_id", "bbox", "score")} for a in perfect])
    assert (got["AP"], got["AP50"], got["AP75"]) == pytest.approx((1.0, 1.0, 1.0))
    assert got["AP50_per_category"] == pytest.approx({"adenomatous": 1.0, "hyperplastic": 1.0})
    none = coco_ap(gt, [])
    assert none == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "AP50_per_category": {"adenomatous": 0.0, "hyperplastic": 0.0}}
    # A category without GT boxes has no AP (pycocotools' -1 -> NaN); the other one is still scored.
    only_one = {**gt, "annotations": [a for a in gt["annotations"] if a["category_id"] == 1]}
    dets = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 50, 50], "score": 0.9}]
    got = coco_ap(only_one, dets + [{"image_id": 1, "category_id": 2, "bbox": [0, 0, 5, 5], "score": 0.9}])
    assert math.isnan(got["AP50_per_category"]["hyperplastic"])
    assert got["AP50_per_category"]["adenomatous"] == pytest.approx(got["AP50"])
    assert math.isnan(coco_ap(only_one, [])["AP50_per_category"]["hyperplastic"])


def test_coco_ap_rejects_bad_detections():
    gt, dets = synthetic_coco()
    with pytest.raises(ValueError, match="image_id 99"):
        coco_ap(gt, [{**dets[0], "image_id": 99}])
    with pytest.raises(ValueError, match="category_id 0"):
        coco_ap(gt, [{**dets[0], "category_id": 0}])
    with pytest.raises(ValueError, match="missing"):
        coco_ap(gt, [{"image_id": 1}])
    with pytest.raises(ValueError, match="'categories'"):
        coco_ap({"images": [], "annotations": []}, [])


def test_coco_ap_consistent_with_kumc_to_coco():
    """Our class ids are to_coco's category ids: predicting the manifest's own boxes gives AP 1."""
    boxes = [[[5.0, 5.0, 40.0, 30.0]], [], [[10.0, 0.0, 60.0, 45.0], [70.0, 70.0, 90.0, 95.0]]]
    labels = [[CLASS_IDS["adenomatous"]], [], [CLASS_IDS["hyperplastic"], CLASS_IDS["adenomatous"]]]
    manifest = pd.DataFrame(
        {
            "split": ["val"] * 4,
            "video": ["1"] * 4,
            "frame": [1, 2, 3, 4],
            "image": [f"val2019/Image/1/{k}.jpg" for k in (1, 2, 3, 4)],
            "annotation": [f"val2019/Annotation/1/{k}.xml" for k in (1, 2, 3)] + [""],
            "annotated": [True, True, True, False],
            "boxes": [json.dumps(b) for b in boxes] + ["[]"],
            "labels": [json.dumps(lab) for lab in labels] + ["[]"],
            "width": [100] * 4,
            "height": [100] * 4,
        }
    )
    gt = to_coco(manifest, "val")
    frames = [
        {"image_id": im["id"], "boxes": b, "scores": [1.0] * len(b), "labels": lab}
        for im, b, lab in zip(gt["images"], boxes, labels, strict=True)
    ]
    got = coco_ap(gt, detections_to_coco(frames))
    assert (got["AP"], got["AP50"]) == pytest.approx((1.0, 1.0))
    assert set(got["AP50_per_category"]) == set(CLASS_IDS)


# --------------------------------------------------------------------------------------------- aggregation


def test_mean_std():
    assert mean_std([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 3}
    assert mean_std([0.7]) == {"mean": 0.7, "std": 0.0, "n": 1}
    values = np.random.default_rng(0).random(5)
    got = mean_std(torch.from_numpy(values))
    assert got["std"] == pytest.approx(np.std(values, ddof=1))
    assert type(got["n"]) is int and type(got["mean"]) is float
    with pytest.raises(ValueError, match="empty"):
        mean_std([])
