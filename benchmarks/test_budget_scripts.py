"""The two scripts behind the second CPU board's plan, end to end on tiny inputs:
`learning_budget.py` (which tasks vanilla learns, and how long a run must be) and `suite_pace.py`
(runs per worker-hour of two stores on their shared cells). Real runs, hence benchmarks."""

from __future__ import annotations

import json
import lzma
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from suite_pace import pace, runs

from regbench.stats import above

HERE = Path(__file__).resolve().parent


@pytest.mark.benchmark(group="budget-scripts")
def test_learning_budget_judges_each_cell_by_the_boards_gate(benchmark, glue_dir, tmp_path):
    out = tmp_path / "budget.json"
    done = benchmark.pedantic(subprocess.run, args=([
        sys.executable, str(HERE / "learning_budget.py"), "--tasks", "rte,stsb", "--sizes", "16",
        "--lengths", "1:4", "--seeds", "1,2,3", "--workers", "2", "--out", str(out)],),
        kwargs={"capture_output": True, "text": True,
                "env": {**os.environ, "REGBENCH_GLUE_DIR": str(glue_dir)}},
        rounds=1, iterations=1)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert len(report["runs"]) == 6
    for row in report["summary"]:
        cell = [r for r in report["runs"] if (r["task"], r["n_train"]) == (row["task"], 16)]
        assert row["steps"] == 4 and row["seeds"] == 3
        assert len(row["validation_curve"]) == 4  # eight evaluations asked, one per step here
        assert row["gate_p"] == pytest.approx(above([r["excess"] for r in cell]))
        if row["task"] == "stsb":  # the constant predictor's correlation is 0
            assert [r["excess"] for r in cell] == [r["test_score"] for r in cell]


@pytest.mark.benchmark(group="budget-scripts")
def test_suite_pace_weighs_the_shared_cells_by_the_old_stores_runs(benchmark, tmp_path):
    old = tmp_path / "old.db"
    old.write_bytes(lzma.decompress((HERE.parent / "leaderboard/quickstart.db.xz").read_bytes()))
    new = tmp_path / "new.db"
    shutil.copy(old, new)
    with sqlite3.connect(new) as db:  # twice as quick, and one cell left out
        db.execute("UPDATE regbench_runs SET seconds = seconds / 2")
        db.execute("DELETE FROM regbench_runs WHERE regularizer = 'lnsr' AND n_train = 64")
    cells, rate = benchmark.pedantic(pace, args=(runs(str(old), "quickstart"),
                                                 runs(str(new), "quickstart")),
                                     rounds=1, iterations=1)
    assert len(cells) == 7 and (cells.size_old == 5).all()
    assert rate["new"] == pytest.approx(2 * rate["old"])
    same, rate = pace(runs(str(old), "quickstart"), runs(str(old), "quickstart"))
    assert rate["new"] == pytest.approx(rate["old"]) and len(same) == 8
