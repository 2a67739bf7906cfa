"""Pre-emption signals inside a batch job: pass SIGUSR1/SIGTERM on to the processes that checkpoint.

On a cluster with ``ProctrackType=proctrack/cgroup`` (most of them) SLURM delivers ``--signal=USR1@<s>``
and ``scancel``'s SIGTERM only to the *main process of the job step*. Under the Snakemake SLURM executor
that process is the inner (remote) Snakemake, not the training: Snakemake has no SIGUSR1 handler and
dies of it, slurmstepd then SIGKILLs the rest of the step, and no checkpoint is written; on SIGTERM it
only stops scheduling and waits, until SLURM's SIGKILL ``KillWait`` seconds later.

:func:`forward_in_this_process` (called by ``rules/cluster.smk`` in the remote Snakemake of a SLURM job)
installs a handler that sends the signal on to every descendant process except shells (the rule's
``bash -c`` would die of SIGUSR1 and fail the job before the training has saved), so the training
writes its checkpoint and exits 75 (:data:`endofm.engine.PREEMPTED_EXIT_CODE`); SIGTERM then reaches
Snakemake's own handler as well (it stops scheduling). A handler that Snakemake installs later for
one of these signals (its scheduler does for SIGTERM) is chained behind this one instead of replacing it.

Layer: foundation (docs/architecture.md). May import: the standard library only.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh"})
FORWARDED = (signal.SIGUSR1, signal.SIGTERM)


def _children_map() -> dict[int, list[int]]:
    """{parent pid: [child pids]} of every process (from /proc)."""
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(stat.parent.name))
    return tree


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, parents before their children."""
    tree, found, todo = _children_map(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(0), []):
            found.append(child)
            todo.append(child)
    return found


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def forward(sig: int, pid: int | None = None, skip: Iterable[str] = SHELLS) -> list[int]:
    """Send ``sig`` to every descendant of ``pid`` (default: this process) whose name is not in
    ``skip``; returns the pids signalled."""
    skip = frozenset(skip)
    sent = []
    for child in descendants(os.getpid() if pid is None else pid):
        if process_name(child) in skip:
            continue
        try:
            os.kill(child, sig)
            sent.append(child)
        except (ProcessLookupError, PermissionError):
            pass
    return sent


class _Forwarder:
    """The installed handler; ``chained`` holds the handler each signal had (or was later given)."""

    def __init__(self, signals: Iterable[int]) -> None:
        self.signals = tuple(signals)
        self.chained: dict[int, object] = {}
        self.original_signal: Callable = signal.signal

    def handle(self, sig: int, frame) -> None:
        sent = forward(sig)
        name = signal.Signals(sig).name
        print(
            f"endofm.jobsignals: {name} forwarded to {len(sent)} process(es) of this job: {sent}",
            file=sys.stderr,
            flush=True,
        )
        previous = self.chained.get(sig)
        if callable(previous):  # e.g. Snakemake's SIGTERM handler: stop scheduling new jobs
            previous(sig, frame)

    def install(self) -> None:
        for sig in self.signals:
            self.chained[sig] = self.original_signal(sig, self.handle)
        forwarder = self

        def guarded_signal(sig, handler):
            if sig in forwarder.signals and handler is not forwarder.handle:
                previous, forwarder.chained[sig] = forwarder.chained.get(sig), handler
                return previous
            return forwarder.original_signal(sig, handler)

        signal.signal = guarded_signal


_installed: _Forwarder | None = None


def forward_in_this_process(signals: Iterable[int] = FORWARDED) -> bool:
    """Install the forwarding handler in this (main-thread) process once; False if it already was."""
    global _installed
    if _installed is not None:
        return False
    _installed = _Forwarder(signals)
    _installed.install()
    return True


def in_slurm_job_step() -> bool:
    """True inside a step of a SLURM job (``srun``), not in its batch script."""
    return "SLURM_JOB_ID" in os.environ and os.environ.get("SLURM_STEP_ID", "batch") not in ("batch", "4294967294", "")
