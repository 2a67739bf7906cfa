"""The report stage from fabricated metrics files (no training): tables, statistics, errors, HTML."""

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from endofm.cli import main
from endofm.report import ReportConfig, ReportError, ReportInputs, build_ablation_table, build_report
from endofm.report.collect import read_metrics_file
from endofm.report.stats import compare, paired_t_test, sign_flip_test
from endofm.report.tables import DASH, fmt_seeds
from endofm.tasks.benchmarks import BENCHMARKS

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
PAPER = ROOT / "config/paper_results.yaml"
METRICS = {
    "polypdiag": lambda r: {"f1": r.uniform(0.5, 0.9), "auroc": r.uniform(0.5, 1.0), "accuracy": 0.6, "n": 16},
    "cvc12k": lambda r: {"dice": r.uniform(0.1, 0.6), "frame_dice": r.uniform(0, 1), "frame_iou": r.uniform(0, 1)},
    "kumc": lambda r: {"f1_paper": r.uniform(0.2, 0.8), "f1_iou": r.uniform(0, 1), "AP": float("nan"), "AP50": 0.1},
}


def write_run(root, bench, method, variant, protocol, mode, seed, metrics, **extra):
    path = root / f"results/metrics/{bench}/{method}/{variant}/{protocol}/{mode}/seed{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": bench, "method": method, "variant": variant, "protocol": protocol, "mode": mode,
        "seed": seed, "data": "synthetic", "test_split": "test", "metrics": metrics, "config_hash": "abc",
        "versions": {"torch": "x"}, "device": "cpu", "wall_seconds": 1.0, **extra,
    }  # fmt: skip
    path.write_text(json.dumps(record))
    return path


@pytest.fixture
def fabricated(tmp_path):
    """3 benchmarks × (endofm/default, scratch/none) × (paper, clean) × (full, frozen) × 3 seeds; scratch
    lacks seed 2 on CVC clean/full."""
    rng = np.random.default_rng(0)
    paths = []
    for bench, make in METRICS.items():
        for method, variant in (("endofm", "default"), ("scratch", "none")):
            for protocol in ("paper", "clean"):
                for mode in ("full", "frozen"):
                    for seed in (0, 1, 2):
                        if (bench, method, protocol, mode, seed) == ("cvc12k", "scratch", "clean", "full", 2):
                            continue
                        paths.append(write_run(tmp_path, bench, method, variant, protocol, mode, seed, make(rng)))
    return tmp_path, paths


def report(root, paths, **kw):
    inputs = ReportInputs(metrics=[str(p) for p in paths], paper_results=str(PAPER), timings_dir=str(root / "nope"))
    return build_report(inputs, root / "results/report", ReportConfig(), n_seeds=3, synthetic=True, **kw)


def cell_of(md, block, row, column):
    """The text of ``row``'s ``column`` cell in the Table 1 block titled ``block``."""
    section = md.split("## Table 1")[1].split("## ")[0]
    part = section.split(f"**{block}**")[1].split("**")[0]
    lines = [line for line in part.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == row:
            return cells[header.index(column)]
    raise AssertionError(f"no row {row!r}")


def test_table1_cells_are_mean_and_std_of_their_files(fabricated):
    root, paths = fabricated
    report(root, paths, parts=("tables",))
    md = (root / "results/report/tables.md").read_text()
    csv = pd.read_csv(root / "results/report/tables.csv")
    for bench, (label, metric, metric_label) in ((b, e.headline) for b, e in BENCHMARKS.items()):
        for method, variant, row in (("endofm", "default", "Endo-FM"), ("scratch", "none", "Scratch (random init)")):
            for protocol in ("paper", "clean"):
                for mode, mode_label in (("full", "full fine-tuning"), ("frozen", "frozen backbone")):
                    files = sorted(
                        (root / f"results/metrics/{bench}/{method}/{variant}/{protocol}/{mode}").glob("*.json")
                    )
                    values = [json.loads(f.read_text())["metrics"][metric] for f in files]
                    n = len(values)
                    mean = sum(values) / n
                    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
                    text = cell_of(md, f"{protocol} protocol, {mode_label}", row, f"{label} {metric_label}")
                    assert text.startswith(f"{mean * 100:.1f} ± {std * 100:.1f} (n={n}")
                    sel = csv[(csv.benchmark == bench) & (csv.method == method) & (csv.protocol == protocol)
                              & (csv["mode"] == mode) & (csv.metric == metric)]  # fmt: skip
                    assert len(sel) == 1
                    assert sel.iloc[0]["n"] == n and sel.iloc[0]["mean"] == pytest.approx(mean)
                    assert sel.iloc[0]["std"] == pytest.approx(std)
        assert cell_of(md, "paper protocol, full fine-tuning", "Endo-FM", "paper (real data)†") in {
            "90.7 ± 0.4", "73.9 ± 1.2", "84.1 ± 1.3",
        }  # fmt: skip


def test_fmt_seeds_formats_raw_seed_values_as_report_cells():
    # mean 0.6, sample std sqrt(2 * 0.1**2 / 1) = 0.1414
    assert fmt_seeds([0.5, 0.7]) == "60.0 ± 14.1 (n=2)"
    assert fmt_seeds([0.25]) == "25.0 (n=1)"
    assert fmt_seeds([]) == DASH


def test_tables_csv_has_one_row_per_cell_and_metric(fabricated):
    root, paths = fabricated
    report(root, paths, parts=("tables",))
    csv = pd.read_csv(root / "results/report/tables.csv")
    keys = ["benchmark", "method", "variant", "protocol", "mode", "label_fraction", "metric"]
    assert not csv.duplicated(keys).any()
    # 3 benchmarks × 2 methods × 2 protocols × 2 modes; metrics per benchmark without the count "n"
    per_bench = {"polypdiag": 3, "cvc12k": 3, "kumc": 4}
    assert len(csv) == sum(8 * k for k in per_bench.values())
    assert set(csv["label_fraction"]) == {1.0} and {"n", "mean", "std", "p_value", "significant"} <= set(csv.columns)
    ap = csv[csv.metric == "AP"]
    assert (ap["n"] == 0).all() and ap["mean"].isna().all()  # NaN values are not averaged into a number


def test_fewer_seeds_are_shown_with_their_n(fabricated):
    root, paths = fabricated
    report(root, paths, parts=("tables",))
    md = (root / "results/report/tables.md").read_text()
    cell = cell_of(md, "clean protocol, full fine-tuning", "Scratch (random init)", "CVC-12k Dice")
    assert "(n=2 of 3)" in cell
    assert "(n=3)" in cell_of(md, "clean protocol, full fine-tuning", "Endo-FM", "CVC-12k Dice")
    csv = pd.read_csv(root / "results/report/tables.csv")
    row = csv[(csv.benchmark == "cvc12k") & (csv.method == "scratch") & (csv.protocol == "clean")
              & (csv["mode"] == "full") & (csv.metric == "dice")].iloc[0]  # fmt: skip
    assert (row["n"], row["n_expected"], row["seeds"]) == (2, 3, "0;1")


def test_missing_or_malformed_metrics_file_names_it(fabricated, tmp_path):
    root, paths = fabricated
    bad = paths[3]
    bad.write_text('{"benchmark": "kumc", "metrics": ')
    with pytest.raises(ReportError, match=re.escape(str(bad))) as err:
        report(root, paths, parts=("tables",))
    assert "\n" not in str(err.value)
    bad.write_text(json.dumps({"benchmark": "kumc", "method": "x", "variant": "v", "protocol": "p", "mode": "full",
                               "metrics": {"f1_paper": 0.5}}))  # fmt: skip
    with pytest.raises(ReportError, match=re.escape(str(bad)) + ".*missing seed"):
        read_metrics_file(bad)
    gone = root / "results/metrics/kumc/absent/seed0.json"
    with pytest.raises(ReportError, match=re.escape(str(gone)) + ": missing metrics file"):
        report(root, [*paths[:3], gone], parts=("tables",))
    assert not (root / "results/report/tables.md").exists()  # nothing written on failure


def test_paired_tests_on_known_cases():
    # differences 0.1, 0.2, 0.3: t = mean / (sd / sqrt(n)) = 0.2 / (0.1 / sqrt(3)) = 3.4641, df 2 -> p = 0.07418
    a, b = np.array([0.6, 0.7, 0.8]), np.array([0.5, 0.5, 0.5])
    assert paired_t_test(a, b) == pytest.approx(0.074180, abs=1e-5)
    # all six differences positive: only the all-plus and all-minus sign patterns reach |mean| -> 2 / 64
    six = np.array([0.1, 0.2, 0.15, 0.3, 0.25, 0.05])
    assert sign_flip_test(six, np.zeros(6)) == pytest.approx(2 / 64)
    assert sign_flip_test(a, b) == pytest.approx(2 / 8)  # n = 3 can never reach 0.05
    clear = compare({0: 0.90, 1: 0.91, 2: 0.92, 5: 0.1}, {0: 0.50, 1: 0.52, 2: 0.49})  # seed 5 has no pair
    assert clear.n_pairs == 3 and clear.significant and clear.p_value < 0.01
    noisy = compare({0: 0.6, 1: 0.4, 2: 0.55}, {0: 0.5, 1: 0.5, 2: 0.5})
    assert not noisy.significant and noisy.p_value > 0.5
    assert not compare({0: 0.9}, {0: 0.1}).significant  # one pair: no test


def test_significance_marks_only_the_clear_difference(tmp_path):
    paths = []
    for seed, (ours, theirs) in enumerate([(0.90, 0.50), (0.91, 0.52), (0.92, 0.49)]):
        paths.append(write_run(tmp_path, "polypdiag", "endofm", "default", "clean", "full", seed, {"f1": ours}))
        paths.append(write_run(tmp_path, "polypdiag", "scratch", "none", "clean", "full", seed, {"f1": theirs}))
    for seed, (ours, theirs) in enumerate([(0.6, 0.5), (0.4, 0.5), (0.55, 0.5)]):
        paths.append(write_run(tmp_path, "polypdiag", "endofm", "default", "clean", "frozen", seed, {"f1": ours}))
        paths.append(write_run(tmp_path, "polypdiag", "scratch", "none", "clean", "frozen", seed, {"f1": theirs}))
    report(tmp_path, paths, parts=("tables",))
    md = (tmp_path / "results/report/tables.md").read_text()
    full = cell_of(md, "clean protocol, full fine-tuning", "Scratch (random init)", "PolypDiag F1")
    frozen = cell_of(md, "clean protocol, frozen backbone", "Scratch (random init)", "PolypDiag F1")
    assert full.endswith("*") and not frozen.endswith("*")
    assert not cell_of(md, "clean protocol, full fine-tuning", "Endo-FM", "PolypDiag F1").endswith("*")
    assert "paired t-test" in md and "p < 0.05" in md


def test_html_is_self_contained_with_banner_and_tex_has_booktabs(fabricated):
    root, paths = fabricated
    written = report(root, paths)
    out = root / "results/report"
    page = (out / "index.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "http://" not in page and "https://" not in page
    assert 'id="synthetic-banner"' in page and "prove the machinery, not clinical accuracy" in page
    assert page.count("data:image/png;base64,") >= 1 and (out / "figures/seed_bars.png").is_file()
    assert out / "index.html" in written
    tex = (out / "tables.tex").read_text()
    assert tex.count(r"\begin{tabular}") == tex.count(r"\toprule") == tex.count(r"\bottomrule") >= 3
    assert r"\midrule" in tex and r"$\pm$" in tex and "p $<$ 0.05" in tex


def test_real_data_has_no_banner(fabricated):
    root, paths = fabricated
    for path in paths:
        path.write_text(json.dumps(json.loads(path.read_text()) | {"data": "real"}))
    inputs = ReportInputs(metrics=[str(p) for p in paths], paper_results=str(PAPER))
    build_report(inputs, root / "out", n_seeds=3, synthetic=False)
    page = (root / "out/index.html").read_text()
    assert "synthetic-banner" not in page and "paper†" in page


def test_ablation_and_label_fraction_tables(fabricated):
    root, paths = fabricated
    extra = []
    for seed in (0, 1, 2):
        extra.append(write_run(root, "kumc", "endofm", "cv_only", "paper", "full", seed, {"f1_paper": 0.1 * seed}))
        for fraction in (0.25, 0.5):
            p = root / f"results/metrics/kumc/endofm/default/paper/full/seed{seed}-labels{round(100 * fraction)}.json"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps({"benchmark": "kumc", "method": "endofm", "variant": "default", "protocol": "paper",
                                     "mode": "full", "seed": seed, "label_fraction": fraction,
                                     "metrics": {"f1_paper": fraction}}))  # fmt: skip
            extra.append(p)
    ablations = {"losses": {"default": "both losses", "cv_only": "L_cv only", "dm_only": "L_dm only"}}
    report(root, [*paths, *extra], ablations=ablations)
    md = (root / "results/report/tables.md").read_text()
    section = md.split("## Ablation: losses")[1].split("## ")[0]
    assert "| L_cv only |" in section and "10.0 ± 10.0 (n=3)" in section
    assert "| L_dm only |" not in section and "Not run: L_dm only." in section  # no row of dashes
    assert "## Label efficiency" in md and "| 0.25 | 0.5 | 1 |" in md
    assert (root / "results/report/figures/label_efficiency.png").is_file()


def test_one_ablation_table_alone(tmp_path):
    paths = [
        write_run(tmp_path, "cvc12k", "endofm", variant, "clean", "full", seed, {"dice": value + 0.01 * seed})
        for variant, value in (("default", 0.5), ("local2", 0.3))
        for seed in (0, 1, 2)
    ]
    out = build_ablation_table(
        paths, tmp_path / "ablation_views.md", "views", {"default": "10 views", "local2": "2 local views"}, n_seeds=3
    )
    text = out.read_text()
    assert "## Ablation: views" in text and "| 10 views | 51.0 ± 1.0 (n=3) |" in text
    assert "| 2 local views | 31.0 ± 1.0 (n=3) |" in text  # constant difference 0.2: t-test variance is 0, no mark


def test_headline_metrics_are_the_tasks_selection_metrics():
    for bench in BENCHMARKS.values():
        assert bench.task().task.selection_metric == bench.headline.metric
        assert bench.task().task.benchmark == bench.name


def test_cli_report_names_missing_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--config", str(ROOT / "tests/configs/tiny.yaml")]) == 1
    err = capsys.readouterr().err
    assert re.fullmatch(r"endofm report: error: results/metrics/\S+/seed0\.json: missing metrics file\n", err)


def test_pretraining_steps_table_and_figure(fabricated):
    """Frozen read-outs from snapshots after 0, 1/4 and 1/2 of 8 pretraining steps, beside the finished
    pretraining's runs (fraction 1): a table with the step numbers and mean ± std per read-out, a figure,
    an HTML section; the snapshot runs stay out of Table 1."""
    root, paths = fabricated
    pre = root / "results/pretrain/endofm/default"
    pre.mkdir(parents=True)
    (pre / "metrics.csv").write_text("epoch,loss\n0,1.0\n1,0.5\n")
    snapshots = {"0": {"step": 0}, "0.25": {"step": 2}, "0.5": {"step": 4}}
    (pre / "run.json").write_text(json.dumps({"steps": 8, "snapshots": snapshots}))
    extra = []
    for fraction, tag in ((0.0, "pt0"), (0.25, "pt25"), (0.5, "pt50")):
        for seed in (0, 1, 2):
            value = fraction + 0.1 * seed
            readouts = {"knn": {"f1": value / 2}, "linear_pooled": {"f1": value / 4}}
            for bench, metrics in (("polypdiag", {"f1": value}), ("cvc12k", {"dice": value})):
                p = root / f"results/metrics/{bench}/endofm/default/clean/frozen/seed{seed}-{tag}.json"
                p.write_text(json.dumps({"benchmark": bench, "method": "endofm", "variant": "default", "protocol": "clean",
                                         "mode": "frozen", "seed": seed, "pretrain_fraction": fraction,
                                         "metrics": metrics, **({"readouts": readouts} if bench == "polypdiag" else {})}))  # fmt: skip
                extra.append(p)
    inputs = ReportInputs(
        metrics=[str(p) for p in [*paths, *extra]], pretrain=[str(pre / "metrics.csv")], paper_results=str(PAPER)
    )
    build_report(inputs, root / "results/report", ReportConfig(), n_seeds=3, synthetic=True)
    md = (root / "results/report/tables.md").read_text()
    section = md.split("## Frozen read-out vs pretraining steps")[1].split("## ")[0]
    lines = {
        tuple(c.strip() for c in line.strip("|").split("|")[:2]): line
        for line in section.splitlines()
        if line.startswith("|")
    }
    assert "| Method | Read-out | 0 | 0.25 | 0.5 | 1 |" in section
    assert lines[("Endo-FM", "pretraining step")].split("|")[3:7] == [" 0 ", " 2 ", " 4 ", " 8 "]
    polyp = lines[("Endo-FM", "PolypDiag F1")]
    assert "| 35.0 ± 10.0 (n=3) |" in polyp  # 0.25 + 0.1 × seed
    assert "| 17.5 ± 5.0 (n=3) |" in lines[("Endo-FM", "PolypDiag F1 (knn)")]
    assert "| 10.0 ± 10.0 (n=3) | 35.0 ± 10.0 (n=3) | 60.0 ± 10.0 (n=3) |" in lines[("Endo-FM", "CVC-12k Dice")]
    # Fraction 1 is the finished pretraining's frozen run, as in Table 1, which the snapshots leave alone.
    table1 = cell_of(md, "clean protocol, frozen backbone", "Endo-FM", "PolypDiag F1")
    assert table1.endswith("(n=3)") and polyp.rstrip(" |").endswith(table1)
    assert "machinery, not clinical accuracy" in section
    csv = pd.read_csv(root / "results/report/tables.csv")
    assert set(csv["pretrain_fraction"]) == {0.0, 0.25, 0.5, 1.0}
    assert not csv.duplicated(
        ["benchmark", "method", "variant", "protocol", "mode", "pretrain_fraction", "metric"]
    ).any()
    assert (root / "results/report/figures/pretrain_curve.png").is_file()
    html = (root / "results/report/index.html").read_text()
    assert html.index('<h2 id="table1">') < html.index('<h2 id="pretraining_steps">') < html.index('<h2 id="curves">')
    assert "Read-outs versus pretraining steps" in html and "18 more runs start from pretraining snapshots" in html


def test_no_pretraining_steps_section_without_snapshot_runs(fabricated):
    root, paths = fabricated
    report(root, paths)
    assert "pretraining steps" not in (root / "results/report/tables.md").read_text()
    assert not (root / "results/report/figures/pretrain_curve.png").exists()


def test_a_start_is_shown_as_random_or_the_files_folder_and_name():
    from endofm.report.build import _start_label

    assert _start_label("random") == "random"
    assert _start_label("resources/raw/svt_k400/kinetics400_vitb_ssl.pth") == "svt_k400/kinetics400_vitb_ssl.pth"
    assert _start_label(None) == "–"  # a pretraining whose config does not record its start
