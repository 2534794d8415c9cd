"""The leaderboard's statistics over the final seeds: summaries, bootstrap intervals, paired
tests against vanilla with Holm's correction, and ranks."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0  # fixed, so that republishing the same runs gives the same intervals


def describe(scores: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation, extremes and quartiles; NaN where undefined (no scores,
    or one score for the standard deviation)."""
    x = np.asarray(scores, dtype=float)
    if x.size == 0:
        return dict.fromkeys(("mean", "std", "min", "max", "q25", "q75", "iqr"), np.nan)
    q25, q75 = np.percentile(x, [25, 75])
    return {"mean": x.mean(), "std": x.std(ddof=1) if x.size > 1 else np.nan,
            "min": x.min(), "max": x.max(), "q25": q25, "q75": q75, "iqr": q75 - q25}


def bootstrap_ci(scores: Sequence[float], confidence: float = CONFIDENCE,
                 seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """The BCa bootstrap interval of the mean over seeds; NaN below two scores."""
    x = np.asarray(scores, dtype=float)
    if x.size < 2:
        return np.nan, np.nan
    if np.ptp(x) == 0:  # every resample has the same mean, and BCa's acceleration is 0/0
        return x[0], x[0]
    ci = stats.bootstrap((x,), np.mean, confidence_level=confidence,
                         rng=np.random.default_rng(seed)).confidence_interval
    return float(ci.low), float(ci.high)


def wilcoxon(x: Sequence[float], y: Sequence[float]) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test of paired scores; NaN without pairs."""
    # Scores are fractions of one test set, so differences that are equal on paper differ in the
    # last bits after subtraction; rounding lets the test see them as the ties they are.
    d = np.round(np.asarray(x, dtype=float) - np.asarray(y, dtype=float), 12)
    if d.size == 0:
        return np.nan
    if not d.any():
        return 1.0  # identical scores on every seed: no evidence of a difference
    with warnings.catch_warnings():
        # Ties and zero differences make SciPy fall back to the normal approximation, and say so.
        warnings.simplefilter("ignore", UserWarning)
        return float(stats.wilcoxon(d).pvalue)


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
