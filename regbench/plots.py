"""The leaderboard's figures: per task, the score against the training size, and the seed scores
of every regularizer at each size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from regbench.leaderboard import VANILLA, Leaderboard, metric, task_label
from regbench.store import DIVERGED, SETTLED

# Figures are built with `Figure`, not pyplot: no global state and no GUI backend; savefig draws
# them with Agg.
DPI = 130


def plot(board: Leaderboard, out_dir: Path, name: str) -> list[Path]:
    """Write `<name>-<task>-sizes.png` and `<name>-<task>-seeds.png` per task; return the paths."""
    colors = _colors(board.overall.regularizer)
    paths = []
    for task, cells in board.cells.groupby("task", sort=False):
        runs = board.runs[board.runs.task == task]
        if runs.test_score.isna().all():
            continue
        threshold = board.provenance["baselines"].get(task)
        for kind, draw in (("sizes", _sizes), ("seeds", _seeds)):
            figure = draw(cells, runs, threshold, colors)
            figure.suptitle(f"{task_label(task)}: test {metric(task)} of the final seeds")
            path = Path(out_dir) / f"{name}-{task}-{kind}.png"
            figure.savefig(path, dpi=DPI, bbox_inches="tight")
            paths.append(path)
    return paths


def _colors(regularizers: pd.Series) -> dict[str, tuple]:
    """One color per regularizer in every figure; vanilla in black, as the reference."""
    palette = colormaps["tab10"].colors
    others = [r for r in regularizers if r != VANILLA]
    return {VANILLA: (0.0, 0.0, 0.0), **{r: palette[i % len(palette)]
                                         for i, r in enumerate(others)}}


def _baseline(ax, threshold: float | None) -> None:
    if threshold is not None:
        ax.axhline(threshold, color="grey", linestyle="--", linewidth=1,
                   label="majority baseline (failure)")


def _sizes(cells: pd.DataFrame, runs: pd.DataFrame, threshold: float | None,
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
        seeds = runs[(runs.regularizer == regularizer) & runs.test_score.notna()]
        ax.scatter(seeds.n_train * shift, seeds.test_score, color=color, s=12, alpha=0.45,
                   linewidths=0)
    _baseline(ax, threshold)
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
    """What a panel's dots do not show: runs without a score."""
    notes = []
    settled = runs.status.isin(SETTLED).sum()
    if settled < len(runs):
        notes.append(f"{settled}/{len(runs)} seeds")
    diverged = (runs.status == DIVERGED).sum()
    if diverged:
        notes.append(f"{diverged} diverged")
    return notes


def _seeds(cells: pd.DataFrame, runs: pd.DataFrame, threshold: float | None,
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
            scores = mine.test_score.dropna().to_numpy()
            labels.append(regularizer + "".join(f"\n{note}" for note in _notes(mine)))
            if not scores.size:
                continue
            ax.boxplot(scores, positions=[x], widths=0.6, showfliers=False,
                       medianprops={"color": colors[regularizer]})
            jitter = np.linspace(-0.15, 0.15, scores.size) if scores.size > 1 else 0.0
            ax.scatter(x + jitter, scores, color=colors[regularizer], s=14, zorder=3)
        _baseline(ax, threshold)
        ax.set_xticks(range(len(regularizers)), labels=labels, rotation=45, ha="right")
        ax.set_title(f"N = {n}")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("test score per seed")
    return figure
