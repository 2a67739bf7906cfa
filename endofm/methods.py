"""The methods of the experiment matrix: how each pretrains, what backbone the tasks get, what trains.

A method is one :class:`Method` in :data:`METHODS` (plus, if it brings its own objective or backbone, one
module): the workflow, the pretraining command and the fine-tuning runs only ever go through this table.

===============  ===============================  ==================  ===============================
method           pretraining (objective)          backbone for tasks  trains in ``full`` / ``frozen``
===============  ===============================  ==================  ===============================
``endofm``       Endo-FM on video views           video ViT           everything / the head
``scratch``      none (random initialisation)     video ViT           everything / the head
``vcl``          VCL (:mod:`endofm.pretraining.vcl`)  video ViT       everything / the head
``st_adapter``   none from a weights file (CLIP);  ST-Adapter          adapters + head / the head
                 from ``random``: Endo-FM on
                 1-frame views
===============  ===============================  ==================  ===============================

Every pretrained method has a start (:meth:`Method.start`), its ``init``: ``random`` or a weights file.
Endo-FM and VCL pretrain from it (``pretrain.settings.init``; VCL takes the same unless ``pretrain.vcl.init``
says otherwise); ST-Adapter adapts its file directly (``pretrain.st_adapter.init``, CLIP ViT-B/16 as the
original) and pretrains its image ViT only when it starts from ``random``. Pretraining variants (the
ablations' arms) are overlays on ``pretrain.settings``: Endo-FM takes them whole, VCL the keys it shares
with Endo-FM (the loop's and ``init``), ST-Adapter its image ViT's pretraining and an ``init`` as its start.

Every backbone keeps the one interface the tasks use (``forward_features(x, dense=...)`` returning the
tokens or :class:`~endofm.models.vit.DenseFeatures`, ``embed_dim``, ``patch_size``). A name that is not
in :data:`METHODS` is a checkpoint file fine-tuned as a method (``finetune.checkpoints``): a video ViT.

Layer: methods (docs/architecture.md), above pretraining and below tasks: the fine-tuning runs look their
method's backbone up here. May import: foundation, data, models, engine, pretraining.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from endofm.config import ConfigError, from_dict, load_yaml, merge, to_dict
from endofm.engine import seed_everything
from endofm.models.checkpoint import (
    file_backbone,
    is_clip_state,
    load_backbone_state,
    load_pretrained_backbone,
    read_checkpoint_dict,
)
from endofm.models.st_adapter import AdapterConfig, build_st_adapter, load_image_backbone
from endofm.models.vit import BackboneConfig, build_backbone
from endofm.pretraining import vcl
from endofm.pretraining.contract import Objective
from endofm.pretraining.endofm import EndoFMObjective, PretrainConfig


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
        if checkpoint is not None:
            return load_pretrained_backbone(checkpoint, config).train()
        seed_everything(seed)
        return build_backbone(config)

    def trainable(self, backbone: nn.Module, mode: str) -> list[nn.Parameter]:
        return list(backbone.parameters()) if mode == "full" else []


class STAdapter(TaskBackbone):
    """A frozen image ViT run frame by frame with ST-Adapters (:mod:`endofm.models.st_adapter`): only the
    adapters train in ``full`` mode; ``frozen`` mode has no adapters (the frozen image ViT's features, the
    head alone trains). ``options["adapter"]`` holds the ``AdapterConfig`` fields, ``options["normalization"]``
    the backbone's input normalisation (``clip``: ImageNet-normalised input turned into CLIP's, for a CLIP
    file only; other starts take the task's input as it is). A CLIP
    weights file selects CLIP's architecture whatever ``config`` says
    (:func:`~endofm.models.checkpoint.file_backbone`), then loads strictly. The backbone always runs in eval
    mode (the adapters have no dropout or norm). TransUNet's hybrid encoder runs the backbone's blocks
    itself, past the adapters, so only the light decoder segments with it."""

    segmentation_decoders = ("light",)

    def build(
        self,
        config: BackboneConfig,
        checkpoint: str | Path | None,
        seed: int,
        options: Mapping[str, Any],
        mode: str = "full",
    ) -> nn.Module:
        seed_everything(seed)
        adapter = from_dict(AdapterConfig, dict(options.get("adapter", {})), "adapter") if mode == "full" else None
        state = None if checkpoint is None else read_checkpoint_dict(checkpoint)
        clip = state is not None and is_clip_state(load_backbone_state(state))
        if state is not None:
            config = file_backbone(state, config)
        model = build_st_adapter(config, adapter, options.get("normalization", "task") if clip else "task")
        if state is not None:
            load_image_backbone(model, state, source=str(checkpoint))
        return model.train()

    def trainable(self, backbone: nn.Module, mode: str) -> list[nn.Parameter]:
        return list(backbone.adapter_parameters()) if mode == "full" else []

    def eval_backbone(self, mode: str) -> bool:
        return True

    def options(self, stage: Any) -> dict[str, Any]:
        return {"adapter": dict(stage.st_adapter.adapter), "normalization": stage.st_adapter.normalization}


VIDEO_VIT = VideoViT()
ST_ADAPTER = STAdapter()


def single_frame_views(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` (a plain :class:`~endofm.pretraining.endofm.PretrainConfig` dict) with every view one frame long."""
    views = dict(settings.get("views", {}))
    for key in ("global_frames", "local_frames"):
        views[key] = [1] * len(views[key])
    return {**settings, "views": views}


#: Backbone settings that do not depend on the preset (kept when an overlay names another preset).
_RUNTIME_BACKBONE = ("pos_interp", "time_interp", "attention", "grad_checkpointing")


def merge_settings(base: Mapping[str, Any], overlay: Mapping[str, Any] | None) -> dict[str, Any]:
    """:func:`~endofm.config.merge` of an overlay on resolved settings, except that an overlay naming another
    backbone preset (``backbone: {name: ...}``) takes that preset's sizes and architecture: the resolved
    fields of the old preset are dropped, not carried over (only the run-time ones are kept)."""
    overlay = dict(overlay or {})
    name = (overlay.get("backbone") or {}).get("name")
    backbone = base.get("backbone")
    if name is not None and isinstance(backbone, Mapping) and name != backbone.get("name"):
        base = {**base, "backbone": {k: backbone[k] for k in _RUNTIME_BACKBONE if k in backbone}}
    return merge(dict(base), overlay)


def variant_overlay(cfg: Any, variant: str) -> dict[str, Any]:
    """The overlay on ``pretrain.settings`` that defines pretraining variant ``variant`` ({} for none)."""
    overlay = cfg.pretrain_overlays().get(variant)
    return dict(overlay) if isinstance(overlay, Mapping) else {}


def endofm_settings(cfg: Any, variant: str) -> PretrainConfig:
    """Endo-FM's settings of ``variant`` of the workflow config ``cfg``
    (:class:`~endofm.settings.WorkflowConfig`): a named variant of ``pretrain.variants`` or an ablation arm."""
    return cfg.pretrain_variant(variant)


#: What VCL takes from Endo-FM's settings of a variant: the loop's settings and the start.
VCL_SHARED = (*vcl.SHARED_SETTINGS, "init")


def vcl_settings(cfg: Any, variant: str) -> vcl.VCLConfig:
    """VCL's settings of ``variant``: the loop's settings and ``init`` of Endo-FM's settings of that variant
    (:data:`VCL_SHARED`: the same budget and start), then the ``pretrain.vcl`` overlay, then the variant's
    own overlay again for those keys (an ablation arm's ``init: random`` wins over ``pretrain.vcl.init``).
    Other keys in a variant's overlay are an error: VCL has no such setting."""
    overlay = variant_overlay(cfg, variant)
    overlay.pop("init_head", None)  # VCL's start is a backbone alone: Endo-FM's head switch means nothing to it
    foreign = sorted(set(overlay) - set(VCL_SHARED))
    if foreign:
        raise ConfigError(
            f"variant {variant!r}: vcl takes only the loop's settings and init from a variant, not {', '.join(foreign)}"
        )
    base = to_dict(cfg.pretrain_variant(variant))
    shared = {k: base[k] for k in VCL_SHARED}
    settings = merge_settings(merge_settings(shared, cfg.pretrain.vcl), overlay)
    return from_dict(vcl.VCLConfig, settings, "pretrain.vcl")


def st_adapter_settings(cfg: Any, variant: str) -> PretrainConfig:
    """ST-Adapter's image ViT pretraining, used when it starts from ``random`` (:func:`st_adapter_start`): the
    Endo-FM settings of ``variant`` (the same corpus, objective and budget) with every view one frame long
    (T = 1), the backbone an image ViT (``attention_type: space_only``) initialised at random, then
    ``pretrain.st_adapter.settings`` (an overlay naming another backbone preset takes that preset whole)."""
    stage = cfg.pretrain
    base = single_frame_views(to_dict(cfg.pretrain_variant(variant)))
    if "attention_type" in base["backbone"]:  # a per-frame image ViT where the backbone module offers it
        base["backbone"] = {**base["backbone"], "attention_type": "space_only"}
    if "init" in base:  # random weights: Endo-FM's start, SVT's video ViT, has temporal modules an image ViT lacks
        base["init"] = "random"
    settings = merge_settings(base, stage.st_adapter.settings)
    return from_dict(PretrainConfig, settings, "pretrain.st_adapter.settings")


def st_adapter_start(cfg: Any, variant: str) -> str:
    """ST-Adapter's start: ``pretrain.st_adapter.init`` (a weights file, adapted as it is, or ``random``), or
    the ``init`` of ``variant``'s overlay (an ablation arm's)."""
    return str(variant_overlay(cfg, variant).get("init", cfg.pretrain.st_adapter.init))


@dataclass(frozen=True)
class Method:
    """One method of the experiment matrix.

    - ``objective``: the :class:`~endofm.pretraining.contract.Objective` its pretraining trains with
      (None: not pretrained);
    - ``task_backbone``: how its fine-tuning runs build and train the backbone (:class:`TaskBackbone`);
    - ``config_section``: the attribute of the workflow's ``pretrain:`` stage holding its settings;
    - ``resolve_settings``: ``(workflow config, variant) -> settings`` of its objective's config class;
    - ``has_variants``: the main matrix fine-tunes every named overlay of ``pretrain.variants``
      (``finetune.variants``); other pretrained methods run ``default`` there, and an ablation's arms where
      the ablation lists them (``ablations.<name>.methods``);
    - ``resolve_start``: ``(workflow config, variant) -> init`` when the start is not its settings' ``init``;
    - ``adapts_start``: a weights file as start replaces its pretraining (the file is fine-tuned as it is);
    - ``step_cost``: CPU time of one pretraining step relative to Endo-FM's at the same settings, measured with
      ``benchmarks/bench_pretrain_step.py`` (docs/decisions.md: Pretraining throughput). The workflow starts the
      longest pretraining first (:meth:`~endofm.settings.WorkflowConfig.pretrain_priority`).
    """

    objective: type[Objective] | None
    task_backbone: TaskBackbone
    config_section: str | None = None
    resolve_settings: Callable[[Any, str], Any] | None = None
    has_variants: bool = False
    resolve_start: Callable[[Any, str], str] | None = None
    adapts_start: bool = False
    step_cost: float = 1.0

    @property
    def pretrained(self) -> bool:
        return self.objective is not None

    def settings(self, cfg: Any, variant: str) -> Any:
        """The pretraining settings of ``variant`` resolved from the workflow config ``cfg``."""
        if self.resolve_settings is None:
            raise ValueError("this method is not pretrained")
        return self.resolve_settings(cfg, variant)

    def start(self, cfg: Any, variant: str) -> str:
        """The weights ``variant`` starts from: ``random`` or a file path (``random`` for scratch)."""
        if not self.pretrained:
            return "random"
        if self.resolve_start is not None:
            return self.resolve_start(cfg, variant)
        return str(getattr(self.settings(cfg, variant), "init", "random"))

    def external_weights(self, cfg: Any, variant: str) -> str | None:
        """The weights file that replaces ``variant``'s pretraining (an adapted start), or None."""
        start = self.start(cfg, variant) if self.adapts_start else "random"
        return None if start == "random" else start


METHODS: dict[str, Method] = {
    "endofm": Method(EndoFMObjective, VIDEO_VIT, "settings", endofm_settings, has_variants=True),
    "scratch": Method(None, VIDEO_VIT),
    # VCL's step runs six full-size streams (2.20 CPU-s against Endo-FM's 1.16 at the demo's settings, fp32).
    "vcl": Method(vcl.VCLObjective, VIDEO_VIT, "vcl", vcl_settings, step_cost=1.9),
    "st_adapter": Method(
        EndoFMObjective,
        ST_ADAPTER,
        "st_adapter",
        st_adapter_settings,
        resolve_start=st_adapter_start,
        adapts_start=True,
        step_cost=0.25,  # one-frame views through an image ViT: 0.28 CPU-s a step
    ),
}


def get_method(name: str) -> Method:
    """The registered method ``name`` (a ValueError naming the known ones otherwise)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


def task_backbone(method: str) -> TaskBackbone:
    """How runs of ``method`` build and train their backbone; a checkpoint file's method is a video ViT."""
    return METHODS[method].task_backbone if method in METHODS else VIDEO_VIT


def pretrain_method(path: str | Path, data: Mapping[str, Any] | None = None) -> str:
    """The method a pretraining settings file names (top-level ``method``; ``endofm`` when absent)."""
    data = load_yaml(path) if data is None else data
    method = data.get("method", "endofm")
    if method not in METHODS or not METHODS[method].pretrained:
        known = ", ".join(n for n, m in METHODS.items() if m.pretrained)
        raise ConfigError(f"{path}: method {method!r} is not a pretrained method; expected one of {known}")
    return method


def load_pretrain_config(path: str | Path) -> Any:
    """The ``pretrain:`` section of a YAML file as the settings of its ``method`` (top-level key, default
    ``endofm``): a :class:`~endofm.pretraining.endofm.PretrainConfig` for Endo-FM, the objective's own
    config class for others (missing keys take defaults)."""
    data = load_yaml(path)
    if "pretrain" not in data:
        raise ConfigError(f"{path}: no 'pretrain' section (top-level keys: {', '.join(map(str, data)) or 'none'})")
    objective = METHODS[pretrain_method(path, data)].objective
    return from_dict(objective.config_class, data["pretrain"] or {}, f"{path}: pretrain")


__all__ = [
    "METHODS",
    "ST_ADAPTER",
    "VIDEO_VIT",
    "Method",
    "STAdapter",
    "TaskBackbone",
    "VideoViT",
    "endofm_settings",
    "get_method",
    "load_pretrain_config",
    "merge_settings",
    "pretrain_method",
    "single_frame_views",
    "st_adapter_settings",
    "st_adapter_start",
    "task_backbone",
    "variant_overlay",
    "vcl_settings",
]
