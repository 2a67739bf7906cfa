"""Clip transforms shared by feature extraction and fine-tuning: uint8 frames (T, H, W, 3) in,
normalised float tensors (3, T, S, S) out, with the same spatial crop for every frame of a clip.

Layer: data and models (docs/architecture.md). May import: foundation and the other data modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from endofm.data.video import resize_short_side

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: The SlowFast defaults the official PolypDiag fine-tuning normalises with (docs/original.md §4.1, §5 flaw 6).
KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)

CropPosition = Literal["center", "top_left", "random"]


def to_normalized_tensor(frames: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (3, T, H, W): scaled to [0, 1], minus ``mean``, over ``std``."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float().div_(255)
    return (x - torch.tensor(mean).view(3, 1, 1, 1)) / torch.tensor(std).view(3, 1, 1, 1)


def crop_offsets(height: int, width: int, size: int, position: CropPosition, rng: np.random.Generator | None = None):
    """(top, left) of a ``size`` square crop; ``random`` needs ``rng``."""
    if size > height or size > width:
        raise ValueError(f"crop {size} does not fit frames of {height}x{width}")
    if position == "center":
        return (height - size) // 2, (width - size) // 2
    if position == "top_left":
        return 0, 0
    if position == "random":
        if rng is None:
            raise ValueError("a random crop needs an rng")
        return int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
    raise ValueError(f"crop position must be center, top_left or random, got {position!r}")


@dataclass
class ClipTransform:
    """Short side to ``short_side`` (an int, or a [lo, hi] range drawn per clip), a ``crop`` square at
    ``position``, horizontal flip with probability ``hflip``, normalisation. Random draws come from the
    item's own ``rng`` so results are reproducible per (seed, epoch, index)."""

    short_side: int | Sequence[int]
    crop: int
    position: CropPosition = "center"
    hflip: float = 0.0
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD

    def __post_init__(self) -> None:
        sides = [self.short_side] if isinstance(self.short_side, int) else list(self.short_side)
        if len(sides) not in (1, 2) or min(sides) < self.crop:
            raise ValueError(f"short_side {self.short_side} must be an int or [lo, hi], each >= crop {self.crop}")
        if not 0 <= self.hflip <= 1:
            raise ValueError(f"hflip must be a probability, got {self.hflip}")

    @property
    def random(self) -> bool:
        return self.position == "random" or self.hflip > 0 or not isinstance(self.short_side, int)

    def __call__(self, frames: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        if self.random and rng is None:
            raise ValueError("this transform draws random numbers: pass an rng")
        if isinstance(self.short_side, int):
            side = self.short_side
        else:
            lo, hi = self.short_side
            side = int(rng.integers(lo, hi + 1))
        frames = resize_short_side(frames, side)
        top, left = crop_offsets(frames.shape[1], frames.shape[2], self.crop, self.position, rng)
        frames = frames[:, top : top + self.crop, left : left + self.crop]
        if self.hflip > 0 and rng.random() < self.hflip:
            frames = frames[:, :, ::-1]
        return to_normalized_tensor(frames, self.mean, self.std)


def torch_rng() -> np.random.Generator:
    """A NumPy generator seeded from torch's RNG: in DataLoader workers that RNG is seeded per worker
    and epoch by :func:`endofm.engine.set_loader_epoch`, in the main process by the run's seed."""
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
