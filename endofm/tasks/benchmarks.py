"""The benchmark registry: everything that belongs to one downstream benchmark, declared once.

A :class:`Benchmark` names its indexer (raw layout -> manifest), its built-in synthetic generator, its
official splits (what the protocols carve), its fine-tuning task (loaded lazily: it needs torch), its
evaluator and prediction file, its headline and secondary metrics and its report example figure. The
data stage, the workflow rules, the CLI's choices and the report read :data:`BENCHMARKS`; adding a
benchmark is one :func:`register` call (``tests/test_toy_benchmark.py`` registers a fourth from a test).

This module imports no torch, so evaluation and report jobs that read it start fast.

Layer: tasks (docs/architecture.md). May import: foundation, data, models, engine, metrics, pretraining,
methods and the other tasks modules (the task classes only inside the ``task`` loaders).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from endofm.data import cvc, kumc, polypdiag, synthetic
from endofm.data.benchmarks import Indexer, build_manifest, read_manifest
from endofm.io import write_json
from endofm.tasks import evaluation
from endofm.tasks.evaluation import SYNTHETIC_NOTE, read_run
from endofm.tasks.protocols import OfficialSplits, ProtocolSplits, protocol_splits


class TaskEntry(NamedTuple):
    """A benchmark's fine-tuning: its :class:`~endofm.tasks.finetune.Task` class and its frozen-mode
    function (None: the frozen mode is the Task trained with a frozen backbone), and with a frozen-mode
    function, how a finished frozen run is scored again on (corrupted) test inputs: ``frozen_scores(cfg,
    splits, root, backbone, state, device, corrupt)``, ``state`` its ``model.pt``'s ``extra.probe``."""

    task: type
    frozen: Callable[..., dict[str, Any]] | None
    frozen_scores: Callable[..., dict[str, float]] | None = None


class Headline(NamedTuple):
    """A benchmark's Table 1 column: display name, metric key in the metrics files, metric label."""

    label: str
    metric: str
    metric_label: str


@dataclass(frozen=True)
class Benchmark:
    """One downstream benchmark (see the module docstring for who reads which field)."""

    name: str
    headline: Headline  # the Table 1 column; its metric is the task's selection metric
    indexer: Indexer
    splits: OfficialSplits
    task: Callable[[], TaskEntry]  # imports the task module (torch) when called
    evaluate: Callable[..., dict[str, Any]]  # (run_dir, test_rows, raw_dir=, benchmark_dir=, task_settings=)
    predictions: str  # the file a run's test predictions are saved in (the workflow's output)
    secondary: tuple[str, ...] = ()  # metrics shown first in the secondary table, in order
    # (metric key, label): a score that needs no decision threshold (AUROC, AP50), shown beside the headline where
    # a threshold's noise would hide a gap (the report's per-draw gaps)
    threshold_free: tuple[str, str] | None = None
    # (title, metric-key prefix): secondary metrics with a report table of their own, so none is too wide
    secondary_groups: tuple[tuple[str, str], ...] = ()
    synthesize: Callable[[Path, synthetic.SynthConfig], Path] | None = None  # the built-in corpus's generator
    # (run_dir, manifest, raw_dir, test_split, task_settings) -> a matplotlib Figure or None
    examples: Callable[..., Any] | None = None

    def index(
        self, raw_dir: str | Path, out_dir: str | Path, options: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Index the raw layout in ``raw_dir`` into ``out_dir`` (:func:`endofm.data.benchmarks.build_manifest`);
        ``options``: the index's settings from the workflow's ``data`` section (``indexer.options(data)``)."""
        return build_manifest(self.name, self.indexer, Path(raw_dir), Path(out_dir), options)

    def protocol_splits(self, manifest: pd.DataFrame, protocol: str, seed: int = 0, **kwargs: Any) -> ProtocolSplits:
        """The train/select/test rows under ``protocol`` (:func:`endofm.tasks.protocols.protocol_splits`)."""
        return protocol_splits(self.name, self.splits, manifest, protocol, seed, **kwargs)


#: The benchmarks by name, in the order the report shows them.
BENCHMARKS: dict[str, Benchmark] = {}


def register(benchmark: Benchmark) -> Benchmark:
    """Add ``benchmark`` to :data:`BENCHMARKS` (a name already taken is an error)."""
    if benchmark.name in BENCHMARKS:
        raise ValueError(f"benchmark {benchmark.name!r} is already registered")
    BENCHMARKS[benchmark.name] = benchmark
    return benchmark


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark ``name``; a ValueError naming the known ones otherwise."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def synthesize_raw(name: str, out_dir: str | Path, cfg: synthetic.SynthConfig) -> Path:
    """Generate built-in set ``name`` into ``out_dir``: a synthetic pretraining source, or a registered
    benchmark's raw layout by its own generator."""
    if name in synthetic.PRETRAIN_SOURCES:
        return synthetic.synthesize(name, out_dir, cfg)
    bench = get_benchmark(name)
    if bench.synthesize is None:
        raise ValueError(f"benchmark {name!r} has no built-in synthetic generator")
    return bench.synthesize(Path(out_dir), cfg)


def synthetic_names() -> list[str]:
    """The sets :func:`synthesize_raw` can make: the pretraining sources, then the benchmarks that have a generator."""
    return [*synthetic.PRETRAIN_SOURCES, *(n for n, b in BENCHMARKS.items() if b.synthesize is not None)]


def evaluate_run(
    run_dir: str | Path, manifest: str | Path, raw_dir: str | Path, out_path: str | Path, synthetic: bool
) -> dict[str, Any]:
    """Metrics of the run in ``run_dir`` on its test split, scored by its benchmark's evaluator, with the
    run's identity and provenance, written to ``out_path`` (JSON)."""
    run_dir, manifest = Path(run_dir), Path(manifest)
    run = read_run(run_dir)
    bench = get_benchmark(run["benchmark"])
    rows = read_manifest(manifest)
    test_rows = rows[rows["split"] == run["test_split"]]
    if test_rows.empty:
        raise ValueError(f"{manifest}: no rows for the run's test split {run['test_split']!r}")
    task_settings = run.get("settings", {}).get("task", {})
    result = bench.evaluate(
        run_dir, test_rows, raw_dir=Path(raw_dir), benchmark_dir=manifest.parent, task_settings=task_settings
    )
    record = {
        **{k: run[k] for k in ("benchmark", "method", "variant", "protocol", "mode", "seed")},
        "label_fraction": run.get("label_fraction", 1.0),
        "pretrain_fraction": run.get("pretrain_fraction", 1.0),
        "draw": run.get("draw", 0),
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


# ----------------------------------------------------------------------------------------------------
# The paper's three benchmarks


def _classify() -> TaskEntry:
    from endofm.tasks.classify import ClassifyTask, probe_scores, run_probe

    return TaskEntry(ClassifyTask, run_probe, probe_scores)


def _segment() -> TaskEntry:
    from endofm.tasks.segment import SegmentTask

    return TaskEntry(SegmentTask, None)


def _detect() -> TaskEntry:
    from endofm.tasks.detect import DetectTask

    return TaskEntry(DetectTask, None)


def _segmentation_examples(run_dir, manifest, raw_dir, test_split, task_settings: Mapping[str, Any]):
    from endofm.tasks.examples import segmentation_examples

    return segmentation_examples(run_dir, manifest, raw_dir, test_split)


def _detection_examples(run_dir, manifest, raw_dir, test_split, task_settings: Mapping[str, Any]):
    from endofm.tasks.examples import detection_examples

    threshold = task_settings.get("score_threshold")
    if threshold is None:
        from endofm.tasks.detect import DetectConfig  # torch: only when a run does not record its threshold

        threshold = DetectConfig.score_threshold
    return detection_examples(run_dir, manifest, raw_dir, test_split, float(threshold))


register(
    Benchmark(
        name="polypdiag",
        headline=Headline("PolypDiag", "f1", "F1"),
        indexer=Indexer(
            polypdiag.index_polypdiag,
            polypdiag.summarize_split,
            notes=(
                "val is the official test split (splits/val.txt); there is no official validation split",
                "label 1 = abnormal, 0 = normal",
            ),
        ),
        splits=OfficialSplits(unit="sample_id", train="train", paper_test="val", clean_test="val", stratify="label"),
        task=_classify,
        evaluate=evaluation.evaluate_classification,
        predictions=evaluation.PREDICTIONS,
        secondary=("auroc", "accuracy", "precision", "recall"),
        threshold_free=("auroc", "AUROC"),
        synthesize=functools.partial(synthetic.synthesize, "polypdiag"),
    )
)
register(
    Benchmark(
        name="cvc12k",
        headline=Headline("CVC-12k", "dice", "Dice"),
        indexer=Indexer(
            cvc.index_cvc,
            cvc.summarize_split,
            settings={"polyp_value": "cvc12k_polyp_value"},
            notes=(
                "'CVC-12k' is read as the 612-frame CVC-ClinicDB (Original/ and Ground Truth/ tifs)",
                "one sample is one whole sequence; masks: 255 (or data.cvc12k_polyp_value) -> 1, all else -> 0",
                "sequences come from videolist.txt if present, else the official hard-coded lists, in which 7 of 9 "
                "test sequences are also train sequences (see overlaps_other_split)",
            ),
        ),
        splits=OfficialSplits(
            unit="sequence", train="train", paper_test="test", clean_test="test", overlap="overlaps_other_split"
        ),
        task=_segment,
        evaluate=evaluation.evaluate_segmentation,
        predictions=evaluation.MASKS,
        secondary=("frame_dice", "frame_iou"),
        synthesize=functools.partial(synthetic.synthesize, "cvc12k"),
        examples=_segmentation_examples,
    )
)
register(
    Benchmark(
        name="kumc",
        headline=Headline("KUMC", "f1_paper", "F1"),
        indexer=Indexer(
            kumc.index_kumc,
            kumc.summarize_split,
            notes=(
                "val (val2019) is the split the paper reports as its test set",
                "boxes are 0-based continuous [x0, y0, x1, y1]: x0 = VOC xmin - 1, x1 = VOC xmax",
                "frames without an XML are unannotated; an XML without objects is a polyp-free frame",
                "coco_{split}.json holds the annotated frames only",
            ),
            extra_files={f"coco_{s}.json": functools.partial(kumc.to_coco, split=s) for s in ("train", "val", "test")},
        ),
        splits=OfficialSplits(unit="video", train="train", paper_test="val", clean_test="test", clean_select="val"),
        task=_detect,
        evaluate=evaluation.evaluate_detection,
        predictions=evaluation.DETECTIONS,
        secondary=("f1_iou", "AP", "AP50", "AP75", "precision_paper", "recall_paper", "precision_iou", "recall_iou"),
        secondary_groups=(("COCO box AP", "AP"),),
        threshold_free=("AP50", "AP50"),
        synthesize=functools.partial(synthetic.synthesize, "kumc"),
        examples=_detection_examples,
    )
)
