"""What a board says of noise stability (protocol.md, "Noise stability"): how far every layer moves
for noise at each layer, as mean and spread over a cell's runs (Hua et al.'s figure), and whether
the runs that move less score better, within cells, where task, size and regularizer are fixed.

Across cells the two are confounded: a cell that learns little can also move little, and a
correlation pooled over cells measures that. Within a cell only the seed differs.

No deep-learning stack, as the board that reads it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from regbench.stats import spearman
from regbench.store import CELL, FINISHED

# A run's measure: its key -> the curve's name.
MEASURES = {"distance": "distance", "table": "relative"}
PERMUTATIONS = 20_000  # of the noise within cells: p-values down to 5e-5
SEED = 0
CURVE_COLUMNS = [*CELL, "injected", "layer", *(f"{name}_{stat}" for name in MEASURES.values()
                                               for stat in ("mean", "std", "runs"))]
CORRELATION_COLUMNS = ["task", "n_train", "cells", "runs", "within_spearman", "within_p",
                       "across_cells", "across_spearman", "across_p"]


def noise_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """Per cell, noise layer i (0: the embedding output) and layer k > i: the mean, standard
    deviation and number of the finished runs' L2 distance and relative change. A run stored
    before the distance was measured counts in the relative change alone."""
    measured = runs[(runs.status == FINISHED) & runs.noise_stability.notna()]
    rows = []
    for key, group in measured.groupby(CELL, sort=False):
        found = {}
        for field, name in MEASURES.items():
            tables = [m[field] for m in group.noise_stability if m.get(field) is not None]
            if tables:
                stack = np.array(tables, dtype=float)  # runs × i × (k − 1)
                # Six decimals, as the cells' mean tables: a thousandth of a percent.
                found[name] = (stack.mean(axis=0).round(6), _std(stack).round(6), len(stack))
        depth = len(next(iter(found.values()))[0]) if found else 0
        for i in range(depth):
            for k in range(i + 1, depth + 1):
                row = dict(zip(CELL, key, strict=True), injected=i, layer=k)
                for name in MEASURES.values():
                    mean, std, count = found.get(name, (None, None, 0))
                    row |= {f"{name}_mean": np.nan if mean is None else mean[i, k - 1],
                            f"{name}_std": np.nan if std is None else std[i, k - 1],
                            f"{name}_runs": count}
                rows.append(row)
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def _std(stack: np.ndarray) -> np.ndarray:
    if len(stack) < 2:
        return np.full(stack.shape[1:], np.nan)
    return np.std(stack, axis=0, ddof=1)


def within_cell_spearman(cells: list[tuple[np.ndarray, np.ndarray]],
                         permutations: int = PERMUTATIONS,
                         seed: int = SEED) -> tuple[float, float, int]:
    """The mean over cells of Spearman's ρ between x and y within each cell, its two-sided p-value
    from `permutations` shuffles of y within every cell (a seeded Monte Carlo of the exact test
    that the two are unrelated within cells), and how many cells it averages: those with three
    runs or more and neither side constant."""
    used = [(x, y) for x, y in cells if len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0]
    if not used:
        return np.nan, np.nan, 0
    generator = np.random.default_rng(seed)
    observed, shuffled = 0.0, np.zeros(permutations)
    for x, y in used:
        # Spearman's ρ is Pearson's on the ranks: unit vectors of the centred ranks, dotted.
        a, b = (_unit(scipy_stats.rankdata(v)) for v in (x, y))
        observed += a @ b
        shuffled += generator.permuted(np.tile(b, (permutations, 1)), axis=1) @ a
    observed, shuffled = observed / len(used), shuffled / len(used)
    extreme = np.sum(np.abs(shuffled) >= abs(observed) - 1e-12)
    return float(observed), float((extreme + 1) / (permutations + 1)), len(used)


def _unit(ranks: np.ndarray) -> np.ndarray:
    centred = ranks - ranks.mean()
    return centred / np.linalg.norm(centred)


def noise_correlations(runs: pd.DataFrame) -> pd.DataFrame:
    """Per task over all its sizes (n_train missing), and per (task, size): the within-cell
    correlation of the test score with the noise sensitivity (`within_cell_spearman`), over the
    finished runs that carry a measure; per (task, size) also Spearman's ρ across its
    regularizers of the cells' mean score and mean sensitivity, Hua et al.'s comparison of
    methods. Hua et al. find that models which move less generalise better: ρ below zero."""
    measured = runs[(runs.status == FINISHED)].dropna(subset=["noise", "test_score"])
    rows = []
    for task, by_task in measured.groupby("task", sort=False):
        groups = [by_task] + [g for _, g in by_task.groupby("n_train")]
        for group in groups:
            cells = [(g.test_score.to_numpy(), g.noise.to_numpy())
                     for _, g in group.groupby(CELL, sort=False)]
            rho, p, used = within_cell_spearman(cells)
            row = {"task": task, "n_train": None if group is by_task else group.n_train.iloc[0],
                   "cells": used, "runs": len(group), "within_spearman": rho, "within_p": p,
                   "across_cells": np.nan, "across_spearman": np.nan, "across_p": np.nan}
            if group is not by_task:
                means = group.groupby("regularizer")[["test_score", "noise"]].mean()
                rho, p = spearman(means.test_score, means.noise)
                row |= {"across_cells": len(means), "across_spearman": rho, "across_p": p}
            rows.append(row)
    frame = pd.DataFrame(rows, columns=CORRELATION_COLUMNS)
    return frame.astype({"n_train": "Int64", "across_cells": "Int64"})
