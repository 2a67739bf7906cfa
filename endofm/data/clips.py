"""Cut pretraining sources into clips: the official protocol of docs/original.md 3.2.

Each source video (file or frame folder) is cut into ``n // 150`` clips, the last absorbing the
remainder (150-299 frames); a source shorter than a clip becomes one clip. Clips are resized to
short side 256 and written as H.264 mp4 at 30 fps (the official script wrote OpenCV ``mp4v``;
H.264 is smaller and decodes the same way). Every source frame lands in exactly one clip.

Output, in ``out_dir``: ``<video id>_<index>.mp4`` clips (:data:`~endofm.data.layouts.CLIP_PATTERN`),
``clips.csv`` (one row per clip) and ``skipped.csv`` (sources that could not be read). ``out_dir``
belongs to one extraction at a time.

Layer: data and models (docs/architecture.md). May import: foundation and the other data modules.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from endofm.config import check_fields, setting
from endofm.data.layouts import CLIP_PATTERN, CLIPS_MANIFEST, SKIPPED_REPORT, VIDEO_EXTENSIONS
from endofm.data.video import (
    VideoDecodeError,
    VideoReader,
    probe_video,
    resize_short_side,
    resized_shape,
    write_video,
)
from endofm.io import write_csv
from endofm.logs import progress as progress_bar

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["source", "source_video", "start_frame", "frames", "fps", "width", "height", "path"]
SKIPPED_COLUMNS = ["source_video", "reason"]

#: Frames decoded, resized and encoded at a time: bounds memory to a few dozen source-size frames.
CHUNK_FRAMES = 32


class ClipExtractionError(RuntimeError):
    """A source could not be cut into clips (``on_error="fail"``), or none could."""


@dataclass
class ClipConfig:
    """How sources are cut into clips; defaults are the official protocol."""

    clip_length: int = setting(
        150, "Frames per clip; the last clip absorbs the remainder, a shorter video is one clip", minimum=1
    )
    fps: int = setting(30, "Frame rate written into the clips (no temporal resampling, as the original)", minimum=1)
    short_side: int = setting(
        256,
        "Resize the short side to this many pixels, keeping the aspect ratio (even: the clips are yuv420p)",
        minimum=8,
        multiple_of=2,
    )
    on_error: Literal["fail", "skip"] = setting(
        "fail", "fail: a bad source video fails the job; skip: it is listed in skipped.csv"
    )
    crf: int = setting(
        18,
        "H.264 constant rate factor of the written clips (lower = better quality; 0 = lossless)",
        minimum=0,
        maximum=51,
    )

    def __post_init__(self) -> None:
        check_fields(self)


def plan_clips(num_frames: int, clip_length: int) -> list[tuple[int, int]]:
    """``(start, length)`` of each clip: ``num_frames // clip_length`` clips, the last absorbing the rest.

    A source shorter than one clip gives a single clip of all its frames.
    """
    if num_frames < 1 or clip_length < 1:
        raise ValueError(f"cannot plan clips of {clip_length} frames over {num_frames} frames")
    count = max(1, num_frames // clip_length)
    plan = [(i * clip_length, clip_length) for i in range(count - 1)]
    last = (count - 1) * clip_length
    return [*plan, (last, num_frames - last)]


def _relative(path: Path, raw_root: Path) -> Path:
    # abspath, not resolve: a raw tree of symlinks must keep its own names.
    try:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(raw_root))
    except ValueError:
        raise ValueError(f"{path}: source video is not inside the raw folder {raw_root}") from None


def source_video_id(path: Path, raw_root: Path) -> str:
    """Clip-name stem of a source: its path relative to ``raw_root``, video suffix dropped, ``/`` -> ``__``.

    Only a known video suffix is dropped, so a frame folder named ``case.01`` keeps its name.
    """
    rel = _relative(path, raw_root)
    if rel.suffix.lower() in VIDEO_EXTENSIONS:
        rel = rel.with_suffix("")
    return "__".join(rel.parts)


def _resized_chunks(reader: VideoReader, start: int, length: int, short_side: int) -> Iterator[np.ndarray]:
    for s in range(start, start + length, CHUNK_FRAMES):
        chunk = reader.get_frames(np.arange(s, min(s + CHUNK_FRAMES, start + length)))
        yield from resize_short_side(chunk, short_side)


def _is_complete(clip: Path, frames: int, height: int, width: int) -> bool:
    """Whether an existing clip file is the one this run would write (writes are atomic)."""
    if not clip.exists():
        return False
    try:
        info = probe_video(clip)
    except VideoDecodeError as exc:
        log.warning("%s: unreadable existing clip, re-encoding (%s)", clip, exc)
        return False
    if (info.num_frames, info.height, info.width) != (frames, height, width):
        log.warning(
            "%s: existing clip is %d frames %dx%d, expected %d frames %dx%d (settings changed?); re-encoding",
            clip, info.num_frames, info.width, info.height, frames, width, height,
        )  # fmt: skip
        return False
    return True


def _extract_video(
    video: Path, raw_root: Path, out_dir: Path, source: str, cfg: ClipConfig
) -> tuple[list[dict], int, str | None]:
    """Cut one source; returns its manifest rows, how many clips were encoded, and a failure reason."""
    rel = _relative(video, raw_root).as_posix()
    video_id = source_video_id(video, raw_root)
    rows: list[dict] = []
    encoded = 0
    try:
        with VideoReader(video) as reader:
            height, width = resized_shape(reader.height, reader.width, cfg.short_side)
            for index, (start, length) in enumerate(plan_clips(reader.num_frames, cfg.clip_length)):
                name = CLIP_PATTERN.format(video=video_id, index=index)
                clip = out_dir / name
                if not _is_complete(clip, length, height, width):
                    write_video(clip, _resized_chunks(reader, start, length, cfg.short_side), cfg.fps, crf=cfg.crf)
                    encoded += 1
                rows.append(
                    {"source": source, "source_video": rel, "start_frame": start, "frames": length,
                     "fps": cfg.fps, "width": width, "height": height, "path": name}
                )  # fmt: skip
    except VideoDecodeError as exc:
        return [], encoded, str(exc)
    return rows, encoded, None


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Drop temporary clips left by a killed run (``atomic_path`` names them ``.<stem>.*.tmp.mp4``)."""
    for tmp in out_dir.glob(".*.tmp.mp4"):
        log.info("%s: removing a temporary file left by an interrupted run", tmp)
        tmp.unlink(missing_ok=True)


def extract_clips(
    raw_root: Path,
    videos: Sequence[Path],
    out_dir: Path,
    source: str,
    cfg: ClipConfig,
    threads: int = 1,
    progress: bool = True,
) -> pd.DataFrame:
    """Cut ``videos`` (files or frame folders under ``raw_root``) into clips in ``out_dir``.

    Writes ``clips.csv`` (atomically, last) and ``skipped.csv``, and returns the manifest. Clips
    already on disk with the expected frame count and size are kept, so a re-run encodes nothing
    and writes the same manifest. ``threads`` videos are processed at once, one per thread. A
    source that cannot be read raises :class:`ClipExtractionError` (``on_error="fail"``) or is
    listed in ``skipped.csv`` (``"skip"``); if every source fails, it raises either way.
    """
    raw_root, out_dir = Path(raw_root), Path(out_dir)
    videos = sorted(Path(v) for v in videos)
    if not videos:
        raise ClipExtractionError(f"{out_dir}: no source videos for source {source!r} under {raw_root}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    ids: dict[str, Path] = {}
    for video in videos:
        other = ids.setdefault(source_video_id(video, raw_root), video)
        if other != video:
            raise ClipExtractionError(f"{other} and {video} map to the same clip names; rename one of them")
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out_dir)

    rows: list[dict] = []
    skipped: list[dict] = []
    encoded = 0
    workers = min(threads, len(videos))
    # Threads, not processes: decord (ctypes), PyAV (nogil codec calls) and torch release the GIL.
    # Measured with 2 workers on 4 sources of 330 frames 640x480 (shared 2-core host, median of 8):
    # threads 11.6 s wall / 11.4 s CPU, forked processes 11.7 s / 12.1 s; threads also need no
    # fork (OpenMP, a Snakemake script without a main guard) and no per-worker imports.
    pool = cf.ThreadPoolExecutor(max_workers=workers) if workers > 1 else None
    bar = progress_bar(total=len(videos), desc=f"clips {source}", unit="video", disable=not progress)
    try:
        if pool is None:
            results: Iterator = (_extract_video(v, raw_root, out_dir, source, cfg) for v in videos)
        else:
            futures = [pool.submit(_extract_video, v, raw_root, out_dir, source, cfg) for v in videos]
            results = (f.result() for f in futures)  # in input order, so rows are deterministic
        for video, (video_rows, video_encoded, reason) in zip(videos, results, strict=True):
            bar.update()
            encoded += video_encoded
            if reason is None:
                rows.extend(video_rows)
                continue
            if cfg.on_error == "fail":
                raise ClipExtractionError(f"source {source!r}: cannot cut {video} into clips: {reason}")
            log.warning("skipping %s: %s", video, reason)
            skipped.append({"source_video": _relative(video, raw_root).as_posix(), "reason": reason})
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)  # on failure, don't start the remaining videos

    write_csv(out_dir / SKIPPED_REPORT, pd.DataFrame(skipped, columns=SKIPPED_COLUMNS))
    if not rows:
        raise ClipExtractionError(
            f"source {source!r}: none of the {len(videos)} source videos could be read; "
            f"see {out_dir / SKIPPED_REPORT} (first: {skipped[0]['source_video']}: {skipped[0]['reason']})"
        )
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    orphans = sorted({p.name for p in out_dir.glob("*.mp4")} - set(manifest["path"]))
    if orphans:
        log.warning(
            "%s: %d clip files are not in the manifest (e.g. %s); left in place", out_dir, len(orphans), orphans[0]
        )
    write_csv(out_dir / CLIPS_MANIFEST, manifest)
    names = "".join(f"; {s['source_video']} ({s['reason']})" for s in skipped[:20])
    more = f"; ... and {len(skipped) - 20} more in {out_dir / SKIPPED_REPORT}" if len(skipped) > 20 else ""
    log.info(
        "source %r: %d videos -> %d clips (%d encoded, %d kept), %d skipped%s%s",
        source, len(videos) - len(skipped), len(manifest), encoded, len(manifest) - encoded, len(skipped), names, more,
    )  # fmt: skip
    return manifest


__all__ = [
    "CHUNK_FRAMES",
    "MANIFEST_COLUMNS",
    "SKIPPED_COLUMNS",
    "ClipConfig",
    "ClipExtractionError",
    "extract_clips",
    "plan_clips",
    "source_video_id",
]
