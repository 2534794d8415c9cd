"""Optuna's side of a suite: studies, samplers, pruners, and a plugin's search space as trials."""

from __future__ import annotations

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

from regbench.suite import Tuning

RUN_FAILED = "run_failed"  # user attribute of a trial whose run raised or diverged
SLOT = "slot"  # user attribute: the budget slot a trial ran in


def make_pruner(tuning: Tuning, max_resource: int) -> optuna.pruners.BasePruner:
    if tuning.pruner == "median":
        # A fifth of the budget must finish before any trial is judged: enough for a median
        # that means something, few enough that small budgets still prune.
        return optuna.pruners.MedianPruner(n_startup_trials=max(1, tuning.trials // 5))
    if tuning.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_resource)
    return optuna.pruners.NopPruner()


def open_study(storage: optuna.storages.BaseStorage, name: str, tuning: Tuning,
               max_resource: int) -> optuna.Study:
    """The study of one (regularizer, task, size), created by whichever worker comes first."""
    return optuna.create_study(storage=storage, study_name=name, direction="maximize",
                               load_if_exists=True, pruner=make_pruner(tuning, max_resource))


def make_sampler(sampler_seed: int, slot: int) -> optuna.samplers.BaseSampler:
    """The sampler of the trial in `slot`. Seeded by the slot as well as the suite, so workers that
    sample at once draw apart, where one seed would give them all the same first random trial; and
    one worker alone draws the same trials on every rerun. The constant liar counts running trials
    as bad, so parallel trials also spread once TPE takes over."""
    seed = int(np.random.SeedSequence([sampler_seed, slot]).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def slot_key(study_name: str, slot: int) -> str:
    """The claim on one trial of a study's budget: workers run a trial only in a slot they hold,
    so together they run the budget and no more."""
    return f"{study_name}/trial-{slot}"


def start_trial(study: optuna.Study, slot: int, defaults: dict[str, Any],
                sampler_seed: int) -> optuna.Trial | None:
    """A new trial in `slot`, which the caller holds, or None when the slot's trial was spent and
    only the claim's `finish` was cut off. A trial left running there by a dead worker is closed
    and its parameters queued again, so the runs it stored serve again. Slot 0's first trial is
    the plugin's defaults, so tuning can only improve on them."""
    before = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(SLOT) == slot]
    if any(spent(t) for t in before):
        return None
    for trial in before:
        if trial.state == TrialState.RUNNING:
            retry(study, study.tell(trial.number, state=TrialState.FAIL))
    if slot == 0 and not before and defaults:
        # A worker that died between queueing the defaults and taking them left them queued.
        study.enqueue_trial(defaults, skip_if_exists=True)
    study.sampler = make_sampler(sampler_seed, slot)
    trial = study.ask()  # a queued trial first, if any
    trial.set_user_attr(SLOT, slot)
    return trial


def spent(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial counts against the budget: it completed, was pruned, or its run failed."""
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or bool(
        trial.state == TrialState.FAIL and trial.user_attrs.get(RUN_FAILED))


def retry(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue again the parameters of a trial that was cut off: those it was queued with (it may
    have been cut off before it took them), else those it drew."""
    study.enqueue_trial(trial.system_attrs.get("fixed_params") or trial.params,
                        user_attrs={"retry_of": trial.number})


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
