"""Benchmark draws as a workflow axis (``synthetic.draws``, ``finetune.draw_modes``): the run paths, the
experiment matrix, the data folders the rules make, the report's pooling over (draw, seed) pairs, the
per-draw gap table and the one-sided paired tests."""

import functools
import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats as sps
from test_workflow import SNAKEMAKE, make_workdir, snakemake, tiny_config

from endofm import paths
from endofm.config import ConfigError, load_yaml, merge, to_dict
from endofm.data.synthetic import SynthConfig
from endofm.report.collect import ReportError, collect_metrics, read_metrics_file
from endofm.report.stats import compare, paired_t_test, sign_flip_test
from endofm.report.tables import draw_gap_table, per_seed, summarise, table1
from endofm.settings import finetune_runs, load_workflow_config, robustness_runs
from endofm.tasks.finetune import RunSpec

ROOT = Path(__file__).resolve().parents[1]


def test_run_path_names_a_draw_other_than_the_main_one_last():
    assert paths.run_path("cvc12k", "endofm", "default", "clean", "frozen", 1) == (
        "cvc12k/endofm/default/clean/frozen/seed1"
    )
    assert paths.run_path("cvc12k", "endofm", "default", "clean", "frozen", 1, 0.25, 0.1, 2) == (
        "cvc12k/endofm/default/clean/frozen/seed1-pt10-labels25-draw2"
    )
    assert RunSpec("kumc", "scratch", "none", "clean", "frozen", 0, draw=3).path.endswith("/seed0-draw3")
    assert paths.benchmark_data("kumc", 0) == "kumc" and paths.benchmark_data("kumc", 2) == "kumc-draw2"
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="draw must be an integer >= 0"):
            paths.draw_tag(bad)


def test_a_draw_is_the_benchmark_generated_with_seed_plus_draw():
    cfg = SynthConfig(seed=5, draws=[0, 1, 2])
    drawn = cfg.for_draw(2)
    assert (drawn.seed, drawn.draws) == (7, [0])  # draws left out: adding draws changes no generator job
    assert cfg.for_draw(0).seed == 5
    with pytest.raises(ValueError, match="include 0"):
        SynthConfig(draws=[1, 2])
    with pytest.raises(ValueError, match="distinct"):
        SynthConfig(draws=[0, 1, 1])


def _config(**finetune) -> dict:
    return {
        "synthetic": {"draws": [0, 1, 2]},
        "finetune": {
            "methods": ["endofm", "scratch"],
            "seeds": [0, 1],
            "protocols": ["clean"],
            "modes": ["full", "frozen"],
            "label_fractions": [0.5, 1.0],
            "label_fraction_modes": ["frozen"],
            "label_fraction_methods": ["scratch"],
            "label_fraction_benchmarks": ["polypdiag"],
            "pretrain_fractions": [0.0, 1.0],
            "pretrain_fraction_benchmarks": ["cvc12k"],
            **finetune,
        },
        "evaluate": {"corruptions": {"motion_blur": [1]}, "modes": ["frozen"]},
    }


def test_runs_in_draw_modes_repeat_on_every_draw_and_the_others_run_on_draw_0():
    cfg = load_workflow_config(_config())
    runs = finetune_runs(cfg)
    # counted by hand, per draw: frozen 3 benchmarks x 2 methods x 2 seeds = 12, + scratch polypdiag at 0.5
    # labels (2 seeds) = 2, + endofm cvc12k from its initial weights (2 seeds) = 2; full 12 on draw 0 only
    frozen = [r for r in runs if r.mode == "frozen"]
    full = [r for r in runs if r.mode == "full"]
    assert len(full) == 12 and {r.draw for r in full} == {0}
    assert len(frozen) == 3 * 16
    assert {d: sum(r.draw == d for r in frozen) for d in (0, 1, 2)} == {0: 16, 1: 16, 2: 16}
    assert RunSpec("polypdiag", "scratch", "none", "clean", "frozen", 1, 0.5, draw=2) in runs
    assert RunSpec("cvc12k", "endofm", "default", "clean", "frozen", 0, pretrain_fraction=0.0, draw=1) in runs
    assert len({r.path for r in runs}) == len(runs)
    # the robustness read-out scores the main draw's runs only
    assert {r.draw for r in robustness_runs(cfg)} == {0} and len(robustness_runs(cfg)) == 12
    both = finetune_runs(load_workflow_config(_config(draw_modes=["full", "frozen"])))
    assert len(both) == 3 * (12 + 16)


def test_draws_need_the_built_in_corpus():
    data = {"origin": "real", "pretrain_sources": ["colonoscopic"]}
    with pytest.raises(ConfigError, match=r"synthetic.draws: \[0, 1\] needs data.origin synthetic"):
        load_workflow_config({"data": data, "synthetic": {"draws": [0, 1]}})
    real = load_workflow_config({"data": data})
    assert real.draws() == [0]


# ---------------------------------------------------------------------------------------------- report


def _record(bench, method, seed, draw, value, mode="frozen", **extra) -> dict:
    variant = "none" if method == "scratch" else "default"
    metric = {"polypdiag": "f1", "cvc12k": "dice", "kumc": "f1_paper"}[bench]
    return {
        "benchmark": bench,
        "method": method,
        "variant": variant,
        "protocol": "clean",
        "mode": mode,
        "seed": seed,
        "draw": draw,
        "metrics": {metric: value},
        **extra,
    }


def _write(root: Path, record: dict) -> Path:
    run = paths.run_path(*(record[k] for k in ("benchmark", "method", "variant", "protocol", "mode", "seed")),
                         draw=record.get("draw", 0))  # fmt: skip
    path = root / paths.METRICS / f"{run}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


#: CVC-12k Dice per (method, draw, seed): Endo-FM ahead on every draw, by different amounts.
VALUES = {
    ("endofm", 0): [0.50, 0.54],
    ("endofm", 1): [0.40, 0.42],
    ("scratch", 0): [0.30, 0.36],
    ("scratch", 1): [0.35, 0.33],
}


@pytest.fixture
def two_draws(tmp_path) -> list[Path]:
    return [
        _write(tmp_path, _record("cvc12k", method, seed, draw, v))
        for (method, draw), values in VALUES.items()
        for seed, v in enumerate(values)
    ]


def test_summary_pools_the_draws_and_seeds_of_a_cell(two_draws):
    long, records = collect_metrics(two_draws)
    assert {r["draw"] for r in records} == {0, 1}
    summary = summarise(long, n_expected=2)
    row = summary[(summary.method == "endofm") & (summary.metric == "dice")].iloc[0]
    values = VALUES[("endofm", 0)] + VALUES[("endofm", 1)]
    assert row["n"] == 4 and row["n_expected"] == 4  # 2 seeds x the cell's 2 draws
    assert row["mean"] == pytest.approx(np.mean(values)) and row["std"] == pytest.approx(np.std(values, ddof=1))
    assert row["seeds"] == "0;1;0@draw1;1@draw1"
    caption = table1(
        summary, paper={}, costs={}, reference="endofm", main_variant="default", synthetic=True, test="ttest",
        alpha=0.05, one_sided=True,
    ).caption  # fmt: skip
    assert "n = (draw, seed) pairs" in caption and "one-sided (endofm ahead) paired t-test" in caption
    assert "paired by draw and seed" in caption
    one_draw = table1(summarise(long[long["draw"] == 0]), paper={}, costs={}, reference="endofm",
                      main_variant="default", synthetic=True, test="ttest", alpha=0.05).caption  # fmt: skip
    assert "n = seeds" in one_draw and "two-sided paired t-test" in one_draw
    pairs = per_seed(long)[("cvc12k", "endofm", "default", "clean", "frozen", 1.0, "dice")]
    assert pairs == {(0, 0): 0.50, (0, 1): 0.54, (1, 0): 0.40, (1, 1): 0.42}


def test_draw_gap_table_by_hand(two_draws):
    long, _ = collect_metrics(two_draws)
    table = draw_gap_table(
        long, paper={}, reference="endofm", main_variant="default", test="ttest", alpha=0.05, one_sided=True
    )
    assert table is not None and table.columns[:4] == ["Read-out", "Method", "draw 0", "draw 1"]
    (_, lines), = table.blocks  # fmt: skip
    (line,) = lines
    # draw 0: 0.52 - 0.33 = +19.0; seed variances 0.0008 and 0.0018 -> 2 * sqrt(0.0013) = 7.2
    # draw 1: 0.41 - 0.34 = +7.0;  variances 0.0002 and 0.0002 -> 2 * sqrt(0.0002) = 2.8
    assert line[2] == "+19.0 (2σ 7.2)" and line[3] == "+7.0 (2σ 2.8)"
    assert line[4] == "+13.0 ± 8.5"  # mean of 19 and 7, sample std 8.49
    # one-sided paired t over the 4 (draw, seed) pairs: differences .20 .18 .05 .09
    d = np.array([0.20, 0.18, 0.05, 0.09])
    t = d.mean() / (d.std(ddof=1) / 2)
    p = sps.t.sf(t, df=3)
    assert line[5] == f"{p:.3g} (4)"


def test_gap_rows_add_the_threshold_free_score():
    from endofm.report.tables import _gap_metrics

    assert _gap_metrics("polypdiag") == [("f1", "PolypDiag F1"), ("auroc", "PolypDiag AUROC")]
    assert _gap_metrics("kumc") == [("f1_paper", "KUMC F1"), ("AP50", "KUMC AP50")]
    assert _gap_metrics("cvc12k") == [("dice", "CVC-12k Dice")]


def test_no_gap_table_on_one_draw(tmp_path):
    files = [_write(tmp_path, _record("cvc12k", m, s, 0, 0.1 * s + 0.2)) for m in ("endofm", "scratch") for s in (0, 1)]
    long, _ = collect_metrics(files)
    assert draw_gap_table(long, paper={}, reference="endofm", main_variant="default", test="ttest", alpha=0.05) is None


def test_a_metrics_file_whose_draw_differs_from_its_path_is_refused(tmp_path):
    path = _write(tmp_path, _record("kumc", "endofm", 0, 2, 0.4))
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "draw": 1}))
    with pytest.raises(ReportError, match="differs from its path"):
        read_metrics_file(path)
    path.write_text(json.dumps({**record, "draw": "2"}))
    with pytest.raises(ReportError, match="draw must be an integer >= 0"):
        read_metrics_file(path)


def test_one_sided_tests_by_hand():
    a, b = np.array([0.3, 0.2, 0.1]), np.array([0.0, 0.0, 0.0])  # a ahead: d = .3 .2 .1
    # sign flips: of the 8 patterns only (+,+,+) reaches mean 0.2; two-sided also (-,-,-)
    assert sign_flip_test(a, b, "greater") == pytest.approx(1 / 8)
    assert sign_flip_test(a, b) == pytest.approx(2 / 8)
    assert sign_flip_test(a, b, "less") == pytest.approx(1.0)
    t = 0.2 / (0.1 / math.sqrt(3))  # mean / (sample std / sqrt n)
    assert paired_t_test(a, b, "greater") == pytest.approx(sps.t.sf(t, df=2))
    assert paired_t_test(a, b) == pytest.approx(2 * sps.t.sf(t, df=2))
    pairs_a = {(0, 0): 0.3, (1, 0): 0.2, (2, 0): 0.1}
    pairs_b = {(0, 0): 0.0, (1, 0): 0.0, (2, 0): 0.0}
    assert compare(pairs_b, pairs_a, "permutation", 0.2, "less").p_value == pytest.approx(1 / 8)
    with pytest.raises(ValueError, match="unknown alternative"):
        compare(pairs_a, pairs_b, alternative="bigger")


# ---------------------------------------------------------------------------------------------- workflow


def test_the_workflow_generates_each_draw_and_runs_on_it(tmp_path):
    """A frozen Scratch run on draw 1 of the tiny PolypDiag: its data folders are the benchmark generated with
    seed 1 (byte for byte the main draw of a workflow whose seed is 1), and its metrics file says draw 1."""
    config = tiny_config(benchmarks=["polypdiag"])
    config["synthetic"]["draws"] = [0, 1]
    config["finetune"]["draw_modes"] = ["frozen"]
    work = make_workdir(tmp_path / "draws", config)
    run = "polypdiag/scratch/none/clean/frozen/seed0-draw1"
    snakemake(
        work, "--cores", "2", f"results/metrics/{run}.json", "resources/synthetic/benchmarks/polypdiag/manifest.csv"
    )
    record = json.loads((work / f"results/metrics/{run}.json").read_text())
    assert record["draw"] == 1 and record["seed"] == 0
    assert json.loads((work / f"results/finetune/{run}/run.json").read_text())["draw"] == 1

    seed1 = tiny_config(benchmarks=["polypdiag"])
    seed1["synthetic"]["seed"] = 1
    other = make_workdir(tmp_path / "seed1", seed1)
    snakemake(other, "--cores", "2", "resources/synthetic/benchmarks/polypdiag/manifest.csv")
    drawn = work / "resources/synthetic/benchmarks/polypdiag-draw1/manifest.csv"
    main = work / "resources/synthetic/benchmarks/polypdiag/manifest.csv"
    same = other / "resources/synthetic/benchmarks/polypdiag/manifest.csv"
    assert drawn.read_text() == same.read_text() and drawn.read_text() != main.read_text()
    raw = sorted(p.relative_to(work / "resources/synthetic/raw/polypdiag-draw1") for p in
                 (work / "resources/synthetic/raw/polypdiag-draw1").rglob("*") if p.is_file())  # fmt: skip
    assert raw and all(
        (work / "resources/synthetic/raw/polypdiag-draw1" / p).read_bytes()
        == (other / "resources/synthetic/raw/polypdiag" / p).read_bytes()
        for p in raw
    )


def test_evidence_config_plans_draws_steps_and_full_runs(tmp_path):
    """`make evidence`'s configs as the workflow resolves them: 3 draws of every benchmark, 1,200 pretraining
    steps, snapshots at 0, 120, 300 and 600 steps, and the job counts worked out by hand."""
    base = [str(SNAKEMAKE), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path)]
    configs = ["--configfile", str(ROOT / "config/config.yaml"), str(ROOT / "config/evidence.yaml")]
    out = subprocess.run(
        [*base, "all", "-n", "--quiet", "rules", *configs], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    counts = {p[0]: int(p[1]) for line in out.stdout.splitlines() if len(p := line.split()) == 2 and p[1].isdigit()}
    # per draw, frozen: 4 methods x 3 seeds = 12, + Endo-FM and Scratch at 25 % labels (6), + Endo-FM from 4
    # snapshots (12, PolypDiag and CVC-12k only); full: 12 on draw 0
    assert counts["finetune_polypdiag"] == counts["finetune_cvc12k"] == 3 * (12 + 6 + 12) + 12
    assert counts["finetune_kumc"] == 3 * (12 + 6) + 12
    assert counts["synthesize"] == 3 + 3 * 3 and counts.get("robustness_run", 0) == 0
    show = subprocess.run(
        [*base, "show_config", "--cores", "1", "--quiet", "all", *configs], capture_output=True, text=True, timeout=300
    )
    assert show.returncode == 0, show.stderr
    resolved = yaml.safe_load(show.stdout[show.stdout.index("data:") :])
    assert resolved["synthetic"]["draws"] == [0, 1, 2]
    assert resolved["pretrain"]["settings"]["epochs"] == 150  # x 8 steps: 1,200
    assert resolved["finetune"]["pretrain_fractions"] == [0.0, 0.1, 0.25, 0.5, 1.0]
    assert resolved["finetune"]["polypdiag"]["train"]["epochs"] == 20 and resolved["report"]["one_sided"] is True
    assert resolved["pretrain"]["settings"]["precision"] == "auto"  # fp32 on the CPU: the published run
    # `make evidence-bf16`: the same run with the pretrainings in bf16 and nothing else changed (merged as
    # Snakemake merges --configfile files, in-process: a second show_config costs ~10 s of the test budget)
    files = ["config/config.yaml", "config/evidence.yaml", "config/evidence_bf16.yaml"]
    resolved_bf16 = to_dict(load_workflow_config(functools.reduce(merge, (load_yaml(ROOT / f) for f in files), {})))
    assert resolved_bf16["pretrain"]["settings"].pop("precision") == "bf16"
    resolved["pretrain"]["settings"].pop("precision")
    assert resolved_bf16 == resolved


def test_gap_table_reads_metrics_of_pandas_frames_without_draw():
    long = pd.DataFrame(
        [
            {
                "benchmark": "cvc12k",
                "method": "endofm",
                "variant": "default",
                "protocol": "clean",
                "mode": "frozen",
                "label_fraction": 1.0,
                "seed": 0,
                "metric": "dice",
                "value": 0.5,
            }
        ]  # fmt: skip
    )
    assert draw_gap_table(long, paper={}, reference="endofm", main_variant="default", test="ttest", alpha=0.05) is None
    assert summarise(long)["seeds"].tolist() == ["0"]


def test_cli_finetune_refuses_a_draw_the_config_does_not_make(tmp_path):
    proc = subprocess.run(
        [str(SNAKEMAKE.with_name("endofm")), "finetune", "polypdiag", "--method", "scratch", "--draw", "3",
         "--config", str(ROOT / "tests/configs/tiny.yaml")],  # fmt: skip
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "endofm finetune: error: --draw 3: the config's benchmark draws are [0] (synthetic.draws)"
    )


def test_the_reports_example_frames_come_from_the_main_draw():
    """The report draws example frames from the benchmark index of the main draw, so it shows a run of that draw."""
    from types import SimpleNamespace

    from endofm.report.build import ReportConfig, _example_run

    records = [_record("cvc12k", "endofm", 0, 1, 0.5), _record("cvc12k", "endofm", 1, 0, 0.4)]
    records = [{**r, "label_fraction": 1.0} for r in records]
    chosen = _example_run(SimpleNamespace(records=records), ReportConfig(), "cvc12k")
    assert (chosen["draw"], chosen["seed"]) == (0, 1)
    assert _example_run(SimpleNamespace(records=records[:1]), ReportConfig(), "cvc12k") is None
