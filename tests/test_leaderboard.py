"""The leaderboard against statistics computed here by hand or by NumPy, on small runs tables."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from regbench.leaderboard import build, publish, render_markdown
from regbench.stats import bootstrap_ci, holm, rank, smallest_wilcoxon_p, wilcoxon
from regbench.store import Store

BASELINES = {"rte": 0.527, "cola": 0.0}
META = {"suite": "handmade", "model": "minilm", "recipe": {"learning_rate": 2e-5},
        "date": "2025-01-02"}
PARAMS = {"vanilla": {}, "l2sp": {"alpha": 0.001}, "mixout": {"p": 0.1}}
SECONDS = {"vanilla": 10.0, "l2sp": 12.0, "mixout": 20.0}  # per 100 training examples
# (task, N) -> regularizer -> test score of seeds 0..4. RTE fails at or below 0.527, CoLA at 0.
SCORES = {
    ("rte", 100): {"vanilla": [0.60, 0.62, 0.50, 0.64, 0.58],
                   "l2sp": [0.63, 0.66, 0.61, 0.65, 0.62],
                   "mixout": [0.61, 0.60, 0.59, 0.70, 0.55]},
    ("rte", 1000): {"vanilla": [0.66, 0.68, 0.67, 0.65, 0.69],
                    "l2sp": [0.67, 0.70, 0.52, 0.69, 0.68],
                    "mixout": [0.70, 0.71, 0.69, 0.72, 0.70]},
    ("cola", 100): {"vanilla": [0.10, 0.00, 0.20, 0.15, -0.05],
                    "l2sp": [0.20, 0.25, 0.22, 0.18, 0.24],
                    "mixout": [0.05, 0.30, 0.28, 0.00, 0.26]},
    # The same spread around three means: the stability rank ties, then failures decide.
    ("cola", 1000): {"vanilla": [-0.02, 0.00, 0.02, 0.04, 0.06],
                     "l2sp": [0.40, 0.42, 0.44, 0.46, 0.48],
                     "mixout": [0.30, 0.32, 0.34, 0.36, 0.38]},
}
# By hand from SCORES: means order the score ranks; variances (sum of squared deviations / 4)
# order the stability ranks, e.g. RTE 100: l2sp 0.00043 < vanilla 0.00292 < mixout 0.00305.
RANK_SCORE = {("rte", 100): {"l2sp": 1, "mixout": 2, "vanilla": 3},
              ("rte", 1000): {"mixout": 1, "vanilla": 2, "l2sp": 3},
              ("cola", 100): {"l2sp": 1, "mixout": 2, "vanilla": 3},
              ("cola", 1000): {"l2sp": 1, "mixout": 2, "vanilla": 3}}
RANK_STABILITY = {("rte", 100): {"l2sp": 1, "vanilla": 2, "mixout": 3},
                  ("rte", 1000): {"mixout": 1, "vanilla": 2, "l2sp": 3},
                  ("cola", 100): {"l2sp": 1, "vanilla": 2, "mixout": 3},
                  ("cola", 1000): {"l2sp": 1.5, "mixout": 1.5, "vanilla": 3}}


def run(regularizer: str, task: str, n: int, seed: int, score: float | None,
        status: str = "finished", phase: str = "final", **extra) -> dict:
    """One row of the runs table, as the suite runner writes it."""
    return {"key": f"{phase}-{regularizer}-{task}-{n}-{seed}-{score}", "suite": "handmade",
            "phase": phase, "trial": None, "regularizer": regularizer,
            "regularizer_version": "1", "params": PARAMS.get(regularizer, {}), "task": task,
            "n_train": n, "data_seed": 0, "seed": seed, "model": "minilm", "recipe": {},
            "status": status, "validation": {}, "test": {} if score is None else {"m": score},
            "validation_score": score, "test_score": score, "steps": 100,
            "seconds": SECONDS.get(regularizer, 1.0) * n / 100, "peak_memory_mb": 800.0,
            "error": None, "provenance": {"regbench": "0.1.0", "torch": "2.13.0",
                                         "transformers": "5.0", "device": "cpu"}, **extra}


def frame_of(rows: list[dict], tmp_path: Path) -> pd.DataFrame:
    """The rows written to, and read back from, a real store."""
    store = Store(f"sqlite:///{tmp_path / 'runs.db'}")
    for row in rows:
        store.put(row)
    return store.frame("handmade")


def handmade_rows(scores: dict = SCORES) -> list[dict]:
    return [run(reg, task, n, seed, score) for (task, n), by_reg in scores.items()
            for reg, seeds in by_reg.items() for seed, score in enumerate(seeds)]


def expected_of(scores: dict = SCORES, seeds: int = 5) -> pd.DataFrame:
    return pd.DataFrame([{"regularizer": reg, "task": task, "n_train": n, "seed": seed}
                         for (task, n), by_reg in scores.items() for reg in by_reg
                         for seed in range(seeds)])


def cell(board, task: str, n: int, regularizer: str) -> pd.Series:
    c = board.cells
    return c[(c.task == task) & (c.n_train == n) & (c.regularizer == regularizer)].iloc[0]


def section(markdown: str, heading: str) -> str:
    """The text under `heading` up to the next heading of the same or a higher level."""
    level = heading.split()[0]
    start = markdown.index(heading + "\n")
    rest = markdown[start + len(heading) + 1:]
    ends = [i for i, line in enumerate(rest.splitlines(keepends=True))
            if line.startswith("#") and len(line.split()[0]) <= len(level)]
    lines = rest.splitlines(keepends=True)
    return "".join(lines[:ends[0]] if ends else lines)


def row_of(table: str, regularizer: str) -> list[str]:
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if regularizer in cells:
            return cells
    raise AssertionError(f"no row for {regularizer} in\n{table}")


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """The hand-made suite published once, with a tuning run and a superseded run mixed in that
    must not count."""
    tmp = tmp_path_factory.mktemp("board")
    rows = [run("l2sp", "rte", 100, 0, 0.99, phase="tune", trial=3),
            run("l2sp", "rte", 100, 1, 0.10),  # written first, so superseded by SCORES' run
            *handmade_rows()]
    frame = frame_of(rows, tmp)
    markdown = publish(frame, expected_of(), tmp / "out", "board", META, BASELINES)
    return build(frame, expected_of(), BASELINES, META), markdown


# The statistics, one function at a time -------------------------------------------------------

def test_wilcoxon_matches_the_exact_distribution_by_hand():
    # Differences +1 +2 -3 +4 +5 (in hundredths): |d| ranks 1..5, W- = 3. Of the 32 equally
    # likely sign patterns, 5 have W- <= 3 ({}, {1}, {2}, {3}, {1,2}): p = 2 * 5/32.
    x = np.array([0.61, 0.62, 0.57, 0.64, 0.65])
    y = np.full(5, 0.60)
    assert wilcoxon(x, y) == pytest.approx(10 / 32)
    assert wilcoxon(y + 0.01 * np.arange(1, 6), y) == pytest.approx(2 / 32)
    assert smallest_wilcoxon_p(5) == pytest.approx(2 / 32)
    assert wilcoxon(x, x) == 1.0
    assert math.isnan(wilcoxon([], []))


def test_holm_matches_a_hand_computation():
    # Sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> made monotone 0.06.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.01, np.nan, 0.04])  # an untested comparison is not in the family
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1])
    assert adjusted[2] == pytest.approx(0.04)
    assert holm([0.3, 0.9]) == pytest.approx([0.6, 0.9])
    assert holm([]).size == 0


def test_bootstrap_interval_of_the_mean():
    rng = np.random.default_rng(7)
    x = rng.normal(size=400)
    low, high = bootstrap_ci(x)
    # With 400 draws the bootstrap agrees with the normal theory interval of the mean.
    half = 1.959964 * x.std(ddof=1) / math.sqrt(x.size)
    assert low == pytest.approx(x.mean() - half, abs=0.01)
    assert high == pytest.approx(x.mean() + half, abs=0.01)
    assert bootstrap_ci(x) == (low, high)  # seeded
    assert bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)
    assert all(math.isnan(v) for v in bootstrap_ci([0.5]))


def test_rank_orders_by_each_column_in_turn_with_ties_averaged():
    frame = pd.DataFrame({"std": [0.1, 0.1, 0.05, np.nan, 0.1],
                          "failure_rate": [0.0, 0.2, 0.4, 0.0, 0.0]})
    assert list(rank(frame, ["std", "failure_rate"], [True, True])) == [2.5, 4, 1, 5, 2.5]


# The leaderboard's numbers --------------------------------------------------------------------

def test_cell_statistics_match_numpy(published):
    board, _ = published
    assert len(board.cells) == 12
    for (task, n), by_reg in SCORES.items():
        for regularizer, scores in by_reg.items():
            x = np.array(scores)
            c = cell(board, task, n, regularizer)
            q25, q75 = np.percentile(x, [25, 75])
            assert c["mean"] == pytest.approx(x.mean())
            assert c["std"] == pytest.approx(x.std(ddof=1))
            assert c["min"] == pytest.approx(x.min()) and c["max"] == pytest.approx(x.max())
            assert c["iqr"] == pytest.approx(q75 - q25)
            failed = sum(s <= BASELINES[task] for s in scores)
            assert c["n_failures"] == failed and c["failure_rate"] == pytest.approx(failed / 5)
            assert c.ci_low <= x.mean() <= c.ci_high
            assert x.min() <= c.ci_low and c.ci_high <= x.max()
            assert c.n_settled == c.n_planned == 5
            assert json.loads(c.params) == [PARAMS[regularizer]]


def test_paired_differences_to_vanilla(published):
    board, _ = published
    for (task, n), by_reg in SCORES.items():
        vanilla = np.array(by_reg["vanilla"])
        for regularizer in ("l2sp", "mixout"):
            c = cell(board, task, n, regularizer)
            assert c.delta_vs_vanilla == pytest.approx(np.mean(by_reg[regularizer]) -
                                                       vanilla.mean())
            assert c.n_pairs == 5
            assert c.p_value >= 2 / 32  # five seeds can never do better
    assert board.cells.p_holm.notna().sum() == 8
    assert not board.cells.significant.any()


def test_ranks_per_cell_and_overall(published):
    board, _ = published
    for key, ranks in RANK_SCORE.items():
        for regularizer, expected in ranks.items():
            assert cell(board, *key, regularizer).rank_score == expected
    for key, ranks in RANK_STABILITY.items():
        for regularizer, expected in ranks.items():
            assert cell(board, *key, regularizer).rank_stability == expected
    overall = board.overall.set_index("regularizer")
    # Means of the per-cell ranks above, over the four cells.
    assert overall.mean_rank_score.to_dict() == pytest.approx(
        {"l2sp": 1.5, "mixout": 1.75, "vanilla": 2.75})
    assert overall.mean_rank_stability.to_dict() == pytest.approx(
        {"l2sp": 1.625, "mixout": 2.125, "vanilla": 2.25})
    assert list(board.overall.regularizer) == ["l2sp", "mixout", "vanilla"]
    assert list(board.overall["rank"]) == [1, 2, 3]


def test_cost_relative_to_vanilla(published):
    board, _ = published
    overall = board.overall.set_index("regularizer")
    assert overall.time_vs_vanilla.to_dict() == pytest.approx(
        {"vanilla": 1.0, "l2sp": 1.2, "mixout": 2.0})
    # Two sizes, 100 and 1000 examples: 1x and 10x the time of 100 examples.
    assert overall.seconds["mixout"] == pytest.approx(20.0 * (1 + 10) / 2)


def test_failure_rate_overall_counts_failed_runs(published):
    board, _ = published
    rates = board.overall.set_index("regularizer").failure_rate
    # vanilla: RTE 100 seed 2 and two CoLA seeds at each size; l2sp: RTE 1000 seed 2.
    assert rates.to_dict() == pytest.approx({"vanilla": 5 / 20, "l2sp": 1 / 20,
                                             "mixout": 1 / 20})


# The published files --------------------------------------------------------------------------

def test_markdown_holds_the_cells(published):
    board, path = published
    markdown = path.read_text()
    table = section(section(markdown, "### RTE (accuracy)"), "#### N = 100")
    x = np.array(SCORES[("rte", 100)]["l2sp"])
    l2sp = row_of(table, "l2sp")
    assert l2sp[:5] == ["1", "l2sp", f"{x.mean():.3f} ± {x.std(ddof=1):.3f}", "0.610",
                        f"{np.subtract(*np.percentile(x, [75, 25])):.3f}"]
    # l2sp beats vanilla on all five seeds: p = 2/32, the family's smallest; Holm: 8 * 2/32.
    assert l2sp[6:] == ["0/5", "+0.046", "0.500", "1", "5/5", "alpha=0.001"]
    assert row_of(table, "vanilla")[6:9] == ["1/5", "–", "–"]
    overall = section(markdown, "## Overall")
    assert row_of(overall, "l2sp")[:4] == ["1", "l2sp", "1.50", "1.62"]
    assert "mean rank across the (task, size) cells" in overall
    reading = section(markdown, "## How to read the tables")
    assert "adjacent ranks" in reading and "Holm-corrected across all 8 comparisons" in reading
    assert "smallest two-sided Wilcoxon p-value is 0.0625" in reading
    sizes = section(section(markdown, "## Score as the training set grows"), "### CoLA")
    assert row_of(sizes, "vanilla") == ["vanilla", "0.080 ± 0.104", "0.020 ± 0.032"]
    assert row_of(section(markdown, "## Cost"), "mixout")[2] == "2.00"
    provenance = section(markdown, "## Provenance")
    assert "- torch: 2.13.0" in provenance and "60 finished" in provenance
    assert "1 older final runs of the same seeds were superseded" in provenance
    assert "Missing runs" not in provenance


def test_csv_and_json_hold_the_same_numbers(published):
    board, path = published
    numbers = ["n_train", "mean", "std", "min", "max", "iqr", "ci_low", "ci_high", "failure_rate",
               "delta_vs_vanilla", "p_value", "p_holm", "rank_score", "rank_stability",
               "time_vs_vanilla"]
    from_csv = pd.read_csv(path.with_suffix(".csv"))
    data = json.loads(path.with_suffix(".json").read_text())
    from_json = pd.DataFrame(data["cells"])
    for copy in (from_csv, from_json):
        pd.testing.assert_frame_equal(copy[["task", "regularizer", *numbers]],
                                      board.cells[["task", "regularizer", *numbers]],
                                      check_dtype=False, rtol=1e-12)
    assert data["meta"] == META
    assert len(data["runs"]) == 60 and data["provenance"]["superseded_runs"] == 1
    assert from_csv.loc[0, "mean"] == pytest.approx(np.mean(SCORES[("rte", 100)]["l2sp"]))


def test_plots_are_written(published):
    _, path = published
    markdown = path.read_text()
    for task in ("rte", "cola"):
        for kind in ("sizes", "seeds"):
            image = path.parent / f"board-{task}-{kind}.png"
            assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert image.stat().st_size > 10_000
            assert f"]({image.name})" in markdown


# Partial and degenerate results ---------------------------------------------------------------

def test_partial_cells_are_flagged(tmp_path):
    rows = [r for r in handmade_rows()
            if not (r["regularizer"] == "mixout" and r["task"] == "rte" and r["n_train"] == 1000
                    and r["seed"] >= 3)]
    rows.append(run("mixout", "rte", 1000, 3, None, status="failed", error="CUDA out of memory"))
    board = build(frame_of(rows, tmp_path), expected_of(), BASELINES, META)
    c = cell(board, "rte", 1000, "mixout")
    assert (c.n_settled, c.n_planned, c.n_crashed) == (3, 5, 1)
    assert c["mean"] == pytest.approx(np.mean([0.70, 0.71, 0.69]))
    markdown = render_markdown(board, [])
    table = section(section(markdown, "### RTE (accuracy)"), "#### N = 1000")
    assert row_of(table, "mixout")[10] == "**3/5**"
    sizes = section(section(markdown, "## Score as the training set grows"), "### RTE")
    assert row_of(sizes, "mixout")[2].endswith("(3/5 seeds)")
    missing = section(markdown, "### Missing runs")
    assert row_of(missing, "mixout") == ["RTE", "1000", "mixout", "3/5", "3, 4"]
    crashed = section(markdown, "### Diverged and crashed runs")
    assert row_of(crashed, "mixout")[3:] == ["3", "crashed", "CUDA out of memory"]
    assert "1 failed, 58 finished, 1 missing" in markdown


def test_runs_outside_the_plan_are_left_out(tmp_path):
    rows = [*handmade_rows(), run("l2sp", "rte", 100, 9, 0.9)]
    board = build(frame_of(rows, tmp_path), expected_of(), BASELINES, META)
    assert cell(board, "rte", 100, "l2sp")["mean"] == pytest.approx(0.634)
    assert board.provenance["unplanned_runs"] == 1


def test_without_a_plan_every_seed_of_a_size_is_expected(tmp_path):
    rows = [r for r in handmade_rows() if not (r["regularizer"] == "l2sp" and r["seed"] == 0)]
    board = build(frame_of(rows, tmp_path), None, BASELINES, META)
    assert set(board.cells.query("regularizer == 'l2sp'").n_settled) == {4}
    assert set(board.cells.n_planned) == {5}


def test_significance_is_marked(tmp_path):
    # Seven seeds. Against vanilla, "a" wins on every seed: p = 2/2^7. "b" loses the seed of
    # rank 3: W- = 3, five of 128 sign patterns reach it, p = 10/128. Holm over the two:
    # a: 2 * 1/64 = 1/32 < 0.05, b: max(1/32, 10/128) = 10/128.
    vanilla = np.array([0.60, 0.61, 0.62, 0.58, 0.57, 0.59, 0.63])
    steps = 0.01 * np.arange(1, 8)
    scores = {("rte", 300): {"vanilla": vanilla, "a": vanilla + steps,
                             "b": vanilla + steps * [1, 1, -1, 1, 1, 1, 1]}}
    board = build(frame_of(handmade_rows(scores), tmp_path), None, BASELINES, META)
    a, b = cell(board, "rte", 300, "a"), cell(board, "rte", 300, "b")
    assert (a.p_value, b.p_value) == pytest.approx((1 / 64, 10 / 128))
    assert (a.p_holm, b.p_holm) == pytest.approx((1 / 32, 10 / 128))
    assert a.significant and not b.significant
    markdown = render_markdown(board, [])
    table = section(markdown, "#### N = 300")
    assert row_of(table, "a")[2].endswith("†") and "†" not in row_of(table, "b")[2]
    assert row_of(section(markdown, "## Overall"), "a")[6] == "1 / 0"
    assert "smallest two-sided Wilcoxon" not in markdown


def test_single_seed_shows_no_spread(tmp_path):
    scores = {("rte", 100): {"vanilla": [0.6], "l2sp": [0.7]}}
    board = build(frame_of(handmade_rows(scores), tmp_path), None, BASELINES, META)
    assert math.isnan(cell(board, "rte", 100, "l2sp")["std"])
    row = row_of(section(render_markdown(board, []), "#### N = 100"), "l2sp")
    assert row[2] == "0.700 ± –" and row[5] == "[–, –]"


def test_all_failed_cell_ranks_last(tmp_path):
    rows = [run("vanilla", "cola", 100, s, 0.1 * s) for s in range(3)]
    rows += [run("mixout", "cola", 100, s, None, status="diverged",
                 error="training loss became nan at step 7 of 100") for s in range(3)]
    board = build(frame_of(rows, tmp_path), None, BASELINES, META)
    mixout = cell(board, "cola", 100, "mixout")
    assert math.isnan(mixout["mean"]) and mixout.failure_rate == 1.0
    assert mixout.rank_score == 2 and mixout.rank_stability == 2
    markdown = render_markdown(board, [])
    assert row_of(section(markdown, "#### N = 100"), "mixout")[2:7] == [
        "–", "–", "–", "[–, –]", "3/3"]
    assert "training loss became nan at step 7" in section(markdown, "## Provenance")


def test_missing_vanilla(tmp_path):
    scores = {("rte", 100): {"l2sp": [0.6, 0.7, 0.65]}}
    board = build(frame_of(handmade_rows(scores), tmp_path), None, BASELINES, META)
    l2sp = cell(board, "rte", 100, "l2sp")
    assert math.isnan(l2sp.p_value) and math.isnan(l2sp.time_vs_vanilla)
    assert "none on this board" in render_markdown(board, [])


@pytest.mark.parametrize("frame", [Store("sqlite://").frame(), pd.DataFrame()],
                         ids=["empty store", "no columns"])
def test_empty_frame(tmp_path, frame):
    path = publish(frame, None, tmp_path, "empty", META, BASELINES)
    assert "No final runs" in path.read_text()
    assert json.loads((tmp_path / "empty.json").read_text())["cells"] == []
    assert not list(tmp_path.glob("*.png"))


def test_planned_but_never_run(tmp_path):
    expected = expected_of({("rte", 100): {"vanilla": None}}, seeds=3)
    board = build(Store("sqlite://").frame(), expected, BASELINES, META)
    assert board.cells.n_planned.tolist() == [3] and board.cells.n_settled.tolist() == [0]
    missing = section(render_markdown(board, []), "### Missing runs")
    assert row_of(missing, "vanilla") == ["RTE", "100", "vanilla", "0/3", "0, 1, 2"]
