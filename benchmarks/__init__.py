"""Benchmark scripts (``bench_*.py``, run as files or with ``python -m benchmarks.bench_x``) and their shared set-up."""
