"""The built-in synthetic endoscopy corpus: procedural videos written in the official layouts.

Each video owns a tissue *canvas* (colour, height, wetness, polyp alpha and instance ids) and every
frame samples it through a smoothly moving camera. Colonoscopy and gastroscopy look down a tube:
a frame pixel at distance ``r`` and angle ``theta`` from the lumen centre reads the canvas at
``(s * theta, s * (depth - log r))``, a conformal "tunnel" map in which moving forward shifts
``depth`` and content flows out of the dark lumen, growing as it comes near. Laparoscopy has no
lumen and reads a flat canvas through a slow affine pan/zoom/rotation. Lighting (lumen falloff,
vignetting, specular highlights), instruments, motion blur, sensor noise and the field-of-view
mask are applied per frame.

Labels come from the renderer's per-frame instance maps, never from polyp parameters: a pixel
belongs to polyp ``k`` if it lies inside the field of view, is lit (``min_visible_light``), and
the bilinearly sampled polyp alpha is above 0.5 there. Masks, boxes and video labels are all
derived from these maps.

Layer: data and models (docs/architecture.md). May import: foundation and the other data modules.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from endofm.config import check_fields, setting
from endofm.data.layouts import CVCLayout, KUMCLayout, PolypDiagLayout
from endofm.data.video import write_frame_folder, write_video
from endofm.io import atomic_path

STYLES = ("colonoscopy", "gastroscopy", "laparoscopy")
POLYP_KINDS = KUMCLayout.CLASSES  # ("adenomatous", "hyperplastic")

#: Pretraining sources -> their layout: "videos" (one file per video) or "frames" (frame folders).
PRETRAIN_SOURCES: dict[str, str] = {
    "synthetic_colonoscopy": "videos",
    "synthetic_gastroscopy": "videos",
    "synthetic_laparoscopy": "frames",
}
#: Source -> (style, video name prefix, container suffix or None for frame folders).
_PRETRAIN_FORMAT = {
    "synthetic_colonoscopy": ("colonoscopy", "colon", ".mp4"),
    "synthetic_gastroscopy": ("gastroscopy", "gastro", ".avi"),
    "synthetic_laparoscopy": ("laparoscopy", "lap", None),
}
#: The benchmarks the built-in corpus has; each is registered with its generator in endofm.tasks.benchmarks.
BENCHMARK_SETS = ("polypdiag", "cvc12k", "kumc")
SYNTHETIC_NAMES = tuple(PRETRAIN_SOURCES) + BENCHMARK_SETS


@dataclass
class SynthConfig:
    """Sizes and difficulty of the synthetic corpus; the defaults are the built-in CPU demo."""

    seed: int = setting(0, "Base seed; each source/benchmark derives its own from it and its name", minimum=0)
    height: int = setting(128, "Generated frame height in pixels (even)", minimum=16, multiple_of=2)
    width: int = setting(160, "Generated frame width in pixels (even)", minimum=16, multiple_of=2)
    fps: int = setting(30, "Frame rate written into the videos", minimum=1)
    pretrain_videos: int = setting(30, "Videos per synthetic pretraining source", minimum=1)
    pretrain_frames: tuple[int, int] = setting((48, 80), "Min, max frames per pretraining video", each=dict(minimum=1))
    pretrain_polyp_fraction: float = setting(
        0.5, "Share of colonoscopy/gastroscopy pretraining videos with polyps", minimum=0, maximum=1
    )
    polypdiag_videos: dict[str, int] = setting(
        description="PolypDiag videos per split (at least 2: both labels in every split)",
        factory=lambda: {"train": 32, "val": 16},
        keys={"train": "training videos", "val": "videos of the official val split (the test split)"},
        each=dict(minimum=2),
    )
    polypdiag_frames: tuple[int, int] = setting((40, 64), "Min, max frames per PolypDiag video", each=dict(minimum=1))
    polypdiag_abnormal_fraction: float = setting(
        0.5, "Planned share of abnormal videos (with polyps) per split, at least one of each", minimum=0, maximum=1
    )
    cvc_sequences: dict[str, int] = setting(
        description="CVC sequences per split (as the official lists: 20 and 9)",
        factory=lambda: {"train": 20, "test": 9},
        keys={"train": "training sequences", "test": "test sequences"},
        each=dict(minimum=1),
    )
    cvc_sequence_frames: tuple[int, int] = setting(
        (6, 25), "Min, max frames per CVC sequence (as the official lists)", each=dict(minimum=1)
    )
    kumc_videos: dict[str, int] = setting(
        description="KUMC videos per split (at least 2: both polyp kinds in every split)",
        factory=lambda: {"train": 8, "val": 4, "test": 4},
        keys={"train": "videos in train2019", "val": "videos in val2019", "test": "videos in test2019"},
        each=dict(minimum=2),
    )
    kumc_frames: tuple[int, int] = setting((40, 64), "Min, max frames per KUMC video", each=dict(minimum=1))
    kumc_unannotated_fraction: float = setting(
        0.05, "Share of val/test frames written without an XML (train is flat: all have one)", minimum=0, maximum=1
    )
    polyp_contrast: tuple[float, float] = setting(
        (0.3, 0.65),
        "Min, max polyp contrast (colour, texture, relief; 0 = invisible); the most sensitive difficulty knob",
        each=dict(minimum=0, maximum=1),
    )
    polyp_radius: tuple[float, float] = setting(
        (0.06, 0.15),
        "Min, max polyp radius when placed, as a fraction of min(height, width)",
        each=dict(minimum=0, maximum=0.5),
    )
    cvc_polyp_scale: float = setting(1.6, "CVC close-ups: polyp radius multiplier", exclusive_minimum=0)
    distractor_rate: float = setting(1.0, "Scales the expected number of polyp-like distractors per video", minimum=0)
    motion_blur_probability: float = setting(
        0.3, "Chance that a video has a fast, blurred camera jerk", minimum=0, maximum=1
    )
    min_visible_light: float = setting(
        0.15,
        "Polyp pixels darker than this (deep in the lumen) are not labelled; at most 0.5, where polyps are placed",
        minimum=0,
        maximum=0.5,
    )
    crf: int = setting(
        18, "H.264 constant rate factor of the benchmark videos (PolypDiag); 0 = lossless", minimum=0, maximum=51
    )
    pretrain_crf: int = setting(18, "The same for the pretraining sources' videos", minimum=0, maximum=51)
    draws: list[int] = setting(
        description="Independent draws of the benchmarks: draw k is generated with seed + k (0: the main draw, the "
        "pretraining sources' seed); the others go to <benchmark>-draw<k> folders, and the runs of "
        "finetune.draw_modes repeat on each",
        factory=lambda: [0],
        min_items=1,
        each=dict(minimum=0),
    )

    def __post_init__(self) -> None:
        check_fields(self)
        pairs = (
            "pretrain_frames",
            "polypdiag_frames",
            "cvc_sequence_frames",
            "kumc_frames",
            "polyp_contrast",
            "polyp_radius",
        )
        for name in pairs:
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name} must be (min, max) with min <= max, got {(lo, hi)}")
        if len(set(self.draws)) != len(self.draws) or 0 not in self.draws:
            raise ValueError(f"draws must be distinct and include 0 (the main draw), got {self.draws}")
        if self.polyp_radius[0] * min(self.height, self.width) < 1.0:
            raise ValueError(
                f"polyp_radius: the smallest polyp ({self.polyp_radius[0]} x {min(self.height, self.width)} px) "
                "must be at least 1 pixel in radius"
            )

    def for_draw(self, draw: int) -> SynthConfig:
        """The settings that generate benchmark draw ``draw``: seed ``seed + draw``, ``draws`` left at its
        default (a generator job's settings do not change when draws are added)."""
        return dataclasses.replace(self, seed=self.seed + draw, draws=[0])


# ----------------------------------------------------------------------------------------------
# Public data types


@dataclass(frozen=True)
class PolypSpec:
    """One polyp to place in a video; ``None`` fields are drawn from the config.

    ``time`` (0..1 of the clip) and ``position`` ((x, y) as fractions of width and height) say
    where the camera sees it when it is placed; a position that is outside the field of view or
    in the dark lumen is moved to the nearest usable point.
    """

    kind: str
    radius: float | None = None  # fraction of min(height, width) at placement
    contrast: float | None = None
    time: float | None = None
    position: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.kind not in POLYP_KINDS:
            raise ValueError(f"unknown polyp kind {self.kind!r}; expected one of {list(POLYP_KINDS)}")
        if self.radius is not None and not 0 < self.radius <= 0.5:
            raise ValueError(f"polyp radius must be in (0, 0.5], got {self.radius}")
        if self.contrast is not None and not 0 <= self.contrast <= 1:
            raise ValueError(f"polyp contrast must be in [0, 1], got {self.contrast}")
        if self.time is not None and not 0 <= self.time <= 1:
            raise ValueError(f"polyp time must be in [0, 1], got {self.time}")
        if self.position is not None and not all(0 <= p <= 1 for p in self.position):
            raise ValueError(f"polyp position must be fractions in [0, 1], got {self.position}")


@dataclass
class RenderedVideo:
    """A rendered clip and its pixel-exact labels.

    ``instances[t, y, x]`` is 0 for background and ``k`` for polyp ``k`` (1-based), whose kind is
    ``kinds[k - 1]``; ``fov`` is the field-of-view mask (everything outside is exactly black).
    """

    frames: np.ndarray  # (T, H, W, 3) uint8
    instances: np.ndarray  # (T, H, W) int16
    kinds: tuple[str, ...]
    style: str
    fov: np.ndarray  # (H, W) bool

    @property
    def masks(self) -> np.ndarray:
        """(T, H, W) bool: visible polyp pixels."""
        return self.instances > 0

    @property
    def abnormal(self) -> bool:
        """True iff some polyp pixel is visible in some frame."""
        return bool(self.instances.any())

    def window(self, start: int, stop: int) -> RenderedVideo:
        """Frames ``start .. stop - 1`` (same instance ids and kinds)."""
        return RenderedVideo(self.frames[start:stop], self.instances[start:stop], self.kinds, self.style, self.fov)

    def boxes(self, t: int) -> list[tuple[int, str, int, int, int, int]]:
        """``(k, kind, x0, y0, x1, y1)`` per visible polyp of frame ``t``; 0-based inclusive pixel extents."""
        return [(k, self.kinds[k - 1], *box) for k, box in instance_boxes(self.instances[t]).items()]


def instance_boxes(instances: np.ndarray) -> dict[int, tuple[int, int, int, int]]:
    """``{k: (x0, y0, x1, y1)}``: 0-based inclusive extents of each nonzero id of a 2-D map."""
    boxes = {}
    for k in np.unique(instances):
        if k == 0:
            continue
        ys, xs = np.nonzero(instances == k)
        boxes[int(k)] = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
    return boxes


# ----------------------------------------------------------------------------------------------
# Styles


@dataclass(frozen=True)
class _Style:
    tunnel: bool  # conformal tube map with a dark lumen, else a flat affine canvas
    fov: str  # "circle" (clipped by the frame), "octagon" or "wide" (dark corners only)
    mucosa: tuple  # three base colours mixed by low-frequency noise
    vessel: tuple  # vessel colour
    vessel_strength: tuple[float, float]  # range of the vessels' opacity
    folds: str  # "rings" (haustral folds), "rugae" (gastric folds) or "none"
    speed: tuple[float, float]  # forward speed (log-depth per frame) or pan speed (min side per frame)
    spin: float  # rotation rate, rad per frame
    wander: float  # lumen-centre / pan wander amplitude, fraction of the field-of-view radius
    offcentre: float  # probability that the lumen sits off-centre or off-screen (wall views)
    lumen: tuple[float, float]  # lumen darkness radius, fraction of the field-of-view radius
    gamma: tuple[float, float]  # steepness of the lumen light falloff
    fluid: tuple  # colour of residue / bile pools
    debris: tuple  # colour of stool / debris patches
    specular: float  # specular highlight gain
    speckle: float  # density of small wet glints


_STYLES = {
    "colonoscopy": _Style(
        tunnel=True,
        fov="circle",
        mucosa=((0.90, 0.50, 0.40), (0.97, 0.65, 0.52), (0.80, 0.36, 0.30)),
        vessel=(0.52, 0.10, 0.13),
        vessel_strength=(0.35, 0.65),
        folds="rings",
        speed=(0.004, 0.016),
        spin=0.006,
        wander=0.25,
        offcentre=0.45,
        lumen=(0.16, 0.32),
        gamma=(2.6, 4.0),
        fluid=(0.74, 0.62, 0.26),
        debris=(0.48, 0.34, 0.12),
        specular=0.9,
        speckle=1.0,
    ),
    "gastroscopy": _Style(
        tunnel=True,
        fov="octagon",
        mucosa=((0.93, 0.55, 0.42), (0.98, 0.70, 0.55), (0.86, 0.42, 0.34)),
        vessel=(0.62, 0.20, 0.20),
        vessel_strength=(0.08, 0.22),
        folds="rugae",
        speed=(0.0, 0.008),
        spin=0.01,
        wander=0.35,
        offcentre=0.6,
        lumen=(0.15, 0.35),
        gamma=(2.0, 3.0),
        fluid=(0.72, 0.72, 0.30),
        debris=(0.55, 0.45, 0.20),
        specular=1.0,
        speckle=1.4,
    ),
    "laparoscopy": _Style(
        tunnel=False,
        fov="wide",
        mucosa=((0.98, 0.82, 0.56), (0.72, 0.26, 0.20), (0.92, 0.62, 0.55)),
        vessel=(0.45, 0.08, 0.10),
        vessel_strength=(0.25, 0.45),
        folds="none",
        speed=(0.0, 0.003),
        spin=0.002,
        wander=0.15,
        offcentre=0.0,
        lumen=(0.0, 0.0),
        gamma=(1.0, 1.0),
        fluid=(0.60, 0.10, 0.08),
        debris=(0.35, 0.05, 0.05),
        specular=0.7,
        speckle=0.8,
    ),
}


# ----------------------------------------------------------------------------------------------
# Noise and camera curves


@functools.lru_cache(maxsize=8)
def _log_frequencies(shape: tuple[int, int]) -> np.ndarray:
    """log2 of the radial frequency (cycles per px) of each rfft2 coefficient; DC set to -inf."""
    h, w = shape
    fy = np.fft.fftfreq(h).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(w).astype(np.float32)[None, :]
    f = np.sqrt(fy * fy + fx * fx)
    f[0, 0] = 1.0
    out = np.log2(f)
    out[0, 0] = -np.inf
    out.flags.writeable = False
    return out


def _field(rng: np.random.Generator, shape: tuple[int, int], wavelength: float, octaves: float = 0.6) -> np.ndarray:
    """Band-limited Gaussian noise (unit std, periodic) with features of about ``wavelength`` px.

    Smooth fields are made at 1/2 or 1/4 resolution and upsampled (periodically): much cheaper.
    """
    h, w = shape
    step = 4 if wavelength >= 48 else 2 if wavelength >= 24 else 1
    while step > 1 and (h % step or w % step):
        step //= 2
    coarse = (h // step, w // step)
    gain = np.exp((-0.5 / octaves**2) * (_log_frequencies(coarse) + math.log2(wavelength / step)) ** 2)
    size = (coarse[0], coarse[1] // 2 + 1)
    spec = rng.standard_normal(size, dtype=np.float32) + 1j * rng.standard_normal(size, dtype=np.float32)
    out = np.fft.irfft2(spec * gain, s=coarse).astype(np.float32)
    out /= out.std() + 1e-8
    return _upsample(out, step) if step > 1 else out


def _upsample(a: np.ndarray, step: int) -> np.ndarray:
    """Bilinear, periodic upsampling of a 2-D map by an integer factor (pixel centres aligned)."""
    for axis in (0, 1):
        n = a.shape[axis]
        pos = (np.arange(n * step, dtype=np.float32) + 0.5) / step - 0.5
        i0 = np.floor(pos).astype(np.int64)
        f = pos - i0
        lo, hi = np.take(a, i0 % n, axis=axis), np.take(a, (i0 + 1) % n, axis=axis)
        a = lo + (hi - lo) * (f[:, None] if axis == 0 else f[None, :])
    return a


def _smooth(rng: np.random.Generator, n: int, amp: float, period: float, k: int = 3) -> np.ndarray:
    """A smooth zero-mean curve over ``n`` frames, ``|value| <= amp``, periods of ``period``-``3 period`` frames."""
    t = np.arange(n, dtype=np.float64)[:, None]
    periods = period * rng.uniform(1.0, 3.0, k)
    weights = rng.dirichlet(np.ones(k))
    phases = rng.uniform(0, 2 * np.pi, k)
    return amp * (weights * np.sin(2 * np.pi * t / periods + phases)).sum(1)


def _periodic_curve(rng: np.random.Generator, x: np.ndarray, period: float, amp: float, harmonics: int = 3):
    """A smooth function of ``x`` with the given period (for warps around the tube)."""
    m = np.arange(1, harmonics + 1)
    a = rng.normal(0, 1, harmonics) / m
    a *= amp / (np.abs(a).sum() + 1e-8)
    ph = rng.uniform(0, 2 * np.pi, harmonics)
    return (a * np.cos(2 * np.pi * np.asarray(x)[..., None] * m / period + ph)).sum(-1)


def _atan2(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``np.arctan2`` to within 2e-4 rad, about twice as fast for float32 (a polynomial per octant)."""
    ax, ay = np.abs(x), np.abs(y)
    t = np.minimum(ax, ay) / np.maximum(np.maximum(ax, ay), 1e-30)
    t2 = t * t
    r = (((-0.0464964749 * t2 + 0.15931422) * t2 - 0.327622764) * t2 + 1) * t
    r = np.where(ay > ax, np.pi / 2 - r, r)
    r = np.where(x < 0, np.pi - r, r)
    return np.where(y < 0, -r, r)


def _ramp(t: np.ndarray, t0: float, length: float) -> np.ndarray:
    """Smoothstep from 0 (before ``t0``) to 1 (after ``t0 + length``)."""
    x = np.clip((t - t0) / length, 0.0, 1.0)
    return x * x * (3 - 2 * x)


# ----------------------------------------------------------------------------------------------
# Geometry: field of view and camera paths


@dataclass
class _Frame:
    """Pixel grid (centred coordinates), field of view and screen-space shading of one video."""

    h: int
    w: int
    unit: float  # min(h, w)
    xs: np.ndarray  # (1, W) centred x of pixel centres
    ys: np.ndarray  # (H, 1)
    fov: np.ndarray  # (H, W) bool
    rim: np.ndarray  # (H, W) darkening towards the field-of-view edge
    vignette: np.ndarray  # (H, W)
    radius: float  # field-of-view radius in px (reference length for optics and the lumen)


def _make_frame(rng: np.random.Generator, style: _Style, cfg: SynthConfig) -> _Frame:
    h, w = cfg.height, cfg.width
    unit = float(min(h, w))
    xs = (np.arange(w, dtype=np.float32) + 0.5 - w / 2)[None, :]
    ys = (np.arange(h, dtype=np.float32) + 0.5 - h / 2)[:, None]
    cx, cy = rng.uniform(-0.015, 0.015, 2) * unit
    dx, dy = xs - cx, ys - cy
    if style.fov == "circle":
        radius = unit * rng.uniform(0.54, 0.6)
        inside = radius - np.sqrt(dx * dx + dy * dy)
    elif style.fov == "octagon":
        ax = min(unit * rng.uniform(0.56, 0.62), w / 2 - 2)
        ay = min(unit * rng.uniform(0.5, 0.56), h / 2 + 1)
        ac = (ax + ay) * rng.uniform(0.74, 0.8)
        inside = np.minimum(np.minimum(ax - np.abs(dx), ay - np.abs(dy)), (ac - np.abs(dx) - np.abs(dy)) / math.sqrt(2))
        radius = ax
    else:
        half_diag = 0.5 * math.hypot(h, w)
        radius = half_diag * rng.uniform(0.9, 0.95)
        inside = radius - np.sqrt(dx * dx + dy * dy)
    fov = inside > 0
    rim = np.clip(inside / (0.05 * unit), 0.0, 1.0) ** 0.6
    d = np.sqrt(dx * dx + dy * dy) / radius
    vignette = 1.0 - rng.uniform(0.25, 0.4) * np.clip(d, 0, 1.3) ** 2.5
    return _Frame(
        h,
        w,
        unit,
        xs,
        ys,
        fov,
        rim.astype(np.float32),
        vignette.astype(np.float32),
        float(radius),
    )


@dataclass
class _TunnelPath:
    """Per-frame camera of a tube view; see the module docstring for the map."""

    cx: np.ndarray  # lumen centre (centred px)
    cy: np.ndarray
    depth: np.ndarray  # log-depth of the camera along the tube
    phi: np.ndarray  # roll
    aniso: np.ndarray  # oblique view: stretch and shear of the tube cross-section
    shear: np.ndarray
    r_half: np.ndarray  # screen radius where the lumen light falls to 1/2
    gamma: float
    wobble: np.ndarray  # (2**k,) log-scale of the lumen outline over one turn (an irregular lumen)
    s: float  # canvas px per radian
    v_off: float
    r_min: float
    canvas_shape: tuple[int, int]
    periodic: bool = True

    def coords(self, ti: np.ndarray, x: np.ndarray, y: np.ndarray):
        """Canvas (u, v), log2 canvas px per screen px, and lumen light at frames ``ti`` for points (x, y)."""
        shape = (-1,) + (1,) * np.ndim(x)
        dx = x - self.cx[ti].reshape(shape)
        dy = y - self.cy[ti].reshape(shape)
        a, b = self.aniso[ti].reshape(shape), self.shear[ti].reshape(shape)
        qx = (1 + a) * dx + b * dy
        qy = b * dx + (1 - a) * dy
        r = np.maximum(np.sqrt(qx * qx + qy * qy), self.r_min)
        log_r = np.log(r)
        phi = self.phi[ti].reshape(shape)
        ang = _atan2(qy, qx) + phi
        u = ang * self.s
        v = self.v_off + self.s * (self.depth[ti].reshape(shape) - log_r)
        lut = len(self.wobble)
        wobble = np.take(self.wobble, (ang * (lut / (2 * np.pi))).astype(np.int64) & (lut - 1))
        q = np.exp(self.gamma * (log_r - np.log(self.r_half[ti]).reshape(shape) - wobble))
        return u, v, math.log2(self.s) - log_r * (1 / math.log(2)), q / (1 + q)

    def screen_shift(self) -> np.ndarray:
        """(T, 2) screen displacement of the lumen centre since the previous frame (drives motion blur)."""
        return np.diff(np.stack([self.cx, self.cy], 1), axis=0, prepend=[[self.cx[0], self.cy[0]]])


@dataclass
class _AffinePath:
    """Per-frame camera over a flat canvas: pan (ux, uy), roll, zoom; a spotlight at (lx, ly)."""

    ux: np.ndarray
    uy: np.ndarray
    phi: np.ndarray
    zoom: np.ndarray
    lx: np.ndarray
    ly: np.ndarray
    spot: float
    canvas_shape: tuple[int, int]
    periodic: bool = False

    def coords(self, ti: np.ndarray, x: np.ndarray, y: np.ndarray):
        """Canvas (u, v), log2 canvas px per screen px, and spotlight at frames ``ti`` for points (x, y)."""
        shape = (-1,) + (1,) * np.ndim(x)
        c, s = np.cos(self.phi[ti]).reshape(shape), np.sin(self.phi[ti]).reshape(shape)
        z = self.zoom[ti].reshape(shape)
        u = self.ux[ti].reshape(shape) + (c * x - s * y) / z
        v = self.uy[ti].reshape(shape) + (s * x + c * y) / z
        d2 = ((x - self.lx[ti].reshape(shape)) ** 2 + (y - self.ly[ti].reshape(shape)) ** 2) / self.spot**2
        return u, v, np.broadcast_to(-np.log2(z), u.shape), 1.0 / (1.0 + d2)

    def screen_shift(self) -> np.ndarray:
        """(T, 2) screen displacement of the content since the previous frame (drives motion blur)."""
        du = np.diff(self.ux, prepend=self.ux[0])
        dv = np.diff(self.uy, prepend=self.uy[0])
        c, s = np.cos(self.phi), np.sin(self.phi)
        # The image moves against the camera: invert the rotation and scale of the map.
        return -np.stack([c * du + s * dv, -s * du + c * dv], 1) * self.zoom[:, None]


def _tunnel_path(rng, style: _Style, n: int, frame: _Frame, motion: float, jerk) -> _TunnelPath:
    t = np.arange(n, dtype=np.float64)
    R = frame.radius
    if rng.random() < style.offcentre:
        mag = rng.uniform(0.55, 1.25) * R
    else:
        mag = rng.uniform(0.0, 0.35) * R
    ang0 = rng.uniform(0, 2 * np.pi)
    period = 45.0
    cx = mag * np.cos(ang0) + _smooth(rng, n, style.wander * R * motion, period)
    cy = mag * np.sin(ang0) + _smooth(rng, n, style.wander * R * motion, period)
    if jerk is not None:
        t0, length, vec = jerk
        ramp = _ramp(t, t0, length)
        cx, cy = cx + vec[0] * R * ramp, cy + vec[1] * R * ramp
    # Withdrawal (backwards) is the usual inspection direction, so it is the more common one.
    speed = rng.uniform(*style.speed) * motion * (-1 if rng.random() < 0.6 else 1)
    depth = speed * t + _smooth(rng, n, 0.12 * motion, period)
    phi = rng.uniform(-1, 1) * style.spin * motion * t + _smooth(rng, n, 0.25 * motion, period)
    aniso = rng.uniform(-0.12, 0.12) + _smooth(rng, n, 0.05, period)
    shear = rng.uniform(-0.08, 0.08) + _smooth(rng, n, 0.04, period)
    r_half = rng.uniform(*style.lumen) * R * np.exp(_smooth(rng, n, 0.2, period))
    turn = np.linspace(0, 2 * np.pi, 256, endpoint=False)[:, None]
    k = np.arange(1, 4)
    wobble = (rng.uniform(0, 0.22, 3) / k**0.5 * np.cos(k * turn + rng.uniform(0, 2 * np.pi, 3))).sum(1)
    # Canvas: one turn of the tube is 2*pi*s px, with s chosen so that a canvas px is about a screen
    # px near the field-of-view edge; the tube length covers every depth the camera sees.
    width = max(32, 8 * round(2 * np.pi * 0.8 * R / 8))
    s = width / (2 * np.pi)
    r_min = 0.05 * R  # nearer the lumen centre everything is dark; the canvas edge row is repeated
    stretch = 1.0 + np.abs(aniso).max() + np.abs(shear).max()
    r_max = (np.hypot(cx, cy).max() + 0.5 * math.hypot(frame.h, frame.w)) * stretch
    pad = 4.0
    v_off = pad - s * (depth.min() - math.log(r_max))
    height = 8 * math.ceil((s * (depth.max() - depth.min() + math.log(r_max / r_min)) + 2 * pad) / 8)
    f32 = np.float32
    return _TunnelPath(
        cx.astype(f32),
        cy.astype(f32),
        depth.astype(f32),
        phi.astype(f32),
        aniso.astype(f32),
        shear.astype(f32),
        r_half.astype(f32),
        float(rng.uniform(*style.gamma)),
        wobble.astype(f32),
        float(s),
        float(v_off),
        float(r_min),
        (int(height), int(width)),
    )


def _affine_path(rng, style: _Style, n: int, frame: _Frame, motion: float, jerk) -> _AffinePath:
    t = np.arange(n, dtype=np.float64)
    unit = frame.unit
    period = 70.0
    zoom = rng.uniform(0.9, 1.3) * np.exp(_smooth(rng, n, 0.15 * motion, period))
    phi = (
        rng.uniform(0, 2 * np.pi)
        + rng.uniform(-1, 1) * style.spin * motion * t
        + _smooth(rng, n, 0.15 * motion, period)
    )
    heading = rng.uniform(0, 2 * np.pi)
    speed = rng.uniform(*style.speed) * unit * motion
    ux = speed * np.cos(heading) * t + _smooth(rng, n, style.wander * unit * motion, period)
    uy = speed * np.sin(heading) * t + _smooth(rng, n, style.wander * unit * motion, period)
    if jerk is not None:
        t0, length, vec = jerk
        ramp = _ramp(t, t0, length)
        ux, uy = ux + vec[0] * unit * ramp, uy + vec[1] * unit * ramp
    lx = _smooth(rng, n, 0.15 * frame.radius, period)
    ly = _smooth(rng, n, 0.15 * frame.radius, period)
    reach = 0.5 * math.hypot(frame.h, frame.w) / zoom.min() + 4
    ux = ux - ux.min() + reach
    uy = uy - uy.min() + reach
    height = 8 * math.ceil((uy.max() + reach) / 8)
    width = 8 * math.ceil((ux.max() + reach) / 8)
    f32 = np.float32
    return _AffinePath(
        ux.astype(f32),
        uy.astype(f32),
        phi.astype(f32),
        zoom.astype(f32),
        lx.astype(f32),
        ly.astype(f32),
        float(frame.radius * rng.uniform(1.1, 1.6)),
        (int(height), int(width)),
    )


# ----------------------------------------------------------------------------------------------
# Canvas (channel-first: colour maps are (3, h, w) so every operation runs over long rows)


def _rgb(colour) -> np.ndarray:
    return np.asarray(colour, np.float32).reshape(3, 1, 1)


_ADENOMA_TINT = _rgb((1.0, 0.66, 0.70))  # adenomatous: redder and darker than the mucosa around it
_HYPERPLASTIC_COLOUR = _rgb((0.92, 0.72, 0.64))  # hyperplastic: pale pink


@dataclass(frozen=True)
class _Shape:
    """Outline of a lobulated, elongated blob of radius ``rho``: ``d`` = 1 on the outline."""

    theta: float
    elong: float
    lobes: tuple[float, ...]  # amplitudes of the harmonics 2..5 of the outline
    phases: tuple[float, ...]

    @classmethod
    def draw(cls, rng: np.random.Generator, lobes: float, elong: float) -> _Shape:
        m = np.arange(2, 6)
        return cls(
            float(rng.uniform(0, np.pi)),
            float(elong),
            tuple(lobes * rng.uniform(0.3, 1.0, 4) / (m - 1) ** 0.7),
            tuple(rng.uniform(0, 2 * np.pi, 4)),
        )

    def reach(self, rho: float, d: float) -> float:
        """Largest distance from the centre at which the normalised radius can still be ``d``."""
        return rho * d * (1 + self.elong) * (1 + sum(self.lobes))


class _Canvas:
    """Tissue maps in canvas coordinates: albedo, height, wetness, glints, polyp alpha and ids."""

    def __init__(
        self, rng: np.random.Generator, style: _Style, shape: tuple[int, int], scale: float, periodic: bool
    ) -> None:
        self.shape = shape
        self.scale = scale  # canvas px per min frame side, at the reference viewing distance
        self.periodic = periodic
        self.style = style
        mucosa = [_rgb(np.clip(np.array(c) * rng.uniform(0.94, 1.06, 3), 0, 1)) for c in style.mucosa]
        n_low = _field(rng, shape, 1.0 * scale, 0.8)
        n_mid = _field(rng, shape, 0.3 * scale, 0.8)
        if style.folds == "none":  # organs and fat: large regions with sharper boundaries
            mix1 = 1 / (1 + np.exp(-3.0 * (n_low + rng.uniform(-0.5, 0.5))))
            mix2 = np.clip(0.4 * n_mid - 0.3, 0, 0.5)
        else:
            mix1 = 1 / (1 + np.exp(-1.5 * n_low))
            mix2 = np.clip(0.4 * n_mid - 0.25, 0, 1)
        self.fine = _field(rng, shape, 0.035 * scale, 0.6)
        base = mucosa[0] * (1 - mix1) + mucosa[1] * mix1
        base = (base * (1 - mix2) + mucosa[2] * mix2) * (1 + 0.015 * self.fine)
        self.base = base  # vessel-free tissue colour: the reference for polyp and patch colours
        # Vessels: zero crossings of band-limited noise form long, branching, tortuous lines.
        n_v1 = _field(rng, shape, 0.5 * scale, 0.7)
        n_v2 = _field(rng, shape, 0.16 * scale, 0.7)
        vis = np.clip(0.5 - 0.7 * n_low, 0, 1)
        vessels = np.exp(-((n_v1 / (0.05 * rng.uniform(0.8, 1.3))) ** 2)) + 0.5 * np.exp(-((n_v2 / 0.05) ** 2))
        if style.folds == "none":
            vis = vis * (1 - 0.8 * mix1)  # fat hides the vessels
        va = np.clip(rng.uniform(*style.vessel_strength) * vis * vessels, 0, 0.8)
        self.albedo = base * (1 - va) + _rgb(style.vessel) * va
        self.height = (0.008 * scale) * n_mid
        self.wet = np.clip(0.6 + 0.3 * n_mid, 0.2, 1.0)
        self.glint = np.zeros(shape, np.float32)
        self.alpha = np.zeros(shape, np.float32)
        self.ids = np.zeros(shape, np.int16)
        self._pattern: np.ndarray | None = None
        self._pattern_rng = np.random.default_rng(rng.integers(2**63))
        if style.folds == "rings":
            self._rings(rng)
        elif style.folds == "rugae":
            self._rugae(rng)
        else:
            self.height += (0.15 * scale) * _field(rng, shape, 1.3 * scale, 0.6) + (0.02 * scale) * mix1

    # -- folds
    def _rings(self, rng) -> None:
        """Haustral folds: ridges around the tube (rows of the canvas), wavy and often partial."""
        h, w = self.shape
        s = w / (2 * np.pi)
        u = np.arange(w, dtype=np.float32)
        v = rng.uniform(0, 0.5) * s
        while v < h:
            width = rng.uniform(0.07, 0.13) * s
            amp = rng.uniform(0.6, 1.1) * width
            warp = _periodic_curve(rng, u, w, rng.uniform(0.03, 0.12) * s)
            env = 1 / (1 + np.exp(-4 * (_periodic_curve(rng, u, w, 1.0) + rng.uniform(-0.2, 1.2))))
            lo, hi = max(0, int(v - 0.2 * s - 4 * width)), min(h, int(v + 0.2 * s + 4 * width) + 1)
            if lo < hi:
                rows = np.arange(lo, hi, dtype=np.float32)[:, None]
                x = (rows - v - warp[None, :]) / width
                # Steeper far side, gentler near side: the camera looks along the tube.
                prof = np.exp(-np.where(x > 0, 1.2 * x * x, 0.6 * x * x))
                self.height[lo:hi] += (amp * env[None, :] * prof).astype(np.float32)
            v += rng.uniform(0.35, 0.65) * s

    def _rugae(self, rng) -> None:
        """Gastric rugae: thick, meandering ridges along the tube (radial on screen)."""
        h, w = self.shape
        s = w / (2 * np.pi)
        cols = np.arange(w, dtype=np.float32)[None, :]
        for u0 in rng.uniform(0, w, rng.integers(5, 9)):
            width = rng.uniform(0.1, 0.2) * s
            amp = rng.uniform(0.8, 1.3) * width
            warp = _smooth(rng, h, rng.uniform(0.15, 0.35) * s, rng.uniform(1.0, 2.0) * s)
            env = np.clip(0.8 + _smooth(rng, h, 0.8, 1.0 * s), 0, 1)
            du = (cols - u0 - warp[:, None] + w / 2) % w - w / 2
            self.height += (amp * env[:, None] * np.exp(-((du / width) ** 2))).astype(np.float32)

    # -- painting in local windows
    def _window(self, cu: float, cv: float, extent: float):
        """Row/column index grids and offsets (du, dv) of the window within ``extent`` px of (cu, cv)."""
        h, w = self.shape
        if self.periodic:
            extent = min(extent, (w - 2) / 2)
        r0, r1 = max(0, math.floor(cv - extent)), min(h, math.ceil(cv + extent) + 1)
        c0, c1 = math.floor(cu - extent), math.ceil(cu + extent) + 1
        if not self.periodic:
            c0, c1 = max(0, c0), min(w, c1)
        if r0 >= r1 or c0 >= c1:
            return None
        rows, cols = np.arange(r0, r1), np.arange(c0, c1)
        dv = (rows - cv).astype(np.float32)[:, None]
        du = (cols - cu).astype(np.float32)[None, :]
        return (rows[:, None], (cols % w if self.periodic else cols)[None, :]), du, dv

    def _blob(self, shape: _Shape, cu: float, cv: float, rho: float, d_max: float = 1.6):
        """Window (covering ``d <= d_max``) and normalised radius ``d`` of a blob centred at (cu, cv)."""
        win = self._window(cu, cv, shape.reach(rho, d_max) + 1)
        if win is None:
            return None
        (r, c), du, dv = win
        cos, sin = math.cos(shape.theta), math.sin(shape.theta)
        x = (cos * du + sin * dv) / (1 + shape.elong)
        y = (-sin * du + cos * dv) * (1 + 0.5 * shape.elong)
        ang = np.arctan2(y, x)
        outline = np.ones_like(ang)
        for m, (amp, phase) in enumerate(zip(shape.lobes, shape.phases, strict=True), start=2):
            outline += amp * np.cos(m * ang + phase)
        d = np.sqrt(x * x + y * y) / (rho * np.maximum(outline, 0.4))
        return (r, c), d

    def pattern(self) -> np.ndarray:
        """Tubular pit pattern (contour stripes of mid-frequency noise), built on first use."""
        if self._pattern is None:
            n = _field(self._pattern_rng, self.shape, 0.12 * self.scale, 0.6)
            self._pattern = (0.5 + 0.5 * np.cos(2 * np.pi * 2.2 * n)).astype(np.float32)
        return self._pattern

    def add_polyp(
        self, rng, k: int, kind: str, shape: _Shape, cu: float, cv: float, rho: float, contrast: float
    ) -> None:
        """Polyp ``k``: raised, shaded, textured, with its own colour; alpha and id maps for the labels."""
        adenoma = kind == "adenomatous"
        blob = self._blob(shape, cu, cv, rho, 1.3)
        if blob is None:
            return
        (r, c), d = blob
        alpha = np.clip((1.0 - d) / 0.15, 0.0, 1.0)
        tissue, base = self.albedo[:, r, c], self.base[:, r, c]
        if adenoma:
            pit = self.pattern()[r, c]
            target = base * _ADENOMA_TINT * (1 - 0.4 * (pit - 0.5))
        else:
            dots = (self.fine[r, c] > 1.2).astype(np.float32)
            target = (0.3 * base + 0.7 * _HYPERPLASTIC_COLOUR) * (1 - 0.1 * dots)
        colour = tissue * (1 - contrast) + target * contrast
        rim = 1 - 0.3 * contrast * np.exp(-(((d - 1.0) / 0.12) ** 2))
        self.albedo[:, r, c] = (tissue * (1 - alpha) + colour * alpha) * rim
        relief = (0.7 if adenoma else 0.45) * rho * min(1.0, contrast / 0.5)
        dome = np.clip(1 - d * d, 0, 1) ** rng.uniform(1.2, 2.0)  # sessile to rounder, smooth at the outline
        if adenoma:
            dome = dome * (1 + 0.06 * (self.pattern()[r, c] - 0.5))
        self.height[r, c] += relief * dome
        self.wet[r, c] = np.maximum(self.wet[r, c], (0.9 if adenoma else 0.5) * alpha)
        self.alpha[r, c] = np.maximum(self.alpha[r, c], alpha)
        self.ids[r, c] = np.where(alpha > 0, np.int16(k), self.ids[r, c])

    def add_patch(self, rng, shape: _Shape, cu, cv, rho, contrast, kind: str) -> None:
        """Flat discoloured patch: polyp-like colour without relief or pit pattern (a distractor)."""
        blob = self._blob(shape, cu, cv, rho)
        if blob is None:
            return
        (r, c), d = blob
        alpha = np.clip((1.0 - d + 0.08 * self.fine[r, c]) / 0.3, 0, 1)
        base = self.base[:, r, c]
        if kind == "red":
            target = base * _ADENOMA_TINT
        elif kind == "pale":
            target = 0.3 * base + 0.7 * _HYPERPLASTIC_COLOUR
        else:  # stool / debris: dark, brownish, with a few glints
            target = _rgb(self.style.debris) * (1 + 0.15 * self.fine[r, c])
            self.glint[r, c] += 0.6 * alpha * (self.fine[r, c] > 1.8)
        a = alpha * min(1.0, contrast)
        self.albedo[:, r, c] = self.albedo[:, r, c] * (1 - a) + target * a

    def add_bump(self, rng, shape: _Shape, cu, cv, rho) -> None:
        """Tissue-coloured raised bump (fold knot, submucosal bulge): relief without colour (a distractor)."""
        blob = self._blob(shape, cu, cv, rho)
        if blob is None:
            return
        (r, c), d = blob
        self.height[r, c] += rng.uniform(0.3, 0.6) * rho * np.clip(1 - d * d, 0, 1) ** 1.5

    def add_fluid(self, rng, shape: _Shape, cu, cv, rho) -> None:
        """A shiny pool of residue, bile or blood: tinted, very wet, flattened."""
        blob = self._blob(shape, cu, cv, rho)
        if blob is None:
            return
        (r, c), d = blob
        a = np.clip((1.0 - d) / 0.2, 0, 1) * rng.uniform(0.4, 0.7)
        self.albedo[:, r, c] = self.albedo[:, r, c] * (1 - a) + _rgb(self.style.fluid) * a
        self.height[r, c] *= 1 - a
        self.wet[r, c] = np.maximum(self.wet[r, c], a)
        self.glint[r, c] += 0.5 * a * (self.fine[r, c] > 1.5)

    def add_bubbles(self, rng, cu, cv, size) -> None:
        """A cluster of small bubbles: bright rims with a glint, slightly lighter inside."""
        for _ in range(rng.integers(2, 10)):
            rad = size * rng.uniform(0.25, 1.0) + 0.6
            bu, bv = cu + rng.normal(0, 1.5 * size), cv + rng.normal(0, 1.5 * size)
            win = self._window(bu, bv, rad * 1.4)
            if win is None:
                continue
            (r, c), du, dv = win
            d = np.sqrt(du * du + dv * dv) / rad
            ring = np.exp(-(((d - 1) / 0.15) ** 2))
            dot = np.exp(-((du + 0.35 * rad) ** 2 + (dv + 0.35 * rad) ** 2) / (0.15 * rad + 0.5) ** 2)
            self.albedo[:, r, c] *= 1 + 0.1 * (d < 1) - 0.25 * ring
            self.glint[r, c] += 0.6 * ring + 1.5 * dot

    def finish(
        self, light_dir: tuple[float, float], speckle: float, specular: float, u_range: tuple[float, float] | None
    ) -> _Atlas:
        """Shade the albedo with the height field (diffuse, crease occlusion, white speculars)."""
        hf = self.height
        gx = 0.5 * (np.roll(hf, -1, 1) - np.roll(hf, 1, 1)) if self.periodic else np.gradient(hf, axis=1)
        gy = np.gradient(hf, axis=0)
        lx, ly = light_dir
        ndotl = np.clip(
            (1 - gx * lx - gy * ly) / (np.sqrt(gx * gx + gy * gy + 1) * math.sqrt(lx * lx + ly * ly + 1)), 0, 1
        )
        lap = np.roll(hf, 1, 0) + np.roll(hf, -1, 0) + np.roll(hf, 1, 1) + np.roll(hf, -1, 1) - 4 * hf
        occlusion = np.clip(1 - 0.15 * np.clip(lap, 0, None), 0.6, 1)
        shade = (0.3 + 0.8 * ndotl) * occlusion
        glints = np.clip(self.fine - 3.0 + 0.3 * speckle, 0, None) * self.wet * 1.5
        n2 = ndotl * ndotl
        n8 = (n2 * n2) ** 2
        white = specular * (self.wet * (n8 * n8) * (n8 * n8) + glints + self.glint)  # ndotl**32: tight highlights
        return _Atlas(self.albedo * shade + white, self.alpha, self.ids, u_range if self.periodic else None)


def _corners(u: np.ndarray, v: np.ndarray, h: int, w: int, scale: float = 1.0):
    """Flat indices and weights of the four bilinear neighbours of (u, v) in an (h, w) map.

    Coordinates are clamped to the map; ``scale`` < 1 addresses a downsampled copy with pixel centres
    kept aligned.
    """
    if scale != 1.0:
        u = (u + 0.5) * scale - 0.5
        v = (v + 0.5) * scale - 0.5
    u = np.clip(u, 0, w - 1.001)
    v = np.clip(v, 0, h - 1.001)
    x0, y0 = np.floor(u), np.floor(v)
    fx, fy = u - x0, v - y0
    i00 = (y0 * w + x0).astype(np.int64)
    i10 = i00 + w
    gx, gy = 1 - fx, 1 - fy
    return (i00, i00 + 1, i10, i10 + 1), (gx * gy, fx * gy, gx * fy, fx * fy)


class _Atlas:
    """What frames sample from a finished canvas: colour at full and half resolution, polyp alpha and ids.

    Colour blends bilinear reads of the canvas and of a 2x box-filtered copy by the local
    minification (a two-level mip map), so the finely textured far end of the tube does not alias.
    Alpha and ids are read at full resolution so the labels stay exact. A periodic canvas is
    unrolled over ``u_range`` so sampling never wraps.
    """

    def __init__(
        self, colour: np.ndarray, alpha: np.ndarray, ids: np.ndarray, u_range: tuple[float, float] | None
    ) -> None:
        c, h, w = colour.shape
        self.u0 = 0
        if u_range is not None:
            self.u0 = math.floor(u_range[0]) - 1
            width = 2 * math.ceil((math.ceil(u_range[1]) + 2 - self.u0) / 2)
            cols = np.arange(self.u0, self.u0 + width) % w
            colour, alpha, ids = (np.take(a, cols, axis=-1) for a in (colour, alpha, ids))
            w = width
        self.shape = (h, w)
        self.full = np.concatenate([colour, alpha[None]]).reshape(c + 1, -1).astype(np.float32)
        hb, wb = h // 2, w // 2
        a = colour[:, : 2 * hb, : 2 * wb]
        small = 0.25 * (a[:, 0::2, 0::2] + a[:, 1::2, 0::2] + a[:, 0::2, 1::2] + a[:, 1::2, 1::2])
        self.small = small.reshape(c, -1).astype(np.float32)
        self.small_shape = (hb, wb)
        self.id_map = np.ascontiguousarray(ids).reshape(-1)

    def sample(self, u: np.ndarray, v: np.ndarray, lod: np.ndarray, colour: bool = True):
        """Colour (3, N) (None unless ``colour``) and alpha (N,) at canvas points (u, v), mip level ``lod``.

        Also returns the bilinear corners, for :meth:`ids`. Alpha is the same with or without colour.
        """
        u, v = u.reshape(-1) - self.u0, v.reshape(-1)
        corners, weights = _corners(u, v, *self.shape)
        channels = range(self.full.shape[0]) if colour else [self.full.shape[0] - 1]
        out = np.zeros((self.full.shape[0], u.size), np.float32)
        for i, g in zip(corners, weights, strict=True):
            for ch in channels:
                out[ch] += np.take(self.full[ch], i) * g
        if not colour:
            return None, out[3], corners
        colour = out[:3]
        blend = np.clip(lod.reshape(-1), 0, 1)
        if blend.any():
            colour *= 1 - blend
            small, weights = _corners(u, v, *self.small_shape, 0.5)
            for i, g in zip(small, weights, strict=True):
                g = g * blend
                for ch in range(3):
                    colour[ch] += np.take(self.small[ch], i) * g
        return colour, out[3], corners

    def ids(self, corners: tuple[np.ndarray, ...], points: np.ndarray) -> np.ndarray:
        """Polyp ids at ``points`` (flat indices into the sampled points), all of them labelled pixels.

        A labelled pixel has a bilinear neighbour inside its polyp, and polyps keep 2 px apart, so the
        largest id among the neighbours is the pixel's.
        """
        ids = np.take(self.id_map, corners[0][points])
        for i in corners[1:]:
            np.maximum(ids, np.take(self.id_map, i[points]), out=ids)
        return ids


# ----------------------------------------------------------------------------------------------
# Placement


def _view_point(
    rng, path, frame: _Frame, n: int, time: float | None, position: tuple[float, float] | None, max_lod: float = np.inf
):
    """A lit point inside the field of view at some frame: ``(t, u, v, canvas px per screen px)``.

    ``max_lod`` keeps points off the far end of the tube, where a small screen size means a huge
    canvas size (things placed there would fill the view once the camera gets close).
    """
    t = int(round(time * (n - 1))) if time is not None else int(rng.integers(n))
    ti = np.array([t])
    for attempt in range(60):
        if position is not None:
            spread = 0.04 * attempt * frame.unit + 1e-6
            x = (position[0] - 0.5) * frame.w + rng.normal(0, spread)
            y = (position[1] - 0.5) * frame.h + rng.normal(0, spread)
        else:
            x, y = rng.uniform(-0.5, 0.5) * frame.w, rng.uniform(-0.5, 0.5) * frame.h
        i, j = int(np.floor(y + frame.h / 2)), int(np.floor(x + frame.w / 2))
        if not (0 <= i < frame.h and 0 <= j < frame.w) or frame.rim[i, j] < 0.9:
            continue
        u, v, lod, light = (float(a.reshape(-1)[0]) for a in path.coords(ti, np.array([x]), np.array([y])))
        if light >= 0.5 and lod <= max_lod:
            return t, u, v, 2.0**lod
    # A lumen filling the whole view: take the brightest of many candidates.
    xs = rng.uniform(-0.45, 0.45, 256).astype(np.float32) * frame.radius
    ys = rng.uniform(-0.45, 0.45, 256).astype(np.float32) * frame.radius
    u, v, lod, light = (a.reshape(-1) for a in path.coords(ti, xs, ys))
    best = int(np.argmax(light))
    return t, float(u[best]), float(v[best]), float(2.0 ** lod[best])


def _free(placed: list[tuple[float, float, float]], u: float, v: float, reach: float, period: float | None) -> bool:
    """True if a blob at (u, v) reaching ``reach`` px keeps clear of every placed one."""
    for pu, pv, pr in placed:
        du = abs(u - pu)
        if period:
            du = min(du % period, period - du % period)
        if math.hypot(du, v - pv) < reach + pr + 2:
            return False
    return True


# ----------------------------------------------------------------------------------------------
# Rendering


def _tools(rng, n: int, frame: _Frame, motion: float) -> list[dict]:
    """Laparoscopic instruments: shafts entering from outside the view, tips moving slowly."""
    tools = []
    for _ in range(int(rng.choice([0, 1, 1, 2]))):
        ang = rng.uniform(0, 2 * np.pi)
        tip = rng.uniform(-0.3, 0.3, 2) * frame.unit
        tools.append(
            {
                "entry": np.array([np.cos(ang), np.sin(ang)]) * frame.radius * 1.3,
                "tip": np.stack(
                    [
                        tip[0] + _smooth(rng, n, 0.1 * frame.unit * motion, 50),
                        tip[1] + _smooth(rng, n, 0.1 * frame.unit * motion, 50),
                    ],
                    1,
                ),
                "width": rng.uniform(0.06, 0.09) * frame.unit,
                "grey": rng.uniform(0.45, 0.65),
            }
        )
    return tools


def _draw_tools(img: np.ndarray, tools: list[dict], ti: np.ndarray, frame: _Frame, exposure: np.ndarray) -> None:
    """Paint instruments over ``img`` (3, T, H, W) in place, for frames ``ti`` with their ``exposure``."""
    for tool in tools:
        ex, ey = tool["entry"]
        d = tool["tip"][ti] - tool["entry"]
        length = np.linalg.norm(d, axis=1)
        dx, dy = (d / length[:, None]).T.reshape(2, -1, 1, 1)
        px, py = frame.xs[None] - ex, frame.ys[None] - ey
        along = px * dx + py * dy
        across = (py * dx - px * dy) / tool["width"]
        inside = (along >= 0) & (along <= length[:, None, None]) & (np.abs(across) <= 1)
        grey = tool["grey"] * (0.25 + 0.75 * np.sqrt(np.clip(1 - across * across, 0, 1)))
        grey = grey + 0.6 * np.exp(-(((across + 0.4) / 0.15) ** 2))
        grey = np.where(along > length[:, None, None] - 1.5 * tool["width"], 0.3 * grey, grey)  # dark jaws
        grey = grey * exposure[:, None, None]
        img[:] = np.where(inside[None], grey[None] * _rgb((0.95, 0.97, 1.0))[..., None], img)


def _motion_blur(img: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Average copies of one frame (3, H, W) spread along the screen displacement ``shift``."""
    _, h, w = img.shape
    taps = int(min(9, max(2, math.ceil(float(np.hypot(*shift))))))
    out = np.zeros_like(img)
    for f in np.linspace(-0.5, 0.5, taps):
        rows = np.clip(np.arange(h) - int(round(f * shift[1])), 0, h - 1)
        cols = np.clip(np.arange(w) - int(round(f * shift[0])), 0, w - 1)
        out += img[:, rows][:, :, cols]
    return out / taps


class _Scene:
    """One video before rendering: camera path, finished canvas, instruments, exposure and noise.

    Any subset of its frames can be rendered, or only labelled (much cheaper), with identical results.
    """

    def __init__(
        self, rng_or_seed, style: str, n_frames: int, cfg: SynthConfig, polyps: Sequence[PolypSpec], motion: float
    ) -> None:
        if style not in _STYLES:
            raise ValueError(f"unknown style {style!r}; expected one of {list(STYLES)}")
        if n_frames < 1:
            raise ValueError(f"n_frames must be >= 1, got {n_frames}")
        if motion < 0:
            raise ValueError(f"motion must be >= 0, got {motion}")
        polyps = tuple(polyps)
        for p in polyps:
            if not isinstance(p, PolypSpec):
                raise TypeError(f"polyps must be PolypSpec objects, got {type(p).__name__}")
        rng = np.random.default_rng(rng_or_seed)
        st = _STYLES[style]
        self.style, self.cfg, self.kinds = style, cfg, tuple(p.kind for p in polyps)
        self.frame = frame = _make_frame(rng, st, cfg)
        n = n_frames
        jerk = None
        if n > 4 and rng.random() < cfg.motion_blur_probability:
            length, ang = rng.uniform(4, 9), rng.uniform(0, 2 * np.pi)
            jerk = (
                rng.uniform(0, max(1.0, n - length)),
                length,
                rng.uniform(0.25, 0.5) * np.array([np.cos(ang), np.sin(ang)]),
            )
        if st.tunnel:
            path = _tunnel_path(rng, st, n, frame, motion, jerk)
            scale = path.s / (0.6 * frame.radius) * frame.unit  # canvas px per unit at 0.6 R from the lumen
            light_dir = (0.25, -0.9)  # light from the camera, i.e. from the near end of the tube
        else:
            path = _affine_path(rng, st, n, frame, motion, jerk)
            scale = frame.unit / float(np.mean(path.zoom))
            ang = rng.uniform(0, 2 * np.pi)
            light_dir = (0.35 * math.cos(ang), 0.35 * math.sin(ang))
        self.path = path
        canvas = _Canvas(rng, st, path.canvas_shape, scale, path.periodic)
        period = float(path.canvas_shape[1]) if path.periodic else None
        placed: list[tuple[float, float, float]] = []

        # Placement stays on the near wall: at least 0.4 R from the lumen centre.
        max_lod = math.log2(path.s / (0.4 * frame.radius)) if st.tunnel else np.inf
        max_rho = 0.06 * canvas.shape[1] if st.tunnel else 0.5 * frame.unit
        for k, spec in enumerate(polyps, start=1):
            radius = spec.radius if spec.radius is not None else rng.uniform(*cfg.polyp_radius)
            contrast = spec.contrast if spec.contrast is not None else rng.uniform(*cfg.polyp_contrast)
            adenoma = spec.kind == "adenomatous"
            shape = _Shape.draw(
                rng, rng.uniform(0.06, 0.16) if adenoma else rng.uniform(0.0, 0.05), rng.uniform(0, 0.35)
            )
            for attempt in range(100):
                # After 50 failures the requested time is dropped: anywhere in the clip beats nowhere.
                time = spec.time if attempt < 50 else None
                _, u, v, ppx = _view_point(rng, path, frame, n, time, spec.position, max_lod)
                rho = min(radius * frame.unit * ppx, max_rho)
                reach = shape.reach(rho, 1.0)
                if _free(placed, u, v, reach, period):
                    break
            else:
                raise RuntimeError(
                    f"cannot place polyp {k} of {len(polyps)} without overlap; use fewer or smaller polyps"
                )
            placed.append((u, v, reach))
            canvas.add_polyp(rng, k, spec.kind, shape, u, v, rho, contrast)

        rate = cfg.distractor_rate
        counts = {
            "red": rng.poisson(0.6 * rate),
            "pale": rng.poisson(0.6 * rate),
            "bump": rng.poisson(0.8 * rate),
            "debris": rng.poisson(0.4 * rate),
            "bubbles": rng.poisson(0.6 * rate) if st.tunnel else 0,
            "fluid": rng.poisson(0.3 * rate),
        }
        for what, count in counts.items():
            for _ in range(count):
                _, u, v, ppx = _view_point(rng, path, frame, n, None, None, max_lod)
                rho = min(rng.uniform(*cfg.polyp_radius) * rng.uniform(0.7, 1.5) * frame.unit * ppx, max_rho)
                if what == "bubbles":
                    canvas.add_bubbles(rng, u, v, 0.35 * rho)
                    continue
                if what == "fluid":
                    shape, rho = _Shape.draw(rng, 0.3, rng.uniform(0.2, 1.0)), 2 * rho
                else:
                    shape = _Shape.draw(rng, rng.uniform(0.0, 0.25), rng.uniform(0.0, 0.8))
                reach = shape.reach(rho, 1.3)
                if not _free(placed, u, v, reach, period):
                    continue
                placed.append((u, v, reach))
                if what == "bump":
                    canvas.add_bump(rng, shape, u, v, rho)
                elif what == "fluid":
                    canvas.add_fluid(rng, shape, u, v, rho)
                else:
                    canvas.add_patch(rng, shape, u, v, rho, rng.uniform(*cfg.polyp_contrast) * 1.2, what)
        u_range = (
            ((-np.pi + float(path.phi.min())) * path.s, (np.pi + float(path.phi.max())) * path.s) if st.tunnel else None
        )
        self.atlas = canvas.finish(light_dir, st.speckle, st.specular, u_range)
        self.tools = _tools(rng, n, frame, motion) if style == "laparoscopy" else []
        self.exposure = (255 * rng.uniform(1.0, 1.2) * np.exp(_smooth(rng, n, 0.05, 40))).astype(np.float32)
        self.shifts = path.screen_shift()
        # Sensor noise: a small bank of noise frames, each frame reading one at a random offset.
        noise_rng = np.random.default_rng(rng.integers(2**63))
        self.noise = noise_rng.standard_normal((3, 4, frame.h * frame.w), dtype=np.float32)
        self.noise *= np.float32(255 * rng.uniform(0.006, 0.014))
        self.noise_offsets = noise_rng.integers(0, frame.h * frame.w, n)

    CHUNK = 2  # frames per step: small chunks keep the per-pixel temporaries in cache

    def _chunk(self, ti: np.ndarray, colour: bool):
        """Labels (T, H, W) of frames ``ti``, and their colour (3, T, H, W) in 0..255 if asked."""
        frame = self.frame
        u, v, lod, light = self.path.coords(ti, frame.xs, frame.ys)
        rgb, alpha, corners = self.atlas.sample(u, v, lod, colour)
        light = light.reshape(-1)
        labelled = np.flatnonzero(
            (alpha > 0.5) & (light >= self.cfg.min_visible_light) & np.tile(frame.fov.reshape(-1), len(ti))
        )
        labels = np.zeros(alpha.shape, np.int16)
        labels[labelled] = self.atlas.ids(corners, labelled)
        labels = labels.reshape(len(ti), frame.h, frame.w)
        if not colour:
            return labels, None
        root = np.sqrt(light)
        root4 = np.sqrt(root)
        # Light falls off as light**(0.75, 1, 1.25) per channel: the darker, the redder.
        rgb *= (frame.vignette * frame.rim * self.exposure[ti, None, None]).reshape(-1)
        rgb[0] *= root * root4
        rgb[1] *= light
        rgb[2] *= light * root4
        img = rgb.reshape(3, len(ti), frame.h, frame.w)
        if self.tools:
            _draw_tools(img, self.tools, ti, frame, self.exposure[ti])
        for j, t in enumerate(ti):
            if np.hypot(*self.shifts[t]) > 0.02 * frame.unit:
                img[:, j] = _motion_blur(img[:, j], 0.8 * self.shifts[t])
            img[:, j] += np.roll(self.noise[:, t % 4], self.noise_offsets[t], axis=-1).reshape(3, frame.h, frame.w)
        img *= frame.fov  # exactly black outside the field of view
        img += 0.5
        np.clip(img, 0, 255, out=img)
        return labels, img.astype(np.uint8)

    def labels(self, frames: range) -> np.ndarray:
        """Instance maps (T, H, W) of ``frames`` without rendering colour."""
        out = np.empty((len(frames), self.frame.h, self.frame.w), np.int16)
        for i in range(0, len(frames), self.CHUNK):
            ti = np.asarray(frames[i : i + self.CHUNK])
            out[i : i + len(ti)] = self._chunk(ti, colour=False)[0]
        return out

    def render(self, frames: range) -> RenderedVideo:
        h, w = self.frame.h, self.frame.w
        images = np.empty((len(frames), h, w, 3), np.uint8)
        instances = np.empty((len(frames), h, w), np.int16)
        for i in range(0, len(frames), self.CHUNK):
            ti = np.asarray(frames[i : i + self.CHUNK])
            labels, img = self._chunk(ti, colour=True)
            instances[i : i + len(ti)] = labels
            images[i : i + len(ti)] = np.moveaxis(img, 0, -1)
        return RenderedVideo(images, instances, self.kinds, self.style, self.frame.fov.copy())


def render_video(
    rng_or_seed: np.random.Generator | int | Sequence[int],
    style: str,
    n_frames: int,
    cfg: SynthConfig,
    polyps: Sequence[PolypSpec] = (),
    *,
    motion: float = 1.0,
) -> RenderedVideo:
    """Render one clip of ``style`` with the given polyps; identical output for an identical seed.

    The single renderer behind every writer. ``motion`` scales every camera speed (CVC-like close
    inspections use a slow camera). Distractors (flat red or pale patches, tissue bumps, debris,
    bubbles, fluid) are drawn for every video alike, with or without polyps.
    """
    return _Scene(rng_or_seed, style, n_frames, cfg, polyps, motion).render(range(n_frames))


# ----------------------------------------------------------------------------------------------
# Plans: every random choice of a set, drawn before rendering, so writers and tests agree


@dataclass(frozen=True)
class VideoPlan:
    """One video of a synthetic set: its name, split, render seed and contents."""

    name: str
    split: str | None
    seed: tuple[int, ...]
    style: str
    n_frames: int
    polyps: tuple[PolypSpec, ...] = ()
    motion: float = 1.0
    unannotated: tuple[int, ...] = ()  # KUMC: 0-based frames written without an XML
    partial: bool = False  # cut from a clip three times as long where the polyps are in view about half the time

    def render(self, cfg: SynthConfig) -> RenderedVideo:
        if not self.partial:
            return render_video(self.seed, self.style, self.n_frames, cfg, self.polyps, motion=self.motion)
        n = self.n_frames
        scene = _Scene(self.seed, self.style, 3 * n, cfg, self.polyps, self.motion)
        seen = np.concatenate([[0], np.cumsum(scene.labels(range(3 * n)).any(axis=(1, 2)))])
        start = int(np.argmin(np.abs((seen[n:] - seen[:-n]) / n - 0.5)))  # window closest to half in view
        return scene.render(range(start, start + n))


def _check_name(name: str) -> None:
    if name not in SYNTHETIC_NAMES:
        raise ValueError(f"unknown synthetic set {name!r}; expected one of {', '.join(SYNTHETIC_NAMES)}")


def plan_videos(name: str, cfg: SynthConfig) -> list[VideoPlan]:
    """The videos of set ``name``; depends only on ``cfg`` and ``name`` (so sets can be made in parallel)."""
    _check_name(name)
    key = zlib.crc32(name.encode())
    rng = np.random.default_rng([cfg.seed, key])
    plans: list[VideoPlan] = []

    def frames(bounds: tuple[int, int]) -> int:
        return int(rng.integers(bounds[0], bounds[1] + 1))

    def random_polyps(kind: str | None = None) -> tuple[PolypSpec, ...]:
        count = int(rng.choice([1, 1, 2]))
        return tuple(PolypSpec(kind or str(rng.choice(POLYP_KINDS))) for _ in range(count))

    def add(video: str, split: str | None, style: str, n: int, polyps=(), motion=1.0, unannotated=(), partial=False):
        plans.append(
            VideoPlan(
                video, split, (cfg.seed, key, len(plans)), style, n, tuple(polyps), motion, tuple(unannotated), partial
            )
        )

    if name in PRETRAIN_SOURCES:
        style, prefix, _ = _PRETRAIN_FORMAT[name]
        for i in range(cfg.pretrain_videos):
            n = frames(cfg.pretrain_frames)
            with_polyps = style != "laparoscopy" and rng.random() < cfg.pretrain_polyp_fraction
            add(f"{prefix}_{i:04d}", None, style, n, random_polyps() if with_polyps else ())
    elif name == "polypdiag":
        for split in PolypDiagLayout.SPLITS:
            count = cfg.polypdiag_videos[split]
            n_abnormal = min(count - 1, max(1, round(count * cfg.polypdiag_abnormal_fraction)))
            for abnormal in rng.permutation([True] * n_abnormal + [False] * (count - n_abnormal)):
                style = str(rng.choice(["colonoscopy", "gastroscopy"]))
                n = frames(cfg.polypdiag_frames)
                add(f"video_{len(plans):04d}", split, style, n, random_polyps() if abnormal else ())
    elif name == "cvc12k":
        # CVC-ClinicDB sequences: a slow colonoscope inspecting a polyp close up, visible most of the time.
        for split in ("train", "test"):
            for _ in range(cfg.cvc_sequences[split]):
                n = frames(cfg.cvc_sequence_frames)
                radius = min(0.5, rng.uniform(*cfg.polyp_radius) * cfg.cvc_polyp_scale)
                spec = PolypSpec(
                    str(rng.choice(POLYP_KINDS)),
                    radius=radius,
                    time=0.5,
                    position=(rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65)),
                )
                add(f"seq_{len(plans) + 1:03d}", split, "colonoscopy", n, (spec,), rng.uniform(0.2, 0.45))
    else:  # kumc: one polyp kind per video, both kinds in every split, half the videos with polyp-free frames
        for split in KUMCLayout.SPLITS:
            count = cfg.kumc_videos[split]
            kinds = [POLYP_KINDS[i % 2] for i in range(count)]
            for i, j in enumerate(rng.permutation(count)):
                n = frames(cfg.kumc_frames)
                skip = (
                    ()
                    if split in KUMCLayout.FLAT_SPLITS
                    else np.flatnonzero(rng.random(n) < cfg.kumc_unannotated_fraction)
                )
                if i % 2:
                    add(
                        str(len(plans) + 1),
                        split,
                        "colonoscopy",
                        n,
                        random_polyps(kinds[j]),
                        rng.uniform(0.6, 1.2),
                        (int(t) for t in skip),
                    )
                else:  # the polyp sits at the border of the view mid-clip: the camera brings it in or out
                    angle = rng.uniform(0, 2 * np.pi)
                    edge = PolypSpec(
                        kinds[j], time=0.5, position=(0.5 + 0.42 * np.cos(angle), 0.5 + 0.42 * np.sin(angle))
                    )
                    add(
                        str(len(plans) + 1),
                        split,
                        "colonoscopy",
                        n,
                        (edge,),
                        rng.uniform(1.0, 1.5),
                        (int(t) for t in skip),
                        partial=True,
                    )
    return plans


# ----------------------------------------------------------------------------------------------
# Writers


def _voc_xml(folder: str, filename: str, width: int, height: int, boxes: list[tuple[str, int, int, int, int]]) -> str:
    """Pascal-VOC annotation; ``boxes`` are ``(name, x0, y0, x1, y1)`` 0-based inclusive, written 1-based."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    for kind, x0, y0, x1, y1 in boxes:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = kind
        box = ET.SubElement(obj, "bndbox")
        for tag, value in (("xmin", x0), ("ymin", y0), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(box, tag).text = str(value + 1)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def _write_pretrain(out: Path, name: str, videos, cfg: SynthConfig) -> None:
    suffix = _PRETRAIN_FORMAT[name][2]
    for plan, video in videos:
        if suffix is None:
            write_frame_folder(out / plan.name, video.frames)
        else:
            write_video(out / f"{plan.name}{suffix}", video.frames, fps=cfg.fps, crf=cfg.pretrain_crf)


def _write_polypdiag(out: Path, videos, cfg: SynthConfig) -> None:
    layout = PolypDiagLayout(out)
    lines: dict[str, list[str]] = {split: [] for split in layout.SPLITS}
    for plan, video in videos:
        rel = f"{plan.name}.mp4"
        write_video(layout.videos_dir / rel, video.frames, fps=cfg.fps, crf=cfg.crf)
        lines[plan.split].append(f"{rel},{int(video.abnormal)}")
    for split, rows in lines.items():
        labels = {row.rsplit(",", 1)[1] for row in rows}
        if labels != {"0", "1"}:
            raise RuntimeError(
                f"polypdiag: split {split!r} has only label(s) {sorted(labels)}; "
                "change synthetic.seed or the polyp settings"
            )
        layout.split_file(split).parent.mkdir(parents=True, exist_ok=True)
        layout.split_file(split).write_text("\n".join(rows) + "\n")


def _write_cvc(out: Path, videos) -> None:
    import tifffile

    layout = CVCLayout(out)
    layout.images_dir.mkdir(parents=True)
    layout.masks_dir.mkdir(parents=True)
    number, lines = 1, []
    for plan, video in videos:
        lines.append(f"{plan.name} {number} {len(video.frames)} {plan.split}")
        for frame, mask in zip(video.frames, video.masks, strict=True):
            tifffile.imwrite(layout.image(number), frame, photometric="rgb")
            tifffile.imwrite(layout.mask(number), mask.astype(np.uint8) * 255, photometric="minisblack")
            number += 1
    layout.sequence_list.write_text("\n".join(lines) + "\n")


def _write_kumc(out: Path, videos) -> None:
    from PIL import Image

    layout = KUMCLayout(out)
    flat_number = {split: 0 for split in layout.SPLITS}
    classes: dict[str, set[str]] = {split: set() for split in layout.SPLITS}
    for plan, video in videos:
        h, w = video.frames.shape[1:3]
        skip = set(plan.unannotated)
        for t, frame in enumerate(video.frames):
            if plan.split in layout.FLAT_SPLITS:
                flat_number[plan.split] += 1
                number = flat_number[plan.split]
            else:
                number = t + 1
            image = layout.image(plan.split, plan.name, number)
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(frame).save(image, quality=92)
            if t in skip:
                continue
            boxes = [box[1:] for box in video.boxes(t)]
            classes[plan.split].update(box[0] for box in boxes)
            xml = layout.annotation(plan.split, plan.name, number)
            xml.parent.mkdir(parents=True, exist_ok=True)
            xml.write_text(_voc_xml(plan.name, image.name, w, h, boxes))
    for split, seen in classes.items():
        if seen != set(layout.CLASSES):
            raise RuntimeError(
                f"kumc: split {split!r} has boxes of {sorted(seen)} only; change synthetic.seed or the polyp settings"
            )


def synthesize(name: str, out_dir: str | Path, cfg: SynthConfig, progress: bool = True) -> Path:
    """Write set ``name`` (a pretraining source or a benchmark) into ``out_dir`` in its official layout.

    The folder appears whole or not at all. Output depends only on ``cfg`` and ``name``.
    """
    plans = plan_videos(name, cfg)
    out_dir = Path(out_dir)
    from endofm.logs import progress as progress_bar

    def videos():
        for plan in progress_bar(plans, desc=f"synthesize {name}", unit="video", disable=not progress):
            yield plan, plan.render(cfg)

    with atomic_path(out_dir, directory=True) as tmp:
        if name in PRETRAIN_SOURCES:
            _write_pretrain(tmp, name, videos(), cfg)
        elif name == "polypdiag":
            _write_polypdiag(tmp, videos(), cfg)
        elif name == "cvc12k":
            _write_cvc(tmp, videos())
        else:
            _write_kumc(tmp, videos())
    return out_dir


# ----------------------------------------------------------------------------------------------
# Preview


def save_preview(path: str | Path, cfg: SynthConfig | None = None, seed: int = 0) -> Path:
    """A PNG grid: frames of each style over time, then polyp frames with mask outlines, boxes and kinds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    cfg = cfg or SynthConfig()
    cols = 5
    rows: list[tuple[str, list[tuple[np.ndarray, np.ndarray | None, list]]]] = []
    for i, style in enumerate(STYLES):
        video = render_video([seed, 100 + i], style, 60, cfg)
        rows.append((style, [(video.frames[t], None, []) for t in np.linspace(0, 59, cols).astype(int)]))
    for i, kind in enumerate(POLYP_KINDS):
        cells = []
        for j in range(cols):
            style = ("colonoscopy", "gastroscopy")[j % 2]
            spec = PolypSpec(kind, time=0.5, position=(0.3 + 0.1 * j, 0.6 - 0.05 * j))
            video = render_video([seed, 200 + 10 * i + j], style, 9, cfg, [spec])
            cells.append((video.frames[4], video.masks[4], video.boxes(4)))
        rows.append((f"{kind} (raw)", [(f, None, []) for f, _, _ in cells]))
        rows.append((f"{kind} (labels)", cells))
    fig, axes = plt.subplots(len(rows), cols, figsize=(cols * 2.0, len(rows) * 1.75), squeeze=False)
    for (title, cells), ax_row in zip(rows, axes, strict=True):
        for j, ((image, mask, boxes), ax) in enumerate(zip(cells, ax_row, strict=True)):
            ax.imshow(image, interpolation="bilinear")
            if mask is not None and mask.any():
                ax.contour(mask.astype(float), levels=[0.5], colors="lime", linewidths=0.8)
            for _, kind, x0, y0, x1, y1 in boxes:
                ax.add_patch(
                    Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, color="yellow", lw=0.8)
                )
                ax.text(x0, y0 - 2, kind, color="yellow", fontsize=6)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(title, fontsize=7)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path
