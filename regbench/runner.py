"""Running a suite: one study per (regularizer, task, size), then its final seeds, every run
stored once. Rerunning skips what is stored, so an interrupted suite resumes where it stopped, and
runners that share the storage share the work."""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import time
import traceback
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import optuna
import sqlalchemy as sa
import torch
from optuna.trial import TrialState

from regbench.errors import RegbenchError
from regbench.features import task_data
from regbench.harness import fine_tune, mixed_precision, pick_device
from regbench.modeling import check_max_length, model_depth
from regbench.plugins import build, distribution_of, get_regularizer
from regbench.recipe import Recipe
from regbench.store import (
    CONNECTIONS_PER_WORKER,
    FAILED,
    FINISHED,
    PRUNED,
    SETTLED,
    Store,
    check_url,
    cpu_model,
    provenance,
    run_key,
    stored_per_cell,
    study_storage,
)
from regbench.suite import Cell, Suite
from regbench.tasks import get_task
from regbench.tuning import (
    RUN_FAILED,
    best_params,
    open_study,
    report,
    slot_key,
    start_trial,
    suggest,
)
from regbench.workers import Claim, Worker

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


@dataclass
class Plan:
    suite: Suite
    cells: list[Cell]
    depth: int  # the model's layers, for search spaces over layers

    @classmethod
    def of(cls, suite: Suite) -> Plan:
        """The plan, once the suite is checked against its model (read from its configuration
        alone): every regularizer's options, and the recipe's max length."""
        depth = model_depth(suite.model)
        for name, options in suite.regularizers.items():
            get_regularizer(name).check_params(options, depth)
        check_max_length(suite.model, suite.recipe.max_length)
        return cls(suite, suite.cells(), depth)

    def prepare_data(self, data_dir: str | None = None) -> None:
        """Read, check and tokenise the data of every (task, size) now, so that a missing or
        damaged file, or a cache that cannot be written, stops the suite before any run."""
        for cell in self.cells:
            task_data(get_task(cell.task), cell.size, self.suite.data_seed, self.suite.model,
                      self.suite.recipe.max_length, data_dir)

    def space(self, cell: Cell) -> dict[str, Any]:
        """What the tuner searches: the plugin's space less the options the suite fixes; nothing
        when the suite tunes nothing (zero trials: every regularizer runs with its defaults)."""
        if not self.suite.tuning.trials:
            return {}
        fixed = self.suite.regularizers[cell.regularizer]
        return {k: v for k, v in get_regularizer(cell.regularizer).search_space(self.depth).items()
                if k not in fixed}

    @property
    def tuned(self) -> set[Cell]:
        return {c for c in self.cells if self.space(c)}

    def study_name(self, cell: Cell) -> str:
        """Readable, and unique to everything that decides the study's trials: a suite run with
        another model, recipe, seeds or tuning settings gets a study of its own."""
        setup = run_key({"model": self.suite.model, "recipe": self.suite.recipe.as_dict(),
                         "data_seed": self.suite.data_seed,
                         "tuning_seeds": self.suite.tuning_seeds,
                         "tuning": vars(self.suite.tuning),
                         "sampler": self.suite.tuning.sampler(),
                         "fixed": self.suite.regularizers[cell.regularizer],
                         "version": get_regularizer(cell.regularizer).version})
        return f"{self.suite.name}/{cell.regularizer}/{cell.task}/{cell.size}/{setup[:10]}"

    def tuning_runs(self, cell: Cell) -> int:
        return self.suite.tuning.trials * len(self.suite.tuning_seeds) if self.space(cell) else 0

    def runs(self, cell: Cell) -> int:
        return self.tuning_runs(cell) + len(self.suite.final_seeds)

    def total_runs(self) -> int:
        return sum(map(self.runs, self.cells))

    def config(self, cell: Cell, params: dict[str, Any], seed: int) -> dict[str, Any]:
        """What decides a run's outcome, its key: every parameter's value, defaults included,
        and the parts of the model the plugin has compute in fp32, where it names any."""
        cls = get_regularizer(cell.regularizer)
        checked = cls.check_params(params, self.depth)
        config = {"regularizer": cell.regularizer, "regularizer_version": cls.version,
                  "params": checked, "task": cell.task,
                  "n_train": cell.size, "data_seed": self.suite.data_seed, "seed": seed,
                  "model": self.suite.model, "recipe": self.suite.recipe.as_dict()}
        fp32 = cls(**checked).fp32_parts(self.depth)
        return {**config, "fp32": list(fp32)} if fp32 else config

    def left(self, frame: pd.DataFrame, studies: set[str]) -> dict[Cell, int]:
        """Per cell, the runs still to train, given the suite's stored runs and the names of the
        studies in its store. An untuned cell's final runs are known by their keys. A tuned cell
        starts afresh unless its study, named by all that decides it, is stored; then its final
        seeds are counted in the store, and once one is there every trial was spent, though
        fewer tuning runs may be stored than trials (a repeated trial reuses its run, a pruned
        one stores one run for all its seeds)."""
        keys = set(frame.key[frame.status.isin(SETTLED)])
        stored = stored_per_cell(frame, self.suite)
        left = {}
        for cell in self.cells:
            fixed = self.suite.regularizers[cell.regularizer]
            if not self.tuning_runs(cell):
                left[cell] = sum(run_key(self.config(cell, fixed, seed)) not in keys
                                 for seed in self.suite.final_seeds)
            elif self.study_name(cell) not in studies:
                left[cell] = self.runs(cell)
            else:
                tuning, seeds = stored[cell]
                tuning_left = 0 if seeds else max(0, self.tuning_runs(cell) - tuning)
                left[cell] = len(self.suite.final_seeds) - seeds + tuning_left
        return left


class RunFailed(Exception):
    """A tuning run that raised or diverged: Optuna records the trial as failed."""


@dataclass
class Tally:
    executed: int = 0  # trained to the end
    pruned: int = 0  # stopped partway by the pruner
    cached: int = 0  # stored before, or by another worker
    failed: int = 0
    saved_by_pruning: float = 0.0  # tuning runs, in whole runs, that pruned trials did not train
    seconds: list[float] = field(default_factory=list)


WAITING = object()  # what `tune` returns while other workers run the study's last trials


class SuiteRunner:
    """One worker of a suite. Every piece of work (a trial, a final run) is claimed in the suite's
    database before it runs, so any number of runners can share the suite; alone, a runner does
    it all."""

    def __init__(self, suite: Suite, storage: str, device: str = "auto",
                 data_dir: str | None = None, force: bool = False, progress: bool = True,
                 heartbeat_timeout: float = 300.0):
        self.suite, self.storage, self.data_dir, self.force = suite, storage, data_dir, force
        # Every input is checked before anything is written: the storage's URL, the model's
        # options, the device, the data, then the storage itself, whose database calls wait out a
        # server's restart as long as other workers wait for this one.
        check_url(storage)
        self.plan = Plan.of(suite)
        self.device = pick_device(device)
        self.plan.prepare_data(data_dir)
        self.store = Store(storage, patience=heartbeat_timeout)
        self._check_connections()
        self.studies = study_storage(storage, patience=heartbeat_timeout)
        self.tally = Tally()
        self.progress = progress
        self.heartbeat_timeout = heartbeat_timeout
        self.started = datetime.now(timezone.utc)
        self.worker: Worker | None = None
        self._bar = None
        self._counted: dict[Cell, int] = {}  # progress units of each cell shown so far
        self._to_train = 0  # runs left to train when the suite started here
        self._attempted: set[str] = set()  # final runs this worker has tried once
        self._tuned: dict[Cell, dict[str, Any] | None] = {}  # each cell's outcome of `tune`

    # -- one run -----------------------------------------------------------------------------
    def _since_start(self, stored: dict) -> bool:
        finished = stored["finished_at"]
        return finished.replace(tzinfo=finished.tzinfo or timezone.utc) >= self.started

    def _settled(self, stored: dict | None) -> bool:
        """Whether a stored run counts as done; `--force` redoes those stored before it began."""
        if stored is None or stored["status"] not in SETTLED:
            return False
        return not self.force or self._since_start(stored)

    def run_one(self, phase: str, cell: Cell, params: dict[str, Any], seed: int,
                trial: int | None = None, on_evaluate=None) -> dict[str, Any]:
        """Train and store one run, or return the stored one."""
        config = self.plan.config(cell, params, seed)
        key = run_key(config)
        stored = self.store.get(key)
        if self._settled(stored):
            if stored["suite"] != self.suite.name:  # the same run: it counts for this suite too
                self.store.share(self.suite.name, key)
            self.tally.cached += 1
            self._advance(cell)
            return stored
        task = get_task(cell.task)
        data = task_data(task, cell.size, self.suite.data_seed, self.suite.model,
                         self.suite.recipe.max_length, self.data_dir)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        fp32 = config.pop("fp32", None)  # the store keeps it in the provenance
        row = {"key": key, "suite": self.suite.name, "phase": phase, "trial": trial, **config,
               "test_reference": data.reference,
               "provenance": {**provenance(str(self.device)),
                              "bf16": mixed_precision(self.suite.recipe.precision, self.device),
                              **({"fp32": fp32} if fp32 else {}),
                              "distribution": distribution_of(cell.regularizer),
                              "worker": self.worker.id}}
        if phase == "tune":  # the board says which sampler chose the configurations
            row["provenance"]["sampler"] = self.suite.tuning.sampler()
        started = time.perf_counter()
        try:
            result = fine_tune(data, build(cell.regularizer, config["params"]), seed,
                               self.suite.model, self.suite.recipe, self.device,
                               on_evaluate=on_evaluate, progress=self.progress,
                               test=phase == "final")
        except optuna.TrialPruned:  # the objective advances the progress for the whole trial
            self.store.put({**row, "status": PRUNED, "seconds": time.perf_counter() - started})
            self.tally.pruned += 1
            raise
        except optuna.exceptions.UpdateFinishedTrialError:
            raise  # a trial another worker took over: not this worker's to record
        except RegbenchError as err:  # a problem of the setup, which every run would meet
            raise RegbenchError(f"{cell.regularizer} on {cell.task}, N={cell.size}, seed {seed}: "
                                f"{err}") from err
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
                       seconds=result.seconds, error=result.error,
                       noise_stability=result.noise_stability)
            self.tally.failed += result.status != FINISHED
        row["peak_memory_mb"] = self._peak_memory_mb()
        try:
            self.store.put(row, replace=self.force)
        except RegbenchError as err:  # nothing is lost: the result goes into the message
            kept = {k: row.get(k) for k in ("phase", "regularizer", "params", "task", "n_train",
                                            "data_seed", "seed", "status", "validation", "test",
                                            "steps", "seconds")}
            raise RegbenchError(f"{err} The run just trained was not stored, and the suite stops "
                                f"here; its result: {json.dumps(kept, default=str)}") from err
        self.tally.executed += 1
        self.tally.seconds.append(row["seconds"])
        self._advance(cell)
        return row

    def _peak_memory_mb(self) -> float | None:
        """CUDA's peak allocated memory since the run began. None on the CPU: the process's
        high-water mark there is the largest run so far, not this one."""
        if self.device.type != "cuda":
            return None
        return torch.cuda.max_memory_allocated(self.device) / 2**20

    # -- tuning ------------------------------------------------------------------------------
    def tune(self, cell: Cell) -> dict[str, Any] | None | object:
        """The best parameters of the cell's study, once its budget of trials is spent (this
        worker runs the trials it can claim); None when no trial completed; WAITING while
        other workers run the last ones."""
        fixed = self.suite.regularizers[cell.regularizer]
        space = self.plan.space(cell)
        if not space:
            return fixed
        name = self.plan.study_name(cell)
        study = open_study(self.studies, name, self.suite.tuning, self.suite.recipe.evaluations,
                           len(self.suite.tuning_seeds))
        defaults = get_regularizer(cell.regularizer).defaults
        first = {k: defaults[k] for k in space}
        budget = self.suite.tuning.trials
        waiting = False
        for slot in range(budget):  # a slot held now is looked at again on the next pass
            key = slot_key(name, slot)
            claim = self.worker.claim(key)
            waiting |= claim is Claim.HELD
            if claim is not Claim.OURS:
                continue
            log.info("tuning %s on %s, N=%d: trial %d of %d", cell.regularizer, cell.task,
                     cell.size, slot + 1, budget)
            trial = start_trial(study, slot, first, self.suite.tuning)
            if trial is not None:
                self._run_trial(cell, study, trial, key, fixed, space)
            self.worker.finish(key)
        if waiting:
            return WAITING
        best = best_params(study)
        if best is None:
            log.error("no trial of %s completed: its final runs are skipped", name)
            return None
        return {**fixed, **best}

    def _run_trial(self, cell: Cell, study: optuna.Study, trial: optuna.Trial, claim: str,
                   fixed: dict[str, Any], space: dict[str, Any]) -> None:
        """Run one trial: the mean validation score over the tuning seeds, the running mean
        reported to the pruner as it comes (`regbench.tuning.report`)."""
        seeds = self.suite.tuning_seeds
        steps = self.suite.recipe.total_steps(cell.size)
        judged = True  # the pruner is asked while its database answers

        def objective() -> float:
            params = {**fixed, **suggest(trial, space)}
            scores = []
            curves: list[list[float]] = []  # each seed's validation scores so far
            for i, seed in enumerate(seeds):
                curves.append([])

                def evaluated(step: int, score: float, i: int = i) -> None:
                    nonlocal judged
                    curves[i].append(score)
                    if not judged:
                        return
                    try:
                        prune = report(trial, curves, self.suite.recipe.evaluations)
                    except RegbenchError as err:
                        judged = False
                        log.warning("trial %d of %s is no longer judged by the pruner, as the "
                                    "database is out of reach (%s); its run trains to the end, "
                                    "to be stored, or printed if it cannot be", trial.number,
                                    study.study_name, err)
                        return
                    if prune:
                        self.tally.saved_by_pruning += len(seeds) - i - 1 + (steps - step) / steps
                        self._advance(cell, len(seeds) - i)
                        raise optuna.TrialPruned()

                row = self.run_one("tune", cell, params, seed, trial.number, evaluated)
                if row["status"] != FINISHED:
                    self._advance(cell, len(seeds) - i - 1)
                    raise RunFailed(row["error"])
                scores.append(row["validation_score"])
            return statistics.fmean(scores)

        try:
            try:
                outcome = {"values": objective()}
            except optuna.TrialPruned:
                outcome = {"state": TrialState.PRUNED}
            except RunFailed:
                outcome = {"state": TrialState.FAIL}
            except optuna.exceptions.UpdateFinishedTrialError:
                raise
            except BaseException:  # interrupted: whoever claims the slot next runs these params
                self._give_back(study, trial, claim)
                raise
            if not self.worker.holds(claim):
                raise optuna.exceptions.UpdateFinishedTrialError(claim)
            if outcome.get("state") is TrialState.FAIL:
                trial.set_user_attr(RUN_FAILED, True)
            # A worker that took the slot over closed the trial, if it came first: then this
            # worker's outcome is not recorded, whatever its pause between these two calls.
            told = study.tell(trial, **outcome, skip_if_finished=True)
            if told.state != outcome.get("state", TrialState.COMPLETE):
                raise optuna.exceptions.UpdateFinishedTrialError(claim)
        except optuna.exceptions.UpdateFinishedTrialError:
            log.warning("trial %d of %s was taken over by another worker while this one was "
                        "silent past --heartbeat-timeout; this worker drops it", trial.number,
                        study.study_name)

    def _give_back(self, study: optuna.Study, trial: optuna.Trial, claim: str) -> None:
        """Close an interrupted trial, whose slot's next trial runs its parameters again. A
        database error here must not hide why the trial stopped: the next worker to claim the
        slot cleans up instead."""
        try:
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            self.worker.release(claim)
        except (RegbenchError, sa.exc.SQLAlchemyError,
                optuna.exceptions.OptunaError) as err:
            log.warning("trial %d of %s not given back (%s); the next worker to claim it will",
                        trial.number, study.study_name, err)

    # -- the suite ---------------------------------------------------------------------------
    def _final_runs(self, cell: Cell, params: dict[str, Any]) -> bool:
        """Train the final seeds this worker can claim; True once none is left to anyone."""
        complete = True
        for seed in self.suite.final_seeds:
            key = run_key(self.plan.config(cell, params, seed))
            if key in self._attempted:
                continue
            if self._settled(self.store.get(key)):  # comes back as cached, with no claim
                self.run_one("final", cell, params, seed)
                self._attempted.add(key)
                continue
            if self.worker.claim(key) is not Claim.OURS:
                complete = False
                continue
            # Read again with the claim held: a worker that held it before stored its run before
            # giving it back, so a run that failed in this round is seen here, not trained again.
            stored = self.store.get(key)
            if stored is not None and stored["status"] == FAILED and self._since_start(stored):
                self._advance(cell)
            else:  # an exception leaves the claim to `Worker.close`
                self.run_one("final", cell, params, seed)
            if not self.worker.release(key):
                log.warning("final run %s seed %d was taken over by another worker while this "
                            "one was silent past --heartbeat-timeout; the result stored first is "
                            "kept", cell, seed)
            self._attempted.add(key)
        return complete

    def _work_on(self, cell: Cell) -> bool:
        """Do what this worker can of the cell; True once the cell is complete."""
        if cell not in self._tuned:  # a finished study is not polled again while others work
            params = self.tune(cell)
            if params is WAITING:
                return False
            self._tuned[cell] = params
        params = self._tuned[cell]
        if params is not None and not self._final_runs(cell, params):
            return False
        # What other workers did, or skipped runs.
        self._advance(cell, self.plan.runs(cell) - self._counted.get(cell, 0))
        return True

    def run(self) -> Tally:
        from tqdm.auto import tqdm

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._to_train = self.plan.total_runs() if self.force else sum(self.plan.left(
            self.store.frame(self.suite.name), self.store.study_names()).values())
        log.info("suite %s: %d cells, %d runs planned, %d of them to train, storage %s, "
                 "device %s", self.suite.name, len(self.plan.cells), self.plan.total_runs(),
                 self._to_train, self.storage, self.device)
        with (Worker(self.store.engine, self.heartbeat_timeout) as self.worker,
              tqdm(total=self.plan.total_runs(), desc=f"suite {self.suite.name}", unit="run",
                   disable=not self.progress) as self._bar):
            self._check_threads()
            self._check_crowding()
            pending = self.plan.cells
            while pending:
                before = self.tally.executed + self.tally.pruned
                pending = [cell for cell in pending if not self._work_on(cell)]
                if pending and self.tally.executed + self.tally.pruned == before:
                    log.info("waiting for other workers on %d cells; work of a worker not heard "
                             "from in %.0f s is taken over", len(pending), self.heartbeat_timeout)
                    self.worker.wait(self.worker.interval)
        log.info("suite %s: %d runs trained, %d pruned, %d cached, %d failed, %.1f runs saved by "
                 "the pruner", self.suite.name, self.tally.executed, self.tally.pruned,
                 self.tally.cached, self.tally.failed, self.tally.saved_by_pruning)
        hopeless = self._hopeless()
        if hopeless:
            raise RegbenchError(
                f"suite {self.suite.name}: {len(hopeless)} of {len(self.plan.cells)} studies "
                f"cannot give a result: {'; '.join(hopeless)}. Their runs are stored as failed "
                "with their errors (regbench results --phase all); fix the cause and run the same "
                "command again.")
        return self.tally

    def _hopeless(self) -> list[str]:
        """The cells that no worker could finish: no tuning trial completed, or every final run
        failed with one same error (a configuration no seed can run). Read from the store, so
        that every worker of the suite gives the same verdict."""
        found = []
        for cell in self.plan.cells:
            name = f"{cell.regularizer} on {cell.task}, N={cell.size}"
            params = self._tuned[cell]
            if params is None:
                found.append(f"{name}: no tuning trial completed")
                continue
            stored = [self.store.get(run_key(self.plan.config(cell, params, seed)))
                      for seed in self.suite.final_seeds]
            errors = {_last_line(row["error"]) for row in stored
                      if row is not None and row["status"] == FAILED}
            if len(errors) == 1 and all(row is not None and row["status"] == FAILED
                                        for row in stored):
                found.append(f"{name}: every final run failed with {errors.pop()}")
        return found

    def _check_connections(self) -> None:
        """A server that lets this user open fewer connections than a worker needs would keep
        every worker waiting for one: refused at start-up, naming the setting to raise."""
        limit = self.store.connection_limit()
        if limit is not None and limit[0] < CONNECTIONS_PER_WORKER:
            raise RegbenchError(
                f"The database server at {self.store.where} lets regbench open {limit[0]} "
                f"connections ({limit[1]}), and a worker needs {CONNECTIONS_PER_WORKER}: raise "
                f"{limit[1]} to {CONNECTIONS_PER_WORKER} for each worker you start.")
        self._connection_limit = limit

    def _check_crowding(self) -> None:
        """More workers than the server has connections for wait for one another's to close."""
        limit, workers = self._connection_limit, self.worker.live_workers()
        if limit is not None and workers * CONNECTIONS_PER_WORKER > limit[0]:
            log.warning("%d workers share the database server at %s, which lets them open %d "
                        "connections (%s); each needs %d, so some wait for a connection: raise "
                        "%s to %d, or start at most %d workers", workers, self.store.where,
                        limit[0], limit[1], CONNECTIONS_PER_WORKER, limit[1],
                        workers * CONNECTIONS_PER_WORKER, limit[0] // CONNECTIONS_PER_WORKER)

    def _check_threads(self) -> None:
        """Workers that share a CPU and each use all its cores slow one another down, three times
        over on two cores (BENCHMARKS.md)."""
        here, threads = self.worker.live_workers(here=True), torch.get_num_threads()
        cores = os.cpu_count() or 1
        if self.device.type == "cpu" and here * threads > cores:
            log.warning("%d workers on this machine's %d cores, %d threads each: they will slow "
                        "one another; start each with OMP_NUM_THREADS=%d", here, cores, threads,
                        max(1, cores // here))

    def _advance(self, cell: Cell, n: int = 1) -> None:
        self._counted[cell] = self._counted.get(cell, 0) + max(n, 0)
        if self._bar is None or n <= 0:
            return
        self._bar.update(n)
        # Two bounds on what is left: the runs not yet counted include stored ones that cost
        # nothing to skip, and those this worker found to train include other workers' share.
        trained = self.tally.executed + self.tally.pruned
        left = max(0, min(self._bar.total - self._bar.n, self._to_train - trained))
        eta = "?"  # until a run has trained here: stored runs cost nothing to skip
        if self.tally.seconds:
            pace = statistics.fmean(self.tally.seconds) / max(1, self.worker.live_workers())
            eta = f"{pace * left / 60:.0f} min"
        self._bar.set_postfix(trained=self.tally.executed, cached=self.tally.cached,
                              failed=self.tally.failed, eta=eta, refresh=False)


def _last_line(text: str | None) -> str:
    """The closing line of a stored traceback: the exception and its message."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "no error recorded"


def describe_device(device: torch.device) -> str:
    """The device as a person knows it: the card's name, or the CPU's model and threads."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads()
    return f"cpu ({cpu_model()}, {threads} thread{'s' if threads > 1 else ''})"


def task_costs(suite: Suite, device: torch.device,
               data_dir: str | None = None) -> dict[str, tuple[float, float]]:
    """Each task's seconds per vanilla step and fixed seconds a run (loading, evaluation) on
    `device`, from one short run: the mean of its steps after the first (which allocates the
    optimiser's state), and the rest of the run's time. The difference of two runs' times, its
    former measure, was a few steps' worth against a fixed cost that varies by as much: on a CPU
    it gave per-step costs from 0.0003 s to 0.11 s for the same task."""
    steps = 8 if device.type == "cpu" else 30
    vanilla = build("vanilla")
    recipe = _recipe_changed(suite, epochs=0, min_steps=steps).recipe
    costs = {}
    for i, name in enumerate(suite.tasks):
        data = task_data(get_task(name), max(suite.sizes), suite.data_seed, suite.model,
                         suite.recipe.max_length, data_dir)
        # The first run of a process pays for the kernels' first calls (on a GPU, for its
        # context too): an untimed one takes that cost out of the first task's figures.
        for _ in range(2 if i == 0 else 1):
            result = fine_tune(data, vanilla, 0, suite.model, recipe, device, progress=False)
        if result.status != FINISHED:
            raise RegbenchError(f"The estimate's timing run of vanilla on {name} did not finish "
                                f"({result.error}); the suite's recipe would fail there too: "
                                "check its learning rate and precision.")
        per_step = statistics.fmean(result.step_seconds[1:])
        costs[name] = per_step, max(result.seconds - per_step * len(result.step_seconds), 0.0)
    return costs


def estimate_seconds(plan: Plan, device: str = "auto", data_dir: str | None = None,
                     step_costs: dict[str, float] | None = None,
                     costs: dict[str, tuple[float, float]] | None = None,
                     example_costs: dict[str, float] | None = None,
                     fp32_costs: dict[str, float] | None = None) -> dict[Cell, float]:
    """Seconds per run of each cell on `device`: its task's fixed cost and vanilla step time
    (`costs`, measured by `task_costs` unless given), the steps scaled by the regularizer's cost
    against vanilla: `step_costs` where measured (benchmarks/gpu.py), else the plugin's declared
    `step_cost()`, with the share of the encoder's layers it has compute in fp32 in a bf16 run
    priced at vanilla's fp32 step time (`fp32_costs`, measured where needed unless given); its
    passes over the training split in setup (`setup_passes`), at vanilla's step time per batch;
    and its passes of single examples (`setup_example_passes`), at vanilla's step time at batch
    size 1 (`example_costs`, measured where needed unless given)."""
    suite = plan.suite
    costs = costs or task_costs(suite, pick_device(device), data_dir)
    plugins = {name: build(name, options) for name, options in suite.regularizers.items()}
    if example_costs is None:
        singly = any(plugin.setup_example_passes() for plugin in plugins.values())
        example_costs = (_step_seconds(_recipe_changed(suite, batch_size=1), device, data_dir)
                         if singly else {})
    # The suite's options, not a tuned one: lnsr's tuned inject_layer changes its share.
    fp32_shares = ({name: _fp32_share(plugin, plan.depth) for name, plugin in plugins.items()
                    if name not in (step_costs or {})}  # measured costs hold their fp32 parts
                   if mixed_precision(suite.recipe.precision, pick_device(device)) else {})
    if fp32_costs is None:
        fp32_costs = (_step_seconds(_recipe_changed(suite, precision="fp32"), device, data_dir)
                      if any(fp32_shares.values()) else {})
    estimates = {}
    for cell in plan.cells:
        plugin = plugins[cell.regularizer]
        per_step, fixed = costs[cell.task]
        cost = (step_costs or {}).get(cell.regularizer)
        if cost is None:
            share = fp32_shares.get(cell.regularizer, 0.0)
            slower = fp32_costs.get(cell.task, per_step) / max(per_step, 1e-9)
            cost = plugin.step_cost() * (1 - share + share * slower)
        setup = plugin.setup_passes() * math.ceil(cell.size / suite.recipe.batch_size) * per_step
        if plugin.setup_example_passes():
            setup += plugin.setup_example_passes() * cell.size * example_costs[cell.task]
        estimates[cell] = fixed + suite.recipe.total_steps(cell.size) * cost * per_step + setup
    return estimates


def _step_seconds(suite: Suite, device: str, data_dir: str | None) -> dict[str, float]:
    return {task: per_step for task, (per_step, _) in task_costs(
        suite, pick_device(device), data_dir).items()}


def _fp32_share(plugin, depth: int) -> float:
    """The share of the encoder's layers (nearly all of a step's arithmetic) that `plugin` has
    compute in fp32."""
    parts = plugin.fp32_parts(depth)
    if "model" in parts:
        return 1.0
    return sum(part.startswith("layer.") for part in parts) / max(depth, 1)


def _recipe_changed(suite: Suite, **changes: Any) -> Suite:
    """`suite` with `changes` to its recipe: at batch size 1, `task_costs` of it time a pass of
    one example; in fp32, a step of the layers a plugin keeps in fp32."""
    return replace(suite, recipe=Recipe.from_dict({**suite.recipe.as_dict(), **changes}))
