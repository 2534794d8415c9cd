"""Runs per worker-hour of two run stores, on the cells they share: a suite rerun on a newer
harness against the store it replaces.

    python benchmarks/suite_pace.py OLD.db NEW.db [--suite glue-cpu]

A cell here is (phase, regularizer, task, N); a run's time is the `seconds` the store holds (the
run alone: model copy, steps, evaluation, as a worker's hour is spent between start-ups). Each
shared cell's mean seconds a run is weighed by the old store's count of runs in it, so the two
paces are of the same mix of runs, the old board's.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd
from tabulate import tabulate

from regbench.store import FINISHED, Store

CELL = ["phase", "regularizer", "task", "n_train"]


def runs(path: str, suite: str) -> pd.DataFrame:
    """The suite's finished runs in the SQLite store at `path`, as the leaderboard reads them."""
    frame = Store(f"sqlite:///{path}", create=False).frame(suite)
    return frame.loc[frame.status == FINISHED, [*CELL, "seconds"]]


def pace(old: pd.DataFrame, new: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, float]]:
    """Per shared cell, the runs and mean seconds in each store; and the runs per worker-hour of
    each over the old store's mix of those cells (none where they share no cell)."""
    both = (old.groupby(CELL).seconds.agg(["size", "mean"])
            .merge(new.groupby(CELL).seconds.agg(["size", "mean"]), left_index=True,
                   right_index=True, suffixes=("_old", "_new")))
    weights = both.size_old
    if both.empty:
        return both, {}
    hours = {side: float((weights * both[f"mean_{side}"]).sum()) / 3600 for side in ("old", "new")}
    return both, {side: float(weights.sum()) / h for side, h in hours.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--suite", default="glue-cpu")
    args = parser.parse_args()
    cells, rate = pace(runs(args.old, args.suite), runs(args.new, args.suite))
    if cells.empty:
        sys.exit(f"The two stores share no (phase, regularizer, task, N) of suite {args.suite} "
                 "with a finished run: nothing to compare.")
    by_phase = cells.groupby(level="phase").apply(
        lambda c: pd.Series({"cells": len(c), "old runs": c.size_old.sum(),
                             "new runs": c.size_new.sum(),
                             "old s/run": (c.size_old * c.mean_old).sum() / c.size_old.sum(),
                             "new s/run": (c.size_old * c.mean_new).sum() / c.size_old.sum()}))
    print(tabulate(by_phase.reset_index(), headers="keys", floatfmt=".1f", intfmt="d",
                   showindex=False))
    print(f"\n{len(cells)} shared cells; runs per worker-hour over the old mix: "
          f"old {rate['old']:.0f}, new {rate['new']:.0f}, {rate['new'] / rate['old']:.2f}x")


if __name__ == "__main__":
    main()
