"""endofm.launch: torchrun whose exit status says that a worker was pre-empted."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from endofm.launch import exit_code

ROOT = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent(
    """
    import os, sys, time
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    dist.barrier()
    code = int(os.environ["EXIT_CODES"].split(",")[rank])
    if code:
        sys.exit(code)
    time.sleep(float(os.environ.get("SURVIVOR_SLEEP", "0")))
    """
)


def test_exit_code_prefers_preemption():
    assert exit_code([75]) == 75
    assert exit_code([-15, 75]) == 75
    assert exit_code([3, -15]) == 3
    assert exit_code([-9]) == 1


def launch(tmp_path: Path, codes: str, sleep: float) -> subprocess.CompletedProcess:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EXIT_CODES": codes, "SURVIVOR_SLEEP": str(sleep)}
    env.update(OMP_NUM_THREADS="1", TORCHELASTIC_ERROR_FILE="")
    cmd = [sys.executable, "-m", "endofm.launch", "--standalone", "--nproc-per-node=2", str(script)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)


@pytest.mark.parametrize("codes, sleep, expected", [("0,75", 60, 75), ("0,0", 0, 0)])
def test_a_preempted_worker_makes_the_launcher_exit_75(tmp_path, codes, sleep, expected):
    """Two gloo CPU workers; rank 1 exits 75 while rank 0 is still running: torchrun alone exits 1."""
    proc = launch(tmp_path, codes, sleep)
    assert proc.returncode == expected, proc.stdout + proc.stderr
    if expected == 75:
        assert "pre-empted" in proc.stderr
