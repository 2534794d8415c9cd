"""The within-cell correlation of score with noise sensitivity against an exact enumeration of
its permutation test, and its immunity to what differs between cells."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from regbench.noise_report import within_cell_spearman

# Two cells of four seeds and one of three: score and sensitivity per seed.
CELLS = [(np.array([0.60, 0.64, 0.58, 0.62]), np.array([0.30, 0.12, 0.40, 0.35])),
         (np.array([0.70, 0.68, 0.72, 0.66]), np.array([0.50, 0.55, 0.45, 0.60])),
         (np.array([0.64, 0.66, 0.62]), np.array([0.31, 0.32, 0.33]))]


def exact(cells) -> tuple[float, float]:
    """The mean within-cell ρ, and the share of all joint within-cell orderings of the
    sensitivities whose mean ρ is as far from zero."""
    observed = np.mean([stats.spearmanr(x, y).statistic for x, y in cells])
    # Each cell's ρ under every ordering of its sensitivities; a joint ordering's mean ρ is the
    # mean of one from each cell.
    each = [[stats.spearmanr(x, ordering).statistic for ordering in itertools.permutations(y)]
            for x, y in cells]
    null = np.array([np.mean(rhos) for rhos in itertools.product(*each)])
    return observed, float(np.mean(np.abs(null) >= abs(observed) - 1e-12))


def test_the_mean_within_cell_rho_and_its_p_value_match_an_enumeration():
    rho, p, used = within_cell_spearman(CELLS)
    want_rho, want_p = exact(CELLS)  # 24 × 24 × 6 orderings
    assert used == 3 and rho == pytest.approx(want_rho)
    # A Monte Carlo of 20,000 shuffles: its standard error is under 0.001 here.
    assert p == pytest.approx(want_p, abs=0.004) and p < 0.05


def test_what_differs_between_cells_changes_nothing():
    """Shifting a cell's scores and sensitivities, as its regularizer or size would, moves a
    pooled correlation and not this one."""
    shifted = [(x + 10 * i, y - 5 * i) for i, (x, y) in enumerate(CELLS)]
    pooled = stats.spearmanr(np.concatenate([x for x, _ in shifted]),
                             np.concatenate([y for _, y in shifted])).statistic
    assert pooled < -0.9
    assert within_cell_spearman(shifted) == within_cell_spearman(CELLS)


def test_cells_that_cannot_be_ranked_are_left_out():
    flat = (np.array([0.69, 0.69, 0.69]), np.array([0.1, 0.2, 0.3]))  # all at the majority class
    short = (np.array([0.1, 0.2]), np.array([0.3, 0.1]))
    assert within_cell_spearman([*CELLS, flat, short])[:2] == within_cell_spearman(CELLS)[:2]
    assert within_cell_spearman([flat, short])[2] == 0
    assert np.isnan(within_cell_spearman([flat])[0])
