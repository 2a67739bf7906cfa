"""KUMC detection task: input pipeline, metrics, the fine-tuning run and its evaluation, fitting."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from endofm.config import from_dict, to_dict
from endofm.data.benchmarks import read_manifest
from endofm.data.kumc import KUMCDataset, to_coco
from endofm.data.transforms import torch_rng
from endofm.models.checkpoint import load_checkpoint
from endofm.models.detection import DetectionConfig
from endofm.models.vit import BackboneConfig, build_backbone
from endofm.tasks.benchmarks import evaluate_run, get_benchmark
from endofm.tasks.detect import (
    CAFFE_MEAN_BGR,
    DETECTIONS,
    DetectConfig,
    DetectionDataset,
    DetectTask,
    _to_original,
    detection_metrics,
    normalize_frames,
    pad_clips,
    prepare_item,
    resized_size,
)
from endofm.tasks.evaluation import evaluate_detection
from endofm.tasks.finetune import OptimConfig, RunSpec, TrainConfig, run_finetune
from endofm.tasks.protocols import ProtocolSplits
from endofm.tasks.runs import finetune_benchmark

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MICRO = BackboneConfig(name="vit_micro_patch8")
METRICS = {"f1_paper", "precision_paper", "recall_paper", "f1_iou", "precision_iou", "recall_iou", "AP", "AP50"}


def tiny_config(resize: str = "aspect", **train) -> DetectConfig:
    return DetectConfig(
        resize=resize,
        min_size=48,
        max_size=64,
        size_divisibility=16,
        head=DetectionConfig(fpn_channels=16, num_convs=1),
        train=TrainConfig(
            **{
                "epochs": 2,
                "batch_size": 2,
                "optim": OptimConfig(name="adamw", lr=1e-3),
                "num_workers": 0,
                "max_steps_per_epoch": 3,
                **train,
            }
        ),
    )


# --- input pipeline -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "min_size", "max_size", "expected"),
    [
        ((48, 64), 30, 100, (30, 40)),  # short side to min_size, long side 30 * 64 / 48
        ((64, 48), 30, 100, (40, 30)),  # portrait
        ((48, 64), 30, 36, (27, 36)),  # 40 > 36: short side round(36 * 48 / 64) = 27
        ((480, 640), 600, 640, (480, 640)),  # the official sizes: 800 > 640 caps the short side at 480, as it is
        ((1080, 1920), 600, 640, (360, 640)),
        ((100, 301), 50, 1000, (50, 150)),  # long side truncated: 150.5 -> 150
    ],
)
def test_resized_size_keeping_the_aspect(size, min_size, max_size, expected) -> None:
    assert resized_size(*size, min_size, max_size, "aspect") == expected


@pytest.mark.parametrize("size", [(480, 640), (1080, 1920), (640, 480), (100, 301), (640, 640)])
def test_the_original_resizes_every_frame_to_a_square(size) -> None:
    """STFT's called Resize.get_size returns (max_size, max_size): 640 x 640 for any frame."""
    assert resized_size(*size, 600, 640) == (640, 640)
    assert DetectConfig().resize == "square" and (DetectConfig().min_size, DetectConfig().max_size) == (600, 640)


def test_square_resize_scales_boxes_per_axis_and_maps_predictions_back() -> None:
    """A 16x32 (H x W) frame becomes 64x64: x scales by 2, y by 4."""
    cfg = DetectConfig(**{**tiny_config().__dict__, "resize": "square"})  # max_size 64
    frames = np.zeros((1, 16, 32, 3), np.uint8)
    item = {
        "frames": torch.from_numpy(frames),
        "key_index": 0,
        "boxes": torch.tensor([[4.0, 2.0, 12.0, 10.0]]),
        "labels": torch.tensor([1]),
        "image_id": 3,
        "video": "v",
        "indices": [0],
    }
    plain, flipped = prepare_item(item, cfg), prepare_item(item, cfg, flip=True)
    assert plain["clip"].shape == (3, 1, 64, 64) and plain["scale"] == (2.0, 4.0) and plain["size"] == (16, 32)
    assert plain["boxes"].tolist() == [[8.0, 8.0, 24.0, 40.0]]
    assert flipped["boxes"].tolist() == [[40.0, 8.0, 56.0, 40.0]]  # 64 - 24, 64 - 8
    det = {
        "boxes": torch.tensor([[8.0, 8.0, 24.0, 40.0], [60.0, 60.0, 70.0, 70.0], [66.0, 0.0, 70.0, 8.0]]),
        "scores": torch.tensor([0.9, 0.8, 0.7]),
        "labels": torch.tensor([1, 2, 1]),
    }
    back = _to_original(det, {k: plain[k] for k in ("image_id", "video", "frame", "size", "scale")})
    # / (2, 4): [4, 2, 12, 10]; [30, 15, 35, 17.5] clipped to the 32x16 frame; [33, 0, 35, 2] is outside: dropped.
    np.testing.assert_allclose(back["boxes"], [[4.0, 2.0, 12.0, 10.0], [30.0, 15.0, 32.0, 16.0]])
    assert back["scores"].tolist() == pytest.approx([0.9, 0.8]) and back["labels"].tolist() == [1, 2]


def test_prepare_item_resizes_flips_and_scales_boxes() -> None:
    cfg = tiny_config()  # 24x32 -> 48x64 (x2)
    frames = np.zeros((3, 24, 32, 3), np.uint8)
    frames[:, 2:10, 4:12] = 255  # the box's pixels: xyxy [4, 2, 12, 10]
    item = {
        "frames": torch.from_numpy(frames),
        "key_index": 1,
        "boxes": torch.tensor([[4.0, 2.0, 12.0, 10.0]]),
        "labels": torch.tensor([2]),
        "image_id": 7,
        "video": "v",
        "indices": [3, 4, 5],
    }
    plain, flipped = prepare_item(item, cfg), prepare_item(item, cfg, flip=True)
    assert plain["clip"].shape == (3, 3, 48, 64) and plain["scale"] == (2.0, 2.0) and plain["size"] == (24, 32)
    assert (plain["key_index"], plain["image_id"], plain["frame"], plain["labels"].tolist()) == (1, 7, 5, [2])
    assert plain["boxes"].tolist() == [[8, 4, 24, 20]]
    assert flipped["boxes"].tolist() == [[64 - 24, 4, 64 - 8, 20]]
    assert torch.equal(flipped["clip"], plain["clip"].flip(-1))
    for out in (plain, flipped):  # the boxes still frame the bright square
        x0, y0, x1, y1 = (int(v) for v in out["boxes"][0])
        white = out["clip"][:, :, y0 + 1 : y1 - 1, x0 + 1 : x1 - 1]
        assert torch.allclose(white, (255 - torch.tensor(CAFFE_MEAN_BGR)).view(3, 1, 1, 1).expand_as(white))
        assert out["clip"][0, 0, :, : x0 - 1].max() < -100 and out["clip"][0, 0, :, x1 + 1 :].max() < -100


def test_normalisation_of_a_known_pixel() -> None:
    pixel = np.array([10, 20, 30], np.uint8).reshape(1, 1, 1, 3)  # R, G, B
    caffe = normalize_frames(pixel, "caffe").flatten()  # BGR, 0-255, minus the BGR mean, std 1
    assert caffe.tolist() == pytest.approx([30 - 102.9801, 20 - 115.9465, 10 - 122.7717], abs=1e-4)
    imagenet = normalize_frames(pixel, "imagenet").flatten()
    expected = [(10 / 255 - 0.485) / 0.229, (20 / 255 - 0.456) / 0.224, (30 / 255 - 0.406) / 0.225]
    assert imagenet.tolist() == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="normalization"):
        normalize_frames(pixel, "rgb")


def test_pad_clips_to_a_common_multiple() -> None:
    a, b = torch.randn(3, 2, 20, 30), torch.randn(3, 2, 24, 17)
    out = pad_clips([a, b], 16)
    assert out.shape == (2, 3, 2, 32, 32)
    assert torch.equal(out[0, :, :, :20, :30], a) and torch.equal(out[1, :, :, :24, :17], b)
    assert out[0, :, :, 20:].abs().sum() == 0 and out[0, :, :, :, 30:].abs().sum() == 0
    assert out[1, :, :, 24:].abs().sum() == 0 and out[1, :, :, :, 17:].abs().sum() == 0
    with pytest.raises(ValueError, match="share channels and frames"):
        pad_clips([a, torch.randn(3, 1, 8, 8)], 16)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="test_frames"):
        DetectConfig(test_frames=2)
    with pytest.raises(ValueError, match="train_ref_range"):
        DetectConfig(train_ref_range=[0, 9])
    assert from_dict(DetectConfig, {"train_ref_range": None}).train_ref_range is None  # YAML null: no references
    with pytest.raises(ValueError, match="num_classes"):
        DetectConfig(head=DetectionConfig(num_classes=3))
    optim = DetectConfig().train.optim  # the official recipe, in fractions of the run
    assert (optim.lr, optim.weight_decay, optim.schedule, optim.gamma) == (0.0025, 1e-4, "step", 0.5)
    assert optim.milestones == pytest.approx([64 / 96, 80 / 96, 88 / 96])
    assert optim.warmup_epochs / DetectConfig().train.epochs == pytest.approx(8 / 96)
    cfg = tiny_config()  # the settings survive the YAML round trip the workflow uses
    assert from_dict(DetectConfig, to_dict(cfg)) == cfg
    with pytest.raises(ValueError, match="normalization"):
        from_dict(DetectConfig, {"normalization": "rgb"})


def test_datasets_draw_references_per_item_and_collate_pads(tiny_benchmarks) -> None:
    bench = tiny_benchmarks["kumc"]
    rows = read_manifest(bench.manifest)
    cfg = tiny_config()
    train = DetectionDataset(cfg, rows, bench.raw, "train", train=True)
    seen = set()
    for seed in range(6):
        torch.manual_seed(seed)
        rng = torch_rng()  # the draws the item makes: offsets, then the flip
        offsets = (-int(rng.integers(1, 10)), int(rng.integers(1, 10)))
        flip = bool(rng.random() < cfg.hflip)
        torch.manual_seed(seed)
        item = train[5]
        expected = prepare_item(KUMCDataset(rows, bench.raw, "train", offsets)[5], cfg, flip)
        assert torch.equal(item["clip"], expected["clip"]) and torch.equal(item["boxes"], expected["boxes"])
        assert item["clip"].shape[1] == 3 and item["key_index"] == 1 and item["frame"] == 6
        seen.add((offsets, flip))
    assert len(seen) > 1
    alone = DetectionDataset(DetectConfig(**{**cfg.__dict__, "train_ref_range": None}), rows, bench.raw, "train", True)
    for seed in range(4):  # no references: the key frame alone (T = 1); the flip is the only draw
        torch.manual_seed(seed)
        flip = bool(torch_rng().random() < cfg.hflip)
        torch.manual_seed(seed)
        item = alone[5]
        expected = prepare_item(KUMCDataset(rows, bench.raw, "train")[5], cfg, flip)
        assert item["clip"].shape[1] == 1 and item["key_index"] == 0 and item["frame"] == 6
        assert torch.equal(item["clip"], expected["clip"]) and torch.equal(item["boxes"], expected["boxes"])
    test = DetectionDataset(DetectConfig(**{**cfg.__dict__, "test_frames": 3}), rows, bench.raw, "val", train=False)
    assert test[0]["clip"].shape == (3, 3, 48, 64) and test[0]["key_index"] == 1
    assert torch.equal(test[4]["clip"], test[4]["clip"])
    single = DetectionDataset(cfg, rows, bench.raw, "val", train=False)[4]
    torch.testing.assert_close(single["clip"][:, 0], test[4]["clip"][:, 1])  # the key frame alone
    # The task pads to a multiple of size_divisibility and of the patch size.
    splits = get_benchmark("kumc").protocol_splits(rows, "paper")
    task = DetectTask(DetectConfig(**{**cfg.__dict__, "size_divisibility": 12}), splits, bench.raw)
    task.build_model(build_backbone(MICRO))
    batch = task.collate([single, single])
    assert batch["clip"].shape == (2, 3, 1, 48, 72) and batch["image_sizes"] == [(48, 64), (48, 64)]
    assert batch["key_index"].tolist() == [0, 0] and batch["meta"][0]["image_id"] == single["image_id"]


# --- metrics and evaluation -----------------------------------------------------------------------------


def perfect_results(coco_gt: dict, score: float = 0.9) -> list[dict]:
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": score}
        for a in coco_gt["annotations"]
    ]


def test_evaluation_of_known_detections(tiny_benchmarks, tmp_path) -> None:
    bench = tiny_benchmarks["kumc"]
    rows = read_manifest(bench.manifest)
    test_rows = rows[rows["split"] == "test"]
    coco_gt = to_coco(test_rows, "test")
    assert coco_gt == json.loads((bench.manifest.parent / "coco_test.json").read_text())  # the indexer's export
    results = perfect_results(coco_gt)
    (tmp_path / DETECTIONS).write_text(json.dumps(results))
    metrics = evaluate_detection(tmp_path, test_rows, raw_dir=bench.raw, benchmark_dir=bench.manifest.parent)["metrics"]
    for key in ("f1_paper", "f1_iou", "AP", "AP50", "recall_paper", "precision_iou"):
        assert metrics[key] == pytest.approx(1.0), key
    # Drop frame 1's box and move frame 2's by half its width (IoU 1/3): one FN for the paper rule, and for the
    # box rule one FN plus one FP/FN pair; low-score boxes do not count at the 0.5 threshold.
    n = len(coco_gt["images"])
    assert all(len([a for a in coco_gt["annotations"] if a["image_id"] == i]) == 1 for i in (1, 2))
    moved = [dict(r) for r in results if r["image_id"] != 1]
    x, y, w, h = moved[0]["bbox"]
    moved[0]["bbox"] = [x + w / 2, y, w, h]
    moved.append({"image_id": 1, "category_id": 1, "bbox": [0.0, 0.0, 5.0, 5.0], "score": 0.3})
    got = detection_metrics(coco_gt, moved)
    assert got["recall_paper"] == pytest.approx((n - 1) / n) and got["precision_paper"] == 1.0
    assert (got["precision_iou"], got["recall_iou"]) == pytest.approx(((n - 2) / (n - 1), (n - 2) / n))
    assert got["AP50"] < 1.0
    # The run's own thresholds (run.json settings) apply: at score 0.99 the perfect boxes (score 0.9) are not found.
    (tmp_path / DETECTIONS).write_text(json.dumps(results))
    assert evaluate_detection(tmp_path, test_rows)["metrics"]["f1_paper"] == pytest.approx(1.0)
    strict = evaluate_detection(tmp_path, test_rows, task_settings={"score_threshold": 0.99})["metrics"]
    assert strict["f1_paper"] == 0.0 and strict["f1_iou"] == 0.0
    (tmp_path / DETECTIONS).write_text(json.dumps(results + [{**results[0], "image_id": 999}]))
    with pytest.raises(ValueError, match=r"detections\.json.*999"):
        evaluate_detection(tmp_path, test_rows)


# --- runs -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("protocol", "resize"), [("paper", "square"), ("clean", "aspect")])
def test_finetune_writes_detections_and_evaluates(tiny_benchmarks, tmp_path, protocol, resize) -> None:
    bench = tiny_benchmarks["kumc"]
    spec = RunSpec("kumc", "scratch", "none", protocol, "full", 0)
    record = finetune_benchmark(spec, tiny_config(resize), bench.manifest, bench.raw, tmp_path / "run", MICRO)
    assert record["selection"]["metric"] == "f1_paper" and 0 <= record["selection"]["epoch"] < 2
    assert record["test_split"] == ("val" if protocol == "paper" else "test") and record["predictions"] == [DETECTIONS]
    assert record["splits"]["select_is_test"] == (protocol == "paper")
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert history["epoch"].tolist() == [0, 1] and {f"select_{k}" for k in METRICS} <= set(history)
    detections = json.loads((tmp_path / "run" / DETECTIONS).read_text())
    coco_gt = json.loads((bench.manifest.parent / f"coco_{record['test_split']}.json").read_text())
    sizes = {im["id"]: (im["width"], im["height"]) for im in coco_gt["images"]}
    assert detections and {d["image_id"] for d in detections} <= set(sizes)
    for d in detections:
        x, y, w, h = d["bbox"]
        assert d["score"] > 0.05 and d["category_id"] in (1, 2) and w > 0 and h > 0
        assert x >= 0 and y >= 0 and x + w <= sizes[d["image_id"]][0] and y + h <= sizes[d["image_id"]][1]
    out = evaluate_run(tmp_path / "run", bench.manifest, bench.raw, tmp_path / "m.json", synthetic=True)
    assert out["protocol"] == protocol and METRICS <= set(out["metrics"])
    assert all(0 <= out["metrics"][k] <= 1 for k in METRICS if not math.isnan(out["metrics"][k]))
    if protocol == "paper":  # the test split is the selection split: the selected epoch's scores come back
        assert out["metrics"] == pytest.approx(record["selection"]["scores"], nan_ok=True)


class _ScriptedScores(DetectTask):
    """Selection-split scores written by hand, one dict per evaluated epoch."""

    script = ({"f1_paper": 0.6, "AP50": 0.1}, {"f1_paper": 0.2, "AP50": 0.3}, {"f1_paper": 0.4, "AP50": 0.2})

    def score(self, predictions, role):
        if role == "test":
            return super().score(predictions, role)
        self.calls = getattr(self, "calls", -1) + 1
        return dict(self.script[self.calls])


@pytest.mark.parametrize(("select_metric", "epoch", "value"), [(None, 0, 0.6), ("f1_paper", 0, 0.6), ("AP50", 1, 0.3)])
def test_the_selected_epoch_follows_select_metric(tiny_benchmarks, tmp_path, select_metric, epoch, value) -> None:
    bench = tiny_benchmarks["kumc"]
    cfg = tiny_config(epochs=3, max_steps_per_epoch=1, select_metric=select_metric)
    splits = get_benchmark("kumc").protocol_splits(read_manifest(bench.manifest), "clean")
    task = _ScriptedScores(cfg, splits, bench.raw)
    spec = RunSpec("kumc", "scratch", "none", "clean", "full", 0)
    record = run_finetune(task, cfg.train, spec, build_backbone(MICRO), tmp_path, {})
    assert record["selection"]["metric"] == (select_metric or "f1_paper")
    assert record["selection"]["epoch"] == epoch and record["selection"]["scores"] == task.script[epoch]
    assert load_checkpoint(tmp_path / "model.pt")["extra"]["selected_epoch"] == epoch


def test_select_metric_must_be_a_score_of_the_task() -> None:
    with pytest.raises(ValueError, match=r"select_metric must be one of \['f1_paper', .*'AP50'.* got 'ap50'"):
        tiny_config(select_metric="ap50")
    with pytest.raises(ValueError, match="select_metric must be one of"):
        from_dict(DetectConfig, {"train": {"select_metric": "dice"}})
    assert tiny_config(select_metric="AP50").train.select_metric == "AP50"


def test_finetuning_fits_the_training_frames(tiny_benchmarks, tmp_path) -> None:
    """Selecting on the training frames themselves, loss falls and the boxes are found far above what the
    untrained detector scores."""
    bench = tiny_benchmarks["kumc"]
    paper = get_benchmark("kumc").protocol_splits(read_manifest(bench.manifest), "paper")
    on_train = ProtocolSplits("kumc", "paper", paper.train, paper.train, paper.train, unit=paper.unit)
    cfg = tiny_config(epochs=12, batch_size=4, eval_every=4, max_steps_per_epoch=None)
    cfg.hflip = 0.0  # fitting, not generalising
    torch.manual_seed(0)
    task = DetectTask(cfg, on_train, bench.raw)
    backbone = build_backbone(MICRO)
    untrained = task.score(task.predict(task.build_model(backbone).eval(), "select", torch.device("cpu")), "select")
    run_finetune(task, cfg.train, RunSpec("kumc", "scratch", "none", "paper", "full", 0), backbone, tmp_path, {})
    history = pd.read_csv(tmp_path / "history.csv")
    assert history["loss"].iloc[-2:].mean() < 0.5 * history["loss"].iloc[:2].mean(), history["loss"].tolist()
    best = history["select_AP50"].max()
    assert best >= 0.6 and best >= untrained["AP50"] + 0.4, (untrained["AP50"], history["select_AP50"].tolist())
