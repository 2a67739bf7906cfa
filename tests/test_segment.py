"""CVC-12k segmentation: input pipeline, fine-tuning loop, predictions at native resolution, evaluation."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch

from endofm.config import ConfigError, from_dict, to_dict
from endofm.data.benchmarks import read_manifest
from endofm.data.cvc import read_mask
from endofm.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from endofm.engine import seed_everything
from endofm.models.segmentation import TransUNetConfig, segmentation_loss
from endofm.models.vit import BackboneConfig, build_backbone
from endofm.tasks.benchmarks import evaluate_run, get_benchmark
from endofm.tasks.evaluation import evaluate_segmentation
from endofm.tasks.finetune import OptimConfig, RunSpec, TrainConfig, run_finetune
from endofm.tasks.protocols import ProtocolSplits
from endofm.tasks.runs import build_run_backbone, finetune_benchmark
from endofm.tasks.segment import (
    MASKS,
    SegmentConfig,
    SegmentTask,
    SequenceTransform,
    collate_sequences,
    eval_transform,
    rotate,
    sequence_dataset,
    train_transform,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MICRO = BackboneConfig(name="vit_micro_patch8")


def tiny_config(decoder: str = "light", **train) -> SegmentConfig:
    return SegmentConfig(
        decoder=decoder,
        transunet=TransUNetConfig.tiny(img_size=32),
        light_channels=[16, 8, 8],
        train_size=40,
        crop_size=32,
        test_size=32,
        train=TrainConfig(
            **{"epochs": 2, "batch_size": 1, "optim": OptimConfig(name="adamw", lr=1e-3), "num_workers": 0, **train}
        ),
    )


def ground_truth(bench, split: str) -> dict[str, np.ndarray]:
    """Native {0, 1} masks (T, H, W) per sequence of ``split``, read independently of the task."""
    rows = read_manifest(bench.manifest)
    rows = rows[rows["split"] == split]
    out = {}
    for name, seq in rows.groupby("sequence", sort=False):
        seq = seq.sort_values("frame_index")
        out[str(name)] = np.stack([read_mask(bench.raw / p) for p in seq["mask"]])
    return out


def l_shape(t: int = 3, h: int = 40, w: int = 40) -> np.ndarray:
    """An asymmetric {0, 1} mask (an L), the same in every frame: flips and rotations change it."""
    m = np.zeros((t, h, w), np.uint8)
    m[:, 6:30, 8:16] = 1
    m[:, 22:30, 8:30] = 1
    return m


# ------------------------------------------------------------------------------------------------ config


def test_config_defaults_are_the_official_recipe():
    cfg = SegmentConfig()
    assert (cfg.decoder, cfg.num_classes, cfg.transunet) == ("transunet", 2, TransUNetConfig())
    assert (cfg.train_size, cfg.crop_size, cfg.hflip, cfg.rotation, cfg.test_size) == (256, 224, 0.5, 5.0, 224)
    assert (cfg.normalization, cfg.max_train_frames, cfg.ce_weight, cfg.dice_weight) == ("minmax", None, 0.5, 0.5)
    assert (cfg.augment, cfg.channels) == ("per_frame", "bgr")
    t = cfg.train
    assert (t.epochs, t.batch_size, t.optim.name, t.optim.lr, t.optim.weight_decay) == (150, 1, "adamw", 1e-4, 0.05)
    assert (t.optim.schedule, t.optim.poly_power, t.optim.batch_scaled) == ("poly", 0.9, False)
    tiny = tiny_config("transunet")
    assert from_dict(SegmentConfig, to_dict(tiny)) == tiny


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="crop_size 48 must be <= train_size 40"):
        SegmentConfig(train_size=40, crop_size=48)
    with pytest.raises(ValueError, match="test_size must be a multiple of 16"):
        SegmentConfig(test_size=200)
    SegmentConfig(decoder="light", test_size=200)  # the light decoder resizes its output: no stride constraint
    with pytest.raises(ConfigError, match="normalization"):
        from_dict(SegmentConfig, {"normalization": "kinetics"})
    with pytest.raises(ValueError, match="max_train_frames"):
        SegmentConfig(max_train_frames=0)
    with pytest.raises(ValueError, match="num_classes"):
        SegmentConfig(num_classes=1)


# ------------------------------------------------------------------------------------------- transforms


def test_rotate_matches_rot90_and_torchvision():
    x = torch.rand(2, 3, 12, 12)
    torch.testing.assert_close(rotate(x, 90.0, "bilinear"), torch.rot90(x, 1, dims=(-2, -1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(rotate(x, -90.0, "nearest"), torch.rot90(x, -1, dims=(-2, -1)))
    import torchvision.transforms.v2.functional as TF
    from torchvision.transforms import InterpolationMode

    y = torch.rand(1, 3, 24, 40)  # non-square too
    for angle in (4.3, -2.5):
        expected = TF.rotate(y, angle, interpolation=InterpolationMode.BILINEAR)
        torch.testing.assert_close(rotate(y, angle, "bilinear"), expected, atol=1e-5, rtol=0)
        m = (y[:, :1] > 0.5).float()
        assert torch.equal(rotate(m, angle, "nearest"), TF.rotate(m, angle, interpolation=InterpolationMode.NEAREST))


def test_transform_shapes_and_dtypes():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 48, 64, 3), dtype=np.uint8)
    masks = (rng.random((5, 48, 64)) > 0.7).astype(np.uint8)
    cfg = tiny_config()
    video, out = train_transform(cfg)(frames, masks, np.random.default_rng(1))
    assert video.shape == (3, 5, 32, 32) and video.dtype == torch.float32
    assert out.shape == (5, 32, 32) and out.dtype == torch.int64 and set(out.unique().tolist()) <= {0, 1}
    video, none = eval_transform(cfg)(frames)
    assert video.shape == (3, 5, 32, 32) and none is None
    assert torch.equal(video, eval_transform(cfg)(frames)[0])  # the test view is deterministic
    with pytest.raises(ValueError, match="pass an rng"):
        train_transform(cfg)(frames, masks)
    with pytest.raises(ValueError, match="masks must have shape"):
        eval_transform(cfg)(frames, masks[:, :10])


def test_normalizations():
    frames = np.full((2, 16, 16, 3), 150, np.uint8)
    frames[:, :8] = 50  # each frame spans [50, 150]
    frames[1] //= 2  # frame 1 spans [25, 75]: min-max is per frame
    video, _ = SequenceTransform(16, normalization="minmax")(frames)
    for t in range(2):
        assert video[:, t].min().item() == -1.0 and video[:, t].max().item() == 1.0  # min-max, then (x - .5) / .5
    video, _ = SequenceTransform(16, normalization="imagenet")(frames)
    expected = (150 / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(video[:, 0, -1, -1].numpy(), expected, rtol=1e-5)


class ScriptedRng:
    """Replays planned draws: crop offsets (integers), flips (random), angles (uniform)."""

    def __init__(self, integers=(), randoms=(), uniforms=()):
        self.integers_, self.randoms, self.uniforms = list(integers), list(randoms), list(uniforms)

    def integers(self, lo, hi):
        value = self.integers_.pop(0)
        assert lo <= value < hi
        return value

    def random(self):
        return self.randoms.pop(0)

    def uniform(self, lo, hi):
        value = self.uniforms.pop(0)
        assert lo <= value <= hi
        return value

    def done(self) -> bool:
        return not (self.integers_ or self.randoms or self.uniforms)


def test_crop_and_flip_are_drawn_per_frame_as_the_original():
    """Frame t holds 10 * (4y + x) + t; the mask is 1 where (4y + x) % 3 == 0. Frame 0: crop at (0, 0), no
    flip; frame 1: crop at (2, 2), flipped."""
    ids = 4 * np.arange(4)[:, None] + np.arange(4)[None, :]
    frames = np.stack([np.repeat((10 * ids + t)[..., None], 3, axis=-1) for t in range(2)]).astype(np.uint8)
    masks = np.stack([(ids % 3 == 0)] * 2).astype(np.uint8)
    transform = SequenceTransform(4, crop=2, hflip=0.5, normalization="imagenet", augment="per_frame")
    rng = ScriptedRng(integers=[0, 0, 2, 2], randoms=[0.9, 0.1])
    video, out = transform(frames, masks, rng)
    assert rng.done()
    values = (video[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255  # channel R
    np.testing.assert_allclose(values[0].numpy(), [[0, 10], [40, 50]], atol=1e-3)
    np.testing.assert_allclose(values[1].numpy(), [[111, 101], [151, 141]], atol=1e-3)  # ids [[11, 10], [15, 14]]
    assert out.tolist() == [[[1, 0], [0, 0]], [[0, 0], [1, 0]]]
    # per_sequence: frame 0's draws apply to both frames; only two numbers are drawn
    rng = ScriptedRng(integers=[0, 0], randoms=[0.9])
    video, out = SequenceTransform(4, crop=2, hflip=0.5, normalization="imagenet", augment="per_sequence")(
        frames, masks, rng
    )
    values = (video[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255
    np.testing.assert_allclose(values[1].numpy(), [[1, 11], [41, 51]], atol=1e-3)
    assert rng.done() and out.tolist() == [[[1, 0], [0, 0]]] * 2


def test_rotation_is_drawn_per_frame_as_the_original():
    masks = l_shape(t=2, h=12, w=12)
    transform = SequenceTransform(12, rotation=179.0, normalization="imagenet", augment="per_frame")
    rng = ScriptedRng(uniforms=[90.0, -90.0])
    _, out = transform(np.zeros((2, 12, 12, 3), np.uint8), masks, rng)
    source = torch.from_numpy(masks[0]).long()
    assert torch.equal(out[0], torch.rot90(source, 1)) and torch.equal(out[1], torch.rot90(source, -1))
    # Real draws: identical frames come out different under per_frame, identical under per_sequence.
    frames = np.repeat(l_shape(t=4, h=40, w=40)[..., None] * 200, 3, axis=-1).astype(np.uint8)
    cfg = tiny_config()
    video, _ = train_transform(cfg)(frames, None, np.random.default_rng(0))
    assert not any(torch.equal(video[:, 0], video[:, t]) for t in range(1, 4))
    cfg.augment = "per_sequence"
    video, _ = train_transform(cfg)(frames, None, np.random.default_rng(0))
    assert all(torch.equal(video[:, 0], video[:, t]) for t in range(1, 4))


@pytest.mark.parametrize(("channels", "expected"), [("bgr", [-1.0, -1.0, 1.0]), ("rgb", [1.0, -1.0, -1.0])])
def test_channel_order(channels, expected):
    """A pure red frame (RGB 255, 0, 0), min-maxed over the frame (255 -> +1, 0 -> -1): the original reads
    frames with OpenCV, so the network sees BGR and red is channel 2."""
    red = np.zeros((1, 48, 48, 3), np.uint8)
    red[..., 0] = 255
    cfg = tiny_config()
    cfg.channels, cfg.rotation = channels, 0.0  # no rotation: no zero fill
    for transform in (train_transform(cfg), eval_transform(cfg)):
        video, _ = transform(red, None, np.random.default_rng(0))
        torch.testing.assert_close(video, torch.tensor(expected).view(3, 1, 1, 1).expand_as(video))


@pytest.mark.parametrize(("normalization", "expected"), [
    ("minmax", [[-1.0, 1.0], [-1.0, 1.0]]),
    ("minmax_once", [[2 * 100 / 255 - 1, 2 * 200 / 255 - 1]] * 2),
])  # fmt: skip
def test_minmax_again_after_the_spatial_transforms(normalization, expected):
    """A grey frame spanning [0, 255] whose bottom-right 2x2 crop spans [100, 200]: the original's ToTensor
    stretches the crop to [0, 1] again."""
    frame = np.full((1, 4, 4, 3), 100, np.uint8)
    frame[0, 0, 0], frame[0, 0, 1], frame[0, 2:, 3] = 0, 255, 200
    transform = SequenceTransform(4, crop=2, normalization=normalization)
    video, _ = transform(frame, None, ScriptedRng(integers=[2, 2]))
    for c in range(3):
        np.testing.assert_allclose(video[c, 0].numpy(), expected, atol=1e-6)


def test_temporal_window_takes_consecutive_frames():
    frames = np.stack([np.full((16, 16, 3), 10 * t, np.uint8) for t in range(6)])
    transform = SequenceTransform(16, normalization="imagenet", max_frames=3)
    starts = set()
    for seed in range(20):
        video, _ = transform(frames, None, np.random.default_rng(seed))
        ids = (video[0, :, 0, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255 / 10
        t0 = round(ids[0].item())
        np.testing.assert_allclose(ids.numpy(), [t0, t0 + 1, t0 + 2], atol=1e-4)
        starts.add(t0)
    assert starts == {0, 1, 2, 3}
    assert transform(frames[:2], None, np.random.default_rng(0))[0].shape[1] == 2  # shorter: whole sequence


def test_crop_and_flip_move_image_and_mask_together_exactly():
    # Frames at the resize size: no interpolation, so the image must equal its mask pixel for pixel.
    masks = l_shape()
    frames = np.repeat(masks[..., None] * 255, 3, axis=-1).astype(np.uint8)
    transform = SequenceTransform(40, crop=32, hflip=0.5, normalization="minmax")
    source = torch.from_numpy(masks[0]).long()

    def is_crop(m: torch.Tensor) -> bool:
        return any(torch.equal(m, source[y : y + 32, x : x + 32]) for y in range(9) for x in range(9))

    flipped = []
    for seed in range(12):
        video, out = transform(frames, masks, np.random.default_rng(seed))
        assert torch.equal((video > 0).long(), out[None].expand(3, -1, -1, -1))
        assert is_crop(out[0]) != is_crop(out[0].flip(-1))  # a crop of the source, flipped or not
        flipped.append(is_crop(out[0].flip(-1)))
    assert 0 < sum(flipped) < len(flipped)


def test_resize_crop_flip_rotation_keep_image_and_mask_aligned():
    masks = l_shape(h=48, w=64)
    frames = np.repeat(masks[..., None] * 200 + 30, 3, axis=-1).astype(np.uint8)
    cfg = tiny_config()
    cfg.augment = "per_sequence"
    transform = train_transform(cfg)  # 40² resize, 32 crop, flip 0.5, ±5° rotation
    for seed in range(8):
        video, out = transform(frames, masks, np.random.default_rng(seed))
        image = video[0] > 0  # the polyp is the bright half of the min-max range
        for t in range(1, 3):  # one draw per sequence: every frame transformed alike
            assert torch.equal(video[:, t], video[:, 0]) and torch.equal(out[t], out[0])
        agree = (image == out.bool()).float().mean().item()
        assert out.sum() > 0 and agree > 0.96, (seed, agree)
        # a misaligned mask would not pass: the mirrored mask disagrees clearly
        assert (image == out.flip(-1).bool()).float().mean().item() < 0.9


# ------------------------------------------------------------------------------------------- datasets / loss


def test_datasets_and_variable_length_batches(tiny_benchmarks):
    bench = tiny_benchmarks["cvc12k"]
    splits = get_benchmark("cvc12k").protocol_splits(read_manifest(bench.manifest), "paper")
    cfg = tiny_config()
    cfg.max_train_frames = 3
    train = sequence_dataset(cfg, splits, bench.raw, "train")
    truth = ground_truth(bench, "test")
    for item in train:
        assert item["video"].shape == (3, 3, 32, 32) and item["masks"].shape == (3, 32, 32)  # T >= 3 here
    test = sequence_dataset(cfg, splits, bench.raw, "test")
    for item in test:  # test view resized, masks native
        assert item["video"].shape[-2:] == (32, 32)
        assert np.array_equal(item["masks"].numpy(), truth[item["sequence"]])
    # Sequences of different lengths in one batch: one loss over all their frames.
    task = SegmentTask(tiny_config(), splits, bench.raw)
    torch.manual_seed(0)
    model = task.build_model(build_backbone(MICRO)).eval()
    items = [train[0], {**train[1], "video": train[1]["video"][:, :2], "masks": train[1]["masks"][:2]}]
    assert items[0]["video"].shape[1] != items[1]["video"].shape[1]
    batch = collate_sequences(items)
    with torch.no_grad():
        got = task.loss(model, batch, torch.device("cpu"))
        logits = torch.cat([model(it["video"][None])[0] for it in items])
        expected = segmentation_loss(logits, torch.cat([it["masks"] for it in items]))
        torch.testing.assert_close(got, expected)
        same = collate_sequences([items[0], items[0]])  # equal lengths: one stacked forward, same value
        torch.testing.assert_close(
            task.loss(model, same, torch.device("cpu")),
            task.loss(model, collate_sequences(items[:1]), torch.device("cpu")),
        )


# ------------------------------------------------------------------------------------------- runs


@pytest.mark.parametrize(("protocol", "decoder"), [("paper", "transunet"), ("clean", "light")])
def test_finetune_writes_native_masks_and_evaluates(tiny_benchmarks, tmp_path, protocol, decoder):
    bench = tiny_benchmarks["cvc12k"]
    spec = RunSpec("cvc12k", "scratch", "none", protocol, "full", 0)
    record = finetune_benchmark(spec, tiny_config(decoder), bench.manifest, bench.raw, tmp_path / "run", MICRO)
    assert record["selection"]["metric"] == "dice" and 0 <= record["selection"]["epoch"] < 2
    assert record["predictions"] == [MASKS] and record["splits"]["select_is_test"] == (protocol == "paper")
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert history["epoch"].tolist() == [0, 1] and {"select_dice", "select_frame_dice", "select_frame_iou"} <= set(
        history
    )
    truth = ground_truth(bench, "test")
    with np.load(tmp_path / "run" / MASKS) as saved:
        assert sorted(saved.files) == sorted(truth)
        for name, target in truth.items():
            assert saved[name].shape == target.shape and target.shape[1:] == (48, 64)  # native, not 32²
            assert saved[name].dtype == np.uint8 and set(np.unique(saved[name])) <= {0, 1}
    out = evaluate_run(tmp_path / "run", bench.manifest, bench.raw, tmp_path / "m.json", synthetic=True)
    assert out["protocol"] == protocol and out["data"] == "synthetic"
    assert set(out["metrics"]) == {"dice", "frame_dice", "frame_iou", "n_sequences", "n_frames"}
    assert out["metrics"]["n_sequences"] == len(truth) and [s["name"] for s in out["per_sequence"]] == list(truth)
    assert out["metrics"]["dice"] == pytest.approx(np.mean([s["dice"] for s in out["per_sequence"]]))
    assert json.loads((tmp_path / "m.json").read_text())["metrics"]["dice"] == out["metrics"]["dice"]
    if protocol == "paper":  # selection ran on the test split: the loop's scores are the files' scores
        for key in ("dice", "frame_dice", "frame_iou"):
            assert record["selection"]["scores"][key] == pytest.approx(out["metrics"][key])


def test_frozen_mode_trains_the_head_only(tiny_benchmarks, tmp_path):
    bench = tiny_benchmarks["cvc12k"]
    spec = RunSpec("cvc12k", "scratch", "none", "paper", "frozen", 0)
    cfg = tiny_config("transunet", epochs=1)
    finetune_benchmark(spec, cfg, bench.manifest, bench.raw, tmp_path / "run", MICRO)
    trained = torch.load(tmp_path / "run" / "model.pt", map_location="cpu", weights_only=True)["student"]
    # The run's starting model: the same backbone draw, then the head built under the run's seed.
    splits = get_benchmark("cvc12k").protocol_splits(read_manifest(bench.manifest), "paper")
    backbone = build_run_backbone(MICRO, None, 0)
    seed_everything(0)
    start = SegmentTask(cfg, splits, bench.raw).build_model(backbone)
    in_backbone = {id(p) for p in start.backbone_parameters()}
    names = {n: id(p) in in_backbone for n, p in start.named_parameters()}
    assert sum(names.values()) > 0 and set(names) <= set(trained)
    initial = start.state_dict()
    unchanged = [n for n, b in names.items() if b and torch.equal(trained[n], initial[n])]
    assert unchanged == [n for n, b in names.items() if b]  # the backbone did not move
    changed = [n for n, b in names.items() if not b and not torch.equal(trained[n], initial[n])]
    assert len(changed) > len([n for n, b in names.items() if not b]) // 2  # the head did train
    out = evaluate_run(tmp_path / "run", bench.manifest, bench.raw, tmp_path / "m.json", synthetic=True)
    assert out["mode"] == "frozen" and 0.0 <= out["metrics"]["dice"] <= 1.0


# ------------------------------------------------------------------------------------------- evaluation


def test_evaluation_known_values_and_errors(tiny_benchmarks, tmp_path):
    bench = tiny_benchmarks["cvc12k"]
    rows = read_manifest(bench.manifest)
    test_rows = rows[rows["split"] == "test"]
    truth = ground_truth(bench, "test")
    assert all(t.any() for t in truth.values())  # every synthetic test sequence shows a polyp

    def evaluate(masks: dict[str, np.ndarray]) -> dict:
        np.savez_compressed(tmp_path / MASKS, **masks)
        return evaluate_segmentation(tmp_path, test_rows, raw_dir=bench.raw, benchmark_dir=bench.manifest.parent)

    perfect = evaluate(truth)
    assert perfect["metrics"]["dice"] == 1.0 and perfect["metrics"]["frame_iou"] == 1.0
    assert perfect["metrics"]["n_frames"] == sum(len(t) for t in truth.values())
    empty = evaluate({k: np.zeros_like(v) for k, v in truth.items()})
    assert empty["metrics"]["dice"] == 0.0  # the paper rule: an empty prediction scores 0
    # One sequence perfect, the other with its first frame blanked: Dice by hand.
    names = list(truth)
    partial = {**truth, names[1]: truth[names[1]].copy()}
    partial[names[1]][0] = 0
    g = truth[names[1]]
    expected = 2 * int(partial[names[1]].sum()) / (int(partial[names[1]].sum()) + int(g.sum()))
    got = evaluate(partial)
    assert got["metrics"]["dice"] == pytest.approx((1.0 + expected) / 2)
    assert got["per_sequence"][1]["dice"] == pytest.approx(expected)

    with pytest.raises(ValueError, match=rf"masks\.npz.*missing sequences \['{names[0]}'\]"):
        evaluate({names[1]: truth[names[1]]})
    with pytest.raises(ValueError, match=r"extra \['other'\]"):
        evaluate({**truth, "other": truth[names[0]]})
    with pytest.raises(ValueError, match=rf"masks\.npz: sequence '{names[0]}' has masks of shape \(\d+, 32, 32\)"):
        evaluate({**truth, names[0]: np.zeros((len(truth[names[0]]), 32, 32), np.uint8)})
    (tmp_path / MASKS).unlink()
    with pytest.raises(FileNotFoundError, match="no predictions"):
        evaluate_segmentation(tmp_path, test_rows, raw_dir=bench.raw, benchmark_dir=bench.manifest.parent)


# ------------------------------------------------------------------------------------------- learning


def test_finetuning_fits_the_training_sequences(tiny_benchmarks, tmp_path):
    """The loop provably learns: selecting on the training sequences themselves, the loss falls and their
    Dice ends far above the untrained model's."""
    bench = tiny_benchmarks["cvc12k"]
    paper = get_benchmark("cvc12k").protocol_splits(read_manifest(bench.manifest), "paper")
    on_train = ProtocolSplits("cvc12k", "paper", paper.train, paper.train, paper.train, unit=paper.unit)
    optim = OptimConfig(name="adamw", lr=3e-3, schedule="constant")
    cfg = tiny_config("light", epochs=30, eval_every=5, optim=optim)
    cfg.light_channels, cfg.train_size, cfg.hflip, cfg.rotation = [16, 16, 8], 32, 0.0, 0.0  # fit, not generalise
    task = SegmentTask(cfg, on_train, bench.raw)
    torch.manual_seed(0)
    backbone = build_backbone(MICRO)
    seed_everything(0)  # as run_finetune does before building: the untrained model is the run's start
    untrained = task.build_model(copy.deepcopy(backbone)).eval()
    before = task.score(task.predict(untrained, "select", torch.device("cpu")), "select")
    spec = RunSpec("cvc12k", "scratch", "none", "paper", "full", 0)
    run_finetune(task, cfg.train, spec, backbone, tmp_path, {"test": 1})
    history = pd.read_csv(tmp_path / "history.csv")
    print(before, history[["loss", "select_dice"]].round(3).to_string())
    assert history["loss"].iloc[-3:].mean() < 0.4 * history["loss"].iloc[:2].mean(), history["loss"].tolist()
    dice = history["select_dice"].dropna()
    assert dice.max() >= 0.7 and dice.max() >= before["dice"] + 0.5, (before, dice.tolist())
