"""Publishing a suite's leaderboard: the board (regbench.board) written as markdown, CSV, JSON,
plots and a web page, with the folder's index of pages, every file whole, and a published board
never replaced by a smaller one unasked.

Neither this module nor what it imports loads torch or transformers: a stored board is published
without a deep-learning stack, and from the store alone, as each run holds the test reference it is
judged against. Runs stored before that get it from the data, once (`add_test_references`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from regbench import plots, webpage
from regbench.board import build, runs_shown
from regbench.data import load_raw
from regbench.errors import RegbenchError
from regbench.jsonout import strict_json
from regbench.markdown import render
from regbench.metrics import test_reference
from regbench.outputs import check_targets, folder_lock, make_folder, write_whole
from regbench.splits import split_dev
from regbench.store import runs_of_setup
from regbench.tasks import get_task

if TYPE_CHECKING:
    from regbench.suite import Suite


def publish(frame: pd.DataFrame, expected: pd.DataFrame | None, out_dir: Path, name: str,
            meta: dict, force: bool = False, store: Path | None = None) -> Path:
    """Write `<name>.md`, `.csv` (one row per cell), `.json` (everything), `.html` (the web
    page) and `<name>-*.png` into `out_dir` from the final runs of `frame` (the store's runs
    table), and the folder's `index.html`; returns the markdown path.

    See `regbench.board.build` for `expected`. A board of no run is never published. A board
    already published there with more runs, or files of that name that are not a board's, are
    replaced only when `force` is set; the store (`store`, its file) never. Publishers of one
    folder take turns, so that each reads the board it replaces.
    """
    out_dir = Path(out_dir)
    board = build(frame, expected, meta)
    shown = runs_shown(board.provenance)
    if not shown:
        raise RegbenchError(f"No run of suite {meta.get('suite', name)} as it is set up now is "
                            "stored, so there is no board to publish: run the suite first, or "
                            "name its store with --storage.")
    make_folder(out_dir, "--out")
    images = {f"{name}-{key}.png": plots.png(figure)
              for key, figure in plots.figures(board).items()}
    document = {**board.to_json(), "images": list(images), "page": f"{name}.html"}
    # The markdown and the pages last: they name the other files, which are then in place.
    files = {**images, f"{name}.csv": board.cells.to_csv(index=False).encode(),
             f"{name}.json": strict_json(document, indent=1, default=str).encode(),
             f"{name}.md": render(board, list(images)).encode(),
             f"{name}.html": webpage.board_page(board, name).encode()}
    with folder_lock(out_dir):
        before, old_images = _published(out_dir, name, force)
        if shown < before and not force:
            raise RegbenchError(f"The board published in {out_dir} as {name} shows {before} runs "
                                f"and this one only {shown}: is the storage right? Pass --force "
                                "to replace it.")
        if any((out_dir / f"{name}.{kind}").is_file() for kind in ("json", "csv")):
            own = {f"{name}.md", f"{name}.csv", f"{name}.json", f"{name}.html",
                   *old_images, *images}
        else:
            own = set()  # nothing there is known to be a board's
        # The index lists every board of the folder, this one as it is now; an index already
        # there is this command's own where the folder holds a board.
        boards = webpage.published_documents(out_dir, {name: document})
        if len(boards) > 1 or own:
            own.add("index.html")
        files["index.html"] = webpage.index_page(boards).encode()
        check_targets([out_dir / f for f in files], store, lambda path: path.name in own, force)
        write_whole(out_dir, files)
        for image in set(old_images) - set(images):
            (out_dir / Path(image).name).unlink(missing_ok=True)  # the folder's own files alone
    return out_dir / f"{name}.md"


def _published(out_dir: Path, name: str, force: bool) -> tuple[int, list[str]]:
    """The run count and plot files of the board published in `out_dir` as `name`, read from
    every file of it there is (a board whose JSON was deleted still counts by its CSV): none
    when there is none, or when one cannot be read and `force` replaces it anyway."""
    json_file, csv_file = out_dir / f"{name}.json", out_dir / f"{name}.csv"
    counts, images = [], []
    try:
        if json_file.is_file():
            document = json.loads(json_file.read_text())
            counts.append(runs_shown(document["provenance"]))
            images = [str(image) for image in document.get("images", [])]
        if csv_file.is_file():
            cells = pd.read_csv(csv_file)
            counts.append(int((cells.n_completed + cells.n_crashed).sum()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        if force:
            return 0, []
        raise RegbenchError(f"Cannot read how many runs the board published in {out_dir} as "
                            f"{name} shows ({type(err).__name__}: {err}); pass --force to "
                            "replace it.") from err
    return max(counts, default=0), images


def references_of(tasks: list[str], data_dir: str | None = None) -> dict[str, dict]:
    """Each task's test reference (`regbench.metrics.test_reference`), computed from its data."""
    references = {}
    for name in tasks:
        task = get_task(name)
        raw = load_raw(task, data_dir)
        _, test = split_dev(task, raw["dev"]["label"])
        references[name] = test_reference(task, raw["train"]["label"],
                                          np.asarray(raw["dev"]["label"])[test])
    return references


def add_test_references(frame: pd.DataFrame, tasks: list[str],
                        data_dir: str | None = None) -> tuple[pd.DataFrame, dict[str, dict]]:
    """`frame` with a test reference for every run of `tasks` stored without one (by a regbench
    that kept none), computed from the data, and those computed, to be stored. An error in one
    line names what is missing when the data cannot be read."""
    if "test_reference" not in frame:
        frame = frame.assign(test_reference=None)
    lacking = sorted(set(frame.task[frame.test_reference.isna()]) & set(tasks))
    if not lacking:
        return frame, {}
    try:
        found = references_of(lacking, data_dir)
    except RegbenchError as err:
        raise RegbenchError(
            f"The runs of {', '.join(lacking)} were stored without their test half's reference "
            "(size, label counts, majority-class scores), which the board needs; computing it "
            f"needs the task's data, and: {err}") from err
    missing = frame.test_reference.isna() & frame.task.isin(lacking)
    frame = frame.copy()
    frame.loc[missing, "test_reference"] = frame.task[missing].map(found)
    return frame, found


def publish_suite(suite: Suite, frame: pd.DataFrame, out_dir: Path,
                  force: bool = False, store: Path | None = None) -> Path:
    """`publish` for one suite: its plan and its runs, which must hold their test references
    (see `add_test_references`)."""
    # This setup's runs alone, as the header will describe it.
    frame = runs_of_setup(frame, suite)
    expected = pd.DataFrame(
        [(c.regularizer, c.task, c.size, seed)
         for c in suite.cells() for seed in suite.final_seeds],
        columns=["regularizer", "task", "n_train", "seed"])
    meta = {"suite": suite.name, "description": suite.description.strip(), "model": suite.model,
            "recipe": suite.recipe.as_dict(), "tuning": vars(suite.tuning),
            "final_seeds": list(suite.final_seeds), "tuning_seeds": list(suite.tuning_seeds)}
    return publish(frame, expected, out_dir, suite.name, meta, force, store)
