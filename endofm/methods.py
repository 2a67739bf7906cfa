"""The methods of the experiment matrix: how each pretrains, what backbone the tasks get, what trains.

A method is one :class:`Method` in :data:`METHODS` (plus, if it brings its own objective or backbone, one
module): the workflow, the pretraining command and the fine-tuning runs only ever go through this table.

===============  ===============================  ==================  ===============================
method           pretraining (objective)          backbone for tasks  trains in ``full`` / ``frozen``
===============  ===============================  ==================  ===============================
``endofm``       Endo-FM on video views           video ViT           everything / the head
``scratch``      none (random initialisation)     video ViT           everything / the head
``vcl``          VCL (:mod:`endofm.pretraining.vcl`)  video ViT       everything / the head
``st_adapter``   Endo-FM on 1-frame views          ST-Adapter          adapters + head / the head
===============  ===============================  ==================  ===============================

Every backbone keeps the one interface the tasks use (``forward_features(x, dense=...)`` returning the
tokens or :class:`~endofm.models.vit.DenseFeatures`, ``embed_dim``, ``patch_size``). A name that is not
in :data:`METHODS` is a checkpoint file fine-tuned as a method (``finetune.checkpoints``): a video ViT.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from endofm.models.vit import BackboneConfig


@dataclass(frozen=True)
class Method:
    """One method: ``objective`` (a key of :data:`endofm.pretraining.train.OBJECTIVES`, None: not
    pretrained), ``backbone`` (a key of :data:`BACKBONES`), ``section`` (where its settings live under
    ``pretrain:`` in the workflow config), ``resolve`` (``"module:function"`` turning the workflow config
    and a variant into the settings its objective takes) and ``ablations`` (its variants
    are the named overlays of ``pretrain.variants``; other pretrained methods have the one variant
    ``default``)."""

    objective: str | None
    backbone: str
    section: str | None = None
    resolve: str | None = None
    ablations: bool = False

    @property
    def pretrained(self) -> bool:
        return self.objective is not None

    def settings(self, cfg: Any, variant: str) -> Any:
        """The pretraining settings of ``variant`` resolved from the workflow config ``cfg``."""
        if self.resolve is None:
            raise ValueError("this method is not pretrained")
        module, name = self.resolve.split(":")
        return getattr(importlib.import_module(module), name)(cfg, variant)


METHODS: dict[str, Method] = {
    "endofm": Method("endofm", "video_vit", "settings", "endofm.settings:endofm_settings", ablations=True),
    "scratch": Method(None, "video_vit"),
    "vcl": Method("vcl", "video_vit", "vcl", "endofm.pretraining.vcl:workflow_settings"),
    "st_adapter": Method("endofm", "st_adapter", "st_adapter", "endofm.methods:st_adapter_settings"),
}


class TaskBackbone(abc.ABC):
    """What a fine-tuning run does with a method's backbone: build it, and which of its parameters train.
    ``segmentation_decoders``: the CVC-12k decoders it can drive."""

    segmentation_decoders: tuple[str, ...] = ("transunet", "light")

    @abc.abstractmethod
    def build(
        self,
        config: BackboneConfig,
        checkpoint: str | Path | None,
        seed: int,
        options: Mapping[str, Any],
        mode: str = "full",
    ) -> nn.Module:
        """The backbone of a ``mode`` run in training mode: loaded from ``checkpoint``, or drawn from ``seed``
        without one."""

    @abc.abstractmethod
    def trainable(self, backbone: nn.Module, mode: str) -> list[nn.Parameter]:
        """The backbone parameters that train in ``mode`` (``full`` or ``frozen``)."""

    def eval_backbone(self, mode: str) -> bool:
        """Whether the backbone runs in eval mode while the model trains (no stochastic depth in fixed features)."""
        return mode == "frozen"

    def options(self, stage: Any) -> dict[str, Any]:
        """Settings :meth:`build` needs besides the backbone's, from the workflow's ``pretrain`` stage."""
        return {}


class VideoViT(TaskBackbone):
    """The TimeSformer of :mod:`endofm.models.vit`, fine-tuned whole (``full``) or fixed (``frozen``)."""

    def build(
        self,
        config: BackboneConfig,
        checkpoint: str | Path | None,
        seed: int,
        options: Mapping[str, Any],
        mode: str = "full",
    ) -> nn.Module:
        from endofm.engine import seed_everything
        from endofm.features import load_pretrained_backbone
        from endofm.models.vit import build_backbone

        if checkpoint is not None:
            return load_pretrained_backbone(checkpoint, config).train()
        seed_everything(seed)
        return build_backbone(config)

    def trainable(self, backbone: nn.Module, mode: str) -> list[nn.Parameter]:
        return list(backbone.parameters()) if mode == "full" else []


class STAdapter(TaskBackbone):
    """A frozen image ViT run frame by frame with ST-Adapters (:mod:`endofm.models.st_adapter`): only the
    adapters train in ``full`` mode; ``frozen`` mode has no adapters (the frozen image ViT's features, the
    head alone trains). ``options["adapter"]`` holds the ``AdapterConfig`` fields. The backbone always runs
    in eval mode (the adapters have no dropout or norm). TransUNet's hybrid encoder runs the backbone's
    blocks itself, past the adapters, so only the light decoder segments with it."""

    segmentation_decoders = ("light",)

    def build(
        self,
        config: BackboneConfig,
        checkpoint: str | Path | None,
        seed: int,
        options: Mapping[str, Any],
        mode: str = "full",
    ) -> nn.Module:
        from endofm.config import from_dict
        from endofm.engine import seed_everything
        from endofm.models.st_adapter import AdapterConfig, build_st_adapter, load_image_backbone

        seed_everything(seed)
        adapter = from_dict(AdapterConfig, dict(options.get("adapter", {})), "adapter") if mode == "full" else None
        model = build_st_adapter(config, adapter)
        if checkpoint is not None:
            load_image_backbone(model, checkpoint)
        return model.train()

    def trainable(self, backbone: nn.Module, mode: str) -> list[nn.Parameter]:
        return list(backbone.adapter_parameters()) if mode == "full" else []

    def eval_backbone(self, mode: str) -> bool:
        return True

    def options(self, stage: Any) -> dict[str, Any]:
        return {"adapter": dict(stage.st_adapter.adapter)}


BACKBONES: dict[str, TaskBackbone] = {"video_vit": VideoViT(), "st_adapter": STAdapter()}


def get_method(name: str) -> Method:
    """The registered method ``name`` (a ValueError naming the known ones otherwise)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


def task_backbone(method: str) -> TaskBackbone:
    """How runs of ``method`` build and train their backbone; a checkpoint file's method is a video ViT."""
    return BACKBONES[METHODS[method].backbone if method in METHODS else "video_vit"]


def single_frame_views(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` (a plain :class:`~endofm.pretraining.train.PretrainConfig` dict) with every view one frame long."""
    views = dict(settings.get("views", {}))
    for key in ("global_frames", "local_frames"):
        views[key] = [1] * len(views[key])
    return {**settings, "views": views}


def st_adapter_settings(cfg: Any, variant: str) -> Any:
    """ST-Adapter's image ViT pretraining: the Endo-FM settings (``pretrain.settings``: the same corpus,
    objective and budget) with every view one frame long (T = 1), the backbone an image ViT
    (``attention_type: space_only``) initialised at random, then ``pretrain.st_adapter.settings``."""
    from endofm.config import from_dict, to_dict
    from endofm.pretraining.train import PretrainConfig
    from endofm.settings import merge

    if variant != "default":
        raise ValueError(f"st_adapter has the one pretraining variant 'default', got {variant!r}")
    stage = cfg.pretrain
    base = single_frame_views(to_dict(stage.settings))
    if "attention_type" in base["backbone"]:  # a per-frame image ViT where the backbone module offers it
        base["backbone"] = {**base["backbone"], "attention_type": "space_only"}
    if "init" in base:  # random weights: Endo-FM's start, SVT's video ViT, has temporal modules an image ViT lacks
        base["init"] = "random"
    return from_dict(PretrainConfig, merge(base, stage.st_adapter.settings), "pretrain.st_adapter.settings")


__all__ = [
    "BACKBONES",
    "METHODS",
    "Method",
    "STAdapter",
    "TaskBackbone",
    "VideoViT",
    "get_method",
    "single_frame_views",
    "st_adapter_settings",
    "task_backbone",
]
