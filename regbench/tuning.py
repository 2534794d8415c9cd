"""Optuna's side of a suite: studies, samplers, pruners, and a plugin's search space as trials."""

from __future__ import annotations

from typing import Any

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


def make_pruner(tuning: Tuning, max_resource: int) -> optuna.pruners.BasePruner:
    if tuning.pruner == "median":
        # A fifth of the budget must finish before any trial is judged: enough for a median
        # that means something, few enough that small budgets still prune.
        return optuna.pruners.MedianPruner(n_startup_trials=max(1, tuning.trials // 5))
    if tuning.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_resource)
    return optuna.pruners.NopPruner()


def open_study(storage: str, name: str, tuning: Tuning, max_resource: int,
               first_params: dict[str, Any]) -> optuna.Study:
    """The study of one (regularizer, task, size), created on first use; its first trial is the
    plugin's defaults, so tuning can only improve on them. Trials that a killed or interrupted
    process left unfinished are queued again with their parameters: their finished runs are
    stored, so little is redone. (One process per study: another's running trial would look
    interrupted.)"""
    study = optuna.create_study(
        storage=storage, study_name=name, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=tuning.sampler_seed),
        pruner=make_pruner(tuning, max_resource))
    if not study.trials and first_params:
        study.enqueue_trial(first_params)
    retried = {t.user_attrs.get("retry_of") for t in study.trials}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.FAIL)):
        if trial.user_attrs.get(RUN_FAILED) or trial.number in retried:
            continue
        if trial.state == TrialState.RUNNING:
            study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params or first_params, user_attrs={"retry_of": trial.number})
    return study


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


def spent_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that count against the budget: completed, pruned, or failed by their run."""
    return [t for t in study.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
            or (t.state == TrialState.FAIL and t.user_attrs.get(RUN_FAILED))]
