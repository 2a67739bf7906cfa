"""torchrun that reports a pre-emption: ``python -m endofm.launch [torchrun options] -m module [args]``.

The same options as ``torchrun`` (``torch.distributed.run``). When a worker exits with
:data:`~endofm.engine.PREEMPTED_EXIT_CODE` (75: it wrote its checkpoint after SIGTERM/SIGUSR1), this
launcher exits 75 too, where torchrun exits 1, so a scheduler (Snakemake's retries, SLURM requeue)
can tell a pre-empted job from a failed one and rerun it to resume. Any other worker failure exits
with that worker's code (1 for a signal).

SIGUSR1 and SIGTERM to the launcher (SLURM's ``--signal=USR1@<s>``, ``scancel``, pre-emption, or
``kill``) are passed on to its workers (and their children, whose data-loading processes ignore them),
and the launcher keeps waiting: the workers write their checkpoint and exit 75, and so does the
launcher. torchrun's own SIGTERM handler, which would SIGTERM the workers and exit 1 without waiting
for their exit codes, is left out (torchrun's ``--signals-to-handle``). A worker that receives the
signal twice (SLURM signalled it too) is unaffected.

Layer: entry points (docs/architecture.md). May import: every layer below; nothing in the package imports it.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Sequence

from endofm.engine import PREEMPTED_EXIT_CODE
from endofm.jobsignals import forward

log = logging.getLogger(__name__)


def exit_code(worker_codes: Sequence[int]) -> int:
    """The launcher's exit status for the exit codes of the failed workers: 75 if any was pre-empted,
    else the first positive code, else 1 (workers killed by signals report negative codes)."""
    if PREEMPTED_EXIT_CODE in worker_codes:
        return PREEMPTED_EXIT_CODE
    return next((c for c in worker_codes if c > 0), 1)


PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def _pass_on(sig: int, frame) -> None:
    sent = forward(sig)
    print(
        f"endofm.launch: {signal.Signals(sig).name} passed on to {len(sent)} worker process(es);"
        " waiting for their checkpoint",
        file=sys.stderr,
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    # torchrun keeps its handlers for the other signals (its SIGTERM one would stop the workers unsaved)
    names = {sig.name for sig in PREEMPTION_SIGNALS}
    args.signals_to_handle = ",".join(s for s in args.signals_to_handle.split(",") if s.strip() not in names)
    for sig in PREEMPTION_SIGNALS:
        signal.signal(sig, _pass_on)
    try:
        run(args)
    except ChildFailedError as exc:
        codes = [failure.exitcode for _, failure in sorted(exc.failures.items())]
        code = exit_code(codes)
        what = "pre-empted (checkpoint written; rerun to resume)" if code == PREEMPTED_EXIT_CODE else "failed"
        print(f"endofm.launch: worker exit codes {codes}: {what}", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
