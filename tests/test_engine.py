"""Tests for the training-loop skeleton (endofm/engine.py): schedules, data order, checkpoints,
pre-emption, failure detection and metrics. Multi-process behaviour is tested in test_pretrain.py."""

from __future__ import annotations

import math
import os
import signal

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import Dataset

from endofm import engine
from endofm.engine import (
    PREEMPTED_EXIT_CODE,
    DistInfo,
    EpochMeter,
    MetricsLog,
    NonFiniteLossError,
    Preempted,
    PreemptionHandler,
    build_loader,
    check_finite,
    cosine_schedule,
    init_distributed,
    load_training_checkpoint,
    save_training_checkpoint,
    set_loader_epoch,
)
from endofm.models.checkpoint import load_checkpoint

CPU = DistInfo()


class Items(Dataset):
    """Item i is the tensor [i]; with ``per_epoch`` it also exposes set_epoch like MultiViewDataset."""

    def __init__(self, n: int, per_epoch: bool = False) -> None:
        self.n = n
        self.epochs: list[int] = []
        if per_epoch:
            self.set_epoch = self.epochs.append

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([i])


def order(loader) -> list[int]:
    return [int(i) for batch in loader for i in batch.flatten()]


# ---------------------------------------------------------------- schedules


def test_cosine_schedule_warmup_then_cosine_like_dino():
    s = cosine_schedule(1.0, 0.1, epochs=5, steps_per_epoch=4, warmup_epochs=2, start_warmup=0.2)
    assert s.shape == (20,)
    # Linear warm-up over 8 iterations, both ends included.
    np.testing.assert_allclose(s[:8], np.linspace(0.2, 1.0, 8))
    # Cosine over the 12 remaining iterations, starting at base, decreasing towards final.
    n = 12
    np.testing.assert_allclose(s[8:], 0.1 + 0.45 * (1 + np.cos(np.pi * np.arange(n) / n)))
    assert s[8] == pytest.approx(1.0)
    assert np.all(np.diff(s[8:]) < 0)
    assert s[-1] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 11 / 12)))


def test_cosine_schedule_without_warmup_ends_near_final():
    s = cosine_schedule(0.996, 1.0, epochs=30, steps_per_epoch=100)
    assert len(s) == 3000
    assert s[0] == pytest.approx(0.996)
    assert 0.996 < s[-1] < 1.0
    assert s[-1] == pytest.approx(1.0, abs=1e-8)
    assert np.all(np.diff(s) > 0)


def test_cosine_schedule_rejects_bad_lengths():
    with pytest.raises(ValueError, match=r"warmup_epochs must be in \[0, epochs=2\], got 10"):
        cosine_schedule(1.0, 0.0, epochs=2, steps_per_epoch=5, warmup_epochs=10)
    with pytest.raises(ValueError, match="steps_per_epoch must be >= 1"):
        cosine_schedule(1.0, 0.0, epochs=2, steps_per_epoch=0)


# ---------------------------------------------------------------- processes and numerics


def test_init_distributed_without_torchrun_is_one_cpu_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = init_distributed("cpu")
    assert info == DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    assert info.is_main and not info.distributed
    assert engine.reduce_mean({"a": torch.tensor(2.0), "b": 3}, info) == {"a": 2.0, "b": 3.0}
    assert engine.any_rank(True, info) and not engine.any_rank(False, info)


def test_init_distributed_rejects_inconsistent_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(RuntimeError, match="RANK=5, WORLD_SIZE=2"):
        init_distributed("cpu")
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(RuntimeError, match="RANK='one' is not an integer"):
        init_distributed("cpu")


def test_precision_on_cpu():
    cpu = torch.device("cpu")
    assert engine.resolve_precision("auto", cpu) == "fp32"
    assert engine.resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="fp16 .* needs a CUDA device"):
        engine.resolve_precision("fp16", cpu)
    with pytest.raises(ValueError, match="precision must be one of"):
        engine.resolve_precision("fp64", cpu)
    with engine.autocast("auto", cpu):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with engine.autocast("bf16", cpu):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert not engine.grad_scaler("auto", cpu).is_enabled()


def test_seed_everything_depends_on_rank():
    engine.seed_everything(3, rank=1)
    a = torch.rand(3), np.random.rand()
    engine.seed_everything(4)
    b = torch.rand(3), np.random.rand()
    engine.seed_everything(3, rank=0)
    c = torch.rand(3)
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    assert not torch.equal(a[0], c)


# ---------------------------------------------------------------- data


def test_loader_order_depends_on_seed_and_epoch_only():
    loader = build_loader(Items(10), 2, CPU, seed=1)
    set_loader_epoch(loader, 0)
    first = order(loader)
    assert sorted(first) == list(range(10))
    set_loader_epoch(loader, 1)
    second = order(loader)
    assert second != first
    fresh = build_loader(Items(10), 2, CPU, seed=1)
    set_loader_epoch(fresh, 1)
    assert order(fresh) == second  # no hidden state from earlier epochs


def test_loader_skip_resumes_part_way_through_an_epoch():
    loader = build_loader(Items(10), 3, CPU, seed=0)
    set_loader_epoch(loader, 2)
    full = order(loader)
    assert len(full) == 9  # last partial batch dropped
    set_loader_epoch(loader, 2, skip_batches=2)
    assert len(loader) == 1
    assert order(loader) == full[6:]
    set_loader_epoch(loader, 3)
    assert len(loader) == 3  # the skip applies to one epoch only


def test_ranks_split_the_single_process_order():
    """Rank r of 2 gets items r, r+2, ... of the one-process order: a global batch of 2 split 1 + 1
    holds the same items as a one-process batch of 2 (what DDP equivalence needs)."""
    single = build_loader(Items(8), 2, CPU, seed=5)
    set_loader_epoch(single, 4)
    ranks = []
    for rank in range(2):
        loader = build_loader(Items(8), 1, DistInfo(rank=rank, world_size=2), seed=5)
        set_loader_epoch(loader, 4)
        ranks.append(order(loader))
    assert order(single) == [i for pair in zip(*ranks, strict=True) for i in pair]


def test_loader_passes_the_epoch_to_the_dataset_and_reseeds_workers():
    data = Items(4, per_epoch=True)
    loader = build_loader(data, 2, CPU, seed=0)
    assert not loader.persistent_workers
    set_loader_epoch(loader, 3)
    seed3 = loader.generator.initial_seed()
    set_loader_epoch(loader, 7)
    assert data.epochs == [3, 7]
    assert loader.generator.initial_seed() != seed3
    set_loader_epoch(loader, 3)
    assert loader.generator.initial_seed() == seed3


def test_loader_errors():
    with pytest.raises(ValueError, match="use persistent_workers=False"):
        build_loader(Items(4, per_epoch=True), 2, CPU, num_workers=1, persistent_workers=True)
    with pytest.raises(ValueError, match="3 items do not fill one batch of 2 per process on 2 process"):
        build_loader(Items(3), 2, DistInfo(rank=0, world_size=2))
    loader = build_loader(Items(4), 2, CPU)
    with pytest.raises(ValueError, match="cannot skip 6 samples"):
        set_loader_epoch(loader, 0, skip_batches=3)


# ---------------------------------------------------------------- checkpoints, signals, failures


def test_checkpoints_latest_every_epoch_and_numbered_every_n(tmp_path):
    assert load_training_checkpoint(tmp_path) is None
    for epoch in (1, 2, 3, 4):
        save_training_checkpoint(tmp_path, CPU, epoch=epoch, keep_every=2, step=10 * epoch, extra={"x": epoch})
    save_training_checkpoint(tmp_path, CPU, epoch=4, keep_every=2, epoch_end=False, step=45)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "checkpoint_0002.pt", "checkpoint_0004.pt"]
    latest = load_training_checkpoint(tmp_path)
    assert (latest["epoch"], latest["step"]) == (4, 45)
    assert load_checkpoint(tmp_path / "checkpoint_0004.pt")["step"] == 40  # mid-epoch saves are not numbered
    assert load_checkpoint(tmp_path / "checkpoint_0002.pt")["extra"] == {"x": 2}


def test_preemption_handler_sets_a_flag_and_restores_handlers():
    before = signal.getsignal(signal.SIGUSR1)
    with PreemptionHandler() as preempt:
        assert not preempt.should_stop(CPU)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert preempt.requested and preempt.received == signal.SIGUSR1
        assert preempt.should_stop(CPU)
    assert signal.getsignal(signal.SIGUSR1) is before
    exc = Preempted("stopped by SIGTERM")
    assert isinstance(exc, SystemExit) and exc.code == PREEMPTED_EXIT_CODE == 75
    assert str(exc) == "stopped by SIGTERM"


def test_check_finite_names_epoch_step_and_checkpoint(tmp_path):
    check_finite(1.5, epoch=0, step=0)
    with pytest.raises(NonFiniteLossError, match="loss is nan at epoch 3, step 17; .* no checkpoint had been written"):
        check_finite(float("nan"), epoch=3, step=17, checkpoint=tmp_path / "checkpoint.pt")
    (tmp_path / "checkpoint.pt").write_bytes(b"x")
    with pytest.raises(NonFiniteLossError, match=r"loss is inf at epoch 0, step 2; .*/checkpoint.pt is left untouched"):
        check_finite(float("inf"), epoch=0, step=2, checkpoint=tmp_path / "checkpoint.pt")


# ---------------------------------------------------------------- metrics


def test_metrics_log_appends_and_continues_after_resume(tmp_path):
    path = tmp_path / "metrics.csv"
    log = MetricsLog(path)
    for epoch in range(3):
        log.append({"epoch": epoch, "loss": 1.0 / (epoch + 1)})
    assert pd.read_csv(path)["epoch"].tolist() == [0, 1, 2]
    # A run resuming at epoch 2 (its checkpoint predates the row of epoch 2) drops that row at once.
    resumed = MetricsLog(path, start_epoch=2)
    assert pd.read_csv(path)["epoch"].tolist() == [0, 1]
    resumed.append({"epoch": 2, "loss": 0.25, "extra": 7})
    frame = pd.read_csv(path)
    assert frame["loss"].tolist() == [1.0, 0.5, 0.25]
    assert frame["extra"].isna().tolist() == [True, True, False]
    MetricsLog(tmp_path / "other.csv", enabled=False).append({"epoch": 0})
    assert not (tmp_path / "other.csv").exists()


def test_metrics_log_rebuilds_a_deleted_file_from_the_checkpoint_history(tmp_path):
    path = tmp_path / "metrics.csv"
    history = [{"epoch": np.int64(0), "loss": np.float32(2.0)}, {"epoch": 1, "loss": 1.5}, {"epoch": 2, "loss": 1.0}]
    log = MetricsLog(path, start_epoch=2, history=history)
    assert log.rows == [{"epoch": 0, "loss": 2.0}, {"epoch": 1, "loss": 1.5}]
    assert all(type(v) in (int, float) for row in log.rows for v in row.values())  # plain, for the checkpoint
    assert pd.read_csv(path)["loss"].tolist() == [2.0, 1.5]
    MetricsLog(path, start_epoch=0, history=[])
    assert not path.exists()


def test_metrics_log_errors(tmp_path):
    (tmp_path / "bad.csv").write_text("loss\n1.0\n")
    with pytest.raises(ValueError, match="bad.csv: metrics log has no 'epoch' column"):
        MetricsLog(tmp_path / "bad.csv", start_epoch=1)
    with pytest.raises(ValueError, match="metrics row 0 has no 'epoch'"):
        MetricsLog(tmp_path / "m.csv", history=[{"loss": 1.0}])
    with pytest.raises(ValueError, match="needs an 'epoch' value"):
        MetricsLog(tmp_path / "m.csv").append({"loss": 1.0})


def test_epoch_meter_state_survives_a_round_trip():
    meter = EpochMeter()
    meter.update({"loss": 2.0, "cv": 1.0}, items=4)
    state = meter.state_dict()
    resumed = EpochMeter(state)
    resumed.update({"loss": 4.0, "cv": 3.0}, items=4)
    summary = resumed.summary()
    assert summary["loss"] == 3.0 and summary["cv"] == 2.0 and summary["steps"] == 2
    assert summary["seconds"] >= state["seconds"] > 0  # time before the checkpoint counts
    assert summary["items_per_s"] == pytest.approx(8 / summary["seconds"])


def test_lr_schedules():
    from endofm.engine import lr_schedule

    poly = lr_schedule("poly", 1.0, 2, 5, power=0.9)
    assert len(poly) == 10 and poly[0] == 1.0 and poly[5] == pytest.approx(0.5**0.9)
    step = lr_schedule("step", 1.0, 4, 3, milestones=[0.5, 0.75], gamma=0.5)
    assert step.tolist() == [1.0] * 6 + [0.5] * 3 + [0.25] * 3
    warm = lr_schedule("constant", 2.0, 2, 4, warmup_epochs=1)
    assert warm.tolist() == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0, 2.0, 2.0]
    cosine = lr_schedule("cosine", 1.0, 2, 5, final=0.1)
    assert cosine[0] == 1.0 and cosine[-1] > 0.1 and np.all(np.diff(cosine) <= 0)
    with pytest.raises(ValueError, match="milestones"):
        lr_schedule("step", 1.0, 2, 2, milestones=[1.5])
    with pytest.raises(ValueError, match="kind"):
        lr_schedule("linear", 1.0, 2, 2)


@pytest.mark.parametrize(("threads", "workers", "intra"), [(2, 0, 2), (2, 1, 1), (2, 2, 1), (8, 3, 5), (1, 4, 1)])
def test_set_cpu_threads_gives_workers_one_thread_each_and_torch_the_rest(threads, workers, intra):
    before = torch.get_num_threads()
    try:
        assert engine.set_cpu_threads(threads, workers) == intra
        assert torch.get_num_threads() == intra
    finally:
        torch.set_num_threads(before)


def test_set_cpu_threads_rejects_bad_counts():
    with pytest.raises(ValueError, match="threads must be >= 1"):
        engine.set_cpu_threads(0, 0)
    with pytest.raises(ValueError, match="num_workers must be >= 0"):
        engine.set_cpu_threads(2, -1)
