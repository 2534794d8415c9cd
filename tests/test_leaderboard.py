"""The leaderboard against statistics computed here by hand or by NumPy, on small runs tables."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from boards import (
    FAILS_AT,
    META,
    PARAMS,
    PROVENANCE,
    SCORES,
    expected_of,
    frame_of,
    handmade_rows,
    noise_measured,
    run,
)
from scipy import stats

from regbench import leaderboard, outputs
from regbench.board import _wall_seconds, build
from regbench.cli import main
from regbench.errors import RegbenchError
from regbench.leaderboard import add_test_references, publish
from regbench.markdown import render
from regbench.plots import MIN_SPAN, figures
from regbench.stats import (
    ENUMERATED,
    EXACT,
    FLIPS,
    MONTE_CARLO,
    NORMAL,
    PERMUTATION,
    above,
    counts_differ,
    critical_correlation,
    detectable_difference,
    holm,
    rank,
    sd_interval,
    sign_flip,
    smallest_sign_flip_p,
    smallest_wilcoxon_p,
    spreads_differ,
    t_interval,
    wilcoxon,
)
from regbench.store import Store
from regbench.suite import load_suite

# By hand from SCORES: means order the score ranks; failures, then the variances of the runs
# that did not fail (sum of squared deviations / 4), order the stability ranks, e.g. RTE 100:
# l2sp and mixout none failed, variances 0.00043 < 0.00305; vanilla one failed.
RANK_SCORE = {("rte", 100): {"l2sp": 1, "mixout": 2, "vanilla": 3},
              ("rte", 1000): {"mixout": 1, "vanilla": 2, "l2sp": 3},
              ("cola", 100): {"l2sp": 1, "mixout": 2, "vanilla": 3},
              ("cola", 1000): {"l2sp": 1, "mixout": 2, "vanilla": 3}}
RANK_STABILITY = {("rte", 100): {"l2sp": 1, "mixout": 2, "vanilla": 3},
                  ("rte", 1000): {"mixout": 1, "vanilla": 2, "l2sp": 3},
                  ("cola", 100): {"l2sp": 1, "mixout": 2, "vanilla": 3},
                  ("cola", 1000): {"l2sp": 1.5, "mixout": 1.5, "vanilla": 3}}


def cell(board, task: str, n: int, regularizer: str) -> pd.Series:
    c = board.cells
    return c[(c.task == task) & (c.n_train == n) & (c.regularizer == regularizer)].iloc[0]


def section(markdown: str, heading: str) -> str:
    """The text under the first heading that starts with `heading` (a size's heading goes on to
    say whether the cell learns) up to the next heading of the same or a higher level."""
    level = heading.split()[0]
    start = re.search(f"^{re.escape(heading)}( .*)?$", markdown, re.MULTILINE).end()
    rest = markdown[start + 1:]
    ends = [i for i, line in enumerate(rest.splitlines(keepends=True))
            if line.startswith("#") and len(line.split()[0]) <= len(level)]
    lines = rest.splitlines(keepends=True)
    return "".join(lines[:ends[0]] if ends else lines)


def row_of(table: str, regularizer: str) -> list[str]:
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if regularizer in cells:
            return cells
    raise AssertionError(f"no row for {regularizer} in\n{table}")


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """The hand-made suite published once, with a tuning run and a superseded run mixed in that
    must not count."""
    tmp = tmp_path_factory.mktemp("board")
    rows = [run("l2sp", "rte", 100, 0, 0.99, phase="tune", trial=3),
            run("l2sp", "rte", 100, 1, 0.10),  # written first, so superseded by SCORES' run
            *handmade_rows()]
    for row in rows:  # mixout as a plugin with parts of the model in fp32 would be stored
        if row["regularizer"] == "mixout":
            row["provenance"] = {**PROVENANCE, "fp32": ["layer.3", "layer.4", "layer.5", "head"]}
    frame = frame_of(rows, tmp)
    markdown = publish(frame, expected_of(), tmp / "out", "board", META)
    return build(frame, expected_of(), META), markdown


# The statistics, one function at a time -------------------------------------------------------

def test_wilcoxon_matches_the_exact_distribution_by_hand():
    # Differences +1 +2 -3 +4 +5 (in hundredths): |d| ranks 1..5, W- = 3. Of the 32 equally
    # likely sign patterns, 5 have W- <= 3 ({}, {1}, {2}, {3}, {1,2}): p = 2 * 5/32.
    x = np.array([0.61, 0.62, 0.57, 0.64, 0.65])
    y = np.full(5, 0.60)
    assert wilcoxon(x, y) == pytest.approx((10 / 32, EXACT))
    assert wilcoxon(y + 0.01 * np.arange(1, 6), y).p_value == pytest.approx(2 / 32)
    assert smallest_wilcoxon_p(5) == pytest.approx(2 / 32)
    assert wilcoxon(x, x) == (1.0, EXACT)
    assert math.isnan(wilcoxon([], []).p_value)


def test_wilcoxon_says_how_its_p_value_was_computed():
    # Differences +1 +1 +2 +3: tied ranks 1.5 1.5 3 4, all positive. Of the 16 sign flips only
    # this one reaches W+ = 10: p = 2/16, counted over every flip.
    y = np.full(4, 0.60)
    assert wilcoxon(y + [0.01, 0.01, 0.02, 0.03], y) == pytest.approx((2 / 16, PERMUTATION))
    # Beyond 13 pairs with ties, SciPy's normal approximation.
    d = np.r_[np.arange(1, 20), 1] / 100
    expected = stats.wilcoxon(d, method="asymptotic").pvalue
    assert wilcoxon(0.5 + d, np.full(20, 0.5)) == pytest.approx((expected, NORMAL))


def test_holm_matches_a_hand_computation():
    # Sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> made monotone 0.06.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.01, np.nan, 0.04])  # an untested comparison is not in the family
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1])
    assert adjusted[2] == pytest.approx(0.04)
    assert holm([0.3, 0.9]) == pytest.approx([0.6, 0.9])
    assert holm([]).size == 0


def test_t_interval_by_hand():
    # Mean 0.62, s = 0.02; t(0.975, 2 degrees of freedom) = 4.302653 from the tables.
    half = 4.302653 * 0.02 / math.sqrt(3)
    assert t_interval([0.60, 0.64, 0.62]) == pytest.approx((0.62 - half, 0.62 + half))
    assert t_interval([0.5, 0.5, 0.5]) == pytest.approx((0.5, 0.5))
    assert all(math.isnan(v) for v in t_interval([0.5]))


def test_t_interval_ignores_the_order_of_the_seeds():
    rng = np.random.default_rng(3)
    x = rng.normal(0.6, 0.05, size=7)
    assert all(t_interval(rng.permutation(x)) == t_interval(x) for _ in range(50))


@pytest.mark.parametrize("n", [3, 5, 10])
def test_t_interval_holds_its_coverage_at_the_seed_counts_used(n):
    """4000 simulated cells of n seeds: the 95% interval must cover the true mean 93-97% of the
    time, for normal scores and for scores skewed as accuracies below a ceiling are."""
    rng = np.random.default_rng(n)
    for scores, mean in ((rng.normal(0.65, 0.03, (4000, n)), 0.65),
                         (rng.beta(20, 10, (4000, n)), 2 / 3)):
        low, high = t_interval(scores)
        assert 0.93 <= np.mean((low <= mean) & (mean <= high)) <= 0.97


def test_rank_orders_by_each_column_in_turn_with_ties_averaged():
    frame = pd.DataFrame({"std": [0.1, 0.1, 0.05, np.nan, 0.1],
                          "failure_rate": [0.0, 0.2, 0.4, 0.0, 0.0]})
    assert list(rank(frame, ["std", "failure_rate"], [True, True])) == [2.5, 4, 1, 5, 2.5]


@pytest.mark.parametrize("n", [1, 4, 7, 10])
def test_sign_flip_matches_brute_enumeration(n):
    rng = np.random.default_rng(n)
    for d in (rng.normal(0.02, 0.05, n), np.round(rng.normal(0, 0.03, n), 2)):  # ties, zeros
        patterns = np.array(list(itertools.product((1, -1), repeat=n)))
        sums = patterns @ d
        two_sided = np.mean(np.abs(sums) >= abs(d.sum()) - 1e-12)
        greater = np.mean(sums >= d.sum() - 1e-12)
        assert sign_flip(d) == pytest.approx((two_sided, ENUMERATED))
        assert sign_flip(d, "greater").p_value == pytest.approx(greater)
    assert smallest_sign_flip_p(n) == pytest.approx(min(1, 2 / 2**n))
    assert sign_flip(np.full(n, 0.1)).p_value == pytest.approx(smallest_sign_flip_p(n))
    assert math.isnan(sign_flip([]).p_value)


def test_sign_flip_beyond_enumeration_is_a_seeded_monte_carlo_of_the_exact_p():
    # Thirty integer differences: the exact null distribution of the signed sum, by convolving
    # each difference's two signs in turn, counted over all 2^30 patterns.
    d = np.array([3, -1, 4, 1, -5, 9, 2, 6, -5, 3, 5, 8, -9, 7, 9, 3, 2, -3, 8, 4, 6, 2, -6, 4,
                  3, 3, 8, 3, -2, 7])
    total = int(np.abs(d).sum())
    counts = np.zeros(2 * total + 1)
    counts[total] = 1
    for x in np.abs(d):
        counts = np.roll(counts, x) + np.roll(counts, -x)
    sums = np.arange(-total, total + 1)
    exact = counts[np.abs(sums) >= abs(d.sum())].sum() / 2**30
    found = sign_flip(d / 100)
    assert found.method == MONTE_CARLO and found == sign_flip(d / 100)  # seeded
    assert abs(found.p_value - exact) < 4 * math.sqrt(exact * (1 - exact) / FLIPS)


@pytest.mark.parametrize("n", [3, 5, 10])
def test_sd_interval_holds_its_coverage(n):
    """4000 simulated cells of n normal scores: the 95% interval of the standard deviation must
    cover the true one 93-97% of the time."""
    rng = np.random.default_rng(n)
    intervals = np.array([sd_interval(x) for x in rng.normal(0.6, 0.04, (4000, n))])
    assert 0.93 <= np.mean((intervals[:, 0] <= 0.04) & (0.04 <= intervals[:, 1])) <= 0.97
    assert all(math.isnan(v) for v in sd_interval([0.5]))


def test_the_failure_tests_match_known_values():
    # Pearson's r that 750 pairs need, one-sided at 5%: for data built to have exactly that
    # sample correlation, SciPy's own test gives p = 0.05.
    r = critical_correlation(750)
    rng = np.random.default_rng(0)
    x, z = rng.normal(size=(2, 750))
    x, z = (x - x.mean()) / x.std(), z - z.mean()
    z = z - (z @ x) / (x @ x) * x
    y = r * x + math.sqrt(1 - r * r) * z / z.std()
    assert stats.pearsonr(x, y, alternative="greater").pvalue == pytest.approx(0.05)
    assert 0.060 < r < 0.061
    # Fisher: none of five failed against all five, 2 of the C(10, 5) = 252 tables as extreme.
    assert counts_differ(0, 5, 5, 5) == pytest.approx(2 / 252)
    assert counts_differ(1, 5, 0, 5) == 1.0
    # F(4, 4) at 0.975 is 9.6045 (tables): a variance ratio there is p = 0.05, two-sided.
    assert spreads_differ(np.array([-1, 0, 0, 0, 1]) * math.sqrt(9.6045), [-1, 0, 0, 0, 1]) == \
        pytest.approx(0.05, abs=1e-4)
    assert math.isnan(spreads_differ([0.5, 0.5], [0.1, 0.2]))


def test_the_gate_and_the_detectable_difference_against_scipy():
    excess = np.array([0.03, -0.01, 0.02, 0.04, 0.00])
    assert above(excess) == pytest.approx(stats.ttest_1samp(excess, 0,
                                                            alternative="greater").pvalue)
    assert above([0.0, 0.0, 0.0]) == 1.0 and above([0.02, 0.02]) == 0.0
    assert math.isnan(above([0.3]))
    # Differences whose mean is the detectable difference are exactly at the level: a paired
    # t-test of them gives p = level.
    d = np.array([-1.0, 0.0, 1.0, 2.0, -2.0, 0.5, -0.5, 1.5, -1.5, 0.0])
    level = 0.05 / 13
    shift = detectable_difference(10, d.std(ddof=1), level)
    assert stats.ttest_1samp(d + shift, 0).pvalue == pytest.approx(level)


# The leaderboard's numbers --------------------------------------------------------------------

def test_cell_statistics_match_numpy(published):
    board, _ = published
    assert len(board.cells) == 12
    for (task, n), by_reg in SCORES.items():
        for regularizer, scores in by_reg.items():
            x = np.array(scores)
            c = cell(board, task, n, regularizer)
            q25, q75 = np.percentile(x, [25, 75])
            assert c["mean"] == pytest.approx(x.mean())
            assert c["std"] == pytest.approx(x.std(ddof=1))
            assert c["min"] == pytest.approx(x.min()) and c["max"] == pytest.approx(x.max())
            assert c["iqr"] == pytest.approx(q75 - q25)
            failed = x <= FAILS_AT[task]
            assert c["n_failures"] == failed.sum()
            assert c["failure_rate"] == pytest.approx(failed.mean())
            assert c.std_not_failed == pytest.approx(x[~failed].std(ddof=1))
            half = stats.t.ppf(0.975, 4) * x.std(ddof=1) / math.sqrt(5)
            assert (c.ci_low, c.ci_high) == pytest.approx((x.mean() - half, x.mean() + half))
            assert c.n_completed == c.n_finished == c.n_planned == 5
            assert json.loads(c.params) == [PARAMS[regularizer]]


def test_paired_differences_to_vanilla(published):
    board, _ = published
    for (task, n), by_reg in SCORES.items():
        vanilla = np.array(by_reg["vanilla"])
        for regularizer in ("l2sp", "mixout"):
            c = cell(board, task, n, regularizer)
            assert c.delta_vs_vanilla == pytest.approx(np.mean(by_reg[regularizer]) -
                                                       vanilla.mean())
            assert c.n_pairs == 5
            assert c.p_value >= 2 / 32  # five seeds can never do better
    assert board.cells.p_value.notna().sum() == 8 and "p_holm" not in board.cells


def _sign_flip_by_hand(d) -> float:
    """The two-sided sign-flip p-value by enumerating every pattern with itertools."""
    observed = abs(sum(d))
    patterns = list(itertools.product((1, -1), repeat=len(d)))
    return sum(abs(sum(s * x for s, x in zip(signs, d, strict=True))) >= observed - 1e-9
               for signs in patterns) / len(patterns)


def test_primary_comparisons_pool_the_sizes_and_are_holm_corrected_alone(published):
    board, _ = published
    primary = board.primary.set_index(["task", "regularizer"])
    assert len(primary) == 4  # (l2sp, mixout) x (RTE, CoLA); the 8 per-cell tests not in it
    by_hand = {}
    for task in ("rte", "cola"):
        for regularizer in ("l2sp", "mixout"):
            d = [a - b for n in (100, 1000) for a, b in zip(
                SCORES[(task, n)][regularizer], SCORES[(task, n)]["vanilla"], strict=True)]
            got = primary.loc[(task, regularizer)]
            half = stats.t.ppf(0.975, 9) * np.std(d, ddof=1) / math.sqrt(10)
            assert got.n_pairs == 10 and got.sizes == [100, 1000]
            assert got.delta == pytest.approx(np.mean(d))
            assert (got.ci_low, got.ci_high) == pytest.approx((np.mean(d) - half,
                                                               np.mean(d) + half))
            assert got.p_value == pytest.approx(_sign_flip_by_hand(d))
            by_hand[(task, regularizer)] = got.p_value
    # Holm by hand: the i-th smallest p times the 4 - i hypotheses left, kept monotone.
    adjusted, running = {}, 0.0
    for i, (key, p) in enumerate(sorted(by_hand.items(), key=lambda item: item[1])):
        running = max(running, min(1.0, (4 - i) * p))
        adjusted[key] = running
    for key, p in adjusted.items():
        assert primary.loc[key].p_holm == pytest.approx(p)
        assert primary.loc[key].significant == (p < 0.05)


def test_ranks_per_cell_and_overall(published):
    board, _ = published
    for key, ranks in RANK_SCORE.items():
        for regularizer, expected in ranks.items():
            assert cell(board, *key, regularizer).rank_score == expected
    for key, ranks in RANK_STABILITY.items():
        for regularizer, expected in ranks.items():
            assert cell(board, *key, regularizer).rank_stability == expected
    overall = board.overall.set_index("regularizer")
    # Means of the per-cell ranks above, over the four cells.
    assert overall.mean_rank_score.to_dict() == pytest.approx(
        {"l2sp": 1.5, "mixout": 1.75, "vanilla": 2.75})
    assert overall.mean_rank_stability.to_dict() == pytest.approx(
        {"l2sp": 1.625, "mixout": 1.625, "vanilla": 2.75})
    assert list(board.overall.regularizer) == ["l2sp", "mixout", "vanilla"]
    assert list(board.overall["rank"]) == [1, 2, 3]
    assert overall.ranked.all() and set(overall.cells_ranked) == {4}
    assert board.cells.in_overall.all()


def test_cost_relative_to_vanilla(published):
    board, _ = published
    overall = board.overall.set_index("regularizer")
    assert overall.time_vs_vanilla.to_dict() == pytest.approx(
        {"vanilla": 1.0, "l2sp": 1.2, "mixout": 2.0})
    # Two sizes, 100 and 1000 examples: 1x and 10x the time of 100 examples.
    assert overall.seconds["mixout"] == pytest.approx(20.0 * (1 + 10) / 2)


def test_failure_rate_overall_counts_failed_runs(published):
    board, _ = published
    rates = board.overall.set_index("regularizer").failure_rate
    # vanilla: RTE 100 seed 2 and two CoLA seeds at each size; l2sp: RTE 1000 seed 2; mixout:
    # CoLA 100 seed 3, at exactly 0.
    assert rates.to_dict() == pytest.approx({"vanilla": 5 / 20, "l2sp": 1 / 20,
                                             "mixout": 1 / 20})


# Failures, crashes and missing runs -----------------------------------------------------------

STEADY = [0.60, 0.62, 0.58, 0.64, 0.61]


def test_runs_collapsed_to_the_majority_class_are_the_least_stable(tmp_path):
    # "collapsed" predicts the majority class on every seed: no spread at all, every run failed.
    scores = {("rte", 100): {"vanilla": STEADY, "collapsed": [0.527] * 5,
                             "noisy": [0.55, 0.70, 0.60, 0.66, 0.53]}}
    board = build(frame_of(handmade_rows(scores), tmp_path), None, META)
    collapsed = cell(board, "rte", 100, "collapsed")
    assert collapsed["std"] == 0 and collapsed.failure_rate == 1
    assert [cell(board, "rte", 100, r).rank_stability
            for r in ("vanilla", "noisy", "collapsed")] == [1, 2, 3]
    assert board.overall.set_index("regularizer").mean_rank_stability["collapsed"] == 3


@pytest.mark.parametrize("status", ["failed", "diverged"])
def test_crashed_and_diverged_runs_are_failures_scored_at_the_baseline(tmp_path, status):
    rows = handmade_rows({("rte", 100): {"vanilla": STEADY, "shaky": [0.65, 0.66, 0.67]}})
    rows += [run("shaky", "rte", 100, seed, None, status=status, error="loss became nan")
             for seed in (3, 4)]
    board = build(frame_of(rows, tmp_path), expected_of({("rte", 100): {"vanilla": 0,
                                                                      "shaky": 0}}),
                  META)
    shaky = cell(board, "rte", 100, "shaky")
    scores = np.array([0.65, 0.66, 0.67, 0.527, 0.527])
    assert (shaky.n_completed, shaky.n_failures, shaky.failure_rate) == (5, 2, 0.4)
    assert shaky["mean"] == pytest.approx(scores.mean())
    assert shaky.std_not_failed == pytest.approx(np.std([0.65, 0.66, 0.67], ddof=1))
    # Paired over all five seeds, the two failures at the majority-class score.
    assert shaky.n_pairs == 5
    assert shaky.delta_vs_vanilla == pytest.approx((scores - STEADY).mean())
    assert shaky.p_value == pytest.approx(stats.wilcoxon(scores - STEADY).pvalue)
    markdown = render(board, [])
    what = "crashed" if status == "failed" else "diverged"
    row = row_of(section(markdown, "#### N = 100"), "shaky")
    assert row[7] == "2/5" and row[12] == f"5/5 (2 {what})"
    assert "Missing runs" not in markdown
    problems = section(markdown, "### Diverged and crashed runs (failures, scored at the "
                                 "majority class)")
    assert row_of(problems, "shaky")[3:] == ["3", what, "loss became nan"]


def test_a_classification_run_fails_at_the_majority_class_accuracy_whatever_its_mcc(tmp_path):
    # CoLA's majority class scores 0.69 accuracy (REFERENCES): an MCC above 0 at or below that
    # accuracy fails, an MCC of 0 above it does not.
    tests = {"vanilla": [(0.10, 0.75), (0.12, 0.76), (0.08, 0.74), (0.11, 0.75), (0.09, 0.74)],
             "skewed": [(0.05, 0.69), (0.06, 0.68), (0.00, 0.70), (0.07, 0.60), (0.02, 0.691)]}
    rows = [run(reg, "cola", 100, seed, mcc, test={"mcc": mcc, "accuracy": accuracy})
            for reg, seeds in tests.items() for seed, (mcc, accuracy) in enumerate(seeds)]
    board = build(frame_of(rows, tmp_path), None, META)
    failed = board.runs.set_index(["regularizer", "seed"]).failure
    assert [failed[("skewed", seed)] for seed in range(5)] == [1, 1, 0, 1, 0]
    assert not failed["vanilla"].any()
    skewed = cell(board, "cola", 100, "skewed")
    assert skewed.accuracy == pytest.approx(np.mean([a for _, a in tests["skewed"]]))
    # 3 of 5 failed against none: Fisher's p = 0.17, no telling apart at five seeds.
    assert skewed.stability_apart is False
    markdown = render(board, [])
    assert row_of(section(markdown, "#### N = 100"), "skewed")[3] == f"{skewed.accuracy:.3f}"
    assert "CoLA: test accuracy at or below the majority class's, 0.690 (361 of 522)" in markdown


def test_a_regression_run_fails_when_its_correlation_is_not_significant(tmp_path):
    # 750 test pairs: Pearson's r must exceed 0.0601 (one-sided 5%), whatever the Spearman
    # correlation in the score; constant predictions score r = 0.
    pearson = {"vanilla": [0.30, 0.35, 0.28, 0.33, 0.31],
               "marginal": [0.0601, 0.0602, 0.05, 0.0, 0.20]}
    rows = [run(reg, "stsb", 64, seed, r + 0.1,
                test={"pearson_spearman": r + 0.1, "pearson": r, "spearman": r + 0.2})
            for reg, seeds in pearson.items() for seed, r in enumerate(seeds)]
    rows += [run("collapsed", "stsb", 64, seed, 0.0, test={
        "pearson_spearman": 0.0, "pearson": 0.0, "spearman": 0.0}) for seed in range(5)]
    board = build(frame_of(rows, tmp_path), None, META)
    failed = board.runs.set_index(["regularizer", "seed"]).failure
    assert [failed[("marginal", seed)] for seed in range(5)] == [1, 0, 1, 1, 0]
    assert failed["collapsed"].all() and not failed["vanilla"].any()
    # The collapsed runs fail all five seeds, vanilla none: Fisher's p = 2/252, told apart.
    assert cell(board, "stsb", 64, "collapsed").stability_apart is True
    assert board.tasks.iloc[0].failure_line == pytest.approx(critical_correlation(750))


def test_a_cell_that_does_not_learn_is_shown_but_left_out_of_rank_and_comparisons(tmp_path):
    # CoLA: vanilla at the majority class on every seed but one; RTE learns.
    scores = {("rte", 100): {"vanilla": STEADY, "l2sp": [0.63, 0.66, 0.61, 0.65, 0.62]},
              ("cola", 100): {"vanilla": [0.0, 0.0, 0.0, 0.0, 0.05],
                              "l2sp": [0.20, 0.25, 0.22, 0.18, 0.24]}}
    board = build(frame_of(handmade_rows(scores), tmp_path), None, META)
    # CoLA vanilla's excess accuracy: 0, 0, 0, 0, 0.05: one-sided t-test p = 0.187.
    cola, rte = cell(board, "cola", 100, "l2sp"), cell(board, "rte", 100, "l2sp")
    assert cola.gate_p == pytest.approx(stats.ttest_1samp([0, 0, 0, 0, 0.05], 0,
                                                          alternative="greater").pvalue)
    assert cola.learns is False and rte.learns is True
    assert not cola.in_overall and rte.in_overall
    assert set(board.overall.cells_ranked) == {1}
    assert list(board.primary.task) == ["rte"]
    assert board.tasks.set_index("task").not_learning.to_dict() == {"rte": [], "cola": [100]}
    markdown = render(board, [])
    assert "**Does not learn at this budget: CoLA N = 100.**" in section(markdown, "## Headline")
    assert "#### N = 100 — does not learn at this budget (p = 0.187)" in markdown
    assert "(not learning: CoLA N=100)" in section(markdown, "## Overall")
    drawn = figures(board)
    assert drawn["cola-seeds"].axes[0].get_title() == "N = 100: does not learn at this budget"
    assert drawn["rte-seeds"].axes[0].get_title() == "N = 100"


HARD_AND_EASY = {("rte", 100): {"vanilla": STEADY, "steady": [0.61, 0.63, 0.59, 0.65, 0.62],
                                "fragile": [0.70, 0.72, 0.71, 0.73, 0.74]},
                 ("cola", 100): {"vanilla": [0.10, 0.12, 0.08, 0.15, 0.11],
                                 "steady": [0.12, 0.14, 0.10, 0.16, 0.13]}}


def test_a_regularizer_crashing_on_the_hard_cells_does_not_come_first(tmp_path):
    # "fragile" is best on RTE and crashes on every CoLA seed: at CoLA's baseline (0) it ranks
    # last there, so its mean rank is (1 + 3) / 2 against steady's (2 + 1) / 2.
    rows = handmade_rows(HARD_AND_EASY)
    rows += [run("fragile", "cola", 100, seed, None, status="failed", error="CUDA out of memory")
             for seed in range(5)]
    board = build(frame_of(rows, tmp_path), None, META)
    overall = board.overall.set_index("regularizer")
    assert list(board.overall.regularizer) == ["steady", "fragile", "vanilla"]
    assert overall.mean_rank_score.to_dict() == pytest.approx(
        {"steady": 1.5, "fragile": 2.0, "vanilla": 2.5})
    assert overall.failure_rate["fragile"] == 0.5 and overall.ranked.all()


@pytest.mark.parametrize("planned", [True, False], ids=["plan", "no plan"])
def test_a_regularizer_missing_cells_is_shown_apart(tmp_path, planned):
    # "fragile" never stored a CoLA run, as when every tuning trial of its study failed.
    expected = expected_of({**HARD_AND_EASY, ("cola", 100): {**HARD_AND_EASY[("cola", 100)],
                                                             "fragile": None}})
    board = build(frame_of(handmade_rows(HARD_AND_EASY), tmp_path),
                  expected if planned else None, META)
    overall = board.overall.set_index("regularizer")
    assert list(board.overall.regularizer) == ["steady", "vanilla", "fragile"]
    assert list(board.overall["rank"][:2]) == [1, 2] and math.isnan(overall["rank"]["fragile"])
    assert not overall.ranked["fragile"] and overall.cells_complete["fragile"] == 1
    assert overall.missing["fragile"] == "CoLA N=100: 5/5 seeds (0, 1, 2, 3, 4)"
    assert board.cells.in_overall.all()
    markdown = render(board, [])
    assert "fragile" not in row_of(section(markdown, "## Overall"), "steady")
    apart = section(markdown, "### Not ranked: missing runs")
    assert row_of(apart, "fragile") == ["fragile", "1/2", "0%",
                                        "CoLA N=100: 5/5 seeds (0, 1, 2, 3, 4)"]


def test_the_overall_rank_covers_the_largest_complete_block(tmp_path):
    # mixout misses two seeds of RTE 1000: ranking everyone over the other three cells (9
    # results) beats ranking two regularizers over four (8).
    rows = [r for r in handmade_rows()
            if not (r["regularizer"] == "mixout" and r["task"] == "rte" and r["n_train"] == 1000
                    and r["seed"] >= 3)]
    board = build(frame_of(rows, tmp_path), expected_of(), META)
    overall = board.overall.set_index("regularizer")
    assert overall.ranked.all() and set(overall.cells_ranked) == {3}
    left_out = board.cells[~board.cells.in_overall]
    assert set(zip(left_out.task, left_out.n_train, strict=True)) == {("rte", 1000)}
    # Means of RANK_SCORE without RTE 1000.
    assert overall.mean_rank_score.to_dict() == pytest.approx(
        {"l2sp": 1.0, "mixout": 2.0, "vanilla": 3.0})
    assert "(incomplete: RTE N=1000)" in section(render(board, []), "## Overall")


# The published files --------------------------------------------------------------------------

def test_markdown_holds_the_cells(published):
    board, path = published
    markdown = path.read_text()
    table = section(section(section(markdown, "## Results by task and size"), "### RTE"),
                    "#### N = 100")
    x = np.array(SCORES[("rte", 100)]["l2sp"])
    l2sp = row_of(table, "l2sp")
    # RTE's accuracy is its score.
    assert l2sp[:6] == ["1", "l2sp", f"{x.mean():.3f} ± {x.std(ddof=1):.3f}",
                        f"{x.mean():.3f}", "0.610",
                        f"{np.subtract(*np.percentile(x, [75, 25])):.3f}"]
    # l2sp beats vanilla on all five seeds: p = 2/32, uncorrected. Its spread's interval: s times
    # the square roots of 4 over chi-square(4)'s 97.5% and 2.5% quantiles, 11.143 and 0.4844.
    s = x.std(ddof=1)
    spread = f"{s:.3f} [{s * math.sqrt(4 / 11.1433):.3f}, {s * math.sqrt(4 / 0.48442):.3f}]"
    assert l2sp[7:] == ["0/5", "+0.046", "0.062", "1", spread, "5/5", "–", "alpha=0.001"]
    # vanilla's one failure against none is no difference (Fisher's p = 1), nor mixout's
    # variance 7.1 times l2sp's (F(4, 4) needs 9.6 for p = 0.05, two-sided).
    assert row_of(table, "vanilla")[7:11] == ["1/5", "–", "–", "3 ≈"]
    assert row_of(table, "mixout")[10] == "2 ≈"
    assert "### CoLA (Matthews correlation)" in markdown
    overall = section(markdown, "## Overall")
    assert row_of(overall, "l2sp")[:4] == ["1", "l2sp", "1.50", "1.62"]
    assert "mean rank across the cells" in overall and "all 4 (task, size) cells" in overall
    assert "Not ranked" not in overall
    reading = section(markdown, "## How to read the tables")
    assert "adjacent ranks" in overall and "8 such tests on this board" in reading
    assert "With 5 paired seeds the smallest is 0.062" in reading
    assert "Student-t interval of the mean" in reading
    assert "RTE: test accuracy at or below the majority class's, 0.527 (73 of 139)" in reading
    assert "Score as the training set grows" not in markdown  # the cells' tables again
    assert row_of(section(markdown, "## Cost"), "mixout")[2:] == ["2.00", "800"]
    provenance = section(markdown, "## Provenance")
    assert "60 finished" in provenance
    assert "1 older final runs of the same seeds were superseded" in provenance
    assert "Missing runs" not in provenance


def test_header_states_machine_software_compute_plugins_and_methods(published):
    board, path = published
    header = path.read_text().split("\n## ")[0]
    assert "- **Machine**: CPU Test CPU 9000; GPU none" in header
    assert ("- **Device and precision**: cpu, bf16 autocast; in fp32 while training: mixout "
            "(head, layers 3–5)\n") in header
    assert ("- **Software**: regbench 0.1.0, torch 2.13.0, transformers 5.0, python 3.11.7; "
            "commit abc1234") in header
    # Per 100 examples 10, 12 and 20 s; five seeds of 100 and 1000 examples on two tasks:
    # (10 + 12 + 20) * 11 * 5 * 2 = 4620 s; the one tuning run took 12 s.
    assert ("- **Compute**: 1 h 17 min in the 60 final runs shown, plus 12 s in the 1 tuning "
            "runs stored for these cells") in header
    assert "of wall time (while any run was running)" in header
    assert "in progress" not in header
    # The date line is when the runs were trained (the store's clock: today), not a render date.
    first, last = (pd.Timestamp(t).strftime("%Y-%m-%d %H:%M UTC")
                   for t in (board.provenance["first_run"], board.provenance["last_run"]))
    assert f"Final runs trained from {first} to {last}" in header
    assert "l2sp 1 (regbench 0.1.0)" in header
    assert ("- **Statistics**: primary comparisons: two-sided sign-flip permutation test of the "
            "mean paired difference to vanilla, per (regularizer, task), the sizes that learn "
            "pooled, paired by (size, seed) (exact, all 2^n sign flips in 4), Holm over the 4 "
            "primary comparisons, a difference at p (Holm) < 0.05; 95% Student-t interval of "
            "the mean over seeds; per-cell tests: two-sided Wilcoxon signed-rank test against "
            "vanilla over paired seeds, per cell, exploratory and uncorrected") in header


def test_wall_time_counts_parallel_runs_once_and_leaves_out_pauses():
    # Two workers: runs from 10:00:00 to 10:00:10 and from 10:00:05 to 10:00:15; the suite is
    # resumed the next day for one run of 20 s.
    runs = pd.DataFrame({"finished_at": ["2026-01-01 10:00:10", "2026-01-01 10:00:15",
                                         "2026-01-02 09:00:20"],
                         "seconds": [10.0, 10.0, 20.0]})
    assert _wall_seconds(runs) == pytest.approx(15.0 + 20.0)
    assert _wall_seconds(runs.iloc[:0]) is None


def test_csv_and_json_hold_the_same_numbers(published):
    board, path = published
    numbers = ["n_train", "mean", "std", "min", "max", "iqr", "ci_low", "ci_high", "failure_rate",
               "delta_vs_vanilla", "p_value", "rank_score", "rank_stability", "time_vs_vanilla",
               "spread_low", "spread_high", "accuracy", "gate_p"]
    from_csv = pd.read_csv(path.with_suffix(".csv"))
    data = json.loads(path.with_suffix(".json").read_text())
    from_json = pd.DataFrame(data["cells"])
    for copy in (from_csv, from_json):
        pd.testing.assert_frame_equal(copy[["task", "regularizer", *numbers]],
                                      board.cells[["task", "regularizer", *numbers]],
                                      check_dtype=False, rtol=1e-12)
    primary = ["n_pairs", "delta", "ci_low", "ci_high", "p_value", "p_holm", "significant"]
    pd.testing.assert_frame_equal(pd.DataFrame(data["primary"])[primary], board.primary[primary],
                                  check_dtype=False, rtol=1e-12)
    assert [t["pairs"] for t in data["tasks"]] == [10, 10]
    assert data["meta"] == META
    assert len(data["runs"]) == 60 and data["provenance"]["superseded_runs"] == 1
    assert from_csv.loc[0, "mean"] == pytest.approx(np.mean(SCORES[("rte", 100)]["l2sp"]))


def test_plots_are_written(published):
    _, path = published
    markdown = path.read_text()
    images = json.loads(path.with_suffix(".json").read_text())["images"]
    # Two sizes: no sizes plot, the seeds plot shows both; the tuning budget's of the one tuned
    # cell (l2sp on RTE); no run carries a noise measure.
    assert sorted(images) == ["board-cola-seeds.png", "board-forest.png", "board-rte-budget.png",
                              "board-rte-seeds.png"]
    for name in images:
        image = path.parent / name
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert image.stat().st_size > 10_000
        assert f"]({image.name})" in markdown
    # The forest plot heads the board, in the headline.
    assert "](board-forest.png)" in section(markdown, "## Headline")


def test_plots_name_the_metric_and_do_not_magnify_sub_resolution_differences(tmp_path):
    # Seeds half a thousandth apart, around the failure line, as the quickstart's MRPC.
    scores = {("mrpc", 100): {"vanilla": [0.7496, 0.7501, 0.7499],
                              "l2sp": [0.7500, 0.7498, 0.7501]}}
    board = build(frame_of(handmade_rows(scores), tmp_path), None, META)
    drawn = figures(board)
    assert set(drawn) == {"forest", "mrpc-seeds"}
    for figure in [drawn["mrpc-seeds"]]:
        assert figure.get_suptitle() == "MRPC: test mean of F1 and accuracy of the final seeds"
        for ax in figure.axes:
            low, high = ax.get_ylim()
            assert high - low == pytest.approx(MIN_SPAN) and low < 0.7496 and 0.7501 < high


def test_every_regularizer_of_a_full_board_has_its_own_color(tmp_path):
    names = ["vanilla", *(f"reg{i:02d}" for i in range(19))]
    scores = {("rte", n): {name: [0.60 + i / 100] for i, name in enumerate(names)}
              for n in (100, 300, 1000)}  # three sizes: a sizes plot
    board = build(frame_of(handmade_rows(scores), tmp_path), None, META)
    ax = figures(board)["rte-sizes"].axes[0]
    colors = {line.get_label(): line.get_color() for line in ax.get_lines()
              if line.get_label() in names}
    assert set(colors) == set(names) and colors["vanilla"] == (0.0, 0.0, 0.0)
    assert len(set(colors.values())) == len(names)


# Publishing -----------------------------------------------------------------------------------

def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_board_of_fewer_runs_replaces_a_published_one_only_when_forced(tmp_path):
    frame = frame_of(handmade_rows(), tmp_path)
    out = tmp_path / "out"
    publish(frame, None, out, "board", META)
    before = _files(out)
    smaller = frame[frame.task == "rte"]
    with pytest.raises(RegbenchError, match=r"shows 60 runs and this one only 30.*--force"):
        publish(smaller, None, out, "board", META)
    assert _files(out) == before
    publish(smaller, None, out, "board", META, force=True)
    # CoLA's plots went with the board that had them.
    assert sorted(p.name for p in out.glob("*.png")) == ["board-forest.png",
                                                         "board-rte-seeds.png"]
    assert json.loads((out / "board.json").read_text())["provenance"]["runs"] == {"finished": 30}


def test_an_unreadable_published_board_is_replaced_only_when_forced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "board.json").write_text("{")
    frame = frame_of(handmade_rows(), tmp_path)
    with pytest.raises(RegbenchError, match="Cannot read how many runs"):
        publish(frame, None, out, "board", META)
    publish(frame, None, out, "board", META, force=True)
    assert json.loads((out / "board.json").read_text())["provenance"]["runs"] == {"finished": 60}


def test_an_interrupted_publish_leaves_the_old_board_whole(tmp_path, monkeypatch):
    frame = frame_of(handmade_rows(), tmp_path)
    out = tmp_path / "out"
    publish(frame[frame.task == "rte"], None, out, "board", META)
    before = _files(out)
    written = []

    def interrupted(fd):  # the third file is cut off as it is written
        written.append(fd)
        if len(written) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(outputs.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        publish(frame, None, out, "board", META)
    assert _files(out) == before  # and no temporary file is left behind


def test_publishing_reads_the_store_alone_and_loads_no_deep_learning_stack(tmp_path):
    """What `regbench leaderboard` does once its suite is read, in a fresh interpreter, with no
    GLUE data and no hub to reach."""
    frame_of(handmade_rows(), tmp_path)
    script = f"""
import sys
from regbench.leaderboard import add_test_references, publish
from regbench.store import Store

frame = Store("sqlite:///{tmp_path / 'runs.db'}").frame("handmade")
frame, computed = add_test_references(frame, ["rte", "cola"], "/nonexistent")
assert not computed
publish(frame, None, {str(tmp_path / 'out')!r}, "board", {{}})
loaded = [name for name in ("torch", "transformers") if name in sys.modules]
assert not loaded, loaded
"""
    subprocess.run([sys.executable, "-c", script], check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1", "REGBENCH_GLUE_DIR": "/nonexistent"})
    assert (tmp_path / "out" / "board.md").is_file()


def test_an_older_store_gets_its_test_references_from_the_data_once(tmp_path, glue_dir):
    # Runs stored before the column existed: no test reference.
    rows = [{k: v for k, v in row.items() if k != "test_reference"} for row in handmade_rows()]
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    frame = frame_of(rows, tmp_path)
    assert frame.test_reference.isna().all()
    with pytest.raises(RegbenchError, match=r"The runs of cola, rte were stored without their "
                                            r"test half's reference .*No GLUE data"):
        add_test_references(frame, ["rte", "cola"], str(tmp_path / "no-glue"))
    filled, computed = add_test_references(frame, ["rte", "cola"], str(glue_dir))
    assert set(computed) == {"rte", "cola"} and filled.test_reference.notna().all()
    Store(url).set_test_references(computed)
    stored = Store(url, create=False).frame("handmade")
    assert stored.test_reference.map(json.dumps).tolist() == filled.test_reference.map(
        json.dumps).tolist()
    assert add_test_references(stored, ["rte", "cola"], str(tmp_path / "no-glue"))[1] == {}


@pytest.mark.parametrize("module", ["regbench.leaderboard", "regbench.plots",
                                    "regbench.markdown", "regbench.board"])
def test_the_publishing_modules_import_no_deep_learning_stack(module):
    subprocess.run([sys.executable, "-c", f"import sys, {module}; loaded = [m for m in ('torch', "
                    "'transformers') if m in sys.modules]; assert not loaded, loaded"], check=True)


def test_the_leaderboard_command_completes_an_older_store_once(tmp_path, glue_dir, monkeypatch):
    suite = tmp_path / "handmade.yaml"
    suite.write_text("tasks: [rte]\nsizes: [100]\nfinal_seeds: [0, 1, 2, 3, 4]\n"
                     "regularizers: [vanilla, l2sp]\n")
    recipe = load_suite(str(suite)).recipe.as_dict()
    rows = [{**row, "recipe": recipe, "test_reference": None}
            for row in handmade_rows({("rte", 100): SCORES[("rte", 100)]})
            if row["regularizer"] != "mixout"]
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    frame_of(rows, tmp_path)
    command = ["leaderboard", "--suite", str(suite), "--storage", url, "--out"]
    assert main([*command, str(tmp_path / "first"), "--data-dir", str(glue_dir)]) == 0
    assert Store(url, create=False).frame().test_reference.notna().all()
    monkeypatch.setenv("REGBENCH_GLUE_DIR", str(tmp_path / "no-glue"))  # no data any more
    assert main([*command, str(tmp_path / "second")]) == 0
    assert ((tmp_path / "first" / "handmade.md").read_text()
            == (tmp_path / "second" / "handmade.md").read_text())


def test_test_references_are_the_constant_predictor_on_the_test_half(glue_dir):
    # RTE: the training set's majority is entailment (1249 of 2490); the dev set holds 146
    # entailment of 277, and its stratified test half of 139 keeps the proportion, 73. CoLA's
    # is acceptable: 361 of its 522. STS-B's 1500 dev pairs halve to 750.
    references = leaderboard.references_of(["rte", "cola", "stsb"], str(glue_dir))
    rte, cola, stsb = (references[task] for task in ("rte", "cola", "stsb"))
    assert (rte["test_size"], rte["label_counts"], rte["constant_prediction"]) == (
        139, [73, 66], 0)
    assert rte["constant_scores"] == {"accuracy": pytest.approx(73 / 139)}
    assert (cola["test_size"], cola["label_counts"][1], cola["constant_prediction"]) == (
        522, 361, 1)
    assert cola["constant_scores"] == {"mcc": 0.0, "accuracy": pytest.approx(361 / 522)}
    assert stsb["test_size"] == 750 and stsb["label_counts"] is None
    assert stsb["constant_scores"] == {"pearson_spearman": 0.0, "pearson": 0.0,
                                       "spearman": 0.0}


# Partial and degenerate results ---------------------------------------------------------------

def test_partial_cells_are_flagged(tmp_path):
    rows = [r for r in handmade_rows()
            if not (r["regularizer"] == "mixout" and r["task"] == "rte" and r["n_train"] == 1000
                    and r["seed"] >= 3)]
    rows.append(run("mixout", "rte", 1000, 3, None, status="failed", error="CUDA out of memory"))
    board = build(frame_of(rows, tmp_path), expected_of(), META)
    c = cell(board, "rte", 1000, "mixout")
    assert (c.n_completed, c.n_finished, c.n_planned, c.n_crashed) == (4, 3, 5, 1)
    assert c["mean"] == pytest.approx(np.mean([0.70, 0.71, 0.69, 0.527]))
    markdown = render(board, [])
    table = section(section(section(markdown, "## Results by task and size"), "### RTE"),
                    "#### N = 1000")
    assert row_of(table, "mixout")[12] == "**4/5 (1 crashed)**"
    missing = section(markdown, "### Missing runs")
    assert row_of(missing, "mixout") == ["RTE", "1000", "mixout", "4/5", "4"]
    crashed = section(markdown, "### Diverged and crashed runs (failures, scored at the majority "
                                "class)")
    assert row_of(crashed, "mixout")[3:] == ["3", "crashed", "CUDA out of memory"]
    assert "1 failed, 58 finished, 1 missing" in markdown


def test_runs_outside_the_plan_are_left_out(tmp_path):
    rows = [*handmade_rows(), run("l2sp", "rte", 100, 9, 0.9)]
    board = build(frame_of(rows, tmp_path), expected_of(), META)
    assert cell(board, "rte", 100, "l2sp")["mean"] == pytest.approx(0.634)
    assert board.provenance["unplanned_runs"] == 1


def test_without_a_plan_every_seed_of_a_size_is_expected(tmp_path):
    rows = [r for r in handmade_rows() if not (r["regularizer"] == "l2sp" and r["seed"] == 0)]
    board = build(frame_of(rows, tmp_path), None, META)
    assert set(board.cells.query("regularizer == 'l2sp'").n_completed) == {4}
    assert set(board.cells.n_planned) == {5}


def test_runs_without_a_test_reference_are_an_error(tmp_path):
    rows = [{**row, "test_reference": None} if row["task"] == "cola" else row
            for row in handmade_rows()]
    with pytest.raises(RegbenchError, match=r"No test reference stored for task\(s\) cola: "):
        build(frame_of(rows, tmp_path), None, META)


def test_a_primary_comparison_that_differs_heads_the_board(tmp_path):
    # Seven seeds. Against vanilla, "a" wins on every seed by 0.01 to 0.07: 2 of the 128 sign
    # patterns are as extreme, p = 1/64. "b" loses the third: flipping a set S of the steps
    # (in hundredths, summing to 28) gives |28 - 2 sum(S)| >= 28 - 6 = 22 for S = {}, {1},
    # {2}, {3}, {1, 2} and their complements, p = 10/128. Holm over the two: a: 2 * 1/64 = 1/32
    # < 0.05, b: max(1/32, 10/128) = 10/128.
    vanilla = np.array([0.60, 0.61, 0.62, 0.58, 0.57, 0.59, 0.63])
    steps = 0.01 * np.arange(1, 8)
    scores = {("rte", 300): {"vanilla": vanilla, "a": vanilla + steps,
                             "b": vanilla + steps * [1, 1, -1, 1, 1, 1, 1]}}
    board = build(frame_of(handmade_rows(scores), tmp_path), None, META)
    primary = board.primary.set_index("regularizer")
    assert primary.p_value.to_dict() == pytest.approx({"a": 1 / 64, "b": 10 / 128})
    assert primary.p_holm.to_dict() == pytest.approx({"a": 1 / 32, "b": 10 / 128})
    assert primary.significant.to_dict() == {"a": True, "b": False}
    headline = section(render(board, []), "## Headline")
    assert ("**1 of 2 differ from vanilla** (2 comparisons, each over 7 (size, seed) pairs at "
            "N = 300)") in headline
    # a's differences: mean 0.04, standard deviation 0.0216, t(0.975, 6) = 2.4469: ± 0.020.
    assert row_of(headline, "a") == ["a", "+0.040", "[+0.020, +0.060]", "0.016", "0.031"]
    assert ("The other 1 do not differ from vanilla after Holm's correction. With 7 pairs the "
            "smallest p is 0.016") in headline
    assert row_of(section(render(board, []), "## Overall"), "a")[5] == "1 / 0"


def test_a_board_that_can_reject_nothing_says_so_and_what_it_could_detect(tmp_path):
    # Three seeds: no sign-flip p below 2/8, far above Holm's first threshold.
    scores = {("rte", 300): {"vanilla": [0.60, 0.62, 0.64], "a": [0.70, 0.72, 0.75]}}
    board = build(frame_of(handmade_rows(scores), tmp_path), None, META)
    task = board.tasks.iloc[0]
    assert (task.pairs, task.smallest_p, task.differ) == (3, 0.25, 0)
    headline = section(render(board, []), "## Headline")
    assert ("**No regularizer differs from vanilla** (1 comparisons, each over 3 (size, seed) "
            "pairs at N = 300). With 3 pairs the smallest p is 0.250, above Holm's first threshold "
            "(0.05 / 1): no comparison could have been significant.") in headline


def test_single_seed_shows_no_spread(tmp_path):
    scores = {("rte", 100): {"vanilla": [0.6], "l2sp": [0.7]}}
    board = build(frame_of(handmade_rows(scores), tmp_path), None, META)
    assert math.isnan(cell(board, "rte", 100, "l2sp")["std"])
    row = row_of(section(render(board, []), "#### N = 100"), "l2sp")
    assert row[2] == "0.700 ± –" and row[6] == "[–, –]"


def test_all_diverged_cell_ranks_last(tmp_path):
    rows = [run("vanilla", "cola", 100, s, 0.1 * s) for s in range(3)]
    rows += [run("mixout", "cola", 100, s, None, status="diverged",
                 error="training loss became nan at step 7 of 100") for s in range(3)]
    board = build(frame_of(rows, tmp_path), None, META)
    mixout = cell(board, "cola", 100, "mixout")
    assert mixout["mean"] == 0 and mixout.failure_rate == 1.0
    assert mixout.rank_score == 2 and mixout.rank_stability == 2
    markdown = render(board, [])
    assert row_of(section(markdown, "#### N = 100"), "mixout")[2:8] == [
        "0.000 ± 0.000", "–", "0.000", "0.000", "[0.000, 0.000]", "3/3"]
    assert "training loss became nan at step 7" in section(markdown, "## Provenance")


def test_missing_vanilla(tmp_path):
    scores = {("rte", 100): {"l2sp": [0.6, 0.7, 0.65]}}
    board = build(frame_of(handmade_rows(scores), tmp_path), None, META)
    l2sp = cell(board, "rte", 100, "l2sp")
    assert math.isnan(l2sp.p_value) and math.isnan(l2sp.time_vs_vanilla)
    assert board.primary.empty
    assert ("No primary comparison: no paired runs of vanilla and another regularizer"
            in section(render(board, []), "## Headline"))


@pytest.mark.parametrize("frame", [Store("sqlite://").frame(), pd.DataFrame()],
                         ids=["empty store", "no columns"])
def test_an_empty_frame_renders_but_is_never_published(tmp_path, frame):
    board = build(frame, None, META)
    assert "No final runs" in render(board, [])
    assert board.to_json()["cells"] == [] and not figures(board)
    with pytest.raises(RegbenchError, match="no board to publish"):
        publish(frame, None, tmp_path, "empty", META, force=True)
    assert not list(tmp_path.iterdir())


def test_planned_but_never_run(tmp_path):
    expected = expected_of({("rte", 100): {"vanilla": None}}, seeds=3)
    board = build(Store("sqlite://").frame(), expected, META)
    assert board.cells.n_planned.tolist() == [3] and board.cells.n_completed.tolist() == [0]
    markdown = render(board, [])
    assert row_of(section(markdown, "### Missing runs"), "vanilla") == [
        "RTE", "100", "vanilla", "0/3", "0, 1, 2"]
    assert "No regularizer has completed a cell yet" in markdown


# Noise stability -------------------------------------------------------------------------------

def test_noise_stability_within_cells_per_layer_and_in_plots(tmp_path):
    """Within each cell the better seeds move less, as Hua et al. find, while across cells the
    better cell moves more: the board reports the first and never pools. l2sp's runs predate the
    distance, mixout's the per-layer table; a crashed run carries no measure."""
    noise = {"vanilla": [0.30, 0.12, 0.40, 0.20], "l2sp": [0.50, 0.55, 0.45, 0.60],
             "mixout": [0.31, 0.32, 0.33]}
    scores = {"vanilla": [0.60, 0.64, 0.58, 0.62], "l2sp": [0.70, 0.68, 0.72, 0.66],
              "mixout": [0.64, 0.66, 0.62]}
    parts = {"vanilla": ("table", "distance"), "l2sp": ("table",), "mixout": ()}
    rows = [run(reg, "rte", 100, seed, scores[reg][seed],
                noise_stability=noise_measured(noise[reg][seed], parts=parts[reg]))
            for reg in noise for seed in range(len(noise[reg]))]
    rows.append(run("l2sp", "rte", 100, 4, None, status="failed"))
    board = build(frame_of(rows, tmp_path), None, META)
    for reg in noise:
        assert cell(board, "rte", 100, reg).noise == pytest.approx(np.mean(noise[reg]))
    mean = pytest.approx(np.mean(noise["vanilla"]), abs=1e-6)  # kept to six decimals
    assert json.loads(cell(board, "rte", 100, "vanilla").noise_table) == [[mean, mean],
                                                                          [None, mean]]
    curves = board.noise_curves.set_index(["regularizer", "injected", "layer"])
    assert len(curves) == 2 * 3  # vanilla's and l2sp's (i, k): (0, 1), (0, 2), (1, 2)
    top = curves.loc[("vanilla", 0, 2)]  # kept to six decimals, as the mean tables
    assert top.relative_mean == pytest.approx(np.mean(noise["vanilla"]), abs=1e-6)
    assert top.relative_std == pytest.approx(np.std(noise["vanilla"], ddof=1), abs=1e-6)
    assert top.distance_mean == pytest.approx(10 * np.mean(noise["vanilla"]), abs=1e-6)
    assert (top.relative_runs, top.distance_runs) == (4, 4)
    assert curves.loc[("l2sp", 1, 2)].distance_runs == 0
    assert np.isnan(curves.loc[("l2sp", 1, 2)].distance_mean)

    pooled = stats.spearmanr([s for reg in noise for s in scores[reg]],
                             [v for reg in noise for v in noise[reg]]).statistic
    within = np.mean([stats.spearmanr(scores[reg], noise[reg]).statistic for reg in noise])
    assert pooled > 0 > within
    overall = board.noise_correlations.iloc[0]
    assert pd.isna(overall.n_train) and (overall.cells, overall.runs) == (3, 11)
    assert overall.within_spearman == pytest.approx(within) and overall.within_p < 0.05
    by_size = board.noise_correlations.iloc[1]
    assert by_size.n_train == 100 and by_size.across_cells == 3
    means = stats.spearmanr([np.mean(scores[reg]) for reg in noise],
                            [np.mean(noise[reg]) for reg in noise])
    assert by_size.across_spearman == pytest.approx(means.statistic)

    markdown = render(board, [])
    noise_section = section(markdown, "## Noise stability")
    assert re.search(rf"\| RTE +\| all +\| 11 +\| 3 +\| {within:.2f} +\| ", noise_section)
    assert "5% noise, the first 32 test examples, 2 draws" in noise_section
    assert "The per-layer table is missing for 3 of 11 measured runs" in noise_section
    assert "The per-layer L2 distance is missing for 4 of 11 measured runs" in noise_section
    vanilla = row_of(section(markdown, "#### N = 100"), "vanilla")
    assert vanilla[13] == f"{np.mean(noise['vanilla']):.3f}"
    drawn = figures(board)
    assert f"ρ = {within:.2f}" in drawn["rte-noise"].axes[0].get_title()
    layers = drawn["rte-layers"].axes[0]
    assert "relative change" in layers.get_ylabel()  # l2sp has no distance to draw
    assert {line.get_label() for line in layers.get_lines()} == {"vanilla", "l2sp"}
