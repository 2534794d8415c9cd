"""The leaderboard of a suite as one model, built from the store's runs table: statistics of the
final runs per (task, size, regularizer), paired tests against vanilla, ranks, and what the runs
say about themselves. The markdown, CSV, JSON and plots all read this one `Leaderboard`, so they
cannot disagree.

pandas, NumPy and SciPy only: publishing a stored board loads no deep-learning stack.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

from regbench.errors import RegbenchError
from regbench.noise_report import noise_correlations, noise_curves
from regbench.stats import (
    CONFIDENCE,
    INTERVAL,
    describe,
    holm,
    rank,
    t_interval,
    wilcoxon,
)
from regbench.store import DIVERGED, FAILED, FINISHED, SETTLED
from regbench.tasks import TASKS
from regbench.tuning_budget import budget_curves

VANILLA = "vanilla"  # the reference of every paired test and of the cost ratio
ALPHA = 0.05  # after Holm's correction
MISSING = "missing"  # the status of a planned run that has no row in the store
# A crashed run is a result, a failed one, as is a diverged run (protocol.md); a missing run is
# no result at all, and leaves its cell incomplete.
COMPLETED = (*SETTLED, FAILED)
CELL = ["task", "n_train", "regularizer"]
RUN = [*CELL, "seed"]
STATS = ["mean", "std", "min", "max", "q25", "q75", "iqr"]
METRIC_NAMES = {"accuracy": "accuracy", "f1_accuracy": "mean of F1 and accuracy",
                "mcc": "Matthews correlation", "pearson_spearman": "mean of Pearson and Spearman r"}
# Leaderboard.runs: RUN, then these.
_RUN_COLUMNS = ["status", "test_score", "score", "failure", "noise", "params",
                "regularizer_version", "distribution", "data_seed", "steps", "seconds",
                "peak_memory_mb", "error"]
_STORE_COLUMNS = [*RUN, "phase", "status", "test_score", "params", "regularizer_version",
                  "data_seed", "steps", "seconds", "peak_memory_mb", "error", "provenance",
                  "finished_at", "noise_stability"]
_VERSIONS = ("regbench", "torch", "transformers", "python", "git_commit", "device", "bf16",
             "cpu", "gpu")


@dataclass
class Leaderboard:
    cells: pd.DataFrame  # one row per (task, n_train, regularizer): statistics, test, ranks, cost
    overall: pd.DataFrame  # one row per regularizer: the ranked ones best first, then the others
    runs: pd.DataFrame  # one row per planned seed: the scores behind every statistic
    meta: dict[str, Any]  # what the caller said about the suite: name, model, recipe, date
    provenance: dict[str, Any]  # what the runs say: versions, counts, thresholds, methods
    # One row per tuned cell: its study's sampler, and the expected best validation score of one
    # trial and of the budget's (regbench.tuning_budget); and that score for 1 … budget trials.
    tuning: pd.DataFrame = field(default_factory=pd.DataFrame)
    tuning_curves: pd.DataFrame = field(default_factory=pd.DataFrame)
    # Per cell, noise layer and layer above: the runs' distance and relative change; per task and
    # (task, size): the correlation of score with noise sensitivity within cells
    # (regbench.noise_report).
    noise_curves: pd.DataFrame = field(default_factory=pd.DataFrame)
    noise_correlations: pd.DataFrame = field(default_factory=pd.DataFrame)

    def to_json(self) -> dict[str, Any]:
        def records(frame: pd.DataFrame) -> list[dict]:
            return json.loads(frame.to_json(orient="records", double_precision=15))

        return {"meta": self.meta, "provenance": self.provenance, "cells": records(self.cells),
                "overall": records(self.overall), "runs": records(self.runs),
                "tuning": records(self.tuning), "tuning_curves": records(self.tuning_curves),
                "noise_curves": records(self.noise_curves),
                "noise_correlations": records(self.noise_correlations)}


def runs_shown(provenance: dict[str, Any]) -> int:
    """How many stored runs a board shows, from its provenance (a published JSON's too)."""
    return sum(count for status, count in provenance["runs"].items() if status != MISSING)


def task_label(task: str) -> str:
    """GLUE's own spelling of a task (CoLA, STS-B); the name itself for a task regbench lacks."""
    return TASKS[task].local.folder if task in TASKS else task


def metric_name(task: str) -> str:
    """The task's primary metric in words."""
    metric = TASKS[task].metric if task in TASKS else "score"
    return METRIC_NAMES.get(metric, metric)


def build(frame: pd.DataFrame, expected: pd.DataFrame | None, baselines: dict[str, float],
          meta: dict | None = None) -> Leaderboard:
    """The board of the final runs in `frame` (the store's runs table).

    `expected` (regularizer, task, n_train, seed) is the plan, so that missing runs are counted;
    without it, every regularizer on the board is expected in every (task, size) on every seed
    run there. `baselines` maps each task to the majority-class predictor's test score: a run
    fails when it does no better, and a diverged or crashed run scores it.
    """
    final, superseded = _final_runs(frame)
    runs, unplanned = _planned_runs(final, expected, baselines)
    cells = _versus_vanilla(_cells(runs), runs)
    cells[["rank_score", "rank_stability"]] = _ranks(cells[cells.n_completed > 0])
    cells = cells.sort_values(["task", "n_train", "rank_score", "regularizer"], key=_task_order,
                              ignore_index=True)
    overall, block = _overall(cells, runs)
    cells["in_overall"] = _within(cells, block)
    provenance = _provenance(runs, superseded, unplanned, _tuning_runs(frame, runs), cells)
    provenance["baselines"] = {task: baselines[task] for task in cells.task.unique()}
    provenance["noise_settings"] = [json.loads(s) for s in sorted(
        {json.dumps(m.get("settings"), sort_keys=True)
         for m in runs.noise_stability.dropna() if m.get("settings")})]
    tuning, tuning_curves = budget_curves(frame, runs, (meta or {}).get("tuning", {}).get("trials"))
    noise = noise_curves(runs), noise_correlations(runs)
    runs = runs.sort_values(RUN, key=_task_order, ignore_index=True)[[*RUN, *_RUN_COLUMNS]]
    return Leaderboard(cells, overall, runs, dict(meta or {}), provenance, tuning, tuning_curves,
                       *noise)


def _task_order(column: pd.Series) -> pd.Series:
    """GLUE's order for the tasks regbench knows, then the others by name."""
    if column.name != "task":
        return column
    order = {task: i for i, task in enumerate(TASKS)}
    return column.map(lambda task: (order.get(task, len(order)), task))


def _final_runs(frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """The final runs, one per seed: a settled run before a crashed attempt, then the latest
    (a suite rerun under a new regbench version adds rows rather than replacing them)."""
    final = frame.reindex(columns=_STORE_COLUMNS)
    final = final[final.phase == "final"].drop(columns="phase")
    final = final.astype({"task": str, "regularizer": str, "n_train": int, "seed": int})
    kept = (final.assign(settled=final.status.isin(SETTLED))
            .sort_values(["settled", "finished_at"], na_position="first")
            .drop_duplicates(RUN, keep="last").drop(columns="settled"))
    return kept, len(final) - len(kept)


def _planned_runs(final: pd.DataFrame, expected: pd.DataFrame | None,
                  baselines: dict[str, float]) -> tuple[pd.DataFrame, int]:
    """The plan joined with the runs: planned seeds without a row get the status "missing"; runs
    outside the plan are dropped and counted. Each run gets its `score` (the test score, or the
    majority-class baseline for a diverged or crashed run) and whether it `failure`d."""
    if expected is None:
        everyone = final.regularizer.unique()
        plan = [pd.MultiIndex.from_product([[task], [n], everyone, g.seed.unique()],
                                           names=RUN).to_frame(index=False)
                for (task, n), g in final.groupby(["task", "n_train"])]
        plan = pd.concat(plan) if plan else pd.DataFrame(columns=RUN)
    else:
        plan = expected[RUN].drop_duplicates()
    plan = plan.astype({"task": str, "regularizer": str, "n_train": int, "seed": int})
    lacking = sorted(set(plan.task) - set(baselines))
    if lacking:
        raise RegbenchError(f"No majority-class baseline for task(s) {', '.join(lacking)}: "
                            "failures cannot be counted without one.")
    runs = plan.assign(planned=True).merge(final, on=RUN, how="outer")
    unplanned = int(runs.planned.isna().sum())
    runs = runs[runs.planned.notna()].drop(columns="planned").reset_index(drop=True)
    runs["status"] = runs.status.fillna(MISSING)
    baseline = runs.task.map(baselines).astype(float)
    completed, finished = runs.status.isin(COMPLETED), runs.status == FINISHED
    runs["score"] = runs.test_score.where(finished, baseline).where(completed)
    runs["failure"] = (~finished | (runs.test_score <= baseline)).astype(float).where(completed)
    runs["params"] = runs.params.map(lambda p: json.dumps(p, sort_keys=True), na_action="ignore")
    runs["distribution"] = runs.provenance.map(lambda p: p.get("distribution"),
                                               na_action="ignore")
    # The noise-stability summary of a finished run: the last layer's relative change for noise
    # at the embedding output (regbench.noise_stability).
    runs["noise"] = runs.noise_stability.map(lambda m: m["summary"], na_action="ignore").where(
        finished).astype(float)
    return runs, unplanned


def _cells(runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (task, n, regularizer), group in runs.groupby(CELL, sort=False):
        done = group[group.status.isin(COMPLETED)]
        finished = group[group.status == FINISHED]
        low, high = t_interval(done.score)
        rows.append({
            "task": task, "n_train": n, "regularizer": regularizer,
            # The tuned configuration: one per cell, unless runs of two tunings were mixed.
            "params": json.dumps([json.loads(p) for p in done.params.dropna().unique()]),
            "n_planned": len(group), "n_completed": len(done), "n_finished": len(finished),
            "n_diverged": int((group.status == DIVERGED).sum()),
            "n_crashed": int((group.status == FAILED).sum()),
            **describe(done.score), "ci_low": float(low), "ci_high": float(high),
            "n_failures": int(done.failure.sum()), "failure_rate": done.failure.mean(),
            "std_not_failed": describe(done.score[done.failure == 0])["std"],
            "seconds": finished.seconds.mean(), "peak_memory_mb": finished.peak_memory_mb.mean(),
            "noise": finished.noise.mean(), "noise_table": _mean_table(finished.noise_stability),
        })
    columns = [*CELL, "params", "n_planned", "n_completed", "n_finished", "n_diverged",
               "n_crashed", *STATS, "ci_low", "ci_high", "n_failures", "failure_rate",
               "std_not_failed", "seconds", "peak_memory_mb", "noise", "noise_table"]
    return pd.DataFrame(rows, columns=columns)


def _mean_table(measures: pd.Series) -> str | None:
    """The mean over runs of their noise-stability tables (row: the layer the noise enters;
    column: the layer whose change is measured), as JSON; None without a measure."""
    tables = [np.array(m["table"], dtype=float) for m in measures.dropna() if m.get("table")]
    if not tables:
        return None
    mean = np.mean(tables, axis=0)
    return json.dumps([[None if np.isnan(v) else round(float(v), 6) for v in row]
                       for row in mean])


def _versus_vanilla(cells: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Paired differences to vanilla over the seeds both completed, Wilcoxon p-values
    Holm-corrected over every comparison on the board, and the wall-time ratio."""
    tests = []
    done = runs[runs.status.isin(COMPLETED)]
    for (task, n), group in done.groupby(["task", "n_train"]):
        table = group.pivot(index="seed", columns="regularizer", values="score")
        if VANILLA not in table:
            continue
        for regularizer in table.columns.drop(VANILLA):
            pairs = table[[regularizer, VANILLA]].dropna()
            test = wilcoxon(pairs[regularizer], pairs[VANILLA])
            tests.append({"task": task, "n_train": n, "regularizer": regularizer,
                          "n_pairs": len(pairs),
                          "delta_vs_vanilla": (pairs[regularizer] - pairs[VANILLA]).mean(),
                          "p_value": test.p_value, "test_method": test.method})
    tests = pd.DataFrame(tests, columns=[*CELL, "n_pairs", "delta_vs_vanilla", "p_value",
                                         "test_method"])
    tests["p_holm"] = holm(tests.p_value)
    vanilla = cells.loc[cells.regularizer == VANILLA, ["task", "n_train", "seconds"]]
    cells = (cells.merge(tests, on=CELL, how="left")
             .merge(vanilla.rename(columns={"seconds": "vanilla_seconds"}),
                    on=["task", "n_train"], how="left"))
    cells["significant"] = cells.p_holm < ALPHA
    cells["time_vs_vanilla"] = cells.seconds / cells.pop("vanilla_seconds")
    return cells


def _ranks(cells: pd.DataFrame) -> pd.DataFrame:
    """Within each (task, size): the rank by mean score, and by stability, which is the failure
    rate first, then the spread of the runs that did not fail (runs that all collapse to the
    majority class agree closely, and are the least stable, not the most)."""
    ranks = pd.DataFrame(index=cells.index, columns=["rank_score", "rank_stability"],
                         dtype=float)
    for _, cell in cells.groupby(["task", "n_train"]):
        ranks.loc[cell.index, "rank_score"] = rank(cell, ["mean"], [False])
        ranks.loc[cell.index, "rank_stability"] = rank(cell, ["failure_rate", "std_not_failed"],
                                                       [True, True])
    return ranks


def _largest_block(complete: dict[str, frozenset]) -> frozenset:
    """The cells of the overall rank. Of the sets of cells that some regularizers all completed,
    the one that holds the most results, its regularizers times its cells; ties go to more
    regularizers. A regularizer missing a few cells is left out rather than shrink everyone's
    rank to the cells it has, and a cell most regularizers lack is left out rather than exclude
    them all."""
    blocks = set(complete.values())
    while True:  # every intersection of completed sets is a candidate
        more = {a & b for a in blocks for b in blocks} - blocks
        if not more:
            break
        blocks |= more

    def size(block: frozenset) -> tuple:
        members = sum(block <= done for done in complete.values())
        return members * len(block), members, sorted(block)

    return max((b for b in blocks if b), key=size, default=frozenset())


def _overall(cells: pd.DataFrame, runs: pd.DataFrame) -> tuple[pd.DataFrame, frozenset]:
    """One row per regularizer. Those that completed every cell of the largest block are ranked
    by their mean rank over its cells, among themselves; the others come after, unranked, with
    what they miss. A cell is complete when every planned seed has a result (finished, diverged
    or crashed)."""
    complete = {reg: frozenset(zip(g.task, g.n_train, strict=True)) for reg, g
                in cells[cells.n_completed == cells.n_planned].groupby("regularizer")}
    block = _largest_block(complete)
    ranked = [reg for reg, done in complete.items() if block <= done]
    inside = cells[_within(cells, block) & cells.regularizer.isin(ranked)]
    ranks = _ranks(inside).assign(regularizer=inside.regularizer).groupby("regularizer")
    # The failure rate of a ranked regularizer over the cells of the rank, so that it compares;
    # of another over all it completed.
    scoped = runs[_within(runs, block) | ~runs.regularizer.isin(ranked)]
    marked = cells[cells.significant]
    finished = runs[runs.status == FINISHED].groupby("regularizer")
    by = cells.groupby("regularizer")
    overall = pd.DataFrame({
        "mean_rank_score": ranks.rank_score.mean(),
        "mean_rank_stability": ranks.rank_stability.mean(),
        "cells_ranked": ranks.size(),
        "cells_complete": pd.Series({reg: len(done) for reg, done in complete.items()}),
        "cells": by.size(),
        "failure_rate": scoped.groupby("regularizer").failure.mean(),
        "better_than_vanilla": marked[marked.delta_vs_vanilla > 0].groupby("regularizer").size(),
        "worse_than_vanilla": marked[marked.delta_vs_vanilla < 0].groupby("regularizer").size(),
        "seconds": finished.seconds.mean(),
        "time_vs_vanilla": by.time_vs_vanilla.mean(),
        "peak_memory_mb": finished.peak_memory_mb.mean(),
        "missing": _missing(runs),
    }, index=pd.Index(cells.regularizer.unique(), name="regularizer"))
    counts = ["cells_ranked", "cells_complete", "better_than_vanilla", "worse_than_vanilla"]
    overall[counts] = overall[counts].fillna(0).astype(int)
    overall["missing"] = overall.missing.fillna("")
    overall.insert(0, "ranked", overall.index.isin(ranked))
    overall.insert(0, "rank", rank(overall, ["mean_rank_score"], [True])
                   .where(overall.ranked))
    overall = overall.reset_index().sort_values(
        ["rank", "mean_rank_stability", "regularizer"], ignore_index=True)
    return overall, block


def _within(frame: pd.DataFrame, block: frozenset) -> pd.Series:
    """Whether each row's (task, size) is one of the cells of `block`."""
    return pd.Series([(t, n) in block for t, n in zip(frame.task, frame.n_train, strict=True)],
                     index=frame.index, dtype=bool)


def _missing(runs: pd.DataFrame) -> pd.Series:
    """Per regularizer, the cells with seeds that have no result, and which seeds."""
    gaps = runs[runs.status == MISSING].groupby(CELL, sort=False).seed.agg(list)
    planned = runs.groupby(CELL).size()
    text: dict[str, list[str]] = {}
    for (task, n, regularizer), seeds in gaps.items():
        text.setdefault(regularizer, []).append(
            f"{task_label(task)} N={n}: {len(seeds)}/{planned[(task, n, regularizer)]} seeds "
            f"({', '.join(map(str, sorted(seeds)))})")
    return pd.Series({reg: "; ".join(parts) for reg, parts in text.items()}, dtype=object)


def _tuning_runs(frame: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The stored tuning runs of the board's cells, pruned ones included."""
    tuning = frame.reindex(columns=_STORE_COLUMNS)
    tuning = tuning[tuning.phase == "tune"].astype({"task": str, "regularizer": str,
                                                    "n_train": int})
    return tuning.merge(runs[CELL].drop_duplicates(), on=CELL)


def _wall_seconds(runs: pd.DataFrame) -> float | None:
    """The time during which at least one run was running: parallel runs count once, and a
    suite resumed later does not count the pause."""
    ended = pd.to_datetime(runs.finished_at, utc=True, format="ISO8601")
    spans = pd.DataFrame({"start": ended - pd.to_timedelta(runs.seconds, unit="s"),
                          "end": ended}).dropna().sort_values("start")
    if spans.empty:
        return None
    # A span starting after every earlier one has ended opens a new busy period.
    reach = spans.end.cummax()
    period = (spans.start > reach.shift()).cumsum()
    busy = spans.groupby(period).agg(start=("start", "min"), end=("end", "max"))
    return float((busy.end - busy.start).dt.total_seconds().sum())


def _provenance(runs: pd.DataFrame, superseded: int, unplanned: int, tuning: pd.DataFrame,
                cells: pd.DataFrame) -> dict[str, Any]:
    """What the runs themselves say: how many of each outcome, what made them and on what, how
    long they took, and how the board's statistics were computed."""
    def iso(moment) -> str | None:
        return None if pd.isna(moment) else pd.Timestamp(moment).isoformat()

    shown = runs[runs.status.isin(COMPLETED)]
    plugins = {}
    for regularizer, group in shown.groupby("regularizer"):
        plugins[regularizer] = {
            "versions": sorted(map(str, group.regularizer_version.dropna().unique())),
            "distributions": sorted(map(str, group.distribution.dropna().unique()))}
    tested = cells.p_value.notna()
    return {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "runs": dict(Counter(runs.status)),
        "superseded_runs": superseded,
        "unplanned_runs": unplanned,
        "versions": {key: {str(value): count for value, count in
                           Counter(p.get(key) for p in shown.provenance.dropna()).items()}
                     for key in _VERSIONS},
        "regularizers": plugins,
        "data_seeds": sorted(int(s) for s in runs.data_seed.dropna().unique()),
        "first_run": iso(runs.finished_at.min()),
        "last_run": iso(runs.finished_at.max()),
        "compute": {"final_runs": len(shown), "final_seconds": float(shown.seconds.sum()),
                    "tuning_runs": len(tuning), "tuning_seconds": float(tuning.seconds.sum()),
                    "wall_seconds": _wall_seconds(pd.concat([shown, tuning]))},
        "methods": {"interval": f"{CONFIDENCE:.0%} {INTERVAL} over seeds",
                    "test": f"two-sided Wilcoxon signed-rank test against {VANILLA} over "
                            "paired seeds",
                    "test_methods": dict(sorted(Counter(cells.test_method[tested]).items())),
                    "correction": f"Holm over the {int(tested.sum())} comparisons of the board",
                    "alpha": ALPHA},
    }
