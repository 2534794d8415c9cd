"""The leaderboard's web page: written with the board, self-contained, and working in a real
browser (Debian's Chromium driven by Playwright) from a file, on a hand-made store with a crashed
run and a missing cell."""

from __future__ import annotations

import io
import json
import os
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from boards import expected_of, frame_of, handmade_rows, noise_measured, run

from regbench.board import build, task_label
from regbench.formatting import num
from regbench.leaderboard import publish
from regbench.markdown import render
from regbench.webpage import board_page

META = {"suite": "handmade", "model": "minilm", "recipe": {"learning_rate": 2e-5}}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# The forest plot; per task the seeds, the noise sensitivity within cells and the layers' movement
# under noise; the tuning budget where a cell was tuned.
FIGURES = ["forest", "rte-seeds", "rte-noise", "rte-layers", "rte-budget", "cola-seeds",
           "cola-noise", "cola-layers"]


def _rows() -> list[dict]:
    """The hand-made suite, every finished run measured for noise stability, l2sp tuned on RTE
    N = 100 with three trials; mixout crashed on RTE N = 1000 seed 3 and has no run for seed 4;
    l2sp has no run at all on CoLA N = 1000."""
    rows = [run("l2sp", "rte", 100, 101, score, phase="tune", trial=trial,
                params={"alpha": alpha}, validation_score=score)
            for trial, (alpha, score) in enumerate([(0.001, 0.62), (0.01, 0.66), (0.1, 0.58)])]
    for row in handmade_rows():
        if row["regularizer"] == "mixout" and row["task"] == "rte" and row["n_train"] == 1000 \
                and row["seed"] >= 3:
            continue
        if row["regularizer"] == "l2sp" and row["task"] == "cola" and row["n_train"] == 1000:
            continue
        rows.append({**row, "noise_stability": noise_measured(0.01 + 0.02 * row["seed"])})
    rows.append(run("mixout", "rte", 1000, 3, None, status="failed",
                    error="RuntimeError: CUDA out of memory"))
    return rows


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The hand-made board published beside a board published without a page (as by an older
    regbench: its JSON, CSV and markdown) and a JSON file that is no board: (its Leaderboard,
    the folder)."""
    tmp = tmp_path_factory.mktemp("site")
    out = tmp / "out"
    out.mkdir()
    other = [r for r in handmade_rows() if r["task"] == "rte"]
    older = build(frame_of(other, tmp_path_factory.mktemp("other")), None, {"suite": "other"})
    (out / "other.json").write_text(json.dumps(older.to_json(), default=str))
    (out / "other.md").write_text(render(older, []))
    (out / "other.csv").write_text(older.cells.to_csv(index=False))
    (out / "settings.json").write_text(json.dumps({"theme": "dark"}))
    frame = frame_of(_rows(), tmp)
    publish(frame, expected_of(), out, "handmade", META)
    return build(frame, expected_of(), META), out


def test_the_page_and_the_index_are_written_with_the_board(site):
    board, out = site
    html = (out / "handmade.html").read_text()
    assert json.loads((out / "handmade.json").read_text())["page"] == "handmade.html"
    # Each task's failure rule, from its stored test reference (CoLA: 361 of 522 in the majority).
    assert ("CoLA a run fails when its test accuracy is at or below the majority class&#39;s, "
            "0.690 (361 of 522)") in " ".join(html.split())
    # plotly.js once, whatever the number of figures.
    assert html.count("* plotly.js v") == 1
    assert re.findall(r'<div class="figure" data-figure="([\w-]+)"', html) == FIGURES
    index = (out / "index.html").read_text()
    assert re.findall(r'<li class="board-card" data-board="(\w+)"', index) == ["handmade", "other"]
    assert 'href="handmade.html"' in index and 'href="other.md"' in index
    assert "other.html" not in index and "settings" not in index
    # A board's lines in the index: its primary comparisons per task (on CoLA, mixout differs
    # after Holm: p = 0.047), then what it holds.
    card = index[index.index('data-board="handmade"'):index.index('data-board="other"')]
    delta = board.primary.set_index(["task", "regularizer"]).delta[("cola", "mixout")]
    assert re.findall(r"<li[^>]*>([^<]+)</li>", card) == [
        "RTE: none of 2 regularizers differs from vanilla",
        f"CoLA: mixout ({delta:+.3f}) differ from vanilla (1 of 2)",
        "3 regularizers on RTE, CoLA at N = 100, 1000; 54 final runs"]


def test_a_task_with_no_final_run_yet_says_so(tmp_path):
    """A suite under way: a task of its plan has no final run stored, so no failure line."""
    planned = pd.DataFrame([{"regularizer": "vanilla", "task": "stsb", "n_train": 100, "seed": s}
                            for s in range(5)])
    board = build(frame_of(handmade_rows(), tmp_path), pd.concat([expected_of(), planned]), META)
    text = re.sub(r"\s+", " ", board_page(board, "under-way"))
    assert "On STS-B no final run is stored yet, so none is judged." in text


def test_the_page_links_only_to_the_files_beside_it(site):
    _, out = site
    for name in ("handmade.html", "index.html"):
        # plotly.js's own text names its site; what the page loads or links is outside it.
        html = re.sub(r"<script>.*?</script>", "", (out / name).read_text(), flags=re.DOTALL)
        assert not re.search(r"<(script|img|link|iframe)[^>]+(src|href)=", html)
        for target in re.findall(r'href="([^"#]+)"', html):
            assert (out / target).is_file(), target


# In the browser -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium (`apt-get install chromium`, which .ci/run does), headless."""
    if CHROMIUM is None:
        message = "Chromium is not installed (Debian: apt-get install chromium)"
        if os.environ.get("REGBENCH_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(browser, site):
    """The board's page opened from its file, with what it logged and what it asked for. The
    tests share it (plotly.js takes a second to load): each leaves its filters as it found them,
    and none depends on the order of the rows."""
    _, out = site
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.errors, page.requests = [], []
    page.on("console", lambda m: m.type in ("error", "warning") and page.errors.append(m.text))
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.on("request", lambda request: page.requests.append(request.url))
    page.goto((out / "handmade.html").as_uri())
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 8")
    yield page
    context.close()


def _column(page, table: str, header: str, attribute: str = "data-sort") -> list[str]:
    """A column of a table's shown rows, top to bottom."""
    return page.evaluate(
        """([table, header, attribute]) => {
            const t = document.getElementById(table);
            const i = Array.from(t.tHead.rows[0].cells).findIndex(
                (th) => th.textContent.trim() === header);
            return Array.from(t.tBodies[0].rows).filter((r) => !r.hidden)
                .map((r) => attribute ? r.cells[i].getAttribute(attribute)
                                      : r.cells[i].textContent.trim());
        }""", [f"table-{table}", header, attribute])


def _logged_nothing(page, site) -> None:
    """What a test that interacts with the page checks last: under the page's content security
    policy, which allows no request and no eval, it logged no error and asked for nothing."""
    _, out = site
    assert page.errors == [] and page.requests == [(out / "handmade.html").as_uri()]


def test_the_page_loads_from_a_file_without_errors_or_requests(page, site):
    _logged_nothing(page, site)
    assert page.title() == "Leaderboard: handmade"


def test_the_tables_hold_the_board(page, site):
    board = site[0]
    keys = zip(_column(page, "cells", "regularizer", None), _column(page, "cells", "task", None),
               map(int, _column(page, "cells", "N", None)), strict=True)
    means = zip(_column(page, "cells", "mean", None), _column(page, "cells", "mean"), strict=True)
    shown = dict(zip(keys, means, strict=True))
    assert len(shown) == len(board.cells)
    for c in board.cells.itertuples():
        text, exact = shown[(c.regularizer, task_label(c.task), c.n_train)]
        assert text == num(c.mean)
        assert (exact == "" if np.isnan(c.mean) else float(exact) == c.mean)
    assert sorted(_column(page, "overall", "regularizer", None)) == sorted(
        board.overall.regularizer)


def _numbers(texts: list[str]) -> list[float]:
    return [float(t) if t else np.nan for t in texts]


def test_sorting_a_column_reorders_the_rows(page, site):
    worst = site[0].cells["min"]  # NaN in the cell without runs, which sorts last either way
    header = page.locator("#table-cells th", has_text="worst")
    header.click()
    assert header.get_attribute("aria-sort") == "ascending"
    assert _numbers(_column(page, "cells", "worst")) == pytest.approx(
        [*sorted(worst.dropna()), np.nan], nan_ok=True)
    header.click()
    assert header.get_attribute("aria-sort") == "descending"
    assert _numbers(_column(page, "cells", "worst")) == pytest.approx(
        [*sorted(worst.dropna(), reverse=True), np.nan], nan_ok=True)
    page.locator("#table-cells th", has_text="regularizer").click()
    assert _column(page, "cells", "regularizer", None) == sorted(site[0].cells.regularizer)
    page.locator("#table-overall th", has_text="failure rate").click()
    rates = _numbers(_column(page, "overall", "failure rate"))
    assert rates == sorted(rates) and len(rates) == 3
    _logged_nothing(page, site)


def test_filtering_by_task_size_and_regularizer(page, site):
    cells = site[0].cells
    try:
        page.select_option("#filters select[name=task]", "cola")
        assert _column(page, "cells", "task", None) == ["CoLA"] * int((cells.task == "cola").sum())
        assert set(_column(page, "runs", "task", None)) == {"CoLA"}
        assert page.locator("#task-rte").is_hidden() and page.locator("#task-cola").is_visible()
        assert page.locator("[data-count-for=table-cells]").inner_text() == \
            "6 of 12 rows shown (filtered)"
        page.select_option("#filters select[name=size]", "100")
        assert _column(page, "cells", "N", None) == ["100"] * 3
        page.locator("summary", has_text="Regularizers").click()
        page.uncheck("#filters input[value=l2sp]")
        assert sorted(_column(page, "cells", "regularizer", None)) == ["mixout", "vanilla"]
        assert "l2sp" not in _column(page, "overall", "regularizer", None)
        # The figures hide l2sp's traces, and keep the others'.
        shown = page.evaluate("""() => {
            const plot = document.querySelector('#task-cola .js-plotly-plot');
            return plot.data.filter((t) => t.legendgroup && !t.legendgroup.startsWith('status-'))
                .map((t) => [t.legendgroup, t.visible !== false]);
        }""")
        assert {group for group, visible in shown if visible} == {"mixout", "vanilla"}
        assert {group for group, visible in shown if not visible} == {"l2sp"}
    finally:
        page.click("#filters button[type=reset]")
        page.locator("summary", has_text="Regularizers").click()
    page.wait_for_function("!document.querySelector('#task-rte').hidden")
    assert len(_column(page, "cells", "task", None)) == len(cells)
    _logged_nothing(page, site)


def test_every_plot_renders(page, site):
    from PIL import Image

    plots = page.locator(".js-plotly-plot")
    assert plots.count() == len(FIGURES)
    for i in range(plots.count()):
        image = np.asarray(Image.open(io.BytesIO(plots.nth(i).screenshot())).convert("RGB"))
        drawn = (image < 235).any(axis=-1)  # not white, nor the grid's light grey
        colors = {tuple(pixel) for pixel in image[drawn][::7]}
        assert image.shape[0] > 150 and drawn.mean() > 0.01 and len(colors) > 8, i
    _logged_nothing(page, site)


def test_a_point_names_its_seed_score_outcome_and_hyperparameters(page, site):
    text = page.evaluate("""() => {
        const plot = document.querySelector('#task-rte .js-plotly-plot');
        const trace = plot.data.findIndex((t) => t.type === 'scatter' && t.name === 'l2sp');
        window.Plotly.Fx.hover(plot, [{curveNumber: trace, pointNumber: 2}]);
        return plot.querySelector('.hoverlayer').textContent;
    }""")
    assert "l2sp, N = 100, seed 2" in text and "score 0.6100 (finished)" in text
    assert "hyperparameters: alpha=0.001" in text
    _logged_nothing(page, site)


def test_a_crashed_run_and_a_missing_cell_show_as_such(page):
    outcomes = dict(zip(zip(_column(page, "runs", "regularizer", None),
                            _column(page, "runs", "task", None), _column(page, "runs", "N", None),
                            _column(page, "runs", "seed", None), strict=True),
                        _column(page, "runs", "outcome", None), strict=True))
    assert outcomes[("mixout", "RTE", "1000", "3")] == "crashed"
    assert outcomes[("mixout", "RTE", "1000", "4")] == "missing"
    assert [outcomes[("l2sp", "CoLA", "1000", str(s))] for s in range(5)] == ["missing"] * 5
    crashed = page.locator("#table-runs tr.outcome-crashed")
    assert crashed.count() == 1 and "CUDA out of memory" in crashed.inner_text()
    assert crashed.locator(".badge-crashed").evaluate(
        "b => getComputedStyle(b).backgroundColor") == "rgb(198, 40, 40)"
    broken = page.locator("#table-cells tr.broken.incomplete")
    assert broken.count() == 1 and "4/5 (1 crashed)" in broken.inner_text()
    empty = page.locator("#table-cells tr.incomplete[data-regularizer=l2sp][data-task=cola]")
    assert "0/5" in empty.inner_text()
    # Its cell is left out of the overall rank, where l2sp says what it misses.
    assert "no" == page.locator("#table-cells tr[data-regularizer=l2sp][data-task=cola]"
                                "[data-size='1000'] td").nth(4).inner_text()
    assert "CoLA N=1000: 5/5 seeds (0, 1, 2, 3, 4)" in page.locator(
        "#table-overall tr[data-regularizer=l2sp]").inner_text()
    # Under its name in the seeds figure, on two lines.
    ticks = page.locator("#task-cola .xaxislayer-above text").all_text_contents()
    assert "l2sp0/5 seeds" in ticks
    # The crashed run is drawn at the constant predictor's score with its own marker.
    symbols = page.evaluate("""() => {
        const plot = document.querySelector('#task-rte .js-plotly-plot');
        return plot.data.filter((t) => t.type === 'scatter' && t.name === 'mixout')
            .map((t) => t.marker.symbol).flat();
    }""")
    assert "triangle-down" in symbols


def test_on_a_phone_only_the_tables_scroll_sideways(browser, site):
    _, out = site
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    page.goto((out / "handmade.html").as_uri())
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 8")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    widths = page.evaluate("Array.from(document.querySelectorAll('.js-plotly-plot'), "
                           "(p) => p.getBoundingClientRect().width)")
    assert all(300 < width <= 390 for width in widths)
    context.close()
