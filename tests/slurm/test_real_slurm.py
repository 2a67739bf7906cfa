"""The SLURM path on a real one-node SLURM 22.05 (tests/slurm/start_cluster.sh: proctrack/cgroup, no
accounting, partitions cpu and gpu, two placeholder GPUs): a small workflow through the project's
slurm/ profile and Snakemake's SLURM executor plugin, against the same workflow run locally.

`make test-slurm` runs it (as root: it installs and starts the daemons); plain `pytest` skips it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_workflow import ROOT, SNAKEMAKE, make_workdir, tiny_config

HERE = Path(__file__).resolve().parent
PROFILE = yaml.safe_load((ROOT / "slurm/profile.yaml").read_text())
GPU_RULES = ["pretrain_model", "finetune_polypdiag", "finetune_cvc12k", "finetune_kumc"]
CPU_RULES = ["synthesize", "extract_clips", "index"]  # synthesize_* / index_* by prefix
ACCOUNT = "endofm-ci"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.environ.get("ENDOFM_REAL_SLURM") != "1":
        pytest.skip("real SLURM: run by `make test-slurm` (ENDOFM_REAL_SLURM=1, as root)")
    state = tmp_path_factory.mktemp("slurm_state")
    start = subprocess.run([str(HERE / "start_cluster.sh"), str(state)], capture_output=True, text=True, timeout=600)
    if start.returncode != 0:
        subprocess.run([str(HERE / "stop_cluster.sh"), str(state)], capture_output=True, timeout=120)
        pytest.skip(f"SLURM daemons could not start: {(start.stderr or start.stdout).strip()[-500:]}")
    yield state
    subprocess.run([str(HERE / "stop_cluster.sh"), str(state)], capture_output=True, timeout=120)


def small_config() -> dict:
    """Every rule kind that goes through SLURM (synthesize, extract_clips, index, pretrain_model,
    the three fine-tunes) at the smallest size: one pretraining source, two pretrainings (variant
    default: pre-empted by SIGUSR1; warm2: scancelled), torchrun with 2 processes on the 2 GPUs."""
    config = tiny_config(pretrain_sources=["synthetic_colonoscopy"])
    config["pretrain"]["gpus"] = 2
    # 3 clips, 1 per process: 1 step per epoch; a checkpoint at every epoch end
    config["pretrain"]["settings"].update(epochs=60, batch_size_per_gpu=1)
    config["pretrain"]["variants"] = {"default": {}, "warm2": {"warmup_epochs": 2}}
    config["finetune"].update(methods=["endofm"], variants=["default", "warm2"], modes=["frozen"], gpus=1)
    config.pop("ablations", None)
    return config


def overlay_profile(tmp_path: Path) -> Path:
    """What a user edits once: the account and partition placeholders, filled (a workflow profile, so
    the repo's slurm/ profile is used as it is; it also keeps profiles/default's settings). The node
    has 2 CPUs: every job's threads fit it."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    settings = yaml.safe_load((ROOT / "profiles/default/profile.yaml").read_text())
    defaults = dict(PROFILE["default-resources"], slurm_account=ACCOUNT, slurm_partition="cpu")
    threads = {rule: 1 for rule in PROFILE["set-threads"]} | {"pretrain_model": 2}
    settings.update({"default-resources": defaults, "set-threads": threads})
    (overlay / "profile.yaml").write_text(yaml.safe_dump(settings))
    return overlay


class JobRecorder(threading.Thread):
    """`scontrol show job -o` every 2 s while the workflow runs: the last record of every job."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(daemon=True)
        self.workdir = str(workdir)
        self.jobs: dict[str, dict[str, str]] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.poll()
            self.done.wait(2)
        self.poll()

    def poll(self) -> None:
        out = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            fields = dict(re.findall(r"(\w[\w/:]*)=(\S*)", line))
            if "JobId" in fields and fields.get("WorkDir") == self.workdir:  # this run's jobs only
                self.jobs[fields["JobId"]] = fields


def wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the workflow ended before {path} appeared"
        assert time.time() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.5)


def preempt_both_pretrainings(workdir: Path, proc: subprocess.Popen, recorder: JobRecorder) -> dict[str, str]:
    """The first pretraining job to run gets SIGUSR1 as SLURM's --signal sends it (to the job's steps,
    no B:; `scancel --signal` takes the same path), the second is scancelled (SIGTERM, then SIGKILL
    KillWait later), each once its first checkpoint is written. They run one after the other (2 GPUs
    each). Returns {variant: how it was stopped}."""
    how = ["USR1", "cancel"]
    signalled: dict[str, str] = {}
    deadline = time.time() + 600
    while len(signalled) < len(how):
        assert proc.poll() is None, f"the workflow ended before both pretrainings were stopped: {signalled}"
        assert time.time() < deadline, f"no pretraining to stop in 600 s: {signalled}"
        recorder.poll()
        for jobid, job in list(recorder.jobs.items()):
            variant = job.get("Comment", "").partition("rule_pretrain_model_wildcards_endofm_")[2]
            if not variant or variant in signalled or job.get("JobState") != "RUNNING":
                continue
            if (workdir / f"results/pretrain/endofm/{variant}/checkpoint.pt").exists():
                signalled[variant] = how[len(signalled)]
                args = ["--signal=USR1", jobid] if signalled[variant] == "USR1" else [jobid]
                subprocess.run(["scancel", *args], check=True)
        time.sleep(0.2)
    return signalled


def snakemake_cmd(workdir: Path, *args: str) -> list[str]:
    return [str(SNAKEMAKE), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir), *args]


@pytest.mark.workflow
def test_small_workflow_on_a_real_slurm(cluster, tmp_path):
    config = small_config()
    target = "evaluate"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    timings = {}

    # the same workflow locally, in the background while SLURM runs (it is mostly waiting)
    local_dir = make_workdir(tmp_path / "local", config)
    t0 = time.time()
    local = subprocess.Popen(
        snakemake_cmd(local_dir, "--cores", "2", target),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )

    workdir = make_workdir(tmp_path / "slurm", config)
    cmd = snakemake_cmd(workdir, "--profile", str(ROOT / "slurm"), "--workflow-profile", str(overlay_profile(tmp_path)))
    cmd += ["--slurm-init-seconds-before-status-checks=2", "--latency-wait=5", "--verbose", target]
    log_path = tmp_path / "slurm_run.log"
    recorder = JobRecorder(workdir)
    recorder.start()
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
        try:
            signalled = preempt_both_pretrainings(workdir, proc, recorder)
            rc = proc.wait(timeout=900)
        finally:
            if proc.poll() is None:
                proc.kill()
            recorder.done.set()
            recorder.join()
    timings["slurm_s"] = round(time.time() - t0)
    out = log_path.read_text()
    assert rc == 0, out[-6000:]
    local_out = local.communicate(timeout=900)[0]
    timings["local_s"] = round(time.time() - t0)
    assert local.returncode == 0, local_out[-4000:]
    print(f"timings (from the start of both runs): {timings}")

    # every job went in with the resources the profile promises
    sbatch_lines = [line.strip() for line in out.splitlines() if line.strip().startswith("sbatch call:")]
    by_rule: dict[str, list[dict[str, str]]] = {}
    for job in recorder.jobs.values():
        rule = re.match(r"rule_(\w+?)_wildcards", job["Comment"] + "_wildcards")[1]
        by_rule.setdefault(rule, []).append(job)
    assert {r.split("_")[0] for r in by_rule} == {"synthesize", "extract", "index", "pretrain", "finetune"}, (
        by_rule.keys()
    )
    print("jobs per rule:", {rule: len(jobs) for rule, jobs in sorted(by_rule.items())})
    for rule, jobs in by_rule.items():
        resources = PROFILE["default-resources"] | PROFILE["set-resources"].get(rule, {})
        partition = resources["slurm_partition"] if rule in GPU_RULES else "cpu"
        gpus = config["pretrain"]["gpus"] if rule == "pretrain_model" else 1 if rule in GPU_RULES else 0
        for job in jobs:
            assert job["Partition"] == partition and job["Account"] == ACCOUNT, (rule, job)
            assert job["TimeLimit"] == time_limit(resources["runtime"]), (rule, job)
            assert job["MinMemoryNode"] == mem(resources["mem_mb"]), (rule, job)
            assert job.get("TresPerJob", "") == (f"gres:gpu:{gpus}" if gpus else ""), (rule, job)
        lines = [line for line in sbatch_lines if re.search(rf"--comment rule_{rule}(_wildcards\S*)? ", line)]
        assert lines, (rule, sbatch_lines[:3])
        if rule in GPU_RULES:
            assert all(resources["slurm_extra"] in line and f"--gpus={gpus}" in line for line in lines), lines
    print("sbatch lines:", *[sbatch_lines[i] for i in (0, -1)], sep="\n  ")

    # the pre-empted pretraining and the cancelled one were resubmitted and resumed at their checkpoint
    for variant, stop in signalled.items():
        run = workdir / f"results/pretrain/endofm/{variant}"
        jobs = [j for j in by_rule["pretrain_model"] if j["Comment"].endswith(f"endofm_{variant}")]
        first_state = "FAILED" if stop == "USR1" else "CANCELLED"
        assert sorted(j["JobState"] for j in jobs) == sorted([first_state, "COMPLETED"]), (variant, jobs)
        logs = sorted((workdir / "results/logs/pretrain/endofm").glob(f"{variant}.log.*"))
        assert len(logs) == 2, logs  # one per attempt; <variant>.log links to the second
        first, second = (p.read_text() for p in logs)
        sig = "SIGUSR1" if stop == "USR1" else "SIGTERM"
        assert f"stopped by {sig}" in first and "checkpoint.pt written" in first, first[-2000:]
        step = re.search(r"resuming from \S+ \(epoch (\d+), step (\d+)\)", second)
        assert step, second[-2000:]
        resumed = yaml.safe_load((run / "config.yaml").read_text())["run"]
        assert resumed["start_step"] == int(step[2]) > 0 and resumed["world_size"] == 2
        assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == list(range(60))
        stopped = re.search(r"stopped by \w+ at epoch (\d+), step (\d+)", first)
        print(f"{variant} ({stop}): {stopped[0]}; the retry resumed at epoch {step[1]}, step {step[2]}")
    jobsteps = out + "".join(p.read_text() for p in (workdir / ".snakemake/slurm_logs").rglob("*.log"))
    print("forwarded:", sorted(set(re.findall(r"endofm.jobsignals: \w+ forwarded to \d+ process", jobsteps))))

    # the same results as the local run (up to timings), the same files, nothing half-written left
    metrics = sorted(p.relative_to(workdir) for p in (workdir / "results/metrics").rglob("*.json"))
    assert len(metrics) == 6
    differing = [str(p) for p in metrics if untimed(workdir / p) != untimed(local_dir / p)]
    assert not differing, differing
    assert result_files(workdir) == result_files(local_dir)
    empty = [p for p in (workdir / "results").rglob("*") if p.is_file() and p.stat().st_size == 0]
    assert all(p.is_relative_to(workdir / "results/logs") for p in empty), empty  # only logs of silent rules


def untimed(path: Path):
    """A metrics JSON without its wall-clock fields (`*_seconds`)."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if not k.endswith("seconds")}
        return [strip(v) for v in value] if isinstance(value, list) else value

    return strip(json.loads(path.read_text()))


def result_files(workdir: Path) -> set[str]:
    """The files under results/, per-attempt pretraining logs as one name."""
    files = {str(p.relative_to(workdir)) for p in (workdir / "results").rglob("*") if p.is_file()}
    return {re.sub(r"\.log\.\d{8}T\d{6}Z\.\w+$", ".log.<attempt>", f) for f in files}


def time_limit(minutes: int) -> str:
    """`scontrol`'s TimeLimit of a runtime in minutes: [D-]HH:MM:SS."""
    days, rest = divmod(int(minutes), 24 * 60)
    text = f"{rest // 60:02d}:{rest % 60:02d}:00"
    return f"{days}-{text}" if days else text


def mem(mb: int) -> str:
    """`scontrol`'s MinMemoryNode of a --mem in MB: 4000M, 16000M (G when a whole number of GiB)."""
    return f"{mb // 1024}G" if mb % 1024 == 0 else f"{mb}M"
