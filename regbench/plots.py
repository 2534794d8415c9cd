"""The leaderboard's figures: the forest plot of the primary comparisons; per task, the score
against the training size (from three sizes up), the seed scores of every regularizer at each size,
the score against the noise sensitivity of each run within its cell, every layer's movement under
noise at the embedding output, and the expected best validation score against the tuning budget."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullLocator

from regbench.board import COMPLETED, VANILLA, Leaderboard, metric_name, task_label
from regbench.store import DIVERGED, FAILED, FINISHED

# Figures are built with `Figure`, not pyplot: no global state and no GUI backend; savefig draws
# them with Agg.
DPI = 130
# The least span of a score axis. Test halves of a few hundred examples score in steps of a few
# thousandths: a narrower axis would blow a difference of one or two examples up to full height.
MIN_SPAN = 0.05


def figures(board: Leaderboard) -> dict[str, Figure]:
    """`forest` when the board has primary comparisons; `<task>-seeds` of every task with a scored
    run, with `<task>-sizes` where it has three sizes or more (two are read off the seeds plot);
    `<task>-noise` and `<task>-layers` of every task with runs measured for noise stability;
    `<task>-budget` of every task with a tuned cell."""
    colors = regularizer_colors(board.overall.regularizer)
    drawn = {"forest": _forest(board)} if len(board.primary) else {}
    for task, cells in board.cells.groupby("task", sort=False):
        runs = board.runs[board.runs.task == task]
        if runs.score.isna().all():
            continue
        threshold = board.provenance["baselines"][task]
        kinds = {"sizes": _sizes, "seeds": _seeds} if cells.n_train.nunique() >= 3 else \
            {"seeds": _seeds}
        for kind, draw in kinds.items():
            figure = draw(cells, runs, threshold, colors)
            figure.suptitle(f"{task_label(task)}: test {metric_name(task)} of the final seeds")
            drawn[f"{task}-{kind}"] = figure
        if runs.noise.notna().any():
            correlations = board.noise_correlations
            overall = correlations[(correlations.task == task) & correlations.n_train.isna()]
            drawn[f"{task}-noise"] = _noise(runs, overall.iloc[0], colors, task)
    for kind, frame, draw in (("layers", board.noise_curves, _layers),
                              ("budget", board.tuning_curves, _budget)):
        if frame.empty:
            continue
        for task, mine in frame.groupby("task", sort=False):
            drawn[f"{task}-{kind}"] = draw(mine, colors, task)
    return drawn


def png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def _forest(board: Leaderboard) -> Figure:
    """The primary comparisons: per task, each regularizer's mean paired difference to vanilla
    with its 95% interval, filled where it differs after Holm's correction."""
    primary = board.primary
    labels = dict(zip(board.tasks.task, board.tasks.label, strict=True))
    panels = list(dict.fromkeys(primary.task))
    heights = [primary.task.eq(task).sum() for task in panels]
    figure = Figure(figsize=(7.0, 1.2 + 0.28 * sum(heights) + 0.5 * len(panels)))
    axes = np.atleast_1d(figure.subplots(len(panels), 1, height_ratios=heights, sharex=True))
    for ax, task in zip(axes, panels, strict=True):
        mine = primary[primary.task == task].sort_values("delta")
        y = np.arange(len(mine))
        ax.errorbar(mine.delta, y, xerr=[mine.delta - mine.ci_low, mine.ci_high - mine.delta],
                    fmt="none", ecolor="grey", elinewidth=1.2, capsize=2)
        for significant, face in ((True, "black"), (False, "white")):
            chosen = mine.significant.to_numpy() == significant
            ax.scatter(mine.delta[chosen], y[chosen], marker="o", s=28, zorder=3,
                       facecolors=face, edgecolors="black",
                       label="differs after Holm" if significant else "does not")
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(y, labels=[f"{r}  (p Holm {p:.3f})" if p >= 0.001 else
                                 f"{r}  (p Holm < 0.001)"
                                 for r, p in zip(mine.regularizer, mine.p_holm, strict=True)])
        ax.set_title(f"{labels[task]}: {metric_name(task)}, {int(mine.n_pairs.max())} pairs",
                     fontsize=9, loc="left")
        ax.grid(axis="x", alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8, frameon=False)
    axes[-1].set_xlabel(f"mean paired difference to {VANILLA} (95% Student-t interval)")
    figure.suptitle("Primary comparisons against vanilla, sizes pooled, Holm-corrected")
    figure.set_layout_engine("constrained")
    return figure


def regularizer_colors(regularizers: pd.Series) -> dict[str, tuple]:
    """One color per regularizer in every figure; vanilla in black, as the reference. tab10
    repeats after ten, and a board holds eighteen built-ins: tab20's ten strong hues come first,
    then their light shades, twenty distinct colors."""
    tab20 = colormaps["tab20"].colors
    palette = tab20[0::2] + tab20[1::2]
    others = [r for r in regularizers if r != VANILLA]
    return {VANILLA: (0.0, 0.0, 0.0), **{r: palette[i % len(palette)]
                                         for i, r in enumerate(others)}}


def _baseline(ax, threshold: float) -> None:
    """The board's failure line on the score's scale (`Leaderboard.tasks.baseline`)."""
    ax.axhline(threshold, color="grey", linestyle="--", linewidth=1,
               label="majority class's score / least significant r")


def floor_span(low: float, high: float) -> tuple[float, float] | None:
    """A score axis from `low` to `high` widened to MIN_SPAN around its middle; None where it
    is that wide already."""
    if high - low >= MIN_SPAN:
        return None
    middle = (low + high) / 2
    return middle - MIN_SPAN / 2, middle + MIN_SPAN / 2


def _floor_span(ax) -> None:
    """Widen the score axis to MIN_SPAN around its data, where it is narrower."""
    span = floor_span(*ax.get_ylim())
    if span is not None:
        ax.set_ylim(*span)


def _sizes(cells: pd.DataFrame, runs: pd.DataFrame, threshold: float,
           colors: dict[str, tuple]) -> Figure:
    """Mean score against N on a log axis, one line per regularizer, with every seed's score."""
    figure = Figure(figsize=(7.5, 4.5))
    ax = figure.subplots()
    regularizers = [r for r in colors if r in set(cells.regularizer)]
    for i, regularizer in enumerate(regularizers):
        color = colors[regularizer]
        line = cells[cells.regularizer == regularizer].sort_values("n_train")
        ax.plot(line.n_train, line["mean"], marker="o", color=color, label=regularizer)
        # Side by side rather than on top of each other: a small shift on the log axis.
        shift = 1.04 ** (i - (len(regularizers) - 1) / 2)
        seeds = runs[(runs.regularizer == regularizer) & runs.score.notna()]
        ax.scatter(seeds.n_train * shift, seeds.score, color=color, s=12, alpha=0.45,
                   linewidths=0)
    _baseline(ax, threshold)
    _floor_span(ax)
    sizes = sorted(cells.n_train.unique())
    ax.set_xscale("log")
    ax.set_xticks(sizes, labels=[str(n) for n in sizes])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("training examples N (log scale)")
    ax.set_ylabel("test score (line: mean; dots: seeds)")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return figure


def _notes(runs: pd.DataFrame) -> list[str]:
    """What a panel's dots do not tell: missing runs, and runs drawn at the baseline because
    they diverged or crashed."""
    notes = []
    completed = runs.status.isin(COMPLETED).sum()
    if completed < len(runs):
        notes.append(f"{completed}/{len(runs)} seeds")
    for status, what in ((DIVERGED, "diverged"), (FAILED, "crashed")):
        count = (runs.status == status).sum()
        if count:
            notes.append(f"{count} {what}")
    return notes


def _seeds(cells: pd.DataFrame, runs: pd.DataFrame, threshold: float,
           colors: dict[str, tuple]) -> Figure:
    """One panel per N: a box and the seed scores of every regularizer."""
    sizes = sorted(cells.n_train.unique())
    regularizers = [r for r in colors if r in set(cells.regularizer)]
    figure = Figure(figsize=(0.6 + (0.55 * len(regularizers) + 0.8) * len(sizes), 4.5))
    axes = np.atleast_1d(figure.subplots(1, len(sizes), sharey=True))
    for ax, n in zip(axes, sizes, strict=True):
        labels = []
        for x, regularizer in enumerate(regularizers):
            mine = runs[(runs.n_train == n) & (runs.regularizer == regularizer)]
            scores = mine.score.dropna().to_numpy()
            labels.append(regularizer + "".join(f"\n{note}" for note in _notes(mine)))
            if not scores.size:
                continue
            ax.boxplot(scores, positions=[x], widths=0.6, showfliers=False,
                       medianprops={"color": colors[regularizer]})
            jitter = np.linspace(-0.15, 0.15, scores.size) if scores.size > 1 else 0.0
            ax.scatter(x + jitter, scores, color=colors[regularizer], s=14, zorder=3)
        _baseline(ax, threshold)
        ax.set_xticks(range(len(regularizers)), labels=labels, rotation=45, ha="right")
        gated = cells.learns[cells.n_train == n].eq(False).any()
        ax.set_title(f"N = {n}" + (": does not learn at this budget" if gated else ""))
        ax.grid(axis="y", alpha=0.3)
    _floor_span(axes[0])  # the axes share it
    axes[0].set_ylabel("test score per seed")
    return figure


def _noise(runs: pd.DataFrame, correlation: pd.Series, colors: dict[str, tuple],
           task: str) -> Figure:
    """Every finished run's test score against its noise sensitivity, each less its cell's mean
    (the seed's deviation, which is what the within-cell correlation ranks), one color per
    regularizer and one marker per size."""
    figure = Figure(figsize=(7.5, 4.5))
    ax = figure.subplots()
    markers = dict(zip(sorted(runs.n_train.unique()), "os^Dv<>p", strict=False))
    measured = runs[runs.status == FINISHED].dropna(subset=["noise", "test_score"])
    cell = measured.groupby(["n_train", "regularizer"])
    measured = measured.assign(noise=measured.noise - cell.noise.transform("mean"),
                               test_score=measured.test_score - cell.test_score.transform("mean"))
    for regularizer in [r for r in colors if r in set(measured.regularizer)]:
        for n, marker in markers.items():
            mine = measured[(measured.regularizer == regularizer) & (measured.n_train == n)]
            ax.scatter(mine.noise, mine.test_score, color=colors[regularizer], marker=marker,
                       s=18, alpha=0.7, linewidths=0,
                       label=regularizer if n == min(markers) else None)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("noise sensitivity less its cell's mean (last layer's relative change, "
                  "noise at the embeddings)")
    ax.set_ylabel("test score less its cell's mean")
    sizes = ", ".join(f"{marker} N = {n}" for n, marker in markers.items())
    rho = "–" if pd.isna(correlation.within_spearman) else f"{correlation.within_spearman:.2f}"
    p = "–" if pd.isna(correlation.within_p) else f"{correlation.within_p:.3g}"
    ax.set_title(f"{task_label(task)}: test {metric_name(task)} against noise sensitivity, "
                 f"within cells\nmean within-cell Spearman ρ = {rho} (p = {p}) over "
                 f"{correlation.cells} cells, {correlation.runs} runs (markers: {sizes})",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return figure


def _panels(sizes: list[int], height: float = 4.0) -> tuple[Figure, np.ndarray]:
    figure = Figure(figsize=(1.0 + 4.2 * len(sizes), height))
    return figure, np.atleast_1d(figure.subplots(1, len(sizes), sharey=True))


def _legend(figure: Figure, axes: np.ndarray) -> None:
    handles, labels = axes[0].get_legend_handles_labels()
    axes[-1].legend(handles, labels, loc="center left", bbox_to_anchor=(1.01, 0.5),
                    frameon=False)


def _layers(curves: pd.DataFrame, colors: dict[str, tuple], task: str) -> Figure:
    """Hua et al.'s figure: for noise at the embedding output, each layer's L2 distance from its
    clean output (the relative change, where the runs lack the distance), mean over a cell's
    runs with a band of one standard deviation; one panel per size."""
    curves = curves[curves.injected == 0]
    measure = "distance" if curves.distance_runs.gt(0).all() else "relative"
    sizes = sorted(curves.n_train.unique())
    figure, axes = _panels(sizes)
    for ax, n in zip(axes, sizes, strict=True):
        for regularizer in [r for r in colors if r in set(curves.regularizer)]:
            mine = curves[(curves.n_train == n) & (curves.regularizer == regularizer)]
            mean, std = mine[f"{measure}_mean"], mine[f"{measure}_std"].fillna(0)
            ax.plot(mine.layer, mean, marker="o", markersize=3, color=colors[regularizer],
                    label=regularizer)
            ax.fill_between(mine.layer, mean - std, mean + std, color=colors[regularizer],
                            alpha=0.12, linewidth=0)
        ax.set_title(f"N = {n}")
        ax.set_xlabel("layer k")
        ax.set_xticks(sorted(curves.layer.unique()))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("L2 distance ‖h̃ₖ − hₖ‖" if measure == "distance" else
                       "relative change ‖h̃ₖ − hₖ‖ / ‖hₖ‖")
    _legend(figure, axes)
    figure.suptitle(f"{task_label(task)}: each layer's movement under 5% noise at the embedding "
                    "output (line: mean over seeds; band: ± 1 std)", fontsize=10)
    return figure


def _budget(curves: pd.DataFrame, colors: dict[str, tuple], task: str) -> Figure:
    """Dodge et al.'s expected best validation score against the number of trials, one line per
    tuned regularizer; one panel per size."""
    sizes = sorted(curves.n_train.unique())
    figure, axes = _panels(sizes)
    for ax, n in zip(axes, sizes, strict=True):
        for regularizer in [r for r in colors if r in set(curves.regularizer)]:
            mine = curves[(curves.n_train == n) & (curves.regularizer == regularizer)]
            ax.plot(mine.trials, mine.expected_max, marker="o", markersize=3,
                    color=colors[regularizer], label=regularizer)
        ax.set_title(f"N = {n}")
        ax.set_xlabel("trials n")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"expected best validation {metric_name(task)}")
    _legend(figure, axes)
    figure.suptitle(f"{task_label(task)}: expected best validation score of n trials "
                    "(Dodge et al. 2019), from each study's own trials", fontsize=10)
    return figure
