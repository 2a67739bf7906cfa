"""Video I/O: decode exactly the frames asked for, write H.264 clips atomically.

One :class:`VideoReader` reads three kinds of source:

- ``decord``: random access through ``VideoReader.get_batch`` (seeks to the keyframe before each
  wanted frame, decodes forward; consecutive frames never re-seek);
- ``pyav``: the fallback; builds a packet index when opened (timestamps and keyframes, no
  decoding), seeks to the keyframe before each wanted frame and decodes forward only as far as
  needed; the decoder's position is kept between calls, so reading a video chunk by chunk decodes
  every frame once;
- ``frames``: a folder of ``img_00001.jpg``… (:data:`~endofm.data.layouts.FRAME_PATTERN`); only the
  asked files are read.

Frame counts. Both file backends count the video packets actually present (decord indexes them
when it opens a file; the PyAV backend demuxes them), not the container's declared or
duration-derived estimate. That count is checked against the container header (PyAV
``stream.frames``) where the header declares one: fewer packets than declared means the file is
truncated and raises :class:`VideoDecodeError`. Containers without a declared count (mkv, webm)
rely on the packet count alone; a frame that then fails to decode raises when it is asked for.

Layer: data and models (docs/architecture.md). May import: foundation and the other data modules.
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from endofm.data.layouts import FRAME_GLOB, frame_name
from endofm.io import atomic_path

log = logging.getLogger(__name__)

Backend = Literal["auto", "decord", "pyav", "frames"]
BACKENDS = ("auto", "decord", "pyav", "frames")

#: Frame folders carry no timing; the pretraining protocol treats them as 30 fps (docs/original.md 3.2).
FRAME_FOLDER_FPS = 30.0

#: Encoder per container: H.264 for mp4 (the clip format), MPEG-4 part 2 for avi (as many
#: real sources ship), both via PyAV's bundled FFmpeg.
CODECS = {".mp4": "libx264", ".avi": "mpeg4", ".mkv": "libx264", ".mov": "libx264"}

#: Keyframe interval of written videos, in frames. x264's default (250) leaves a 150-frame clip
#: with one keyframe, so reading its last frames decodes the whole clip. With 30 (one per second
#: at 30 fps), reading 8 frames from an 18-frame window (a local view) ran 1.8x faster, for
#: 15-28% more bytes on synthetic 342x256 content (benchmarks/bench_decode.py --gop).
GOP = 30


class VideoDecodeError(RuntimeError):
    """A video or frame folder cannot be read; the message names the file and the reason."""


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` reports about a source."""

    path: Path
    backend: str
    num_frames: int
    fps: float
    height: int
    width: int


def _first_line(exc: BaseException) -> str:
    """The gist of an error: its first line, without decord's ``[time] file.cc:line:`` prefix."""
    text = str(exc).strip() or type(exc).__name__
    return re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", text.splitlines()[0])


_DECORD: Any = None


def _import_decord() -> Any:
    """Import decord once, with its FFmpeg logging silenced (it prints every seek otherwise)."""
    global _DECORD
    if _DECORD is None:
        import decord

        decord.logging.set_level(decord.logging.QUIET)
        _DECORD = decord
    return _DECORD


@dataclass(frozen=True)
class _Header:
    declared_frames: int  # 0 where the container does not say
    fps: float
    height: int
    width: int


def _header_of(container: Any, path: Path) -> _Header:
    if not container.streams.video:
        raise VideoDecodeError(f"{path}: no video stream")
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate
    return _Header(
        declared_frames=int(stream.frames or 0),
        fps=float(rate) if rate else 0.0,
        height=int(stream.codec_context.height),
        width=int(stream.codec_context.width),
    )


def _open_container(path: Path) -> Any:
    import av

    try:
        return av.open(str(path))
    except av.FFmpegError as exc:
        raise VideoDecodeError(f"{path}: not a readable video ({_first_line(exc)})") from exc


def _read_header(path: Path) -> _Header:
    """Container facts from PyAV without decoding; raises VideoDecodeError if it cannot be opened."""
    with _open_container(path) as container:
        return _header_of(container, path)


class _DecordBackend:
    name = "decord"

    def __init__(self, path: Path, header: _Header):
        decord = _import_decord()
        self.path, self.header = path, header
        # decord.bridge may have been switched globally (e.g. to torch); results are converted below.
        # One decoding thread: FFmpeg's default starts a thread per core for every file opened, which
        # costs more than it saves on short, small clips and competes with the training process.
        self._vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        self.num_frames = len(self._vr)

    def read(self, wanted: np.ndarray) -> np.ndarray:
        try:
            batch = self._vr.get_batch(wanted.tolist())
        except Exception as exc:  # decord raises its own DECORDError (a RuntimeError) or worse
            raise VideoDecodeError(
                f"{self.path}: decord failed on frames {wanted[0]}..{wanted[-1]} ({_first_line(exc)})"
            ) from exc
        return batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)

    def close(self) -> None:
        self._vr = None


class _PyAVBackend:
    name = "pyav"

    def __init__(self, path: Path):
        self.path = path
        self._container = _open_container(path)
        try:
            self.header = _header_of(self._container, path)
            self._index_packets()
        except BaseException:
            self._container.close()
            raise
        self._frames: Iterator[Any] | None = None  # live decoder
        self._pos = -1  # index of the last frame it produced

    def _index_packets(self) -> None:
        """Demux every packet (no decoding): the frame count, and each frame's timestamp and keyframes."""
        import av

        self._stream = self._container.streams.video[0]
        stamps: list[int | None] = []
        keyframes: list[int | None] = []
        try:
            for packet in self._container.demux(self._stream):
                if packet.size == 0:  # the demuxer's end-of-stream flush packet
                    continue
                ts = packet.pts if packet.pts is not None else packet.dts
                stamps.append(ts)
                if packet.is_keyframe:
                    keyframes.append(ts)
        except av.FFmpegError as exc:
            raise VideoDecodeError(f"{self.path}: unreadable after {len(stamps)} packets ({_first_line(exc)})") from exc
        self.num_frames = len(stamps)
        # Seeking needs a distinct timestamp per frame and a keyframe to start from; otherwise
        # every read decodes from the start, counting frames.
        self._seekable = bool(stamps) and None not in stamps and len(set(stamps)) == len(stamps) and bool(keyframes)
        if self._seekable:
            self._pts = sorted(stamps)  # presentation order = frame index
            self._index = {ts: i for i, ts in enumerate(self._pts)}
            self._keys = sorted(self._index[ts] for ts in keyframes)
            self._seekable = self._keys[0] == 0

    def _restart(self, key: int) -> None:
        """Position the decoder so that its next frame is keyframe ``key`` (or the first frame)."""
        if self._seekable:
            self._container.seek(self._pts[key], stream=self._stream, backward=True, any_frame=False)
            self._pos = key - 1
        else:  # reopen rather than seek: this path is for containers whose timestamps are unreliable
            self._container.close()
            self._container = _open_container(self.path)
            self._stream = self._container.streams.video[0]
            self._pos = -1
        self._frames = iter(self._container.decode(self._stream))

    def _next_frame(self, target: int) -> Any:
        """The next decoded frame, with ``self._pos`` updated to its index."""
        import av

        try:
            frame = next(self._frames)
        except StopIteration:
            self._frames = None
            raise VideoDecodeError(
                f"{self.path}: stream ended before frame {target} ({self.num_frames} packets indexed)"
            ) from None
        except av.FFmpegError as exc:
            self._frames = None
            raise VideoDecodeError(
                f"{self.path}: decoding failed near frame {self._pos + 1} ({_first_line(exc)})"
            ) from exc
        if self._seekable:
            index = self._index.get(frame.pts)
            if index is None:
                raise _LostTrack(f"decoded a frame with unindexed timestamp {frame.pts}")
            self._pos = index
        else:
            self._pos += 1
        return frame

    def _read_one(self, target: int) -> np.ndarray:
        if self._seekable:
            key = self._keys[bisect.bisect_right(self._keys, target) - 1]
            needs_seek = self._frames is None or target <= self._pos or key > self._pos + 1
        else:
            key, needs_seek = 0, self._frames is None or target <= self._pos
        if needs_seek:
            self._restart(key)
        while True:
            frame = self._next_frame(target)
            if self._pos == target:
                return frame.to_ndarray(format="rgb24")
            if self._pos > target:
                raise _LostTrack(f"frame {target} was skipped (decoder went from keyframe {key} to {self._pos})")

    def read(self, wanted: np.ndarray) -> np.ndarray:
        out = []
        for target in wanted.tolist():
            try:
                out.append(self._read_one(target))
            except _LostTrack as exc:
                # Timestamps did not map back to frames (odd container); count frames from the start.
                log.debug("%s: %s; decoding sequentially from the start", self.path, exc)
                self._seekable, self._frames = False, None
                out.append(self._read_one(target))
        return np.stack(out)

    def close(self) -> None:
        self._frames = None
        self._container.close()


class _LostTrack(Exception):
    """The PyAV decoder's output cannot be matched to the packet index."""


class _FrameFolderBackend:
    name = "frames"

    def __init__(self, path: Path):
        self.path = path
        names = {entry.name for entry in os.scandir(path) if entry.is_file() and Path(entry.name).match(FRAME_GLOB)}
        if not names:
            raise VideoDecodeError(f"{path}: frame folder has no frames (expected {frame_name(0)}, ...)")
        self.num_frames = len(names)
        expected = {frame_name(i) for i in range(self.num_frames)}
        if names != expected:
            raise VideoDecodeError(
                f"{path}: gap in frame numbering: {min(expected - names)} is missing but {max(names - expected)} "
                f"exists ({self.num_frames} frames, expected {frame_name(0)}..{frame_name(self.num_frames - 1)})"
            )
        first = path / frame_name(0)
        try:
            with Image.open(first) as image:
                self.width, self.height = image.size
        except OSError as exc:
            raise VideoDecodeError(f"{first}: unreadable frame ({_first_line(exc)})") from exc

    def read(self, wanted: np.ndarray) -> np.ndarray:
        out = np.empty((len(wanted), self.height, self.width, 3), dtype=np.uint8)
        for slot, index in enumerate(wanted.tolist()):
            file = self.path / frame_name(index)
            try:
                with Image.open(file) as image:
                    frame = np.asarray(image.convert("RGB"))
            except OSError as exc:
                raise VideoDecodeError(f"{file}: unreadable frame ({_first_line(exc)})") from exc
            if frame.shape != out.shape[1:]:
                raise VideoDecodeError(
                    f"{file}: frame is {frame.shape[1]}x{frame.shape[0]}, "
                    f"but {frame_name(0)} is {self.width}x{self.height}"
                )
            out[slot] = frame
        return out

    def close(self) -> None:
        pass


class VideoReader:
    """Random access to the frames of a video file or a frame folder.

    ``backend="auto"`` reads a folder as frames and a file with decord, falling back to PyAV when
    decord is missing or cannot open it. Not thread-safe: use one reader per thread.
    """

    path: Path
    backend: str
    num_frames: int
    fps: float
    height: int
    width: int

    def __init__(self, path: str | os.PathLike, backend: Backend = "auto"):
        if backend not in BACKENDS:
            raise ValueError(f"{path}: unknown video backend {backend!r}; expected one of {list(BACKENDS)}")
        self.path = Path(path)
        if not self.path.exists():
            raise VideoDecodeError(f"{self.path}: no such file or folder")
        if self.path.is_dir():
            if backend not in ("auto", "frames"):
                raise VideoDecodeError(f"{self.path}: is a folder; backend {backend!r} reads video files")
            impl = _FrameFolderBackend(self.path)
            self.fps, self.height, self.width = FRAME_FOLDER_FPS, impl.height, impl.width
        else:
            if backend == "frames":
                raise VideoDecodeError(f"{self.path}: is a file; backend 'frames' reads frame folders")
            if self.path.stat().st_size == 0:
                raise VideoDecodeError(f"{self.path}: empty file (0 bytes)")
            impl = self._open_file(backend)
            header = impl.header
            if header.declared_frames and impl.num_frames < header.declared_frames:
                impl.close()
                raise VideoDecodeError(
                    f"{self.path}: truncated: the container declares {header.declared_frames} frames "
                    f"but only {impl.num_frames} are present"
                )
            if header.declared_frames and impl.num_frames != header.declared_frames:
                log.debug("%s: %d frames present, %d declared", self.path, impl.num_frames, header.declared_frames)
            self.fps, self.height, self.width = header.fps, header.height, header.width
        if impl.num_frames < 1:
            impl.close()
            raise VideoDecodeError(f"{self.path}: no frames")
        self._impl: Any = impl
        self._auto = backend == "auto"
        self.backend = impl.name
        self.num_frames = impl.num_frames

    def _open_file(self, backend: str) -> Any:
        if backend == "pyav":
            return _PyAVBackend(self.path)
        # PyAV reads the header first: the declared frame count, and a quiet check before decord,
        # whose C++ logger prints an unsilenceable line for every file it cannot open.
        header = _read_header(self.path)
        try:
            return _DecordBackend(self.path, header)
        except Exception as exc:  # ImportError, or decord's DECORDError for files it cannot open
            if backend == "decord":
                raise VideoDecodeError(f"{self.path}: decord cannot open it ({_first_line(exc)})") from exc
            log.debug("%s: decord cannot open it (%s); falling back to PyAV", self.path, _first_line(exc))
            return _PyAVBackend(self.path)

    def __len__(self) -> int:
        return self.num_frames

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"VideoReader({str(self.path)!r}, backend={self.backend!r}, num_frames={self.num_frames}, "
            f"fps={self.fps:g}, size={self.width}x{self.height})"
        )

    def close(self) -> None:
        """Release the file; the reader cannot be used afterwards."""
        if self._impl is not None:
            self._impl.close()
            self._impl = None

    def get_frames(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Frames ``indices`` (0-based, any order, repeats allowed) as uint8 RGB ``(N, H, W, 3)``.

        Each distinct frame is decoded once, in increasing order; the result follows ``indices``.
        """
        if self._impl is None:
            raise ValueError(f"{self.path}: reader is closed")
        idx = np.asarray(indices)
        if idx.size == 0:
            return np.empty((0, self.height, self.width, 3), dtype=np.uint8)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"{self.path}: frame indices must be a 1-D sequence of integers, got {idx!r}")
        bad = idx[(idx < 0) | (idx >= self.num_frames)]
        if bad.size:
            raise VideoDecodeError(
                f"{self.path}: frame index {int(bad[0])} out of range: the video has {self.num_frames} frames"
            )
        wanted, inverse = np.unique(idx, return_inverse=True)
        try:
            frames = self._impl.read(wanted)
        except VideoDecodeError as exc:
            # decord 0.6 fails on some frame sizes (e.g. 48 px wide: "from_size == to_size"); in
            # "auto" mode such a file is read with PyAV from then on.
            if not (self._auto and self._impl.name == "decord"):
                raise
            log.debug("%s; falling back to PyAV", exc)
            self._impl.close()
            self._impl = _PyAVBackend(self.path)
            self.backend = self._impl.name
            frames = self._impl.read(wanted)
        if frames.shape[1:] != (self.height, self.width, 3):
            raise VideoDecodeError(
                f"{self.path}: decoded frames are {frames.shape[1:]}, expected {(self.height, self.width, 3)}"
            )
        return frames if len(wanted) == len(idx) and (np.diff(idx) > 0).all() else frames[inverse.ravel()]


def read_frames(path: str | os.PathLike, indices: Sequence[int] | np.ndarray, backend: Backend = "auto") -> np.ndarray:
    """Open ``path``, return frames ``indices`` (see :meth:`VideoReader.get_frames`), close it."""
    with VideoReader(path, backend) as reader:
        return reader.get_frames(indices)


def probe_video(path: str | os.PathLike, backend: Backend = "auto") -> VideoInfo:
    """Frame count, rate and size of a video file or frame folder, decoding nothing."""
    with VideoReader(path, backend) as reader:
        return VideoInfo(reader.path, reader.backend, reader.num_frames, reader.fps, reader.height, reader.width)


def resized_shape(height: int, width: int, short_side: int) -> tuple[int, int]:
    """``(height, width)`` with the short side at ``short_side``, aspect kept, long side rounded to even."""
    if short_side < 1 or height < 1 or width < 1:
        raise ValueError(f"cannot resize {width}x{height} to short side {short_side}")
    short, long = min(height, width), max(height, width)
    new_long = max(2, 2 * math.floor(long * short_side / short / 2 + 0.5))
    return (short_side, new_long) if height <= width else (new_long, short_side)


def resize_short_side(frames: np.ndarray, short_side: int) -> np.ndarray:
    """Resize uint8 ``(N, H, W, 3)`` frames so the short side is ``short_side`` (antialiased bilinear).

    The aspect ratio is kept and the long side rounded to an even number (yuv420p needs even
    sizes). Frames already at the target size are returned as they are.
    """
    import torch
    import torch.nn.functional as F

    if frames.ndim != 4 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames (N, H, W, C), got {frames.dtype} {frames.shape}")
    size = resized_shape(frames.shape[1], frames.shape[2], short_side)
    if size == frames.shape[1:3] or len(frames) == 0:
        return frames if len(frames) else np.empty((0, *size, frames.shape[3]), np.uint8)
    # (N, H, W, C) viewed as NCHW is channels-last, the layout torch's uint8 antialias kernel wants.
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    y = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    return np.ascontiguousarray(y.permute(0, 2, 3, 1).numpy())


def write_video(
    path: str | Path, frames: Iterable[np.ndarray], fps: int = 30, *, crf: int = 18, gop: int | None = None
) -> Path:
    """Encode RGB uint8 frames (H, W, 3) to ``path`` atomically; the codec follows the suffix.

    Odd sizes are not allowed by yuv420p: frames must have even height and width. A keyframe is
    written every ``gop`` frames (default :data:`GOP`) so readers can seek.

    x264's macroblock-tree rate control is off (``mbtree=0``): with it, x264 reads heap memory it never
    wrote, so the same frames encoded in two processes came out differently (6 of 8 synthetic videos,
    decoded up to 37/255 apart) and followed glibc's ``MALLOC_PERTURB_``. Without it the stream is the
    same in every process. ``crf`` 0 is lossless (yuv420p).
    """
    import av

    path = Path(path)
    codec = CODECS.get(path.suffix.lower())
    if codec is None:
        raise ValueError(f"{path}: cannot write video with suffix {path.suffix!r}; use one of {sorted(CODECS)}")
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w") as container:
            stream = None
            for frame in frames:
                frame = np.ascontiguousarray(frame, dtype=np.uint8)
                if stream is None:
                    h, w = frame.shape[:2]
                    if h % 2 or w % 2:
                        raise ValueError(f"{path}: frame size {w}x{h} must be even for yuv420p")
                    stream = container.add_stream(codec, rate=fps)
                    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                    stream.gop_size = GOP if gop is None else gop
                    if codec == "libx264":
                        stream.options = {"crf": str(crf), "preset": "veryfast", "x264-params": "mbtree=0"}
                    else:
                        stream.bit_rate = 4_000_000
                elif frame.shape[:2] != (stream.height, stream.width):
                    raise ValueError(
                        f"{path}: frame is {frame.shape[1]}x{frame.shape[0]}, expected {stream.width}x{stream.height}"
                    )
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            if stream is None:
                raise ValueError(f"{path}: no frames to write")
            for packet in stream.encode():
                container.mux(packet)
    return path


def write_frame_folder(folder: str | Path, frames: Iterable[np.ndarray], *, quality: int = 92) -> Path:
    """Write frames as ``img_00001.jpg``… into ``folder`` atomically (the folder appears whole)."""
    folder = Path(folder)
    with atomic_path(folder, directory=True) as tmp:
        n = 0
        for n, frame in enumerate(frames, start=1):
            Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8)).save(tmp / frame_name(n - 1), quality=quality)
        if n == 0:
            raise ValueError(f"{folder}: no frames to write")
    return folder


__all__ = [
    "BACKENDS",
    "CODECS",
    "FRAME_FOLDER_FPS",
    "GOP",
    "VideoDecodeError",
    "VideoInfo",
    "VideoReader",
    "probe_video",
    "read_frames",
    "resize_short_side",
    "resized_shape",
    "write_frame_folder",
    "write_video",
]
