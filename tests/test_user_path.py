"""The path a real user takes: every README command as written, each shipped config on its own, real data
arriving one source at a time. Commands run in a checkout-like folder whose `resources/raw/` holds
stand-ins for the real datasets in their official layouts (a few empty files each)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from test_workflow import ROOT, SNAKEMAKE

from endofm.cli import build_parser, main
from endofm.config import to_dict
from endofm.data.layouts import CVCLayout, KUMCLayout, PolypDiagLayout, frame_name
from endofm.data.sources import SOURCES, SVT_K400_FILE
from endofm.pretraining.endofm import SVT_CHECKPOINT
from endofm.settings import finetune_runs, load_workflow_config

#: The configs a user is given: each must resolve the same in the workflow and in the CLI.
SHIPPED_CONFIGS = ["config/config.yaml", "config/paper.yaml"]
#: What a checkout holds besides the package (which the venv imports).
CHECKOUT = ["Snakefile", "rules", "workflow_scripts", "config", "slurm", "profiles", "report", "envs"]
PAPER = yaml.safe_load((ROOT / "config/paper.yaml").read_text())


def readme_commands() -> list[str]:
    """Every `snakemake` and `endofm` command line in the README's bash blocks, without its comment."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and Path(shlex.split(line)[0]).name in ("snakemake", "endofm"):
                commands.append(line)
    return commands


def standin(raw: Path, name: str) -> Path:
    """A stand-in for source ``name`` under ``raw``: its official layout with a few empty files."""
    root = raw / name
    layout = SOURCES[name].layout
    files: list[Path] = []
    if layout == "videos":
        files = [root / "case1" / "video1.mp4", root / "video2.avi"]
    elif layout == "frames":
        files = [root / "video1" / frame_name(i) for i in range(2)]
    elif layout == "polypdiag":
        pd_ = PolypDiagLayout(root)
        files = [pd_.videos_dir / "a.mp4", pd_.split_file("train"), pd_.split_file("val")]
    elif layout == "cvc":
        cvc = CVCLayout(root)
        files = [cvc.image(1), cvc.mask(1)]
    elif layout == "kumc":
        kumc = KUMCLayout(root)
        files = [f(split, "v1", 1) for split in KUMCLayout.SPLITS for f in (kumc.image, kumc.annotation)]
    elif layout == "weights":
        files = [root / d.filename for d in SOURCES[name].downloads] or [root / f"{name}.pth"]
    for path in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    return root


def checkout(path: Path, sources: list[str]) -> Path:
    """A folder laid out as a clone of the repository (links to its files) with stand-ins for ``sources``."""
    path.mkdir(parents=True, exist_ok=True)
    for name in CHECKOUT:
        (path / name).symlink_to(ROOT / name)
    for name in sources:
        standin(path / PAPER["data"]["raw_dir"], name)
    return path


def run(cwd: Path, argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


def run_jobs(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`snakemake ARGS` that runs jobs. The job-rate limiter's 1-s period instead of profiles/default's 10 s:
    after its last job Snakemake otherwise waits out the limiter's pending timer (~10 s a call here)."""
    return run(cwd, [str(SNAKEMAKE), *args, "--max-jobs-per-timespan=1000/1s"])


def job_counts(output: str) -> dict[str, int]:
    table = output.split("Job stats:", 1)[1].split("total", 1)[0] if "Job stats:" in output else ""
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\S+)\s+(\d+)$", table, re.M)}


@pytest.fixture(scope="module")
def user_checkout(tmp_path_factory) -> Path:
    """A checkout with every real dataset of config/paper.yaml and SVT's weights stood in for."""
    data = PAPER["data"]
    path = checkout(
        tmp_path_factory.mktemp("user"), data["pretrain_sources"] + data["benchmarks"] + ["svt_k400", "clip_vitb16"]
    )
    assert (path / SVT_CHECKPOINT).is_file() and SVT_CHECKPOINT.endswith(SVT_K400_FILE)
    return path


def test_readme_commands_are_found():
    commands = readme_commands()
    assert len(commands) >= 12, commands
    assert any("--profile slurm" in c for c in commands) and any("config/paper.yaml" in c for c in commands)


SNAKEMAKE_COMMANDS = [c for c in readme_commands() if Path(shlex.split(c)[0]).name == "snakemake"]


@pytest.fixture(scope="module")
def planned(user_checkout) -> dict[str, subprocess.CompletedProcess]:
    """Each README `snakemake` command, verbatim plus --dry-run, run in the checkout (two at a time)."""
    argvs = {c: [str(SNAKEMAKE), *shlex.split(c)[1:], "--dry-run"] for c in SNAKEMAKE_COMMANDS}
    with ThreadPoolExecutor(2) as pool:
        return dict(zip(argvs, pool.map(lambda argv: run(user_checkout, argv), argvs.values()), strict=True))


@pytest.mark.parametrize("command", SNAKEMAKE_COMMANDS)
def test_readme_snakemake_command_plans(command, planned):
    """Each README `snakemake` command, verbatim plus --dry-run, parses and plans; with every dataset stood in
    for, nothing is planned as missing."""
    proc = planned[command]
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{command}\n{out[-3000:]}"
    counts = job_counts(out)
    assert "missing_raw" not in counts and "missing_weights" not in counts, (command, counts)
    # the README's table of what config/paper.yaml submits: pretrainings and fine-tunes (each evaluated)
    expected = {"all": (2, 144), "ablations": (12, 117)}.get(shlex.split(command)[1])
    if expected and "config/paper.yaml" in command:
        finetunes = sum(v for k, v in counts.items() if k.startswith("finetune_"))
        assert (counts["pretrain_model"], finetunes) == expected == (expected[0], counts["evaluate_run"]), counts


@pytest.mark.parametrize("command", [c for c in readme_commands() if Path(shlex.split(c)[0]).name == "endofm"])
def test_readme_endofm_command_parses(command, user_checkout, monkeypatch, capsys):
    """Each README `endofm` command parses; those that only read the config and registry run."""
    argv = shlex.split(command)[1:]
    args = build_parser().parse_args(argv)  # SystemExit (usage error) fails the test
    assert args.config is None or (ROOT / args.config).is_file(), f"{command}: no {args.config}"
    if args.command in ("sources", "config"):
        monkeypatch.chdir(user_checkout)
        assert main(argv) == 0, capsys.readouterr().err


@pytest.mark.parametrize("config", [None, *SHIPPED_CONFIGS])
def test_each_shipped_config_resolves_the_same_in_workflow_and_cli(config, user_checkout, monkeypatch, capsys):
    """`snakemake show_config --configfile=F` (the workflow's resolved settings) is `endofm config show
    --config F`, value for value and origin for origin; no --configfile reads config/config.yaml."""
    flag = [f"--configfile={config}"] if config else []
    proc = run_jobs(user_checkout, "show_config", "--cores", "1", "--quiet", *flag)
    assert proc.returncode == 0, proc.stderr[-2000:]
    monkeypatch.chdir(user_checkout)
    assert main(["config", "show", *(["--config", config] if config else [])]) == 0
    cli = capsys.readouterr().out
    assert proc.stdout == cli
    shown = yaml.safe_load(cli)
    file = config or "config/config.yaml"
    assert shown == yaml.safe_load(yaml.safe_dump(to_dict(load_workflow_config(ROOT / file))))
    assert f"# {file}:" in cli and "# default" in cli
    if config == "config/paper.yaml":
        check_papers_recipe(yaml.safe_load(proc.stdout))


def check_papers_recipe(shown: dict) -> None:
    """What the workflow resolves from config/paper.yaml alone: the paper's pretraining, not the demo's."""
    settings = shown["pretrain"]["settings"]
    assert settings["views"]["global_size"] == 224 and settings["views"]["local_size"] == 96
    assert settings["backbone"]["name"] == "vit_base_patch16"
    assert settings["lr"] == 5e-4 and settings["batch_size_per_gpu"] == 3  # × 4 GPUs × 3 / 256 at run time
    assert settings["momentum_teacher"] == 0.996
    assert settings["centering"] == "center" and settings["teacher_temp"] == 0.04
    assert settings["init"] == SVT_CHECKPOINT
    cfg = load_workflow_config(ROOT / "config/paper.yaml")
    assert cfg.finetune.label_fractions == [1.0] and cfg.data.origin == "real"
    assert cfg.finetune.polypdiag.crop_size == 224 and cfg.clips.crf != 0


def test_real_data_one_source_at_a_time(tmp_path):
    """No real data yet: the workflow still lists its targets and plans; a job that needs a missing folder
    fails with where to get it and a command that works; a benchmark that is there is indexed alone."""
    path = checkout(tmp_path / "user", ["cvc12k"])
    paper = ["--configfile=config/paper.yaml"]
    dry = [["--list-target-rules"], ["all", "--cores", "1", "--dry-run"], ["download_hyper_kvasir", "--dry-run"]]
    with ThreadPoolExecutor(2) as pool:
        listed, planned, download = pool.map(lambda args: run(path, [str(SNAKEMAKE), *args, *paper]), dry)
    assert listed.returncode == 0 and "download_hyper_kvasir" in listed.stdout and "download_svt_k400" in listed.stdout
    counts = job_counts(planned.stdout)
    missing = len(PAPER["data"]["pretrain_sources"]) + len(PAPER["data"]["benchmarks"]) - 1
    assert planned.returncode == 0 and counts["missing_raw"] == missing and counts["index_cvc12k"] == 1, planned.stdout
    assert counts["missing_weights"] == 2  # SVT's weights (Endo-FM's and VCL's init) and CLIP's (ST-Adapter's)
    assert download.returncode == 0 and job_counts(download.stdout) == {"download_hyper_kvasir": 1}

    proc = run_jobs(path, "index_polypdiag", "--cores", "1", *paper)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Data source 'polypdiag'" in out and "Expected layout:" in out and "Traceback" not in out
    hint = re.search(r"Then rerun: (.*)", out)[1]
    assert hint == "snakemake data --cores all --configfile=config/paper.yaml"
    assert not (path / "resources/raw/polypdiag").exists()
    log = (path / "results/logs/missing_raw/polypdiag.log").read_text()
    assert log.startswith("Data source 'polypdiag'")

    # the hint works: with the folder placed, the same command plans what it names
    standin(path / "resources/raw", "polypdiag")
    proc = run(path, [str(SNAKEMAKE), *shlex.split(hint)[1:], "--dry-run"])
    assert proc.returncode == 0 and job_counts(proc.stdout)["index_polypdiag"] == 1

    proc = run_jobs(path, SVT_CHECKPOINT, "--cores", "1", *paper)
    out = proc.stdout + proc.stderr
    assert "Fetch it with: snakemake download_svt_k400 --cores 1 --configfile=config/paper.yaml" in out


def test_released_weights_run_every_seed_protocol_and_mode():
    """config/paper.yaml's commented `official` entry, uncommented: endo_fm.pth is a method of the whole matrix."""
    config = yaml.safe_load(yaml.safe_dump(PAPER))
    path = "resources/raw/endo_fm/endo_fm.pth"
    config["finetune"]["checkpoints"] = {"official": {"path": path, "backbone": {"name": "vit_base_patch16"}}}
    config["finetune"]["methods"].append("official")
    runs = [r for r in finetune_runs(load_workflow_config(config)) if r.method == "official"]
    assert len(runs) == 3 * 2 * 2 * 3  # benchmarks × protocols × modes × seeds
    assert {(r.protocol, r.mode, r.seed) for r in runs} == {
        (p, m, s) for p in ("paper", "clean") for m in ("full", "frozen") for s in (0, 1, 2)
    }
    assert "#   official: {path: " + path in (ROOT / "config/paper.yaml").read_text()
