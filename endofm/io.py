"""Atomic file output: nothing half-written may survive an interrupted run.

Layer: foundation (docs/architecture.md). May import: the other foundation modules only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; move it onto ``path`` only if the block succeeds.

    The temporary name keeps the suffix of ``path`` so writers that infer a format from the
    extension (PyAV, PIL, pandas) still work. On any exception the temporary file or folder is
    removed and ``path`` is left untouched. With ``directory=True`` an existing folder at
    ``path`` is replaced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    # mkstemp/mkdtemp create owner-only entries; give the result the permissions of a normal write.
    os.chmod(tmp, (0o777 if directory else 0o666) & ~_UMASK)
    try:
        yield tmp
        if directory:
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def _read_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; done once at import, before any threads
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_csv(path: str | os.PathLike, frame) -> Path:
    """Write a pandas DataFrame to ``path`` atomically, without the index."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)
