"""One fine-tuning run and its evaluation, for any benchmark: the functions the workflow and the CLI call.

:func:`finetune_benchmark` resolves the protocol's splits, builds the backbone (random init, or from
a checkpoint) and runs the benchmark's task (full fine-tuning or the frozen-backbone mode);
:func:`~endofm.tasks.evaluation.evaluate_run` (re-exported here; it lives in the torch-free
:mod:`endofm.tasks.evaluation`) turns a run's test predictions into the metrics JSON that tables are built from.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

from torch import nn

from endofm.config import to_dict
from endofm.data.benchmarks import read_manifest
from endofm.methods import task_backbone
from endofm.models.vit import BackboneConfig
from endofm.tasks.evaluation import evaluate_run, read_run  # noqa: F401
from endofm.tasks.finetune import RunSpec, run_finetune
from endofm.tasks.protocols import protocol_splits

log = logging.getLogger(__name__)


class TaskEntry(NamedTuple):
    """Where a benchmark's pieces live: its module and, in it, the Task class and the frozen-mode function
    (None: the frozen mode is the Task trained with a frozen backbone). Its evaluation function is its
    entry in :data:`endofm.tasks.evaluation.EVALUATORS`."""

    module: str
    task: str
    frozen: str | None


TASKS: dict[str, TaskEntry] = {
    "polypdiag": TaskEntry("endofm.tasks.classify", "ClassifyTask", "run_probe"),
    "cvc12k": TaskEntry("endofm.tasks.segment", "SegmentTask", None),
    "kumc": TaskEntry("endofm.tasks.detect", "DetectTask", None),
}


def _task_part(benchmark: str, part: str) -> Any:
    """The ``part`` (a :class:`TaskEntry` field) of ``benchmark``, imported; None where there is none."""
    if benchmark not in TASKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; known: {', '.join(TASKS)}")
    entry = TASKS[benchmark]
    name = getattr(entry, part)
    return getattr(importlib.import_module(entry.module), name) if name else None


def build_run_backbone(
    config: BackboneConfig,
    checkpoint: str | Path | None,
    seed: int,
    method: str = "endofm",
    options: Mapping[str, Any] | None = None,
    mode: str = "full",
) -> nn.Module:
    """The backbone a ``mode`` run of ``method`` starts from, built as its registry entry says
    (:func:`endofm.methods.task_backbone`; ``options``: what else it needs, e.g. ST-Adapter's adapters):
    loaded from ``checkpoint`` (a video ViT: its teacher, any layout we read, strictly) or, without one,
    drawn from ``seed``."""
    return task_backbone(method).build(config, checkpoint, seed, options or {}, mode)


def finetune_benchmark(
    spec: RunSpec,
    task_config: Any,
    manifest: str | Path,
    raw_dir: str | Path,
    out_dir: str | Path,
    backbone: BackboneConfig,
    checkpoint: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``spec`` (one cell of the experiment matrix) on the benchmark indexed in ``manifest``, whose
    files sit under ``raw_dir``; outputs in ``out_dir`` (see :mod:`endofm.tasks.finetune`). The backbone
    is built as ``spec.method``'s registry entry says, with ``options`` (:func:`build_run_backbone`)."""
    rows = read_manifest(manifest)
    splits = protocol_splits(
        spec.benchmark, rows, spec.protocol, spec.seed, task_config.train.val_fraction, spec.label_fraction
    )
    settings = {
        "spec": asdict(spec),
        "task": to_dict(task_config),
        "backbone": to_dict(backbone),
        "checkpoint": None if checkpoint is None else str(checkpoint),
        **({"backbone_options": dict(options)} if options else {}),
    }
    model = build_run_backbone(backbone, checkpoint, spec.seed, spec.method, options, spec.mode)
    frozen_fn = _task_part(spec.benchmark, "frozen")
    if spec.mode == "frozen" and frozen_fn is not None:
        return frozen_fn(task_config, splits, raw_dir, spec, model, out_dir, settings)
    task = _task_part(spec.benchmark, "task")(task_config, splits, raw_dir, spec.seed)
    return run_finetune(task, task_config.train, spec, model, out_dir, settings)


def run_or_reuse(
    spec: RunSpec,
    task_config: Any,
    manifest: str | Path,
    raw_dir: str | Path,
    out_root: str | Path,
    backbone: BackboneConfig,
    checkpoint: str | Path | None = None,
    options: Mapping[str, Any] | None = None,
    synthetic: bool = True,
) -> dict[str, float]:
    """``spec`` fine-tuned and evaluated under ``out_root`` as the workflow names its outputs
    (``finetune/<spec.path>/``, ``metrics/<spec.path>.json``), unless that metrics file exists (then
    nothing runs); returns the metrics by name (:func:`~endofm.report.collect.flat_metrics`). For scripts
    that sweep runs outside the workflow (``benchmarks/``)."""
    from endofm.report.collect import flat_metrics  # here: the report package is not a fine-tuning job's import

    out_root = Path(out_root)
    metrics_path = out_root / "metrics" / f"{spec.path}.json"
    if not metrics_path.is_file():
        run_dir = out_root / "finetune" / spec.path
        finetune_benchmark(spec, task_config, manifest, raw_dir, run_dir, backbone, checkpoint, options)
        evaluate_run(run_dir, manifest, raw_dir, metrics_path, synthetic=synthetic)
    return flat_metrics(json.loads(metrics_path.read_text()))


def metrics_path(run: Mapping[str, Any], root: str | Path = "results/metrics") -> Path:
    """Where the workflow (and so the report) keeps the metrics of run record ``run``: ``<root>/<run path>.json``
    (:attr:`~endofm.tasks.finetune.RunSpec.path`)."""
    fields = ("benchmark", "method", "variant", "protocol", "mode", "seed")
    spec = RunSpec(
        *(run[k] for k in fields),
        label_fraction=run.get("label_fraction", 1.0),
        pretrain_fraction=run.get("pretrain_fraction", 1.0),
    )
    return Path(root) / f"{spec.path}.json"
