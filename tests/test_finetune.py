"""The shared fine-tuning loop: starting points, resumption, frozen mode."""

from __future__ import annotations

import contextlib

import pandas as pd
import pytest
import torch
from test_classify import MICRO, tiny_config

from endofm.engine import Preempted, PreemptionHandler
from endofm.models.checkpoint import load_checkpoint, save_checkpoint, to_official
from endofm.models.heads import DINOHead
from endofm.models.vit import build_backbone
from endofm.tasks import finetune
from endofm.tasks.finetune import OptimConfig, RunSpec, config_hash
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
