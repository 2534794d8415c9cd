"""The leaderboard's statistics over the final seeds: summaries, intervals of the mean and of the
spread, paired tests against vanilla (the sign-flip permutation test of the primary comparisons,
the Wilcoxon test of the exploratory ones) with Holm's correction, the failure and learning rules'
tests, and ranks."""

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
# The primary comparisons' test (`sign_flip`): every sign pattern up to 2**17 of them, beyond that
# a seeded Monte Carlo sample of FLIPS patterns.
ENUMERATED = "exact, all 2^n sign flips"
MONTE_CARLO = "Monte Carlo, 100000 seeded sign flips"
_MOST_ENUMERATED = 17
FLIPS = 100_000
FLIP_SEED = 0


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


def sign_flip(differences: Sequence[float], alternative: str = "two-sided") -> PairedTest:
    """The sign-flip permutation test of the mean of paired differences: under the null each
    difference is as likely to have either sign, so the p-value is the share of sign patterns whose
    sum is at least as extreme as the observed one (two-sided: in absolute value; "greater": as
    large). Every pattern is enumerated up to 2**17; beyond, FLIPS seeded random patterns give
    (1 + extreme) / (1 + FLIPS), a valid p-value."""
    # Rounded as in `wilcoxon`: sums equal on paper must compare equal.
    d = np.round(np.asarray(differences, dtype=float), 12)
    n = d.size
    if n == 0:
        return PairedTest(np.nan, "")
    if n <= _MOST_ENUMERATED:
        signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
        method = ENUMERATED
    else:
        signs = np.random.default_rng(FLIP_SEED).choice([-1, 1], size=(FLIPS, n))
        method = MONTE_CARLO
    sums, observed = signs @ d, d.sum()
    slack = 1e-9 * max(1.0, np.abs(d).sum())
    if alternative == "two-sided":
        extreme = np.count_nonzero(np.abs(sums) >= abs(observed) - slack)
    elif alternative == "greater":
        extreme = np.count_nonzero(sums >= observed - slack)
    else:
        raise ValueError(f"alternative {alternative!r}: two-sided or greater")
    p = extreme / len(signs) if method == ENUMERATED else (1 + extreme) / (1 + FLIPS)
    return PairedTest(float(p), method)


def smallest_sign_flip_p(n: int) -> float:
    """The smallest two-sided p-value `sign_flip` can give with `n` pairs: every difference of one
    sign, 2 of the 2**n patterns (or one Monte Carlo pattern in FLIPS + 1)."""
    if n <= _MOST_ENUMERATED:
        return min(1.0, 2.0 / 2**n)
    return 1 / (1 + FLIPS)


def detectable_difference(n: int, spread: float, level: float) -> float:
    """The smallest mean paired difference that `n` pairs with differences of standard deviation
    `spread` make significant at `level` (two-sided): the Student-t bound t(1 - level/2, n - 1) ·
    spread / √n. It approximates the sign-flip test, which it agrees with in large samples."""
    if n < 2 or not np.isfinite(spread):
        return np.nan
    return float(stats.t.ppf(1 - level / 2, n - 1) * spread / np.sqrt(n))


def sd_interval(scores: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The chi-square interval of the standard deviation of normal scores: s · √((n - 1) / q),
    q the chi-square(n - 1) quantiles at (1 ± confidence) / 2; NaN below two scores."""
    x = np.asarray(scores, dtype=float)
    if x.size < 2:
        return np.nan, np.nan
    s, df = x.std(ddof=1), x.size - 1
    upper_q, lower_q = stats.chi2.ppf([(1 + confidence) / 2, (1 - confidence) / 2], df)
    return float(s * np.sqrt(df / upper_q)), float(s * np.sqrt(df / lower_q))


def spreads_differ(x: Sequence[float], y: Sequence[float]) -> float:
    """The two-sided F-test p-value of equal variances of two samples; NaN when either has fewer
    than two values or no spread (a ratio with zero says nothing a test could add)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if min(x.size, y.size) < 2:
        return np.nan
    vx, vy = x.var(ddof=1), y.var(ddof=1)
    if vx == 0 or vy == 0:
        return np.nan
    tail = stats.f.sf(vx / vy, x.size - 1, y.size - 1)
    return float(min(1.0, 2 * min(tail, 1 - tail)))


def counts_differ(failed_a: int, n_a: int, failed_b: int, n_b: int) -> float:
    """Fisher's exact two-sided p-value of equal failure rates."""
    table = [[failed_a, n_a - failed_a], [failed_b, n_b - failed_b]]
    return float(stats.fisher_exact(table).pvalue)


def critical_correlation(n: int, alpha: float = 0.05) -> float:
    """The Pearson correlation that `n` pairs need to be significantly above 0, one-sided at
    `alpha`: r = t / √(n - 2 + t²), t the Student-t(n - 2) quantile at 1 - alpha."""
    t = stats.t.ppf(1 - alpha, n - 2)
    return float(t / np.sqrt(n - 2 + t * t))


def above(excess: Sequence[float]) -> float:
    """The one-sided Student-t p-value that the mean of `excess` is above 0; NaN below two
    values; 0 when every value is the same positive one, 1 when they are the same otherwise."""
    x = np.asarray(excess, dtype=float)
    if x.size < 2:
        return np.nan
    if np.ptp(x) == 0:
        return 0.0 if x[0] > 0 else 1.0
    return float(stats.ttest_1samp(x, 0.0, alternative="greater").pvalue)


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
