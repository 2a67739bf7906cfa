"""PolypDiag (video classification, normal vs abnormal): index the official layout, serve clips.

The official split files are ``splits/train.txt`` and ``splits/val.txt``. **``val`` is the official
test set** (there is no validation split); the manifest keeps the official name so that ``paper``
numbers stay comparable, and a ``clean`` protocol must carve its own validation set from ``train``.

Layer: data and models (docs/architecture.md). May import: foundation and the other data modules.
"""

from __future__ import annotations

import math
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
import pandas as pd

from endofm.data.layouts import PolypDiagLayout
from endofm.data.video import VideoDecodeError, VideoReader, probe_video

COLUMNS = ("split", "sample_id", "path", "label", "num_frames", "fps", "height", "width")
LABELS = {0: "normal", 1: "abnormal"}


def _parse_line(split_file: Path, lineno: int, line: str, videos_dir: Path) -> tuple[str, int]:
    """Return (path relative to ``videos/``, label) for one non-blank split line."""
    where = f"{split_file}:{lineno}"
    fields = [f.strip() for f in line.split(",")]
    if len(fields) != 2:
        raise ValueError(f"{where}: expected '<video path>,<label>', got {len(fields)} field(s) in {line!r}")
    rel, label = fields
    if label not in ("0", "1"):
        raise ValueError(f"{where}: label must be 0 (normal) or 1 (abnormal), got {label!r}")
    posix = PurePosixPath(rel.replace("\\", "/"))
    if not rel or posix.is_absolute() or ".." in posix.parts:
        raise ValueError(f"{where}: video path must be relative and inside {videos_dir}, got {rel!r}")
    if not (videos_dir / posix).is_file():
        raise FileNotFoundError(f"{where}: video {videos_dir / posix} does not exist")
    return posix.as_posix(), int(label)


def sample_id_of(rel: str) -> str:
    """Sample id of a video: its path under ``videos/`` without the extension."""
    return PurePosixPath(rel).with_suffix("").as_posix()


def read_split(layout: PolypDiagLayout, split: str) -> list[tuple[str, int, int]]:
    """(path under ``videos/``, label, line number) for each entry of one split file."""
    split_file = layout.split_file(split)
    if not split_file.is_file():
        raise FileNotFoundError(f"{split_file}: PolypDiag split file not found (expected under {layout.root})")
    entries: list[tuple[str, int, int]] = []
    seen: dict[str, tuple[str, int]] = {}  # sample id -> (path, line)
    for lineno, line in enumerate(split_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        rel, label = _parse_line(split_file, lineno, line, layout.videos_dir)
        sample_id = sample_id_of(rel)
        if sample_id in seen:
            other, first = seen[sample_id]
            what = f"video {rel!r} already listed" if other == rel else f"{rel!r} has the same sample id as {other!r}"
            raise ValueError(f"{split_file}:{lineno}: {what} on line {first}")
        seen[sample_id] = (rel, lineno)
        entries.append((rel, label, lineno))
    if not entries:
        raise ValueError(f"{split_file}: no videos listed")
    return entries


def index_polypdiag(root: str | Path) -> pd.DataFrame:
    """Manifest of the official PolypDiag layout under ``root``; one row per (split, video).

    ``split`` is ``train`` or ``val`` (the official test set). ``path`` is relative to ``root``,
    ``label`` 1 = abnormal, and the stream properties come from :func:`probe_video`.
    """
    layout = PolypDiagLayout(Path(root))
    rows: list[dict[str, Any]] = []
    listed: dict[str, str] = {}  # sample id -> "split file:line"
    for split in layout.SPLITS:
        for rel, label, lineno in read_split(layout, split):
            where = f"{layout.split_file(split)}:{lineno}"
            if sample_id_of(rel) in listed:
                raise ValueError(
                    f"{where}: video {rel!r} is also listed in {listed[sample_id_of(rel)]}; a video belongs to one split"
                )
            listed[sample_id_of(rel)] = where
            video = layout.videos_dir / rel
            try:
                info = probe_video(video)
            except VideoDecodeError as exc:
                raise VideoDecodeError(f"{layout.split_file(split)}:{lineno}: {exc}") from exc
            rows.append(
                {
                    "split": split,
                    "sample_id": sample_id_of(rel),
                    "path": video.relative_to(layout.root).as_posix(),
                    "label": label,
                    "num_frames": info.num_frames,
                    "fps": info.fps,
                    "height": info.height,
                    "width": info.width,
                }
            )
    return pd.DataFrame(rows, columns=list(COLUMNS))


ShortVideo = Literal["clamp", "spread"]
SHORT_VIDEO: tuple[str, ...] = ("clamp", "spread")


def sample_indices(
    video_frames: int,
    num_frames: int,
    sampling: Literal["uniform", "random"] = "uniform",
    window: float | None = None,
    rng: np.random.Generator | None = None,
    short_video: ShortVideo = "clamp",
) -> np.ndarray:
    """Frame indices of one clip: ``num_frames`` evenly spaced (floor of a linspace) over a window.

    ``window`` is the window's length in frames, fractional when it comes from a frame rate (the
    original's ``256 × fps / 30``); ``None`` is the whole video. ``uniform``: the window starts at frame 0,
    the official single deterministic test view. ``random``: it starts at an integer drawn uniformly from
    ``[0, video_frames - window]`` (official training; the original draws a float start and seeks to it).
    The indices are ``start + floor(linspace(0, window - 1, num_frames))``. A video shorter than the
    window: ``short_video="clamp"`` (the original, ``datasets/decoder.py``) spreads the frames over the
    whole window and clamps indices to the last frame, which then repeats; ``"spread"`` spreads them over
    the video instead. Either way indices repeat when the video has fewer than ``num_frames`` frames.
    """
    if video_frames < 1:
        raise ValueError(f"video has {video_frames} frames")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if window is not None and not window >= 1:
        raise ValueError(f"window must be >= 1 or None, got {window}")
    if short_video not in SHORT_VIDEO:
        raise ValueError(f"short_video must be one of {SHORT_VIDEO}, got {short_video!r}")
    length = video_frames if window is None else window
    if short_video == "spread":
        length = min(length, video_frames)
    if sampling == "uniform":
        start = 0
    elif sampling == "random":
        if window is None:
            raise ValueError("random sampling needs a window length")
        if rng is None:
            raise ValueError("random sampling needs an rng")
        start = int(rng.integers(0, math.floor(max(video_frames - length, 0)) + 1))
    else:
        raise ValueError(f"sampling must be 'uniform' or 'random', got {sampling!r}")
    offsets = np.floor(np.linspace(0, length - 1, num_frames)).astype(np.int64)
    return np.minimum(start + offsets, video_frames - 1)


def clip_windows(
    video_frames: int, num_frames: int, window: float | None, clips: int, short_video: ShortVideo = "clamp"
) -> np.ndarray:
    """(clips, num_frames) indices: ``clips`` windows of ``window`` frames with evenly spaced starts
    from the first to the last possible one, each sampled as :func:`sample_indices` does (multi-clip testing)."""
    if clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    first = sample_indices(video_frames, num_frames, "uniform", window, short_video=short_video)
    length = video_frames if window is None else min(window, video_frames)
    starts = np.floor(np.linspace(0, video_frames - length, clips)).astype(np.int64)
    return np.minimum(starts[:, None] + first[None, :], video_frames - 1)


def window_frames(window: int | None, fps: float, window_fps: float | None) -> float | None:
    """The window in a video's frames: ``window × fps / window_fps`` (the original: SAMPLING_RATE ×
    NUM_FRAMES = 256 frames at its TARGET_FPS 30), or ``window`` itself when ``window_fps`` is None."""
    if window is None or window_fps is None:
        return window
    return window * fps / window_fps


class PolypDiagDataset:
    """Clips of one split of a PolypDiag manifest; decodes only the sampled frames.

    Items are ``dict(frames=uint8 (T, H, W, 3), label=int, sample_id=str, indices=list[int])``; with
    ``clips`` > 1 (uniform sampling) ``frames`` is (clips, T, H, W, 3) from :func:`clip_windows`;
    ``transform`` (if given) maps that dict to the returned one. Random sampling draws from an rng
    seeded by ``(seed, epoch, index)``, so an item is reproducible; call :meth:`set_epoch` to vary it.
    ``window`` is in frames, or, with ``window_fps``, in frames at that rate: each video's window is then
    ``window × fps / window_fps`` of its own frames (``fps`` from the manifest; :func:`window_frames`).
    ``short_video``: see :func:`sample_indices`.
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        root: str | Path,
        split: str,
        num_frames: int = 8,
        sampling: Literal["uniform", "random"] = "uniform",
        window: int | None = None,
        seed: int = 0,
        transform=None,
        clips: int = 1,
        window_fps: float | None = None,
        short_video: ShortVideo = "clamp",
    ) -> None:
        if split not in PolypDiagLayout.SPLITS:
            raise ValueError(f"split must be one of {PolypDiagLayout.SPLITS}, got {split!r}")
        rows = manifest[manifest["split"] == split]
        if rows.empty:
            raise ValueError(f"manifest has no rows for split {split!r}")
        # Validate the arguments once, here, rather than on the first item.
        sample_indices(1, num_frames, sampling, window, np.random.default_rng(0), short_video)
        if clips < 1 or (clips > 1 and sampling != "uniform"):
            raise ValueError(f"clips must be >= 1 (more than 1 only with uniform sampling), got {clips}")
        if window_fps is not None and not window_fps > 0:
            raise ValueError(f"window_fps must be > 0 or None, got {window_fps}")
        if window_fps is not None and window is not None:
            fps = pd.to_numeric(rows["fps"], errors="coerce")
            bad = ~(fps > 0)
            if bad.any():
                row = rows[bad].iloc[0]
                raise ValueError(
                    f"{row['path']}: the manifest's fps is {str(row['fps'])!r}; a window of {window} frames at "
                    f"{window_fps} fps needs each video's frame rate (re-index, or set window_fps to null)"
                )
        self.window_fps, self.short_video = window_fps, short_video
        self.clips = clips
        self.rows = rows.reset_index(drop=True)
        self.root = Path(root)
        self.num_frames, self.sampling, self.window = num_frames, sampling, window
        self.seed, self.epoch, self.transform = seed, 0, transform

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch  # here, not at module level: indexing and evaluation import this module without torch

        row = self.rows.iloc[index]
        path = self.root / row["path"]
        with VideoReader(path) as reader:
            if reader.num_frames != int(row["num_frames"]):
                raise ValueError(
                    f"{path}: has {reader.num_frames} frames but the manifest says {row['num_frames']}; re-index"
                )
            rng = np.random.default_rng([self.seed, self.epoch, index])
            window = window_frames(self.window, float(row["fps"]) if self.window_fps else 0.0, self.window_fps)
            n = reader.num_frames
            if self.clips == 1:
                indices = sample_indices(n, self.num_frames, self.sampling, window, rng, self.short_video)
            else:
                indices = clip_windows(n, self.num_frames, window, self.clips, self.short_video).reshape(-1)
            frames = reader.get_frames(indices)
            if self.clips > 1:
                frames = frames.reshape(self.clips, self.num_frames, *frames.shape[1:])
        item = {
            "frames": torch.from_numpy(np.ascontiguousarray(frames)),
            "label": int(row["label"]),
            "sample_id": str(row["sample_id"]),
            "indices": indices.tolist(),
        }
        return self.transform(item) if self.transform is not None else item


def summarize_split(rows: pd.DataFrame) -> dict[str, Any]:
    """Counts of one split of the manifest, for ``manifest.json``."""
    counts = rows["label"].value_counts()
    return {
        "videos": len(rows),
        "labels": {name: int(counts.get(label, 0)) for label, name in LABELS.items()},
        "frames": int(rows["num_frames"].sum()),
    }
