"""Where a run's time goes (`breakdown.py`), on this checkout and on the commit before the
run-cost work, side by side: the two processes alternate, so that machine load falls on both
alike. One worker's process of the CPU board's recipe (glue-cpu: STS-B, N = 64, 40 steps of 8 at
max length 48, mean pooling, bf16 where the CPU has it, one thread): start and imports, data,
the model's read, the worker's set-up, then a final run (twice) and a tuning run taken apart."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from tabulate import tabulate

from regbench.features import task_data
from regbench.suite import load_suite
from regbench.tasks import get_task

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "breakdown.py"
# The last commit before the run-cost work (issue 20); REGBENCH_BASELINE_REF names another.
BASELINE = os.environ.get("REGBENCH_BASELINE_REF", "8909241")
ROUNDS = 2


def _checkout(ref: str, folder: Path) -> Path:
    """`ref`'s tree in `folder`, importable as `regbench` with its built-ins and suites, as an
    installed copy of it would be."""
    archive = subprocess.run(["git", "-C", str(HERE.parent), "archive", ref],
                             capture_output=True, check=True).stdout
    folder.mkdir()
    (folder / "tree.tar").write_bytes(archive)
    with tarfile.open(folder / "tree.tar") as tar:
        tar.extractall(folder, filter="data")
    for package in ("registry", "suites"):
        (folder / "regbench" / package).symlink_to(folder / package)
    return folder


def breakdown(glue_dir: Path, tree: Path | None = None) -> dict:
    """One worker process's breakdown, run from `tree` (else this checkout)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    done = subprocess.run([sys.executable, str(SCRIPT), "--t0", repr(time.time()),
                           "--data-dir", str(glue_dir)],
                          capture_output=True, text=True, env=env, cwd=tree or HERE.parent)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.splitlines()[-1])


def table(results: dict[str, dict], run: str) -> str:
    """The parts of `run` for each version, seconds and shares of the run."""
    parts = list(next(iter(results.values()))["runs"][run]["parts"])
    rows = []
    for part in [*parts, "total"]:
        row = [part]
        for result in results.values():
            figures = result["runs"][run]
            seconds = figures["total"] if part == "total" else figures["parts"][part]
            row += [seconds, seconds / figures["total"]]
        rows.append(row)
    headers = ["part"] + [f"{v} {unit}" for v in results for unit in ("s", "share")]
    return tabulate(rows, headers=headers, floatfmt=".3f")


@pytest.mark.benchmark(group="run-breakdown")
def test_run_breakdown_before_and_after(benchmark, glue_dir, tmp_path):
    baseline = _checkout(BASELINE, tmp_path / "baseline")
    # The feature cache warm, as every worker but a suite's first finds it.
    task_data(get_task("stsb"), 64, 0, "minilm", load_suite("glue-cpu").recipe.max_length,
              glue_dir)
    measured: dict[str, list[dict]] = {BASELINE: [], "this": []}
    for _ in range(ROUNDS):
        measured[BASELINE].append(breakdown(glue_dir, baseline))
        measured["this"].append(breakdown(glue_dir))
    # Each version's round whose steady final run was quickest: the least disturbed.
    best = {v: min(rounds, key=lambda r: r["runs"]["final"]["total"])
            for v, rounds in measured.items()}
    benchmark.extra_info.update(best)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    for run in best["this"]["runs"]:
        print(f"\n{run} run:\n{table(best, run)}")
    print("\nonce a process:")
    print(tabulate([[part, *(r["process"][part] for r in best.values())]
                    for part in best["this"]["process"]],
                   headers=["part", *best], floatfmt=".2f"))
    final = best["this"]["runs"]["final"]
    outside = 1 - final["parts"]["steps"] / final["total"]
    print(f"\noutside the training steps: {outside:.1%} of a final run "
          f"({1 - best[BASELINE]['runs']['final']['parts']['steps'] / best[BASELINE]['runs']['final']['total']:.1%} before)")
    assert all(r["runs"]["final"]["steps"] == r["steps"] for r in best.values())
