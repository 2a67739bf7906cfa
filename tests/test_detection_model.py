"""KUMC detector: pyramid/head shapes and strides, FCOS targets by hand, losses, post-processing, overfitting."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import box_iou

from endofm.config import from_dict
from endofm.models.detection import (
    DetectionConfig,
    DetectionModel,
    DetectionOutputs,
    FCOSHead,
    SimpleFeaturePyramid,
    fcos_loss,
    fcos_targets,
    level_locations,
    postprocess_detections,
)
from endofm.models.vit import build_backbone

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STRIDES_P8 = (4, 8, 16, 32, 64)


def tiny_model(seed: int = 0, **overrides) -> DetectionModel:
    torch.manual_seed(seed)
    return DetectionModel(build_backbone("vit_micro_patch8"), **{"fpn_channels": 32, "num_convs": 1, **overrides})


def locations_for(h: int, w: int, strides=STRIDES_P8) -> list[torch.Tensor]:
    return level_locations([(math.ceil(h / s), math.ceil(w / s)) for s in strides], strides)


def index_of(locations: list[torch.Tensor], level: int, x: float, y: float) -> int:
    """Index of the location (x, y) of ``level`` in the concatenation of all levels."""
    hit = ((locations[level] == torch.tensor([x, y])).all(dim=1)).nonzero()
    assert hit.numel() == 1, (level, x, y)
    return sum(loc.shape[0] for loc in locations[:level]) + int(hit)


# --- shapes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(64, 96), (72, 40)])
@pytest.mark.parametrize("frames", [1, 3])
def test_output_shapes_and_strides(size: tuple[int, int], frames: int) -> None:
    model = tiny_model().eval()
    h, w = size
    with torch.no_grad():
        out = model(torch.randn(2, 3, frames, h, w), key_index=frames // 2)
    assert out.strides == model.strides == STRIDES_P8
    for cls, reg, ctr, s in zip(out.cls_logits, out.box_regression, out.centerness, out.strides, strict=True):
        cells = (math.ceil(h / s), math.ceil(w / s))  # 72x40 has a 9x5 token grid: odd sizes keep every cell
        assert cls.shape == (2, 2, *cells)
        assert reg.shape == (2, 4, *cells)
        assert ctr.shape == (2, 1, *cells)
        assert (reg >= 0).all()


def test_patch16_strides_match_the_original() -> None:
    pyramid = SimpleFeaturePyramid(16, 8, patch_size=16)
    assert pyramid.strides == (8, 16, 32, 64, 128)
    levels = pyramid(torch.randn(1, 16, 4, 6))  # a 64x96 input
    assert [tuple(x.shape) for x in levels] == [(1, 8, 8, 12), (1, 8, 4, 6), (1, 8, 2, 3), (1, 8, 1, 2), (1, 8, 1, 1)]


def test_level_locations_are_cell_centres() -> None:
    loc = level_locations([(2, 3)], [8])[0]
    assert loc.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]  # (x, y), row-major


def test_head_init() -> None:
    torch.manual_seed(0)
    head = FCOSHead(32, 2, num_convs=2, strides=(4, 8))
    assert torch.allclose(head.cls_logits.bias, torch.full((2,), -math.log(99.0)))  # prior 0.01
    assert torch.equal(head.scales.detach(), torch.ones(2))
    norms = [m for m in head.cls_tower if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == 2 and norms[0].num_groups == 4  # groups of 8 channels, as GroupNorm(32, 256)
    assert FCOSHead(256, 2, num_convs=1).bbox_tower[1].num_groups == 32
    out = head([torch.randn(1, 32, 4, 4), torch.randn(1, 32, 2, 2)])
    assert torch.sigmoid(out.cls_logits[0]).mean().item() == pytest.approx(0.01, abs=2e-3)


def test_forward_uses_the_key_frame_tokens() -> None:
    model = tiny_model().eval()
    clip = torch.randn(2, 3, 3, 32, 48)
    with torch.no_grad():
        patches = model.backbone.forward_features(clip, dense=True).patches  # (B, T, h, w, C)
        by_hand = model.head(model.pyramid(patches[:, 2].permute(0, 3, 1, 2)))
        out = model(clip, key_index=2)
        mixed = model(clip, key_index=torch.tensor([0, 2]))
        first = model(clip, key_index=0)
    for a, b in zip(out.cls_logits + out.box_regression, by_hand.cls_logits + by_hand.box_regression, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(mixed.cls_logits[0][0], first.cls_logits[0][0])
    torch.testing.assert_close(mixed.cls_logits[0][1], out.cls_logits[0][1])
    assert not torch.allclose(first.cls_logits[0], out.cls_logits[0])


def test_bad_inputs_raise() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match="multiples of the patch size 8"):
        model(torch.randn(1, 3, 1, 60, 64))
    with pytest.raises(ValueError, match="key_index"):
        model(torch.randn(1, 3, 3, 32, 32), key_index=3)
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        model(torch.randn(1, 3, 32, 32))
    out = model(torch.randn(1, 3, 1, 32, 32))
    with pytest.raises(ValueError, match="labels"):
        model.loss(out, [{"boxes": torch.tensor([[0.0, 0.0, 8.0, 8.0]]), "labels": torch.tensor([3])}])
    with pytest.raises(ValueError, match="x1 >= x0"):
        model.loss(out, [{"boxes": torch.tensor([[9.0, 0.0, 8.0, 8.0]]), "labels": torch.tensor([1])}])
    with pytest.raises(ValueError, match="image sizes"):
        model.postprocess(out, [(32, 32), (32, 32)])
    with pytest.raises(ValueError, match="size_ranges"):
        DetectionConfig(size_ranges=(64, 32, 256, 512))
    with pytest.raises(ValueError, match="patch_size"):
        SimpleFeaturePyramid(8, 8, patch_size=7)


def test_config_defaults_and_overrides() -> None:
    cfg = DetectionConfig()
    assert (cfg.score_threshold, cfg.nms_threshold, cfg.center_sampling_radius) == (0.05, 0.6, 1.5)
    assert (cfg.focal_alpha, cfg.focal_gamma, cfg.fpn_channels, cfg.num_convs, cfg.num_classes) == (
        0.25,
        2.0,
        256,
        4,
        2,
    )
    model = tiny_model(num_convs=2)
    assert (model.config.fpn_channels, model.config.num_convs) == (32, 2)
    assert model.head.cls_logits.out_channels == 2
    assert from_dict(DetectionConfig, {"fpn_channels": 32, "size_ranges": [8, 16, 32, 64]}).size_ranges == (
        8.0,
        16.0,
        32.0,
        64.0,
    )


def test_parameters_partition() -> None:
    model = tiny_model()
    backbone, head = model.backbone_parameters(), model.head_parameters()
    ids_b, ids_h = {id(p) for p in backbone}, {id(p) for p in head}
    assert len(ids_b) == len(backbone) and len(ids_h) == len(head)
    assert not ids_b & ids_h
    assert ids_b | ids_h == {id(p) for p in model.parameters()}
    assert ids_b == {id(p) for p in model.backbone.parameters()}


# --- targets --------------------------------------------------------------------------------------------


def test_fcos_targets_hand_made_box() -> None:
    # Box 20x16 centred at (20, 14); every point inside has max(l, t, r, b) <= 20 <= 64, so only level 0
    # (stride 4) is in range. Its centre region is (20, 14) ± 1.5·4 = [14, 8, 26, 20]; stride-4 points
    # strictly inside: x in {18, 22}, y in {10, 14, 18}.
    locations = locations_for(32, 32)
    tgt = fcos_targets(locations, STRIDES_P8, [torch.tensor([[10.0, 6.0, 30.0, 22.0]])], [torch.tensor([2])])
    expected = {  # (x, y): (l, t, r, b), centre-ness = sqrt(min/max(l, r) · min/max(t, b))
        (18, 10): (8, 4, 12, 12),
        (22, 10): (12, 4, 8, 12),
        (18, 14): (8, 8, 12, 8),
        (22, 14): (12, 8, 8, 8),
        (18, 18): (8, 12, 12, 4),
        (22, 18): (12, 12, 8, 4),
    }
    ctr = {10: math.sqrt(2 / 3 * 1 / 3), 14: math.sqrt(2 / 3), 18: math.sqrt(2 / 3 * 1 / 3)}
    positives = {index_of(locations, 0, x, y): (x, y) for x, y in expected}
    assert set(tgt.labels[0].nonzero().flatten().tolist()) == set(positives)
    assert tgt.labels.shape == (1, sum(loc.shape[0] for loc in locations))
    for i, (x, y) in positives.items():
        assert tgt.labels[0, i] == 2 and tgt.matched[0, i] == 0
        assert tgt.ltrb[0, i].tolist() == list(expected[(x, y)])
        assert tgt.centerness[0, i].item() == pytest.approx(ctr[y])
    negatives = tgt.labels[0] == 0
    assert (tgt.matched[0][negatives] == -1).all() and (tgt.centerness[0][negatives] == 0).all()


def test_fcos_targets_level_ranges() -> None:
    # With boundaries (8, 16, 32, 64) the same box lands on level 1 (stride 8, range [8, 16]): of its
    # stride-8 points inside the box, (20, 12) has max 10 and (20, 20) has max 14; the others exceed 16.
    # Level 0 needs max <= 8 (none: every centre point has max >= 12); level 2's only inside point
    # (24, 8) has max 14 < 16.
    locations = locations_for(32, 32)
    tgt = fcos_targets(
        locations,
        STRIDES_P8,
        [torch.tensor([[10.0, 6.0, 30.0, 22.0]])],
        [torch.tensor([1])],
        size_ranges=(8, 16, 32, 64),
    )
    got = set(tgt.labels[0].nonzero().flatten().tolist())
    assert got == {index_of(locations, 1, 20, 12), index_of(locations, 1, 20, 20)}
    assert tgt.ltrb[0, index_of(locations, 1, 20, 12)].tolist() == [10, 6, 10, 10]
    # Without centre sampling every level-1 point inside the box with max in [8, 16] is positive: the same two.
    tgt0 = fcos_targets(
        locations, STRIDES_P8, [torch.tensor([[10.0, 6.0, 30.0, 22.0]])], [torch.tensor([1])], (8, 16, 32, 64), 0.0
    )
    assert set(tgt0.labels[0].nonzero().flatten().tolist()) == got


def test_fcos_targets_ambiguous_points_take_the_smallest_box() -> None:
    # Both boxes are centred at (16, 16); the 4 stride-4 points (14|18, 14|18) are in both centre regions.
    locations = locations_for(32, 32)
    boxes = torch.tensor([[0.0, 0.0, 32.0, 32.0], [8.0, 8.0, 24.0, 24.0]])
    tgt = fcos_targets(locations, STRIDES_P8, [boxes], [torch.tensor([1, 2])])
    shared = {index_of(locations, 0, x, y) for x in (14, 18) for y in (14, 18)}
    assert set(tgt.labels[0].nonzero().flatten().tolist()) == shared
    assert all(tgt.labels[0, i] == 2 and tgt.matched[0, i] == 1 for i in shared)
    assert tgt.ltrb[0, index_of(locations, 0, 14, 14)].tolist() == [6, 6, 10, 10]  # to the small box
    # Alone, the big box takes them (and its wider centre region 16 ± 6 adds no stride-4 points: 10 and 22 are on
    # its border, excluded by the strict test).
    alone = fcos_targets(locations, STRIDES_P8, [boxes[:1]], [torch.tensor([1])])
    assert set(alone.labels[0].nonzero().flatten().tolist()) == shared


def test_polyp_free_images_give_only_negatives_and_a_finite_loss() -> None:
    model = tiny_model()
    out = model(torch.randn(2, 3, 3, 32, 32), key_index=1)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    tgt = fcos_targets(locations_for(32, 32), STRIDES_P8, [empty["boxes"]] * 2, [empty["labels"]] * 2)
    assert (tgt.labels == 0).all() and (tgt.matched == -1).all()
    losses = model.loss(out, [empty, empty])
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["cls"] > 0 and losses["box"] == 0 and losses["ctr"] == 0
    assert losses["total"] == losses["cls"]
    losses["total"].backward()
    assert model.head.cls_logits.weight.grad.abs().sum() > 0
    # A batch mixing a polyp frame and a polyp-free frame works too.
    mixed = model.loss(out, [{"boxes": torch.tensor([[4.0, 4.0, 28.0, 20.0]]), "labels": torch.tensor([1])}, empty])
    assert mixed["box"] > 0 and torch.isfinite(mixed["total"])


def handmade_outputs(h: int, w: int, cls_value: float, batch: int = 1) -> DetectionOutputs:
    shapes = [(math.ceil(h / s), math.ceil(w / s)) for s in STRIDES_P8]
    return DetectionOutputs(
        [torch.full((batch, 2, *c), cls_value) for c in shapes],
        [torch.zeros(batch, 4, *c) for c in shapes],
        [torch.zeros(batch, 1, *c) for c in shapes],
        STRIDES_P8,
    )


def fill_regression(out: DetectionOutputs, ltrb: torch.Tensor) -> None:
    """Write (B, N, 4) distances over all locations into the per-level maps."""
    start = 0
    for reg in out.box_regression:
        b, _, h, w = reg.shape
        reg.copy_(ltrb[:, start : start + h * w].transpose(1, 2).reshape(b, 4, h, w))
        start += h * w


def test_loss_values_by_hand() -> None:
    target = [{"boxes": torch.tensor([[10.0, 6.0, 30.0, 22.0]]), "labels": torch.tensor([2])}]
    out = handmade_outputs(32, 32, 0.0)
    tgt = fcos_targets(locations_for(32, 32), STRIDES_P8, [target[0]["boxes"]], [target[0]["labels"]])
    n, k, p = tgt.labels.shape[1], 2, 6
    fill_regression(out, tgt.ltrb)
    losses = fcos_loss(out, target)
    # Logits 0: p = 0.5, focal term CE · (1 - p_t)² = log 2 / 4, alpha 0.25 on the P positives, 0.75 elsewhere.
    focal = math.log(2) / 4 * (0.25 * p + 0.75 * (n * k - p)) / p
    assert losses["cls"].item() == pytest.approx(focal, rel=1e-5)
    assert losses["box"].item() == pytest.approx(0.0, abs=1e-6)  # exact regression
    assert losses["ctr"].item() == pytest.approx(math.log(2))  # BCE(logit 0, c) = log 2 for any target c
    # Twice the distances: the prediction contains the target with 4x its area, so IoU = GIoU = 1/4.
    fill_regression(out, 2 * tgt.ltrb)
    assert fcos_loss(out, target)["box"].item() == pytest.approx(0.75, abs=1e-5)


# --- post-processing ------------------------------------------------------------------------------------


def test_postprocess_nms_clipping_and_labels() -> None:
    out = handmade_outputs(32, 32, -10.0)  # every other score is sqrt(sigmoid(-10) / 2) < 0.05
    locs = locations_for(32, 32)

    def put(level: int, x: int, y: int, channel: int, logit: float, ltrb: tuple[float, ...]) -> None:
        s = STRIDES_P8[level]
        row, col = (y - s // 2) // s, (x - s // 2) // s
        assert locs[level][row * out.cls_logits[level].shape[-1] + col].tolist() == [x, y]
        out.cls_logits[level][0, channel, row, col] = logit
        out.box_regression[level][0, :, row, col] = torch.tensor(ltrb)

    put(1, 12, 12, 0, 4.0, (8, 8, 8, 8))  # class 1, box [4, 4, 20, 20]
    put(2, 8, 8, 0, 3.0, (4, 4, 12, 12))  # class 1, same box on another level: removed by NMS
    put(0, 18, 18, 1, 2.0, (14, 14, 2, 2))  # class 2, same box: kept (per-class NMS)
    put(1, 28, 28, 1, 1.0, (4, 4, 10, 10))  # class 2, [24, 24, 38, 38]: clipped to the 31x30 image
    det = postprocess_detections(out, [(30, 31)])[0]

    def score(logit: float) -> float:
        return math.sqrt(torch.sigmoid(torch.tensor(logit)).item() * 0.5)  # centre-ness logits are 0

    assert det["labels"].tolist() == [1, 2, 2]
    assert det["scores"].tolist() == pytest.approx([score(4.0), score(2.0), score(1.0)])
    assert det["boxes"].tolist() == [[4, 4, 20, 20], [4, 4, 20, 20], [24, 24, 31, 30]]
    assert det["labels"].dtype == torch.int64
    assert postprocess_detections(out, [(30, 31)], max_detections=2)[0]["labels"].tolist() == [1, 2]
    assert postprocess_detections(out, [(30, 31)], score_threshold=0.62)[0]["labels"].tolist() == [1, 2]
    assert len(postprocess_detections(out, [(30, 31)], nms_threshold=1.0)[0]["labels"]) == 4
    # An empty image gives empty tensors of the right shapes.
    none = postprocess_detections(handmade_outputs(32, 32, -10.0), [(32, 32)])[0]
    assert none["boxes"].shape == (0, 4) and none["scores"].shape == (0,) and none["labels"].shape == (0,)


# --- training -------------------------------------------------------------------------------------------


def test_overfits_two_images() -> None:
    """Two 64x64 images, one box each (a red square of class 1, a green one of class 2)."""
    torch.manual_seed(0)
    boxes = [(16, 20, 44, 48), (30, 8, 58, 30)]
    images = torch.rand(2, 3, 64, 64) * 0.2
    for i, ((x0, y0, x1, y1), colour) in enumerate(zip(boxes, ([1.0, 0.0, 0.0], [0.0, 1.0, 0.0]), strict=True)):
        images[i, :, y0:y1, x0:x1] = torch.tensor(colour)[:, None, None]
    clip = images.unsqueeze(2)  # T = 1
    targets = [
        {"boxes": torch.tensor([boxes[i]], dtype=torch.float32), "labels": torch.tensor([i + 1])} for i in range(2)
    ]
    model = tiny_model(seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def fitted() -> bool:
        model.eval()
        with torch.no_grad():
            dets = model.postprocess(model(clip), [(64, 64)] * 2)
        model.train()
        return all(
            len(d["boxes"]) > 0 and d["labels"][0] == t["labels"][0] and box_iou(d["boxes"][:1], t["boxes"])[0, 0] > 0.5
            for d, t in zip(dets, targets, strict=True)
        )

    assert not fitted()
    initial = model.loss(model(clip), targets)["total"].item()
    for step in range(1, 121):
        losses = model.loss(model(clip), targets)
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
        if step % 10 == 0 and fitted():
            break
    assert fitted(), f"not fitted after {step} steps"
    assert losses["total"].item() < initial
