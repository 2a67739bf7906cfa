"""PolypDiag video classification (normal vs abnormal; docs/original.md §4.1).

Full fine-tuning (:class:`ClassifyTask` in :func:`endofm.tasks.finetune.run_finetune`): a linear head
on the CLS embedding, the whole backbone trained, the official sampling and normalisation. The
frozen-backbone read-outs (:func:`run_probe`): a logistic-regression probe on the CLS, one on the CLS
with mean- and max-pooled patch tokens (the headline frozen number), and a weighted k-NN on the CLS
(DINO's evaluation). Predictions are ``predictions.csv`` (sample_id, label, prob_0, prob_1).

Layer: tasks (docs/architecture.md). May import: foundation, data, models, engine, metrics, pretraining, methods and the other tasks modules.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from endofm.config import check_fields, config_hash, setting
from endofm.data.corruptions import ClipCorruption
from endofm.data.polypdiag import PolypDiagDataset, ShortVideo
from endofm.data.transforms import KINETICS_MEAN, KINETICS_STD, ClipTransform, torch_rng
from endofm.engine import resolve_device, seed_everything
from endofm.io import write_csv, write_json
from endofm.logs import progress as progress_bar
from endofm.metrics import classification_metrics
from endofm.models.checkpoint import package_versions, save_checkpoint
from endofm.models.heads import VideoClassifier
from endofm.models.vit import TimeSformer
from endofm.tasks.evaluation import PREDICTIONS, READOUTS
from endofm.tasks.finetune import MODEL_NAME, RUN_NAME, OptimConfig, RunSpec, Task, TrainConfig
from endofm.tasks.protocols import ProtocolSplits

log = logging.getLogger(__name__)


@dataclass
class ProbeConfig:
    """Frozen-backbone read-outs: logistic regression over ``c_grid`` (picked on the selection split
    by the task's selection metric, ``train.select_metric``, F1 unless set), and a k-NN vote over the ``knn_k`` most cosine-similar training clips weighted by
    ``exp(similarity / knn_temperature)`` (DINO's)."""

    c_grid: list[float] = setting(
        description="Inverse regularisation strengths of the logistic-regression probe, picked on the selection split",
        factory=lambda: [0.001, 0.01, 0.1, 1.0, 10.0],
        min_items=1,
        each=dict(exclusive_minimum=0),
    )
    knn_k: int = setting(20, "Neighbours of the k-NN read-out", minimum=1)
    knn_temperature: float = setting(
        0.07, "Temperature of the k-NN vote weights exp(similarity / T)", exclusive_minimum=0
    )
    batch_size: int = setting(8, "Clips per feature-extraction batch", minimum=1)

    def __post_init__(self) -> None:
        check_fields(self)


def _official_train() -> TrainConfig:
    # 20 epochs; SGD momentum 0.9, wd 0; lr 0.001 × batch/256; cosine; batch 4 (docs/original.md §4.1).
    return TrainConfig(epochs=20, batch_size=4, optim=OptimConfig(name="sgd", lr=1e-3, batch_scaled=True))


@dataclass
class ClassifyConfig:
    """PolypDiag settings; the defaults are the official recipe (docs/original.md §4.1).

    Training: a random window of ``window`` frames at ``window_fps`` (a video at ``fps`` gets
    ``window × fps / window_fps`` of its frames, the original's ``256 × fps / 30``; ``window_fps: null``
    takes ``window`` frames at any rate), ``num_frames`` evenly over it (a video shorter than the window:
    ``short_video`` "clamp", the original, spreads them over the whole window and repeats the last frame;
    "spread" spreads them over the video), short side drawn from ``train_short_side``, a random
    ``crop_size`` crop, horizontal flip. Testing: the first window,
    short side ``test_short_side``, a crop at ``test_crop`` (the original's ``top_left``: its spatial
    index 0); ``test_clips`` > 1 averages the softmax over evenly spaced windows (clean-protocol option).
    """

    num_frames: int = setting(8, "Frames per clip", minimum=1)
    window: int = setting(256, "Window length in frames at window_fps (the original: 256 at 30 fps)", minimum=1)
    window_fps: float | None = setting(
        30.0,
        "A video at fps gets a window of window x fps / window_fps of its frames (the original); null: window "
        "frames at any rate",
        exclusive_minimum=0,
    )
    short_video: ShortVideo = setting(
        "clamp",
        "A video shorter than the window: clamp = frames spread over the whole window, indices clamped to the last "
        "frame, which repeats (the original); spread = frames spread over the video",
    )
    train_short_side: list[int] = setting(
        description="Training short side drawn from [min, max]", factory=lambda: [256, 320]
    )
    crop_size: int = setting(224, "Training crop side")
    test_short_side: int = setting(224, "Test short side")
    test_crop: Literal["top_left", "center"] = setting(
        "top_left", "Test crop position (the original: top_left, its spatial index 0)"
    )
    test_clips: int = setting(1, "Clips averaged per test video (the original: 1)", minimum=1)
    hflip: float = setting(0.5, "Probability of a horizontal flip in training")
    mean: list[float] = setting(
        description="Normalisation mean per channel (the original's 0.45)", factory=lambda: list(KINETICS_MEAN)
    )
    std: list[float] = setting(
        description="Normalisation std per channel (the original's 0.225)", factory=lambda: list(KINETICS_STD)
    )
    num_classes: int = setting(2, "Classes (normal, abnormal)")
    train: TrainConfig = setting(description="The training loop's settings", factory=_official_train)
    probe: ProbeConfig = setting(description="The frozen-backbone read-outs", factory=ProbeConfig)

    def __post_init__(self) -> None:
        check_fields(self)
        ClipTransform(self.train_short_side, self.crop_size)  # validates the sizes
        ClipTransform(self.test_short_side, self.crop_size)
        ClassifyTask.selection_key(self.train)


class _Transformed(Dataset):
    """Items of a PolypDiagDataset as (video tensor, label, index); ``corrupt`` (robustness evaluation)
    corrupts each clip's raw frames first, keyed by sample id (and clip number)."""

    def __init__(
        self, dataset: PolypDiagDataset, transform: ClipTransform, corrupt: ClipCorruption | None = None
    ) -> None:
        self.dataset, self.transform, self.corrupt = dataset, transform, corrupt

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        item = self.dataset[index]
        rng = torch_rng() if self.transform.random else None
        frames = item["frames"].numpy()
        if self.corrupt is not None:
            key = item["sample_id"]
            frames = (
                np.stack([self.corrupt(clip, f"{key}#{i}").frames for i, clip in enumerate(frames)])
                if frames.ndim == 5
                else self.corrupt(frames, key).frames
            )
        if frames.ndim == 5:  # several test clips
            video = torch.stack([self.transform(clip, rng) for clip in frames])
        else:
            video = self.transform(frames, rng)
        return video, item["label"], index


def clip_dataset(
    cfg: ClassifyConfig,
    splits: ProtocolSplits,
    root: Path,
    role: str,
    seed: int = 0,
    test_view: bool = False,
    corrupt: ClipCorruption | None = None,
) -> _Transformed:
    """The (video, label, index) dataset of ``role``: random training views for ``train`` (unless
    ``test_view``), the deterministic test view otherwise; ``corrupt``: raw frames corrupted first."""
    part = getattr(splits, role)
    if role == "train" and not test_view:
        base = PolypDiagDataset(
            part.rows, root, part.split, cfg.num_frames, "random", cfg.window, seed,
            window_fps=cfg.window_fps, short_video=cfg.short_video,
        )  # fmt: skip
        transform = ClipTransform(cfg.train_short_side, cfg.crop_size, "random", cfg.hflip, cfg.mean, cfg.std)
    else:
        base = PolypDiagDataset(
            part.rows, root, part.split, cfg.num_frames, "uniform", cfg.window, clips=cfg.test_clips,
            window_fps=cfg.window_fps, short_video=cfg.short_video,
        )  # fmt: skip
        transform = ClipTransform(cfg.test_short_side, cfg.crop_size, cfg.test_crop, 0.0, cfg.mean, cfg.std)
    return _Transformed(base, transform, corrupt)


def _frame(dataset: _Transformed, probs: np.ndarray) -> pd.DataFrame:
    rows = dataset.dataset.rows
    return pd.DataFrame(
        {
            "sample_id": rows["sample_id"].astype(str).to_numpy(),
            "label": rows["label"].astype(int).to_numpy(),
            **{f"prob_{k}": probs[:, k] for k in range(probs.shape[1])},
        }
    )


def _scores(frame: pd.DataFrame) -> dict[str, float]:
    return classification_metrics(frame["label"].to_numpy(), frame[["prob_0", "prob_1"]].to_numpy())


class ClassifyTask(Task):
    """Full fine-tuning of :class:`~endofm.models.heads.VideoClassifier` with cross-entropy."""

    benchmark: ClassVar[str] = "polypdiag"
    selection_metric: ClassVar[str] = "f1"
    selection_metrics: ClassVar[tuple[str, ...]] = ("f1", "auroc", "accuracy")

    def __init__(
        self,
        cfg: ClassifyConfig,
        splits: ProtocolSplits,
        root: str | Path,
        seed: int = 0,
        corrupt: ClipCorruption | None = None,
    ) -> None:
        super().__init__(splits, root, seed)
        self.cfg = cfg
        self._eval = {
            role: clip_dataset(cfg, splits, self.root, role, corrupt=corrupt if role == "test" else None)
            for role in ("select", "test")
        }

    def build_model(self, backbone: TimeSformer) -> nn.Module:
        return VideoClassifier(backbone, self.cfg.num_classes)

    def train_dataset(self) -> Dataset:
        return clip_dataset(self.cfg, self.splits, self.root, "train", self.seed)

    def loss(self, model: nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
        video, label, _ = batch
        return F.cross_entropy(model(video.to(device)), label.to(device))

    @torch.no_grad()
    def predict(self, model: nn.Module, role: str, device: torch.device) -> pd.DataFrame:
        dataset = self._eval[role]
        loader = DataLoader(dataset, batch_size=self.cfg.train.batch_size, num_workers=self.cfg.train.num_workers)
        probs = []
        for video, _, _ in loader:
            p = model(video.to(device)).float().softmax(dim=-1)
            probs.append((p.mean(dim=1) if p.ndim == 3 else p).cpu())  # average over test clips
        return _frame(dataset, torch.cat(probs).numpy())

    def score(self, predictions: pd.DataFrame, role: str) -> dict[str, float]:
        return _scores(predictions)

    def save_predictions(self, predictions: pd.DataFrame, out_dir: Path) -> list[str]:
        write_csv(out_dir / PREDICTIONS, predictions)
        return [PREDICTIONS]


# ----------------------------------------------------------------------------------------------------
# Frozen-backbone read-outs


@torch.no_grad()
def clip_features(backbone: TimeSformer, dataset: _Transformed, device: torch.device, batch_size: int) -> dict:
    """Per video: ``cls`` (N, C) and ``pooled`` (N, 3C) = [CLS, mean, max of the patch tokens],
    averaged over test clips. Returns the two arrays and the labels."""
    loader = DataLoader(dataset, batch_size=batch_size)
    cls, pooled, labels = [], [], []
    for video, label, _ in progress_bar(loader, desc="features", leave=False):
        video = video.to(device)
        clips = video.shape[1] if video.ndim == 6 else 1
        feats = backbone.forward_features(video.flatten(0, 1) if video.ndim == 6 else video, dense=True)
        patches = feats.patches.flatten(1, 3)
        both = torch.cat([feats.cls, patches.mean(dim=1), patches.amax(dim=1)], dim=1)
        cls.append(feats.cls.view(len(label), clips, -1).mean(dim=1).float().cpu())
        pooled.append(both.view(len(label), clips, -1).mean(dim=1).float().cpu())
        labels.append(label)
    return {"cls": torch.cat(cls).numpy(), "pooled": torch.cat(pooled).numpy(), "labels": torch.cat(labels).numpy()}


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    eval_sets: dict[str, np.ndarray],
    select_y: np.ndarray,
    c_grid,
    seed: int,
    metric: str = "f1",
    fitted: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, np.ndarray], float]:
    """Standardised logistic regression; C picked by ``metric`` (a :func:`classification_metrics` key) on
    ``eval_sets['select']`` (ties: smaller C). Returns the class probabilities of every eval set under the
    chosen C, and that C; ``fitted``, when given, receives the chosen probe (:func:`probe_state`)."""
    from sklearn.linear_model import LogisticRegression  # seconds to import: only the probes need it
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_x)
    best: tuple[float, float, Any] | None = None
    for c in sorted(c_grid):
        model = LogisticRegression(C=c, max_iter=5000, random_state=seed).fit(scaler.transform(train_x), train_y)
        score = classification_metrics(select_y, model.predict_proba(scaler.transform(eval_sets["select"])))[metric]
        if best is None or score > best[0]:
            best = (score, c, model)
    _, c, model = best
    if fitted is not None:
        fitted.update(probe_state(scaler, model))
    return {name: model.predict_proba(scaler.transform(x)) for name, x in eval_sets.items()}, c


def probe_state(scaler: Any, model: Any) -> dict[str, np.ndarray]:
    """A fitted standardiser and logistic regression as arrays: ``mean``, ``scale``, ``coef``, ``intercept``
    (what :func:`probe_probabilities` needs; stored in a frozen run's ``model.pt``)."""
    return {
        "mean": np.asarray(scaler.mean_, np.float64),
        "scale": np.asarray(scaler.scale_, np.float64),
        "coef": np.asarray(model.coef_, np.float64),
        "intercept": np.asarray(model.intercept_, np.float64),
    }


def probe_probabilities(state: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """Class probabilities of a stored probe (:func:`probe_state`) on features ``x`` (N, C): standardise,
    then the logistic (one row of weights: two classes) or the softmax (a row per class)."""
    z = (np.asarray(x, np.float64) - np.asarray(state["mean"])) / np.asarray(state["scale"])
    logits = z @ np.asarray(state["coef"]).T + np.asarray(state["intercept"])
    if logits.shape[1] == 1:
        p = 1.0 / (1.0 + np.exp(-logits[:, 0]))
        return np.stack([1.0 - p, p], axis=1)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def knn_predict(
    train_x: np.ndarray, train_y: np.ndarray, x: np.ndarray, k: int, temperature: float, num_classes: int = 2
) -> np.ndarray:
    """DINO's weighted k-NN on L2-normalised features: the k most similar training rows vote with
    weight ``exp(cosine / temperature)``; returns normalised votes per class (N, num_classes)."""
    train = F.normalize(torch.as_tensor(train_x, dtype=torch.float64), dim=1)
    query = F.normalize(torch.as_tensor(x, dtype=torch.float64), dim=1)
    sim, idx = (query @ train.T).topk(min(k, len(train)), dim=1)
    weights = (sim / temperature).exp()
    votes = torch.zeros(len(query), num_classes, dtype=torch.float64)
    votes.scatter_add_(1, torch.as_tensor(train_y, dtype=torch.int64)[idx], weights)
    return (votes / votes.sum(dim=1, keepdim=True)).numpy()


def probe_scores(
    cfg: ClassifyConfig,
    splits: ProtocolSplits,
    root: str | Path,
    backbone: TimeSformer,
    state: dict[str, Any],
    device: torch.device,
    corrupt: ClipCorruption | None = None,
) -> dict[str, float]:
    """Test metrics of a frozen run's stored pooled probe (``state``: :func:`probe_state`, its
    ``model.pt``'s ``extra.probe``) on ``backbone``'s features of the test views, corrupted by ``corrupt``."""
    dataset = clip_dataset(cfg, splits, Path(root), "test", corrupt=corrupt)
    feats = clip_features(backbone.to(device).eval(), dataset, device, cfg.probe.batch_size)
    state = {k: v.numpy() if torch.is_tensor(v) else np.asarray(v) for k, v in state.items()}
    return _scores(_frame(dataset, probe_probabilities(state, feats["pooled"])))


def run_probe(
    cfg: ClassifyConfig,
    splits: ProtocolSplits,
    root: str | Path,
    spec: RunSpec,
    backbone: TimeSformer,
    out_dir: str | Path,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """The frozen-backbone run: features of every split once (test views, no augmentation), then the
    read-outs; writes the three prediction files, ``model.pt`` (``extra.probe``: the pooled probe,
    :func:`probe_state`, which robustness evaluation reuses) and ``run.json`` like
    :func:`~endofm.tasks.finetune.run_finetune`."""
    if spec.mode != "frozen":
        raise ValueError(f"run_probe is the frozen mode, got mode {spec.mode!r}")
    out_dir, root, started = Path(out_dir), Path(root), time.time()
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(spec.seed)
    device = resolve_device(cfg.train.device)
    backbone = backbone.to(device).eval()
    # Every split is seen through the test view: fixed features, no augmentation.
    test_dataset = clip_dataset(cfg, splits, root, "test")
    feats = {
        role: clip_features(
            backbone, clip_dataset(cfg, splits, root, role, test_view=True), device, cfg.probe.batch_size
        )
        for role in ("train", "select", "test")
    }
    train, select_y = feats["train"], feats["select"]["labels"]
    files, chosen, select, pooled = {}, {}, ClassifyTask.selection_key(cfg.train), {}
    for name, key in (("linear_pooled", "pooled"), ("linear_cls", "cls")):
        evals = {role: feats[role][key] for role in ("select", "test")}
        fitted = pooled if key == "pooled" else None  # the headline probe is stored, for robustness evaluation
        probs, chosen[name] = linear_probe(
            train[key], train["labels"], evals, select_y, cfg.probe.c_grid, spec.seed, select, fitted
        )
        files[name] = _frame(test_dataset, probs["test"])
    knn = knn_predict(train["cls"], train["labels"], feats["test"]["cls"], cfg.probe.knn_k, cfg.probe.knn_temperature)
    files["knn"] = _frame(test_dataset, knn)
    for name, frame in files.items():
        write_csv(out_dir / READOUTS[name], frame)
    probe = {k: torch.from_numpy(v) for k, v in pooled.items()}
    save_checkpoint(
        out_dir / MODEL_NAME, config=dict(settings), extra={"spec": asdict(spec), "probe_c": chosen, "probe": probe}
    )
    record = {
        **asdict(spec),
        "splits": splits.summary(),
        "selection": {"metric": select, "epoch": None, "probe_c": chosen},
        "test_split": splits.test.split,
        "predictions": [READOUTS[name] for name in files],
        "config_hash": config_hash(settings),
        "settings": dict(settings),
        "versions": package_versions(),
        "device": str(device),
        "wall_seconds": time.time() - started,
    }
    write_json(out_dir / RUN_NAME, record)
    return record
