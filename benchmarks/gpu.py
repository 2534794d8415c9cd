"""What regbench does on a GPU, and how long `glue-small` would take there.

    python benchmarks/gpu.py [--device cuda] [--workers 1,2,4,8] [--quick] [--out FILE.json]

Prints the card, then (a) the harness's training examples a second, (b) each built-in
regularizer's step time against vanilla's, (c) the runs an hour of 1, 2, 4 and 8 `regbench run`
workers sharing the one device, the projected wall time of `glue-small` (each cell's runs at the
step time and fixed cost measured here, the steps scaled by (b), divided by the best speed-up of
(c)), then (d) a vanilla step's model FLOPs a second as a fraction of the device's bf16 and fp32
matrix-multiply peak at the model's shapes and (e) where a run's time goes (one worker's process
of glue-small's recipe taken apart, as `benchmarks/breakdown.py` does). Sized for about
seven minutes on an H100 (it has never run on a GPU); `--quick` shrinks everything to a smoke
test for a CPU. Progress goes to stderr, results to stdout, and everything
to `--out` as JSON, rewritten after each part, so a run cut short still leaves what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import transformers
from measure import (
    OPTIONS,
    breakdown_table,
    builtins,
    harness_examples_per_second,
    run_breakdown,
    runs_per_hour,
    step_costs,
    step_efficiency,
    worker_suite,
)
from tabulate import tabulate

from regbench.data import GLUE_DIR_ENV
from regbench.errors import RegbenchError
from regbench.features import task_data
from regbench.harness import mixed_precision, pick_device
from regbench.plugins import build
from regbench.recipe import Recipe
from regbench.runner import Plan, describe_device, estimate_seconds, task_costs
from regbench.store import provenance
from regbench.suite import load_suite, override
from regbench.tasks import get_task

REPO = Path(__file__).resolve().parent.parent
PROJECTED = "glue-small"


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much each part measures: the full sizes are meant for about six minutes of an H100."""

    harness_n: int = 256  # RTE training examples, a multiple of the batch size
    harness: Recipe = Recipe(epochs=8, min_steps=0, evaluations=1)  # 128 steps
    harness_rounds: int = 2
    # The schedule long enough that no measured step runs at a rate of 0.
    cost: Recipe = Recipe(epochs=0, min_steps=1000)
    cost_batches: int = 8
    cost_rounds: int = 5
    workers: dict = dataclasses.field(default_factory=worker_suite)
    workers_default: str = "1,2,4,8"
    # (d): the glue-cpu suite's step and glue-small's, vanilla, against the matmul peak.
    efficiency: dict = dataclasses.field(default_factory=lambda: {
        "8x48": Recipe(epochs=0, min_steps=1000, batch_size=8, max_length=48, pooling="mean"),
        "16x128": Recipe(epochs=0, min_steps=1000, pooling="mean")})
    # (e): breakdown.py's options: a final run of glue-small's recipe, RTE at its largest size.
    breakdown: tuple[str, ...] = ("--suite", PROJECTED, "--task", "rte", "--size", "1000")


QUICK = Sizes(harness_n=32, harness=Recipe(epochs=1, min_steps=0, batch_size=8, max_length=32,
                                           evaluations=1),
              harness_rounds=1,
              cost=Recipe(epochs=0, min_steps=1000, batch_size=8, max_length=32),
              cost_batches=2, cost_rounds=1,
              workers=worker_suite(seeds=2, size=32, steps=4, max_length=32, batch_size=8),
              workers_default="1,2",
              efficiency={"8x32": Recipe(epochs=0, min_steps=1000, batch_size=8, max_length=32)},
              breakdown=("--suite", "glue-cpu", "--size", "16", "--min-steps", "4",
                         "--max-length", "32"))


class Report:
    """The results as they come: printed, and written whole to the JSON file after each part."""

    def __init__(self, out: str | None):
        self.out, self.started, self.data = out, time.perf_counter(), {"errors": {}}

    def progress(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.started:6.1f} s] {message}", file=sys.stderr,
              flush=True)

    def save(self) -> None:
        self.data["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        if self.out:
            Path(self.out).write_text(json.dumps(self.data, indent=2, default=str))

    def part(self, name: str, measure, *args):
        """`measure(*args)`, its failure recorded and printed rather than ending the script: the
        later parts still run, and the exit status says something failed."""
        self.progress(f"{name}...")
        try:
            return measure(*args)
        except Exception:  # a first run on new hardware: report everything that can be measured
            self.data["errors"][name] = traceback.format_exc()
            print(f"{name} failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
            return None
        finally:
            self.save()


def card(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else describe_device(device)


def header(report: Report, device: torch.device) -> None:
    info = {**provenance(str(device)), "device_name": describe_device(device),
            "card": card(device), "cuda": torch.version.cuda,
            "bf16": mixed_precision("auto", device), "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count()}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(memory_gib=round(properties.total_memory / 2**30, 1),
                    cudnn=torch.backends.cudnn.version())
    report.data["device"] = info
    print(f"device: {info['device_name']}"
          + (f", {info['memory_gib']} GiB" if "memory_gib" in info else ""))
    print(f"torch {info['torch']} (CUDA {info['cuda'] or 'none'}), "
          f"transformers {info['transformers']}, regbench {info['regbench']} at "
          f"{info['git_commit'] or 'an unknown commit'}")
    print(f"precision auto: {'bf16 autocast' if info['bf16'] else 'fp32'}")


def harness_part(report: Report, device: torch.device, sizes: Sizes, glue_dir: str) -> None:
    recipe = sizes.harness
    data = task_data(get_task("rte"), sizes.harness_n, 0, "minilm", recipe.max_length, glue_dir)
    rate = harness_examples_per_second(data, recipe, device, sizes.harness_rounds)
    steps = recipe.total_steps(sizes.harness_n)
    report.data["harness"] = {"examples_per_s": rate, "n_train": sizes.harness_n, "steps": steps,
                              "batch_size": recipe.batch_size, "max_length": recipe.max_length}
    print(f"\n(a) harness: {rate:.0f} training examples/s (vanilla, RTE N = {sizes.harness_n}, "
          f"{steps} steps of {recipe.batch_size} at max length {recipe.max_length}, whole runs "
          "with model loading and one validation pass, best of "
          f"{sizes.harness_rounds} after a warm-up)")


def cost_part(report: Report, device: torch.device, sizes: Sizes, glue_dir: str) -> dict:
    costs = step_costs(glue_dir, device, sizes.cost, sizes.cost_batches, sizes.cost_rounds)
    ratios = costs.ratios
    declared = {name: build(name, OPTIONS.get(name, {})).step_cost() for name in ratios}
    report.data["step_costs"] = {"seconds": costs.seconds, "ratios": ratios,
                                 "declared": declared, "errors": costs.errors,
                                 "options": OPTIONS, "batch_size": sizes.cost.batch_size,
                                 "max_length": sizes.cost.max_length}
    rows = [[name, costs.seconds[name] * 1000, ratios[name], declared[name]] for name in ratios]
    print(f"\n(b) step cost (batch {sizes.cost.batch_size}, max length {sizes.cost.max_length}, "
          f"median of {sizes.cost_rounds} rounds of {sizes.cost_batches} steps, interleaved):")
    print(tabulate(rows, headers=["regularizer", "ms a step", "x vanilla", "declared x"],
                   floatfmt=".2f"))
    for name, error in costs.errors.items():
        print(f"{name}: could not be measured: {error}")
    return ratios


def workers_part(report: Report, device: torch.device, sizes: Sizes, glue_dir: str,
                 counts: list[int], budget: float) -> dict[int, float]:
    gc.collect()
    if device.type == "cuda":  # the workers get the card as they would without this process
        torch.cuda.empty_cache()
    suite = sizes.workers
    recipe = suite["recipe"]
    runs = len(suite["final_seeds"]) * len(suite["regularizers"])
    print(f"\n(c) workers sharing the {device.type} device: an untuned suite of {runs} runs "
          f"(RTE N = {suite['sizes'][0]}, {', '.join(suite['regularizers'])}, "
          f"{recipe['min_steps']} steps of {recipe['batch_size']} at max length "
          f"{recipe['max_length']}, test and noise stability included), SQLite, start-up "
          "included")
    results, rates, last = [], {}, 0.0
    report.data["workers"] = results  # saved as it grows
    for workers in counts:
        # More workers should take no longer than fewer did; a worker count past the budget is
        # left out, so that the projection is still printed within it.
        elapsed = time.perf_counter() - report.started
        if elapsed + last > budget:
            report.progress(f"skipping {workers} workers: {elapsed:.0f} s gone, the last count "
                            f"took {last:.0f} s, and the budget is {budget:.0f} s")
            results.append({"workers": workers, "skipped": "time budget"})
            continue
        with tempfile.TemporaryDirectory(prefix="regbench-gpu-") as folder:
            rate = report.part(f"{workers} worker(s)", runs_per_hour, workers,
                               f"sqlite:///{folder}/workers.db", suite, glue_dir, device)
        if rate is None:
            results.append({"workers": workers, "error": "see errors"})
            continue
        last = rate.seconds
        rates[workers] = rate.runs_per_hour
        results.append(dataclasses.asdict(rate))
        report.save()
        report.progress(f"{workers} worker(s): {rate.runs} runs in {rate.seconds:.0f} s, "
                        f"{rate.runs_per_hour:.0f} runs/h")
    rows = [[r["workers"], rates.get(r["workers"]),
             rates[r["workers"]] / rates[1] if 1 in rates and r["workers"] in rates else None,
             r.get("runs"), r.get("failed"), r.get("seconds"), r.get("peak_allocated_mb"),
             r.get("gpu_memory_mb") or r.get("gpu_memory_note") or r.get("skipped")
             or r.get("error")] for r in results]
    print(tabulate(rows, headers=["workers", "runs/h", "x 1 worker", "finished", "failed",
                                  "seconds", "torch peak MiB/run", "nvidia-smi MiB/worker"],
                   floatfmt=".1f", missingval="-"))
    return rates


def efficiency_part(report: Report, device: torch.device, sizes: Sizes, glue_dir: str) -> None:
    rows, figures = [], {}
    for shape, recipe in sizes.efficiency.items():
        for m in step_efficiency(glue_dir, device, recipe, sizes.cost_batches, sizes.cost_rounds):
            figures.setdefault(shape, {})[m.precision] = {
                "step_s": m.step_s, "padded_tokens": m.padded_tokens, "model_flops": m.model_flops,
                "achieved_flops": m.achieved, "peak_flops": m.peaks[m.precision],
                "fraction": m.fraction}
            rows.append([shape, m.precision, m.step_s * 1000, m.padded_tokens, m.achieved / 1e9,
                         m.peaks[m.precision] / 1e9, 100 * m.fraction])
        report.data["efficiency"] = figures
        report.save()
    print("\n(d) a vanilla step against the device's matrix-multiply peak at the model's shapes "
          "(model FLOPs: 6 x non-embedding parameters x padded tokens; peak: plain multiplies "
          "of one layer's linear maps, measured in this process):")
    print(tabulate(rows, headers=["shape", "precision", "ms a step", "padded tokens",
                                  "model GFLOP/s", "peak GFLOP/s", "% of peak"],
                   floatfmt=".1f"))


def breakdown_part(report: Report, device: torch.device, sizes: Sizes, glue_dir: str) -> None:
    figures = run_breakdown(glue_dir, device, sizes.breakdown)
    report.data["breakdown"] = figures
    print(f"\n(e) where a run's time goes: one worker process of {figures['suite']}'s recipe, "
          f"{figures['task']} N = {figures['size']}, {figures['steps']} steps of "
          f"{figures['batch_size']} at max length {figures['max_length']}, vanilla")
    for run in figures["runs"]:
        print(f"{run} run:\n{breakdown_table({'': figures}, run)}")
    print("once a process (s): " + ", ".join(f"{part} {seconds:.2f}"
                                             for part, seconds in figures["process"].items()))


def projection(report: Report, device: torch.device, suite, costs: dict,
               ratios: dict[str, float] | None, rates: dict[int, float]) -> None:
    plan = Plan.of(suite)
    ratios = ratios or {}
    seconds = estimate_seconds(plan, step_costs=ratios, costs=costs)
    cell_seconds = {c: seconds[c] * plan.runs(c) for c in plan.cells}
    one_worker = sum(cell_seconds.values())
    best, speedup = 1, 1.0
    if 1 in rates:
        best = max(rates, key=rates.get)
        speedup = rates[best] / rates[1]
    hours = one_worker / speedup / 3600
    unmeasured = sorted({c.regularizer for c in plan.cells} - set(ratios))
    report.data["projection"] = {
        "suite": suite.name, "runs": plan.total_runs(), "one_worker_hours": one_worker / 3600,
        "best_workers": best, "speedup": speedup, "hours": hours,
        "declared_cost_for": unmeasured,
        "tasks": {t: {"step_s": s, "fixed_s": f} for t, (s, f) in costs.items()},
        "cells": [{**dataclasses.asdict(c), "runs": plan.runs(c), "run_s": seconds[c]}
                  for c in plan.cells]}
    print(f"\nprojection of {suite.name}: {len(plan.cells)} cells, {plan.total_runs()} runs "
          f"({suite.tuning.trials} trials x {len(suite.tuning_seeds)} tuning seeds + "
          f"{len(suite.final_seeds)} final seeds a cell), without pruning")
    print(tabulate([[t, s * 1000, f] for t, (s, f) in costs.items()],
                   headers=["task", "vanilla ms a step", "fixed s a run"], floatfmt=".2f"))
    by_regularizer = {}
    for c, spent in cell_seconds.items():
        by_regularizer[c.regularizer] = by_regularizer.get(c.regularizer, 0.0) + spent / 3600
    print(tabulate(sorted(by_regularizer.items()), headers=["regularizer", "hours, one worker"],
                   floatfmt=".2f"))
    if unmeasured:
        print(f"declared step cost used for: {', '.join(unmeasured)}")
    print(f"one worker: {one_worker / 3600:.1f} hours; the best count, {best}: {speedup:.2f}x the "
          "runs an hour of one" + ("" if 1 in rates else " (no one-worker figure: taken as 1x)"))
    print(f"\n{suite.name} on {card(device)}: about {hours:.1f} hours with {best} "
          f"worker{'s' if best > 1 else ''}")


def glue_folder(given: str | None) -> str:
    folder = Path(given or os.environ.get(GLUE_DIR_ENV) or REPO.parent / "shared" / "glue")
    missing = [t for t in ("RTE", "MRPC", "CoLA", "STS-B")
               if not (folder / t / "train.tsv").is_file()]
    if missing:
        # Without it the loader would turn to the Hugging Face hub, which a GPU box may not reach.
        raise RegbenchError(f"GLUE data for {', '.join(missing)} not found in {folder}: give "
                            f"--data-dir or {GLUE_DIR_ENV}, a glue_data folder")
    return str(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1, ... or cpu")
    parser.add_argument("--workers", help="worker counts to measure (default 1,2,4,8; quick 1,2)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and a two-cell projection: a smoke test for a CPU")
    parser.add_argument("--out", help="write every figure to this JSON file")
    parser.add_argument("--data-dir", help=f"a glue_data folder (default: ${GLUE_DIR_ENV}, else "
                        "../shared/glue beside the repository)")
    parser.add_argument("--budget", type=float, metavar="SECONDS",
                        help="skip the worker counts that would end past this many seconds from "
                        "the start (default 420; none with --quick)")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # each figure out as it comes, even to a pipe
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    sizes = QUICK if args.quick else Sizes()
    try:
        device = pick_device(args.device)
        glue_dir = glue_folder(args.data_dir)
        counts = sorted({int(w) for w in (args.workers or sizes.workers_default).split(",")})
        if "vanilla" not in builtins():
            raise RegbenchError("regbench's regularizers are not registered: install regbench "
                                "(pip install -e .), as they are entry points of its package")
    except (RegbenchError, ValueError) as err:
        print(f"gpu.py: {err}", file=sys.stderr)
        return 2
    suite = load_suite(PROJECTED)
    if args.quick:
        suite = override(dataclasses.replace(
            suite, recipe=dataclasses.replace(suite.recipe, max_length=32, min_steps=4)),
            tasks=["rte"], sizes=[32], regularizers=["vanilla", "lnsr"])

    report = Report(args.out)
    report.part("header", header, report, device)
    report.part("harness", harness_part, report, device, sizes, glue_dir)
    ratios = report.part("step costs", cost_part, report, device, sizes, glue_dir)
    costs = report.part("task costs for the projection", task_costs, suite, device, glue_dir)
    budget = args.budget if args.budget is not None else float("inf") if args.quick else 420.0
    rates = report.part("workers", workers_part, report, device, sizes, glue_dir, counts,
                        budget) or {}
    if costs is not None:
        report.part("projection", projection, report, device, suite, costs, ratios, rates)
    # After the projection, so that the workers' count keeps its share of the budget.
    report.part("step efficiency", efficiency_part, report, device, sizes, glue_dir)
    report.part("run breakdown", breakdown_part, report, device, sizes, glue_dir)
    report.progress(f"done{'' if not report.data['errors'] else ', with errors in: '}"
                    f"{', '.join(report.data['errors'])}")
    return 1 if report.data["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
