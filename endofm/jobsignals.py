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
import time
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
    """The installed handler; ``chained`` holds the handler each signal had (or was later given); ``send_as``
    maps a received signal to the one passed on (default: the same)."""

    def __init__(self, signals: Iterable[int], send_as: dict[int, int] | None = None) -> None:
        self.signals = tuple(signals)
        self.send_as = dict(send_as or {})
        self.chained: dict[int, object] = {}
        self.original_signal: Callable = signal.signal

    def handle(self, sig: int, frame) -> None:
        out = self.send_as.get(sig, sig)
        sent = forward(out)
        name, out_name = signal.Signals(sig).name, signal.Signals(out).name
        how = f" as {out_name}" if out != sig else ""
        print(
            f"endofm.jobsignals: {name} forwarded to {len(sent)} process(es) below this one{how}: {sent}",
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


def forward_in_this_process(signals: Iterable[int] = FORWARDED, send_as: dict[int, int] | None = None) -> bool:
    """Install the forwarding handler in this (main-thread) process once; False if it already was.
    ``send_as``: the signal passed on for a received one, where it differs."""
    global _installed
    if _installed is not None:
        return False
    _installed = _Forwarder(signals, send_as)
    _installed.install()
    return True


def in_slurm_job_step() -> bool:
    """True inside a step of a SLURM job (``srun``), not in its batch script."""
    return "SLURM_JOB_ID" in os.environ and os.environ.get("SLURM_STEP_ID", "batch") not in ("batch", "4294967294", "")


# ----------------------------------------------------------------------------------------------------
# Local runs: a job ends when its workflow's Snakemake has gone.
#
# Snakemake's local executor does not pass a SIGINT or SIGTERM sent to Snakemake alone (``kill -INT``, a
# supervisor, a closed ssh session) on to its jobs: it waits for them ("Terminating processes on user
# request"), and once a second signal or a kill ends it, a training job runs on and writes its outputs
# after the run has ended. So the main Snakemake process (rules/cluster.smk) passes SIGINT and SIGTERM
# on to its jobs as SIGTERM (:func:`end_jobs_on_interrupt`): a training job checkpoints and exits 75, as on
# pre-emption. And it records itself in WORKFLOW_PROCESS: every job (:func:`endofm.logs.job_log`, ``endofm``
# commands) watches it and sends itself SIGTERM once it has gone (killed, or exited on a second Ctrl-C).

#: Environment variable naming the workflow's main Snakemake process, as ``<pid>:<start time>``.
WORKFLOW_PROCESS = "ENDOFM_WORKFLOW_PROCESS"
#: Seconds between two checks of the workflow's process.
WATCH_SECONDS = 2.0


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_token(pid: int | None = None) -> str:
    """``<pid>:<start time>`` of process ``pid`` (default: this one): the start time tells a reused pid apart."""
    pid = os.getpid() if pid is None else pid
    fields = _stat_fields(pid)
    return f"{pid}:{fields[19] if fields else ''}"


def alive(token: str) -> bool:
    """Whether the process a :func:`process_token` names still runs (a zombie has ended)."""
    pid_text, _, start = token.partition(":")
    try:
        pid = int(pid_text)
    except ValueError:
        return True  # not a token we wrote: do not act on it
    fields = _stat_fields(pid)
    if fields is None:
        if Path("/proc/self/stat").exists():
            return False
        try:  # no /proc (macOS): the pid alone
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    return fields[0] != "Z" and (not start or fields[19] == start)


def end_with_workflow(interval: float = WATCH_SECONDS, sig: int = signal.SIGTERM):
    """In a job of a local workflow run: a daemon thread that sends this process ``sig`` once the workflow's
    Snakemake (:data:`WORKFLOW_PROCESS`) has gone. Returns the thread, or None outside a local workflow job
    (no variable, inside a SLURM job, where scancel ends jobs, or in the workflow's own process)."""
    import threading

    token = os.environ.get(WORKFLOW_PROCESS, "")
    if not token or "SLURM_JOB_ID" in os.environ or token.partition(":")[0] == str(os.getpid()):
        return None

    def watch() -> None:
        while alive(token):
            time.sleep(interval)
        print(
            f"endofm.jobsignals: the workflow's Snakemake (pid {token.partition(':')[0]}) has gone; ending this job "
            f"with {signal.Signals(sig).name}",
            file=sys.stderr,
            flush=True,
        )
        os.kill(os.getpid(), sig)

    thread = threading.Thread(target=watch, name="endofm-end-with-workflow", daemon=True)
    thread.start()
    return thread


def end_jobs_on_interrupt() -> bool:
    """In the workflow's main Snakemake: pass SIGINT and SIGTERM on to every job below it as SIGTERM, then let
    Snakemake handle them (it waits for its jobs, which now end at once), and record this process in
    :data:`WORKFLOW_PROCESS` for the jobs' :func:`end_with_workflow`. False if a forwarder was installed."""
    os.environ[WORKFLOW_PROCESS] = process_token()
    return forward_in_this_process((signal.SIGINT, signal.SIGTERM), send_as={signal.SIGINT: signal.SIGTERM})
