"""The benchmark scripts build their parsers on ``benchmarks/common.py``: each prints its help, as a module and,
for one, run as a file."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: bench_gpu.py has its own test.
SCRIPTS = sorted(p.stem for p in (ROOT / "benchmarks").glob("bench_*.py") if p.stem != "bench_gpu")


def test_every_script_prints_its_help(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT))
    assert len(SCRIPTS) >= 6  # bench_benchmark_draws.py went: the workflow draws benchmarks (synthetic.draws)
    for name in SCRIPTS:
        module = importlib.import_module(f"benchmarks.{name}")
        with pytest.raises(SystemExit) as exit_info:
            module.main(["--help"])
        assert exit_info.value.code == 0, name
        assert capsys.readouterr().out.startswith("usage:"), name


def test_a_script_runs_as_a_file():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/bench_decode.py"), "--help"],
        cwd=ROOT.parent,  # outside the repository: the script finds `benchmarks.common` by itself
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "--seed" in result.stdout  # an option of benchmarks/common.py
