"""Multi-view spatio-temporal sampling of pretraining clips: the original protocol (docs/original.md 3.3, 3.4).

A sample is one clip turned into ``len(global_frames) + len(local_frames)`` views, globals first,
each a float32 ``(3, T, S, S)`` tensor. Per sample:

1. **Time.** A clip longer than ``max_window`` frames is cut to a random window of that length
   (the original decoded SAMPLING_RATE x NUM_FRAMES = 256 frames); ``max_len`` is what remains.
   Global 1 takes ``floor(linspace(0, max_len - margin, T))``, global 2
   ``floor(linspace(margin, max_len, T))``, each local ``floor(linspace(r, r + w, T))`` with
   ``w = max_len // local_window_divisor`` and ``r`` uniform in ``[0, max_len - w - 1]``; indices
   are clamped to the clip, so a clip shorter than ``T`` repeats frames. The linspace is computed
   exactly in integers (the original's float32 ``torch.linspace`` can land one frame lower where
   the exact value is an integer).
2. **Decoding.** The sorted union of every view's indices is read with one ``get_frames`` call.
3. **Space.** Per view, drawn once and applied to all of its frames: a random resized crop,
   bicubic resize to ``S``, horizontal flip, colour jitter, grayscale, then ImageNet
   normalisation of ``[0, 1]`` values. Gaussian blur and solarisation are no-ops in the original
   and are not applied.

Faithful to the original's ``datasets/transform.py`` (not torchvision's DINO pipeline):

- the crop is drawn 10 times (area fraction uniform in ``scale``, aspect ratio log-uniform in
  ``ratio``) with a centre-crop fallback when no draw fits. ``crop_rule="original"`` (the paper
  default) keeps the original's quirk: the offsets of the *last valid* draw, the height and width of
  the *last* draw (valid or not), the slice cut off at the frame edge. ``crop_rule="last_valid"``
  uses the last valid draw whole (offsets and size), a box that always lies inside the frame;
- colour jitter applies brightness (``x * a``), contrast (blend with each frame's mean grey) and
  saturation (blend with the grey image) in a random order drawn per view, each grey taken from the
  image as it is before that operation (:func:`jitter_colours`); factors are ``1 + U(-s, s)``; hue is not part of the original (``hue = 0``) and, if enabled, runs through
  torchvision's ``adjust_hue`` on values clamped to ``[0, 1]``;
- values are not clamped after the resize or the jitter, so they may leave ``[0, 1]`` before
  normalisation;
- the grey image weighs R, G, B by ``gray_weights`` = (0.114, 0.587, 0.299): the original's
  ``grayscale`` assumes BGR channels but receives RGB frames from PyAV, so R and B swap weights.

One deliberate change: the resize is antialiased (``antialias``); the original's
``F.interpolate(mode="bicubic")`` aliases when a crop shrinks.

Layer: pretraining (docs/architecture.md). May import: foundation, data, models, engine, metrics and the other pretraining modules.
"""

from __future__ import annotations

import math
import operator
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, default_collate, get_worker_info

from endofm.config import check_fields, setting
from endofm.data.clips import MANIFEST_COLUMNS
from endofm.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from endofm.data.video import VideoReader

#: Draws of the random resized crop before falling back to a centre crop (as the original).
CROP_ATTEMPTS = 10
#: How the random resized crop picks its box from the draws (see :func:`random_resized_crop_params`).
CROP_RULES = ("original", "last_valid")


@dataclass
class Augmentation:
    """The per-view augmentation and normalisation that Endo-FM's views (:class:`ViewConfig`) and VCL's clips
    (:class:`~endofm.pretraining.vcl.VCLViewConfig`) share, applied by :func:`augment_view`; the defaults are
    Endo-FM's (docs/original.md 3.4)."""

    ratio: tuple[float, float] = setting(
        (3 / 4, 4 / 3), "Crop aspect ratio (width / height) range", each=dict(exclusive_minimum=0)
    )
    hflip: float = setting(0.5, "Probability of a horizontal flip per view", minimum=0, maximum=1)
    color_jitter: float = setting(0.8, "Probability of colour jitter per view", minimum=0, maximum=1)
    brightness: float = setting(0.4, "Brightness jitter strength: factors drawn from 1 ± strength", minimum=0)
    contrast: float = setting(0.4, "Contrast jitter strength", minimum=0)
    saturation: float = setting(0.2, "Saturation jitter strength", minimum=0)
    hue: float = setting(0.0, "Hue shift in [-hue, hue] turns (none in Endo-FM's original)", minimum=0, maximum=0.5)
    grayscale: float = setting(0.2, "Probability of grayscale per view", minimum=0, maximum=1)
    gray_weights: tuple[float, float, float] = setting(
        (0.114, 0.587, 0.299), "Grey-image weights of R, G, B (the original's; ITU-R 601 is (0.299, 0.587, 0.114))"
    )
    antialias: bool = setting(True, "Antialiased resize (the original's bicubic resize aliases)")
    mean: tuple[float, float, float] = setting(IMAGENET_MEAN, "Normalisation mean per channel (ImageNet's)")
    std: tuple[float, float, float] = setting(
        IMAGENET_STD, "Normalisation std per channel (ImageNet's)", each=dict(exclusive_minimum=0)
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if self.ratio[0] > self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {self.ratio}")


@dataclass
class ViewConfig(Augmentation):
    """How a clip becomes views; the defaults are the paper's (docs/original.md 3.3, 3.4)."""

    global_frames: tuple[int, ...] = setting(
        (8, 16),
        "Frames of global view 1 and global view 2 (the protocol has exactly two)",
        min_items=2,
        max_items=2,
        each=dict(minimum=1),
        before="ratio",
    )
    global_size: int = setting(224, "Side in pixels of the global views", minimum=1)
    global_scale: tuple[float, float] = setting(
        (0.4, 1.0),
        "Crop area of the global views as a fraction of the frame (min, max)",
        each=dict(exclusive_minimum=0),
    )
    local_frames: tuple[int, ...] = setting(
        (2, 2, 4, 4, 8, 8, 16, 16),
        "Frames of each local view (their number is the number of local views)",
        each=dict(minimum=1),
    )
    local_size: int = setting(96, "Side in pixels of the local views", minimum=1)
    local_scale: tuple[float, float] = setting(
        (0.05, 0.4),
        "Crop area of the local views as a fraction of the frame (min, max)",
        each=dict(exclusive_minimum=0),
    )
    max_window: int = setting(
        256,
        "Longer clips get a random window of this many frames (the original's SAMPLING_RATE 32 x NUM_FRAMES 8)",
        minimum=1,
        after="ratio",
    )
    global_margin: int = setting(5, "Global 1 spans [0, max_len - margin], global 2 [margin, max_len]", minimum=0)
    local_window_divisor: int = setting(8, "Local views span a random window of max_len // divisor frames", minimum=1)
    crop_rule: Literal["original", "last_valid"] = setting(
        "original",
        "Random resized crop: original = offsets of the last valid of 10 draws, height and width of the last draw "
        "(valid or not), cut at the frame edge (the original's quirk, the paper default); last_valid = the last "
        "valid draw whole",
        after="antialias",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("global_scale", "local_scale"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name} must satisfy 0 < min <= max, got {(lo, hi)}")

    @property
    def views(self) -> list[tuple[int, int, tuple[float, float]]]:
        """``(frames, size, crop scale)`` of every view: globals, then locals."""
        return [(t, self.global_size, self.global_scale) for t in self.global_frames] + [
            (t, self.local_size, self.local_scale) for t in self.local_frames
        ]


def view_shapes(cfg: ViewConfig) -> list[tuple[int, int]]:
    """``(T, S)`` of every view, in output order."""
    return [(t, s) for t, s, _ in cfg.views]


def _linspace_floor(start: int, end: int, n: int, max_len: int) -> np.ndarray:
    """``floor(linspace(start, end, n))`` in exact integer arithmetic, clamped to ``[0, max_len - 1]``."""
    steps = np.arange(n, dtype=np.int64)
    values = start + (steps * (end - start)) // max(n - 1, 1)
    return np.clip(values, 0, max_len - 1)


def sample_frame_indices(num_frames: int, cfg: ViewConfig, rng: np.random.Generator) -> list[np.ndarray]:
    """Frame indices (into the whole clip) of every view, in output order; see the module docstring."""
    if num_frames < 1:
        raise ValueError(f"cannot sample views from a clip of {num_frames} frames")
    offset, max_len = 0, num_frames
    if num_frames > cfg.max_window:
        offset, max_len = int(rng.integers(0, num_frames - cfg.max_window + 1)), cfg.max_window
    g1, g2 = cfg.global_frames
    out = [
        _linspace_floor(0, max_len - cfg.global_margin, g1, max_len),
        _linspace_floor(cfg.global_margin, max_len, g2, max_len),
    ]
    width = max_len // cfg.local_window_divisor
    for t in cfg.local_frames:
        start = int(rng.integers(0, max(max_len - width, 1)))
        out.append(_linspace_floor(start, start + width, t, max_len))
    return [idx + offset for idx in out]


def random_resized_crop_params(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
    rule: Literal["original", "last_valid"] = "original",
) -> tuple[int, int, int, int]:
    """``(top, left, crop_height, crop_width)`` of a random resized crop, as the original draws it.

    Unlike torchvision, which stops at the first valid draw, the original makes all
    :data:`CROP_ATTEMPTS` draws; if none fits, it takes a centre crop of the largest box within
    ``ratio``. ``rule="original"``: the offsets come from the last *valid* draw but the height and
    width from the *last* draw (the original overwrites ``h``, ``w`` on every draw and the offsets
    only on valid ones), and the returned box is that slice cut off at the frame edge.
    ``rule="last_valid"``: the last valid draw whole.
    """
    if rule not in CROP_RULES:
        raise ValueError(f"crop rule must be one of {CROP_RULES}, got {rule!r}")
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    crop = None
    for _ in range(CROP_ATTEMPTS):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            crop = (int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w)
    if crop is not None:
        if rule == "last_valid":
            return crop
        top, left = crop[:2]
        # At least one pixel: a last draw rounded to 0 (frames of a few pixels) would crash the original.
        return top, left, max(1, min(h, height - top)), max(1, min(w, width - left))
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _grey(x: torch.Tensor, weights: tuple[float, float, float]) -> torch.Tensor:
    """Grey image ``(T, H, W)`` of ``(3, T, H, W)`` frames."""
    return torch.tensordot(torch.tensor(weights, dtype=x.dtype), x, dims=1)


#: The colour-jitter operations of :func:`jitter_colours`, in the original's listing order.
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")


def jitter_colours(
    x: torch.Tensor, ops: Sequence[tuple[str, float]], gray_weights: tuple[float, float, float]
) -> torch.Tensor:
    """Apply ``(operation, factor)`` pairs of :data:`JITTER_OPS` in the given order to ``(3, T, H, W)``
    frames, in place, as the original's ``datasets/transform.py``: brightness ``a·x``; contrast
    ``a·x + (1 − a)·m`` with ``m`` the mean grey of each frame of ``x`` before this operation; saturation
    ``a·x + (1 − a)·g`` with ``g`` the grey image of ``x`` before this operation. Hue (not in the original)
    shifts by ``factor`` turns with torchvision's ``adjust_hue`` on values clamped to ``[0, 1]``."""
    for name, a in ops:
        if name == "hue":  # (T, 3, H, W) for torchvision, which needs values in [0, 1]
            import torchvision.transforms.v2.functional as TF  # seconds to import; hue is off by default

            x.copy_(TF.adjust_hue(x.transpose(0, 1).clamp(0, 1), a).transpose(0, 1))
        elif name == "brightness":
            x.mul_(a)
        elif name == "contrast":  # the grey is taken before x is scaled
            grey = _grey(x, gray_weights).mean(dim=(1, 2), keepdim=True)
            x.mul_(a).add_(grey, alpha=1 - a)
        elif name == "saturation":
            grey = _grey(x, gray_weights)
            x.mul_(a).add_(grey, alpha=1 - a)
        else:
            raise ValueError(f"unknown colour-jitter operation {name!r}; expected one of {JITTER_OPS}")
    return x


def _color_jitter(x: torch.Tensor, cfg: Augmentation, rng: np.random.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation (and hue) in a random order, one factor each for all frames
    (``1 + U(−s, s)``, at least 0; hue ``U(−hue, hue)``), by :func:`jitter_colours`; ``x`` is modified in place."""
    ops = [(name, s) for name in JITTER_OPS if (s := getattr(cfg, name)) > 0]
    drawn = []
    for k in rng.permutation(len(ops)):
        name, strength = ops[k]
        low = -strength if name == "hue" else max(0.0, 1 - strength)
        drawn.append((name, float(rng.uniform(low, (0.0 if name == "hue" else 1.0) + strength))))
    return jitter_colours(x, drawn, cfg.gray_weights)


def augment_view(
    frames: np.ndarray, size: int, scale: tuple[float, float], cfg: ViewConfig, rng: np.random.Generator
) -> torch.Tensor:
    """One view from uint8 ``(T, H, W, 3)`` frames: float32 ``(3, T, size, size)``, normalised.

    Crop, flip, jitter and grayscale are drawn once and applied to every frame alike.
    """
    top, left, h, w = random_resized_crop_params(frames.shape[1], frames.shape[2], scale, cfg.ratio, rng, cfg.crop_rule)
    crop = torch.from_numpy(frames[:, top : top + h, left : left + w])
    # Work in (3, T, H, W), the output layout: interpolate treats T as channels, which it resizes
    # independently, so no transpose is needed afterwards.
    x = torch.empty((3, *crop.shape[:3]), dtype=torch.float32).copy_(crop.permute(3, 0, 1, 2)).div_(255)
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=cfg.antialias)
    if rng.random() < cfg.hflip:
        x = x.flip(-1)
    if rng.random() < cfg.color_jitter:
        x = _color_jitter(x, cfg, rng)
    if rng.random() < cfg.grayscale:
        x = _grey(x, cfg.gray_weights).expand(3, -1, -1, -1).clone()
    mean = torch.tensor(cfg.mean, dtype=x.dtype).view(3, 1, 1, 1)
    std = torch.tensor(cfg.std, dtype=x.dtype).view(3, 1, 1, 1)
    return x.sub_(mean).div_(std)


def load_clip_manifests(paths: Sequence[str | os.PathLike], fraction: float = 1.0, seed: int = 0) -> pd.DataFrame:
    """Concatenate ``clips.csv`` manifests, with ``path`` made absolute (relative to each manifest's folder).

    Adds a ``manifest`` column. ``fraction`` < 1 keeps a deterministic random subset of each
    manifest (at least one clip each, order kept), seeded by ``seed`` and the manifest's sources,
    so a manifest keeps the same subset whichever other manifests are loaded with it. A missing or
    empty manifest, a missing column, a bad frame count, a missing clip file or a clip listed twice
    raises an error naming it.
    """
    if not paths:
        raise ValueError("no clip manifests given")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    tables = []
    for manifest in map(Path, paths):
        if not manifest.is_file():
            raise FileNotFoundError(f"{manifest}: clip manifest not found")
        try:
            df = pd.read_csv(manifest)
        except pd.errors.EmptyDataError:
            raise ValueError(f"{manifest}: empty clip manifest (expected columns {MANIFEST_COLUMNS})") from None
        missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
        if missing:
            raise ValueError(f"{manifest}: missing column(s) {missing}; expected {MANIFEST_COLUMNS}")
        if df.empty:
            raise ValueError(f"{manifest}: no clips listed")
        frames = pd.to_numeric(df["frames"], errors="coerce")
        bad = frames.isna() | (frames < 1) | (frames % 1 != 0)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(
                f"{manifest} line {row + 2}: frames must be a positive integer, got {str(df['frames'].iloc[row])!r}"
            )
        df["frames"] = frames.astype(np.int64)
        root = os.path.abspath(manifest.parent)  # abspath, not resolve: symlinked corpora keep their names
        df["path"] = [os.path.normpath(os.path.join(root, p)) for p in df["path"].astype(str)]
        for line, clip in enumerate(df["path"], start=2):
            if not os.path.exists(clip):
                raise FileNotFoundError(f"{manifest} line {line}: clip {clip} not found")
        df["manifest"] = str(manifest)
        tables.append(df)
    everything = pd.concat(tables, ignore_index=True)
    dup = everything["path"].duplicated(keep=False)
    if dup.any():
        where = everything.loc[dup, ["path", "manifest"]]
        raise ValueError(f"clip {where['path'].iloc[0]} is listed more than once (in {sorted(set(where['manifest']))})")
    if fraction == 1:
        return everything
    kept = []
    for df in tables:
        sources = ",".join(sorted(df["source"].astype(str).unique()))
        rng = np.random.default_rng([seed, zlib.crc32(sources.encode())])
        keep = max(1, round(fraction * len(df)))
        kept.append(df.iloc[np.sort(rng.choice(len(df), size=keep, replace=False))])
    return pd.concat(kept, ignore_index=True)


class MultiViewDataset(Dataset):
    """Clips as lists of views (see the module docstring); one clip per item.

    Randomness comes from ``numpy.random.default_rng([seed, epoch, index])``, so an item is
    reproducible in any worker and differs per epoch. Call :meth:`set_epoch` before each epoch;
    with ``persistent_workers=True`` a DataLoader keeps the workers' copy, so set it before the
    loader starts or use non-persistent workers.

    ``cache_mb`` > 0 keeps up to that many MiB of decoded clips in the main process's memory
    (:meth:`read_frames`): with ``num_workers`` 0, every epoch after the first skips decoding the clips
    it holds.
    """

    def __init__(self, clips: pd.DataFrame, cfg: ViewConfig, seed: int = 0, cache_mb: float = 0):
        if "path" not in clips.columns:
            raise ValueError(f"clips table needs a 'path' column, got {list(clips.columns)}")
        if clips.empty:
            raise ValueError("clips table is empty")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if cache_mb < 0:
            raise ValueError(f"cache_mb must be >= 0, got {cache_mb}")
        self.paths = clips["path"].astype(str).tolist()
        self.frames = clips["frames"].astype(int).tolist() if "frames" in clips.columns else None
        self.cfg, self.seed, self.epoch = cfg, seed, 0
        self.cache_bytes = int(cache_mb * 2**20)
        self._cache: dict[int, np.ndarray] = {}
        self._cached_bytes = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        """The generator behind item ``index`` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, index])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> list[torch.Tensor]:
        index = operator.index(index)
        if not 0 <= index < len(self.paths):
            raise IndexError(f"clip index {index} out of range for {len(self.paths)} clips")
        rng = self.rng(index)
        frames, rows = self.decode(index, rng)
        return self.make_views(frames, rows, rng)

    def open_video(self, path: str) -> VideoReader:
        """The reader of a clip file."""
        return VideoReader(path)

    def read_frames(self, index: int, sample: Callable[[int], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Clip ``index``'s frames at the indices ``sample(num_frames)`` draws, as ``(frames, rows)``:
        ``frames[rows]`` are the wanted frames, ``rows`` shaped like the indices. Without the cache ``frames``
        is the sorted union of the indices, decoded with one ``get_frames`` call.

        With a cache (``cache_mb``), a clip's first read in the main process decodes all of its frames and keeps
        them while the cache has room; later reads (later epochs) take them from memory, the same uint8 values.
        Loader workers do not cache: they live for one epoch.
        """
        clip = self._cache.get(index)
        if clip is None:
            path = self.paths[index]
            with self.open_video(path) as reader:
                if self.frames is not None and reader.num_frames != self.frames[index]:
                    raise ValueError(
                        f"{path}: the manifest lists {self.frames[index]} frames but the file has "
                        f"{reader.num_frames}; re-run clip extraction"
                    )
                if self._cached_bytes >= self.cache_bytes or get_worker_info() is not None:
                    indices = sample(reader.num_frames)
                    wanted, inverse = np.unique(indices, return_inverse=True)
                    return reader.get_frames(wanted), inverse.reshape(np.shape(indices))
                clip = reader.get_frames(np.arange(reader.num_frames))
            if self._cached_bytes + clip.nbytes <= self.cache_bytes:
                self._cache[index] = clip
                self._cached_bytes += clip.nbytes
            else:  # full: from now on clips decode only the frames they need
                self._cached_bytes = self.cache_bytes
        return clip, np.asarray(sample(len(clip)))

    def decode(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
        """Step 1 and 2 of item ``index``: draw each view's frame indices from ``rng`` and decode their union
        (:meth:`read_frames`); returns the decoded frames and, per view, its rows of them."""
        drawn: list[np.ndarray] = []

        def sample(num_frames: int) -> np.ndarray:
            drawn.extend(sample_frame_indices(num_frames, self.cfg, rng))
            return np.concatenate(drawn)

        frames, rows = self.read_frames(index, sample)
        bounds = np.cumsum([0, *(len(idx) for idx in drawn)])
        return frames, [rows[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]

    def make_views(self, frames: np.ndarray, rows: list[np.ndarray], rng: np.random.Generator) -> list[torch.Tensor]:
        """Step 3: the views of :meth:`decode`'s output, their augmentation drawn from ``rng``."""
        return [
            augment_view(frames[view_rows], size, scale, self.cfg, rng)
            for (_, size, scale), view_rows in zip(self.cfg.views, rows, strict=True)
        ]


def collate_views(batch: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """Stack items' views into one ``(B, 3, T, S, S)`` tensor per view (in shared memory inside workers)."""
    if not batch:
        raise ValueError("cannot collate an empty batch")
    n = len(batch[0])
    for k, item in enumerate(batch):
        if len(item) != n:
            raise ValueError(f"batch item {k} has {len(item)} views, item 0 has {n}")
    return [default_collate([item[v] for item in batch]) for v in range(n)]


__all__ = [
    "CROP_ATTEMPTS",
    "CROP_RULES",
    "JITTER_OPS",
    "Augmentation",
    "MultiViewDataset",
    "ViewConfig",
    "augment_view",
    "collate_views",
    "jitter_colours",
    "load_clip_manifests",
    "random_resized_crop_params",
    "sample_frame_indices",
    "view_shapes",
]
