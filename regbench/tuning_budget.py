"""How far a board's ranks depend on the tuning budget: Dodge et al.'s (2019) expected maximum
validation score of n trials, from each study's own trials, the tuning runs in the store.

No deep-learning stack, as the board that reads it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from regbench.stats import rank
from regbench.store import CELL, FINISHED

# The sampler of the studies stored before their runs recorded one: TPE with Optuna's default
# start-up of 10 random trials.
_UNRECORDED = {"sampler": "tpe", "startup_trials": 10}
SUMMARY_COLUMNS = [*CELL, "sampler", "random_search", "configurations", "left_out",
                   "tuning_seeds", "budget", "expected_max_1", "expected_max_budget",
                   "rank_at_1", "rank_at_budget", "seed_spread", "configuration_spread"]
CURVE_COLUMNS = [*CELL, "trials", "expected_max"]
# What it reads of the store's runs table.
_STORE_COLUMNS = [*CELL, "phase", "seed", "status", "params", "regularizer_version",
                  "validation_score", "provenance", "finished_at"]


def expected_max(values: Sequence[float], budgets: Sequence[int]) -> np.ndarray:
    """For each n of `budgets`, the expected best of n trials drawn with replacement from the
    study's own trial values: with v_(1) ≤ … ≤ v_(N) the values sorted,
    Σ_i v_(i) [(i/N)^n − ((i−1)/N)^n], as the best of n draws is v_(i) with the chance that all
    n fall among the i lowest but not all among the i − 1 lowest."""
    v = np.sort(np.asarray(values, dtype=float))
    share = np.arange(v.size + 1) / v.size
    n = np.asarray(budgets, dtype=float)[:, None]
    return np.diff(share ** n, axis=1) @ v


def sampler_label(settings: dict[str, Any], budget: int) -> tuple[str, bool]:
    """The sampler of a study in words, and whether it was random search: a Sobol sequence, or a
    TPE whose random start-up took the whole budget."""
    if settings["sampler"] == "qmc":
        return "random search (scrambled Sobol)", True
    if budget <= settings["startup_trials"]:
        return f"random search (TPE's {settings['startup_trials']} random start-up trials)", True
    return f"TPE after {settings['startup_trials']} random trials", False


def configurations(frame: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The configurations each cell's study tried, with their value, what the study maximised:
    the mean validation score over the tuning seeds, of the board's plugin versions alone. A
    configuration drawn twice trained once, its runs stored once, and counts once. `complete`
    is False for one pruned, diverged or crashed on some seed, which has no value."""
    tuning = frame[frame.phase == "tune"].astype({"task": str, "regularizer": str,
                                                  "n_train": int})
    versions = runs[[*CELL, "regularizer_version"]].dropna().drop_duplicates()
    tuning = tuning.merge(versions, on=[*CELL, "regularizer_version"])
    tuning = tuning.assign(params=tuning.params.map(lambda p: json.dumps(p, sort_keys=True)),
                           finished=tuning.status == FINISHED)
    seeds = tuning.groupby(CELL).seed.nunique().rename("tuning_seeds")
    found = (tuning.groupby([*CELL, "params"])
             .agg(value=("validation_score", "mean"), seeds=("seed", "nunique"),
                  finished=("finished", "all"))
             .reset_index().merge(seeds, on=CELL))
    found["complete"] = found.finished & (found.seeds == found.tuning_seeds)
    return found[[*CELL, "params", "value", "complete", "tuning_seeds"]]


def budget_curves(frame: pd.DataFrame, runs: pd.DataFrame,
                  budget: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per tuned cell of the board, the expected best validation score of 1 … `budget` trials
    (the suite's; else the most configurations a cell tried), the ranks it gives within each
    (task, size) at one trial and at the budget, and the spread of the validation scores across
    seeds at the tuned configuration (its final runs) beside that across configurations. An
    untuned cell has no study, and no curve: its validation scores come from other seeds than
    the studies' and would not compare. Returns (one row per cell, one row per cell and number
    of trials)."""
    frame = frame.reindex(columns=_STORE_COLUMNS)
    tried = configurations(frame, runs)
    scored = tried[tried.complete]
    budget = int(budget or (scored.groupby(CELL).size().max() if len(scored) else 1))
    finals = frame[(frame.phase == "final") & (frame.status == FINISHED)]
    validation = finals.astype({"task": str, "regularizer": str, "n_train": int}).groupby(
        CELL).validation_score.std(ddof=1)
    recorded = _recorded_samplers(frame)
    trials = np.arange(1, budget + 1)
    rows, curves = [], []
    for key, cell in tried.groupby(CELL, sort=False):
        values = cell.value[cell.complete].to_numpy()
        if not values.size:
            continue
        curve = expected_max(values, trials)
        label, random = sampler_label(recorded.get(key, _UNRECORDED), budget)
        names = dict(zip(CELL, key, strict=True))
        rows.append({**names, "sampler": label, "random_search": random,
                     "configurations": values.size, "left_out": int((~cell.complete).sum()),
                     "tuning_seeds": int(cell.tuning_seeds.iloc[0]), "budget": budget,
                     "expected_max_1": curve[0], "expected_max_budget": curve[-1],
                     "seed_spread": validation.get(key, np.nan),
                     "configuration_spread": values.std(ddof=1) if values.size > 1 else np.nan})
        curves += [{**names, "trials": int(n), "expected_max": e}
                   for n, e in zip(trials, curve, strict=True)]
    summary = pd.DataFrame(rows, columns=[c for c in SUMMARY_COLUMNS
                                          if not c.startswith("rank_")])
    summary["rank_at_1"] = summary["rank_at_budget"] = np.nan
    for _, cell in summary.groupby(["task", "n_train"]):
        summary.loc[cell.index, "rank_at_1"] = rank(cell, ["expected_max_1"], [False])
        summary.loc[cell.index, "rank_at_budget"] = rank(cell, ["expected_max_budget"], [False])
    return summary[SUMMARY_COLUMNS], pd.DataFrame(curves, columns=CURVE_COLUMNS)


def _recorded_samplers(frame: pd.DataFrame) -> dict[tuple, dict[str, Any]]:
    """The sampler each cell's tuning runs recorded, where they did: the latest run's, as a
    configuration's run may have been stored by another study of the same cell before."""
    tuning = frame[frame.phase == "tune"].sort_values("finished_at", na_position="first")
    found = {}
    for task, n, regularizer, provenance in zip(tuning.task, tuning.n_train, tuning.regularizer,
                                                tuning.provenance, strict=True):
        if isinstance(provenance, dict) and provenance.get("sampler"):
            found[(str(task), int(n), str(regularizer))] = provenance["sampler"]
    return found
