"""Errors a user can fix (bad input, missing files), reported as one line without a traceback.

The command line (:func:`endofm.cli.main`) and the workflow's jobs (:func:`endofm.logs.job_log`)
catch what :func:`is_user_error` accepts in one place each and print :func:`error_line`; ``-v`` (or the job log's
debug level) keeps the traceback for a bug report.

Layer: foundation (docs/architecture.md). May import: the other foundation modules only.
"""

from __future__ import annotations

import errno


class UserError(ValueError):
    """Bad input the user can fix; the message names the file or key and what was expected."""


#: What the command line and the jobs report as one line. Library code raises these with a message
#: that names the file or key; anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError,
    FileNotFoundError,
    PermissionError,
    ValueError,
    RuntimeError,
    KeyError,
)
#: ``OSError`` numbers a user fixes in their file system (read-only, full disk or quota); other OS errors
#: are reported as bugs.
USER_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR})


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is reported as one line: one of :data:`USER_ERRORS`, or an ``OSError`` of a file system
    the user must fix (:data:`USER_ERRNOS`)."""
    return isinstance(exc, USER_ERRORS) or (isinstance(exc, OSError) and exc.errno in USER_ERRNOS)


def error_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (its lines joined by ``; ``, a ``KeyError``'s without quotes; an
    ``OSError`` as ``<file>: <reason>``, with a hint for a folder that cannot be written)."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        hint = {
            errno.EACCES: "; check the folder's permissions or choose another results folder",
            errno.EPERM: "; check the folder's permissions or choose another results folder",
            errno.EROFS: "; the file system is read-only: choose a writable results folder",
            errno.ENOSPC: "; free disk space or choose another results folder",
            errno.EDQUOT: "; free disk space or choose another results folder",
        }.get(exc.errno, "")
        return f"{exc.filename}: {exc.strerror.lower()}{hint}"
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return "; ".join(part.strip() for part in text.splitlines() if part.strip()) or type(exc).__name__
