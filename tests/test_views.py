"""Multi-view sampling of pretraining clips (endofm.pretraining.views)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from endofm.config import ConfigError, from_dict
from endofm.data.clips import MANIFEST_COLUMNS
from endofm.data.video import VideoReader, write_video
from endofm.io import write_csv
from endofm.pretraining import views
from endofm.pretraining.views import (
    MultiViewDataset,
    ViewConfig,
    augment_view,
    collate_views,
    load_clip_manifests,
    random_resized_crop_params,
    sample_frame_indices,
    view_shapes,
)

CPU = ViewConfig(global_frames=(4, 4), global_size=64, local_frames=(2, 2, 2, 2), local_size=32)
NO_AUG = dict(hflip=0.0, color_jitter=0.0, grayscale=0.0)
MEAN = torch.tensor(ViewConfig().mean).view(3, 1, 1, 1)
STD = torch.tensor(ViewConfig().std).view(3, 1, 1, 1)


def cfg_of(base: ViewConfig = CPU, **changes) -> ViewConfig:
    return ViewConfig(**{**base.__dict__, **changes})


def unnormalise(view: torch.Tensor) -> torch.Tensor:
    return view * STD + MEAN


class FakeReader:
    """Stands in for VideoReader: serves in-memory clips and logs every get_frames call."""

    clips: dict[str, np.ndarray] = {}
    calls: list[tuple[str, np.ndarray]] = []

    def __init__(self, path):
        self.path = str(path)
        self.frames = self.clips[self.path]
        self.num_frames = len(self.frames)

    def get_frames(self, indices):
        indices = np.asarray(indices)
        type(self).calls.append((self.path, indices.copy()))
        return self.frames[indices]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


@pytest.fixture
def fake(monkeypatch):
    """Install FakeReader; returns a function that registers clips and gives their table."""
    reader = type("Reader", (FakeReader,), {"clips": {}, "calls": []})
    monkeypatch.setattr(views, "VideoReader", reader)

    def table(**clips: np.ndarray) -> pd.DataFrame:
        reader.clips.update(clips)
        return pd.DataFrame({"path": list(clips), "frames": [len(c) for c in clips.values()]})

    table.reader = reader
    return table


def index_clip(n: int, height: int = 24, width: int = 30) -> np.ndarray:
    """Frame ``t`` is a flat grey of value ``t`` (n <= 256): a view's pixels tell which frame they came from."""
    return np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, height, width, 3)).copy()


def texture_clip(n: int, height: int = 48, width: int = 60, seed: int = 0) -> np.ndarray:
    """``n`` identical frames of a horizontal + vertical colour gradient with noise."""
    yy, xx = np.mgrid[0:height, 0:width]
    noise = np.random.default_rng(seed).integers(0, 40, (height, width, 3))
    frame = np.stack([xx * 200 // width, yy * 200 // height, (xx + yy) * 100 // (height + width)], -1) + noise
    return np.broadcast_to(frame.astype(np.uint8), (n, height, width, 3)).copy()


# --- config and shapes ----------------------------------------------------------------------------


def test_view_shapes_of_paper_and_cpu_configs():
    assert view_shapes(ViewConfig()) == [(8, 224), (16, 224)] + [(t, 96) for t in (2, 2, 4, 4, 8, 8, 16, 16)]
    assert view_shapes(CPU) == [(4, 64), (4, 64), (2, 32), (2, 32), (2, 32), (2, 32)]


def test_config_from_dict_and_validation():
    cfg = from_dict(ViewConfig, {"global_frames": [4, 4], "local_frames": [], "ratio": [0.5, 2]}, "views")
    assert cfg.global_frames == (4, 4) and cfg.local_frames == () and cfg.ratio == (0.5, 2.0)
    with pytest.raises(ConfigError, match="views: unknown key.*'blur'"):
        from_dict(ViewConfig, {"blur": 0.5}, "views")
    with pytest.raises(ValueError, match=r"global_frames must have exactly 2 items, got \(8, 8, 8\)"):
        ViewConfig(global_frames=(8, 8, 8))
    with pytest.raises(ValueError, match=r"local_frames\[1\] must be >= 1, got 0"):
        ViewConfig(local_frames=(2, 0))
    with pytest.raises(ValueError, match=r"global_scale must satisfy 0 < min <= max, got \(0.9, 0.4\)"):
        ViewConfig(global_scale=(0.9, 0.4))
    with pytest.raises(ValueError, match=r"hflip must be in \[0, 1\], got 1.5"):
        ViewConfig(hflip=1.5)
    with pytest.raises(ValueError, match="hue must be in"):
        ViewConfig(hue=0.7)


@pytest.mark.parametrize("cfg", [ViewConfig(), CPU], ids=["paper", "cpu"])
def test_item_views_in_order_with_shapes(fake, cfg):
    ds = MultiViewDataset(fake(a=texture_clip(150, 256, 320)), cfg)
    item = ds[0]
    assert len(ds) == 1 and len(item) == len(cfg.global_frames) + len(cfg.local_frames)
    assert [tuple(v.shape) for v in item] == [(3, t, s, s) for t, s in view_shapes(cfg)]
    assert all(v.dtype == torch.float32 and v.is_contiguous() and torch.isfinite(v).all() for v in item)


# --- time ------------------------------------------------------------------------------------------


def test_paper_indices_of_a_150_frame_clip():
    idx = sample_frame_indices(150, ViewConfig(), np.random.default_rng(0))
    assert idx[0].tolist() == [0, 20, 41, 62, 82, 103, 124, 145]  # floor(linspace(0, 145, 8))
    # floor(linspace(5, 150, 16)), the last clamped to frame 149
    assert idx[1].tolist() == [5, 14, 24, 34, 43, 53, 63, 72, 82, 92, 101, 111, 121, 130, 140, 149]
    assert [len(i) for i in idx[2:]] == [2, 2, 4, 4, 8, 8, 16, 16]
    for local in idx[2:]:
        assert local[-1] - local[0] == 150 // 8 and local[0] <= 150 - 18 - 1
        assert (np.diff(local) >= 0).all()


@pytest.mark.parametrize("length", [1, 3, 7, 40, 150, 256])
def test_index_ranges(length):
    cfg = ViewConfig()
    starts = set()
    for seed in range(200):
        idx = sample_frame_indices(length, cfg, np.random.default_rng(seed))
        assert all(i.dtype.kind == "i" and ((i >= 0) & (i < length)).all() for i in idx)
        assert idx[0].max() <= max(length - 5, 0) and idx[0][0] == 0
        assert idx[1].min() >= min(5, length - 1) and idx[1][-1] == length - 1
        for local in idx[2:]:
            assert local.max() - local.min() <= length // 8
        starts.update(int(local[0]) for local in idx[2:])
    if length >= 40:  # local windows start anywhere in [0, L - L//8 - 1]
        assert min(starts) == 0 and max(starts) == length - length // 8 - 1


def test_short_clips_repeat_frames():
    idx = sample_frame_indices(3, ViewConfig(), np.random.default_rng(0))
    assert idx[0].tolist() == [0] * 8  # linspace(0, -2) clamps to the first frame
    assert idx[1].tolist() == [2] * 16  # linspace(5, 3) clamps to the last
    assert all(len(i) == t for i, t in zip(idx, (8, 16, 2, 2, 4, 4, 8, 8, 16, 16), strict=True))


def test_long_clips_get_a_random_window_of_max_window_frames():
    cfg = ViewConfig()
    offsets = set()
    for seed in range(40):
        idx = sample_frame_indices(1000, cfg, np.random.default_rng(seed))
        offset = int(idx[0][0])
        offsets.add(offset)
        assert idx[0].tolist() == (offset + np.array([0, 35, 71, 107, 143, 179, 215, 251])).tolist()
        assert idx[1][-1] == offset + 255
        allidx = np.concatenate(idx)
        assert allidx.min() >= offset and allidx.max() <= offset + 255 <= 999
        assert all(local.max() - local.min() <= 256 // 8 for local in idx[2:])
    assert len(offsets) > 30 and max(offsets) <= 1000 - 256


def test_views_show_the_sampled_frames(fake):
    """End to end: with augmentations off, every pixel of a view reads back its sampled frame index."""
    cfg = cfg_of(ViewConfig(), **NO_AUG, global_size=16, local_size=8)
    ds = MultiViewDataset(fake(a=index_clip(150)), cfg, seed=3)
    ds.set_epoch(2)
    expected = sample_frame_indices(150, cfg, ds.rng(0))
    for view, idx in zip(ds[0], expected, strict=True):
        values = unnormalise(view) * 255
        assert torch.allclose(values, torch.tensor(idx, dtype=torch.float32).view(1, -1, 1, 1), atol=1e-3)


def test_one_decode_per_item_with_the_sorted_union(fake):
    ds = MultiViewDataset(fake(a=index_clip(150), b=index_clip(40)), ViewConfig(**NO_AUG, global_size=8, local_size=8))
    for index, path in ((0, "a"), (1, "b"), (0, "a")):
        fake.reader.calls.clear()
        expected = np.unique(np.concatenate(sample_frame_indices(len(fake.reader.clips[path]), ds.cfg, ds.rng(index))))
        ds[index]
        assert len(fake.reader.calls) == 1
        called_path, called = fake.reader.calls[0]
        assert called_path == path and called.tolist() == expected.tolist()
        assert (np.diff(called) > 0).all()


def test_decode_once_with_the_real_reader(tmp_path, monkeypatch):
    write_video(tmp_path / "c.mp4", texture_clip(24, 32, 40))
    calls = []

    class Counting(VideoReader):
        def get_frames(self, indices):
            calls.append(np.asarray(indices).tolist())
            return super().get_frames(indices)

    monkeypatch.setattr(views, "VideoReader", Counting)
    ds = MultiViewDataset(pd.DataFrame({"path": [str(tmp_path / "c.mp4")], "frames": [24]}), CPU)
    item = ds[0]
    assert len(calls) == 1 and calls[0] == sorted(set(calls[0]))
    assert [tuple(v.shape) for v in item] == [(3, t, s, s) for t, s in view_shapes(CPU)]


# --- space -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes", [{}, dict(hflip=1.0, color_jitter=1.0, grayscale=0.0), dict(color_jitter=1.0, hue=0.1)]
)
def test_crop_flip_and_jitter_are_shared_by_all_frames_of_a_view(fake, changes):
    """Identical input frames stay identical in every view: nothing is drawn per frame."""
    ds = MultiViewDataset(fake(a=texture_clip(40)), cfg_of(CPU, local_frames=(2, 4, 8, 16), **changes))
    for epoch in range(3):
        ds.set_epoch(epoch)
        for view in ds[0]:  # allclose, not equal: vectorised kernels may round lanes differently
            assert torch.allclose(view, view[:, :1].expand_as(view), atol=1e-6)


def test_views_get_different_crops(fake):
    ds = MultiViewDataset(fake(a=texture_clip(40)), cfg_of(CPU, **NO_AUG, global_size=32))
    item = ds[0]
    assert not torch.allclose(item[0], item[1], atol=0.05)
    locals_ = [v[:, 0] for v in item[2:]]
    for i in range(len(locals_)):
        for j in range(i + 1, len(locals_)):
            assert not torch.allclose(locals_[i], locals_[j], atol=0.05)


def test_hflip_mirrors_the_view(fake):
    clip = texture_clip(8, 48, 60)
    full = dict(global_scale=(1.0, 1.0), local_scale=(1.0, 1.0), ratio=(60 / 48, 60 / 48), color_jitter=0.0)
    plain = MultiViewDataset(fake(a=clip), cfg_of(CPU, **full, hflip=0.0, grayscale=0.0))[0]
    flipped = MultiViewDataset(fake(a=clip), cfg_of(CPU, **full, hflip=1.0, grayscale=0.0))[0]
    for p, f in zip(plain, flipped, strict=True):
        assert torch.allclose(p.flip(-1), f, atol=1e-5)
        assert not torch.allclose(p, f, atol=0.05)


def test_normalisation_of_a_grey_clip(fake):
    grey = np.full((20, 32, 40, 3), 128, np.uint8)
    item = MultiViewDataset(fake(a=grey), cfg_of(CPU, **NO_AUG))[0]
    expected = (128 / 255 - MEAN) / STD
    for view in item:
        assert torch.allclose(view, expected.expand_as(view), atol=1e-5)
    # With every augmentation on, a grey clip stays grey and flat: jitter only scales its level.
    ds = MultiViewDataset(fake(a=grey), cfg_of(CPU, hflip=1.0, color_jitter=1.0, grayscale=1.0))
    levels = set()
    for epoch in range(4):
        ds.set_epoch(epoch)
        for view in ds[0]:
            values = unnormalise(view)
            assert torch.allclose(values, values[:1, :1, :1, :1].expand_as(values), atol=1e-5)
            levels.add(round(float(values[0, 0, 0, 0]), 4))
    assert len(levels) > 10 and min(levels) >= 128 / 255 * 0.6 - 1e-4 and max(levels) <= 128 / 255 * 1.4 + 1e-4


def test_grayscale_uses_the_original_weights():
    """The original's grayscale assumes BGR on RGB frames: 0.114 R + 0.587 G + 0.299 B."""
    red = np.zeros((2, 16, 16, 3), np.uint8)
    red[..., 0] = 255
    cfg = cfg_of(CPU, hflip=0.0, color_jitter=0.0, grayscale=1.0)
    view = augment_view(red, 8, (1.0, 1.0), cfg, np.random.default_rng(0))
    assert torch.allclose(unnormalise(view), torch.full_like(view, 0.114), atol=1e-5)


def test_colour_jitter_changes_views(fake):
    ds_off = MultiViewDataset(fake(a=texture_clip(20)), cfg_of(CPU, color_jitter=0.0, grayscale=0.0))
    ds_on = MultiViewDataset(fake(a=texture_clip(20)), cfg_of(CPU, color_jitter=1.0, grayscale=0.0))
    changed = [not torch.allclose(a, b, atol=1e-3) for a, b in zip(ds_off[0], ds_on[0], strict=True)]
    assert all(changed)


def original_colour_jitter(frames: np.ndarray, ops: list[tuple[str, float]]) -> np.ndarray:
    """Endo-FM's ``datasets/transform.py`` colour jitter written out on ``(T, C, H, W)`` frames in PyAV's RGB
    order (its grayscale reads channel 2 as red, so R weighs 0.114 and B 0.299): brightness blends with
    black, contrast with the per-frame mean of the grey image, saturation with the grey image, each grey
    computed from the frames as they enter that operation."""
    out = frames.astype(np.float64)
    for name, alpha in ops:
        grey = 0.299 * out[:, 2] + 0.587 * out[:, 1] + 0.114 * out[:, 0]  # (T, H, W)
        grey3 = np.repeat(grey[:, None], 3, axis=1)
        if name == "brightness":
            other = np.zeros_like(out)
        elif name == "contrast":
            other = np.broadcast_to(grey3.mean(axis=(1, 2, 3), keepdims=True), out.shape)
        else:
            other = grey3
        out = out * alpha + other * (1 - alpha)
    return out


def test_colour_jitter_equals_the_original_formula():
    """Fixed frames and factors against the original's formula: the grey that contrast and saturation blend
    with is that of the image before the operation, not of the image already scaled by the factor."""
    # One pixel by hand: grey(0.2, 0.4, 0.6) = 0.114·0.2 + 0.587·0.4 + 0.299·0.6 = 0.437.
    pixel = torch.tensor([0.2, 0.4, 0.6]).view(3, 1, 1, 1)
    got = views.jitter_colours(pixel.clone(), [("contrast", 1.5)], ViewConfig().gray_weights)
    torch.testing.assert_close(got.flatten(), torch.tensor([0.3, 0.6, 0.9]) - 0.5 * 0.437, rtol=0, atol=1e-6)
    got = views.jitter_colours(pixel.clone(), [("saturation", 0.5)], ViewConfig().gray_weights)
    torch.testing.assert_close(got.flatten(), torch.tensor([0.1, 0.2, 0.3]) + 0.5 * 0.437, rtol=0, atol=1e-6)
    # Two frames of 2 x 3 pixels, every order of the three operations with fixed factors.
    frames = np.random.default_rng(0).uniform(0, 1, (2, 3, 2, 3))  # (T, C, H, W), the original's layout
    factors = {"brightness": 1.3, "contrast": 0.6, "saturation": 1.45}
    for order in ([0, 1, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]):
        ops = [(list(factors)[i], list(factors.values())[i]) for i in order]
        x = torch.from_numpy(frames.transpose(1, 0, 2, 3).astype(np.float32)).contiguous()  # (C, T, H, W)
        got = views.jitter_colours(x, ops, ViewConfig().gray_weights).numpy().transpose(1, 0, 2, 3)
        np.testing.assert_allclose(got, original_colour_jitter(frames, ops), rtol=0, atol=1e-6)


class ScriptedRng:
    """A generator that replays planned draws, to pin the crop-selection rule."""

    def __init__(self, uniforms, integers):
        self.uniforms, self.integers_ = list(uniforms), list(integers)

    def uniform(self, lo, hi):
        return self.uniforms.pop(0)

    def integers(self, lo, hi):
        value = self.integers_.pop(0)
        assert lo <= value < hi
        return value

    def random(self):
        return 0.5


# Draws of (area fraction, log aspect) on a 100x100 frame.
VALID_SMALL, TOO_WIDE, VALID_BIG = (0.25, 0.0), (1.0, np.log(4.0)), (0.81, 0.0)  # 50x50, 50x200, 90x90


@pytest.mark.parametrize("rule, expected", [("original", (3, 4, 50, 96)), ("last_valid", (3, 4, 90, 90))])
def test_crop_rule_with_an_invalid_last_draw(rule, expected):
    """Valid 50x50 at (7, 9), too wide, valid 90x90 at (3, 4), then 7 draws of 50x200 (too wide).

    original: the offsets (3, 4) of the last valid draw, the size 50x200 of the last draw, cut at the
    frame edge: width 100 - 4 = 96. last_valid: the 90x90 draw whole.
    """
    draws = [VALID_SMALL, TOO_WIDE, VALID_BIG] + [TOO_WIDE] * 7
    rng = ScriptedRng([u for pair in draws for u in pair], integers=[7, 9, 3, 4])
    assert random_resized_crop_params(100, 100, (0.05, 1.0), (0.25, 4.0), rng, rule) == expected
    assert rng.integers_ == []  # both valid draws took their offsets


@pytest.mark.parametrize("rule", ["original", "last_valid"])
def test_crop_rule_when_the_last_draw_is_valid(rule):
    draws = [VALID_BIG] + [TOO_WIDE] * 8 + [VALID_SMALL]
    rng = ScriptedRng([u for pair in draws for u in pair], integers=[3, 4, 7, 9])
    assert random_resized_crop_params(100, 100, (0.05, 1.0), (0.25, 4.0), rng, rule) == (7, 9, 50, 50)


@pytest.mark.parametrize("rule, reaches_right_edge", [("original", True), ("last_valid", False)])
def test_views_follow_the_configured_crop_rule(rule, reaches_right_edge):
    """A frame black but for its last column: the original's 50x96 box at (3, 4) reaches it, the
    90x90 box of last_valid (columns 4..93) does not."""
    frames = np.zeros((2, 100, 100, 3), np.uint8)
    frames[:, :, -1] = 255
    draws = [VALID_SMALL, TOO_WIDE, VALID_BIG] + [TOO_WIDE] * 7
    rng = ScriptedRng([u for pair in draws for u in pair], integers=[7, 9, 3, 4])
    cfg = cfg_of(CPU, **NO_AUG, crop_rule=rule, antialias=True)
    view = unnormalise(augment_view(frames, 32, (0.05, 1.0), cfg_of(cfg, ratio=(0.25, 4.0)), rng))
    assert (view.amax() > 0.1) == reaches_right_edge


def test_crop_falls_back_to_a_centre_crop():
    rng = np.random.default_rng(0)
    # A crop of the whole area at aspect 2 never fits a square frame: the centre box of ratio 2 is used.
    assert random_resized_crop_params(100, 100, (1.0, 1.0), (2.0, 2.0), rng) == (25, 0, 50, 100)
    assert random_resized_crop_params(40, 200, (1.0, 1.0), (0.5, 0.5), rng) == (0, 90, 40, 20)
    assert random_resized_crop_params(30, 40, (1.0, 1.0), (2.0, 3.0), rng) == (5, 0, 20, 40)


def test_crops_stay_inside_the_frame():
    rng = np.random.default_rng(0)
    for height, width in ((48, 60), (256, 320), (5, 7), (1, 1)):
        for scale in ((0.05, 0.4), (0.4, 1.0)):
            for _ in range(50):
                top, left, h, w = random_resized_crop_params(height, width, scale, (3 / 4, 4 / 3), rng)
                assert 0 <= top and top + h <= height and 0 <= left and left + w <= width and h >= 1 and w >= 1


# --- randomness ------------------------------------------------------------------------------------


def test_items_are_reproducible_per_seed_epoch_and_index(fake):
    table = fake(a=texture_clip(40), b=texture_clip(40, seed=1))
    ds, twin, other_seed = MultiViewDataset(table, CPU), MultiViewDataset(table, CPU), MultiViewDataset(table, CPU, 1)
    first = ds[0]
    assert all(torch.equal(a, b) for a, b in zip(first, twin[0], strict=True))
    assert all(torch.equal(a, b) for a, b in zip(first, ds[0], strict=True))
    assert not torch.equal(first[0], other_seed[0][0])
    ds.set_epoch(1)
    second = ds[0]
    assert not any(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    twin.set_epoch(1)
    assert all(torch.equal(a, b) for a, b in zip(second, twin[0], strict=True))
    with pytest.raises(IndexError, match="clip index 2 out of range for 2 clips"):
        ds[2]


def test_manifest_frame_count_mismatch_fails(fake):
    table = fake(a=texture_clip(30))
    table.loc[0, "frames"] = 31
    with pytest.raises(ValueError, match="a: the manifest lists 31 frames but the file has 30"):
        MultiViewDataset(table, CPU)[0]


def test_dataloader_with_workers_matches_main_process(tmp_path):
    for k in range(3):
        write_video(tmp_path / f"v{k}.mp4", texture_clip(20 + 8 * k, 32, 40, seed=k))
    rows = [
        {"source": "s", "source_video": f"v{k}", "start_frame": 0, "frames": 20 + 8 * k, "fps": 30,
         "width": 40, "height": 32, "path": f"v{k}.mp4"}
        for k in range(3)
    ]  # fmt: skip
    write_csv(tmp_path / "clips.csv", pd.DataFrame(rows, columns=MANIFEST_COLUMNS))
    ds = MultiViewDataset(load_clip_manifests([tmp_path / "clips.csv"]), CPU, seed=5)
    batches = {}
    for workers in (0, 1):
        loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate_views)
        batches[workers] = list(loader)
    for b0, b1 in zip(batches[0], batches[1], strict=True):
        assert [tuple(v.shape[1:]) for v in b0] == [(3, t, s, s) for t, s in view_shapes(CPU)]
        assert all(torch.equal(x, y) for x, y in zip(b0, b1, strict=True))
    assert [len(b[0]) for b in batches[0]] == [2, 1]


# --- batches and manifests -------------------------------------------------------------------------


def test_collate_views():
    item = [torch.zeros(3, t, s, s) for t, s in view_shapes(CPU)]
    batch = collate_views([item, [v + 1 for v in item], [v + 2 for v in item]])
    assert [tuple(v.shape) for v in batch] == [(3, 3, t, s, s) for t, s in view_shapes(CPU)]
    assert batch[2][:, 0, 0, 0, 0].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="batch item 1 has 5 views, item 0 has 6"):
        collate_views([item, item[:5]])
    with pytest.raises(ValueError, match="empty batch"):
        collate_views([])


def write_manifest(folder: Path, source: str, names: list[str], frames: int = 30, touch: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        if touch:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(b"")
        rows.append(
            {"source": source, "source_video": name, "start_frame": 0, "frames": frames, "fps": 30,
             "width": 40, "height": 32, "path": name}
        )  # fmt: skip
    return write_csv(folder / "clips.csv", pd.DataFrame(rows, columns=MANIFEST_COLUMNS))


def test_manifests_resolve_paths_against_their_folder(tmp_path, monkeypatch):
    write_manifest(tmp_path / "a", "colon", ["x.mp4", "sub/y.mp4"])
    b = write_manifest(tmp_path / "b", "gastro", ["x.mp4"])
    monkeypatch.chdir(tmp_path)
    clips = load_clip_manifests([Path("a/clips.csv"), b])
    assert clips["path"].tolist() == [
        str(tmp_path / "a/x.mp4"),
        str(tmp_path / "a/sub/y.mp4"),
        str(tmp_path / "b/x.mp4"),
    ]
    assert clips["manifest"].tolist() == ["a/clips.csv", "a/clips.csv", str(b)]
    assert clips["source"].tolist() == ["colon", "colon", "gastro"] and clips["frames"].dtype == np.int64
    assert list(clips.columns) == [*MANIFEST_COLUMNS, "manifest"]


def test_manifest_fraction_is_deterministic_and_per_manifest(tmp_path):
    a = write_manifest(tmp_path / "a", "colon", [f"{i:03d}.mp4" for i in range(40)])
    b = write_manifest(tmp_path / "b", "gastro", [f"{i:03d}.mp4" for i in range(10)])
    full = load_clip_manifests([a, b])
    half = load_clip_manifests([a, b], fraction=0.5)
    assert half["source"].value_counts().to_dict() == {"colon": 20, "gastro": 5}
    assert set(half["path"]) <= set(full["path"])
    assert half["path"].tolist() == sorted(half["path"])  # manifest order kept
    assert half.equals(load_clip_manifests([a, b], fraction=0.5))
    assert not half.equals(load_clip_manifests([a, b], fraction=0.5, seed=1))
    # A manifest keeps its subset whatever it is loaded with, and keeps at least one clip.
    assert load_clip_manifests([b], fraction=0.5)["path"].tolist() == half["path"][half["source"] == "gastro"].tolist()
    tiny = load_clip_manifests([a, b], fraction=0.01)
    assert tiny["source"].tolist() == ["colon", "gastro"]


def test_manifest_errors(tmp_path):
    good = write_manifest(tmp_path / "good", "s", ["x.mp4"])
    with pytest.raises(ValueError, match="no clip manifests given"):
        load_clip_manifests([])
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        load_clip_manifests([good], fraction=0.0)
    with pytest.raises(FileNotFoundError, match="nowhere/clips.csv: clip manifest not found"):
        load_clip_manifests([good, tmp_path / "nowhere/clips.csv"])
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="empty.csv: empty clip manifest"):
        load_clip_manifests([tmp_path / "empty.csv"])
    (tmp_path / "header.csv").write_text(",".join(MANIFEST_COLUMNS) + "\n")
    with pytest.raises(ValueError, match="header.csv: no clips listed"):
        load_clip_manifests([tmp_path / "header.csv"])
    (tmp_path / "cols.csv").write_text("path,frames\nx.mp4,3\n")
    with pytest.raises(ValueError, match=r"cols.csv: missing column\(s\) \['source', 'source_video'"):
        load_clip_manifests([tmp_path / "cols.csv"])
    missing = write_manifest(tmp_path / "missing", "s", ["y.mp4", "z.mp4"], touch=False)
    (tmp_path / "missing/y.mp4").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"missing/clips.csv line 3: clip .*missing/z.mp4 not found"):
        load_clip_manifests([missing])
    bad = write_manifest(tmp_path / "bad", "s", ["x.mp4", "y.mp4"])
    table = pd.read_csv(bad)
    table.loc[1, "frames"] = 0
    write_csv(bad, table)
    with pytest.raises(ValueError, match="bad/clips.csv line 3: frames must be a positive integer, got '0'"):
        load_clip_manifests([bad])
    with pytest.raises(ValueError, match=r"clip .*good/x.mp4 is listed more than once"):
        load_clip_manifests([good, good])
