"""Where the workflow keeps what it makes (``results/``) and what it reads (``resources/``), relative to
the working directory. The rules, the CLI, the settings, the runs and the report all name their files
through this module, so a layout change is made here once.

Layer: foundation (docs/architecture.md). Imports nothing of endofm.
"""

from __future__ import annotations

RESULTS = "results"
#: ``<method>/<variant>/``: pretrain.yaml (the job's settings), backbone.pt, metrics.csv, run.json, snapshots/
PRETRAIN = f"{RESULTS}/pretrain"
#: ``<benchmark>/<run path>/``: model.pt, run.json, the benchmark's prediction files, history.csv
FINETUNE = f"{RESULTS}/finetune"
#: ``<benchmark>/<run path>.json``: one evaluated run (what the report reads)
METRICS = f"{RESULTS}/metrics"
#: ``<benchmark>/<run path>/<corruption>-s<severity>.json``: one run evaluated under one corruption
ROBUSTNESS = f"{METRICS}/robustness"
#: ``<stage>/...tsv``: Snakemake's per-job wall and CPU times (the report's cost table)
TIMINGS = f"{RESULTS}/benchmarks"
#: ``<stage>/....log``: one log per job
LOGS = f"{RESULTS}/logs"
#: index.html, tables.{md,tex,csv}, figures/, ablation_<name>.md
REPORT = f"{RESULTS}/report"

RESOURCES = "resources"
#: ``<source>/``: raw sources and benchmarks in their official layouts, and released weights
RAW = f"{RESOURCES}/raw"
#: archives of open sources, kept for resumption and checksums
DOWNLOADS = f"{RESOURCES}/downloads"
#: the built-in synthetic corpus: ``raw/``, ``clips/``, ``benchmarks/``
SYNTHETIC = f"{RESOURCES}/synthetic"


def label_tag(fraction: float) -> str:
    """The run-path suffix of a label fraction: ``""`` for 1 (every training video), ``"-labels25"``
    for 0.25."""
    if not 0 < fraction <= 1:
        raise ValueError(f"label_fraction must be in (0, 1], got {fraction}")
    return "" if fraction == 1 else f"-labels{fraction * 100:g}"


def pretrain_tag(fraction: float) -> str:
    """The run-path suffix of a pretraining fraction: ``""`` for 1 (the finished pretraining), ``"-pt25"``
    for the backbone after a quarter of its steps, ``"-pt0"`` for its initial weights."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"pretrain_fraction must be in [0, 1], got {fraction}")
    return "" if fraction == 1 else f"-pt{fraction * 100:g}"


def draw_tag(draw: int) -> str:
    """The suffix of a benchmark draw: ``""`` for draw 0 (the main one), ``"-draw2"`` for draw 2. It follows
    the benchmark's data folders (``<raw_dir>/polypdiag-draw2``) and the run paths of runs on that draw."""
    if isinstance(draw, bool) or not isinstance(draw, int) or draw < 0:
        raise ValueError(f"draw must be an integer >= 0, got {draw!r}")
    return "" if draw == 0 else f"-draw{draw}"


def benchmark_data(benchmark: str, draw: int = 0) -> str:
    """The name of a benchmark draw's raw and index folders (under ``data.raw_dir``, ``data.benchmarks_dir``)."""
    return benchmark + draw_tag(draw)


def run_path(
    benchmark: str,
    method: str,
    variant: str,
    protocol: str,
    mode: str,
    seed: int,
    label_fraction: float = 1.0,
    pretrain_fraction: float = 1.0,
    draw: int = 0,
) -> str:
    """A fine-tuning run's place under :data:`FINETUNE` (a folder) and :data:`METRICS` (+ ``.json``):
    ``<benchmark>/<method>/<variant>/<protocol>/<mode>/seed<k>``, then ``-pt<percent>`` when it starts from a
    pretraining snapshot, then ``-labels<percent>`` when it trains on a fraction of the videos, then
    ``-draw<k>`` when it runs on a benchmark draw other than the main one."""
    tag = pretrain_tag(pretrain_fraction) + label_tag(label_fraction) + draw_tag(draw)
    return f"{benchmark}/{method}/{variant}/{protocol}/{mode}/seed{seed}{tag}"


def pretrain_dir(method: str, variant: str) -> str:
    """The folder of one pretraining run."""
    return f"{PRETRAIN}/{method}/{variant}"


def finetune_dir(run_path: str) -> str:
    """The folder of one fine-tuning run (``run_path``: :attr:`endofm.tasks.finetune.RunSpec.path`)."""
    return f"{FINETUNE}/{run_path}"


def metrics_file(run_path: str) -> str:
    """The metrics JSON of one evaluated run."""
    return f"{METRICS}/{run_path}.json"


def robustness_file(run_path: str, corruption: str, severity: int) -> str:
    """The metrics JSON of one run evaluated under ``corruption`` at ``severity``."""
    return f"{ROBUSTNESS}/{run_path}/{corruption}-s{severity}.json"
