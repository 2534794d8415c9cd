"""The leaderboard's statistics over the final seeds: summaries, intervals of the mean, paired
tests against vanilla with Holm's correction, and ranks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
INTERVAL = "Student-t interval of the mean"
# How the Wilcoxon p-value of one comparison was computed (see `wilcoxon`).
EXACT = "exact"
PERMUTATION = "exact sign-flip permutation"
NORMAL = "normal approximation"
_MOST_EXACT = 50  # pairs: beyond this SciPy's exact distribution is slow, the normal one good
_MOST_PERMUTED = 13  # pairs: 2**13 sign patterns, every one enumerated


def describe(scores: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation, extremes and quartiles; NaN where undefined (no scores,
    or one score for the standard deviation)."""
    x = np.asarray(scores, dtype=float)
    if x.size == 0:
        return dict.fromkeys(("mean", "std", "min", "max", "q25", "q75", "iqr"), np.nan)
    q25, q75 = np.percentile(x, [25, 75])
    return {"mean": x.mean(), "std": x.std(ddof=1) if x.size > 1 else np.nan,
            "min": x.min(), "max": x.max(), "q25": q25, "q75": q75, "iqr": q75 - q25}


def t_interval(scores, confidence: float = CONFIDENCE) -> tuple:
    """The Student-t interval of the mean over the last axis: mean ± t(n-1) · s / √n; NaN below
    two scores. It holds its coverage at a handful of seeds, where bootstrap intervals fall well
    short (BCa covers about 68% of the time at 3 seeds for a nominal 95%)."""
    # Sorted, so that the floating-point sums, and the interval, do not depend on seed order.
    x = np.sort(np.asarray(scores, dtype=float), axis=-1)
    n = x.shape[-1]
    if n < 2:
        nan = np.full(x.shape[:-1], np.nan)
        return nan[()], nan[()]
    mean = x.mean(axis=-1)
    half = stats.t.ppf((1 + confidence) / 2, n - 1) * x.std(axis=-1, ddof=1) / np.sqrt(n)
    return mean - half, mean + half


class PairedTest(NamedTuple):
    p_value: float
    method: str  # EXACT, PERMUTATION or NORMAL; "" without pairs


def wilcoxon(x: Sequence[float], y: Sequence[float]) -> PairedTest:
    """The two-sided Wilcoxon signed-rank test of paired scores, and how its p-value was
    computed: from the exact null distribution when no difference is zero and none ties;
    otherwise by all sign flips of the differences (exact, given the ties) up to 13 pairs; else
    from the normal approximation."""
    # Scores are fractions of one test set, so differences that are equal on paper differ in the
    # last bits after subtraction; rounding lets the test see them as the ties they are.
    d = np.round(np.asarray(x, dtype=float) - np.asarray(y, dtype=float), 12)
    if d.size == 0:
        return PairedTest(np.nan, "")
    if not d.any():
        return PairedTest(1.0, EXACT)  # identical scores on every seed: no evidence at all
    nonzero = np.abs(d[d != 0])
    if nonzero.size == d.size and np.unique(nonzero).size == d.size and d.size <= _MOST_EXACT:
        method, scipy_method = EXACT, "exact"
    elif d.size <= _MOST_PERMUTED:
        method, scipy_method = PERMUTATION, stats.PermutationMethod(n_resamples=2**d.size)
    else:
        method, scipy_method = NORMAL, "asymptotic"
    return PairedTest(float(stats.wilcoxon(d, method=scipy_method).pvalue), method)


def smallest_wilcoxon_p(n: int) -> float:
    """The smallest two-sided p-value the exact test can give with `n` pairs: every difference
    of one sign, a chance of 2 / 2**n."""
    return min(1.0, 2.0 / 2**n)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment for a family of tests; NaN p-values are not in the family."""
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full_like(p, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    # The i-th smallest p is multiplied by the number of hypotheses not yet rejected, m - i,
    # and the adjusted values are made monotone so that a rejection never follows an acceptance.
    steps = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(steps)
    return adjusted


def rank(frame: pd.DataFrame, by: Sequence[str], ascending: Sequence[bool]) -> pd.Series:
    """Ranks, 1 the best: rows are ordered by each column of `by` in turn, NaN last, and rows
    that tie on every column share the average of their places."""
    # Rounded, so that float noise does not break ties that are exact on paper (the same spread
    # of scores around two different means).
    dense = [frame[column].round(12).rank(method="dense", ascending=up, na_option="bottom")
             for column, up in zip(by, ascending, strict=True)]
    keys = pd.Series(list(zip(*dense, strict=True)), index=frame.index, dtype=object)
    return keys.rank(method="average")


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Spearman's rank correlation and its two-sided p-value; NaN below three pairs or when
    either side is constant."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return np.nan, np.nan
    result = stats.spearmanr(x, y)
    return float(result.statistic), float(result.pvalue)
