"""The leaderboard of a suite: statistics of its final runs, published as markdown, CSV, JSON and
plots.

`build` turns the runs table into one `Leaderboard`; markdown, CSV, JSON and the plots all render
that same object, so they cannot disagree. `publish` writes them all.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from regbench.data import load_raw
from regbench.metrics import majority_baseline
from regbench.splits import split_dev
from regbench.stats import (
    CONFIDENCE,
    bootstrap_ci,
    describe,
    holm,
    rank,
    smallest_wilcoxon_p,
    wilcoxon,
)
from regbench.store import DIVERGED, FAILED, FINISHED, SETTLED
from regbench.suite import Suite
from regbench.tasks import TASKS, get_task

VANILLA = "vanilla"  # the reference of every paired test and of the cost ratio
ALPHA = 0.05  # after Holm's correction
MARK = "†"
MISSING = "missing"  # the status of a planned run that has no row in the store
CELL = ["task", "n_train", "regularizer"]
RUN = [*CELL, "seed"]
STATS = ["mean", "std", "min", "max", "q25", "q75", "iqr"]
# Leaderboard.runs: RUN, then these.
_RUN_COLUMNS = ["status", "test_score", "failure", "params", "regularizer_version", "data_seed",
                "steps", "seconds", "peak_memory_mb", "error"]
_STORE_COLUMNS = [*RUN, "phase", "status", "test_score", "params", "regularizer_version",
                  "data_seed", "steps", "seconds", "peak_memory_mb", "error", "provenance",
                  "finished_at"]
_VERSIONS = ("regbench", "torch", "transformers", "python", "git_commit", "device")


@dataclass
class Leaderboard:
    cells: pd.DataFrame  # one row per (task, n_train, regularizer): statistics, test, ranks, cost
    overall: pd.DataFrame  # one row per regularizer, best first: mean ranks, failures, cost
    runs: pd.DataFrame  # one row per planned seed: the scores behind every statistic
    meta: dict[str, Any]  # what the caller said about the suite: name, model, recipe, date
    provenance: dict[str, Any]  # what the runs say: versions, counts, thresholds, dates

    def to_json(self) -> dict[str, Any]:
        def records(frame: pd.DataFrame) -> list[dict]:
            return json.loads(frame.to_json(orient="records", double_precision=15))

        return {"meta": self.meta, "provenance": self.provenance, "cells": records(self.cells),
                "overall": records(self.overall), "runs": records(self.runs)}


def publish(frame: pd.DataFrame, expected: pd.DataFrame | None, out_dir: Path, name: str,
            meta: dict, baselines: dict[str, float]) -> Path:
    """Write `<name>.md`, `.csv` (one row per cell), `.json` (everything) and `<name>-*.png` into
    `out_dir` from the final runs of `frame` (the store's runs table); returns the markdown path.

    `expected` (regularizer, task, n_train, seed) is the plan, so that missing runs are counted;
    without it, every regularizer of a (task, size) is expected on every seed run there.
    `baselines` maps a task to the majority-class predictor's test score: a run fails when it
    does no better.
    """
    from regbench.plots import plot  # matplotlib is slow to import and only needed here

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    board = build(frame, expected, baselines, meta)
    images = plot(board, out_dir, name)
    board.cells.to_csv(out_dir / f"{name}.csv", index=False)
    (out_dir / f"{name}.json").write_text(json.dumps(board.to_json(), indent=1, default=str))
    markdown = out_dir / f"{name}.md"
    markdown.write_text(render_markdown(board, [image.name for image in images]))
    return markdown


def publish_suite(suite: Suite, frame: pd.DataFrame, out_dir: Path,
                  data_dir: str | None = None) -> Path:
    """`publish` for one suite: its plan, the failure baselines of its tasks, and its runs."""
    # A suite name may hold runs of other models or recipes (flags override a suite): keep this
    # setup's alone, as the header will describe it.
    frame = frame[(frame.model == suite.model) & (frame.data_seed == suite.data_seed)
                  & frame.recipe.map(lambda r: r == suite.recipe.as_dict())]
    expected = pd.DataFrame(
        [(c.regularizer, c.task, c.size, seed)
         for c in suite.cells() for seed in suite.final_seeds],
        columns=["regularizer", "task", "n_train", "seed"])
    baselines = {}
    for name in suite.tasks:
        task = get_task(name)
        raw = load_raw(task, data_dir)
        _, test = split_dev(task, raw["dev"]["label"])
        baselines[name] = majority_baseline(task, raw["train"]["label"],
                                            np.asarray(raw["dev"]["label"])[test])
    meta = {"suite": suite.name, "description": suite.description.strip(), "model": suite.model,
            "recipe": suite.recipe.as_dict(), "tuning": vars(suite.tuning),
            "final_seeds": list(suite.final_seeds), "tuning_seeds": list(suite.tuning_seeds),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    return publish(frame, expected, out_dir, suite.name, meta, baselines)


def build(frame: pd.DataFrame, expected: pd.DataFrame | None = None,
          baselines: dict[str, float] | None = None, meta: dict | None = None) -> Leaderboard:
    baselines = baselines or {}
    final, superseded = _final_runs(frame)
    runs, unplanned = _planned_runs(final, expected, baselines)
    cells = _versus_vanilla(_cells(runs), runs)
    _rank(cells)
    cells = cells.sort_values(["task", "n_train", "rank_score", "regularizer"], key=_task_order,
                              ignore_index=True)
    provenance = _provenance(runs, superseded, unplanned)
    provenance["baselines"] = {task: baselines.get(task) for task in cells.task.unique()}
    runs = runs.sort_values(RUN, key=_task_order, ignore_index=True)[[*RUN, *_RUN_COLUMNS]]
    return Leaderboard(cells, _overall(cells, runs), runs, dict(meta or {}), provenance)


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
    outside the plan are dropped and counted."""
    if expected is None:
        plan = [pd.MultiIndex.from_product([[task], [n], g.regularizer.unique(), g.seed.unique()],
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
    threshold = runs.task.map(baselines).astype(float)
    # A diverged run has no test score and counts as failed; a run not settled is not a result.
    failure = (runs.status == DIVERGED) | (runs.test_score <= threshold)
    runs["failure"] = failure.astype(float).where(runs.status.isin(SETTLED) & threshold.notna())
    runs["params"] = runs.params.map(lambda p: json.dumps(p, sort_keys=True), na_action="ignore")
    return runs, unplanned


def _cells(runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (task, n, regularizer), group in runs.groupby(CELL, sort=False):
        settled = group[group.status.isin(SETTLED)]
        scores = settled.test_score.dropna()
        finished = group[group.status == FINISHED]
        low, high = bootstrap_ci(scores)
        rows.append({
            "task": task, "n_train": n, "regularizer": regularizer,
            # The tuned configuration: one per cell, unless runs of two tunings were mixed.
            "params": json.dumps([json.loads(p) for p in settled.params.dropna().unique()]),
            "n_planned": len(group), "n_settled": len(settled), "n_scored": len(scores),
            "n_diverged": int((group.status == DIVERGED).sum()),
            "n_crashed": int((group.status == FAILED).sum()),
            **describe(scores), "ci_low": low, "ci_high": high,
            "n_failures": settled.failure.sum(min_count=1), "failure_rate": settled.failure.mean(),
            "seconds": finished.seconds.mean(), "peak_memory_mb": finished.peak_memory_mb.mean(),
        })
    columns = [*CELL, "params", "n_planned", "n_settled", "n_scored", "n_diverged", "n_crashed",
               *STATS, "ci_low", "ci_high", "n_failures", "failure_rate", "seconds",
               "peak_memory_mb"]
    return pd.DataFrame(rows, columns=columns)


def _versus_vanilla(cells: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Paired differences to vanilla over the seeds both have a score for, Wilcoxon p-values
    Holm-corrected over every comparison on the board, and the wall-time ratio."""
    tests = []
    scored = runs.dropna(subset=["test_score"])
    for (task, n), group in scored.groupby(["task", "n_train"]):
        table = group.pivot(index="seed", columns="regularizer", values="test_score")
        if VANILLA not in table:
            continue
        for regularizer in table.columns.drop(VANILLA):
            pairs = table[[regularizer, VANILLA]].dropna()
            tests.append({"task": task, "n_train": n, "regularizer": regularizer,
                          "n_pairs": len(pairs),
                          "delta_vs_vanilla": (pairs[regularizer] - pairs[VANILLA]).mean(),
                          "p_value": wilcoxon(pairs[regularizer], pairs[VANILLA])})
    tests = pd.DataFrame(tests, columns=[*CELL, "n_pairs", "delta_vs_vanilla", "p_value"])
    tests["p_holm"] = holm(tests.p_value)
    vanilla = cells.loc[cells.regularizer == VANILLA, ["task", "n_train", "seconds"]]
    cells = (cells.merge(tests, on=CELL, how="left")
             .merge(vanilla.rename(columns={"seconds": "vanilla_seconds"}),
                    on=["task", "n_train"], how="left"))
    cells["significant"] = cells.p_holm < ALPHA
    cells["time_vs_vanilla"] = cells.seconds / cells.pop("vanilla_seconds")
    return cells


def _rank(cells: pd.DataFrame) -> None:
    """Within each (task, size), among the regularizers with a settled run: by mean score, and by
    stability (standard deviation, then failure rate)."""
    cells["rank_score"] = cells["rank_stability"] = np.nan
    for _, cell in cells[cells.n_settled > 0].groupby(["task", "n_train"]):
        cells.loc[cell.index, "rank_score"] = rank(cell, ["mean"], [False])
        cells.loc[cell.index, "rank_stability"] = rank(cell, ["std", "failure_rate"], [True, True])


def _overall(cells: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Each regularizer's mean rank across the (task, size) cells it ran in, best first."""
    by = cells.groupby("regularizer")
    marked = cells[cells.significant]
    finished = runs[runs.status == FINISHED].groupby("regularizer")
    overall = pd.DataFrame({
        "mean_rank_score": by.rank_score.mean(),
        "mean_rank_stability": by.rank_stability.mean(),
        "cells_ranked": by.rank_score.count(),
        "cells": by.size(),
        "failure_rate": runs.groupby("regularizer").failure.mean(),
        "better_than_vanilla": marked[marked.delta_vs_vanilla > 0].groupby("regularizer").size(),
        "worse_than_vanilla": marked[marked.delta_vs_vanilla < 0].groupby("regularizer").size(),
        "seconds": finished.seconds.mean(),
        "time_vs_vanilla": by.time_vs_vanilla.mean(),
        "peak_memory_mb": finished.peak_memory_mb.mean(),
    }, index=pd.Index(cells.regularizer.unique(), name="regularizer"))
    overall[["better_than_vanilla", "worse_than_vanilla"]] = (
        overall[["better_than_vanilla", "worse_than_vanilla"]].fillna(0).astype(int))
    overall.insert(0, "rank", rank(overall, ["mean_rank_score"], [True])
                   .where(overall.mean_rank_score.notna()))
    return overall.reset_index().sort_values(["rank", "mean_rank_stability", "regularizer"],
                                             ignore_index=True)


def _provenance(runs: pd.DataFrame, superseded: int, unplanned: int) -> dict[str, Any]:
    """What the runs themselves say: how many of each outcome, which versions made them, when."""
    def iso(moment) -> str | None:
        return None if pd.isna(moment) else pd.Timestamp(moment).isoformat()

    return {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "runs": dict(Counter(runs.status)),
        "superseded_runs": superseded,
        "unplanned_runs": unplanned,
        "versions": {key: dict(Counter(p.get(key) for p in runs.provenance.dropna()))
                     for key in _VERSIONS},
        "regularizer_versions": {reg: sorted(map(str, versions.unique())) for reg, versions
                                 in runs.dropna(subset=["regularizer_version"])
                                 .groupby("regularizer").regularizer_version},
        "data_seeds": sorted(int(s) for s in runs.data_seed.dropna().unique()),
        "first_run": iso(runs.finished_at.min()),
        "last_run": iso(runs.finished_at.max()),
    }


# Markdown ------------------------------------------------------------------------------------

def task_label(task: str) -> str:
    """GLUE's own spelling of a task (CoLA, STS-B); the name itself for a task regbench lacks."""
    return TASKS[task].local.folder if task in TASKS else task


def metric(task: str) -> str:
    return TASKS[task].metric if task in TASKS else "score"


def _num(x: float, digits: int = 3, sign: bool = False) -> str:
    return "–" if pd.isna(x) else f"{x:{'+' if sign else ''}.{digits}f}"


def _rank_text(x: float) -> str:
    return "–" if pd.isna(x) else f"{x:g}"


def _percent(x: float) -> str:
    return "–" if pd.isna(x) else f"{100 * x:.0f}%"


def _score(row: pd.Series) -> str:
    """mean ± std, with the significance mark."""
    if pd.isna(row["mean"]):
        return "–"
    mark = f" {MARK}" if row.significant else ""
    return f"{row['mean']:.3f} ± {_num(row['std'])}{mark}"


def _seeds(row: pd.Series) -> str:
    """Settled runs over planned ones, in bold when the cell is incomplete."""
    text = f"{row.n_settled}/{row.n_planned}"
    if row.n_diverged:
        text += f" ({row.n_diverged} diverged)"
    return text if row.n_settled == row.n_planned else f"**{text}**"


def _params(text: str) -> str:
    configurations = json.loads(text)
    shown = [", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in c.items()) or "–" for c in configurations]
    return " / ".join(shown) or "–"


def _table(rows: Iterable[Iterable], headers: list[str]) -> str:
    # Cells are formatted here; tabulate would otherwise re-read "0.650" as a number.
    rows = [[str(c).replace("|", "\\|") for c in row] for row in rows]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _header(board: Leaderboard) -> str:
    meta = board.meta
    model = f" with `{meta['model']}`" if meta.get("model") else ""
    lines = [f"# Leaderboard: {meta.get('suite', 'regbench')}", "",
             f"Fine-tuning regularizers on GLUE{model}: the final runs only (never the tuning "
             "runs), scored on the test half of each dev set. "
             f"Generated by regbench on {meta.get('date', board.provenance['generated'])}; "
             "do not edit by hand."]
    return "\n".join(lines)


def _overall_md(board: Leaderboard) -> str:
    rows = [[_rank_text(r.rank), r.regularizer, _num(r.mean_rank_score, 2),
             _num(r.mean_rank_stability, 2), f"{r.cells_ranked}/{r.cells}",
             _percent(r.failure_rate), "–" if r.regularizer == VANILLA else
             f"{r.better_than_vanilla} / {r.worse_than_vanilla}",
             _num(r.time_vs_vanilla, 2)] for r in board.overall.itertuples()]
    headers = ["rank", "regularizer", "mean score rank", "mean stability rank", "cells",
               "failure rate", f"better / worse than {VANILLA} ({MARK})", f"time × {VANILLA}"]
    return "\n".join([
        "## Overall", "",
        "A regularizer's overall rank orders its **mean rank across the (task, size) cells** it "
        "has runs in (each cell ranks regularizers by mean test score; 1 is the best, ties share "
        "the average place). The stability rank is aggregated the same way. A regularizer "
        "missing cells is ranked over fewer of them: the cells column says how many.", "",
        _table(rows, headers)])


def _reading_md(board: Leaderboard) -> str:
    cells = board.cells
    thresholds = ", ".join(f"{task_label(t)} {_num(v)}" if v is not None else
                           f"{task_label(t)} none given (failure rate not computed)"
                           for t, v in board.provenance["baselines"].items())
    m = int(cells.p_value.notna().sum())
    family = (f"Holm-corrected across all {m} comparisons with {VANILLA} on this board" if m else
              f"none on this board, for want of {VANILLA} runs on shared seeds")
    lines = [
        "## How to read the tables", "",
        "- **mean ± std**: the task's primary metric over the final seeds (sample standard "
        "deviation; – with one seed). **worst**: the lowest seed. **IQR**: the interquartile "
        f"range. **{CONFIDENCE:.0%} CI**: a BCa bootstrap interval of the mean over seeds "
        "(SciPy, seeded).",
        "- **failed**: runs whose test score is no better than the majority-class predictor "
        f"({thresholds}). A diverged run counts as failed; it has no test score, so it is left "
        "out of the score statistics.",
        f"- **Δ {VANILLA}**: the mean paired difference to {VANILLA} over the seeds both have a "
        "score for. **p (Holm)**: a two-sided Wilcoxon signed-rank test over those seeds, "
        f"{family}. "
        f"**{MARK}** marks p (Holm) < {ALPHA}. Only {MARK} is evidence of a difference: "
        "adjacent ranks, or different means without the mark, are not.",
        "- **score rank**: by mean (1 = highest). **stability rank**: by standard deviation, "
        "then failure rate (1 = steadiest). Both are within the cell.",
        "- **seeds**: settled runs over planned runs; **bold** when runs are missing (see "
        "Provenance).",
    ]
    if m:
        pairs = int(cells.n_pairs.max())
        smallest = smallest_wilcoxon_p(pairs)
        if smallest >= ALPHA:
            lines.append(f"- With {pairs} paired seeds the smallest two-sided Wilcoxon p-value "
                         f"is {smallest:.4f}: no comparison on this board can reach {ALPHA}. "
                         "Run more seeds to test differences.")
    return "\n".join(lines)


def _cells_md(board: Leaderboard) -> str:
    headers = ["score rank", "regularizer", "mean ± std", "worst", "IQR",
               f"{CONFIDENCE:.0%} CI", "failed", f"Δ {VANILLA}", "p (Holm)", "stability rank",
               "seeds", "hyperparameters"]
    parts = ["## Results by task and size"]
    for task, by_task in board.cells.groupby("task", sort=False):
        parts.append(f"### {task_label(task)} ({metric(task)})")
        for n, cell in by_task.groupby("n_train"):
            rows = [[_rank_text(r.rank_score), r.regularizer, _score(r), _num(r["min"]),
                     _num(r.iqr), f"[{_num(r.ci_low)}, {_num(r.ci_high)}]",
                     "–" if pd.isna(r.n_failures) else f"{r.n_failures:.0f}/{r.n_settled}",
                     _num(r.delta_vs_vanilla, 3, sign=True), _num(r.p_holm),
                     _rank_text(r.rank_stability), _seeds(r), _params(r.params)]
                    for _, r in cell.iterrows()]
            parts += [f"#### N = {n}", _table(rows, headers)]
    return "\n\n".join(parts)


def _sizes_md(board: Leaderboard) -> str:
    parts = ["## Score as the training set grows",
             f"Mean ± std of the test score per training size ({MARK}: differs from {VANILLA} "
             f"after Holm; a cell with missing runs says how many seeds it has)."]
    order = {reg: i for i, reg in enumerate(board.overall.regularizer)}
    for task, by_task in board.cells.groupby("task", sort=False):
        sizes = sorted(by_task.n_train.unique())
        table = by_task.set_index(["regularizer", "n_train"])
        rows = []
        for regularizer in sorted(by_task.regularizer.unique(), key=order.get):
            row = [regularizer]
            for n in sizes:
                if (regularizer, n) not in table.index:
                    row.append("")
                    continue
                r = table.loc[(regularizer, n)]
                partial = "" if r.n_settled == r.n_planned else \
                    f" ({r.n_settled}/{r.n_planned} seeds)"
                row.append(_score(r) + partial)
            rows.append(row)
        parts += [f"### {task_label(task)}", _table(rows, ["regularizer",
                                                            *(f"N = {n}" for n in sizes)])]
    return "\n\n".join(parts)


def _cost_md(board: Leaderboard) -> str:
    rows = [[r.regularizer, _num(r.seconds, 1), _num(r.time_vs_vanilla, 2),
             _num(r.peak_memory_mb, 0)] for r in board.overall.itertuples()]
    return "\n\n".join([
        "## Cost",
        f"Mean wall time of a finished run; **× {VANILLA}** is the ratio to {VANILLA}'s mean time "
        "in the same (task, size), averaged over the cells both ran in.",
        _table(rows, ["regularizer", "seconds per run", f"× {VANILLA}", "peak memory (MB)"])])


def _tally(counts: dict) -> str:
    if not counts:
        return "–"
    if len(counts) == 1:
        return str(next(iter(counts)))
    return ", ".join(f"{value} ({count} runs)" for value, count in counts.items())


def _setting(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


def _provenance_md(board: Leaderboard) -> str:
    p, runs = board.provenance, board.runs
    lines = ["## Provenance", ""]
    lines += [f"- {key}: {_setting(value)}" for key, value in board.meta.items()]
    lines += [f"- {key}: {_tally(counts)}" for key, counts in p["versions"].items()]
    versions = ", ".join(f"{reg} {'/'.join(v)}" for reg, v in p["regularizer_versions"].items())
    counts = ", ".join(f"{count} {status}" for status, count in sorted(p["runs"].items()))
    lines += [f"- regularizer versions: {versions or '–'}",
              f"- data seeds: {_setting(p['data_seeds']) or '–'}",
              f"- final runs finished between {p['first_run'] or '–'} and {p['last_run'] or '–'}",
              f"- planned runs: {counts or 'none'}"]
    if p["superseded_runs"]:
        lines.append(f"- {p['superseded_runs']} older final runs of the same seeds were "
                     "superseded by later ones")
    if p["unplanned_runs"]:
        lines.append(f"- {p['unplanned_runs']} final runs outside the plan were left out")
    parts = ["\n".join(lines)]
    incomplete = board.cells[board.cells.n_settled < board.cells.n_planned]
    if len(incomplete):
        unsettled = runs[~runs.status.isin(SETTLED)].groupby(CELL).seed.agg(
            lambda s: ", ".join(map(str, sorted(s))))
        rows = [[task_label(r.task), r.n_train, r.regularizer, f"{r.n_settled}/{r.n_planned}",
                 unsettled.get((r.task, r.n_train, r.regularizer), "")]
                for r in incomplete.itertuples()]
        parts += ["### Missing runs", _table(rows, ["task", "N", "regularizer", "seeds settled",
                                                    "seeds missing or crashed"])]
    problems = runs[runs.status.isin([DIVERGED, FAILED])]
    if len(problems):
        rows = [[task_label(r.task), r.n_train, r.regularizer, r.seed,
                 "crashed" if r.status == FAILED else r.status,
                 _shorten(r.error)] for r in problems.itertuples()]
        parts += ["### Diverged and crashed runs",
                  _table(rows, ["task", "N", "regularizer", "seed", "status", "error"])]
    return "\n\n".join(parts)


def _shorten(error: Any, width: int = 100) -> str:
    if not isinstance(error, str):
        return ""
    line = error.strip().splitlines()[-1] if error.strip() else ""
    return line if len(line) <= width else line[:width - 1] + "…"


def render_markdown(board: Leaderboard, images: list[str]) -> str:
    """The leaderboard as markdown; `images` are the plot files, relative to the markdown."""
    if board.cells.empty:
        body = ["No final runs, and none planned."]
    else:
        body = [_overall_md(board), _reading_md(board), _cells_md(board), _sizes_md(board),
                _cost_md(board)]
    plots = ["## Plots", *(f"![{image}]({image})" for image in images)] if images else []
    return "\n\n".join([_header(board), *body, _provenance_md(board), *plots]) + "\n"
