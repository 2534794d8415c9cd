"""Which tasks the embedded model learns at a CPU budget, and how many steps a run needs: vanilla
over several seeds per (task, size, run length), its validation score at evenly spaced points of
each run and its test score at the end, judged by the leaderboard's learning gate (the one-sided
Student-t test of the excess over the constant predictor, `regbench.stats.above`).

    python benchmarks/learning_budget.py --tasks sst2,stsb,cola,mrpc,rte --sizes 64,320 \\
        --lengths 2:40,4:80 --seeds 1,2,3,4,5 --workers 2 --out budget.json

A length `E:M` is a recipe's `epochs: E, min_steps: M`; every other recipe value is the suite's
(`--suite`, glue-cpu by default). A run is long enough when its validation score has stopped
rising by its end; a task enters a board only at a (size, length) where the gate passes. Each
worker is a process of one thread, as a CPU suite's workers are. Results go to stdout as a
table, and every run to `--out` as JSON, rewritten as runs finish.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
from concurrent.futures import ProcessPoolExecutor, as_completed
from itertools import product

from tabulate import tabulate


def _run(suite_name: str, task_name: str, size: int, length: str, seed: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from regbench.features import task_data
    from regbench.harness import fine_tune, pick_device
    from regbench.plugins import build
    from regbench.suite import load_suite
    from regbench.tasks import get_task

    suite = load_suite(suite_name)
    epochs, min_steps = map(int, length.split(":"))
    recipe = dataclasses.replace(suite.recipe, epochs=epochs, min_steps=min_steps,
                                 evaluations=8)
    data = task_data(get_task(task_name), size, suite.data_seed, suite.model, recipe.max_length)
    result = fine_tune(data, build("vanilla", {}), seed, suite.model, recipe, pick_device("cpu"),
                       on_evaluate=lambda step, score: None, progress=False)
    metric = data.task.metric
    judged = metric if data.task.is_regression else "accuracy"  # as the board's gate
    constant = data.reference["constant_scores"]
    return {"task": task_name, "n_train": size, "length": length, "seed": seed,
            "steps": result.steps, "status": result.status, "seconds": result.seconds,
            "history": result.history, "test_score": result.test.get(metric),
            # A diverged run counts as the constant predictor, as on the board.
            "excess": (result.test[judged] - constant[judged]
                       if result.test else 0.0),
            "constant": constant.get(judged)}


def summary(runs: list[dict]) -> list[dict]:
    from regbench.stats import above

    rows = []
    keys = sorted({(r["task"], r["n_train"], r["length"]) for r in runs})
    for task, size, length in keys:
        cell = [r for r in runs if (r["task"], r["n_train"], r["length"]) == (task, size, length)]
        scores = [r["test_score"] for r in cell if r["test_score"] is not None]
        # Per evaluation step, the mean over the runs that reached it (a diverged run stops early).
        by_step: dict[int, list[float]] = {}
        for r in cell:
            for step, score in r["history"]:
                by_step.setdefault(step, []).append(score)
        curve = {step: statistics.fmean(by_step[step]) for step in sorted(by_step)}
        points = list(curve.values())
        quarter = len(points) // 4
        rows.append({"task": task, "n_train": size, "length": length,
                     "steps": max(r["steps"] for r in cell), "seeds": len(cell),
                     "validation_curve": {str(s): round(p, 4) for s, p in curve.items()},
                     # How much the mean validation score still rose over the run's last
                     # quarter: near 0 once the run is long enough.
                     "rise_last_quarter": (points[-1] - points[-1 - quarter] if quarter
                                           else float("nan")),
                     "finished": sum(r["status"] == "finished" for r in cell),
                     "test_mean": statistics.fmean(scores) if scores else float("nan"),
                     "test_sd": statistics.stdev(scores) if len(scores) > 1 else float("nan"),
                     "excess_mean": statistics.fmean(r["excess"] for r in cell),
                     "gate_p": above([r["excess"] for r in cell]),
                     "seconds": statistics.fmean(r["seconds"] for r in cell)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="glue-cpu")
    parser.add_argument("--tasks", default="sst2,stsb,cola,mrpc,rte")
    parser.add_argument("--sizes", default="64,320")
    parser.add_argument("--lengths", default="2:40,4:80")
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="learning_budget.json")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    jobs = list(product(args.tasks.split(","), map(int, args.sizes.split(",")),
                        args.lengths.split(","), map(int, args.seeds.split(","))))
    runs = []
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(_run, args.suite, *job) for job in jobs]
        for done, future in enumerate(as_completed(futures), start=1):
            runs.append(future.result())
            r = runs[-1]
            print(f"[{done}/{len(jobs)}] {r['task']} N={r['n_train']} {r['length']} seed "
                  f"{r['seed']}: {r['status']}, test {r['test_score']} in {r['seconds']:.0f} s",
                  flush=True)
            with open(args.out, "w") as f:
                json.dump({"runs": runs}, f, indent=1)
    table = summary(runs)
    with open(args.out, "w") as f:
        json.dump({"runs": runs, "summary": table}, f, indent=1)
    print(tabulate([{k: v for k, v in row.items() if k != "validation_curve"} for row in table],
                   headers="keys", floatfmt=".3f"))
    for row in table:
        print(row["task"], row["n_train"], row["length"], row["validation_curve"])


if __name__ == "__main__":
    main()
