"""The leaderboard as markdown: a header saying what made the runs and how they were judged,
the overall rank, the cells, and the provenance."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pandas as pd
from tabulate import tabulate

from regbench.board import (
    ALPHA,
    MISSING,
    VANILLA,
    Leaderboard,
    metric_name,
    runs_shown,
    task_label,
)
from regbench.stats import CONFIDENCE, INTERVAL, smallest_wilcoxon_p
from regbench.store import DIVERGED, FAILED

MARK = "†"


def render(board: Leaderboard, images: list[str]) -> str:
    """The leaderboard as markdown; `images` are the plot files, relative to the markdown."""
    if board.cells.empty:
        body = ["No final runs, and none planned."]
    else:
        body = [_overall_md(board), _reading_md(board), _cells_md(board), _sizes_md(board),
                _noise_md(board), _cost_md(board)]
    plots = ["## Plots", *(f"![{image}]({image})" for image in images)] if images else []
    return "\n\n".join([_header(board), *body, _provenance_md(board), *plots]) + "\n"


def _num(x: float, digits: int = 3, sign: bool = False) -> str:
    return "–" if pd.isna(x) else f"{x:{'+' if sign else ''}.{digits}f}"


def _rank_text(x: float) -> str:
    return "–" if pd.isna(x) else f"{x:g}"


def _percent(x: float) -> str:
    return "–" if pd.isna(x) else f"{100 * x:.0f}%"


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return (f"{hours} h {minutes:02d} min" if hours else
            f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s")


def _score(row: pd.Series) -> str:
    """mean ± std, with the significance mark."""
    if pd.isna(row["mean"]):
        return "–"
    mark = f" {MARK}" if row.significant else ""
    return f"{row['mean']:.3f} ± {_num(row['std'])}{mark}"


def _seeds(row: pd.Series) -> str:
    """Runs with a result over planned ones, what failed outright, in bold when the cell is
    incomplete."""
    text = f"{row.n_completed}/{row.n_planned}"
    outright = [f"{count} {what}" for count, what in ((row.n_diverged, "diverged"),
                                                      (row.n_crashed, "crashed")) if count]
    if outright:
        text += f" ({', '.join(outright)})"
    return text if row.n_completed == row.n_planned else f"**{text}**"


def _params(text: str) -> str:
    configurations = json.loads(text)
    shown = [", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in c.items()) or "–" for c in configurations]
    return " / ".join(shown) or "–"


def _table(rows: Iterable[Iterable], headers: list[str]) -> str:
    # Cells are formatted here; tabulate would otherwise re-read "0.650" as a number.
    rows = [[str(c).replace("|", "\\|") for c in row] for row in rows]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _tally(counts: dict, show=str) -> str:
    """One value, or each value with the number of runs that had it."""
    if not counts:
        return "–"
    if len(counts) == 1:
        return show(next(iter(counts)))
    return ", ".join(f"{show(value)} ({count} runs)" for value, count in counts.items())


def _recorded(value: str) -> str:
    return "not recorded" if value == "None" else value


def _precision(value: str) -> str:
    return {"True": "bf16 autocast", "False": "fp32"}.get(value, "not recorded")


def _fp32(plugins: dict[str, dict]) -> str:
    """Which regularizers had parts of the model compute in fp32 in training, and which."""
    def parts(names) -> str:
        layers = sorted(int(n.partition(".")[2]) for n in names if n.startswith("layer."))
        span = ([f"layer {layers[0]}" if len(layers) == 1 else f"layers {layers[0]}–{layers[-1]}"]
                if layers and layers == list(range(layers[0], layers[-1] + 1))
                else [f"layer {k}" for k in layers])
        return ", ".join([*(n for n in names if not n.startswith("layer.")), *span])

    said = [f"{reg} ({'; '.join(parts(names) for names in v['fp32'])})"
            for reg, v in plugins.items() if v.get("fp32")]
    return f"; in fp32 while training: {', '.join(said)}" if said else ""


def _header(board: Leaderboard) -> str:
    meta, p = board.meta, board.provenance
    versions = p["versions"]
    model = f" with `{meta['model']}`" if meta.get("model") else ""
    software = ", ".join(f"{name} {_tally(versions[name], _recorded)}"
                         for name in ("regbench", "torch", "transformers", "python"))
    compute = p["compute"]
    tuning = (f", plus {_duration(compute['tuning_seconds'])} in the {compute['tuning_runs']} "
              "tuning runs stored for these cells (pruned ones included)"
              if compute["tuning_runs"] else "")
    plugins = ", ".join(
        f"{reg} {'/'.join(v['versions']) or '?'}"
        + (f" ({', '.join(v['distributions'])})" if v["distributions"] else "")
        for reg, v in p["regularizers"].items())
    methods = p["methods"]
    modes = ", ".join(f"{mode} in {count}" for mode, count in methods["test_methods"].items())
    lines = [
        f"# Leaderboard: {meta.get('suite', 'regbench')}", "",
        f"Fine-tuning regularizers on GLUE{model}: the final runs only (never the tuning runs), "
        f"scored on the test half of each dev set. Generated by regbench on "
        f"{meta.get('date', p['generated'])}; do not edit by hand.", "",
        f"- **Machine**: CPU {_tally(versions['cpu'], _recorded)}; "
        f"GPU {_tally(versions['gpu'], lambda v: 'none' if v == 'None' else v)}",
        f"- **Device and precision**: {_tally(versions['device'], _recorded)}, "
        f"{_tally(versions['bf16'], _precision)}{_fp32(p['regularizers'])}",
        f"- **Software**: {software}; commit {_tally(versions['git_commit'], _recorded)}",
        f"- **Compute**: {_duration(compute['final_seconds'])} in the {compute['final_runs']} "
        f"final runs shown{tuning}"
        + (f"; {_duration(compute['wall_seconds'])} of wall time with a run in progress"
           if compute.get("wall_seconds") is not None else ""),
        f"- **Regularizers** (version, distribution): {plugins or '–'}",
        f"- **Statistics**: {methods['interval']}; {methods['test']}"
        + (f" ({modes})" if modes else "")
        + f"; {methods['correction']}, {MARK} at p < {methods['alpha']}",
    ]
    return "\n".join(lines)


def _overall_md(board: Leaderboard) -> str:
    overall = board.overall
    ranked, apart = overall[overall.ranked], overall[~overall.ranked]
    cells = board.cells.drop_duplicates(["task", "n_train"])
    left_out = cells[~cells.in_overall]
    parts = ["## Overall"]
    if len(ranked):
        rows = [[_rank_text(r.rank), r.regularizer, _num(r.mean_rank_score, 2),
                 _num(r.mean_rank_stability, 2), _percent(r.failure_rate),
                 "–" if r.regularizer == VANILLA else
                 f"{r.better_than_vanilla} / {r.worse_than_vanilla}",
                 _num(r.time_vs_vanilla, 2)] for r in ranked.itertuples()]
        covered = int(ranked.cells_ranked.iloc[0])
        scope = (f"all {covered} (task, size) cells" if left_out.empty else
                 f"{covered} of the {len(cells)} (task, size) cells, those every ranked "
                 "regularizer completed (left out: "
                 + ", ".join(f"{task_label(c.task)} N={c.n_train}"
                             for c in left_out.itertuples()) + ")")
        parts += [
            "A regularizer's overall rank orders its **mean rank across the cells** below "
            f"(within each, regularizers rank by mean test score; 1 is the best, ties share the "
            f"average place), over {scope}. The stability rank is aggregated the same way; the "
            "failure rate is over the same cells.",
            _table(rows, ["rank", "regularizer", "mean score rank", "mean stability rank",
                          "failure rate", f"better / worse than {VANILLA} ({MARK})",
                          f"time × {VANILLA}"])]
    else:
        parts.append("No regularizer has completed a cell yet: no overall rank.")
    if len(apart):
        rows = [[r.regularizer, f"{r.cells_complete}/{r.cells}", _percent(r.failure_rate),
                 r.missing] for r in apart.itertuples()]
        parts += ["### Not ranked: missing runs",
                  "These regularizers have seeds without a result in cells the ranked ones "
                  "completed; ranking them over the cells they have would compare unlike sets. "
                  "Their failure rate is over the runs they have.",
                  _table(rows, ["regularizer", "cells complete", "failure rate",
                                "missing (task, size: seeds without a result)"])]
    return "\n\n".join(parts)


def _reading_md(board: Leaderboard) -> str:
    cells, methods = board.cells, board.provenance["methods"]
    thresholds = ", ".join(f"{task_label(t)} {_num(v)}"
                           for t, v in board.provenance["baselines"].items())
    m = int(cells.p_value.notna().sum())
    family = (f"Holm-corrected across all {m} comparisons with {VANILLA} on this board" if m else
              f"none on this board, for want of {VANILLA} runs on shared seeds")
    lines = [
        "## How to read the tables", "",
        "- **mean ± std**: the task's primary metric over the final seeds (sample standard "
        "deviation; – with one seed). **worst**: the lowest seed. **IQR**: the interquartile "
        f"range. **{CONFIDENCE:.0%} CI**: the {INTERVAL} over seeds, mean ± t · s / √n with "
        "n − 1 degrees of freedom, which holds its coverage at a handful of seeds.",
        "- **failed**: runs whose test score is no better than the majority-class predictor "
        f"({thresholds}), and runs that diverged or crashed. A diverged or crashed run has no "
        "test score: it enters every statistic, and every paired test, at the majority-class "
        "score, as a failed run would; it is never dropped.",
        f"- **Δ {VANILLA}**: the mean paired difference to {VANILLA} over the seeds both have a "
        "result for. **p (Holm)**: a two-sided Wilcoxon signed-rank test over those seeds, "
        f"{family}. **{MARK}** marks p (Holm) < {ALPHA}. Only {MARK} is evidence of a "
        "difference: adjacent ranks, or different means without the mark, are not.",
        "- **score rank**: by mean (1 = highest). **stability rank**: by failure rate first, "
        "then the standard deviation of the runs that did not fail (1 = steadiest): runs that "
        "all collapse to the majority class agree closely and are the least stable, not the "
        "most. Both are within the cell.",
        "- **seeds**: runs with a result (finished, diverged or crashed) over planned runs; "
        "**bold** when runs are missing (see Provenance).",
    ]
    if m:
        lines.append("- **p-values** come from the exact null distribution of the test where no "
                     "paired difference is zero and none tie; otherwise from all 2^n sign flips "
                     "of the differences (exact given the ties) up to 13 pairs, or beyond that "
                     "from the normal approximation. On this board: " + ", ".join(
                         f"{mode} in {count}" for mode, count in methods["test_methods"].items())
                     + ".")
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
               "seeds", "noise", "hyperparameters"]
    parts = ["## Results by task and size"]
    for task, by_task in board.cells.groupby("task", sort=False):
        parts.append(f"### {task_label(task)} ({metric_name(task)})")
        for n, cell in by_task.groupby("n_train"):
            rows = [[_rank_text(r.rank_score), r.regularizer, _score(r), _num(r["min"]),
                     _num(r.iqr), f"[{_num(r.ci_low)}, {_num(r.ci_high)}]",
                     f"{r.n_failures}/{r.n_completed}" if r.n_completed else "–",
                     _num(r.delta_vs_vanilla, 3, sign=True), _num(r.p_holm),
                     _rank_text(r.rank_stability), _seeds(r), _num(r.noise), _params(r.params)]
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
                partial = "" if r.n_completed == r.n_planned else \
                    f" ({r.n_completed}/{r.n_planned} seeds)"
                row.append(_score(r) + partial)
            rows.append(row)
        parts += [f"### {task_label(task)}", _table(rows, ["regularizer",
                                                            *(f"N = {n}" for n in sizes)])]
    return "\n\n".join(parts)


def _noise_md(board: Leaderboard) -> str:
    """Does stability to noise go with generalisation, as Hua et al. find? Per task, across runs."""
    rows = [[task_label(task), found["runs"], _num(found["spearman"], 2), _num(found["p_value"])]
            for task, found in board.provenance["noise_stability"].items()]
    settings = board.provenance["noise_settings"]
    if not rows or not settings:
        return "## Noise stability\n\nNo finished run carries a noise-stability measure."
    measured = " / ".join(f"{s['scale']:.0%} noise, the first {s['examples']} test examples, "
                          f"{s['draws']} draws" for s in settings)
    return "\n\n".join([
        "## Noise stability",
        "The LNSR paper's diagnostic, measured on every finished final run after training: "
        "Gaussian noise of a share of each token's norm added to the embedding output, in eval "
        "mode, on the first examples of the test half, and the relative change ‖h̃ − h‖ / ‖h‖ of "
        f"the last layer's hidden states, averaged over real tokens and noise draws ({measured}; "
        "fp32, a fixed seed). The **noise** column above is the cell's mean; the JSON holds "
        "every run's whole table (noise at each layer, the change of every layer above). "
        "Hua et al. find that models which move "
        "less generalise better: a negative rank correlation between test score and noise "
        "below. A correlation across runs is no proof of cause.",
        _table(rows, ["task", "finished runs", "Spearman ρ (score, noise)", "p"])])


def _cost_md(board: Leaderboard) -> str:
    rows = [[r.regularizer, _num(r.seconds, 1), _num(r.time_vs_vanilla, 2),
             _num(r.peak_memory_mb, 0)] for r in board.overall.itertuples()]
    return "\n\n".join([
        "## Cost",
        f"Mean wall time of a finished run; **× {VANILLA}** is the ratio to {VANILLA}'s mean time "
        "in the same (task, size), averaged over the cells both ran in. **Peak GPU memory** is "
        "CUDA's peak allocated memory during a run, measured on GPU runs only: on the CPU a "
        "process's memory is no per-run figure, and shows as –.",
        _table(rows, ["regularizer", "seconds per run", f"× {VANILLA}",
                      "peak GPU memory (MB)"])])


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
    counts = ", ".join(f"{count} {status}" for status, count in sorted(p["runs"].items()))
    lines += [f"- data seeds: {_setting(p['data_seeds']) or '–'}",
              f"- final runs finished between {p['first_run'] or '–'} and {p['last_run'] or '–'}",
              f"- planned runs: {counts or 'none'} ({runs_shown(p)} stored runs shown)"]
    if p["superseded_runs"]:
        lines.append(f"- {p['superseded_runs']} older final runs of the same seeds were "
                     "superseded by later ones")
    if p["unplanned_runs"]:
        lines.append(f"- {p['unplanned_runs']} final runs outside the plan were left out")
    parts = ["\n".join(lines)]
    incomplete = board.cells[board.cells.n_completed < board.cells.n_planned]
    if len(incomplete):
        missing = runs[runs.status == MISSING].groupby(
            ["task", "n_train", "regularizer"]).seed.agg(lambda s: ", ".join(map(str, sorted(s))))
        rows = [[task_label(r.task), r.n_train, r.regularizer, f"{r.n_completed}/{r.n_planned}",
                 missing.get((r.task, r.n_train, r.regularizer), "")]
                for r in incomplete.itertuples()]
        parts += ["### Missing runs", _table(rows, ["task", "N", "regularizer",
                                                    "seeds with a result", "seeds missing"])]
    problems = runs[runs.status.isin([DIVERGED, FAILED])]
    if len(problems):
        rows = [[task_label(r.task), r.n_train, r.regularizer, r.seed,
                 "crashed" if r.status == FAILED else r.status,
                 _shorten(r.error)] for r in problems.itertuples()]
        parts += ["### Diverged and crashed runs (failures, scored at the majority class)",
                  _table(rows, ["task", "N", "regularizer", "seed", "status", "error"])]
    return "\n\n".join(parts)


def _shorten(error: Any, width: int = 100) -> str:
    if not isinstance(error, str):
        return ""
    line = error.strip().splitlines()[-1] if error.strip() else ""
    return line if len(line) <= width else line[:width - 1] + "…"
