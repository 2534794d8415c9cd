"""Running a suite: one study per (regularizer, task, size), then its final seeds, every run
stored once. Rerunning skips what is stored, so an interrupted suite resumes where it stopped."""

from __future__ import annotations

import logging
import resource
import statistics
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch

from regbench.features import task_data
from regbench.harness import Recipe, fine_tune, pick_device
from regbench.modeling import model_depth
from regbench.plugins import build, get_regularizer
from regbench.store import FAILED, FINISHED, PRUNED, SETTLED, Store, provenance, run_key
from regbench.suite import Suite
from regbench.tasks import get_task
from regbench.tuning import RUN_FAILED, open_study, spent_trials, suggest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cell:
    """One (regularizer, task, sample size) of a suite: a study and its final runs."""

    regularizer: str
    task: str
    size: int


@dataclass
class Plan:
    suite: Suite
    cells: list[Cell]
    depth: int  # the model's layers, for search spaces over layers

    @classmethod
    def of(cls, suite: Suite) -> Plan:
        cells = [Cell(r, t, n)
                 for t in suite.tasks for n in suite.sizes for r in suite.regularizers]
        return cls(suite, cells, model_depth(suite.model))

    def space(self, cell: Cell) -> dict[str, Any]:
        """What the tuner searches: the plugin's space less the options the suite fixes."""
        fixed = self.suite.regularizers[cell.regularizer]
        return {k: v for k, v in get_regularizer(cell.regularizer).search_space(self.depth).items()
                if k not in fixed}

    @property
    def tuned(self) -> set[Cell]:
        return {c for c in self.cells if self.space(c)}

    def study_name(self, cell: Cell) -> str:
        """Readable, and unique to everything that decides the study's trials: a suite run with
        another model, recipe or seeds gets a study of its own."""
        setup = run_key({"model": self.suite.model, "recipe": self.suite.recipe.as_dict(),
                         "data_seed": self.suite.data_seed,
                         "tuning_seeds": self.suite.tuning_seeds,
                         "fixed": self.suite.regularizers[cell.regularizer],
                         "version": get_regularizer(cell.regularizer).version})
        return f"{self.suite.name}/{cell.regularizer}/{cell.task}/{cell.size}/{setup[:10]}"

    def tuning_runs(self, cell: Cell) -> int:
        return self.suite.tuning.trials * len(self.suite.tuning_seeds) if self.space(cell) else 0

    def final_runs(self) -> int:
        return len(self.cells) * len(self.suite.final_seeds)

    def total_runs(self) -> int:
        return sum(map(self.tuning_runs, self.cells)) + self.final_runs()


class RunFailed(Exception):
    """A tuning run that raised or diverged: Optuna records the trial as failed."""


@dataclass
class Tally:
    executed: int = 0
    cached: int = 0
    failed: int = 0
    saved_by_pruning: float = 0.0  # tuning runs, in whole runs, that pruned trials did not train
    seconds: list[float] = field(default_factory=list)


class SuiteRunner:
    def __init__(self, suite: Suite, storage: str, device: str = "auto",
                 data_dir: str | None = None, force: bool = False, progress: bool = True):
        self.suite, self.storage, self.data_dir, self.force = suite, storage, data_dir, force
        self.device = pick_device(device)
        self.store = Store(storage)
        self.plan = Plan.of(suite)
        self.tally = Tally()
        self.progress = progress
        self._bar = None

    # -- one run -----------------------------------------------------------------------------
    def _config(self, cell: Cell, params: dict[str, Any], seed: int) -> dict[str, Any]:
        return {"regularizer": cell.regularizer,
                "regularizer_version": get_regularizer(cell.regularizer).version,
                "params": params, "task": cell.task, "n_train": cell.size,
                "data_seed": self.suite.data_seed, "seed": seed, "model": self.suite.model,
                "recipe": self.suite.recipe.as_dict()}

    def run_one(self, phase: str, cell: Cell, params: dict[str, Any], seed: int,
                trial: int | None = None, on_evaluate=None) -> dict[str, Any]:
        """Train and store one run, or return the stored one."""
        config = self._config(cell, params, seed)
        key = run_key(config)
        stored = self.store.get(key)
        if stored is not None and stored["status"] in SETTLED and not self.force:
            self.tally.cached += 1
            self._advance()
            return stored
        task = get_task(cell.task)
        data = task_data(task, cell.size, self.suite.data_seed, self.suite.model,
                         self.suite.recipe.max_length, self.data_dir)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        row = {"key": key, "suite": self.suite.name, "phase": phase, "trial": trial, **config,
               "provenance": provenance(str(self.device))}
        started = time.perf_counter()
        try:
            result = fine_tune(data, build(cell.regularizer, params), seed, self.suite.model,
                               self.suite.recipe, self.device, on_evaluate=on_evaluate,
                               progress=self.progress, test=phase == "final")
        except optuna.TrialPruned:  # the objective advances the progress for the whole trial
            self.store.put({**row, "status": PRUNED, "seconds": time.perf_counter() - started})
            raise
        except Exception as err:  # a plugin or model bug must not end the suite
            log.error("%s %s seed %d failed: %s", cell.regularizer, cell.task, seed, err)
            row.update(status=FAILED, error=traceback.format_exc(),
                       seconds=time.perf_counter() - started)
            self.tally.failed += 1
        else:
            metric = task.metric
            row.update(status=result.status, validation=result.validation, test=result.test,
                       validation_score=result.validation.get(metric),
                       test_score=result.test.get(metric), steps=result.steps,
                       seconds=result.seconds, error=result.error)
            self.tally.failed += result.status != FINISHED
        row["peak_memory_mb"] = self._peak_memory_mb()
        self.store.put(row, replace=self.force)
        self.tally.executed += 1
        self.tally.seconds.append(row["seconds"])
        self._advance()
        return row

    def _peak_memory_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        # The process's high-water mark (Linux reports KiB): runs only ever raise it.
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # -- tuning ------------------------------------------------------------------------------
    def tune(self, cell: Cell) -> dict[str, Any] | None:
        """The best parameters of the cell's study (run to its budget first), or None when no
        trial completed."""
        fixed = self.suite.regularizers[cell.regularizer]
        space = self.plan.space(cell)
        if not space:
            return fixed
        defaults = get_regularizer(cell.regularizer).defaults
        seeds = self.suite.tuning_seeds
        steps = self.suite.recipe.total_steps(cell.size)
        study = open_study(self.storage, self.plan.study_name(cell), self.suite.tuning,
                           steps * len(seeds), {k: defaults[k] for k in space})

        def objective(trial: optuna.Trial) -> float:
            params = {**fixed, **suggest(trial, space)}
            scores = []
            for i, seed in enumerate(seeds):
                def report(step: int, score: float, i: int = i) -> None:
                    trial.report(score, i * steps + step)  # seed after seed, on one axis
                    if trial.should_prune():
                        saved = len(seeds) - i - 1 + (steps - step) / steps
                        self.tally.saved_by_pruning += saved
                        self._advance(len(seeds) - i)
                        raise optuna.TrialPruned()

                row = self.run_one("tune", cell, params, seed, trial.number, report)
                if row["status"] != FINISHED:
                    self._advance(len(seeds) - i - 1)
                    trial.set_user_attr(RUN_FAILED, True)
                    raise RunFailed(row["error"])
                scores.append(row["validation_score"])
            return statistics.fmean(scores)

        budget = self.suite.tuning.trials
        done = len(spent_trials(study))
        self._advance(min(done, budget) * len(seeds))
        if done < budget:
            log.info("tuning %s on %s, N=%d: %d of %d trials left", cell.regularizer, cell.task,
                     cell.size, budget - done, budget)
            study.optimize(objective, n_trials=budget - done, catch=(RunFailed,))
        if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            log.error("no trial of %s completed: its final runs are skipped",
                      self.plan.study_name(cell))
            return None
        return {**fixed, **study.best_params}

    # -- the suite ---------------------------------------------------------------------------
    def run(self) -> Tally:
        from tqdm.auto import tqdm

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        log.info("suite %s: %d cells, %d runs planned, storage %s, device %s", self.suite.name,
                 len(self.plan.cells), self.plan.total_runs(), self.storage, self.device)
        with tqdm(total=self.plan.total_runs(), desc=f"suite {self.suite.name}", unit="run",
                  disable=not self.progress) as self._bar:
            for cell in self.plan.cells:
                params = self.tune(cell)
                if params is None:
                    self._advance(len(self.suite.final_seeds))
                    continue
                for seed in self.suite.final_seeds:
                    self.run_one("final", cell, params, seed)
        log.info("suite %s: %d runs trained, %d cached, %d failed, %.1f runs saved by the pruner",
                 self.suite.name, self.tally.executed, self.tally.cached, self.tally.failed,
                 self.tally.saved_by_pruning)
        return self.tally

    def _advance(self, n: int = 1) -> None:
        if self._bar is None or n <= 0:
            return
        self._bar.update(n)
        left = self._bar.total - self._bar.n
        eta = statistics.fmean(self.tally.seconds) * left if self.tally.seconds else float("nan")
        self._bar.set_postfix(trained=self.tally.executed, cached=self.tally.cached,
                              failed=self.tally.failed, eta=f"{eta / 60:.0f} min", refresh=False)


def estimate_seconds(plan: Plan, device: str = "auto", data_dir: str | None = None) -> dict:
    """Seconds per run of each cell, from two short vanilla runs per task on this device: their
    difference gives the time of a step, the rest the fixed cost (loading, evaluation)."""
    suite, target = plan.suite, pick_device(device)
    vanilla = build("vanilla")
    per_step, fixed = {}, {}
    for name in suite.tasks:
        task = get_task(name)
        data = task_data(task, max(suite.sizes), suite.data_seed, suite.model,
                         suite.recipe.max_length, data_dir)
        timings = []
        for steps in (2, 6):
            recipe = Recipe.from_dict({**suite.recipe.as_dict(), "epochs": 0, "min_steps": steps})
            timings.append(fine_tune(data, vanilla, 0, suite.model, recipe, target,
                                     progress=False).seconds)
        per_step[name] = max(timings[1] - timings[0], 1e-3) / 4
        fixed[name] = max(timings[0] - 2 * per_step[name], 0.0)
    estimates = {}
    for cell in plan.cells:
        cost = 1 + build(cell.regularizer, suite.regularizers[cell.regularizer]).extra_passes()
        steps = suite.recipe.total_steps(cell.size)
        estimates[cell] = fixed[cell.task] + steps * per_step[cell.task] * cost
    return estimates
