"""Robustness read-out: a finished fine-tuning run scored again on corrupted test inputs.

:func:`evaluate_robustness` rebuilds the run's selected model from its ``model.pt`` (a frozen PolypDiag
run: the backbone it was read out from and its stored probe, via its benchmark's
:attr:`~endofm.tasks.benchmarks.TaskEntry.frozen_scores`), then, for each (corruption, severity),
predicts the test split with the corruption applied on the fly (:mod:`endofm.data.corruptions`; masks and
boxes move with the pixels) and writes one metrics file per cell, shaped like the clean one
(:func:`~endofm.tasks.benchmarks.evaluate_run`) plus ``corruption``, ``severity`` and ``corruption_seed``
(the run's seed: runs of different methods with one seed see the same corrupted clips, so the report's
paired tests compare like with like). Nothing is retrained.

:func:`preview_clip` and :func:`preview_figure` draw one test frame under each corruption and severity
(the report's preview).

Layer: tasks (docs/architecture.md). May import: foundation, data, models, engine, metrics, pretraining,
methods and the other tasks modules.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from endofm.config import from_dict
from endofm.data.benchmarks import read_manifest
from endofm.data.corruptions import SEVERITIES, ClipCorruption
from endofm.engine import resolve_device
from endofm.io import write_json
from endofm.models.checkpoint import load_checkpoint
from endofm.models.vit import BackboneConfig
from endofm.tasks.benchmarks import get_benchmark
from endofm.tasks.evaluation import SYNTHETIC_NOTE, read_run
from endofm.tasks.finetune import MODEL_NAME
from endofm.tasks.runs import build_run_backbone

log = logging.getLogger(__name__)


def parse_cells(corruptions: Mapping[str, Sequence[int]]) -> list[ClipCorruption]:
    """``{name: [severities]}`` -> the (unseeded) cells in that order; unknown names or severities fail."""
    return [ClipCorruption(name, int(s)) for name, severities in corruptions.items() for s in severities]


class _Scorer:
    """The run's selected model, scoring the test split under a corruption (None: clean)."""

    def __init__(self, run_dir: Path, manifest: Path, raw_dir: Path, config_class: type, num_workers: int) -> None:
        self.run = read_run(run_dir)
        run, settings = self.run, self.run.get("settings") or {}
        if "task" not in settings or "backbone" not in settings:
            raise ValueError(
                f"{run_dir / 'run.json'}: no recorded settings (task, backbone); rerun the fine-tuning job"
            )
        self.bench = get_benchmark(run["benchmark"])
        self.cfg = from_dict(config_class, settings["task"], "task")
        self.cfg.train.num_workers = num_workers
        self.root, self.seed, self.mode = raw_dir, int(run["seed"]), run["mode"]
        self.splits = self.bench.protocol_splits(
            read_manifest(manifest), run["protocol"], self.seed,
            val_fraction=self.cfg.train.val_fraction, label_fraction=run.get("label_fraction", 1.0),
        )  # fmt: skip
        if self.splits.test.split != run["test_split"]:
            raise ValueError(
                f"{run_dir}: test split {self.splits.test.split!r} differs from the run's {run['test_split']!r}"
            )
        self.entry = self.bench.task()
        self.ckpt = load_checkpoint(run_dir / MODEL_NAME)
        self.device = resolve_device(self.cfg.train.device)
        self.probe = self.mode == "frozen" and self.entry.frozen is not None
        backbone_cfg = from_dict(BackboneConfig, settings["backbone"], "backbone")
        options = settings.get("backbone_options") or {}
        # A probe's model.pt holds the probe alone: its backbone is the checkpoint the run read out. A trained
        # model's holds every weight, so the backbone is built bare and overwritten.
        checkpoint = settings.get("checkpoint") if self.probe else None
        self.backbone = build_run_backbone(backbone_cfg, checkpoint, self.seed, run["method"], options, self.mode)
        if self.probe and "probe" not in (self.ckpt.get("extra") or {}):
            raise ValueError(f"{run_dir / MODEL_NAME}: no stored probe (written before robustness); rerun the run")

    def scores(self, corrupt: ClipCorruption | None) -> dict[str, float]:
        if self.probe:
            state = self.ckpt["extra"]["probe"]
            with torch.no_grad():
                return self.entry.frozen_scores(
                    self.cfg, self.splits, self.root, self.backbone, state, self.device, corrupt
                )
        task = self.entry.task(self.cfg, self.splits, self.root, self.seed, corrupt=corrupt)
        model = task.build_model(self.backbone)
        model.load_state_dict(self.ckpt["student"])
        model.to(self.device).eval()
        return task.score(task.predict(model, "test", self.device), "test")


def evaluate_robustness(
    run_dir: str | Path,
    manifest: str | Path,
    raw_dir: str | Path,
    corruptions: Sequence[ClipCorruption],
    out_paths: Sequence[str | Path],
    config_class: type,
    *,
    synthetic: bool,
    num_workers: int = 0,
) -> list[dict[str, Any]]:
    """Score the run in ``run_dir`` under each of ``corruptions`` (seeded here by the run's seed) and write
    each cell's metrics record to the matching ``out_paths`` entry. ``config_class``: the benchmark's task
    settings class (the run's recorded settings are read into it). Returns the records."""
    if len(corruptions) != len(out_paths):
        raise ValueError(f"expected one output path per corruption, got {len(out_paths)} for {len(corruptions)}")
    scorer = _Scorer(Path(run_dir), Path(manifest), Path(raw_dir), config_class, num_workers)
    run = scorer.run
    records = []
    for cell, out in zip(corruptions, out_paths, strict=True):
        started = time.time()
        cell = ClipCorruption(cell.name, cell.severity, scorer.seed)
        metrics = scorer.scores(cell)
        record = {
            **{k: run[k] for k in ("benchmark", "method", "variant", "protocol", "mode", "seed")},
            "label_fraction": run.get("label_fraction", 1.0),
            "pretrain_fraction": run.get("pretrain_fraction", 1.0),
            "draw": run.get("draw", 0),
            "corruption": cell.name,
            "severity": cell.severity,
            "corruption_seed": cell.seed,
            "data": "synthetic" if synthetic else "real",
            **({"note": SYNTHETIC_NOTE} if synthetic else {}),
            "test_split": run["test_split"],
            "metrics": metrics,
            "selected_epoch": run["selection"]["epoch"],
            "config_hash": run["config_hash"],
            "versions": run["versions"],
            "device": str(scorer.device),
            "wall_seconds": time.time() - started,
        }
        write_json(out, record)
        log.info("%s %s: %s", run_dir, cell.tag, json.dumps({k: round(v, 4) for k, v in metrics.items()}))
        records.append(record)
    return records


# ----------------------------------------------------------------------------------------------------
# Preview


def preview_clip(
    benchmark: str, manifest: pd.DataFrame, raw_dir: str | Path, test_split: str, frames: int = 4
) -> dict[str, Any] | None:
    """A short test clip to preview corruptions on: CVC-12k (``masks``: the sequence with the largest polyp,
    its first ``frames`` frames) or KUMC (``boxes`` of the key frame, the annotated frame with the largest box
    and its ``frames - 1`` predecessors); ``frames`` uint8 (T, H, W, 3), ``key`` its name, ``shown`` the
    frame index to draw. None for another benchmark or an empty split."""
    from endofm.data.cvc import CVCSequenceDataset
    from endofm.data.kumc import KUMCDataset, annotated_frames

    rows = manifest[manifest["split"] == test_split]
    if rows.empty:
        return None
    if benchmark == "cvc12k":
        best = str(rows.sort_values("polyp_pixels", ascending=False)["sequence"].iloc[0])
        seq = rows[rows["sequence"].astype(str) == best].sort_values("frame_index").head(frames)
        item = CVCSequenceDataset(seq, Path(raw_dir), test_split)[0]
        clip = item["frames"].numpy()
        return {"frames": clip, "masks": item["masks"].numpy(), "key": best, "shown": len(clip) - 1, "keep": ()}
    if benchmark == "kumc":
        annotated = annotated_frames(manifest, test_split)
        areas = [sum((b[2] - b[0]) * (b[3] - b[1]) for b in json.loads(x)) for x in annotated["boxes"]]
        if annotated.empty or max(areas) <= 0:
            return None
        image_id = int(annotated["image_id"].iloc[int(np.argmax(areas))])
        base = KUMCDataset(rows, Path(raw_dir), test_split, tuple(range(-(frames - 1), 0)))
        index = next(i for i in range(len(base)) if int(base.items.iloc[i]["image_id"]) == image_id)
        item = base[index]
        key = int(item["key_index"])
        return {"frames": item["frames"].numpy(), "boxes": item["boxes"].numpy(), "key": str(image_id), "shown": key,
                "keep": (key,)}  # fmt: skip
    return None


def preview_figure(clip: Mapping[str, Any], corruptions: Mapping[str, Sequence[int]], seed: int = 0) -> Any:
    """One frame of ``clip`` (:func:`preview_clip`) clean and under each corruption (rows) at each severity
    (columns), with the true mask outline or boxes as the corruption moves them: a matplotlib Figure."""
    import matplotlib  # here: only the report draws, and matplotlib is slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(corruptions)
    levels = sorted({int(s) for v in corruptions.values() for s in v} or set(SEVERITIES))
    fig, axes = plt.subplots(
        len(names), len(levels) + 1, figsize=(2.3 * (len(levels) + 1), 2.1 * len(names)), squeeze=False
    )
    t = int(clip["shown"])

    def draw(ax, frame, mask=None, boxes=None, title=""):
        ax.imshow(frame)
        if mask is not None and mask.any():
            ax.contour(mask.astype(float), levels=[0.5], colors=["lime"], linewidths=1.0)
        for x0, y0, x1, y1 in [] if boxes is None else boxes:
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="lime", lw=1.0))
        ax.set_title(title, fontsize=7)
        ax.axis("off")

    for i, name in enumerate(names):
        masks = clip.get("masks")
        draw(axes[i, 0], clip["frames"][t], None if masks is None else masks[t], clip.get("boxes"), f"{name}: clean")
        for j, level in enumerate(levels, start=1):
            ax = axes[i, j]
            if level not in [int(s) for s in corruptions[name]]:
                ax.axis("off")
                continue
            out = ClipCorruption(name, level, seed)(clip["frames"], clip["key"], keep=clip["keep"])
            mask = None if masks is None else out.warp_masks(masks)[t]
            boxes = None
            if clip.get("boxes") is not None:
                moved, ok = out.warp_boxes(clip["boxes"])
                boxes = moved[ok]
            shown = "" if out.source[t] == t else f" (shows frame {out.source[t]})"
            draw(ax, out.frames[t], mask, boxes, f"severity {level}{shown}")
    fig.tight_layout()
    return fig
