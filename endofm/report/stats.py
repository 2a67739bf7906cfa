"""Paired significance tests across seeds: two methods' runs with the same seed form a pair.

A difference is called significant only when the chosen test's two-sided p-value is below ``alpha``.
With fewer than two shared seeds there is no test (p is NaN, never significant).

Layer: report (docs/architecture.md). May import: every layer below it (tasks included) and the other report modules.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from typing import NamedTuple

import numpy as np


def paired_t_test(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided paired t-test of mean(a - b) = 0 (scipy.stats.ttest_rel); NaN when every difference is
    equal (zero variance) or n < 2."""
    from scipy import stats

    d = np.asarray(a, float) - np.asarray(b, float)
    if d.size < 2 or np.allclose(d, d[0], rtol=0, atol=1e-12):
        return math.nan
    return float(stats.ttest_rel(a, b).pvalue)


def sign_flip_test(a: np.ndarray, b: np.ndarray) -> float:
    """Exact two-sided sign-flip permutation test of the paired differences: the share of the 2^n sign
    patterns whose |mean| reaches the observed one. Its smallest p is 2 / 2^n (n = 5: 0.0625)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    if d.size < 2:
        return math.nan
    observed = abs(d.mean())
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
    means = np.abs(signs @ d) / d.size
    return float(np.mean(means >= observed - 1e-12))


class PairedTest(NamedTuple):
    fn: Callable[[np.ndarray, np.ndarray], float]
    description: str


TESTS: dict[str, PairedTest] = {
    "ttest": PairedTest(paired_t_test, "two-sided paired t-test over seeds (scipy.stats.ttest_rel)"),
    "permutation": PairedTest(sign_flip_test, "two-sided exact sign-flip permutation test over seeds"),
}


class Comparison(NamedTuple):
    n_pairs: int
    mean_difference: float
    p_value: float
    significant: bool


def compare(a: Mapping[int, float], b: Mapping[int, float], test: str = "ttest", alpha: float = 0.05) -> Comparison:
    """Compare per-seed values ``a`` and ``b`` ({seed: value}) on the seeds both have."""
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; known: {', '.join(TESTS)}")
    seeds = sorted(set(a) & set(b))
    x = np.array([a[s] for s in seeds], float)
    y = np.array([b[s] for s in seeds], float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 2:
        return Comparison(int(x.size), float(np.mean(x - y)) if x.size else math.nan, math.nan, False)
    p = TESTS[test].fn(x, y)
    return Comparison(int(x.size), float(np.mean(x - y)), p, bool(np.isfinite(p) and p < alpha))
