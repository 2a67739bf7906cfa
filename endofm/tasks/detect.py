"""KUMC polyp detection: the detector's input pipeline, fine-tuning task and evaluation (docs/original.md §4.3).

Inputs follow the original (STFT on maskrcnn-benchmark): every frame resized to a ``max_size`` ×
``max_size`` square, aspect not kept (``resize="square"``: the ``Resize.get_size`` the original calls
returns ``(max_size, max_size)``, 640 × 640; docs/original.md §4.3), or, with ``resize="aspect"``,
maskrcnn-benchmark's aspect-keeping rule (short side to ``min_size`` unless the long side would exceed
``max_size``; the original has it as ``get_size_`` but does not call it), horizontal flip in training, Caffe-style normalisation (BGR, 0-255, minus the pixel mean, std 1), zero padding at the
right/bottom to a multiple of ``size_divisibility`` and of the patch size. Training clips are the key
frame with one reference drawn from ``[-hi, -lo]`` and one from ``[lo, hi]`` (T = 3); at test each
frame is encoded alone (T = 1), or with its ``test_frames // 2`` neighbours on each side.

Predictions are boxes in the original image's pixels (0-based continuous xyxy, as
:mod:`endofm.data.kumc`), written as ``detections.json`` in the COCO results format (every box the
model keeps at its 0.05 pre-NMS threshold) and scored against :func:`endofm.data.kumc.to_coco`:

- ``f1_paper`` (+ ``precision_paper``, ``recall_paper``): the original's frame-presence F1 at score
  ``score_threshold``, no localisation (:func:`endofm.metrics.detection_f1_paper`, docs/original.md §5 flaw 3);
- ``f1_iou`` (+ ``precision_iou``, ``recall_iou``): class-aware box F1 at IoU ``iou_threshold``;
- ``AP``, ``AP50``, ``AP75`` and ``AP50_<class>``: COCO box AP (pycocotools).

Layer: tasks (docs/architecture.md). May import: foundation, data, models, engine, metrics, pretraining, methods and the other tasks modules.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from endofm.config import check_fields, setting
from endofm.data.corruptions import ClipCorruption
from endofm.data.kumc import CLASS_IDS, KUMCDataset, to_coco
from endofm.data.transforms import IMAGENET_MEAN, IMAGENET_STD, to_normalized_tensor, torch_rng
from endofm.io import write_json
from endofm.metrics import detections_to_coco
from endofm.models.detection import DetectionConfig, DetectionModel
from endofm.models.vit import TimeSformer
from endofm.tasks.evaluation import DETECTIONS, detection_metrics
from endofm.tasks.finetune import OptimConfig, Task, TrainConfig
from endofm.tasks.protocols import ProtocolSplits

#: maskrcnn-benchmark's ``INPUT.PIXEL_MEAN``: BGR order, 0-255 scale (docs/original.md §4.3 rounds it to 2 decimals).
CAFFE_MEAN_BGR = (102.9801, 115.9465, 122.7717)

Normalization = Literal["caffe", "imagenet"]
ResizeRule = Literal["square", "aspect"]
RESIZE_RULES: tuple[str, ...] = ("square", "aspect")


def _official_train() -> TrainConfig:
    # STFT's kumc_R_50_STFT recipe (docs/original.md §4.3): SGD momentum 0.9, lr 0.0025, wd 1e-4 with bias wd 0, one
    # image per batch, 96k iterations: 8k warm-up, lr x0.5 at 64k/80k/88k. In epochs: 96k iterations are ~3.3
    # passes over train2019's ~28.8k annotated frames [unverified count], so 3 epochs; the warm-up is 1/12 of
    # the run and the milestones 2/3, 5/6, 11/12 of it. Not reproducible with OptimConfig: the original's bias
    # lr x2 (one lr per backbone/head group here), its warm-up shape (ours ramps linearly from 0), and
    # bias_weight_decay=False also exempts norm weights and other 1-D parameters (the original decays them).
    return TrainConfig(
        epochs=3,
        batch_size=1,
        optim=OptimConfig(
            name="sgd",
            lr=0.0025,
            momentum=0.9,
            weight_decay=1e-4,
            bias_weight_decay=False,
            schedule="step",
            warmup_epochs=0.25,
            milestones=[2 / 3, 5 / 6, 11 / 12],
            gamma=0.5,
        ),
    )


@dataclass
class DetectConfig:
    """KUMC settings; the defaults are the official recipe (docs/original.md §4.3).

    ``resize``: ``square`` (the original: every frame to ``max_size`` × ``max_size``, aspect not kept;
    ``min_size`` unused) or ``aspect`` (short side ``min_size``, long side at most ``max_size``, aspect
    kept). Boxes follow the frame's own x and y scales, and predictions are mapped back to original pixels.
    ``normalization``: ``caffe`` (the original's quirk: BGR 0-255 minus :data:`CAFFE_MEAN_BGR`, std 1,
    although the backbone was pretrained on RGB [0, 1] ImageNet-normalised input; docs/original.md §5 flaw 6)
    or ``imagenet`` (RGB, [0, 1], ImageNet mean/std). ``train_ref_range`` ``[lo, hi]``: training clips
    take one reference at an offset drawn from ``[-hi, -lo]`` and one from ``[lo, hi]`` (clamped at the
    video's ends; T = 3, the original); ``null``: the key frame alone (T = 1, as at test, a third of the
    backbone's cost per step). ``test_frames``: odd clip length at test (1 = the original). ``score_threshold`` and
    ``iou_threshold`` define ``f1_paper`` / ``f1_iou``.
    """

    resize: ResizeRule = setting(
        "square",
        "square: every frame to max_size x max_size, aspect not kept (the original, 640 x 640); aspect: short side "
        "min_size, long side at most max_size (maskrcnn-benchmark's rule, not called by the original)",
    )
    min_size: int = setting(600, "Short side under resize: aspect (unused by square)", minimum=1)
    max_size: int = setting(
        640, "Square side, or the long side's cap under resize: aspect (at least min_size)", minimum=1
    )
    size_divisibility: int = setting(32, "Padded input sizes are multiples of this", minimum=1)
    train_ref_range: list[int] | None = setting(
        description="[lo, hi]: training reference frames at offsets drawn from [-hi, -lo] and [lo, hi] (T = 3, the "
        "original); null: the key frame alone (T = 1, as at test)",
        factory=lambda: [1, 9],
        min_items=2,
        max_items=2,
        each=dict(minimum=1),
    )
    test_frames: int = setting(1, "Odd clip length at test (1: the key frame alone, the original)", minimum=1)
    hflip: float = setting(0.5, "Probability of a horizontal flip in training", minimum=0, maximum=1)
    normalization: Normalization = setting(
        "caffe", "caffe: the original's BGR 0-255 minus the Caffe mean; imagenet: RGB ImageNet mean/std"
    )
    score_threshold: float = setting(0.5, "Detection score threshold of the F1 metrics", minimum=0, maximum=1)
    iou_threshold: float = setting(0.5, "IoU a detection needs for the IoU-aware F1", exclusive_minimum=0, maximum=1)
    head: DetectionConfig = setting(
        description="The detector's pyramid, head, targets and post-processing", factory=DetectionConfig
    )
    train: TrainConfig = setting(description="The training loop's settings", factory=_official_train)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.max_size < self.min_size:
            raise ValueError(f"expected min_size <= max_size, got min_size {self.min_size}, max_size {self.max_size}")
        refs = self.train_ref_range
        if refs is not None and refs[0] > refs[1]:
            raise ValueError(f"train_ref_range must be [lo, hi] with lo <= hi, or null, got {refs}")
        if self.test_frames % 2 == 0:
            raise ValueError(
                f"test_frames must be an odd number >= 1 (key frame in the middle), got {self.test_frames}"
            )
        if self.head.num_classes != len(CLASS_IDS):
            raise ValueError(f"head.num_classes must be {len(CLASS_IDS)} (KUMC's classes), got {self.head.num_classes}")
        DetectTask.selection_key(self.train)


# ----------------------------------------------------------------------------------------------------
# Input pipeline


def resized_size(height: int, width: int, min_size: int, max_size: int, rule: ResizeRule = "square") -> tuple[int, int]:
    """``(height, width)`` the network sees. ``square``: ``(max_size, max_size)`` whatever the frame (the
    original's ``Resize.get_size``). ``aspect``: maskrcnn-benchmark's rule, the short side becomes
    ``min_size``, or ``round(max_size · short / long)`` when the long side would exceed ``max_size``; the
    long side is truncated (``int``); an image already at that short side is kept (the original's uncalled
    ``get_size_``, without its STFT floor of 384 px)."""
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if rule == "square":
        return max_size, max_size
    if rule != "aspect":
        raise ValueError(f"resize rule must be one of {RESIZE_RULES}, got {rule!r}")
    short, long = min(height, width), max(height, width)
    size = min_size
    if long / short * size > max_size:
        size = int(round(max_size * short / long))
    if short == size:
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (T, H, W, 3) -> (T, height, width, 3), bilinear with antialiasing (as PIL's resize)."""
    if frames.shape[1:3] == (height, width):
        return frames
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    y = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return np.ascontiguousarray(y.permute(0, 2, 3, 1).numpy())


def normalize_frames(frames: np.ndarray, normalization: Normalization = "caffe") -> torch.Tensor:
    """uint8 RGB (T, H, W, 3) -> float (3, T, H, W); see :class:`DetectConfig` for the two conventions."""
    if normalization == "imagenet":
        return to_normalized_tensor(frames, IMAGENET_MEAN, IMAGENET_STD)
    if normalization != "caffe":
        raise ValueError(f"normalization must be 'caffe' or 'imagenet', got {normalization!r}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
    bgr = torch.from_numpy(np.ascontiguousarray(frames[..., ::-1])).permute(3, 0, 1, 2).float()
    return bgr - torch.tensor(CAFFE_MEAN_BGR).view(3, 1, 1, 1)


def prepare_item(item: Mapping[str, Any], cfg: DetectConfig, flip: bool = False) -> dict[str, Any]:
    """A :class:`~endofm.data.kumc.KUMCDataset` item -> the network's view of it.

    Returns ``clip`` (3, T, h, w) normalised and unpadded, ``boxes`` (N, 4) scaled to it (and mirrored
    when ``flip``: ``x0' = w - x1``, ``x1' = w - x0``), ``labels``, ``key_index``, ``image_id``, ``video``,
    ``frame`` (1-based, as the manifest), ``size`` = original (H, W) and ``scale`` = (w / W, h / H) (two
    different factors under the ``square`` resize).
    """
    frames = item["frames"].numpy() if torch.is_tensor(item["frames"]) else np.asarray(item["frames"])
    height, width = frames.shape[1:3]
    h, w = resized_size(height, width, cfg.min_size, cfg.max_size, cfg.resize)
    frames = resize_frames(frames, h, w)
    sx, sy = w / width, h / height
    boxes = torch.as_tensor(item["boxes"], dtype=torch.float32).reshape(-1, 4) * torch.tensor([sx, sy, sx, sy])
    if flip:
        frames = frames[:, :, ::-1]
        boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
    key = int(item["key_index"])
    return {
        "clip": normalize_frames(frames, cfg.normalization),
        "boxes": boxes,
        "labels": torch.as_tensor(item["labels"], dtype=torch.int64).reshape(-1),
        "key_index": key,
        "image_id": int(item["image_id"]),
        "video": str(item["video"]),
        "frame": int(item["indices"][key]) + 1,
        "size": (int(height), int(width)),
        "scale": (sx, sy),
    }


def pad_clips(clips: Sequence[torch.Tensor], multiple: int) -> torch.Tensor:
    """(3, T, h_i, w_i) clips -> (B, 3, T, H, W) zero-padded at the right/bottom, H and W the largest
    sizes rounded up to ``multiple`` (after normalisation, as the original's ``to_image_list``)."""
    if not clips or multiple < 1:
        raise ValueError(f"pad_clips needs at least one clip and multiple >= 1, got {len(clips)} and {multiple}")
    if len({c.shape[:2] for c in clips}) != 1:
        raise ValueError(f"clips must share channels and frames, got {[tuple(c.shape) for c in clips]}")
    height = math.ceil(max(c.shape[2] for c in clips) / multiple) * multiple
    width = math.ceil(max(c.shape[3] for c in clips) / multiple) * multiple
    out = clips[0].new_zeros(len(clips), *clips[0].shape[:2], height, width)
    for i, c in enumerate(clips):
        out[i, :, :, : c.shape[2], : c.shape[3]] = c
    return out


def _offsets(before: int, after: int) -> list[int]:
    return [*range(-before, 0), *range(1, after + 1)]


class DetectionDataset(Dataset):
    """Annotated frames of one split as :func:`prepare_item` dicts.

    ``train``: per item, from :func:`~endofm.data.transforms.torch_rng`, a reference offset from
    ``[-hi, -lo]``, one from ``[lo, hi]`` and the flip (T = 3; the flip alone and T = 1 when
    ``train_ref_range`` is null). Otherwise the key frame with
    ``test_frames // 2`` neighbours on each side, no flip. References are clamped at the video's
    ends, as :class:`~endofm.data.kumc.KUMCDataset` does. ``corrupt`` (robustness evaluation, not in
    training) corrupts each clip keyed by its image id, the key frame never dropped, and moves its boxes.
    """

    def __init__(
        self,
        cfg: DetectConfig,
        rows: pd.DataFrame,
        root: str | Path,
        split: str,
        train: bool,
        corrupt: ClipCorruption | None = None,
    ) -> None:
        if train and corrupt is not None:
            raise ValueError("corrupt applies to evaluation datasets, not training")
        half = cfg.test_frames // 2
        self.cfg, self.train, self.corrupt = cfg, train, corrupt
        self.base = KUMCDataset(rows, root, split, () if train else _offsets(half, half))

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not self.train:
            item = self.base[index]
            if self.corrupt is not None:
                item = corrupt_item(item, self.corrupt)
            return prepare_item(item, self.cfg)
        rng = torch_rng()
        offsets = []
        if self.cfg.train_ref_range is not None:
            lo, hi = self.cfg.train_ref_range
            offsets = [-int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))]
        flip = bool(rng.random() < self.cfg.hflip)
        return prepare_item(self.base.load(index, offsets), self.cfg, flip)


def corrupt_item(item: Mapping[str, Any], corrupt: ClipCorruption) -> dict[str, Any]:
    """A :class:`~endofm.data.kumc.KUMCDataset` item under ``corrupt`` (key: its image id; the key frame is
    never dropped): corrupted frames, boxes moved as the pixels (:meth:`CorruptedClip.warp_boxes`), those
    that left the frame dropped with their labels."""
    frames = item["frames"].numpy() if torch.is_tensor(item["frames"]) else np.asarray(item["frames"])
    out = corrupt(frames, str(int(item["image_id"])), keep=(int(item["key_index"]),))
    boxes, keep = out.warp_boxes(np.asarray(item["boxes"], dtype=np.float64))
    labels = np.asarray(item["labels"]).reshape(-1)
    return {**item, "frames": out.frames, "boxes": boxes[keep].astype(np.float32), "labels": labels[keep]}


# ----------------------------------------------------------------------------------------------------
# Task


class DetectTask(Task):
    """Fine-tuning of :class:`~endofm.models.detection.DetectionModel` with the FCOS losses.

    The epoch is selected on ``train.select_metric``, by default ``f1_paper``: the frame-presence F1 is
    the number the original reports, on ``val2019``, which it also evaluates every 4k iterations
    (docs/original.md §4.3, flaw 3; which checkpoint's F1 the paper reports is not documented) and which
    the paper protocol selects on. The clean protocol's metrics are box-level (docs/original.md §5): there
    ``AP50`` (or ``f1_iou``) on the validation split selects epochs even before any detection reaches
    ``score_threshold``, where ``f1_paper`` is 0 in every epoch. Predictions are per-frame dicts (``image_id``, ``video``,
    ``frame``, ``boxes`` in original-image pixels, ``scores``, ``labels``) for the role's annotated frames.
    """

    benchmark: ClassVar[str] = "kumc"
    selection_metric: ClassVar[str] = "f1_paper"
    selection_metrics: ClassVar[tuple[str, ...]] = ("f1_paper", "f1_iou", "AP", "AP50", "AP75")

    def __init__(
        self,
        cfg: DetectConfig,
        splits: ProtocolSplits,
        root: str | Path,
        seed: int = 0,
        corrupt: ClipCorruption | None = None,
    ) -> None:
        """``corrupt``: the test split's clips are corrupted and its ground truth boxes moved with them."""
        super().__init__(splits, root, seed)
        self.cfg = cfg
        self.patch_size = 1  # set by build_model; padding is to a multiple of it and of size_divisibility
        self._eval = {
            role: DetectionDataset(
                cfg,
                getattr(splits, role).rows,
                self.root,
                getattr(splits, role).split,
                False,
                corrupt if role == "test" else None,
            )  # fmt: skip
            for role in ("select", "test")
        }
        self._coco = {role: to_coco(getattr(splits, role).rows, getattr(splits, role).split) for role in self._eval}
        if corrupt is not None:
            self._coco["test"] = corrupt.warp_coco(self._coco["test"])

    def build_model(self, backbone: TimeSformer) -> nn.Module:
        self.patch_size = backbone.patch_size
        return DetectionModel(backbone, self.cfg.head)

    def train_dataset(self) -> Dataset:
        return DetectionDataset(self.cfg, self.splits.train.rows, self.root, self.splits.train.split, True)

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """``clip`` (B, 3, T, H, W) padded, ``key_index`` (B,), ``targets`` (boxes, labels per item),
        ``image_sizes`` the unpadded (h, w), ``meta`` the rest of each item."""
        multiple = math.lcm(self.cfg.size_divisibility, self.patch_size)
        return {
            "clip": pad_clips([it["clip"] for it in items], multiple),
            "key_index": torch.tensor([it["key_index"] for it in items], dtype=torch.int64),
            "targets": [{"boxes": it["boxes"], "labels": it["labels"]} for it in items],
            "image_sizes": [tuple(it["clip"].shape[-2:]) for it in items],
            "meta": [{k: it[k] for k in ("image_id", "video", "frame", "size", "scale")} for it in items],
        }

    def loss(self, model: nn.Module, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
        targets = [{k: v.to(device) for k, v in t.items()} for t in batch["targets"]]
        outputs = model(batch["clip"].to(device), batch["key_index"].to(device))
        return model.loss(outputs, targets)["total"]

    @torch.no_grad()
    def predict(self, model: nn.Module, role: str, device: torch.device) -> list[dict[str, Any]]:
        loader = DataLoader(
            self._eval[role],
            batch_size=self.cfg.train.batch_size,
            num_workers=self.cfg.train.num_workers,
            collate_fn=self.collate,
        )
        predictions = []
        for batch in loader:
            outputs = model(batch["clip"].to(device), batch["key_index"].to(device))
            for det, meta in zip(model.postprocess(outputs, batch["image_sizes"]), batch["meta"], strict=True):
                predictions.append(_to_original(det, meta))
        return predictions

    def score(self, predictions: list[dict[str, Any]], role: str) -> dict[str, float]:
        return detection_metrics(
            self._coco[role], detections_to_coco(predictions), self.cfg.score_threshold, self.cfg.iou_threshold
        )

    def save_predictions(self, predictions: list[dict[str, Any]], out_dir: Path) -> list[str]:
        write_json(out_dir / DETECTIONS, detections_to_coco(predictions))
        return [DETECTIONS]


def _to_original(det: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    """Detections of the resized image -> original pixels, clipped to the image; boxes empty after clipping
    are dropped, as the original's evaluation does."""
    sx, sy = meta["scale"]
    height, width = meta["size"]
    boxes = det["boxes"].detach().double().cpu() / torch.tensor([sx, sy, sx, sy], dtype=torch.float64)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return {
        "image_id": meta["image_id"],
        "video": meta["video"],
        "frame": meta["frame"],
        "boxes": boxes[keep].numpy(),
        "scores": det["scores"].detach().double().cpu()[keep].numpy(),
        "labels": det["labels"].detach().cpu()[keep].numpy(),
    }
