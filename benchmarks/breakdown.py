"""Where a run's time goes: one worker's process, from its start to its stored runs, taken apart.

    python benchmarks/breakdown.py --t0 $(date +%s.%N) [--suite glue-cpu] [--task stsb]
                                   [--size 64] [--device cpu] [--data-dir DIR]
                                   [--min-steps N --max-length L]

Runs what a `regbench run` worker runs, with the runner's own code (`SuiteRunner.run_one`, the
same calls in the same order) on a throwaway SQLite store: the imports, the data and features
(from a warm feature cache, as every worker but a suite's first finds it), the model's first read
from disk, the worker's set-up (plan, store, heartbeat), then two final runs and one tuning run of
the suite's recipe, each taken apart by timing the harness's own functions: set-up (the model
copied, the head, the regularizer and optimiser), the training steps (`training_step`), the loop
around them (batches padded and moved), validation, test, noise stability, and storing (the
runner's lookup, row and write). The first final run pays for torch's first calls of each kernel;
the second is what every later run of a worker costs. One JSON object on stdout.

`--t0` is the caller's clock just before it started this process, so that the interpreter's own
start counts. The functions are timed by wrapping the module attributes the harness calls, so the
same script takes apart an older checkout of regbench (`PYTHONPATH`), for a before-and-after.
"""

from __future__ import annotations

import time

FIRST_LINE = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections import defaultdict  # noqa: E402
from dataclasses import replace  # noqa: E402

import regbench.harness as harness  # noqa: E402
import regbench.runner as runner  # noqa: E402
from regbench.cli import main as _cli  # noqa: E402,F401  (what a worker's process imports)

IMPORTED = time.time()

from regbench.features import task_data  # noqa: E402
from regbench.modeling import load_model  # noqa: E402
from regbench.suite import load_suite, override  # noqa: E402
from regbench.tasks import get_task  # noqa: E402
from regbench.workers import Worker  # noqa: E402

# A run's parts: "loop" is what `fine_tune` spends around the others (batches padded and moved,
# the progress bar), "store" what the runner spends around `fine_tune` (lookup, row, write).
PARTS = ("setup", "steps", "loop", "validation", "test", "noise_stability", "store")


class Timers:
    """Seconds spent in each wrapped function since the last `take()`."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, module, attribute: str, name=None):
        inner = getattr(module, attribute)

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                label = name(*args, **kwargs) if callable(name) else (name or attribute)
                self.seconds[label] += time.perf_counter() - started

        setattr(module, attribute, timed)

    def take(self) -> dict[str, float]:
        taken, self.seconds = dict(self.seconds), defaultdict(float)
        return taken


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--t0", type=float, required=True)
    parser.add_argument("--suite", default="glue-cpu")
    parser.add_argument("--task", default="stsb")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir")
    parser.add_argument("--min-steps", type=int, help="in place of the suite's (a smoke test)")
    parser.add_argument("--max-length", type=int, help="in place of the suite's (a smoke test)")
    args = parser.parse_args()
    process = {"start": FIRST_LINE - args.t0, "imports": IMPORTED - FIRST_LINE}

    suite = override(load_suite(args.suite), tasks=[args.task], sizes=[args.size],
                     regularizers=["vanilla"])
    changes = {"min_steps": args.min_steps, "max_length": args.max_length}
    suite = replace(suite, recipe=replace(suite.recipe, **{k: v for k, v in changes.items()
                                                          if v is not None}))
    task, recipe = get_task(args.task), suite.recipe
    clock = time.perf_counter()
    data = task_data(task, args.size, suite.data_seed, suite.model, recipe.max_length,
                     args.data_dir)
    process["data"] = time.perf_counter() - clock
    clock = time.perf_counter()
    load_model(suite.model, task, 0, recipe.pooling)  # the read from disk, once a process
    process["model_read"] = time.perf_counter() - clock

    timers = Timers()
    timers.wrap(harness, "prepare", "setup")
    timers.wrap(harness, "training_step", "steps")
    timers.wrap(harness, "evaluate", lambda model, examples, *a, **k:
                "test" if examples is data.test else "validation")
    timers.wrap(harness, "noise_stability")
    timers.wrap(runner, "fine_tune", "run")

    with tempfile.TemporaryDirectory(prefix="regbench-breakdown-") as folder:
        clock = time.perf_counter()
        worker = runner.SuiteRunner(suite, f"sqlite:///{folder}/runs.db", args.device,
                                    args.data_dir, progress=False)
        with Worker(worker.store.engine, worker.heartbeat_timeout) as worker.worker:
            process["worker_setup"] = time.perf_counter() - clock
            cell = worker.plan.cells[0]
            runs = {}
            for label, phase, seed in (("final, first of the process", "final", 1),
                                       ("final", "final", 2),
                                       ("tuning", "tune", suite.tuning_seeds[0])):
                clock = time.perf_counter()
                row = worker.run_one(phase, cell, {}, seed, trial=0 if phase == "tune" else None)
                total = time.perf_counter() - clock
                if row["status"] != "finished":
                    raise RuntimeError(f"{label} run {row['status']}: {row.get('error')}")
                seconds = timers.take()
                parts = {name: seconds.get(name, 0.0) for name in PARTS}
                parts["loop"] = seconds["run"] - sum(
                    seconds.get(n, 0.0) for n in ("setup", "steps", "validation", "test",
                                                  "noise_stability"))
                parts["store"] = total - seconds["run"]
                runs[label] = {"total": total, "parts": parts, "steps": row["steps"],
                               "score": row["test_score"] if phase == "final"
                               else row["validation_score"]}
    recipe = suite.recipe
    print(json.dumps({"process": process, "runs": runs, "suite": args.suite, "task": args.task,
                      "size": args.size, "steps": recipe.total_steps(args.size),
                      "batch_size": recipe.batch_size, "max_length": recipe.max_length,
                      "validation_size": recipe.validation_size, "test_size": len(data.test)}))


if __name__ == "__main__":
    sys.exit(main())
