"""Checkpoint loading (official layouts, strictness, resizing) and our own save/load/convert round trips."""

from __future__ import annotations

import argparse
import logging
import random
from collections.abc import Mapping

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations

from endofm.models import (
    BackboneLoadError,
    CheckpointError,
    build_backbone,
    capture_rng_state,
    from_official,
    legacy_to_parametrized,
    load_backbone,
    load_backbone_state,
    load_checkpoint,
    parametrized_to_legacy,
    restore_rng_state,
    save_checkpoint,
    to_official,
)
from endofm.models.vit import TimeSformer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def micro(seed: int, **overrides) -> TimeSformer:
    torch.manual_seed(seed)
    model = build_backbone("vit_micro_patch8", **overrides).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model


def head_state(prefix: str = "head.") -> dict[str, torch.Tensor]:
    """A small DINO head in the official (legacy weight-norm) naming."""
    return {
        f"{prefix}mlp.0.weight": torch.randn(16, 32),
        f"{prefix}mlp.0.bias": torch.randn(16),
        f"{prefix}last_layer.weight_g": torch.ones(10, 1),
        f"{prefix}last_layer.weight_v": torch.randn(10, 16),
    }


def official_checkpoint(backbone: dict[str, torch.Tensor]) -> dict:
    """The official pretraining layout (docs/original.md §2.1), with a micro backbone."""
    teacher = {"backbone." + k: v for k, v in backbone.items()} | head_state()
    student = {"module.backbone." + k: v + 1 for k, v in backbone.items()} | head_state("module.head.")
    return {
        "student": student,
        "teacher": teacher,
        "optimizer": {
            "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4)}},
            "param_groups": [{"lr": 1e-3, "params": [0]}],
        },
        "epoch": 5,
        "args": argparse.Namespace(arch="vit_base", lr=5e-4, batch_size_per_gpu=12, data_path="/data/pretrain"),
        "fp16_scaler": {"scale": 1024.0, "growth_factor": 2.0, "_growth_tracker": 7},
        "dino_loss": {"center": torch.randn(1, 10)},
        "motion_student": 0,
        "motion_teacher": 0,
    }


@pytest.fixture(scope="module")
def source() -> TimeSformer:
    return micro(0)


@pytest.fixture(scope="module")
def clip() -> torch.Tensor:
    torch.manual_seed(5)
    return torch.randn(2, 3, 4, 32, 32)


def assert_same(a, b, where: str = "") -> None:
    """Deep equality of nested checkpoint contents: same keys, same types, tensors bit-identical."""
    if isinstance(a, Mapping):
        assert isinstance(b, Mapping), where
        assert set(a) == set(b), f"{where}: keys differ: {sorted(set(a) ^ set(b), key=str)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
        return
    assert type(a) is type(b), where
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, argparse.Namespace):
        assert_same(vars(a), vars(b), f"{where}.args")
    else:
        assert a == b, where


def layouts(backbone: dict[str, torch.Tensor]) -> dict[str, tuple[dict, str, int]]:
    """Every accepted layout of the same backbone: (checkpoint, ``which``, number of head keys set aside)."""
    official = official_checkpoint(backbone)
    official["student"] = {"module.backbone." + k: v for k, v in backbone.items()} | head_state("module.head.")
    timesformer = {"model." + k: v for k, v in backbone.items()} | {"model.head.weight": torch.zeros(400, 32)}
    polypdiag = {
        "backbone_state_dict": {"module." + k: v for k, v in backbone.items()},
        "state_dict": {"module.linear.weight": torch.zeros(2, 32)},
    }
    return {
        "teacher": (official, "teacher", 4),
        "student": (official, "student", 4),
        "flat": (dict(backbone), "teacher", 0),
        "module.": ({"module." + k: v for k, v in backbone.items()}, "teacher", 0),
        "backbone.+head. (SVT)": ({"backbone." + k: v for k, v in backbone.items()} | head_state(), "teacher", 4),
        "model_state": ({"model_state": timesformer}, "teacher", 1),
        "backbone_state_dict": (polypdiag, "teacher", 0),
    }


def test_every_layout_loads_strictly_and_gives_identical_outputs(source, clip, tmp_path):
    with torch.no_grad():
        want = source(clip)
    for i, (name, (ckpt, which, n_head)) in enumerate(layouts(source.state_dict()).items()):
        path = tmp_path / f"{i}.pth"
        torch.save(ckpt, path)
        model = micro(1)
        report = load_backbone(model, path, which=which)
        assert report.missing == report.unexpected == report.mismatched == report.resized == [], name
        assert len(report.head_keys) == n_head, name
        with torch.no_grad():
            assert torch.equal(model(clip), want), name
        state = load_backbone_state(path, which)
        assert list(state) == list(source.state_dict()), name
        assert all(torch.equal(state[k], v) for k, v in source.state_dict().items()), name


def test_which_picks_teacher_or_student(source):
    ckpt = official_checkpoint(source.state_dict())
    teacher = load_backbone_state(ckpt, "teacher")
    student = load_backbone_state(ckpt, "student")
    assert torch.equal(teacher["norm.weight"], source.norm.weight)
    assert torch.equal(student["norm.weight"], source.norm.weight + 1)
    with pytest.raises(CheckpointError, match="no 'student' entry; top-level keys: teacher"):
        load_backbone_state({"teacher": ckpt["teacher"]}, "student")
    with pytest.raises(ValueError, match="which must be 'teacher' or 'student'"):
        load_backbone_state(ckpt, "ema")


def test_strict_errors_name_every_bad_key(source, tmp_path):
    state = dict(source.state_dict())
    del state["blocks.1.temporal_fc.bias"], state["cls_token"]
    state["blocks.1.extra.weight"] = torch.zeros(3)
    state["blocks.0.mlp.fc1.weight"] = torch.zeros(5, 32)
    path = tmp_path / "bad.pth"
    torch.save({"teacher": {"backbone." + k: v for k, v in state.items()}}, path)
    model = micro(1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(BackboneLoadError) as err:
        load_backbone(model, path)
    msg = str(err.value)
    assert str(path) in msg
    assert "missing (2): cls_token, blocks.1.temporal_fc.bias" in msg
    assert "unexpected (1): blocks.1.extra.weight" in msg
    assert "mis-shaped (1): blocks.0.mlp.fc1.weight (file [5, 32] vs model [64, 32])" in msg
    assert err.value.missing == ["cls_token", "blocks.1.temporal_fc.bias"]
    assert_same(model.state_dict(), before)  # nothing loaded

    report = load_backbone(model, path, strict=False)
    assert report.unexpected == ["blocks.1.extra.weight"] and len(report.mismatched) == 1
    assert torch.equal(model.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)
    assert torch.equal(model.blocks[0].mlp.fc1.weight, before["blocks.0.mlp.fc1.weight"])


def test_wrong_model_size_is_reported_as_misshaped(source):
    with pytest.raises(
        BackboneLoadError, match=r"mis-shaped \(\d+\): cls_token \(file \[1, 1, 32\] vs model \[1, 1, 96\]\)"
    ):
        load_backbone(build_backbone("vit_tiny_patch8"), source.state_dict())


def test_positional_embeddings_resized_on_load(source, caplog, tmp_path):
    """A 4-frame, 32 px checkpoint into an 8-frame, 64 px model: nearest resize in memory only."""
    path = tmp_path / "four.pth"
    torch.save({"teacher": {"backbone." + k: v for k, v in source.state_dict().items()}}, path)
    on_disk = torch.load(path, weights_only=True)["teacher"]
    model = micro(1, num_frames=8, img_size=64)
    with caplog.at_level(logging.INFO, logger="endofm.models.checkpoint"):
        report = load_backbone(model, path)
    assert report.resized == ["pos_embed", "time_embed"]
    assert "resized time_embed [1, 4, 32] -> [1, 8, 32] (nearest)" in caplog.text
    assert torch.equal(model.time_embed, source.time_embed.repeat_interleave(2, dim=1))
    grid = source.pos_embed[0, 1:].reshape(4, 4, 32).repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert torch.equal(model.pos_embed[0, 1:], grid.reshape(64, 32))
    assert_same(torch.load(path, weights_only=True)["teacher"], on_disk)  # the file is untouched
    # resizing at load equals the source model's own run-time resizing
    clip = torch.randn(1, 3, 8, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(clip), source(clip))


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"nothere\.pth: checkpoint file not found"):
        load_backbone_state(tmp_path / "nothere.pth")
    torch.save({"a": torch.zeros(100)}, tmp_path / "ok.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "ok.pth").read_bytes()[:200])
    with pytest.raises(CheckpointError, match=r"cut\.pth: not a readable torch checkpoint"):
        load_checkpoint(tmp_path / "cut.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"junk\.pth: not a readable torch checkpoint"):
        load_backbone_state(tmp_path / "junk.pth")
    torch.save({"teacher": {"x": random.Random()}}, tmp_path / "unsafe.pth")
    with pytest.raises(CheckpointError, match=r"unsafe\.pth: holds random\.Random.*trusted=True"):
        load_backbone_state(tmp_path / "unsafe.pth")
    torch.save({"teacher": {"x": [1, 2]}}, tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match=r"list\.pth: training checkpoint \(teacher\) has non-tensor entries: x"):
        load_backbone_state(tmp_path / "list.pth")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(CheckpointError, match=r"tensor\.pth: expected a dict at the top level, got Tensor"):
        load_backbone_state(tmp_path / "tensor.pth")
    with pytest.raises(CheckpointError, match=r"two entries for 'norm\.bias'"):
        load_backbone_state({"norm.bias": torch.zeros(1), "module.norm.bias": torch.zeros(1)})


def test_weight_norm_name_mapping():
    legacy = head_state()
    mapped = legacy_to_parametrized(legacy)
    assert list(mapped) == [
        "head.mlp.0.weight",
        "head.mlp.0.bias",
        "head.last_layer.parametrizations.weight.original0",
        "head.last_layer.parametrizations.weight.original1",
    ]
    assert_same(parametrized_to_legacy(mapped), legacy)
    # the mapped names load into a modern weight-normed layer and give the weight-norm weight
    layer = parametrizations.weight_norm(nn.Linear(16, 10, bias=False))
    layer.load_state_dict({k.removeprefix("head.last_layer."): v for k, v in mapped.items() if "last_layer" in k})
    v = legacy["head.last_layer.weight_v"]
    torch.testing.assert_close(layer.weight, v / v.norm(dim=1, keepdim=True))


def test_official_ours_official_round_trip(source):
    official = official_checkpoint(source.state_dict())
    ours = from_official(official)
    assert set(ours) == {"teacher", "student", "optimizer", "epoch", "config", "scaler", "center", "extra"}
    assert "head.last_layer.parametrizations.weight.original0" in ours["teacher"]
    assert "backbone.cls_token" in ours["student"] and ours["config"]["lr"] == 5e-4
    assert ours["extra"] == {"motion_student": 0, "motion_teacher": 0}
    assert_same(to_official(ours), official)


def test_save_load_and_rng(source, tmp_path):
    official = official_checkpoint(source.state_dict())
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    rng = capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1))
    path = save_checkpoint(tmp_path / "run" / "ck.pth", **from_official(official), step=120, rng=rng)
    ck = load_checkpoint(path)
    assert ck["format"] == "endofm-checkpoint" and ck["format_version"] == 1
    assert ck["versions"]["torch"] == torch.__version__ and "endofm" in ck["versions"]
    assert ck["step"] == 120 and ck["epoch"] == 5
    assert_same(to_official(ck), official)
    restore_rng_state(ck["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected
    # our own file loads as a backbone too, its parametrized head set aside
    model = micro(1)
    assert len(load_backbone(model, path).head_keys) == 4
    assert torch.equal(model.norm.weight, source.norm.weight)
    # re-saving a loaded checkpoint keeps it
    assert_same(load_checkpoint(save_checkpoint(tmp_path / "again.pth", **ck))["teacher"], ck["teacher"])


def test_save_rejects_unknown_keys_and_is_atomic(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['teahcer'\]"):
        save_checkpoint(tmp_path / "x.pth", teahcer={})
    path = tmp_path / "ck.pth"
    save_checkpoint(path, epoch=1)
    with pytest.raises(Exception, match="lambda"):  # unpicklable: torch.save fails mid-write
        save_checkpoint(path, epoch=2, extra={"bad": lambda: 0})
    assert load_checkpoint(path)["epoch"] == 1  # the previous file survives
    with pytest.raises(Exception, match="lambda"):
        save_checkpoint(tmp_path / "new.pth", epoch=2, extra={"bad": lambda: 0})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pth"]  # no partial file, no temp file
    torch.save({"teacher": {}}, tmp_path / "official.pth")
    with pytest.raises(CheckpointError, match=r"official\.pth: not an endofm checkpoint"):
        load_checkpoint(tmp_path / "official.pth")
