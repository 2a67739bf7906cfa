"""The Snakemake workflow run as a user runs it: the CLI in a subprocess, in a fresh working directory."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
TINY = yaml.safe_load((ROOT / "tests/configs/tiny.yaml").read_text())


def make_workdir(tmp_path: Path, config: dict) -> Path:
    """A working directory with its own config/config.yaml, as `snakemake --directory` expects."""
    (tmp_path / "config").mkdir(parents=True, exist_ok=True)
    (tmp_path / "config/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return tmp_path


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [str(SNAKEMAKE), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir), *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def seen_in_browser(index: Path) -> None:
    """The report in headless Chromium at 1,280 px, as tests/test_report_browser.py checks its own: Table 1 and
    the page do not scroll sideways, every image loaded, every in-page link resolves, the synthetic-data
    banner shows. Without Chromium this part is left out (test_report_browser.py then says why it skips),
    unless ENDOFM_REQUIRE_CHROMIUM=1 (CI)."""
    from test_report_browser import PROBE, VIEWPORT, Browser, chromium_binary, overflowing

    binary = chromium_binary()
    if binary is None:
        assert os.environ.get("ENDOFM_REQUIRE_CHROMIUM") != "1", "no Chromium (ENDOFM_REQUIRE_CHROMIUM=1)"
        return
    browser = Browser(binary)
    try:
        browser.open(index, *VIEWPORT)
        probe = browser.evaluate(PROBE)
    finally:
        browser.close()
    assert probe["page"]["scrollWidth"] <= probe["page"]["clientWidth"], probe["page"]
    assert not overflowing(probe), overflowing(probe)
    assert probe["images"] and all(i["complete"] and i["naturalWidth"] > 0 for i in probe["images"]), probe["images"]
    assert probe["anchors"] and all(a["found"] for a in probe["anchors"]), probe["anchors"]
    assert probe["banner"] and probe["banner"]["height"] > 0 and probe["banner"]["visibility"] == "visible"


def tiny_config(**data_overrides) -> dict:
    config = yaml.safe_load(yaml.safe_dump(TINY))
    config["data"].update(data_overrides)
    return config


def test_dry_run_plans_the_data_stage(tmp_path):
    out = snakemake(make_workdir(tmp_path, tiny_config()), "-n", "data").stdout
    expected = [("synthesize", 6), ("extract_clips", 3), ("index_polypdiag", 1), ("index_cvc12k", 1), ("index_kumc", 1)]
    for rule, count in expected:
        assert any(line.split() == [rule, str(count)] for line in out.splitlines()), (rule, out)


def test_misspelt_key_fails_at_start_naming_it(tmp_path):
    """One line with the file and line, the dotted key and the nearest valid key; no schema dump."""
    config = tiny_config()
    config["clips"]["clip_lenght"] = 8
    workdir = make_workdir(tmp_path, config)
    line = (workdir / "config/config.yaml").read_text().splitlines().index("  clip_lenght: 8") + 1
    proc = snakemake(workdir, "-n", "data", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"config/config.yaml:{line}: config.clips: unknown key 'clip_lenght' (did you mean 'clip_length'?)" in out
    assert len(out.splitlines()) < 10 and "additionalProperties" not in out


def test_dry_run_plans_every_method(tmp_path):
    """All four methods: one pretraining job for each pretrained one, and methods × benchmarks × protocols ×
    modes × seeds fine-tuning runs, each evaluated."""
    config = tiny_config()
    config["finetune"].update(methods=["endofm", "scratch", "vcl", "st_adapter"], protocols=["paper", "clean"])
    out = snakemake(make_workdir(tmp_path, config), "-n", "--forceall", "all").stdout
    counts = {
        line.split()[0]: int(line.split()[1])
        for line in out.splitlines()
        if len(line.split()) == 2 and line.split()[1].isdigit()
    }
    runs = 4 * 2 * 2 * 1  # methods × protocols × modes × seeds, per benchmark
    assert counts["pretrain_config"] == counts["pretrain_model"] == 3, out
    assert all(counts[f"finetune_{b}"] == runs for b in ("polypdiag", "cvc12k", "kumc")), out
    assert counts["evaluate_run"] == 3 * runs, out
    for method in ("endofm", "vcl", "st_adapter"):
        assert f"results/pretrain/{method}/default/backbone.pt" in out, method
    assert "results/pretrain/scratch" not in out
    assert "results/finetune/kumc/st_adapter/default/paper/frozen/seed0/model.pt" in out


def _job_counts(out: str) -> dict[str, int]:
    return {
        line.split()[0]: int(line.split()[1])
        for line in out.splitlines()
        if len(line.split()) == 2 and line.split()[1].isdigit()
    }


def test_dry_run_plans_the_pretraining_steps_axis(tmp_path):
    """finetune.pretrain_fractions [0, 0.5, 1]: Endo-FM's pretraining job declares its two snapshots, and the
    frozen PolypDiag and CVC-12k runs from them (one seed) start from those files; nothing else changes."""
    config = tiny_config()
    config["finetune"].update(methods=["endofm", "scratch"], pretrain_fractions=[0.0, 0.5, 1.0])
    out = snakemake(make_workdir(tmp_path, config), "-n", "--forceall", "all").stdout
    counts = _job_counts(out)
    runs = 2 * 2  # methods × modes
    assert counts["pretrain_model_snapshots"] == 1 and "pretrain_model" not in counts, out
    assert counts["finetune_polypdiag"] == counts["finetune_cvc12k"] == runs + 2, out
    assert counts["finetune_kumc"] == runs and counts["evaluate_run"] == 3 * runs + 4, out
    snapshots = "results/pretrain/endofm/default/snapshots"
    assert f"{snapshots}/backbone_pt0.pt, {snapshots}/backbone_pt50.pt" in out
    for bench, tag in (("polypdiag", "pt0"), ("cvc12k", "pt50")):
        job = out.split(f"results/finetune/{bench}/endofm/default/clean/frozen/seed0-{tag}/model.pt")[0]
        inputs = job.rsplit("input:", 1)[1].split("output:")[0]
        assert inputs.strip().endswith(f"{snapshots}/backbone_{tag}.pt"), bench
    assert "scratch/none/clean/frozen/seed0-pt" not in out and "full/seed0-pt" not in out
    config["finetune"]["pretrain_fractions"] = []
    counts = _job_counts(snakemake(make_workdir(tmp_path, config), "-n", "--forceall", "all").stdout)
    assert counts["pretrain_model"] == 1 and "pretrain_model_snapshots" not in counts
    assert counts["finetune_polypdiag"] == runs


def test_typed_check_fails_at_start(tmp_path):
    proc = snakemake(make_workdir(tmp_path, tiny_config(pretrain_sources=["sun_seg"])), "-n", "data", check=False)
    assert proc.returncode != 0
    assert "'sun_seg' is a real source but data.origin is 'synthetic'" in proc.stdout + proc.stderr


@pytest.mark.workflow
def test_whole_workflow_end_to_end(tmp_path):
    """`snakemake all` on the tiny config: data stage, pretraining, then every fine-tuning run and its
    evaluation; a rerun has nothing to do, and a changed pretraining setting reruns pretraining and
    the runs that start from it, not the scratch runs."""
    workdir = make_workdir(tmp_path, tiny_config())
    snakemake(workdir, "--cores", "2", "all")
    data = TINY["data"]
    for source in data["pretrain_sources"]:
        manifest = pd.read_csv(workdir / data["clips_dir"] / source / "clips.csv")
        assert len(manifest) >= 1 and set(manifest["source"]) == {source}
        assert (manifest["frames"] >= 1).all()
        assert all((workdir / data["clips_dir"] / source / p).is_file() for p in manifest["path"])
        assert min(manifest["width"].min(), manifest["height"].min()) == TINY["clips"]["short_side"]
        assert (workdir / f"results/logs/extract_clips/{source}.log").is_file()
    for bench in data["benchmarks"]:
        assert len(pd.read_csv(workdir / data["benchmarks_dir"] / bench / "manifest.csv")) > 0
        assert (workdir / f"results/logs/index/{bench}.log").is_file()
    assert (workdir / data["benchmarks_dir"] / "kumc/coco_val.json").is_file()

    run = workdir / "results/pretrain/endofm/default"
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["epoch"].tolist() == list(range(TINY["pretrain"]["settings"]["epochs"]))
    assert metrics["loss"].notna().all()
    assert (run / "checkpoint.pt").is_file() and (workdir / "results/logs/pretrain/endofm/default.log").is_file()
    from endofm.features import load_pretrained_backbone

    model = load_pretrained_backbone(run / "backbone.pt", "vit_micro_patch8")
    assert model.config.embed_dim == 32

    import json

    ft = TINY["finetune"]
    variants = {"endofm": "default", "scratch": "none", "vcl": "default", "st_adapter": "default"}
    runs = [
        (bench, method, variants[method], protocol, mode)
        for bench in data["benchmarks"]
        for method in ft["methods"]
        for protocol in ft["protocols"]
        for mode in ft["modes"]
    ]
    assert len(runs) == 6 * len(ft["methods"])
    for method in ft["methods"]:
        if method != "scratch":
            record = json.loads((workdir / f"results/pretrain/{method}/default/run.json").read_text())
            assert record["method"] == method and record["trainable_parameters"] > 0
            assert (workdir / f"results/benchmarks/pretrain/{method}/default.tsv").is_file()
    predictions = {"polypdiag": "predictions.csv", "cvc12k": "masks.npz", "kumc": "detections.json"}
    headline = {"polypdiag": "f1", "cvc12k": "dice", "kumc": "f1_paper"}
    for bench, method, variant, protocol, mode in runs:
        path = f"{bench}/{method}/{variant}/{protocol}/{mode}/seed0"
        for name in ("model.pt", "run.json", predictions[bench]):
            assert (workdir / "results/finetune" / path / name).is_file(), (path, name)
        assert (workdir / f"results/logs/finetune/{path}.log").is_file()
        record = json.loads((workdir / f"results/metrics/{path}.json").read_text())
        assert (record["benchmark"], record["method"], record["protocol"], record["mode"]) == (
            bench, method, protocol, mode,
        )  # fmt: skip
        assert record["data"] == "synthetic" and 0.0 <= record["metrics"][headline[bench]] <= 1.0
        assert record["splits"]["select_is_test"] == (protocol == "paper")

    # the report closes `all`: Table 1 cells come from the metrics files, the page is self-contained
    report = workdir / "results/report"
    table = pd.read_csv(report / "tables.csv")
    for bench, method, variant, protocol, mode in runs:
        value = json.loads(
            (workdir / f"results/metrics/{bench}/{method}/{variant}/{protocol}/{mode}/seed0.json").read_text()
        )
        row = table[(table.benchmark == bench) & (table.method == method) & (table.protocol == protocol)
                    & (table["mode"] == mode) & (table.metric == headline[bench])]  # fmt: skip
        assert len(row) == 1 and row.iloc[0]["n"] == 1
        assert row.iloc[0]["mean"] == pytest.approx(value["metrics"][headline[bench]])
    md = (report / "tables.md").read_text()
    assert "## Table 1" in md and "(n=1 of 1)" not in md and "(n=1)" in md
    header = next(line for line in md.splitlines() if line.startswith("| Method |"))
    assert header.startswith("| Method | Start | Pretraining cost |")  # each method's start beside its cost
    endofm_row = next(line for line in md.splitlines() if line.startswith("| Endo-FM"))
    assert endofm_row.split("|")[2].strip() == "random"  # the tiny config's init
    assert r"\toprule" in (report / "tables.tex").read_text()
    page = (report / "index.html").read_text()
    assert 'id="synthetic-banner"' in page and "https://" not in page and "http://" not in page
    figures = {p.name for p in (report / "figures").glob("*.png")}
    assert {"pretraining_curves.png", "seed_bars.png", "finetuning_curves.png", "cvc12k_examples.png",
            "kumc_examples.png"} <= figures, figures  # fmt: skip
    assert page.count("data:image/png;base64,") == len(figures)
    seen_in_browser(report / "index.html")

    rerun = snakemake(workdir, "--cores", "2", "all")
    assert "Nothing to be done" in rerun.stdout + rerun.stderr
    snakemake(workdir, "--report", str(workdir / "snakemake_report.html"))
    assert "tables.csv" in (workdir / "snakemake_report.html").read_text()

    # A failed rerun keeps the last good result (Snakemake used to delete a failed job's outputs first): a
    # re-evaluation of bad predictions keeps the metrics file, a report of a bad metrics file keeps the report.
    run = "polypdiag/scratch/none/clean/full/seed0"
    metrics_file, predictions = (
        workdir / f"results/metrics/{run}.json",
        workdir / f"results/finetune/{run}/predictions.csv",
    )
    kept = {p: p.read_bytes() for p in (metrics_file, *(report / n for n in ("tables.md", "tables.csv", "index.html")))}
    good_predictions = predictions.read_bytes()
    pd.read_csv(predictions, dtype={"sample_id": str}).assign(prob_1=7.5).to_csv(predictions, index=False)
    failed = snakemake(workdir, "--cores", "1", "all", "--forcerun", f"results/metrics/{run}.json", check=False)
    assert failed.returncode != 0 and "probabilities must be numbers in [0, 1]" in failed.stdout + failed.stderr
    assert {p: p.read_bytes() for p in kept} == kept
    record = json.loads(metrics_file.read_text())
    record["metrics"]["f1"] = 7.5
    metrics_file.write_text(json.dumps(record))
    failed = snakemake(workdir, "--cores", "1", "report_tables", "report_html", check=False)
    assert failed.returncode != 0 and "scores are fractions in [0, 1]" in failed.stdout + failed.stderr
    assert {p: p.read_bytes() for p in kept if p != metrics_file} == {
        p: b for p, b in kept.items() if p != metrics_file
    }
    assert len(list((report / "figures").glob("*.png"))) == len(figures)
    metrics_file.write_bytes(kept[metrics_file])
    predictions.write_bytes(good_predictions)

    changed = tiny_config()
    changed["pretrain"]["settings"]["lr"] = 0.001
    plan = snakemake(make_workdir(tmp_path, changed), "-n", "all").stdout
    counts = {
        line.split()[0]: int(line.split()[1])
        for line in plan.splitlines()
        if len(line.split()) == 2 and line.split()[1].isdigit()
    }
    assert {"pretrain_config", "pretrain_model"} <= counts.keys(), plan
    assert not counts.keys() & {"synthesize", "extract_clips"}, plan
    # only the runs that start from a pretrained backbone (full and frozen; every pretrained method takes
    # the budget of pretrain.settings), not the scratch ones
    pretrained = len(ft["methods"]) - 1
    assert counts["pretrain_model"] == pretrained, plan
    assert [counts.get(f"finetune_{b}") for b in data["benchmarks"]] == [2 * pretrained] * 3, plan


@pytest.fixture
def tiny_video_archive(tmp_path):
    """A zip laid out like an open video source: one top-level folder holding two short mp4s."""
    import hashlib
    import zipfile

    import numpy as np

    from endofm.data.video import write_video

    folder = tmp_path / "archive_src"
    for i, n in enumerate((20, 40)):
        frames = np.full((n, 32, 48, 3), 40 * (i + 1), dtype=np.uint8)
        frames[:, :, : (i + 1) * 8] = 200
        write_video(folder / f"videos/v{i}.mp4", frames, fps=30)
    archive = tmp_path / "mirror/hyper-kvasir-videos.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(folder.rglob("*.mp4")):
            zf.write(f, f.relative_to(folder).as_posix())
    return archive, hashlib.sha256(archive.read_bytes()).hexdigest()


def real_config(sources: list[str], benchmarks: list[str], **data) -> dict:
    config = tiny_config(
        origin="real",
        raw_dir="resources/raw",
        clips_dir="resources/clips",
        benchmarks_dir="resources/benchmarks",
        pretrain_sources=sources,
        benchmarks=benchmarks,
        **data,
    )
    del config["synthetic"]
    del config["ablations"]  # they name synthetic benchmarks
    return config


def test_missing_gated_source_says_where_to_get_it(tmp_path):
    workdir = make_workdir(tmp_path, real_config(["sun_seg"], []))
    proc = snakemake(workdir, "--cores", "1", "data", check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "resources/raw/sun_seg" in output and "SUN" in output
    assert not (workdir / "resources/raw/sun_seg").exists()


@pytest.mark.workflow
def test_download_target_then_data_stage(tmp_path, http_server, tiny_video_archive):
    """An open source fetched from a loopback mirror by its explicit target, then cut into clips."""
    archive, digest = tiny_video_archive
    url = http_server.url_for(archive)
    overrides = {"hyper_kvasir": [{"url": url, "filename": archive.name, "sha256": digest}]}
    workdir = make_workdir(tmp_path / "wd", real_config(["hyper_kvasir"], [], download_overrides=overrides))
    proc = snakemake(workdir, "--cores", "1", "data", check=False)
    assert proc.returncode != 0, "the data target must not download by itself"
    snakemake(workdir, "--cores", "1", "download_hyper_kvasir")
    snakemake(workdir, "--cores", "1", "data")
    manifest = pd.read_csv(workdir / "resources/clips/hyper_kvasir/clips.csv")
    assert len(manifest) >= 2 and set(manifest["source"]) == {"hyper_kvasir"}

    bad = {"hyper_kvasir": [{"url": url, "filename": archive.name, "sha256": "0" * 64}]}
    workdir2 = make_workdir(tmp_path / "wd2", real_config(["hyper_kvasir"], [], download_overrides=bad))
    proc = snakemake(workdir2, "--cores", "1", "download_hyper_kvasir", check=False)
    assert proc.returncode != 0
    assert "sha256" in (proc.stdout + proc.stderr).lower()
    assert not (workdir2 / "resources/raw/hyper_kvasir").exists()
    leftovers = [p for p in (workdir2 / "resources/downloads").rglob("*") if p.is_file()]
    assert leftovers == []
    shutil.rmtree(workdir2)


def test_slurm_profile_plans_the_workflow(tmp_path):
    """The shipped profile parses and schedules every job through the SLURM executor (dry run, no sbatch)."""
    proc = snakemake(make_workdir(tmp_path, tiny_config()), "--profile", str(ROOT / "slurm"), "-n", "all")
    out = proc.stdout + proc.stderr
    assert "pretrain_model" in out and "extract_clips" in out and "finetune_kumc" in out


def test_paths_with_spaces_and_non_ascii_letters_are_quoted(tmp_path):
    """``data.clips_dir: "my data ü/clips"`` used to pass the data stage and then break the pretraining's
    shell command ("sp: clip manifest not found"): every path in a shell command is quoted."""
    import shlex

    config = tiny_config(clips_dir="my data ü/clips", raw_dir="raw ü/x y", benchmarks_dir="bench marks")
    plan = snakemake(make_workdir(tmp_path / "a dir ü", config), "-n", "-p", "--forceall", "pretrain").stdout
    commands = [line.strip() for line in plan.splitlines() if "-m endofm.cli pretrain" in line]
    assert commands, plan
    for command in commands:
        words = shlex.split(command.split(";", 2)[-1].split(">")[0])
        clips = words[words.index("--clips") + 1 : words.index("--out")]
        assert clips and all(c.startswith("my data ü/clips/") and c.endswith("/clips.csv") for c in clips), words
        assert words[words.index("--config") + 1].endswith("pretrain.yaml")
