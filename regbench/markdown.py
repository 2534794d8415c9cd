"""The leaderboard as markdown: a header saying what made the runs and how they were judged, the
headline (the primary comparisons per task, and what the board could detect), the overall rank,
the cells, and the provenance."""

from __future__ import annotations

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
from regbench.formatting import (
    moment,
    num,
    p_text,
    params_text,
    percent,
    rank_text,
    seeds_text,
    setting,
)
from regbench.stats import CONFIDENCE, INTERVAL, smallest_wilcoxon_p
from regbench.store import DIVERGED, FAILED
from regbench.tasks import TASKS

TIED = "≈"  # a stability rank that cannot be told apart from the cell's steadiest
FOREST = "forest"  # the plot of the primary comparisons, shown in the headline


def render(board: Leaderboard, images: list[str]) -> str:
    """The leaderboard as markdown; `images` are the plot files, relative to the markdown."""
    forest = [image for image in images if image.endswith(f"-{FOREST}.png")]
    others = [image for image in images if image not in forest]
    if board.cells.empty:
        body = ["No final runs, and none planned."]
    else:
        body = [_headline_md(board, forest), _overall_md(board), _reading_md(board),
                _cells_md(board), _tuning_md(board), _noise_md(board), _cost_md(board)]
    plots = ["## Plots", *(f"![{image}]({image})" for image in others)] if others else []
    return "\n\n".join([_header(board), *body, _provenance_md(board), *plots]) + "\n"








def _sizes(sizes: Iterable[int]) -> str:
    return ", ".join(map(str, sizes))




def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return (f"{hours} h {minutes:02d} min" if hours else
            f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s")


def _score(row: pd.Series) -> str:
    if pd.isna(row["mean"]):
        return "–"
    return f"{row['mean']:.3f} ± {num(row['std'])}"






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
    modes = ", ".join(f"{mode} in {count}" for mode, count in methods["primary_methods"].items())
    trained = (f"Final runs trained from {moment(p['first_run'])} to "
               f"{moment(p['last_run'])} (when the first and the last finished)"
               if p["first_run"] else "No final run trained yet")
    lines = [
        f"# Leaderboard: {meta.get('suite', 'regbench')}", "",
        f"Fine-tuning regularizers on GLUE{model}: the final runs only (never the tuning runs), "
        f"scored on the test half of each dev set. {trained}. Generated by regbench from its "
        "run store; do not edit by hand.", "",
        f"- **Machine**: CPU {_tally(versions['cpu'], _recorded)}; "
        f"GPU {_tally(versions['gpu'], lambda v: 'none' if v == 'None' else v)}",
        f"- **Device and precision**: {_tally(versions['device'], _recorded)}, "
        f"{_tally(versions['bf16'], _precision)}{_fp32(p['regularizers'])}",
        f"- **Software**: {software}; commit {_tally(versions['git_commit'], _recorded)}",
        f"- **Compute**: {_duration(compute['final_seconds'])} in the {compute['final_runs']} "
        f"final runs shown{tuning}"
        + (f"; {_duration(compute['wall_seconds'])} of wall time (while any run was running)"
           if compute.get("wall_seconds") is not None else ""),
        f"- **Regularizers** (version, distribution): {plugins or '–'}",
        f"- **Statistics**: primary comparisons: {methods['primary']}"
        + (f" ({modes})" if modes else "")
        + f", {methods['correction']}, a difference at p (Holm) < {methods['alpha']}; "
        f"{methods['interval']}; per-cell tests: {methods['test']}",
    ]
    return "\n".join(lines)


def _headline_md(board: Leaderboard, forest: list[str]) -> str:
    """Per task: the regularizers that differ from vanilla in the primary comparisons, or that
    none does and what the board could have detected; a task that does not learn, said first."""
    tasks, primary = board.tasks, board.primary
    alpha, m = board.provenance["methods"]["alpha"], len(primary)
    parts = ["## Headline"]
    gated = [f"{r.label} N = {_sizes(r.not_learning)}" for r in tasks.itertuples()
             if r.not_learning]
    if gated:
        parts.append(f"**Does not learn at this budget: {'; '.join(gated)}.** In those cells "
                     f"{VANILLA}'s runs do not beat the constant predictor (the majority class) "
                     "significantly over their seeds: they are shown below, but left out of the "
                     "overall rank and of the primary comparisons.")
    if m:
        parts.append(f"The primary comparisons were fixed in advance: each regularizer against "
                     f"{VANILLA} on each task, the sizes that learn pooled, paired by (size, "
                     f"seed); a two-sided sign-flip permutation test of the mean paired "
                     f"difference, Holm-corrected over these {m} comparisons alone, a "
                     f"difference at p (Holm) < {alpha}; the interval is the {INTERVAL} of "
                     "the paired differences, unadjusted for the number of comparisons. "
                     "Everything else on the board is exploratory.")
    for r in tasks.itertuples():
        mine = primary[primary.task == r.task]
        head = f"### {r.label} ({r.metric})"
        if r.not_learning and len(r.not_learning) == len(r.sizes):
            parts += [head, "Does not learn at this budget at any size: no primary comparison "
                            "(vanilla's one-sided p per size: " + ", ".join(
                                f"N = {n}: {p_text(r.gate_p[n])}" for n in r.sizes) + ")."]
            continue
        if mine.empty:
            parts += [head, f"No primary comparison: no paired runs of {VANILLA} and another "
                            "regularizer."]
            continue
        each = "" if mine.n_pairs.nunique() == 1 else "up to "
        pooled = (f"{len(mine)} comparisons, each over {each}{r.pairs} (size, seed) pairs at "
                  f"N = {_sizes(sorted(set().union(*mine.sizes)))}")
        power = (f"With {r.pairs} pairs the smallest p is {p_text(r.smallest_p)}"
                 + (f", above Holm's first threshold ({alpha} / {m}): no comparison could have "
                    f"been significant" if r.smallest_p >= alpha / m else
                    f"; with the paired differences' typical spread (median standard deviation "
                    f"{num(r.spread)}) a mean difference needs to exceed about "
                    f"±{num(r.detectable)} to be significant at Holm's first threshold "
                    f"({alpha} / {m})") + ".")
        differ = mine[mine.significant].sort_values("delta", ascending=False)
        if differ.empty:
            text = (f"**No regularizer differs from {VANILLA}** ({pooled}). {power}")
            parts += [head, text]
        else:
            rows = [[d.regularizer, num(d.delta, 3, sign=True),
                     f"[{num(d.ci_low, 3, sign=True)}, {num(d.ci_high, 3, sign=True)}]",
                     p_text(d.p_value), p_text(d.p_holm)] for d in differ.itertuples()]
            rest = len(mine) - len(differ)
            parts += [head, f"**{len(differ)} of {len(mine)} differ from {VANILLA}** "
                            f"({pooled}):",
                      _table(rows, ["regularizer", f"mean Δ {VANILLA}",
                                    f"{CONFIDENCE:.0%} CI", "p", "p (Holm)"]),
                      (f"The other {rest} do not differ from {VANILLA} after Holm's correction. "
                       if rest else "") + power]
    parts += [f"![{image}]({image})" for image in forest]
    return "\n\n".join(parts)


def _overall_md(board: Leaderboard) -> str:
    overall = board.overall
    ranked, apart = overall[overall.ranked], overall[~overall.ranked]
    cells = board.cells.drop_duplicates(["task", "n_train"])
    left_out = cells[~cells.in_overall & ~cells.learns.eq(False)]
    gated = cells[cells.learns.eq(False)]
    parts = ["## Overall"]
    if len(ranked):
        rows = [[rank_text(r.rank), r.regularizer, num(r.mean_rank_score, 2),
                 num(r.mean_rank_stability, 2), percent(r.failure_rate),
                 "–" if r.regularizer == VANILLA else
                 f"{r.better_than_vanilla} / {r.worse_than_vanilla}",
                 num(r.time_vs_vanilla, 2)] for r in ranked.itertuples()]
        covered = int(ranked.cells_ranked.iloc[0])
        scope = (f"all {covered} (task, size) cells" if left_out.empty and gated.empty else
                 f"{covered} of the {len(cells)} (task, size) cells, those that learn and that "
                 "every ranked regularizer completed"
                 + "".join(f" ({what}: " + ", ".join(f"{task_label(c.task)} N={c.n_train}"
                                                     for c in which.itertuples()) + ")"
                           for what, which in (("not learning", gated),
                                               ("incomplete", left_out)) if len(which)))
        parts += [
            "A regularizer's overall rank orders its **mean rank across the cells** below "
            f"(within each, regularizers rank by mean test score; 1 is the best, ties share the "
            f"average place), over {scope}. The stability rank is aggregated the same way; the "
            "failure rate is over the same cells. Better / worse counts the primary comparisons "
            f"that differ from {VANILLA} (see the headline); adjacent ranks without "
            f"them are no evidence of a difference. {_stability_ties(board)}",
            _table(rows, ["rank", "regularizer", "mean score rank", "mean stability rank",
                          "failure rate", f"better / worse than {VANILLA} (primary)",
                          f"time × {VANILLA}"])]
    elif len(gated) == len(cells):
        parts.append("No (task, size) cell learns at this budget: no overall rank.")
    else:
        parts.append("No regularizer has completed a cell yet: no overall rank.")
    if len(apart):
        rows = [[r.regularizer, f"{r.cells_complete}/{r.cells}", percent(r.failure_rate),
                 r.missing] for r in apart.itertuples()]
        parts += ["### Not ranked: missing runs",
                  "These regularizers have seeds without a result in cells the ranked ones "
                  "completed; ranking them over the cells they have would compare unlike sets. "
                  "Their failure rate is over the runs they have.",
                  _table(rows, ["regularizer", "cells complete", "failure rate",
                                "missing (task, size: seeds without a result)"])]
    return "\n\n".join(parts)


def _tied(apart: Any) -> bool:
    """Whether a cell's `stability_apart` says its rank cannot be told from the steadiest."""
    return not pd.isna(apart) and not apart


def _stability_ties(board: Leaderboard) -> str:
    """How many stability ranks of the ranked cells cannot be told apart from the steadiest."""
    inside = board.cells[board.cells.in_overall & board.cells.stability_apart.notna()]
    tied = int(inside.stability_apart.map(_tied).sum())
    return (f"Within the ranked cells, {tied} of the {len(inside)} stability ranks below the "
            f"steadiest cannot be told apart from it ({TIED} in the tables), so mean stability "
            "ranks that differ little mean little." if len(inside) else "")


def _reading_md(board: Leaderboard) -> str:
    cells, methods = board.cells, board.provenance["methods"]
    rules = "; ".join(
        f"{r.label}: Pearson r at or below {num(r.failure_line)}, the least r significantly "
        f"above 0 (one-sided, {ALPHA}) over its {r.reference['test_size']} test pairs"
        if r.regression else
        f"{r.label}: test accuracy at or below the majority class's, {num(r.failure_line)} "
        f"({r.reference['label_counts'][r.reference['constant_prediction']]} of "
        f"{r.reference['test_size']})"
        for r in board.tasks.itertuples() if r.reference)
    m = int(cells.p_value.notna().sum())
    lines = [
        "## How to read the tables", "",
        "- **mean ± std**: the task's primary metric over the final seeds (sample standard "
        "deviation; – with one seed). **accuracy**: the mean test accuracy of the finished runs "
        "(classification), which decides failures. **worst**: the lowest seed. **IQR**: the "
        f"interquartile range. **{CONFIDENCE:.0%} CI**: the {INTERVAL} over seeds, mean ± t · "
        "s / √n with n − 1 degrees of freedom, which holds its coverage at a handful of seeds.",
        f"- **failed** (protocol.md, after Mosbach et al. 2021): {rules}; and runs that diverged "
        "or crashed. A diverged or crashed run has no test score: it enters every statistic, "
        "and every paired test, at the constant predictor's score; it is never dropped.",
        f"- **learns**: whether {VANILLA}'s runs beat the constant predictor (in accuracy; in "
        f"score for regression) over their seeds, a one-sided Student-t test at {ALPHA} "
        "(its p in brackets). A cell that does not is shown but left out of the overall rank "
        "and of the primary comparisons.",
        f"- **Δ {VANILLA}** and **p (exploratory)**: the cell's mean paired difference to "
        f"{VANILLA} over the seeds both have a result for, and a two-sided Wilcoxon signed-rank "
        f"test of it, uncorrected: {m} such tests on this board, so about {m * ALPHA:.1f} "
        f"would fall under {ALPHA} by chance alone. Only the headline's primary comparisons "
        "are evidence of a difference.",
        "- **score rank**: by mean (1 = highest). **stability rank**: by failure rate first, "
        "then the standard deviation of the runs that did not fail (1 = steadiest): runs that "
        "all collapse to the majority class agree closely and are the least stable, not the "
        f"most. **{TIED}**: cannot be told apart from the cell's steadiest (the failure counts "
        "do not differ by Fisher's exact test, nor, failing alike, the spreads by an F-test; "
        f"two-sided, {ALPHA}, uncorrected). **spread**: that standard deviation with its "
        f"{methods['spread']}. Both ranks are within the cell.",
        "- **seeds**: runs with a result (finished, diverged or crashed) over planned runs; "
        "**bold** when runs are missing (see Provenance).",
    ]
    if m:
        lines.append("- Exploratory p-values come from the exact null distribution of the test "
                     "where no paired difference is zero and none tie; otherwise from all 2^n "
                     "sign flips of the differences (exact given the ties) up to 13 pairs, or "
                     "beyond that from the normal approximation. On this board: " + ", ".join(
                         f"{mode} in {count}" for mode, count in methods["test_methods"].items())
                     + f". With {int(cells.n_pairs.max())} paired seeds the smallest is "
                     f"{p_text(smallest_wilcoxon_p(int(cells.n_pairs.max())))}.")
    return "\n".join(lines)


def _cells_md(board: Leaderboard) -> str:
    parts = ["## Results by task and size (exploratory)"]
    for task, by_task in board.cells.groupby("task", sort=False):
        parts.append(f"### {task_label(task)} ({metric_name(task)})")
        regression = TASKS[task].is_regression if task in TASKS else True
        headers = ["score rank", "regularizer", "mean ± std", *([] if regression else
                                                                ["accuracy"]),
                   "worst", "IQR", f"{CONFIDENCE:.0%} CI", "failed", f"Δ {VANILLA}",
                   "p (exploratory)", "stability rank", "spread [95% CI]", "seeds", "noise",
                   "hyperparameters"]
        for n, cell in by_task.groupby("n_train"):
            rows = [[rank_text(r.rank_score), r.regularizer, _score(r),
                     *([] if regression else [num(r.accuracy)]), num(r["min"]),
                     num(r.iqr), f"[{num(r.ci_low)}, {num(r.ci_high)}]",
                     f"{r.n_failures}/{r.n_completed}" if r.n_completed else "–",
                     num(r.delta_vs_vanilla, 3, sign=True), p_text(r.p_value),
                     rank_text(r.rank_stability)
                     + (f" {TIED}" if _tied(r.stability_apart) else ""),
                     f"{num(r.std_not_failed)} [{num(r.spread_low)}, {num(r.spread_high)}]",
                     seeds_text(r), num(r.noise), params_text(r.params)]
                    for _, r in cell.iterrows()]
            gate = cell.iloc[0]
            learns = ("" if pd.isna(gate.learns) else
                      f" — learns (p = {p_text(gate.gate_p)})" if gate.learns else
                      f" — does not learn at this budget (p = {p_text(gate.gate_p)}): not ranked "
                      "overall, no primary comparison")
            parts += [f"#### N = {n}{learns}", _table(rows, headers)]
    return "\n\n".join(parts)


def _tuning_md(board: Leaderboard) -> str:
    """How far each cell's rank depends on the tuning budget (regbench.tuning_budget)."""
    tuning = board.tuning
    if tuning.empty:
        return "## Tuning budget\n\nNo cell was tuned: every regularizer ran at its defaults."
    budget = int(tuning.budget.iloc[0])
    samplers = "; ".join(f"{label} in {count} cells" if len(tuning) > count else label
                         for label, count in tuning.sampler.value_counts().items())
    seeds = sorted(set(tuning.tuning_seeds))
    lines = [
        "## Tuning budget",
        f"**Sampler**: {samplers}; a budget of {budget} trials, each scored by its mean "
        f"validation score over {' or '.join(map(str, seeds))} tuning "
        f"seed{'s' if seeds != [1] else ''}. TPE models the best tenth of the trials apart "
        "from the rest once its random start-up trials are done: regbench gives it a budget "
        "only where that start-up is at most half the trials, and makes a smaller one random "
        "search.",
        "**E[max] at n**: Dodge et al.'s (2019) expected best validation score of n trials "
        "drawn from the study's own trials (the configurations it tried, each once, at its mean "
        "validation score): with the values sorted v₁ ≤ … ≤ v_N, "
        "Σᵢ vᵢ ((i/N)ⁿ − ((i−1)/N)ⁿ). The ranks order the tuned regularizers of a (task, size) "
        f"by it at 1 and at {budget} trials: where they differ, the order depends on the budget. "
        "An untuned regularizer has no study and is not ranked here. **seed / configuration "
        "spread**: the standard deviation of the validation scores of the tuned "
        "configuration's final seeds, and that of the study's configurations.",
    ]
    wide = tuning.seed_spread >= tuning.configuration_spread
    if seeds == [1] or wide.mean() > 0.5:
        lines.append(
            f"In {int(wide.sum())} of {len(tuning)} tuned cells the final seeds of one "
            "configuration spread at least as far as the study's configurations: the best "
            "configuration is largely the luckiest seed"
            + (", as each was scored on one seed." if seeds == [1] else "."))
    parts = ["\n\n".join(lines)]
    headers = ["rank at 1", f"rank at {budget}", "regularizer", "configurations",
               "E[max] at 1", f"E[max] at {budget}", "seed spread", "configuration spread"]
    for task, by_task in tuning.groupby("task", sort=False):
        for n, cell in by_task.groupby("n_train"):
            cell = cell.sort_values("rank_at_budget")
            rows = [[rank_text(r.rank_at_1), rank_text(r.rank_at_budget), r.regularizer,
                     f"{r.configurations}" + (f" ({r.left_out} left out)" if r.left_out else ""),
                     num(r.expected_max_1), num(r.expected_max_budget), num(r.seed_spread),
                     num(r.configuration_spread)] for r in cell.itertuples()]
            agreement = cell.rank_at_1.corr(cell.rank_at_budget, method="spearman")
            moved = [f"{r.regularizer} {rank_text(r.rank_at_1)} → "
                     f"{rank_text(r.rank_at_budget)}" for r in cell.itertuples()
                     if abs(r.rank_at_1 - r.rank_at_budget) >= 3]
            parts += [f"### {task_label(task)}, N = {n}", _table(rows, headers),
                      f"Spearman ρ of the ranks at 1 and at {budget} trials: "
                      f"{num(agreement, 2)}; moved three places or more: "
                      f"{', '.join(moved) or 'none'}."]
    return "\n\n".join(parts)


def _noise_md(board: Leaderboard) -> str:
    """Does stability to noise go with generalisation, as Hua et al. find? Within cells."""
    settings = board.provenance["noise_settings"]
    correlations = board.noise_correlations
    if correlations.empty or not settings:
        return "## Noise stability\n\nNo finished run carries a noise-stability measure."
    measured = " / ".join(f"{s['scale']:.0%} noise, the first {s['examples']} test examples, "
                          f"{s['draws']} draws" for s in settings)
    parts = [
        "## Noise stability",
        "The LNSR paper's diagnostic, measured on every finished final run after training, in "
        "eval mode, on the first examples of the test half: Gaussian noise of a share of the "
        "layer's output norm (of each token's) added at layer i, from the embedding output up, "
        "and the L2 distance ‖h̃ₖ − hₖ‖ and relative change ‖h̃ₖ − hₖ‖ / ‖hₖ‖ of every layer k "
        f"above, averaged over real tokens and noise draws ({measured}; fp32, a fixed seed). "
        "The **noise** column above is a cell's mean relative change of the last layer for "
        "noise at the embedding output; the plots show every layer's for that noise (mean and "
        "standard deviation over the runs), and the JSON holds the whole (i, k) table, mean "
        "and spread, of every cell.",
    ]
    parts += _missing_noise_lines(board)
    rows = [[task_label(r.task), "all" if pd.isna(r.n_train) else r.n_train, r.runs, r.cells,
             num(r.within_spearman, 2), p_text(r.within_p),
             "–" if pd.isna(r.across_cells) else r.across_cells, num(r.across_spearman, 2),
             p_text(r.across_p)] for r in correlations.itertuples()]
    parts += [
        "Hua et al. find that models which move less generalise better: a negative rank "
        "correlation of the test score with the noise sensitivity. **Within cells**: the mean "
        "over cells (task, size and regularizer fixed; only the seed differs) of each cell's "
        "Spearman ρ, its p-value from shuffling the sensitivities within every cell "
        "(two-sided, 20,000 shuffles of a fixed seed); a cell whose scores or sensitivities "
        "are all equal has no ρ and is left out. **Across regularizers**: Spearman ρ of the "
        "cells' mean score and mean sensitivity within one (task, size), the paper's comparison "
        "of methods. Nothing here pools runs of different cells, whose means confound the two. "
        "A correlation is no proof of cause.",
        _table(rows, ["task", "N", "finished runs", "cells", "ρ within cells", "p",
                      "regularizers", "ρ across regularizers", "p"])]
    return "\n\n".join(parts)


def _missing_noise_lines(board: Leaderboard) -> list[str]:
    """One line for each part of the measure that runs stored by older versions lack."""
    measured = int(board.runs.noise.notna().sum())
    curves = board.noise_curves
    first = curves[(curves.injected == 0) & (curves.layer == 1)]  # one row per cell
    tables, distances = int(first.relative_runs.sum()), int(first.distance_runs.sum())
    lines = []
    if tables < measured:
        lines.append(f"The per-layer table is missing for {measured - tables} of {measured} "
                     "measured runs (stored before regbench kept it): the correlations use "
                     "their one-number measure, and the plots leave them out.")
    if distances < tables:
        lines.append(f"The per-layer L2 distance is missing for {tables - distances} of "
                     f"{measured} measured runs (stored before regbench measured it): the plots "
                     "show the relative change instead.")
    return lines


def _cost_md(board: Leaderboard) -> str:
    rows = [[r.regularizer, num(r.seconds, 1), num(r.time_vs_vanilla, 2),
             num(r.peak_memory_mb, 0)] for r in board.overall.itertuples()]
    return "\n\n".join([
        "## Cost",
        f"Mean wall time of a finished run; **× {VANILLA}** is the ratio to {VANILLA}'s mean time "
        "in the same (task, size), averaged over the cells both ran in. **Peak GPU memory** is "
        "CUDA's peak allocated memory during a run, measured on GPU runs only: on the CPU a "
        "process's memory is no per-run figure, and shows as –.",
        _table(rows, ["regularizer", "seconds per run", f"× {VANILLA}",
                      "peak GPU memory (MB)"])])




def _provenance_md(board: Leaderboard) -> str:
    p, runs = board.provenance, board.runs
    lines = ["## Provenance", ""]
    lines += [f"- {key}: {setting(value)}" for key, value in board.meta.items()]
    counts = ", ".join(f"{count} {status}" for status, count in sorted(p["runs"].items()))
    lines += [f"- data seeds: {setting(p['data_seeds']) or '–'}",
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
