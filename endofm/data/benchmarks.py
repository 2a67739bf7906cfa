"""The downstream benchmarks by name: index a raw layout into ``manifest.csv`` + a ``manifest.json`` summary.

Layer: data and models (docs/architecture.md). May import: foundation and the other data modules.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from endofm.data import cvc, kumc, polypdiag
from endofm.data.kumc import to_coco
from endofm.io import write_csv, write_json

log = logging.getLogger(__name__)

#: Per benchmark: the indexer of its raw layout, and the summary of one split of its manifest.
BENCHMARKS: dict[str, tuple[Callable[[Path], pd.DataFrame], Callable[[pd.DataFrame], dict[str, Any]]]] = {
    "polypdiag": (polypdiag.index_polypdiag, polypdiag.summarize_split),
    "cvc12k": (cvc.index_cvc, cvc.summarize_split),
    "kumc": (kumc.index_kumc, kumc.summarize_split),
}

NOTES = {
    "polypdiag": [
        "val is the official test split (splits/val.txt); there is no official validation split",
        "label 1 = abnormal, 0 = normal",
    ],
    "cvc12k": [
        "'CVC-12k' is read as the 612-frame CVC-ClinicDB (Original/ and Ground Truth/ tifs)",
        "one sample is one whole sequence; masks: 255 -> 1, all else -> 0",
        "sequences come from videolist.txt if present, else the official hard-coded lists, in which 7 of 9 "
        "test sequences are also train sequences (see overlaps_other_split)",
    ],
    "kumc": [
        "val (val2019) is the split the paper reports as its test set",
        "boxes are 0-based continuous [x0, y0, x1, y1]: x0 = VOC xmin - 1, x1 = VOC xmax",
        "frames without an XML are unannotated; an XML without objects is a polyp-free frame",
        "coco_{split}.json holds the annotated frames only",
    ],
}


def build_manifest(benchmark: str, raw_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Index ``raw_dir`` as ``benchmark`` and write ``out_dir/manifest.csv`` and ``manifest.json``.

    For ``kumc`` also ``out_dir/coco_{split}.json`` per split. Every file is written atomically and
    ``manifest.json`` last, so its presence means the outputs are complete. Returns the summary.
    """
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {sorted(BENCHMARKS)}")
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"{raw_dir}: raw {benchmark} folder not found")
    index, summarize_split = BENCHMARKS[benchmark]
    manifest = index(raw_dir)
    summary: dict[str, Any] = {"benchmark": benchmark, "raw_dir": str(raw_dir), "rows": len(manifest)}
    summary["splits"] = {split: summarize_split(rows) for split, rows in manifest.groupby("split", sort=False)}
    summary["notes"] = NOTES[benchmark]
    files = ["manifest.csv"]
    (out_dir / "manifest.json").unlink(missing_ok=True)  # no summary may describe a half-updated folder
    write_csv(out_dir / "manifest.csv", manifest)
    if benchmark == "kumc":
        for split in manifest["split"].unique():
            write_json(out_dir / f"coco_{split}.json", to_coco(manifest, split))
            files.append(f"coco_{split}.json")
    summary["files"] = files
    write_json(out_dir / "manifest.json", summary)
    counts = ", ".join(f"{split} {len(rows)}" for split, rows in manifest.groupby("split", sort=False))
    log.info(
        "%s: indexed %s -> %d rows (%s) in %s: %s",
        benchmark,
        raw_dir,
        len(manifest),
        counts,
        out_dir,
        ", ".join(files + ["manifest.json"]),
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
