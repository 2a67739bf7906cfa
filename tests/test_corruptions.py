"""The test-time corruptions (endofm.data.corruptions): determinism, severities, time behaviour, and the
exact label transforms of the geometric ones, checked against positions computed by hand."""

import math

import numpy as np
import pytest

from endofm.data.corruptions import (
    CORRUPTIONS,
    GEOMETRIC,
    SEVERITIES,
    ClipCorruption,
    CorruptedClip,
    affine_matrix,
    clip_rng,
    line_kernel,
    warp_boxes,
)

#: Corruptions that draw nothing from the clip's generator: the same on every clip.
UNSEEDED = {"defocus_blur", "contrast"}


def textured_clip(t: int = 6, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus noise, so that blur, gamma and contrast all change it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], -1) * 160 + 40
    frames = base[None] + rng.normal(0, 25, size=(t, h, w, 3))
    return frames.clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_each_corruption_is_deterministic_given_clip_name_severity_and_seed(name):
    frames = textured_clip()
    for severity in SEVERITIES:
        a = ClipCorruption(name, severity, seed=3)(frames, "clip-a")
        b = ClipCorruption(name, severity, seed=3)(frames.copy(), "clip-a")
        assert a.frames.dtype == np.uint8 and a.frames.shape == frames.shape
        np.testing.assert_array_equal(a.frames, b.frames)
        np.testing.assert_array_equal(a.source, b.source)
        assert a.viewpoint == b.viewpoint
    if name in UNSEEDED:
        same = ClipCorruption(name, 2, seed=4)(frames, "clip-b")
        np.testing.assert_array_equal(same.frames, ClipCorruption(name, 2, seed=3)(frames, "clip-a").frames)
        return
    # another seed or another clip draws anew (a 24-frame clip: two frame-drop patterns all but never coincide)
    frames = textured_clip(t=24)
    reference = ClipCorruption(name, 3, seed=3)(frames, "clip-a")
    for other in (ClipCorruption(name, 3, seed=4)(frames, "clip-a"), ClipCorruption(name, 3, seed=3)(frames, "clip-b")):
        assert not (np.array_equal(other.frames, reference.frames) and np.array_equal(other.source, reference.source))


def test_clip_rng_depends_on_every_part_of_its_key():
    draws = {
        tuple(clip_rng(*key).integers(0, 2**31, 4))
        for key in [("a", "x", 1, 0), ("b", "x", 1, 0), ("a", "y", 1, 0), ("a", "x", 2, 0), ("a", "x", 1, 1)]
    }
    assert len(draws) == 5
    assert tuple(clip_rng("a", "x", 1, 0).integers(0, 2**31, 4)) in draws  # and is a pure function of it


@pytest.mark.parametrize("name", ["motion_blur", "defocus_blur", "contrast", "specular"])
def test_higher_severity_moves_the_frames_further(name):
    frames = textured_clip()
    change = [
        np.abs(ClipCorruption(name, s, seed=0)(frames, "k").frames.astype(float) - frames).mean() for s in SEVERITIES
    ]
    assert change[0] > 0 and change[0] < change[1] < change[2], change


def test_unknown_name_or_severity_fails():
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        ClipCorruption("fog", 1)
    with pytest.raises(ValueError, match="severity must be one of"):
        ClipCorruption("contrast", 4)


@pytest.mark.parametrize("name", ["defocus_blur", "contrast", "rotation_zoom"])
def test_a_static_corruption_is_the_same_on_every_frame(name):
    frames = np.repeat(textured_clip(t=1), 5, axis=0)
    out = ClipCorruption(name, 2, seed=1)(frames, "k").frames
    for t in range(1, 5):
        np.testing.assert_array_equal(out[t], out[0])


def test_brightness_is_a_clip_gamma_flickering_by_ten_percent():
    """A grey frame of value 128: each output frame is 255 · (128/255)^(γ·k), k in [0.9, 1.1], the same γ
    (1.5 or 1/1.5 at severity 1) for the whole clip, and k not constant (the light flickers)."""
    frames = np.full((8, 8, 8, 3), 128, np.uint8)
    out = ClipCorruption("brightness", 1, seed=0)(frames, "k").frames[:, 0, 0, 0].astype(float)
    x = 128 / 255
    darker = (255 * x ** (1.5 * 1.1) - 1, 255 * x ** (1.5 * 0.9) + 1)
    brighter = (255 * x ** (1.1 / 1.5) - 1, 255 * x ** (0.9 / 1.5) + 1)
    assert all(darker[0] <= v <= darker[1] for v in out) or all(brighter[0] <= v <= brighter[1] for v in out), out
    assert len(set(out)) > 1


def test_motion_blur_direction_drifts_smoothly_over_the_clip():
    """One white dot per frame: each blurred frame spreads it along a line (its direction measured as the
    main axis of the spread) whose direction is base + 20·sin(2πt/8 + φ) degrees: consecutive frames differ
    by at most 2·20·sin(π/8) ≈ 15.3 degrees, and every direction lies within 20 degrees of the middle one."""
    frames = np.zeros((8, 41, 41, 3), np.uint8)
    frames[:, 20, 20] = 255
    out = ClipCorruption("motion_blur", 3, seed=5)(frames, "k").frames[..., 0].astype(float)
    angles = []
    for frame in out:
        ys, xs = np.nonzero(frame)
        w = frame[ys, xs]
        cov = np.cov(np.stack([xs, ys]), aweights=w)
        vals, vecs = np.linalg.eigh(cov)
        angles.append(math.degrees(math.atan2(vecs[1, -1], vecs[0, -1])) % 180)
    steps = [min(abs(a - b), 180 - abs(a - b)) for a, b in zip(angles, angles[1:], strict=False)]
    assert 0 < max(steps) <= 2 * 20 * math.sin(math.pi / 8) + 1.0, steps  # 1 degree of measurement slack
    middle = (max(angles) + min(angles)) / 2 if max(angles) - min(angles) < 90 else None
    if middle is not None:  # not wrapped around 0/180
        assert max(abs(a - middle) for a in angles) <= 20 + 1.0, angles


def test_line_kernel_is_a_normalised_line_through_the_centre():
    flat = line_kernel(5, 0.0).numpy()
    assert flat.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(flat[2], flat.sum(axis=0), atol=1e-7)  # every weight on the middle row
    assert flat[2].min() > 0.1
    upright = line_kernel(5, 90.0).numpy()
    np.testing.assert_allclose(upright[:, 2].sum(), 1.0, atol=1e-6)


def test_frame_drop_freezes_frames_and_keeps_the_key_frame():
    frames = textured_clip(t=12)
    out = ClipCorruption("frame_drop", 3, seed=0)(frames, "k", keep=(6,))
    src = out.source
    assert src[0] == 0 and src[6] == 6
    for t in range(1, 12):
        assert src[t] in (t, src[t - 1])  # a dropped frame shows the last kept one
        np.testing.assert_array_equal(out.frames[t], frames[src[t]])
    assert (src != np.arange(12)).any()
    masks = (np.arange(12)[:, None, None] * np.ones((1, 4, 4))).astype(np.uint8)
    np.testing.assert_array_equal(out.warp_masks(masks)[:, 0, 0], src)  # the labels follow the frames shown


# --- geometry ----------------------------------------------------------------------------------------


def square(h: int, w: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def test_quarter_turn_maps_a_square_where_computed_by_hand():
    """64 x 64, centre (32, 32), +90 degrees (clockwise on screen): (x, y) -> (32 - (y - 32), 32 + (x - 32)), so
    the square x in [40, 56), y in [8, 16) lands on x in [48, 56), y in [40, 56)."""
    clip = CorruptedClip(np.zeros((1, 64, 64, 3), np.uint8), np.arange(1), (90.0, 1.0))
    np.testing.assert_allclose(affine_matrix(90.0, 1.0, 64, 64), [[0, -1, 64], [1, 0, 0]], atol=1e-12)
    moved = clip.warp_masks(square(64, 64, 40, 8, 56, 16)[None])[0]
    np.testing.assert_array_equal(moved, square(64, 64, 48, 40, 56, 56))
    boxes, keep = clip.warp_boxes(np.array([[40.0, 8.0, 56.0, 16.0]]))
    np.testing.assert_allclose(boxes, [[48, 40, 56, 56]], atol=1e-9)
    assert keep.tolist() == [True]


def test_zoom_on_a_non_square_frame_maps_a_square_where_computed_by_hand():
    """48 x 64 (H x W), centre (32, 24), zoom 2: x' = 32 + 2 (x - 32), y' = 24 + 2 (y - 24); the square
    x in [36, 40), y in [26, 30) lands on x in [40, 48), y in [28, 36)."""
    clip = CorruptedClip(np.zeros((1, 48, 64, 3), np.uint8), np.arange(1), (0.0, 2.0))
    moved = clip.warp_masks(square(48, 64, 36, 26, 40, 30)[None])[0]
    np.testing.assert_array_equal(moved, square(48, 64, 40, 28, 48, 36))
    boxes, _ = clip.warp_boxes(np.array([[36.0, 26.0, 40.0, 30.0]]))
    np.testing.assert_allclose(boxes, [[40, 28, 48, 36]], atol=1e-9)


def test_rotated_box_becomes_its_enclosing_box_clipped_to_the_frame():
    # 45 degrees about (32, 32): the centred 16-px square becomes a diamond of half-diagonal 8·sqrt(2)
    half = 8 * math.sqrt(2)
    boxes, keep = warp_boxes(np.array([[24.0, 24.0, 40.0, 40.0]]), affine_matrix(45.0, 1.0, 64, 64), 64, 64)
    np.testing.assert_allclose(boxes, [[32 - half, 32 - half, 32 + half, 32 + half]], atol=1e-9)
    # zoom 2 about (32, 32): [8, 24]² -> [-16, 16]², clipped to [0, 16]²; [0, 16]² -> [-32, 0]²: gone
    boxes, keep = warp_boxes(np.array([[8.0, 8, 24, 24], [0, 0, 16, 16]]), affine_matrix(0.0, 2.0, 64, 64), 64, 64)
    np.testing.assert_allclose(boxes[0], [0, 0, 16, 16], atol=1e-9)
    assert keep.tolist() == [True, False]


def test_rotation_zoom_moves_pixels_masks_and_boxes_together():
    """A white square on black, corrupted at each severity: the bright corrupted pixels are where the moved
    mask is (bilinear edges aside), and the moved box encloses their centres."""
    frames = np.zeros((2, 48, 64, 3), np.uint8)
    frames[:, 14:30, 20:40] = 255
    mask = square(48, 64, 20, 14, 40, 30)
    for severity in SEVERITIES:
        out = ClipCorruption("rotation_zoom", severity, seed=2)(frames, "k")
        assert out.viewpoint is not None and out.viewpoint[1] == (1.1, 1.2, 1.35)[severity - 1]
        bright = out.frames[0, ..., 0] > 127
        moved = out.warp_masks(np.stack([mask, mask]))[0].astype(bool)
        iou = (bright & moved).sum() / (bright | moved).sum()
        assert iou > 0.9, (severity, iou)
        (box,), keep = out.warp_boxes(np.array([[20.0, 14.0, 40.0, 30.0]]))
        ys, xs = np.nonzero(bright)
        centres = np.stack([xs + 0.5, ys + 0.5], 1)  # a bright pixel's centre lies in the moved box
        assert keep[0] and (centres >= box[:2]).all() and (centres <= box[2:]).all(), (
            box,
            centres.min(0),
            centres.max(0),
        )


def test_the_geometry_is_drawn_the_same_without_the_pixels():
    """ClipCorruption.matrix (what warp_coco uses) equals the map of the corrupted clip for the same key."""
    frames = textured_clip(t=1)
    corruption = ClipCorruption("rotation_zoom", 3, seed=9)
    np.testing.assert_allclose(corruption.matrix("17", 48, 64), corruption(frames, "17").matrix)
    assert ClipCorruption("contrast", 3).matrix("17", 48, 64) is None
    assert set(GEOMETRIC) == {"rotation_zoom"}
    coco = {
        "images": [{"id": 17, "height": 48, "width": 64}],
        "annotations": [{"id": 1, "image_id": 17, "category_id": 1, "bbox": [20.0, 14.0, 20.0, 16.0], "area": 320.0}],
    }
    (ann,) = corruption.warp_coco(coco)["annotations"]
    (box,), _ = corruption(frames, "17").warp_boxes(np.array([[20.0, 14.0, 40.0, 30.0]]))
    np.testing.assert_allclose(ann["bbox"], [box[0], box[1], box[2] - box[0], box[3] - box[1]])
    assert ann["area"] == pytest.approx((box[2] - box[0]) * (box[3] - box[1]))
