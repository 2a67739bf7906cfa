"""endofm.tasks.evaluation: one place per evaluation piece, and evaluation jobs that never import torch."""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from endofm.data.benchmarks import read_manifest
from endofm.data.cvc import read_mask
from endofm.data.kumc import to_coco
from endofm.tasks import benchmarks, classify, detect, evaluation, finetune, runs, segment

ROOT = Path(__file__).resolve().parents[1]
TEST_SPLITS = {"polypdiag": "val", "cvc12k": "test", "kumc": "test"}


def test_one_definition_per_piece() -> None:
    assert runs.evaluate_run is benchmarks.evaluate_run
    assert detect.detection_metrics is evaluation.detection_metrics
    # evaluate_detection falls back on detection_metrics' thresholds for a run without them: DetectConfig's.
    defaults = inspect.signature(evaluation.detection_metrics).parameters
    for key in ("score_threshold", "iou_threshold"):
        assert defaults[key].default == getattr(detect.DetectConfig, key)
    assert (classify.PREDICTIONS, segment.MASKS, detect.DETECTIONS, finetune.RUN_NAME) == (
        evaluation.PREDICTIONS,
        evaluation.MASKS,
        evaluation.DETECTIONS,
        evaluation.RUN_NAME,
    )


def _perfect_run(bench: str, manifest: Path, raw: Path, run_dir: Path) -> None:
    """A run record of ``bench`` whose saved test predictions are the ground truth."""
    rows = read_manifest(manifest)
    rows = rows[rows["split"] == TEST_SPLITS[bench]]
    run_dir.mkdir(parents=True)
    if bench == "polypdiag":
        labels = rows["label"].to_numpy()
        pd.DataFrame({"sample_id": rows["sample_id"], "prob_0": 1.0 - labels, "prob_1": labels * 1.0}).to_csv(
            run_dir / evaluation.PREDICTIONS, index=False
        )
    elif bench == "cvc12k":
        masks = {
            name: np.stack([read_mask(raw / p) for p in part.sort_values("frame_index")["mask"]])
            for name, part in rows.groupby("sequence")
        }
        np.savez_compressed(run_dir / evaluation.MASKS, **masks)
    else:
        annotations = to_coco(rows, TEST_SPLITS[bench])["annotations"]
        results = [
            {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in annotations
        ]
        (run_dir / evaluation.DETECTIONS).write_text(json.dumps(results))
    record = {
        "benchmark": bench,
        **{"method": "scratch", "variant": "none", "protocol": "clean", "mode": "full", "seed": 0},
        **{"test_split": TEST_SPLITS[bench], "selection": {"epoch": 0}, "splits": {}, "config_hash": "x"},
        **{"versions": {}, "device": "cpu", "wall_seconds": 0.0},
    }
    (run_dir / evaluation.RUN_NAME).write_text(json.dumps(record))


def test_evaluation_job_imports_no_torch(tiny_benchmarks, tmp_path) -> None:
    """What the workflow's evaluation script imports, then one evaluation per benchmark, in a fresh
    interpreter: torch (4-8 s to import) and torchvision are never loaded, and the metrics are right."""
    script = ast.parse((ROOT / "workflow_scripts" / "evaluate_run.py").read_text())
    imports = "\n".join(ast.unparse(node) for node in script.body if isinstance(node, ast.Import | ast.ImportFrom))
    assert "evaluate_run" in imports
    for bench, tiny in tiny_benchmarks.items():
        _perfect_run(bench, tiny.manifest, tiny.raw, tmp_path / bench)
    code = f"""{imports}
import json, sys
from endofm.tasks.benchmarks import evaluate_run
benches = json.loads(sys.argv[1])
for bench, (manifest, raw) in benches.items():
    out = evaluate_run(sys.argv[2] + "/" + bench, manifest, raw, sys.argv[2] + "/" + bench + ".json", synthetic=True)
print(json.dumps(sorted(m for m in ("torch", "torchvision", "sklearn", "timm") if m in sys.modules)))
"""
    benches = {b: [str(t.manifest), str(t.raw)] for b, t in tiny_benchmarks.items()}
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(benches), str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    metrics = {b: json.loads((tmp_path / f"{b}.json").read_text())["metrics"] for b in tiny_benchmarks}
    assert metrics["polypdiag"]["f1"] == 1.0 and metrics["polypdiag"]["n"] == 4
    assert metrics["cvc12k"]["dice"] == 1.0 and metrics["cvc12k"]["frame_iou"] == 1.0
    assert metrics["kumc"]["f1_paper"] == 1.0 and metrics["kumc"]["f1_iou"] == 1.0 and metrics["kumc"]["AP50"] == 1.0


def test_evaluate_by_hand_writes_where_the_report_reads():
    """`endofm evaluate RUN_DIR`'s default output is the workflow's metrics path, which the report reads."""
    from endofm.tasks.runs import metrics_path

    run = {
        "benchmark": "kumc",
        "method": "scratch",
        "variant": "none",
        "protocol": "clean",
        "mode": "frozen",
        "seed": 0,
    }
    assert metrics_path(run) == Path("results/metrics/kumc/scratch/none/clean/frozen/seed0.json")
    run |= {"label_fraction": 0.25, "pretrain_fraction": 0.5}
    assert metrics_path(run) == Path("results/metrics/kumc/scratch/none/clean/frozen/seed0-pt50-labels25.json")
