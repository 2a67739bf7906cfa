"""What the ``benchmarks/bench_*.py`` scripts share: their argument parser, thread set-up, timing, result
files, plain-text tables and the textured clips they decode.

A script imports it as ``benchmarks.common``; run as a file (``python benchmarks/bench_x.py``) it first puts
the repository root on ``sys.path``, so ``python -m benchmarks.bench_x`` works the same. torch, pandas and the
package's modules are imported where they are used, so ``--help`` stays quick.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_CONFIG = Path("config/config.yaml")


def parser(
    doc: str,
    *,
    config: bool = False,
    threads: int | None = None,
    seed: bool = False,
    out: bool = False,
    json: bool = False,
) -> argparse.ArgumentParser:
    """An argument parser whose help is the script's docstring, with the shared options asked for:
    ``--config`` (a workflow config), ``--threads`` (torch CPU threads, this default; 0: torch's own),
    ``--seed``, ``--out DIR`` (required, where the runs go) and ``--json FILE`` (optional result file)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if config:
        p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help=f"workflow config ({DEFAULT_CONFIG})")
    if threads is not None:
        p.add_argument(
            "--threads", type=int, default=threads, help=f"torch CPU threads ({threads}; 0: torch's default)"
        )
    if seed:
        p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    if out:
        p.add_argument("--out", type=Path, required=True, help="folder of the runs (finished ones are reused)")
    if json:
        p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    return p


def set_threads(threads: int | None) -> int:
    """Give torch ``threads`` intra-op CPU threads (:func:`endofm.engine.set_cpu_threads`, no workers);
    0 or None leaves torch's default. Returns the count in force."""
    import torch

    if threads:
        from endofm.engine import set_cpu_threads

        set_cpu_threads(threads, 0)
    return torch.get_num_threads()


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """:func:`set_threads` for the block only; the count before it comes back afterwards."""
    import torch

    before = torch.get_num_threads()
    set_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def setup(args: argparse.Namespace) -> None:
    """Apply the shared options of :func:`parser`: ``--threads``, and ``--seed`` to torch's global generator
    where the script uses torch (its own draws take the seed explicitly)."""
    if getattr(args, "threads", None) is not None:
        set_threads(args.threads)
    torch = sys.modules.get("torch")
    if torch is not None and getattr(args, "seed", None) is not None:
        torch.manual_seed(args.seed)


@contextmanager
def config_errors() -> Iterator[None]:
    """Exit with ``error: <message>`` on a bad workflow config instead of a traceback."""
    from endofm.config import ConfigError

    try:
        yield
    except ConfigError as exc:
        sys.exit(f"error: {exc}")


def numbers(text: str, kind: Callable[[str], Any] = int) -> list:
    """The comma-separated values of ``text`` (``"0,1,2"``), each read with ``kind``; blanks are skipped."""
    return [kind(x) for x in text.split(",") if x.strip()]


class Timer:
    """Seconds a ``with`` block took (``seconds``), by ``clock``: wall time, or ``time.process_time`` for CPU time."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock, self.seconds = clock, 0.0

    def __enter__(self) -> Timer:
        self._start = self.clock()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.seconds = self.clock() - self._start


def write_results(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically (:func:`endofm.io.write_json`)."""
    from endofm.io import write_json

    return write_json(path, data)


class Table:
    """A plain-text table printed a row at a time. ``columns`` are (title, format spec) pairs such as
    ``("ms/iter", ">9.1f")``; a title takes its spec's alignment and width. A row may leave off trailing cells."""

    def __init__(self, columns: Sequence[tuple[str, str]], sep: str = " ", indent: str = "") -> None:
        self.columns, self.sep, self.indent = list(columns), sep, indent

    def header(self) -> str:
        titles = (format(t, re.match(r"[<>^]?\d*", spec).group()) for t, spec in self.columns)
        return self.indent + self.sep.join(titles)

    def row(self, *values: Any) -> str:
        cells = (format(v, spec) for v, (_, spec) in zip(values, self.columns, strict=False))
        return self.indent + self.sep.join(cells)

    def print_header(self, rule: bool = False) -> None:
        """Print the titles (and a line of dashes under them with ``rule``)."""
        head = self.header()
        print(head + ("\n" + "-" * len(head) if rule else ""), flush=True)

    def print_row(self, *values: Any) -> None:
        print(self.row(*values), flush=True)


def textured_clip(
    rng: np.random.Generator,
    frames: int,
    height: int,
    width: int,
    *,
    shift: tuple[int, int] = (1, 2),
    noise: int = 6,
    margin: int = 2,
) -> np.ndarray:
    """``(frames, height, width, 3)`` uint8: random 8x8 coloured blocks (``margin`` spare blocks per side)
    drifting by ``shift`` pixels a frame, plus uniform noise of ``±noise``; enough texture for real encoding."""
    base = rng.integers(0, 256, (height // 8 + margin, width // 8 + margin, 3), dtype=np.uint8)
    base = np.repeat(np.repeat(base, 8, axis=0), 8, axis=1)
    clip = np.stack([np.roll(base, (shift[0] * t, shift[1] * t), axis=(0, 1))[:height, :width] for t in range(frames)])
    jitter = rng.integers(-noise, noise + 1, clip.shape, dtype=np.int16)
    return np.clip(clip.astype(np.int16) + jitter, 0, 255).astype(np.uint8)


def make_corpus(folder: Path, count: int, frames: int, height: int, width: int, seed: int = 0) -> Path:
    """``count`` textured clips (:func:`textured_clip`) as H.264 files in ``folder``, and their ``clips.csv``
    (the manifest of :mod:`endofm.data.clips`); returns the manifest's path."""
    import pandas as pd

    from endofm.data.clips import MANIFEST_COLUMNS
    from endofm.data.video import write_video
    from endofm.io import write_csv

    rng = np.random.default_rng(seed)
    rows = []
    for k in range(count):
        name = f"clip{k:02d}.mp4"
        write_video(folder / name, textured_clip(rng, frames, height, width), fps=30)
        rows.append(
            {"source": "bench", "source_video": name, "start_frame": 0, "frames": frames, "fps": 30,
             "width": width, "height": height, "path": name}
        )  # fmt: skip
    return write_csv(folder / "clips.csv", pd.DataFrame(rows, columns=MANIFEST_COLUMNS))
