"""The leaderboard of a suite as one model, built from the store's runs table alone: statistics of
the final runs per (task, size, regularizer), the learning gate of each (task, size), the primary
comparisons against vanilla fixed in advance (one per regularizer and task) and the exploratory
per-cell ones, ranks, and what the runs say about themselves. The markdown, CSV, JSON and plots
all read this one `Leaderboard`, so they cannot disagree.

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
    above,
    counts_differ,
    critical_correlation,
    describe,
    detectable_difference,
    holm,
    rank,
    sd_interval,
    sign_flip,
    smallest_sign_flip_p,
    spreads_differ,
    t_interval,
    wilcoxon,
)
from regbench.store import CELL, DIVERGED, FAILED, FINISHED, SETTLED
from regbench.tasks import TASKS
from regbench.tuning_budget import budget_curves

VANILLA = "vanilla"  # the reference of every paired test and of the cost ratio
ALPHA = 0.05  # primary comparisons after Holm's correction; the failure, gate and stability tests
MISSING = "missing"  # the status of a planned run that has no row in the store
# A crashed run is a result, a failed one, as is a diverged run (protocol.md); a missing run is
# no result at all, and leaves its cell incomplete.
COMPLETED = (*SETTLED, FAILED)
RUN = [*CELL, "seed"]
STATS = ["mean", "std", "min", "max", "q25", "q75", "iqr"]
METRIC_NAMES = {"accuracy": "accuracy", "f1_accuracy": "mean of F1 and accuracy",
                "mcc": "Matthews correlation", "pearson_spearman": "mean of Pearson and Spearman r"}
# Leaderboard.runs: RUN, then these.
_RUN_COLUMNS = ["status", "test_score", "score", "accuracy", "pearson", "excess", "failure",
                "noise", "params",
                "regularizer_version", "distribution", "data_seed", "steps", "seconds",
                "peak_memory_mb", "error"]
_STORE_COLUMNS = [*RUN, "phase", "status", "test_score", "params", "regularizer_version",
                  "data_seed", "steps", "seconds", "peak_memory_mb", "error", "provenance",
                  "finished_at", "noise_stability", "test", "test_reference"]
_VERSIONS = ("regbench", "torch", "transformers", "python", "git_commit", "device", "bf16",
             "cpu", "gpu")


@dataclass
class Leaderboard:
    cells: pd.DataFrame  # one row per (task, n_train, regularizer): statistics, gate, ranks, cost
    overall: pd.DataFrame  # one row per regularizer: the ranked ones best first, then the others
    runs: pd.DataFrame  # one row per planned seed: the scores behind every statistic
    meta: dict[str, Any]  # what the caller said about the suite: name, model, recipe
    provenance: dict[str, Any]  # what the runs say: versions, counts, thresholds, methods
    primary: pd.DataFrame  # one row per (task, regularizer): the comparisons fixed in advance
    tasks: pd.DataFrame  # one row per task: failure rule, learning gate, what the board can detect
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

        return {"meta": self.meta, "provenance": self.provenance, "tasks": records(self.tasks),
                "primary": records(self.primary), "cells": records(self.cells),
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


def build(frame: pd.DataFrame, expected: pd.DataFrame | None,
          meta: dict | None = None) -> Leaderboard:
    """The board of the final runs in `frame` (the store's runs table), judged against the test
    references stored with them (`regbench.metrics.test_reference`).

    `expected` (regularizer, task, n_train, seed) is the plan, so that missing runs are counted;
    without it, every regularizer on the board is expected in every (task, size) on every seed
    run there.
    """
    final, superseded = _final_runs(frame)
    references = _references(final, expected)
    runs, unplanned = _planned_runs(final, expected, references)
    cells = _versus_vanilla(_gate(_cells(runs), runs), runs)
    cells[["rank_score", "rank_stability"]] = _ranks(cells[cells.n_completed > 0])
    cells["stability_apart"] = _stability_apart(cells, runs)
    cells = cells.sort_values(["task", "n_train", "rank_score", "regularizer"], key=_task_order,
                              ignore_index=True)
    primary = primary_comparisons(runs, cells)
    overall, block = _overall(cells, runs, primary)
    cells["in_overall"] = _within(cells, block)
    tasks = _tasks(cells, primary, references)
    provenance = _provenance(runs, superseded, unplanned, _tuning_runs(frame, runs), cells,
                             primary)
    provenance["baselines"] = dict(zip(tasks.task, tasks.baseline, strict=True))
    provenance["noise_settings"] = [json.loads(s) for s in sorted(
        {json.dumps(m.get("settings"), sort_keys=True)
         for m in runs.noise_stability.dropna() if m.get("settings")})]
    tuning, tuning_curves = budget_curves(frame, runs, (meta or {}).get("tuning", {}).get("trials"))
    noise = noise_curves(runs), noise_correlations(runs)
    runs = runs.sort_values(RUN, key=_task_order, ignore_index=True)[[*RUN, *_RUN_COLUMNS]]
    return Leaderboard(cells, overall, runs, dict(meta or {}), provenance, primary, tasks, tuning,
                       tuning_curves, *noise)


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


def _references(final: pd.DataFrame, expected: pd.DataFrame | None) -> dict[str, dict | None]:
    """Each task's test reference, the one most of its runs were stored with (None for a task
    planned but without a stored run); an error naming the tasks whose runs have none (runs of a
    store older than the `test_reference` column)."""
    found: dict[str, dict | None] = dict.fromkeys(expected.task if expected is not None else [])
    for task, group in final.dropna(subset=["test_reference"]).groupby("task"):
        found[task] = json.loads(Counter(json.dumps(r, sort_keys=True)
                                         for r in group.test_reference).most_common(1)[0][0])
    lacking = sorted(set(final.task) - {task for task, r in found.items() if r})
    if lacking:
        raise RegbenchError(f"No test reference stored for task(s) {', '.join(lacking)}: runs "
                            "stored before regbench kept one cannot be judged; publish them "
                            "through `regbench leaderboard` with the GLUE data at hand, which "
                            "adds it to the store.")
    return found


def failure_line(task: str, reference: dict | None) -> float:
    """What a run must beat not to fail (protocol.md): a classification run's test accuracy the
    majority-class predictor's; a regression run's Pearson correlation the one significantly
    above 0 at the test half's size (one-sided, ALPHA). NaN without a reference."""
    if reference is None:
        return np.nan
    if TASKS[task].is_regression:
        return critical_correlation(reference["test_size"], ALPHA)
    return reference["constant_scores"]["accuracy"]


def _planned_runs(final: pd.DataFrame, expected: pd.DataFrame | None,
                  references: dict[str, dict]) -> tuple[pd.DataFrame, int]:
    """The plan joined with the runs: planned seeds without a row get the status "missing"; runs
    outside the plan are dropped and counted. Each run gets its `score` (the test score, or the
    constant predictor's for a diverged or crashed run), the statistic its failure is judged on
    (`accuracy`, or `pearson` for regression), its `excess` over the constant predictor (the
    learning gate's measure: accuracy, or the score for regression) and whether it `failure`d."""
    if expected is None:
        everyone = final.regularizer.unique()
        plan = [pd.MultiIndex.from_product([[task], [n], everyone, g.seed.unique()],
                                           names=RUN).to_frame(index=False)
                for (task, n), g in final.groupby(["task", "n_train"])]
        plan = pd.concat(plan) if plan else pd.DataFrame(columns=RUN)
    else:
        plan = expected[RUN].drop_duplicates()
    plan = plan.astype({"task": str, "regularizer": str, "n_train": int, "seed": int})
    runs = plan.assign(planned=True).merge(final, on=RUN, how="outer")
    unplanned = int(runs.planned.isna().sum())
    runs = runs[runs.planned.notna()].drop(columns="planned").reset_index(drop=True)
    runs["status"] = runs.status.fillna(MISSING)
    reference = runs.test_reference.where(runs.test_reference.notna(), runs.task.map(references))
    regression = runs.task.map(lambda task: TASKS[task].is_regression).astype(bool)
    constant = pd.Series([r["constant_scores"][TASKS[t].metric] if r else np.nan
                          for t, r in zip(runs.task, reference, strict=True)], index=runs.index,
                         dtype=float)
    line = pd.Series([failure_line(t, r) for t, r in zip(runs.task, reference, strict=True)],
                     index=runs.index, dtype=float)
    measured = runs.test.map(lambda t: t if isinstance(t, dict) else {})
    completed, finished = runs.status.isin(COMPLETED), runs.status == FINISHED
    runs["score"] = runs.test_score.where(finished, constant).where(completed)
    runs["accuracy"] = measured.map(lambda t: t.get("accuracy")).astype(float).where(
        finished & ~regression)
    runs["pearson"] = measured.map(lambda t: t.get("pearson")).astype(float).where(
        finished & regression)
    judged = runs.pearson.where(regression, runs.accuracy)
    # Rounded: an accuracy equal to the majority's on paper may differ in the last bits.
    runs["failure"] = (~finished | (judged.round(12) <= line.round(12))).astype(float).where(
        completed)
    majority = pd.Series([r["constant_scores"].get("accuracy", np.nan) if r else np.nan
                          for r in reference],
                         index=runs.index, dtype=float)
    runs["excess"] = (runs.score - constant).where(regression, runs.accuracy - majority)
    runs["excess"] = runs.excess.where(finished, 0.0).where(completed)
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
        steady = done.score[done.failure == 0]
        spread_low, spread_high = sd_interval(steady)
        rows.append({
            "task": task, "n_train": n, "regularizer": regularizer,
            # The tuned configuration: one per cell, unless runs of two tunings were mixed.
            "params": json.dumps([json.loads(p) for p in done.params.dropna().unique()]),
            "n_planned": len(group), "n_completed": len(done), "n_finished": len(finished),
            "n_diverged": int((group.status == DIVERGED).sum()),
            "n_crashed": int((group.status == FAILED).sum()),
            **describe(done.score), "ci_low": float(low), "ci_high": float(high),
            "n_failures": int(done.failure.sum()), "failure_rate": done.failure.mean(),
            "std_not_failed": describe(steady)["std"], "spread_low": spread_low,
            "spread_high": spread_high, "accuracy": finished.accuracy.mean(),
            "seconds": finished.seconds.mean(), "peak_memory_mb": finished.peak_memory_mb.mean(),
            "noise": finished.noise.mean(), "noise_table": _mean_table(finished.noise_stability),
        })
    columns = [*CELL, "params", "n_planned", "n_completed", "n_finished", "n_diverged",
               "n_crashed", *STATS, "ci_low", "ci_high", "n_failures", "failure_rate",
               "std_not_failed", "spread_low", "spread_high", "accuracy", "seconds",
               "peak_memory_mb", "noise", "noise_table"]
    return pd.DataFrame(rows, columns=columns)


def _gate(cells: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """The learning gate of each (task, size): whether vanilla's runs beat the constant predictor
    (in accuracy, or in score for regression) over their seeds, a one-sided Student-t test at
    ALPHA of the mean excess (`gate_p`). `learns` is NaN where vanilla has under two results, and
    such a cell is kept."""
    vanilla = runs[(runs.regularizer == VANILLA) & runs.status.isin(COMPLETED)]
    p = vanilla.groupby(["task", "n_train"]).excess.agg(above).rename("gate_p")
    cells = cells.merge(p.reset_index(), on=["task", "n_train"], how="left")
    cells["learns"] = (cells.gate_p < ALPHA).astype(object).where(cells.gate_p.notna())
    return cells


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
    """The exploratory per-cell comparisons: paired differences to vanilla over the seeds both
    completed and their Wilcoxon p-values, uncorrected; and the wall-time ratio."""
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
    vanilla = cells.loc[cells.regularizer == VANILLA, ["task", "n_train", "seconds"]]
    cells = (cells.merge(tests, on=CELL, how="left")
             .merge(vanilla.rename(columns={"seconds": "vanilla_seconds"}),
                    on=["task", "n_train"], how="left"))
    cells["time_vs_vanilla"] = cells.seconds / cells.pop("vanilla_seconds")
    return cells


def primary_comparisons(runs: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """The comparisons fixed in advance: per (task, regularizer), the paired differences to
    vanilla over every (size, seed) both completed in the task's cells that pass the learning
    gate; their mean, its Student-t interval, the two-sided sign-flip p-value, and Holm's
    adjustment over this family alone."""
    gated = cells.loc[cells.learns.eq(False), ["task", "n_train"]].drop_duplicates()
    done = runs[runs.status.isin(COMPLETED)].merge(gated, how="left", indicator=True)
    done = done[done.pop("_merge") == "left_only"]
    rows = []
    for task, group in done.groupby("task", sort=False):
        table = group.pivot(index=["n_train", "seed"], columns="regularizer", values="score")
        if VANILLA not in table:
            continue
        for regularizer in sorted(table.columns.drop(VANILLA)):
            pairs = table[[regularizer, VANILLA]].dropna()
            if pairs.empty:
                continue
            d = (pairs[regularizer] - pairs[VANILLA]).to_numpy()
            low, high = t_interval(d)
            test = sign_flip(d)
            rows.append({"task": task, "regularizer": regularizer, "n_pairs": len(d),
                         "sizes": sorted(int(n) for n in pairs.index.unique("n_train")),
                         "delta": d.mean(), "ci_low": float(low), "ci_high": float(high),
                         "sd": describe(d)["std"], "p_value": test.p_value,
                         "test_method": test.method})
    primary = pd.DataFrame(rows, columns=["task", "regularizer", "n_pairs", "sizes", "delta",
                                          "ci_low", "ci_high", "sd", "p_value", "test_method"])
    primary["p_holm"] = holm(primary.p_value)
    primary["significant"] = primary.p_holm < ALPHA
    return primary.sort_values(["task", "regularizer"], key=_task_order, ignore_index=True)


def _stability_apart(cells: pd.DataFrame, runs: pd.DataFrame) -> pd.Series:
    """Whether each regularizer's stability can be told apart from the steadiest of its cell:
    its failure count differs (Fisher's exact test), or, failing alike, the spread of its runs
    that did not fail does (F-test), two-sided at ALPHA, uncorrected; NaN for the steadiest."""
    done = runs[runs.status.isin(COMPLETED)]
    steady = {key: g.score[g.failure == 0].to_numpy() for key, g in done.groupby(CELL)}
    apart = pd.Series(np.nan, index=cells.index, dtype=object)
    for _, cell in cells[cells.n_completed > 0].groupby(["task", "n_train"]):
        best = cell.loc[cell.rank_stability.idxmin()]
        for i, row in cell.iterrows():
            if i == best.name:
                continue
            p = counts_differ(row.n_failures, row.n_completed, best.n_failures,
                              best.n_completed)
            if p >= ALPHA and row.n_failures == best.n_failures:
                p = spreads_differ(steady[(row.task, row.n_train, row.regularizer)],
                                   steady[(best.task, best.n_train, best.regularizer)])
            apart[i] = bool(p < ALPHA)
    return apart


def _tasks(cells: pd.DataFrame, primary: pd.DataFrame,
           references: dict[str, dict]) -> pd.DataFrame:
    """Per task: its failure line, which sizes learn, and what its primary comparisons could
    detect. With m comparisons in the family, Holm's first step tests at ALPHA / m: `smallest_p`
    is the least p-value the task's pairs allow, and `detectable` the smallest mean difference
    they could make significant there given the median spread of the task's paired differences
    (`regbench.stats.detectable_difference`)."""
    m = len(primary)
    rows = []
    for task, group in cells.groupby("task", sort=False):
        sizes = group.drop_duplicates("n_train")
        mine = primary[primary.task == task]
        pairs = int(mine.n_pairs.max()) if len(mine) else 0
        spread = float(mine.sd.median()) if len(mine) else np.nan
        rows.append({
            "task": task, "label": task_label(task), "metric": metric_name(task),
            "regression": TASKS[task].is_regression, "reference": references[task],
            "failure_line": failure_line(task, references[task]),
            # The failure line on the primary metric's scale, as the plots draw it.
            "baseline": (failure_line(task, references[task])
                         if TASKS[task].is_regression or not references[task] else
                         references[task]["constant_scores"][TASKS[task].metric]),
            "sizes": [int(n) for n in sizes.n_train],
            "not_learning": [int(n) for n in sizes.n_train[sizes.learns.eq(False)]],
            "gate_p": {int(n): p for n, p in zip(sizes.n_train, sizes.gate_p, strict=True)},
            "comparisons": len(mine), "pairs": pairs,
            "smallest_p": smallest_sign_flip_p(pairs) if pairs else np.nan,
            "spread": spread,
            "detectable": detectable_difference(pairs, spread, ALPHA / m) if m else np.nan,
            "differ": int(mine.significant.sum())})
    return pd.DataFrame(rows, columns=["task", "label", "metric", "regression", "reference",
                                       "failure_line", "baseline", "sizes", "not_learning",
                                       "gate_p", "comparisons", "pairs", "smallest_p", "spread",
                                       "detectable", "differ"])


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


def _overall(cells: pd.DataFrame, runs: pd.DataFrame,
             primary: pd.DataFrame) -> tuple[pd.DataFrame, frozenset]:
    """One row per regularizer. Those that completed every cell of the largest block of cells
    that pass the learning gate are ranked by their mean rank over its cells, among themselves;
    the others come after, unranked, with what they miss. A cell is complete when every planned
    seed has a result (finished, diverged or crashed). Better and worse than vanilla count the
    primary comparisons that differ after Holm's correction."""
    kept = (cells.n_completed == cells.n_planned) & ~cells.learns.eq(False)
    complete = {reg: frozenset(zip(g.task, g.n_train, strict=True)) for reg, g
                in cells[kept].groupby("regularizer")}
    block = _largest_block(complete)
    ranked = [reg for reg, done in complete.items() if block <= done]
    inside = cells[_within(cells, block) & cells.regularizer.isin(ranked)]
    ranks = _ranks(inside).assign(regularizer=inside.regularizer).groupby("regularizer")
    # The failure rate of a ranked regularizer over the cells of the rank, so that it compares;
    # of another over all it completed.
    scoped = runs[_within(runs, block) | ~runs.regularizer.isin(ranked)]
    marked = primary[primary.significant]
    finished = runs[runs.status == FINISHED].groupby("regularizer")
    by = cells.groupby("regularizer")
    overall = pd.DataFrame({
        "mean_rank_score": ranks.rank_score.mean(),
        "mean_rank_stability": ranks.rank_stability.mean(),
        "cells_ranked": ranks.size(),
        "cells_complete": cells[cells.n_completed == cells.n_planned].groupby(
            "regularizer").size(),
        "cells": by.size(),
        "failure_rate": scoped.groupby("regularizer").failure.mean(),
        "better_than_vanilla": marked[marked.delta > 0].groupby("regularizer").size(),
        "worse_than_vanilla": marked[marked.delta < 0].groupby("regularizer").size(),
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
                cells: pd.DataFrame, primary: pd.DataFrame) -> dict[str, Any]:
    """What the runs themselves say: how many of each outcome, what made them and on what, how
    long they took, and how the board's statistics were computed."""
    def iso(moment) -> str | None:
        return None if pd.isna(moment) else pd.Timestamp(moment).isoformat()

    shown = runs[runs.status.isin(COMPLETED)]
    plugins = {}
    for regularizer, group in shown.groupby("regularizer"):
        plugins[regularizer] = {
            "versions": sorted(map(str, group.regularizer_version.dropna().unique())),
            "distributions": sorted(map(str, group.distribution.dropna().unique())),
            # the parts of the model it had compute in fp32 in training, one list per setting
            "fp32": sorted({tuple(p["fp32"]) for p in group.provenance.dropna() if p.get("fp32")})}
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
                    "primary": f"two-sided sign-flip permutation test of the mean paired "
                               f"difference to {VANILLA}, per (regularizer, task), the sizes "
                               "that learn pooled, paired by (size, seed)",
                    "primary_methods": dict(sorted(Counter(primary.test_method).items())),
                    "correction": f"Holm over the {len(primary)} primary comparisons",
                    "test": f"two-sided Wilcoxon signed-rank test against {VANILLA} over "
                            "paired seeds, per cell, exploratory and uncorrected",
                    "test_methods": dict(sorted(Counter(cells.test_method[tested]).items())),
                    "gate": f"one-sided Student-t test over {VANILLA}'s seeds of its excess "
                            "over the constant predictor (accuracy; score for regression)",
                    "spread": f"{CONFIDENCE:.0%} chi-square interval of the standard deviation "
                              "of the runs that did not fail",
                    "alpha": ALPHA},
    }
