"""What can a KUMC detection head learn from a frozen backbone? A per-block linear probe of "polyp here".

The frozen KUMC read-out trains a small FCOS head for 192 steps on the backbone's last-block patch tokens, and
its F1 and AP50 barely tell Endo-FM from Scratch (docs/decisions.md: The evidence run). This asks the features
directly. For every benchmark draw and backbone, each annotated key frame of the training and test videos (the
clean protocol's; the validation carve-out is not used) goes through the frozen backbone alone (T = 1, with the
detection task's resize and normalisation). The patch tokens after every block, and the final-norm tokens the
detector's pyramid reads (``norm``), are labelled 1 when the patch centre lies inside a ground-truth box;
padding patches are left out. A logistic regression (C = 1, standardised tokens, class-balanced, nothing
selected) fits the training patches and is scored on the test patches: AUROC and average precision (the chance
AP is the share of polyp patches, printed). Endo-FM-like methods load their pretraining's ``backbone.pt``;
``scratch`` is drawn from each of ``--seeds`` (a pretrained backbone is one file, so it has one row per draw).

Printed per method and block: mean ± std over draws (and seeds), then each draw's value; ``--json`` keeps all.
Reads the workflow's data and pretrainings: run the workflow with the same configs first (the evidence run:
``--workdir build/evidence --config config/config.yaml config/evidence.yaml``).

    python benchmarks/bench_kumc_features.py [--workdir DIR] [--config A.yaml [B.yaml ...]]
        [--methods endofm,scratch] [--draws 0,1,2] [--seeds 0,1,2] [--threads 1] [--json FILE]
"""

from __future__ import annotations

import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from endofm.config import load_yaml, merge
from endofm.data.benchmarks import read_manifest
from endofm.paths import benchmark_data
from endofm.settings import load_workflow_config, run_backbone, run_backbone_options
from endofm.tasks.benchmarks import get_benchmark
from endofm.tasks.detect import DetectionDataset, pad_clips
from endofm.tasks.runs import build_run_backbone

if not __package__:  # run as a file: the repository root makes `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402


def patch_labels(boxes: torch.Tensor, height: int, width: int, grid: tuple[int, int], patch: int) -> np.ndarray:
    """(gh·gw,) labels of a padded frame's patches, row-major: 1 inside a box, 0 outside, -1 for a patch whose
    centre lies in the padding (beyond the unpadded ``height`` x ``width``)."""
    gh, gw = grid
    cy = (torch.arange(gh, dtype=torch.float32) + 0.5) * patch
    cx = (torch.arange(gw, dtype=torch.float32) + 0.5) * patch
    y, x = torch.meshgrid(cy, cx, indexing="ij")
    inside = torch.zeros(gh, gw, dtype=torch.bool)
    for x0, y0, x1, y1 in boxes.reshape(-1, 4).tolist():
        inside |= (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
    labels = inside.to(torch.int64)
    labels[(y > height) | (x > width)] = -1
    return labels.reshape(-1).numpy()


@torch.no_grad()
def block_tokens(backbone: torch.nn.Module, dataset: DetectionDataset, multiple: int, batch: int = 16):
    """Per block name (``block<i>`` and ``norm``): the patch tokens (P, C) of every frame's patches inside the
    image, and their labels (P,)."""
    outputs: dict[str, torch.Tensor] = {}
    hooks = [
        block.register_forward_hook(lambda m, a, out, name=f"block{i}": outputs.__setitem__(name, out))
        for i, block in enumerate(backbone.blocks)
    ]
    feats: dict[str, list[np.ndarray]] = {}
    labels: list[np.ndarray] = []
    try:
        for start in range(0, len(dataset), batch):
            items = [dataset[i] for i in range(start, min(start + batch, len(dataset)))]
            clip = pad_clips([it["clip"] for it in items], multiple)  # (B, 3, 1, H, W)
            patch = backbone.patch_size
            grid = (clip.shape[-2] // patch, clip.shape[-1] // patch)
            dense = backbone.forward_features(clip, dense=True)
            per_frame = [
                patch_labels(it["boxes"], *it["clip"].shape[-2:], grid, patch) for it in items
            ]  # fmt: skip
            keep = np.concatenate(per_frame) >= 0
            labels.append(np.concatenate(per_frame)[keep])
            tokens = {name: out[:, 1:] for name, out in outputs.items()}  # T = 1: patches in (h, w) order
            tokens["norm"] = dense.patches[:, 0].flatten(1, 2)
            for name, t in tokens.items():
                feats.setdefault(name, []).append(t.reshape(-1, t.shape[-1]).float().numpy()[keep])
    finally:
        for h in hooks:
            h.remove()
    y = np.concatenate(labels)
    return {name: np.concatenate(v) for name, v in feats.items()}, y


def probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> dict[str, float]:
    """Logistic regression on standardised tokens (C = 1, balanced classes): test AUROC and AP."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score, roc_auc_score
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train)
    clf = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000)
    clf.fit(scaler.transform(x_train), y_train)
    scores = clf.decision_function(scaler.transform(x_test))
    return {"auroc": float(roc_auc_score(y_test, scores)), "ap": float(average_precision_score(y_test, scores))}


def load_configs(files: list[Path]) -> Any:
    """The workflow config of ``files`` merged in order, as Snakemake merges several ``--configfile``."""
    data: dict[str, Any] = {}
    for f in files:
        data = merge(data, load_yaml(f) or {})
    return load_workflow_config(data)


def fmt(values: list[float]) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:5.1f} ± {100 * std:4.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__, threads=1, json=True)
    parser.add_argument("--workdir", type=Path, default=Path("."), help="the workflow's working folder (.)")
    parser.add_argument(
        "--config", type=Path, nargs="+", default=[common.DEFAULT_CONFIG], help="workflow configs, merged in order"
    )
    parser.add_argument("--methods", default="endofm,scratch")
    parser.add_argument("--variant", default="default")
    parser.add_argument("--draws", default="0")
    parser.add_argument("--seeds", default="0,1,2", help="scratch's initialisation seeds (0,1,2)")
    args = parser.parse_args(argv)
    common.setup(args)
    configs = [c.resolve() for c in args.config]
    os.chdir(args.workdir)
    with common.config_errors():
        cfg = load_configs(configs)
    task = cfg.finetune.task("kumc", "endofm")
    bench = get_benchmark("kumc")
    draws, seeds = common.numbers(args.draws), common.numbers(args.seeds)
    results: list[dict[str, Any]] = []
    for draw in draws:
        data = benchmark_data("kumc", draw)
        manifest = Path(cfg.data.benchmarks_dir) / data / "manifest.csv"
        if not manifest.is_file():
            sys.exit(f"error: {manifest} not found; run the workflow's data stage with these configs first")
        splits = bench.protocol_splits(read_manifest(manifest), "clean", 0, val_fraction=task.train.val_fraction)
        raw = Path(cfg.data.raw_dir) / data
        sets = {role: DetectionDataset(task, getattr(splits, role).rows, raw, getattr(splits, role).split, False)
                for role in ("train", "test")}  # fmt: skip
        for method in args.methods.split(","):
            backbone_cfg, checkpoint = run_backbone(cfg, method, args.variant if method != "scratch" else "none")
            if checkpoint is not None and not Path(checkpoint).is_file():
                sys.exit(f"error: {checkpoint} not found; run the {method} pretraining with these configs first")
            for seed in seeds if checkpoint is None else [0]:
                model = build_run_backbone(
                    backbone_cfg, checkpoint, seed, method, run_backbone_options(cfg, method), "frozen"
                ).eval()
                multiple = math.lcm(task.size_divisibility, model.patch_size)
                train_x, train_y = block_tokens(model, sets["train"], multiple)
                test_x, test_y = block_tokens(model, sets["test"], multiple)
                for block in train_x:
                    row = {"draw": draw, "method": method, "seed": seed, "block": block,
                           "positives": float(test_y.mean()), "train_patches": int(len(train_y)),
                           **probe(train_x[block], train_y, test_x[block], test_y)}  # fmt: skip
                    results.append(row)
                print(f"draw {draw} {method} seed {seed}: " + " ".join(
                    f"{r['block']} {100 * r['auroc']:.1f}/{100 * r['ap']:.1f}" for r in results[-len(train_x):]
                ), flush=True)  # fmt: skip
    print("\nper-patch polyp probe, test AUROC and AP x100, mean ± std over draws (and scratch's seeds)")
    print(f"chance AP (share of polyp patches): {fmt([r['positives'] for r in results if r['block'] == 'norm'])}")
    table = common.Table([("method", "<10"), ("block", "<8"), ("AUROC", ">13"), ("AP", ">13"), ("  AP per draw", "")])
    table.print_header(rule=True)
    for method in dict.fromkeys(r["method"] for r in results):
        for block in dict.fromkeys(r["block"] for r in results if r["method"] == method):
            rows = [r for r in results if r["method"] == method and r["block"] == block]
            per_draw = [
                statistics.fmean(r["ap"] for r in rows if r["draw"] == d) for d in dict.fromkeys(r["draw"] for r in rows)
            ]  # fmt: skip
            table.print_row(method, block, fmt([r["auroc"] for r in rows]), fmt([r["ap"] for r in rows]),
                            "  " + " ".join(f"{100 * v:.1f}" for v in per_draw))  # fmt: skip
    if args.json:
        print(common.write_results(args.json, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
