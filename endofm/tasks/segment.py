"""CVC-12k polyp segmentation (docs/original.md §4.2) for :func:`endofm.tasks.finetune.run_finetune`.

One sample is a whole sequence (its frames are the backbone's time axis). The model is
:class:`~endofm.models.segmentation.SegmentationModel` (the official TransUNet, or the light decoder),
trained with 0.5·cross-entropy + 0.5·soft Dice. Predictions are hard masks at each sequence's native
frame resolution, written as ``masks.npz`` (one uint8 (T, H, W) array per sequence name); the headline
metric is the paper's per-sequence volume Dice (:func:`endofm.metrics.dice_paper`).

Layer: tasks (docs/architecture.md). May import: foundation, data, models, engine, metrics, pretraining, methods and the other tasks modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from endofm.config import check_fields, setting
from endofm.data.corruptions import ClipCorruption
from endofm.data.cvc import CVCSequenceDataset
from endofm.data.transforms import IMAGENET_MEAN, IMAGENET_STD, crop_offsets, torch_rng
from endofm.io import atomic_path
from endofm.metrics import segmentation_metrics
from endofm.models.segmentation import (
    TRANSUNET_STRIDE,
    DecoderKind,
    SegmentationModel,
    TransUNetConfig,
    segmentation_loss,
)
from endofm.models.vit import TimeSformer
from endofm.tasks.evaluation import MASKS, without_per_sequence
from endofm.tasks.finetune import OptimConfig, Task, TrainConfig
from endofm.tasks.protocols import ProtocolSplits

Normalization = Literal["minmax", "minmax_once", "imagenet"]
NORMALIZATIONS: tuple[str, ...] = ("minmax", "minmax_once", "imagenet")
Channels = Literal["bgr", "rgb"]
CHANNELS: tuple[str, ...] = ("bgr", "rgb")
Augment = Literal["per_frame", "per_sequence"]
AUGMENTS: tuple[str, ...] = ("per_frame", "per_sequence")


def _official_train() -> TrainConfig:
    # 150 epochs, batch 1 sequence, AdamW lr 1e-4 wd 0.05 (on every parameter), poly power 0.9 (docs/original.md §4.2).
    return TrainConfig(
        epochs=150,
        batch_size=1,
        optim=OptimConfig(name="adamw", lr=1e-4, weight_decay=0.05, schedule="poly", poly_power=0.9),
    )


@dataclass
class SegmentConfig:
    """CVC-12k settings; the defaults are the official recipe (docs/original.md §4.2).

    Model: ``decoder`` "transunet" (sized by ``transunet``, the paper's R50-ViT-B_16 by default) or
    "light" (widths ``light_channels``), ``num_classes`` outputs. Training input: resize to
    ``train_size``² (square, aspect not kept, as the original) -> a random ``crop_size`` crop -> h-flip with
    probability ``hflip`` -> rotation by an angle uniform in ±``rotation`` degrees (masks resized and rotated
    with nearest). ``augment``: "per_frame" draws crop, flip and angle independently for every frame of a
    sequence (the original calls its transform inside the frame loop, TransUNet/dataset.py); "per_sequence"
    draws them once and applies them to every frame alike. Test input: resize to ``test_size``².
    ``channels``: "bgr" (the original reads frames with OpenCV, so the network sees BGR) or "rgb".
    ``normalization``: "minmax" is the original's: per-image min-max to [0, 1] on the native frame, again
    after the spatial transforms (its ``ToTensor``, train and test), then Normalize(0.5, 0.5); "minmax_once"
    skips the second min-max; "imagenet" scales by 1/255 and uses the ImageNet mean/std (in the order of
    ``channels``). ``max_train_frames``: None trains on whole sequences (the original); an int trains on a
    random window of that many consecutive frames (bounds memory). Loss: ``ce_weight``·CE +
    ``dice_weight``·soft Dice.
    """

    decoder: DecoderKind = setting(
        "transunet",
        "transunet (the original's R50 stem + decoder) or light (a small decoder over the backbone's tokens)",
    )
    transunet: TransUNetConfig = setting(description="The TransUNet decoder's size", factory=TransUNetConfig)
    light_channels: list[int] = setting(
        description="Widths of the light decoder's upsampling stages", factory=lambda: [128, 64, 32]
    )
    num_classes: int = setting(2, "Classes (background, polyp)", minimum=2)
    train_size: int = setting(256, "Training frames are resized to this square size", minimum=1)
    crop_size: int = setting(224, "Training crop side (at most train_size)", minimum=1)
    hflip: float = setting(0.5, "Probability of a horizontal flip in training", minimum=0, maximum=1)
    rotation: float = setting(5.0, "Training rotation range in degrees (±)", minimum=0, exclusive_maximum=180)
    test_size: int = setting(224, "Test frames are resized to this square size", minimum=1)
    augment: Augment = setting(
        "per_frame",
        "per_frame: crop, flip and rotation drawn independently for every frame of a sequence (the original); "
        "per_sequence: one draw for all its frames",
    )
    channels: Channels = setting(
        "bgr", "Channel order the network sees: bgr (the original reads frames with OpenCV) or rgb"
    )
    normalization: Normalization = setting(
        "minmax",
        "minmax: per-frame min-max on the native frame and again after the spatial transforms, then (x - 0.5) / 0.5 "
        "(the original); minmax_once: without the second min-max; imagenet: /255 and the ImageNet mean/std",
    )
    max_train_frames: int | None = setting(
        None,
        "Train on a random window of this many consecutive frames (null: whole sequences, the original)",
        minimum=1,
    )
    ce_weight: float = setting(0.5, "Weight of the cross-entropy loss", minimum=0)
    dice_weight: float = setting(0.5, "Weight of the soft Dice loss (not both 0)", minimum=0)
    train: TrainConfig = setting(description="The training loop's settings", factory=_official_train)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.crop_size > self.train_size:
            raise ValueError(f"crop_size {self.crop_size} must be <= train_size {self.train_size}")
        if self.decoder == "transunet":
            for name in ("crop_size", "test_size"):
                if getattr(self, name) % TRANSUNET_STRIDE:
                    raise ValueError(
                        f"{name} must be a multiple of {TRANSUNET_STRIDE} for the transunet decoder, "
                        f"got {getattr(self, name)}"
                    )
        if self.ce_weight + self.dice_weight == 0:
            raise ValueError("ce_weight and dice_weight must not both be 0")
        SegmentTask.selection_key(self.train)


# ----------------------------------------------------------------------------------------------------
# Input pipeline


def rotate(x: torch.Tensor, degrees: float | Sequence[float], mode: Literal["bilinear", "nearest"]) -> torch.Tensor:
    """Rotate (N, C, H, W) counter-clockwise by ``degrees`` (one angle, or one per image) about the image
    centre, zeros outside; the same sampling as torchvision's ``rotate`` (pixel-centre grid,
    ``align_corners=False``)."""
    n, _, h, w = x.shape
    angles = torch.tensor(degrees, dtype=torch.float64).reshape(-1).deg2rad().expand(n)
    cos, sin = angles.cos(), angles.sin()
    zero = torch.zeros_like(cos)
    # Output -> input map in normalised coordinates: the inverse rotation, rescaled for non-square frames.
    theta = torch.stack([torch.stack([cos, -sin * h / w, zero], 1), torch.stack([sin * w / h, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype).to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def _minmax(x: torch.Tensor) -> torch.Tensor:
    """Each image of (N, C, H, W) to [0, 1] by its own minimum and maximum over all channels."""
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    return (x - lo) / (x.amax(dim=(1, 2, 3), keepdim=True) - lo).clamp_min(1e-12)


@dataclass
class SequenceTransform:
    """uint8 RGB frames (T, H, W, 3) and {0, 1} masks (T, H, W) -> float video (3, T', S, S) and int64 masks
    (T', S, S), S = ``crop`` or ``size``.

    In order: a random window of ``max_frames`` consecutive frames (if the sequence is longer); channels
    reordered to ``channels``; each frame to [0, 1] (``minmax``/``minmax_once``: per-frame min-max,
    ``imagenet``: /255); resize to ``size``² (bilinear, antialiased; masks nearest); a random ``crop``² crop;
    h-flip with probability ``hflip``; rotation by an angle uniform in ±``rotation`` degrees (masks
    nearest, zero fill); ``minmax`` only: per-frame min-max again; normalisation (min-max: (x - 0.5) / 0.5,
    ``imagenet``: ImageNet mean/std in the order of ``channels``). Crop, flip and angle are drawn from
    ``rng`` in that order, once per frame (``augment="per_frame"``) or once for the whole sequence
    (``"per_sequence"``). The first min-max is taken on the native frame, so the rotation's zero fill is the
    frame's minimum (black); the original stores that first min-max as uint8 (truncated), here it stays
    float. :class:`SegmentConfig` holds the original's choices; this class
    defaults to RGB and one draw per sequence.
    """

    size: int
    crop: int | None = None
    hflip: float = 0.0
    rotation: float = 0.0
    normalization: Normalization = "minmax"
    max_frames: int | None = None
    augment: Augment = "per_sequence"
    channels: Channels = "rgb"

    def __post_init__(self) -> None:
        if self.size < 1 or (self.crop is not None and not 1 <= self.crop <= self.size):
            raise ValueError(f"size must be >= 1 and crop in [1, size], got size {self.size}, crop {self.crop}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        if self.augment not in AUGMENTS or self.channels not in CHANNELS:
            raise ValueError(
                f"augment must be one of {AUGMENTS} and channels one of {CHANNELS}, got {self.augment!r}, "
                f"{self.channels!r}"
            )

    @property
    def random(self) -> bool:
        return (
            (self.crop is not None and self.crop < self.size)
            or self.hflip > 0
            or self.rotation > 0
            or self.max_frames is not None
        )

    def _draw(self, rng: np.random.Generator) -> tuple[int, int, bool, float]:
        """(top, left, flip, angle) of one frame or sequence."""
        top = left = 0
        if self.crop is not None and self.crop < self.size:
            top, left = crop_offsets(self.size, self.size, self.crop, "random", rng)
        flip = bool(self.hflip > 0 and rng.random() < self.hflip)
        angle = float(rng.uniform(-self.rotation, self.rotation)) if self.rotation > 0 else 0.0
        return top, left, flip, angle

    def __call__(
        self, frames: np.ndarray, masks: np.ndarray | None = None, rng: np.random.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        frames, masks = np.asarray(frames), None if masks is None else np.asarray(masks)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
            raise ValueError(f"frames must be uint8 (T, H, W, 3) with T >= 1, got {frames.dtype} {frames.shape}")
        if masks is not None and masks.shape != frames.shape[:3]:
            raise ValueError(f"masks must have shape {frames.shape[:3]} (T, H, W), got {masks.shape}")
        if self.random and rng is None:
            raise ValueError("this transform draws random numbers: pass an rng")
        if self.max_frames is not None and len(frames) > self.max_frames:
            start = int(rng.integers(0, len(frames) - self.max_frames + 1))
            frames = frames[start : start + self.max_frames]
            masks = None if masks is None else masks[start : start + self.max_frames]
        if self.channels == "bgr":
            frames = frames[..., ::-1]

        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # (T, 3, H, W)
        x = x / 255.0 if self.normalization == "imagenet" else _minmax(x)
        m = None if masks is None else torch.from_numpy(np.ascontiguousarray(masks))[:, None].float()

        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
            if m is not None:
                m = F.interpolate(m, size=(self.size, self.size), mode="nearest-exact")
        if self.random:
            n = len(x) if self.augment == "per_frame" else 1
            draws = [self._draw(rng) for _ in range(n)] * (len(x) // n)
            if self.crop is not None and self.crop < self.size:
                c = self.crop
                x = torch.stack([x[t, :, y : y + c, z : z + c] for t, (y, z, _, _) in enumerate(draws)])
                m = (
                    None
                    if m is None
                    else torch.stack([m[t, :, y : y + c, z : z + c] for t, (y, z, _, _) in enumerate(draws)])
                )
            flips = torch.tensor([d[2] for d in draws]).view(-1, 1, 1, 1)
            if flips.any():
                x = torch.where(flips, x.flip(-1), x)
                m = None if m is None else torch.where(flips, m.flip(-1), m)
            if self.rotation > 0:
                angles = [d[3] for d in draws]
                x = rotate(x, angles, "bilinear")
                m = None if m is None else rotate(m, angles, "nearest")

        if self.normalization == "imagenet":
            mean, std = (
                (IMAGENET_MEAN, IMAGENET_STD) if self.channels == "rgb" else (IMAGENET_MEAN[::-1], IMAGENET_STD[::-1])
            )
            x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        else:
            if self.normalization == "minmax":
                x = _minmax(x)
            x = (x - 0.5) / 0.5
        video = x.permute(1, 0, 2, 3).contiguous()  # (3, T, S, S)
        return video, None if m is None else m[:, 0].round().long()


def train_transform(cfg: SegmentConfig) -> SequenceTransform:
    """The training view of ``cfg``: resize, random crop, flip, rotation, optional temporal window."""
    return SequenceTransform(
        cfg.train_size,
        cfg.crop_size,
        cfg.hflip,
        cfg.rotation,
        cfg.normalization,
        cfg.max_train_frames,
        cfg.augment,
        cfg.channels,
    )


def eval_transform(cfg: SegmentConfig) -> SequenceTransform:
    """The evaluation view of ``cfg``: whole sequence resized to ``test_size``², nothing random."""
    return SequenceTransform(cfg.test_size, normalization=cfg.normalization, channels=cfg.channels)


class SequenceDataset(Dataset):
    """Sequences of a :class:`CVCSequenceDataset` through ``transform``: dict(video (3, T, S, S), masks,
    sequence). ``native=True`` (evaluation) returns the native {0, 1} uint8 masks (T, H, W) instead of
    transformed ones, the ground truth that predictions are scored against. ``corrupt`` (robustness
    evaluation) corrupts each sequence's native frames first, keyed by its name, and moves its masks with them."""

    def __init__(
        self,
        dataset: CVCSequenceDataset,
        transform: SequenceTransform,
        native: bool = False,
        corrupt: ClipCorruption | None = None,
    ) -> None:
        self.dataset, self.transform, self.native, self.corrupt = dataset, transform, native, corrupt

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.dataset[index]
        frames, masks = item["frames"].numpy(), item["masks"].numpy()
        if self.corrupt is not None:
            corrupted = self.corrupt(frames, str(item["sequence"]))
            frames, masks = corrupted.frames, corrupted.warp_masks(masks)
        rng = torch_rng() if self.transform.random else None
        if self.native:
            video, _ = self.transform(frames, None, rng)
            return {"video": video, "masks": torch.from_numpy(masks), "sequence": item["sequence"]}
        video, out = self.transform(frames, masks, rng)
        return {"video": video, "masks": out, "sequence": item["sequence"]}


def sequence_dataset(
    cfg: SegmentConfig, splits: ProtocolSplits, root: Path, role: str, corrupt: ClipCorruption | None = None
) -> SequenceDataset:
    """The dataset of ``role``: random training views for ``train``, native-mask test views otherwise
    (``corrupt``: corrupted frames and their moved masks)."""
    part = getattr(splits, role)
    base = CVCSequenceDataset(part.rows, root, part.split)
    if role == "train":
        return SequenceDataset(base, train_transform(cfg))
    return SequenceDataset(base, eval_transform(cfg), native=True, corrupt=corrupt)


def collate_sequences(items: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Sequences stay a list: their lengths may differ."""
    return {key: [item[key] for item in items] for key in ("video", "masks", "sequence")}


# ----------------------------------------------------------------------------------------------------
# The task


@dataclass(frozen=True)
class SequencePrediction:
    """One sequence's predicted {0, 1} masks and ground truth, both uint8 (T, H, W) at native resolution."""

    sequence: str
    masks: np.ndarray
    target: np.ndarray


class SegmentTask(Task):
    """Fine-tuning of :class:`SegmentationModel` on whole sequences, selected by the paper's Dice."""

    benchmark: ClassVar[str] = "cvc12k"
    selection_metric: ClassVar[str] = "dice"
    selection_metrics: ClassVar[tuple[str, ...]] = ("dice", "frame_dice", "frame_iou")

    def __init__(
        self,
        cfg: SegmentConfig,
        splits: ProtocolSplits,
        root: str | Path,
        seed: int = 0,
        corrupt: ClipCorruption | None = None,
    ) -> None:
        """``corrupt``: the test split's frames are corrupted (and its masks moved with them)."""
        super().__init__(splits, root, seed)
        self.cfg = cfg
        self._eval = {
            role: sequence_dataset(cfg, splits, self.root, role, corrupt if role == "test" else None)
            for role in ("select", "test")
        }

    def build_model(self, backbone: TimeSformer) -> nn.Module:
        cfg = self.cfg
        if cfg.decoder == "transunet":
            return SegmentationModel(backbone, "transunet", cfg.num_classes, transunet=cfg.transunet)
        return SegmentationModel(backbone, "light", cfg.num_classes, light_channels=cfg.light_channels)

    def train_dataset(self) -> Dataset:
        return sequence_dataset(self.cfg, self.splits, self.root, "train")

    def collate(self, items: list[Any]) -> Any:
        return collate_sequences(items)

    def loss(self, model: nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
        videos, masks = batch["video"], batch["masks"]
        if len({v.shape for v in videos}) == 1:
            logits = model(torch.stack(videos).to(device)).flatten(0, 1)
        else:  # sequences of different lengths: one forward each, one loss over all their frames
            logits = torch.cat([model(v[None].to(device)).flatten(0, 1) for v in videos])
        target = torch.cat(masks).to(device)
        return segmentation_loss(logits, target, self.cfg.ce_weight, self.cfg.dice_weight)

    @torch.no_grad()
    def predict(self, model: nn.Module, role: str, device: torch.device) -> list[SequencePrediction]:
        """Per sequence of ``role``: logits of the test view, upsampled bilinearly to the native frame size,
        then argmax."""
        loader = DataLoader(self._eval[role], batch_size=None, num_workers=self.cfg.train.num_workers)
        out = []
        for item in loader:
            target = item["masks"].numpy().astype(np.uint8)
            logits = model(item["video"][None].to(device))[0].float()  # (T, K, S, S)
            logits = F.interpolate(logits, size=target.shape[1:], mode="bilinear", align_corners=False)
            pred = logits.argmax(dim=1).to(torch.uint8).cpu().numpy()
            out.append(SequencePrediction(str(item["sequence"]), pred, target))
        return out

    def score(self, predictions: list[SequencePrediction], role: str) -> dict[str, float]:
        metrics = segmentation_metrics(
            [p.masks for p in predictions], [p.target for p in predictions], [p.sequence for p in predictions]
        )
        return without_per_sequence(metrics)

    def save_predictions(self, predictions: list[SequencePrediction], out_dir: Path) -> list[str]:
        with atomic_path(Path(out_dir) / MASKS) as tmp:
            np.savez_compressed(tmp, **{p.sequence: p.masks.astype(np.uint8) for p in predictions})
        return [MASKS]
