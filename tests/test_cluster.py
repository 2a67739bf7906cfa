"""The SLURM path: the shipped profile through the real executor plugin against stand-in SLURM
commands (tests/fake_slurm/), and the paper config's job counts on a cluster."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_workflow import ROOT, SNAKEMAKE, make_workdir, snakemake, tiny_config

from endofm.pretraining.endofm import SVT_CHECKPOINT
from endofm.settings import ablation_runs, finetune_runs, load_workflow_config

PAPER = yaml.safe_load((ROOT / "config/paper.yaml").read_text())
PROFILE = yaml.safe_load((ROOT / "slurm/profile.yaml").read_text())
GPU_RULES = ["pretrain_model", "pretrain_model_snapshots", "finetune_polypdiag", "finetune_cvc12k", "finetune_kumc"]
ACCOUNT = "endofm-test"  # what tests/fake_slurm/sacctmgr lists


def slurm_profile(tmp_path: Path, account: str = ACCOUNT, partition: str = "cpu") -> list[str]:
    """`--profile slurm` with its placeholders filled, as a user does once: a workflow profile (it
    replaces profiles/default, whose settings it repeats) with the default-resources filled in."""
    overlay = tmp_path / "filled_profile"
    overlay.mkdir(exist_ok=True)
    settings = yaml.safe_load((ROOT / "profiles/default/profile.yaml").read_text())
    settings["default-resources"] = dict(PROFILE["default-resources"], slurm_account=account, slurm_partition=partition)
    (overlay / "profile.yaml").write_text(yaml.safe_dump(settings))
    return ["--profile", str(ROOT / "slurm"), "--workflow-profile", str(overlay)]


def job_counts(output: str) -> dict[str, int]:
    """The "Job stats" table of a dry run as {rule: count}."""
    table = output.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\S+)\s+(\d+)$", table, re.M)}


@pytest.fixture
def paper_workdir(tmp_path):
    """A working directory with the paper config and an empty stand-in for every raw folder it reads
    (and the SVT checkpoint the init ablation starts from)."""
    workdir = make_workdir(tmp_path, PAPER)
    data = PAPER["data"]
    for name in data["pretrain_sources"] + data["benchmarks"]:
        (workdir / data["raw_dir"] / name).mkdir(parents=True)
    for weights in (SVT_CHECKPOINT, PAPER["pretrain"]["st_adapter"]["init"]):
        (workdir / weights).parent.mkdir(parents=True, exist_ok=True)
        (workdir / weights).touch()
    return workdir


@pytest.mark.workflow
def test_paper_config_job_counts_on_slurm(paper_workdir):
    """`snakemake --profile slurm --configfile config/paper.yaml all ablations`: one fine-tune per cell
    of the matrix (methods × benchmarks × protocols × modes × seeds) and of each ablation, one
    pretraining per variant; the ablations' arms that name `default` reuse the main run."""
    cfg = load_workflow_config(PAPER)
    ft, benches = PAPER["finetune"], PAPER["data"]["benchmarks"]
    main = finetune_runs(cfg)
    assert len(main) == len(ft["methods"]) * len(benches) * len(ft["protocols"]) * len(ft["modes"]) * 3 == 144
    ablation = {run for name in cfg.ablations for run in ablation_runs(cfg, name)}
    arms = [v for a in PAPER["ablations"].values() for v in a["variants"].values()]
    new = sum(not isinstance(v, str) for v in arms)
    # paper protocol, full, 3 seeds; ablation init also runs vcl and st_adapter on its two arms
    assert new == 8 and len(ablation) == (new + 1 + 2 * 2) * len(benches) * 3 == 117
    shared = ablation & set(main)
    assert len(shared) == 3 * len(benches) * 3  # endofm, vcl and st_adapter default/paper/full

    args = (*slurm_profile(paper_workdir), "--configfile", str(ROOT / "config/paper.yaml"), "-n")
    counts = job_counts(snakemake(paper_workdir, *args, "all", "ablations").stdout)
    # vcl: default and init-random; st_adapter adapts CLIP (no job) but pretrains its init-random arm
    assert counts["pretrain_model"] == new + 1 + 3 == counts["pretrain_config"]
    assert counts["extract_clips"] == len(PAPER["data"]["pretrain_sources"])
    assert {b: counts[f"finetune_{b}"] for b in benches} == {b: (144 + 117 - 27) // 3 for b in benches}
    assert counts["evaluate_run"] == 144 + 117 - 27


def fake_slurm_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    state = tmp_path / "slurm_state"
    state.mkdir()
    env = {
        **os.environ,
        "PATH": f"{ROOT / 'tests/fake_slurm'}:{SNAKEMAKE.parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "FAKE_SLURM_DIR": str(state),
        "OMP_NUM_THREADS": "1",
    }
    return env, state


@pytest.mark.workflow
def test_slurm_submissions_and_a_preempted_pretraining(tmp_path):
    """One pretraining (2 GPUs: torchrun with 2 processes, gloo on CPU here) and one fine-tune through
    the real SLURM executor: the sbatch lines carry the profile's resources, local rules stay local,
    and a pretraining pre-empted by SIGUSR1 exits 75, is resubmitted and resumes."""
    config = tiny_config(pretrain_sources=["synthetic_colonoscopy"], benchmarks=["polypdiag"])
    config["pretrain"]["gpus"] = 2
    config["pretrain"]["settings"].update(epochs=6, batch_size_per_gpu=1)  # 3 clips: 1 step per epoch
    config["finetune"].update(gpus=1, modes=["frozen"])
    config.pop("ablations", None)
    workdir = make_workdir(tmp_path / "wd", config)
    snakemake(workdir, "--cores", "2", "data")  # the data stage locally, to keep the test short

    env, state = fake_slurm_env(tmp_path)
    run = workdir / "results/pretrain/endofm/default"
    env.update(FAKE_SLURM_PREEMPT_RULE="pretrain_model", FAKE_SLURM_PREEMPT_AFTER=str(run / "checkpoint.pt"))
    target = "results/metrics/polypdiag/endofm/default/clean/frozen/seed0.json"
    cmd = [str(SNAKEMAKE), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir)]
    cmd += [*slurm_profile(tmp_path), "--slurm-init-seconds-before-status-checks=1", "--latency-wait=5"]
    proc = subprocess.run([*cmd, target], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    profile = PROFILE
    submissions = [json.loads(line) for line in (state / "sbatch.jsonl").read_text().splitlines()]
    by_rule = {}
    for sub in submissions:
        rule = next(a for a in sub["argv"] if a.startswith("rule_") or a.startswith("--comment=rule_"))
        by_rule.setdefault(rule.removeprefix("--comment=").split("_wildcards")[0], []).append(sub)
    assert set(by_rule) == {"rule_pretrain_model", "rule_finetune_polypdiag"}, by_rule.keys()  # the rest is local

    pretrain = by_rule["rule_pretrain_model"]
    assert len(pretrain) == 2  # pre-empted once, resubmitted once (profile retries: 1)
    line = " ".join(pretrain[0]["argv"])
    resources = profile["set-resources"]["pretrain_model"]
    assert "--gpus=2" in line and f"-p {resources['slurm_partition']}" in line and f"-A {ACCOUNT}" in line
    assert f"-t {resources['runtime']}" in line and f"--mem {resources['mem_mb']}" in line
    assert resources["slurm_extra"] in line and "--ntasks-per-gpu" not in line
    launched = (state / f"{pretrain[0]['jobid']}.out").read_text()
    assert "-m endofm.launch --standalone --nproc-per-node=2 -m endofm.cli pretrain" in launched
    assert (state / "states").read_text().splitlines()[0].endswith("|FAILED")
    assert (state / "preempted").read_text().startswith(pretrain[0]["jobid"])  # the stub signalled attempt 1
    log = (workdir / "results/logs/pretrain/endofm/default.log").read_text()  # attempt 2's
    assert "resuming from" in log

    (finetune,) = by_rule["rule_finetune_polypdiag"]
    line = " ".join(finetune["argv"])
    resources = profile["set-resources"]["finetune_polypdiag"]
    assert "--gpus=1" in line and f"-t {resources['runtime']}" in line and f"--mem {resources['mem_mb']}" in line
    assert f"-p {resources['slurm_partition']}" in line and resources["slurm_extra"] in line

    # the second attempt continued the first one's checkpoint and finished every epoch
    resumed = yaml.safe_load((run / "config.yaml").read_text())["run"]
    assert resumed["world_size"] == 2 and resumed["start_step"] > 0
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == list(range(6))
    record = json.loads((workdir / target).read_text())
    assert record["label_fraction"] == 1.0 and record["method"] == "endofm"
    shutil.rmtree(workdir / "resources", ignore_errors=True)


def test_profile_sends_every_gpu_rule_to_the_gpu_partition_with_the_signal():
    """Partition, runtime, memory and the pre-emption signal of each GPU rule; the CPU rules take the
    default partition (the placeholder a user fills); status by squeue (no accounting needed)."""
    resources = PROFILE["set-resources"]
    for rule in GPU_RULES:
        assert resources[rule]["slurm_partition"] == "gpu", rule
        assert resources[rule]["slurm_extra"] == "--signal=USR1@600", rule
        assert resources[rule]["runtime"] > 60 and resources[rule]["mem_mb"] >= 8000, rule
    assert "slurm_partition" not in resources["extract_clips"]
    assert (
        PROFILE["default-resources"]["slurm_account"] == PROFILE["default-resources"]["slurm_partition"] == "CHANGE_ME"
    )
    assert "cpus_per_task" not in PROFILE["default-resources"]
    assert PROFILE["slurm-status-command"] == "squeue" and PROFILE["retries"] >= 1


@pytest.mark.workflow
def test_unfilled_profile_stops_with_one_line(tmp_path):
    """`--profile slurm` before the account and partition are set: a dry run plans (it submits nothing);
    a real run stops before submitting any job, with one line naming them."""
    workdir = make_workdir(tmp_path, tiny_config())
    assert "synthesize" in snakemake(workdir, "--profile", str(ROOT / "slurm"), "-n", "data").stdout
    env, state = fake_slurm_env(tmp_path)
    cmd = [str(SNAKEMAKE), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir)]
    proc = subprocess.run([*cmd, "--profile", str(ROOT / "slurm"), "data"], capture_output=True, text=True, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    line = next(line for line in out.splitlines() if "CHANGE_ME" in line)
    assert "slurm_account" in line and "slurm_partition" in line and "slurm/profile.yaml" in line
    error = out[out.index("WorkflowError") :]  # after Snakemake's job table
    assert len(error.splitlines()) < 10, out
    assert not (state / "sbatch.jsonl").exists() and not (workdir / "results").exists()  # nothing submitted
    # filled in, the same dry run plans the data stage
    assert "synthesize" in snakemake(workdir, *slurm_profile(tmp_path), "-n", "data").stdout
