"""Logging set-up shared by the command line and the workflow's job scripts."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int | str = logging.INFO) -> None:
    """Log to stderr with timestamps (replacing earlier handlers, so it is safe to call twice)."""
    logging.basicConfig(level=level, format=FORMAT, datefmt="%H:%M:%S", stream=sys.stderr, force=True)


@contextlib.contextmanager
def job_log(path: str | os.PathLike) -> Iterator[Path]:
    """Send everything the job prints to ``path``: Python logging, print, tqdm and C libraries.

    File descriptors 1 and 2 are redirected (not just ``sys.stdout``) so FFmpeg or decord messages
    land in the job's log too. A failing job's traceback is logged before it propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TQDM_MININTERVAL", "5")  # a progress line every 5 s, not every frame, in a log file
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with path.open("a", buffering=1) as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        setup_logging()
        try:
            yield path
        except BaseException:
            logging.getLogger("endofm").exception("job failed")
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
