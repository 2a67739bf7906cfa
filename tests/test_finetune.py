"""The shared fine-tuning loop: starting points, resumption, frozen mode."""

from __future__ import annotations

import argparse
import contextlib
import json

import pandas as pd
import pytest
import torch
from test_classify import MICRO, tiny_config

from endofm.config import config_hash
from endofm.engine import Preempted, PreemptionHandler
from endofm.models.checkpoint import load_backbone, load_checkpoint, save_checkpoint, to_official
from endofm.models.heads import DINOHead
from endofm.models.vit import build_backbone
from endofm.tasks import finetune
from endofm.tasks.finetune import OptimConfig, RunSpec
from endofm.tasks.runs import finetune_benchmark


def _pretrained(tmp_path):
    """One random 'pretrained' backbone in two layouts: our checkpoint and the official endo_fm.pth."""
    torch.manual_seed(7)
    backbone, head = build_backbone(MICRO), DINOHead(32, 16, 8, 4)
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state |= {f"head.{k}": v for k, v in head.state_dict().items()}
    ours = save_checkpoint(tmp_path / "ours.pt", teacher=state, student=state, epoch=1)
    official = tmp_path / "endo_fm.pth"
    torch.save(to_official(load_checkpoint(ours)), official)
    return ours, official, backbone


# The official teacher keys (docs/original.md §2.2), written out by hand rather than derived from our model or
# converter, with the micro backbone's shapes: width D = 32, MLP hidden 64, patch 8 on 32 px (4 x 4 = 16
# patches + CLS), 4 frames, 2 blocks; a small DINO head in the legacy weight-norm naming.
D, HIDDEN = 32, 64
OFFICIAL_STEM = {
    "backbone.cls_token": (1, 1, D),
    "backbone.pos_embed": (1, 17, D),
    "backbone.time_embed": (1, 4, D),
    "backbone.patch_embed.proj.weight": (D, 3, 8, 8),
    "backbone.patch_embed.proj.bias": (D,),
    "backbone.norm.weight": (D,),
    "backbone.norm.bias": (D,),
}
OFFICIAL_BLOCK = {
    "norm1.weight": (D,),
    "norm1.bias": (D,),
    "attn.qkv.weight": (3 * D, D),
    "attn.qkv.bias": (3 * D,),
    "attn.proj.weight": (D, D),
    "attn.proj.bias": (D,),
    "temporal_norm1.weight": (D,),
    "temporal_norm1.bias": (D,),
    "temporal_attn.qkv.weight": (3 * D, D),
    "temporal_attn.qkv.bias": (3 * D,),
    "temporal_attn.proj.weight": (D, D),
    "temporal_attn.proj.bias": (D,),
    "temporal_fc.weight": (D, D),
    "temporal_fc.bias": (D,),
    "norm2.weight": (D,),
    "norm2.bias": (D,),
    "mlp.fc1.weight": (HIDDEN, D),
    "mlp.fc1.bias": (HIDDEN,),
    "mlp.fc2.weight": (D, HIDDEN),
    "mlp.fc2.bias": (D,),
}
OFFICIAL_HEAD = {
    "head.mlp.0.weight": (16, D),
    "head.mlp.0.bias": (16,),
    "head.mlp.2.weight": (16, 16),
    "head.mlp.2.bias": (16,),
    "head.mlp.4.weight": (8, 16),
    "head.mlp.4.bias": (8,),
    "head.last_layer.weight_g": (10, 1),
    "head.last_layer.weight_v": (10, 8),
}


@pytest.fixture
def handmade_official(tmp_path):
    """An ``endo_fm.pth`` in the official pretraining layout (docs/original.md §2.1) from the hand-written key
    table, every tensor distinct; returns the path and the teacher's backbone tensors by official key."""
    shapes = dict(OFFICIAL_STEM)
    for i in range(2):
        shapes |= {f"backbone.blocks.{i}.{name}": shape for name, shape in OFFICIAL_BLOCK.items()}
    assert len(shapes) == 2 * 20 + 7  # 20 tensors per block, 7 stem and final-norm tensors
    generator = torch.Generator().manual_seed(3)
    backbone = {k: 0.2 * torch.randn(shape, generator=generator) for k, shape in shapes.items()}
    head = {k: torch.randn(shape, generator=generator) for k, shape in OFFICIAL_HEAD.items()}
    checkpoint = {
        "teacher": backbone | head,
        "student": {f"module.{k}": v + 1 for k, v in (backbone | head).items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": []}]},
        "epoch": 30,
        "args": argparse.Namespace(arch="timesformer", lr=5e-4),
        "fp16_scaler": {"scale": 1024.0},
        "dino_loss": {"center": torch.zeros(1, 10)},
        "motion_student": 0,
        "motion_teacher": 0,
    }
    path = tmp_path / "endo_fm.pth"
    torch.save(checkpoint, path)
    return path, backbone


def test_official_keys_written_by_hand_load_every_tensor_in_place(handmade_official):
    path, official = handmade_official
    backbone = build_backbone(MICRO)
    load_backbone(backbone, path)  # strict: every tensor present, none left over
    state = backbone.state_dict()
    assert set(state) == {k.removeprefix("backbone.") for k in official}
    for key, value in official.items():
        torch.testing.assert_close(state[key.removeprefix("backbone.")], value, rtol=0, atol=0, msg=key)


def test_frozen_fine_tuning_from_the_handmade_official_file_keeps_its_tensors(
    tiny_benchmarks, handmade_official, tmp_path, one_torch_thread
):
    """Through the fine-tuning path (the run's own loader): the frozen backbone in model.pt holds, under
    each official name, the tensor the file has under it."""
    from endofm.tasks.finetune import TrainConfig
    from endofm.tasks.segment import SegmentConfig

    path, official = handmade_official
    cfg = SegmentConfig(
        decoder="light", light_channels=[8], train_size=40, crop_size=32, test_size=32,
        train=TrainConfig(epochs=1, batch_size=1, num_workers=0, optim=OptimConfig(name="adamw", lr=1e-2)),
    )  # fmt: skip
    spec = RunSpec("cvc12k", "official", "external", "clean", "frozen", 0)
    finetune_benchmark(
        spec, cfg, tiny_benchmarks["cvc12k"].manifest, tiny_benchmarks["cvc12k"].raw, tmp_path, MICRO, path
    )
    state = load_checkpoint(tmp_path / "model.pt")["student"]
    for key, value in official.items():
        torch.testing.assert_close(state["encoder." + key.removeprefix("backbone.")], value, rtol=0, atol=0, msg=key)


def test_official_checkpoint_fine_tunes_exactly_like_ours(tiny_benchmarks, tmp_path, one_torch_thread):
    bench = tiny_benchmarks["polypdiag"]
    ours, official, _ = _pretrained(tmp_path)
    spec = RunSpec("polypdiag", "endofm", "default", "paper", "full", 0)
    cfg = tiny_config(epochs=1)
    for name, ckpt in (("ours", ours), ("official", official)):
        finetune_benchmark(spec, cfg, bench.manifest, bench.raw, tmp_path / name, MICRO, ckpt)
    a, b = (pd.read_csv(tmp_path / name / "predictions.csv") for name in ("ours", "official"))
    pd.testing.assert_frame_equal(a, b)


def test_frozen_mode_keeps_the_backbone_and_trains_the_head(tiny_benchmarks, tmp_path, one_torch_thread):
    bench = tiny_benchmarks["cvc12k"]
    from endofm.tasks.finetune import OptimConfig, TrainConfig
    from endofm.tasks.segment import SegmentConfig

    cfg = SegmentConfig(
        decoder="light", light_channels=[8], train_size=40, crop_size=32, test_size=32,
        train=TrainConfig(epochs=1, batch_size=1, num_workers=0, optim=OptimConfig(name="adamw", lr=1e-2)),
    )  # fmt: skip
    ours, _, start = _pretrained(tmp_path)
    spec = RunSpec("cvc12k", "endofm", "default", "clean", "frozen", 0)
    finetune_benchmark(spec, cfg, bench.manifest, bench.raw, tmp_path / "run", MICRO, ours)
    state = load_checkpoint(tmp_path / "run" / "model.pt")["student"]
    backbone = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}  # light decoder
    assert backbone.keys() == start.state_dict().keys()
    for name, value in start.state_dict().items():
        torch.testing.assert_close(backbone[name], value, rtol=0, atol=0, msg=name)
    assert any(k.startswith("decoder.") for k in state)


def test_preempted_run_resumes_to_the_same_model(tiny_benchmarks, tmp_path, monkeypatch, one_torch_thread):
    """Two epochs straight equal one epoch, a pre-emption, and a rerun that continues."""
    bench = tiny_benchmarks["polypdiag"]
    spec = RunSpec("polypdiag", "scratch", "none", "clean", "full", 0)
    cfg = tiny_config(epochs=2)
    finetune_benchmark(spec, cfg, bench.manifest, bench.raw, tmp_path / "straight", MICRO)

    monkeypatch.setattr(PreemptionHandler, "should_stop", lambda self, info: True)
    with pytest.raises(Preempted):
        finetune_benchmark(spec, cfg, bench.manifest, bench.raw, tmp_path / "resumed", MICRO)
    assert (tmp_path / "resumed" / "checkpoint.pt").is_file()
    assert not (tmp_path / "resumed" / "run.json").exists()  # nothing looks complete
    monkeypatch.undo()
    finetune_benchmark(spec, cfg, bench.manifest, bench.raw, tmp_path / "resumed", MICRO)

    a, b = (load_checkpoint(tmp_path / name / "model.pt")["student"] for name in ("straight", "resumed"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=name)
    ha, hb = (pd.read_csv(tmp_path / name / "history.csv") for name in ("straight", "resumed"))
    pd.testing.assert_frame_equal(ha.drop(columns="seconds"), hb.drop(columns="seconds"))


def test_resuming_with_other_settings_is_refused(tiny_benchmarks, tmp_path, monkeypatch, one_torch_thread):
    bench = tiny_benchmarks["polypdiag"]
    spec = RunSpec("polypdiag", "scratch", "none", "paper", "full", 0)
    monkeypatch.setattr(PreemptionHandler, "should_stop", lambda self, info: True)
    with pytest.raises(Preempted):
        finetune_benchmark(spec, tiny_config(epochs=2), bench.manifest, bench.raw, tmp_path, MICRO)
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="other settings"):
        finetune_benchmark(spec, tiny_config(epochs=3), bench.manifest, bench.raw, tmp_path, MICRO)


def test_config_hash_ignores_key_order():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_fp16_fine_tuning_scales_the_loss_and_unscales_before_clipping(
    tiny_benchmarks, tmp_path, monkeypatch, one_torch_thread
):
    """``auto`` precision is fp16 on GPUs without bf16. Simulated on the CPU (autocast off, a real CPU
    GradScaler): every step scales the loss, unscales before clipping, steps and updates through the
    scaler, and as the scale is a power of two the run matches fp32 training."""
    bench = tiny_benchmarks["polypdiag"]
    spec = RunSpec("polypdiag", "scratch", "none", "clean", "full", 0)
    cfg = tiny_config(epochs=2, optim=OptimConfig(name="sgd", lr=0.5, clip_grad=0.01))
    finetune_benchmark(spec, cfg, bench.manifest, bench.raw, tmp_path / "fp32", MICRO)

    calls, created = [], []

    class RecordingScaler(torch.amp.GradScaler):
        def scale(self, outputs):
            calls.append("scale")
            return super().scale(outputs)

        def unscale_(self, optimizer):
            calls.append("unscale_")
            return super().unscale_(optimizer)

        def step(self, optimizer, *args, **kwargs):
            calls.append("step")
            return super().step(optimizer, *args, **kwargs)

        def update(self, new_scale=None):
            calls.append("update")
            return super().update(new_scale)

    def make_scaler(precision, device):
        created.append(precision)
        return RecordingScaler("cpu", enabled=precision == "fp16")

    clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(*args, **kwargs):
        calls.append("clip")
        return clip(*args, **kwargs)

    monkeypatch.setattr(finetune, "resolve_precision", lambda precision, device: "fp16")
    monkeypatch.setattr(finetune, "autocast", lambda precision, device: contextlib.nullcontext())
    monkeypatch.setattr(finetune, "grad_scaler", make_scaler)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    record = finetune_benchmark(spec, cfg, bench.manifest, bench.raw, tmp_path / "fp16", MICRO)
    assert created == ["fp16"] and record["steps"] >= 2
    assert calls == ["scale", "unscale_", "clip", "step", "update"] * record["steps"]
    a, b = (load_checkpoint(tmp_path / name / "model.pt")["student"] for name in ("fp32", "fp16"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], msg=name)


def test_run_or_reuse_runs_once_under_workflow_names(tmp_path, monkeypatch):
    """The first call runs and evaluates into finetune/<spec.path>/ and metrics/<spec.path>.json; the second
    only reads that metrics file (flattened: counts dropped, read-outs as key[readout])."""
    from endofm.tasks import runs

    spec = RunSpec("polypdiag", "scratch", "none", "clean", "frozen", 1)
    calls = []

    def fake_finetune(spec_, task, manifest, raw, run_dir, *rest):
        calls.append(("finetune", run_dir))

    def fake_evaluate(run_dir, manifest, raw, metrics_path, synthetic):
        calls.append(("evaluate", metrics_path, synthetic))
        metrics_path.parent.mkdir(parents=True)
        record = {"metrics": {"f1": 0.5, "n": 10}, "readouts": {"knn": {"auroc": 0.75}}}
        metrics_path.write_text(json.dumps(record))

    monkeypatch.setattr(runs, "finetune_benchmark", fake_finetune)
    monkeypatch.setattr(runs, "evaluate_run", fake_evaluate)
    for _ in range(2):
        flat = runs.run_or_reuse(spec, None, "m.csv", "raw", tmp_path, None, synthetic=False)
        assert flat == {"f1": 0.5, "auroc[knn]": 0.75}
    assert calls == [
        ("finetune", tmp_path / "finetune" / spec.path),
        ("evaluate", tmp_path / "metrics" / f"{spec.path}.json", False),
    ]
