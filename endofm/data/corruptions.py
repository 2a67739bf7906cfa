"""Named, seeded corruptions of test clips: what endoscopy does to frames (motion and defocus blur,
lighting, specular highlights, contrast loss, viewpoint, frame rate), at severities 1-3.

A :class:`ClipCorruption` (name, severity, seed) turns the uint8 frames (T, H, W, 3) of one clip into
corrupted frames; its random draws come from a generator seeded by (clip key, name, severity, seed)
alone (:func:`clip_rng`), so a clip is corrupted the same way in every run, method and process. Every
frame of a clip gets the same corruption; the temporal ones move smoothly over the clip (the blur
direction drifts, the light flickers, highlights glide, frames freeze). The result
(:class:`CorruptedClip`) also carries what labels need: which source frame each output frame shows
(frame drop) and the forward affine map of the pixels (rotation / zoom), applied exactly to masks
(:meth:`CorruptedClip.warp_masks`: the same resampling, nearest) and boxes (:func:`warp_boxes`: the
enclosing box of the mapped corners, clipped to the frame). :meth:`ClipCorruption.warp_coco` maps a
COCO ground truth the same way without loading a pixel.

Layer: data (docs/architecture.md). May import: foundation. Pure tensor/NumPy code (torch, torchvision).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

#: The severities every corruption has (1: mild, 3: strong).
SEVERITIES: tuple[int, ...] = (1, 2, 3)


def clip_rng(key: str, name: str, severity: int, seed: int) -> np.random.Generator:
    """The generator of one clip's corruption: seeded by a hash of (key, name, severity, seed) alone."""
    digest = hashlib.sha256(f"{key}\x00{name}\x00{int(severity)}\x00{int(seed)}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


class Result(NamedTuple):
    """What a corruption function returns: frames (T, 3, H, W) in [0, 1], the source frame of each output
    frame (T,), and the viewpoint ``(angle, scale)`` of a geometric corruption (else None)."""

    frames: torch.Tensor
    source: np.ndarray
    viewpoint: tuple[float, float] | None = None


def _same(x: torch.Tensor, out: torch.Tensor) -> Result:
    return Result(out.clamp(0, 1), np.arange(len(x)))


def _smooth(t: int, rng: np.random.Generator, period: float) -> np.ndarray:
    """A sinusoid over ``t`` frames with a random phase, in [-1, 1]: how temporal corruptions move."""
    return np.sin(2 * np.pi * np.arange(t) / period + rng.uniform(0, 2 * np.pi))


def _short(x: torch.Tensor) -> int:
    return min(x.shape[-2:])


def line_kernel(length: int, angle: float) -> torch.Tensor:
    """A normalised (length, length) kernel of a line of ``length`` pixels through the centre at ``angle``
    degrees (0: horizontal), drawn by splatting points along it bilinearly."""
    c = (length - 1) / 2
    t = np.linspace(-c, c, 8 * length)
    xs, ys = c + t * math.cos(math.radians(angle)), c + t * math.sin(math.radians(angle))
    k = np.zeros((length, length))
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = x0 + dx, y0 + dy
        ok = (xi >= 0) & (xi < length) & (yi >= 0) & (yi < length)
        np.add.at(k, (yi[ok], xi[ok]), w[ok])
    return torch.from_numpy(k / k.sum()).float()


def motion_blur(x: torch.Tensor, severity: int, rng: np.random.Generator, keep: Sequence[int] = ()) -> Result:
    """A linear blur of 3 / 6 / 10 % of the short side along a random direction that drifts by up to ±20°
    over the clip (period 8 frames)."""
    length = max(3, round((0.03, 0.06, 0.10)[severity - 1] * _short(x)) | 1)
    angles = rng.uniform(0, 180) + 20 * _smooth(len(x), rng, 8.0)
    pad = length // 2
    out = []
    for frame, angle in zip(x, angles, strict=True):
        kernel = line_kernel(length, float(angle)).expand(3, 1, length, length)
        padded = F.pad(frame[None], (pad, pad, pad, pad), mode="replicate")
        out.append(F.conv2d(padded, kernel, groups=3)[0])
    return _same(x, torch.stack(out))


def defocus_blur(x: torch.Tensor, severity: int, rng: np.random.Generator, keep: Sequence[int] = ()) -> Result:
    """A Gaussian blur of sigma 1 / 2 / 4 % of the short side (torchvision's ``gaussian_blur``)."""
    sigma = max(0.5, (0.01, 0.02, 0.04)[severity - 1] * _short(x))
    size = 2 * math.ceil(3 * sigma) + 1
    return _same(x, TF.gaussian_blur(x, [size, size], [sigma, sigma]))


def brightness(x: torch.Tensor, severity: int, rng: np.random.Generator, keep: Sequence[int] = ()) -> Result:
    """A gamma of 1.5 / 2.2 / 3.2 (darker) or its inverse (brighter), drawn per clip, flickering by ±10 %
    over the clip (period 6 frames; torchvision's ``adjust_gamma``)."""
    gamma = (1.5, 2.2, 3.2)[severity - 1] ** (1 if rng.random() < 0.5 else -1)
    flicker = 1 + 0.1 * _smooth(len(x), rng, 6.0)
    return _same(x, torch.stack([TF.adjust_gamma(f, float(gamma * k)) for f, k in zip(x, flicker, strict=True)]))


def specular(x: torch.Tensor, severity: int, rng: np.random.Generator, keep: Sequence[int] = ()) -> Result:
    """3 / 6 / 10 white, saturated blobs of radius 3 / 4.5 / 6 % of the short side (a Gaussian profile clipped
    so that its core is pure white), each gliding along a straight line over the clip."""
    t, _, h, w = x.shape
    count, radius = (3, 6, 10)[severity - 1], (0.03, 0.045, 0.06)[severity - 1] * _short(x)
    start = rng.uniform([0, 0], [w, h], size=(count, 2))
    velocity = rng.uniform(-0.01, 0.01, size=(count, 2)) * _short(x)
    sizes = radius * rng.uniform(0.7, 1.3, size=count)
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    out = []
    for i in range(t):
        alpha = torch.zeros(h, w)
        for (cx, cy), (vx, vy), r in zip(start, velocity, sizes, strict=True):
            d2 = (xx - (cx + vx * i)) ** 2 + (yy - (cy + vy * i)) ** 2
            alpha = torch.maximum(alpha, (2.0 * torch.exp(-d2 / (2 * r * r))).clamp(max=1.0))
        out.append(x[i] * (1 - alpha) + alpha)
    return _same(x, torch.stack(out))


def contrast(x: torch.Tensor, severity: int, rng: np.random.Generator, keep: Sequence[int] = ()) -> Result:
    """Contrast scaled by 0.6 / 0.4 / 0.2 towards the frame's mean grey (torchvision's ``adjust_contrast``)."""
    return _same(x, TF.adjust_contrast(x, (0.6, 0.4, 0.2)[severity - 1]))


def viewpoint(severity: int, rng: np.random.Generator) -> tuple[float, float]:
    """(angle in degrees, clockwise on screen; zoom) of :func:`rotation_zoom`: |angle| uniform in
    [0.5, 1] × 10 / 20 / 30°, random sign; zoom 1.1 / 1.2 / 1.35."""
    angle = float(rng.uniform(0.5, 1.0) * (10, 20, 30)[severity - 1] * (1 if rng.random() < 0.5 else -1))
    return angle, (1.1, 1.2, 1.35)[severity - 1]


def rotation_zoom(x: torch.Tensor, severity: int, rng: np.random.Generator, keep: Sequence[int] = ()) -> Result:
    """The viewpoint: a rotation and zoom about the frame centre (:func:`viewpoint`), the same for the whole
    clip, black outside the frame (torchvision's ``affine``, bilinear)."""
    angle, scale = viewpoint(severity, rng)
    out = TF.affine(x, angle=angle, translate=[0, 0], scale=scale, shear=[0.0, 0.0],
                    interpolation=InterpolationMode.BILINEAR, fill=0.0)  # fmt: skip
    return Result(out.clamp(0, 1), np.arange(len(x)), (angle, scale))


def frame_drop(x: torch.Tensor, severity: int, rng: np.random.Generator, keep: Sequence[int] = ()) -> Result:
    """The frame rate: each frame after the first is dropped with probability 0.25 / 0.5 / 0.75 and the
    last kept frame shown in its place (a freeze); frames in ``keep`` (a labelled key frame) are never dropped."""
    p = (0.25, 0.5, 0.75)[severity - 1]
    drop = rng.random(len(x)) < p
    source = np.arange(len(x))
    for i in range(1, len(x)):
        if drop[i] and i not in keep:
            source[i] = source[i - 1]
    return Result(x[torch.from_numpy(source)], source)


Corruption = Callable[[torch.Tensor, int, np.random.Generator, Sequence[int]], Result]

#: The corruptions by name, in the report's order.
CORRUPTIONS: dict[str, Corruption] = {
    "motion_blur": motion_blur,
    "defocus_blur": defocus_blur,
    "brightness": brightness,
    "specular": specular,
    "contrast": contrast,
    "rotation_zoom": rotation_zoom,
    "frame_drop": frame_drop,
}
#: Corruptions that move pixels (labels move with them) and their draw of (angle, zoom).
GEOMETRIC: dict[str, Callable[[int, np.random.Generator], tuple[float, float]]] = {"rotation_zoom": viewpoint}


def affine_matrix(angle: float, scale: float, height: int, width: int) -> np.ndarray:
    """The forward (2, 3) map of :func:`rotation_zoom` in continuous pixel coordinates (0-based, pixel i covers
    [i, i + 1), y down): ``p' = c + scale · R(angle) (p - c)``, c the frame centre (W / 2, H / 2), R the
    rotation that turns +x towards +y (clockwise on screen), as torchvision's ``affine``."""
    a = math.radians(angle)
    r = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    c = np.array([width / 2, height / 2])
    return np.concatenate([r, (c - r @ c)[:, None]], axis=1)


def warp_boxes(boxes: np.ndarray, matrix: np.ndarray | None, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (N, 4) xyxy in continuous pixels under ``matrix`` (None: unchanged): the axis-aligned box
    enclosing the four mapped corners, clipped to the frame. Returns the boxes and a mask of those with
    positive area (the others left the frame)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if matrix is None:
        return boxes, np.ones(len(boxes), dtype=bool)
    x0, y0, x1, y1 = boxes.T
    corners = np.stack([np.stack([x0, y0], 1), np.stack([x1, y0], 1), np.stack([x0, y1], 1), np.stack([x1, y1], 1)], 1)
    mapped = corners @ matrix[:, :2].T + matrix[:, 2]  # (N, 4 corners, 2)
    lo, hi = mapped.min(axis=1), mapped.max(axis=1)
    out = np.stack(
        [lo[:, 0].clip(0, width), lo[:, 1].clip(0, height), hi[:, 0].clip(0, width), hi[:, 1].clip(0, height)], 1
    )
    return out, (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])


@dataclass(frozen=True)
class CorruptedClip:
    """A corrupted clip: uint8 ``frames`` (T, H, W, 3), the ``source`` frame each shows, and the viewpoint
    (angle, zoom) of a geometric corruption (None otherwise)."""

    frames: np.ndarray
    source: np.ndarray
    viewpoint: tuple[float, float] | None = None

    @property
    def matrix(self) -> np.ndarray | None:
        """The forward pixel map (:func:`affine_matrix`), or None."""
        if self.viewpoint is None:
            return None
        return affine_matrix(*self.viewpoint, *self.frames.shape[1:3])

    def warp_masks(self, masks: np.ndarray) -> np.ndarray:
        """Label masks (T, H, W) of the clean clip -> those of the corrupted frames: each frame's source mask,
        moved by the same affine resampling as the pixels (nearest, 0 outside the frame)."""
        masks = np.asarray(masks)[self.source]
        if self.viewpoint is None:
            return masks
        angle, scale = self.viewpoint
        m = torch.from_numpy(np.ascontiguousarray(masks))[:, None]
        out = TF.affine(m, angle=angle, translate=[0, 0], scale=scale, shear=[0.0, 0.0],
                        interpolation=InterpolationMode.NEAREST, fill=0)  # fmt: skip
        return out[:, 0].numpy().astype(masks.dtype)

    def warp_boxes(self, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:func:`warp_boxes` of this clip's viewpoint."""
        return warp_boxes(boxes, self.matrix, *self.frames.shape[1:3])


@dataclass(frozen=True)
class ClipCorruption:
    """Corruption ``name`` of :data:`CORRUPTIONS` at ``severity`` (1-3), seeded by ``seed``."""

    name: str
    severity: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in CORRUPTIONS:
            raise ValueError(f"unknown corruption {self.name!r}; known: {', '.join(CORRUPTIONS)}")
        if self.severity not in SEVERITIES:
            raise ValueError(f"corruption severity must be one of {SEVERITIES}, got {self.severity!r}")

    @property
    def tag(self) -> str:
        """``<name>-s<severity>``: a metrics file's stem."""
        return f"{self.name}-s{self.severity}"

    def __call__(self, frames: np.ndarray, key: str, keep: Iterable[int] = ()) -> CorruptedClip:
        """Corrupt uint8 ``frames`` (T, H, W, 3) of the clip named ``key``; frames in ``keep`` are never
        dropped (:func:`frame_drop`)."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
            raise ValueError(f"frames must be uint8 (T, H, W, 3) with T >= 1, got {frames.dtype} {frames.shape}")
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
        rng = clip_rng(key, self.name, self.severity, self.seed)
        out = CORRUPTIONS[self.name](x, self.severity, rng, tuple(keep))
        pixels = (out.frames * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return CorruptedClip(np.ascontiguousarray(pixels), np.asarray(out.source), out.viewpoint)

    def matrix(self, key: str, height: int, width: int) -> np.ndarray | None:
        """The forward pixel map this corruption gives clip ``key`` of ``height`` × ``width`` frames (None when
        it moves no pixel), drawn as :meth:`__call__` draws it, without the frames."""
        if self.name not in GEOMETRIC:
            return None
        angle, scale = GEOMETRIC[self.name](self.severity, clip_rng(key, self.name, self.severity, self.seed))
        return affine_matrix(angle, scale, height, width)

    def warp_coco(self, coco: Mapping[str, Any]) -> dict[str, Any]:
        """A COCO ground truth with every image's boxes as the corruption moves them (key: the image id;
        boxes that leave the frame are dropped; ``area`` recomputed)."""
        sizes = {int(im["id"]): (int(im["height"]), int(im["width"])) for im in coco["images"]}
        matrices = {i: self.matrix(str(i), h, w) for i, (h, w) in sizes.items()}
        annotations = []
        for ann in coco["annotations"]:
            image = int(ann["image_id"])
            x, y, w, h = (float(v) for v in ann["bbox"])
            (box,), ok = warp_boxes(np.array([[x, y, x + w, y + h]]), matrices[image], *sizes[image])
            if ok[0]:
                bw, bh = float(box[2] - box[0]), float(box[3] - box[1])
                annotations.append({**ann, "bbox": [float(box[0]), float(box[1]), bw, bh], "area": bw * bh})
        return {**coco, "annotations": annotations}
