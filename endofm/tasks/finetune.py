"""The fine-tuning loop every benchmark shares, built from :mod:`endofm.engine`'s pieces.

A benchmark is a :class:`Task` (datasets, model, loss, prediction, scoring, prediction files); this
module owns the rest: optimiser and per-iteration schedule, full or frozen-backbone training,
evaluation on the protocol's selection split, keeping the best epoch, resuming after pre-emption,
and the outputs of a run in ``out_dir``:

- ``model.pt``: the selected epoch's model (our checkpoint format, ``student`` = model state dict);
- the task's prediction files for the protocol's test split, made by that model;
- ``history.csv``: one row per epoch (training loss, lr, selection metrics);
- ``run.json``: what :mod:`endofm.tasks.evaluate` needs besides the predictions: the run's identity
  (benchmark, method, variant, protocol, mode, seed, label fraction), the splits, the selected epoch, a hash
  of the settings, the model's parameter count and trainable count, package versions and wall time.

Under the ``paper`` protocol the selection split *is* the test split (the original's model
selection on test); ``clean`` selects on validation and predicts the test split once.

Layer: tasks (docs/architecture.md). May import: foundation, data, models, engine, metrics, pretraining, methods and the other tasks modules.
"""

from __future__ import annotations

import abc
import itertools
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from endofm import paths
from endofm.config import check_fields, config_hash, setting
from endofm.engine import (
    MetricsLog,
    Precision,
    Preempted,
    PreemptionHandler,
    autocast,
    build_loader,
    check_finite,
    checkpoint_path,
    distributed_session,
    grad_scaler,
    load_training_checkpoint,
    lr_schedule,
    progress,
    resolve_precision,
    save_training_checkpoint,
    seed_everything,
    set_loader_epoch,
)
from endofm.io import write_json
from endofm.methods import task_backbone
from endofm.models.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    package_versions,
    restore_rng_state,
    save_checkpoint,
)
from endofm.models.vit import TimeSformer
from endofm.tasks.evaluation import RUN_NAME
from endofm.tasks.protocols import ProtocolSplits

log = logging.getLogger(__name__)

Mode = Literal["full", "frozen"]
MODES: tuple[str, ...] = ("full", "frozen")
MODEL_NAME = "model.pt"
HISTORY_NAME = "history.csv"
_BEST_NAME = "best.pt"


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule (see :func:`endofm.engine.lr_schedule`)."""

    name: Literal["sgd", "adamw"] = setting("sgd", "Optimiser: sgd or adamw")
    lr: float = setting(1e-3, "Base learning rate", exclusive_minimum=0)
    batch_scaled: bool = setting(False, "Multiply lr by batch_size / 256 (the original PolypDiag recipe)")
    momentum: float = setting(0.9, "SGD momentum (sgd only)", minimum=0)
    weight_decay: float = setting(0.0, "Weight decay", minimum=0)
    bias_weight_decay: bool = setting(True, "false: biases and other 1-D parameters (norm weights) are not decayed")
    schedule: Literal["cosine", "poly", "step", "constant"] = setting(
        "cosine", "Per-iteration learning-rate schedule after warm-up: cosine, poly, step or constant"
    )
    warmup_epochs: float = setting(0.0, "Linear warm-up from 0, in epochs (may be fractional)", minimum=0)
    min_lr: float = setting(0.0, "Final learning rate of the cosine schedule", minimum=0)
    poly_power: float = setting(0.9, "Exponent of the poly schedule")
    milestones: list[float] = setting(
        description="Step schedule: fractions of the run at which lr is multiplied by gamma", factory=list
    )
    gamma: float = setting(0.1, "Step schedule: factor applied at each milestone")
    backbone_lr_scale: float = setting(1.0, "Backbone learning rate = lr × this (full fine-tuning)", minimum=0)
    clip_grad: float = setting(0.0, "Clip the global gradient norm to this (0 disables)", minimum=0)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class TrainConfig:
    """The loop's settings; each task's config holds one with its recipe's defaults."""

    epochs: int = setting(20, "Training epochs", minimum=1)
    batch_size: int = setting(4, "Samples per optimiser step", minimum=1)
    optim: OptimConfig = setting(description="Optimiser and learning-rate schedule", factory=OptimConfig)
    eval_every: int = setting(
        1, "Epochs between evaluations on the selection split (the last epoch is always evaluated)", minimum=1
    )
    val_fraction: float = setting(
        0.2,
        "Clean protocol: share of the training videos held out for validation (by video)",
        exclusive_minimum=0,
        exclusive_maximum=1,
    )
    num_workers: int = setting(
        2, "Data-loading worker processes (capped by the job's threads - 1 in the workflow)", minimum=0
    )
    device: str = setting("auto", "auto (CUDA if available, else CPU), cpu, cuda, cuda:1, ...")
    precision: Precision = setting(
        "auto", "auto: bf16 on CUDA, fp16 with loss scaling on GPUs without bf16, fp32 on CPU"
    )
    max_steps_per_epoch: int | None = setting(
        None, "Cap on optimiser steps per epoch (tests and demos; null: the whole split)", minimum=1
    )
    select_metric: str | None = setting(
        None, "The selection-split score that picks the epoch, one of the task's selection metrics; null: its headline"
    )

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class RunSpec:
    """Which run this is: one cell of the experiment matrix. ``label_fraction`` is the share of the
    protocol's training videos the run trains on (:func:`endofm.tasks.protocols.label_subset`);
    ``pretrain_fraction`` the share of its pretraining's steps behind the backbone (a snapshot, below 1);
    ``draw`` the benchmark draw it trains and tests on (0: the main one; ``synthetic.draws``)."""

    benchmark: str
    method: str
    variant: str
    protocol: str
    mode: str
    seed: int
    label_fraction: float = 1.0
    pretrain_fraction: float = 1.0
    draw: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        paths.label_tag(self.label_fraction)
        paths.pretrain_tag(self.pretrain_fraction)
        paths.draw_tag(self.draw)

    @property
    def path(self) -> str:
        """The run's place under ``results/finetune/`` (a folder) and ``results/metrics/`` (+ ``.json``):
        ``<benchmark>/<method>/<variant>/<protocol>/<mode>/seed<k>``, with ``-labels<percent>`` appended
        when the run trains on a fraction of the videos, after ``-pt<percent>`` when it starts from a
        pretraining snapshot, and ``-draw<k>`` last on a benchmark draw other than the main one."""
        return paths.run_path(
            self.benchmark, self.method, self.variant, self.protocol, self.mode, self.seed,
            self.label_fraction, self.pretrain_fraction, self.draw,
        )  # fmt: skip


class Task(abc.ABC):
    """One benchmark's part of fine-tuning. ``score`` returns floats; ``selection_metrics`` names those
    (higher is better) that may pick the epoch (``TrainConfig.select_metric``, :meth:`selection_key`),
    ``selection_metric`` the default one, the benchmark's headline. Models expose ``backbone`` (the video
    ViT), ``backbone_parameters()`` and ``head_parameters()``."""

    benchmark: ClassVar[str]
    selection_metric: ClassVar[str]
    selection_metrics: ClassVar[tuple[str, ...]]

    @classmethod
    def selection_key(cls, train: TrainConfig) -> str:
        """The score that picks the epoch: ``train.select_metric``, or :attr:`selection_metric` when unset."""
        name = cls.selection_metric if train.select_metric is None else train.select_metric
        if name not in cls.selection_metrics:
            raise ValueError(
                f"train.select_metric must be one of {list(cls.selection_metrics)} for {cls.benchmark}, got {name!r}"
            )
        return name

    def __init__(self, splits: ProtocolSplits, root: str | Path, seed: int = 0) -> None:
        if splits.benchmark != self.benchmark:
            raise ValueError(f"{type(self).__name__} needs {self.benchmark} splits, got {splits.benchmark}")
        self.splits, self.root, self.seed = splits, Path(root), seed

    @abc.abstractmethod
    def build_model(self, backbone: TimeSformer) -> nn.Module: ...

    @abc.abstractmethod
    def train_dataset(self) -> Dataset: ...

    def collate(self, items: list[Any]) -> Any:
        return default_collate(items)

    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: Any, device: torch.device) -> torch.Tensor: ...

    @abc.abstractmethod
    def predict(self, model: nn.Module, role: Literal["select", "test"], device: torch.device) -> Any: ...

    @abc.abstractmethod
    def score(self, predictions: Any, role: Literal["select", "test"]) -> dict[str, float]: ...

    @abc.abstractmethod
    def save_predictions(self, predictions: Any, out_dir: Path) -> list[str]:
        """Write the test predictions into ``out_dir``; returns the file names."""


def _param_groups(model: nn.Module, optim: OptimConfig, frozen: bool) -> list[dict[str, Any]]:
    backbone = {id(p) for p in model.backbone_parameters()}
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        in_backbone = id(p) in backbone
        decay = optim.bias_weight_decay or not (name.endswith(".bias") or p.ndim == 1)
        groups.setdefault((in_backbone, decay), []).append(p)
    out = []
    for (in_backbone, decay), params in sorted(groups.items()):
        scale = optim.backbone_lr_scale if in_backbone else 1.0
        out.append({"params": params, "lr_scale": scale, "weight_decay": optim.weight_decay if decay else 0.0})
    if not out:
        raise ValueError("the model has no trainable parameters" + (" outside the frozen backbone" if frozen else ""))
    return out


def _optimizer(groups: list[dict[str, Any]], optim: OptimConfig) -> torch.optim.Optimizer:
    if optim.name == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum)
    if optim.name == "adamw":
        return torch.optim.AdamW(groups, lr=optim.lr)
    raise ValueError(f"optim.name must be 'sgd' or 'adamw', got {optim.name!r}")


def set_trainable(model: nn.Module, mode: str, method: str = "endofm") -> None:
    """Everything outside the backbone trains; of the backbone, what ``method``'s registry entry says
    (:func:`endofm.methods.task_backbone`): a video ViT trains whole in ``full`` mode and not at all in
    ``frozen`` mode, ST-Adapter only its adapters in ``full`` mode."""
    backbone = {id(p) for p in model.backbone_parameters()}
    trains = {id(p) for p in task_backbone(method).trainable(model.backbone, mode)}
    for p in model.parameters():
        p.requires_grad_(id(p) not in backbone or id(p) in trains)


def train_mode(model: nn.Module, mode: str, method: str = "endofm") -> None:
    """Training mode; a backbone that does not train (as ``method``'s registry entry says) stays in eval
    mode (no stochastic depth in fixed features)."""
    model.train()
    if task_backbone(method).eval_backbone(mode):
        model.backbone.eval()


def run_finetune(
    task: Task,
    cfg: TrainConfig,
    spec: RunSpec,
    backbone: TimeSformer,
    out_dir: str | Path,
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    """Fine-tune ``backbone`` on ``task`` as ``cfg`` says and write the run's outputs (module docstring).

    ``settings`` is the run's resolved configuration (plain data); it is hashed, stored in ``model.pt``
    and must be unchanged for a pre-empted run to resume from ``out_dir/checkpoint.pt``. Returns the
    ``run.json`` record.
    """
    out_dir = Path(out_dir)
    select = task.selection_key(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    digest = config_hash(settings)
    with distributed_session(cfg.device) as info:
        if info.distributed:
            raise RuntimeError("fine-tuning runs as one process per job; launch it without torchrun")
        device = info.device
        precision = resolve_precision(cfg.precision, device)
        seed_everything(spec.seed)
        model = task.build_model(backbone).to(device)
        set_trainable(model, spec.mode, spec.method)
        optimizer = _optimizer(_param_groups(model, cfg.optim, spec.mode == "frozen"), cfg.optim)
        scaler = grad_scaler(precision, device)  # loss scaling in fp16 (auto on GPUs without bf16); off otherwise
        loader = build_loader(
            task.train_dataset(),
            cfg.batch_size,
            info,
            shuffle=True,
            drop_last=True,
            num_workers=cfg.num_workers,
            seed=spec.seed,
            collate_fn=task.collate,
        )
        spe = min(len(loader), cfg.max_steps_per_epoch or len(loader))
        base_lr = cfg.optim.lr * (cfg.batch_size / 256 if cfg.optim.batch_scaled else 1.0)
        lrs = lr_schedule(
            cfg.optim.schedule,
            base_lr,
            cfg.epochs,
            spe,
            warmup_epochs=cfg.optim.warmup_epochs,
            final=cfg.optim.min_lr,
            power=cfg.optim.poly_power,
            milestones=cfg.optim.milestones,
            gamma=cfg.optim.gamma,
        )

        start_epoch, step, best = 0, 0, {"epoch": -1, "value": -math.inf, "scores": {}}
        history = None
        ckpt = load_training_checkpoint(out_dir)
        if ckpt is not None:
            saved = (ckpt.get("extra") or {}).get("config_hash")
            if saved != digest:
                raise RuntimeError(
                    f"{checkpoint_path(out_dir)} was written with other settings (hash {saved}, now {digest}); "
                    "delete it to start afresh"
                )
            model.load_state_dict(ckpt["student"])
            optimizer.load_state_dict(ckpt["optimizer"])
            if ckpt.get("scaler") and scaler.is_enabled():
                scaler.load_state_dict(ckpt["scaler"])
            start_epoch, step = int(ckpt["epoch"]), int(ckpt["step"])
            best, history = ckpt["extra"]["best"], ckpt["extra"]["history"]
            restore_rng_state(ckpt["rng"])
        metrics = MetricsLog(out_dir / HISTORY_NAME, start_epoch, history=history or [])
        log.info(
            "%s %s/%s %s %s seed %d on %s (%s): %d epochs x %d steps, batch %d, lr %.3g; settings %s",
            spec.benchmark, spec.method, spec.variant, spec.protocol, spec.mode, spec.seed,
            device, precision, cfg.epochs, spe, cfg.batch_size, base_lr, digest,
        )  # fmt: skip

        with PreemptionHandler() as preempt:
            for epoch in range(start_epoch, cfg.epochs):
                train_mode(model, spec.mode, spec.method)
                set_loader_epoch(loader, epoch)
                losses, t0 = [], time.perf_counter()
                bar = progress(itertools.islice(loader, spe), info, total=spe, desc=f"epoch {epoch}/{cfg.epochs}")
                for batch in bar:
                    for group in optimizer.param_groups:
                        group["lr"] = float(lrs[step]) * group["lr_scale"]
                    with autocast(precision, device):
                        loss = task.loss(model, batch, device)
                    check_finite(loss.item(), epoch=epoch, step=step, checkpoint=checkpoint_path(out_dir))
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if cfg.optim.clip_grad > 0:
                        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                        nn.utils.clip_grad_norm_(
                            [p for p in model.parameters() if p.requires_grad], cfg.optim.clip_grad
                        )
                    scaler.step(optimizer)  # skipped when fp16 gradients overflowed
                    scaler.update()
                    losses.append(loss.item())
                    step += 1
                    bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
                bar.close()
                row: dict[str, Any] = {
                    "epoch": epoch,
                    "loss": sum(losses) / len(losses),
                    "lr": float(lrs[step - 1]),
                    "seconds": time.perf_counter() - t0,
                }
                if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                    model.eval()
                    scores = task.score(task.predict(model, "select", device), "select")
                    row.update({f"select_{k}": v for k, v in scores.items()})
                    value = scores[select]
                    if value > best["value"] or best["epoch"] < 0:
                        best = {"epoch": epoch, "value": float(value), "scores": scores}
                        save_checkpoint(out_dir / _BEST_NAME, epoch=epoch + 1, student=model.state_dict())
                    log.info("epoch %d: loss %.4f, select %s %.4f", epoch, row["loss"], select, value)
                metrics.append(row)
                save_training_checkpoint(
                    out_dir,
                    info,
                    epoch=epoch + 1,
                    step=step,
                    student=model.state_dict(),
                    optimizer=optimizer.state_dict(),
                    scaler=scaler.state_dict(),
                    rng=capture_rng_state(),
                    extra={"config_hash": digest, "best": best, "history": metrics.rows},
                )
                if preempt.should_stop(info) and epoch + 1 < cfg.epochs:
                    raise Preempted(
                        f"stopped at epoch {epoch + 1}; {checkpoint_path(out_dir)} written, rerun to resume"
                    )

        state = load_checkpoint(out_dir / _BEST_NAME)["student"]
        model.load_state_dict(state)
        model.eval()
        files = task.save_predictions(task.predict(model, "test", device), out_dir)
        save_checkpoint(
            out_dir / MODEL_NAME,
            config=dict(settings),
            epoch=best["epoch"] + 1,
            step=step,
            student=model.state_dict(),
            extra={"spec": asdict(spec), "selected_epoch": best["epoch"]},
        )
    record = {
        **asdict(spec),
        "splits": task.splits.summary(),
        "selection": {"metric": select, "epoch": best["epoch"], "scores": best["scores"]},
        "test_split": task.splits.test.split,
        "predictions": files,
        "epochs": cfg.epochs,
        "steps": step,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "config_hash": digest,
        "settings": dict(settings),
        "versions": package_versions(),
        "device": str(device),
        "wall_seconds": time.time() - started,
    }
    write_json(out_dir / RUN_NAME, record)
    for name in (_BEST_NAME, checkpoint_path(out_dir).name):
        (out_dir / name).unlink(missing_ok=True)
    return record
