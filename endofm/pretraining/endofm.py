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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from endofm import paths
from endofm.config import ConfigError, setting
from endofm.data.sources import SOURCES, SVT_K400_FILE
from endofm.engine import cosine_schedule
from endofm.models.checkpoint import CheckpointError, legacy_to_parametrized, load_backbone, read_checkpoint_file
from endofm.models.heads import DINOHead
from endofm.models.vit import build_backbone
from endofm.pretraining.contract import LoopConfig, Objective
from endofm.pretraining.objective import EndoFMLoss, MultiViewModel, cancel_last_layer_gradients, ema_update
from endofm.pretraining.views import MultiViewDataset, ViewConfig

log = logging.getLogger(__name__)

#: The original's starting point, SVT's Kinetics-400 self-supervised ViT-B (docs/original.md §2.4, §3.6): where
#: the default ``init`` expects it (the folder the workflow's ``download_svt_k400`` target fills), and its URL.
SVT_CHECKPOINT = f"{paths.RAW}/svt_k400/{SVT_K400_FILE}"
SVT_URL = SOURCES["svt_k400"].downloads[0].url


@dataclass
class PretrainConfig(LoopConfig):
    """Pretraining settings: the loop's (:class:`~endofm.pretraining.contract.LoopConfig`) and Endo-FM's own;
    the defaults are the official recipe (docs/original.md §3.5, §3.6).

    ``init``: the initial student and teacher weights, a checkpoint path (backbone and head, loaded
    strictly; any layout :mod:`endofm.models.checkpoint` reads) or ``random``. The original always starts
    from SVT's Kinetics-400 self-supervised checkpoint, so the default is its path
    (:data:`SVT_CHECKPOINT`) and a run fails at start while the file is missing; random weights must be
    asked for with ``init: random``, which the run's ``config.yaml`` then records.
    """

    views: ViewConfig = setting(description="How a clip becomes views", factory=ViewConfig, after="backbone")
    out_dim: int = setting(65536, "DINO head output dimension (prototypes)", minimum=1)
    hidden_dim: int = setting(2048, "DINO head MLP hidden width", minimum=1)
    bottleneck_dim: int = setting(256, "DINO head bottleneck width before the last layer", minimum=1)
    norm_last_layer: bool = setting(True, "Weight-normalise the head's last layer with a fixed norm")
    freeze_last_layer: int = setting(1, "Epochs with the head's last layer frozen", minimum=0, after="clip_grad")
    momentum_teacher: float = setting(
        0.996, "Teacher EMA momentum at the start, cosine to 1 over the run", minimum=0, maximum=1
    )
    teacher_temp: float = setting(0.04, "Teacher softmax temperature after warm-up", exclusive_minimum=0)
    warmup_teacher_temp: float = setting(0.04, "Teacher temperature at the start of its warm-up", exclusive_minimum=0)
    warmup_teacher_temp_epochs: int = setting(
        0, "Epochs of the teacher-temperature warm-up (0: constant; at most epochs)", minimum=0
    )
    student_temp: float = setting(0.1, "Student softmax temperature", exclusive_minimum=0)
    center_momentum: float = setting(0.9, "Momentum of the teacher centre (centering: center)", minimum=0, maximum=1)
    centering: Literal["center", "sinkhorn"] = setting(
        "center",
        "center: the original's running centre; sinkhorn: Sinkhorn-Knopp equipartition of the teacher targets "
        "over the batch (DINOv2's option), which keeps small-batch CPU runs from collapsing",
    )
    sinkhorn_iterations: int = setting(3, "Sinkhorn-Knopp normalisation rounds (centering: sinkhorn)")
    cv_weight: float = setting(1.0, "Weight of each L_cv (global -> local) term; 0 drops L_cv")
    dm_weight: float = setting(1.0, "Weight of each L_dm (global <-> global) term; 0 drops L_dm")
    teacher_drop_path: bool = setting(
        True,
        "Stochastic depth in the teacher too (the original never puts it in eval mode); false: none (DINO's intent)",
    )
    init: str = setting(
        SVT_CHECKPOINT,
        "Initial student and teacher weights: random, or a checkpoint path (backbone and head, loaded strictly; "
        "any layout endofm reads). The default is where the download_svt_k400 target puts SVT's Kinetics-400 "
        "self-supervised checkpoint, the original's start; a missing file fails the run at start",
        min_length=1,
        after="seed",
    )
    init_head: bool = setting(
        True,
        "false: only the backbone comes from init, the DINO head starts random (e.g. another run's backbone.pt)",
    )
    dynamic_pos_embed: bool = setting(
        True,
        "true: views keep their own frame counts and time_embed is resized to each (SVT's dynamic positional "
        "encoding); false: every view takes backbone.num_frames frames, time_embed at its stored length (fixed T)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.warmup_teacher_temp_epochs > self.epochs:
            raise ValueError(
                f"warmup_teacher_temp_epochs must be in [0, epochs={self.epochs}], got {self.warmup_teacher_temp_epochs}"
            )
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
        return MultiViewDataset(clips, self.cfg.sampled_views, seed=self.cfg.seed, cache_mb=self.cfg.decode_cache_mb)

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
