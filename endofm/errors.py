"""Errors a user can fix (bad input, missing files), reported as one line without a traceback.

The command line (:func:`endofm.cli.main`) and the workflow's jobs (:func:`endofm.logs.job_log`)
catch :data:`USER_ERRORS` in one place each and print :func:`error_line`; ``-v`` (or the job log's
debug level) keeps the traceback for a bug report.

Layer: foundation (docs/architecture.md). May import: the other foundation modules only.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input the user can fix; the message names the file or key and what was expected."""


#: What the command line and the jobs report as one line. Library code raises these with a message
#: that names the file or key; anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError, ValueError, RuntimeError, KeyError)


def error_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (its lines joined by ``; ``, a ``KeyError``'s without quotes)."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return "; ".join(part.strip() for part in text.splitlines() if part.strip()) or type(exc).__name__
