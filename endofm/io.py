"""Safe file output: nothing half-written may survive an interrupted run (:func:`atomic_path`), and no two
processes write one run folder (:func:`output_lock`).

Layer: foundation (docs/architecture.md). May import: the other foundation modules only.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from endofm.errors import UserError

log = logging.getLogger(__name__)


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


def finite_json(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, inf; NumPy's too) replaced by None: JSON has no NaN, and
    readers take null as "undefined" (an AUROC of a one-class split, a loss that diverged)."""
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if type(obj).__module__ == "numpy" and getattr(obj, "ndim", None) == 0:  # NumPy scalars and 0-d arrays
        return finite_json(obj.item())
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, valid JSON to ``path`` atomically (non-finite floats as null)."""
    return write_text(path, json.dumps(finite_json(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


def write_csv(path: str | os.PathLike, frame) -> Path:
    """Write a pandas DataFrame to ``path`` atomically, without the index."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


LOCK_NAME = ".lock"
#: The holder refreshes its lock's mtime this often; another host's lock untouched for STALE_AFTER is stale.
HEARTBEAT_SECONDS = 30.0
STALE_AFTER_SECONDS = 120.0


class OutputLocked(UserError):
    """Another live process writes the folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(lock: Path, holder: dict[str, Any]) -> bool:
    """Whether the process that wrote ``lock`` is gone: on this host, by its PID; on another host, by a
    heartbeat older than :data:`STALE_AFTER_SECONDS`."""
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        return not _alive(holder["pid"])
    try:
        age = datetime.datetime.now().timestamp() - lock.stat().st_mtime
    except FileNotFoundError:
        return True
    return age > STALE_AFTER_SECONDS


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (innermost first) while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, enabled: bool = True) -> Iterator[None]:
    """Hold ``folder/.lock`` while the block runs, so a second process writing the same run folder fails at
    once with :class:`OutputLocked`, naming the holder's PID, host, start and command. A lock left by a
    process that is gone (killed, or a node lost) is taken over with a warning; the holder refreshes the
    lock's mtime every :data:`HEARTBEAT_SECONDS` so that another host can tell. ``enabled=False`` (the
    other ranks of one distributed job) does nothing."""
    if not enabled:
        yield
        return
    folder = Path(folder)
    created = [d for d in (folder, *folder.parents) if not d.exists()]  # innermost first
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv)[:300],
    }
    fd, name = tempfile.mkstemp(prefix=".lock.", dir=folder)
    with os.fdopen(fd, "w") as fh:
        json.dump(me, fh)
    try:
        for _ in range(2):
            try:
                os.link(name, lock)  # atomic: fails when the lock exists
                break
            except FileExistsError:
                try:
                    holder = json.loads(lock.read_text())
                except (OSError, ValueError):
                    holder = {}
                if not _stale(lock, holder):
                    raise OutputLocked(
                        f"{folder}: in use by PID {holder.get('pid', '?')} on {holder.get('host', '?')} since "
                        f"{holder.get('started', '?')} ({holder.get('command', '?')}); wait for it to finish, or "
                        f"delete {lock} if that process is gone"
                    ) from None
                log.warning("%s: taking over the lock of PID %s on %s, which is gone", folder, holder.get("pid"),
                            holder.get("host"))  # fmt: skip
                lock.unlink(missing_ok=True)
        else:
            raise OutputLocked(f"{folder}: could not take {lock}; another process took it first")
    except BaseException:
        os.unlink(name)
        _remove_empty(created)  # nothing partial left: the folders were made for this lock only
        raise
    os.unlink(name)
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(OSError):
                os.utime(lock)

    beat = threading.Thread(target=heartbeat, name="output-lock-heartbeat", daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        with contextlib.suppress(OSError, ValueError):
            if json.loads(lock.read_text()).get("pid") == me["pid"]:
                lock.unlink()
        _remove_empty(created)  # only what the run left empty
