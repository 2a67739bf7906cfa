"""Decode throughput for pretraining-style sampling: seek to 8 frames versus decode the whole clip.

Makes a 150-frame H.264 clip like those of ``extract_clips`` (or takes ``--video``), then, for
several random draws of 8 frame indices, times (taking turns, medians per draw)

- ``decord-seek``: ``VideoReader(backend="decord").get_frames`` (``get_batch`` seeking);
- ``pyav-seek``:   ``VideoReader(backend="pyav").get_frames`` (keyframe seek, decode forward);
- ``pyav-all``:    PyAV decoding every frame, keeping the 8 asked for (RGB-converting only those);
- ``decord-all``:  decord ``get_batch`` of every frame, keeping 8.

Each draw opens the file afresh, as a data loader does per sample. Two index patterns, after
docs/original.md 3.3: ``global`` (8 uniform over the clip) and ``local`` (8 uniform within a random
window of clip_length // 8 frames). Prints sampled frames/s and the seek/decode-all ratios.

    python benchmarks/bench_decode.py [--video CLIP.mp4] [--draws 30] [--gop 30]
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from endofm.data import video

if not __package__:  # run as a file: the repository root makes `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402


def make_clip(path: Path, frames: int, height: int, width: int, gop: int, seed: int) -> Path:
    """A textured clip (:func:`~benchmarks.common.textured_clip`, drifting faster, noisier) for real encoder work."""
    clip = common.textured_clip(np.random.default_rng(seed), frames, height, width, shift=(2, 3), noise=8, margin=0)
    return video.write_video(path, clip, fps=30, gop=gop)


def draws(num_frames: int, k: int, pattern: str, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` index sets of ``k`` frames: uniform over the clip, or within a random short window."""
    out = []
    for _ in range(n):
        if pattern == "global":
            lo, hi = 0, num_frames - 1
        else:
            window = max(k, num_frames // 8)
            lo = int(rng.integers(0, num_frames - window + 1))
            hi = lo + window - 1
        out.append(np.linspace(lo, hi, k).round().astype(int))
    return out


def pyav_all(path: Path, indices: np.ndarray) -> np.ndarray:
    import av

    wanted = set(indices.tolist())
    kept = {}
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                kept[i] = frame.to_ndarray(format="rgb24")
    return np.stack([kept[i] for i in indices.tolist()])


def decord_all(path: Path, indices: np.ndarray) -> np.ndarray:
    with video.VideoReader(path, "decord") as reader:
        return reader.get_frames(np.arange(reader.num_frames))[indices]


def seek(backend: str) -> Callable[[Path, np.ndarray], np.ndarray]:
    def run(path: Path, indices: np.ndarray) -> np.ndarray:
        return video.read_frames(path, indices, backend)

    return run


def time_methods(
    methods: dict[str, Callable[[Path, np.ndarray], np.ndarray]], path: Path, index_sets: list[np.ndarray]
) -> dict[str, float]:
    """Sampled frames per second of each method, from its median time per draw.

    Methods take turns within each draw (in rotating order), so a busy machine slows them alike.
    """
    names = list(methods)
    for name in names:  # warm-up: imports, caches
        methods[name](path, index_sets[0])
    times: dict[str, list[float]] = {name: [] for name in names}
    for i, indices in enumerate(index_sets):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            start = time.perf_counter()
            out = methods[name](path, indices)
            times[name].append(time.perf_counter() - start)
            assert len(out) == len(indices)
    return {name: len(index_sets[0]) / float(np.median(t)) for name, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__, seed=True)
    parser.add_argument("--video", type=Path, help="clip to read (default: make one in a temporary folder)")
    parser.add_argument("--frames", type=int, default=150, help="frames of the made clip (default 150)")
    parser.add_argument("--height", type=int, default=256, help="height of the made clip (default 256)")
    parser.add_argument("--width", type=int, default=320, help="width of the made clip (default 320)")
    parser.add_argument("--gop", type=int, default=video.GOP, help=f"keyframe interval of the made clip ({video.GOP})")
    parser.add_argument("--sample", type=int, default=8, help="frames per draw (default 8)")
    parser.add_argument("--draws", type=int, default=30, help="random draws per pattern and method (default 30)")
    args = parser.parse_args(argv)
    common.setup(args)

    with tempfile.TemporaryDirectory() as tmp:
        path = args.video or make_clip(
            Path(tmp) / "clip.mp4", args.frames, args.height, args.width, args.gop, args.seed
        )
        info = video.probe_video(path)
        size_kib = path.stat().st_size / 1024
        print(f"clip: {path.name}, {info.num_frames} frames, {info.width}x{info.height}, {size_kib:.0f} KiB", end="")
        print(f", gop {args.gop}" if args.video is None else "")
        methods = {
            "decord-seek": seek("decord"),
            "pyav-seek": seek("pyav"),
            "decord-all": decord_all,
            "pyav-all": pyav_all,
        }
        rng = np.random.default_rng(args.seed)
        for pattern in ("global", "local"):
            index_sets = draws(info.num_frames, args.sample, pattern, args.draws, rng)
            fps = time_methods(methods, path, index_sets)
            print(f"\n{pattern}: {args.sample} frames per draw, {args.draws} draws, sampled frames/s (median draw)")
            table = common.Table([("method", "<12"), ("frames/s", "9.1f")], indent="  ")
            for name, value in fps.items():
                table.print_row(name, value)
            print(f"  ratio decord-seek / pyav-all  {fps['decord-seek'] / fps['pyav-all']:.2f}")
            print(f"  ratio pyav-seek   / pyav-all  {fps['pyav-seek'] / fps['pyav-all']:.2f}")
            print(f"  ratio decord-seek / decord-all {fps['decord-seek'] / fps['decord-all']:.2f}")


if __name__ == "__main__":
    main()
