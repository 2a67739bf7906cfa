"""Pre-emption signals without a cluster: endofm.jobsignals (the job step's forwarder) and
endofm.launch (SIGTERM to the launcher -> the workers checkpoint -> exit 75)."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TORCHELASTIC_ERROR_FILE": ""}

# a stand-in for the training: records the signals it gets, exits 75 on the first one
TRAINER = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    out = Path(sys.argv[1])
    got = []
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, lambda s, f: got.append(signal.Signals(s).name))
    if os.environ.get("RANK") is not None:
        import torch.distributed as dist
        dist.init_process_group("gloo")
        out = out.with_name(f"{out.name}.{dist.get_rank()}")
    Path(f"{out}.ready").touch()
    deadline = time.time() + 60
    while not got and time.time() < deadline:
        time.sleep(0.05)
    out.write_text(",".join(got))
    sys.exit(75 if got else 0)
    """
)

# a stand-in for the remote Snakemake of a job step: the forwarder, then (like Snakemake's scheduler)
# its own SIGTERM handler, then the rule's shell running the trainer
STEP = textwrap.dedent(
    """
    import signal, subprocess, sys
    from pathlib import Path
    from endofm import jobsignals
    jobsignals.forward_in_this_process()
    chained = Path(sys.argv[2])
    signal.signal(signal.SIGTERM, lambda s, f: chained.write_text("graceful"))
    rc = subprocess.call(["/bin/bash", "-c", f"set -eu; {sys.executable} {sys.argv[1]} {sys.argv[3]}; echo shell-done"])
    print("step rc", rc, flush=True)
    sys.exit(0 if rc == 0 else 1)
    """
)


def wait_for(path: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def run_step(tmp_path: Path, sig: int) -> tuple[subprocess.CompletedProcess, Path, Path]:
    (tmp_path / "trainer.py").write_text(TRAINER)
    (tmp_path / "step.py").write_text(STEP)
    out, chained = tmp_path / "trainer.out", tmp_path / "chained"
    cmd = [sys.executable, str(tmp_path / "step.py"), str(tmp_path / "trainer.py"), str(chained), str(out)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(Path(f"{out}.ready"))
    os.kill(proc.pid, sig)  # as proctrack/cgroup does: the step's main process only
    stdout, stderr = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr), out, chained


def test_usr1_to_the_step_reaches_the_training_and_spares_the_shell(tmp_path):
    proc, out, chained = run_step(tmp_path, signal.SIGUSR1)
    assert out.read_text() == "SIGUSR1"
    assert "step rc 75" in proc.stdout  # the shell (set -e) passed the training's 75 on, it was not killed
    assert "SIGUSR1 forwarded to 1 process(es)" in proc.stderr
    assert not chained.exists()


def test_sigterm_to_the_step_reaches_the_training_and_snakemakes_handler(tmp_path):
    proc, out, chained = run_step(tmp_path, signal.SIGTERM)
    assert out.read_text() == "SIGTERM" and "step rc 75" in proc.stdout
    assert chained.read_text() == "graceful"  # the handler installed after the forwarder still runs


def test_sigterm_to_the_launcher_makes_it_exit_75_after_its_workers_checkpoint(tmp_path):
    """Only the launcher is signalled (as `kill <pid>` or a scheduler signalling the main process):
    it passes SIGTERM on to its two workers, which "checkpoint" and exit 75, and exits 75 itself."""
    (tmp_path / "trainer.py").write_text(TRAINER)
    out = tmp_path / "w"
    cmd = [sys.executable, "-m", "endofm.launch", "--standalone", "--nproc-per-node=2", str(tmp_path / "trainer.py")]
    proc = subprocess.Popen([*cmd, str(out)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for rank in (0, 1):
        wait_for(tmp_path / f"w.{rank}.ready")
    os.kill(proc.pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stdout + stderr
    assert [(tmp_path / f"w.{rank}").read_text() for rank in (0, 1)] == ["SIGTERM", "SIGTERM"]
    assert "pre-empted" in stderr
