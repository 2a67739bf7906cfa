"""Tests for Endo-FM pretraining (endofm/pretraining/train.py) on a tiny CPU configuration: outputs,
exact resumption (at an epoch boundary and after SIGTERM part-way through an epoch), NaN handling,
two-process DDP against one process, and a short run that learns without collapsing."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from endofm.cli import main as cli_main
from endofm.config import ConfigError, from_dict, to_dict
from endofm.data.clips import MANIFEST_COLUMNS
from endofm.data.video import write_video
from endofm.engine import PREEMPTED_EXIT_CODE, NonFiniteLossError
from endofm.io import write_csv
from endofm.methods import load_pretrain_config
from endofm.models.checkpoint import CheckpointError, load_backbone, load_checkpoint, save_checkpoint, to_official
from endofm.models.vit import build_backbone
from endofm.pretraining import endofm as endofm_objective
from endofm.pretraining import train
from endofm.pretraining.endofm import PretrainConfig, build_model, load_init_checkpoint
from endofm.pretraining.train import pretrain

REPO = Path(__file__).resolve().parents[1]

#: A micro backbone and views: globals of 2 and 4 frames at 32 px, two 2-frame locals at 16 px. The
#: learning rate is chosen so that the scaled rate (× total batch / 256) is 1e-3.
TINY = {
    "backbone": {"name": "vit_micro_patch8"},
    "init": "random",
    "views": {"global_frames": [2, 4], "global_size": 32, "local_frames": [2, 2], "local_size": 16},
    "out_dim": 64,
    "hidden_dim": 32,
    "bottleneck_dim": 16,
    "epochs": 2,
    "batch_size_per_gpu": 2,
    "warmup_epochs": 1,
    "lr": 0.128,
    "num_workers": 0,
    "checkpoint_every": 1,
    "precision": "fp32",
    "device": "cpu",
}


def tiny_config(**overrides) -> PretrainConfig:
    return from_dict(PretrainConfig, {**TINY, **overrides}, "test")


def make_clips(folder: Path, n: int, frames: int = 16, size: int = 64, seed: int = 0) -> Path:
    """``n`` distinct toy clips and their ``clips.csv``: moving stripes, checkers, rings or blobs, each
    with its own orientation, frequency and two colours."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    rows = []
    for i in range(n):
        theta, freq = rng.uniform(0, np.pi), rng.uniform(0.2, 0.8)
        colours = rng.uniform(0, 255, (2, 3))
        video = []
        for t in range(frames):
            u = np.cos(theta) * xx + np.sin(theta) * yy + 1.5 * t
            v = np.cos(theta) * yy - np.sin(theta) * xx
            pattern = [
                np.sin(freq * u) > 0,
                (np.sin(freq * u) > 0) ^ (np.sin(freq * v) > 0),
                0.5 + 0.5 * np.sin(freq * np.hypot(xx - size / 2 - 5 * np.sin(0.3 * t), yy - size / 2)),
                0.5 + 0.5 * np.sin(freq * u) * np.sin(0.5 * freq * v),
            ][i % 4].astype(np.float32)[..., None]
            video.append((colours[0] * pattern + colours[1] * (1 - pattern)).astype(np.uint8))
        name = f"toy{i}_00000.mp4"
        write_video(folder / name, video)
        rows.append(
            {"source": "toy", "source_video": f"toy{i}", "start_frame": 0, "frames": frames, "fps": 30,
             "width": size, "height": size, "path": name}
        )  # fmt: skip
    write_csv(folder / "clips.csv", pd.DataFrame(rows, columns=MANIFEST_COLUMNS))
    return folder / "clips.csv"


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return make_clips(tmp_path_factory.mktemp("clips"), 6)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, clips) -> Path:
    """An uninterrupted 2-epoch run (3 steps per epoch), the yardstick of the resumption tests."""
    out = tmp_path_factory.mktemp("reference")
    assert pretrain(tiny_config(), [clips], out) == out / "checkpoint.pt"
    return out


def assert_same_run(a: Path, b: Path, teacher_atol: float = 0.0, student_atol: float = 0.0) -> None:
    """The final checkpoints of two runs agree: position, teacher, centre and student (and, when exact,
    the optimiser's moments)."""
    ca, cb = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    assert (ca["epoch"], ca["step"]) == (cb["epoch"], cb["step"])
    torch.testing.assert_close(ca["center"], cb["center"], atol=teacher_atol, rtol=0)
    for key, atol in (("teacher", teacher_atol), ("student", student_atol)):
        assert ca[key].keys() == cb[key].keys()
        for name in ca[key]:
            torch.testing.assert_close(ca[key][name], cb[key][name], atol=atol, rtol=0, msg=f"{key}.{name}")
    if student_atol == 0:
        moments = [(i, n, s[n]) for i, s in ca["optimizer"]["state"].items() for n in ("exp_avg", "exp_avg_sq")]
        for i, name, value in moments:
            assert torch.equal(value, cb["optimizer"]["state"][i][name]), f"optimizer state {i} {name}"


METRICS = ["loss", "cv", "dm", "lr", "wd", "momentum", "teacher_entropy", "batch_entropy", "center_norm", "steps"]


# ---------------------------------------------------------------- outputs and settings


def test_defaults_are_the_paper_recipe():
    cfg = PretrainConfig()
    assert cfg.backbone.name == "vit_base_patch16" and cfg.backbone.embed_dim == 768
    assert (cfg.views.global_frames, cfg.views.global_size, cfg.views.local_size) == ((8, 16), 224, 96)
    assert (cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.norm_last_layer) == (65536, 2048, 256, True)
    assert (cfg.epochs, cfg.batch_size_per_gpu, cfg.lr, cfg.min_lr, cfg.warmup_epochs) == (30, 3, 5e-4, 1e-6, 10)
    assert (cfg.weight_decay, cfg.weight_decay_end, cfg.clip_grad, cfg.freeze_last_layer) == (0.04, 0.4, 3.0, 1)
    assert (cfg.momentum_teacher, cfg.teacher_temp, cfg.warmup_teacher_temp, cfg.student_temp) == (
        0.996,
        0.04,
        0.04,
        0.1,
    )
    assert (cfg.center_momentum, cfg.cv_weight, cfg.dm_weight, cfg.seed) == (0.9, 1.0, 1.0, 0)
    assert (cfg.n_global, cfg.n_views) == (2, 10)


def test_config_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {}\n")
    with pytest.raises(ConfigError, match=r"c.yaml: no 'pretrain' section \(top-level keys: data\)"):
        load_pretrain_config(path)
    path.write_text("pretrain:\n  lr: 0.1\n  lr_typo: 1\n")
    with pytest.raises(ConfigError, match=r"c.yaml: pretrain: unknown key 'lr_typo'"):
        load_pretrain_config(path)
    path.write_text("pretrain:\n  epochs: 2\n")
    with pytest.raises(ConfigError, match=r"warmup_epochs must be in \[0, epochs=2\], got 10"):
        load_pretrain_config(path)
    with pytest.raises(ConfigError, match="views.local_size 20 is not a multiple of backbone.patch_size 8"):
        tiny_config(views={**TINY["views"], "local_size": 20})


def test_run_outputs(reference, clips):
    names = sorted(p.name for p in reference.iterdir())
    expected = [
        "backbone.pt",
        "checkpoint.pt",
        "checkpoint_0001.pt",
        "checkpoint_0002.pt",
        "config.yaml",
        "metrics.csv",
        "run.json",
    ]
    assert names == expected
    ckpt = load_checkpoint(reference / "checkpoint.pt")
    assert (ckpt["epoch"], ckpt["step"]) == (2, 6)
    assert ckpt["config"] == to_dict(tiny_config())
    assert ckpt["center"].shape == (1, 64)
    assert not any(k.startswith("module.") for k in ckpt["student"])

    metrics = pd.read_csv(reference / "metrics.csv")
    assert metrics.columns.tolist() == ["epoch", *METRICS, "seconds", "clips_per_s"]
    assert metrics["epoch"].tolist() == [0, 1] and metrics["steps"].tolist() == [3, 3]
    # Schedules at each epoch's last step: lr warms up over epoch 0 to 1e-3, then decays.
    assert metrics["lr"][0] == pytest.approx(1e-3)
    assert 1e-6 < metrics["lr"][1] < 1e-3
    assert 0.996 < metrics["momentum"][0] < metrics["momentum"][1] < 1
    assert np.isfinite(metrics[["loss", "cv", "dm", "teacher_entropy"]].to_numpy()).all()

    saved = yaml.safe_load((reference / "config.yaml").read_text())
    assert saved["run"]["steps_per_epoch"] == 3 and saved["run"]["global_batch"] == 2
    assert saved["run"]["base_lr"] == pytest.approx(1e-3)
    assert load_pretrain_config(reference / "config.yaml") == tiny_config()

    # run.json: the cost of the run (parameter counts, steps, seconds).
    record = json.loads((reference / "run.json").read_text())
    student = build_model(tiny_config())
    assert (record["method"], record["objective"], record["steps"], record["global_batch"]) == (
        "endofm",
        "endofm",
        6,
        2,
    )
    assert record["parameters"] == sum(p.numel() for p in student.parameters())
    # the head's last-layer norm is fixed (norm_last_layer): out_dim values do not train
    assert record["trainable_parameters"] == record["parameters"] - 64
    assert record["backbone_parameters"] == sum(p.numel() for p in student.backbone.parameters())
    assert record["train_seconds"] == pytest.approx(metrics["seconds"].sum())
    assert saved["run"]["parameters"] == record["parameters"]

    # backbone.pt: the teacher backbone, loadable strictly by the fine-tuning loader.
    backbone = build_backbone("vit_micro_patch8")
    load_backbone(backbone, reference / "backbone.pt")
    for name, value in backbone.state_dict().items():
        torch.testing.assert_close(value, ckpt["teacher"][f"backbone.{name}"], rtol=0, atol=0)


def test_init_checkpoint_loads_backbone_and_head_strictly(tmp_path):
    cfg = tiny_config()
    torch.manual_seed(1)
    source = build_model(cfg).state_dict()
    official = tmp_path / "official.pth"  # legacy weight_g/weight_v head names, teacher + module.student
    torch.save(to_official({"teacher": source, "student": source}), official)
    flat = tmp_path / "flat.pth"  # SVT's layout: one flat {backbone.*, head.*} dict
    torch.save(to_official({"teacher": source})["teacher"], flat)
    for path in (official, flat):
        torch.manual_seed(2)
        model = build_model(cfg)
        load_init_checkpoint(model, path)
        for name, value in model.state_dict().items():
            torch.testing.assert_close(value, source[name], rtol=0, atol=0)

    torch.save({k: v for k, v in source.items() if k.startswith("backbone.")}, tmp_path / "nohead.pth")
    with pytest.raises(CheckpointError, match=r"nohead.pth: has no DINO head \(head.\*\) weights"):
        load_init_checkpoint(build_model(cfg), tmp_path / "nohead.pth")
    with pytest.raises(CheckpointError, match="DINO head does not match"):
        load_init_checkpoint(build_model(tiny_config(out_dim=32)), flat)


def test_paper_config_without_the_svt_checkpoint_fails_at_start(clips, tmp_path, monkeypatch):
    from endofm.settings import load_workflow_config

    paper = load_workflow_config(yaml.safe_load((REPO / "config/paper.yaml").read_text())).pretrain.variant("default")
    assert paper.init == "resources/raw/svt_k400/kinetics400_vitb_ssl.pth" == endofm_objective.SVT_CHECKPOINT
    monkeypatch.chdir(tmp_path)  # no resources/raw here
    with pytest.raises(ConfigError) as info:
        pretrain(paper, [clips], tmp_path / "run")
    message = str(info.value)
    assert "\n" not in message and message.startswith("pretrain init: resources/raw/svt_k400/kinetics400_vitb_ssl.pth")
    assert "https://github.com/kahnchana/svt/releases/download/v1.0/kinetics400_vitb_ssl.pth" in message
    assert "init: random" in message
    assert not (tmp_path / "run").exists()  # failed before writing anything
    demo = load_workflow_config(yaml.safe_load((REPO / "config/config.yaml").read_text())).pretrain
    assert demo.variant("default").init == "random"  # the CPU demo says so explicitly


def test_init_random_is_recorded_in_the_resolved_config(reference):
    saved = yaml.safe_load((reference / "config.yaml").read_text())
    assert saved["pretrain"]["init"] == "random"
    assert load_checkpoint(reference / "checkpoint.pt")["config"]["init"] == "random"


def test_init_checkpoint_path_is_loaded_and_cannot_replace_random_on_resume(reference, clips, tmp_path, monkeypatch):
    flat = tmp_path / "svt.pth"
    torch.save(to_official({"teacher": build_model(tiny_config()).state_dict()})["teacher"], flat)
    loaded = []

    def record(model, path, **kwargs):
        loaded.append(Path(path))
        raise KeyboardInterrupt  # stop here: the run got as far as loading its initial weights

    monkeypatch.setattr(endofm_objective, "load_init_checkpoint", record)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny_config(init=str(flat)), [clips], tmp_path / "fresh")
    assert loaded == [flat]
    monkeypatch.undo()
    run = tmp_path / "resumed"
    run.mkdir()
    shutil.copy(reference / "checkpoint_0001.pt", run / "checkpoint.pt")  # started from random weights
    with pytest.raises(ConfigError, match=r"cannot resume with different settings \(init: 'random' -> '.*svt.pth'\)"):
        pretrain(tiny_config(init=str(flat)), [clips], run)


def test_init_head_false_loads_the_backbone_alone(tmp_path):
    """A backbone-only file (another run's backbone.pt) initialises the backbone; the head keeps its
    random weights."""
    cfg = tiny_config(init_head=False)
    torch.manual_seed(1)
    source = build_model(cfg).state_dict()
    path = tmp_path / "backbone.pt"
    torch.save({"teacher": {k: v for k, v in source.items() if k.startswith("backbone.")}}, path)
    torch.manual_seed(2)
    model = build_model(cfg)
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    load_init_checkpoint(model, path, head=cfg.init_head)
    for name, value in model.backbone.state_dict().items():
        torch.testing.assert_close(value, source[f"backbone.{name}"], rtol=0, atol=0)
    for name, value in model.head.state_dict().items():
        torch.testing.assert_close(value, head_before[name], rtol=0, atol=0)
    assert any(not torch.equal(v, source[f"head.{k}"]) for k, v in model.head.state_dict().items())


def test_fixed_t_samples_every_view_at_the_backbones_frame_count(clips):
    """dynamic_pos_embed off: all views take backbone.num_frames frames (time_embed at its stored
    length); on: each view keeps its own count."""
    from endofm.pretraining.views import MultiViewDataset, load_clip_manifests

    cfg = tiny_config()
    assert cfg.sampled_views is cfg.views
    fixed = tiny_config(dynamic_pos_embed=False)
    t = fixed.backbone.num_frames
    assert t == 4 and fixed.sampled_views.global_frames == (4, 4) and fixed.sampled_views.local_frames == (4, 4)
    assert fixed.n_views == cfg.n_views and fixed.sampled_views.local_size == cfg.views.local_size
    dataset = MultiViewDataset(load_clip_manifests([clips]), fixed.sampled_views)
    assert [v.shape[1] for v in dataset[0]] == [4, 4, 4, 4]
    assert [v.shape[1] for v in MultiViewDataset(load_clip_manifests([clips]), cfg.views)[0]] == [2, 4, 2, 2]


def test_changed_settings_fail_or_restart(reference, clips, tmp_path):
    shutil.copy(reference / "checkpoint_0001.pt", tmp_path / "checkpoint.pt")
    shutil.copy(reference / "metrics.csv", tmp_path / "metrics.csv")
    with pytest.raises(ConfigError, match=r"cannot resume with different settings \(lr: 0.128 -> 0.2\)"):
        pretrain(tiny_config(lr=0.2), [clips], tmp_path)
    # Restart: the old run moves to superseded/, the new one starts from scratch.
    pretrain(tiny_config(lr=0.2, epochs=1, warmup_epochs=0), [clips], tmp_path, on_config_change="restart")
    assert sorted(p.name for p in (tmp_path / "superseded").iterdir()) == ["checkpoint.pt", "metrics.csv"]
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert (ckpt["epoch"], ckpt["step"], ckpt["config"]["lr"]) == (1, 3, 0.2)
    assert pd.read_csv(tmp_path / "metrics.csv")["epoch"].tolist() == [0]


# ---------------------------------------------------------------- resumption and failures


def test_resume_with_another_number_of_steps_per_epoch(reference, tmp_path):
    """More data (4 steps per epoch instead of 3): an epoch-boundary checkpoint continues with the new
    length; one written part-way through an epoch is refused, as its position cannot be mapped."""
    more = make_clips(tmp_path / "clips", 8)
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(reference / "checkpoint_0001.pt", run / "checkpoint.pt")
    pretrain(tiny_config(), [more], run)
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert (ckpt["epoch"], ckpt["step"], ckpt["extra"]["steps_per_epoch"]) == (2, 8, 4)

    mid = load_checkpoint(reference / "checkpoint_0001.pt")
    save_checkpoint(run / "checkpoint.pt", **{**mid, "step": 4})
    with pytest.raises(CheckpointError, match="part-way through epoch 1 with 3 steps per epoch, but this run has 4"):
        pretrain(tiny_config(), [more], run)


def test_resume_at_an_epoch_boundary_is_exact(reference, clips, tmp_path):
    """1 epoch, stop, resume, 1 more epoch == 2 epochs straight: weights, centre, optimiser moments."""
    shutil.copy(reference / "checkpoint_0001.pt", tmp_path / "checkpoint.pt")
    pretrain(tiny_config(), [clips], tmp_path)
    assert_same_run(reference, tmp_path)
    # metrics.csv was not copied: it is rebuilt from the rows the checkpoint carries.
    got, want = pd.read_csv(tmp_path / "metrics.csv"), pd.read_csv(reference / "metrics.csv")
    assert got["epoch"].tolist() == [0, 1]
    np.testing.assert_array_equal(got[METRICS].to_numpy(), want[METRICS].to_numpy())


def test_sigterm_mid_epoch_checkpoints_exits_75_and_resumes_exactly(reference, clips, tmp_path, monkeypatch):
    """SIGTERM during step 5 of 6 (epoch 1): the step completes, a checkpoint is written, the run exits
    with status 75; rerunning finishes with the same weights and metrics as the uninterrupted run."""
    calls, original, handler = [], endofm_objective.ema_update, signal.getsignal(signal.SIGTERM)

    def ema_then_signal(*args, **kwargs):
        original(*args, **kwargs)
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(endofm_objective, "ema_update", ema_then_signal)
    with pytest.raises(SystemExit) as stopped:
        pretrain(tiny_config(), [clips], tmp_path)
    assert stopped.value.code == PREEMPTED_EXIT_CODE
    assert "stopped by SIGTERM at epoch 1, step 5" in str(stopped.value)
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert (ckpt["epoch"], ckpt["step"]) == (1, 5)
    assert ckpt["extra"]["epoch_meter"]["steps"] == 2
    assert pd.read_csv(tmp_path / "metrics.csv")["epoch"].tolist() == [0]
    assert not (tmp_path / "backbone.pt").exists()
    assert signal.getsignal(signal.SIGTERM) == handler  # the pre-emption handler is removed again

    monkeypatch.undo()
    (tmp_path / "metrics.csv").unlink()  # as Snakemake does with the outputs of a job it reruns
    pretrain(tiny_config(), [clips], tmp_path)
    assert len(calls) == 5
    assert_same_run(reference, tmp_path)
    got, want = pd.read_csv(tmp_path / "metrics.csv"), pd.read_csv(reference / "metrics.csv")
    np.testing.assert_array_equal(got[METRICS].to_numpy(), want[METRICS].to_numpy())


def test_nonfinite_loss_stops_and_keeps_the_last_checkpoint(clips, tmp_path, monkeypatch):
    class NaNInEpoch1(endofm_objective.EndoFMLoss):
        def forward(self, student_out, teacher_out, epoch, **kwargs):
            out = super().forward(student_out, teacher_out, epoch, **kwargs)
            if epoch == 1:
                out["loss"] = out["loss"] * math.nan
            return out

    monkeypatch.setattr(endofm_objective, "EndoFMLoss", NaNInEpoch1)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 1, step 3; .*checkpoint.pt is left untouched"):
        pretrain(tiny_config(), [clips], tmp_path)
    assert (tmp_path / "checkpoint.pt").read_bytes() == (tmp_path / "checkpoint_0001.pt").read_bytes()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3
    assert pd.read_csv(tmp_path / "metrics.csv")["epoch"].tolist() == [0]
    assert not (tmp_path / "backbone.pt").exists()


# ---------------------------------------------------------------- several processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_matches_one_process(reference, clips, tmp_path):
    """torchrun with 2 gloo processes × batch 1 == 1 process × batch 2 (the reference run).

    What makes them equal, and must stay true: (1) rank r of 2 takes items r, r+2, ... of the one
    order that depends only on (seed, epoch), so each global batch holds the same clips; (2) a clip's
    views depend only on (seed, epoch, index), not on the rank or worker; (3) every term of the loss
    is a batch mean and DDP averages gradients over ranks, so the gradients are the mean over the
    same 2 clips; the centre update all-reduces the teacher mean; the lr scales with the same total
    batch; (4) the backbone has no batch statistics and no stochastic depth here (drop_path 0), so
    nothing else draws per-rank randomness. Floating-point sums differ in order, hence tolerances:
    metrics and the teacher (an average of students) agree to ~1e-6, while AdamW's division by
    sqrt(v) amplifies rounding for parameters whose gradients are near zero, so the student's
    weights agree to ~1e-4 (measured 7.6e-5), a few % of the ~4e-3 total learning rate of the 6 steps.
    """
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"pretrain": {**TINY, "batch_size_per_gpu": 1}}))
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        "-m", "endofm.cli", "pretrain", "--config", str(config), "--clips", str(clips), "--out", str(out),
        "--workers", "1",
    ]  # fmt: skip
    result = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    saved = yaml.safe_load((out / "config.yaml").read_text())["run"]
    assert (saved["world_size"], saved["global_batch"], saved["steps_per_epoch"]) == (2, 2, 3)
    assert_same_run(reference, out, teacher_atol=1e-6, student_atol=2e-4)
    got, want = pd.read_csv(out / "metrics.csv"), pd.read_csv(reference / "metrics.csv")
    np.testing.assert_allclose(got[METRICS].to_numpy(), want[METRICS].to_numpy(), rtol=1e-4)


# ---------------------------------------------------------------- learning


def test_tiny_pretraining_learns_without_collapsing(tmp_path):
    """30 steps of vit_tiny_patch8 on 16 toy clips: the loss falls and the teacher neither collapses
    to one prototype nor to the uniform distribution.

    Measured with these settings (seed 0 / seed 1): mean loss of the first 3 epochs 4.47 / 4.16, of
    the last 5 3.63 / 3.57; teacher entropy (centred and sharpened, the loss's statistic) within
    2.2-2.9 nats throughout, of log K = 5.55. Collapsed DINO runs end near 0 (one prototype for
    every clip; seen here with 6× the lr or teacher momentum 0.9) or near log K (uniform; seen with
    the micro backbone of the other tests, whose CLS barely depends on the input at initialisation,
    hence the tiny preset here). The bounds 0.25·log K and log K - 1 sit >= 0.8 nats from the
    measured values; the loss must fall by 0.3 (measured 0.84 / 0.59).
    """
    manifest = make_clips(tmp_path / "clips", 16)
    cfg = tiny_config(
        backbone={"name": "vit_tiny_patch8"},
        out_dim=256,
        hidden_dim=128,
        bottleneck_dim=64,
        epochs=15,
        batch_size_per_gpu=8,
        lr=5e-4 * 256 / 8,  # 5e-4 after scaling by the total batch
        warmup_epochs=2,
        momentum_teacher=0.99,
        checkpoint_every=0,
    )
    pretrain(cfg, [manifest], tmp_path / "run")
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    log_k = math.log(cfg.out_dim)
    assert metrics["loss"].iloc[-5:].mean() < metrics["loss"].iloc[:3].mean() - 0.3
    assert metrics["teacher_entropy"].between(0.25 * log_k, log_k - 1).all(), metrics["teacher_entropy"].tolist()

    # The final teacher on every clip's global views: sharp per clip, yet different clips use different prototypes.
    from endofm.pretraining.views import MultiViewDataset, collate_views, load_clip_manifests

    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    teacher = build_model(cfg)
    teacher.load_state_dict(ckpt["teacher"])
    dataset = MultiViewDataset(load_clip_manifests([manifest]), cfg.views, seed=1)
    views = collate_views([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        p = torch.softmax((teacher(views[:2]) - ckpt["center"]) / cfg.teacher_temp, dim=-1)
    per_clip = -(p * p.clamp_min(1e-12).log()).sum(-1).mean().item()
    mean = p.mean(0)
    across = -(mean * mean.clamp_min(1e-12).log()).sum().item()
    assert 0.25 * log_k < per_clip < log_k - 1
    assert across > per_clip + 1  # the clips' distributions differ
    assert len(set(p.argmax(-1).tolist())) >= 4


@pytest.fixture(scope="module")
def builtin_clips(tmp_path_factory) -> list[Path]:
    """Clips of the three built-in pretraining sources at test size, cut by the official protocol."""
    from endofm.data.clips import ClipConfig, extract_clips
    from endofm.data.sources import list_source_videos
    from endofm.data.synthetic import PRETRAIN_SOURCES, SynthConfig, synthesize

    root = tmp_path_factory.mktemp("builtin")
    synth = SynthConfig(height=48, width=64, pretrain_videos=8, pretrain_frames=(32, 48))
    manifests = []
    for source in PRETRAIN_SOURCES:
        raw = synthesize(source, root / "raw" / source, synth, progress=False)
        cfg = ClipConfig(clip_length=16, short_side=32)
        extract_clips(raw, list_source_videos(source, raw), root / "clips" / source, source, cfg, progress=False)
        manifests.append(root / "clips" / source / "clips.csv")
    return manifests


def test_demo_recipe_learns_on_the_builtin_corpus_without_collapsing(builtin_clips, tmp_path):
    """The demo's CPU recipe (config/config.yaml: Sinkhorn centering, teacher temperature 0.01, no
    colour jitter or grayscale) on the built-in corpus at test size: the loss falls, each clip's
    teacher distribution stays sharp (well below log K: no uniform collapse) and the batch still
    spreads over the prototypes (batch entropy well above the per-clip entropy: no single-prototype
    collapse). The paper's settings collapse to uniform here within a few epochs (README)."""
    demo = yaml.safe_load((REPO / "config/config.yaml").read_text())["pretrain"]["settings"]
    cfg = tiny_config(
        backbone={"name": "vit_tiny_patch8"},
        views={**TINY["views"], "global_frames": [4, 4], "global_size": 32, "local_frames": [2, 2, 2, 2],
               "local_size": 16, "max_window": 16, "color_jitter": 0.0, "grayscale": 0.0},
        out_dim=128,
        hidden_dim=128,
        bottleneck_dim=64,
        epochs=10,
        batch_size_per_gpu=8,
        lr=5e-4 * 256 / 8,
        warmup_epochs=2,
        momentum_teacher=0.99,
        checkpoint_every=0,
        **{k: demo[k] for k in ("centering", "teacher_temp", "warmup_teacher_temp")},
    )  # fmt: skip
    assert cfg.centering == "sinkhorn"
    pretrain(cfg, builtin_clips, tmp_path / "run")
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    log_k = math.log(cfg.out_dim)
    assert metrics["loss"].iloc[-3:].mean() < metrics["loss"].iloc[:2].mean() - 0.2
    late = metrics.iloc[-3:]
    assert (late["teacher_entropy"] < 0.85 * log_k).all(), metrics["teacher_entropy"].tolist()
    assert (late["batch_entropy"] > late["teacher_entropy"] + 0.5).all(), metrics["batch_entropy"].tolist()


def test_main_threads_flag_shares_threads_with_the_workers(tmp_path, monkeypatch, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"pretrain": {"init": "random", "num_workers": 3}}))
    seen = []
    monkeypatch.setattr(train, "pretrain", lambda cfg, *a, **kw: seen.append((torch.get_num_threads(), kw["workers"])))
    before = torch.get_num_threads()
    try:
        (tmp_path / "x.csv").touch()
        base = ["--config", str(config), "--clips", str(tmp_path / "x.csv"), "--out", str(tmp_path / "out")]
        cli_main(["pretrain", *base, "--threads", "5"])  # the config's 3 workers, 2 intra-op threads
        cli_main(["pretrain", *base, "--threads", "2", "--workers", "1"])
        assert seen == [(2, None), (1, 1)]
        assert cli_main(["pretrain", *base, "--threads", "0"]) == 1
        assert "--threads must be >= 1, got 0" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- snapshots (the pretraining-steps axis)


def _backbone(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["teacher"]


def _teacher_backbone(checkpoint: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_checkpoint(checkpoint)["teacher"].items() if k.startswith("backbone.")}


def _assert_equal_states(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_snapshots_at_exact_steps(reference, clips, tmp_path):
    """6 steps (2 epochs x 3): snapshots 0, 0.25, 0.5 at steps 0, 2 (1.5 rounded half up) and 3; step 0 holds
    the initial weights, step 3 the teacher of the epoch-1 checkpoint of the same run without snapshots, and
    the final backbone is unchanged by taking them."""
    assert [train.snapshot_step(f, 6) for f in (0.0, 0.25, 0.5, 0.9)] == [0, 2, 3, 5]
    pretrain(tiny_config(snapshots=[0.0, 0.25, 0.5]), [clips], tmp_path)
    files = {f: train.snapshot_path(tmp_path, f) for f in (0.0, 0.25, 0.5)}
    assert files[0.25] == tmp_path / "snapshots/backbone_pt25.pt"
    assert [load_checkpoint(p)["step"] for p in files.values()] == [0, 2, 3]
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["steps"] == 6 and run["snapshots"]["0.25"] == {"step": 2, "file": "snapshots/backbone_pt25.pt"}

    train.seed_everything(0)
    initial = {f"backbone.{k}": v for k, v in build_model(tiny_config()).backbone.state_dict().items()}
    _assert_equal_states(_backbone(files[0.0]), initial)
    _assert_equal_states(_backbone(files[0.5]), _teacher_backbone(reference / "checkpoint_0001.pt"))
    _assert_equal_states(_backbone(tmp_path / "backbone.pt"), _backbone(reference / "backbone.pt"))
    for other in (files[0.0], tmp_path / "backbone.pt"):
        assert not torch.equal(_backbone(files[0.5])["backbone.pos_embed"], _backbone(other)["backbone.pos_embed"])
    # The backbone loader reads a snapshot like backbone.pt.
    load_backbone(build_backbone(tiny_config().backbone), files[0.5])


def test_snapshots_survive_preemption(reference, clips, tmp_path, monkeypatch):
    """SIGTERM at step 5 of 6: the snapshots passed (0, 2, 5) are kept in snapshots/taken, none is published;
    the resumed run does not retake the earlier ones and publishes all of them, equal to an uninterrupted run's."""
    calls, original = [], endofm_objective.ema_update

    def ema_then_signal(*args, **kwargs):
        original(*args, **kwargs)
        calls.append(1)
        if len(calls) == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    cfg = tiny_config(snapshots=[0.0, 0.25, 0.9])
    monkeypatch.setattr(endofm_objective, "ema_update", ema_then_signal)
    with pytest.raises(SystemExit):
        pretrain(cfg, [clips], tmp_path)
    monkeypatch.undo()
    taken = {f: train.taken_snapshot_path(tmp_path, f) for f in (0.0, 0.25, 0.9)}
    assert all(p.is_file() for p in taken.values()) and not (tmp_path / "snapshots/backbone_pt0.pt").exists()
    stamps = {f: taken[f].stat().st_mtime_ns for f in (0.0, 0.25)}
    pretrain(cfg, [clips], tmp_path)
    assert {f: taken[f].stat().st_mtime_ns for f in (0.0, 0.25)} == stamps
    assert [load_checkpoint(train.snapshot_path(tmp_path, f))["step"] for f in (0.0, 0.25, 0.9)] == [0, 2, 5]
    _assert_equal_states(_backbone(tmp_path / "backbone.pt"), _backbone(reference / "backbone.pt"))


def test_resume_past_a_missing_snapshot_restarts(reference, clips, tmp_path):
    """A checkpoint at step 3 can take a snapshot due at step 3 (its own weights) but not one at step 2."""
    shutil.copy(reference / "checkpoint_0001.pt", tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"past the snapshots \[0\.25\]"):
        pretrain(tiny_config(snapshots=[0.25, 0.5]), [clips], tmp_path)
    pretrain(tiny_config(snapshots=[0.5]), [clips], tmp_path)
    _assert_equal_states(
        _backbone(train.snapshot_path(tmp_path, 0.5)), _teacher_backbone(reference / "checkpoint_0001.pt")
    )
    pretrain(tiny_config(snapshots=[0.25, 0.5]), [clips], tmp_path, on_config_change="restart")
    assert (tmp_path / "superseded/snapshots/backbone_pt50.pt").is_file()
    assert load_checkpoint(train.snapshot_path(tmp_path, 0.25))["step"] == 2


def test_snapshot_fractions_are_checked():
    with pytest.raises(ConfigError, match=r"pretrain\.snapshots\[1\] must be in \[0, 1\), got 1\.0"):
        from_dict(PretrainConfig, {**TINY, "snapshots": [0.5, 1.0]}, "pretrain")
    with pytest.raises(ConfigError, match=r"snapshots: expected distinct fractions, got \[0\.5, 0\.5\]"):
        from_dict(PretrainConfig, {**TINY, "snapshots": [0.5, 0.5]}, "pretrain")
