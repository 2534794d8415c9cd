"""Where a run's time goes (`breakdown.py`), on this checkout and on the commit before the
run-cost work, side by side: the two processes alternate, so that machine load falls on both
alike. One worker's process of the CPU board's recipe (glue-cpu: STS-B, N = 64, 40 steps of 8 at
max length 48, mean pooling, bf16 where the CPU has it, one thread): start and imports, data,
the model's read, the worker's set-up, then a final run (twice) and a tuning run taken apart."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch
from measure import breakdown_table, run_breakdown
from tabulate import tabulate

from regbench.features import task_data
from regbench.suite import load_suite
from regbench.tasks import get_task

HERE = Path(__file__).resolve().parent
CPU = torch.device("cpu")
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


@pytest.mark.benchmark(group="run-breakdown")
def test_run_breakdown_before_and_after(benchmark, glue_dir, tmp_path):
    baseline = _checkout(BASELINE, tmp_path / "baseline")
    # The feature cache warm, as every worker but a suite's first finds it.
    task_data(get_task("stsb"), 64, 0, "minilm", load_suite("glue-cpu").recipe.max_length,
              glue_dir)
    measured: dict[str, list[dict]] = {BASELINE: [], "this": []}
    for _ in range(ROUNDS):
        measured[BASELINE].append(run_breakdown(glue_dir, CPU, tree=baseline))
        measured["this"].append(run_breakdown(glue_dir, CPU))
    # Each version's round whose steady final run was quickest: the least disturbed.
    best = {v: min(rounds, key=lambda r: r["runs"]["final"]["total"])
            for v, rounds in measured.items()}
    benchmark.extra_info.update(best)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    for run in best["this"]["runs"]:
        print(f"\n{run} run:\n{breakdown_table(best, run)}")
    print("\nonce a process:")
    print(tabulate([[part, *(r["process"][part] for r in best.values())]
                    for part in best["this"]["process"]],
                   headers=["part", *best], floatfmt=".2f"))
    outside = {v: 1 - r["runs"]["final"]["parts"]["steps"] / r["runs"]["final"]["total"]
               for v, r in best.items()}
    benchmark.extra_info["outside_steps"] = outside
    print(f"\noutside the training steps: {outside['this']:.1%} of a final run "
          f"({outside[BASELINE]:.1%} at {BASELINE})")
    assert all(r["runs"]["final"]["steps"] == r["steps"] for r in best.values())
