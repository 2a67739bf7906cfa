"""One fine-tuning run and its evaluation, for any benchmark: the functions the workflow and the CLI call.

:func:`finetune_benchmark` resolves the protocol's splits, builds the backbone (random init, or from
a checkpoint) and runs the benchmark's task (full fine-tuning or the frozen-backbone mode);
:func:`evaluate_run` turns a run's test predictions into the metrics JSON that tables are built from.
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
from endofm.io import write_json
from endofm.methods import task_backbone
from endofm.models.vit import BackboneConfig
from endofm.tasks.finetune import RUN_NAME, RunSpec, run_finetune
from endofm.tasks.protocols import protocol_splits

log = logging.getLogger(__name__)


class TaskEntry(NamedTuple):
    """Where a benchmark's pieces live: its module and, in it, the Task class, the evaluation function
    and the frozen-mode function (None: the frozen mode is the Task trained with a frozen backbone)."""

    module: str
    task: str
    evaluate: str
    frozen: str | None


TASKS: dict[str, TaskEntry] = {
    "polypdiag": TaskEntry("endofm.tasks.classify", "ClassifyTask", "evaluate_classification", "run_probe"),
    "cvc12k": TaskEntry("endofm.tasks.segment", "SegmentTask", "evaluate_segmentation", None),
    "kumc": TaskEntry("endofm.tasks.detect", "DetectTask", "evaluate_detection", None),
}
SYNTHETIC_NOTE = "built-in synthetic corpus: these numbers test the machinery, not clinical accuracy"


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


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """The run record ``run_dir/run.json``; a missing or unreadable one is an error naming it."""
    run_file = Path(run_dir) / RUN_NAME
    if not run_file.exists():
        raise FileNotFoundError(f"{run_file}: no run record; the fine-tuning job did not finish")
    try:
        run = json.loads(run_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{run_file}: not a readable run record ({exc}); rerun the fine-tuning job") from None
    missing = [k for k in ("benchmark", "test_split", "selection") if not isinstance(run, dict) or k not in run]
    if missing:
        raise ValueError(f"{run_file}: not a run record (no {', '.join(missing)})")
    return run


def evaluate_run(
    run_dir: str | Path, manifest: str | Path, raw_dir: str | Path, out_path: str | Path, synthetic: bool
) -> dict[str, Any]:
    """Metrics of the run in ``run_dir`` on its test split, with the run's identity and provenance,
    written to ``out_path`` (JSON)."""
    run_dir, manifest = Path(run_dir), Path(manifest)
    run = read_run(run_dir)
    rows = read_manifest(manifest)
    test_rows = rows[rows["split"] == run["test_split"]]
    if test_rows.empty:
        raise ValueError(f"{manifest}: no rows for the run's test split {run['test_split']!r}")
    evaluate = _task_part(run["benchmark"], "evaluate")
    task_settings = run.get("settings", {}).get("task", {})
    result = evaluate(
        run_dir, test_rows, raw_dir=Path(raw_dir), benchmark_dir=manifest.parent, task_settings=task_settings
    )
    record = {
        **{k: run[k] for k in ("benchmark", "method", "variant", "protocol", "mode", "seed")},
        "label_fraction": run.get("label_fraction", 1.0),
        "pretrain_fraction": run.get("pretrain_fraction", 1.0),
        "data": "synthetic" if synthetic else "real",
        **({"note": SYNTHETIC_NOTE} if synthetic else {}),
        "test_split": run["test_split"],
        **result,
        "selected_epoch": run["selection"]["epoch"],
        "selection": run["selection"],
        "splits": run["splits"],
        "config_hash": run["config_hash"],
        "versions": run["versions"],
        "device": run["device"],
        "wall_seconds": run["wall_seconds"],
    }
    write_json(out_path, record)
    return record
