"""The contract between the pretraining loop and an objective: :class:`Objective`, the plug-in that
:func:`endofm.pretraining.train.pretrain` drives, and :class:`LoopConfig`, the loop's settings, which every
objective's settings class extends with its own. An objective module (:mod:`endofm.pretraining.endofm`,
:mod:`endofm.pretraining.vcl`) imports this module, not the loop.

Layer: pretraining (docs/architecture.md). May import: foundation, data, models, engine and
:mod:`endofm.pretraining.objective`.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from endofm.config import check_fields, setting
from endofm.engine import DistInfo
from endofm.models.vit import BackboneConfig
from endofm.pretraining.objective import clip_gradients, param_groups


@dataclass
class LoopConfig:
    """The settings of the shared pretraining loop, the same names and defaults for every objective: backbone,
    budget, optimiser schedules, precision, data loading, checkpoints and snapshots; the defaults are
    Endo-FM's recipe (docs/original.md §3.6). An objective's settings class extends it with its own fields.

    ``epochs`` is 30, not the original's default of 100: the authors call 30 epochs "good enough"
    (Endo-FM issue #16). Every schedule spans ``epochs``, so a 30-epoch run completes its cosine
    decays (unlike stopping a 100-epoch schedule at epoch 30). ``lr`` is for a total batch of 256
    and is scaled by ``batch_size_per_gpu × processes / 256``.
    """

    backbone: BackboneConfig = setting(description="The pretrained backbone", factory=BackboneConfig)
    epochs: int = setting(30, "Pretraining epochs; every schedule spans them", minimum=1)
    batch_size_per_gpu: int = setting(3, "Clips per process and step", minimum=1)
    lr: float = setting(
        5e-4, "Peak learning rate for a total batch of 256 (scaled by the actual batch / 256)", exclusive_minimum=0
    )
    min_lr: float = setting(1e-6, "Final learning rate of the cosine schedule", minimum=0)
    warmup_epochs: int = setting(10, "Epochs of linear learning-rate warm-up (at most epochs)", minimum=0)
    weight_decay: float = setting(0.04, "Weight decay at the start (cosine to weight_decay_end)", minimum=0)
    weight_decay_end: float = setting(0.4, "Weight decay at the end", minimum=0)
    clip_grad: float = setting(3.0, "Gradient-norm clip per parameter tensor; 0 disables", minimum=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = setting("auto", "auto: bf16 on CUDA, fp32 on CPU")
    device: str = setting("auto", "auto (CUDA if available, else CPU), cpu, cuda, ...")
    num_workers: int = setting(
        4, "Data-loading workers per process (the workflow passes its own, from the job's threads)", minimum=0
    )
    decode_cache_mb: float = setting(
        1024,
        "MiB of decoded clips kept in memory when data loads in the training process (num_workers 0), so epochs "
        "after the first skip video decoding; the same frames either way; 0: decode every time",
        minimum=0,
    )
    seed: int = setting(0, "Seed of weights, data order, views and the data_fraction subset")
    data_fraction: float = setting(
        1.0,
        "Share of each source's clips used for pretraining, a subset drawn with seed",
        exclusive_minimum=0,
        maximum=1,
    )
    checkpoint_every: int = setting(
        5, "Epochs between numbered checkpoint copies; 0 keeps only checkpoint.pt", minimum=0
    )
    max_steps_per_epoch: int | None = setting(
        None, "Cap on optimiser steps per epoch, for tests and demos (null: every batch)", minimum=1
    )
    snapshots: list[float] = setting(
        description="Backbone snapshots at these distinct fractions of the run's optimiser steps (0: the initial "
        "weights), written as snapshots/backbone_pt<percent>.pt beside backbone.pt; the workflow adds "
        "finetune.pretrain_fractions below 1 for the runs on that axis",
        factory=list,
        each=dict(minimum=0, exclusive_maximum=1),
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if len(set(self.snapshots)) < len(self.snapshots):
            raise ValueError(f"snapshots: expected distinct fractions, got {self.snapshots}")
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs={self.epochs}], got {self.warmup_epochs}")


class Objective(abc.ABC):
    """A pretraining objective plugged into the shared loop (:func:`pretrain`): how a clip becomes a
    sample, the trained model, its loss, any state besides the model and optimiser, and which backbone
    ``backbone.pt`` holds. The loop owns the rest: data order, DDP, AdamW with cosine lr and weight decay
    (from the settings' ``lr``, ``min_lr``, ``warmup_epochs``, ``weight_decay``, ``weight_decay_end``),
    mixed precision, checkpoints and exact resumption, pre-emption and ``metrics.csv``.

    ``terms`` are the loss and its terms, ``stats`` other per-step statistics: both are keys of
    :meth:`loss`'s result, averaged over ranks and steps into ``metrics.csv`` (terms first, then lr, wd
    and the :meth:`schedules`, then stats).
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    terms: ClassVar[tuple[str, ...]] = ("loss",)
    stats: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: Any, info: DistInfo) -> None:
        self.cfg, self.info = cfg, info

    @abc.abstractmethod
    def dataset(self, clips: pd.DataFrame) -> Dataset:
        """One item per clip, a list of view tensors, collated by :func:`collate_views`."""

    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """The trained model on the CPU (its weights drawn from the seeded global generator)."""

    def check(self) -> None:
        """Fail early (before data loading starts or anything is written) on settings that cannot run."""
        return None

    def setup(self, model: nn.Module) -> None:
        """Build what the objective keeps besides the model (teacher, loss buffers), once ``model`` is on the device."""
        return None

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """AdamW groups: the first one takes the scheduled weight decay."""
        return param_groups(model)

    def schedules(self, steps_per_epoch: int) -> dict[str, np.ndarray]:
        """Per-iteration schedules besides lr and wd, logged at each epoch's last step."""
        return {}

    @abc.abstractmethod
    def loss(self, model: nn.Module, views: list[torch.Tensor], epoch: int, step: int) -> dict[str, Any]:
        """``loss`` (with gradient) and the detached ``terms`` and ``stats`` of one batch (on the device)."""

    def after_backward(self, model: nn.Module, epoch: int) -> None:
        """Act on the (unscaled) gradients before the optimiser step: per-tensor clipping by default."""
        if self.cfg.clip_grad > 0:
            clip_gradients(model, self.cfg.clip_grad)

    def after_step(self, model: nn.Module, step: int) -> None:
        """After the optimiser step of global iteration ``step``."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint besides the model and optimiser (keys of ``CHECKPOINT_KEYS`` go top level)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (``state`` may hold other checkpoint keys too)."""
        return None

    @abc.abstractmethod
    def export_model(self, model: nn.Module) -> nn.Module:
        """The module whose ``.backbone`` goes into ``backbone.pt``."""


__all__ = ["LoopConfig", "Objective"]
