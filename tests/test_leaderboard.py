"""The leaderboard against statistics computed here by hand or by NumPy, on small runs tables."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from regbench import leaderboard, outputs
from regbench.board import _wall_seconds, build
from regbench.errors import RegbenchError
from regbench.leaderboard import publish
from regbench.markdown import render
from regbench.plots import MIN_SPAN, figures
from regbench.stats import (
    EXACT,
    NORMAL,
    PERMUTATION,
    holm,
    rank,
    smallest_wilcoxon_p,
    t_interval,
    wilcoxon,
)
from regbench.store import Store

BASELINES = {"rte": 0.527, "cola": 0.0, "mrpc": 0.75}
META = {"suite": "handmade", "model": "minilm", "recipe": {"learning_rate": 2e-5},
        "date": "2025-01-02"}
PARAMS = {"vanilla": {}, "l2sp": {"alpha": 0.001}, "mixout": {"p": 0.1}}
SECONDS = {"vanilla": 10.0, "l2sp": 12.0, "mixout": 20.0}  # per 100 training examples
# (task, N) -> regularizer -> test score of seeds 0..4. RTE fails at or below 0.527, CoLA at 0.
SCORES = {
    ("rte", 100): {"vanilla": [0.60, 0.62, 0.50, 0.64, 0.58],
                   "l2sp": [0.63, 0.66, 0.61, 0.65, 0.62],
                   "mixout": [0.61, 0.60, 0.59, 0.70, 0.55]},
    ("rte", 1000): {"vanilla": [0.66, 0.68, 0.67, 0.65, 0.69],
                    "l2sp": [0.67, 0.70, 0.52, 0.69, 0.68],
                    "mixout": [0.70, 0.71, 0.69, 0.72, 0.70]},
    ("cola", 100): {"vanilla": [0.10, 0.00, 0.20, 0.15, -0.05],
                    "l2sp": [0.20, 0.25, 0.22, 0.18, 0.24],
                    "mixout": [0.05, 0.30, 0.28, 0.00, 0.26]},
    # The same spread around two means without failures: their stability ranks tie.
    ("cola", 1000): {"vanilla": [-0.02, 0.00, 0.02, 0.04, 0.06],
                     "l2sp": [0.40, 0.42, 0.44, 0.46, 0.48],
                     "mixout": [0.30, 0.32, 0.34, 0.36, 0.38]},
}
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


PROVENANCE = {"regbench": "0.1.0", "torch": "2.13.0", "transformers": "5.0",
              "python": "3.11.7", "git_commit": "abc1234", "device": "cpu", "bf16": True,
              "cpu": "Test CPU 9000", "gpu": None, "distribution": "regbench 0.1.0"}


def run(regularizer: str, task: str, n: int, seed: int, score: float | None,
        status: str = "finished", phase: str = "final", **extra) -> dict:
    """One row of the runs table, as the suite runner writes it."""
    return {"key": f"{phase}-{regularizer}-{task}-{n}-{seed}-{score}", "suite": "handmade",
            "phase": phase, "trial": None, "regularizer": regularizer,
            "regularizer_version": "1", "params": PARAMS.get(regularizer, {}), "task": task,
            "n_train": n, "data_seed": 0, "seed": seed, "model": "minilm", "recipe": {},
            "status": status, "validation": {}, "test": {} if score is None else {"m": score},
            "validation_score": score, "test_score": score, "steps": 100,
            "seconds": SECONDS.get(regularizer, 1.0) * n / 100, "peak_memory_mb": 800.0,
            "error": None, "provenance": PROVENANCE, **extra}


def frame_of(rows: list[dict], tmp_path: Path) -> pd.DataFrame:
    """The rows written to, and read back from, a real store."""
    store = Store(f"sqlite:///{tmp_path / 'runs.db'}")
    for row in rows:
        store.put(row)
    return store.frame("handmade")


def handmade_rows(scores: dict = SCORES) -> list[dict]:
    return [run(reg, task, n, seed, score) for (task, n), by_reg in scores.items()
            for reg, seeds in by_reg.items() for seed, score in enumerate(seeds)]


def expected_of(scores: dict = SCORES, seeds: int = 5) -> pd.DataFrame:
    return pd.DataFrame([{"regularizer": reg, "task": task, "n_train": n, "seed": seed}
                         for (task, n), by_reg in scores.items() for reg in by_reg
                         for seed in range(seeds)])


def cell(board, task: str, n: int, regularizer: str) -> pd.Series:
    c = board.cells
    return c[(c.task == task) & (c.n_train == n) & (c.regularizer == regularizer)].iloc[0]


def section(markdown: str, heading: str) -> str:
    """The text under `heading` up to the next heading of the same or a higher level."""
    level = heading.split()[0]
    start = markdown.index(heading + "\n")
    rest = markdown[start + len(heading) + 1:]
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
    frame = frame_of(rows, tmp)
    markdown = publish(frame, expected_of(), tmp / "out", "board", META, BASELINES)
    return build(frame, expected_of(), BASELINES, META), markdown


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
            failed = x <= BASELINES[task]
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
    assert board.cells.p_holm.notna().sum() == 8
    assert not board.cells.significant.any()


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
    board = build(frame_of(handmade_rows(scores), tmp_path), None, BASELINES, META)
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
                  BASELINES, META)
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
    assert row[6] == "2/5" and row[10] == f"5/5 (2 {what})"
    assert "Missing runs" not in markdown
    problems = section(markdown, "### Diverged and crashed runs (failures, scored at the "
                                 "majority class)")
    assert row_of(problems, "shaky")[3:] == ["3", what, "loss became nan"]


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
    board = build(frame_of(rows, tmp_path), None, BASELINES, META)
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
                  expected if planned else None, BASELINES, META)
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
    board = build(frame_of(rows, tmp_path), expected_of(), BASELINES, META)
    overall = board.overall.set_index("regularizer")
    assert overall.ranked.all() and set(overall.cells_ranked) == {3}
    left_out = board.cells[~board.cells.in_overall]
    assert set(zip(left_out.task, left_out.n_train, strict=True)) == {("rte", 1000)}
    # Means of RANK_SCORE without RTE 1000.
    assert overall.mean_rank_score.to_dict() == pytest.approx(
        {"l2sp": 1.0, "mixout": 2.0, "vanilla": 3.0})
    assert "(left out: RTE N=1000)" in section(render(board, []), "## Overall")


# The published files --------------------------------------------------------------------------

def test_markdown_holds_the_cells(published):
    board, path = published
    markdown = path.read_text()
    table = section(section(markdown, "### RTE (accuracy)"), "#### N = 100")
    x = np.array(SCORES[("rte", 100)]["l2sp"])
    l2sp = row_of(table, "l2sp")
    assert l2sp[:5] == ["1", "l2sp", f"{x.mean():.3f} ± {x.std(ddof=1):.3f}", "0.610",
                        f"{np.subtract(*np.percentile(x, [75, 25])):.3f}"]
    # l2sp beats vanilla on all five seeds: p = 2/32, the family's smallest; Holm: 8 * 2/32.
    assert l2sp[6:] == ["0/5", "+0.046", "0.500", "1", "5/5", "–", "alpha=0.001"]
    assert row_of(table, "vanilla")[6:9] == ["1/5", "–", "–"]
    assert "### CoLA (Matthews correlation)" in markdown
    overall = section(markdown, "## Overall")
    assert row_of(overall, "l2sp")[:4] == ["1", "l2sp", "1.50", "1.62"]
    assert "mean rank across the cells" in overall and "all 4 (task, size) cells" in overall
    assert "Not ranked" not in overall
    reading = section(markdown, "## How to read the tables")
    assert "adjacent ranks" in reading and "Holm-corrected across all 8 comparisons" in reading
    assert "smallest two-sided Wilcoxon p-value is 0.0625" in reading
    assert "Student-t interval of the mean" in reading
    sizes = section(section(markdown, "## Score as the training set grows"), "### CoLA")
    assert row_of(sizes, "vanilla") == ["vanilla", "0.080 ± 0.104", "0.020 ± 0.032"]
    assert row_of(section(markdown, "## Cost"), "mixout")[2:] == ["2.00", "800"]
    provenance = section(markdown, "## Provenance")
    assert "60 finished" in provenance
    assert "1 older final runs of the same seeds were superseded" in provenance
    assert "Missing runs" not in provenance


def test_header_states_machine_software_compute_plugins_and_methods(published):
    _, path = published
    header = path.read_text().split("\n## ")[0]
    assert "- **Machine**: CPU Test CPU 9000; GPU none" in header
    assert "- **Device and precision**: cpu, bf16 autocast" in header
    assert ("- **Software**: regbench 0.1.0, torch 2.13.0, transformers 5.0, python 3.11.7; "
            "commit abc1234") in header
    # Per 100 examples 10, 12 and 20 s; five seeds of 100 and 1000 examples on two tasks:
    # (10 + 12 + 20) * 11 * 5 * 2 = 4620 s; the one tuning run took 12 s.
    assert ("- **Compute**: 1 h 17 min in the 60 final runs shown, plus 12 s in the 1 tuning "
            "runs stored for these cells") in header
    assert "of wall time with a run in progress" in header
    assert "l2sp 1 (regbench 0.1.0)" in header
    assert ("- **Statistics**: 95% Student-t interval of the mean over seeds; two-sided "
            "Wilcoxon signed-rank test against vanilla over paired seeds (exact in 4, exact "
            "sign-flip permutation in 4); Holm over the 8 comparisons of the board, † at "
            "p < 0.05") in header


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
               "delta_vs_vanilla", "p_value", "p_holm", "rank_score", "rank_stability",
               "time_vs_vanilla"]
    from_csv = pd.read_csv(path.with_suffix(".csv"))
    data = json.loads(path.with_suffix(".json").read_text())
    from_json = pd.DataFrame(data["cells"])
    for copy in (from_csv, from_json):
        pd.testing.assert_frame_equal(copy[["task", "regularizer", *numbers]],
                                      board.cells[["task", "regularizer", *numbers]],
                                      check_dtype=False, rtol=1e-12)
    assert data["meta"] == META
    assert len(data["runs"]) == 60 and data["provenance"]["superseded_runs"] == 1
    assert from_csv.loc[0, "mean"] == pytest.approx(np.mean(SCORES[("rte", 100)]["l2sp"]))


def test_plots_are_written(published):
    _, path = published
    markdown = path.read_text()
    images = json.loads(path.with_suffix(".json").read_text())["images"]
    assert len(images) == 4
    for task in ("rte", "cola"):
        for kind in ("sizes", "seeds"):
            image = path.parent / f"board-{task}-{kind}.png"
            assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert image.stat().st_size > 10_000
            assert f"]({image.name})" in markdown and image.name in images


def test_plots_name_the_metric_and_do_not_magnify_sub_resolution_differences(tmp_path):
    # Seeds half a thousandth apart, around the failure line, as the quickstart's MRPC.
    scores = {("mrpc", 100): {"vanilla": [0.7496, 0.7501, 0.7499],
                              "l2sp": [0.7500, 0.7498, 0.7501]}}
    board = build(frame_of(handmade_rows(scores), tmp_path), None, BASELINES, META)
    drawn = figures(board)
    assert set(drawn) == {"mrpc-sizes", "mrpc-seeds"}
    for figure in drawn.values():
        assert figure.get_suptitle() == "MRPC: test mean of F1 and accuracy of the final seeds"
        for ax in figure.axes:
            low, high = ax.get_ylim()
            assert high - low == pytest.approx(MIN_SPAN) and low < 0.7496 and 0.7501 < high


def test_every_regularizer_of_a_full_board_has_its_own_color(tmp_path):
    names = ["vanilla", *(f"reg{i:02d}" for i in range(19))]
    scores = {("rte", 100): {name: [0.60 + i / 100] * 3 for i, name in enumerate(names)}}
    board = build(frame_of(handmade_rows(scores), tmp_path), None, BASELINES, META)
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
    publish(frame, None, out, "board", META, BASELINES)
    before = _files(out)
    smaller = frame[frame.task == "rte"]
    with pytest.raises(RegbenchError, match=r"shows 60 runs and this one only 30.*--force"):
        publish(smaller, None, out, "board", META, BASELINES)
    assert _files(out) == before
    publish(smaller, None, out, "board", META, BASELINES, force=True)
    # CoLA's plots went with the board that had them.
    assert sorted(p.name for p in out.glob("*.png")) == ["board-rte-seeds.png",
                                                         "board-rte-sizes.png"]
    assert json.loads((out / "board.json").read_text())["provenance"]["runs"] == {"finished": 30}


def test_an_unreadable_published_board_is_replaced_only_when_forced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "board.json").write_text("{")
    frame = frame_of(handmade_rows(), tmp_path)
    with pytest.raises(RegbenchError, match="Cannot read how many runs"):
        publish(frame, None, out, "board", META, BASELINES)
    publish(frame, None, out, "board", META, BASELINES, force=True)
    assert json.loads((out / "board.json").read_text())["provenance"]["runs"] == {"finished": 60}


def test_an_interrupted_publish_leaves_the_old_board_whole(tmp_path, monkeypatch):
    frame = frame_of(handmade_rows(), tmp_path)
    out = tmp_path / "out"
    publish(frame[frame.task == "rte"], None, out, "board", META, BASELINES)
    before = _files(out)
    written = []

    def interrupted(fd):  # the third file is cut off as it is written
        written.append(fd)
        if len(written) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(outputs.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        publish(frame, None, out, "board", META, BASELINES)
    assert _files(out) == before  # and no temporary file is left behind


def test_publishing_loads_no_deep_learning_stack(tmp_path, glue_dir):
    """What `regbench leaderboard` does once its suite is read, in a fresh interpreter."""
    frame_of(handmade_rows(), tmp_path)
    script = f"""
import sys
from regbench.leaderboard import baselines_of, publish
from regbench.store import Store

frame = Store("sqlite:///{tmp_path / 'runs.db'}").frame("handmade")
baselines = baselines_of(["rte", "cola"], {str(glue_dir)!r})
publish(frame, None, {str(tmp_path / 'out')!r}, "board", {{}}, baselines)
loaded = [name for name in ("torch", "transformers") if name in sys.modules]
assert not loaded, loaded
"""
    subprocess.run([sys.executable, "-c", script], check=True)
    assert (tmp_path / "out" / "board.md").is_file()


@pytest.mark.parametrize("module", ["regbench.leaderboard", "regbench.plots",
                                    "regbench.markdown", "regbench.board"])
def test_the_publishing_modules_import_no_deep_learning_stack(module):
    subprocess.run([sys.executable, "-c", f"import sys, {module}; loaded = [m for m in ('torch', "
                    "'transformers') if m in sys.modules]; assert not loaded, loaded"], check=True)


def test_baselines_are_the_majority_class_on_the_test_half(glue_dir):
    # RTE: the training set's majority is entailment (1249 of 2490); the dev set holds 146
    # entailment of 277, and its stratified test half of 139 keeps the proportion, 73.
    baselines = leaderboard.baselines_of(["rte", "cola", "stsb"], str(glue_dir))
    assert baselines["rte"] == pytest.approx(73 / 139)
    assert baselines["cola"] == 0.0 and baselines["stsb"] == 0.1


# Partial and degenerate results ---------------------------------------------------------------

def test_partial_cells_are_flagged(tmp_path):
    rows = [r for r in handmade_rows()
            if not (r["regularizer"] == "mixout" and r["task"] == "rte" and r["n_train"] == 1000
                    and r["seed"] >= 3)]
    rows.append(run("mixout", "rte", 1000, 3, None, status="failed", error="CUDA out of memory"))
    board = build(frame_of(rows, tmp_path), expected_of(), BASELINES, META)
    c = cell(board, "rte", 1000, "mixout")
    assert (c.n_completed, c.n_finished, c.n_planned, c.n_crashed) == (4, 3, 5, 1)
    assert c["mean"] == pytest.approx(np.mean([0.70, 0.71, 0.69, 0.527]))
    markdown = render(board, [])
    table = section(section(markdown, "### RTE (accuracy)"), "#### N = 1000")
    assert row_of(table, "mixout")[10] == "**4/5 (1 crashed)**"
    sizes = section(section(markdown, "## Score as the training set grows"), "### RTE")
    assert row_of(sizes, "mixout")[2].endswith("(4/5 seeds)")
    missing = section(markdown, "### Missing runs")
    assert row_of(missing, "mixout") == ["RTE", "1000", "mixout", "4/5", "4"]
    crashed = section(markdown, "### Diverged and crashed runs (failures, scored at the majority "
                                "class)")
    assert row_of(crashed, "mixout")[3:] == ["3", "crashed", "CUDA out of memory"]
    assert "1 failed, 58 finished, 1 missing" in markdown


def test_runs_outside_the_plan_are_left_out(tmp_path):
    rows = [*handmade_rows(), run("l2sp", "rte", 100, 9, 0.9)]
    board = build(frame_of(rows, tmp_path), expected_of(), BASELINES, META)
    assert cell(board, "rte", 100, "l2sp")["mean"] == pytest.approx(0.634)
    assert board.provenance["unplanned_runs"] == 1


def test_without_a_plan_every_seed_of_a_size_is_expected(tmp_path):
    rows = [r for r in handmade_rows() if not (r["regularizer"] == "l2sp" and r["seed"] == 0)]
    board = build(frame_of(rows, tmp_path), None, BASELINES, META)
    assert set(board.cells.query("regularizer == 'l2sp'").n_completed) == {4}
    assert set(board.cells.n_planned) == {5}


def test_a_task_without_a_baseline_is_an_error(tmp_path):
    with pytest.raises(RegbenchError, match="No majority-class baseline for task.* cola"):
        build(frame_of(handmade_rows(), tmp_path), None, {"rte": 0.527}, META)


def test_significance_is_marked(tmp_path):
    # Seven seeds. Against vanilla, "a" wins on every seed: p = 2/2^7. "b" loses the seed of
    # rank 3: W- = 3, five of 128 sign patterns reach it, p = 10/128. Holm over the two:
    # a: 2 * 1/64 = 1/32 < 0.05, b: max(1/32, 10/128) = 10/128.
    vanilla = np.array([0.60, 0.61, 0.62, 0.58, 0.57, 0.59, 0.63])
    steps = 0.01 * np.arange(1, 8)
    scores = {("rte", 300): {"vanilla": vanilla, "a": vanilla + steps,
                             "b": vanilla + steps * [1, 1, -1, 1, 1, 1, 1]}}
    board = build(frame_of(handmade_rows(scores), tmp_path), None, BASELINES, META)
    a, b = cell(board, "rte", 300, "a"), cell(board, "rte", 300, "b")
    assert (a.p_value, b.p_value) == pytest.approx((1 / 64, 10 / 128))
    assert (a.p_holm, b.p_holm) == pytest.approx((1 / 32, 10 / 128))
    assert a.significant and not b.significant
    markdown = render(board, [])
    table = section(markdown, "#### N = 300")
    assert row_of(table, "a")[2].endswith("†") and "†" not in row_of(table, "b")[2]
    assert row_of(section(markdown, "## Overall"), "a")[5] == "1 / 0"
    assert "smallest two-sided Wilcoxon" not in markdown


def test_single_seed_shows_no_spread(tmp_path):
    scores = {("rte", 100): {"vanilla": [0.6], "l2sp": [0.7]}}
    board = build(frame_of(handmade_rows(scores), tmp_path), None, BASELINES, META)
    assert math.isnan(cell(board, "rte", 100, "l2sp")["std"])
    row = row_of(section(render(board, []), "#### N = 100"), "l2sp")
    assert row[2] == "0.700 ± –" and row[5] == "[–, –]"


def test_all_diverged_cell_ranks_last(tmp_path):
    rows = [run("vanilla", "cola", 100, s, 0.1 * s) for s in range(3)]
    rows += [run("mixout", "cola", 100, s, None, status="diverged",
                 error="training loss became nan at step 7 of 100") for s in range(3)]
    board = build(frame_of(rows, tmp_path), None, BASELINES, META)
    mixout = cell(board, "cola", 100, "mixout")
    assert mixout["mean"] == 0 and mixout.failure_rate == 1.0
    assert mixout.rank_score == 2 and mixout.rank_stability == 2
    markdown = render(board, [])
    assert row_of(section(markdown, "#### N = 100"), "mixout")[2:7] == [
        "0.000 ± 0.000", "0.000", "0.000", "[0.000, 0.000]", "3/3"]
    assert "training loss became nan at step 7" in section(markdown, "## Provenance")


def test_missing_vanilla(tmp_path):
    scores = {("rte", 100): {"l2sp": [0.6, 0.7, 0.65]}}
    board = build(frame_of(handmade_rows(scores), tmp_path), None, BASELINES, META)
    l2sp = cell(board, "rte", 100, "l2sp")
    assert math.isnan(l2sp.p_value) and math.isnan(l2sp.time_vs_vanilla)
    assert "none on this board" in render(board, [])


@pytest.mark.parametrize("frame", [Store("sqlite://").frame(), pd.DataFrame()],
                         ids=["empty store", "no columns"])
def test_an_empty_frame_renders_but_is_never_published(tmp_path, frame):
    board = build(frame, None, BASELINES, META)
    assert "No final runs" in render(board, [])
    assert board.to_json()["cells"] == [] and not figures(board)
    with pytest.raises(RegbenchError, match="no board to publish"):
        publish(frame, None, tmp_path, "empty", META, BASELINES, force=True)
    assert not list(tmp_path.iterdir())


def test_planned_but_never_run(tmp_path):
    expected = expected_of({("rte", 100): {"vanilla": None}}, seeds=3)
    board = build(Store("sqlite://").frame(), expected, BASELINES, META)
    assert board.cells.n_planned.tolist() == [3] and board.cells.n_completed.tolist() == [0]
    markdown = render(board, [])
    assert row_of(section(markdown, "### Missing runs"), "vanilla") == [
        "RTE", "100", "vanilla", "0/3", "0, 1, 2"]
    assert "No regularizer has completed a cell yet" in markdown


# Noise stability -------------------------------------------------------------------------------

def _measured(summary: float, depth: int = 2) -> dict:
    """A run's noise-stability measure whose every entry is `summary` (row i, layers above i)."""
    return {"summary": summary,
            "table": [[summary if k > i else None for k in range(1, depth + 1)]
                      for i in range(depth)],
            "settings": {"scale": 0.05, "draws": 2, "examples": 32, "seed": 0}}


def test_noise_stability_per_cell_per_task_and_in_a_plot(tmp_path):
    """Scores that fall as the noise sensitivity rises, as Hua et al. find; a crashed run carries
    no measure and counts in no noise statistic."""
    noise = {"vanilla": [0.30, 0.12, 0.40], "l2sp": [0.10, 0.15, 0.05]}
    scores = {"vanilla": [0.60, 0.62, 0.58], "l2sp": [0.70, 0.66, 0.72]}
    rows = [run(reg, "rte", 100, seed, scores[reg][seed],
                noise_stability=_measured(noise[reg][seed]))
            for reg in noise for seed in range(3)]
    rows.append(run("l2sp", "rte", 100, 3, None, status="failed"))
    board = build(frame_of(rows, tmp_path), None, BASELINES, META)
    for reg in noise:
        got = cell(board, "rte", 100, reg)
        assert got.noise == pytest.approx(np.mean(noise[reg]))
        mean = pytest.approx(np.mean(noise[reg]), abs=1e-6)  # kept to six decimals
        assert json.loads(got.noise_table) == [[mean, mean], [None, mean]]
    flat_noise = [*noise["vanilla"], *noise["l2sp"]]
    flat_scores = [*scores["vanilla"], *scores["l2sp"]]
    rho, p = stats.spearmanr(flat_scores, flat_noise)
    found = board.provenance["noise_stability"]["rte"]
    assert found == {"spearman": pytest.approx(rho), "p_value": pytest.approx(p), "runs": 6}
    assert -1 < rho < -0.5
    markdown = render(board, [])
    noise_section = section(markdown, "## Noise stability")
    assert re.search(rf"\| RTE +\| 6 +\| {rho:.2f} +\| {p:.3f} +\|", noise_section)
    assert "5% noise, the first 32 test examples, 2 draws" in noise_section
    vanilla = row_of(section(markdown, "#### N = 100"), "vanilla")
    assert vanilla[11] == f"{np.mean(noise['vanilla']):.3f}"
    drawn = figures(board)
    assert "rte-noise" in drawn and f"ρ = {rho:.2f}" in drawn["rte-noise"].axes[0].get_title()
