"""Dodge et al.'s expected maximum against a brute-force average over every draw, and a board's
budget table from hand-made tuning runs."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from boards import META, frame_of, run

from regbench.board import build
from regbench.markdown import render
from regbench.plots import figures
from regbench.tuning_budget import expected_max

QMC = {"sampler": "qmc", "qmc_type": "sobol", "scramble": True}


def brute_force(values: list[float], n: int) -> float:
    """The mean, over all N^n equally likely ways to draw n trials with replacement, of the
    best value drawn."""
    draws = list(itertools.product(values, repeat=n))
    return float(np.mean([max(draw) for draw in draws]))


@pytest.mark.parametrize("values", [[0.3], [0.1, 0.5], [0.2, 0.7, 0.4, 0.4],
                                    [0.9, 0.1, 0.5, 0.3, 0.6]])
def test_expected_max_is_the_mean_best_of_every_draw(values):
    budgets = range(1, 6)
    got = expected_max(values, budgets)
    assert got == pytest.approx([brute_force(values, n) for n in budgets], abs=1e-12)
    assert got[0] == pytest.approx(np.mean(values))  # one trial: any one
    assert expected_max(values, [200])[0] == pytest.approx(max(values))  # many: the best
    assert np.all(np.diff(got) >= -1e-15)  # more trials never expect less


def _tuning(regularizer: str, seed: int, value: float, status: str = "finished",
            version: str = "1", **params) -> dict:
    row = run(regularizer, "rte", 100, seed, None, status=status, phase="tune", trial=0,
              params=params, regularizer_version=version,
              provenance={**run("x", "rte", 0, 0, 0)["provenance"], "sampler": QMC})
    return {**row, "key": f"tune-{regularizer}-{seed}-{sorted(params.items())}-{version}",
            "validation_score": value}


def _final(regularizer: str, seed: int, validation: float) -> dict:
    return {**run(regularizer, "rte", 100, seed, 0.6 + seed / 100),
            "validation_score": validation}


def test_a_board_shows_each_tuned_cells_budget_curve_and_ranks(tmp_path):
    """Two tuning seeds; a configuration is worth its mean over both. l2sp's pruned and old
    version's configurations count in no value; vanilla, untuned, has no curve."""
    l2sp = {0.1: (0.50, 0.54), 0.2: (0.60, 0.66), 0.3: (0.40, 0.40)}  # values 0.52, 0.63, 0.40
    mixout = {0.1: (0.55, 0.57), 0.5: (0.58, 0.56)}  # values 0.56, 0.57
    rows = [_tuning(reg, 101 + s, scores[s], alpha=a)
            for reg, table in (("l2sp", l2sp), ("mixout", mixout))
            for a, scores in table.items() for s in (0, 1)]
    rows += [_tuning("l2sp", 101, 0.9, alpha=0.4), _tuning("l2sp", 102, 0.9, "pruned", alpha=0.4),
             _tuning("l2sp", 101, 0.99, version="0", alpha=0.5),
             _tuning("l2sp", 102, 0.99, version="0", alpha=0.5)]
    validation = {"vanilla": [0.5, 0.6, 0.7], "l2sp": [0.61, 0.65, 0.63],
                  "mixout": [0.55, 0.58, 0.52]}
    rows += [_final(reg, seed, v) for reg, values in validation.items()
             for seed, v in enumerate(values)]
    board = build(frame_of(rows, tmp_path), None, {**META, "tuning": {"trials": 4}})

    tuning = board.tuning.set_index("regularizer")
    assert set(tuning.index) == {"l2sp", "mixout"}
    got = tuning.loc["l2sp"]
    assert (got.configurations, got.left_out, got.tuning_seeds, got.budget) == (3, 1, 2, 4)
    assert got.expected_max_1 == pytest.approx(np.mean([0.52, 0.63, 0.40]))
    assert got.expected_max_budget == pytest.approx(brute_force([0.52, 0.63, 0.40], 4))
    assert got.seed_spread == pytest.approx(np.std(validation["l2sp"], ddof=1))
    assert got.configuration_spread == pytest.approx(np.std([0.52, 0.63, 0.40], ddof=1))
    assert got.sampler == "random search (scrambled Sobol)" and got.random_search
    # One trial expects more of mixout (0.565 > 0.517); four, more of l2sp.
    assert (got.rank_at_1, got.rank_at_budget) == (2, 1)
    assert (tuning.loc["mixout"].rank_at_1, tuning.loc["mixout"].rank_at_budget) == (1, 2)
    curve = board.tuning_curves[board.tuning_curves.regularizer == "mixout"]
    assert curve.trials.tolist() == [1, 2, 3, 4]
    assert curve.expected_max.tolist() == pytest.approx(
        [brute_force([0.56, 0.57], n) for n in range(1, 5)])
    assert {"tuning", "tuning_curves"} <= set(board.to_json())

    markdown = render(board, [])
    assert "**Sampler**: random search (scrambled Sobol); a budget of 4 trials" in markdown
    assert "| 2           | 1           | l2sp" in markdown
    assert "3 (1 left out)" in markdown
    budget = figures(board)["rte-budget"].axes[0]
    assert {line.get_label() for line in budget.get_lines()} == {"l2sp", "mixout"}


def test_studies_that_recorded_no_sampler_were_tpe_with_ten_random_trials(tmp_path):
    rows = [{**_tuning("l2sp", 101, v, alpha=a), "provenance": run("x", "rte", 0, 0, 0)[
        "provenance"]} for a, v in ((0.1, 0.5), (0.2, 0.6))]
    rows.append(_final("l2sp", 0, 0.5))
    for trials, label in ((8, "random search (TPE's 10 random start-up trials)"),
                          (20, "TPE after 10 random trials")):
        board = build(frame_of(rows, tmp_path), None,
                      {**META, "tuning": {"trials": trials}})
        assert board.tuning.sampler.tolist() == [label]
        assert board.tuning.random_search.tolist() == [trials == 8]


def test_a_board_without_tuning_runs_says_so(tmp_path):
    board = build(frame_of([_final("vanilla", 0, 0.5)], tmp_path), None, META)
    assert board.tuning.empty and board.tuning_curves.empty
    assert "No cell was tuned" in render(board, [])
    assert not any(name.endswith("budget") for name in figures(board))
    assert isinstance(board.tuning, pd.DataFrame)
