"""VCL (endofm/pretraining/vcl.py): its pieces against hand computations, and a tiny run through the
shared pretraining loop: outputs, exact resumption after SIGTERM, and fine-tuning of its backbone."""

from __future__ import annotations

import math
import os
import signal

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from test_classify import MICRO
from test_classify import tiny_config as classify_config
from test_pretrain import make_clips

from endofm.config import ConfigError, from_dict
from endofm.engine import PREEMPTED_EXIT_CODE
from endofm.methods import load_pretrain_config
from endofm.models.checkpoint import load_backbone, load_checkpoint
from endofm.models.vit import build_backbone
from endofm.pretraining import vcl
from endofm.pretraining.objective import sinkhorn_knopp
from endofm.pretraining.train import pretrain
from endofm.pretraining.vcl import (
    STREAMS,
    VCLConfig,
    VCLLoss,
    VCLModel,
    dynamic_view,
    info_nce,
    sample_clip_indices,
    static_view,
)
from endofm.tasks.finetune import RunSpec
from endofm.tasks.runs import finetune_benchmark

TINY = {
    "backbone": {"name": "vit_micro_patch8"},
    "views": {"frames": 2, "size": 16, "color_jitter": 0.0, "grayscale": 0.0},
    "num_concepts": 6,
    "proj_dim": 8,
    "queue_length": 4,
    "local_topk": 2,
    "local_start_epoch": 1,
    "epochs": 2,
    "batch_size_per_gpu": 2,
    "warmup_epochs": 1,
    "lr": 0.128,
    "num_workers": 0,
    "checkpoint_every": 1,
    "precision": "fp32",
    "device": "cpu",
}
TERMS = ["loss", "nce_vv", "nce_vs", "nce_vd", "concept", "diversity", "fidelity", "local"]


def tiny_config(**overrides) -> VCLConfig:
    return from_dict(VCLConfig, {**TINY, **overrides}, "test")


# ---------------------------------------------------------------- pieces


def test_sinkhorn_assignments_are_doubly_stochastic():
    """Rows (samples) sum to 1 exactly; every prototype receives rows/K of the mass: to 1e-5 once
    converged, and within 2 % already after the 3 iterations VCL uses (scores at the scale of cosine
    similarities, ε 0.05)."""
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(24, 6, generator=gen) * 0.05
    for iterations, tol in ((100, 1e-5), (3, 0.02)):
        q = sinkhorn_knopp(scores, 0.05, iterations)
        torch.testing.assert_close(q.sum(1), torch.ones(24), rtol=0, atol=1e-5)
        torch.testing.assert_close(q.sum(0), torch.full((6,), 4.0), rtol=tol, atol=0)
        assert (q >= 0).all()


def test_info_nce_equals_a_hand_computation():
    q = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    k = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.6, 0.8]])
    # logits[i, j] = q_i . k_j / 0.5: row 0 (2, 1.2, 0), row 1 (0, 1.6, 1.2), row 2 (0, 0, 1.6); positives on the diagonal.
    rows = [
        -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(1.2) + 1.0)),
        -math.log(math.exp(1.6) / (1.0 + math.exp(1.6) + math.exp(1.2))),
        -math.log(math.exp(1.6) / (1.0 + 1.0 + math.exp(1.6))),
    ]
    assert info_nce(q, k, 0.5).item() == pytest.approx(sum(rows) / 3, rel=1e-6)
    # Keys are detached: only the query receives a gradient.
    q.requires_grad_(True)
    k.requires_grad_(True)
    info_nce(q, k, 0.5).backward()
    assert q.grad is not None and k.grad is None


def test_static_and_dynamic_views():
    clip = torch.randn(3, 4, 8, 8)
    static = static_view(clip[:, 2:3], 4)
    assert static.shape == clip.shape
    assert torch.equal(static[:, 0], clip[:, 2]) and torch.equal(static[:, 3], clip[:, 2])
    assert torch.count_nonzero(static[:, 1:] - static[:, :-1]) == 0  # no frame difference
    assert torch.count_nonzero(dynamic_view(static)) == 0  # the dynamic view of a static clip is zero
    still = clip[:, :1].repeat(1, 4, 1, 1)
    assert torch.count_nonzero(dynamic_view(still)) == 0
    # Differences of consecutive frames; frame 0 minus the last frame.
    ramp = torch.arange(4.0).view(1, 4, 1, 1).expand(3, 4, 2, 2)
    assert dynamic_view(ramp)[0, :, 0, 0].tolist() == [-3.0, 1.0, 1.0, 1.0]


def test_two_consecutive_clips_at_one_stride():
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = sample_clip_indices(32, 4, 3, rng)
        steps = np.diff(idx.ravel())
        assert idx.shape == (2, 4) and len(set(steps)) == 1 and 1 <= steps[0] <= 3
        assert idx[1, 0] - idx[0, -1] == steps[0] and idx.max() < 32
    assert sample_clip_indices(5, 4, 3, rng).tolist() == [[0, 1, 2, 3], [4, 4, 4, 4]]  # short: clamped


def test_concept_losses_and_queue():
    cfg = tiny_config()
    torch.manual_seed(0)
    model, loss = VCLModel(cfg), VCLLoss(cfg)
    views = [torch.randn(3, 3, 2, 16, 16) for _ in STREAMS]
    out = model(views, local=True)
    assert out["scores"].shape == (6, 3, 12) and out["z"].shape == (5, 2, 3, 8)
    assert out["local_rgb"].shape == (2, 3, 12, 32) and out["local_static"].shape == (2, 3, 6, 32)
    terms = loss(out, epoch=1, local=True)
    assert all(torch.isfinite(terms[k]) for k in TERMS)
    # Diversity is minus two entropies of K-way distributions: in [-2 log K, 0]; fidelity minus three cosines.
    assert -2 * math.log(6) - 1e-6 <= terms["diversity"].item() <= 0
    assert -3 <= terms["fidelity"].item() <= 3 and terms["local"].item() > 0
    # The queue takes the batch's scores, newest first, and its filled part joins the targets from epoch 1.
    assert int(loss.queue_filled) == 3
    torch.testing.assert_close(loss.queue[:, :3], out["scores"].detach())
    assert loss.targets(out["scores"], epoch=0).shape == (6, 3, 12)
    loss(model(views), epoch=1, local=False)
    assert int(loss.queue_filled) == 4  # capped at queue_length
    terms["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())  # every head, the local concepts included


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="views.size 20 is not a multiple of backbone.patch_size 8"):
        tiny_config(views={"frames": 2, "size": 20})
    # The static and dynamic views' local concepts have K = num_concepts scores to rank.
    with pytest.raises(ConfigError, match="local_topk must be < num_concepts = 6, got 6"):
        tiny_config(local_topk=6)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"method": "vcl", "pretrain": {**TINY, "temprature": 0.1}}))
    with pytest.raises(ConfigError, match=r"pretrain: unknown key 'temprature' \(did you mean 'temperature'\?\)"):
        load_pretrain_config(path)
    path.write_text(yaml.safe_dump({"method": "scratch", "pretrain": {}}))
    with pytest.raises(ConfigError, match="method 'scratch' is not a pretrained method"):
        load_pretrain_config(path)


# ---------------------------------------------------------------- a tiny run


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return make_clips(tmp_path_factory.mktemp("clips"), 6)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, clips):
    """An uninterrupted 2-epoch VCL run (3 steps per epoch; the queue and local concepts join in epoch 1)."""
    out = tmp_path_factory.mktemp("vcl")
    pretrain(tiny_config(), [clips], out)
    return out


def test_run_outputs_and_cost(reference):
    metrics = pd.read_csv(reference / "metrics.csv")
    assert metrics.columns.tolist() == [
        "epoch",
        *TERMS,
        "lr",
        "wd",
        "static_usage",
        "dynamic_usage",
        "steps",
        "seconds",
        "clips_per_s",
    ]
    assert metrics["steps"].tolist() == [3, 3] and np.isfinite(metrics[TERMS].to_numpy()).all()
    assert metrics["local"][0] == 0 and metrics["local"][1] > 0  # local concepts from epoch 1
    saved = yaml.safe_load((reference / "config.yaml").read_text())
    assert saved["method"] == "vcl" and load_pretrain_config(reference / "config.yaml") == tiny_config()

    backbone = build_backbone("vit_micro_patch8")
    load_backbone(backbone, reference / "backbone.pt")
    ckpt = load_checkpoint(reference / "checkpoint.pt")
    for name, value in backbone.state_dict().items():
        torch.testing.assert_close(value, ckpt["student"][f"backbone.{name}"], rtol=0, atol=0)
    record = yaml.safe_load((reference / "run.json").read_text())
    model = VCLModel(tiny_config())
    assert record["method"] == "vcl" and record["objective"] == "vcl"
    assert record["parameters"] == sum(p.numel() for p in model.parameters())
    assert record["trainable_parameters"] == record["parameters"]
    assert record["backbone_parameters"] == sum(p.numel() for p in backbone.parameters())
    assert record["steps"] == 6 and record["train_seconds"] > 0


def test_sigterm_mid_epoch_resumes_exactly(reference, clips, tmp_path, monkeypatch):
    """SIGTERM during step 5 of 6: checkpoint (queue included), exit 75; the rerun ends where the
    uninterrupted run did, bit for bit."""
    calls, original = [], vcl.VCLObjective.after_step

    def step_then_signal(self, model, step):
        original(self, model, step)
        calls.append(step)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(vcl.VCLObjective, "after_step", step_then_signal)
    with pytest.raises(SystemExit) as stopped:
        pretrain(tiny_config(), [clips], tmp_path)
    assert stopped.value.code == PREEMPTED_EXIT_CODE
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert (ckpt["epoch"], ckpt["step"]) == (1, 5) and int(ckpt["extra"]["objective"]["vcl_queue_filled"]) == 4
    monkeypatch.undo()
    (tmp_path / "metrics.csv").unlink()
    pretrain(tiny_config(), [clips], tmp_path)

    a, b = load_checkpoint(reference / "checkpoint.pt"), load_checkpoint(tmp_path / "checkpoint.pt")
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"]) == (2, 6)
    for name, value in a["student"].items():
        assert torch.equal(value, b["student"][name]), name
    assert torch.equal(a["extra"]["objective"]["vcl_queue"], b["extra"]["objective"]["vcl_queue"])
    got, want = pd.read_csv(tmp_path / "metrics.csv"), pd.read_csv(reference / "metrics.csv")
    np.testing.assert_array_equal(got[TERMS].to_numpy(), want[TERMS].to_numpy())


def test_vcl_backbone_fine_tunes(reference, tiny_benchmarks, tmp_path, one_torch_thread):
    bench = tiny_benchmarks["polypdiag"]
    spec = RunSpec("polypdiag", "vcl", "default", "clean", "full", 0)
    record = finetune_benchmark(
        spec, classify_config(epochs=1), bench.manifest, bench.raw, tmp_path, MICRO, reference / "backbone.pt"
    )
    assert record["method"] == "vcl" and record["settings"]["checkpoint"].endswith("backbone.pt")
    backbone = sum(p.numel() for p in build_backbone("vit_micro_patch8").parameters())
    assert record["trainable_parameters"] == record["parameters"] == backbone + 32 * 2 + 2  # + linear head
    assert len(pd.read_csv(tmp_path / "predictions.csv")) > 0
