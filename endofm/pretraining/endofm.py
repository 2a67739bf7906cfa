"""Endo-FM's pretraining (docs/original.md §3.5, §3.6): its settings (:class:`PretrainConfig`) and its
objective (:class:`EndoFMObjective`), a plug-in of the shared loop (:mod:`endofm.pretraining.train`).

The student (backbone + DINO head) sees every view of a clip, the teacher (an EMA of the student, no
gradients) only the global views; :class:`~endofm.pretraining.objective.EndoFMLoss` matches them.
AdamW with per-iteration cosine schedules for the learning rate (linear warm-up), the weight decay
and the teacher momentum, per-tensor gradient clipping and a frozen last layer in the first
epoch(s): the official recipe, with :class:`PretrainConfig` holding its defaults.

Layer: pretraining (docs/architecture.md). May import: foundation, data, models, engine and the
pretraining modules below the loop (``contract``, ``objective``, ``views``), not :mod:`~endofm.pretraining.train`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from endofm.config import ConfigError
from endofm.data.sources import SOURCES, SVT_K400_FILE
from endofm.engine import cosine_schedule
from endofm.models.checkpoint import CheckpointError, legacy_to_parametrized, load_backbone, read_checkpoint_file
from endofm.models.heads import DINOHead
from endofm.models.vit import BackboneConfig, build_backbone
from endofm.pretraining.contract import Objective, check_snapshots
from endofm.pretraining.objective import EndoFMLoss, MultiViewModel, cancel_last_layer_gradients, ema_update
from endofm.pretraining.views import MultiViewDataset, ViewConfig

log = logging.getLogger(__name__)

#: The original's starting point, SVT's Kinetics-400 self-supervised ViT-B (docs/original.md §2.4, §3.6): where
#: the default ``init`` expects it (the folder the workflow's ``download_svt_k400`` target fills), and its URL.
SVT_CHECKPOINT = f"resources/raw/svt_k400/{SVT_K400_FILE}"
SVT_URL = SOURCES["svt_k400"].downloads[0].url


@dataclass
class PretrainConfig:
    """Pretraining settings; the defaults are the official recipe (docs/original.md §3.5, §3.6).

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
    init_head: bool = True  # False: only the backbone comes from init (e.g. a backbone.pt)
    # Dynamic positional encoding (SVT's): views keep their own frame counts and time_embed is resized
    # to each; False samples every view at backbone.num_frames frames, so time_embed is used at its
    # stored length (the "fixed T" ablation; local crops still resize the spatial grid).
    dynamic_pos_embed: bool = True
    data_fraction: float = 1.0  # share of each clip manifest used, drawn with `seed`
    checkpoint_every: int = 5  # numbered copies; 0 keeps only checkpoint.pt
    max_steps_per_epoch: int | None = None  # cap for tests and demos
    # Backbone snapshots at these fractions of the run's optimiser steps (0: the initial weights), see
    # snapshot_path; the workflow derives them from finetune.pretrain_fractions.
    snapshots: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_snapshots(self.snapshots)
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
    def sampled_views(self) -> ViewConfig:
        """The views as sampled: ``views``, or with ``dynamic_pos_embed`` off every view at
        ``backbone.num_frames`` frames."""
        if self.dynamic_pos_embed:
            return self.views
        t = self.backbone.num_frames
        return dataclasses.replace(
            self.views,
            global_frames=(t,) * len(self.views.global_frames),
            local_frames=(t,) * len(self.views.local_frames),
        )

    @property
    def n_global(self) -> int:
        return len(self.views.global_frames)

    @property
    def n_views(self) -> int:
        return len(self.views.global_frames) + len(self.views.local_frames)


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
            f"checkpoint: download {SVT_URL} to {path} (the workflow's download_svt_k400 target does, into "
            "resources/raw/svt_k400/) or set init to where it is, or set init: random to start from random weights"
        )
    return path


def load_init_checkpoint(model: MultiViewModel, path: str | os.PathLike, head: bool = True) -> None:
    """Load backbone and head strictly from an initial checkpoint (SVT's flat ``{backbone.*, head.*}``,
    an official or our pretraining checkpoint (its teacher), ...). A missing head is an error;
    ``head=False`` loads the backbone alone and keeps the head's random initialisation."""
    raw = read_checkpoint_file(path)
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{path}: expected a dict at the top level, got {type(raw).__name__}")
    load_backbone(model.backbone, raw, which="teacher", strict=True)
    if not head:
        log.info("initialised the backbone from %s (head: random)", path)
        return
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


class EndoFMObjective(Objective):
    """Endo-FM's self-distillation (module docstring): a student (backbone + DINO head) on every view, an
    EMA teacher on the global views, :class:`~endofm.pretraining.objective.EndoFMLoss`; the teacher's
    backbone is exported."""

    name = "endofm"
    config_class = PretrainConfig
    terms = ("loss", "cv", "dm")
    stats = ("teacher_entropy", "batch_entropy", "center_norm")

    def dataset(self, clips: pd.DataFrame) -> Dataset:
        return MultiViewDataset(clips, self.cfg.sampled_views, seed=self.cfg.seed)

    def check(self) -> None:
        init_checkpoint(self.cfg)  # a missing initial checkpoint: one line saying what to download

    def build_model(self) -> MultiViewModel:
        init = init_checkpoint(self.cfg)
        student = build_model(self.cfg)
        if init is None:
            log.info("init: random weights (the original starts from SVT's Kinetics-400 checkpoint)")
        else:
            load_init_checkpoint(student, init, head=self.cfg.init_head)
        return student

    def setup(self, model: nn.Module) -> None:
        cfg, device = self.cfg, self.info.device
        self.teacher = build_model(cfg).to(device)
        self.teacher.load_state_dict(model.state_dict())
        self.teacher.requires_grad_(False)
        self.teacher.train(cfg.teacher_drop_path)
        self.criterion = EndoFMLoss(
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
        ).to(device)

    def schedules(self, steps_per_epoch: int) -> dict[str, np.ndarray]:
        self.momentum = cosine_schedule(self.cfg.momentum_teacher, 1.0, self.cfg.epochs, steps_per_epoch)
        return {"momentum": self.momentum}

    def loss(self, model: nn.Module, views: list[torch.Tensor], epoch: int, step: int) -> dict[str, Any]:
        with torch.no_grad():
            teacher_out = self.teacher(views[: self.cfg.n_global])
        return self.criterion(model(views), teacher_out, epoch)

    def after_backward(self, model: nn.Module, epoch: int) -> None:
        super().after_backward(model, epoch)
        cancel_last_layer_gradients(model, epoch, self.cfg.freeze_last_layer)

    def after_step(self, model: nn.Module, step: int) -> None:
        ema_update(self.teacher, model, float(self.momentum[step]))

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict(), "center": self.criterion.center.detach().cpu()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.criterion.center.copy_(state["center"])

    def export_model(self, model: nn.Module) -> nn.Module:
        return self.teacher


__all__ = [
    "SVT_CHECKPOINT",
    "SVT_URL",
    "EndoFMObjective",
    "PretrainConfig",
    "build_model",
    "init_checkpoint",
    "load_init_checkpoint",
]
