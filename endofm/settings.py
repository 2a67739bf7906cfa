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
from endofm.pretraining.train import PretrainConfig


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
class WorkflowConfig:
    data: DataConfig = field(default_factory=DataConfig)
    synthetic: SynthConfig = field(default_factory=SynthConfig)
    clips: ClipConfig = field(default_factory=ClipConfig)
    pretrain: PretrainStage = field(default_factory=PretrainStage)


def load_workflow_config(config: dict[str, Any] | str | Path) -> WorkflowConfig:
    """Build the typed config from a YAML file or an already-loaded mapping (Snakemake's ``config``)."""
    data = load_yaml(config) if isinstance(config, (str, Path)) else config
    return from_dict(WorkflowConfig, data, "config")
