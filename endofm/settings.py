"""The workflow's configuration as typed objects: one dataclass per section of ``config/*.yaml``.

``config/schema.yaml`` checks the YAML's shape when Snakemake starts; :func:`load_workflow_config`
then builds these objects, which own the defaults and check what a schema cannot (that a source is
in the registry, that synthetic and real sources are not mixed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from endofm.config import ConfigError, from_dict, load_yaml, to_dict
from endofm.data.clips import ClipConfig
from endofm.data.sources import SOURCES, Download
from endofm.data.synthetic import BENCHMARKS, PRETRAIN_SOURCES, SynthConfig
from endofm.methods import METHODS, get_method, task_backbone
from endofm.models.vit import BackboneConfig
from endofm.pretraining.train import PretrainConfig
from endofm.tasks.classify import ClassifyConfig
from endofm.tasks.detect import DetectConfig
from endofm.tasks.finetune import MODES, RunSpec
from endofm.tasks.protocols import PROTOCOLS
from endofm.tasks.segment import SegmentConfig


@dataclass
class DataConfig:
    """Where the data stage reads and writes, and which sources and benchmarks it uses."""

    origin: Literal["synthetic", "real"] = "synthetic"
    raw_dir: str = "resources/synthetic/raw"
    clips_dir: str = "resources/synthetic/clips"
    benchmarks_dir: str = "resources/synthetic/benchmarks"
    downloads_dir: str = "resources/downloads"
    pretrain_sources: list[str] = field(default_factory=lambda: list(PRETRAIN_SOURCES))
    benchmarks: list[str] = field(default_factory=lambda: list(BENCHMARKS))
    download_overrides: dict[str, list[Download]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.pretrain_sources + self.benchmarks + list(self.download_overrides):
            if name not in SOURCES:
                raise ConfigError(f"data: unknown source {name!r}; known: {', '.join(sorted(SOURCES))}")
        for name in self.pretrain_sources:
            if SOURCES[name].kind != "pretrain":
                raise ConfigError(f"data.pretrain_sources: {name!r} is a benchmark, not a pretraining source")
            synthetic = SOURCES[name].access == "builtin"
            if synthetic != (self.origin == "synthetic"):
                raise ConfigError(
                    f"data.pretrain_sources: {name!r} is {'a built-in' if synthetic else 'a real'} source "
                    f"but data.origin is {self.origin!r}"
                )
        for name in self.benchmarks:
            if SOURCES[name].kind != "benchmark":
                raise ConfigError(f"data.benchmarks: {name!r} is not a benchmark")
        if not self.pretrain_sources:
            raise ConfigError("data.pretrain_sources: at least one source is needed")


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overlay`` applied recursively (mappings merge, anything else replaces)."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@dataclass
class STAdapterSettings:
    """ST-Adapter's frozen image ViT and adapters (:class:`endofm.methods.STAdapter`)."""

    # A file of image ViT weights (CLIP ViT-B/16, timm layout) used instead of pretraining the image ViT.
    checkpoint: str | None = None
    # Overlay on its pretraining settings: pretrain.settings (the Endo-FM objective and budget) with 1-frame views.
    settings: dict[str, Any] = field(default_factory=dict)
    # endofm.models.st_adapter.AdapterConfig: layout (12x384 | 24x384), bottleneck, kernel_t.
    adapter: dict[str, Any] = field(default_factory=dict)


@dataclass
class PretrainStage:
    """Pretraining in the workflow: the Endo-FM settings (``settings``) with named variants (ablations) as
    overlays on them, and the other pretrained methods' sections (:data:`endofm.methods.METHODS`), which
    take the budget of ``settings``."""

    gpus: int = 0
    settings: PretrainConfig = field(default_factory=PretrainConfig)
    variants: dict[str, dict[str, Any]] = field(default_factory=lambda: {"default": {}})
    vcl: dict[str, Any] = field(default_factory=dict)  # overlay on VCL's settings (endofm.pretraining.vcl.VCLConfig)
    st_adapter: STAdapterSettings = field(default_factory=STAdapterSettings)

    def __post_init__(self) -> None:
        if self.gpus < 0:
            raise ConfigError(f"pretrain.gpus must be >= 0, got {self.gpus}")
        if not self.variants:
            raise ConfigError("pretrain.variants: at least one variant is needed (e.g. default: {})")
        for name in self.variants:
            self.variant(name)  # fail at start, naming the variant, if an overlay is invalid
        for name, method in METHODS.items():
            if method.pretrained and not method.ablations:
                self.method_settings(name, "default")  # fail at start, naming the section

    def method_settings(self, method: str, variant: str) -> Any:
        """The resolved pretraining settings of a pretrained ``method`` (its objective's config class)."""
        try:
            return get_method(method).settings(self, variant)
        except ValueError as exc:
            raise ConfigError(str(exc) if isinstance(exc, ConfigError) else f"pretrain: {method}: {exc}") from exc

    def method_variants(self, method: str) -> list[str]:
        """The pretraining variants of a pretrained method: every named variant for Endo-FM, ``default`` otherwise."""
        return list(self.variants) if get_method(method).ablations else ["default"]

    def external_checkpoint(self, method: str) -> str | None:
        """A weights file that replaces ``method``'s pretraining (``pretrain.<section>.checkpoint``), or None."""
        return getattr(getattr(self, get_method(method).section or "", None), "checkpoint", None)

    def variant(self, name: str) -> PretrainConfig:
        """The settings of variant ``name``: the shared settings with its overlay applied."""
        if name not in self.variants:
            raise ConfigError(f"pretrain.variants: no variant {name!r}; known: {', '.join(self.variants)}")
        merged = merge(to_dict(self.settings), self.variants[name] or {})
        return from_dict(PretrainConfig, merged, f"pretrain.variants.{name}")


@dataclass
class ExternalCheckpoint:
    """A backbone from a file (the released ``endo_fm.pth`` or any layout
    :mod:`endofm.models.checkpoint` reads) fine-tuned as a method of its own."""

    path: str
    backbone: BackboneConfig = field(default_factory=BackboneConfig)


@dataclass
class FinetuneStage:
    """Fine-tuning and evaluation in the workflow: the experiment matrix and each benchmark's settings.

    Methods (:data:`endofm.methods.METHODS`): ``endofm`` fine-tunes the backbone of every pretraining
    variant in ``variants``; ``vcl`` and ``st_adapter`` their one pretraining (variant ``default``);
    ``scratch`` a randomly initialised backbone of Endo-FM's size (variant ``none``); every name in
    ``checkpoints`` a backbone from that file (variant ``external``).
    """

    methods: list[str] = field(default_factory=lambda: list(METHODS))
    variants: list[str] = field(default_factory=lambda: ["default"])
    checkpoints: dict[str, ExternalCheckpoint] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    protocols: list[str] = field(default_factory=lambda: ["paper", "clean"])
    modes: list[str] = field(default_factory=lambda: ["full", "frozen"])
    gpus: int = 0
    threads: int = 4  # per job: torch threads, and data-loader workers (threads - 1)
    polypdiag: ClassifyConfig = field(default_factory=ClassifyConfig)
    cvc12k: SegmentConfig = field(default_factory=SegmentConfig)
    kumc: DetectConfig = field(default_factory=DetectConfig)

    def __post_init__(self) -> None:
        builtin = set(METHODS)
        for name in self.methods:
            if name not in builtin | set(self.checkpoints):
                raise ConfigError(
                    f"finetune.methods: {name!r} is neither a method ({', '.join(METHODS)}) nor a name in "
                    "finetune.checkpoints"
                )
        clash = builtin & set(self.checkpoints)
        if clash:
            raise ConfigError(f"finetune.checkpoints: {sorted(clash)} are reserved method names")
        for key, allowed in (("protocols", PROTOCOLS), ("modes", MODES)):
            bad = [v for v in getattr(self, key) if v not in allowed]
            if bad or not getattr(self, key):
                raise ConfigError(f"finetune.{key}: {bad or 'empty'}; allowed: {', '.join(allowed)}")
        if not self.seeds:
            raise ConfigError("finetune.seeds: at least one seed is needed")
        if self.threads < 1:
            raise ConfigError(f"finetune.threads must be >= 1, got {self.threads}")
        if self.gpus not in (0, 1):
            raise ConfigError(f"finetune.gpus must be 0 or 1 (one job per GPU), got {self.gpus}")

    def task(self, benchmark: str) -> Any:
        """The settings of ``benchmark``."""
        return getattr(self, benchmark)

    def method_variants(self, method: str) -> list[str]:
        """The variants a method runs with: ``variants`` for ``endofm`` (its ablations), ``default`` for the
        other pretrained methods, ``none`` for ``scratch``, ``external`` for a checkpoint file."""
        if method not in METHODS:
            return ["external"]
        if not METHODS[method].pretrained:
            return ["none"]
        return list(self.variants) if METHODS[method].ablations else ["default"]


@dataclass
class WorkflowConfig:
    data: DataConfig = field(default_factory=DataConfig)
    synthetic: SynthConfig = field(default_factory=SynthConfig)
    clips: ClipConfig = field(default_factory=ClipConfig)
    pretrain: PretrainStage = field(default_factory=PretrainStage)
    finetune: FinetuneStage = field(default_factory=FinetuneStage)

    def __post_init__(self) -> None:
        unknown = [v for v in self.finetune.variants if v not in self.pretrain.variants]
        if "endofm" in self.finetune.methods and not self.finetune.variants:
            raise ConfigError("finetune.variants: method endofm needs at least one pretraining variant")
        if unknown and "endofm" in self.finetune.methods:
            raise ConfigError(
                f"finetune.variants: {unknown} are not pretraining variants ({', '.join(self.pretrain.variants)})"
            )


def finetune_runs(cfg: WorkflowConfig) -> list[RunSpec]:
    """Every run of the matrix: benchmark × method (× its variants) × protocol × mode × seed."""
    ft = cfg.finetune
    return [
        RunSpec(bench, method, variant, protocol, mode, seed)
        for bench in cfg.data.benchmarks
        for method in ft.methods
        for variant in ft.method_variants(method)
        for protocol in ft.protocols
        for mode in ft.modes
        for seed in ft.seeds
    ]


def pretrain_runs(cfg: WorkflowConfig) -> list[tuple[str, str]]:
    """Every pretraining job, ``(method, variant)``: each Endo-FM variant, and the one run of every other
    pretrained method in ``finetune.methods`` that is not given a weights file instead."""
    return [
        (name, variant)
        for name, method in METHODS.items()
        if method.pretrained and (method.ablations or name in cfg.finetune.methods)
        if cfg.pretrain.external_checkpoint(name) is None
        for variant in cfg.pretrain.method_variants(name)
    ]


def endofm_settings(stage: PretrainStage, variant: str) -> PretrainConfig:
    """Endo-FM's settings of ``variant`` (the registry's resolver for ``endofm``)."""
    return stage.variant(variant)


def run_backbone(cfg: WorkflowConfig, method: str, variant: str) -> tuple[BackboneConfig, str | None]:
    """The backbone settings a fine-tuning run builds, and the checkpoint it loads (None: random init).

    A pretrained method loads its pretraining's ``backbone.pt`` (or the weights file its section names);
    ``scratch`` uses the default pretraining variant's architecture, so it compares like for like.
    """
    if method in METHODS:
        if not METHODS[method].pretrained:
            reference = "default" if "default" in cfg.pretrain.variants else next(iter(cfg.pretrain.variants))
            return cfg.pretrain.variant(reference).backbone, None
        settings = cfg.pretrain.method_settings(method, variant)
        checkpoint = cfg.pretrain.external_checkpoint(method)
        return settings.backbone, checkpoint or f"results/pretrain/{method}/{variant}/backbone.pt"
    if method in cfg.finetune.checkpoints:
        external = cfg.finetune.checkpoints[method]
        return external.backbone, external.path
    raise ConfigError(f"unknown fine-tuning method {method!r}")


def load_workflow_config(config: dict[str, Any] | str | Path) -> WorkflowConfig:
    """Build the typed config from a YAML file or an already-loaded mapping (Snakemake's ``config``)."""
    data = load_yaml(config) if isinstance(config, (str, Path)) else config
    return from_dict(WorkflowConfig, data, "config")


def run_backbone_options(cfg: WorkflowConfig, method: str) -> dict[str, Any]:
    """What else a run of ``method`` needs to build its backbone (e.g. ST-Adapter's adapters); {} for a video ViT."""
    return task_backbone(method).options(cfg.pretrain)
