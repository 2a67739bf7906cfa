"""Evaluation protocols: which manifest rows train, select the model and test (docs/original.md §5).

``paper`` reproduces the official evaluation with its flaws, so numbers compare with the paper's:
the official splits, the CVC train/test overlap kept, and model selection on the test split.
``clean`` fixes them: a validation split carved from the training videos (by video or sequence,
never by frame; stratified by label for PolypDiag), CVC training sequences that share frames with a
test sequence dropped, model selection on validation, and a single final test. For KUMC the clean
protocol selects on ``val2019`` (the paper's test set) and tests once on ``test2019``.

Either protocol can train on a fraction of its training videos (:func:`label_subset`, the
label-efficiency axis): whole videos, stratified like the validation carve-out, and nested (for one
seed, the videos of a smaller fraction are among those of every larger one).

Layer: tasks (docs/architecture.md). May import: foundation, data, models, engine, metrics, pretraining, methods and the other tasks modules.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

Protocol = Literal["paper", "clean"]
PROTOCOLS: tuple[str, ...] = ("paper", "clean")


@dataclass(frozen=True)
class OfficialSplits:
    """A benchmark's official splits as the protocols use them: ``unit`` names the column of a video (the
    unit of every carve-out), ``stratify`` a per-unit column carve-outs and label subsets keep balanced,
    ``overlap`` a boolean column marking training units that share frames with the test split (the clean
    protocol drops them, the paper protocol keeps them and says so)."""

    unit: str
    train: str
    paper_test: str
    clean_test: str
    clean_select: str | None = None  # None: carve validation from the training units
    stratify: str | None = None
    overlap: str | None = None


@dataclass(frozen=True)
class SplitRows:
    """Rows of one role; ``split`` is the official split name the rows carry in the manifest."""

    split: str
    rows: pd.DataFrame


@dataclass(frozen=True)
class ProtocolSplits:
    """The ``train``, ``select`` (model selection) and ``test`` rows of a benchmark under a protocol."""

    benchmark: str
    protocol: str
    train: SplitRows
    select: SplitRows
    test: SplitRows
    notes: tuple[str, ...] = ()
    unit: str = "video"  # the column naming a video (OfficialSplits.unit)

    def units(self, role: str) -> list[str]:
        """The videos (sequences) of ``role``, in manifest order."""
        rows = getattr(self, role).rows
        return list(dict.fromkeys(rows[self.unit].astype(str)))

    def summary(self) -> dict[str, object]:
        return {
            "protocol": self.protocol,
            **{
                role: {"split": getattr(self, role).split, "units": len(self.units(role))}
                for role in ("train", "select", "test")
            },
            "select_is_test": self.select.rows.equals(self.test.rows),
            "notes": list(self.notes),
        }


def _rows(manifest: pd.DataFrame, split: str, benchmark: str) -> pd.DataFrame:
    rows = manifest[manifest["split"] == split]
    if rows.empty:
        raise ValueError(f"{benchmark} manifest has no rows for the official split {split!r}")
    return rows


def carve_validation(
    rows: pd.DataFrame, unit: str, fraction: float, seed: int, stratify: str | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``rows`` by whole units (videos/sequences) into (train, val) with ``round(fraction · units)``
    units in val (at least 1, leaving at least 1 for training); per stratum when ``stratify`` names a
    per-unit column. Deterministic in ``seed``."""
    if not 0 < fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {fraction}")
    units = rows.drop_duplicates(unit)
    groups = [units] if stratify is None else [g for _, g in units.groupby(stratify, sort=True)]
    rng = np.random.default_rng(seed)
    val_units: list[str] = []
    for group in groups:
        names = group[unit].astype(str).tolist()
        n_val = min(max(1, round(fraction * len(names))), len(names) - 1)
        if n_val < 1:
            continue
        val_units += [names[i] for i in sorted(rng.choice(len(names), n_val, replace=False))]
    if not val_units or len(val_units) == len(units):
        raise ValueError(
            f"cannot carve a validation split from {len(units)} unit(s) of {unit!r}: need at least 2 per stratum"
        )
    is_val = rows[unit].astype(str).isin(val_units)
    return rows[~is_val], rows[is_val]


def label_subset(
    rows: pd.DataFrame, unit: str, fraction: float, seed: int, stratify: str | None = None
) -> pd.DataFrame:
    """The rows of ``round(fraction · units)`` whole units (at least one) of ``rows``, per stratum when
    ``stratify`` names a per-unit column, in manifest order.

    Each stratum's units are ranked once by a permutation drawn from ``seed`` and the stratum, and a
    fraction keeps a prefix of that ranking, so for one seed the subsets are nested across fractions.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"label_fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return rows
    units = rows.drop_duplicates(unit)
    groups = [("", units)] if stratify is None else list(units.groupby(stratify, sort=True))
    kept: list[str] = []
    for key, group in groups:
        names = group[unit].astype(str).tolist()
        rng = np.random.default_rng([seed, zlib.crc32(f"labels:{key}".encode())])
        order = rng.permutation(len(names))
        kept += [names[i] for i in order[: max(1, round(fraction * len(names)))]]
    return rows[rows[unit].astype(str).isin(kept)]


def protocol_splits(
    benchmark: str,
    official: OfficialSplits,
    manifest: pd.DataFrame,
    protocol: str,
    seed: int = 0,
    val_fraction: float = 0.2,
    label_fraction: float = 1.0,
) -> ProtocolSplits:
    """The rows each role uses for ``benchmark`` under ``protocol``; ``seed`` drives the clean carve-out
    and the ``label_fraction`` subset of the training videos (after the carve-out, so validation and
    test do not change with the fraction)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    train_split, paper_test, clean_select, clean_test = (
        official.train,
        official.paper_test,
        official.clean_select,
        official.clean_test,
    )
    unit, stratify = official.unit, official.stratify
    train = _rows(manifest, train_split, benchmark)

    def subset(rows: pd.DataFrame) -> pd.DataFrame:
        if label_fraction < 1:
            before = rows[unit].nunique()
            rows = label_subset(rows, unit, label_fraction, seed, stratify)
            notes.append(f"label fraction {label_fraction:g}: {rows[unit].nunique()} of {before} training {unit}s")
        return rows

    if protocol == "paper":
        test = SplitRows(paper_test, _rows(manifest, paper_test, benchmark))
        notes = [f"model selection on the test split ({paper_test}), as the original"]
        if official.overlap and train[official.overlap].astype(bool).any():
            n = train.loc[train[official.overlap].astype(bool), unit].nunique()
            notes.append(f"{n} training sequence(s) share frames with test sequences (official overlap kept)")
        train = subset(train)
        return ProtocolSplits(benchmark, protocol, SplitRows(train_split, train), test, test, tuple(notes), unit)

    notes = []
    if official.overlap:
        leaks = train[official.overlap].astype(bool)
        if leaks.any():
            notes.append(f"dropped {train.loc[leaks, unit].nunique()} training sequence(s) sharing frames with test")
        train = train[~leaks]
    if clean_select is None:
        train, val = carve_validation(train, unit, val_fraction, seed, stratify)
        select = SplitRows(train_split, val)
        notes.append(f"validation: {val[unit].nunique()} training {unit}(s) held out (seed {seed})")
    else:
        select = SplitRows(clean_select, _rows(manifest, clean_select, benchmark))
        notes.append(f"validation: the official {clean_select} split")
    train = subset(train)
    test = SplitRows(clean_test, _rows(manifest, clean_test, benchmark))
    return ProtocolSplits(benchmark, protocol, SplitRows(train_split, train), select, test, tuple(notes), unit)
