"""The leaderboard's interactive figures (Plotly), for its web page: per task, every seed's score
with what made it on hover, the score against the training size, and the score against the noise
sensitivity of each run. They read the same board as the PNG plots (regbench.plots) and draw
it in the same colors; a reader filters them by regularizer, as the page's tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from regbench.board import COMPLETED, MISSING, VANILLA, Leaderboard, metric_name, task_label
from regbench.formatting import configuration
from regbench.plots import floor_span, regularizer_colors
from regbench.store import DIVERGED, FAILED, FINISHED

# What a run's marker says about it. A failure that finished scored no better than the
# majority class; diverged and crashed runs are drawn at the majority-class score they count at.
SYMBOLS = {"finished": "circle", "failed": "circle-open", DIVERGED: "x", "crashed": "triangle-down"}
_HEIGHT = 380  # pixels per panel: readable on a phone held upright, and on a laptop
_FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif"


def outcome(run) -> str:
    """A run's outcome in the reader's words: finished, failed (finished no better than the
    majority class), diverged, crashed or missing."""
    if run.status == FINISHED:
        return "failed" if run.failure == 1 else "finished"
    return {FAILED: "crashed"}.get(run.status, run.status)


def palette(board: Leaderboard) -> dict[str, str]:
    """The PNG plots' color of every regularizer, as CSS."""
    return {reg: "rgb({:.0f},{:.0f},{:.0f})".format(*(255 * np.asarray(rgb[:3])))
            for reg, rgb in regularizer_colors(board.overall.regularizer).items()}


def _layout(figure: go.Figure, title: str, height: int, legend_below: bool = False) -> go.Figure:
    """The page's look; a legend of regularizers goes below the plot, where it may wrap to
    several lines on a phone without covering the title."""
    legend = ({"orientation": "h", "yanchor": "top", "y": -0.2, "x": 0} if legend_below else
              {"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 0})
    figure.update_layout(
        title={"text": title, "x": 0, "xanchor": "left", "font": {"size": 15}}, height=height,
        margin={"l": 56, "r": 12, "t": 72, "b": 40}, font={"family": _FONT, "size": 12},
        template="plotly_white", hoverlabel={"align": "left"}, legend=legend)
    return figure


def _stacked(titles: list[str], panel: int, top: int = 140) -> tuple[go.Figure, int]:
    """Panels one above the other, `panel` pixels each with room between them for an axis's
    labels and the next panel's title; and the figure's height."""
    height = top + panel * len(titles)
    gap = 130 / height if len(titles) > 1 else 0
    return make_subplots(rows=len(titles), cols=1, vertical_spacing=gap,
                         subplot_titles=titles), height


def _baseline(figure: go.Figure, board: Leaderboard, task: str, **where) -> None:
    """The line the plots draw for a task: a regression's failure line, or the majority-class
    predictor's score (a classification run fails by its accuracy, which the axis does not
    show)."""
    regression = board.tasks.set_index("task").regression.get(task, False)
    figure.add_hline(board.provenance["baselines"][task],
                     line={"color": "grey", "dash": "dash", "width": 1},
                     annotation_text="failure line" if regression else "majority class",
                     annotation_position="bottom right", annotation_font_color="grey", **where)


def _floor_span(scores: pd.Series, threshold: float) -> list[float] | None:
    """A score axis at least MIN_SPAN wide around the data and the baseline (as plots.py's)."""
    values = pd.concat([scores.dropna(), pd.Series([threshold])])
    span = floor_span(float(values.min()), float(values.max()))
    return None if span is None else list(span)


def params_text(params) -> str:
    if not isinstance(params, str):
        return "–"
    return configuration(json.loads(params)) or "defaults"


def _hover(run) -> str:
    """What a point says on hover: its seed, score, outcome and hyperparameters."""
    lines = [f"<b>{run.regularizer}</b>, N = {run.n_train}, seed {run.seed}",
             f"score {run.score:.4f} ({outcome(run)})"]
    if run.status != FINISHED:
        lines[-1] += ", counted at the constant predictor's score"
    if pd.notna(run.accuracy):
        lines.append(f"accuracy {run.accuracy:.4f}")
    lines.append(f"hyperparameters: {params_text(run.params)}")
    if pd.notna(run.noise):
        lines.append(f"noise sensitivity {run.noise:.4f}")
    if pd.notna(run.seconds):
        lines.append(f"{run.seconds:.1f} s")
    if isinstance(run.error, str) and run.error.strip():
        lines.append("error: " + run.error.strip().splitlines()[-1][:120])
    return "<br>".join(lines)


def _status_legend(figure: go.Figure, shown: set[str]) -> None:
    """One legend entry per outcome on the figure, in grey: the colors are the regularizers'."""
    for what in (w for w in SYMBOLS if w in shown):
        figure.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=what,
                                    marker={"symbol": SYMBOLS[what], "color": "grey", "size": 9,
                                            "line": {"width": 1.5, "color": "grey"}},
                                    hoverinfo="skip", legendgroup=f"status-{what}"))


def seeds(board: Leaderboard, task: str) -> go.Figure:
    """One panel per training size: a box and every seed of every regularizer, in the order of
    the overall rank; a seed's hover names its seed, score, outcome and hyperparameters. Under a
    regularizer's name, what its dots do not tell: seeds without a result."""
    cells = board.cells[board.cells.task == task]
    runs = board.runs[board.runs.task == task]
    colors = palette(board)
    order = [r for r in board.overall.regularizer if r in set(cells.regularizer)]
    sizes = sorted(cells.n_train.unique())
    figure, height = _stacked([f"N = {n}" for n in sizes], _HEIGHT + 60)
    shown = set()
    for row, n in enumerate(sizes, start=1):
        for x, regularizer in enumerate(order):
            mine = runs[(runs.n_train == n) & (runs.regularizer == regularizer)]
            scored = mine[mine.status.isin(COMPLETED)]
            if scored.empty:
                continue
            color = colors[regularizer]
            figure.add_trace(go.Box(
                x=[x] * len(scored), y=scored.score, name=regularizer, legendgroup=regularizer,
                showlegend=False, boxpoints=False, line={"color": color, "width": 1},
                fillcolor="rgba(0,0,0,0)", hoverinfo="skip"), row=row, col=1)
            outcomes = [outcome(r) for r in scored.itertuples()]
            shown.update(outcomes)
            jitter = np.linspace(-0.18, 0.18, len(scored)) if len(scored) > 1 else [0.0]
            figure.add_trace(go.Scatter(
                x=x + np.asarray(jitter), y=scored.score, mode="markers", name=regularizer,
                legendgroup=regularizer, showlegend=False,
                marker={"color": color, "size": 9, "symbol": [SYMBOLS[o] for o in outcomes],
                        "line": {"width": 1.5, "color": color}},
                text=[_hover(r) for r in scored.itertuples()],
                hovertemplate="%{text}<extra></extra>"), row=row, col=1)
        _baseline(figure, board, task, row=row, col=1)
        labels = []
        for regularizer in order:
            mine = runs[(runs.n_train == n) & (runs.regularizer == regularizer)]
            missing = int((mine.status == MISSING).sum())
            labels.append(regularizer + (f"<br>{len(mine) - missing}/{len(mine)} seeds"
                                         if missing else ""))
        figure.update_xaxes(tickvals=list(range(len(order))), ticktext=labels, tickangle=-45,
                            range=[-0.6, len(order) - 0.4], row=row, col=1)
        span = _floor_span(runs.score, board.provenance["baselines"][task])
        figure.update_yaxes(title_text="test score", range=span, row=row, col=1)
    _status_legend(figure, shown)
    title = f"{task_label(task)}: test {metric_name(task)} of every final seed"
    return _layout(figure, title, height)


def sizes(board: Leaderboard, task: str) -> go.Figure | None:
    """The mean score (± std) against the training size, one line per regularizer; None with
    fewer than three sizes, where the seed panels say it all."""
    cells = board.cells[board.cells.task == task]
    if cells.n_train.nunique() < 3:
        return None
    colors = palette(board)
    figure = go.Figure()
    for regularizer in [r for r in board.overall.regularizer if r in set(cells.regularizer)]:
        line = cells[cells.regularizer == regularizer].sort_values("n_train")
        figure.add_trace(go.Scatter(
            x=line.n_train, y=line["mean"], error_y={"array": line["std"], "thickness": 1},
            mode="lines+markers", name=regularizer, legendgroup=regularizer,
            line={"color": colors[regularizer]},
            customdata=np.stack([line.n_completed, line.n_planned], axis=-1),
            hovertemplate=f"<b>{regularizer}</b>, N = %{{x}}<br>mean %{{y:.4f}} ± "
                          "%{error_y.array:.4f}<br>%{customdata[0]}/%{customdata[1]} seeds"
                          "<extra></extra>"))
    _baseline(figure, board, task)
    figure.update_xaxes(type="log", tickvals=sorted(cells.n_train.unique()),
                        title_text="training examples N (log scale)")
    figure.update_yaxes(title_text="mean test score ± std")
    return _layout(figure, f"{task_label(task)}: test {metric_name(task)} as N grows", 560,
                   legend_below=True)


def noise(board: Leaderboard, task: str) -> go.Figure | None:
    """Every finished run's test score against its noise sensitivity, each less its cell's mean
    (the seed's deviation, what the board's within-cell correlation ranks, as the PNG plot), one
    color per regularizer and one marker per size; None when no run of the task was measured."""
    runs = board.runs[(board.runs.task == task) & (board.runs.status == FINISHED)]
    runs = runs.dropna(subset=["noise", "test_score"])
    if runs.empty:
        return None
    cell = runs.groupby(["n_train", "regularizer"])
    runs = runs.assign(noise_less=runs.noise - cell.noise.transform("mean"),
                       score_less=runs.test_score - cell.test_score.transform("mean"))
    colors = palette(board)
    markers = dict(zip(sorted(runs.n_train.unique()),
                       ["circle", "square", "diamond", "triangle-up", "star"], strict=False))
    figure = go.Figure()
    for regularizer in [r for r in board.overall.regularizer if r in set(runs.regularizer)]:
        mine = runs[runs.regularizer == regularizer]
        figure.add_trace(go.Scatter(
            x=mine.noise_less, y=mine.score_less, mode="markers", name=regularizer,
            legendgroup=regularizer,
            marker={"color": colors[regularizer], "size": 8, "opacity": 0.8,
                    "symbol": [markers.get(n, "circle") for n in mine.n_train]},
            text=[_hover(r) for r in mine.itertuples()],
            hovertemplate="%{text}<extra></extra>"))
    for axis in (figure.add_hline, figure.add_vline):
        axis(0, line={"color": "grey", "width": 1})
    figure.update_xaxes(title_text="noise sensitivity less its cell's mean")
    figure.update_yaxes(title_text="test score less its cell's mean")
    sizes_text = ", ".join(f"{marker.replace('-up', '')} N = {n}"
                           for n, marker in markers.items())
    title = (f"{task_label(task)}: test {metric_name(task)} against noise sensitivity, within "
             f"cells<br><sup>markers: {sizes_text}</sup>")
    return _layout(figure, title, 600, legend_below=True)


def _by_size(frame: pd.DataFrame, board: Leaderboard, trace, title: str, x_title: str,
             y_title: str) -> go.Figure:
    """One panel per training size, one above the other, with a trace per regularizer (in the
    overall rank's order) drawn by `trace(rows, color)`."""
    colors = palette(board)
    sizes = sorted(frame.n_train.unique())
    figure, height = _stacked([f"N = {n}" for n in sizes], 400, top=200)
    for row, n in enumerate(sizes, start=1):
        for regularizer in [r for r in board.overall.regularizer if r in set(frame.regularizer)]:
            mine = frame[(frame.n_train == n) & (frame.regularizer == regularizer)]
            if mine.empty:
                continue
            for drawn in trace(mine, colors[regularizer]):
                figure.add_trace(drawn.update(name=regularizer, legendgroup=regularizer,
                                              showlegend=drawn.showlegend is not False
                                              and row == 1), row=row, col=1)
        figure.update_xaxes(title_text=x_title, row=row, col=1)
        figure.update_yaxes(title_text=y_title, row=row, col=1)
    return _layout(figure, title, height, legend_below=True)


def layers(board: Leaderboard, task: str) -> go.Figure | None:
    """Hua et al.'s figure: for noise at the embedding output, each layer's L2 distance from its
    clean output (the relative change, where the runs lack the distance), mean over a cell's
    runs with a band of one standard deviation; None without measured runs."""
    curves = board.noise_curves
    if curves.empty:
        return None
    curves = curves[(curves.task == task) & (curves.injected == 0)]
    if curves.empty:
        return None
    measure = "distance" if curves.distance_runs.gt(0).all() else "relative"

    def trace(mine: pd.DataFrame, color: str) -> list:
        mean, std = mine[f"{measure}_mean"], mine[f"{measure}_std"].fillna(0)
        translucent = color.replace("rgb(", "rgba(").replace(")", ",0.12)")
        band = go.Scatter(x=[*mine.layer, *mine.layer[::-1]],
                          y=[*(mean + std), *(mean - std)[::-1]], fill="toself",
                          fillcolor=translucent, line={"width": 0}, hoverinfo="skip",
                          showlegend=False)
        line = go.Scatter(
            x=mine.layer, y=mean, mode="lines+markers", line={"color": color},
            marker={"size": 5}, customdata=np.stack([std, mine[f"{measure}_runs"]], axis=-1),
            hovertemplate=f"<b>{mine.regularizer.iloc[0]}</b>, layer %{{x}}<br>"
                          f"{measure} %{{y:.4g}} ± %{{customdata[0]:.3g}} over "
                          "%{customdata[1]} runs<extra></extra>")
        return [band, line]

    label = "L2 distance ‖h̃ₖ − hₖ‖" if measure == "distance" else "relative change"
    return _by_size(curves, board, trace,
                    f"{task_label(task)}: each layer's movement under 5% noise at the embedding "
                    "output<br><sup>line: mean over seeds; band: ± 1 std</sup>",
                    "layer k", label)


def budget(board: Leaderboard, task: str) -> go.Figure | None:
    """Dodge et al.'s expected best validation score against the number of trials, one line per
    tuned regularizer, one panel per size; None without a tuned cell."""
    curves = board.tuning_curves
    if curves.empty or not (curves.task == task).any():
        return None

    def trace(mine: pd.DataFrame, color: str) -> list:
        return [go.Scatter(x=mine.trials, y=mine.expected_max, mode="lines+markers",
                           line={"color": color}, marker={"size": 5},
                           hovertemplate=f"<b>{mine.regularizer.iloc[0]}</b>: expected best "
                                         "%{y:.4f} of %{x} trials<extra></extra>")]

    return _by_size(curves[curves.task == task], board, trace,
                    f"{task_label(task)}: expected best validation score of n trials<br><sup>"
                    "Dodge et al. 2019, from each study's own trials</sup>", "trials n",
                    f"expected best validation {metric_name(task)}")


def forest(board: Leaderboard) -> go.Figure:
    """The primary comparisons: per task, each regularizer's mean paired difference to vanilla
    with its 95% interval, filled where it differs after Holm's correction; hover gives the
    p-values and the pairs."""
    primary = board.primary
    colors = palette(board)
    panels = list(dict.fromkeys(primary.task))
    heights = [int(primary.task.eq(task).sum()) for task in panels]
    figure = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, row_heights=heights,
                           vertical_spacing=0.12 / len(panels))
    for row, task in enumerate(panels, start=1):
        mine = primary[primary.task == task].sort_values("delta")
        for r in mine.itertuples():
            color = colors.get(r.regularizer, "black")
            figure.add_trace(go.Scatter(
                x=[r.delta], y=[r.regularizer], mode="markers", name=r.regularizer,
                legendgroup=r.regularizer, showlegend=False,
                error_x={"type": "data", "symmetric": False, "array": [r.ci_high - r.delta],
                         "arrayminus": [r.delta - r.ci_low], "color": color, "thickness": 1.5},
                marker={"size": 11, "color": color if r.significant else "white",
                        "line": {"color": color, "width": 2}},
                hovertemplate=(
                    f"<b>{r.regularizer}</b> − {VANILLA} on {task_label(task)}<br>"
                    f"mean Δ {r.delta:+.4f}, 95% CI [{r.ci_low:+.4f}, {r.ci_high:+.4f}]<br>"
                    f"p = {r.p_value:.4g}, Holm-adjusted {r.p_holm:.4g}"
                    f"{' (differs)' if r.significant else ''}<br>"
                    f"{r.n_pairs} pairs, N = {', '.join(map(str, r.sizes))}<extra></extra>")),
                row=row, col=1)
        figure.add_vline(0, line={"color": "black", "width": 1}, row=row, col=1)
        figure.update_yaxes(title_text=task_label(task), automargin=True, row=row, col=1)
    figure.update_xaxes(title_text=f"mean paired difference to {VANILLA} (95% interval); "
                                   "filled: differs after Holm", row=len(panels), col=1)
    title = "Primary comparisons against vanilla, sizes pooled, Holm-corrected"
    return _layout(figure, title, 140 + 30 * sum(heights) + 40 * len(panels))
