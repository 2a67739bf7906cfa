"""The prepared device check (benchmarks/bench_gpu.py): its --dry run, every part at tiny sizes on the CPU, once
for the module (~40 s on 2 cores), and its pure helpers."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks/bench_gpu.py"
_spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
bench_gpu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_gpu)  # the standard library only: cheap


def positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "check.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text()), out


def test_every_part_passes_and_is_in_the_table(dry):
    stdout, report, out = dry
    assert report["dry"] is True and report["device"]["device"] == "cpu"
    assert list(report["parts"]) == list(bench_gpu.PARTS)
    table = stdout.split("Device check on", 1)[1].splitlines()
    for name, part in report["parts"].items():
        assert part["status"] == "ok" and part["error"] is None, (name, part)
        assert part["rows"] and all(row["status"] == "ok" for row in part["rows"]), (name, part["rows"])
        assert 0 < part["seconds"] < part["limit_s"] == bench_gpu.DRY_LIMITS[name]
        assert Path(part["log"]).parent == out.with_name("check.logs")
        shown = [line for line in table if line.startswith(name + " ")]
        assert len(shown) == len(part["rows"]) and all(" ok " in line for line in shown), (name, shown)
    assert report["total_s"] < 120


def test_backbone_rows(dry):
    rows = dry[1]["parts"]["backbone"]["rows"]
    cases = {tuple(row["case"].split()[-2:]): row for row in rows}
    assert set(cases) == {(a, d) for a in ("sdpa", "explicit") for d in ("fp32", "bf16", "fp16")}
    for row in rows:
        for key in ("s_per_step", "items_per_s", "tflops", "gflop_per_clip", "peak_mib"):
            assert positive(row[key]), (row["case"], key, row[key])
        assert row["mfu"] is None  # no known peak on a CPU
    for attention in ("sdpa", "explicit"):
        assert cases[attention, "fp32"]["rel_err_vs_fp32"] == 0
        for dtype in ("bf16", "fp16"):
            assert 0 < cases[attention, dtype]["rel_err_vs_fp32"] < 0.05


def test_pretraining_step_and_largest_batch(dry):
    part = dry[1]["parts"]["pretrain"]
    summary, rows = part["summary"], part["rows"]
    assert summary["largest_batch"] == bench_gpu.DRY_BATCH_CAP > summary["batch_per_gpu"]
    assert [8, True] in summary["batch_probes"] and [16, False] in summary["batch_probes"]
    assert positive(summary["hours_paper_batch"]) and positive(summary["hours_largest_batch"])
    assert len(rows) == 3 and "(fp32)" in rows[0]["case"] and "largest" in rows[2]["case"]
    assert "bf16 + GradScaler" in rows[1]["case"]  # the fp16 loop's scaler path, on a CPU in bf16
    for row in rows:
        for key in ("s_per_step", "items_per_s", "tflops", "peak_mib", "steps_per_s"):
            assert positive(row[key]), (row["case"], key)
    assert positive(rows[0]["implied_hours"]) and positive(rows[2]["implied_hours"])


def test_torchrun_losses_equal_the_single_process(dry):
    summary = dry[1]["parts"]["torchrun"]["summary"]
    assert summary["equal"] is True and summary["backend"] == "gloo" and summary["world_size"] == 1
    assert summary["wrapper"] == "DistributedDataParallel"
    assert len(summary["losses_single"]) == len(summary["losses_torchrun"]) == bench_gpu.DDP_STEPS
    assert all(positive(x) for x in summary["losses_single"] + summary["losses_torchrun"])
    assert summary["max_rel_diff"] <= bench_gpu.DDP_RTOL


def test_finetuning_runs_of_the_three_benchmarks(dry):
    rows = dry[1]["parts"]["finetune"]["rows"]
    assert [row["case"].split()[0] for row in rows] == ["polypdiag", "cvc12k", "kumc"]
    assert "transunet" in rows[1]["case"]
    for row in rows:
        assert positive(row["s_per_step"]) and positive(row["items_per_s"]) and positive(row["run_s"])
        assert len(row["losses"]) == 2 and all(positive(x) for x in row["losses"])


def test_workflow_is_planned_with_cuda(dry):
    summary = dry[1]["parts"]["workflow"]["summary"]
    assert summary["dry_run"] is True and summary["jobs"] > 20


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.4),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", None),
        ("Tesla V100-SXM2-16GB", None),
    ],
)
def test_peak_table(name, peak):
    assert bench_gpu.peak_tflops(name) == peak


def test_largest_batch_search_brackets_the_limit():
    tried = []

    def fits(b):
        tried.append(b)
        return b <= 37

    best, probes = bench_gpu.largest_batch(fits, 3, 96, lambda: True)
    assert 37 - 37 // 8 <= best <= 37 and len(tried) <= 8 and probes[0] == [6, True]
    assert bench_gpu.largest_batch(lambda b: True, 3, 96, lambda: True)[0] == 96
    assert bench_gpu.largest_batch(fits, 3, 96, lambda: False) == (3, [])


def test_bad_input_is_one_line():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--parts", "everything"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "invalid choice: 'everything'" in proc.stderr
