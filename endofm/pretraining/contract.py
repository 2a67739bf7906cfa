"""The contract between the pretraining loop and an objective: :class:`Objective`, the plug-in that
:func:`endofm.pretraining.train.pretrain` drives, and :func:`check_snapshots`, the check every objective's
settings class runs on its ``snapshots`` field. An objective module (:mod:`endofm.pretraining.endofm`,
:mod:`endofm.pretraining.vcl`) imports this module, not the loop.

Layer: pretraining (docs/architecture.md). May import: foundation, data, models, engine and
:mod:`endofm.pretraining.objective`.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from endofm.engine import DistInfo
from endofm.pretraining.objective import clip_gradients, param_groups


def check_snapshots(fractions: Sequence[float]) -> None:
    """Snapshot fractions must be distinct values in [0, 1)."""
    if any(not 0 <= f < 1 for f in fractions) or len(set(fractions)) < len(fractions):
        raise ValueError(f"snapshots: expected distinct fractions in [0, 1), got {list(fractions)}")


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


__all__ = ["Objective", "check_snapshots"]
