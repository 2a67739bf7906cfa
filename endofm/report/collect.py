"""Everything the report reads: the metrics files of the runs, pretraining curves and metadata, the
rules' benchmark files (wall time per job), the paper's reported numbers, and provenance.

A missing or malformed metrics file raises :class:`ReportError` with a one-line message naming it.

Layer: report (docs/architecture.md). May import: every layer below it (metrics files are read with
:mod:`endofm.tasks.evaluation`'s helpers).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import platform
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from endofm import paths
from endofm.tasks.evaluation import flat_metrics, metric_number

#: The fields that identify a run; every metrics file carries them (endofm.tasks.benchmarks.evaluate_run).
IDENTITY = ("benchmark", "method", "variant", "protocol", "mode", "seed")
#: Axes of a summary: a run's identity without the seed, plus the label fraction (1.0 when absent). A cell's
#: replicates are its (draw, seed) pairs: the benchmark draws (``synthetic.draws``) pool with the seeds.
AXES = ("benchmark", "method", "variant", "protocol", "mode", "label_fraction")


class ReportError(ValueError):
    """A report input is missing or malformed; the message is one line and names the file."""


def _fail(path: Path, why: str) -> ReportError:
    return ReportError(f"{path}: {why}")


def read_metrics_file(path: str | os.PathLike) -> dict[str, Any]:
    """One metrics file, checked: identity fields, an optional ``label_fraction`` in (0, 1] and
    ``pretrain_fraction`` in [0, 1] (default 1.0), an optional benchmark ``draw`` (an integer >= 0, default 0)
    and a non-empty ``metrics`` mapping of numbers. Adds ``path``."""
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "missing metrics file")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _fail(path, f"malformed metrics file: not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(record, dict):
        raise _fail(path, f"malformed metrics file: expected a JSON object, got {type(record).__name__}")
    missing = [k for k in (*IDENTITY, "metrics") if k not in record]
    if missing:
        raise _fail(path, f"malformed metrics file: missing {', '.join(missing)}")
    for key in IDENTITY[:-1]:
        if not isinstance(record[key], str) or not record[key]:
            raise _fail(path, f"malformed metrics file: {key} must be a non-empty string, got {record[key]!r}")
    if isinstance(record["seed"], bool) or not isinstance(record["seed"], int):
        raise _fail(path, f"malformed metrics file: seed must be an integer, got {record['seed']!r}")
    fraction = record.get("label_fraction", 1.0)
    if metric_number(fraction) is None or not 0.0 < float(fraction) <= 1.0:
        raise _fail(path, f"malformed metrics file: label_fraction must be in (0, 1], got {fraction!r}")
    pretrain_fraction = record.get("pretrain_fraction", 1.0)
    if metric_number(pretrain_fraction) is None or not 0.0 <= float(pretrain_fraction) <= 1.0:
        raise _fail(path, f"malformed metrics file: pretrain_fraction must be in [0, 1], got {pretrain_fraction!r}")
    metrics = record["metrics"]
    if not isinstance(metrics, dict) or not metrics:
        raise _fail(path, "malformed metrics file: metrics must be a non-empty object")
    bad = [k for k, v in metrics.items() if metric_number(v) is None]
    if bad:
        raise _fail(path, f"malformed metrics file: metrics {bad[:3]} are not numbers")
    scores = flat_metrics(record)  # every score is a fraction; counts are left out
    outside = {k: v for k, v in scores.items() if not (math.isnan(v) or 0.0 <= v <= 1.0)}
    if outside:
        name, value = next(iter(outside.items()))
        raise _fail(path, f"malformed metrics file: {name} = {value!r}; scores are fractions in [0, 1]")
    draw = record.get("draw", 0)
    if isinstance(draw, bool) or not isinstance(draw, int) or draw < 0:
        raise _fail(path, f"malformed metrics file: draw must be an integer >= 0, got {draw!r}")
    record = {
        **record,
        "label_fraction": float(fraction),
        "pretrain_fraction": float(pretrain_fraction),
        "draw": draw,
    }
    _check_path_identity(path, record)
    return {**record, "path": str(path)}


def _check_path_identity(path: Path, record: dict[str, Any]) -> None:
    """A metrics file in the workflow's layout (its name starts ``seed``) must say the same run inside as its
    path (:func:`endofm.paths.run_path`); a file elsewhere is not checked."""
    if not path.name.startswith("seed"):
        return
    said = paths.run_path(
        *(record[k] for k in IDENTITY), record["label_fraction"], record["pretrain_fraction"], record["draw"]
    )
    named = path.with_suffix("").parts[-6:]
    if "/".join(named) == said:
        return
    differ = [f"{k} {record[k]!r} (path: {v!r})" for k, v in zip(IDENTITY[:-1], named, strict=False) if record[k] != v]
    digits = "".join(itertools.takewhile(str.isdigit, named[-1][len("seed") :]))
    if digits and int(digits) != record["seed"]:
        differ.append(f"seed {record['seed']} (path: {int(digits)})")
    elif not differ:
        differ.append(f"label/pretrain fraction or draw {said.rsplit('/', 1)[-1]!r} (path: {named[-1]!r})")
    raise _fail(path, f"the file's run differs from its path: {', '.join(differ)}")


def collect_metrics(paths: Iterable[str | os.PathLike]) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """The metrics files as a long frame, one row per run × metric (``AXES``, ``draw``, ``seed``,
    ``pretrain_fraction``, ``metric``, ``value``, ``data``, ``path``), and the checked records. Two files
    for one run fail."""
    records = [read_metrics_file(p) for p in sorted({str(p) for p in paths})]
    if not records:
        raise ReportError("no metrics files: the experiment matrix has no runs")
    seen: dict[tuple, str] = {}
    rows = []
    for rec in records:
        key = (*(rec[k] for k in AXES), rec["draw"], rec["seed"], rec["pretrain_fraction"])
        if key in seen:
            raise ReportError(f"{rec['path']}: the same run as {seen[key]}")
        seen[key] = rec["path"]
        ident = {k: rec[k] for k in AXES} | {
            "draw": rec["draw"],
            "seed": rec["seed"],
            "pretrain_fraction": rec["pretrain_fraction"],
            "data": rec.get("data", "unknown"),
        }
        for metric, value in flat_metrics(rec).items():
            rows.append({**ident, "metric": metric, "value": value, "path": rec["path"]})
    return pd.DataFrame(rows), records


#: The columns of :func:`collect_robustness`' frame.
ROBUSTNESS_COLUMNS = (*AXES, "draw", "seed", "corruption", "severity", "metric", "value", "path")


def collect_robustness(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """The robustness metrics files (:func:`endofm.tasks.robustness.evaluate_robustness`) as a long frame, one
    row per run × corruption × severity × metric (:data:`ROBUSTNESS_COLUMNS`). Each is checked as a metrics
    file and must name its ``corruption`` (a string) and ``severity`` (an integer); two files for one cell fail."""
    rows, seen = [], {}
    for name in sorted({str(p) for p in paths}):
        rec = read_metrics_file(name)
        corruption, severity = rec.get("corruption"), rec.get("severity")
        if (
            not isinstance(corruption, str)
            or not corruption
            or isinstance(severity, bool)
            or not isinstance(severity, int)
        ):
            raise _fail(
                Path(name),
                f"malformed robustness metrics file: expected corruption (a name) and severity (an integer), got "
                f"{corruption!r} and {severity!r}",
            )
        key = (*(rec[k] for k in AXES), rec["draw"], rec["seed"], rec["pretrain_fraction"], corruption, severity)
        if key in seen:
            raise ReportError(f"{name}: the same run and corruption as {seen[key]}")
        seen[key] = name
        ident = {k: rec[k] for k in AXES} | {
            "draw": rec["draw"],
            "seed": rec["seed"],
            "corruption": corruption,
            "severity": severity,
        }
        rows += [{**ident, "metric": m, "value": v, "path": name} for m, v in flat_metrics(rec).items()]
    return pd.DataFrame(rows, columns=list(ROBUSTNESS_COLUMNS))


def run_dir_of(
    metrics_path: str | os.PathLike, metrics_root: str = paths.METRICS, runs_root: str = paths.FINETUNE
) -> Path:
    """The run folder of a metrics file: ``results/metrics/<run>.json`` -> ``results/finetune/<run>/``."""
    path = Path(metrics_path)
    parts = path.with_suffix("").parts
    root = Path(metrics_root).parts
    for i in range(len(parts) - len(root) + 1):
        if parts[i : i + len(root)] == root:
            return Path(*parts[:i]) / runs_root / Path(*parts[i + len(root) :])
    raise ReportError(f"{path}: not under {metrics_root}/, cannot find its run folder")


# ---------------------------------------------------------------------------------------------- pretraining


def read_pretraining(metrics_files: Iterable[str | os.PathLike]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (method, variant): its ``metrics.csv`` (``results/pretrain/<method>/<variant>/metrics.csv``) as a
    frame, the parameter count from the resolved ``config.yaml`` beside it when recorded, and the run
    record ``run.json`` beside it (``run``: steps and snapshot steps; {} when absent)."""
    out = {}
    for f in metrics_files:
        path = Path(f)
        if not path.is_file():
            raise _fail(path, "missing pretraining metrics file")
        try:
            curves = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise _fail(path, f"malformed pretraining metrics: {str(exc).splitlines()[0]}") from None
        parameters, init = None, None
        meta = path.with_name("config.yaml")
        if meta.is_file():
            try:
                resolved = yaml.safe_load(meta.read_text()) or {}
                parameters = (resolved.get("run") or {}).get("parameters")
                init = (resolved.get("pretrain") or {}).get("init")  # the start (None: not recorded)
            except (yaml.YAMLError, AttributeError):
                parameters = None
        record = path.with_name("run.json")
        try:
            run = json.loads(record.read_text()) if record.is_file() else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _fail(record, f"malformed pretraining record: {str(exc).splitlines()[0]}") from None
        out[(path.parent.parent.name, path.parent.name)] = {
            "curves": curves,
            "parameters": parameters,
            "init": init if isinstance(init, str) else None,
            "run": run if isinstance(run, dict) else {},
            "path": str(path),
        }
    return out


def read_timings(root: str | os.PathLike | None) -> pd.DataFrame:
    """Every Snakemake benchmark file under ``root`` (``<stage>/.../<job>.tsv``): one row per job with
    ``stage`` (the first folder), ``job`` (the path below ``root`` without suffix), ``wall_s``,
    ``cpu_s`` and ``max_rss_mb``."""
    rows = []
    for path in sorted(Path(root).rglob("*.tsv")) if root and Path(root).is_dir() else []:
        try:
            frame = pd.read_csv(path, sep="\t")
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise _fail(path, f"malformed benchmark file: {str(exc).splitlines()[0]}") from None
        if frame.empty or "s" not in frame:
            raise _fail(path, "malformed benchmark file: no 's' column")
        rel = path.relative_to(Path(root)).with_suffix("")
        last = frame.iloc[-1]
        rows.append(
            {
                "stage": rel.parts[0] if len(rel.parts) > 1 else "other",
                "job": rel.as_posix(),
                "wall_s": float(last["s"]),
                "cpu_s": float(pd.to_numeric(last.get("cpu_time"), errors="coerce")),
                "max_rss_mb": float(pd.to_numeric(last.get("max_rss"), errors="coerce")),
            }
        )
    return pd.DataFrame(rows, columns=["stage", "job", "wall_s", "cpu_s", "max_rss_mb"])


#: How sure a reported number is (docs/original.md's tags): read in the paper, computed from its stated margins,
#: or taken from secondary sources.
TAGS = ("verified", "derived", "unverified")


def read_paper_results(path: str | os.PathLike | None) -> dict[str, Any]:
    """``config/paper_results.yaml``: the numbers the paper reports (see that file); empty without one."""
    if path is None:
        return {"methods": {}}
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "missing paper results file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise _fail(path, f"not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data.get("methods"), dict):
        raise _fail(path, "expected a 'methods' mapping")
    for name, entry in data["methods"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("results", {}), dict):
            raise _fail(path, f"methods.{name}: expected a mapping with 'results'")
        for bench, cell in entry.get("results", {}).items():
            if not isinstance(cell, dict) or metric_number(cell.get("mean")) is None or cell.get("tag") not in TAGS:
                raise _fail(path, f"methods.{name}.results.{bench}: expected mean (number) and tag ({'/'.join(TAGS)})")
    return data


# ---------------------------------------------------------------------------------------------- provenance


def git_commit(cwd: str | os.PathLike | None = None) -> str:
    """The checked-out commit (``-dirty`` when the tree has changes), or ``unknown`` outside git."""
    try:
        run = lambda *a: subprocess.run(  # noqa: E731
            ["git", *a], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        commit = run("rev-parse", "HEAD")
        return commit + ("-dirty" if run("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def hardware() -> dict[str, Any]:
    """The machine the report runs on: OS, CPU, cores, memory, GPUs."""
    info: dict[str, Any] = {"platform": platform.platform(), "cpu": platform.processor() or platform.machine()}
    info["cores"] = os.cpu_count()
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    try:
        import torch

        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 (a broken CUDA install must not break the report)
        info["gpus"] = []
    return info


def versions() -> dict[str, str]:
    """Package versions: endofm's own record (Python, endofm, torch, NumPy) plus the report's libraries."""
    import importlib.metadata

    from endofm.models.checkpoint import package_versions

    out = dict(package_versions())
    for name in ("pandas", "matplotlib", "jinja2", "scipy", "snakemake"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
