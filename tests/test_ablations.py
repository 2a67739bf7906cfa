"""Named ablation targets: `ablation_<name>` plans only that ablation's jobs, and a changed arm reruns
only its own jobs."""

import json
import re

import pytest
from test_workflow import make_workdir, snakemake, tiny_config


def planned_jobs(output: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) of every job in a dry run's output."""
    jobs = []
    for block in re.split(r"\n(?=rule \S+:|localrule \S+:)", output):
        head = re.match(r"(?:local)?rule (\S+):", block)
        if not head:
            continue
        found = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        wildcards = dict(kv.split("=", 1) for kv in found.group(1).split(", ")) if found else {}
        jobs.append((head.group(1), wildcards))
    return jobs


def training_jobs(output: str) -> set[tuple[str, str]]:
    """(rule, variant) of the pretraining, fine-tuning and evaluation jobs of a dry run."""
    rules = {"pretrain_config", "pretrain_model", "evaluate_run"}
    return {
        (rule, w.get("variant", ""))
        for rule, w in planned_jobs(output)
        if rule in rules or rule.startswith("finetune_")
    }


def test_an_ablation_target_plans_only_its_jobs(tmp_path):
    workdir = make_workdir(tmp_path, tiny_config())
    out = snakemake(workdir, "-n", "ablation_losses").stdout
    arms = ["losses-cv_only", "losses-dm_only", "default"]
    expected = {(rule, v) for v in arms for rule in ("pretrain_config", "pretrain_model", "finetune_polypdiag")}
    assert training_jobs(out) == expected | {("evaluate_run", v) for v in arms}
    jobs = planned_jobs(out)
    finetunes = [w for rule, w in jobs if rule.startswith("finetune_")]
    assert all(
        (w["method"], w["protocol"], w["mode"], w["seed"]) == ("endofm", "clean", "frozen", "0") for w in finetunes
    )
    assert not any(rule in ("index_cvc12k", "index_kumc") for rule, _ in jobs)  # only the benchmarks it names
    assert [w for rule, w in jobs if rule == "report_ablation"] == [{"ablation": "losses"}]  # and its table

    out = snakemake(workdir, "-n", "ablation_init").stdout
    arms = ["init-continued", "default"]  # continued starts from default's backbone, so default is planned too
    expected = {(rule, v) for v in arms for rule in ("pretrain_config", "pretrain_model", "finetune_polypdiag")}
    assert training_jobs(out) == expected | {("evaluate_run", v) for v in arms}


@pytest.mark.workflow
def test_changing_one_ablation_reruns_only_its_jobs(tmp_path):
    """`snakemake ablations` on the tiny config, then one arm's overlay changes: a dry run plans that
    arm's pretraining, fine-tuning and evaluation and nothing else."""
    workdir = make_workdir(tmp_path, tiny_config())
    snakemake(workdir, "--cores", "2", "ablations")
    record = json.loads(
        (workdir / "results/metrics/polypdiag/endofm/init-continued/clean/frozen/seed0.json").read_text()
    )
    assert record["variant"] == "init-continued" and record["label_fraction"] == 1.0
    table = (workdir / "results/report/ablation_losses.md").read_text()
    for arm in ("cv_only", "dm_only", "both"):  # one row per arm, labelled by its name
        assert re.search(rf"^\|\s*{arm}\b", table, re.M), table
    assert "Nothing to be done" in snakemake(workdir, "-n", "ablations").stdout

    changed = tiny_config()
    changed["ablations"]["losses"]["variants"]["cv_only"]["lr"] = 0.001
    out = snakemake(make_workdir(tmp_path, changed), "-n", "ablations").stdout
    rules = ("pretrain_config", "pretrain_model", "finetune_polypdiag", "evaluate_run")
    assert training_jobs(out) == {(rule, "losses-cv_only") for rule in rules}
    assert "Params have changed since last execution" in out
