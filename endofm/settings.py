"""The workflow's configuration as typed objects: one dataclass per section of ``config/*.yaml``.

``config/schema.yaml`` checks the YAML's shape when Snakemake starts; :func:`load_workflow_config`
then builds these objects, which own the defaults and check what a schema cannot (that a source is
in the registry, that synthetic and real sources are not mixed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from endofm.config import ConfigError, from_dict, load_yaml
from endofm.data.clips import ClipConfig
from endofm.data.sources import SOURCES, Download
from endofm.data.synthetic import BENCHMARKS, PRETRAIN_SOURCES, SynthConfig


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


@dataclass
class WorkflowConfig:
    data: DataConfig = field(default_factory=DataConfig)
    synthetic: SynthConfig = field(default_factory=SynthConfig)
    clips: ClipConfig = field(default_factory=ClipConfig)


def load_workflow_config(config: dict[str, Any] | str | Path) -> WorkflowConfig:
    """Build the typed config from a YAML file or an already-loaded mapping (Snakemake's ``config``)."""
    data = load_yaml(config) if isinstance(config, (str, Path)) else config
    return from_dict(WorkflowConfig, data, "config")
