"""Optuna's side of a suite: studies, samplers, pruners, and a plugin's search space as trials."""

from __future__ import annotations

import statistics
import uuid
import warnings
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from regbench.store import TOKEN
from regbench.suite import Tuning

RUN_FAILED = "run_failed"  # user attribute of a trial whose run raised or diverged
SLOT = "slot"  # user attribute: the budget slot a trial ran in


def make_pruner(tuning: Tuning, evaluations: int, seeds: int) -> optuna.pruners.BasePruner:
    """The pruner of a study whose trials `report` `evaluations` validation scores on each of
    `seeds` tuning seeds."""
    if tuning.pruner == "none":
        return optuna.pruners.NopPruner()
    judge = (_MedianAtStep() if tuning.pruner == "median" else
             optuna.pruners.HyperbandPruner(min_resource=1, max_resource=evaluations * seeds))
    # Two completed trials at least, the defaults and another: a small budget must not be
    # decided by one comparison with the defaults. And not in the first half of the first seed's
    # training, where scores still say more about the warmup than about the parameters.
    return _Deferred(judge, startup=max(2, tuning.trials // 5), warmup=evaluations // 2)


class _MedianAtStep(optuna.pruners.BasePruner):
    """Prunes a trial whose value is below the median of the completed trials' values at the same
    step. Optuna's MedianPruner takes a trial's best value so far instead, which across a trial's
    seeds sets one seed's final score against the others' early ones."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        others = [t.intermediate_values[step]
                  for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                  if step in t.intermediate_values]
        return bool(others) and bool(trial.intermediate_values[step] < np.median(others))


class _Deferred(optuna.pruners.BasePruner):
    """`judge`'s verdict, heeded once `startup` trials have completed, after step `warmup`."""

    def __init__(self, judge: optuna.pruners.BasePruner, startup: int, warmup: int):
        self.judge, self.startup, self.warmup = judge, startup, warmup

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        # Asked even when not heeded: Hyperband records each trial's value at its rungs as it is
        # asked, and later trials compete with those.
        verdict = self.judge.prune(study, trial)
        return (verdict and trial.last_step > self.warmup and
                len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
                >= self.startup)


def report(trial: optuna.Trial, curves: list[list[float]], evaluations: int) -> bool:
    """Report the latest validation score of a trial to its pruner; True when it says to prune.
    `curves[s]` holds the scores so far of tuning seed s, the last seed in progress.

    At evaluation k of seed s, the value is the mean over seeds 0..s of their k-th scores, at
    step s * evaluations + k: every trial reports the same seeds at the same point of training
    under the same step. A seed run stored before, when a cut-off trial is run again, left no
    scores to average: such a trial is no longer judged.
    """
    seed, k = len(curves) - 1, len(curves[-1])
    if any(len(curve) < k for curve in curves):
        return False
    trial.report(statistics.fmean(curve[k - 1] for curve in curves), seed * evaluations + k)
    return trial.should_prune()


def open_study(storage: optuna.storages.BaseStorage, name: str, tuning: Tuning,
               evaluations: int, seeds: int) -> optuna.Study:
    """The study of one (regularizer, task, size), created by whichever worker comes first."""
    return optuna.create_study(storage=storage, study_name=name, direction="maximize",
                               load_if_exists=True, pruner=make_pruner(tuning, evaluations, seeds))


def make_sampler(tuning: Tuning, slot: int) -> optuna.samplers.BaseSampler:
    """The sampler of the trial in `slot`. Its random draws are seeded by the slot as well as the
    suite, so workers that sample at once draw apart, where one seed would give them all the same
    first random trial; and one worker alone draws the same trials on every rerun. The constant
    liar counts running trials as bad, so parallel trials also spread once TPE takes over. Random
    search takes the slot's point of one Sobol sequence, scrambled by the suite's seed alone."""
    settings = tuning.sampler()
    seed = int(np.random.SeedSequence([tuning.sampler_seed, slot]).generate_state(1)[0])
    if settings["sampler"] == "tpe":
        return optuna.samplers.TPESampler(n_startup_trials=settings["startup_trials"], seed=seed,
                                          constant_liar=settings["constant_liar"])
    with warnings.catch_warnings():  # experimental since Optuna 3.0, a warning every trial
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _SlotSobol(slot, qmc_type=settings["qmc_type"], scramble=settings["scramble"],
                          seed=tuning.sampler_seed,
                          independent_sampler=optuna.samplers.RandomSampler(seed=seed))


class _SlotSobol(optuna.samplers.QMCSampler):
    """Optuna's QMCSampler, drawing the point of its trial's slot. Optuna counts the points a
    study has drawn, read and written in two calls, so workers that sample at once can draw one
    point twice and train one configuration twice; each slot is one worker's. Slot 0 is the
    plugin's defaults, and its point goes unused."""

    def __init__(self, slot: int, **options: Any):
        super().__init__(**options)
        self._slot = slot

    def _find_sample_id(self, study: optuna.Study, search_space: dict) -> int:
        return self._slot


def slot_key(study_name: str, slot: int) -> str:
    """The claim on one trial of a study's budget: workers run a trial only in a slot they hold,
    so together they run the budget and no more."""
    return f"{study_name}/trial-{slot}"


def start_trial(study: optuna.Study, slot: int, defaults: dict[str, Any],
                tuning: Tuning) -> optuna.Trial | None:
    """A new trial in `slot`, which the caller holds, or None when the slot's trial was spent and
    only the claim's `finish` was cut off. A trial left running there by a dead worker is closed,
    and the new one runs its parameters again, so the runs it stored serve again. Slot 0's first
    trial is the plugin's defaults, so tuning can only improve on them.

    The trial is made in one write, with its slot and the parameters it must run, and keyed
    (`TOKEN`), so that a write repeated after its reply was lost makes no second trial; and no
    other slot can take it, as they could a trial in Optuna's shared queue."""
    for trial in _of_slot(study, slot):
        if trial.state == TrialState.RUNNING:
            try:
                study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # its worker, frozen past the timeout, recorded it meanwhile
    before = _of_slot(study, slot)
    if any(spent(t) for t in before):
        return None
    drawn = [t.system_attrs.get("fixed_params") or t.params for t in before]
    fixed = next((params for params in drawn if params), defaults if slot == 0 else None)
    study.sampler = make_sampler(tuning, slot)
    template = optuna.trial.create_trial(
        state=TrialState.RUNNING, user_attrs={SLOT: slot},
        system_attrs={TOKEN: uuid.uuid4().hex, **({"fixed_params": fixed} if fixed else {})})
    # As `Study.ask` does, but for the queue: its trials are anyone's.
    study._thread_local.cached_all_trials = None
    return optuna.Trial(study, study._storage.create_new_trial(study._study_id, template))


def _of_slot(study: optuna.Study, slot: int) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(SLOT) == slot]


def spent(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial counts against the budget: it completed, was pruned, or its run failed."""
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or bool(
        trial.state == TrialState.FAIL and trial.user_attrs.get(RUN_FAILED))


def best_params(study: optuna.Study) -> dict[str, Any] | None:
    """The parameters of the best completed trial, ties going to the earliest slot (the defaults
    first): chosen by the trials' values and slots, never by their numbers, which depend on
    which worker asked first and on the trials cut off and run again. None when none completed."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    return max(complete, key=lambda t: (t.value, -t.user_attrs.get(SLOT, t.number))).params


def suggest(trial: optuna.Trial, space: dict[str, BaseDistribution]) -> dict[str, Any]:
    values = {}
    for name, dist in space.items():
        if isinstance(dist, FloatDistribution):
            values[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log,
                                               step=dist.step)
        elif isinstance(dist, IntDistribution):
            values[name] = trial.suggest_int(name, dist.low, dist.high, log=dist.log,
                                             step=dist.step)
        elif isinstance(dist, CategoricalDistribution):
            values[name] = trial.suggest_categorical(name, dist.choices)
        else:
            raise TypeError(f"search space entry {name!r}: unsupported {type(dist).__name__}")
    return values
