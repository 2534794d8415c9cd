"""The leaderboard as a web page: one self-contained HTML file per board, and an index of the
boards in a folder. The page reads the same `Leaderboard` as the markdown and shows it as
tables a reader sorts and filters, and interactive figures (regbench.charts); Jinja2 writes it
from the templates in `regbench/templates`, with its script, its styles and plotly.js inside,
so that it opens offline from a file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

import pandas as pd
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup, escape
from plotly.offline import get_plotlyjs

from regbench import charts
from regbench.board import (
    MISSING,
    VANILLA,
    Leaderboard,
    metric_name,
    runs_shown,
    task_label,
)
from regbench.formatting import (
    TIED,
    moment,
    num,
    p_text,
    params_text,
    percent,
    rank_text,
    seeds_text,
    setting,
    tied_to_steadiest,
)
from regbench.markdown import header_facts, header_sentence
from regbench.stats import CONFIDENCE, INTERVAL
from regbench.store import DIVERGED, FAILED

# The figures keep their toolbar (zoom, pan, download as PNG) but not the link to Plotly's site.
_PLOT_CONFIG = {"responsive": True, "displaylogo": False}
_environment = Environment(loader=PackageLoader("regbench", "templates"),
                           autoescape=select_autoescape(["html", "j2"]),
                           trim_blocks=True, lstrip_blocks=True)


@dataclass
class Column:
    """A table column: its header, what it means, and for a row its sort key and its text."""

    header: str
    help: str
    key: Callable[[Any], Any]
    text: Callable[[Any], str] | None = None  # by default the sort key, as it is
    numeric: bool = True


@dataclass
class Table:
    """A table the page sorts by any column and filters by task, size and regularizer."""

    id: str
    columns: list[Column]
    rows: list[Any]
    filters: Callable[[Any], dict[str, Any]]  # a row's task, size and regularizer, where it has
    classes: Callable[[Any], str] = lambda row: ""
    body: list[dict] = field(init=False)

    def __post_init__(self):
        self.body = [{"filters": self.filters(row), "class": self.classes(row),
                      "cells": [(column.text(row) if column.text else str(column.key(row)),
                                 _sort_key(column.key(row))) for column in self.columns]}
                     for row in self.rows]


def _sort_key(value: Any) -> str:
    """The cell's data-sort attribute: a number as written by repr, text as is; empty for none
    (sorted last whichever the direction)."""
    if value is None or (isinstance(value, Real) and pd.isna(value)):
        return ""
    return repr(float(value)) if isinstance(value, Real) else str(value)


def _figure(figure, name: str) -> Markup:
    return Markup(figure.to_html(full_html=False, include_plotlyjs=False, config=_PLOT_CONFIG,
                                 div_id=f"plot-{name}"))


def _cell_classes(row) -> str:
    classes = []
    if row.n_completed < row.n_planned:
        classes.append("incomplete")
    if row.n_diverged or row.n_crashed:
        classes.append("broken")
    if row.learns is False:
        classes.append("not-learning")
    return " ".join(classes)


def overall_table(board: Leaderboard) -> Table:
    columns = [
        Column("regularizer", "", lambda r: r.regularizer, numeric=False),
        Column("rank", "The overall rank: the mean score rank over the cells every ranked "
               "regularizer completed (1 is the best)", lambda r: r.rank,
               lambda v: rank_text(v.rank)),
        Column("mean score rank", "Mean over the cells of the rank by mean test score",
               lambda r: r.mean_rank_score, lambda v: num(v.mean_rank_score, 2)),
        Column("mean stability rank", "Mean over the cells of the rank by failure rate, then "
               "by the spread of the runs that did not fail",
               lambda r: r.mean_rank_stability, lambda v: num(v.mean_rank_stability, 2)),
        Column("failure rate", "Runs no better than the majority class, diverged or crashed",
               lambda r: r.failure_rate, lambda v: percent(v.failure_rate)),
        Column(f"better / worse than {VANILLA} (primary)",
               f"Primary comparisons that differ from {VANILLA} after Holm's correction",
               lambda r: r.better_than_vanilla - r.worse_than_vanilla,
               lambda v: "–" if v.regularizer == VANILLA else
               f"{v.better_than_vanilla} / {v.worse_than_vanilla}"),
        Column(f"time × {VANILLA}", f"Wall time of a run over {VANILLA}'s in the same cell",
               lambda r: r.time_vs_vanilla, lambda v: num(v.time_vs_vanilla, 2)),
        Column("seconds per run", "Mean wall time of a finished run",
               lambda r: r.seconds, lambda v: num(v.seconds, 1)),
        Column("cells complete", "Cells with a result for every planned seed",
               lambda r: r.cells_complete, lambda v: f"{v.cells_complete}/{v.cells}"),
        Column("missing", "Seeds without a result", lambda r: r.missing, numeric=False),
    ]
    return Table("overall", columns, list(board.overall.itertuples()),
                 lambda r: {"regularizer": r.regularizer},
                 lambda r: "" if r.ranked else "unranked")


def _p_is(p: float) -> str:
    """"p = 0.012", or "p < 0.001"."""
    text = p_text(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _learns(row) -> str:
    if pd.isna(row.learns):
        return "–"
    return f"{'yes' if row.learns else 'no'} ({_p_is(row.gate_p)})"


def cells_table(board: Leaderboard) -> Table:
    columns = [
        Column("regularizer", "", lambda r: r.regularizer, numeric=False),
        Column("task", "", lambda r: task_label(r.task), numeric=False),
        Column("N", "Training examples", lambda r: r.n_train),
        Column("learns", f"Whether {VANILLA}'s runs beat the constant predictor over their "
               "seeds (one-sided p); a cell that does not is left out of the overall rank and "
               "of the primary comparisons", lambda r: r.gate_p, _learns),
        Column("overall", "Whether the cell counts in the overall rank: it learns, and every "
               "ranked regularizer completed it", lambda r: int(r.in_overall),
               lambda v: "yes" if v.in_overall else "no"),
        Column("score rank", "Rank by mean test score within the cell (1 is the best)",
               lambda r: r.rank_score, lambda v: rank_text(v.rank_score)),
        Column("mean", "Mean test score (the task's primary metric) over the seeds with a "
               "result", lambda r: r["mean"], lambda v: num(v["mean"])),
        Column("std", "Sample standard deviation over seeds", lambda r: r["std"],
               lambda v: num(v["std"])),
        Column("accuracy", "Mean test accuracy of the finished runs (classification), which "
               "decides failures", lambda r: r.accuracy, lambda v: num(v.accuracy)),
        Column("worst", "The lowest seed", lambda r: r["min"], lambda v: num(v["min"])),
        Column("IQR", "Interquartile range", lambda r: r.iqr, lambda v: num(v.iqr)),
        Column(f"{CONFIDENCE:.0%} CI", f"{INTERVAL} over seeds",
               lambda r: r.ci_low, lambda v: f"[{num(v.ci_low)}, {num(v.ci_high)}]"),
        Column("failed", "Runs no better than the constant predictor, diverged or crashed",
               lambda r: r.failure_rate,
               lambda v: f"{v.n_failures}/{v.n_completed}" if v.n_completed else "–"),
        Column(f"Δ {VANILLA}", f"Mean paired difference to {VANILLA} in this cell",
               lambda r: r.delta_vs_vanilla, lambda v: num(v.delta_vs_vanilla, sign=True)),
        Column("p (exploratory)", f"Wilcoxon signed-rank test against {VANILLA} in this cell, "
               "uncorrected: only the headline's primary comparisons are evidence",
               lambda r: r.p_value, lambda v: p_text(v.p_value)),
        Column("stability rank", "Rank by failure rate, then by the spread of the runs that "
               f"did not fail (1 is the steadiest); {TIED}: cannot be told apart from the "
               "steadiest", lambda r: r.rank_stability,
               lambda v: rank_text(v.rank_stability)
               + (f" {TIED}" if tied_to_steadiest(v.stability_apart) else "")),
        Column("spread [95% CI]", "Standard deviation of the runs that did not fail, with its "
               "chi-square interval", lambda r: r.std_not_failed,
               lambda v: f"{num(v.std_not_failed)} [{num(v.spread_low)}, "
                         f"{num(v.spread_high)}]"),
        # The markdown's text, without its bold: the row's color says a cell is incomplete.
        Column("seeds", "Runs with a result over planned runs", lambda r: r.n_completed,
               lambda v: seeds_text(v).strip("*")),
        Column("noise", "Mean noise sensitivity of the finished runs", lambda r: r.noise,
               lambda v: num(v.noise)),
        Column(f"time × {VANILLA}", f"Wall time of a run over {VANILLA}'s",
               lambda r: r.time_vs_vanilla, lambda v: num(v.time_vs_vanilla, 2)),
        Column("hyperparameters", "The tuned configuration", lambda r: params_text(r.params),
               lambda v: params_text(v.params), numeric=False),
    ]
    return Table("cells", columns, [row for _, row in board.cells.iterrows()],
                 lambda r: {"task": r.task, "size": r.n_train, "regularizer": r.regularizer},
                 _cell_classes)


def runs_table(board: Leaderboard) -> Table:
    columns = [
        Column("regularizer", "", lambda r: r.regularizer, numeric=False),
        Column("task", "", lambda r: task_label(r.task), numeric=False),
        Column("N", "Training examples", lambda r: r.n_train),
        Column("seed", "", lambda r: r.seed),
        Column("outcome", "finished; failed: no better than the majority class; diverged; "
               "crashed; missing: planned, no result", charts.outcome, numeric=False),
        Column("score", "The test score, or the constant predictor's for a diverged or crashed "
               "run", lambda r: r.score, lambda v: num(v.score, 4)),
        Column("accuracy", "Test accuracy (classification), which decides a failure",
               lambda r: r.accuracy, lambda v: num(v.accuracy, 4)),
        Column("noise", "Noise sensitivity", lambda r: r.noise, lambda v: num(v.noise, 4)),
        Column("seconds", "", lambda r: r.seconds, lambda v: num(v.seconds, 1)),
        Column("hyperparameters", "", lambda r: charts.params_text(r.params), numeric=False),
        Column("error", "", lambda r: r.error if isinstance(r.error, str) else "",
               lambda v: (v.error.strip().splitlines() or [""])[-1]
               if isinstance(v.error, str) else "", numeric=False),
    ]
    return Table("runs", columns, list(board.runs.itertuples()),
                 lambda r: {"task": r.task, "size": r.n_train, "regularizer": r.regularizer},
                 lambda r: f"outcome-{charts.outcome(r)}")


def _inline(text: str) -> Markup:
    """Markdown's `code` and **bold** as HTML, the rest escaped."""
    html = str(escape(text))
    html = re.sub(r"`([^`]+)`", r"<code>\1</code>", html)
    return Markup(re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", html))


def headline(board: Leaderboard) -> list[dict]:
    """Per task, what its primary comparisons found, and what they could have found: the
    regularizers that differ from vanilla after Holm, the others' count, the smallest p-value
    its pairs allow and the smallest difference its spread would make significant at Holm's
    first threshold; or that it does not learn at this budget."""
    alpha, m = board.provenance["methods"]["alpha"], len(board.primary)
    found = []
    for task in board.tasks.itertuples():
        mine = board.primary[board.primary.task == task.task]
        differ = mine[mine.significant].sort_values("delta", ascending=False)
        found.append({
            "task": task.task, "label": task.label, "metric": task.metric,
            "not_learning": task.not_learning,
            "learns_nowhere": len(task.not_learning) == len(task.sizes),
            "gate": [(n, _p_is(task.gate_p[n])) for n in task.sizes],
            "comparisons": len(mine), "pairs": task.pairs,
            "sizes": ", ".join(map(str, mine.sizes.iloc[0])) if len(mine) else "",
            "differ": [{"regularizer": d.regularizer, "delta": num(d.delta, sign=True),
                        "ci": f"[{num(d.ci_low, sign=True)}, {num(d.ci_high, sign=True)}]",
                        "p": p_text(d.p_value), "p_holm": p_text(d.p_holm)}
                       for d in differ.itertuples()],
            "smallest_p": p_text(task.smallest_p), "threshold": f"{alpha} / {m}",
            "powerless": task.smallest_p >= alpha / m if m else True,
            "spread": num(task.spread), "detectable": num(task.detectable)})
    return found


def tuning_table(board: Leaderboard) -> Table:
    budget = int(board.tuning.budget.iloc[0]) if len(board.tuning) else 0
    columns = [
        Column("regularizer", "", lambda r: r.regularizer, numeric=False),
        Column("task", "", lambda r: task_label(r.task), numeric=False),
        Column("N", "Training examples", lambda r: r.n_train),
        Column("sampler", "The study's sampler; random search below the budget where TPE can "
               "learn", lambda r: r.sampler, numeric=False),
        Column("configurations", "Configurations the study tried (left out: pruned, diverged or "
               "crashed on some seed)", lambda r: r.configurations,
               lambda v: f"{v.configurations}" + (f" ({v.left_out} left out)"
                                                  if v.left_out else "")),
        Column("rank at 1", "Rank within the (task, size) by the expected best validation "
               "score of one trial", lambda r: r.rank_at_1, lambda v: rank_text(v.rank_at_1)),
        Column(f"rank at {budget}", "Rank by the expected best of the budget's trials",
               lambda r: r.rank_at_budget, lambda v: rank_text(v.rank_at_budget)),
        Column("E[max] at 1", "Expected best validation score of one trial (Dodge et al.)",
               lambda r: r.expected_max_1, lambda v: num(v.expected_max_1)),
        Column(f"E[max] at {budget}", "Expected best validation score of the budget's trials",
               lambda r: r.expected_max_budget, lambda v: num(v.expected_max_budget)),
        Column("seed spread", "Standard deviation of the tuned configuration's final seeds' "
               "validation scores", lambda r: r.seed_spread, lambda v: num(v.seed_spread)),
        Column("configuration spread", "Standard deviation of the study's configurations' "
               "validation scores", lambda r: r.configuration_spread,
               lambda v: num(v.configuration_spread)),
    ]
    return Table("tuning", columns, list(board.tuning.itertuples()),
                 lambda r: {"task": r.task, "size": r.n_train, "regularizer": r.regularizer})


def _correlations(board: Leaderboard, task: str) -> list[dict]:
    """The task's within-cell (and across-regularizer) correlations of score and noise."""
    found = board.noise_correlations
    if found.empty:
        return []
    return [{"size": "all" if pd.isna(r.n_train) else int(r.n_train), "runs": r.runs,
             "cells": r.cells, "within": num(r.within_spearman, 2), "within_p": p_text(r.within_p),
             "across": num(r.across_spearman, 2), "across_p": p_text(r.across_p),
             "regularizers": "–" if pd.isna(r.across_cells) else int(r.across_cells)}
            for r in found[found.task == task].itertuples()]


def failure_rule(task) -> str:
    """When a run of the task fails, from its row of `Leaderboard.tasks`, as protocol.md says."""
    reference = task.reference
    if not reference:  # a task of the plan with no final run stored yet
        return "no final run is stored yet, so none is judged"
    if task.regression:
        return (f"a run fails when its Pearson r is at or below {num(task.failure_line)}, the "
                f"least r significantly above 0 (one-sided) over its "
                f"{reference['test_size']} test pairs")
    majority = reference["label_counts"][reference["constant_prediction"]]
    return (f"a run fails when its test accuracy is at or below the majority class's, "
            f"{num(task.failure_line)} ({majority} of {reference['test_size']}); the dashed "
            f"line is that predictor's {task.metric}, {num(task.baseline)}")


def _tasks(board: Leaderboard) -> list[dict]:
    """Per task, its failure rule, its figures and its noise correlations."""
    rules = {t.task: failure_rule(t) for t in board.tasks.itertuples()}
    tasks = []
    for task in board.cells.task.unique():
        drawn = {"seeds": charts.seeds(board, task), "sizes": charts.sizes(board, task),
                 "noise": charts.noise(board, task), "layers": charts.layers(board, task),
                 "budget": charts.budget(board, task)}
        tasks.append({"task": task, "label": task_label(task), "metric": metric_name(task),
                      "rule": rules[task], "correlations": _correlations(board, task),
                      "figures": {kind: _figure(figure, f"{task}-{kind}")
                                  for kind, figure in drawn.items() if figure is not None}})
    return tasks


def board_page(board: Leaderboard, name: str) -> str:
    """The board's page; it links to `<name>.csv`, `.json` and `.md` beside it."""
    cells = board.cells
    verdicts = headline(board)
    return _environment.get_template("board.html.j2").render(
        title=f"Leaderboard: {board.meta.get('suite', name)}", name=name, board=board,
        sentence=_inline(header_sentence(board)),
        facts=[(label, _inline(text)) for label, text in header_facts(board)],
        meta=[(k, setting(v)) for k, v in board.meta.items()],
        provenance=board.provenance, runs_shown=runs_shown(board.provenance),
        status_counts=sorted(board.provenance["runs"].items()),
        tasks=_tasks(board) if not cells.empty else [], headline=verdicts,
        gated=[(t["label"], ", ".join(map(str, t["not_learning"]))) for t in verdicts
               if t["not_learning"]],
        forest=_figure(charts.forest(board), "forest") if len(board.primary) else None,
        filters={"task": [(t, task_label(t)) for t in cells.task.unique()],
                 "size": sorted(cells.n_train.unique().tolist()),
                 "regularizer": list(board.overall.regularizer)},
        colors=charts.palette(board) if not cells.empty else {},
        overall=overall_table(board), cells=cells_table(board), runs=runs_table(board),
        tuning=tuning_table(board) if len(board.tuning) else None,
        problems=int(board.runs.status.isin([DIVERGED, FAILED]).sum()),
        missing=int((board.runs.status == MISSING).sum()),
        plotly_js=Markup(get_plotlyjs()), style=_asset("page.css"),
        script=_asset("page.js"))


def _asset(name: str) -> Markup:
    return Markup(_environment.loader.get_source(_environment, name)[0])


def headline_of(document: dict) -> list[str]:
    """What a published board (its JSON) found, one line per task, for the index: the
    regularizers that differ from vanilla in its primary comparisons, or that none does, or that
    the task does not learn; and what it holds. A board published before it had primary
    comparisons gets the last line alone."""
    cells = pd.DataFrame(document.get("cells", []))
    if cells.empty:
        return ["No final runs."]
    primary = pd.DataFrame(document.get("primary", []))
    lines = []
    for task in document.get("tasks", []):
        mine = primary[primary.task == task["task"]] if len(primary) else primary
        differ = mine[mine.significant].sort_values("delta", ascending=False) \
            if len(mine) else mine
        if len(task["not_learning"]) == len(task["sizes"]):
            verdict = "does not learn at this budget"
        elif mine.empty:
            verdict = "no primary comparison"
        elif differ.empty:
            verdict = f"none of {len(mine)} regularizers differs from {VANILLA}"
        else:
            verdict = (", ".join(f"{r.regularizer} ({num(r.delta, sign=True)})"
                                 for r in differ.itertuples())
                       + f" differ from {VANILLA} ({len(differ)} of {len(mine)})")
        lines.append(f"{task['label']}: {verdict}")
    tasks = ", ".join(dict.fromkeys(task_label(t) for t in cells.task))
    sizes = ", ".join(map(str, sorted(cells.n_train.unique())))
    return [*lines, f"{cells.regularizer.nunique()} regularizers on {tasks} at N = {sizes}; "
                    f"{runs_shown(document['provenance'])} final runs"]


def index_page(documents: dict[str, dict]) -> str:
    """The index of the boards published in a folder, from their JSON documents by name."""
    boards = []
    for name, document in sorted(documents.items()):
        meta, provenance = document.get("meta", {}), document["provenance"]
        boards.append({"name": name, "suite": meta.get("suite", name),
                       "date": meta.get("date") or moment(provenance["generated"]),
                       "trained": [(provenance.get("first_run") or "")[:10],
                                   (provenance.get("last_run") or "")[:10]],
                       "model": meta.get("model"), "headline": headline_of(document),
                       "page": document.get("page")})
    return _environment.get_template("index.html.j2").render(boards=boards,
                                                             style=_asset("page.css"))


def published_documents(folder, documents: dict[str, dict]) -> dict[str, dict]:
    """The boards' JSON documents in `folder` (those that read as boards), with `documents`
    (the boards being written) in place of theirs."""
    found = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(document, dict) and "provenance" in document and "cells" in document:
            found[path.stem] = document
    return {**found, **documents}
