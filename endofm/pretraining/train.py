"""Endo-FM pretraining: self-distillation of a video ViT on unlabelled clips (ENDOFM.md §3.5, §3.6).

The student (backbone + DINO head) sees every view of a clip, the teacher (an EMA of the student,
no gradients) only the global views; :class:`~endofm.pretraining.objective.EndoFMLoss` matches them.
AdamW with per-iteration cosine schedules for the learning rate (linear warm-up), the weight decay
and the teacher momentum, per-tensor gradient clipping and a frozen last layer in the first
epoch(s): the official recipe, with :class:`PretrainConfig` holding its defaults.

Outputs in ``out_dir``:

- ``checkpoint.pt``: every epoch and at a pre-emption (our format, :mod:`endofm.models.checkpoint`);
  ``checkpoint_{epoch:04d}.pt`` every ``checkpoint_every`` epochs. A run resumes from
  ``checkpoint.pt`` by itself, and with the same settings and process count it continues exactly:
  weights, optimiser, centre, every rank's RNG, the data order and the schedules' position are restored,
  also part-way through an epoch.
- ``metrics.csv``: one row per epoch (means over its steps; lr, wd and momentum at its last step).
  The checkpoint carries the rows too, and a resumed run rebuilds the file from them.
- ``config.yaml``: the resolved settings (a ``pretrain:`` section this module reads back) and the run.
- ``backbone.pt``: written once training is complete, the teacher backbone alone as
  ``{"teacher": {"backbone.<name>": tensor}}``, the layout of the released ``endo_fm.pth`` that the
  official fine-tuning code and :func:`~endofm.models.checkpoint.load_backbone` both read.

Command line (one process, or under ``torchrun --nproc_per_node N``)::

    python -m endofm.pretraining.train --config X.yaml --clips a/clips.csv b/clips.csv --out DIR [--workers N] [--threads N]

A run stopped by SIGTERM/SIGUSR1 writes its checkpoint and exits with status
:data:`~endofm.engine.PREEMPTED_EXIT_CODE` (75; under torchrun each worker does, and torchrun itself
exits 1); rerunning the command resumes it. With ``--on-config-change restart`` a checkpoint that
cannot be continued (other settings) is moved to ``out_dir/superseded/`` and training starts afresh.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from endofm.config import ConfigError, from_dict, load_yaml, to_dict
from endofm.engine import (
    CHECKPOINT_NAME,
    DistInfo,
    EpochMeter,
    MetricsLog,
    Preempted,
    PreemptionHandler,
    autocast,
    barrier,
    build_loader,
    check_finite,
    checkpoint_path,
    cosine_schedule,
    distributed_session,
    gather_rng_states,
    grad_scaler,
    load_training_checkpoint,
    progress,
    reduce_mean,
    resolve_precision,
    restore_rng_states,
    save_training_checkpoint,
    seed_everything,
    set_cpu_threads,
    set_loader_epoch,
    unwrap,
    wrap_ddp,
)
from endofm.io import atomic_path, write_text
from endofm.logs import setup_logging
from endofm.models.checkpoint import (
    CheckpointError,
    legacy_to_parametrized,
    load_backbone,
    package_versions,
    read_checkpoint_file,
)
from endofm.models.heads import DINOHead
from endofm.models.vit import BackboneConfig, build_backbone
from endofm.pretraining.objective import (
    EndoFMLoss,
    MultiViewModel,
    cancel_last_layer_gradients,
    clip_gradients,
    ema_update,
    param_groups,
)
from endofm.pretraining.views import MultiViewDataset, ViewConfig, collate_views, load_clip_manifests

log = logging.getLogger(__name__)

METRICS_NAME = "metrics.csv"
CONFIG_NAME = "config.yaml"
BACKBONE_NAME = "backbone.pt"
SUPERSEDED_NAME = "superseded"

OnConfigChange = Literal["error", "restart"]

#: Settings that may change between a run and its resumption (they do not change the maths). ``init``
#: may move to another path, but not change between ``random`` and a checkpoint.
RESUMABLE_CHANGES = frozenset({"num_workers", "checkpoint_every", "device", "precision", "init"})

#: The original's starting point, SVT's Kinetics-400 self-supervised ViT-B (ENDOFM.md §2.4, §3.6): where
#: the default ``init`` expects it, and where to download it.
SVT_CHECKPOINT = "resources/weights/kinetics400_vitb_ssl.pth"
SVT_URL = "https://github.com/kahnchana/svt/releases/download/v1.0/kinetics400_vitb_ssl.pth"


@dataclass
class PretrainConfig:
    """Pretraining settings; the defaults are the official recipe (ENDOFM.md §3.5, §3.6).

    ``init``: the initial student and teacher weights, a checkpoint path (backbone and head, loaded
    strictly; any layout :mod:`endofm.models.checkpoint` reads) or ``random``. The original always starts
    from SVT's Kinetics-400 self-supervised checkpoint, so the default is its path
    (:data:`SVT_CHECKPOINT`) and a run fails at start while the file is missing; random weights must be
    asked for with ``init: random``, which the run's ``config.yaml`` then records.

    ``epochs`` is 30, not the original's default of 100: the authors call 30 epochs "good enough"
    (Endo-FM issue #16). Every schedule spans ``epochs``, so a 30-epoch run completes its cosine
    decays (unlike stopping a 100-epoch schedule at epoch 30). ``lr`` is for a total batch of 256
    and is scaled by ``batch_size_per_gpu × processes / 256``.
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    views: ViewConfig = field(default_factory=ViewConfig)
    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    norm_last_layer: bool = True
    epochs: int = 30
    batch_size_per_gpu: int = 3
    lr: float = 5e-4
    min_lr: float = 1e-6
    warmup_epochs: int = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    clip_grad: float = 3.0  # per parameter tensor; 0 disables
    freeze_last_layer: int = 1  # epochs with the head's last layer frozen
    momentum_teacher: float = 0.996  # cosine to 1 over the run
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: int = 0
    student_temp: float = 0.1
    center_momentum: float = 0.9
    # "center": the original's running centre; "sinkhorn": Sinkhorn-Knopp equipartition of the teacher
    # targets over the batch (DINOv2's option), which keeps small-batch CPU runs from collapsing.
    centering: Literal["center", "sinkhorn"] = "center"
    sinkhorn_iterations: int = 3
    cv_weight: float = 1.0
    dm_weight: float = 1.0
    # The original never puts its teacher in eval mode, so stochastic depth is active in it too;
    # False runs the teacher without it (DINO's intent).
    teacher_drop_path: bool = True
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    device: str = "auto"
    num_workers: int = 4
    seed: int = 0
    init: str = SVT_CHECKPOINT  # "random" or a checkpoint path (see the docstring)
    data_fraction: float = 1.0
    checkpoint_every: int = 5  # numbered copies; 0 keeps only checkpoint.pt
    max_steps_per_epoch: int | None = None  # cap for tests and demos

    def __post_init__(self) -> None:
        positive = ("out_dim", "hidden_dim", "bottleneck_dim", "epochs", "batch_size_per_gpu")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr", "teacher_temp", "warmup_teacher_temp", "student_temp"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("min_lr", "weight_decay", "weight_decay_end", "clip_grad", "freeze_last_layer", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("warmup_epochs", "warmup_teacher_temp_epochs"):
            if not 0 <= getattr(self, name) <= self.epochs:
                raise ValueError(f"{name} must be in [0, epochs={self.epochs}], got {getattr(self, name)}")
        for name in ("momentum_teacher", "center_momentum"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0 < self.data_fraction <= 1:
            raise ValueError(f"data_fraction must be in (0, 1], got {self.data_fraction}")
        if not self.init:
            raise ValueError("init must be 'random' or a checkpoint path, got an empty string")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ValueError(f"max_steps_per_epoch must be >= 1 or null, got {self.max_steps_per_epoch}")
        for name in ("global_size", "local_size"):
            size = getattr(self.views, name)
            if size % self.backbone.patch_size:
                raise ValueError(
                    f"views.{name} {size} is not a multiple of backbone.patch_size {self.backbone.patch_size}"
                )

    @property
    def n_global(self) -> int:
        return len(self.views.global_frames)

    @property
    def n_views(self) -> int:
        return len(self.views.global_frames) + len(self.views.local_frames)


def load_pretrain_config(path: str | os.PathLike) -> PretrainConfig:
    """The ``pretrain:`` section of a YAML file as a :class:`PretrainConfig` (missing keys take defaults)."""
    data = load_yaml(path)
    if "pretrain" not in data:
        raise ConfigError(f"{path}: no 'pretrain' section (top-level keys: {', '.join(map(str, data)) or 'none'})")
    return from_dict(PretrainConfig, data["pretrain"] or {}, f"{path}: pretrain")


def build_model(cfg: PretrainConfig) -> MultiViewModel:
    """Backbone + DINO head as configured (randomly initialised)."""
    backbone = build_backbone(cfg.backbone)
    head = DINOHead(
        backbone.embed_dim,
        cfg.out_dim,
        hidden_dim=cfg.hidden_dim,
        bottleneck_dim=cfg.bottleneck_dim,
        norm_last_layer=cfg.norm_last_layer,
    )
    return MultiViewModel(backbone, head)


def init_checkpoint(cfg: PretrainConfig) -> Path | None:
    """The checkpoint ``cfg.init`` names (None for ``random``); a missing file is a one-line
    :class:`~endofm.config.ConfigError` saying what to download and where to put it."""
    if cfg.init == "random":
        return None
    path = Path(cfg.init)
    if not path.is_file():
        raise ConfigError(
            f"pretrain init: {path} not found; the original starts from SVT's Kinetics-400 self-supervised "
            f"checkpoint: download {SVT_URL} to {path} (or set init to where it is), or set init: random to "
            "start from random weights"
        )
    return path


def load_init_checkpoint(model: MultiViewModel, path: str | os.PathLike) -> None:
    """Load backbone and head strictly from an initial checkpoint (SVT's flat ``{backbone.*, head.*}``,
    an official or our pretraining checkpoint (its teacher), ...). A missing head is an error."""
    raw = read_checkpoint_file(path)
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{path}: expected a dict at the top level, got {type(raw).__name__}")
    load_backbone(model.backbone, raw, which="teacher", strict=True)
    state = raw["teacher"] if "teacher" in raw else raw
    head = {}
    for key, value in state.items():
        bare = key
        while bare.startswith(("module.", "backbone.")):
            bare = bare.split(".", 1)[1]
        if bare.startswith("head."):
            head[bare[len("head.") :]] = value
    if not head:
        raise CheckpointError(f"{path}: has no DINO head (head.*) weights; init needs backbone and head")
    head = legacy_to_parametrized(head)
    try:
        model.head.load_state_dict(head, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: DINO head does not match the configured head: {exc}") from exc
    log.info("initialised backbone and head from %s", path)


def export_backbone(teacher: MultiViewModel, path: str | os.PathLike) -> Path:
    """Write the teacher backbone as ``{"teacher": {"backbone.<name>": tensor}}`` atomically."""
    state = {f"backbone.{k}": v.detach().cpu() for k, v in teacher.backbone.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"teacher": state}, tmp)
    return Path(path)


def _resume_problem(ckpt: Mapping[str, Any], cfg: PretrainConfig, spe: int, path: Path) -> Exception | None:
    """Why ``ckpt`` cannot be continued by this run (other settings, or a position that does not map
    onto ``spe`` steps per epoch), or None."""
    now, before = to_dict(cfg), ckpt.get("config", {})
    changed = sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k) and k not in RESUMABLE_CHANGES)
    if (now.get("init") == "random") != (before.get("init") == "random"):
        changed.append("init")
    if changed:
        detail = "; ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed)
        return ConfigError(
            f"{path}: cannot resume with different settings ({detail}); restore them, use a new output folder "
            "or restart (--on-config-change restart)"
        )
    epoch, step = int(ckpt["epoch"]), int(ckpt["step"])
    saved_spe = int(ckpt.get("extra", {}).get("steps_per_epoch", spe))
    skip = step - epoch * saved_spe
    if skip and saved_spe != spe:
        return CheckpointError(
            f"{path}: was written part-way through epoch {epoch} with {saved_spe} steps per epoch, but this run "
            f"has {spe} (other data, batch size or process count); it can only resume with the same"
        )
    if not 0 <= skip < saved_spe and epoch < cfg.epochs:
        return CheckpointError(f"{path}: step {step} does not fall in epoch {epoch} of {saved_spe} steps")
    return None


class _Pretraining:
    """One pretraining run: the state the loop shares, set up by ``__init__``, driven by :meth:`run`."""

    def __init__(
        self,
        cfg: PretrainConfig,
        clip_manifests: Sequence[Path],
        out_dir: Path,
        workers: int | None,
        info: DistInfo,
        on_config_change: OnConfigChange,
    ) -> None:
        self.cfg, self.out_dir, self.info = cfg, out_dir, info
        init = init_checkpoint(cfg)  # fail at start when the file is missing
        self.precision = resolve_precision(cfg.precision, info.device)
        seed_everything(cfg.seed)  # the same initial weights on every rank

        self.clips = load_clip_manifests(clip_manifests, fraction=cfg.data_fraction, seed=cfg.seed)
        dataset = MultiViewDataset(self.clips, cfg.views, seed=cfg.seed)
        self.loader = build_loader(
            dataset,
            cfg.batch_size_per_gpu,
            info,
            num_workers=cfg.num_workers if workers is None else workers,
            seed=cfg.seed,
            collate_fn=collate_views,
        )
        self.steps_per_epoch = min(len(self.loader), cfg.max_steps_per_epoch or len(self.loader))
        self.global_batch = cfg.batch_size_per_gpu * info.world_size

        student = build_model(cfg)
        if init is None:
            log.info("init: random weights (the original starts from SVT's Kinetics-400 checkpoint)")
        else:
            load_init_checkpoint(student, init)
        self.student = wrap_ddp(student.to(info.device), info)  # DDP broadcasts rank 0's weights
        self.teacher = build_model(cfg).to(info.device)
        self.teacher.load_state_dict(student.state_dict())
        self.teacher.requires_grad_(False)
        self.teacher.train(cfg.teacher_drop_path)

        self.loss = EndoFMLoss(
            cfg.out_dim,
            cfg.n_global,
            cfg.n_views,
            teacher_temp=cfg.teacher_temp,
            warmup_teacher_temp=cfg.warmup_teacher_temp,
            warmup_teacher_temp_epochs=cfg.warmup_teacher_temp_epochs,
            epochs=cfg.epochs,
            student_temp=cfg.student_temp,
            center_momentum=cfg.center_momentum,
            cv_weight=cfg.cv_weight,
            dm_weight=cfg.dm_weight,
            centering=cfg.centering,
            sinkhorn_iterations=cfg.sinkhorn_iterations,
        ).to(info.device)
        self.optimizer = torch.optim.AdamW(param_groups(student))
        self.scaler = grad_scaler(self.precision, info.device)

        spe = self.steps_per_epoch
        self.base_lr = cfg.lr * self.global_batch / 256
        self.lr = cosine_schedule(self.base_lr, cfg.min_lr, cfg.epochs, spe, warmup_epochs=cfg.warmup_epochs)
        self.wd = cosine_schedule(cfg.weight_decay, cfg.weight_decay_end, cfg.epochs, spe)
        self.momentum = cosine_schedule(cfg.momentum_teacher, 1.0, cfg.epochs, spe)

        self.start_epoch, self.step, self.skip, self.meter_state, self.history = 0, 0, 0, None, None
        self._resume(on_config_change)

    @property
    def student_module(self) -> MultiViewModel:
        return unwrap(self.student)

    def _resume(self, on_config_change: OnConfigChange) -> None:
        info, spe = self.info, self.steps_per_epoch
        ckpt = load_training_checkpoint(self.out_dir)
        path = checkpoint_path(self.out_dir)
        problem = None if ckpt is None else _resume_problem(ckpt, self.cfg, spe, path)
        if problem is not None:
            if on_config_change == "error":
                raise problem
            self._supersede(problem)
            ckpt = None
        if ckpt is None:
            seed_everything(self.cfg.seed, info.rank)
            return
        self.student_module.load_state_dict(ckpt["student"])
        self.teacher.load_state_dict(ckpt["teacher"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["scaler"])
        self.loss.center.copy_(ckpt["center"])
        extra = ckpt.get("extra", {})
        self.start_epoch, self.step = int(ckpt["epoch"]), int(ckpt["step"])
        saved_spe = int(extra.get("steps_per_epoch", spe))
        self.skip = self.step - self.start_epoch * saved_spe  # checked by _resume_problem
        if saved_spe != spe:
            log.warning(
                "%s: %d steps per epoch before, %d now; the schedules continue from epoch %d",
                path,
                saved_spe,
                spe,
                self.start_epoch,
            )
            self.step = self.start_epoch * spe
        self.meter_state = extra.get("epoch_meter") if self.skip else None
        self.history = extra.get("metrics")
        if extra.get("world_size", info.world_size) != info.world_size:
            log.warning(
                "%s: written by %d process(es), resumed by %d: the global batch and data order change, so the "
                "run is not equivalent to an uninterrupted one",
                path,
                extra.get("world_size"),
                info.world_size,
            )
        if not restore_rng_states(extra.get("rng_all_ranks", [ckpt["rng"]]), info):
            seed_everything(self.cfg.seed + self.step, info.rank)

    def _supersede(self, problem: Exception) -> None:
        """Move the previous run's files into ``out_dir/superseded/`` (replacing an older one) to start afresh."""
        target = self.out_dir / SUPERSEDED_NAME
        barrier(self.info)  # every rank has read the old checkpoint
        if self.info.is_main:
            log.warning("%s; restarting from scratch, the previous run moves to %s", problem, target)
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            for name in (CHECKPOINT_NAME, METRICS_NAME, CONFIG_NAME, BACKBONE_NAME):
                if (self.out_dir / name).exists():
                    os.replace(self.out_dir / name, target / name)
            for numbered in self.out_dir.glob("checkpoint_*.pt"):
                os.replace(numbered, target / numbered.name)
        barrier(self.info)

    def _save(self, epoch: int, meter: EpochMeter | None, epoch_end: bool) -> Path:
        rng = gather_rng_states(self.info)
        extra = {
            "steps_per_epoch": self.steps_per_epoch,
            "world_size": self.info.world_size,
            "global_batch": self.global_batch,
            "rng_all_ranks": rng,
            "metrics": self.metrics.rows,  # metrics.csv is rebuilt from these on resume
        }
        if meter is not None:
            extra["epoch_meter"] = meter.state_dict()
        return save_training_checkpoint(
            self.out_dir,
            self.info,
            epoch=epoch,
            keep_every=self.cfg.checkpoint_every,
            epoch_end=epoch_end,
            config=to_dict(self.cfg),
            step=self.step,
            teacher=self.teacher.state_dict(),
            student=self.student_module.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict(),
            center=self.loss.center.detach().cpu(),
            rng=rng[0],
            extra=extra,
        )

    def _write_config(self) -> None:
        if not self.info.is_main:
            return
        run = {
            "clips": sorted(set(self.clips["manifest"])),
            "num_clips": len(self.clips),
            "out_dir": str(self.out_dir),
            "world_size": self.info.world_size,
            "device": str(self.info.device),
            "precision": self.precision,
            "global_batch": self.global_batch,
            "base_lr": self.base_lr,
            "steps_per_epoch": self.steps_per_epoch,
            "start_epoch": self.start_epoch,
            "start_step": self.step,
            "parameters": sum(p.numel() for p in self.student_module.parameters()),
            "versions": package_versions(),
        }
        text = "# Resolved pretraining settings; `pretrain:` can be passed back with --config.\n"
        write_text(
            self.out_dir / CONFIG_NAME,
            text + yaml.safe_dump({"pretrain": to_dict(self.cfg), "run": run}, sort_keys=False),
        )

    def _train_step(self, views: list[torch.Tensor], epoch: int) -> dict[str, float]:
        """One optimiser step at global iteration ``self.step``; returns the rank-averaged statistics."""
        it, cfg, device = self.step, self.cfg, self.info.device
        for i, group in enumerate(self.optimizer.param_groups):
            group["lr"] = float(self.lr[it])
            if i == 0:  # only the first group is decayed
                group["weight_decay"] = float(self.wd[it])
        views = [v.to(device, non_blocking=True) for v in views]
        with autocast(self.precision, device):
            with torch.no_grad():
                teacher_out = self.teacher(views[: cfg.n_global])
            student_out = self.student(views)
        out = self.loss(student_out, teacher_out, epoch)
        stats = reduce_mean(
            {k: out[k] for k in ("loss", "cv", "dm", "teacher_entropy", "batch_entropy", "center_norm")}, self.info
        )
        check_finite(stats["loss"], epoch=epoch, step=it, checkpoint=checkpoint_path(self.out_dir))

        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out["loss"]).backward()
        if cfg.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            clip_gradients(self.student_module, cfg.clip_grad)
        cancel_last_layer_gradients(self.student_module, epoch, cfg.freeze_last_layer)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        ema_update(self.teacher, self.student_module, float(self.momentum[it]))
        self.step += 1
        return stats

    def run(self) -> Path:
        cfg, info, spe = self.cfg, self.info, self.steps_per_epoch
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        log.info(
            "pretraining %d clips on %d process(es) (%s, %s): %d steps/epoch, global batch %d, lr %.3g, epochs %d-%d",
            len(self.clips),
            info.world_size,
            info.device,
            self.precision,
            spe,
            self.global_batch,
            self.base_lr,
            self.start_epoch,
            cfg.epochs - 1,
        )
        self.metrics = MetricsLog(
            self.out_dir / METRICS_NAME, start_epoch=self.start_epoch, enabled=info.is_main, history=self.history
        )
        with PreemptionHandler() as preempt:
            for epoch in range(self.start_epoch, cfg.epochs):
                skip = self.skip if epoch == self.start_epoch else 0
                set_loader_epoch(self.loader, epoch, skip_batches=skip)
                meter = EpochMeter(self.meter_state if skip else None)
                self.student.train()
                stop = False
                batches = itertools.islice(self.loader, spe - skip)
                bar = progress(batches, info, total=spe - skip, desc=f"epoch {epoch}/{cfg.epochs}")
                for views in bar:
                    stats = self._train_step(views, epoch)
                    meter.update(stats, self.global_batch)
                    bar.set_postfix(loss=f"{stats['loss']:.4f}", refresh=False)
                    if preempt.should_stop(info):
                        stop = True
                        break
                bar.close()
                if meter.steps < spe:  # interrupted part-way: a mid-epoch checkpoint
                    path = self._save(epoch, meter, epoch_end=False)
                    raise self._preempted(preempt, epoch, path)
                last = self.step - 1
                summary = meter.summary()
                self.metrics.append(
                    {
                        "epoch": epoch,
                        **{k: summary[k] for k in ("loss", "cv", "dm")},
                        "lr": float(self.lr[last]),
                        "wd": float(self.wd[last]),
                        "momentum": float(self.momentum[last]),
                        **{
                            k: summary[k]
                            for k in ("teacher_entropy", "batch_entropy", "center_norm", "steps", "seconds")
                        },
                        "clips_per_s": summary["items_per_s"],
                    }
                )
                path = self._save(epoch + 1, None, epoch_end=True)
                log.info("epoch %d: loss %.4f, %.1f s -> %s", epoch, summary["loss"], summary["seconds"], path)
                stop = stop or preempt.should_stop(info)  # a signal during the save
                if stop and epoch + 1 < cfg.epochs:
                    raise self._preempted(preempt, epoch + 1, path)
        if info.is_main:
            export_backbone(self.teacher, self.out_dir / BACKBONE_NAME)
        barrier(info)
        return checkpoint_path(self.out_dir)

    def _preempted(self, preempt: PreemptionHandler, epoch: int, path: Path) -> Preempted:
        name = signal.Signals(preempt.received).name if preempt.received is not None else "a signal on another rank"
        message = f"stopped by {name} at epoch {epoch}, step {self.step}; {path} written, rerun to resume"
        if self.info.is_main:
            log.warning("%s", message)
        return Preempted(message)


def pretrain(
    cfg: PretrainConfig,
    clip_manifests: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    workers: int | None = None,
    on_config_change: OnConfigChange = "error",
) -> Path:
    """Pretrain as ``cfg`` says on the clips of ``clip_manifests`` (``clips.csv`` files); returns
    ``out_dir/checkpoint.pt``. Resumes from that file when present. Under torchrun every process
    calls this; outside it, one process trains alone. ``workers`` overrides ``cfg.num_workers``.
    When the checkpoint there cannot be continued (other settings, or written part-way through an
    epoch for other data), ``on_config_change="error"`` raises and ``"restart"`` moves the previous
    run's files into ``out_dir/superseded/`` and starts afresh.

    Raises :class:`~endofm.engine.Preempted` (a ``SystemExit`` with status 75) after writing a
    checkpoint on SIGTERM/SIGUSR1, and :class:`~endofm.engine.NonFiniteLossError` on a NaN/inf loss.
    """
    out_dir = Path(out_dir)
    with distributed_session(cfg.device) as info:
        return _Pretraining(cfg, [Path(p) for p in clip_manifests], out_dir, workers, info, on_config_change).run()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m endofm.pretraining.train",
        description="Endo-FM pretraining (one process, or every process of a torchrun launch).",
    )
    parser.add_argument("--config", type=Path, required=True, help="YAML file with a 'pretrain:' section")
    parser.add_argument("--clips", type=Path, nargs="+", required=True, help="clips.csv manifests")
    parser.add_argument("--out", type=Path, required=True, help="output folder (resumed if it holds a checkpoint)")
    parser.add_argument("--workers", type=int, default=None, help="data-loading workers per process")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per process: one per data-loading worker, torch's intra-op threads the rest (at least 1); "
        "default: torch's own choice",
    )
    parser.add_argument(
        "--on-config-change",
        choices=["error", "restart"],
        default="error",
        help="when the checkpoint in --out cannot be continued with these settings: fail (default), or move "
        "the previous run to OUT/superseded/ and start afresh",
    )
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    setup_logging(logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING)
    cfg = load_pretrain_config(args.config)
    if args.threads is not None:
        workers = cfg.num_workers if args.workers is None else args.workers
        intra = set_cpu_threads(args.threads, workers)
        log.info("%d thread(s): %d torch intra-op, %d data-loading worker(s)", args.threads, intra, workers)
    pretrain(cfg, args.clips, args.out, workers=args.workers, on_config_change=args.on_config_change)
    return 0


__all__ = [
    "BACKBONE_NAME",
    "CONFIG_NAME",
    "METRICS_NAME",
    "SVT_CHECKPOINT",
    "SVT_URL",
    "PretrainConfig",
    "build_model",
    "export_backbone",
    "init_checkpoint",
    "load_init_checkpoint",
    "load_pretrain_config",
    "main",
    "pretrain",
]

if __name__ == "__main__":
    sys.exit(main())
