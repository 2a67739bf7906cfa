"""torchrun that reports a pre-emption: ``python -m endofm.launch [torchrun options] -m module [args]``.

The same options as ``torchrun`` (``torch.distributed.run``). When a worker exits with
:data:`~endofm.engine.PREEMPTED_EXIT_CODE` (75: it wrote its checkpoint after SIGTERM/SIGUSR1), this
launcher exits 75 too, where torchrun exits 1, so a scheduler (Snakemake's retries, SLURM requeue)
can tell a pre-empted job from a failed one and rerun it to resume. Any other worker failure exits
with that worker's code (1 for a signal). The launcher itself ignores SIGUSR1, which SLURM's
``--signal=USR1@<s>`` sends to every process of a job step and whose default action would kill
torchrun before its workers have saved.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Sequence

from endofm.engine import PREEMPTED_EXIT_CODE

log = logging.getLogger(__name__)


def exit_code(worker_codes: Sequence[int]) -> int:
    """The launcher's exit status for the exit codes of the failed workers: 75 if any was pre-empted,
    else the first positive code, else 1 (workers killed by signals report negative codes)."""
    if PREEMPTED_EXIT_CODE in worker_codes:
        return PREEMPTED_EXIT_CODE
    return next((c for c in worker_codes if c > 0), 1)


def main(argv: Sequence[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    if hasattr(signal, "SIGUSR1"):
        signal.signal(signal.SIGUSR1, lambda *_: log.info("SIGUSR1 received; the workers checkpoint and stop"))
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
