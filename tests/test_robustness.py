"""The robustness read-out: finished runs scored again under corruptions (endofm.tasks.robustness), the
report's robustness table from hand-written metrics files, and the `robustness` target of the workflow."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from test_classify import MICRO
from test_classify import tiny_config as classify_config
from test_detect import tiny_config as detect_config
from test_segment import tiny_config as segment_config

from endofm import paths
from endofm.report.collect import ReportError, collect_metrics, collect_robustness
from endofm.report.tables import robustness_tables
from endofm.tasks.benchmarks import evaluate_run
from endofm.tasks.classify import ClassifyConfig, probe_probabilities, probe_state
from endofm.tasks.detect import DetectConfig
from endofm.tasks.finetune import RunSpec
from endofm.tasks.robustness import _Scorer, evaluate_robustness, parse_cells
from endofm.tasks.runs import finetune_benchmark
from endofm.tasks.segment import SegmentConfig

CONFIGS = {
    "polypdiag": (classify_config, ClassifyConfig, "f1"),
    "cvc12k": (segment_config, SegmentConfig, "dice"),
    "kumc": (detect_config, DetectConfig, "f1_paper"),
}


@pytest.mark.parametrize(
    ("benchmark", "mode"), [("polypdiag", "full"), ("polypdiag", "frozen"), ("cvc12k", "full"), ("kumc", "frozen")]
)
def test_a_finished_run_is_rebuilt_and_scored_under_corruptions(
    benchmark, mode, tiny_benchmarks, tmp_path, one_torch_thread
):
    """Without a corruption, the rebuilt selected model scores exactly the run's own metrics file (nothing
    retrained, nothing changed); under corruptions each cell gets a metrics file with its corruption and
    severity, at its endofm.paths name."""
    make, config_class, headline = CONFIGS[benchmark]
    bench = tiny_benchmarks[benchmark]
    spec = RunSpec(benchmark, "scratch", "none", "clean", mode, 0)
    run_dir = tmp_path / "finetune" / spec.path
    finetune_benchmark(spec, make(epochs=1), bench.manifest, bench.raw, run_dir, MICRO)
    clean = evaluate_run(run_dir, bench.manifest, bench.raw, tmp_path / "clean.json", synthetic=True)["metrics"]

    scorer = _Scorer(run_dir, bench.manifest, bench.raw, config_class, 0)
    again = scorer.scores(None)
    for key in (headline, *(k for k in ("auroc", "frame_dice", "AP50") if k in clean)):
        assert again[key] == pytest.approx(clean[key], abs=1e-9), key

    cells = parse_cells({"rotation_zoom": [3], "contrast": [1]})
    outs = [tmp_path / paths.robustness_file(spec.path, c.name, c.severity) for c in cells]
    assert outs[0].as_posix().endswith(f"metrics/robustness/{spec.path}/rotation_zoom-s3.json")
    records = evaluate_robustness(run_dir, bench.manifest, bench.raw, cells, outs, config_class, synthetic=True)
    for cell, out, record in zip(cells, outs, records, strict=True):
        saved = json.loads(out.read_text())
        assert saved == json.loads(json.dumps(record))
        assert (saved["corruption"], saved["severity"], saved["corruption_seed"]) == (cell.name, cell.severity, 0)
        assert (saved["benchmark"], saved["method"], saved["mode"], saved["seed"]) == (benchmark, "scratch", mode, 0)
        assert 0.0 <= saved["metrics"][headline] <= 1.0


def test_a_stored_probe_gives_sklearns_probabilities():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 5)), rng.integers(0, 2, 40)
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=0.5).fit(scaler.transform(x), y)
    np.testing.assert_allclose(
        probe_probabilities(probe_state(scaler, model), x), model.predict_proba(scaler.transform(x)), atol=1e-12
    )


def test_unknown_corruption_in_the_cells_fails():
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        parse_cells({"fog": [1]})
    assert [c.tag for c in parse_cells({"contrast": [1, 3]})] == ["contrast-s1", "contrast-s3"]


# --- the report's table ---------------------------------------------------------------------------------


def _write(path: Path, record: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return str(path)


def _record(method: str, variant: str, seed: int, f1: float, **extra) -> dict:
    return {"benchmark": "polypdiag", "method": method, "variant": variant, "protocol": "clean", "mode": "frozen",
            "seed": seed, "metrics": {"f1": f1}, **extra}  # fmt: skip


#: clean F1 per (method, seed), and under (corruption, severity)
CLEAN = {("endofm", 0): 0.80, ("endofm", 1): 0.90, ("scratch", 0): 0.60, ("scratch", 1): 0.50}
CORRUPTED = {
    ("endofm", 0): {("contrast", 1): 0.70, ("contrast", 3): 0.50, ("specular", 2): 0.60},
    ("endofm", 1): {("contrast", 1): 0.90, ("contrast", 3): 0.60, ("specular", 2): 0.90},
    ("scratch", 0): {("contrast", 1): 0.30, ("contrast", 3): 0.30, ("specular", 2): 0.30},
    ("scratch", 1): {("contrast", 1): 0.50, ("contrast", 3): 0.40, ("specular", 2): 0.30},
}


def hand_written_files(root: Path) -> tuple[list[str], list[str]]:
    variants = {"endofm": "default", "scratch": "none"}
    metrics, robust = [], []
    for (method, seed), f1 in CLEAN.items():
        run = paths.run_path("polypdiag", method, variants[method], "clean", "frozen", seed)
        metrics.append(_write(root / paths.metrics_file(run), _record(method, variants[method], seed, f1)))
        for (name, severity), value in CORRUPTED[(method, seed)].items():
            record = _record(method, variants[method], seed, value, corruption=name, severity=severity)
            robust.append(_write(root / paths.robustness_file(run, name, severity), record))
    return metrics, robust


def test_robustness_table_from_hand_written_metrics_files(tmp_path):
    """Endo-FM: corrupted means per seed (0.7 + 0.5 + 0.6) / 3 = 0.6 and (0.9 + 0.6 + 0.9) / 3 = 0.8, so 70.0 ± 14.1;
    relative 0.6 / 0.8 = 0.75 and 0.8 / 0.9 = 0.888…, so 81.9 ± 9.8. Scratch: 0.3 and 0.4 (35.0 ± 7.1), relative
    0.5 and 0.8 (65.0 ± 21.2); its clean 60, 50 give 55.0 ± 7.1. Two seeds: the paired t-test of the corrupted
    means (differences 0.3, 0.4) gives t = 7, p = 0.0903 (1 degree of freedom) > 0.05: no mark."""
    metrics, robust = hand_written_files(tmp_path)
    long, _ = collect_metrics(metrics)
    rob = collect_robustness(robust)
    assert len(rob) == 12 and set(rob["severity"]) == {1, 2, 3}
    (table,) = robustness_tables(
        long,
        rob,
        paper={},
        reference="endofm",
        main_variant="default",
        test="ttest",
        alpha=0.05,
        reference_label="endofm",
    )
    assert table.key == "robustness_polypdiag"
    assert table.columns == ["Method", "Clean F1", "Corrupted (mean)", "Corrupted / clean"]
    ((title, rows),) = table.blocks
    assert title == "clean protocol, frozen backbone"
    sd = lambda a, b: abs(a - b) / math.sqrt(2) * 100  # noqa: E731  (sample std of two values, ×100)
    assert rows[0] == ["endofm", f"85.0 ± {sd(0.8, 0.9):.1f} (n=2)", f"70.0 ± {sd(0.6, 0.8):.1f} (n=2)",
                       f"81.9 ± {sd(0.75, 0.8 / 0.9):.1f} (n=2)"]  # fmt: skip
    assert rows[1] == ["scratch", f"55.0 ± {sd(0.6, 0.5):.1f} (n=2)", f"35.0 ± {sd(0.3, 0.4):.1f} (n=2)",
                       f"65.0 ± {sd(0.5, 0.8):.1f} (n=2)"]  # fmt: skip
    assert "contrast (1, 3), specular (2)" in table.caption

    # a 0.05 threshold above 0.0903 marks scratch's corrupted mean as different from Endo-FM's
    (marked,) = robustness_tables(
        long, rob, paper={}, reference="endofm", main_variant="default", test="ttest", alpha=0.1, reference_label="e"
    )
    assert marked.blocks[0][1][1][2].endswith(" *") and not marked.blocks[0][1][0][2].endswith("*")


def test_robustness_file_without_its_corruption_is_refused(tmp_path):
    path = _write(tmp_path / "x.json", _record("endofm", "default", 0, 0.5, severity=1))
    with pytest.raises(ReportError, match="expected corruption .* and severity"):
        collect_robustness([path])


# --- the workflow ---------------------------------------------------------------------------------------


def test_report_page_has_the_robustness_table_and_figures(tmp_path, tiny_benchmarks):
    """build_report on the hand-written files plus one CVC-12k run: a Robustness section with the table, the
    severity curves and the preview of the tiny corpus' CVC test clip; without robustness files, none."""
    from endofm.report import ReportInputs, build_report

    metrics, robust = hand_written_files(tmp_path)
    run = paths.run_path("cvc12k", "endofm", "default", "clean", "frozen", 0)
    cvc = {
        **_record("endofm", "default", 0, 0.5),
        "benchmark": "cvc12k",
        "metrics": {"dice": 0.5},
        "test_split": "test",
    }
    metrics.append(_write(tmp_path / paths.metrics_file(run), cvc))
    robust.append(_write(tmp_path / paths.robustness_file(run, "contrast", 1), {**cvc, "corruption": "contrast",
                                                                               "severity": 1, "metrics": {"dice": 0.4}}))  # fmt: skip
    root = Path(tiny_benchmarks["cvc12k"].manifest).parents[1]
    inputs = dict(metrics=metrics, benchmarks_dir=str(root), raw_dir=str(Path(tiny_benchmarks["cvc12k"].raw).parent))
    build_report(ReportInputs(**inputs, robustness=robust), tmp_path / "with", parts=("tables", "html"))
    page = (tmp_path / "with/index.html").read_text()
    assert 'id="robustness"' in page and 'id="robustness_polypdiag"' in page and 'id="robustness_cvc12k"' in page
    assert {p.name for p in (tmp_path / "with/figures").glob("robustness_*.png")} == {
        "robustness_curves.png",
        "robustness_preview.png",
    }
    assert "## Robustness: PolypDiag" in (tmp_path / "with/tables.md").read_text()
    build_report(ReportInputs(**inputs), tmp_path / "without", parts=("tables", "html"))
    assert "robustness" not in (tmp_path / "without/index.html").read_text().lower()


# --- the workflow ---------------------------------------------------------------------------------------


@pytest.mark.workflow
def test_snakemake_robustness_scores_the_finished_runs(tmp_path):
    """`snakemake robustness` on the tiny config (scratch, frozen): one job per run writes a metrics file per
    corruption and severity; no pretraining, no report."""
    from test_workflow import make_workdir, snakemake, tiny_config

    config = tiny_config()
    config["finetune"].update(methods=["scratch"], modes=["frozen"])
    config["evaluate"] = {"corruptions": {"contrast": [1], "rotation_zoom": [2]}, "modes": ["frozen"]}
    del config["ablations"]
    workdir = make_workdir(tmp_path, config)
    plan = snakemake(workdir, "-n", "robustness").stdout
    assert "robustness_run" in plan and "pretrain_model" not in plan and "report_html" not in plan
    snakemake(workdir, "--cores", "2", "robustness")
    for bench, metric in (("polypdiag", "f1"), ("cvc12k", "dice"), ("kumc", "f1_paper")):
        run = f"{bench}/scratch/none/clean/frozen/seed0"
        for name, severity in (("contrast", 1), ("rotation_zoom", 2)):
            record = json.loads((workdir / paths.robustness_file(run, name, severity)).read_text())
            assert (record["corruption"], record["severity"], record["benchmark"]) == (name, severity, bench)
            assert 0.0 <= record["metrics"][metric] <= 1.0
        assert (workdir / f"results/benchmarks/robustness/{run}.tsv").is_file()
