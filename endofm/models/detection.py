"""KUMC polyp detector: Endo-FM backbone -> simple feature pyramid + FPN -> FCOS head (docs/original.md §4.3).

The original (``STFT/``, config ``kumc_R_50_STFT.yaml``) runs the ViT over a clip, turns the tokens into
a ConvTranspose / identity / MaxPool pyramid, adds an FPN with P6/P7 and an FCOS head, and at test
time fuses the key frame with reference frames (STFT). Here the backbone sees the whole clip (T = 3 in
training, T = 1 at test, as the original) and the pyramid and head see the key frame's tokens only;
the STFT fusion branch is not reproduced.

Conventions:

- Boxes are 0-based continuous ``[x0, y0, x1, y1]`` pixels of the network input, as in
  :mod:`endofm.data.kumc`.
- Labels: 0 is background, ``1..num_classes`` are the classes, equal to the KUMC class ids and the
  COCO ``category_id`` of :func:`endofm.data.kumc.to_coco` (1 adenomatous, 2 hyperplastic).
  Classification is per-class sigmoid without a background channel: channel k scores label k + 1.
- Levels have strides ``(p/2, p, 2p, 4p, 8p)`` for patch size p (8..128 for p = 16); a level's
  locations are ``stride * i + stride // 2`` and flatten row-major, levels in order.
- Box regression is ``(l, t, r, b)`` in pixels, ``ReLU(scale_l · x) · stride_l``: the original's
  ``NORM_REG_TARGETS: True`` path (in the original the ReLU output is multiplied by the stride in
  training too). Centre-ness is predicted from the regression tower (``CENTERNESS_ON_REG: True``).

Layer: data and models (docs/architecture.md). May import: foundation and the other models modules.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from endofm.config import check_fields, setting
from endofm.models.vit import TimeSformer


@dataclasses.dataclass
class DetectionConfig:
    """Pyramid, head, target and post-processing settings; defaults are the original's KUMC config.

    ``size_ranges`` are the pixel boundaries between consecutive levels for FCOS assignment (a
    location of level i is kept for a box when ``lo_i <= max(l, t, r, b) <= hi_i``, with ``lo_0 = -1``
    and ``hi_last = inf``); the original fixes (64, 128, 256, 512) whatever the strides.
    ``max_detections`` is the original's ``TEST.DETECTIONS_PER_IMG`` (300).
    """

    num_classes: int = setting(2, "Classes including background", minimum=1)
    fpn_channels: int = setting(256, "Feature pyramid width", minimum=1)
    num_convs: int = setting(4, "Convolutions per head tower", minimum=0)
    prior_prob: float = setting(
        0.01, "Initial foreground probability of the classifier bias", exclusive_minimum=0, exclusive_maximum=1
    )
    center_sampling_radius: float = setting(1.5, "FCOS centre-sampling radius in strides", minimum=0)
    size_ranges: tuple[float, ...] = setting(
        (64.0, 128.0, 256.0, 512.0),
        "Pixel boundaries between the 5 pyramid levels for target assignment (increasing)",
        min_items=4,
        max_items=4,
    )
    focal_alpha: float = setting(0.25, "Focal loss alpha (< 0 disables it)", maximum=1)
    focal_gamma: float = setting(2.0, "Focal loss gamma", minimum=0)
    score_threshold: float = setting(
        0.05, "Detections below this score are dropped before NMS", minimum=0, exclusive_maximum=1
    )
    pre_nms_top_n: int = setting(1000, "Detections kept per level before NMS", minimum=1)
    nms_threshold: float = setting(0.6, "NMS IoU threshold", minimum=0, maximum=1)
    max_detections: int = setting(300, "Detections kept per image", minimum=1)

    def __post_init__(self) -> None:
        check_fields(self)
        self.size_ranges = tuple(float(s) for s in self.size_ranges)
        if any(b <= a for a, b in itertools.pairwise(self.size_ranges)):
            raise ValueError(f"size_ranges must be increasing boundaries, got {self.size_ranges}")


class DetectionOutputs(NamedTuple):
    """Raw per-level head outputs for the key frame.

    ``cls_logits`` (B, K, h, w), ``box_regression`` (B, 4, h, w) non-negative ``l, t, r, b`` pixels,
    ``centerness`` (B, 1, h, w) logits; ``strides`` one per level.
    """

    cls_logits: list[torch.Tensor]
    box_regression: list[torch.Tensor]
    centerness: list[torch.Tensor]
    strides: tuple[int, ...]


class FCOSTargets(NamedTuple):
    """Targets over all locations (levels concatenated): ``labels`` (B, N) int64 with 0 for background,
    ``ltrb`` (B, N, 4) pixel distances to the assigned box, ``centerness`` (B, N), ``matched`` (B, N)
    index of the assigned box (-1 for background). ``ltrb`` and ``centerness`` are 0 on background."""

    labels: torch.Tensor
    ltrb: torch.Tensor
    centerness: torch.Tensor
    matched: torch.Tensor


def _group_norm_groups(channels: int) -> int:
    # The original uses GroupNorm(32, 256): 8 channels per group. Keep groups of >= 8 channels (at most 32
    # groups) for the small CPU widths too: 1-channel groups would zero a 1x1 level (P7 of a small image).
    return math.gcd(32, max(channels // 8, 1))


class SimpleFeaturePyramid(nn.Module):
    """Single-scale ViT tokens (B, C, h, w) at stride p -> five (B, out_channels, ·, ·) maps at strides
    ``(p/2, p, 2p, 4p, 8p)``.

    As the original: ConvTranspose 2×2/2 (p/2), identity (p), MaxPool 2×2/2 (2p), then an FPN (1×1
    lateral convs, nearest top-down sum, 3×3 output convs; kaiming-uniform a=1, bias 0) and P6/P7 by
    stride-2 3×3 convs from P5 (``USE_C5: False``), with a ReLU before P7. The MaxPool uses
    ``ceil_mode`` so odd token grids keep their last row/column (the original pads inputs to a multiple
    of 32, where both modes agree); every level then has ``ceil(H / stride)`` × ``ceil(W / stride)`` cells.
    """

    def __init__(self, in_channels: int, out_channels: int = 256, patch_size: int = 16) -> None:
        super().__init__()
        if patch_size < 2 or patch_size % 2:
            raise ValueError(f"SimpleFeaturePyramid: patch_size must be even and >= 2, got {patch_size}")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"SimpleFeaturePyramid: channels must be >= 1, got {in_channels} and {out_channels}")
        p = patch_size
        self.strides = (p // 2, p, 2 * p, 4 * p, 8 * p)
        self.upsample = nn.ConvTranspose2d(in_channels, in_channels, kernel_size=2, stride=2)
        self.downsample = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
        self.lateral = nn.ModuleList(nn.Conv2d(in_channels, out_channels, 1) for _ in range(3))
        self.output = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in range(3))
        self.p6 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        for m in [*self.lateral, *self.output, self.p6, self.p7]:
            nn.init.kaiming_uniform_(m.weight, a=1)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.ndim != 4:
            raise ValueError(f"SimpleFeaturePyramid: expected (B, C, h, w) tokens, got {tuple(x.shape)}")
        inputs = (self.upsample(x), x, self.downsample(x))
        last = self.lateral[2](inputs[2])
        outs = [self.output[2](last)]
        for i in (1, 0):
            lateral = self.lateral[i](inputs[i])
            last = lateral + F.interpolate(last, size=lateral.shape[-2:], mode="nearest")
            outs.insert(0, self.output[i](last))
        p6 = self.p6(outs[-1])
        return [*outs, p6, self.p7(F.relu(p6))]


class FCOSHead(nn.Module):
    """FCOS head shared over levels: ``num_convs`` × (3×3 conv, GroupNorm, ReLU) towers for
    classification and regression (GroupNorm: 32 groups at 256 channels as the original, groups of 8
    channels for narrower heads); 3×3 predictors for ``num_classes`` logits (bias at prior probability
    ``prior_prob``), 4 distances and centre-ness (on the regression tower). Convs are normal(0, 0.01)
    with bias 0, as the original. One learnable scale per level (init 1) multiplies the raw distances
    before ``ReLU(·) · stride``.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        num_convs: int = 4,
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        prior_prob: float = 0.01,
    ) -> None:
        super().__init__()
        if channels < 1 or num_classes < 1 or num_convs < 0 or len(strides) < 1:
            raise ValueError(
                f"FCOSHead: expected channels >= 1, num_classes >= 1, num_convs >= 0 and at least one stride, "
                f"got {channels}, {num_classes}, {num_convs}, {tuple(strides)}"
            )
        self.num_classes = num_classes
        self.strides = tuple(int(s) for s in strides)

        def tower() -> nn.Sequential:
            layers: list[nn.Module] = []
            for _ in range(num_convs):
                layers += [
                    nn.Conv2d(channels, channels, 3, padding=1),
                    nn.GroupNorm(_group_norm_groups(channels), channels),
                    nn.ReLU(),
                ]
            return nn.Sequential(*layers)

        self.cls_tower = tower()
        self.bbox_tower = tower()
        self.cls_logits = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(channels, 1, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(len(self.strides)))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: Sequence[torch.Tensor]) -> DetectionOutputs:
        if len(features) != len(self.strides):
            raise ValueError(f"FCOSHead: expected {len(self.strides)} feature levels, got {len(features)}")
        cls_logits, box_regression, centerness = [], [], []
        for level, (x, stride) in enumerate(zip(features, self.strides, strict=True)):
            cls_feat, box_feat = self.cls_tower(x), self.bbox_tower(x)
            cls_logits.append(self.cls_logits(cls_feat))
            centerness.append(self.centerness(box_feat))
            box_regression.append(F.relu(self.scales[level] * self.bbox_pred(box_feat)) * stride)
        return DetectionOutputs(cls_logits, box_regression, centerness, self.strides)


def level_locations(
    shapes: Sequence[tuple[int, int]], strides: Sequence[int], device: torch.device | str | None = None
) -> list[torch.Tensor]:
    """Pixel ``(x, y)`` of every cell, per level: (h·w, 2) row-major, ``stride * index + stride // 2``."""
    if len(shapes) != len(strides):
        raise ValueError(f"level_locations: got {len(shapes)} shapes but {len(strides)} strides")
    out = []
    for (h, w), s in zip(shapes, strides, strict=True):
        ys = torch.arange(h, device=device, dtype=torch.float32) * s + s // 2
        xs = torch.arange(w, device=device, dtype=torch.float32) * s + s // 2
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        out.append(torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1))
    return out


def _check_boxes(boxes: torch.Tensor, labels: torch.Tensor, where: str) -> None:
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{where}: boxes must be (M, 4) xyxy, got {tuple(boxes.shape)}")
    if labels.shape != (boxes.shape[0],):
        raise ValueError(f"{where}: labels must be ({boxes.shape[0]},) to match the boxes, got {tuple(labels.shape)}")
    if boxes.numel() and ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any():
        raise ValueError(f"{where}: boxes must have x1 >= x0 and y1 >= y0 (xyxy)")
    if labels.numel() and labels.min() < 1:
        raise ValueError(f"{where}: labels must be class ids >= 1 (0 is background), got {labels.tolist()}")


def fcos_targets(
    locations: Sequence[torch.Tensor],
    strides: Sequence[int],
    boxes: Sequence[torch.Tensor],
    labels: Sequence[torch.Tensor],
    size_ranges: Sequence[float] = (64.0, 128.0, 256.0, 512.0),
    radius: float = 1.5,
) -> FCOSTargets:
    """FCOS assignment of every location (levels concatenated) to at most one box per image.

    A location is a candidate for a box when it lies strictly inside the box's centre region (the
    box centre ± ``radius · stride``, clipped to the box; with ``radius = 0`` the whole box) and its
    largest distance to the box edges is within its level's range (see :class:`DetectionConfig`).
    A location with several candidates takes the smallest-area box (first on ties), as the original.
    ``boxes[i]`` (M_i, 4) xyxy and ``labels[i]`` (M_i,) class ids >= 1 describe image i; M_i may be 0.
    """
    if len(locations) != len(strides) or len(size_ranges) != len(strides) - 1:
        raise ValueError(
            f"fcos_targets: expected one stride per level and len(strides) - 1 size boundaries, got "
            f"{len(locations)} levels, {len(strides)} strides, {len(size_ranges)} boundaries"
        )
    if len(boxes) != len(labels):
        raise ValueError(f"fcos_targets: got {len(boxes)} box sets but {len(labels)} label sets")
    points = torch.cat(list(locations))  # (N, 2)
    n = points.shape[0]
    per_level = [loc.shape[0] for loc in locations]
    bounds = [-1.0, *[float(s) for s in size_ranges], math.inf]
    lo = torch.cat([points.new_full((k,), bounds[i]) for i, k in enumerate(per_level)])
    hi = torch.cat([points.new_full((k,), bounds[i + 1]) for i, k in enumerate(per_level)])
    point_stride = torch.cat([points.new_full((k,), float(s)) for k, s in zip(per_level, strides, strict=True)])
    x, y = points[:, 0:1], points[:, 1:2]

    all_labels, all_ltrb, all_ctr, all_matched = [], [], [], []
    for i, (b, lab) in enumerate(zip(boxes, labels, strict=True)):
        b = b.to(points)
        lab = lab.to(device=points.device, dtype=torch.int64)
        _check_boxes(b, lab, f"fcos_targets: image {i}")
        if b.shape[0] == 0:
            all_labels.append(torch.zeros(n, dtype=torch.int64, device=points.device))
            all_ltrb.append(points.new_zeros(n, 4))
            all_ctr.append(points.new_zeros(n))
            all_matched.append(torch.full((n,), -1, dtype=torch.int64, device=points.device))
            continue
        x0, y0, x1, y1 = b.unbind(1)  # each (M,)
        ltrb = torch.stack([x - x0, y - y0, x1 - x, y1 - y], dim=2)  # (N, M, 4)
        if radius > 0:
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            r = point_stride[:, None] * radius  # (N, 1)
            region = [
                torch.maximum(cx - r, x0),
                torch.maximum(cy - r, y0),
                torch.minimum(cx + r, x1),
                torch.minimum(cy + r, y1),
            ]
            inside = torch.stack([x - region[0], y - region[1], region[2] - x, region[3] - y], dim=2).amin(dim=2) > 0
        else:
            inside = ltrb.amin(dim=2) > 0
        max_reg = ltrb.amax(dim=2)
        cared = (max_reg >= lo[:, None]) & (max_reg <= hi[:, None])
        area = ((x1 - x0) * (y1 - y0)).expand(n, -1)
        area = torch.where(inside & cared, area, torch.full_like(area, math.inf))
        min_area, matched = area.min(dim=1)
        positive = torch.isfinite(min_area)
        ltrb = ltrb[torch.arange(n, device=points.device), matched]
        lr, tb = ltrb[:, 0::2], ltrb[:, 1::2]
        ctr = torch.sqrt(
            (lr.amin(1) / lr.amax(1).clamp(min=1e-12)).clamp(min=0)
            * (tb.amin(1) / tb.amax(1).clamp(min=1e-12)).clamp(min=0)
        )
        all_labels.append(torch.where(positive, lab[matched], torch.zeros_like(matched)))
        all_ltrb.append(ltrb * positive[:, None])
        all_ctr.append(ctr * positive)
        all_matched.append(torch.where(positive, matched, torch.full_like(matched, -1)))
    return FCOSTargets(torch.stack(all_labels), torch.stack(all_ltrb), torch.stack(all_ctr), torch.stack(all_matched))


def _flatten(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-level (B, C, h, w) -> (B, Σ h·w, C), row-major within a level, levels in order."""
    return torch.cat([m.flatten(2).transpose(1, 2) for m in maps], dim=1)


def _locations_of(outputs: DetectionOutputs) -> list[torch.Tensor]:
    shapes = [tuple(m.shape[-2:]) for m in outputs.cls_logits]
    return level_locations(shapes, outputs.strides, outputs.cls_logits[0].device)


def fcos_loss(
    outputs: DetectionOutputs, targets: Sequence[Mapping[str, torch.Tensor]], config: DetectionConfig | None = None
) -> dict[str, torch.Tensor]:
    """FCOS losses of the key frames: ``dict(cls, box, ctr, total)`` with ``total = cls + box + ctr``.

    ``targets[i]`` holds ``boxes`` (M, 4) xyxy and ``labels`` (M,) in ``1..num_classes`` (M may be 0:
    a polyp-free frame contributes negatives only). As the original: sigmoid focal loss summed over all
    locations and classes / max(#positives, 1); GIoU loss on positives weighted by their centre-ness
    targets / max(Σ centre-ness targets, 1); centre-ness BCE summed over positives / max(#positives, 1).
    Without positives ``box`` and ``ctr`` are 0 (still attached to the graph). Computed in fp32; the
    normalisers are per process (the original averages them over GPUs).
    """
    cfg = config if config is not None else DetectionConfig()
    num_classes = outputs.cls_logits[0].shape[1]
    if len(targets) != outputs.cls_logits[0].shape[0]:
        raise ValueError(f"fcos_loss: got {len(targets)} targets for a batch of {outputs.cls_logits[0].shape[0]}")
    for i, t in enumerate(targets):
        if "boxes" not in t or "labels" not in t:
            raise ValueError(f"fcos_loss: target {i} must have 'boxes' and 'labels', got keys {sorted(t)}")
        if t["labels"].numel() and t["labels"].max() > num_classes:
            raise ValueError(f"fcos_loss: target {i} has labels {t['labels'].tolist()}; expected 1..{num_classes}")
    tgt = fcos_targets(
        _locations_of(outputs),
        outputs.strides,
        [t["boxes"] for t in targets],
        [t["labels"] for t in targets],
        cfg.size_ranges,
        cfg.center_sampling_radius,
    )
    logits = _flatten(outputs.cls_logits).float()  # (B, N, K)
    ltrb = _flatten(outputs.box_regression).float()  # (B, N, 4)
    ctr_logits = _flatten(outputs.centerness).float()[..., 0]  # (B, N)

    positive = tgt.labels > 0
    num_pos = int(positive.sum())
    onehot = F.one_hot(tgt.labels, num_classes + 1)[..., 1:].to(logits.dtype)
    from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss  # seconds to import: only here

    cls = sigmoid_focal_loss(logits, onehot, cfg.focal_alpha, cfg.focal_gamma, reduction="sum") / max(num_pos, 1)
    if num_pos == 0:
        box = ltrb.sum() * 0.0
        ctr = ctr_logits.sum() * 0.0
    else:
        pred, target, weight = ltrb[positive], tgt.ltrb[positive], tgt.centerness[positive]
        # Boxes relative to the location: (-l, -t, r, b); GIoU does not depend on the origin.
        giou = generalized_box_iou_loss(
            torch.cat([-pred[:, :2], pred[:, 2:]], dim=1), torch.cat([-target[:, :2], target[:, 2:]], dim=1)
        )
        box = (giou * weight).sum() / max(float(weight.sum()), 1.0)
        ctr = F.binary_cross_entropy_with_logits(ctr_logits[positive], weight, reduction="sum") / num_pos
    return {"cls": cls, "box": box, "ctr": ctr, "total": cls + box + ctr}


def postprocess_detections(
    outputs: DetectionOutputs,
    image_sizes: Sequence[tuple[int, int]],
    score_threshold: float = 0.05,
    pre_nms_top_n: int = 1000,
    nms_threshold: float = 0.6,
    max_detections: int = 300,
) -> list[dict[str, torch.Tensor]]:
    """Detections per image: ``dict(boxes (M, 4) xyxy, scores (M,), labels (M,) in 1..K)``, best first.

    As the original's FCOS-STFT post-processor without the STFT term: score = sqrt(sigmoid(cls) ·
    sigmoid(centre-ness)); per level keep scores > ``score_threshold``, at most ``pre_nms_top_n``;
    decode ``(x - l, y - t, x + r, y + b)``; per-class NMS at ``nms_threshold`` over all levels; keep
    the ``max_detections`` best; then clip to ``image_sizes[i] = (height, width)`` (after NMS, as the original).
    """
    batch = outputs.cls_logits[0].shape[0]
    if len(image_sizes) != batch:
        raise ValueError(f"postprocess: got {len(image_sizes)} image sizes for a batch of {batch}")
    locations = _locations_of(outputs)
    results = []
    for i, (h, w) in enumerate(image_sizes):
        boxes_all, scores_all, labels_all = [], [], []
        for loc, cls, reg, ctr in zip(
            locations, outputs.cls_logits, outputs.box_regression, outputs.centerness, strict=True
        ):
            prob = (cls[i].flatten(1).t().float().sigmoid() * ctr[i].flatten(1).t().float().sigmoid()).sqrt()
            candidates = (prob > score_threshold).nonzero()  # (n, 2): location, class
            scores = prob[candidates[:, 0], candidates[:, 1]]
            if scores.numel() > pre_nms_top_n:
                scores, top = scores.topk(pre_nms_top_n)
                candidates = candidates[top]
            where, d = loc[candidates[:, 0]], reg[i].flatten(1).t().float()[candidates[:, 0]]
            boxes_all.append(torch.cat([where - d[:, :2], where + d[:, 2:]], dim=1))
            scores_all.append(scores)
            labels_all.append(candidates[:, 1] + 1)
        boxes, scores, labels = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(labels_all)
        from torchvision.ops import batched_nms  # seconds to import: only here

        keep = batched_nms(boxes, scores, labels, nms_threshold)[:max_detections]  # sorted by score
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        results.append({"boxes": boxes, "scores": scores, "labels": labels})
    return results


class DetectionModel(nn.Module):
    """Endo-FM backbone + :class:`SimpleFeaturePyramid` + :class:`FCOSHead` on the key frame.

    Build with ``DetectionModel(backbone, config)`` or ``DetectionModel(backbone, fpn_channels=32, ...)``
    (keyword overrides of :class:`DetectionConfig` fields). State-dict keys: ``backbone.*``,
    ``pyramid.*``, ``head.*``. Inputs are expected normalised by the caller (the original uses
    Caffe-style BGR, docs/original.md §4.3) and padded to a multiple of the patch size.
    """

    def __init__(self, backbone: TimeSformer, config: DetectionConfig | None = None, **overrides) -> None:
        super().__init__()
        cfg = dataclasses.replace(config if config is not None else DetectionConfig(), **overrides)
        self.config = cfg
        self.backbone = backbone
        self.pyramid = SimpleFeaturePyramid(backbone.embed_dim, cfg.fpn_channels, backbone.patch_size)
        self.head = FCOSHead(cfg.fpn_channels, cfg.num_classes, cfg.num_convs, self.pyramid.strides, cfg.prior_prob)

    @property
    def strides(self) -> tuple[int, ...]:
        return self.pyramid.strides

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Parameters of the backbone (for a frozen backbone or a separate learning rate)."""
        return list(self.backbone.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters of the pyramid and the FCOS head; with :meth:`backbone_parameters` a partition of
        ``parameters()``."""
        return [*self.pyramid.parameters(), *self.head.parameters()]

    def key_features(self, clip: torch.Tensor, key_index: int | torch.Tensor = 0) -> torch.Tensor:
        """Backbone tokens of each sample's key frame, (B, C, H/p, W/p), after a pass over the whole clip."""
        p = self.backbone.patch_size
        if clip.ndim != 5 or clip.shape[1] != 3:
            raise ValueError(f"DetectionModel: clip must be (B, 3, T, H, W), got {tuple(clip.shape)}")
        b, _, t, h, w = clip.shape
        if h % p or w % p or h < p or w < p:
            raise ValueError(
                f"DetectionModel: clip height and width must be positive multiples of the patch size {p}, "
                f"got {h}x{w} (pad the input)"
            )
        key = torch.as_tensor(key_index, device=clip.device, dtype=torch.int64)
        key = key.expand(b) if key.ndim == 0 else key
        if key.shape != (b,) or (key < 0).any() or (key >= t).any():
            raise ValueError(f"DetectionModel: key_index must be an int or (B,) ints in [0, {t}), got {key_index}")
        patches = self.backbone.forward_features(clip, dense=True).patches  # (B, T, h, w, C)
        return patches[torch.arange(b, device=clip.device), key].permute(0, 3, 1, 2)

    def forward(self, clip: torch.Tensor, key_index: int | torch.Tensor = 0) -> DetectionOutputs:
        """Raw head outputs for the key frame of each clip (B, 3, T, H, W); ``key_index`` an int or (B,)."""
        return self.head(self.pyramid(self.key_features(clip, key_index)))

    def loss(self, outputs: DetectionOutputs, targets: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """See :func:`fcos_loss`; uses this model's config."""
        return fcos_loss(outputs, targets, self.config)

    @torch.no_grad()
    def postprocess(
        self,
        outputs: DetectionOutputs,
        image_sizes: Sequence[tuple[int, int]],
        score_threshold: float | None = None,
        pre_nms_top_n: int | None = None,
        nms_threshold: float | None = None,
        max_detections: int | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """See :func:`postprocess_detections`; settings left ``None`` come from the config."""
        cfg = self.config
        return postprocess_detections(
            outputs,
            image_sizes,
            cfg.score_threshold if score_threshold is None else score_threshold,
            cfg.pre_nms_top_n if pre_nms_top_n is None else pre_nms_top_n,
            cfg.nms_threshold if nms_threshold is None else nms_threshold,
            cfg.max_detections if max_detections is None else max_detections,
        )
