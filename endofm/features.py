"""Per-clip embeddings from a pretrained backbone (ours or the official ``endo_fm.pth``).

from endofm.features import load_pretrained_backbone, extract_features
model = load_pretrained_backbone("results/pretrain/endofm/default/checkpoint.pt")
table = extract_features(model, ["video.mp4"], clip_frames=8, stride=16)  # video, start_frame, embedding

Layer: entry points (docs/architecture.md), beside the CLI that calls it. May import any layer below.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from endofm.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ClipTransform
from endofm.data.video import VideoReader
from endofm.errors import UserError
from endofm.io import atomic_path
from endofm.logs import progress as progress_bar
from endofm.models.checkpoint import load_pretrained_backbone
from endofm.models.vit import TimeSformer

log = logging.getLogger(__name__)


def clip_starts(num_frames: int, window: int, stride: int) -> list[int]:
    """Start frames of windows of ``window`` frames every ``stride`` frames; a short video gives one window at 0.

    The last window is shifted to end at the last frame, so the tail of a video is always covered.
    """
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be >= 1, got {window} and {stride}")
    if num_frames <= window:
        return [0]
    starts = list(range(0, num_frames - window + 1, stride))
    if starts[-1] != num_frames - window:
        starts.append(num_frames - window)
    return starts


@dataclass
class _Clip:
    video: str
    start: int
    frames: np.ndarray  # (T, H, W, 3) uint8


def _clips(videos: Sequence[str | Path], clip_frames: int, frame_step: int, stride: int) -> Iterator[_Clip]:
    window = (clip_frames - 1) * frame_step + 1
    for video in videos:
        with VideoReader(video) as reader:
            for start in clip_starts(reader.num_frames, window, stride):
                idx = np.minimum(start + np.arange(clip_frames) * frame_step, reader.num_frames - 1)
                yield _Clip(str(video), start, reader.get_frames(idx))


def preprocess(frames: np.ndarray, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (3, T, size, size) float: short side to ``size``, centre crop, normalise."""
    return ClipTransform(size, size, "center", mean=mean, std=std)(frames)


@torch.inference_mode()
def extract_features(
    model: TimeSformer,
    videos: Sequence[str | Path],
    *,
    clip_frames: int = 8,
    frame_step: int = 1,
    stride: int = 8,
    size: int = 224,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> pd.DataFrame:
    """One CLS embedding per clip of ``clip_frames`` frames taken every ``frame_step`` frames, a clip
    starting every ``stride`` frames. Returns a table with ``video``, ``start_frame`` and ``embedding``
    (a float32 vector per row)."""
    model = model.to(device).eval()
    rows: list[tuple[str, int]] = []
    vectors: list[np.ndarray] = []
    batch: list[_Clip] = []

    def flush() -> None:
        x = torch.stack([preprocess(c.frames, size) for c in batch]).to(device)
        vectors.extend(model(x).float().cpu().numpy())
        rows.extend((c.video, c.start) for c in batch)
        batch.clear()

    for clip in progress_bar(
        _clips(videos, clip_frames, frame_step, stride), desc="features", unit="clip", disable=not progress
    ):
        batch.append(clip)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    table = pd.DataFrame(rows, columns=["video", "start_frame"])
    table["embedding"] = vectors
    return table


FEATURE_SUFFIXES = (".npz", ".parquet")


def check_feature_path(path: str | Path) -> Path:
    """``path`` if :func:`save_features` can write it (checked before any feature is computed)."""
    path = Path(path)
    if path.suffix not in FEATURE_SUFFIXES:
        raise UserError(
            f"{path}: feature files are {' or '.join(FEATURE_SUFFIXES)}, not {path.suffix or 'extensionless'}"
        )
    return path


def save_features(table: pd.DataFrame, path: str | Path) -> Path:
    """Write a feature table atomically: ``.npz`` (arrays ``video``, ``start_frame``, ``embedding``) or
    ``.parquet`` (needs pyarrow)."""
    path = check_feature_path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".npz":
            with tmp.open("wb") as fh:
                np.savez(
                    fh,
                    video=table["video"].to_numpy(dtype=str),
                    start_frame=table["start_frame"].to_numpy(dtype=np.int64),
                    embedding=np.stack(table["embedding"].to_list()).astype(np.float32),
                )
        else:
            table.assign(embedding=[np.asarray(v, dtype=np.float32) for v in table["embedding"]]).to_parquet(tmp)
    return path


def load_features(path: str | Path) -> pd.DataFrame:
    """Read a file written by :func:`save_features` back into a table."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path) as data:
            table = pd.DataFrame({"video": data["video"], "start_frame": data["start_frame"]})
            table["embedding"] = list(data["embedding"])
        return table
    return pd.read_parquet(path)


__all__ = [  # load_pretrained_backbone lives in endofm.models.checkpoint; it is this API's entry too
    "check_feature_path",
    "clip_starts",
    "extract_features",
    "load_features",
    "load_pretrained_backbone",
    "preprocess",
    "save_features",
]
