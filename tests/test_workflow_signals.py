"""A workflow's jobs end with it: Snakemake's SIGINT reaches them as SIGTERM, and a job whose Snakemake has
gone ends itself (endofm.jobsignals)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from endofm import jobsignals

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def _wait(predicate, timeout: float, step: float = 0.2) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def test_process_token_tells_a_gone_or_reused_pid_apart():
    me = jobsignals.process_token()
    assert me.startswith(f"{os.getpid()}:") and jobsignals.alive(me)
    pid = os.getpid()
    assert not jobsignals.alive(f"{pid}:1")  # same pid, another start time: a reused pid
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    token = jobsignals.process_token(child.pid)
    child.wait()
    assert not jobsignals.alive(token)


def test_a_job_ends_itself_once_its_workflow_has_gone():
    """A job of a killed Snakemake used to run on (and write its outputs after the run had ended)."""
    workflow = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    env = {**os.environ, jobsignals.WORKFLOW_PROCESS: jobsignals.process_token(workflow.pid)}
    env.pop("SLURM_JOB_ID", None)
    job = subprocess.Popen(
        [sys.executable, "-c", "import time; from endofm import jobsignals; "
         "assert jobsignals.end_with_workflow(interval=0.1) is not None; time.sleep(60)"],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(1.0)
        assert job.poll() is None  # runs while its workflow does
        workflow.kill()
        workflow.wait()
        assert job.wait(timeout=10) == -signal.SIGTERM
        assert f"the workflow's Snakemake (pid {workflow.pid}) has gone" in job.stderr.read()
    finally:
        for p in (workflow, job):
            p.kill()


def test_no_watch_outside_a_local_workflow_job(monkeypatch):
    monkeypatch.delenv(jobsignals.WORKFLOW_PROCESS, raising=False)
    assert jobsignals.end_with_workflow() is None
    monkeypatch.setenv(jobsignals.WORKFLOW_PROCESS, "1:0")
    monkeypatch.setenv("SLURM_JOB_ID", "7")  # scancel ends SLURM jobs
    assert jobsignals.end_with_workflow() is None


def _descendants_running(pid: int, needle: str) -> list[int]:
    found = []
    for child in jobsignals.descendants(pid):
        if jobsignals.process_name(child) in jobsignals.SHELLS:
            continue
        try:
            if needle in Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode():
                found.append(child)
        except OSError:
            pass
    return found


@pytest.mark.workflow
def test_sigint_to_snakemake_alone_ends_the_training_job(tmp_path):
    """`kill -INT <snakemake>` used to leave Snakemake waiting for a pretraining job that ran on: now the job
    gets SIGTERM, writes its checkpoint and stops, and Snakemake exits without the job's outputs."""
    config = yaml.safe_load((ROOT / "tests/configs/tiny.yaml").read_text())
    config["pretrain"]["settings"]["epochs"] = 1000  # runs far longer than the test waits
    (tmp_path / "config").mkdir()
    (tmp_path / "config/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    target = "results/pretrain/endofm/default/backbone.pt"
    cmd = [str(SNAKEMAKE), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "--cores", "1", target]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(jobsignals.WORKFLOW_PROCESS, None)
    smk = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        log = tmp_path / "results/logs/pretrain/endofm/default.log"
        assert _wait(lambda: log.is_file() and "epoch 1/" in log.read_text(), timeout=240), "pretraining never started"
        jobs = _descendants_running(smk.pid, "endofm.cli pretrain")
        assert len(jobs) == 1
        job = jobsignals.process_token(jobs[0])
        smk.send_signal(signal.SIGINT)
        out, _ = smk.communicate(timeout=120)
        assert smk.returncode != 0
        assert _wait(lambda: not jobsignals.alive(job), timeout=10)  # ended (a zombie counts as ended)
        assert re.search(r"endofm.jobsignals: SIGINT forwarded to \d+ process\(es\) below this one as SIGTERM", out)
        assert (
            "stopped by SIGTERM" in log.read_text()
            and (tmp_path / "results/pretrain/endofm/default/checkpoint.pt").is_file()
        )
        assert not (tmp_path / target).exists()
    finally:
        smk.kill()
