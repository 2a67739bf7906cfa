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
from endofm.models.vit import BackboneConfig
from endofm.pretraining.train import PretrainConfig
from endofm.report import ReportConfig
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
class PretrainStage:
    """Pretraining in the workflow: shared settings, named variants (ablations) as overlays on them."""

    gpus: int = 0
    settings: PretrainConfig = field(default_factory=PretrainConfig)
    variants: dict[str, dict[str, Any]] = field(default_factory=lambda: {"default": {}})

    def __post_init__(self) -> None:
        if self.gpus < 0:
            raise ConfigError(f"pretrain.gpus must be >= 0, got {self.gpus}")
        if not self.variants:
            raise ConfigError("pretrain.variants: at least one variant is needed (e.g. default: {})")
        for name in self.variants:
            self.variant(name)  # fail at start, naming the variant, if an overlay is invalid

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

    Methods: ``endofm`` fine-tunes the backbone of every pretraining variant in ``variants``;
    ``scratch`` a randomly initialised backbone of the same size (variant ``none``); every name in
    ``checkpoints`` a backbone from that file (variant ``external``).
    """

    methods: list[str] = field(default_factory=lambda: ["endofm", "scratch"])
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
        builtin = {"endofm", "scratch"}
        for name in self.methods:
            if name not in builtin | set(self.checkpoints):
                raise ConfigError(
                    f"finetune.methods: {name!r} is neither endofm, scratch nor a name in finetune.checkpoints"
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
        """The variants a method runs with: pretraining variants for ``endofm``, ``none`` for
        ``scratch``, ``external`` for a checkpoint file."""
        if method == "endofm":
            return list(self.variants)
        return ["none"] if method == "scratch" else ["external"]


@dataclass
class WorkflowConfig:
    data: DataConfig = field(default_factory=DataConfig)
    synthetic: SynthConfig = field(default_factory=SynthConfig)
    clips: ClipConfig = field(default_factory=ClipConfig)
    pretrain: PretrainStage = field(default_factory=PretrainStage)
    finetune: FinetuneStage = field(default_factory=FinetuneStage)
    report: ReportConfig = field(default_factory=ReportConfig)

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


def run_backbone(cfg: WorkflowConfig, method: str, variant: str) -> tuple[BackboneConfig, str | None]:
    """The backbone settings a fine-tuning run builds, and the checkpoint it loads (None: random init).

    ``endofm`` loads its pretraining variant's ``backbone.pt``; ``scratch`` uses the default
    pretraining variant's architecture, so both compare like for like.
    """
    if method == "endofm":
        return cfg.pretrain.variant(variant).backbone, f"results/pretrain/endofm/{variant}/backbone.pt"
    if method == "scratch":
        reference = "default" if "default" in cfg.pretrain.variants else next(iter(cfg.pretrain.variants))
        return cfg.pretrain.variant(reference).backbone, None
    if method in cfg.finetune.checkpoints:
        external = cfg.finetune.checkpoints[method]
        return external.backbone, external.path
    raise ConfigError(f"unknown fine-tuning method {method!r}")


def load_workflow_config(config: dict[str, Any] | str | Path) -> WorkflowConfig:
    """Build the typed config from a YAML file or an already-loaded mapping (Snakemake's ``config``)."""
    data = load_yaml(config) if isinstance(config, (str, Path)) else config
    return from_dict(WorkflowConfig, data, "config")
