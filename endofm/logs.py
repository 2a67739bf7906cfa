"""Logging set-up shared by the command line and the workflow's job scripts.

Layer: foundation (docs/architecture.md). May import: the other foundation modules only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int | str = logging.INFO) -> None:
    """Log to stderr with timestamps (replacing earlier handlers, so it is safe to call twice)."""
    logging.basicConfig(level=level, format=FORMAT, datefmt="%H:%M:%S", stream=sys.stderr, force=True)


@contextlib.contextmanager
def job_log(path: str | os.PathLike) -> Iterator[Path]:
    """Send everything the job prints to ``path``: Python logging, print, tqdm and C libraries.

    File descriptors 1 and 2 are redirected (not just ``sys.stdout``) so FFmpeg or decord messages
    land in the job's log too. A user error (:func:`~endofm.errors.is_user_error`: bad input, a missing
    file) is logged as one ``error:`` line, repeated on the real stderr, and ends the job with exit
    status 1; any other failure logs its traceback and propagates.
    """
    from endofm.errors import error_line, is_user_error
    from endofm.jobsignals import end_with_workflow

    end_with_workflow()  # a job whose Snakemake has gone ends itself

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    failure = None
    with path.open("a", buffering=1) as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        setup_logging()
        try:
            yield path
        except BaseException as exc:
            if not is_user_error(exc):
                logging.getLogger("endofm").exception("job failed")
                raise
            failure = error_line(exc)
            logging.getLogger("endofm").error("error: %s", failure)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
    if failure is not None:
        print(f"endofm: error: {failure} (log: {path})", file=sys.stderr, flush=True)
        raise SystemExit(1)


#: Seconds between two progress lines when stderr is not a terminal (a job log).
LOG_INTERVAL = 30.0


class LineProgress:
    """The part of tqdm's interface the package uses, writing one log line per update at most every
    ``interval`` seconds (and one when closed) instead of redrawing a bar with carriage returns."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: int | None = None,
        desc: str | None = None,
        unit: str = "it",
        initial: int = 0,
        interval: float = LOG_INTERVAL,
    ) -> None:
        self.iterable, self.desc, self.unit, self.interval = iterable, desc or "progress", unit, interval
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.postfix = total, initial, ""
        self._start = self._last = time.monotonic()
        self._initial, self._closed = initial, False
        self._log = logging.getLogger("endofm.progress")

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._write(now)

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._write(time.monotonic(), done=True)

    def _write(self, now: float, done: bool = False) -> None:
        elapsed = now - self._start
        rate = (self.n - self._initial) / elapsed if elapsed > 0 else 0.0
        count = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        tail = f", {self.postfix}" if self.postfix else ""
        self._log.info(
            "%s: %s %s%s in %.0f s (%.2f %s/s)%s", self.desc, count, self.unit, " done" if done else "", elapsed,
            rate, self.unit, tail,
        )  # fmt: skip


def progress(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str | None = None,
    unit: str = "it",
    disable: bool = False,
    **bar: Any,
):
    """A progress bar: tqdm on a terminal, :class:`LineProgress` lines when stderr is a file (job logs).

    ``bar`` goes to tqdm only (e.g. ``unit_scale``), except ``initial``.
    """
    from tqdm import tqdm

    if disable or sys.stderr.isatty():
        return tqdm(
            iterable, total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True, file=sys.stderr, **bar
        )
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=bar.get("initial", 0))
