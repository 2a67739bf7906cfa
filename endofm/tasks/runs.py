"""One fine-tuning run and its evaluation, for any benchmark: the functions the workflow and the CLI call.

:func:`finetune_benchmark` resolves the protocol's splits, builds the backbone (random init, or from
a checkpoint) and runs the benchmark's task (full fine-tuning or the frozen-backbone mode);
:func:`~endofm.tasks.benchmarks.evaluate_run` (it lives in the torch-free :mod:`endofm.tasks.benchmarks`)
turns a run's test predictions into the metrics JSON that tables are built from; :func:`run_or_reuse` does
both for scripts that sweep runs outside the workflow.

Layer: tasks (docs/architecture.md). May import: foundation, data, models, engine, metrics, methods and
the other task modules.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from endofm import paths
from endofm.config import to_dict
from endofm.data.benchmarks import read_manifest
from endofm.io import output_lock
from endofm.methods import task_backbone
from endofm.models.vit import BackboneConfig
from endofm.tasks.benchmarks import evaluate_run, get_benchmark
from endofm.tasks.evaluation import flat_metrics
from endofm.tasks.finetune import RunSpec, run_finetune

log = logging.getLogger(__name__)


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
    is built as ``spec.method``'s registry entry says, with ``options`` (:func:`build_run_backbone`). The run
    holds ``out_dir/.lock`` (:func:`endofm.io.output_lock`): a second process on the same folder fails at once."""
    with output_lock(out_dir):
        return _finetune_benchmark(spec, task_config, manifest, raw_dir, out_dir, backbone, checkpoint, options)


def _finetune_benchmark(spec, task_config, manifest, raw_dir, out_dir, backbone, checkpoint, options):
    bench = get_benchmark(spec.benchmark)
    splits = bench.protocol_splits(
        read_manifest(manifest),
        spec.protocol,
        spec.seed,
        val_fraction=task_config.train.val_fraction,
        label_fraction=spec.label_fraction,
    )
    settings = {
        "spec": asdict(spec),
        "task": to_dict(task_config),
        "backbone": to_dict(backbone),
        "checkpoint": None if checkpoint is None else str(checkpoint),
        **({"backbone_options": dict(options)} if options else {}),
    }
    model = build_run_backbone(backbone, checkpoint, spec.seed, spec.method, options, spec.mode)
    entry = bench.task()
    if spec.mode == "frozen" and entry.frozen is not None:
        return entry.frozen(task_config, splits, raw_dir, spec, model, out_dir, settings)
    task = entry.task(task_config, splits, raw_dir, spec.seed)
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
    nothing runs); returns the metrics by name (:func:`~endofm.tasks.evaluation.flat_metrics`). For scripts
    that sweep runs outside the workflow (``benchmarks/``)."""
    out_root = Path(out_root)
    metrics_path = out_root / "metrics" / f"{spec.path}.json"
    if not metrics_path.is_file():
        run_dir = out_root / "finetune" / spec.path
        finetune_benchmark(spec, task_config, manifest, raw_dir, run_dir, backbone, checkpoint, options)
        evaluate_run(run_dir, manifest, raw_dir, metrics_path, synthetic=synthetic)
    return flat_metrics(json.loads(metrics_path.read_text()))


def metrics_path(run: Mapping[str, Any], root: str | Path = paths.METRICS) -> Path:
    """Where the workflow (and so the report) keeps the metrics of run record ``run``: ``<root>/<run path>.json``
    (:func:`endofm.paths.run_path`)."""
    fields = ("benchmark", "method", "variant", "protocol", "mode", "seed")
    path = paths.run_path(
        *(run[k] for k in fields), run.get("label_fraction", 1.0), run.get("pretrain_fraction", 1.0), run.get("draw", 0)
    )
    return Path(root) / f"{path}.json"
