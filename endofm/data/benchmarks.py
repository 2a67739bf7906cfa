"""Benchmark indexing: a raw layout into ``manifest.csv`` + a ``manifest.json`` summary, as an :class:`Indexer`
says (each benchmark's is declared in :mod:`endofm.tasks.benchmarks`).

Layer: data and models (docs/architecture.md). May import: foundation and the other data modules.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from endofm.io import write_csv, write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Indexer:
    """How a benchmark's raw layout becomes its index: ``index`` reads the layout into the manifest rows,
    ``summarize`` describes one split's rows, ``notes`` go into ``manifest.json``, and ``extra_files``
    (file name -> function of the manifest) are further files derived from the manifest, e.g. KUMC's COCO
    annotations; ``settings`` names the ``data`` keys ``index`` takes as keyword arguments."""

    index: Callable[..., pd.DataFrame]
    summarize: Callable[[pd.DataFrame], dict[str, Any]]
    notes: tuple[str, ...] = ()
    extra_files: Mapping[str, Callable[[pd.DataFrame], Any]] = field(default_factory=dict)
    #: The keyword settings ``index`` takes from the workflow's ``data`` section, as {argument: data key}.
    settings: Mapping[str, str] = field(default_factory=dict)

    def options(self, data: Any) -> dict[str, Any]:
        """The keyword settings of ``index`` from ``data`` (a :class:`~endofm.settings.DataConfig`; None: defaults)."""
        return {arg: getattr(data, key) for arg, key in self.settings.items()} if data is not None else {}

    def outputs(self) -> list[str]:
        """The files :func:`build_manifest` writes, ``manifest.json`` (written last) last."""
        return ["manifest.csv", *self.extra_files, "manifest.json"]


def build_manifest(
    benchmark: str, indexer: Indexer, raw_dir: Path, out_dir: Path, options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Index ``raw_dir`` as ``benchmark`` with ``indexer`` (``options``: its keyword settings,
    :meth:`Indexer.options`) and write ``indexer.outputs()`` into ``out_dir``.

    Every file is written atomically and ``manifest.json`` last, so its presence means the outputs are
    complete. Returns the summary.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"{raw_dir}: raw {benchmark} folder not found")
    manifest = indexer.index(raw_dir, **dict(options or {}))
    summary: dict[str, Any] = {"benchmark": benchmark, "raw_dir": str(raw_dir), "rows": len(manifest)}
    summary["splits"] = {split: indexer.summarize(rows) for split, rows in manifest.groupby("split", sort=False)}
    summary["notes"] = list(indexer.notes)
    files = indexer.outputs()
    (out_dir / "manifest.json").unlink(missing_ok=True)  # no summary may describe a half-updated folder
    write_csv(out_dir / "manifest.csv", manifest)
    for name, derive in indexer.extra_files.items():
        write_json(out_dir / name, derive(manifest))
    summary["files"] = files[:-1]
    write_json(out_dir / "manifest.json", summary)
    counts = ", ".join(f"{split} {len(rows)}" for split, rows in manifest.groupby("split", sort=False))
    log.info(
        "%s: indexed %s -> %d rows (%s) in %s: %s", benchmark, raw_dir, len(manifest), counts, out_dir, ", ".join(files)
    )
    return summary


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a ``manifest.csv`` back with the written types (names stay strings, empty stays empty)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found; index the benchmark first (`endofm index BENCHMARK`)")
    names = {"sample_id": str, "path": str, "sequence": str, "video": str, "image": str, "annotation": str}
    header = pd.read_csv(path, nrows=0).columns
    return pd.read_csv(path, keep_default_na=False, dtype={k: v for k, v in names.items() if k in header})
