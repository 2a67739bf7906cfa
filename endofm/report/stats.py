"""Paired significance tests across replicates: two methods' runs with the same seed (on the same benchmark
draw) form a pair.

A difference is called significant only when the chosen test's p-value is below ``alpha``: two-sided, or
one-sided (``alternative``) where the claim tested has a direction. With fewer than two shared replicates
there is no test (p is NaN, never significant).

Layer: report (docs/architecture.md). May import: every layer below it (tasks included) and the other report modules.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

#: The alternatives of a test: mean(a - b) differs from 0, is below it, is above it.
ALTERNATIVES = ("two-sided", "less", "greater")


def paired_t_test(a: np.ndarray, b: np.ndarray, alternative: str = "two-sided") -> float:
    """Paired t-test of mean(a - b) = 0 against ``alternative`` (scipy.stats.ttest_rel); NaN when every
    difference is equal (zero variance) or n < 2."""
    from scipy import stats

    d = np.asarray(a, float) - np.asarray(b, float)
    if d.size < 2 or np.allclose(d, d[0], rtol=0, atol=1e-12):
        return math.nan
    return float(stats.ttest_rel(a, b, alternative=alternative).pvalue)


def sign_flip_test(a: np.ndarray, b: np.ndarray, alternative: str = "two-sided") -> float:
    """Exact sign-flip permutation test of the paired differences: the share of the 2^n sign patterns whose
    mean is as extreme as the observed one (two-sided: in |mean|; less: as low; greater: as high). Its smallest
    two-sided p is 2 / 2^n (n = 5: 0.0625), one-sided 1 / 2^n."""
    d = np.asarray(a, float) - np.asarray(b, float)
    if d.size < 2:
        return math.nan
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
    means, observed = signs @ d / d.size, d.mean()
    if alternative == "less":
        return float(np.mean(means <= observed + 1e-12))
    if alternative == "greater":
        return float(np.mean(means >= observed - 1e-12))
    return float(np.mean(np.abs(means) >= abs(observed) - 1e-12))


class PairedTest(NamedTuple):
    fn: Callable[[np.ndarray, np.ndarray, str], float]
    description: str


TESTS: dict[str, PairedTest] = {
    "ttest": PairedTest(paired_t_test, "paired t-test over seeds (scipy.stats.ttest_rel)"),
    "permutation": PairedTest(sign_flip_test, "exact sign-flip permutation test over seeds"),
}


class Comparison(NamedTuple):
    n_pairs: int
    mean_difference: float
    p_value: float
    significant: bool


def compare(
    a: Mapping[Any, float],
    b: Mapping[Any, float],
    test: str = "ttest",
    alpha: float = 0.05,
    alternative: str = "two-sided",
) -> Comparison:
    """Compare per-replicate values ``a`` and ``b`` ({seed or (draw, seed): value}) on the replicates both
    have; ``alternative``: two-sided, ``less`` (a below b) or ``greater``."""
    if test not in TESTS:
        raise ValueError(f"unknown test {test!r}; known: {', '.join(TESTS)}")
    if alternative not in ALTERNATIVES:
        raise ValueError(f"unknown alternative {alternative!r}; known: {', '.join(ALTERNATIVES)}")
    seeds = sorted(set(a) & set(b))
    x = np.array([a[s] for s in seeds], float)
    y = np.array([b[s] for s in seeds], float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 2:
        return Comparison(int(x.size), float(np.mean(x - y)) if x.size else math.nan, math.nan, False)
    p = TESTS[test].fn(x, y, alternative)
    return Comparison(int(x.size), float(np.mean(x - y)), p, bool(np.isfinite(p) and p < alpha))


def describe(test: str, one_sided: bool = False, reference: str = "the reference") -> str:
    """The test as a caption names it: its sidedness, then :attr:`PairedTest.description`."""
    side = f"one-sided ({reference} ahead)" if one_sided else "two-sided"
    return f"{side} {TESTS[test].description}"
