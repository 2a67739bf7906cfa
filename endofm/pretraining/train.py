"""Self-supervised pretraining of a video ViT on unlabelled clips: one loop, objectives as plug-ins.

The loop (:func:`pretrain`) is shared by every pretrained method; an
:class:`~endofm.pretraining.contract.Objective` supplies the views, the model, the loss and the exported
backbone. :data:`OBJECTIVES` lists them: Endo-FM's (:mod:`endofm.pretraining.endofm`) and VCL's
(:mod:`endofm.pretraining.vcl`); the method registry (:mod:`endofm.methods`) says which method trains
with which.

Outputs in ``out_dir``:

- ``checkpoint.pt``: every epoch and at a pre-emption (our format, :mod:`endofm.models.checkpoint`);
  ``checkpoint_{epoch:04d}.pt`` every ``checkpoint_every`` epochs. A run resumes from
  ``checkpoint.pt`` by itself, and with the same settings and process count it continues exactly:
  weights, optimiser, centre, every rank's RNG, the data order and the schedules' position are restored,
  also part-way through an epoch.
- ``metrics.csv``: one row per epoch (means over its steps; lr, wd and momentum at its last step).
  The checkpoint carries the rows too, and a resumed run rebuilds the file from them.
- ``config.yaml``: the resolved settings (``method:`` and a ``pretrain:`` section this module reads
  back) and the run, with its parameter counts.
- ``run.json``: written once training is complete: method, objective, ``parameters`` (the trained
  model), ``trainable_parameters``, ``backbone_parameters`` (the exported backbone), steps, global
  batch, device and ``train_seconds`` (summed over the epochs, resumptions included): the run's cost.
- ``backbone.pt``: written once training is complete, the objective's backbone (Endo-FM: the teacher's) as
  ``{"teacher": {"backbone.<name>": tensor}}``, the layout of the released ``endo_fm.pth`` that the
  official fine-tuning code and :func:`~endofm.models.checkpoint.load_backbone` both read.
- ``snapshots/backbone_pt<percent>.pt`` (with ``snapshots`` set): the same export after ``f × steps`` (rounded half up)
  optimiser steps for each fraction ``f`` (``pt0``: the initial weights), ``step`` recorded in the file and
  in ``run.json``; taken into ``snapshots/taken/`` when the step is reached (kept across pre-emptions)
  and linked into ``snapshots/`` once training is complete.

Command line (one process, or under ``torchrun --nproc_per_node N``, e.g. ``torchrun ... -m endofm.cli
pretrain ...``)::

    endofm pretrain --config config/config.yaml [--method M] [--variant NAME] [--threads N] --clips a/clips.csv b/clips.csv --out DIR

where ``X.yaml`` names the ``method`` (default ``endofm``) and holds its ``pretrain:`` settings.

A run stopped by SIGTERM/SIGUSR1 writes its checkpoint and exits with status
:data:`~endofm.engine.PREEMPTED_EXIT_CODE` (75; under torchrun each worker does, and torchrun itself
exits 1, so launch it with ``python -m endofm.launch``, which exits 75); rerunning the command resumes it. With ``--on-config-change restart`` a checkpoint that
cannot be continued (other settings) is moved to ``out_dir/superseded/`` and training starts afresh.

Layer: pretraining (docs/architecture.md). May import: foundation, data, models, engine and the other
pretraining modules; never :mod:`endofm.methods` or the command line (the registry and the CLI call it).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import shutil
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from torch import nn

from endofm.config import ConfigError, to_dict
from endofm.engine import (
    CHECKPOINT_NAME,
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
    set_loader_epoch,
    unwrap,
    wrap_ddp,
)
from endofm.io import atomic_path, output_lock, write_json, write_text
from endofm.models.checkpoint import CHECKPOINT_KEYS, CheckpointError, package_versions, save_checkpoint
from endofm.pretraining.contract import Objective
from endofm.pretraining.endofm import EndoFMObjective
from endofm.pretraining.vcl import VCLObjective
from endofm.pretraining.views import collate_views, load_clip_manifests

log = logging.getLogger(__name__)

METRICS_NAME = "metrics.csv"
CONFIG_NAME = "config.yaml"
BACKBONE_NAME = "backbone.pt"
RUN_NAME = "run.json"
SUPERSEDED_NAME = "superseded"

OnConfigChange = Literal["error", "restart"]

#: The objectives of the loop by name; a method of :data:`endofm.methods.METHODS` names its own (several
#: methods may share one), and :func:`pretrain` picks the one whose ``config_class`` is the settings' type.
OBJECTIVES: dict[str, type[Objective]] = {"endofm": EndoFMObjective, "vcl": VCLObjective}

#: Settings that may change between a run and its resumption (they do not change the maths). ``init``
#: may move to another path, but not change between ``random`` and a checkpoint.
RESUMABLE_CHANGES = frozenset(
    {"num_workers", "decode_cache_mb", "checkpoint_every", "device", "precision", "init", "init_head", "snapshots"}
)

SNAPSHOTS_DIR = "snapshots"


def snapshot_path(run_dir: str | os.PathLike, fraction: float) -> Path:
    """The backbone of a pretraining run in ``run_dir`` after ``fraction`` of its optimiser steps:
    ``backbone.pt`` for 1, ``snapshots/backbone_pt25.pt`` for 0.25 (``pt0``: the initial weights)."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"pretraining fraction must be in [0, 1], got {fraction}")
    if fraction == 1:
        return Path(run_dir) / BACKBONE_NAME
    return Path(run_dir) / SNAPSHOTS_DIR / f"backbone_pt{fraction * 100:g}.pt"


def taken_snapshot_path(run_dir: str | os.PathLike, fraction: float) -> Path:
    """Where a snapshot is written when its step is reached (``snapshots/taken/``); :func:`snapshot_path`
    gets a hard link to it once the run is complete. Like ``checkpoint.pt`` it is not a workflow output,
    so Snakemake never deletes it and a pre-empted run keeps the snapshots it has passed."""
    path = snapshot_path(run_dir, fraction)
    return path.parent / "taken" / path.name


def snapshot_step(fraction: float, total_steps: int) -> int:
    """The optimiser step at which the snapshot of ``fraction`` is taken: fraction × total_steps rounded
    half up."""
    return math.floor(fraction * total_steps + 0.5)


def export_backbone(model: nn.Module, path: str | os.PathLike, cfg: Any = None, step: int | None = None) -> Path:
    """Write ``model.backbone`` (Endo-FM: the teacher's) as ``{"teacher": {"backbone.<name>": tensor}}`` in
    our tagged format, with the run's settings (``config``, so its backbone is rebuilt without naming it)
    and the optimiser steps behind it (``step``), atomically: the layout every backbone loader reads,
    whichever objective trained it. The official fine-tuning code reads the same ``teacher`` entry."""
    state = {f"backbone.{k}": v.detach().cpu() for k, v in model.backbone.state_dict().items()}
    meta = ({"config": to_dict(cfg)} if cfg is not None else {}) | ({"step": step} if step is not None else {})
    return save_checkpoint(path, teacher=state, **meta)


def count_parameters(module: nn.Module, trainable: bool = False) -> int:
    """Number of (trainable) parameter values of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


def _resume_problem(ckpt: Mapping[str, Any], cfg: Any, spe: int, path: Path) -> Exception | None:
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
    missing = [
        f
        for f in getattr(cfg, "snapshots", [])
        if snapshot_step(f, cfg.epochs * spe) < step and not taken_snapshot_path(path.parent, f).is_file()
    ]
    if missing:
        return CheckpointError(
            f"{path}: is at step {step}, past the snapshots {missing} missing in {path.parent / SNAPSHOTS_DIR}/taken; "
            "they need a run from the start (--on-config-change restart)"
        )
    return None


class _Pretraining:
    """One pretraining run of ``objective``: the state the loop shares, set up by ``__init__``, driven by :meth:`run`."""

    def __init__(
        self,
        objective: Objective,
        clip_manifests: Sequence[Path],
        out_dir: Path,
        workers: int | None,
        on_config_change: OnConfigChange,
        method: str,
    ) -> None:
        cfg, info = objective.cfg, objective.info
        objective.check()
        self.objective, self.method, self.cfg, self.out_dir, self.info = objective, method, cfg, out_dir, info
        self.precision = resolve_precision(cfg.precision, info.device)
        seed_everything(cfg.seed)  # the same initial weights on every rank

        self.clips = load_clip_manifests(clip_manifests, fraction=cfg.data_fraction, seed=cfg.seed)
        self.loader = build_loader(
            objective.dataset(self.clips),
            cfg.batch_size_per_gpu,
            info,
            num_workers=cfg.num_workers if workers is None else workers,
            seed=cfg.seed,
            collate_fn=collate_views,
        )
        self.steps_per_epoch = min(len(self.loader), cfg.max_steps_per_epoch or len(self.loader))
        self.global_batch = cfg.batch_size_per_gpu * info.world_size

        student = objective.build_model()
        self.student = wrap_ddp(student.to(info.device), info)  # DDP broadcasts rank 0's weights
        objective.setup(student)
        self.optimizer = torch.optim.AdamW(objective.param_groups(student))
        self.scaler = grad_scaler(self.precision, info.device)

        spe = self.steps_per_epoch
        self.base_lr = cfg.lr * self.global_batch / 256
        self.lr = cosine_schedule(self.base_lr, cfg.min_lr, cfg.epochs, spe, warmup_epochs=cfg.warmup_epochs)
        self.wd = cosine_schedule(cfg.weight_decay, cfg.weight_decay_end, cfg.epochs, spe)
        self.schedules = objective.schedules(spe)
        self.total_steps = cfg.epochs * spe
        self.snapshots = {f: snapshot_step(f, self.total_steps) for f in getattr(cfg, "snapshots", [])}

        self.start_epoch, self.step, self.skip, self.meter_state, self.history = 0, 0, 0, None, None
        self._resume(on_config_change)

    @property
    def student_module(self) -> nn.Module:
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
        extra = ckpt.get("extra", {})
        self.objective.load_state_dict({**ckpt, **extra.get("objective", {})})
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["scaler"])
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
            for name in (CHECKPOINT_NAME, METRICS_NAME, CONFIG_NAME, BACKBONE_NAME, RUN_NAME, SNAPSHOTS_DIR):
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
        state = self.objective.state_dict()
        top = {k: v for k, v in state.items() if k in CHECKPOINT_KEYS}
        if len(top) < len(state):
            extra["objective"] = {k: v for k, v in state.items() if k not in top}
        return save_training_checkpoint(
            self.out_dir,
            self.info,
            epoch=epoch,
            keep_every=self.cfg.checkpoint_every,
            epoch_end=epoch_end,
            config=to_dict(self.cfg),
            step=self.step,
            student=self.student_module.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict(),
            rng=rng[0],
            extra=extra,
            **top,
        )

    def cost(self) -> dict[str, int]:
        """Parameter counts: the trained model, its trainable part, the exported backbone."""
        model = self.student_module
        return {
            "parameters": count_parameters(model),
            "trainable_parameters": count_parameters(model, trainable=True),
            "backbone_parameters": count_parameters(self.objective.export_model(model).backbone),
        }

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
            **self.cost(),
            "versions": package_versions(),
        }
        text = "# Resolved pretraining settings; `method:` and `pretrain:` can be passed back with --config.\n"
        data = {"method": self.method, "pretrain": to_dict(self.cfg), "run": run}
        write_text(self.out_dir / CONFIG_NAME, text + yaml.safe_dump(data, sort_keys=False))

    def _write_record(self) -> None:
        """``run.json``: what the run cost (parameter counts, steps, seconds) once it is complete."""
        seconds = sum(float(r.get("seconds", 0.0)) for r in self.metrics.rows)
        record = {
            "method": self.method,
            "objective": self.objective.name,
            **self.cost(),
            "epochs": self.cfg.epochs,
            "steps": self.step,
            "steps_per_epoch": self.steps_per_epoch,
            "global_batch": self.global_batch,
            "world_size": self.info.world_size,
            "device": str(self.info.device),
            "precision": self.precision,
            "train_seconds": seconds,
            "snapshots": {
                f"{f:g}": {"step": step, "file": snapshot_path(".", f).as_posix()}
                for f, step in sorted(self.snapshots.items())
            },
            "versions": package_versions(),
        }
        write_json(self.out_dir / RUN_NAME, record)

    def _write_snapshots(self) -> None:
        """Export the backbone as each snapshot due at the current step (rewritten if present: same weights)."""
        due = [f for f, step in self.snapshots.items() if step == self.step]
        if not due or not self.info.is_main:
            return
        model = self.objective.export_model(self.student_module)
        for f in due:
            path = export_backbone(model, taken_snapshot_path(self.out_dir, f), self.cfg, step=self.step)
            log.info("snapshot after %d of %d steps (%g) -> %s", self.step, self.total_steps, f, path)

    def _publish_snapshots(self) -> None:
        """Hard-link (or copy) every taken snapshot to its :func:`snapshot_path` once the run is complete."""
        for f in self.snapshots:
            src, dst = taken_snapshot_path(self.out_dir, f), snapshot_path(self.out_dir, f)
            with atomic_path(dst) as tmp:
                tmp.unlink()
                try:
                    os.link(src, tmp)
                except OSError:
                    shutil.copyfile(src, tmp)

    def _train_step(self, views: list[torch.Tensor], epoch: int) -> dict[str, float]:
        """One optimiser step at global iteration ``self.step``; returns the rank-averaged statistics."""
        it, cfg, device = self.step, self.cfg, self.info.device
        for i, group in enumerate(self.optimizer.param_groups):
            group["lr"] = float(self.lr[it])
            if i == 0:  # only the first group is decayed
                group["weight_decay"] = float(self.wd[it])
        views = [v.to(device, non_blocking=True) for v in views]
        objective = self.objective
        with autocast(self.precision, device):
            out = objective.loss(self.student, views, epoch, it)
        stats = reduce_mean({k: out[k] for k in (*objective.terms, *objective.stats)}, self.info)
        check_finite(stats["loss"], epoch=epoch, step=it, checkpoint=checkpoint_path(self.out_dir))

        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out["loss"]).backward()
        if cfg.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
        objective.after_backward(self.student_module, epoch)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        objective.after_step(self.student_module, it)
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
        self._write_snapshots()  # step 0: the initial weights (or a snapshot due exactly at the resumed step)
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
                    self._write_snapshots()
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
                        **{k: summary[k] for k in self.objective.terms},
                        "lr": float(self.lr[last]),
                        "wd": float(self.wd[last]),
                        **{k: float(v[last]) for k, v in self.schedules.items()},
                        **{k: summary[k] for k in (*self.objective.stats, "steps", "seconds")},
                        "clips_per_s": summary["items_per_s"],
                    }
                )
                path = self._save(epoch + 1, None, epoch_end=True)
                log.info("epoch %d: loss %.4f, %.1f s -> %s", epoch, summary["loss"], summary["seconds"], path)
                stop = stop or preempt.should_stop(info)  # a signal during the save
                if stop and epoch + 1 < cfg.epochs:
                    raise self._preempted(preempt, epoch + 1, path)
        if info.is_main:
            model = self.objective.export_model(self.student_module)
            export_backbone(model, self.out_dir / BACKBONE_NAME, self.cfg, step=self.step)
            self._publish_snapshots()
            self._write_record()
        barrier(info)
        return checkpoint_path(self.out_dir)

    def _preempted(self, preempt: PreemptionHandler, epoch: int, path: Path) -> Preempted:
        name = signal.Signals(preempt.received).name if preempt.received is not None else "a signal on another rank"
        message = f"stopped by {name} at epoch {epoch}, step {self.step}; {path} written, rerun to resume"
        if self.info.is_main:
            log.warning("%s", message)
        return Preempted(message)


def objective_of(cfg: Any) -> type[Objective]:
    """The objective of :data:`OBJECTIVES` whose settings class ``cfg`` is."""
    for objective in OBJECTIVES.values():
        if type(cfg) is objective.config_class:
            return objective
    raise TypeError(f"no pretraining objective takes a {type(cfg).__name__}; known: {', '.join(OBJECTIVES)}")


def pretrain(
    cfg: Any,
    clip_manifests: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    workers: int | None = None,
    on_config_change: OnConfigChange = "error",
    method: str | None = None,
    objective: type[Objective] | None = None,
) -> Path:
    """Pretrain with ``objective`` (default: the one that takes ``cfg``'s type, :func:`objective_of`:
    Endo-FM's for a :class:`~endofm.pretraining.endofm.PretrainConfig`, VCL's for a
    :class:`~endofm.pretraining.vcl.VCLConfig`) as ``cfg`` says on the clips of ``clip_manifests``
    (``clips.csv`` files), recorded as method ``method`` (default: the objective's name); returns
    ``out_dir/checkpoint.pt``. Resumes from that file when present. Under torchrun every process
    calls this; outside it, one process trains alone. Rank 0 holds ``out_dir/.lock``
    (:func:`endofm.io.output_lock`): a second job on the same folder fails at once. ``workers`` overrides ``cfg.num_workers``.
    When the checkpoint there cannot be continued (other settings, or written part-way through an
    epoch for other data), ``on_config_change="error"`` raises and ``"restart"`` moves the previous
    run's files into ``out_dir/superseded/`` and starts afresh.

    Raises :class:`~endofm.engine.Preempted` (a ``SystemExit`` with status 75) after writing a
    checkpoint on SIGTERM/SIGUSR1, and :class:`~endofm.engine.NonFiniteLossError` on a NaN/inf loss.
    """
    objective = objective_of(cfg) if objective is None else objective
    method = objective.name if method is None else method
    if not isinstance(cfg, objective.config_class):
        raise TypeError(f"method {method!r} takes a {objective.config_class.__name__}, got a {type(cfg).__name__}")
    manifests = [Path(p) for p in clip_manifests]
    with distributed_session(cfg.device) as info, output_lock(out_dir, enabled=info.rank == 0):
        return _Pretraining(objective(cfg, info), manifests, Path(out_dir), workers, on_config_change, method).run()


__all__ = [
    "BACKBONE_NAME",
    "CONFIG_NAME",
    "METRICS_NAME",
    "OBJECTIVES",
    "RUN_NAME",
    "SNAPSHOTS_DIR",
    "count_parameters",
    "export_backbone",
    "objective_of",
    "pretrain",
    "snapshot_path",
    "snapshot_step",
    "taken_snapshot_path",
]
