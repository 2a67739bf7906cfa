"""A fourth benchmark registered from this file alone, run through index -> fine-tune -> evaluate -> report.

"Frames" classifies single frames of the built-in KUMC videos as showing a polyp or not. Everything it
needs (indexer, splits, task, evaluator, headline) is declared here; no package module is edited. That
the rest of the package picks it up from :data:`endofm.tasks.benchmarks.BENCHMARKS` is the proof that a
benchmark lives in one place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from endofm.cli import build_parser
from endofm.data import kumc, synthetic
from endofm.data.benchmarks import Indexer
from endofm.io import write_csv
from endofm.metrics import classification_metrics
from endofm.models.heads import VideoClassifier
from endofm.models.vit import BackboneConfig
from endofm.report import ReportConfig, ReportInputs, build_report
from endofm.tasks.benchmarks import (
    BENCHMARKS,
    Benchmark,
    Headline,
    TaskEntry,
    evaluate_run,
    get_benchmark,
    register,
    synthesize_raw,
    synthetic_names,
)
from endofm.tasks.finetune import OptimConfig, RunSpec, Task, TrainConfig
from endofm.tasks.protocols import OfficialSplits
from endofm.tasks.runs import finetune_benchmark

PREDICTIONS = "frame_predictions.csv"
SIZE, FRAMES = 32, 2


def index_frames(root: Path) -> pd.DataFrame:
    """Every annotated KUMC frame as one sample; label 1 when it has a box."""
    rows = kumc.index_kumc(root)
    rows = rows[rows["annotated"].astype(bool)]
    return pd.DataFrame(
        {
            "split": rows["split"],
            "sample_id": rows["video"].astype(str) + "/" + rows["frame"].astype(str),
            "video": rows["video"].astype(str),
            "image": rows["image"],
            "label": [int(len(json.loads(b)) > 0) for b in rows["boxes"]],
        }
    ).reset_index(drop=True)


def summarize(rows: pd.DataFrame) -> dict:
    return {"frames": len(rows), "with_polyp": int(rows["label"].sum())}


class FrameClips(Dataset):
    """A frame repeated into a still clip (3, T, H, W), its label and index."""

    def __init__(self, rows: pd.DataFrame, root: Path) -> None:
        self.rows, self.root = rows.reset_index(drop=True), root

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row = self.rows.iloc[i]
        with Image.open(self.root / row["image"]) as im:
            frame = torch.from_numpy(np.array(im.convert("RGB").resize((SIZE, SIZE)))).float() / 255
        return frame.permute(2, 0, 1)[:, None].expand(3, FRAMES, SIZE, SIZE).clone(), int(row["label"]), i


@dataclass
class FramesConfig:
    train: TrainConfig = field(default_factory=TrainConfig)


class FramesTask(Task):
    benchmark = "frames"
    selection_metric = "accuracy"
    selection_metrics = ("accuracy", "f1")

    def __init__(self, cfg: FramesConfig, splits, root, seed: int = 0) -> None:
        super().__init__(splits, root, seed)
        self.cfg = cfg

    def build_model(self, backbone):
        return VideoClassifier(backbone, 2)

    def train_dataset(self):
        return FrameClips(self.splits.train.rows, self.root)

    def loss(self, model, batch, device):
        video, label, _ = batch
        return F.cross_entropy(model(video.to(device)), label.to(device))

    @torch.no_grad()
    def predict(self, model, role, device):
        data = FrameClips(getattr(self.splits, role).rows, self.root)
        probs = torch.cat([model(v.to(device)).softmax(-1)[:, 1].cpu() for v, _, _ in DataLoader(data, batch_size=8)])
        return pd.DataFrame({"sample_id": data.rows["sample_id"], "label": data.rows["label"], "prob": probs.numpy()})

    def score(self, predictions, role):
        m = classification_metrics(predictions["label"].to_numpy(), predictions["prob"].to_numpy())
        return {"accuracy": m["accuracy"], "f1": m["f1"]}

    def save_predictions(self, predictions, out_dir):
        write_csv(Path(out_dir) / PREDICTIONS, predictions)
        return [PREDICTIONS]


def evaluate_frames(run_dir, test_rows, **_):
    saved = pd.read_csv(Path(run_dir) / PREDICTIONS, dtype={"sample_id": str})
    assert list(saved["sample_id"]) == list(test_rows["sample_id"])
    return {"metrics": classification_metrics(test_rows["label"].to_numpy(), saved["prob"].to_numpy())}


@pytest.fixture
def frames_benchmark():
    entry = register(
        Benchmark(
            name="frames",
            headline=Headline("Frames", "accuracy", "Acc"),
            indexer=Indexer(index_frames, summarize, notes=("annotated KUMC frames; label 1 = a polyp box",)),
            splits=OfficialSplits(unit="video", train="train", paper_test="val", clean_test="test", clean_select="val"),
            task=lambda: TaskEntry(FramesTask, None),
            evaluate=evaluate_frames,
            predictions=PREDICTIONS,
            secondary=("f1",),
            synthesize=lambda out, cfg: synthetic.synthesize("kumc", out, cfg, progress=False),
        )
    )
    yield entry
    del BENCHMARKS["frames"]


def test_a_fourth_benchmark_runs_end_to_end(frames_benchmark, tmp_path, one_torch_thread):
    assert get_benchmark("frames") is frames_benchmark and "frames" in synthetic_names()
    with pytest.raises(ValueError, match="already registered"):
        register(frames_benchmark)
    assert build_parser().parse_args(["index", "frames"]).benchmark == "frames"  # the CLI's choices
    cfg = synthetic.SynthConfig(height=48, width=64, kumc_videos={"train": 2, "val": 2, "test": 2}, kumc_frames=(8, 10))
    raw = synthesize_raw("frames", tmp_path / "raw/frames", cfg)
    summary = frames_benchmark.index(raw, tmp_path / "index/frames")
    manifest = tmp_path / "index/frames/manifest.csv"
    assert summary["files"] == ["manifest.csv"] and set(summary["splits"]) == {"train", "val", "test"}

    metrics = []
    for seed in (0, 1):
        for protocol in ("paper", "clean"):
            spec = RunSpec("frames", "scratch", "none", protocol, "full", seed)
            train = TrainConfig(epochs=1, batch_size=4, optim=OptimConfig(name="adamw", lr=1e-3), num_workers=0)
            run_dir = tmp_path / "finetune" / spec.path
            record = finetune_benchmark(
                spec,
                FramesConfig(train),
                manifest,
                raw,
                run_dir,
                BackboneConfig(name="vit_micro_patch8", img_size=SIZE, num_frames=FRAMES),
            )
            assert record["test_split"] == ("val" if protocol == "paper" else "test")
            assert (run_dir / PREDICTIONS).is_file()
            out = tmp_path / "metrics" / f"{spec.path}.json"
            result = evaluate_run(run_dir, manifest, raw, out, synthetic=True)
            test = pd.read_csv(manifest).query(f"split == '{record['test_split']}'")
            assert result["metrics"]["n"] == len(test) and 0 <= result["metrics"]["accuracy"] <= 1
            metrics.append(str(out))

    written = build_report(
        ReportInputs(metrics=metrics), tmp_path / "report", ReportConfig(), n_seeds=2, synthetic=True, parts=("tables",)
    )
    assert written
    md = (tmp_path / "report/tables.md").read_text()
    table1 = md.split("## Table 1")[1].split("\n## ")[0]
    assert "Frames Acc" in table1
    values = [json.loads(Path(p).read_text())["metrics"]["accuracy"] for p in metrics if "/paper/" in p]
    mean = 100 * np.mean(values)
    assert f"{mean:.1f} ± " in table1, (mean, table1)
    assert "## Frames: secondary metrics" in md or "Frames: secondary metrics" in md
